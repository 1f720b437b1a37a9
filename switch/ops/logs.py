"""Structured logs: one key/value event per line, secrets masked before any renderer.

Only entry points call `configure`; modules call `structlog.get_logger()`. JSON when stdout
is not a TTY, a readable console when it is; with a data dir, every event is also appended
as JSON to <data-dir>/logs/<name>.jsonl. The switch queues its lines (Sink, queued=True): a
flusher thread writes them every 50 ms, so logging costs the hot path no system call. Logging
never raises: a line that cannot be written (a full disk) is dropped and counted, and the
count is logged once a write succeeds again. Timestamps are KST with the offset; the file
rotates by size with a retention count and is opened again on SIGHUP (docs/operations.md,
"Logs").
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import errno
import json
import os
import re
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, TextIO

import orjson
import structlog

from switch.domain import KST, SECRET_KEYS, mask_pan, mask_secrets, mask_value, zero_padded  # noqa: F401 (re-exported)

# What never reaches a log and how a PAN is masked (SECRET_KEYS, mask_value, mask_secrets):
# in the compiled switch/domain.py, as every log line and the canonical line pass through them.


# JSON lines with ", " and ": " as operators grep them ('"rc": "55"'), one renderer for all.
_render_stdlib = json.JSONEncoder(default=str, ensure_ascii=False).encode
# orjson writes no spaces, but indented it writes ": " and puts each member on a line of its
# own; a string never holds a raw newline (JSON escapes it), so every newline and the
# indentation after it are layout, and joining them back gives the stdlib's text (≈ 1.9 against
# ≈ 4.5 µs for the canonical line: docs/performance.md, "The log lines rendered by orjson
# (kept)"). Dataclasses and datetimes go to `default` as with the stdlib (str); what orjson
# refuses (an int beyond 64 bits, a key that is not a string, a lone surrogate) is rendered
# by the stdlib. Two differences, in values no line of ours holds: floats below 1e-4 (orjson
# writes 1.5e-7 and 0.00001 where the stdlib wrote 1.5e-07 and 1e-05; NaN and the infinities
# as null, where the stdlib wrote NaN, not JSON), and a plain Enum member, written as its
# value (the stdlib gave `str()` of it, "Fault.HANG"; a str or int Enum is its value in both).
_ORJSON_LINE = orjson.OPT_INDENT_2 | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
_MEMBER_BREAK = re.compile(",\n *")
_BREAK = re.compile("\n *")


def _render(event: dict[str, Any]) -> str:
    try:
        text = orjson.dumps(event, default=str, option=_ORJSON_LINE).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        return _render_stdlib(event)
    if text.startswith("{\n  ") and text.endswith("\n}"):  # an object of one or more members
        members = text[4:-2].replace(",\n  ", ", ")
        if "\n" not in members:  # flat (the canonical line): one replacement
            return "{" + members + "}"
    return _BREAK.sub("", _MEMBER_BREAK.sub(", ", text))  # nested: the deeper indentation too


_kst_second: tuple[int, str] = (-1, "")  # the last whole second seen and its KST date and time


def _now() -> str:
    """Every log line's `ts`: Korean time with its offset, microseconds — the zone reports and
    `eum admin card show` use, so an operator compares times without converting. The text of
    datetime.isoformat(timespec="microseconds") in KST (which has no daylight saving time: its
    offset is always +09:00), with the date and time formatted once a second."""
    global _kst_second
    now = time.time()
    second = int(now)
    cached = _kst_second  # one read: the flusher thread may replace it meanwhile
    if cached[0] != second:
        cached = _kst_second = (second, datetime.datetime.fromtimestamp(second, KST).strftime("%Y-%m-%dT%H:%M:%S"))
    return cached[1] + "." + zero_padded(int((now - second) * 1_000_000), 6) + "+09:00"  # no format() call


def _timestamp(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    event["ts"] = _now()
    return event


def _reason(exc: BaseException) -> str:
    """ENOSPC, EIO, EFBIG… for an OSError; the exception's type otherwise (a closed stream)."""
    code = getattr(exc, "errno", None)
    return errno.errorcode.get(code, type(exc).__name__) if code is not None else type(exc).__name__


class _Output:
    """One destination of log lines, and the lines it could not take since its last good write.

    `write` never raises: lines it cannot write are dropped and counted, and the next write
    that succeeds starts with one `log_lines_dropped` line (count, reason, since) telling so."""

    name = ""

    def __init__(self, render_dropped: Callable[[dict[str, Any]], str]) -> None:
        self._render_dropped = render_dropped
        self.dropped = 0
        self.reason = ""
        self.since = ""

    def drop(self, lines: int, reason: str) -> None:
        if lines <= 0:
            return
        if self.dropped == 0:
            self.since = _now()
        self.dropped += lines
        self.reason = reason

    def write(self, lines: list[str]) -> None:
        if not lines and self.dropped == 0:
            return
        head = []
        if self.dropped:
            head = [self._render_dropped({"count": self.dropped, "reason": self.reason, "since": self.since,
                                          "output": self.name, "event": "log_lines_dropped", "level": "warning",
                                          "ts": _now()})]
        try:
            self._write("\n".join(head + lines) + "\n")
        except (OSError, ValueError) as exc:  # a full disk, an I/O error, a closed stream: never the caller's
            self.drop(len(lines), _reason(exc))
            return
        self.dropped = 0

    def _write(self, text: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


KEEP_DEFAULT = 5                      # rotated files kept beside the live one
MAX_BYTES_DEFAULT = 100 * 1024 * 1024  # the switch rotates its log at 100 MiB (eum switch --log-max-mb)


class _FileOutput(_Output):
    """The JSON-lines file, appended through one descriptor. A write that fails part-way is
    cut back to where it started, so the file never holds a torn line."""

    name = "file"
    write_fd = staticmethod(os.write)  # a fault-injection seam: tests/test_logs_sink.py fails it

    def __init__(self, path: Path, render_dropped: Callable[[dict[str, Any]], str], *,
                 max_bytes: int | None = None, keep: int = KEEP_DEFAULT) -> None:
        super().__init__(render_dropped)
        self.path, self.max_bytes, self.keep = path, max_bytes, keep
        self.reopen_wanted = False  # set by a signal handler (SIGHUP): acted on by the next write
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def _reopen(self) -> None:
        """Close and open the path again: logrotate moved the file away (SIGHUP), or we did."""
        self.reopen_wanted = False
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = self._open()

    def _rotate(self) -> None:
        """<name>.jsonl → .1 → .2 … → .<keep>; the oldest beyond `keep` is deleted."""
        for n in range(self.keep, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if n == self.keep:
                with contextlib.suppress(FileNotFoundError):
                    older.unlink()
            newer = self.path if n == 1 else self.path.with_name(f"{self.path.name}.{n - 1}")
            with contextlib.suppress(FileNotFoundError):
                os.replace(newer, older)
        self._reopen()

    def _write(self, text: str) -> None:
        if self.reopen_wanted and self._fd is not None:
            self._reopen()
        if self._fd is None:
            raise ValueError("log file closed")
        if self.max_bytes is not None and os.fstat(self._fd).st_size >= self.max_bytes:
            self._rotate()
        data = memoryview(text.encode("utf-8"))
        start = os.fstat(self._fd).st_size  # O_APPEND: this write begins at the end of the file
        try:
            while data:
                data = data[self.write_fd(self._fd, data):]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            raise

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


class _StreamOutput(_Output):
    """stdout (or the stream given), resolved at each write as print() does, so a redirected
    stdout (pytest's capture) is honoured."""

    name = "stream"

    def __init__(self, stream: TextIO, render_dropped: Callable[[dict[str, Any]], str]) -> None:
        super().__init__(render_dropped)
        self._stream: TextIO | None = None if stream is sys.stdout else stream  # None: sys.stdout when writing

    def _write(self, text: str) -> None:
        stream = self._stream or sys.stdout
        stream.write(text)
        stream.flush()


class Sink:
    """The last processor: renders each event once and hands the lines to the outputs — the
    stream (JSON, or a readable console line on a TTY) and, with a data dir, the JSONL file.

    queued=True (the switch): lines wait in memory and a flusher thread writes them every
    FLUSH_INTERVAL_S in one write per output, so a message's log line costs the hot path a
    render and an append, never a write nor a wait on one. The queue is bounded:
    past QUEUE_LINES_MAX lines a new line is dropped and counted (reason `queue_full`: the
    flusher is stuck on a write); from half of it the flusher is woken early.
    queued=False (every other command and the tests' default): each line is written at once.

    Nothing here raises into the caller: a line an output cannot take (full disk, I/O error,
    closed stream) is dropped and counted, and the output's next good write begins with a
    `log_lines_dropped` line (docs/reliability.md, "Full disk"). The flusher survives any error.
    """

    FLUSH_INTERVAL_S = 0.05
    QUEUE_LINES_MAX = 10_000

    def __init__(self, stream: TextIO, *, json_output: bool, path: Path | None, queued: bool,
                 max_bytes: int | None = None, keep: int = KEEP_DEFAULT) -> None:
        self._console = None if json_output else _Console()
        self._stream = _StreamOutput(stream, self._render_stream)
        self._file = None if path is None else _FileOutput(path, _render, max_bytes=max_bytes, keep=keep)
        self._stream_lines: list[str] = []
        self._file_lines: list[str] = []
        self._queued_dropped = 0
        self._lock = threading.Lock()        # the queues: held for an append or a swap, never across a write
        self._write_lock = threading.Lock()  # one writer at a time, so batches land in order
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._bug_reported = False
        if queued:
            self._thread = threading.Thread(target=self._flush_periodically, name="log-flusher", daemon=True)
            self._thread.start()

    def __call__(self, _logger: Any, _method: str, event: dict[str, Any]) -> Any:
        self.take(event, _logger, _method)
        raise structlog.DropEvent

    def _render_stream(self, event: dict[str, Any]) -> str:
        return _render(event) if self._console is None else self._console(None, event["level"], dict(event))

    def take(self, event: dict[str, Any], _logger: Any = None, _method: str = "info") -> None:
        """Render once (JSON, and a console line on a TTY) and write or queue."""
        line = _render(event)
        stream_line = line if self._console is None else self._console(_logger, _method, dict(event))
        if self._thread is None:
            with self._write_lock:
                if self._file is not None:
                    self._file.write([line])
                self._stream.write([stream_line])
            return
        with self._lock:
            queued = len(self._stream_lines)
            if queued >= self.QUEUE_LINES_MAX:
                self._queued_dropped += 1
                return
            self._stream_lines.append(stream_line)
            if self._file is not None:
                self._file_lines.append(line)
        if queued + 1 >= self.QUEUE_LINES_MAX // 2:
            self._wake.set()

    def _flush_periodically(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.FLUSH_INTERVAL_S)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - our bug: said once on stderr; the thread outlives it
                if not self._bug_reported:
                    self._bug_reported = True
                    with contextlib.suppress(Exception):
                        traceback.print_exc(file=sys.__stderr__)

    def flush(self) -> None:
        with self._write_lock:
            with self._lock:
                stream_lines, self._stream_lines = self._stream_lines, []
                file_lines, self._file_lines = self._file_lines, []
                full, self._queued_dropped = self._queued_dropped, 0
            if full:  # lines refused at the door: every output lost them
                self._stream.drop(full, "queue_full")
                if self._file is not None:
                    self._file.drop(full, "queue_full")
            if self._file is not None:
                self._file.write(file_lines)
            self._stream.write(stream_lines)

    def reopen(self) -> None:
        """Open the log file again at its next write (after logrotate moved it: SIGHUP). Safe
        from a signal handler: it only sets a flag."""
        if self._file is not None:
            self._file.reopen_wanted = True
            self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


# ---------------------------------------------------------------------------- the console

# The canonical message line on a terminal (and in `eum logs`): these first, in fixed columns,
# then whatever else the line says as key=value, cut to LINE_WIDTH.
LINE_WIDTH = 120
_FIRST = ("ts", "kind", "terminal", "pan", "amount", "rc", "latency_us")
_NOT_REPEATED = frozenset({*_FIRST, "event", "level"})


def console_line(event: dict[str, Any], *, width: int = LINE_WIDTH) -> str:
    """One readable line: time (KST, to the millisecond), kind, terminal, masked PAN, amount,
    response code and latency first; the rest as key=value; never wider than `width`."""
    ts = str(event.get("ts", ""))
    clock = ts[11:23] if len(ts) >= 23 else ts
    amount = event.get("amount")
    latency = event.get("latency_us")
    head = (f"{clock:<12} {str(event.get('kind', event.get('event', ''))):<15.15} "
            f"{str(event.get('terminal', '')):<8.8} {str(event.get('pan', '')):<16.16} "
            f"{(f'{amount:,}' if isinstance(amount, int) else ''):>11} {str(event.get('rc', '')):<3.3}"
            f"{(f'{latency / 1000:.1f}ms' if isinstance(latency, int) else ''):>9}")
    rest = " ".join(f"{k}={v}" for k, v in event.items() if k not in _NOT_REPEATED and not k.startswith("_"))
    line = f"{head} {rest}".rstrip()
    return line if len(line) <= width else line[: width - 1] + "…"


class _Console:
    """The stream's renderer on a TTY: the canonical message line in columns (console_line);
    every other event as structlog's console renderer writes it (never rich locals)."""

    def __init__(self) -> None:
        self._other = structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> str:
        if event.get("event") == "message":
            return console_line(event)
        return self._other(logger, method, event)


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
    record = mask_secrets(None, "info", {**fields, "event": event, "level": "info"})
    record["ts"] = _now()  # ours, in the same place: not scanned for PAN-like runs (32 characters a line)
    _sink.take(record)


def configure(*, data_dir: Path | None = None, name: str = "switch", stream: TextIO | None = None,
              json_output: bool | None = None, level: str = "info", queued: bool = False,
              max_bytes: int | None = None, keep: int = KEEP_DEFAULT) -> None:
    """queued=True takes log writes off the hot path (Sink); the caller flushes at the end.
    max_bytes: rotate <data-dir>/logs/<name>.jsonl when it reaches this size, keeping `keep`
    rotated files (None: never rotate; logrotate may still move it: `reopen`)."""
    global _sink, _level_min
    stream = stream or sys.stdout
    _level_min = _LEVELS[level]
    if json_output is None:
        json_output = not stream.isatty()
    if _sink is not None:
        _sink.close()
    _sink = Sink(stream, json_output=json_output, path=None if data_dir is None else data_dir / "logs" / f"{name}.jsonl",
                 queued=queued, max_bytes=max_bytes, keep=keep)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _timestamp,
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


def reopen() -> None:
    """SIGHUP: the log file is opened again (logrotate's `create` rotation moved it away)."""
    if _sink is not None:
        _sink.reopen()


@atexit.register
def _flush_at_exit() -> None:
    flush()


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
