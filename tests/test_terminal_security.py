"""terminal_sim's DUKPT side in process: KSN counter, PIN blocks, MACs, repeats, persistence.

Exact values, each cited (docs/hsm.md, "Test vectors and their sources"):
- ANSI X9.24-1 Annex A (TDES BDK 0123456789ABCDEFFEDCBA9876543210, KSN FFFF9876543210E00000,
  PIN 1234, PAN 4012345678909): the EPB and MAC columns of the table, counters E00001,
  E00002, E00012 and F00000; "Further counter-1 values": the X9.19 MACs over ASCII
  "4012345678909D987" with the request (9CCC78173FC4FB64) and response (20364223C1FF00FA) keys.
- ANSI X9.24-3 Annex B.1 (AES BDK FEDCBA9876543210F1F1F1F1F1F1F1F1, IKID 1234567890123456),
  as moov-io/dukpt pkg/aes/aes_test.go runs it: the PIN keys at counters 1 and 2, and the
  AES-CMAC over "4012345678909D987" at counter 1 with the usage-2000 / 2001 keys.
The whole-message checks use host-side derivations from the BDK (hsm_mock.dukpt) and the
HSM's own GW/Z2/G0/Z0 commands in process, so terminal and host are computed independently.
The CLI runs in process against a small fake switch on loopback (the lead's end-to-end
tests run the real switch).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest

from hsm_mock import crypto, dukpt, pinblock
from hsm_mock.commands import Hsm
from switch.wire.payshield import Command
from switch.wire.codec import decode_fields, encode_fields, load_dialect
from switch.wire.framing import FrameBuffer, frame
from terminal_sim.cli import add_terminal_parser, run_terminal
from terminal_sim.security import SecurityError, TerminalSecurity, mac_field
from terminal_sim.terminal import Terminal

H = bytes.fromhex
TDES_BDK = H("0123456789ABCDEFFEDCBA9876543210")  # X9.24-1 Annex A
AES_BDK = H("FEDCBA9876543210F1F1F1F1F1F1F1F1")  # X9.24-3 Annex B
TDES_KSN0 = "FFFF9876543210E00000"
AES_KSN0 = "123456789012345600000000"
ANNEX_A_PIN, ANNEX_A_PAN = "1234", "4012345678909"
MAC_INPUT = b"4012345678909D987"
NOW = datetime(2019, 7, 20, 3, 0, 0, tzinfo=timezone.utc)

# The test BDKs under the public Thales test LMK (tests/test_hsm_commands.py proves them),
# and a ZPK of ThalesSim's G0 test, so the HSM can check what the terminal produced.
LMK_TDES_BDK = "U8E3D3E2FD5919657F05A1AA90D32A014"
LMK_AES_BDK = "UC0106228334ECB2E12B49BA556660547"
LMK_ZPK = "U9D961F6AF1D24B38AB37B320022FF57D"

# The contract's DE52/DE53 (binary LLVAR with a 1-byte length; LLVAR ans..48), whatever the
# dialect file says while the switch side is being changed.
CONTRACT_SPEC = {
    "52": {"data_enc": "b", "len_enc": "b", "len_type": 1, "max_len": 16, "desc": "PIN block"},
    "53": {"data_enc": "ascii", "len_enc": "ascii", "len_type": 2, "max_len": 48, "desc": "KSN"},
}


@pytest.fixture(scope="module")
def dialect():
    base = load_dialect("default")
    return type(base)(name=base.name, framing=base.framing, spec={**base.spec, **CONTRACT_SPEC})


def tdes() -> TerminalSecurity:
    return TerminalSecurity.for_test_keys("dukpt-tdes", TDES_KSN0)


def aes() -> TerminalSecurity:
    return TerminalSecurity.for_test_keys("dukpt-aes", AES_KSN0)


def hsm_run(code: str, body: bytes) -> str:
    error, out, _ = Hsm().handle(Command(b"0000", code, body))
    return error + out.decode("latin-1")


# ============================================================================ vectors


def test_tdes_counter_1_and_2_pin_blocks_are_the_annex_a_epbs() -> None:
    sec = tdes()
    assert sec.ksn == TDES_KSN0 and sec.counter == 0
    assert sec.next_ksn() == "FFFF9876543210E00001"
    assert sec.pin_block(ANNEX_A_PIN, ANNEX_A_PAN) == "1B9C1845EB993A7A"
    assert sec.next_ksn() == "FFFF9876543210E00002"
    assert sec.pin_block(ANNEX_A_PIN, ANNEX_A_PAN) == "10A01C8D02C69107"


def test_tdes_counter_1_mac_keys_and_x9_19_macs() -> None:
    sec = tdes()
    sec.next_ksn()
    keys = sec._working_keys(sec.ksn)  # the Annex A MAC-request key, and the response variant
    assert keys.mac_request == H("042666B4918430A368DE9628D03984C9")
    assert keys.mac_response == H("042666B46E84CFA368DE96282F397BC9")
    assert sec.request_mac(MAC_INPUT) == H("9CCC78173FC4FB64")
    assert sec.response_mac(MAC_INPUT) == H("20364223C1FF00FA")
    assert sec.request_mac(b"1234567890" * 4)[:4] == H("BF3DF9F4")  # the table's MAC column
    assert sec.sign(MAC_INPUT + bytes(8)) == MAC_INPUT + H("9CCC78173FC4FB64")
    assert sec.verify_response(MAC_INPUT + H("20364223C1FF00FA"))
    assert not sec.verify_response(MAC_INPUT + H("9CCC78173FC4FB64"))  # the request key's MAC


def test_tdes_counter_advances_one_by_one_to_e00012() -> None:
    sec = tdes()
    for _ in range(0x12):
        sec.next_ksn()
    assert sec.ksn == "FFFF9876543210E00012"
    assert sec.pin_block(ANNEX_A_PIN, ANNEX_A_PAN) == "7A21BD10F36DC41D"
    assert sec.request_mac(b"1234567890" * 4)[:4] == H("9237DD4E")


def test_tdes_counter_skips_more_than_ten_one_bits_from_effc00_to_f00000() -> None:
    # X9.24-1: counters 0FFC01.. 0FFE00 have 11 one-bits; the terminal jumps to 100000.
    state = {"profile": "dukpt-tdes", "keys": "test", "initial_ksn": TDES_KSN0, "ksn": "FFFF9876543210EFFC00"}
    sec = TerminalSecurity.from_state(state)
    assert sec.next_ksn() == "FFFF9876543210F00000"
    assert sec.pin_block(ANNEX_A_PIN, ANNEX_A_PAN) == "73EC88AD0AC5830E"
    assert sec.request_mac(b"1234567890" * 4)[:4] == H("E771B48A")


def test_aes_counter_1_cmacs_are_the_x9_24_3_annex_b1_values() -> None:
    sec = aes()
    assert sec.next_ksn() == "123456789012345600000001"
    assert sec.request_mac(MAC_INPUT) == H("A2EB5C1C35809E58404E873C3C411E31")[:8]
    assert sec.response_mac(MAC_INPUT) == H("DD4E1895FD9BF53D8DAF25568ABF551D")[:8]
    assert sec.sign(MAC_INPUT + bytes(8)) == MAC_INPUT + H("A2EB5C1C35809E58")
    assert sec.verify_response(MAC_INPUT + H("DD4E1895FD9BF53D"))
    assert not sec.verify_response(MAC_INPUT + H("A2EB5C1C35809E58"))


@pytest.mark.parametrize(("count", "pin_key"), [
    (1, "AF8CB133A78F8DC2D1359F18527593FB"),  # X9.24-3 Annex B.1, KSN …00000001
    (2, "D30BDC73EC9714B000BEC66BDB7B6D09"),  # …00000002
])
def test_aes_iso4_pin_block_deciphers_under_the_published_pin_key(count: int, pin_key: str) -> None:
    sec = aes()
    for _ in range(count):
        sec.next_ksn()
    pan = "4111111111111111"
    first, second = sec.pin_block("1234", pan), sec.pin_block("1234", pan)
    assert len(first) == 32 and first != second  # ISO-4: 16 bytes, random fill each time
    assert pinblock.decipher_iso4(H(pin_key), H(first), pan) == "1234"
    assert pinblock.decipher_iso4(H(pin_key), H(second), pan) == "1234"


# ============================================================================ whole messages


def purchase(tid: str = "T0000001") -> dict[str, str]:
    return Terminal(tid, "NAMDONG01", stan=41, now=lambda: NOW).purchase(ANNEX_A_PAN, 20000)


def test_a_secured_purchase_carries_ksn_pin_block_and_a_mac_the_host_verifies(dialect) -> None:
    sec = tdes()
    fields = sec.protect(purchase(), pin=ANNEX_A_PIN)
    assert fields["53"] == "FFFF9876543210E00001"
    assert fields["52"] == "1B9C1845EB993A7A"
    assert fields["64"] == "0000000000000000" and "128" not in fields
    signed = sec.sign(encode_fields(fields, dialect), ksn=fields["53"])
    body, mac = signed[:-8], signed[-8:]
    host_key = dukpt.tdes_working_key(TDES_BDK, fields["53"], dukpt.TdesUsage.MAC_REQUEST)
    assert mac == crypto.mac_iso9797_alg3(host_key, body, padding=1)
    decoded = decode_fields(signed, dialect)
    assert decoded["64"] == mac.hex().upper() and decoded["52"] == "1B9C1845EB993A7A"
    assert decoded["53"] == "FFFF9876543210E00001"


def test_the_hsm_verifies_the_tdes_mac_and_translates_the_pin_block(dialect) -> None:
    sec = tdes()
    fields = sec.protect(purchase(), pin=ANNEX_A_PIN)
    signed = sec.sign(encode_fields(fields, dialect), ksn=fields["53"])
    body, mac = signed[:-8], signed[-8:].hex().upper()
    head = f"11{LMK_TDES_BDK}A05{fields['53']}{mac}{len(body):04d}".encode()
    assert hsm_run("GW", head + body) == "00"
    tampered = bytes([body[0], body[1] ^ 0x01]) + body[2:]
    assert hsm_run("GW", head + tampered) == "01"
    # G0 (payShield): DUKPT block to ThalesSim's ZPK; the answer is its 7D26134E85E7DADF.
    out = hsm_run("G0", f"{LMK_TDES_BDK}{LMK_ZPK}605{fields['53']}{fields['52']}0101401234567890".encode())
    assert out == "0004" + "7D26134E85E7DADF" + "01"


def test_the_hsm_verifies_the_aes_cmac_and_translates_the_iso4_block(dialect) -> None:
    sec = aes()
    fields = sec.protect(purchase(), pin="4321")
    assert fields["53"] == "123456789012345600000001" and len(fields["52"]) == 32
    signed = sec.sign(encode_fields(fields, dialect), ksn=fields["53"])
    body, mac = signed[:-8], signed[-8:].hex().upper()
    host_key = dukpt.aes_transaction_key(AES_BDK, fields["53"], dukpt.AES_MAC_REQUEST_USAGE)
    assert signed[-8:] == crypto.aes_cmac(host_key, body)[:8]
    # Z2 mode 1 (verify), direction 0 (request), size 1 (8 bytes = 16H).
    assert hsm_run("Z2", f"101{LMK_AES_BDK}{fields['53']}{mac}{len(body):04d}".encode() + body) == "00"
    assert hsm_run("Z2", f"111{LMK_AES_BDK}{fields['53']}{mac}{len(body):04d}".encode() + body) == "01"
    out = hsm_run("Z0", f"{LMK_AES_BDK}{LMK_ZPK}{fields['53']}{fields['52']}0113{ANNEX_A_PAN}".encode())
    assert out[:4] == "0004" and out[-2:] == "01"


@pytest.mark.parametrize("make", [tdes, aes])
def test_sign_and_verify_round_trip_and_every_flipped_bit_is_detected(dialect, make) -> None:
    sec = make()
    request = sec.protect(purchase())
    sec.sign(encode_fields(request, dialect), ksn=request["53"])
    response = {"t": "0210", **{k: request[k] for k in ("2", "3", "4", "7", "11", "41", "42", "49")},
                "37": "000000000001", "38": "A00001", "39": "00", "64": "0000000000000000"}
    body = encode_fields(response, dialect)[:-8]
    if sec.profile == "dukpt-tdes":
        key = dukpt.tdes_working_key(TDES_BDK, request["53"], dukpt.TdesUsage.MAC_RESPONSE)
        payload = body + crypto.mac_iso9797_alg3(key, body, padding=1)
    else:
        key = dukpt.aes_transaction_key(AES_BDK, request["53"], dukpt.AES_MAC_RESPONSE_USAGE)
        payload = body + crypto.aes_cmac(key, body, length=8)
    assert sec.verify_response(payload)
    for bit in range(8 * len(payload)):
        flipped = bytearray(payload)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert not sec.verify_response(bytes(flipped)), bit
    sec.next_ksn()  # the next transaction's keys do not verify this response...
    assert not sec.verify_response(payload)
    assert sec.verify_response(payload, ksn=request["53"])  # ...its request's KSN does


def test_a_reversal_with_de90_carries_its_mac_in_de128(dialect) -> None:
    sec = tdes()
    term = Terminal("T0000001", "NAMDONG01", now=lambda: NOW)
    original = term.purchase(ANNEX_A_PAN, 20000)
    reversal = sec.protect(term.reversal(original))
    assert mac_field(reversal) == "128" and reversal["128"] == "0000000000000000" and "64" not in reversal
    signed = sec.sign(encode_fields(reversal, dialect), ksn=reversal["53"])
    decoded = decode_fields(signed, dialect)
    assert decoded["128"] == sec.request_mac(signed[:-8]).hex().upper()
    assert decoded["53"] == "FFFF9876543210E00001" and "52" not in decoded


def test_sign_refuses_a_payload_whose_last_field_is_not_the_zero_mac() -> None:
    sec = tdes()
    sec.next_ksn()
    with pytest.raises(SecurityError, match="placeholder"):
        sec.sign(MAC_INPUT + H("0000000000000001"))


def test_no_key_material_before_the_first_advance() -> None:
    sec = tdes()
    with pytest.raises(SecurityError, match="next_ksn"):
        sec.pin_block(ANNEX_A_PIN, ANNEX_A_PAN)


# ============================================================================ repeats


def test_a_repeat_reuses_the_originals_ksn_and_pin_block() -> None:
    sec = aes()  # ISO-4 has random fill: a fresh block would differ
    original = purchase()
    first = sec.protect(original, pin="1234")
    again = sec.protect(Terminal.repeat(original))
    assert again["t"] == "0201"
    assert again["53"] == first["53"] == "123456789012345600000001"
    assert again["52"] == first["52"]
    assert sec.ksn == first["53"]  # no advance
    resent = sec.protect(Terminal.repeat(first))  # the secured fields themselves: same again
    assert (resent["53"], resent["52"]) == (first["53"], first["52"])
    assert sec.protect(purchase())["53"] == "123456789012345600000002"  # a new transaction advances


def test_a_repeat_without_a_known_original_and_a_foreign_ksn_are_refused() -> None:
    sec = tdes()
    with pytest.raises(SecurityError, match="repeat"):
        sec.protect(Terminal.repeat(purchase()))
    sec.protect(purchase())
    foreign = {**Terminal.repeat(purchase()), "53": "FFFF9876543211E00001"}
    with pytest.raises(SecurityError, match="does not belong"):
        sec.protect(foreign)
    ahead = {**Terminal.repeat(purchase()), "53": "FFFF9876543210E00005"}
    with pytest.raises(SecurityError, match="ahead"):
        sec.protect(ahead)
    with pytest.raises(SecurityError, match="PIN"):
        sec.protect({**Terminal.repeat(purchase()), "53": "FFFF9876543210E00001"}, pin="1234")


def test_sign_on_is_not_secured() -> None:
    sec = tdes()
    sign_on = Terminal("T0000001", "NAMDONG01", now=lambda: NOW).sign_on()
    assert sec.protect(sign_on) == sign_on and sec.counter == 0


# ============================================================================ persistence


def test_the_counter_is_saved_and_continues_after_reload() -> None:
    sec = tdes()
    sec.next_ksn()
    sec.next_ksn()
    saved = json.loads(json.dumps(sec.to_state()))
    assert saved == {"profile": "dukpt-tdes", "keys": "test", "initial_ksn": TDES_KSN0,
                     "ksn": "FFFF9876543210E00002"}
    again = TerminalSecurity.from_state(saved)
    assert again.next_ksn() == "FFFF9876543210E00003"
    assert again.request_mac(b"1234567890" * 4)[:4] == tdes_annex_a_mac(0x03)


def tdes_annex_a_mac(counter: int) -> bytes:
    # Host side, from the BDK: the Annex A MAC column's computation.
    ksn = f"FFFF9876543210E{counter:05X}"
    key = dukpt.tdes_working_key(TDES_BDK, ksn, dukpt.TdesUsage.MAC_REQUEST)
    return crypto.mac_iso9797_alg3(key, b"1234567890" * 4)[:4]


def test_bad_configuration_is_refused_without_echoing_values() -> None:
    with pytest.raises(SecurityError, match="counter 0"):
        TerminalSecurity.for_test_keys("dukpt-tdes", "FFFF9876543210E00001")
    with pytest.raises(SecurityError, match="24 hex digits"):
        TerminalSecurity.for_test_keys("dukpt-aes", TDES_KSN0)
    with pytest.raises(SecurityError, match="profile"):
        TerminalSecurity.for_test_keys("mac", TDES_KSN0)
    with pytest.raises(SecurityError) as exc:
        TerminalSecurity.for_test_keys("dukpt-tdes", "FFFF9876543210E0000Z")
    assert "E0000Z" not in str(exc.value)
    assert "IPEK" not in repr(tdes()) and "6AC292FA" not in repr(tdes())


# ============================================================================ the CLI, in process


class FakeSwitch:
    """A loopback peer that speaks the contract: checks the request MAC and PIN with host-side
    keys from the test BDK, and answers with a response MAC (optionally a corrupted one)."""

    FINANCIAL_ECHO = ("2", "3", "4", "7", "11", "41", "42", "49")
    ECHO = {"0800": ("0810", ("7", "11", "41", "70")), "0200": ("0210", FINANCIAL_ECHO),
            "0400": ("0410", (*FINANCIAL_ECHO, "90", "95"))}

    def __init__(self, dialect) -> None:
        self.dialect = dialect
        self.corrupt_mac = False
        self.pins: list[str] = []
        self.request_macs_ok: list[bool] = []
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FakeSwitch:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = FrameBuffer(self.dialect.framing)
        while data := await reader.read(65536):
            buffer.receive_data(data)
            while (fr := buffer.next_frame()) is not None:
                writer.write(frame(self.dialect.framing, self._answer(fr.payload), tpdu=fr.tpdu))

    def _answer(self, payload: bytes) -> bytes:
        req = decode_fields(payload, self.dialect)
        mti, echo = self.ECHO[req["t"]]
        resp = {"t": mti, **{k: req[k] for k in echo if k in req}, "39": "00"}
        if "53" not in req:
            return encode_fields(resp, self.dialect)
        ksn = req["53"]
        self.request_macs_ok.append(payload[-8:] == self._mac(ksn, payload[:-8], response=False))
        if "52" in req:
            pin_key = dukpt.tdes_working_key(TDES_BDK, ksn, dukpt.TdesUsage.PIN)
            self.pins.append(pinblock.decode_iso0(crypto.tdes_ecb_decrypt(pin_key, H(req["52"])), req["2"]))
        resp["37"] = "000000000001"
        resp[mac_field(resp)] = "0000000000000000"  # DE128 on a 0410 that echoes DE90
        body = encode_fields(resp, self.dialect)[:-8]
        mac = self._mac(ksn, body, response=True)
        return body + (bytes(b ^ 0xFF for b in mac) if self.corrupt_mac else mac)

    @staticmethod
    def _mac(ksn: str, data: bytes, *, response: bool) -> bytes:
        usage = dukpt.TdesUsage.MAC_RESPONSE if response else dukpt.TdesUsage.MAC_REQUEST
        return crypto.mac_iso9797_alg3(dukpt.tdes_working_key(TDES_BDK, ksn, usage), data, padding=1)


@pytest.fixture
def fake_switch() -> Iterator[FakeSwitch]:
    with FakeSwitch(load_dialect("default")) as peer:  # the dialect file the CLI loads
        yield peer


def eum_terminal(port: int, state_dir: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser(prog="eum")
    add_terminal_parser(parser.add_subparsers(), run_terminal)
    args = parser.parse_args(["terminal", *argv, "--switch", f"127.0.0.1:{port}", "--tid", "T0000009",
                              "--mid", "NAMDONG01", "--state-dir", str(state_dir)])
    return args.func(args)


PIN = "7777"  # no DE7/DE12/DE13 value can contain "7777" (no 2-digit part of them reaches 77)
PAN = "4012345678909"


def test_cli_pin_purchase_persists_the_counter_and_never_stores_or_prints_the_pin(
        fake_switch: FakeSwitch, tmp_path: Path, capsys) -> None:
    first = ("purchase", "--pan", PAN, "--amount", "1000", "--pin", PIN,
             "--security", "dukpt-tdes", "--ksn", TDES_KSN0)
    assert eum_terminal(fake_switch.port, tmp_path, *first) == 0
    out = capsys.readouterr()
    assert "security dukpt-tdes  ksn FFFF9876543210E00001  response MAC ok" in out.out
    # The second run needs neither --security nor --ksn: the state file remembers them.
    assert eum_terminal(fake_switch.port, tmp_path, "purchase", "--pan", PAN, "--amount", "1000", "--pin", PIN) == 0
    out2 = capsys.readouterr()
    assert "ksn FFFF9876543210E00002  response MAC ok" in out2.out
    assert fake_switch.pins == [PIN, PIN] and fake_switch.request_macs_ok == [True, True]
    text = (tmp_path / "T0000009.json").read_text()
    state = json.loads(text)
    assert state["security"] == {"profile": "dukpt-tdes", "keys": "test", "initial_ksn": TDES_KSN0,
                                 "ksn": "FFFF9876543210E00002"}
    assert state["stan"] == 4 and not {"52", "53", "64", "128"} & set(state["last"])
    replay = tdes()
    secrets = [PIN]
    for _ in range(2):
        replay.next_ksn()
        secrets.append(replay.pin_block(PIN, PAN))  # ISO-0 is deterministic: the blocks sent
    for secret in secrets:
        assert secret not in text and secret not in out.out + out.err + out2.out + out2.err


def test_cli_reports_a_bad_response_mac_and_exits_non_zero(fake_switch: FakeSwitch, tmp_path: Path, capsys) -> None:
    fake_switch.corrupt_mac = True
    rc = eum_terminal(fake_switch.port, tmp_path, "balance", "--pan", PAN, "--security", "dukpt-tdes",
                      "--ksn", TDES_KSN0)
    assert rc == 3
    out = capsys.readouterr()
    assert "response MAC INVALID" in out.out and "response MAC INVALID" in out.err
    rc = eum_terminal(fake_switch.port, tmp_path, "balance", "--pan", PAN, "--json")
    assert rc == 3 and json.loads(capsys.readouterr().out)["response_mac"] == "INVALID"


def test_cli_refuses_a_pin_on_an_unsecured_terminal(tmp_path: Path, capsys) -> None:
    rc = eum_terminal(1, tmp_path, "purchase", "--pan", PAN, "--amount", "1000", "--pin", PIN)
    err = capsys.readouterr().err
    assert rc == 2 and "DUKPT" in err and PIN not in err
    assert not (tmp_path / "T0000009.json").exists()


def test_cli_reversal_carries_and_checks_its_mac_in_de128(fake_switch: FakeSwitch, tmp_path: Path, capsys) -> None:
    assert eum_terminal(fake_switch.port, tmp_path, "purchase", "--pan", PAN, "--amount", "1000",
                        "--security", "dukpt-tdes", "--ksn", TDES_KSN0) == 0
    capsys.readouterr()
    assert eum_terminal(fake_switch.port, tmp_path, "reverse") == 0
    out = capsys.readouterr().out
    assert out.startswith("MTI 0410  response 00") and "ksn FFFF9876543210E00002  response MAC ok" in out
    assert fake_switch.request_macs_ok == [True, True]
