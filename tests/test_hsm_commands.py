"""The HSM's host commands in process, with exact expected answers.

Vectors, each cited:
- ThalesSim host-command tests (nickntg/thalessimulatorlibrary, ThalesCore.Tests/
  HostCommandTests.vb) run on the same public test LMK: BU, FA, GC, CA, CI, CW, CY, B2 answers
  are byte-for-byte theirs.
- ISO/IEC 9797-1:2011 Annex B.4 (MAC algorithm 3), RFC 4493 (AES-CMAC), ANSI X9.24-1 Annex A
  (TDES DUKPT: PIN 1234, PAN 4012345678909, EPB and MACs), X9.24-3 supplement (AES DUKPT,
  ISO-4 block, CMAC), Visa CVV/PVV and IBM 3624 (psec tests and docstrings) — docs/hsm.md,
  "Test vectors and their sources".
Keys under the LMK below are the standard test keys encrypted under the test LMK
(test_fixture_keys_are_the_standard_test_keys proves it).
"""

from __future__ import annotations

import warnings

import pytest

from hsm_mock import crypto, dukpt, lmk, pinblock
from hsm_mock.commands import Hsm
from hsm_mock.crypto import tdes_ecb_decrypt, tdes_ecb_encrypt, to_hex
from switch.wire.payshield import Command, FieldReader, ProtocolError, build_response

H = bytes.fromhex
STANDARD_KEY = H("0123456789ABCDEFFEDCBA9876543210")  # X9.24 BDK, Visa CVK/PVK test pair, ISO 9797-1 K||K'

# ThalesSim fixtures (test LMK)
TPK = "0406FBB23A5214DF"  # single length, KCV 0035BB
TPK_U = "U8463435FC4B4DAA0C49025272C29B12C"  # KCV 070753
ZPK = "BAB32D775A38E4AB"  # KCV 73936E
ZPK_U = "U1EF828AA8F6B80EB83E19FBC373F3A85"  # KCV 6F1E3F
ZPK_G0 = "U9D961F6AF1D24B38AB37B320022FF57D"
ZMK = "U1457FF6ADF6250C66C368416B4C9D383"
CVK = "U9B4934384B19946B040CD702B4D58145"  # the Visa test CVK pair under 402
BDK = "U8E3D3E2FD5919657F05A1AA90D32A014"  # the X9.24-1 test BDK under 009, KCV 08D7B4
# Ours: the standard key under 002 (PVK), 003 (TAK); AES keys under the variant LMK (scheme U, no parity)
PVK = "U1750CDFB0757D3B3994430636DBB281B"
TAK = "U7AD0BB2A32ADE115807C3572FC302BA5"
AES_BDK = "UC0106228334ECB2E12B49BA556660547"  # X9.24-3 test BDK FEDCBA9876543210F1F1F1F1F1F1F1F1
CMAC_TAK = "UB94B61480A0381A1060D83201193A756"  # RFC 4493 key 2B7E151628AED2A6ABF7158809CF4F3C


@pytest.fixture(scope="module")
def hsm() -> Hsm:
    return Hsm()


def run(hsm: Hsm, code: str, body: str | bytes) -> str:
    """error code + response body, as text."""
    raw = body.encode("latin-1") if isinstance(body, str) else body
    error, out, audit = hsm.handle(Command(b"0000", code, raw))
    assert audit["command"] == code
    return error + out.decode("latin-1")


def clear(encrypted: str, key_type: str, **kw) -> bytes:
    return lmk.decrypt_key_under_lmk(encrypted, key_type, **kw)


def iso0(pin: str, account: str, key: bytes) -> str:
    return to_hex(tdes_ecb_encrypt(key, pinblock.encode_iso0(pin, account=account)))


def test_fixture_keys_are_the_standard_test_keys() -> None:
    assert clear(PVK, "002") == STANDARD_KEY and clear(TAK, "003") == STANDARD_KEY
    assert clear(CVK, "402") == STANDARD_KEY and clear(BDK, "009") == STANDARD_KEY
    assert clear(AES_BDK, "009", check_key_parity=False) == H("FEDCBA9876543210F1F1F1F1F1F1F1F1")
    assert clear(CMAC_TAK, "003", check_key_parity=False) == H("2B7E151628AED2A6ABF7158809CF4F3C")


# ============================================================================ NC NO B2, unknown


def test_nc_returns_lmk_check_value_and_firmware(hsm: Hsm) -> None:
    # 7B44AC1DDEE2A94B: the ThalesSim convention for the test LMK (docs/hsm.md), firmware as
    # in the payShield 10K exchange quoted in docs/hsm.md §8.
    assert run(hsm, "NC", "") == "007B44AC1DDEE2A94B1500-0023"
    assert run(Hsm(lmk_check_convention="kcv", firmware="0007-E000"), "NC", "") == "00" + "7D22270000000000" + "0007-E000"
    assert run(hsm, "NC", "X") == "15"


def test_no_and_b2(hsm: Hsm) -> None:
    assert run(hsm, "NO", "00") == "003164" + "1500-0023" + "00000"
    assert run(hsm, "NO", "") == run(hsm, "NO", "00")
    assert run(hsm, "NO", "07") == "15"
    # ThalesSim TestEchoCommand: exact length, data shorter → 80, data longer → 15.
    assert run(hsm, "B2", "0000") == "00"
    assert run(hsm, "B2", "00100123456789ABCDEF") == "000123456789ABCDEF"
    assert run(hsm, "B2", "00100123456789") == "80"
    assert run(hsm, "B2", "00090123456789ABCDEF") == "15"


def test_binary_data_holding_0x19_is_not_taken_for_a_trailer(hsm: Hsm) -> None:
    data = bytes(range(32))  # holds 0x19
    cmd = hsm.parse(b"HDR1B2" + b"0020" + data + b"\x19TRAILER")
    assert (cmd.body, cmd.trailer) == (b"0020" + data, b"TRAILER")
    error, body, _ = hsm.handle(cmd)
    assert build_response(cmd, error, body) == b"HDR1B300" + data + b"\x19TRAILER"
    plain = hsm.parse(b"HDR1NC\x19abc")
    assert (plain.body, plain.trailer) == (b"", b"abc")


def test_unknown_and_disabled_commands_answer_68(hsm: Hsm) -> None:
    assert run(hsm, "XX", "") == "68"
    disabled = Hsm(disabled_commands=frozenset({"a0"}))
    assert run(disabled, "A0", "0002U") == "68"
    assert run(disabled, "NC", "")[:2] == "00"
    assert build_response(Command(b"0000", "QZ", b""), "68") == b"0000ZZ68"


# ============================================================================ keys


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # ThalesSim TestGenerateCheckValueBU: key type code, key length flag, key → 16H KCV.
        ("0200406FBB23A5214DF", "000035BBE340A4B763"),
        ("000ACE9B8A0BE50C09B", "004BD5E2482582C2C4"),
        ("001U93CB819F8FEE4F78BF9C4CDD84750DB1", "00B70AD25C94548822"),
        ("011U1EF828AA8F6B80EB83E19FBC373F3A85", "006F1E3F74F826B7EB"),
        ("FF1" + CVK + ";402", "0008D7B4FB629D0885"),  # ours: FF + ';' + key type (a CVK, variant 4)
        ("011" + ZPK, "27"),  # length flag says double, the key is single
        ("041" + ZPK_U, "28"),  # 004 is no key type of this HSM
        ("FF1" + CVK, "15"),  # FF needs ';' + key type
    ],
)
def test_bu_key_check_value(hsm: Hsm, body: str, expected: str) -> None:
    assert run(hsm, "BU", body) == expected


def test_fa_and_gc_translate_a_zpk_between_zmk_and_lmk(hsm: Hsm) -> None:
    # ThalesSim TestTranslateZPKFromZMKToLMK / TestTranslateZPKFromLMKToZMK.
    assert run(hsm, "FA", ZMK + "2B930A07119F93A8") == "00BAB32D775A38E4AB73936E441E46819D"
    assert run(hsm, "FA", ZMK + "2B930A07119F93A8;XZ1") == "00BAB32D775A38E4AB73936E"
    assert run(hsm, "GC", ZMK + ZPK) == "002B930A07119F93A873936E441E46819D"
    assert run(hsm, "GC", ZMK + ZPK + ";ZZ1") == "002B930A07119F93A873936E"
    # A double-length ZPK round trip, scheme X under the ZMK and U under the LMK.
    out = run(hsm, "GC", ZMK + ZPK_U + ";XU1")
    assert out[:3] == "00X" and out[-6:] == "6F1E3F"
    assert run(hsm, "FA", ZMK + out[2:35] + ";XU1") == "00" + ZPK_U + "6F1E3F"


def test_a0_generates_keys_under_the_lmk_and_exports_them(hsm: Hsm) -> None:
    out = run(hsm, "A0", "0001U")
    assert out[:3] == "00U" and len(out) == 2 + 33 + 6
    key = clear(out[2:35], "001")
    assert crypto.key_check_value(key) == out[35:] and key[:8] != key[8:]
    # Mode 1: also under a ZMK (flag 0) or a TMK (flag 1), in the requested scheme.
    out = run(hsm, "A0", "1001U;0" + ZMK + "X")
    under_lmk, under_zmk, kcv = out[2:35], out[35:68], out[68:]
    assert under_zmk[0] == "X" and len(kcv) == 6
    assert lmk.decrypt_key_under_kek(under_zmk, clear(ZMK, "000")) == clear(under_lmk, "001")
    out = run(hsm, "A0", "1003U;1" + TPK_U + "U")  # a TAK under a TMK
    assert lmk.decrypt_key_under_kek(out[35:68], clear(TPK_U, "002")) == clear(out[2:35], "003")
    assert run(hsm, "A0", "1001U" + ZMK + "X")[:2] == "00"  # without ';': a ZMK
    # Ours: '#A' generates an AES key (scheme U = AES-128, T = AES-192), AES check value.
    out = run(hsm, "A0", "0009U#A")
    aes_key = clear(out[2:35], "009", check_key_parity=False)
    assert out[35:] == crypto.aes_key_check_value(aes_key)
    assert run(hsm, "A0", "0009T")[:3] == "00T"
    assert run(hsm, "A0", "0001S") == "26"
    assert run(hsm, "A0", "0005U") == "28"
    assert run(hsm, "A0", "1001U" + ZMK + "T") == "26"  # export scheme length ≠ key length
    assert run(hsm, "A0", "2001U") == "15"


# ============================================================================ PIN translation

# ThalesSim CA/EC/DC fixtures: PIN 1234, account 550000025321.
ACCOUNT = "550000025321"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # ThalesSim TestTranslatePINFromTPKToZMK (CA), ISO-0 in and out.
        (TPK + ZPK + "12AE7A708F877571A90101" + ACCOUNT, "0004E98FFDA17099AF5501"),
        (TPK_U + ZPK_U + "126428EB94035AF53B0101" + ACCOUNT, "000491DDDA0A7C12CFAA01"),
    ],
)
def test_ca_translates_tpk_to_zpk(hsm: Hsm, body: str, expected: str) -> None:
    assert run(hsm, "CA", body) == expected


def test_cc_translates_between_formats_and_decodes_to_the_same_pin(hsm: Hsm) -> None:
    src = iso0("1234", ACCOUNT, clear(ZPK, "001"))
    assert src == "E98FFDA17099AF55"
    out = run(hsm, "CC", ZPK + ZPK_U + "12" + src + "0147" + ACCOUNT)  # ISO-0 → ISO-3
    assert out[:4] == "0004" and out[-2:] == "47"
    block = tdes_ecb_decrypt(clear(ZPK_U, "001"), H(out[4:20]))
    assert pinblock.decode_iso3(block, account=ACCOUNT) == "1234"
    assert run(hsm, "CC", ZPK_U + ZPK + "12" + out[4:20] + "4701" + ACCOUNT) == "0004" + src + "01"
    # ISO-0 → ISO-1 is refused (PCI: a PAN-bound block never loses its PAN), ISO-1 → ISO-0 is fine.
    assert run(hsm, "CC", ZPK + ZPK + "12" + src + "0105" + ACCOUNT) == "23"
    iso1 = to_hex(tdes_ecb_encrypt(clear(ZPK, "001"), pinblock.encode_iso1("1234")))
    assert run(hsm, "CC", ZPK + ZPK + "12" + iso1 + "0501" + ACCOUNT) == "0004" + src + "01"


def test_cc_iso4_blocks_under_aes_zpks(hsm: Hsm) -> None:
    # ISO-4 (format 48) needs an AES ZPK and the whole PAN: the account field becomes
    # PAN length 2N + PAN, and the block is 32H (docs/hsm.md).
    aes_zpk = run(hsm, "A0", "0001U#A")[2:35]
    pan = "4111111111111111"
    src = iso0("1234", pinblock.account_number(pan), clear(ZPK, "001"))
    out = run(hsm, "CC", ZPK + aes_zpk + "12" + src + "0148" + "16" + pan)
    assert out[:4] == "0004" and len(out) == 4 + 32 + 2 and out[-2:] == "48"
    aes_key = clear(aes_zpk, "001", check_key_parity=False)
    assert pinblock.decipher_iso4(aes_key, H(out[4:36]), pan) == "1234"
    back = run(hsm, "CC", aes_zpk + ZPK + "12" + out[4:36] + "4801" + "16" + pan)
    assert back == "0004" + src + "01"


# ============================================================================ DUKPT


KSN_1 = "FFFF9876543210E00001"


def test_g0_and_ci_translate_a_tdes_dukpt_pin_block(hsm: Hsm) -> None:
    # X9.24-1 Annex A: KSN …E00001, EPB 1B9C1845EB993A7A = PIN 1234, PAN 4012345678909.
    # ThalesSim TestTranslatePINFromDukptoZPK: the ZPK block is 7D26134E85E7DADF.
    account = "401234567890"
    expected = "0004" + "7D26134E85E7DADF" + "01"
    assert run(hsm, "G0", BDK + ZPK_G0 + "605" + KSN_1 + "1B9C1845EB993A7A" + "01" + "01" + account) == expected
    assert run(hsm, "G0", BDK + ZPK_G0 + "605" + KSN_1[4:] + "1B9C1845EB993A7A" + "0101" + account) == expected
    assert run(hsm, "CI", BDK + ZPK_G0 + "605" + KSN_1 + "1B9C1845EB993A7A" + "01" + account) == expected
    assert run(hsm, "CI", BDK + ZPK_G0 + "605FFFF9876543210EFFC00DEFC6F09F8927B7101" + account) == expected
    block = tdes_ecb_decrypt(clear(ZPK_G0, "001"), H("7D26134E85E7DADF"))
    assert pinblock.decode_iso0(block, pan="4012345678909") == "1234"
    # Errors: KSN longer than 20H (15), unsupported source format (23).
    assert run(hsm, "G0", BDK + ZPK_G0 + "605" + "0" + KSN_1 + "1B9C1845EB993A7A0101" + account) == "15"
    assert run(hsm, "G0", BDK + ZPK_G0 + "605" + KSN_1 + "1B9C1845EB993A7A0201" + account) == "23"


def test_z0_translates_an_aes_dukpt_iso4_block(hsm: Hsm) -> None:
    # X9.24-3 supplement: the PIN key at KSN 123456789012345600000001 is AF8CB133…93FB and
    # PIN 1234, PAN 4111111111111111, fill 2F69ADDE2E9E7ACE give A912150391AB65A67E52883D81CE2D15.
    pan = "4111111111111111"
    out = run(hsm, "Z0", AES_BDK + ZPK + "123456789012345600000001" + "A912150391AB65A67E52883D81CE2D15"
              + "01" + "16" + pan)  # fmt: skip
    assert out[:4] == "0004" and out[-2:] == "01"
    assert out[4:20] == iso0("1234", pinblock.account_number(pan), clear(ZPK, "001"))
    aes_zpk = run(hsm, "A0", "0001U#A")[2:35]
    out = run(hsm, "Z0", AES_BDK + aes_zpk + "123456789012345600000001A912150391AB65A67E52883D81CE2D154816" + pan)
    assert pinblock.decipher_iso4(clear(aes_zpk, "001", check_key_parity=False), H(out[4:36]), pan) == "1234"
    assert run(hsm, "Z0", AES_BDK + ZPK + "123456789012345600000001A912150391AB65A67E52883D81CE2D150516" + pan) == "23"


def test_gw_tdes_dukpt_mac(hsm: Hsm) -> None:
    # docs/hsm.md §8, X9.24-1 counter 1: X9.19 over ASCII "4012345678909D987" with the request
    # key 9CCC78173FC4FB64, with the response key 20364223C1FF00FA; "1234567890"×4 → BF3DF9F4….
    msg = b"4012345678909D987"
    head = ("4", "1", BDK, "A05", KSN_1)
    assert run(hsm, "GW", "".join(head).encode() + b"0017" + msg) == "009CCC78173FC4FB64"
    assert run(hsm, "GW", ("42" + BDK + "A05" + KSN_1).encode() + b"0017" + msg) == "0020364223C1FF00FA"
    assert run(hsm, "GW", ("11" + BDK + "A05" + KSN_1 + "9CCC78173FC4FB64").encode() + b"0017" + msg) == "00"
    assert run(hsm, "GW", ("11" + BDK + "A05" + KSN_1 + "9CCC78173FC4FB65").encode() + b"0017" + msg) == "01"
    assert run(hsm, "GW", ("51" + BDK + "A05" + KSN_1).encode() + b"0040" + b"1234567890" * 4) == "00BF3DF9F4"
    assert run(hsm, "GW", ("51" + BDK + "A05" + KSN_1).encode() + b"0017" + msg) == "009CCC7817"  # approval
    assert run(hsm, "GW", ("61" + BDK + "A05" + KSN_1).encode() + b"0017" + msg) == "003FC4FB64"  # decline
    assert run(hsm, "GW", ("31" + BDK + "A05" + KSN_1 + "3FC4FB64").encode() + b"0017" + msg) == "00"


def test_z2_aes_dukpt_cmac(hsm: Hsm) -> None:
    # moov-io/dukpt aes_test.go (X9.24-3 Annex B.1) at counter 1: CMAC of ASCII
    # "4012345678909D987", request (usage 2000) and response (usage 2001) keys.
    msg = b"4012345678909D987"
    ksn = "123456789012345600000001"
    assert run(hsm, "Z2", ("402" + AES_BDK + ksn).encode() + b"0017" + msg) == "00A2EB5C1C35809E58404E873C3C411E31"
    assert run(hsm, "Z2", ("412" + AES_BDK + ksn).encode() + b"0017" + msg) == "00DD4E1895FD9BF53D8DAF25568ABF551D"
    assert run(hsm, "Z2", ("400" + AES_BDK + ksn).encode() + b"0017" + msg) == "00A2EB5C1C"
    assert run(hsm, "Z2", ("100" + AES_BDK + ksn + "A2EB5C1C").encode() + b"0017" + msg) == "00"
    assert run(hsm, "Z2", ("110" + AES_BDK + ksn + "A2EB5C1C").encode() + b"0017" + msg) == "01"


# ============================================================================ PIN verification

# Visa PVV (psec docstring, docs/hsm.md §8): PVK 0123…3210, PAN 1122334455667788, PVKI 3,
# PIN 4524 → PVV 4021. The account field is the 12 rightmost PAN digits excluding the check digit.
PVV_ACCOUNT = pinblock.account_number("1122334455667788")


@pytest.mark.parametrize(("code", "key"), [("DC", TPK), ("EC", ZPK_U)])
def test_dc_ec_verify_a_pin_by_visa_pvv(hsm: Hsm, code: str, key: str) -> None:
    key_type = "002" if code == "DC" else "001"
    good = iso0("4524", PVV_ACCOUNT, clear(key, key_type))
    bad = iso0("4525", PVV_ACCOUNT, clear(key, key_type))
    assert run(hsm, code, key + PVK + good + "01" + PVV_ACCOUNT + "3" + "4021") == "00"
    assert run(hsm, code, key + PVK + bad + "01" + PVV_ACCOUNT + "3" + "4021") == "01"
    assert run(hsm, code, key + PVK + good + "01" + PVV_ACCOUNT + "4" + "4021") == "01"


def test_dc_thalessim_vector_and_the_visa_tsp(hsm: Hsm) -> None:
    # ThalesSim's DC test expects PVV 3969 for PIN 1234, account 550000025321, PVKI 1 with PVK
    # X3679…: that ThalesSim version builds the TSP from the *leftmost* 11 account digits
    # (its later versions use the rightmost 11, as Visa specifies). Visa's TSP gives 4402,
    # which psec's generate_visa_pvv(pvk, "1", "1234", "5500000253210") also returns.
    pvk = "X367930344805B1FAD6146EF4ED7502B3"
    assert run(hsm, "DC", TPK + pvk + "AE7A708F877571A9" + "01" + ACCOUNT + "1" + "4402") == "00"
    assert run(hsm, "DC", TPK + pvk + "AE7A708F877571A9" + "01" + ACCOUNT + "1" + "3969") == "01"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from psec import pin as psec_pin

        assert psec_pin.generate_visa_pvv(clear(pvk, "002"), "1", "1234", ACCOUNT + "0") == "4402"


# IBM 3624 (psec tests, docs/hsm.md §8): PVK 0123…3210, table 1234567890123456, validation data
# 1122334455667788 → natural PIN 4524, offset of PIN 1234 = 7710. In payShield's 12A form the
# 'N' stands for the last 5 account digits: "11223344556N" with an account ending in 67788.
IBM_ACCOUNT = "000000067788"
IBM_TAIL = "1234567890123456" + "11223344556N"


@pytest.mark.parametrize(("code", "key"), [("DA", TPK_U), ("EA", ZPK)])
def test_da_ea_verify_a_pin_by_ibm_offset(hsm: Hsm, code: str, key: str) -> None:
    key_type = "002" if code == "DA" else "001"
    block = iso0("1234", IBM_ACCOUNT, clear(key, key_type))
    body = key + PVK + "12" + block + "01" + "04" + IBM_ACCOUNT + IBM_TAIL
    assert run(hsm, code, body + "7710FFFFFFFF") == "00"
    assert run(hsm, code, body + "7711FFFFFFFF") == "01"
    # A bare double-length PVK (X9.17 form) and a single-length one parse by exact length.
    bare = lmk.encrypt_key_under_lmk(STANDARD_KEY, "002", "X")[1:]
    assert run(hsm, code, key + bare + "12" + block + "01" + "04" + IBM_ACCOUNT + IBM_TAIL + "7710FFFFFFFF") == "00"
    single = lmk.encrypt_key_under_lmk(STANDARD_KEY[:8], "002")
    natural = run(hsm, code, key + single + "12" + block + "01" + "04" + IBM_ACCOUNT + IBM_TAIL + "7710FFFFFFFF")
    # a different PVK: parsed (15 if not) and verified, and it fails (01): single DES under the
    # first half of the key gives another natural PIN, so the offset made for the double-length
    # PVK does not turn it into 1234
    assert natural == "01"
    assert run(hsm, code, key + PVK + "04" + iso0("12345", IBM_ACCOUNT, clear(key, key_type)) + "01" + "04"
               + IBM_ACCOUNT + IBM_TAIL + "7710FFFFFFFF") == "24"  # fmt: skip


def test_issuance_pvv_and_offset_from_pin_blocks_and_from_pin_under_lmk(hsm: Hsm) -> None:
    # FW / BK: from a PIN block under a TPK (002) or ZPK (001); BA + DG / DE: PIN under LMK.
    block = iso0("4524", PVV_ACCOUNT, clear(TPK, "002"))
    assert run(hsm, "FW", "002" + TPK + PVK + block + "01" + PVV_ACCOUNT + "3") == "004021"
    assert run(hsm, "FW", "003" + TPK + PVK + block + "01" + PVV_ACCOUNT + "3") == "29"
    zblock = iso0("1234", IBM_ACCOUNT, clear(ZPK, "001"))
    assert run(hsm, "BK", "001" + ZPK + PVK + zblock + "01" + "04" + IBM_ACCOUNT + IBM_TAIL) == "007710FFFFFFFF"
    pin_under_lmk = run(hsm, "BA", "4524" + PVV_ACCOUNT)
    assert pin_under_lmk[:2] == "00" and len(pin_under_lmk) == 18 and "4524" not in pin_under_lmk
    assert run(hsm, "BA", "4524FFFFFFFFF" + PVV_ACCOUNT) == pin_under_lmk
    assert run(hsm, "DG", PVK + pin_under_lmk[2:] + PVV_ACCOUNT + "3") == "004021"
    ibm_pin = run(hsm, "BA", "1234" + IBM_ACCOUNT)[2:]
    assert run(hsm, "DE", PVK + ibm_pin + "04" + IBM_ACCOUNT + IBM_TAIL) == "007710FFFFFFFF"
    assert run(hsm, "DG", PVK + pin_under_lmk[2:] + IBM_ACCOUNT + "3") == "20"  # bound to its account


# ============================================================================ CVV


@pytest.mark.parametrize(
    ("code", "body", "expected"),
    [
        # ThalesSim TestGenerateCVV / TestVerifyCVV (Visa test CVK; 561 and 649 are the published CVVs).
        ("CW", CVK + "4123456789012345;8701101", "00561"),
        ("CW", "0A61E674E88C6A7EEABC38C2B2BB492F4123456789012345;8701101", "00561"),
        ("CW", "0A61E674E88C6A7EEABC38C2B2BB492F4999988887777;9105111", "00649"),
        ("CW", CVK + "4123456789012345;8701000", "00636"),  # service code 000: the CVV2 convention
        ("CY", CVK + "5614123456789012345;8701101", "00"),
        ("CY", CVK + "1114123456789012345;8701101", "01"),
        ("CY", "0A61E674E88C6A7EEABC38C2B2BB492F6494999988887777;9105111", "00"),
        ("CW", CVK + "4123456789012345;870110", "15"),
        ("CW", CVK + "4123456789012345870110", "15"),
    ],
)
def test_cw_cy_visa_cvv(hsm: Hsm, code: str, body: str, expected: str) -> None:
    assert run(hsm, code, body) == expected


# ============================================================================ MAC


def m6(mode: str, fmt: str, size: str, alg: str, pad: str, key_type: str, key: str, message: bytes,
       *, iv: str = "") -> bytes:  # fmt: skip
    return (mode + fmt + size + alg + pad + key_type + key + iv + f"{len(message):04X}").encode() + message


NOW = b"Now is the time for all "


@pytest.mark.parametrize(
    ("message", "pad", "mac"),
    [  # ISO/IEC 9797-1:2011 B.4, MAC algorithm 3, K||K' = 0123…3210
        (NOW, "1", "A1C72E74EA3FA9B6"),
        (NOW, "2", "E9086230CA3BE796"),
        (b"Now is the time for it", "1", "2E2B1428CC78254F"),
    ],
)
def test_m6_m8_iso9797_algorithm_3(hsm: Hsm, message: bytes, pad: str, mac: str) -> None:
    assert run(hsm, "M6", m6("0", "2", "1", "3", pad, "003", TAK, message)) == "00" + mac
    assert run(hsm, "M6", m6("0", "0", "0", "3", pad, "003", TAK, message)) == "00" + mac[:8]
    hexed = message.hex().upper().encode()
    assert run(hsm, "M6", m6("0", "1", "1", "3", pad, "003", TAK, hexed)) == "00" + mac
    assert run(hsm, "M8", m6("0", "2", "1", "3", pad, "003", TAK, message) + mac.encode()) == "00"
    flipped = f"{int(mac, 16) ^ 1:016X}"
    assert run(hsm, "M8", m6("0", "2", "1", "3", pad, "003", TAK, message) + flipped.encode()) == "01"
    assert run(hsm, "M8", m6("0", "2", "1", "3", pad, "003", TAK, message[:-1] + b"X") + mac.encode()) == "01"


def test_m6_multi_block_chaining_equals_single_block(hsm: Hsm) -> None:
    message = NOW * 3
    whole = run(hsm, "M6", m6("0", "0", "1", "3", "1", "003", TAK, message))
    iv = run(hsm, "M6", m6("1", "0", "1", "3", "1", "003", TAK, message[:24]))[2:]
    iv = run(hsm, "M6", m6("2", "0", "1", "3", "1", "003", TAK, message[24:48], iv=iv))[2:]
    assert run(hsm, "M6", m6("3", "0", "1", "3", "1", "003", TAK, message[48:], iv=iv)) == whole
    assert run(hsm, "M6", m6("1", "0", "1", "3", "1", "003", TAK, message[:23])) == "15"  # blocks are 8-byte multiples


def test_m6_algorithm_1_and_aes_cmac(hsm: Hsm) -> None:
    expected = to_hex(crypto.mac_iso9797_alg1(STANDARD_KEY, NOW, padding=1))
    assert run(hsm, "M6", m6("0", "0", "1", "1", "1", "003", TAK, NOW)) == "00" + expected
    # RFC 4493 example 2 (16-byte message) and example 1 (empty) with algorithm 5 (ours: CMAC).
    msg = H("6BC1BEE22E409F96E93D7E117393172A")
    assert run(hsm, "M6", m6("0", "0", "2", "5", "0", "003", CMAC_TAK, msg)) == "00070A16B46B4D4144F79BDD9DD04A287C"
    assert run(hsm, "M6", m6("0", "0", "2", "5", "0", "003", CMAC_TAK, b"")) == "00BB1D6929E95937287FA37D129B756746"
    assert run(hsm, "M6", m6("0", "0", "1", "5", "0", "003", CMAC_TAK, msg)) == "00070A16B46B4D4144"
    assert run(hsm, "M8", m6("0", "0", "2", "5", "0", "003", CMAC_TAK, msg) + b"070A16B46B4D4144F79BDD9DD04A287C") == "00"
    assert run(hsm, "M6", m6("0", "0", "2", "3", "1", "003", TAK, msg)) == "15"  # 32H MACs are CMAC's only
    assert run(hsm, "M6", m6("1", "0", "2", "5", "0", "003", CMAC_TAK, msg)) == "15"  # CMAC: mode 0 only


def test_m6_zak_and_key_type_separation(hsm: Hsm) -> None:
    zak = lmk.encrypt_key_under_lmk(STANDARD_KEY, "008")
    assert run(hsm, "M6", m6("0", "2", "1", "3", "1", "008", zak, NOW)) == "00A1C72E74EA3FA9B6"
    assert run(hsm, "M6", m6("0", "2", "1", "3", "1", "001", ZPK_U, NOW)) == "29"  # a ZPK is no MAC key
    assert run(hsm, "M6", m6("0", "2", "1", "3", "1", "00F", TAK, NOW)) == "28"  # no such key type
    assert run(hsm, "M6", m6("0", "2", "1", "3", "1", "008", TAK, NOW)) == "29"  # a TAK offered as ZAK


# ============================================================================ error codes


def test_key_type_separation_a_zpk_is_not_a_cvk_or_pvk(hsm: Hsm) -> None:
    assert run(hsm, "CW", ZPK_U + "4123456789012345;8701101") == "29"
    assert run(hsm, "CY", ZPK_U + "5614123456789012345;8701101") == "29"
    block = iso0("4524", PVV_ACCOUNT, clear(TPK, "002"))
    assert run(hsm, "DC", TPK + ZPK_U + block + "01" + PVV_ACCOUNT + "3" + "4021") == "29"
    assert run(hsm, "G0", ZPK_U + ZPK_G0 + "605" + KSN_1 + "1B9C1845EB993A7A0101401234567890") == "29"
    assert run(hsm, "CA", ZPK_U + ZPK + "12AE7A708F877571A90101" + ACCOUNT) == "29"  # a ZPK offered as TPK


def _bad_parity(encrypted: str, key_type: str) -> str:
    key = bytearray(clear(encrypted, key_type))
    key[5] ^= 0x01
    return lmk.encrypt_key_under_lmk(bytes(key), key_type, check_key_parity=False)


def test_parity_errors_10_source_and_11_destination(hsm: Hsm) -> None:
    body = "12AE7A708F877571A90101" + ACCOUNT
    assert run(hsm, "CA", _bad_parity(TPK_U, "002") + ZPK + body) == "10"
    assert run(hsm, "CA", TPK + _bad_parity(ZPK_U, "001") + body) == "11"
    assert run(hsm, "CW", _bad_parity(CVK, "402") + "4123456789012345;8701101") == "10"
    assert run(hsm, "FA", _bad_parity(ZMK, "000") + "2B930A07119F93A8") == "10"


@pytest.mark.parametrize(
    ("code", "body", "expected"),
    [
        ("CA", TPK + ZPK + "12AE7A708F877571A90101" + ACCOUNT[:-1], "15"),  # account 11 digits
        ("CA", TPK + ZPK + "12AE7A708F877571A90101" + ACCOUNT + "0", "15"),  # one character too many
        ("CA", TPK + ZPK + "12AE7A708F877571A9010155000002532X", "15"),
        ("CA", TPK + ZPK + "12AE7A708F877571A93401" + ACCOUNT, "23"),  # 34 (ISO 2): not a CA source
        ("CA", TPK + ZPK + "12AE7A708F877571A90199" + ACCOUNT, "23"),
        ("CA", TPK + ZPK + "04AE7A708F877571A90101" + ACCOUNT, "00"),  # a 4-digit PIN fits max 04
        ("CA", TPK + ZPK + "03AE7A708F877571A90101" + ACCOUNT, "15"),  # max PIN length below 4
        ("CA", "S" + TPK + ZPK + "12AE7A708F877571A90101" + ACCOUNT, "26"),  # key blocks: no
        ("CW", CVK[:-1] + "G4123456789012345;8701101", "15"),  # not hex
        ("M6", "0213100" + "3" + TAK + "0018" + "short", "15"),
    ],
)
def test_input_errors(hsm: Hsm, code: str, body: str, expected: str) -> None:
    assert run(hsm, code, body)[:2] == expected


def test_pin_length_errors_24(hsm: Hsm) -> None:
    tpk = clear(TPK, "002")
    five = iso0("12345", ACCOUNT, tpk)
    assert run(hsm, "CA", TPK + ZPK + "04" + five + "0101" + ACCOUNT) == "24"
    # A block whose length nibble says 3 digits.
    three = to_hex(tdes_ecb_encrypt(tpk, crypto.xor(H("03123FFFFFFFFFFF"), H("0000" + ACCOUNT))))
    assert run(hsm, "CA", TPK + ZPK + "12" + three + "0101" + ACCOUNT) == "24"
    # A block that does not decode (wrong control nibble): PIN block error 20.
    assert run(hsm, "CA", TPK + ZPK + "12" + iso0("1234", ACCOUNT, tpk) + "4701" + ACCOUNT) == "20"


def test_audit_events_hold_check_values_and_no_secrets(hsm: Hsm) -> None:
    secrets_hex = {to_hex(STANDARD_KEY), to_hex(clear(TPK, "002")), to_hex(clear(ZPK_U, "001"))}
    events = []
    for code, body in [
        ("CA", TPK + ZPK_U + "12AE7A708F877571A90101" + ACCOUNT),
        ("G0", BDK + ZPK_G0 + "605" + KSN_1 + "1B9C1845EB993A7A0101401234567890"),
        ("CW", CVK + "4123456789012345;8701101"),
        ("M6", m6("0", "2", "1", "3", "1", "003", TAK, NOW).decode()),
    ]:
        error, body_out, event = hsm.handle(Command(b"0000", code, body.encode()))
        assert error == "00"
        events.append(event)
    text = repr(events).upper()
    for secret in secrets_hex | {"1234", "4123456789012345", "401234567890", ACCOUNT, "AE7A708F877571A9",
                                 "1B9C1845EB993A7A", "NOW IS THE TIME"}:  # fmt: skip
        assert secret not in text
    assert events[0]["kcv"] == {"source": "0035BB", "destination": "6F1E3F"}
    assert events[1]["kcv"]["bdk"] == "08D7B4" and events[1]["ksn_counter"] == 1
    assert events[2]["kcv"] == {"cvk": "08D7B4"}
    assert dukpt.tdes_ksn_counter(KSN_1) == 1


# ---------------------------------------------------------------------------- key ceremony: Z4, Z6 (ours)

COMPONENTS = ("0123456789ABCDEFFEDCBA9876543210", "0101010101010101" * 2)  # XOR: 0022…, parity fixed → 0123…3210


def test_z4_forms_a_zmk_from_clear_components(hsm: Hsm) -> None:
    reply = run(hsm, "Z4", "000U2" + "".join(COMPONENTS))
    assert reply[:2] == "00" and reply[-6:] == "08D7B4"  # KCV of 0123456789ABCDEFFEDCBA9876543210
    assert clear(reply[2:35], "000").hex().upper() == "0123456789ABCDEFFEDCBA9876543210"
    assert run(hsm, "Z4", "000U1" + COMPONENTS[0])[:2] == "15"  # dual control: at least two
    assert run(hsm, "Z4", "000U2" + COMPONENTS[0] + "0000000000000000" * 2)[:2] == "10"  # component parity


def test_z6_exports_the_x9_24_ipek_under_the_kif_zmk(hsm: Hsm) -> None:
    zmk = run(hsm, "Z4", "000U2" + "".join(COMPONENTS))[2:35]
    bdk = lmk.encrypt_key_under_lmk(bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"), "009", "U")
    reply = run(hsm, "Z6", "T" + bdk + "FFFF9876543210E00000" + zmk + "X")
    assert reply[:2] == "00" and reply[-6:] == "AF8C07"  # the X9.24-1 Annex A IPEK's KCV
    ipek = lmk.decrypt_key_under_kek(reply[2:35], bytes.fromhex(COMPONENTS[0]), check_key_parity=False)
    assert ipek.hex().upper() == "6AC292FAA1315B4D858AB3A3D7D5933A"  # X9.24-1 Annex A IPEK
    aes = run(hsm, "Z6", "A" + AES_BDK + "1234567890123456" + zmk + "X")
    initial = lmk.decrypt_key_under_kek(aes[2:35], bytes.fromhex(COMPONENTS[0]), check_key_parity=False)
    assert initial.hex().upper() == "1273671EA26AC29AFA4D1084127652A1"  # X9.24-3 Annex B initial key
    # a TAK where the ZMK goes: decrypted under its own LMK pair it is found to be another key type (29)
    assert run(hsm, "Z6", "T" + bdk + "FFFF9876543210E00000" + TAK + "X")[:2] == "29"


@pytest.mark.parametrize("body, expected", [(b"0123456789abcdefABCDEF", "0123456789ABCDEFABCDEF"),
                                            (b"00ff", "00FF")])
def test_a_hex_field_is_read_upper_cased(body, expected):
    reader = FieldReader(body + b"Z")
    assert reader.hex(len(body), "key") == expected
    assert reader.pos == len(body)
    assert reader.take(1, "tail") == "Z"


@pytest.mark.parametrize("bad", [b"G", b"g", b"\x00", b" ", b"\xc1", b"-", b"/", b":", b"@", b"`"])
def test_a_hex_field_with_any_other_byte_is_refused_naming_the_field(bad):
    reader = FieldReader(b"12" + bad + b"4")
    with pytest.raises(ProtocolError) as refused:
        reader.hex(4, "PIN block")
    assert str(refused.value) == "PIN block: not hexadecimal"
    assert reader.pos == 0  # nothing consumed
    with pytest.raises(ProtocolError) as short:
        FieldReader(b"123").hex(4, "PIN block")
    assert str(short.value) == "PIN block: expected 4 characters"
