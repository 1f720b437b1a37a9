"""The terminal dialects shipped beside default and bcd-tpdu, each end to end over real TCP,
spoken by a terminal built on pyiso8583 directly: its spec dicts are written here from each
dialect's documented choices (docs/host-interface.md §1, "Dialect settings"), and neither
the switch's codec nor its dialect loader builds or reads a byte the terminal sends or gets.

* iso93-text: DE12 YYMMDDhhmmss, DE39 an 3 (the switch's code left-padded with "0"), DE41 and
  DE42 left-padded with spaces, MAC (DE64/DE128) and KSN as hex text, binary2 framing.
* ascii4-mac128: ascii4 framing, DE7 YYMMDDhhmmss, the MAC always in DE128 (binary), the KSN
  binary in DE53.

Each is served as its file says, with no code change: sign-on, an approved purchase (exact
DE39 in the dialect's width, exact DE12/DE7 and DE54 echo), a decline over the balance (51),
a reversal (DE90) and the balance it restores; a secured (dukpt-tdes) terminal's MAC in the
dialect's field and form, checked both ways; and `eum switch` refusing, in one line naming
the field, dialects whose settings cannot carry every response.

The MACs are computed with terminal_sim/security.py (the terminal's DUKPT keys from the
published X9.24-1 test BDK, as tests/test_e2e_security.py does) over bytes pyiso8583 encoded.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import iso8583
import pytest

from conftest import LAUNCH, provision, start_switch
from hsm_mock.config import HsmConfig as ServiceConfig
from hsm_mock.service import HsmServer
from switch.authorize.hsm_client import HsmConfig
from switch.clock import FixedClock
from switch.ledger.audit import verify
from switch.rules.policy import default_config_dir
from switch.wire.messages import ECHO_FIELDS, RESPONSE_MTI
from terminal_sim.security import TerminalSecurity

IO_TIMEOUT_S = 5
COMMAND_TIMEOUT_S = 30
EUM_SCRIPT = Path(sys.executable).parent / "eum"
EUM = [str(EUM_SCRIPT)] if EUM_SCRIPT.exists() else [sys.executable, "-m", "switch.cli.main"]


# ---------------------------------------------------------------------------- the terminals' specs

def text(max_len: int, len_type: int = 0) -> dict:
    return {"data_enc": "ascii", "len_enc": "ascii", "len_type": len_type, "max_len": max_len, "desc": ""}


def binary(max_len: int, len_type: int = 0, len_enc: str = "ascii") -> dict:
    return {"data_enc": "b", "len_enc": len_enc, "len_type": len_type, "max_len": max_len, "desc": ""}


# The fields these terminals send or get, as ISO 8583:1987 lays them (docs/host-interface.md §1).
ISO87 = {
    "h": text(0), "t": text(4), "p": binary(8), "1": binary(8),
    "2": text(19, 2), "3": text(6), "4": text(12), "7": text(10), "11": text(6), "12": text(6),
    "13": text(4), "22": text(3), "37": text(12), "38": text(6), "39": text(2), "41": text(8),
    "42": text(15), "49": text(3), "53": text(48, 2), "54": text(240, 3), "64": binary(8), "70": text(3),
    "90": text(42), "95": text(42), "128": binary(8),
}
# iso93-text: DE12 n 12, DE39 an 3, the MACs as 16 hex characters.
ISO93_TEXT = {**ISO87, "12": text(12), "39": text(3), "64": text(16), "128": text(16)}
# ascii4-mac128: DE7 n 12, the KSN binary (10 or 12 bytes after a 2-digit length).
ASCII4_MAC128 = {**ISO87, "7": text(12), "53": binary(12, 2)}


@dataclass
class Link:
    """One terminal's TCP connection: pyiso8583 encodes and decodes, this frames."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    spec: dict
    length_header: str  # "binary2" or "ascii4"

    @classmethod
    async def open(cls, port: int, spec: dict, length_header: str) -> Link:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, spec, length_header)

    def encode(self, fields: dict[str, str]) -> bytes:
        return bytes(iso8583.encode(dict(fields), self.spec)[0])

    async def exchange(self, payload: bytes) -> tuple[dict[str, str], bytes]:
        """Send one message, read one answer: (its fields, its bytes)."""
        n = len(payload)
        self.writer.write((n.to_bytes(2, "big") if self.length_header == "binary2" else b"%04d" % n) + payload)
        head = await asyncio.wait_for(self.reader.readexactly(2 if self.length_header == "binary2" else 4), IO_TIMEOUT_S)
        size = int.from_bytes(head, "big") if self.length_header == "binary2" else int(head.decode("ascii"))
        body = await asyncio.wait_for(self.reader.readexactly(size), IO_TIMEOUT_S)
        return iso8583.decode(body, self.spec)[0], body

    async def request(self, fields: dict[str, str]) -> dict[str, str]:
        return (await self.exchange(self.encode(fields)))[0]

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def without_bitmaps(fields: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in fields.items() if k not in ("p", "1")}


def echoed(request: dict[str, str]) -> dict[str, str]:
    """What a 0210 echoes of its 0200 (docs/host-interface.md §2): all but DE22."""
    return {k: v for k, v in request.items() if k != "22"}


def balances(cash: int, cashback: int) -> str:
    """DE54 as docs/host-interface.md §5 lays it: 00 02 410 C amount, 00 91 410 C amount."""
    return f"0002410C{cash:012d}" + f"0091410C{cashback:012d}"


# ---------------------------------------------------------------------------- iso93-text

async def test_iso93_text_terminal_buys_is_declined_and_reverses_with_3_digit_codes_and_dated_de12(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH), dialect="iso93-text") as env:
        await provision(env)
        pan = env.cards["namdong"]["pan"]
        link = await Link.open(env.port, ISO93_TEXT, "binary2")
        try:
            signon = {"t": "0800", "7": "0720030000", "11": "000001", "41": "T0000001", "70": "001"}
            assert without_bitmaps(await link.request(signon)) == {**signon, "t": "0810", "39": "000"}

            # DE42 left-padded with spaces (the host strips them), DE12 with the date, no DE13
            sale = {"t": "0200", "2": pan, "3": "000000", "4": "000000020000", "7": "0720030001", "11": "000002",
                    "12": "190720120001", "22": "051", "41": "T0000001", "42": "      NAMDONG01", "49": "410"}
            answer = await link.request(sale)
            assert without_bitmaps(answer) == {
                "t": "0210", "2": pan, "3": "000000", "4": "000000020000", "7": "0720030001", "11": "000002",
                "12": "190720120001", "37": "000000000003", "38": "000003", "39": "000", "41": "T0000001",
                "42": "      NAMDONG01", "49": "410", "54": balances(80_000, 1_500)}

            too_much = {**sale, "4": "000000150000", "7": "0720030002", "11": "000003", "12": "190720120002"}
            assert without_bitmaps(await link.request(too_much)) == {
                **echoed(too_much), "t": "0210", "39": "051"}  # no DE37, DE38 or DE54 on a decline

            reversal = {"t": "0400", "2": pan, "3": "000000", "4": "000000020000", "7": "0720030003", "11": "000004",
                        "41": "T0000001", "42": "      NAMDONG01", "49": "410",
                        "90": "0200" + "000002" + "0720030001" + "0" * 22}
            answer = await link.request(reversal)
            assert (answer["t"], answer["39"], answer["90"], answer["42"]) == ("0410", "000", reversal["90"],
                                                                                "      NAMDONG01")

            inquiry = {"t": "0200", "2": pan, "3": "310000", "7": "0720030004", "11": "000005",
                       "12": "190720120004", "22": "051", "41": "T0000001", "42": "NAMDONG01      ", "49": "410"}
            answer = await link.request(inquiry)  # right-padded DE42 is the same merchant once stripped
            assert (answer["39"], answer["54"], answer["42"]) == ("000", balances(100_000, 0), "      NAMDONG01")

            stranger = {**inquiry, "7": "0720030005", "11": "000006", "12": "190720120005", "42": "      YEONSU01 "}
            assert (await link.request(stranger))["39"] == "058"  # another merchant's id: not this terminal's

            # the switch's own answer to a request it decoded but cannot serve (processing code
            # 99: 12) leaves the dated DE12 out and echoes the DE13 it took from it (§1, "Dialect settings")
            unknown = {**inquiry, "3": "990000", "7": "0720030006", "11": "000007", "12": "190720120006"}
            assert without_bitmaps(await link.request(unknown)) == {
                "t": "0210", "2": pan, "3": "990000", "7": "0720030006", "11": "000007", "13": "0720", "39": "012",
                "41": "T0000001", "42": "      NAMDONG01", "49": "410"}
            # … and echoes what it read as it came when the request cannot be decoded (DE49, the
            # last field, one character short)
            short = link.encode({**sale, "7": "0720030007", "11": "000008", "12": "190720120007"})[:-1]
            answer, _ = await link.exchange(short)
            assert (answer["39"], answer["12"], answer["42"], "13" in answer, "49" in answer) == (
                "030", "190720120007", "      NAMDONG01", False, False)
        finally:
            await link.close()
        assert verify(env.core.db_path).ok


# ---------------------------------------------------------------------------- ascii4-mac128

async def test_ascii4_mac128_terminal_buys_is_declined_and_reverses_with_a_dated_de7(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH), dialect="ascii4-mac128") as env:
        await provision(env)
        pan = env.cards["namdong"]["pan"]
        link = await Link.open(env.port, ASCII4_MAC128, "ascii4")
        try:
            signon = {"t": "0800", "7": "190720030000", "11": "000001", "41": "T0000001", "70": "001"}
            answer, body = await link.exchange(link.encode(signon))
            assert without_bitmaps(answer) == {**signon, "t": "0810", "39": "00"}
            assert body[:4] == b"0810"

            sale = {"t": "0200", "2": pan, "3": "000000", "4": "000000020000", "7": "190720030001", "11": "000002",
                    "12": "120001", "13": "0720", "22": "051", "41": "T0000001", "42": "NAMDONG01      ", "49": "410"}
            assert without_bitmaps(await link.request(sale)) == {
                **echoed(sale), "t": "0210", "37": "000000000003", "38": "000003", "39": "00",
                "54": balances(80_000, 1_500)}

            too_much = {**sale, "4": "000000150000", "7": "190720030002", "11": "000003"}
            assert without_bitmaps(await link.request(too_much)) == {**echoed(too_much), "t": "0210", "39": "51"}

            # DE90 keeps the 1987 layout: the original's DE7 as MMDDhhmmss
            reversal = {"t": "0400", "2": pan, "3": "000000", "4": "000000020000", "7": "190720030003", "11": "000004",
                        "41": "T0000001", "42": "NAMDONG01      ", "49": "410",
                        "90": "0200" + "000002" + "0720030001" + "0" * 22}
            assert without_bitmaps(await link.request(reversal)) == {
                **reversal, "t": "0410", "39": "00", "54": balances(100_000, 0)}

            inquiry = {"t": "0200", "2": pan, "3": "310000", "7": "190720030004", "11": "000005",
                       "22": "051", "41": "T0000001", "42": "NAMDONG01      ", "49": "410"}
            answer = await link.request(inquiry)
            assert (answer["39"], answer["7"], answer["54"]) == ("00", "190720030004", balances(100_000, 0))

            repeat = {**sale, "t": "0201"}  # the same key (DE41, DE11, DE7): the stored answer again
            answer = await link.request(repeat)
            assert (answer["39"], answer["7"], answer["37"]) == ("00", "190720030001", "000000000003")
        finally:
            await link.close()
        assert verify(env.core.db_path).ok


# ---------------------------------------------------------------------------- secured terminals

@pytest.fixture
async def hsm():
    server = HsmServer(ServiceConfig(port=0))
    await server.start()
    try:
        yield HsmConfig(endpoints=(("127.0.0.1", server.port),), call_timeout_ms=300, health_interval_s=0.1)
    finally:
        await server.stop()


async def secured_terminal(env) -> TerminalSecurity:
    await env.op("merchant-add", mid="NAMDONG01", name="Namdong Cafe", district="namdong", annual_sales=250_000_000)
    term = await env.op("terminal-add", tid="T0000001", mid="NAMDONG01", security="dukpt-tdes", keys="test")
    card = await env.op("card-issue", program="namdong")
    await env.op("card-charge", pan=card["pan"], amount=100_000)
    env.cards["namdong"] = card
    return TerminalSecurity.for_test_keys("dukpt-tdes", term["ksn"])


async def test_iso93_text_mac_and_ksn_travel_as_hex_text_both_ways(tmp_path, hsm):
    """The request's MAC is 16 hex characters in DE64 over every byte before them, its KSN
    lowercase hex text in DE53; the 0210's MAC is 16 uppercase hex characters over every byte
    of the 0210 before them, under the response key of the request's KSN."""
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH), dialect="iso93-text", hsm=hsm) as env:
        security = await secured_terminal(env)
        pan = env.cards["namdong"]["pan"]
        link = await Link.open(env.port, ISO93_TEXT, "binary2")
        try:
            signon = {"t": "0800", "7": "0720030000", "11": "000001", "41": "T0000001", "70": "001"}
            assert (await link.request(signon))["39"] == "000"

            def signed(stan: str, amount: int, *, tamper: bool = False) -> tuple[bytes, str]:
                ksn = security.next_ksn()
                fields = {"t": "0200", "2": pan, "3": "000000", "4": f"{amount:012d}", "7": f"0720030{stan[-3:]}",
                          "11": stan, "12": f"190720120{stan[-3:]}", "22": "051", "41": "T0000001",
                          "42": "      NAMDONG01", "49": "410", "53": ksn.lower(), "64": "0" * 16}
                placeholder = link.encode(fields)
                assert placeholder[-16:] == b"0" * 16  # DE64 is the last field: 16 ASCII characters
                covered = placeholder[:-16]
                mac = security.request_mac(covered, ksn=ksn).hex().upper().encode("ascii")
                if tamper:  # the amount's last digit changed after the MAC was computed
                    at = covered.index(f"{amount:012d}".encode())
                    covered = covered[: at + 11] + b"9" + covered[at + 12:]
                return covered + mac, ksn

            payload, ksn = signed("000002", 20_000)
            answer, body = await link.exchange(payload)
            assert (answer["t"], answer["39"], answer["54"]) == ("0210", "000", balances(80_000, 1_500))
            expected = security.response_mac(body[:-16], ksn=ksn).hex().upper()
            assert (answer["64"], body[-16:]) == (expected, expected.encode("ascii"))

            payload, _ = signed("000003", 1_000, tamper=True)
            answer, body = await link.exchange(payload)
            assert (answer["39"], answer["4"]) == ("063", "000000001009")  # the MAC does not verify: nothing done
        finally:
            await link.close()
        assert verify(env.core.db_path).ok


async def test_ascii4_mac128_mac_is_always_de128_binary_and_the_ksn_binary(tmp_path, hsm):
    """Every secured message carries its MAC in DE128, 8 bytes, over every byte before them
    (a secondary bitmap even when no other field 65-128 is present), and the KSN as 10 bytes
    in DE53; a MAC sent in DE64 is not where the dialect has it: answered 30, nothing done."""
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH), dialect="ascii4-mac128", hsm=hsm) as env:
        security = await secured_terminal(env)
        pan = env.cards["namdong"]["pan"]
        link = await Link.open(env.port, ASCII4_MAC128, "ascii4")
        try:
            signon = {"t": "0800", "7": "190720030000", "11": "000001", "41": "T0000001", "70": "001"}
            assert (await link.request(signon))["39"] == "00"

            def signed(stan: str, mac_field: str) -> tuple[bytes, str]:
                ksn = security.next_ksn()
                fields = {"t": "0200", "2": pan, "3": "000000", "4": "000000020000", "7": f"190720030{stan[-3:]}",
                          "11": stan, "22": "051", "41": "T0000001", "42": "NAMDONG01      ", "49": "410",
                          "53": ksn, mac_field: "00" * 8}
                placeholder = link.encode(fields)
                assert placeholder[-8:] == bytes(8)
                return placeholder[:-8] + security.request_mac(placeholder[:-8], ksn=ksn), ksn

            payload, ksn = signed("000002", "128")
            assert payload[4] & 0x80  # the secondary bitmap, for DE128 alone
            answer, body = await link.exchange(payload)
            assert (answer["t"], answer["39"], answer["7"], answer["54"]) == (
                "0210", "00", "190720030002", balances(80_000, 1_500))
            assert body[4] & 0x80  # the 0210 carries the secondary bitmap for its DE128
            assert (answer["128"], body[-8:]) == (security.response_mac(body[:-8], ksn=ksn).hex().upper(),
                                                   security.response_mac(body[:-8], ksn=ksn))
            assert "64" not in answer

            payload, _ = signed("000003", "64")
            answer, body = await link.exchange(payload)
            assert (answer["39"], answer["7"], answer["11"]) == ("30", "190720030003", "000003")
        finally:
            await link.close()
        assert verify(env.core.db_path).ok


# ---------------------------------------------------------------------------- refused at start

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def variant(config: Path, name: str, edit) -> None:
    """config/dialects/<name>.toml: iso93-text with `edit` applied to its text."""
    source = (config / "dialects" / "iso93-text.toml").read_text(encoding="utf-8")
    changed = edit(source)
    assert changed != source
    (config / "dialects" / f"{name}.toml").write_text(changed, encoding="utf-8")


def run_switch(tmp_path: Path, config: Path, dialect: str) -> subprocess.CompletedProcess:
    data_dir = tmp_path / "var"
    proc = subprocess.Popen([*EUM, "switch", "--dialect", dialect, "--listen", f"127.0.0.1:{free_port()}",
                             "--data-dir", str(data_dir), "--clock-start", LAUNCH.isoformat()],
                            cwd=tmp_path, env={**os.environ, "EUM_CONFIG_DIR": str(config)},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=COMMAND_TIMEOUT_S)
        pytest.fail(f"eum switch --dialect {dialect} was still running after {COMMAND_TIMEOUT_S} s: it did not refuse")
    assert not data_dir.exists()  # refused before anything was made
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# The first response MTI check_responses tries (it goes through RESPONSE_MTI's responses in
# order), and the first whose echoed fields (ECHO_FIELDS, docs/host-interface.md §2) go past
# DE64, with the highest of them: tables, so the lines below follow the message set.
FIRST_MTI = min(RESPONSE_MTI.values())
PAST_64 = min(mti for mti in set(RESPONSE_MTI.values()) if any(int(no) > 64 for no in ECHO_FIELDS.get(mti, ())))
LAST_PAST_64 = max((no for no in ECHO_FIELDS[PAST_64]), key=int)

REFUSED = {
    # a DE39 one character wide cannot carry "000"
    "narrow39": (lambda t: t.replace('max_len = 3\ndesc = "Response Code', 'max_len = 1\ndesc = "Response Code'),
                 f"dialect narrow39: DE39 cannot carry the {FIRST_MTI} response (DE39 = '000'): "
                 "Field data is 3 bytes, expecting 1"),
    # the MAC always in DE64: a response echoing DE90 (and DE95) would have fields after it
    "mac64": (lambda t: t.replace('field = "auto"', "field = 64"),
              f"dialect mac64: DE64 cannot carry the MAC of the {PAST_64} response (mac.field): "
              f"DE{LAST_PAST_64} would follow it, and the MAC is the last field"),
    # DE39 an 3 and a width of 3 but no pad character to widen the switch's codes with
    "nopad": (lambda t: t.replace('pad = "0"\n', ""),
              "dialect nopad: response_code.pad: one character is required to widen the code to 3"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_eum_switch_refuses_a_terminal_dialect_whose_settings_cannot_carry_every_response(tmp_path, name):
    """Exit 2 and one stderr line naming the field or setting, before a data dir, ledger, log
    or lock is made."""
    config = tmp_path / "config"
    shutil.copytree(default_config_dir(), config)
    edit, line = REFUSED[name]
    variant(config, name, edit)
    done = run_switch(tmp_path, config, name)
    assert (done.returncode, done.stderr.splitlines()) == (2, [f"eum: {line}"])
