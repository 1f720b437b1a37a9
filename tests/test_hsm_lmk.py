"""The variant LMK: the public test LMK, key types, key schemes, keys under a ZMK/TMK.

Interoperability vectors come from ThalesSim's published host-command tests
(nickntg/thalessimulatorlibrary ThalesCore.Tests/HostCommandTests.vb), which run against
the same public test LMK: a key that ThalesSim encrypted must decrypt here to the clear key
whose check value ThalesSim returned, and our encryptions must equal ThalesSim's.
"""

from __future__ import annotations

import pytest

from hsm_mock import cardverify, crypto, dukpt, lmk, pinblock
from hsm_mock.crypto import KeyParityError, key_check_value, to_hex
from hsm_mock.lmk import (
    KEY_TYPES,
    TEST_LMK,
    LmkError,
    VariantLmk,
    decrypt_key_under_kek,
    decrypt_key_under_lmk,
    encrypt_key_under_kek,
    encrypt_key_under_lmk,
)

H = bytes.fromhex
STANDARD_BDK = H("0123456789ABCDEFFEDCBA9876543210")  # X9.24-1 test BDK, KCV 08D7B4


# ============================================================================ the test LMK


def test_public_test_lmk_pairs_as_published() -> None:
    # docs/hsm.md §3, the test LMK (also ThalesSim LMKStorage / StorageTests).
    assert TEST_LMK.pair("00-01") == H("01010101010101017902CD1FD36EF8BA")
    assert TEST_LMK.pair("04-05") == H("40404040404040405151515151515151")
    assert TEST_LMK.pair("14") == H("E0E0010101010101F1F1010101010101")
    assert TEST_LMK.pair("16-17") == H("1C587F1C13924FEF0101010101010101")
    assert TEST_LMK.pair("38-39") == H("01010101010101010101010101010101")
    assert len(TEST_LMK.pairs) == 20 and all(crypto.has_odd_parity(p) for p in TEST_LMK.pairs)
    with pytest.raises(LmkError):
        TEST_LMK.pair("05-06")


@pytest.mark.parametrize(
    ("kt_code", "expected"),
    [
        # thalessimulatorlibrary StorageTests.VerifyVariants: the variant is XORed into byte 0.
        ("000", "40404040404040405151515151515151"),
        ("100", "E6404040404040405151515151515151"),
        ("402", "3EE0010101010101F1F1010101010101"),
        ("109", "BC1A1A1A1A1A1A1A1C1C1C1C1C1C1C1C"),
        ("209", "401A1A1A1A1A1A1A1C1C1C1C1C1C1C1C"),
        ("309", "701A1A1A1A1A1A1A1C1C1C1C1C1C1C1C"),
    ],
)
def test_key_type_variant_is_xored_into_byte_0(kt_code: str, expected: str) -> None:
    assert to_hex(lmk.lmk_variant_key(TEST_LMK, kt_code)) == expected


def test_key_type_table_maps_vll_to_pair_and_variant() -> None:
    # docs/hsm.md §8, variant LMK: 00→04-05, 01→06-07, 02→14-15, 03→16-17, 08→26-27, 09→28-29, 0A→30-31.
    expected = {
        "000": ("ZMK", "04-05", 0), "001": ("ZPK", "06-07", 0), "002": ("TPK/TMK/PVK", "14-15", 0),
        "003": ("TAK", "16-17", 0), "008": ("ZAK", "26-27", 0), "009": ("BDK type-1", "28-29", 0),
        "00A": ("ZEK", "30-31", 0), "402": ("CVK/CSCK", "14-15", 4),
    }  # fmt: skip
    for code, (name, pair, variant) in expected.items():
        kt = lmk.resolve_key_type(code)
        assert (kt.name, kt.lmk_pair, kt.variant) == (name, pair, variant)
    assert lmk.resolve_key_type("00a") is KEY_TYPES["00A"]
    for bad in ("005", "0F0", "A01", "01", None):
        with pytest.raises(LmkError) as err:
            lmk.resolve_key_type(bad)  # type: ignore[arg-type]
        assert err.value.code == "28"


def test_lmk_check_value_conventions() -> None:
    # ThalesSim convention: the NC answer of ThalesSim-based simulators with the test LMK,
    # widely published as `0000ND007B44AC1DDEE2A94B0007-E000`.
    assert lmk.lmk_check_value() == "7B44AC1DDEE2A94B"
    # "kcv": 6-digit KCV of pair 00-01 padded like a real payShield's NC field.
    assert lmk.lmk_check_value(convention="kcv") == key_check_value(TEST_LMK.pairs[0]) + "0" * 10
    assert lmk.lmk_check_value(convention="kcv") == "7D22270000000000"
    with pytest.raises(LmkError):
        lmk.lmk_check_value(convention="other")


def test_lmk_file_round_trip_and_validation(tmp_path) -> None:
    path = tmp_path / "lmk.txt"
    path.write_text("# test LMK\n" + "\n".join(lmk.TEST_LMK_HEX) + "\n", encoding="ascii")
    assert VariantLmk.load(path) == TEST_LMK
    with pytest.raises(LmkError) as err:
        VariantLmk.from_text("\n".join(lmk.TEST_LMK_HEX[:19]))
    assert err.value.code == "13"
    with pytest.raises(LmkError) as err:
        VariantLmk.from_text("\n".join(("00" * 16,) + lmk.TEST_LMK_HEX[1:]))  # even parity
    assert err.value.code == "13"
    other = VariantLmk.from_text("\n".join(reversed(lmk.TEST_LMK_HEX)))
    clear = crypto.fix_parity(H("00112233445566778899AABBCCDDEEFF"))
    assert encrypt_key_under_lmk(clear, "001", lmk=other) != encrypt_key_under_lmk(clear, "001")
    assert decrypt_key_under_lmk(encrypt_key_under_lmk(clear, "001", lmk=other), "001", lmk=other) == clear


# ============================================================================ schemes


CLEAR_8 = crypto.fix_parity(H("0123456789ABCDEF"))
CLEAR_16 = crypto.fix_parity(H("0123456789ABCDEFFEDCBA9876543210"))
CLEAR_24 = crypto.fix_parity(H("0123456789ABCDEFFEDCBA987654321089ABCDEF01234567"))
CLEARS = {"Z": CLEAR_8, "U": CLEAR_16, "X": CLEAR_16, "T": CLEAR_24, "Y": CLEAR_24}


@pytest.mark.parametrize("kt_code", sorted(KEY_TYPES))
@pytest.mark.parametrize("scheme", ["Z", "U", "T", "X", "Y"])
def test_every_key_type_and_scheme_round_trips(kt_code: str, scheme: str) -> None:
    clear = CLEARS[scheme]
    encrypted = encrypt_key_under_lmk(clear, kt_code, scheme)
    if scheme == "Z":
        assert len(encrypted) == 16  # single length: no scheme tag on output
    else:
        assert encrypted[0] == scheme and len(encrypted) == 1 + 2 * len(clear)
    assert decrypt_key_under_lmk(encrypted, kt_code) == clear
    if scheme == "Z":
        assert decrypt_key_under_lmk("Z" + encrypted, kt_code) == clear


def test_default_schemes_by_length() -> None:
    assert len(encrypt_key_under_lmk(CLEAR_8, "001")) == 16
    assert encrypt_key_under_lmk(CLEAR_16, "001")[0] == "U"
    assert encrypt_key_under_lmk(CLEAR_24, "001")[0] == "T"
    assert encrypt_key_under_kek(CLEAR_16, CLEAR_16)[0] == "X"
    assert encrypt_key_under_kek(CLEAR_24, CLEAR_16)[0] == "Y"


def test_different_key_types_give_different_ciphertexts() -> None:
    for scheme in ("Z", "U", "T"):
        clear = CLEARS[scheme]
        bodies = {code: encrypt_key_under_lmk(clear, code, scheme) for code in KEY_TYPES}
        assert len(set(bodies.values())) == len(KEY_TYPES), scheme
    # Same pair, different variant (TPK/PVK 002 vs CVK 402) and different schemes differ too.
    assert encrypt_key_under_lmk(CLEAR_16, "002") != encrypt_key_under_lmk(CLEAR_16, "402")
    assert encrypt_key_under_lmk(CLEAR_16, "001", "U")[1:] != encrypt_key_under_lmk(CLEAR_16, "001", "X")[1:]
    # ... and a key decrypted under the wrong type is a different key (a ZPK is not a CVK).
    as_zpk = encrypt_key_under_lmk(CLEAR_16, "001")
    assert decrypt_key_under_lmk(as_zpk, "402", check_key_parity=False) != CLEAR_16


def test_u_scheme_halves_use_the_a6_and_5a_scheme_variants() -> None:
    # docs/hsm.md §8, variant LMK: U = left half under LMK' with byte 8 XOR A6, right half with byte 8 XOR 5A.
    pair = bytearray(TEST_LMK.pair("06-07"))
    left_key, right_key = bytearray(pair), bytearray(pair)
    left_key[8] ^= 0xA6
    right_key[8] ^= 0x5A
    expected = crypto.tdes_ecb_encrypt(bytes(left_key), CLEAR_16[:8])
    expected += crypto.tdes_ecb_encrypt(bytes(right_key), CLEAR_16[8:])
    assert encrypt_key_under_lmk(CLEAR_16, "001", "U") == "U" + to_hex(expected)


def test_parity_errors_are_detected() -> None:
    bad = bytearray(CLEAR_16)
    bad[3] ^= 0x01
    with pytest.raises(KeyParityError):
        encrypt_key_under_lmk(bytes(bad), "001")
    encrypted = encrypt_key_under_lmk(bytes(bad), "001", check_key_parity=False)
    with pytest.raises(KeyParityError) as err:
        decrypt_key_under_lmk(encrypted, "001")
    assert err.value.code == "10"
    with pytest.raises(KeyParityError) as err:
        decrypt_key_under_lmk(encrypted, "001", parity_error_code="11")
    assert err.value.code == "11"
    assert decrypt_key_under_lmk(encrypted, "001", check_key_parity=False) == bytes(bad)
    # An AES key (no DES parity) can be carried when the caller says so.
    aes_key = H("FEDCBA9876543210F1F1F1F1F1F1F1F0")
    carried = encrypt_key_under_lmk(aes_key, "009", check_key_parity=False)
    assert decrypt_key_under_lmk(carried, "009", check_key_parity=False) == aes_key


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda: encrypt_key_under_lmk(CLEAR_16, "001", "T"), "27"),
        (lambda: encrypt_key_under_lmk(CLEAR_16, "001", "S"), "26"),
        (lambda: encrypt_key_under_lmk(CLEAR_16[:12], "001"), "27"),
        (lambda: encrypt_key_under_lmk(CLEAR_16, "0Z1"), "28"),
        (lambda: decrypt_key_under_lmk("U0123456789ABCDEF", "001"), "27"),
        (lambda: decrypt_key_under_lmk("U0123456789ABCDEFFEDCBA987654321G", "001"), "15"),
        (lambda: decrypt_key_under_lmk("0123456789ABCDEFFE", "001"), "15"),
        (lambda: decrypt_key_under_lmk("", "001"), "15"),
        (lambda: encrypt_key_under_kek(CLEAR_16, CLEAR_16[:10]), "27"),
    ],
)
def test_bad_inputs_raise_codes_without_key_material(call, code: str) -> None:
    with pytest.raises(LmkError) as err:
        call()
    assert err.value.code == code
    text = str(err.value).upper()
    assert "0123456789ABCDEF" not in text and to_hex(CLEAR_16) not in text


def test_key_field_length_and_split() -> None:
    assert lmk.key_field_length("U1457FF6A...") == 33
    assert lmk.key_field_length("T...") == 49
    assert lmk.key_field_length("X...") == 33
    assert lmk.key_field_length("Z...") == 17
    assert lmk.key_field_length("0406FBB2...") == 16
    assert lmk.key_field_length("0406FBB2...", bare_hex_digits=32) == 32
    assert lmk.split_key("U" + "00" * 16) == ("U", bytes(16))
    assert lmk.split_key("00" * 16) == ("X", bytes(16))
    assert lmk.split_key("00" * 24) == ("Y", bytes(24))


# ============================================================================ ThalesSim interop


@pytest.mark.parametrize(
    ("encrypted", "kt_code", "kcv16"),
    [
        # ThalesSim HostCommandTests.TestGenerateCheckValueBU (BU with key types 02, 00, 00, 01).
        ("0406FBB23A5214DF", "002", "0035BBE340A4B763"),
        ("ACE9B8A0BE50C09B", "000", "4BD5E2482582C2C4"),
        ("U93CB819F8FEE4F78BF9C4CDD84750DB1", "000", "B70AD25C94548822"),
        ("U1EF828AA8F6B80EB83E19FBC373F3A85", "001", "6F1E3F74F826B7EB"),
        # TestTranslateZPKFromZMKToLMK (FA result) and TestTranslateTMKFromZMKToLMK.
        ("BAB32D775A38E4AB", "001", "73936E441E46819D"),
    ],
)
def test_thalessim_keys_decrypt_to_the_published_check_values(encrypted: str, kt_code: str, kcv16: str) -> None:
    assert key_check_value(decrypt_key_under_lmk(encrypted, kt_code), length=16) == kcv16


def test_thalessim_cvk_bdk_and_pvk_decrypt_to_the_standard_test_keys() -> None:
    # CW/CY: CVK U9B49… (402) yields CVV 561 for 4123456789012345/8701/101, i.e. the Visa
    # test CVK pair; the legacy form is two single-length halves under 402.
    cvk = decrypt_key_under_lmk("U9B4934384B19946B040CD702B4D58145", "402")
    assert cvk == STANDARD_BDK
    halves = decrypt_key_under_lmk("0A61E674E88C6A7E", "402") + decrypt_key_under_lmk("EABC38C2B2BB492F", "402")
    assert halves == cvk
    assert cardverify.visa_cvv(cvk, "4123456789012345", "8701", "101") == "561"
    assert cardverify.visa_cvv(halves, "4999988887777", "9105", "111") == "649"
    # CI/CK/CM: the BDK U8E3D… (009) is the X9.24-1 test BDK (KCV 08D7B4).
    bdk = decrypt_key_under_lmk("U8E3D3E2FD5919657F05A1AA90D32A014", "009")
    assert bdk == STANDARD_BDK and key_check_value(bdk) == "08D7B4"
    # DG: a PVK in the X scheme under the LMK (X367…) decrypts like its bare form.
    assert decrypt_key_under_lmk("X367930344805B1FAD6146EF4ED7502B3", "002") == decrypt_key_under_lmk(
        "367930344805B1FAD6146EF4ED7502B3", "002"
    )
    pvk = decrypt_key_under_lmk("X367930344805B1FAD6146EF4ED7502B3", "002")
    assert to_hex(pvk) == "C8199237EA5857BC40EF9DA2B5E96BBF"  # TestData.txt PVK9


def test_thalessim_fa_import_zpk_from_zmk() -> None:
    # TestTranslateZPKFromZMKToLMK: ZMK U1457…, ZPK 2B930A07119F93A8 under it → BAB32D775A38E4AB, KCV 73936E.
    zmk = decrypt_key_under_lmk("U1457FF6ADF6250C66C368416B4C9D383", "000")
    zpk = decrypt_key_under_kek("2B930A07119F93A8", zmk)
    assert encrypt_key_under_lmk(zpk, "001") == "BAB32D775A38E4AB"
    assert key_check_value(zpk) == "73936E"
    # GC, the reverse: ZPK from under the LMK to under the ZMK.
    assert encrypt_key_under_kek(decrypt_key_under_lmk("BAB32D775A38E4AB", "001"), zmk) == "2B930A07119F93A8"


def test_thalessim_a6_import_with_variant_scheme_under_zmk() -> None:
    # TestImportKey: ZMK U7197…, ZPK U482C… (U scheme under the ZMK) → U0E07…C9DE, KCV ABDEBC.
    zmk = decrypt_key_under_lmk("U71979DEB8587E2734F1E99D5DCAEF9AC", "000")
    zpk = decrypt_key_under_kek("U482C4E722BB0CF1845E1E5BD16310119", zmk)
    assert encrypt_key_under_lmk(zpk, "001", "U") == "U0E07CDC0161A0DE3B5AA44DF227EC9DE"
    assert key_check_value(zpk) == "ABDEBC"


def test_thalessim_a8_export_in_u_and_x_schemes() -> None:
    # TestExportKey (A8, scheme U) and TestTranslateTMKFromZMKToLMK (FC, scheme X): TPK U8463…
    # under ZMK U1457… → U2C62…7639 and XF7D5…E6EE, KCV 070753.
    zmk = decrypt_key_under_lmk("U1457FF6ADF6250C66C368416B4C9D383", "000")
    tpk = decrypt_key_under_lmk("U8463435FC4B4DAA0C49025272C29B12C", "002")
    assert encrypt_key_under_kek(tpk, zmk, "U") == "U2C62A23D001B97412950CD8BE66C7639"
    assert encrypt_key_under_kek(tpk, zmk, "X") == "XF7D53991678347EFB3026882F724E6EE"
    assert decrypt_key_under_kek("XF7D53991678347EFB3026882F724E6EE", zmk) == tpk
    assert key_check_value(tpk) == "070753"


def test_thalessim_cvk_and_zek_zak_under_a_single_length_zmk() -> None:
    # TestTranslateCVKFromZMKToLMK (AW): single-length ZMK 4ED06495741C280C, CVK halves under it.
    zmk = decrypt_key_under_lmk("4ED06495741C280C", "000")
    cvk = decrypt_key_under_kek("AB88EE604522372F", zmk) + decrypt_key_under_kek("DAA27A67A8CDADFA", zmk)
    assert encrypt_key_under_lmk(cvk[:8], "402") + encrypt_key_under_lmk(cvk[8:], "402") == (
        "0A61E674E88C6A7EEABC38C2B2BB492F"
    )
    assert key_check_value(cvk) == "08D7B4"
    # TestTranslateZEKZAKFromZMKToLMK (FK): a ZEK (00A) and a ZAK (008) in the X scheme.
    zek = decrypt_key_under_kek("X2C0E3EE7A5EFFA00C3CD721FE6E66B82", zmk)
    assert encrypt_key_under_lmk(zek, "00A", "U") == "U913248D2781448EB99849CFFE39768AD"
    assert key_check_value(zek) == "468318"
    zak = decrypt_key_under_kek("XFF85E926874B18C660410136CE46BD48", zmk)
    assert encrypt_key_under_lmk(zak, "008", "U") == "U9564EC9D49DE4E59BE82FE34B5CB1786"
    assert key_check_value(zak, length=16) == "4BF61EA8437E3EDA"


def test_thalessim_pin_translation_tpk_to_zpk() -> None:
    # TestTranslatePINFromTPKToZMK (CA) and TestTranslatePINFromLMKToZPK (JG): ISO-0 (Thales
    # 01) blocks for PIN 1234, account 550000025321.
    tpk = decrypt_key_under_lmk("0406FBB23A5214DF", "002")
    zpk = decrypt_key_under_lmk("BAB32D775A38E4AB", "001")
    clear = crypto.tdes_ecb_decrypt(tpk, H("AE7A708F877571A9"))
    assert pinblock.decode_iso0(clear, account="550000025321") == "1234"
    assert to_hex(crypto.tdes_ecb_encrypt(zpk, clear)) == "E98FFDA17099AF55"
    fresh = pinblock.encode_iso0("1234", account="550000025321")
    assert to_hex(crypto.tdes_ecb_encrypt(zpk, fresh)) == "E98FFDA17099AF55"
    tpk2 = decrypt_key_under_lmk("U8463435FC4B4DAA0C49025272C29B12C", "002")
    zpk2 = decrypt_key_under_lmk("U1EF828AA8F6B80EB83E19FBC373F3A85", "001")
    clear2 = crypto.tdes_ecb_decrypt(tpk2, H("6428EB94035AF53B"))
    assert to_hex(crypto.tdes_ecb_encrypt(zpk2, clear2)) == "91DDDA0A7C12CFAA"


@pytest.mark.parametrize(
    ("ksn", "epb"),
    [
        # TestTranslatePINFromDukptoZPK (CI): three X9.24-1 Annex A rows, one answer.
        ("FFFF9876543210E00001", "1B9C1845EB993A7A"),
        ("FFFF9876543210E00010", "D5D9638559EF53D6"),
        ("FFFF9876543210EFFC00", "DEFC6F09F8927B71"),
    ],
)
def test_thalessim_dukpt_pin_translation_to_zpk(ksn: str, epb: str) -> None:
    bdk = decrypt_key_under_lmk("U8E3D3E2FD5919657F05A1AA90D32A014", "009")
    zpk = decrypt_key_under_lmk("U9D961F6AF1D24B38AB37B320022FF57D", "001")
    pin_key = dukpt.tdes_working_key(bdk, ksn, dukpt.TdesUsage.PIN)
    clear = crypto.tdes_ecb_decrypt(pin_key, H(epb))
    assert pinblock.decode_iso0(clear, account="401234567890") == "1234"
    assert to_hex(crypto.tdes_ecb_encrypt(zpk, clear)) == "7D26134E85E7DADF"


def test_thalessim_dukpt_pin_verification_with_ibm_offset() -> None:
    # TestValidateDukptPinWithIBMAlgorithm (CK): PVK 56C1DC7F3A899043 (single, 002),
    # decimalisation table 0123456789012345, validation data 0004012345N9, offset 9252.
    pvk = decrypt_key_under_lmk("56C1DC7F3A899043", "002")
    data = cardverify.expand_validation_data("0004012345N9", "401234567890")
    pin_key = dukpt.tdes_working_key(STANDARD_BDK, "FFFF9876543210E00001", dukpt.TdesUsage.PIN)
    pin = pinblock.decode_iso0(crypto.tdes_ecb_decrypt(pin_key, H("1B9C1845EB993A7A")), account="401234567890")
    assert cardverify.ibm3624_offset(pvk, data, "0123456789012345", pin) == "9252"
    assert cardverify.verify_ibm3624_offset(pvk, data, "0123456789012345", pin, "9252")


def test_the_switchs_test_keys_are_the_published_keys_under_the_test_lmk() -> None:
    """switch/authorize/security.py holds the certification keys only encrypted; they decrypt, under
    the public test LMK, to the published X9.24 test keys."""
    from switch.authorize.security import TEST_KEYS_UNDER_TEST_LMK as keys

    assert decrypt_key_under_lmk(keys["dukpt-tdes"], "009").hex().upper() == "0123456789ABCDEFFEDCBA9876543210"
    assert decrypt_key_under_lmk(keys["dukpt-aes"], "009", check_key_parity=False).hex().upper() \
        == "FEDCBA9876543210F1F1F1F1F1F1F1F1"
    assert decrypt_key_under_lmk(keys["mac"], "003").hex().upper() == "0123456789ABCDEFFEDCBA9876543210"
