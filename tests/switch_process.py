"""A real `eum switch` process on a free loopback port, for end-to-end tests that need the
entry point itself (its flags, its log file): the data dir is provisioned in-process first
(conftest's `provision`), then the switch is started as an operator starts it.

Kill only what was started here, by PID; every wait is bounded and says what it waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

from conftest import LAUNCH, provision, start_switch
from fault_harness import free_port, listening
from switch.clock import FixedClock
from switch.wire.codec import decode_fields, load_dialect
from switch.wire.framing import FrameBuffer
from terminal_sim.client import TerminalClient
from waiting import wait_until

EUM_SCRIPT = Path(sys.executable).parent / "eum"
EUM = [str(EUM_SCRIPT)] if EUM_SCRIPT.exists() else [sys.executable, "-m", "switch.cli.main"]
COMMAND_TIMEOUT_S = 30
DIALECT = load_dialect("default")


async def provisioned(data_dir: Path) -> dict[str, dict]:
    """conftest's population (two merchants, T0000001 and T0000002, two charged cards) in a
    data dir no switch runs on afterwards; returns the cards by name."""
    async with start_switch(data_dir, clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        return dict(env.cards)






class SwitchProcess:
    def __init__(self, proc: subprocess.Popen, port: int, data_dir: Path) -> None:
        self.proc = proc
        self.port = port
        self.data_dir = data_dir

    def events(self, **match: Any) -> list[dict[str, Any]]:
        """The switch's log lines so far (<data-dir>/logs/switch.jsonl, written up to 50 ms
        after the fact) whose keys equal `match`."""
        path = self.data_dir / "logs" / "switch.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except ValueError:  # the last line, half written
                continue
            if all(event.get(k) == v for k, v in match.items()):
                out.append(event)
        return out

    def logged(self, what: str, **match: Any) -> list[dict[str, Any]]:
        """Wait until at least one line matches; return all that do."""
        return wait_until(lambda: self.events(**match), what=what)

    async def client(self, *, source: str = "127.0.0.1", response_timeout_ms: float = 5000) -> TerminalClient:
        """A terminal connection from `source` (any 127/8 address: Linux routes them all to lo,
        so each is a distinct peer address for the switch)."""
        client = TerminalClient("127.0.0.1", self.port, DIALECT, response_timeout_ms=response_timeout_ms)
        client.reader, client.writer = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(source, 0))
        return client


@contextlib.contextmanager
def running_switch(data_dir: Path, cwd: Path, *flags: str) -> Iterator[SwitchProcess]:
    """`eum switch` on the data dir with these flags; stopped by SIGTERM at the end, which it
    must survive with exit status 0."""
    port = free_port()
    with (cwd / "switch.err").open("w") as err:
        proc = subprocess.Popen([*EUM, "switch", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}",
                                 "--clock-start", LAUNCH.isoformat(), *flags],
                                cwd=cwd, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: listening(port, proc), what=f"eum switch to listen on {port}")
        yield SwitchProcess(proc, port, data_dir)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            rc = proc.wait(timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=COMMAND_TIMEOUT_S)
            raise AssertionError("eum switch did not stop within 30 s of SIGTERM") from None
    assert rc == 0, f"eum switch exited {rc}: {(cwd / 'switch.err').read_text()[-2000:]}"


def verify_cli(data_dir: Path, cwd: Path) -> dict:
    """`eum admin verify --json`, as an operator runs it (beside a running switch it reads a snapshot)."""
    proc = subprocess.run([*EUM, "admin", "--data-dir", str(data_dir), "verify", "--json"], cwd=cwd,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


class Link:
    """A blocking TCP connection that sends raw frames and reads decoded answers, for tests
    that drive the switch from synchronous code (Hypothesis)."""

    def __init__(self, port: int, *, timeout_s: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.buffer = FrameBuffer(DIALECT.framing)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> dict[str, str] | None:
        """The next answer, or None once the switch has closed the connection. A switch that
        neither answers nor closes fails the test after the socket's timeout."""
        while True:
            fr = self.buffer.next_frame()
            if fr is not None:
                return decode_fields(fr.payload, DIALECT)
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            except TimeoutError:
                raise AssertionError("the switch neither answered nor closed the connection within "
                                     f"{self.sock.gettimeout()} s") from None
            if not data:
                return None
            self.buffer.receive_data(data)

    def close(self) -> None:
        self.sock.close()
