"""Connection limits over real TCP: connections_max, idle_timeout_s, in_flight_max,
write_buffer_max (a peer that does not read), and a slow writer that must not stall others."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

import structlog

from conftest import LAUNCH, postings, provision, start_switch
from switch.ledger.audit import verify
from switch.clock import FixedClock
from switch.wire.codec import encode_fields
from switch.wire.framing import frame
from terminal_sim.client import TerminalClient
from terminal_sim.terminal import Terminal
from waiting import eventually, switch_side

pytestmark = pytest.mark.both_stores  # SQLite and PostgreSQL (tests/conftest.py)


def framed(env, fields: dict[str, str]) -> bytes:
    return frame(env.dialect.framing, encode_fields(fields, env.dialect))


async def test_connections_over_connections_max_are_refused_and_room_frees_up(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH), connections_max=2) as env:
        await provision(env)
        first, term = await env.signed_on()
        second = await env.client().connect()
        assert (await second.request(term.echo()))["39"] == "00"
        third = await env.client(response_timeout_ms=2000).connect()
        assert await third.receive() is None  # closed by the switch at once
        await third.close()
        assert (await first.request(term.echo()))["39"] == "00"

        await second.close()
        await eventually(lambda: len(env.server.connections) == 1, what="the switch to see the second connection closed")
        fourth = await env.client().connect()
        resp = await fourth.request(term.purchase(env.cards["incheon"]["pan"], 1_000))
        assert resp["39"] == "00"
        await fourth.close()
        await first.close()
        assert verify(env.core.db_path).ok


async def test_idle_connections_time_out_while_busy_ones_stay_open(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH), idle_timeout_s=1.0) as env:
        await provision(env)
        busy, term = await env.signed_on()
        idle = await env.client(response_timeout_ms=30_000).connect()
        idle_side = await switch_side(env.server, idle)
        assert (await idle.request(Terminal("T0000002", "YEONSU01", stan=900).sign_on()))["39"] == "00"
        with structlog.testing.capture_logs() as logged:
            idle_closed = asyncio.ensure_future(idle.receive())  # None once the switch closes it
            echoes = 0
            while not idle_closed.done():  # the busy terminal keeps talking, well within the idle timeout
                assert (await busy.request(term.echo()))["39"] == "00"
                echoes += 1
                await asyncio.wait([idle_closed], timeout=0.05)
            assert idle_closed.result() is None, "the idle connection got a message instead of being closed"
        assert echoes > 1  # the busy one was used while the idle one aged
        closes = [(e["peer"], e["reason"]) for e in logged if e["event"] == "connection_closed"]
        assert closes == [(idle_side.peer, "idle")]  # only the idle connection, and for being idle
        resp = await busy.request(term.purchase(env.cards["incheon"]["pan"], 1_000))
        assert resp["39"] == "00"
        await idle.close()
        await busy.close()
        assert verify(env.core.db_path).ok


async def test_a_slow_writer_does_not_stall_other_terminals(switch_env):
    env = switch_env
    slow_term = Terminal("T0000002", "YEONSU01", stan=600)
    slow = await env.client().connect()
    assert (await slow.request(slow_term.sign_on()))["39"] == "00"
    data = framed(env, slow_term.purchase(env.cards["namdong"]["pan"], 20_000))
    slow_side = await switch_side(env.server, slow)
    await slow.send_raw(data[:9])  # then nothing until the fast terminal is done
    await eventually(lambda: slow_side.buffer.pending == 9, what="the slow writer's first 9 bytes in the switch")

    fast, term = await env.signed_on()
    answers = [await fast.request(term.purchase(env.cards["incheon"]["pan"], 1_000)) for _ in range(5)]
    assert [a["39"] for a in answers] == ["00"] * 5
    # all five were answered while the slow writer's frame was still incomplete
    assert (slow_side.buffer.pending, slow_side.in_flight) == (9, 0)

    for i in range(9, len(data), 5):  # the slow writer finishes, a few bytes at a time, each read on its own
        await slow.send_raw(data[i : i + 5])
        if i + 5 < len(data):
            await eventually(lambda: slow_side.buffer.pending == i + 5, what=f"{i + 5} bytes of the slow frame")
    resp = await slow.receive()
    assert resp["39"] == "00"
    await slow.close()
    await fast.close()
    assert len(postings(env.core.db_path, "purchase")) == 6
    assert verify(env.core.db_path).ok


async def _connect_with_small_buffers(env) -> tuple[TerminalClient, object]:
    """A client whose socket buffers are tiny on both ends, so a peer that does not read
    fills the switch's write buffer after a few kilobytes instead of megabytes."""
    before = set(env.server.connections)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", env.port))
    client = TerminalClient("127.0.0.1", env.port, env.dialect, response_timeout_ms=5000)
    client.reader, client.writer = await asyncio.open_connection(sock=sock)
    added = await eventually(lambda: set(env.server.connections) - before, what="the switch to accept the connection")
    (conn,) = added
    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return client, conn


def _steadily(probe, hold_s: float = 0.3):
    """A predicate for `eventually`: true once `probe()` has returned the same (ok, value) pair
    with ok true at every check for `hold_s` seconds."""
    since: list = [None, None]  # (value, first seen at)

    def check() -> bool:
        ok, value = probe()
        now = time.monotonic()
        if not ok or since[0] != value or since[1] is None:
            since[0], since[1] = (value, now) if ok else (None, None)
            return False
        return now - since[1] >= hold_s
    return check


async def test_a_peer_that_does_not_read_is_paused_and_others_are_served(tmp_path):
    write_buffer_max, in_flight_max = 4096, 8
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH), write_buffer_max=write_buffer_max,
                            in_flight_max=in_flight_max) as env:
        await provision(env)
        other, term = await env.signed_on()
        reader_less, conn = await _connect_with_small_buffers(env)
        pump = Terminal("T0000001", "NAMDONG01", stan=100_000)
        requests = [pump.echo() for _ in range(3_000)]
        reader_less.writer.write(b"".join(framed(env, r) for r in requests))

        # Until the kernel's buffers on both ends are full, the switch's write buffer drains now and
        # then below its low-water mark and the connection resumes for a moment: wait for the
        # state to hold (paused both ways, nothing in flight, the buffer not moving) for a while.
        await eventually(_steadily(lambda: (conn.writing_paused and conn.reading_paused and conn.in_flight == 0,
                                            conn.transport.get_write_buffer_size())),
                         what="the switch to pause writing to and reading from the peer that does not read, "
                              "with its requests in flight finished, for 0.3 s in a row")
        assert conn.writing_paused and conn.reading_paused
        echo_size = len(framed(env, {"t": "0810", "7": "0720120000", "11": "000001", "41": "T0000001",
                                     "70": "301", "39": "00"}))
        assert conn.transport.get_write_buffer_size() <= write_buffer_max + (in_flight_max + 1) * echo_size

        resp = await other.request(term.purchase(env.cards["incheon"]["pan"], 1_000))
        assert resp["39"] == "00"
        assert conn.writing_paused and conn.reading_paused  # served while the other peer still does not read

        answers = [await reader_less.receive() for _ in requests]  # now it reads: nothing was lost
        assert [a["11"] for a in answers] == [r["11"] for r in requests]
        assert all(a["39"] == "00" for a in answers)
        assert not conn.writing_paused
        await reader_less.close()
        await other.close()
        assert verify(env.core.db_path).ok


async def test_in_flight_max_one_answers_a_pipeline_in_order(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH), in_flight_max=1) as env:
        await provision(env)
        client, term = await env.signed_on()
        purchase = term.purchase(env.cards["incheon"]["pan"], 1_000)
        await client.send_raw(framed(env, purchase) + framed(env, term.echo()))
        first, second = await client.receive(), await client.receive()
        await client.close()
        # the echo needs no ledger write, but it waits for its turn behind the purchase
        assert (first["t"], first["39"], second["t"]) == ("0210", "00", "0810")
        assert verify(env.core.db_path).ok


async def test_pipelined_requests_run_concurrently_below_in_flight_max(switch_env):
    env = switch_env
    client, term = await env.signed_on()
    purchase = term.purchase(env.cards["incheon"]["pan"], 1_000)
    await client.send_raw(framed(env, purchase) + framed(env, term.echo()))
    first, second = await client.receive(), await client.receive()
    await client.close()
    # the echo is answered while the purchase waits for its ledger commit
    assert (first["t"], second["t"], second["39"]) == ("0810", "0210", "00")


async def test_a_long_pipeline_with_in_flight_max_two_is_answered_completely(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH), in_flight_max=2) as env:
        await provision(env)
        client, term = await env.signed_on()
        pan = env.cards["incheon"]["pan"]
        reqs = [term.purchase(pan, 100 + i) for i in range(40)]
        await client.send_raw(b"".join(framed(env, r) for r in reqs))  # one write, many frames
        answers = [await client.receive() for _ in reqs]
        await client.close()
        assert sorted(a["11"] for a in answers) == sorted(r["11"] for r in reqs)
        assert all(a["39"] == "00" for a in answers)
        assert len(postings(env.core.db_path, "purchase")) == 40
        assert verify(env.core.db_path).ok
