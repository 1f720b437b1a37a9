"""What the storage-fault tests share (tests/test_full_disk.py, tests/test_fsync_fault.py): a
provisioned data dir, a real `eum switch` process, terminals that write down every request
and answer, and exact checks of the ledger against what the terminals were told.

A `Load` runs one closed-loop terminal connection per card (one member each, so their
purchases share group commits) and records each exchange with the phase it was sent and
answered in; the test moves `load.phase` as it injects and clears the fault.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from switch.clock import FixedClock
from switch.wire.codec import Dialect
from switch.wire.messages import Balances, decode_balances
from terminal_sim.client import TerminalClient
from terminal_sim.terminal import Terminal

from conftest import LAUNCH, card_accounts, postings, provision, start_switch
from waiting import eventually, wait_until

EUM_SCRIPT = Path(sys.executable).parent / "eum"
EUM = [str(EUM_SCRIPT)] if EUM_SCRIPT.exists() else [sys.executable, "-m", "switch.cli.main"]
COMMAND_TIMEOUT_S = 30
TID, MID = "T0000001", "NAMDONG01"
# docs/host-interface.md §2: the 0210 echoes these fields of the 0200 (when present).
ECHOED_0210 = ("2", "3", "4", "7", "11", "12", "13", "41", "42", "49")


def system_error_answer(request: dict[str, str]) -> dict[str, str]:
    """The one correct 96 to a 0200 (docs/host-interface.md §4): the request's echoed fields,
    DE39 96, and no DE37, DE38 or DE54."""
    return {"t": "0210", **{k: request[k] for k in ECHOED_0210 if k in request}, "39": "96"}


def fields_of(answer: dict[str, str] | None) -> dict[str, str] | None:
    return None if answer is None else {k: v for k, v in answer.items() if k != "p"}


async def seeded(data_dir: Path, *, cards: int, charge: int = 500_000) -> list[str]:
    """The usual population (tests/conftest.py `provision`) and `cards` more Namdong cards,
    one member each, charged `charge`; the switch that made it is closed (a clean ledger)."""
    async with start_switch(data_dir, clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        pans = []
        for _ in range(cards):
            card = await env.op("card-issue", program="namdong")
            await env.op("card-charge", pan=card["pan"], amount=charge)
            pans.append(card["pan"])
    return pans


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int, proc: subprocess.Popen) -> bool:
    assert proc.poll() is None, f"the switch exited while starting (rc {proc.returncode})"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def switch_command(data_dir: Path, port: int) -> list[str]:
    return [*EUM, "switch", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}",
            "--clock-start", LAUNCH.isoformat()]


def wait_listening(port: int, proc: subprocess.Popen) -> None:
    wait_until(lambda: listening(port, proc), what=f"eum switch to listen on {port}")


def verify_cli(data_dir: Path, cwd: Path) -> dict:
    """`eum admin verify --json` on the data dir, as an operator runs it."""
    proc = subprocess.run([*EUM, "admin", "--data-dir", str(data_dir), "verify", "--json"], cwd=cwd,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


def json_lines(path: Path) -> list[dict]:
    """Every line of a JSON-lines log, each of which must be a whole JSON object."""
    return [json.loads(line) for line in path.read_text().splitlines()]


@dataclass
class Exchange:
    phase_sent: str
    request: dict[str, str]
    answer: dict[str, str] | None   # None: no answer within the client's timeout, or the connection closed
    phase_answered: str


@dataclass
class Load:
    """One closed-loop connection per card, every exchange written down."""

    port: int
    dialect: Dialect
    pans: list[str]
    amount: int = 1_000
    phase: str = "before"
    term: Terminal = field(default_factory=lambda: Terminal(TID, MID))
    exchanges: list[Exchange] = field(default_factory=list)
    _stopping: bool = False
    _tasks: list[asyncio.Task] = field(default_factory=list)

    async def start(self) -> None:
        client = await TerminalClient("127.0.0.1", self.port, self.dialect).connect()
        answer = await client.request(self.term.sign_on())
        assert answer is not None and answer["39"] == "00", answer
        await client.close()
        self._tasks = [asyncio.ensure_future(self._run(pan)) for pan in self.pans]

    async def _run(self, pan: str) -> None:
        async with TerminalClient("127.0.0.1", self.port, self.dialect) as client:
            while not self._stopping:
                request, sent = self.term.purchase(pan, self.amount), self.phase
                try:
                    answer = await client.request(request)
                except (asyncio.TimeoutError, OSError):
                    answer = None
                self.exchanges.append(Exchange(sent, request, answer, self.phase))
                if answer is None:
                    return  # the connection's state is unknown: the test fails on this exchange

    def answered(self, *, sent: str) -> list[Exchange]:
        return [x for x in self.exchanges if x.phase_sent == sent]

    async def until(self, count: int, *, sent: str, what: str) -> None:
        await eventually(lambda: len(self.answered(sent=sent)) >= count or self._finished(),
                         what=f"{count} answers to purchases sent {what}")
        assert not self._finished(), "a load connection ended early (a request went unanswered)"

    def _finished(self) -> bool:
        return any(t.done() for t in self._tasks)

    async def stop(self) -> None:
        self._stopping = True
        await asyncio.gather(*self._tasks)

    def unanswered(self) -> list[Exchange]:
        return [x for x in self.exchanges if x.answer is None]

    def approvals(self) -> list[Exchange]:
        return [x for x in self.exchanges if x.answer is not None and x.answer["39"] == "00"]


def assert_ledger_holds_exactly_the_approvals(db: Path, exchanges: list[Exchange], pans: list[str]) -> None:
    """Every approval a terminal received is posted once, with its amount and RRN; nothing
    else was posted (no 96 left a posting behind); and each card's balances in the ledger are
    the DE54 of its last approval."""
    approved = [x for x in exchanges if x.answer is not None and x.answer["39"] == "00"]
    told = sorted((x.request["11"], int(x.request["4"]), x.answer["37"]) for x in approved)
    posted = sorted((p["stan"], p["amount"], p["rrn"]) for p in postings(db, "purchase"))
    assert posted == told
    for pan in pans:
        last = [x for x in approved if x.request["2"] == pan][-1]
        assert Balances(*card_accounts(db, pan)) == decode_balances(last.answer["54"]), pan
