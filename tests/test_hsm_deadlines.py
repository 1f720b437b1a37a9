"""Call deadlines with one timer for many calls (switch/wire/transport.py `Deadlines`; the
switch's HSM client keeps one a connection, the fleet one for all its terminals;
docs/performance.md, "The HSM client's deadlines, one timer a connection"). A call expires
when its own deadline passes, whatever the order the calls were added in and whatever other
calls end meanwhile; the calls kept stay bounded; close leaves no timer behind. The timer's
own behaviour is driven on a real event loop with futures nobody answers; the HSM client's
case runs against a real hsm_mock service over TCP; the fleet's timeouts through it are
tests/test_fleet.py's (a request never answered times out and is reversed, a drop)."""

import asyncio
import time

import pytest

from hsm_mock.config import HsmConfig as ServiceConfig
from hsm_mock.service import FaultPlan, HsmServer
from switch.authorize.hsm_client import HsmConfig, _Connection
from switch.wire.transport import Deadlines


def _timed_out(fut):
    fut.set_exception(asyncio.TimeoutError())


async def test_each_call_times_out_at_its_own_deadline_in_any_order():
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(_timed_out)
    slow, fast, middle = loop.create_future(), loop.create_future(), loop.create_future()
    t0 = loop.time()
    deadlines.add(loop, slow, 0.30)
    deadlines.add(loop, fast, 0.05)    # shorter than the call before it: into its place, the timer re-armed
    deadlines.add(loop, middle, 0.15)
    ended: dict[str, float] = {}
    for name, fut in (("slow", slow), ("fast", fast), ("middle", middle)):
        fut.add_done_callback(lambda f, n=name: ended.setdefault(n, loop.time() - t0))
    with pytest.raises(asyncio.TimeoutError):
        await fast
    assert not middle.done() and not slow.done()
    with pytest.raises(asyncio.TimeoutError):
        await middle
    assert not slow.done()
    with pytest.raises(asyncio.TimeoutError):
        await slow
    assert sorted(ended, key=ended.get) == ["fast", "middle", "slow"]
    # never before its deadline (the loop's clock; a timer may fire up to its resolution late)
    assert ended["fast"] >= 0.05 - 0.002 and ended["middle"] >= 0.15 - 0.002 and ended["slow"] >= 0.30 - 0.002
    assert len(deadlines) == 0  # the timer fired for the last one and kept nothing
    assert deadlines._timer is None


async def test_an_answered_call_never_times_out_and_is_dropped_from_the_front():
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(_timed_out)
    waiting = []
    for i in range(1_000):  # answered as fast as they are sent: the kept calls stay few
        fut = loop.create_future()
        deadlines.add(loop, fut, 0.05)
        fut.set_result(i)
        waiting.append(fut)
    assert len(deadlines) == 1  # the last one: the ended calls before it were dropped at each add
    late = loop.create_future()
    deadlines.add(loop, late, 0.05)
    await asyncio.sleep(0.1)
    assert [f.result() for f in waiting] == list(range(1_000))  # none became a timeout
    assert isinstance(late.exception(), asyncio.TimeoutError)
    assert len(deadlines) == 0 and deadlines._timer is None


async def test_close_cancels_the_timer_and_forgets_the_calls():
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(_timed_out)
    fut = loop.create_future()
    deadlines.add(loop, fut, 0.05)
    deadlines.close()
    await asyncio.sleep(0.1)
    assert not fut.done()  # the connection's close fails it (ConnectionError), not the timer
    assert len(deadlines) == 0 and deadlines._timer is None


async def test_a_swallowed_command_times_out_while_the_connection_keeps_answering_others():
    hsm = HsmServer(ServiceConfig(port=0))
    await hsm.start()
    conn = _Connection("127.0.0.1", hsm.port, HsmConfig(endpoints=(("127.0.0.1", hsm.port),)))
    await conn.connect()
    try:
        hsm.faults = FaultPlan(hang=1.0)
        started = time.monotonic()
        swallowed = asyncio.ensure_future(conn.call("B2", b"0004lost", 0.2))
        await asyncio.sleep(0.05)
        hsm.faults = FaultPlan()  # from now on every command is answered
        replies = [await conn.call("B2", b"0002ok", 0.2) for _ in range(20)]
        assert [(r.error, r.body) for r in replies] == [("00", b"ok")] * 20
        assert not swallowed.done()  # answered calls after it did not end it early
        with pytest.raises(asyncio.TimeoutError):
            await swallowed
        assert time.monotonic() - started >= 0.2 - 0.002
        assert conn.pending == {} and conn.slots.free == conn.config.in_flight_max
        assert len(conn.deadlines) == 0
    finally:
        conn.close()
        await hsm.stop()
    assert conn.deadlines._timer is None
