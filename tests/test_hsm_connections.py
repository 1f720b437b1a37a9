"""The HSM's connection handling over real TCP (hsm_mock/service.py, `_Connection`, an
asyncio Protocol since it replaced a StreamReader loop; these tests were written against the
loop first): a silent connection closed after the idle timeout while a talking one stays,
reads paused at `in_flight_max` commands in progress, reads paused while a peer that does not
read leaves its answers above `write_buffer_max` (others served meanwhile, every answer
delivered once it reads), and a peer that half-closes still getting every answer it asked for
before the close.

Timing here is only ever a lower bound (a wave of commands cannot be answered before its
latency has passed) or a generous deadline, so a loaded machine makes these slower, not red.
"""

from __future__ import annotations

import asyncio
import socket
import time

from test_hsm_server import ND, Client, framed, serve


async def test_a_silent_connection_is_closed_after_the_idle_timeout_and_a_talking_one_is_not() -> None:
    async with serve(idle_timeout_s=0.5) as hsm:
        silent = await Client.connect(hsm.port)
        talker = await Client.connect(hsm.port)
        started = time.monotonic()
        answers = []
        while time.monotonic() - started < 1.2:  # more than twice the idle timeout, talking all along
            answers.append(await talker.call(b"0000NC"))
            await asyncio.sleep(0.05)
        assert await silent.closed_by_peer(timeout=5.0)
        assert answers == [b"0000" + ND] * len(answers) and len(answers) >= 2
        assert await talker.call(b"0001NC") == b"0001" + ND  # still open
        await talker.close()
        await silent.close()


async def test_reads_pause_while_in_flight_max_commands_are_in_progress() -> None:
    """Six pipelined commands that each take 200 ms, two allowed in progress: they are answered
    in three waves (the third and fourth are read only once the first two are answered), all
    six, in order."""
    async with serve(in_flight_max=2, latency_ms=200.0) as hsm:
        c = await Client.connect(hsm.port)
        started = time.monotonic()
        for i in range(6):
            c.send(f"{i:04d}NC".encode())
        await c.writer.drain()
        answers, at = [], []
        for _ in range(6):
            answers.append(await c.recv(timeout=10.0))
            at.append(time.monotonic() - started)
        assert answers == [f"{i:04d}".encode() + ND for i in range(6)]
        assert at[1] >= 0.19 and at[2] - at[1] >= 0.15 and at[4] - at[3] >= 0.15 and at[5] >= 0.57
        await c.close()


async def test_without_the_cap_the_same_six_are_answered_in_one_wave() -> None:
    """The control for the test above, at 1 s a command: with room for all six, the last is
    answered within one wave (1 s) and not three (3 s); the bound leaves a second of slack."""
    async with serve(latency_ms=1000.0) as hsm:
        c = await Client.connect(hsm.port)
        started = time.monotonic()
        for i in range(6):
            c.send(f"{i:04d}NC".encode())
        await c.writer.drain()
        answers = [await c.recv(timeout=10.0) for _ in range(6)]
        assert answers == [f"{i:04d}".encode() + ND for i in range(6)]
        assert 0.99 <= time.monotonic() - started < 2.0
        await c.close()


async def test_a_peer_that_half_closes_gets_every_answer_then_the_close() -> None:
    async with serve(latency_ms=150.0) as hsm:
        c = await Client.connect(hsm.port)
        for i in range(3):
            c.send(f"{i:04d}NC".encode())
        await c.writer.drain()
        c.writer.write_eof()  # nothing more will come: the HSM finishes what it was asked
        answers = [await c.recv(timeout=10.0) for _ in range(3)]
        assert answers == [f"{i:04d}".encode() + ND for i in range(3)]
        assert await c.closed_by_peer(timeout=10.0)
        await c.close()


async def test_a_peer_that_does_not_read_is_no_longer_read_others_are_served_and_it_gets_every_answer() -> None:
    """5,000 pipelined NCs from a peer that does not read, with its receive buffer, the HSM's
    send buffer for it and `write_buffer_max` all at 4 KiB: the HSM stops answering it (its
    answers would only pile up in memory), stops reading it, and does not close it as idle
    while its answers wait; another connection is served meanwhile; once the peer reads, all
    5,000 answers arrive, in order."""
    n = 5000
    async with serve(write_buffer_max=4096, idle_timeout_s=0.5) as hsm:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window it offers
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", hsm.port))
        # its stream reader takes at most 2 KiB off the socket before it stops reading (limit × 2)
        reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
        deadline = time.monotonic() + 5.0
        while not hsm._connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        [conn] = hsm._connections
        conn.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        for i in range(n):
            writer.write(framed(f"{i:04d}NC".encode()))  # never drained here: the peer is stuck too
        answered, still_since = -1, time.monotonic()
        while time.monotonic() - still_since < 0.5:  # until the count has stood still for half a second
            await asyncio.sleep(0.05)
            now = sum(hsm.answered.values())
            if now != answered:
                answered, still_since = now, time.monotonic()
        assert 0 < answered < n
        assert conn.reading_paused and conn.writer.is_reading() is False
        other = await Client.connect(hsm.port)
        assert await other.call(b"9999NC") == b"9999" + ND
        await asyncio.sleep(1.0)  # twice the idle timeout: a paused peer is waited for, not idle
        assert not conn.closed and sum(hsm.answered.values()) == answered + 1
        got = []
        for _ in range(n):
            size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 10.0), "big")
            got.append(await asyncio.wait_for(reader.readexactly(size), 10.0))
        assert got == [f"{i:04d}".encode() + ND for i in range(n)]
        assert not conn.reading_paused
        await other.close()
        writer.close()
