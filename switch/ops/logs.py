"""Structured logs: one key/value event per line, secrets masked before any renderer.

Only entry points call `configure`; modules call `structlog.get_logger()`. JSON when stdout
is not a TTY, a readable console when it is; with a data dir, every event is also appended
as JSON to <data-dir>/logs/<name>.jsonl. The switch queues its lines (Sink, queued=True): a
flusher thread writes them every 50 ms, so logging costs the hot path no system call.
"""

from __future__ import annotations

import atexit
import datetime
import json
import re
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

import structlog

from switch.domain import mask_pan

# Keys whose values never reach a log, whatever they hold.
SECRET_KEYS = frozenset({"pin", "pin_block", "track2", "track_data", "cvv", "cvv2", "key", "keys", "lmk", "pvv"})
_PAN_LEN_MIN = 13
_PAN_RE = re.compile(r"(?<!\d)\d{13,19}(?!\d)")


def _mask_text(text: str) -> str:
    return _PAN_RE.sub(lambda m: mask_pan(m.group(0)), text)


def mask_value(value: Any) -> Any:
    if isinstance(value, str):
        return _mask_text(value) if len(value) >= _PAN_LEN_MIN else value
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


# JSON lines with ", " and ": " as operators grep them ('"rc": "55"'), one encoder for all
_render = json.JSONEncoder(default=str, ensure_ascii=False).encode


class Sink:
    """The last processor: renders each event once and hands the lines to the outputs — the
    stream (JSON, or a readable console line on a TTY) and, with a data dir, the JSONL file.

    queued=True (the switch): lines wait in memory and a flusher thread writes them every
    FLUSH_INTERVAL_S in one write per output, so a message's log line costs the hot path a
    render and an append, not two write(2) calls. The queue is bounded: past QUEUE_LINES_MAX
    the logging call flushes itself. flush() (explicit, on reconfigure and at exit) empties it.
    queued=False (every other command and the tests' default): each line is written at once.
    """

    FLUSH_INTERVAL_S = 0.05
    QUEUE_LINES_MAX = 10_000

    def __init__(self, stream: TextIO, *, json_output: bool, path: Path | None, queued: bool) -> None:
        self._stream: TextIO | None = None if stream is sys.stdout else stream  # None: sys.stdout when writing
        self._console = None if json_output else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback)  # never rich locals
        self._fh: TextIO | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = path.open("a", encoding="utf-8", buffering=1)  # line-buffered: operators tail it
        self._stream_lines: list[str] = []
        self._file_lines: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if queued:
            self._thread = threading.Thread(target=self._flush_periodically, name="log-flusher", daemon=True)
            self._thread.start()

    def __call__(self, _logger: Any, _method: str, event: dict[str, Any]) -> Any:
        self.take(event, _logger, _method)
        raise structlog.DropEvent

    def take(self, event: dict[str, Any], _logger: Any = None, _method: str = "info") -> None:
        """Render once (JSON, and a console line on a TTY) and write or queue."""
        line = _render(event)
        stream_line = line if self._console is None else self._console(_logger, _method, dict(event))
        if self._thread is None:
            with self._lock:
                if self._fh is not None:
                    self._fh.write(line + "\n")
                self._write_stream(stream_line + "\n")
            return
        with self._lock:
            self._stream_lines.append(stream_line)
            if self._fh is not None:
                self._file_lines.append(line)
            full = len(self._stream_lines) >= self.QUEUE_LINES_MAX
        if full:
            self.flush()

    def _write_stream(self, text: str) -> None:
        stream = self._stream or sys.stdout  # as print() does: a redirected stdout (capture) is honoured
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # a closed stdout must not stop the switch; the file keeps the lines
            pass

    def _flush_periodically(self) -> None:
        while not self._stop.wait(self.FLUSH_INTERVAL_S):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            stream_lines, self._stream_lines = self._stream_lines, []
            file_lines, self._file_lines = self._file_lines, []
            if file_lines and self._fh is not None:
                self._fh.write("\n".join(file_lines) + "\n")
            if stream_lines:
                self._write_stream("\n".join(stream_lines) + "\n")
            if self._fh is not None:
                self._fh.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()
        if self._fh is not None:
            self._fh.close()
            self._fh = None


_sink: Sink | None = None
_level_min = 20


def canonical(event: str, fields: dict[str, Any]) -> None:
    """The switch's one line per message, without structlog's processor chain: the same event
    as `structlog.get_logger().info(event, **fields)` renders (level, UTC timestamp, secrets
    dropped and PANs masked before rendering), handed straight to the sink."""
    processors = structlog.get_config()["processors"]
    if _sink is None or not processors or processors[-1] is not _sink:  # not ours (a test capturing logs)
        structlog.get_logger().info(event, **fields)
        return
    if _level_min > 20:
        return
    record = {**fields, "event": event, "level": "info",
              "ts": datetime.datetime.now(tz=datetime.timezone.utc).isoformat().replace("+00:00", "Z")}
    _sink.take(mask_secrets(None, "info", record))


def configure(*, data_dir: Path | None = None, name: str = "switch", stream: TextIO | None = None,
              json_output: bool | None = None, level: str = "info", queued: bool = False) -> None:
    """queued=True takes log writes off the hot path (Sink); the caller flushes at the end."""
    global _sink, _level_min
    stream = stream or sys.stdout
    _level_min = _LEVELS[level]
    if json_output is None:
        json_output = not stream.isatty()
    if _sink is not None:
        _sink.close()
    _sink = Sink(stream, json_output=json_output, path=None if data_dir is None else data_dir / "logs" / f"{name}.jsonl",
                 queued=queued)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,  # traceback text first, so masking covers it
            mask_secrets,
            _sink,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def flush() -> None:
    if _sink is not None:
        _sink.flush()


@atexit.register
def _flush_at_exit() -> None:
    flush()


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
