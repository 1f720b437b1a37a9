"""The HSM audit trail: one JSON line per command, to a JSONL file and to a stream (stdout).

PCI HSM asks for a secure audit trail with no clear sensitive data. Each line holds the
command and response codes, the error code, the 6-digit check values of the keys used
(computed on the clear keys, which never leave commands.py), non-secret parameters (PIN block
format codes, MAC algorithm, KSN counter), the fault injected if any, queueing and total
latency. Never a key, PIN, PAN, PIN block, MAC input or KSN. A scrubbing processor runs
before rendering as a second line of defence: it drops secret-named keys and masks any run
of 13–19 digits (first 6 / last 4), whatever produced it.

Written directly, not through structlog: the trail is one fixed shape of line per command,
on the HSM's hot path, so `record` builds the event, scrubs it and renders it with one
json.dumps (half the cost of a structlog chain here; docs/performance.md).
It does not depend on how the process's other logs are configured. The file is block-buffered
(64 KiB) and flushed at close; the stream is the process's stdout.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

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
        return {k: _scrub(v) for k, v in value.items() if k not in SECRET_KEYS}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return value


def scrub_secrets(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: drop secret-named keys, mask PAN-like digit runs."""
    return {k: _scrub(v) for k, v in event.items() if k not in SECRET_KEYS}


class AuditLog:
    """`record(**fields)` appends one `hsm_command` line. `path` None: no file; `stream`
    None: no stream (tests)."""

    def __init__(self, path: Path | None = None, *, stream: TextIO | None = None) -> None:
        self._file: TextIO | None = None
        self.sinks: list[TextIO] = []
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
        event = scrub_secrets(None, "info", fields)
        event["event"] = "hsm_command"
        event["ts"] = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        line = json.dumps(event) + "\n"
        for sink in self.sinks:
            sink.write(line)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self.sinks.remove(self._file)
            self._file = None
