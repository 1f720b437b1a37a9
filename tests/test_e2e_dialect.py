"""Dialects are data: the bcd-tpdu dialect (BCD length + TPDU echoed with addresses swapped),
and a dialect written into a temporary directory (4 ASCII length digits, ASCII-hex bitmap)
served with no code change, both over real TCP."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from conftest import LAUNCH, posting_count, postings, provision, start_switch
from switch.ledger.audit import verify
from switch.clock import FixedClock
from switch.wire.codec import decode_fields, dialects_dir, encode_fields, load_dialect
from switch.wire.messages import Balances, decode_balances
from terminal_sim.client import DEFAULT_TPDU
from terminal_sim.terminal import Terminal


async def _read_frame(reader: asyncio.StreamReader, header_size: int, decode_length) -> tuple[bytes, bytes]:
    header = await asyncio.wait_for(reader.readexactly(header_size), 5)
    body = await asyncio.wait_for(reader.readexactly(decode_length(header)), 5)
    return header, body


async def test_bcd_tpdu_dialect_swaps_the_tpdu_addresses_in_the_response(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH), dialect="bcd-tpdu") as env:
        await provision(env)
        assert (env.dialect.framing.length_header, env.dialect.framing.tpdu) == ("bcd2", True)
        client, term = await env.signed_on()
        assert client.last_tpdu == bytes.fromhex("6000000001")  # request 60 0001 0000
        assert DEFAULT_TPDU == bytes.fromhex("6000010000")
        resp = await client.request(term.purchase(env.cards["namdong"]["pan"], 20_000))
        await client.close()
        assert resp["39"] == "00"
        assert decode_balances(resp["54"]) == Balances(cash=80_000, cashback=1_500)
        assert verify(env.core.db_path).ok


async def test_bcd_tpdu_raw_frames_on_the_wire(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH), dialect="bcd-tpdu") as env:
        await provision(env)
        d = env.dialect
        term = Terminal("T0000001", "NAMDONG01", stan=10)
        reader, writer = await asyncio.open_connection("127.0.0.1", env.port)

        async def exchange(tpdu: bytes, fields: dict[str, str]) -> tuple[bytes, bytes]:
            body = tpdu + encode_fields(fields, d)
            writer.write(bytes.fromhex(f"{len(body):04d}") + body)
            return await _read_frame(reader, 2, lambda h: int(h.hex()))

        header, body = await exchange(bytes.fromhex("6000120034"), term.sign_on())
        assert body[:5] == bytes.fromhex("6000340012")  # destination and source swapped
        assert header.hex() == f"{len(body):04d}"  # the response length is BCD too
        assert decode_fields(body[5:], d)["39"] == "00"

        _, body = await exchange(bytes.fromhex("6001230456"), term.purchase(env.cards["incheon"]["pan"], 5_000))
        assert body[:5] == bytes.fromhex("6004560123")
        answer = decode_fields(body[5:], d)
        assert (answer["t"], answer["39"]) == ("0210", "00")

        writer.write(bytes.fromhex("0003") + b"\x60\x00\x01")  # shorter than its TPDU
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert len(postings(env.core.db_path, "purchase")) == 1
        assert verify(env.core.db_path).ok


def _write_ascii4_dialect(directory: Path) -> str:
    text = (dialects_dir() / "default.toml").read_text(encoding="utf-8")
    text = text.replace('length_header = "binary2"', 'length_header = "ascii4"')
    for key in ('"p"', '"1"'):  # bitmaps as 16 ASCII hex digits instead of 8 bytes
        old = f'[fields.{key}]\ndata_enc = "b"\nlen_enc = "ascii"\nlen_type = 0\nmax_len = 8\n'
        assert old in text
        text = text.replace(old, f'[fields.{key}]\ndata_enc = "ascii"\nlen_enc = "ascii"\nlen_type = 0\nmax_len = 16\n')
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pos-ascii4.toml").write_text(text, encoding="utf-8")
    return "pos-ascii4"


async def test_a_dialect_file_in_another_directory_is_served_without_code_change(tmp_path):
    name = _write_ascii4_dialect(tmp_path / "dialects")
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH), dialect=name,
                            dialect_dir=tmp_path / "dialects") as env:
        await provision(env)
        assert env.dialect.framing.length_header == "ascii4"
        client, term = await env.signed_on()
        resp = await client.request(term.purchase(env.cards["namdong"]["pan"], 20_000))
        assert resp["39"] == "00"
        assert decode_balances(resp["54"]) == Balances(cash=80_000, cashback=1_500)
        await client.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
        payload = encode_fields(term.balance(env.cards["namdong"]["pan"]), env.dialect)
        assert payload[4:20].decode().isalnum()  # the bitmap is ASCII hex on the wire
        writer.write(b"%04d" % len(payload) + payload)
        header, body = await _read_frame(reader, 4, lambda h: int(h.decode()))
        assert header == b"%04d" % len(body)
        assert body[:4] == b"0210" and all(chr(c) in "0123456789ABCDEF" for c in body[4:20])
        assert decode_balances(decode_fields(body, env.dialect)["54"]) == Balances(cash=80_000, cashback=1_500)

        before = posting_count(env.core.db_path)
        writer.write(b"12AB" + payload)  # a length header that is not decimal: this connection closes
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        other = await env.client().connect()
        assert (await other.request(term.echo()))["39"] == "00"
        await other.close()
        assert posting_count(env.core.db_path) == before
        assert verify(env.core.db_path).ok


def test_a_broken_or_unknown_dialect_is_refused_with_its_name(tmp_path):
    with pytest.raises(ValueError, match="unknown dialect 'nope'.*bcd-tpdu.*default"):
        load_dialect("nope")
    text = (dialects_dir() / "default.toml").read_text(encoding="utf-8")
    broken = text.replace('[fields."t"]', '[fields."t_"]')
    (tmp_path / "broken.toml").write_text(broken, encoding="utf-8")
    with pytest.raises(ValueError, match="dialect broken: fields.t is required"):
        load_dialect("broken", directory=tmp_path)
    (tmp_path / "toolong.toml").write_text(text.replace("frame_size_max = 4096", "frame_size_max = 70000"))
    with pytest.raises(ValueError, match="frame_size_max"):
        load_dialect("toolong", directory=tmp_path)
