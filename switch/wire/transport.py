"""The event loop entry points use (uvloop where installed, a dependency on Linux),
`freeze_heap`, which a started server calls before it serves, and `WriteBatch`, which the
switch's HSM client and the HSM both write through."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any, Callable, Coroutine

GC_YOUNG_THRESHOLD = 7_000  # allocations between two young collections once serving (CPython's default: 700)
GC_OLDER_THRESHOLD = 10     # young (then middle) collections between two of the next generation (the default)


def freeze_heap() -> dict[str, Any]:
    """Once a server is started, before it serves: collect once, then freeze what start loaded
    (modules, rules, keys, a warmed hot state) into the permanent generation, so that no later
    collection traverses it, and collect the young generation a tenth as often. A hot path's
    garbage here is acyclic and freed by reference counting the moment it is dropped; a young
    collection only finds the rare cycle, so fewer of them cost no memory that matters. A
    frozen object is still freed by reference counting when dropped; only a cycle among frozen
    objects would stay (start's objects live as long as the process anyway). Returns what the
    caller logs (`heap_settled`): objects frozen, the thresholds, the milliseconds it took.
    Measured in docs/performance.md, "The collector after start, measured again"."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, GC_OLDER_THRESHOLD, GC_OLDER_THRESHOLD)
    return {"frozen": gc.get_freeze_count(), "gc_threshold": list(gc.get_threshold()),
            "ms": round((time.perf_counter() - started) * 1000, 1)}


class WriteBatch:
    """Frames written in one loop iteration leave in one write (one system call): `add`
    queues a frame and, for the first of an iteration, schedules `flush` with call_soon.
    `write` is the transport's (or StreamWriter's) write, `usable` says whether it still
    takes bytes; frames queued for a closed connection are dropped."""

    __slots__ = ("_write", "_usable", "_frames")

    def __init__(self, write: Callable[[bytes], Any], usable: Callable[[], bool]) -> None:
        self._write = write
        self._usable = usable
        self._frames: list[bytes] = []

    def add(self, data: bytes) -> None:
        if not self._frames:
            asyncio.get_running_loop().call_soon(self.flush)
        self._frames.append(data)

    @property
    def pending(self) -> bool:
        """Frames wait for this iteration's flush: the connection was written to in this turn."""
        return bool(self._frames)

    def flush(self) -> None:
        if self._frames and self._usable():
            self._write(b"".join(self._frames))
        self._frames.clear()


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)


def parse_hostport(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """HOST:PORT (or PORT alone) for every command that listens or connects."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    if not port.isdigit():
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host or default_host, int(port)
