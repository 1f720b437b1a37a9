"""The HSM in the simulation: hsm_mock's real command processor, called in process, behind a
fault layer that follows the seed's schedule.

`SimHsm` has the methods the switch's `Security` uses of its HSM pool, `call(code, body)`,
and `send` and `reply` (a call begun in the caller's turn, its answer awaited later: here the
call runs as a task from the loop's next turn), and answers the way
`switch.authorize.hsm_client.HsmPool` does:
- up: the command runs in `hsm_mock.commands.Hsm` (parse, handle) after a short latency
  drawn from the seed, and the reply comes back as an `HsmReply`;
- down (connection refused, process gone): `HsmUnavailable` at once, as the pool raises
  when no endpoint is healthy;
- stalled (SIGSTOP, a hang): the call waits the pool's `call_timeout_ms`, in virtual
  time, then raises `HsmUnavailable`, as the pool does when its only HSM times out;
- overloaded: the HSM answers, but with error 67, what hsm_mock answers a command over its
  licensed capacity (docs/hsm.md, `overload_error_code`).
The HSM's key generation draws from the seed too, so the switch's ZPK and PVK, and every
PVV, are the same in every run.
"""

from __future__ import annotations

import asyncio
import random
from typing import NamedTuple

from hsm_mock.commands import Hsm
from switch.authorize.hsm_client import HsmConfig, HsmReply, HsmUnavailable
from switch.wire.payshield import response_code

from .faults import Faults

HEADER = b"0000"
OVERLOAD_ERROR = "67"
CALL_TIMEOUT_S = HsmConfig(endpoints=(("127.0.0.1", 1500),)).call_timeout_ms / 1000  # the switch's default


class SimSent(NamedTuple):
    """What `SimHsm.send` returns: the command's code (as HsmPool's Sent) and the call's task."""

    code: str
    task: asyncio.Task[HsmReply]


class SimHsm:
    def __init__(self, faults: Faults | None, rng: random.Random, *, key_seed: int) -> None:
        keys = random.Random(key_seed)
        self.hsm = Hsm(random_bytes=lambda n: keys.randbytes(n), header_length=len(HEADER))
        self.faults = faults
        self.rng = rng
        self.calls = 0
        self.counts = {"ok": 0, "down": 0, "stall": 0, "overloaded": 0}

    async def call(self, code: str, body: bytes) -> HsmReply:
        self.calls += 1
        loop = asyncio.get_running_loop()
        mode = "ok" if self.faults is None else self.faults.hsm_mode(loop.time())
        self.counts[mode] += 1
        if self.faults is not None:
            self.faults.trace(f"hsm {code} {mode}")
        if mode == "down":
            await asyncio.sleep(0)  # a refused connection still costs a turn of the loop
            raise HsmUnavailable(f"no HSM answered {code} (simulated: down)")
        if mode == "stall":
            await asyncio.sleep(CALL_TIMEOUT_S)
            raise HsmUnavailable(f"no HSM answered {code} (simulated: stalled past the call timeout)")
        await asyncio.sleep(self.rng.uniform(0.0002, 0.004))
        if mode == "overloaded":
            return HsmReply(response_code(code), OVERLOAD_ERROR, b"")
        cmd = self.hsm.parse(HEADER + code.encode("ascii") + body)
        error, out, _ = self.hsm.handle(cmd)
        return HsmReply(response_code(code), error, out)

    def send(self, code: str, body: bytes) -> SimSent:
        return SimSent(code, asyncio.get_running_loop().create_task(self.call(code, body)))

    async def reply(self, sent: SimSent) -> HsmReply:
        return await sent.task
