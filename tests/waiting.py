"""Waiting on a condition instead of sleeping: `await eventually(...)` in async tests,
`wait_until(...)` in sync ones.

Both poll `predicate` until it returns something truthy and return that value. The deadline
is generous (20 s by default) because it only bounds a failure: a passing test waits exactly
as long as the condition takes, however loaded the machine is. When the deadline passes, the
test fails with "timed out after N s waiting for <what>", so `what` should say, in words, the
condition that never came true.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, Awaitable, Callable, TypeVar

T = TypeVar("T")

TIMEOUT_S = 20.0
POLL_S = 0.02  # the longest pause between two checks; the first pauses are shorter (1, 2, 4 ms...)


class WaitTimeout(AssertionError):
    """The condition did not come true before the deadline (a test failure, not an error)."""


def _timed_out(what: str, timeout_s: float, last: object) -> WaitTimeout:
    detail = "" if last is None else f" (last value: {last!r})"
    return WaitTimeout(f"timed out after {timeout_s:g} s waiting for {what}{detail}")


async def eventually(predicate: Callable[[], T | Awaitable[T]], *, what: str, timeout_s: float = TIMEOUT_S,
                     poll_s: float = POLL_S, show_last: bool = False) -> T:
    """Await until `predicate()` (plain or async) is truthy; return its value.

    The predicate is checked once before any pause, so a condition that already holds costs
    nothing. `show_last` adds the last falsy value to the failure message (only for values
    that hold no card data)."""
    deadline, pause = time.monotonic() + timeout_s, 0.001
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout_s, value if show_last else None)
        await asyncio.sleep(pause)
        pause = min(pause * 2, poll_s)


def wait_until(predicate: Callable[[], T], *, what: str, timeout_s: float = TIMEOUT_S,
               poll_s: float = POLL_S, show_last: bool = False) -> T:
    """The synchronous twin of `eventually`, for tests without an event loop (subprocesses, files)."""
    deadline, pause = time.monotonic() + timeout_s, 0.001
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout_s, value if show_last else None)
        time.sleep(pause)
        pause = min(pause * 2, poll_s)


async def settled(awaitable: Awaitable[T], *, what: str, timeout_s: float = TIMEOUT_S) -> T:
    """Await `awaitable` (an event's wait(), a task, a future) with a generous deadline that
    fails with a message saying what was awaited."""
    try:
        return await asyncio.wait_for(awaitable, timeout_s)
    except (asyncio.TimeoutError, TimeoutError):
        raise _timed_out(what, timeout_s, None) from None


def logged(events: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    """The captured log events (structlog.testing.capture_logs) whose keys equal `match`."""
    return [e for e in events if all(e.get(k) == v for k, v in match.items())]


async def switch_side(server: Any, client: Any, *, timeout_s: float = TIMEOUT_S) -> Any:
    """The switch's `TerminalConnection` for a connected `TerminalClient` (matched by the
    client's local port), once the switch has accepted it: what the tests wait on (bytes
    buffered, requests in flight, paused, closed)."""
    host, port = client.writer.get_extra_info("sockname")[:2]
    peer = f"{host}:{port}"

    def find() -> Any:
        return next((c for c in list(server.connections) if c.peer == peer), None)

    return await eventually(find, what=f"the switch to accept the connection from port {port}", timeout_s=timeout_s)
