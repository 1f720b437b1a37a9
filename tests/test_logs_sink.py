"""The log sink: one render per event, queued writes for the switch, nothing secret kept."""

from __future__ import annotations

import io
import json

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


def test_a_full_queue_is_flushed_by_the_logging_call_itself(tmp_path, restore_structlog, monkeypatch):
    monkeypatch.setattr(logs.Sink, "FLUSH_INTERVAL_S", 3600.0)  # the thread never wakes in this test
    monkeypatch.setattr(logs.Sink, "QUEUE_LINES_MAX", 3)
    stream = io.StringIO()
    logs.configure(data_dir=tmp_path, name="switch", stream=stream, json_output=True, queued=True)
    log = structlog.get_logger()
    for i in range(4):
        log.info("message", n=i)
    assert [e["n"] for e in _events(stream.getvalue())] == [0, 1, 2]  # the third call flushed
    logs.configure(data_dir=None, stream=io.StringIO(), json_output=True)  # reconfigure closes: the rest lands
    assert [e["n"] for e in _events((tmp_path / "logs" / "switch.jsonl").read_text())] == [0, 1, 2, 3]


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
    assert direct.pop("ts")[-1] == "Z" and chained.pop("ts")[-1] == "Z"
    assert direct == chained == {"peer": "127.0.0.1:5555", "pan": "941010******0011",
                                 "note": "card 941010******0011 unknown", "amount": 20000, "rc": "00",
                                 "event": "message", "level": "info"}
    assert (tmp_path / "logs" / "switch.jsonl").read_text().count("941010******0011") == 4
    quiet = io.StringIO()
    _logs.configure(stream=quiet, level="warning")
    _logs.canonical("message", dict(fields))  # below the configured level: not written
    _logs.flush()
    assert quiet.getvalue() == ""
