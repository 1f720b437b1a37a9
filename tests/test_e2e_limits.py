"""Connection limits over real TCP: connections_max, idle_timeout_s, in_flight_max,
write_buffer_max (a peer that does not read), and a slow writer that must not stall others."""

from __future__ import annotations

import asyncio
import socket
import time

from conftest import LAUNCH, postings, provision, start_switch
from switch.audit import verify
from switch.clock import FixedClock
from switch.codec import encode_fields
from switch.framing import frame
from terminal_sim.client import TerminalClient
from terminal_sim.terminal import Terminal


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
        for _ in range(100):  # the switch notices the close
            if len(env.server.connections) < 2:
                break
            await asyncio.sleep(0.01)
        fourth = await env.client().connect()
        resp = await fourth.request(term.purchase(env.cards["incheon"]["pan"], 1_000))
        assert resp["39"] == "00"
        await fourth.close()
        await first.close()
        assert verify(env.core.db_path).ok


async def test_idle_connections_time_out_while_busy_ones_stay_open(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH), idle_timeout_s=0.4) as env:
        await provision(env)
        busy, term = await env.signed_on()
        idle = await env.client(response_timeout_ms=3000).connect()
        assert (await idle.request(Terminal("T0000002", "YEONSU01", stan=900).sign_on()))["39"] == "00"
        started = time.monotonic()
        for _ in range(8):
            await asyncio.sleep(0.1)
            assert (await busy.request(term.echo()))["39"] == "00"
        assert await idle.receive() is None
        assert time.monotonic() - started < 2.5
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
    await slow.send_raw(data[:9])  # then nothing for a while

    fast, term = await env.signed_on()
    started = time.monotonic()
    answers = [await fast.request(term.purchase(env.cards["incheon"]["pan"], 1_000)) for _ in range(5)]
    assert [a["39"] for a in answers] == ["00"] * 5
    assert time.monotonic() - started < 1.0

    for i in range(9, len(data), 5):  # the slow writer finishes, a few bytes at a time
        await slow.send_raw(data[i : i + 5])
        await asyncio.sleep(0.005)
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
    for _ in range(100):
        added = set(env.server.connections) - before
        if added:
            break
        await asyncio.sleep(0.01)
    (conn,) = added
    conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return client, conn


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

        for _ in range(300):
            if conn.writing_paused and conn.reading_paused:
                break
            await asyncio.sleep(0.01)
        assert conn.writing_paused and conn.reading_paused
        await asyncio.sleep(0.1)
        echo_size = len(framed(env, {"t": "0810", "7": "0720120000", "11": "000001", "41": "T0000001",
                                     "70": "301", "39": "00"}))
        assert conn.transport.get_write_buffer_size() <= write_buffer_max + (in_flight_max + 1) * echo_size

        started = time.monotonic()
        resp = await other.request(term.purchase(env.cards["incheon"]["pan"], 1_000))
        assert resp["39"] == "00"
        assert time.monotonic() - started < 1.0

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
