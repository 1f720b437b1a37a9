"""The log sink: one render per event, queued writes for the switch, nothing secret kept."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import threading

import pytest
import structlog

from switch.ops import logs
from waiting import wait_until


@pytest.fixture
def restore_structlog():
    saved = structlog.get_config()
    yield
    logs.configure(data_dir=None, json_output=True, stream=io.StringIO())  # closes any sink and its thread
    structlog.configure(**saved)


def _events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_a_queued_sink_writes_every_line_in_order_to_file_and_stream(tmp_path, restore_structlog):
    stream = io.StringIO()
    logs.configure(data_dir=tmp_path, name="switch", stream=stream, json_output=True, queued=True)
    log = structlog.get_logger()
    for i in range(5):
        log.info("message", stan=f"{i:06d}", pan="9410100000012345")
    logs.flush()
    file_events = _events((tmp_path / "logs" / "switch.jsonl").read_text())
    assert [e["stan"] for e in file_events] == ["000000", "000001", "000002", "000003", "000004"]
    assert _events(stream.getvalue()) == file_events  # rendered once, written to both
    assert {e["pan"] for e in file_events} == {"941010******2345"}


def test_the_flusher_thread_writes_without_an_explicit_flush(tmp_path, restore_structlog):
    logs.configure(data_dir=tmp_path, name="switch", stream=io.StringIO(), json_output=True, queued=True)
    structlog.get_logger().info("switch_listening", port=8583)
    path = tmp_path / "logs" / "switch.jsonl"
    wait_until(path.read_text, what="the flusher thread to write the line to switch.jsonl")
    assert [e["event"] for e in _events(path.read_text())] == ["switch_listening"]


class FaultyDisk:
    """The sink file's write(2), failed on demand (the seam `logs._FileOutput.write_fd`):
    `full` set → ENOSPC, after writing `part_bytes` of the data first when given (a write the
    disk cut short); `hold` clear → the write waits, as on a disk or pipe that stalls."""

    def __init__(self, monkeypatch) -> None:
        self.full = threading.Event()
        self.hold = threading.Event()
        self.hold.set()
        self.waiting = threading.Event()  # a write is held
        self.part_bytes = 0
        monkeypatch.setattr(logs._FileOutput, "write_fd", staticmethod(self.write))

    def write(self, fd: int, data) -> int:
        if not self.hold.is_set():
            self.waiting.set()
            assert self.hold.wait(30), "the test never released the held write"
        if not self.full.is_set():
            return os.write(fd, data)
        if self.part_bytes and len(data) > self.part_bytes:
            return os.write(fd, data[: self.part_bytes])  # the rest of this write will fail
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _dropped(count: int, reason: str, output: str) -> dict:
    return {"count": count, "reason": reason, "output": output, "event": "log_lines_dropped", "level": "warning"}


def _without_times(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in ("ts", "since")} for e in events]


def test_the_flusher_survives_a_full_disk_and_says_how_many_lines_it_dropped_once_a_write_succeeds(
        tmp_path, restore_structlog, monkeypatch):
    """docs/reliability.md, "Full disk": lines that cannot be written are counted and dropped;
    the flusher thread lives on; the next good write begins with `log_lines_dropped`."""
    disk = FaultyDisk(monkeypatch)
    stream = io.StringIO()
    logs.configure(data_dir=tmp_path, name="switch", stream=stream, json_output=True, queued=True)
    log = structlog.get_logger()
    path = tmp_path / "logs" / "switch.jsonl"
    log.info("message", n=0)
    wait_until(path.read_text, what="the first line in switch.jsonl")
    disk.full.set()
    for n in (1, 2, 3):
        log.info("message", n=n)  # never raises, whatever the disk does
    wait_until(lambda: logs._sink._file.dropped == 3, what="the flusher to drop lines 1-3 on the full disk")
    disk.full.clear()
    log.info("message", n=4)
    wait_until(lambda: len(path.read_text().splitlines()) == 3, what="the drop count and line 4 in switch.jsonl")
    assert logs._sink._thread.is_alive()
    written = _events(path.read_text())
    assert _without_times(written) == [
        {"n": 0, "event": "message", "level": "info"}, _dropped(3, "ENOSPC", "file"),
        {"n": 4, "event": "message", "level": "info"}]
    assert written[1]["since"] <= written[1]["ts"]
    logs.flush()
    assert [e["n"] for e in _events(stream.getvalue())] == [0, 1, 2, 3, 4]  # the stream lost nothing


def test_a_write_the_disk_cuts_short_is_cut_back_so_the_file_holds_no_torn_line(tmp_path, restore_structlog,
                                                                                   monkeypatch):
    disk = FaultyDisk(monkeypatch)
    logs.configure(data_dir=tmp_path, name="admin", stream=io.StringIO(), json_output=True)
    log = structlog.get_logger()
    log.info("first")
    disk.full.set()
    disk.part_bytes = 7  # '{"event' reaches the file, then the disk is full
    log.info("second")
    path = tmp_path / "logs" / "admin.jsonl"
    assert [e["event"] for e in _events(path.read_text())] == ["first"]  # the 7 bytes were cut back
    disk.full.clear()
    log.info("third")
    assert _without_times(_events(path.read_text())) == [
        {"event": "first", "level": "info"}, _dropped(1, "ENOSPC", "file"), {"event": "third", "level": "info"}]


def test_a_logging_call_on_a_full_device_does_not_raise_and_the_stream_keeps_the_line(tmp_path, restore_structlog):
    """A real ENOSPC, no seam: the log file is /dev/full, where every write fails so."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "admin.jsonl").symlink_to("/dev/full")
    stream = io.StringIO()
    logs.configure(data_dir=tmp_path, name="admin", stream=stream, json_output=True)
    structlog.get_logger().error("ledger_commit_failed", code="SQLITE_FULL")
    logs.canonical("message", {"rc": "96"})
    assert [(e["event"], e["level"]) for e in _events(stream.getvalue())] == [
        ("ledger_commit_failed", "error"), ("message", "info")]
    assert (logs._sink._file.dropped, logs._sink._file.reason) == (2, "ENOSPC")


def test_a_full_queue_drops_and_counts_new_lines_instead_of_waiting_on_a_stalled_write(
        tmp_path, restore_structlog, monkeypatch):
    """The queue is bounded (QUEUE_LINES_MAX lines): with the flusher stuck in a write, the
    logging call neither blocks nor raises; the lines past the bound are counted, and said
    on both outputs when the write completes."""
    monkeypatch.setattr(logs.Sink, "QUEUE_LINES_MAX", 4)
    disk = FaultyDisk(monkeypatch)
    stream = io.StringIO()
    logs.configure(data_dir=tmp_path, name="switch", stream=stream, json_output=True, queued=True)
    log = structlog.get_logger()
    disk.hold.clear()
    log.info("message", n=0)
    wait_until(disk.waiting.is_set, what="the flusher to be stuck writing line 0")
    done = threading.Event()

    def burst() -> None:
        for n in range(1, 7):
            log.info("message", n=n)
        done.set()

    threading.Thread(target=burst, daemon=True).start()
    try:
        wait_until(done.is_set, what="six logging calls to return while the flusher is stuck")
    finally:
        disk.hold.set()
    path = tmp_path / "logs" / "switch.jsonl"
    wait_until(lambda: len(path.read_text().splitlines()) == 6, what="line 0, the drop count and lines 1-4")
    assert _without_times(_events(path.read_text())) == [
        {"n": 0, "event": "message", "level": "info"}, _dropped(2, "queue_full", "file"),
        *({"n": n, "event": "message", "level": "info"} for n in range(1, 5))]
    logs.flush()
    assert _without_times(_events(stream.getvalue())) == [
        {"n": 0, "event": "message", "level": "info"}, _dropped(2, "queue_full", "stream"),
        *({"n": n, "event": "message", "level": "info"} for n in range(1, 5))]


def test_an_unqueued_sink_writes_at_once_and_drops_secret_keys(tmp_path, restore_structlog):
    stream = io.StringIO()
    logs.configure(data_dir=tmp_path, name="admin", stream=stream, json_output=True)
    structlog.get_logger().warning("odd", pin_block="0123456789ABCDEF", note="card 9410100000012345 declined")
    (event,) = _events(stream.getvalue())
    assert "pin_block" not in event
    assert event["note"] == "card 941010******2345 declined"
    assert _events((tmp_path / "logs" / "admin.jsonl").read_text()) == [event]


def test_a_console_stream_gets_readable_lines_and_the_file_json(tmp_path, restore_structlog):
    stream = io.StringIO()
    logs.configure(data_dir=tmp_path, name="switch", stream=stream, json_output=False)
    structlog.get_logger().info("switch_listening", port=8583)
    assert "switch_listening" in stream.getvalue() and "port=8583" in stream.getvalue()
    assert not stream.getvalue().startswith("{")
    assert _events((tmp_path / "logs" / "switch.jsonl").read_text())[0]["port"] == 8583


def test_the_canonical_line_is_the_event_structlog_would_render_masked_and_without_secrets(tmp_path, restore_structlog):
    """switch/ops/logs.py canonical(): the per-message line skips structlog's processor chain
    but must render exactly the event the chain renders (only the timestamp differs)."""
    import io
    import json as _json

    import structlog as _structlog

    from switch.ops import logs as _logs

    stream = io.StringIO()
    _logs.configure(data_dir=tmp_path, name="switch", stream=stream, json_output=True)
    fields = {"peer": "127.0.0.1:5555", "pan": "9410100000000011", "note": "card 9410100000000011 unknown",
              "pin_block": "041274EDCBA9876F", "amount": 20000, "rc": "00"}
    _logs.canonical("message", dict(fields))
    _structlog.get_logger().info("message", **fields)
    _logs.flush()
    direct, chained = (_json.loads(line) for line in stream.getvalue().splitlines())
    # one zone for every line: KST with its offset, to the microsecond (docs/operations.md, "Logs")
    kst = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+09:00"
    assert re.fullmatch(kst, direct.pop("ts")) and re.fullmatch(kst, chained.pop("ts"))
    assert direct == chained == {"peer": "127.0.0.1:5555", "pan": "941010******0011",
                                 "note": "card 941010******0011 unknown", "amount": 20000, "rc": "00",
                                 "event": "message", "level": "info"}
    assert (tmp_path / "logs" / "switch.jsonl").read_text().count("941010******0011") == 4
    quiet = io.StringIO()
    _logs.configure(stream=quiet, level="warning")
    _logs.canonical("message", dict(fields))  # below the configured level: not written
    _logs.flush()
    assert quiet.getvalue() == ""
