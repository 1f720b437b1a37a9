"""An asyncio event loop with virtual time and no I/O: the simulation's scheduler.

Everything the switch awaits in one process is a future, a task or a timer (`asyncio.sleep`,
`call_later`); the ledger writer's commit is the one call it hands to a thread
(`run_in_executor`). This loop runs that call inline, so a commit happens at a fixed point
of the schedule instead of whenever a thread finishes, and it never waits for real time:
when no callback is ready it jumps the clock to the next timer. Callbacks run in the order
they were scheduled (asyncio's FIFO ready queue and its timer heap), so the same program
gives the same interleaving every time.

If nothing is ready and no timer is pending while the simulation still waits for
something, every task waits on a future that nothing will complete: that is a deadlock of
the code under test, raised as `SimulationDeadlock` instead of blocking forever. A loop that
turns `iterations_max` times is spinning (`SimulationLivelock`): that bounds a run's real
time without reading a real clock.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable


class SimulationDeadlock(AssertionError):
    """Nothing is ready and no timer is pending, yet the run is not finished."""


class SimulationLivelock(AssertionError):
    """The loop turned `iterations_max` times in one run: something spins without end."""


class _Clockwork:
    """Stands in for the selector: `select(timeout)` is where a real loop would wait for I/O
    for up to `timeout` seconds; here it moves the virtual clock by that much."""

    def __init__(self, loop: "SimLoop") -> None:
        self.loop = loop

    def select(self, timeout: float | None) -> list[Any]:
        if timeout is None:
            raise SimulationDeadlock(f"at t={self.loop.time():.3f} s every task waits and no timer is pending")
        self.loop.now += timeout
        return []

    def close(self) -> None:
        pass


class SimLoop(asyncio.BaseEventLoop):
    """Virtual time from 0.0 s; executors run inline; no sockets."""

    def __init__(self, *, iterations_max: int = 2_000_000) -> None:
        super().__init__()
        self.now = 0.0
        self.iterations = 0
        self.iterations_max = iterations_max
        self._selector = _Clockwork(self)
        self.errors: list[str] = []
        self.set_exception_handler(self._unhandled)

    def time(self) -> float:
        return self.now

    def _run_once(self) -> None:
        self.iterations += 1
        if self.iterations > self.iterations_max:
            raise SimulationLivelock(f"the loop turned {self.iterations_max:,} times (t={self.now:.3f} s)")
        super()._run_once()

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _write_to_self(self) -> None:  # no other thread ever wakes this loop
        pass

    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        fut = self.create_future()
        try:
            fut.set_result(func(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task, as a thread's would be
            fut.set_exception(exc)
        return fut

    def _unhandled(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """An exception no task retrieved is a fault of the code under test: recorded, and
        the simulation fails on it."""
        exc = context.get("exception")
        self.errors.append(f"{context.get('message', 'unhandled')}: {type(exc).__name__ if exc else ''} {exc or ''}")
