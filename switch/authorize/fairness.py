"""Per-program admission: one card program's flood must not starve another's.

Every financial request whose PAN belongs to a program (BIN routing, config/programs.toml)
takes a slot of its program before the engine sees it; the slot is given back when the
answer is decided. A program holds at most `in_flight_max` slots; beyond that its requests
wait in a FIFO queue of at most `queue_max`, each for at most `wait_ms`. A request that finds
the queue full, or waits too long, is shed: answered 91 (issuer or switch inoperative), with
nothing posted, so the terminal may try again. Other programs' requests never wait behind
it, because the shared resources behind the gate (HSM connections and capacity, the ledger
writer's queue) only ever see `in_flight_max` of any one program's requests.

Reversals (04xx) and network messages are not gated: a reversal releases money and must not
be shed by a flood; sign-on and echo carry no PAN.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ProgramLimits:
    in_flight_max: int = 64     # requests of one program the engine works on at once
    queue_max: int = 256        # requests of one program waiting for a slot; more are shed (91)
    wait_ms: float = 500.0      # longest wait for a slot; then shed (91)

    def __post_init__(self) -> None:
        if self.in_flight_max < 1 or self.queue_max < 0 or self.wait_ms <= 0:
            raise ValueError("program limits: in_flight_max ≥ 1, queue_max ≥ 0, wait_ms > 0")


@dataclass
class _Program:
    in_flight: int = 0
    waiting: deque[asyncio.Future[bool]] = field(default_factory=deque)
    admitted: int = 0
    shed_queue_full: int = 0
    shed_timeout: int = 0


class ProgramGate:
    def __init__(self, limits: ProgramLimits = ProgramLimits()) -> None:
        self.limits = limits
        self._programs: dict[str, _Program] = {}

    def _program(self, program: str) -> _Program:
        p = self._programs.get(program)
        if p is None:
            p = self._programs[program] = _Program()
        return p

    def enter_now(self, program: str) -> bool:
        """`enter`'s uncontended case, in the caller's step (no coroutine): True, a slot is
        held; False, none is free now (then `await enter`, which waits or sheds)."""
        p = self._program(program)
        if p.in_flight < self.limits.in_flight_max and not p.waiting:
            p.in_flight += 1
            p.admitted += 1
            return True
        return False

    async def enter(self, program: str) -> bool:
        """True: a slot is held (call leave once the answer is decided). False: shed."""
        p = self._program(program)
        if p.in_flight < self.limits.in_flight_max and not p.waiting:
            p.in_flight += 1
            p.admitted += 1
            return True
        if len(p.waiting) >= self.limits.queue_max:
            p.shed_queue_full += 1
            return False
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        p.waiting.append(fut)
        timer = loop.call_later(self.limits.wait_ms / 1000, _give_up, fut)
        try:
            granted = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result():
                self.leave(program)  # the slot was handed over as we were cancelled: pass it on
            elif fut in p.waiting:
                p.waiting.remove(fut)
            raise
        finally:
            timer.cancel()
        if granted:
            p.admitted += 1
        else:
            if fut in p.waiting:  # timed out: it holds no place in the queue any more
                p.waiting.remove(fut)
            p.shed_timeout += 1
        return granted

    def leave(self, program: str) -> None:
        """Give the slot back: to the longest waiter still waiting, else to the pool."""
        p = self._programs[program]
        while p.waiting:
            fut = p.waiting.popleft()
            if not fut.done():  # (one that timed out this very iteration is skipped)
                fut.set_result(True)  # the slot passes on; in_flight is unchanged
                return
        p.in_flight -= 1

    def stats(self) -> dict[str, dict[str, int]]:
        return {name: {"in_flight": p.in_flight, "waiting": len(p.waiting),
                       "admitted": p.admitted, "shed_queue_full": p.shed_queue_full, "shed_timeout": p.shed_timeout}
                for name, p in sorted(self._programs.items())}


def _give_up(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)
