"""GQ: verify a TDES-DUKPT PIN block by the Visa PVV method, and in mode 1 the request's
DUKPT MAC with it, in process, with exact expected answers.

Vectors, each cited:
- ANSI X9.24-1 Annex A (TDES DUKPT): BDK 0123456789ABCDEFFEDCBA9876543210, KSN
  FFFF9876543210E00001 (counter 1), encrypted PIN block 1B9C1845EB993A7A = PIN 1234,
  PAN 4012345678909 (account number 401234567890) — as in test_hsm_commands.py (G0/CI).
- Visa PVV (Visa PIN Verification Value: TSP = 11 rightmost account digits + PVKI + 4 PIN
  digits, TDES under the PVK pair, decimalised): PVK 0123…3210, PVKI 1, PIN 1234, account
  401234567890 → PVV 5111; psec's generate_visa_pvv gives the same (an independent
  implementation).
- ANSI X9.19 = ISO/IEC 9797-1 MAC algorithm 3, padding method 1, under the X9.24-1 request MAC
  variant of the transaction key: ASCII "4012345678909D987" → 9CCC78173FC4FB64 (approval
  half 9CCC7817, decline half 3FC4FB64) — the vector of test_hsm_commands.py
  test_gw_tdes_dukpt_mac (docs/hsm.md §8).
GQ layout (ours, after payShield's "Verify a PIN Using the VISA PVV Method (Triple-DES
DUKPT)"): mode 1N [MAC mode 1N, MAC method 1N], BDK, PVK, KSN descriptor 3H, KSN, PIN block
16H, format 2N, account 12N, PVKI 1N, PVV 4N [MAC, message length 4N, message]. The error code
is the PIN's; in mode 1 the body is the MAC's code.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from hsm_mock import cardverify, crypto, dukpt, lmk, pinblock
from hsm_mock.commands import Hsm
from hsm_mock.crypto import tdes_ecb_decrypt, tdes_ecb_encrypt, to_hex
from switch.wire.payshield import Command, build_response

H = bytes.fromhex
STANDARD_KEY = H("0123456789ABCDEFFEDCBA9876543210")  # X9.24-1 test BDK; the Visa PVK test pair

BDK = "U8E3D3E2FD5919657F05A1AA90D32A014"  # STANDARD_KEY under LMK 009 (BDK), KCV 08D7B4
PVK = "U1750CDFB0757D3B3994430636DBB281B"  # STANDARD_KEY under LMK 002 (PVK), KCV 08D7B4
ZPK_U = "U1EF828AA8F6B80EB83E19FBC373F3A85"  # ThalesSim ZPK (001), KCV 6F1E3F
ZPK_G0 = "U9D961F6AF1D24B38AB37B320022FF57D"  # ThalesSim's G0 destination ZPK
TAK = "U7AD0BB2A32ADE115807C3572FC302BA5"  # STANDARD_KEY under LMK 003 (TAK)

KSN_1 = "FFFF9876543210E00001"
KSN = "A05" + KSN_1  # descriptor A05: 10 + 0 + 5 + 5 counter digits = 20H
EPB = "1B9C1845EB993A7A"  # X9.24-1 Annex A: PIN 1234 at counter 1
EPB_BAD = "1B9C1845EB993A7B"  # one bit off: decrypts to garbage (control nibble ≠ 0 → 20)
PIN = "1234"
PAN = "4012345678909"
ACCOUNT = "401234567890"  # pinblock.account_number(PAN)
PVV = "5111"
MSG = b"4012345678909D987"
MAC = "9CCC78173FC4FB64"


@pytest.fixture(scope="module")
def hsm() -> Hsm:
    return Hsm()


def call(hsm: Hsm, body: str | bytes) -> tuple[str, bytes, dict[str, Any]]:
    raw = body.encode("latin-1") if isinstance(body, str) else body
    return hsm.handle(Command(b"0000", "GQ", raw))


def run(hsm: Hsm, code: str, body: str | bytes) -> str:
    """error code + response body, as text (as in test_hsm_commands.py)."""
    raw = body.encode("latin-1") if isinstance(body, str) else body
    error, out, audit = hsm.handle(Command(b"0000", code, raw))
    assert audit["command"] == code
    return error + out.decode("latin-1")


def gq0(block: str = EPB, pvv: str = PVV, *, fmt: str = "01", bdk: str = BDK, pvk: str = PVK,
        ksn: str = KSN, account: str = ACCOUNT, pvki: str = "1") -> str:  # fmt: skip
    """A mode-0 GQ body."""
    return "0" + bdk + pvk + ksn + block + fmt + account + pvki + pvv


def gq1(mac: str = MAC, msg: bytes = MSG, *, mac_mode: str = "1", block: str = EPB, pvv: str = PVV,
        fmt: str = "01", bdk: str = BDK, pvk: str = PVK, length: str | None = None) -> bytes:  # fmt: skip
    """A mode-1 GQ body (MAC method 1 = X9.19)."""
    head = "1" + mac_mode + "1" + bdk + pvk + KSN + block + fmt + ACCOUNT + "1" + pvv + mac
    return head.encode("ascii") + (length or f"{len(msg):04d}").encode("ascii") + msg


def pin_key() -> bytes:
    """The X9.24-1 PIN encryption key of KSN_1 under the test BDK."""
    return dukpt.tdes_pin_key(dukpt.tdes_transaction_key(STANDARD_KEY, KSN_1))


def dukpt_block(clear_block: bytes) -> str:
    return to_hex(tdes_ecb_encrypt(pin_key(), clear_block))


def clear(encrypted: str, key_type: str) -> bytes:
    return lmk.decrypt_key_under_lmk(encrypted, key_type)


# ============================================================================ the vectors


def test_the_vectors_themselves() -> None:
    # X9.24-1 Annex A: the ISO-0 block of PIN 1234 / PAN 4012345678909 under the counter-1 PIN key.
    assert pinblock.account_number(PAN) == ACCOUNT
    assert dukpt_block(pinblock.encode_iso0(PIN, account=ACCOUNT)) == EPB
    assert pinblock.decode_iso0(tdes_ecb_decrypt(pin_key(), H(EPB)), pan=PAN) == PIN
    # Visa PVV, twice: ours and psec's (which takes the PAN with its check digit).
    assert cardverify.visa_pvv(STANDARD_KEY, ACCOUNT, "1", PIN, check_digit_included=False) == PVV
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from psec import pin as psec_pin

        assert psec_pin.generate_visa_pvv(STANDARD_KEY, "1", PIN, PAN) == PVV
    # X9.19 (ISO 9797-1 alg. 3, padding 1) under the request MAC variant of the transaction key.
    mac_key = dukpt.tdes_mac_request_key(dukpt.tdes_transaction_key(STANDARD_KEY, KSN_1))
    assert to_hex(crypto.mac_iso9797_alg3(mac_key, MSG, padding=1)) == MAC
    # The fixture keys are the standard key under their LMK pairs.
    assert clear(BDK, "009") == STANDARD_KEY and clear(PVK, "002") == STANDARD_KEY


# ============================================================================ 1. mode 0 and mode 1


def test_mode_0_verifies_the_pin_by_pvv(hsm: Hsm) -> None:
    assert run(hsm, "GQ", gq0()) == "00"
    assert run(hsm, "GQ", gq0(pvv="5112")) == "01"  # wrong PVV
    assert run(hsm, "GQ", gq0(pvki="2")) == "01"  # the PVV was made with PVKI 1
    # A 16H KSN under descriptor 605 is the same KSN once F-padded to 20H.
    assert run(hsm, "GQ", gq0(ksn="605" + KSN_1[4:])) == "00"


def test_mode_1_verifies_the_pin_and_the_8_byte_mac(hsm: Hsm) -> None:
    assert run(hsm, "GQ", gq1()) == "00" + "00"
    assert run(hsm, "GQ", gq1(pvv="5112")) == "01" + "00"  # PIN fails, MAC verified
    assert run(hsm, "GQ", gq1(mac="9CCC78173FC4FB65")) == "00" + "01"  # PIN verified, MAC fails
    assert run(hsm, "GQ", gq1(mac="9CCC78173FC4FB65", pvv="5112")) == "01" + "01"
    assert run(hsm, "GQ", gq1(msg=b"4012345678909D988")) == "00" + "01"  # one byte of the message
    assert run(hsm, "GQ", gq1(mac=MAC.lower())) == "00" + "00"  # hex fields read case-insensitively


def test_mode_1_four_byte_macs_modes_2_and_3(hsm: Hsm) -> None:
    # MAC mode 2: the leftmost 4 bytes (8H); mode 3: the rightmost 4 bytes (as GW modes 2, 3).
    assert run(hsm, "GQ", gq1(mac_mode="2", mac="9CCC7817")) == "00" + "00"
    assert run(hsm, "GQ", gq1(mac_mode="3", mac="3FC4FB64")) == "00" + "00"
    assert run(hsm, "GQ", gq1(mac_mode="2", mac="3FC4FB64")) == "00" + "01"
    assert run(hsm, "GQ", gq1(mac_mode="3", mac="9CCC7817")) == "00" + "01"
    assert run(hsm, "GQ", gq1(mac_mode="2", mac="9CCC7817", pvv="5112")) == "01" + "00"


@pytest.mark.parametrize("fmt", ["05", "47"])
def test_iso1_and_iso3_blocks(hsm: Hsm, fmt: str) -> None:
    # ISO 9564 formats 1 (05) and 3 (47), fixed fills so the blocks are deterministic.
    def block(pin: str) -> str:
        if fmt == "05":
            return dukpt_block(pinblock.encode_iso1(pin, fill="0123456789"))
        return dukpt_block(pinblock.encode_iso3(pin, account=ACCOUNT, fill="ABCDEFABCD"))

    assert run(hsm, "GQ", gq0(block(PIN), fmt=fmt)) == "00"
    assert run(hsm, "GQ", gq0(block("4321"), fmt=fmt)) == "01"
    assert run(hsm, "GQ", gq1(block=block(PIN), fmt=fmt)) == "00" + "00"
    # The X9.24 block is ISO-0: read as another format its control nibble is wrong.
    assert run(hsm, "GQ", gq0(fmt=fmt)) == "20"


# ============================================================================ 2. GQ = G0 + EC, and GW


def _g0_then_ec(hsm: Hsm, block: str, pvv: str, fmt: str = "01") -> str:
    translated = run(hsm, "G0", BDK + ZPK_G0 + "605" + KSN_1 + block + fmt + "01" + ACCOUNT)
    assert translated[:2] == "00" and translated[-2:] == "01"
    return run(hsm, "EC", ZPK_G0 + PVK + translated[4:20] + "01" + ACCOUNT + "1" + pvv)


def test_gq_agrees_with_g0_then_ec(hsm: Hsm) -> None:
    wrong = dukpt_block(pinblock.encode_iso0("4321", account=ACCOUNT))
    assert wrong not in (EPB, "")
    # ThalesSim TestTranslatePINFromDukptoZPK: G0 of the X9.24 block gives 7D26134E85E7DADF.
    assert run(hsm, "G0", BDK + ZPK_G0 + "605" + KSN_1 + EPB + "0101" + ACCOUNT) == "0004" + "7D26134E85E7DADF" + "01"
    cases = [(EPB, PVV, "00"), (EPB, "5112", "01"), (wrong, PVV, "01"), (wrong, "5112", "01")]
    for block, pvv, verdict in cases:
        assert _g0_then_ec(hsm, block, pvv) == verdict
        assert run(hsm, "GQ", gq0(block, pvv)) == verdict
        assert run(hsm, "GQ", gq1(block=block, pvv=pvv))[:2] == verdict
    # The wrong PIN's own PVV makes it right, on both paths.
    wrong_pvv = cardverify.visa_pvv(STANDARD_KEY, ACCOUNT, "1", "4321", check_digit_included=False)
    assert wrong_pvv != PVV
    assert _g0_then_ec(hsm, wrong, wrong_pvv) == run(hsm, "GQ", gq0(wrong, wrong_pvv)) == "00"
    assert run(hsm, "GQ", gq0(EPB, wrong_pvv)) == "01"


def test_gq_mac_verdict_agrees_with_gw_mode_11(hsm: Hsm) -> None:
    for mac in (MAC, "9CCC78173FC4FB65", "0000000000000000"):
        gw = run(hsm, "GW", ("11" + BDK + KSN + mac).encode() + b"0017" + MSG)
        assert run(hsm, "GQ", gq1(mac=mac)) == "00" + gw
    assert run(hsm, "GW", ("11" + BDK + KSN + MAC).encode() + b"0017" + MSG) == "00"
    # 4-byte halves: GW modes 21 and 31.
    for mode, mac in (("2", "9CCC7817"), ("3", "3FC4FB64"), ("2", "9CCC7818")):
        gw = run(hsm, "GW", (mode + "1" + BDK + KSN + mac).encode() + b"0017" + MSG)
        assert run(hsm, "GQ", gq1(mac_mode=mode, mac=mac)) == "00" + gw


# ============================================================================ 3. errors


def _bad_parity(encrypted: str, key_type: str) -> str:
    key = bytearray(clear(encrypted, key_type))
    key[5] ^= 0x01
    return lmk.encrypt_key_under_lmk(bytes(key), key_type, check_key_parity=False)


def test_format_and_mode_errors(hsm: Hsm) -> None:
    for fmt in ("02", "03", "04", "34", "35", "48", "99"):
        assert run(hsm, "GQ", gq0(fmt=fmt)) == "23"
        assert run(hsm, "GQ", gq1(fmt=fmt)) == "23"
    assert run(hsm, "GQ", "2" + gq0()[1:]) == "15"  # mode 0 or 1 only
    assert run(hsm, "GQ", gq1(mac_mode="4", mac="9CCC7817")) == "15"  # MAC modes 1-3 only
    body = gq1()
    assert run(hsm, "GQ", body[:2] + b"2" + body[3:]) == "15"  # MAC method 1 (X9.19) only
    assert run(hsm, "GQ", gq1(length="0018")) == "15"  # message shorter than its length
    assert run(hsm, "GQ", gq1() + b"X") == "15"  # a byte too many
    assert run(hsm, "GQ", gq0() + "X") == "15"
    assert run(hsm, "GQ", gq0()[:-1]) == "15"  # PVV 3 digits
    assert run(hsm, "GQ", gq0(pvv="511X")) == "15"
    assert run(hsm, "GQ", gq0(account="40123456789X")) == "15"
    assert run(hsm, "GQ", gq0(block="1B9C1845EB993A7G")) == "15"
    assert run(hsm, "GQ", gq0(ksn="A0G" + KSN_1)) == "15"  # KSN descriptor not hexadecimal
    assert run(hsm, "GQ", gq0(ksn="105" + KSN_1[9:])) == "15"  # descriptor 105: an 11H KSN, below 12H
    assert run(hsm, "GQ", "") == "15"


def test_key_errors(hsm: Hsm) -> None:
    # Key type separation (as test_hsm_commands.py: a ZPK where another key type goes → 29).
    assert run(hsm, "GQ", gq0(bdk=ZPK_U)) == "29"
    assert run(hsm, "GQ", gq0(pvk=ZPK_U)) == "29"
    assert run(hsm, "GQ", gq0(bdk=PVK, pvk=BDK)) == "29"  # the keys swapped
    assert run(hsm, "GQ", gq0(pvk=TAK)) == "29"
    assert run(hsm, "GQ", gq1(bdk=ZPK_U)) == "29"  # mode 1: still the single code, empty body
    # Parity: 10 for the BDK, 11 for the PVK.
    assert run(hsm, "GQ", gq0(bdk=_bad_parity(BDK, "009"))) == "10"
    assert run(hsm, "GQ", gq0(pvk=_bad_parity(PVK, "002"))) == "11"
    assert run(hsm, "GQ", gq1(pvk=_bad_parity(PVK, "002"))) == "11"
    # TDES DUKPT needs a double-length BDK: a triple-length one (scheme T) answers 27.
    triple = lmk.encrypt_key_under_lmk(STANDARD_KEY + STANDARD_KEY[:8], "009", "T")
    assert run(hsm, "GQ", gq0(bdk=triple)) == "27"


def test_a_block_that_does_not_decode(hsm: Hsm) -> None:
    # mode 1: the PIN's 20 and the MAC's verdict; mode 0: 20 alone.
    assert run(hsm, "GQ", gq1(block=EPB_BAD)) == "20" + "00"
    assert run(hsm, "GQ", gq1(block=EPB_BAD, mac="9CCC78173FC4FB65")) == "20" + "01"
    assert run(hsm, "GQ", gq1(block=EPB_BAD, mac_mode="3", mac="3FC4FB64")) == "20" + "00"
    assert run(hsm, "GQ", gq0(EPB_BAD)) == "20"
    error, body, _ = call(hsm, gq0(EPB_BAD))
    assert (error, body) == ("20", b"")
    # A block whose length nibble says 3 digits: PIN length error 24, and again the MAC's code.
    three = dukpt_block(crypto.xor(H("03123FFFFFFFFFFF"), H("0000" + ACCOUNT)))
    assert run(hsm, "GQ", gq0(three)) == "24"
    assert run(hsm, "GQ", gq1(block=three)) == "24" + "00"


# ============================================================================ 4. parsing, trailer


def test_parse_with_a_trailer_keeps_the_binary_message(hsm: Hsm) -> None:
    body = gq1()
    cmd = hsm.parse(b"0000GQ" + body + b"\x19TRL")
    assert (cmd.header, cmd.code, cmd.body, cmd.trailer) == (b"0000", "GQ", body, b"TRL")
    assert cmd.request is not None and cmd.request.message == MSG
    error, out, _ = hsm.handle(cmd)
    assert (error, out) == ("00", b"00")
    assert build_response(cmd, error, out) == b"0000GR" + b"00" + b"00" + b"\x19TRL"
    plain = hsm.parse(b"0000GQ" + body)
    assert (plain.body, plain.trailer) == (body, None)
    assert hsm.handle(plain)[:2] == ("00", b"00")


def test_a_message_holding_0x19_parses_exactly(hsm: Hsm) -> None:
    msg = b"AB\x19CD" + bytes(range(32)) + b"\x19"  # 0x19 inside and as the last byte
    # Its MAC, by GW mode 41 (generate the 8-byte request MAC).
    mac = run(hsm, "GW", ("41" + BDK + KSN).encode() + f"{len(msg):04d}".encode() + msg)[2:]
    assert len(mac) == 16
    mac_key = dukpt.tdes_mac_request_key(dukpt.tdes_transaction_key(STANDARD_KEY, KSN_1))
    assert mac == to_hex(crypto.mac_iso9797_alg3(mac_key, msg, padding=1))
    body = gq1(mac=mac, msg=msg)
    cmd = hsm.parse(b"0000GQ" + body + b"\x19TRL")
    assert (cmd.body, cmd.trailer) == (body, b"TRL")
    assert cmd.request.message == msg
    assert hsm.handle(cmd)[:2] == ("00", b"00")
    assert build_response(cmd, *hsm.handle(cmd)[:2]) == b"0000GR0000\x19TRL"
    # Without a trailer the whole body is the command.
    bare = hsm.parse(b"0000GQ" + body)
    assert (bare.body, bare.trailer) == (body, None) and hsm.handle(bare)[:2] == ("00", b"00")
    # The same body, unparsed, answers the same.
    assert run(hsm, "GQ", body) == "0000"
    assert run(hsm, "GQ", gq1(mac=mac, msg=msg[:-1] + b"\x18")) == "0001"


# ============================================================================ 5. audit


def test_audit_holds_check_values_and_no_secrets(hsm: Hsm) -> None:
    wrong = dukpt_block(pinblock.encode_iso0("4321", account=ACCOUNT))
    tk = dukpt.tdes_transaction_key(STANDARD_KEY, KSN_1)
    secrets = {
        EPB, EPB_BAD, wrong, PAN, ACCOUNT, PVV, "5112", MAC, MAC[:8], MAC[8:], PIN, "4321",
        BDK, BDK[1:], PVK, PVK[1:], to_hex(STANDARD_KEY), to_hex(STANDARD_KEY[:8]), to_hex(STANDARD_KEY[8:]),
        to_hex(tk), to_hex(pin_key()), to_hex(dukpt.tdes_mac_request_key(tk)), MSG.decode(),
    }  # fmt: skip
    bodies: list[str | bytes] = [
        gq0(), gq0(pvv="5112"), gq0(wrong), gq0(EPB_BAD), gq1(), gq1(pvv="5112"), gq1(mac="9CCC78173FC4FB65"),
        gq1(mac_mode="2", mac=MAC[:8]), gq1(mac_mode="3", mac=MAC[8:]), gq1(block=EPB_BAD), gq0(fmt="02"),
        gq0(bdk=ZPK_U), gq0(pvk=_bad_parity(PVK, "002")),
    ]  # fmt: skip
    events = []
    for body in bodies:
        _, _, event = call(hsm, body)
        events.append(event)
        assert event["command"] == "GQ"
        for key, value in event.items():
            text = repr(value).upper()
            for secret in secrets:
                assert secret.upper() not in text, (key, secret)
    ok0, _, _, bad0, ok1 = events[:5]
    assert ok0 == {"command": "GQ", "kcv": {"bdk": "08D7B4", "pvk": "08D7B4"}, "mode": "0", "format": "01",
                   "ksn_counter": 1}  # fmt: skip
    assert ok1 == {"command": "GQ", "kcv": {"bdk": "08D7B4", "pvk": "08D7B4"}, "mode": "1", "format": "01",
                   "ksn_counter": 1, "mac": "00"}  # fmt: skip
    assert events[6]["mac"] == "01"
    assert bad0["mode"] == "0" and bad0["kcv"] == {"bdk": "08D7B4", "pvk": "08D7B4"} and "reason" in bad0
    assert events[9]["mac"] == "00" and events[9]["kcv"]["pvk"] == "08D7B4"


# ============================================================================ 6. key cache


def test_a_cache_hit_answers_exactly_as_a_miss() -> None:
    bodies: list[str | bytes] = [
        gq0(), gq0(pvv="5112"), gq0(EPB_BAD), gq0(ksn="605" + KSN_1[4:]), gq1(), gq1(pvv="5112"),
        gq1(mac="9CCC78173FC4FB65"), gq1(mac_mode="2", mac=MAC[:8]), gq1(mac_mode="3", mac=MAC[8:]),
        gq1(block=EPB_BAD), gq0(bdk=ZPK_U), gq0(pvk=_bad_parity(PVK, "002")), gq0(fmt="02"),
    ]  # fmt: skip
    uncached, cached = Hsm(key_cache_size_max=0), Hsm()
    for body in bodies:
        expected = call(uncached, body)
        assert call(cached, body) == expected  # a miss (or a hit left by an earlier body)
        assert call(cached, body) == expected  # a hit
        assert call(uncached, body) == expected
    answers = [call(cached, body)[:2] for body in bodies]
    assert [error + out.decode() for error, out in answers] == [
        "00", "01", "20", "00", "0000", "0100", "0001", "0000", "0000", "2000", "29", "11", "23",
    ]  # fmt: skip


def test_the_transaction_key_cache_is_shared_with_gw_and_g0() -> None:
    # The DUKPT cache is keyed by (BDK under the LMK, KSN): a key GW or G0 derived first serves
    # GQ, and the answers are those of an HSM without caches.
    reference = Hsm(key_cache_size_max=0)
    for first in ("GW", "G0"):
        cached = Hsm()
        if first == "GW":
            assert run(cached, "GW", ("41" + BDK + KSN).encode() + b"0017" + MSG) == "00" + MAC
        else:
            assert run(cached, "G0", BDK + ZPK_G0 + "605" + KSN_1 + EPB + "0101" + ACCOUNT)[:2] == "00"
        for body in (gq1(), gq1(pvv="5112"), gq0(EPB_BAD), gq1(block=EPB_BAD, mac="9CCC78173FC4FB65")):
            assert call(cached, body) == call(reference, body)
