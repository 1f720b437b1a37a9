import asyncio, socket, time
from conftest import start_switch, provision, LAUNCH
from switch.clock import FixedClock
from terminal_sim.client import TerminalClient
from terminal_sim.terminal import Terminal
from switch.codec import encode_fields
from switch.framing import frame

async def test_slow_reader(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH), write_buffer_max=4096) as env:
        await provision(env)
        c, t = await env.signed_on()
        before = set(env.server.connections)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", env.port))
        r, w = await asyncio.open_connection(sock=sock)
        await asyncio.sleep(0.05)
        (conn,) = set(env.server.connections) - before
        s = conn.transport.get_extra_info("socket")
        print("sndbuf", s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        term = Terminal("T0000001", "NAMDONG01", stan=100000)
        msgs = b"".join(frame(env.dialect.framing, encode_fields(term.echo(), env.dialect)) for _ in range(3000))
        t0 = time.perf_counter()
        w.write(msgs)
        for i in range(200):
            await asyncio.sleep(0.01)
            st = (conn.writing_paused, conn.reading_paused, conn.in_flight, conn.transport.get_write_buffer_size(), conn.buffer.pending)
            if st[0]:
                print("paused after", time.perf_counter()-t0, st)
                break
        else:
            print("never paused", st)
        t1 = time.perf_counter()
        resp = await c.request(t.balance(env.cards["namdong"]["pan"]))
        print("other served in", time.perf_counter()-t1, resp["39"])
        await asyncio.sleep(0.3)
        print((conn.writing_paused, conn.reading_paused, conn.in_flight, conn.transport.get_write_buffer_size(), conn.buffer.pending))
        w.close()
