"""The HSM audit line's writing (hsm_mock/audit.py): one write per sink per loop iteration, at
once outside a loop, and its timestamp."""

from __future__ import annotations

import asyncio
import io
import json
import re
from datetime import datetime, timezone

from hsm_mock.audit import AuditLog, utc_timestamp


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_outside_a_loop_each_line_is_written_at_once() -> None:
    stream = CountingStream()
    audit = AuditLog(stream=stream)
    audit.record(command="NC", header="0001", error="00")
    assert stream.writes == 1
    audit.record(command="B2", header="0002", error="00")
    assert stream.writes == 2
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["event"], r["command"], r["header"]) for r in lines] == [("hsm_command", "NC", "0001"),
                                                                       ("hsm_command", "B2", "0002")]


async def test_the_lines_of_one_loop_iteration_leave_in_one_write() -> None:
    stream = CountingStream()
    audit = AuditLog(stream=stream)
    for i in range(5):
        audit.record(command="GW", header=f"{i:04d}", error="00")
    assert stream.writes == 0  # not yet: at the end of this iteration
    await asyncio.sleep(0)
    assert stream.writes == 1
    audit.record(command="GW", header="0005", error="01")
    audit.flush()  # flush writes what is pending at once
    assert stream.writes == 2
    await asyncio.sleep(0)
    assert stream.writes == 2  # the scheduled write found nothing left
    headers = [json.loads(line)["header"] for line in stream.getvalue().splitlines()]
    assert headers == ["0000", "0001", "0002", "0003", "0004", "0005"]


def test_the_timestamp_is_utc_with_microseconds() -> None:
    before = datetime.now(timezone.utc)
    ts = utc_timestamp()
    after = datetime.now(timezone.utc)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", ts)
    at = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    assert before.replace(microsecond=0) <= at <= after


def test_secret_fields_are_dropped_at_every_level_and_pan_like_runs_masked() -> None:
    stream = io.StringIO()
    audit = AuditLog(stream=stream)
    audit.record(command="CA", header="0001", pin_block="0412AC89ABCDEF67", ksn="FFFF9876543210E00001",
                 kcv={"zpk": "ABCDEF", "clear_key": "0123456789ABCDEF"}, params=["9410101234567890", 7],
                 ksn_counter=1, ok=True, ratio=0.5, missing=None)
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert {k: v for k, v in line.items() if k != "ts"} == {
        "command": "CA", "header": "0001", "kcv": {"zpk": "ABCDEF"}, "params": ["941010******7890", 7],
        "ksn_counter": 1, "ok": True, "ratio": 0.5, "missing": None, "event": "hsm_command"}


def test_a_handed_over_event_is_scrubbed_in_place_into_the_same_line() -> None:
    """The server's path (`record_event`, the dict scrubbed where it is) writes what
    `record(**fields)` writes, key order included, and leaves the caller's nested values as
    they were (they are scrubbed into new ones)."""
    kcv = {"zpk": "ABCDEF", "clear_key": "0123456789ABCDEF"}
    fields = {"conn": 3, "header": "9410101234567890", "command": "GQ", "pin_block": "0412AC89ABCDEF67", "kcv": kcv,
              "params": ("9410101234567890", 7), "pvv": "1234", "response": "GR", "error": "00", "fault": "none",
              "queue_ms": 0.0, "latency_ms": 1.25}
    by_keywords, in_place = io.StringIO(), io.StringIO()
    AuditLog(stream=by_keywords).record(**dict(fields))
    handed = dict(fields)
    AuditLog(stream=in_place).record_event(handed)

    def without_ts(text: str) -> str:
        return re.sub(r',"ts":"[^"]*"', "", text)

    assert without_ts(in_place.getvalue()) == without_ts(by_keywords.getvalue()) == (
        '{"conn":3,"header":"941010******7890","command":"GQ","kcv":{"zpk":"ABCDEF"},'
        '"params":["941010******7890",7],"response":"GR","error":"00","fault":"none","queue_ms":0.0,'
        '"latency_ms":1.25,"event":"hsm_command"}\n')
    assert kcv == {"zpk": "ABCDEF", "clear_key": "0123456789ABCDEF"}  # the caller's nested dict untouched
    assert "pin_block" not in handed and "pvv" not in handed and handed["header"] == "941010******7890"
