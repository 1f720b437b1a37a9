"""The HSM audit trail: one JSON line per command, to a JSONL file and to a stream (stdout).

PCI HSM asks for a secure audit trail with no clear sensitive data. Each line holds the
command and response codes, the error code, the 6-digit check values of the keys used
(computed on the clear keys, which never leave commands.py), non-secret parameters (PIN block
format codes, MAC algorithm, KSN counter), the fault injected if any, queueing and total
latency. Never a key, PIN, PAN, PIN block, MAC input or KSN. A scrubbing processor runs
before rendering as a second line of defence: it drops secret-named keys and masks any run
of 13–19 digits (first 6 / last 4), whatever produced it.

Written directly, not through structlog: the trail is one fixed shape of line per command,
on the HSM's hot path, so `record` builds the event, scrubs it in one pass over its fields (in
place, for the dict the server hands over: `record_event`) and renders it with orjson
(docs/performance.md, "The HSM's audit line"). It does not depend on how the process's other
logs are configured. The file is block-buffered (64 KiB) and flushed at close; the stream is
the process's stdout. Inside a running event loop the lines of one loop iteration go to each
sink in one write (as the responses do: switch/wire/transport.py WriteBatch), so a pipelined
burst of commands costs one write to stdout, not one per command, whatever the stream's
buffering (PYTHONUNBUFFERED makes every write a system call); outside a loop each line is
written at once.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import orjson

SECRET_KEYS = frozenset({
    "pin", "pins", "pan", "pin_block", "block", "key", "keys", "clear_key", "lmk", "cvv", "pvv",
    "offset", "track2", "message", "data", "ksn",
})  # fmt: skip
_PAN_RE = re.compile(r"(?<!\d)\d{13,19}(?!\d)")


_PAN_LEN_MIN = 13


def mask_digits(text: str) -> str:
    return _PAN_RE.sub(lambda m: m.group(0)[:6] + "*" * (len(m.group(0)) - 10) + m.group(0)[-4:], text)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return mask_digits(value) if len(value) >= _PAN_LEN_MIN else value
    if isinstance(value, dict):
        return _scrub_event(value)
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return value


def _scrub_event(event: dict[str, Any]) -> dict[str, Any]:
    """`_scrub` over an event's fields, into a new dict (the caller's is left as it is)."""
    return _scrub_in_place(dict(event))


def _scrub_in_place(event: dict[str, Any]) -> dict[str, Any]:
    """`_scrub` over the fields of a dict the caller hands over (AuditLog.record_event), in one
    pass: secret-named keys deleted, values replaced where they are; the flat values an audit
    line carries (short strings, numbers, None) are kept without a call each. A nested value is
    scrubbed into a new one (it may be the caller's)."""
    if not SECRET_KEYS.isdisjoint(event):
        for key in SECRET_KEYS.intersection(event):
            del event[key]
    for k, v in event.items():  # values replaced in place: the dict's size does not change
        kind = type(v)
        if kind is str:
            if len(v) >= _PAN_LEN_MIN:
                event[k] = mask_digits(v)
        elif not (kind is int or kind is float or v is None or kind is bool):
            event[k] = _scrub(v)
    return event


def scrub_secrets(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: drop secret-named keys, mask PAN-like digit runs."""
    return _scrub_event(event)


_second: list[Any] = [None, ""]  # the last whole second seen, and its "YYYY-MM-DDTHH:MM:SS"


def utc_timestamp() -> str:
    """Now in UTC as ISO 8601 with microseconds and Z: the date part is formatted once per second."""
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second[0], _second[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_second[1]}.{int((now - second) * 1_000_000):06d}Z"


class AuditLog:
    """`record(**fields)` appends one `hsm_command` line; `record_event(event)` the same line of
    a dict handed over (scrubbed in place: the HSM server's path). `path` None: no file;
    `stream` None: no stream (tests)."""

    def __init__(self, path: Path | None = None, *, stream: TextIO | None = None) -> None:
        self._file: TextIO | None = None
        self.sinks: list[TextIO] = []
        self._pending: list[str] = []  # lines of this loop iteration, written by _write_pending
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8", buffering=1 << 16)
            self.sinks.append(self._file)
        if stream is not None:
            self.sinks.append(stream)

    @classmethod
    def to_stdout(cls, path: Path | None = None) -> AuditLog:
        return cls(path, stream=sys.stdout)

    def record(self, **fields: Any) -> None:
        self.record_event(fields)

    def record_event(self, event: dict[str, Any]) -> None:
        """`record` of a dict the caller hands over and does not use again: scrubbed in place
        (the HSM server's path: one dict a command, not three)."""
        _scrub_in_place(event)
        event["event"] = "hsm_command"
        event["ts"] = utc_timestamp()
        pending = self._pending
        pending.append(orjson.dumps(event).decode() + "\n")
        if len(pending) == 1:
            try:
                asyncio.get_running_loop().call_soon(self._write_pending)
            except RuntimeError:  # no loop here: at once
                self._write_pending()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        for sink in self.sinks:
            sink.write(text)

    def flush(self) -> None:
        self._write_pending()
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self.sinks.remove(self._file)
            self._file = None
