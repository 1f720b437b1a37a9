"""A private Mosquitto for the tests: its own config in tmp_path, a free loopback port, and
only the PID it started is ever signalled. Tests that need it skip when the binary is
missing (.ci/run installs it). The system broker on 1883 is never used."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)
needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (.ci/run installs it)")
START_TIMEOUT_S = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """`persistent`: Mosquitto keeps sessions and queued QoS 1 messages across a restart
    (saved every second and at exit), as a broker in production must for nothing to be
    lost while a consumer is away; without it a restarted broker forgets every session."""

    def __init__(self, directory: Path, *, persistent: bool = False) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.persistent = persistent
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.config = directory / "mosquitto.conf"
        # `user`: as root, Mosquitto would otherwise switch to the mosquitto user, which may not
        # write to tmp_path (persistence); as any other user it is ignored
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", f"user {getpass.getuser()}",
                 "log_dest stdout", "log_type error", "log_type warning", "log_type notice"]
        if persistent:
            lines += ["persistence true", f"persistence_location {directory}/", "persistence_file mosquitto.db",
                      "autosave_interval 1", "max_queued_messages 100000"]
        else:
            lines.append("persistence false")
        self.config.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "Broker":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        out = (self.directory / f"stdout-{self.starts}.txt").open("w")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        out.close()
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.directory / f"stdout-{self.starts - 1}.txt").read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"mosquitto did not listen on {self.port} within {START_TIMEOUT_S} s")

    def saved_after(self, instant: float) -> bool:
        """Mosquitto has written its state (sessions, subscriptions, queues) since `instant`."""
        db = self.directory / "mosquitto.db"
        return db.exists() and db.stat().st_mtime > instant

    def kill(self) -> None:
        """SIGKILL: the broker gets no chance to save or say goodbye."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture
def broker(tmp_path):
    """A running private broker (no persistence); stopped by its PID at the end."""
    b = Broker(tmp_path / "mosquitto").start()
    yield b
    b.stop()


@pytest.fixture
def persistent_broker(tmp_path):
    b = Broker(tmp_path / "mosquitto", persistent=True).start()
    yield b
    b.stop()
