"""The event loop entry points use (uvloop where installed, a dependency on Linux),
`freeze_heap`, which a started server calls before it serves, `WriteBatch`, which the
switch's HSM client and the HSM both write through, and `Deadlines`, the call timeouts of the
switch's HSM client and of the fleet."""

from __future__ import annotations

import asyncio
import bisect
import collections
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


class Deadlines:
    """Calls awaiting an answer, by deadline, with one timer for all of them (not a
    `call_later` handle per call and its cancel: ≈ 2 µs a call under uvloop; docs/performance.md,
    "The HSM client's deadlines, one timer a connection"). The switch's HSM client keeps one a
    connection, the fleet one for all its terminals. The timer is armed for the earliest
    deadline of a call still waiting; when it fires, `expire(fut)` is called for every call
    still waiting past its deadline, at the moment a timer of its own would have fired
    (within the loop's timer granularity).

    Calls are kept in deadline order; a call that ended stays until it reaches the front,
    where it is dropped (at each `add` and each firing), so the calls kept are at most those
    added during one timeout behind the oldest still waiting: bounded by the caller's own
    in-flight limit and its rate over one timeout."""

    __slots__ = ("_calls", "_timer", "_armed_at", "_expire")

    def __init__(self, expire: Callable[[asyncio.Future[Any]], None]) -> None:
        """expire: what a call past its deadline gets (its future is not done when called)."""
        self._calls: collections.deque[tuple[float, asyncio.Future[Any]]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        self._expire = expire

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], timeout_s: float) -> None:
        calls = self._calls
        while calls and calls[0][1].done():  # ended calls at the front: dropped
            calls.popleft()
        deadline = loop.time() + timeout_s
        if not calls or calls[-1][0] <= deadline:
            calls.append((deadline, fut))  # the usual case: every call of a caller has one timeout
        else:  # a shorter timeout than a call before it: into its place
            bisect.insort(calls, (deadline, fut), key=_deadline)
        if self._timer is None or deadline < self._armed_at:
            self._arm(loop, deadline)

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(at, self._fire, loop)
        self._armed_at = at

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        calls = self._calls
        now = loop.time()
        while calls:
            deadline, fut = calls[0]
            if fut.done():
                calls.popleft()
            elif deadline <= now:
                calls.popleft()
                self._expire(fut)
            else:
                self._arm(loop, deadline)
                return

    def close(self) -> None:
        """Forget every call and cancel the timer (the caller ends its calls its own way)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._calls.clear()


def _deadline(call: tuple[float, asyncio.Future[Any]]) -> float:
    return call[0]


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
