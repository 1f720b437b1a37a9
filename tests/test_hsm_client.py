"""The switch's HSM client against real hsm_mock services over TCP: pipelining, timeouts,
health checks, failover to a second HSM, reconnect, and a fast 'unavailable'."""

import asyncio
import io
import json
from contextlib import asynccontextmanager

import pytest
import structlog

from hsm_mock.config import HsmConfig as ServiceConfig
from hsm_mock.service import FaultPlan, HsmServer
from switch.authorize.hsm_client import HsmConfig, HsmPool, HsmUnavailable, parse_endpoints
from waiting import eventually


def service(**kw) -> HsmServer:
    return HsmServer(ServiceConfig(port=0, **kw))


def pool_for(*servers: HsmServer, **kw) -> HsmPool:
    cfg = dict(call_timeout_ms=200, health_interval_s=0.1, reconnect_backoff_s_max=0.2)
    cfg.update(kw)
    return HsmPool(HsmConfig(endpoints=tuple(("127.0.0.1", s.port) for s in servers), **cfg))


async def test_pipelined_calls_are_matched_by_header():
    async with service(latency_ms=5) as hsm:
        pool = pool_for(hsm)
        await pool.start()
        try:
            replies = await asyncio.gather(*(pool.call("B2", b"0004" + f"{i:04d}".encode()) for i in range(50)))
        finally:
            await pool.close()
    assert [r.error for r in replies] == ["00"] * 50
    assert [r.body for r in replies] == [f"{i:04d}".encode() for i in range(50)]
    assert {r.code for r in replies} == {"B3"}


async def test_nc_health_check_reads_the_lmk_check_value():
    async with service() as hsm:
        pool = pool_for(hsm)
        await pool.start()
        try:
            assert pool.healthy == [f"127.0.0.1:{hsm.port}"]
            assert pool.endpoints[0].lmk_check == "7B44AC1DDEE2A94B"  # the public test LMK (docs/hsm.md)
        finally:
            await pool.close()


async def test_failover_to_the_second_hsm_when_the_first_hangs():
    async with service(fault_hang_share=1.0, fault_seed=1) as first, service() as second:
        # the first HSM answers nothing: its NC health check fails at start
        pool = pool_for(first, second)
        await pool.start()
        try:
            assert pool.healthy == [f"127.0.0.1:{second.port}"]
            reply = await pool.call("B2", b"0002ok")
            assert (reply.error, reply.body) == ("00", b"ok")
        finally:
            await pool.close()


async def test_a_timeout_marks_the_hsm_down_and_the_call_fails_over():
    async with service() as first, service() as second:
        pool = pool_for(first, second, health_interval_s=30)
        await pool.start()
        try:
            assert len(pool.healthy) == 2
            first.faults = FaultPlan(hang=1.0)  # from now on the first HSM swallows every command
            with structlog.testing.capture_logs() as logged:
                reply = await pool.call("B2", b"0002hi")
            assert (reply.error, reply.body) == ("00", b"hi")
            assert pool.healthy == [f"127.0.0.1:{second.port}"]
            # one call to the first, swallowed and timed out; then the same call answered by the second
            assert first.counts["hang"] == 1
            assert [(ep.calls, ep.errors) for ep in pool.endpoints] == [(0, 1), (1, 0)]
            assert [(e["hsm"], e["reason"]) for e in logged if e["event"] == "hsm_down"] == [
                (f"127.0.0.1:{first.port}", "timeout")]
        finally:
            await pool.close()


async def test_no_hsm_answering_raises_unavailable_quickly():
    hsm = service()
    await hsm.start()
    port = hsm.port
    await hsm.stop()  # nothing listens there any more
    pool = HsmPool(HsmConfig(endpoints=(("127.0.0.1", port),), call_timeout_ms=200, health_interval_s=0.1))
    await pool.start()
    try:
        with pytest.raises(HsmUnavailable, match=r"^no HSM answered NC \(tried: none healthy\)$"):
            await pool.call("NC", b"")
        # quickly: the HSM that is down was not tried, so no call waited for its timeout
        assert [(ep.calls, ep.errors) for ep in pool.endpoints] == [(0, 0)]
    finally:
        await pool.close()


async def test_reconnects_when_the_hsm_comes_back():
    hsm = service()
    await hsm.start()
    port = hsm.port
    pool = HsmPool(HsmConfig(endpoints=(("127.0.0.1", port),), call_timeout_ms=200, health_interval_s=0.05,
                             reconnect_backoff_s_max=0.1))
    await pool.start()
    try:
        assert (await pool.call("NC", b"")).error == "00"
        await hsm.stop()
        await eventually(lambda: pool.healthy == [], what="the pool to see the stopped HSM's connections closed")
        with pytest.raises(HsmUnavailable, match=r"^no HSM answered NC \(tried: none healthy\)$"):
            await pool.call("NC", b"")
        again = HsmServer(ServiceConfig(port=port))
        await again.start()
        try:
            await eventually(lambda: pool.healthy == [f"127.0.0.1:{port}"],
                             what="the health check to reconnect to the restarted HSM")
            assert (await pool.call("NC", b"")).error == "00"
        finally:
            await again.stop()
    finally:
        await pool.close()


def test_endpoints_parse_and_reject():
    assert parse_endpoints("127.0.0.1:1500,127.0.0.1:1501") == (("127.0.0.1", 1500), ("127.0.0.1", 1501))
    with pytest.raises(ValueError, match="not HOST:PORT"):
        parse_endpoints("localhost")


async def test_calls_are_spread_over_the_pool_of_connections():
    async with service(latency_ms=2) as hsm:
        pool = pool_for(hsm, connections_per_hsm=3)
        await pool.start()
        try:
            assert len(pool.endpoints[0].open_conns) == 3
            replies = await asyncio.gather(*(pool.call("B2", b"0002ok") for _ in range(30)))
            assert [r.body for r in replies] == [b"ok"] * 30
            assert len(hsm._connections) == 3  # the service saw exactly three clients
        finally:
            await pool.close()


@asynccontextmanager
async def audited_pool(hsm: HsmServer, **kw):
    """A started pool on `hsm` and a sink of the HSM's audit lines; the pool is closed after."""
    pool = pool_for(hsm, **kw)
    await pool.start()
    sink = io.StringIO()
    hsm.audit.sinks.append(sink)
    try:
        yield pool, sink
    finally:
        await pool.close()


def _b2_connections(hsm: HsmServer, sink: io.StringIO) -> list[int]:
    """The HSM's connection id of each B2 it answered, in order (its audit lines)."""
    hsm.audit.flush()
    lines = (json.loads(line) for line in sink.getvalue().splitlines())
    return [line["conn"] for line in lines if line["command"] == "B2"]


async def test_one_turns_calls_share_a_connection_and_the_next_turn_takes_the_next():
    # Calls made in one turn of the event loop leave in one write on one connection (one
    # wake-up of the HSM); the next turn's go to the next connection.
    async with service() as hsm:
        async with audited_pool(hsm, connections_per_hsm=2, health_interval_s=600) as (pool, sink):
            for _ in range(3):
                replies = await asyncio.gather(*(pool.call("B2", b"0002ok") for _ in range(5)))
                assert [r.body for r in replies] == [b"ok"] * 5
    conns = _b2_connections(hsm, sink)
    turns = [conns[0:5], conns[5:10], conns[10:15]]
    assert len(conns) == 15 and all(len(set(t)) == 1 for t in turns), conns
    assert turns[0][0] != turns[1][0] and turns[2][0] == turns[0][0] and sorted({*conns}) == [1, 2]


async def test_a_turn_moves_to_the_next_connection_once_one_has_no_free_slot():
    async with service(latency_ms=20) as hsm:
        async with audited_pool(hsm, connections_per_hsm=2, health_interval_s=600, in_flight_max=2) as (pool, sink):
            replies = await asyncio.gather(*(pool.call("B2", b"0002ok") for _ in range(4)))
            assert [r.body for r in replies] == [b"ok"] * 4
    conns = _b2_connections(hsm, sink)
    assert sorted(conns) == [1, 1, 2, 2], conns  # two in flight on each, none waiting for a slot


async def test_a_slow_hsm_within_the_timeout_still_answers_and_one_beyond_it_fails_over():
    async with service(latency_ms=120) as slow, service(latency_ms=400) as slower, service() as fast:
        pool = pool_for(slow, call_timeout_ms=300, health_interval_s=30)
        await pool.start()
        try:
            assert (await pool.call("B2", b"0002ok")).body == b"ok"
            # answered within the timeout: no error, still healthy
            assert (pool.endpoints[0].calls, pool.endpoints[0].errors, pool.healthy) == (
                1, 0, [f"127.0.0.1:{slow.port}"])
        finally:
            await pool.close()
        pool = pool_for(slower, fast, call_timeout_ms=300, health_interval_s=30)
        await pool.start()  # the slower HSM's NC times out at start: only the fast one is healthy
        try:
            assert pool.healthy == [f"127.0.0.1:{fast.port}"]
            assert (await pool.call("B2", b"0002ok")).body == b"ok"
        finally:
            await pool.close()


async def test_a_sent_command_is_queued_in_the_senders_turn_and_its_reply_awaited_later():
    # HsmPool.send queues the command before the caller awaits anything, so a call made after
    # it in the same turn leaves in the same write, behind it (the engine's MAC check, then
    # the response MAC: switch/authorize/engine.py, `_decided_while_checked`).
    async with service() as hsm:
        async with audited_pool(hsm, connections_per_hsm=2, health_interval_s=600) as (pool, sink):
            sent = pool.send("B2", b"0005first")
            assert sent.attempt is not None and sent.conn.out.pending  # queued, not yet written
            second = await pool.call("B2", b"0006second")
            first = await pool.reply(sent)
            free = [c.slots.free for c in pool.endpoints[0].conns]  # every slot given back
    assert (first.error, first.body, second.body) == ("00", b"first", b"second")
    conns = _b2_connections(hsm, sink)
    assert len(conns) == 2 and len(set(conns)) == 1, conns  # one connection: one write
    b2 = [json.loads(line) for line in sink.getvalue().splitlines() if '"B2"' in line]
    assert [line["length"] for line in b2] == [5, 6]  # in the order queued
    assert (pool.endpoints[0].calls, free) == (2, [256, 256])


async def test_a_send_without_a_free_slot_is_sent_when_its_reply_is_awaited():
    async with service(latency_ms=20) as hsm:
        pool = pool_for(hsm, connections_per_hsm=1, health_interval_s=600, in_flight_max=1)
        await pool.start()
        try:
            busy = asyncio.ensure_future(pool.call("B2", b"0004busy"))
            await asyncio.sleep(0)  # the busy call takes the one slot
            sent = pool.send("B2", b"0004late")
            assert sent.attempt is None and sent.index == 0
            replies = await asyncio.gather(busy, pool.reply(sent))
        finally:
            await pool.close()
    assert [r.body for r in replies] == [b"busy", b"late"]


async def test_a_send_with_no_hsm_usable_is_unavailable_when_awaited():
    pool = pool_for(service())  # never started: no connection, not healthy
    sent = pool.send("NC", b"")
    assert (sent.index, sent.attempt) == (1, None)
    with pytest.raises(HsmUnavailable, match="no HSM answered NC"):
        await pool.reply(sent)
    assert pool.unavailable == 1


async def test_slots_are_handed_to_waiters_in_turn_and_a_cancelled_waiter_is_skipped():
    from switch.authorize.hsm_client import _Slots

    slots = _Slots(1)
    assert slots.take_now() and not slots.take_now() and slots.locked()
    order: list[str] = []

    async def taker(name: str) -> None:
        await slots.take()
        order.append(name)

    a, b, c = (asyncio.ensure_future(taker(n)) for n in "abc")
    await asyncio.sleep(0)
    b.cancel()
    await asyncio.sleep(0)
    slots.give()  # to a
    await asyncio.sleep(0)
    slots.give()  # b was cancelled: to c
    await asyncio.gather(a, c)
    assert order == ["a", "c"] and b.cancelled() and slots.free == 0
    slots.give()
    assert slots.free == 1 and not slots.locked()
