"""The payShield PIN block formats beside ISO 0/1/3/4: Thales codes 02 Docutel, 03 Diebold/IBM
3624, 04 PLUS, 34 ISO 9564 format 2, 35 Mastercard Pay Now & Pay Later, 41 Visa new PIN only,
42 Visa new and old PIN (docs/hsm.md §8, "PIN blocks (ISO 9564)"); then the HSM over real TCP
translating into and out of them (CA, CC, G0, CI) and verifying PINs sent in them (EC, DA, FW,
BK), as docs/hsm.md §5 ("PIN translation") says each command takes them.

Published vectors, each cited where it is used: the payShield host command manual's format
examples (04: PIN 92389, account 2283 4000 0012 3456 → 0592 1A1C BFFF FFED; 34 and 35: PIN
34567), IBM 4758 CCA Basic Services Release 2.54, Figure E-5 (ISO-2: PIN 123456), and for the
DUKPT source ANSI X9.24-1 Annex A's PIN key at KSN …E00001. Formats 02, 03, 41 and 42 have no
published example we could find: their expected blocks are written out digit by digit from the
layouts, and every expected ciphertext here is computed with the `cryptography` library from
such hand-written clear blocks, never with the code under test.
"""

from __future__ import annotations

import re

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from hsm_mock import pinblock
from hsm_mock.pinblock import BlockInputs, PinBlockError
from test_hsm_commands import BDK, IBM_TAIL, KSN_1, PVK, STANDARD_KEY, ZPK_G0, ZPK_U, clear
from test_hsm_server import Client, serve

H = bytes.fromhex

# PIN and card of the payShield manual's format 04 example: check digit 6.
PIN = "92389"
PAN = "2283400000123456"
ACCOUNT = "340000012345"  # the 12 rightmost digits before the check digit (01, 35, 47)
PLUS_ACCOUNT = "228340000012"  # the 12 leftmost digits (04)
PLUS_FIELD = "FF" + PAN  # the 18-character account field when 04 is involved
UDK_A = H("A1B2C3D4E5F60718")
INPUTS = BlockInputs(account=ACCOUNT, pan=PAN, pad="ABCDEF012", udk_a=UDK_A, old_pin="7777")

# Keys under the test LMK (docs/hsm.md §3, "Certification key set"): the standard key
# 0123…3210 as a TPK (002, the same text as the PVK) and as a ZPK (001); ZPK_U (ThalesSim's)
# is a second ZPK, so that source and destination keys differ.
TPK_STD = PVK
ZPK_STD = "U063A0E7C0F2124E56192A4510F395ED7"
# X9.24-1 Annex A (docs/hsm.md §8, "TDES DUKPT"): the PIN key at KSN FFFF9876543210E00001.
ANNEX_A_PIN_KEY = H("042666B49184CF5C68DE9628D0397B36")


def xor_hex(a: str, b: str) -> str:
    """Two equally long hex strings XORed, as hex (an independent oracle for the layouts)."""
    assert len(a) == len(b)
    return f"{int(a, 16) ^ int(b, 16):0{len(a)}X}"


def tdes(key: bytes, block_hex: str, *, decrypt: bool = False) -> str:
    """TDES-ECB of one block with the `cryptography` library (K1 K2 K1 for a double key)."""
    full = key + key[:8] if len(key) == 16 else key
    cipher = Cipher(TripleDES(full), modes.ECB())
    op = cipher.decryptor() if decrypt else cipher.encryptor()
    return (op.update(H(block_hex)) + op.finalize()).hex().upper()


# Clear blocks of PIN 92389 for PAN 2283400000123456, written out from the layouts.
ISO0_CLEAR = xor_hex("0592389FFFFFFFFF", "0000" + ACCOUNT)
PLUS_CLEAR = "05921A1CBFFFFFED"  # payShield manual, format 04 example (same PIN and PAN)
PAY_NOW_CLEAR = xor_hex("2592389FFFFFFFFF", "0000" + ACCOUNT)
DIEBOLD_CLEAR = "92389FFFFFFFFFFF"
DOCUTEL_CLEAR = "5" + "923890" + "ABCDEF012"  # length, PIN 0-filled to 6 digits, 9 pad characters
ISO1_CLEAR = "1592389" + "0123456AB"  # ISO-1 with a fixed fill


# ============================================================================ clear blocks


def test_the_format_table_names_eleven_codes_and_which_bind_the_pan() -> None:
    formats = pinblock.PIN_BLOCK_FORMATS
    assert sorted(formats) == ["01", "02", "03", "04", "05", "34", "35", "41", "42", "47", "48"]
    assert sorted(code for code, f in formats.items() if f.pan_bound) == ["01", "04", "35", "47", "48"]
    assert {code: f.size for code, f in formats.items() if f.size != 8} == {"48": 16}
    with pytest.raises(PinBlockError) as err:
        pinblock.pin_block_format("99")
    assert err.value.code == "23"


def test_plus_04_reproduces_the_payshield_manual_example() -> None:
    # payShield host command manual, "Format 04" (PLUS network): PIN 92389, account
    # 2283 4000 0012 3456 (check digit 6) → 0592 1A1C BFFF FFED.
    assert pinblock.plus_account(PAN) == PLUS_ACCOUNT
    assert pinblock.encode_plus(PIN, PAN) == H("05921A1CBFFFFFED")
    assert pinblock.encode_plus(PIN, account=PLUS_ACCOUNT) == H("05921A1CBFFFFFED")
    assert pinblock.decode_plus(H("05921A1CBFFFFFED"), PAN) == PIN


def test_pay_now_35_reproduces_the_payshield_manual_example() -> None:
    # payShield host command manual, "Format 35" (Mastercard Pay Now & Pay Later): PIN 34567,
    # account 1234 0000 0123 4562 → 2534 167F FFED CBA9 (docs/hsm.md §8).
    assert pinblock.encode_pay_now("34567", "1234000001234562") == H("2534167FFFEDCBA9")
    assert pinblock.decode_pay_now(H("2534167FFFEDCBA9"), account="400000123456") == "34567"
    assert pinblock.encode_pay_now(PIN, PAN) == H(PAY_NOW_CLEAR)


def test_iso2_34_reproduces_the_manual_and_ibm_cca_examples() -> None:
    # payShield host command manual, "Format 34": PIN 34567 → 2534567FFFFFFFFF. IBM 4758 CCA
    # Basic Services Release 2.54, Figure E-5 (ISO-2): PIN 123456 → 26123456FFFFFFFF.
    assert pinblock.encode_iso2("34567") == H("2534567FFFFFFFFF")
    assert pinblock.encode_iso2("123456") == H("26123456FFFFFFFF")
    assert pinblock.decode_iso2(H("26123456FFFFFFFF")) == "123456"


def test_diebold_03_and_docutel_02_exact_blocks() -> None:
    """No published example found: the blocks are written out from the layouts (03: the PIN,
    F-padded; 02: length digit, the PIN left-justified and 0-filled to 6 digits, 9 pad
    characters)."""
    assert pinblock.encode_diebold(PIN) == H(DIEBOLD_CLEAR)
    assert pinblock.encode_diebold("123456789012") == H("123456789012FFFF")
    assert pinblock.decode_diebold(H(DIEBOLD_CLEAR)) == PIN
    assert pinblock.encode_docutel(PIN, pad="ABCDEF012") == H(DOCUTEL_CLEAR)
    assert pinblock.encode_docutel("123456", pad="000000000") == H("6123456000000000")
    assert pinblock.decode_docutel(H(DOCUTEL_CLEAR)) == PIN
    assert pinblock.decode_docutel(H("5923890" + "FFFFFFFFF")) == PIN  # the pad is not checked


def test_visa_41_and_42_exact_blocks() -> None:
    """No published example found: 41 = the format-0 PIN field XOR 8 zero digits and the 8
    rightmost hex digits of UDK-A; 42 = that XOR the old PIN, 0-filled to 16 digits."""
    udk_field = "00000000" + "E5F60718"
    new_only = xor_hex("0592389FFFFFFFFF", udk_field)
    assert new_only == "0592389F1A09F8E7"
    assert pinblock.encode_visa_new_pin(PIN, udk_a=UDK_A) == H(new_only)
    assert pinblock.decode_visa_new_pin(H(new_only), udk_a=UDK_A) == PIN
    new_and_old = xor_hex(new_only, "7777000000000000")
    assert new_and_old == "72E5389F1A09F8E7"
    assert pinblock.encode_visa_new_old_pin(PIN, "7777", udk_a=UDK_A) == H(new_and_old)
    assert pinblock.decode_visa_new_old_pin(H(new_and_old), "7777", udk_a=UDK_A) == PIN


@pytest.mark.parametrize("code", ["01", "02", "03", "04", "05", "34", "35", "41", "42", "47"])
def test_every_format_round_trips_through_encode_and_decode(code: str) -> None:
    longest = 6 if code == "02" else 12
    for pin in ["0000", "1234", "92389", "000000000000"[:longest], "987654321098"[:longest]]:
        block = pinblock.encode_block(code, pin, INPUTS)
        assert len(block) == 8
        assert pinblock.decode_block(code, block, INPUTS) == pin


@pytest.mark.parametrize(
    ("code", "clear_hex"),
    [("01", ISO0_CLEAR), ("02", DOCUTEL_CLEAR), ("03", DIEBOLD_CLEAR), ("04", PLUS_CLEAR), ("35", PAY_NOW_CLEAR),
     ("34", "2592389FFFFFFFFF"), ("41", "0592389F1A09F8E7"), ("42", "72E5389F1A09F8E7")],
)  # fmt: skip
def test_encode_block_by_thales_code_gives_the_hand_built_block(code: str, clear_hex: str) -> None:
    assert pinblock.encode_block(code, PIN, INPUTS) == H(clear_hex)
    assert pinblock.decode_block(code, H(clear_hex), INPUTS) == PIN


def test_random_fill_formats_by_code() -> None:
    iso1 = pinblock.encode_block("05", PIN, INPUTS).hex().upper()
    assert re.fullmatch(r"1592389[0-9A-F]{9}", iso1)
    iso3 = xor_hex(pinblock.encode_block("47", PIN, INPUTS).hex().upper(), "0000" + ACCOUNT)
    assert re.fullmatch(r"3592389[A-F]{9}", iso3)
    assert pinblock.encode_block("05", PIN, INPUTS, fill="0123456AB") == H(ISO1_CLEAR)


@pytest.mark.parametrize(
    ("code", "clear_hex", "error"),
    [
        ("02", "3123400ABCDEF012", "24"),  # length digit 3
        ("02", "7123456700000000", "24"),  # length digit 7: a Docutel PIN field holds 6 digits
        ("02", "A123400ABCDEF012", "20"),  # length is not a digit
        ("02", "4123401ABCDEF012", "20"),  # the PIN field is not 0-filled
        ("02", "412A400ABCDEF012", "20"),  # a PIN digit is not a digit
        ("03", "FFFFFFFFFFFFFFFF", "24"),  # no PIN at all
        ("03", "123FFFFFFFFFFFFF", "24"),
        ("03", "1234567890123FFF", "24"),  # 13 digits
        ("03", "12A4FFFFFFFFFFFF", "20"),
        ("03", "1234F5FFFFFFFFFF", "20"),  # a digit after the padding
        ("04", xor_hex("1592389FFFFFFFFF", "0000" + PLUS_ACCOUNT), "20"),  # control nibble 1
        ("04", xor_hex("0392389FFFFFFFFF", "0000" + PLUS_ACCOUNT), "24"),  # length nibble 3
        ("04", ISO0_CLEAR, "20"),  # a format-0 block read with the leftmost digits
        ("34", "1534567FFFFFFFFF", "20"),
        ("34", "2D34567890123FFF", "24"),  # length 13
        ("34", "2534567FFFFFFFFE", "20"),  # padding not F
        ("35", ISO0_CLEAR, "20"),  # control nibble 0: a format-0 block is not a format-35 one
        ("41", xor_hex("0592389FFFFFFFFF", "0000000000000001"), "20"),  # another card's UDK-A
        ("42", "0592389F1A09F8E7", "20"),  # the old PIN 7777 not in the block: control nibble 7
    ],
)
def test_invalid_blocks_answer_their_payshield_error_codes(code: str, clear_hex: str, error: str) -> None:
    with pytest.raises(PinBlockError) as err:
        pinblock.decode_block(code, H(clear_hex), INPUTS)
    assert err.value.code == error
    assert PIN not in str(err.value) and PAN not in str(err.value) and clear_hex not in str(err.value)


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: pinblock.encode_docutel("1234567", pad="ABCDEF012"), "24"),  # Docutel PINs: 4..6 digits
        (lambda: pinblock.encode_docutel("1234", pad="ABCDEF01"), "15"),  # pad: exactly 9 hex characters
        (lambda: pinblock.encode_docutel("1234", pad="ABCDEF01G"), "15"),
        (lambda: pinblock.encode_diebold("123"), "24"),
        (lambda: pinblock.encode_diebold("1234567890123"), "24"),
        (lambda: pinblock.encode_diebold("12a4"), "15"),
        (lambda: pinblock.encode_iso2("12"), "24"),
        (lambda: pinblock.encode_plus("1234", "228340000012"), "15"),  # 12 digits: none before the check digit
        (lambda: pinblock.encode_visa_new_pin("1234", udk_a=UDK_A[:7]), "15"),
        (lambda: pinblock.encode_visa_new_old_pin("1234", "123", udk_a=UDK_A), "24"),
        (lambda: pinblock.encode_block("42", "1234", BlockInputs(udk_a=UDK_A)), "15"),  # no old PIN
        (lambda: pinblock.encode_block("04", "1234", BlockInputs(account=ACCOUNT)), "15"),  # no PAN
        (lambda: pinblock.encode_block("48", "1234", INPUTS), "23"),  # AES: encipher_iso4
        (lambda: pinblock.decode_block("03", H("1234FFFF"), INPUTS), "20"),  # 4 bytes
        (lambda: pinblock.decode_block("99", H(DIEBOLD_CLEAR), INPUTS), "23"),
    ],
)
def test_unusable_inputs_answer_their_payshield_error_codes(build, error: str) -> None:
    with pytest.raises(PinBlockError) as err:
        build()
    assert err.value.code == error


def test_pci_a_pan_bound_block_never_becomes_one_that_is_not() -> None:
    pan_bound = {"01", "04", "35", "47", "48"}  # docs/hsm.md §8: the table's PAN-bound column
    codes = sorted(pinblock.PIN_BLOCK_FORMATS)
    refused = set()
    for src in codes:
        for dst in codes:
            try:
                pinblock.check_translation(src, dst)
            except PinBlockError as err:
                assert err.code == "23"
                refused.add((src, dst))
    assert refused == {(s, d) for s in pan_bound for d in codes if d not in pan_bound}
    assert ("05", "01") not in refused and ("02", "03") not in refused and ("01", "35") not in refused


def test_block_inputs_keep_card_data_out_of_their_repr() -> None:
    assert repr(INPUTS) == "BlockInputs()"


# ============================================================================ over TCP


async def call(c: Client, code: str, body: str) -> str:
    """Error code + response fields of one command, as text (response code checked)."""
    answer = await c.call(b"0001" + code.encode() + body.encode())
    assert answer[:6] == b"0001" + code[0].encode() + bytes([code.encode()[1] + 1])
    return answer[6:].decode()


def account_field(*codes: str) -> str:
    return PLUS_FIELD if "04" in codes else ACCOUNT


@pytest.mark.parametrize(("command", "src_key"), [("CA", TPK_STD), ("CC", ZPK_STD)])
async def test_ca_cc_translate_each_new_format_into_iso0(command: str, src_key: str) -> None:
    """Both source keys are the standard key (TPK 002, ZPK 001); the destination ZPK differs."""
    dst_clear = clear(ZPK_U, "001")
    expected = "00" + "05" + tdes(dst_clear, ISO0_CLEAR) + "01"
    async with serve() as hsm:
        c = await Client.connect(hsm.port)
        for code, block in [("02", DOCUTEL_CLEAR), ("03", DIEBOLD_CLEAR), ("04", PLUS_CLEAR), ("35", PAY_NOW_CLEAR)]:
            body = src_key + ZPK_U + "12" + tdes(STANDARD_KEY, block) + code + "01" + account_field(code)
            assert await call(c, command, body) == expected, code
        await c.close()


@pytest.mark.parametrize("command", ["CA", "CC"])
async def test_ca_cc_translate_into_each_new_format_payshield_allows(command: str) -> None:
    """From ISO-0 (PAN-bound) into 04 and 35 (PAN-bound); from ISO-1, Docutel or Diebold (not
    PAN-bound) into 02 and 03. The Docutel pad is the account field's first 9 digits."""
    src_key = TPK_STD if command == "CA" else ZPK_STD
    dst_clear = clear(ZPK_U, "001")
    iso0 = tdes(STANDARD_KEY, ISO0_CLEAR)
    iso1 = tdes(STANDARD_KEY, ISO1_CLEAR)
    cases = [
        (iso0, "01", "04", PLUS_CLEAR),
        (iso0, "01", "35", PAY_NOW_CLEAR),
        (tdes(STANDARD_KEY, PLUS_CLEAR), "04", "35", PAY_NOW_CLEAR),
        (iso1, "05", "02", "5" + "923890" + ACCOUNT[:9]),
        (iso1, "05", "03", DIEBOLD_CLEAR),
        (tdes(STANDARD_KEY, DOCUTEL_CLEAR), "02", "03", DIEBOLD_CLEAR),
        (tdes(STANDARD_KEY, DIEBOLD_CLEAR), "03", "02", "5" + "923890" + ACCOUNT[:9]),
    ]
    async with serve() as hsm:
        c = await Client.connect(hsm.port)
        for block, src, dst, out_clear in cases:
            body = src_key + ZPK_U + "12" + block + src + dst + account_field(src, dst)
            assert await call(c, command, body) == "0005" + tdes(dst_clear, out_clear) + dst, (src, dst)
        await c.close()


async def test_translations_pci_or_payshield_refuse_answer_23() -> None:
    iso0, iso1 = tdes(STANDARD_KEY, ISO0_CLEAR), tdes(STANDARD_KEY, ISO1_CLEAR)
    refused = [
        (iso0, "01", "02"), (iso0, "01", "03"),  # PAN-bound → not PAN-bound (PCI)
        (tdes(STANDARD_KEY, PLUS_CLEAR), "04", "05"), (tdes(STANDARD_KEY, PAY_NOW_CLEAR), "35", "03"),
        (iso1, "05", "34"), (iso1, "05", "41"), (iso1, "05", "42"),  # 34/41/42: not for CA/CC
        (tdes(STANDARD_KEY, "2592389FFFFFFFFF"), "34", "01"), (iso0, "41", "01"), (iso0, "42", "01"),
        (iso0, "01", "99"),
    ]  # fmt: skip
    async with serve() as hsm:
        c = await Client.connect(hsm.port)
        for block, src, dst in refused:
            for command, key in (("CA", TPK_STD), ("CC", ZPK_STD)):
                body = key + ZPK_U + "12" + block + src + dst + account_field(src, dst)
                assert await call(c, command, body) == "23", (command, src, dst)
        await c.close()


async def test_the_plus_account_field_and_the_docutel_pin_length() -> None:
    iso0, iso1 = tdes(STANDARD_KEY, ISO0_CLEAR), tdes(STANDARD_KEY, ISO1_CLEAR)
    async with serve() as hsm:
        c = await Client.connect(hsm.port)
        head = ZPK_STD + ZPK_U + "12"
        assert await call(c, "CC", head + iso0 + "0104" + ACCOUNT) == "15"  # 04 needs 18 characters
        assert await call(c, "CC", head + iso0 + "0104" + "F2283400000F123456") == "15"  # F inside
        assert await call(c, "CC", head + iso0 + "0104" + "FFFFFF228340000012") == "15"  # 12-digit PAN
        seven = tdes(STANDARD_KEY, "17" + "1234567" + "0123456")
        assert await call(c, "CC", head + seven + "0502" + ACCOUNT) == "24"  # Docutel holds 4..6 digits
        assert (await call(c, "CC", head + iso1 + "0502" + ACCOUNT))[:4] == "0005"
        await c.close()


async def test_g0_and_ci_translate_a_dukpt_block_into_plus_04() -> None:
    """payShield's G0/CI take destination formats 01 and 04 (manual); with 04 the account
    field is the 18-character PAN field. The source is PIN 92389 in ISO-0 under the Annex A
    PIN key of KSN …E00001, so the HSM must derive that key to read it."""
    epb = tdes(ANNEX_A_PIN_KEY, ISO0_CLEAR)
    zpk = clear(ZPK_G0, "001")
    head = BDK + ZPK_G0 + "605" + KSN_1 + epb
    async with serve() as hsm:
        c = await Client.connect(hsm.port)
        assert await call(c, "G0", head + "01" + "04" + PLUS_FIELD) == "0005" + tdes(zpk, PLUS_CLEAR) + "04"
        assert await call(c, "CI", head + "04" + PLUS_FIELD) == "0005" + tdes(zpk, PLUS_CLEAR) + "04"
        assert await call(c, "G0", head + "01" + "01" + ACCOUNT) == "0005" + tdes(zpk, ISO0_CLEAR) + "01"
        # A 16-digit KSN (no F padding) parses as well with the 18-character field.
        assert await call(c, "G0", BDK + ZPK_G0 + "605" + KSN_1[4:] + epb + "0104" + PLUS_FIELD) == (
            "0005" + tdes(zpk, PLUS_CLEAR) + "04"
        )
        for src, dst in [("01", "02"), ("01", "03"), ("01", "35"), ("01", "34"), ("02", "01"), ("03", "01"),
                         ("04", "01"), ("35", "01"), ("41", "01")]:  # fmt: skip
            assert await call(c, "G0", head + src + dst + account_field(dst)) == "23", (src, dst)
        assert await call(c, "G0", head + "01" + "04" + ACCOUNT) == "15"  # 04 with a 12-digit account
        await c.close()


# PIN verification vectors (docs/hsm.md §8, "Card and PIN verification"): Visa PVV, PVK
# 0123…3210, PAN 1122334455667788, PVKI 3, PIN 4524 → 4021 (psec docstring); IBM 3624, table
# 1234567890123456, validation data 11223344556N with an account ending 67788, PIN 1234 →
# offset 7710 (psec tests).
PVV_PAN, PVV_ACCOUNT = "1122334455667788", "233445566778"
IBM_PAN, IBM_ACCOUNT = "4000000000677889", "000000067788"


def verify_blocks(pin: str, pan: str, account: str) -> list[tuple[str, str, str]]:
    """(format, account field, clear block) of `pin` in each new format a verify command
    takes, written out from the layouts."""
    length_pin_fill = f"{len(pin):X}{pin}".ljust(15, "F")
    return [
        ("02", account, f"{len(pin)}{pin.ljust(6, '0')}ABCDEF012"),
        ("03", account, pin.ljust(16, "F")),
        ("04", pan.rjust(18, "F"), xor_hex("0" + length_pin_fill, "0000" + pan[:12])),
        ("35", account, xor_hex("2" + length_pin_fill, "0000" + account)),
    ]


async def test_pin_verify_commands_accept_a_block_in_each_new_format() -> None:
    async with serve() as hsm:
        c = await Client.connect(hsm.port)
        for code, field, block in verify_blocks("4524", PVV_PAN, PVV_ACCOUNT):
            good = tdes(STANDARD_KEY, block)
            assert await call(c, "EC", ZPK_STD + PVK + good + code + field + "3" + "4021") == "00", code
            assert await call(c, "EC", ZPK_STD + PVK + good + code + field + "3" + "4022") == "01", code
            assert await call(c, "DC", TPK_STD + PVK + good + code + field + "3" + "4021") == "00", code
            assert await call(c, "FW", "001" + ZPK_STD + PVK + good + code + field + "3") == "004021", code
        for code, field, block in verify_blocks("1234", IBM_PAN, IBM_ACCOUNT):
            good = tdes(STANDARD_KEY, block)
            ibm = PVK + "12" + good + code + "04" + field + IBM_TAIL
            assert await call(c, "DA", TPK_STD + ibm + "7710FFFFFFFF") == "00", code
            assert await call(c, "EA", ZPK_STD + ibm + "7711FFFFFFFF") == "01", code
            bk = "002" + TPK_STD + PVK + good + code + "04" + field + IBM_TAIL
            assert await call(c, "BK", bk) == "007710FFFFFFFF", code
        # 34, 41 and 42 are refused by every verify command.
        iso2 = tdes(STANDARD_KEY, "244524FFFFFFFFFF")
        for code in ("34", "41", "42"):
            assert await call(c, "EC", ZPK_STD + PVK + iso2 + code + PVV_ACCOUNT + "3" + "4021") == "23", code
            assert await call(c, "DA", TPK_STD + PVK + "12" + iso2 + code + "04" + IBM_ACCOUNT + IBM_TAIL
                              + "7710FFFFFFFF") == "23", code  # fmt: skip
        await c.close()
