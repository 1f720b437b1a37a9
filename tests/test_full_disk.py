"""A full disk under load, end to end: a real `eum switch` whose data dir is a small tmpfs the
test fills while terminals buy, then frees.

Rules guarded (docs/reliability.md, "Full disk"): every request is answered (00 before the
disk fills, 96 while the ledger cannot commit, nothing posted for a 96); logging never
raises into the request path: the log lines that cannot be written are counted and dropped,
and once a write succeeds a `log_lines_dropped` line says how many; the JSON-lines file holds
no torn line; `ledger_commit_failed` names the real error (SQLITE_FULL, "database or disk is
full"), never "cannot rollback"; when space returns the switch approves again by itself, every
approval a terminal received is in the ledger, and `eum admin verify` passes.

The mechanism: the switch runs inside a private mount namespace (`unshare --mount`, plus
`--map-root-user` when not root) where tests/faults/small_fs.py mounts an 8 MiB tmpfs on
the data dir, copies a provisioned ledger onto it, and copies the data dir out when the switch
has exited; the test reaches the small disk through /proc/PID/root and fills it with a file
until write(2) fails with ENOSPC. The namespace dies with the process, so nothing stays
mounted. Where a mount namespace cannot be made the test is skipped, saying why.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from switch.ledger.sqlite import commit_group
from switch.wire.codec import load_dialect
from terminal_sim.client import TerminalClient
from terminal_sim.terminal import Terminal

from fault_harness import (COMMAND_TIMEOUT_S, MID, TID, Exchange, Load, assert_ledger_holds_exactly_the_approvals,
                           fields_of, free_port, json_lines, seeded, switch_command, system_error_answer,
                           verify_cli, wait_listening)
from waiting import eventually

SMALL_FS = Path(__file__).parent / "faults" / "small_fs.py"
DISK_SIZE = "8m"


def namespace_command() -> list[str]:
    """A private mount namespace; a user namespace too when not root (mount needs CAP_SYS_ADMIN)."""
    return ["unshare", "--mount", "--propagation", "private", *([] if os.geteuid() == 0 else ["--map-root-user"])]


def small_disk_unavailable(probe: Path) -> str | None:
    """Why a small tmpfs cannot be mounted in a private namespace here, or None if it can."""
    probe.mkdir()
    try:
        proc = subprocess.run([*namespace_command(), "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except FileNotFoundError:
        return "unshare(1) is not installed (util-linux): no private mount namespace for a small tmpfs"
    if proc.returncode != 0:
        return f"cannot mount a tmpfs in a private mount namespace: {proc.stderr.strip()}"
    return None


def fill(directory: Path) -> int:
    """Write a filler file until the file system refuses with ENOSPC, in smaller and smaller
    writes down to one byte; return the bytes written."""
    written = 0
    with (directory / "filler").open("ab", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1 << 8, 1):
            chunk = b"\0" * size
            while True:
                try:
                    written += f.write(chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    return written


async def test_a_full_disk_answers_96_drops_and_counts_log_lines_and_the_switch_resumes_by_itself(tmp_path):
    reason = small_disk_unavailable(tmp_path / "probe")
    if reason is not None:
        pytest.skip(reason)
    seed, disk, after = tmp_path / "seed", tmp_path / "disk", tmp_path / "after"
    pans = await seeded(seed, cards=4)
    port = free_port()
    stream = tmp_path / "switch.out"  # the switch's stdout, on the big disk: every line it logged
    with stream.open("w") as out, (tmp_path / "switch.err").open("w") as err:
        proc = subprocess.Popen([*namespace_command(), sys.executable, str(SMALL_FS), "--size", DISK_SIZE,
                                 "--mount", str(disk), "--seed", str(seed), "--out", str(after), "--",
                                 *switch_command(disk, port)],
                                cwd=tmp_path, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    running = Path("/proc", str(proc.pid), "root", *disk.parts[1:])  # the small disk, as the switch sees it
    dialect = load_dialect("default")
    load = Load(port, dialect, pans)
    try:
        wait_listening(port, proc)
        await load.start()
        await load.until(12, sent="before", what="before the disk fills")
        load.phase = "filling"
        assert await asyncio.to_thread(fill, running) > 0
        # a write that was under way while the disk filled may give back the space it had taken
        # when it fails: wait for the first 96, then take whatever is left
        await eventually(lambda: load.unanswered() or any(x.answer["39"] == "96" for x in load.exchanges),
                         what="the first 96 after the disk filled")
        await asyncio.to_thread(fill, running)
        load.phase = "full"
        await load.until(20, sent="full", what="while the disk is full")
        await load.stop()
        # the log flusher writes every 50 ms: 20 quick 96s can all fall between two flushes, and
        # then nothing was ever written to the full disk. Wait until the lines of the 96s are on
        # stdout (the big disk), then for the flush after that one: both outputs of the flush
        # that carried the 96s have been written (the file's failed) before the disk is freed.
        await eventually(lambda: sum(1 for e in json_lines(stream) if e["event"] == "message" and e.get("rc") == "96")
                         >= 20, what="the 96s' log lines on stdout")
        marker = sum(1 for _ in json_lines(stream))
        async with TerminalClient("127.0.0.1", port, dialect) as client:
            late = await client.request(Terminal(TID, MID, stan=800_000).sign_on())
        assert late is not None and late["39"] == "00"
        await eventually(lambda: sum(1 for _ in json_lines(stream)) > marker, what="a later flush on stdout")
        assert proc.poll() is None, "the switch died on the full disk"

        (running / "filler").unlink()
        load.phase = "freed"
        term = Terminal(TID, MID, stan=900_000)
        async with TerminalClient("127.0.0.1", port, dialect) as client:
            request = term.purchase(pans[0], 3_000)
            resumed = await client.request(request)
        assert resumed is not None and resumed["39"] == "00", fields_of(resumed)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=COMMAND_TIMEOUT_S)
    assert rc == 0, (tmp_path / "switch.err").read_text()[-2000:]

    # every request was answered: 00 before the disk filled, 96 (nothing posted) once it was full
    assert load.unanswered() == []
    assert {x.answer["39"] for x in load.exchanges} <= {"00", "96"}
    assert {x.answer["39"] for x in load.exchanges if x.phase_answered == "before"} == {"00"}
    full = load.answered(sent="full")
    assert [fields_of(x.answer) for x in full] == [system_error_answer(x.request) for x in full]

    db = after / "ledger.sqlite3"
    assert_ledger_holds_exactly_the_approvals(db, [*load.exchanges, _exchange(request, resumed)], pans)
    assert verify_cli(after, tmp_path)["ok"] is True

    # the ledger named the real error; the log file lost lines, said how many, and holds no torn line
    everything = json_lines(stream)
    failures = [e for e in everything if e["event"] == "ledger_commit_failed"]
    assert failures and {(e["error"], e["code"], e["detail"]) for e in failures} == {
        ("OperationalError", "SQLITE_FULL", "database or disk is full")}
    assert "cannot rollback" not in stream.read_text() + (tmp_path / "switch.err").read_text()
    kept = json_lines(after / "logs" / "switch.jsonl")
    drops = [e for e in kept if e["event"] == "log_lines_dropped"]
    assert drops and all(e["reason"] == "ENOSPC" and e["level"] == "warning" and e["count"] > 0 for e in drops)
    # the stream (on the big disk) has every line; the file has every line but those it counted
    written = [e for e in kept if e["event"] != "log_lines_dropped"]
    assert len(everything) == len(written) + sum(e["count"] for e in drops)
    assert _is_subsequence(written, everything)
    messages = [e for e in everything if e["event"] == "message"]
    # each purchase, two sign-ons (the load's and the flush marker), the purchase after
    assert len(messages) == len(load.exchanges) + 3
    resumed_line = next(i for i, e in enumerate(kept) if e["event"] == "message" and e.get("stan") == request["11"])
    assert kept.index(drops[-1]) < resumed_line  # said as soon as a write succeeded, before later lines


def _exchange(request: dict[str, str], answer: dict[str, str]) -> Exchange:
    return Exchange("freed", request, answer, "freed")


def _is_subsequence(part: list[dict], whole: list[dict]) -> bool:
    rest = iter(whole)
    return all(any(item == other for other in rest) for item in part)



class _FullDiskConnection:
    """A connection whose COMMIT fails as a full disk does and whose transaction SQLite has
    not (yet) rolled back, so the adapter sends a ROLLBACK, which fails too."""

    in_transaction = True

    def __init__(self) -> None:
        self.statements: list[str] = []

    def execute(self, sql: str, *args: object) -> None:
        self.statements.append(sql)
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        if sql == "ROLLBACK":
            raise sqlite3.OperationalError("cannot rollback - no transaction is active")

    def executemany(self, sql: str, rows: object) -> None:
        self.statements.append(sql)


def test_a_rollback_that_fails_does_not_hide_the_error_that_failed_the_commit():
    """switch/ledger/sqlite.py `commit_group`: `ledger_commit_failed` must name SQLITE_FULL,
    not the ROLLBACK's own failure (docs/reliability.md, "Full disk")."""
    conn = _FullDiskConnection()
    with pytest.raises(sqlite3.OperationalError) as failed:
        commit_group(conn, [])
    assert str(failed.value) == "database or disk is full"
    assert conn.statements == ["BEGIN IMMEDIATE", "COMMIT", "ROLLBACK"]
