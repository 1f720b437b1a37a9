"""The HSM audit trail: one JSON line per command, to a JSONL file and to a stream (stdout).

PCI HSM asks for a secure audit trail with no clear sensitive data. Each line holds the
command and response codes, the error code, the 6-digit check values of the keys used
(computed on the clear keys, which never leave commands.py), non-secret parameters (PIN block
format codes, MAC algorithm, KSN counter), the fault injected if any, queueing and total
latency. Never a key, PIN, PAN, PIN block, MAC input or KSN. A scrubbing processor runs
before rendering as a second line of defence: it drops secret-named keys and masks any run
of 13–19 digits (first 6 / last 4), whatever produced it.

Built on structlog with its own processor chain (`structlog.wrap_logger`), so the audit
trail does not depend on how the process's other logs are configured.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, TextIO

import structlog

SECRET_KEYS = frozenset({
    "pin", "pins", "pan", "pin_block", "block", "key", "keys", "clear_key", "lmk", "cvv", "pvv",
    "offset", "track2", "message", "data", "ksn",
})  # fmt: skip
_PAN_RE = re.compile(r"(?<!\d)\d{13,19}(?!\d)")


def mask_digits(text: str) -> str:
    return _PAN_RE.sub(lambda m: m.group(0)[:6] + "*" * (len(m.group(0)) - 10) + m.group(0)[-4:], text)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return mask_digits(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in SECRET_KEYS}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return value


def scrub_secrets(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: drop secret-named keys, mask PAN-like digit runs."""
    return {k: _scrub(v) for k, v in event.items() if k not in SECRET_KEYS}


class _Tee:
    """The structlog 'logger' at the end of the chain: writes rendered lines to the sinks."""

    def __init__(self, sinks: list[TextIO]) -> None:
        self.sinks = sinks

    def msg(self, line: str) -> None:
        for sink in self.sinks:
            sink.write(line + "\n")

    info = warning = error = msg


class AuditLog:
    """`record(**fields)` appends one `hsm_command` line. `path` None: no file; `stream`
    None: no stream (tests)."""

    def __init__(self, path: Path | None = None, *, stream: TextIO | None = None) -> None:
        self._file: TextIO | None = None
        sinks: list[TextIO] = []
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8", buffering=1 << 16)
            sinks.append(self._file)
        if stream is not None:
            sinks.append(stream)
        self._tee = _Tee(sinks)
        self._log = structlog.wrap_logger(
            self._tee,
            processors=[
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
                scrub_secrets,
                structlog.processors.JSONRenderer(sort_keys=False),
            ],
            wrapper_class=structlog.BoundLogger,
        )

    @classmethod
    def to_stdout(cls, path: Path | None = None) -> AuditLog:
        return cls(path, stream=sys.stdout)

    def record(self, **fields: Any) -> None:
        self._log.info("hsm_command", **fields)

    def flush(self) -> None:
        for sink in self._tee.sinks:
            sink.flush()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._tee.sinks.remove(self._file)
            self._file = None
