"""One seed's world: the real switch core in one process, simulated terminals, network, HSM
and ledger faults, all on one virtual clock; `run_seed` runs it and checks the invariants.

The switch is the real thing: `switch.ops.runtime.open_core` opens a real SQLite ledger (a
copy of a template provisioned once through the real operations) and builds the engine, the
hot state and the group-commit writer; `switch.authorize.server.Processor` turns each
delivered frame into the framed answer. What is simulated sits at the switch's own seams:
- the clock: `now()` is the start instant plus the loop's virtual time;
- the HSM: `engine.security` is a real `Security` whose HSM pool is `SimHsm` (sim/hsm.py);
- the ledger's disk: the writer's `commit_group` seam (the one tests/test_failure_paths.py
  wraps) raises SQLite's full-disk or failed-fsync error for the commits the schedule fails;
- an operator: `card-charge`, `card-block`, `card-unblock` through the core's operations;
- the network between terminals and the Processor (below), and the event loop itself
  (sim/loop.py: virtual time, the writer's commit run inline).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from switch.authorize.security import Security
from switch.authorize.server import Processor
from switch.clock import FixedClock
from switch.ledger.records import Commit, MetaSet
from switch.ledger.store import LedgerUnavailable
from switch.ops.operations import OperationError, Operations
from switch.ops import runtime
from switch.ops.runtime import open_core
from switch.wire.codec import Dialect, decode_fields, encode_fields, load_dialect
from switch.wire.framing import Frame, FrameBuffer
from terminal_sim.terminal import Terminal

from .checks import Checks, Model, Violation
from .faults import Faults, Schedule, rng
from .hsm import SimHsm
from .loop import SimLoop, SimulationDeadlock, SimulationLivelock
from .terminal import SimTerminal

START = datetime.fromisoformat("2025-10-15T12:00:00+09:00")
RUN_S_MAX = 900.0  # virtual seconds: a run still busy after this is a liveness failure

MERCHANTS = (  # mid, name, district, annual sales, category
    ("NAMDONG01", "Namdong Cafe", "namdong", 250_000_000, "general"),
    ("YEONSU01", "Yeonsu Bakery", "yeonsu", 900_000_000, "general"),
    ("SEOGU01", "Seo Electronics", "seo", 250_000_000, "large_electronics"),  # excluded: no cashback
)
TERMINALS = (  # tid, mid, security profile
    ("T0000001", "NAMDONG01", "none"),
    ("T0000002", "YEONSU01", "none"),
    ("T0000003", "SEOGU01", "none"),
    ("T0000004", "NAMDONG01", "mac"),
    ("T0000005", "YEONSU01", "dukpt-tdes"),
    ("T0000006", "SEOGU01", "dukpt-aes"),
)
AUDITOR = ("T0000009", "NAMDONG01")  # asks every card's balance once the run is quiet
CARDS = (  # program, member, PIN, charged
    ("namdong", "MEMBER-A", "1234", 120_000),
    ("namdong", "MEMBER-A", None, 60_000),   # the same member: one decision at a time across both cards
    ("incheon", None, "1234", 200_000),
    ("yeonsu", None, None, 30_000),
    ("seo", None, "4321", 80_000),
    ("incheon", None, None, 15_000),
)


@dataclass(frozen=True)
class Population:
    template: Path
    terminals: tuple[tuple[str, str, str, str], ...]  # tid, mid, profile, initial KSN
    cards: tuple[dict[str, Any], ...]                 # id, pan, pin, balance (seeded cash)


class LoopClock(FixedClock):
    """The switch's and the terminals' clock: the start instant plus the loop's virtual time."""

    def __init__(self, start: datetime, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(start)
        self.loop = loop

    def now(self) -> datetime:
        return self.at + timedelta(seconds=self.loop.time())


@functools.cache
def default_dialect() -> Dialect:
    return load_dialect("default")


@functools.cache
def _rules(config_dir: Path) -> Any:
    return _load_rules(config_dir)


_load_rules = runtime.load_rules


@contextlib.contextmanager
def rules_parsed_once() -> Any:
    """`open_core` parses the rules' TOML each time it opens (10 ms, a third of a seed); the
    rules are a frozen value, so every seed of a process shares one parse."""
    runtime.load_rules = _rules
    try:
        yield
    finally:
        runtime.load_rules = _load_rules


def run_in_sim_loop(coro: Any) -> Any:
    loop = SimLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        _cancel_all(loop)
        loop.close()


def _cancel_all(loop: SimLoop) -> None:
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


# ---------------------------------------------------------------------------- the template ledger

def build_population(directory: Path) -> Population:
    """Merchants, terminals and charged cards, provisioned once through the real operations
    (an in-process HSM turns the PINs into PVVs); each seed starts from a copy."""
    data_dir = directory / "template"
    with structlog.testing.capture_logs():
        return run_in_sim_loop(_provision(data_dir))


async def _provision(data_dir: Path) -> Population:
    async with open_core(data_dir, clock=FixedClock(START)) as core:
        hsm = SimHsm(None, rng(0, "template-hsm"), key_seed=0)
        zpk, pvk = await Security.switch_keys(hsm)
        await core.writer.submit(Commit(changes=(MetaSet("zpk", zpk), MetaSet("pvk", pvk))))
        core.ops.security = Security(hsm, zpk=zpk, pvk=pvk)
        run = core.ops.run
        for mid, name, district, sales, category in MERCHANTS:
            await run("merchant-add", {"mid": mid, "name": name, "district": district, "annual_sales": sales,
                                       "category": category})
        terminals = []
        for tid, mid, profile in (*TERMINALS, (*AUDITOR, "none")):
            added = await run("terminal-add", {"tid": tid, "mid": mid, "security": profile})
            terminals.append((tid, mid, profile, added.get("ksn", "")))
        cards = []
        for program, member, pin, charge in CARDS:
            issued = await run("card-issue", {"program": program, "member": member, "pin": pin})
            await run("card-charge", {"pan": issued["pan"], "amount": charge})
            card = core.state.load_card(issued["pan"])
            cards.append({"id": card.id, "pan": issued["pan"], "pin": pin, "balance": charge})
    return Population(data_dir, tuple(t for t in terminals if t[0] != AUDITOR[0]), tuple(cards))


# ---------------------------------------------------------------------------- one seed

def commit_error(kind: str) -> sqlite3.OperationalError:
    """The error SQLite raises for a full disk, or for an fsync that failed."""
    if kind == "full":
        exc = sqlite3.OperationalError("database or disk is full")
        exc.sqlite_errorcode = sqlite3.SQLITE_FULL
    else:
        exc = sqlite3.OperationalError("disk I/O error")
        exc.sqlite_errorcode = sqlite3.SQLITE_IOERR_FSYNC
    return exc


@dataclass(frozen=True)
class Plan:
    """What a seed runs: which terminals, how many transactions each, how patient they are,
    and the fault schedule."""

    terminals: tuple[str, ...]
    actions: tuple[int, ...]
    response_timeout_s: float
    operations: int               # charges, blocks and unblocks by an operator during the traffic
    schedule: Schedule

    @classmethod
    def draw(cls, seed: int, population: Population, *, hsm_errors: bool = False) -> "Plan":
        r = rng(seed, "plan")
        tids = [t[0] for t in population.terminals]
        chosen = sorted(r.sample(tids, r.randint(1, 4)))
        return cls(tuple(chosen), tuple(r.randint(2, 7) for _ in chosen), r.choice((0.5, 1.0, 2.0, 5.0)),
                   r.choice((0, 0, 2, 5)), Schedule.draw(seed, chosen, hsm_errors=hsm_errors))


@dataclass
class Outcome:
    seed: int
    digest: str
    steps: int
    counts: dict[str, int]
    trace: list[str] = field(repr=False, default_factory=list)


class SimulationFailed(AssertionError):
    def __init__(self, message: str, trace: list[str]) -> None:
        super().__init__(message)
        self.trace = trace


def replay_command(seed: int) -> str:
    return f"EUM_SIM_SEED={seed} python3 -m pytest -q tests/test_simulation.py -k replay"


def run_seed(seed: int, population: Population, work: Path, *, hsm_errors: bool = False,
             sabotage: str | None = None) -> Outcome:
    """Run one seed in a fresh loop and ledger; raise SimulationFailed naming the seed, the
    invariant, the replay command and the end of the trace."""
    data_dir = work / f"seed-{seed}"
    shutil.copytree(population.template, data_dir, ignore=shutil.ignore_patterns("switch.lock", "logs"))
    loop = SimLoop()
    world = World(seed, population, data_dir, loop, hsm_errors=hsm_errors, sabotage=sabotage)
    try:
        with structlog.testing.capture_logs() as events, rules_parsed_once():
            world.log_events = events
            loop.run_until_complete(world.run())
    except (Violation, SimulationDeadlock, SimulationLivelock) as exc:
        raise SimulationFailed(world.failure(str(exc)), world.faults.lines) from None
    except Exception as exc:  # the code under test (or the simulation) raised: same report, traceback kept
        raise SimulationFailed(world.failure(f"{type(exc).__name__}: {exc}"), world.faults.lines) from exc
    finally:
        _cancel_all(loop)
        loop.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    if loop.errors:
        raise SimulationFailed(world.failure(f"unhandled exception in the loop: {loop.errors[0]}"), world.faults.lines)
    return Outcome(seed, world.faults.digest(), world.checks.steps, world.counts(), world.faults.lines)


class World:
    def __init__(self, seed: int, population: Population, data_dir: Path, loop: SimLoop, *,
                 hsm_errors: bool = False, sabotage: str | None = None) -> None:
        self.seed = seed
        self.population = population
        self.data_dir = data_dir
        self.db = data_dir / "ledger.sqlite3"
        self.loop = loop
        self.sabotage = sabotage
        self.plan = Plan.draw(seed, population, hsm_errors=hsm_errors)
        self.faults = Faults(self.plan.schedule, rng(seed, "net"), rng(seed, "ledger"), rng(seed, "hsm-faults"))
        self.faults.now = loop.time
        self.clock = LoopClock(START, loop)
        self.dialect: Dialect = default_dialect()
        self.cards = list(population.cards)
        self.model = Model()
        self.checks: Checks | None = None
        self.terminals: list[SimTerminal] = []
        self.log_events: list[dict[str, Any]] = []
        self.in_flight = 0
        self.delivered = 0
        self.answered = 0
        self.hsm: SimHsm | None = None
        self.ops: Operations | None = None
        self.proc: Processor | None = None
        self.broken: asyncio.Future[None] | None = None
        self.sabotaged = 0

    @property
    def check(self) -> Checks:
        assert self.checks is not None
        return self.checks

    # ------------------------------------------------------------------ the run

    async def run(self) -> None:
        self.broken = self.loop.create_future()
        self.faults.trace(f"seed {self.seed} plan {self.plan}")
        async with open_core(self.data_dir, clock=self.clock) as core:
            self.hsm = SimHsm(self.faults, rng(self.seed, "hsm"), key_seed=self.seed)
            security = Security(self.hsm, zpk=core.reader.meta("zpk"), pvk=core.reader.meta("pvk"))
            core.engine.security = security
            core.ops.security = security
            self._fault_the_disk(core.writer)
            self.proc = Processor(core.engine, self.dialect)
            self.ops = core.ops
            self.checks = Checks(self)
            try:
                await self._traffic()
                inquiries = await self._final_inquiries()
                self.check.final(inquiries)
                self._check_logs()
            finally:
                self.check.ledger.close()

    async def _traffic(self) -> None:
        profiles = {tid: (mid, profile, ksn) for tid, mid, profile, ksn in self.population.terminals}
        for tid in self.plan.terminals:
            mid, profile, ksn = profiles[tid]
            self.terminals.append(SimTerminal(self, tid, mid, profile, ksn, rng(self.seed, f"terminal/{tid}")))
        scripts = asyncio.gather(*(t.run(n) for t, n in zip(self.terminals, self.plan.actions)),
                                 self._operator(self.plan.operations, rng(self.seed, "operator")))
        done, _ = await asyncio.wait([scripts, self.broken], timeout=RUN_S_MAX,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self.broken.done():
            scripts.cancel()
            self.broken.result()
        if scripts not in done:
            stuck = ", ".join(f"{t.tid}: {t.state}" for t in self.terminals if not t.done)
            raise Violation(f"liveness: terminals still busy after {RUN_S_MAX:g} virtual seconds ({stuck})")
        scripts.result()
        while self.in_flight:  # late answers and duplicates still on the wire or in the switch
            await asyncio.sleep(0.05)
            if self.broken.done():
                self.broken.result()
        # the final checks ask the switch itself: with no fault left. The virtual clock jumps by
        # `when - now`, which floating point may land one ulp short of `when`: sleep again then.
        while not self.faults.healed(self.loop.time()):
            await asyncio.sleep(self.plan.schedule.heal_at_s - self.loop.time())
        self.faults.trace("quiet")

    async def _operator(self, actions: int, r: Any) -> None:
        """An operator at `eum admin` while terminals trade: charges (the model adds what was
        charged), and blocks each undone before the end (a blocked card declines 62, and
        must still take its reversals)."""
        blocked: list[str] = []
        for _ in range(actions):
            await asyncio.sleep(r.uniform(0.05, 2.0))
            card = r.choice(self.cards)
            self.faults.trace(f"operator takes card {card['id']}")
            if r.random() < 0.75:
                amount = r.choice((10_000, 25_000, 50_000))
                if await self._operate("card-charge", card["pan"], amount=amount):
                    self.model.charged(card["pan"], amount)
            elif await self._operate("card-block", card["pan"]):
                blocked.append(card["pan"])
        for pan in blocked:
            while not await self._operate("card-unblock", pan):
                await asyncio.sleep(0.5)

    async def _operate(self, op: str, pan: str, **args: Any) -> bool:
        """One operation, as `eum admin` sends it to a running switch; False if refused (a
        limit) or the ledger could not commit it."""
        try:
            await self.ops.run(op, {"pan": pan, **args})
        except (OperationError, LedgerUnavailable) as exc:
            self.faults.trace(f"operator {op} {args} refused: {type(exc).__name__}")
            return False
        self.faults.trace(f"operator {op} {args} done")
        return True

    async def _final_inquiries(self) -> dict[str, dict[str, str]]:
        auditor = Terminal(*AUDITOR, now=self.clock.now)
        await self._direct(auditor.sign_on())
        return {card["pan"]: await self._direct(auditor.balance(card["pan"])) for card in self.cards}

    async def _direct(self, fields: dict[str, str]) -> dict[str, str]:
        data = await self.proc.process(Frame(encode_fields(fields, self.dialect)), "auditor")
        buffer = FrameBuffer(self.dialect.framing)
        buffer.receive_data(data)
        return decode_fields(buffer.next_frame().payload, self.dialect)

    def _check_logs(self) -> None:
        for event in self.log_events:
            if event.get("event") in ("processing_failed", "message_dropped"):
                raise Violation(f"the switch logged {event.get('event')}: {event.get('error') or event.get('reason')}")

    # ------------------------------------------------------------------ the seams

    def _fault_the_disk(self, writer: Any) -> None:
        real = writer.commit_group

        def commit_group(conn: sqlite3.Connection, units: list) -> None:
            fault = self.faults.commit_fault(self.loop.time())
            if fault is not None:  # raised before anything is written, as SQLite does on a failed write
                self.faults.trace(f"ledger commit of {len(units)} fails: {fault}")
                raise commit_error(fault)
            if self.sabotage == "lost_commit" and not self.sabotaged and any(
                    u.posting is not None and u.message is not None for u in units):
                self.sabotaged += 1  # a writer that acknowledges a group it never wrote
                return None
            return real(conn, units)

        writer.commit_group = commit_group

    # ------------------------------------------------------------------ the network

    def send(self, term: SimTerminal, secured: dict[str, str], payload: bytes) -> None:
        now = self.loop.time()
        copies = self.faults.copies(term.tid, now)
        self.faults.trace(f"{term.tid} sends {secured['t']} {secured['11']} copies={len(copies)}")
        for delay in copies:
            self.in_flight += 1
            self.loop.call_later(delay, self._deliver, term, secured, payload)

    def _deliver(self, term: SimTerminal, secured: dict[str, str], payload: bytes) -> None:
        self.delivered += 1
        self.faults.trace(f"switch takes {term.tid} {secured['t']} {secured['11']}")
        self.loop.create_task(self._process(term, secured, payload))

    async def _process(self, term: SimTerminal, secured: dict[str, str], payload: bytes) -> None:
        try:
            data = await self.proc.process(Frame(payload), term.tid)
            if data is None:
                self._break(Violation(f"{term.tid} {secured['t']} STAN {secured['11']}: the switch sent no answer"))
                return
            if self.sabotage == "unsigned_approval" and term.profile != "none":
                data = self._strip_mac(data)
            self.answered += 1
            copies = self.faults.copies(term.tid, self.loop.time())
            self.faults.trace(f"switch answers {term.tid} {secured['11']} copies={len(copies)}")
            for delay in copies:
                self.in_flight += 1
                self.loop.call_later(delay, self._arrive, term, secured, data)
        finally:
            self.in_flight -= 1

    def _arrive(self, term: SimTerminal, secured: dict[str, str], data: bytes) -> None:
        self.in_flight -= 1
        try:
            term.received(data, secured)
        except Violation as exc:
            self._break(exc)

    def _break(self, exc: Violation) -> None:
        if self.broken is not None and not self.broken.done():
            self.broken.set_exception(exc)

    def _strip_mac(self, data: bytes) -> bytes:
        """Sabotage: an approval whose MAC bytes were zeroed on the way out."""
        buffer = FrameBuffer(self.dialect.framing)
        buffer.receive_data(data)
        fields = decode_fields(buffer.next_frame().payload, self.dialect)
        if fields.get("39") != "00" or ("64" not in fields and "128" not in fields):
            return data
        return data[:-8] + bytes(8)

    # ------------------------------------------------------------------ reporting

    def counts(self) -> dict[str, int]:
        out = dict(self.faults.counts)
        out.update(delivered=self.delivered, answered=self.answered)
        if self.hsm is not None:
            out.update({f"hsm_{k}": v for k, v in self.hsm.counts.items()})
        for term in self.terminals:
            for txn in term.txns:
                for a in txn.answers:
                    rc = a.fields.get("39", "")
                    out[f"rc_{rc}"] = out.get(f"rc_{rc}", 0) + 1
                    if rc == "00" and a.mac_ok:
                        out["approved with a MAC"] = out.get("approved with a MAC", 0) + 1
                final = txn.final if isinstance(txn.final, str) else "none" if txn.final is None else \
                    txn.final.fields.get("39")
                out[f"{txn.kind} {final}"] = out.get(f"{txn.kind} {final}", 0) + 1
                if len([a for a in txn.answers if a.fields.get("39") not in ("91", "96")]) > 1:
                    out["stored_answer_repeated"] = out.get("stored_answer_repeated", 0) + 1
        for event in self.log_events:
            if event.get("replayed"):
                out["replayed"] = out.get("replayed", 0) + 1
            note = event.get("note", "")
            if note and event.get("event") == "message":
                out[f"note: {note}"] = out.get(f"note: {note}", 0) + 1
        return out

    def failure(self, what: str) -> str:
        tail = "\n".join(self.faults.lines[-40:])
        return (f"simulation seed {self.seed} failed: {what}\n"
                f"replay: {replay_command(self.seed)}\n"
                f"plan: {self.plan}\n"
                f"last {min(40, len(self.faults.lines))} trace lines:\n{tail}")
