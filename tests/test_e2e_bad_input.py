"""Bad input over real TCP: the switch answers 30 where it can build a response, or closes
that one connection; every other terminal keeps being served and nothing is posted."""

from __future__ import annotations

import asyncio

import pytest

from conftest import posting_count, postings
from waiting import eventually, switch_side
from switch.ledger.audit import verify
from switch.wire.codec import encode_fields
from switch.wire.framing import frame
from switch.wire.messages import Balances, decode_balances
from terminal_sim.terminal import Terminal

pytestmark = pytest.mark.both_stores  # SQLite and PostgreSQL (tests/conftest.py)


def payload_of(env, fields: dict[str, str]) -> bytes:
    return encode_fields(fields, env.dialect)


def framed(env, payload: bytes) -> bytes:
    return frame(env.dialect.framing, payload)


async def closed_by_switch(client) -> bool:
    return await client.receive() is None


async def still_served(env, client, term) -> None:
    resp = await client.request(term.balance(env.cards["incheon"]["pan"]))
    assert resp["39"] == "00"
    assert decode_balances(resp["54"]) == Balances(cash=100_000, cashback=0)


async def test_garbage_frames_close_only_their_own_connection(switch_env):
    env = switch_env
    good, term = await env.signed_on()
    before = posting_count(env.core.db_path)
    garbage = [
        framed(env, bytes(range(0xF0, 0x100))),   # not even an ASCII MTI
        framed(env, b"HELLO WORLD!"),             # an MTI no one can answer
        b"\x00\x00",                              # zero-length frame
        b"\xff\xff" + b"A" * 32,                  # 65,535 > frame_size_max: closed before the body
    ]
    for data in garbage:
        bad = await env.client(response_timeout_ms=2000).connect()
        await bad.send_raw(data)
        assert await closed_by_switch(bad), data[:8]
        await bad.close()
        await still_served(env, good, term)
    await good.close()
    assert posting_count(env.core.db_path) == before
    assert verify(env.core.db_path).ok


async def test_oversize_length_header_closes_the_connection_while_others_are_served(switch_env):
    env = switch_env
    good, term = await env.signed_on()
    limit = env.dialect.framing.frame_size_max
    bad = await env.client(response_timeout_ms=2000).connect()
    valid = payload_of(env, term.purchase(env.cards["namdong"]["pan"], 1_000))
    # a valid request first, then a header announcing one byte over the limit
    await bad.send_raw(framed(env, valid) + (limit + 1).to_bytes(2, "big"))
    first = await bad.receive()
    assert first["39"] == "00"
    assert await closed_by_switch(bad)
    await bad.close()
    await still_served(env, good, term)
    await good.close()
    assert len(postings(env.core.db_path, "purchase")) == 1
    assert verify(env.core.db_path).ok


async def test_truncated_frame_then_close_posts_nothing(switch_env):
    env = switch_env
    good, term = await env.signed_on()
    pan = env.cards["namdong"]["pan"]
    req = term.purchase(pan, 20_000)
    data = framed(env, payload_of(env, req))
    half = await env.client().connect()
    conn = await switch_side(env.server, half)
    await half.send_raw(data[: len(data) // 2])
    await eventually(lambda: conn.buffer.pending == len(data) // 2, what="the switch to buffer the half frame")
    await half.close()
    await eventually(lambda: conn.closed, what="the switch to see the half-sent connection closed")
    assert conn.in_flight == 0  # the half frame never became a request
    assert postings(env.core.db_path, "purchase") == []
    # the whole message, sent later, is new to the switch
    resp = await good.request(req)
    await good.close()
    assert resp["39"] == "00"
    assert len(postings(env.core.db_path, "purchase")) == 1
    assert verify(env.core.db_path).ok


async def test_a_frame_sent_byte_by_byte_is_answered(switch_env):
    env = switch_env
    client, term = await env.signed_on()
    conn = await switch_side(env.server, client)
    data = framed(env, payload_of(env, term.purchase(env.cards["namdong"]["pan"], 20_000)))
    for i in range(len(data) - 1):  # each byte read by the switch on its own before the next is sent
        await client.send_raw(data[i : i + 1])
        await eventually(lambda: conn.buffer.pending == i + 1, what=f"the switch to buffer byte {i + 1}")
    assert conn.in_flight == 0  # one byte short: not a frame yet
    await client.send_raw(data[-1:])
    resp = await client.receive()
    await client.close()
    assert resp["39"] == "00"
    assert decode_balances(resp["54"]) == Balances(cash=80_000, cashback=1_500)
    assert verify(env.core.db_path).ok


async def test_frames_split_across_reads_and_joined_in_one_read_are_all_answered(switch_env):
    env = switch_env
    client, term = await env.signed_on()
    pan = env.cards["incheon"]["pan"]
    reqs = [term.purchase(pan, 1_000 * (i + 1)) for i in range(3)]
    data = b"".join(framed(env, payload_of(env, r)) for r in reqs)
    cut = len(data) - 7  # two and a bit frames, then the tail
    await client.send_raw(data[:cut])
    # the two whole frames are answered while the third is still a fragment in the switch
    answers = [await client.receive() for _ in reqs[:2]]
    conn, tail = await switch_side(env.server, client), len(framed(env, payload_of(env, reqs[2]))) - 7
    await eventually(lambda: conn.buffer.pending == tail, what="the third frame's first part in the switch's buffer")
    await client.send_raw(data[cut:])
    answers.append(await client.receive())
    await client.close()
    assert sorted(a["11"] for a in answers) == [r["11"] for r in reqs]
    assert all(a["39"] == "00" for a in answers)
    assert len(postings(env.core.db_path, "purchase")) == 3
    assert verify(env.core.db_path).ok


async def test_bitmap_announcing_a_missing_field_is_answered_30(switch_env):
    env = switch_env
    client, term = await env.signed_on()
    req = term.purchase(env.cards["namdong"]["pan"], 20_000)
    raw = bytearray(payload_of(env, req))
    raw[4 + 7] |= 0x01  # bit 64 (MAC) set, no MAC follows
    await client.send_raw(framed(env, bytes(raw)))
    resp = await client.receive()
    assert (resp["t"], resp["39"], resp["11"], resp["41"]) == ("0210", "30", req["11"], "T0000001")
    await still_served(env, client, term)
    await client.close()
    assert postings(env.core.db_path, "purchase") == []
    assert verify(env.core.db_path).ok


async def test_truncated_bitmap_is_answered_30(switch_env):
    env = switch_env
    client, term = await env.signed_on()
    await client.send_raw(framed(env, b"0200\x72\x38\x04"))
    resp = await client.receive()
    assert (resp["t"], resp["39"]) == ("0210", "30")
    await still_served(env, client, term)
    await client.close()
    assert verify(env.core.db_path).ok


async def test_field_longer_than_its_maximum_is_answered_30(switch_env):
    env = switch_env
    client, term = await env.signed_on()
    req = term.purchase(env.cards["namdong"]["pan"], 20_000)
    raw = payload_of(env, req)
    assert raw[12:14] == b"16"  # DE2 follows the MTI and the bitmap: LL + 16 digits
    too_long = raw[:12] + b"25" + b"9" * 25 + raw[14 + 16:]
    non_numeric_length = raw[:12] + b"1X" + raw[14:]
    for data in (too_long, non_numeric_length, raw + b"extra"):
        await client.send_raw(framed(env, data))
        resp = await client.receive()
        assert (resp["t"], resp["39"]) == ("0210", "30")
    await still_served(env, client, term)
    await client.close()
    assert postings(env.core.db_path, "purchase") == []
    assert verify(env.core.db_path).ok


async def test_present_but_empty_secondary_bitmap_is_accepted(switch_env):
    env = switch_env
    client, term = await env.signed_on()
    raw = bytearray(payload_of(env, term.purchase(env.cards["namdong"]["pan"], 20_000)))
    raw[4] |= 0x80  # bit 1: a secondary bitmap follows
    with_secondary = bytes(raw[:12]) + b"\x00" * 8 + bytes(raw[12:])
    await client.send_raw(framed(env, with_secondary))
    resp = await client.receive()
    await client.close()
    assert resp["39"] == "00"
    assert decode_balances(resp["54"]) == Balances(cash=80_000, cashback=1_500)
    assert verify(env.core.db_path).ok


async def test_bad_input_on_many_connections_never_disturbs_a_busy_terminal(switch_env):
    env = switch_env
    good, term = await env.signed_on()
    pan = env.cards["namdong"]["pan"]
    stranger = Terminal("T0000002", "YEONSU01", stan=300)
    bad_frames = [
        framed(env, b"\x00" * 40),
        framed(env, b"0200" + b"\xff" * 8),
        b"\x00\x05" + b"02",          # truncated, then the peer goes away
        framed(env, payload_of(env, {**stranger.purchase(pan, 1_000), "4": "abcdefghijkl"})),
    ]

    truncated = bad_frames[2]

    async def attacker(data: bytes) -> str:
        """What the switch did with the bad bytes: a response code, "closed", or (the
        truncated frame) "buffered", still waiting for the rest when the peer goes away."""
        bad = await env.client().connect()
        conn = await switch_side(env.server, bad)
        await bad.send_raw(data)
        if data is truncated:
            await eventually(lambda: conn.buffer.pending == len(truncated), what="the truncated frame in the buffer")
            outcome = "buffered" if conn.in_flight == 0 and not conn.closed else "taken"
        else:
            resp = await bad.receive()
            outcome = "closed" if resp is None else resp["39"]
        await bad.close()
        return outcome

    async def busy() -> list[str]:
        return [(await good.request(term.purchase(pan, 1_000)))["39"] for _ in range(10)]

    results = await asyncio.gather(busy(), *(attacker(b) for b in bad_frames))
    await good.close()
    assert results[0] == ["00"] * 10
    assert results[1:] == ["closed", "30", "buffered", "30"]
    assert len(postings(env.core.db_path, "purchase")) == 10
    assert verify(env.core.db_path).ok
