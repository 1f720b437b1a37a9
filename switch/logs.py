"""Structured logs: one key/value event per line, secrets masked before any renderer.

Only entry points call `configure`; modules call `structlog.get_logger()`. JSON when stdout
is not a TTY, a readable console when it is; with a data dir, every event is also appended
as JSON to <data-dir>/logs/<name>.jsonl.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, TextIO

import structlog

from .domain import mask_pan

# Keys whose values never reach a log, whatever they hold.
SECRET_KEYS = frozenset({"pin", "pin_block", "track2", "track_data", "cvv", "cvv2", "key", "keys", "lmk", "pvv"})
_PAN_RE = re.compile(r"(?<!\d)\d{13,19}(?!\d)")


def _mask_text(text: str) -> str:
    return _PAN_RE.sub(lambda m: mask_pan(m.group(0)), text)


def mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return _mask_text(value)
    if isinstance(value, dict):
        return {k: ("[redacted]" if k in SECRET_KEYS else mask_value(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_value(v) for v in value]
    return value


def mask_secrets(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Drop secret keys; mask anything that looks like a PAN to first 6 / last 4.

    Any run of 13–19 digits is treated as a PAN: losing such a number from a log is cheaper
    than leaking a card number. RRNs (12 digits) stay readable. The key `pan` is masked
    whatever its length.
    """
    for key in list(event):
        if key in SECRET_KEYS:
            del event[key]
        elif key == "pan" and isinstance(event[key], str):
            event[key] = mask_pan(event[key])
        else:
            event[key] = mask_value(event[key])
    return event


class JsonFile:
    """A processor that appends the event as one JSON line to a file, then passes it on."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: TextIO = path.open("a", encoding="utf-8", buffering=1)  # line-buffered: operators tail it

    def __call__(self, _logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        self._fh.write(json.dumps(event, default=str, ensure_ascii=False) + "\n")
        return event

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


_file_sink: JsonFile | None = None


def configure(*, data_dir: Path | None = None, name: str = "switch", stream: TextIO | None = None,
              json_output: bool | None = None, level: str = "info") -> None:
    global _file_sink
    stream = stream or sys.stdout
    if json_output is None:
        json_output = not stream.isatty()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        structlog.processors.format_exc_info,  # traceback text first, so masking covers it
        mask_secrets,
    ]
    if _file_sink is not None:
        _file_sink.close()
        _file_sink = None
    if data_dir is not None:
        _file_sink = JsonFile(data_dir / "logs" / f"{name}.jsonl")
        processors.append(_file_sink)
    processors.append(structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(
        colors=False, exception_formatter=structlog.dev.plain_traceback))  # never rich locals
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def flush() -> None:
    if _file_sink is not None:
        _file_sink.flush()


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
