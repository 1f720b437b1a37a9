"""Junk connections cannot lock terminals out (docs/architecture.md, "Connection limits").

End to end against a real `eum switch` process over TCP on 127.0.0.1, each test with the
flags it is about: a cap per peer address (`--per-peer-max`), a deadline for a frame to
complete once its first byte arrived (`--frame-timeout-ms`), a deadline for a first valid
frame (`--signon-timeout-s`), and, at `--connections-max`, the oldest connection that never
sent a valid frame closed to admit a terminal. Junk comes from other loopback addresses
(127.0.0.2 …): Linux routes all of 127/8 to lo, so each is a distinct peer for the switch.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess

import pytest

from switch.ops.config import SwitchConfig
from switch.wire.codec import encode_fields
from switch.wire.framing import FrameBuffer, Framing, frame
from switch_process import COMMAND_TIMEOUT_S, DIALECT, EUM, provisioned, running_switch
from terminal_sim.client import TerminalClient
from terminal_sim.terminal import Terminal
from waiting import eventually

FRAMING = DIALECT.framing


def balances_de54(cash: int, cashback: int) -> str:
    """DE54 as docs/host-interface.md §5 spells it: cash available, then cashback available."""
    return f"0002410C{cash:012d}0091410C{cashback:012d}"


def peer_of(client: TerminalClient) -> str:
    """How the switch names this connection in its log: the client's address and port."""
    host, port = client.writer.get_extra_info("sockname")[:2]
    return f"{host}:{port}"


def closing(event: dict) -> tuple:
    return (event["peer"], event["reason"])


@pytest.fixture
async def population(tmp_path):
    data_dir = tmp_path / "var"
    return data_dir, await provisioned(data_dir)


async def signed_on(sw, tid: str = "T0000001", mid: str = "NAMDONG01", *, source: str = "127.0.0.1",
                    stan: int = 0) -> tuple[TerminalClient, Terminal]:
    client = await sw.client(source=source)
    term = Terminal(tid, mid, stan=stan)
    assert (await client.request(term.sign_on()))["39"] == "00"
    return client, term


async def buys(client: TerminalClient, term: Terminal, pan: str) -> dict[str, str]:
    """A purchase of 20,000 by the Namdong card at the Namdong merchant (docs/domain.md,
    "Worked examples", 1), from the card's first charge of 100,000."""
    answer = await client.request(term.purchase(pan, 20_000))
    assert (answer["39"], answer["54"]) == ("00", balances_de54(80_000, 1_500))
    return answer


async def opened(sw, clients: list[TerminalClient]) -> None:
    """Wait until the switch has admitted these connections (its debug `connection_opened` lines)."""
    peers = {peer_of(c) for c in clients}
    await eventually(lambda: peers <= {e["peer"] for e in sw.events(event="connection_opened")},
                     what=f"the switch to log connection_opened for {len(peers)} connections")


async def closed_by_switch(client: TerminalClient) -> bool:
    """True once the switch has closed the connection (EOF, or a reset if a write crossed the close)."""
    try:
        return await client.receive() is None
    except ConnectionResetError:
        return True


async def close_all(*clients: TerminalClient) -> None:
    for c in clients:
        await c.close()


# ---------------------------------------------------------------------------- flags and defaults

def test_the_connection_flags_and_their_defaults_are_in_switch_help():
    proc = subprocess.run([*EUM, "switch", "--help"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for line in (
        "--connections-max CONNECTIONS_MAX open terminal connections; at the limit the oldest one that never sent "
        "a valid frame is closed for a new one, else the new one is refused (default 2048)",
        "--per-peer-max PER_PEER_MAX open connections from one IP address, same rule (default 256)",
        "--idle-timeout-s IDLE_TIMEOUT_S close a connection silent this long (default 300.0)",
        "--frame-timeout-ms FRAME_TIMEOUT_MS close a connection whose frame is not complete this long after its "
        "first byte (default 5000.0)",
        "--signon-timeout-s SIGNON_TIMEOUT_S close a connection that has sent no valid frame (one with an MTI) "
        "this long after connecting (default 30.0)",
    ):
        assert line in text, line
    defaults = SwitchConfig()
    assert (defaults.connections_max, defaults.per_peer_max, defaults.idle_timeout_s, defaults.frame_timeout_ms,
            defaults.signon_timeout_s) == (2048, 256, 300.0, 5000.0, 30.0)


@pytest.mark.parametrize("field, value, message", [
    ("per_peer_max", 0, "per_peer_max (--per-peer-max) must be ≥ 1"),
    ("frame_timeout_ms", 0.0, "frame_timeout_ms (--frame-timeout-ms) must be > 0"),
    ("signon_timeout_s", 0.0, "signon_timeout_s (--signon-timeout-s) must be > 0"),
])
def test_a_connection_limit_out_of_range_is_refused_at_load(field, value, message):
    with pytest.raises(ValueError) as err:
        SwitchConfig(**{field: value})
    assert str(err.value) == message
    SwitchConfig(**{field: 1})  # the smallest value inside is accepted


def test_the_switch_refuses_to_start_with_a_frame_timeout_of_zero(tmp_path):
    proc = subprocess.run([*EUM, "switch", "--data-dir", str(tmp_path / "var"), "--frame-timeout-ms", "0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert (proc.returncode, proc.stderr) == (2, "eum: frame_timeout_ms (--frame-timeout-ms) must be > 0\n")


# ---------------------------------------------------------------------------- the frame buffer's partial frame

def test_a_buffer_is_partial_only_while_its_first_frame_waits_for_bytes():
    buf = FrameBuffer(Framing(frame_size_max=64))
    assert not buf.partial  # empty
    data = frame(buf.framing, b"0800abcd")
    buf.receive_data(data[:1])
    assert buf.partial  # half a length header
    buf.receive_data(data[1:5])
    assert buf.partial  # the header and part of the body
    buf.receive_data(data[5:])
    assert not buf.partial  # one whole frame waiting to be taken is not partial
    buf.receive_data(data[:3])
    assert not buf.partial  # still a whole frame first
    assert buf.next_frame().payload == b"0800abcd"
    assert buf.partial  # now the second frame's first bytes lead
    oversize = FrameBuffer(Framing(frame_size_max=64))
    oversize.receive_data((65).to_bytes(2, "big") + b"x")
    assert not oversize.partial  # next_frame refuses it: the connection closes on framing, not on time


# ---------------------------------------------------------------------------- per-peer cap

async def test_the_per_peer_cap_refuses_the_next_connection_from_that_address_only(population, tmp_path):
    data_dir, cards = population
    pan = cards["namdong"]["pan"]
    with running_switch(data_dir, tmp_path, "--per-peer-max", "3") as sw:
        terminals = [await signed_on(sw, stan=1000 * i) for i in range(3)]  # three proven connections
        fourth = await sw.client(response_timeout_ms=20_000)
        assert await closed_by_switch(fourth)  # closed by the switch at once
        refused = await eventually(lambda: sw.events(event="connection_refused"), what="the refusal in the log")
        assert [(e["peer"], e["reason"], e["per_peer_max"], e["level"]) for e in refused] == [
            (peer_of(fourth), "per_peer_max", 3, "warning")]

        other, other_term = await signed_on(sw, "T0000002", "YEONSU01", source="127.0.0.2", stan=500)
        balance = await other.request(other_term.balance(cards["incheon"]["pan"]))
        assert (balance["39"], balance["54"]) == ("00", balances_de54(100_000, 0))
        await buys(*terminals[0], pan)  # the three are still served
        for client, term in terminals[1:]:
            assert (await client.request(term.echo()))["39"] == "00"
        assert sw.events(event="connection_closed") == []
        await close_all(fourth, other, *(c for c, _ in terminals))


async def test_at_the_per_peer_cap_a_terminal_takes_the_place_of_that_peers_oldest_junk(population, tmp_path):
    data_dir, cards = population
    with running_switch(data_dir, tmp_path, "--per-peer-max", "3", "--log-level", "debug",
                        "--frame-timeout-ms", "60000") as sw:
        junk = [await sw.client(source="127.0.0.3", response_timeout_ms=20_000) for _ in range(3)]
        await junk[1].send_raw(b"\x00")  # half a length header: a partial frame is junk too
        await opened(sw, junk)
        client, term = await signed_on(sw, source="127.0.0.3")
        assert await closed_by_switch(junk[0])  # the oldest junk connection was closed
        evicted = await eventually(lambda: sw.events(event="connection_closed"), what="the eviction in the log")
        assert [(e["peer"], e["reason"], e["limit"], e["admitted"]) for e in evicted] == [
            (peer_of(junk[0]), "evicted", "per_peer_max", peer_of(client))]
        await buys(client, term, cards["namdong"]["pan"])
        assert sw.events(event="connection_refused") == []
        await close_all(client, *junk)


# ---------------------------------------------------------------------------- frame deadline (slowloris)

async def test_a_slowloris_trickling_one_byte_at_a_time_is_closed_after_frame_timeout_ms(population, tmp_path):
    data_dir, cards = population
    with running_switch(data_dir, tmp_path, "--frame-timeout-ms", "300") as sw:
        good, term = await signed_on(sw)
        slow, slow_term = await signed_on(sw, "T0000002", "YEONSU01", stan=700)  # proven: only the frame deadline applies
        stop = asyncio.Event()

        async def trickle() -> int:
            """A length header announcing frame_size_max bytes, then one byte every 20 ms:
            80 s to complete the frame, so only a deadline from its first byte closes it."""
            sent = 0
            with contextlib.suppress(ConnectionError):
                await slow.send_raw(FRAMING.frame_size_max.to_bytes(2, "big"))
                while not stop.is_set() and sent < FRAMING.frame_size_max - 1:
                    await slow.send_raw(b"0")
                    sent += 1
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.02)  # the slowloris's pace, not a synchronisation
            return sent

        trickler = asyncio.ensure_future(trickle())
        slow.response_timeout_ms = 20_000
        assert await closed_by_switch(slow)  # closed by the switch while the trickle goes on
        stop.set()
        sent = await trickler
        closed = await eventually(lambda: sw.events(event="connection_closed"), what="the frame timeout in the log")
        assert [(e["peer"], e["reason"], e["frame_timeout_ms"]) for e in closed] == [
            (peer_of(slow), "frame_timeout", 300.0)]
        assert 2 <= closed[0]["buffered"] <= 2 + sent < 2 + FRAMING.frame_size_max  # never a whole frame
        await buys(good, term, cards["namdong"]["pan"])  # the other terminal is served throughout
        await close_all(good, slow)


# ---------------------------------------------------------------------------- sign-on deadline

async def test_connections_without_a_valid_frame_are_closed_after_signon_timeout_s(population, tmp_path):
    data_dir, cards = population
    with running_switch(data_dir, tmp_path, "--signon-timeout-s", "1.5") as sw:
        proven, term = await signed_on(sw)
        malformed = await sw.client()  # its one frame has an MTI: answered 30, and that counts as valid
        answer = await malformed.request({"t": "0200", "11": "000001", "41": "T0000002"})
        assert (answer["t"], answer["11"], answer["41"], answer["39"]) == ("0210", "000001", "T0000002", "30")
        silent = await sw.client(response_timeout_ms=20_000)
        partial = await sw.client(response_timeout_ms=20_000)
        await partial.send_raw(frame(FRAMING, encode_fields(term.echo(), DIALECT))[:5])
        assert await closed_by_switch(silent)
        assert await closed_by_switch(partial)
        closed = await eventually(lambda: len(sw.events(event="connection_closed")) == 2 and sw.events(
            event="connection_closed"), what="both connections' sign-on timeouts in the log")
        assert sorted((e["peer"], e["reason"], e["signon_timeout_s"]) for e in closed) == sorted(
            [(peer_of(silent), "signon_timeout", 1.5), (peer_of(partial), "signon_timeout", 1.5)])
        # both earlier connections outlived the deadline: they had sent a frame with an MTI
        await buys(proven, term, cards["namdong"]["pan"])
        assert (await malformed.request(Terminal("T0000002", "YEONSU01", stan=40).sign_on()))["39"] == "00"
        await close_all(proven, malformed, silent, partial)


# ---------------------------------------------------------------------------- connections_max full of junk

async def test_a_terminal_connecting_to_a_switch_full_of_junk_signs_on_and_buys(population, tmp_path):
    data_dir, cards = population
    with running_switch(data_dir, tmp_path, "--connections-max", "50", "--log-level", "debug",
                        "--frame-timeout-ms", "60000", "--signon-timeout-s", "60") as sw:
        junk = []
        for i in range(50):  # ten peers, five connections each: silent, or half a frame then silence
            conn = await sw.client(source=f"127.0.0.{2 + i % 10}", response_timeout_ms=20_000)
            if i % 2:
                await conn.send_raw(b"\x00\x40" + b"0200")
            junk.append(conn)
        await opened(sw, junk)

        client, term = await signed_on(sw)
        await buys(client, term, cards["namdong"]["pan"])
        assert await closed_by_switch(junk[0])
        second, second_term = await signed_on(sw, "T0000002", "YEONSU01", source="127.0.0.200", stan=300)
        balance = await second.request(second_term.balance(cards["incheon"]["pan"]))
        assert (balance["39"], balance["54"]) == ("00", balances_de54(100_000, 0))
        assert await closed_by_switch(junk[1])

        evicted = await eventually(lambda: len(sw.events(event="connection_closed")) == 2 and sw.events(
            event="connection_closed"), what="two evictions in the log")
        assert [(e["peer"], e["reason"], e["limit"], e["admitted"]) for e in evicted] == [
            (peer_of(junk[0]), "evicted", "connections_max", peer_of(client)),
            (peer_of(junk[1]), "evicted", "connections_max", peer_of(second))]
        assert sw.events(event="connection_refused") == []
        await close_all(client, second, *junk)
