"""Dialect settings (switch/wire/codec.py, docs/host-interface.md §1 "Dialect settings"),
without sockets: how each loads and is refused, the translation between a dialect's fields
and the canonical ones parse_request reads (`to_canonical` / `from_canonical`), and where a
MAC is in encoded bytes (`mac_span`, `splice_mac`).

Expected values are written out by hand from the dialect files' documented choices; encoded
bytes are built with pyiso8583 directly, not with the codec under test.
"""

from __future__ import annotations

from pathlib import Path

import iso8583
import pytest

from switch.wire.codec import (WIRE_KEY, Dialect, DialectError, check_responses, decode_fields, dialects_dir,
                               encode_fields, from_canonical, load_dialect, mac_span, parse_request, splice_mac,
                               to_canonical, wire_decode)
from switch.wire.messages import Kind, Rc

DEFAULT = load_dialect("default")
ISO93 = load_dialect("iso93-text")
ASCII4 = load_dialect("ascii4-mac128")
PAN = "9410100000000011"


def dialect_text(name: str = "iso93-text") -> str:
    return (dialects_dir() / f"{name}.toml").read_text(encoding="utf-8")


def load_text(tmp_path: Path, name: str, text: str) -> Dialect:
    (tmp_path / f"{name}.toml").write_text(text, encoding="utf-8")
    return load_dialect(name, directory=tmp_path)


# ---------------------------------------------------------------------------- no settings: no translation

@pytest.mark.parametrize("name", ["default", "bcd-tpdu"])
def test_the_default_dialects_have_no_settings_and_keep_the_compiled_codec(name):
    d = load_dialect(name)
    assert (d.settings, d.compiled is not None) == (None, True)
    fields = {"t": "0200", "12": "120000", "39": "5", "42": "  X", "53": "ffff9876540000200001", WIRE_KEY: "12:x"}
    assert to_canonical(fields, d) is fields and from_canonical(fields, d) is fields


@pytest.mark.parametrize("name", ["iso93-text", "ascii4-mac128"])
def test_the_terminal_dialects_keep_the_compiled_codec_and_carry_every_response(name):
    d = load_dialect(name)
    assert d.compiled is not None
    assert check_responses(d) is None


# ---------------------------------------------------------------------------- iso93-text both ways

ISO93_WIRE = {"t": "0200", "2": PAN, "3": "000000", "4": "000000020000", "7": "0720030000", "11": "000002",
              "12": "190720120000", "22": "051", "41": "T0000001", "42": "      NAMDONG01", "49": "410",
              "53": "ffff9876540000200001", "64": "0011aabbccddeeff"}


def test_iso93_text_request_becomes_the_canonical_fields():
    assert to_canonical(ISO93_WIRE, ISO93) == {
        "t": "0200", "2": PAN, "3": "000000", "4": "000000020000", "7": "0720030000", "11": "000002",
        "12": "120000", "13": "0720", "22": "051", "41": "T0000001", "42": "NAMDONG01      ", "49": "410",
        "53": "FFFF9876540000200001", "64": "0011AABBCCDDEEFF", WIRE_KEY: "12:190720120000,13:"}


def test_iso93_text_canonical_request_parses_as_the_default_dialect_one():
    req = parse_request(to_canonical(ISO93_WIRE, ISO93))
    assert (req.kind, req.terminal, req.merchant, req.local_time, req.local_date, req.ksn, req.mac) == (
        Kind.PURCHASE, "T0000001", "NAMDONG01      ", "120000", "0720", "FFFF9876540000200001", "0011AABBCCDDEEFF")


def test_iso93_text_response_echoes_de12_and_pads_as_the_request_came():
    canonical = to_canonical(ISO93_WIRE, ISO93)
    response = {"t": "0210", **{k: canonical[k] for k in ("2", "3", "4", "7", "11", "12", "13", "41", "42", "49")},
                WIRE_KEY: canonical[WIRE_KEY], "39": "51"}
    assert from_canonical(response, ISO93) == {
        "t": "0210", "2": PAN, "3": "000000", "4": "000000020000", "7": "0720030000", "11": "000002",
        "12": "190720120000", "41": "T0000001", "42": "      NAMDONG01", "49": "410", "39": "051"}


def test_iso93_text_response_code_is_left_padded_with_zero_and_read_back_the_same_way():
    assert [from_canonical({"39": rc.value}, ISO93)["39"] for rc in (Rc.APPROVED, Rc.INSUFFICIENT_FUNDS,
                                                                     Rc.HSM_UNAVAILABLE, Rc.SYSTEM_ERROR)] == [
        "000", "051", "091", "096"]
    assert [to_canonical({"39": code}, ISO93)["39"] for code in ("000", "051", "151", "51")] == [
        "00", "51", "151", "51"]  # not "0" + a code: as it came


def test_a_de13_the_request_carried_is_echoed_and_one_taken_from_de12_is_not():
    with13 = to_canonical({**ISO93_WIRE, "13": "0719"}, ISO93)
    assert (with13["13"], with13[WIRE_KEY]) == ("0719", "12:190720120000")
    assert from_canonical({"t": "0210", "12": with13["12"], "13": with13["13"], WIRE_KEY: with13[WIRE_KEY]},
                          ISO93) == {"t": "0210", "12": "190720120000", "13": "0719"}


def test_values_not_in_the_translated_shape_are_left_as_they_came():
    """A DE12 of another length is not split (parse_request blames DE12); fields already as
    the dialect has them (a request that could not be decoded, echoed as read) come back the
    same through from_canonical."""
    odd = to_canonical({"t": "0200", "12": "1907201200", "42": "               "}, ISO93)
    assert odd == {"t": "0200", "12": "1907201200", "42": " " * 15}
    wire = {"t": "0210", "12": "190720120000", "39": "030", "41": "T0000001", "42": "      NAMDONG01"}
    assert from_canonical(wire, ISO93) == wire


def test_iso93_text_hex_mac_is_found_and_spliced_in_its_form():
    raw = bytes(iso8583.encode(dict(ISO93_WIRE), ISO93.spec)[0])
    assert raw[-16:] == b"0011aabbccddeeff"
    assert mac_span(raw, ISO93) == (raw[:-16], "0011AABBCCDDEEFF")
    assert splice_mac(raw, "8899aabbccddeeff", ISO93) == raw[:-16] + b"8899AABBCCDDEEFF"
    not_hex = raw[:-1] + b"g"
    assert mac_span(not_hex, ISO93) is None


# ---------------------------------------------------------------------------- ascii4-mac128

def test_ascii4_mac128_de7_binary_ksn_and_de128_mac():
    wire = {"t": "0200", "7": "190720030000", "11": "000002", "41": "T0000001",
            "53": "FFFF9876540000200001", "128": "0011223344556677"}
    raw = bytes(iso8583.encode(dict(wire), ASCII4.spec)[0])
    assert raw[-8:] == bytes.fromhex("0011223344556677")
    assert raw[raw.index(b"T0000001") + 8:][:12] == b"10" + bytes.fromhex("FFFF9876540000200001")  # 10 bytes
    fields = decode_fields(raw, ASCII4)
    assert {k: v for k, v in fields.items() if k not in ("p", "1")} == {
        "t": "0200", "7": "0720030000", "11": "000002", "41": "T0000001", "53": "FFFF9876540000200001",
        "128": "0011223344556677", WIRE_KEY: "7:190720030000"}
    assert mac_span(raw, ASCII4) == (raw[:-8], "0011223344556677")
    # the canonical MAC placeholder of a message without a secondary field goes to DE128
    response = encode_fields({"t": "0810", "7": fields["7"], "11": "000002", "39": "00", "41": "T0000001",
                              "64": "0" * 16, WIRE_KEY: fields[WIRE_KEY]}, ASCII4)
    assert {k: v for k, v in wire_decode(response, ASCII4).items() if k not in ("p", "1")} == {
        "t": "0810", "7": "190720030000", "11": "000002", "39": "00", "41": "T0000001", "128": "0" * 16}


def test_a_mac_that_is_not_the_dialects_last_field_is_not_found():
    # DE64 in a dialect whose MAC is DE128
    in_64 = bytes(iso8583.encode({"t": "0200", "7": "190720030000", "11": "000002", "64": "00" * 8}, ASCII4.spec)[0])
    assert mac_span(in_64, ASCII4) is None
    # the default dialect: DE64 followed by DE90 (its MAC is DE128 when the secondary bitmap is there)
    followed = bytes(iso8583.encode({"t": "0400", "11": "000002", "64": "00" * 8, "90": "0" * 42}, DEFAULT.spec)[0])
    assert mac_span(followed, DEFAULT) is None
    last = bytes(iso8583.encode({"t": "0400", "11": "000002", "90": "0" * 42, "128": "AB" * 8}, DEFAULT.spec)[0])
    assert mac_span(last, DEFAULT) == (last[:-8], "AB" * 8)
    assert mac_span(b"0200", DEFAULT) is None  # shorter than a MAC


# ---------------------------------------------------------------------------- a KSN in another field

def test_a_ksn_and_mac_in_other_fields_move_to_de53_and_de64_and_back(tmp_path):
    text = dialect_text("default").replace(
        '[fields."h"]', '[mac]\nfield = 96\nform = "binary"\n\n[ksn]\nfield = 62\nform = "hex"\n\n[fields."h"]', 1)
    d = load_text(tmp_path, "moved", text)
    canonical = to_canonical({"t": "0200", "62": "ffff9876540000200001", "96": "0011223344556677"}, d)
    assert canonical == {"t": "0200", "53": "FFFF9876540000200001", "64": "0011223344556677"}
    assert from_canonical({**canonical, "t": "0210"}, d) == {
        "t": "0210", "62": "FFFF9876540000200001", "96": "0011223344556677"}


# ---------------------------------------------------------------------------- refused at load

def refused(tmp_path: Path, name: str, old: str, new: str, *, base: str = "iso93-text") -> str:
    text = dialect_text(base)
    assert text.count(old) >= 1, old
    with pytest.raises(ValueError) as err:
        load_text(tmp_path, name, text.replace(old, new, 1))
    assert "\n" not in str(err.value)
    return str(err.value)


def test_each_bad_setting_is_refused_in_one_line_naming_the_dialect_and_the_setting(tmp_path):
    assert refused(tmp_path, "w4", "width = 3", "width = 4") == "dialect w4: response_code.width: must be 2 or 3, got 4"
    assert refused(tmp_path, "side", 'side = "left"\n\n[dates]', 'side = "middle"\n\n[dates]') == (
        "dialect side: response_code.side: must be one of 'left', 'right', got 'middle'")
    assert refused(tmp_path, "layout", '"12" = "YYMMDDhhmmss"', '"12" = "DDMMYYhhmmss"') == (
        "dialect layout: dates.12: must be one of 'hhmmss', 'YYMMDDhhmmss', 'YYYYMMDDhhmmss', got 'DDMMYYhhmmss'")
    assert refused(tmp_path, "de7", '"12" = "YYMMDDhhmmss"', '"7" = "YYMMDDhhmmss"') == (
        "dialect de7: dates.7: YYMMDDhhmmss needs fields.7 fixed at 12 characters, not 10")
    assert refused(tmp_path, "de2pad", '[pad."41"]', '[pad."2"]') == (
        "dialect de2pad: pad.2: fields.2 must be fixed-length text (len_type 0, data_enc not 'b')")
    assert refused(tmp_path, "pad39", '[pad."41"]', '[pad."39"]') == "dialect pad39: pad.39: DE39 is padded by response_code"
    assert refused(tmp_path, "char", 'char = " "', 'char = "  "') == (
        "dialect char: pad.41.char: must be one character, got '  '")
    assert refused(tmp_path, "padkey", 'strip = true', 'strip = true\nwidth = 9') == (
        "dialect padkey: pad.41.width: unknown setting; known: char, side, strip")
    assert refused(tmp_path, "macbin", 'form = "hex"\ncovers', 'form = "binary"\ncovers') == (
        "dialect macbin: mac.form: a binary MAC needs fields.64 fixed at 8 bytes, data_enc b")
    assert refused(tmp_path, "covers", 'covers = "preceding"', 'covers = "all"') == (
        "dialect covers: mac.covers: must be one of 'preceding', got 'all'")
    assert refused(tmp_path, "macno", 'field = "auto"', "field = 200") == (
        "dialect macno: mac.field: must be a field number 2..128, got 200")
    assert refused(tmp_path, "ksnbin", 'field = 53\nform = "hex"', 'field = 53\nform = "binary"') == (
        "dialect ksnbin: ksn.form: a binary KSN needs fields.53 with data_enc b")
    assert refused(tmp_path, "table", "[ksn]", "[kns]") == (
        "dialect table: unknown table 'kns'; known: framing, fields, response_code, dates, pad, mac, ksn")


def test_a_three_wide_de39_is_refused_at_start_without_settings_and_served_with_them(tmp_path):
    """The default dialect with DE39 `an 3` cannot carry "00" (tests/test_core_defects.py
    keeps that refusal); the same file with a response_code setting carries every code."""
    text = dialect_text("default").replace('max_len = 2\ndesc = "Response Code"', 'max_len = 3\ndesc = "Response Code"')
    bare = load_text(tmp_path, "bare", text)
    with pytest.raises(DialectError, match=r"^dialect bare: DE39 cannot carry the \d{4} response \(DE39 = '00'\): "
                                           r"Field data is 2 bytes, expecting 3$"):
        check_responses(bare)
    padded = load_text(tmp_path, "padded", text.replace(
        '[fields."h"]', '[response_code]\nwidth = 3\npad = "0"\nside = "right"\n\n[fields."h"]', 1))
    assert check_responses(padded) is None
    assert from_canonical({"39": "51"}, padded) == {"39": "510"}
    assert to_canonical({"39": "510"}, padded) == {"39": "51"}
