"""The compiled codec (switch/wire/codec.py `_Compiled`) against pyiso8583, the reference.

For every input, wire_decode / wire_encode (decode_fields / encode_fields before a dialect's
settings translate the fields, docs/host-interface.md §1 "Dialect settings"; the same
functions for a dialect without settings) must give exactly what pyiso8583 gives: the
same dict, the same bytes, or the same error (class, field, message). Inputs are generated
from the dialect's own spec (valid messages), then broken in the ways a terminal breaks them.
Values take every length a field allows (0 … max_len of each LLVAR/LLLVAR field, so LLLVAR
lengths past 100 up to 999), at random in whole messages and exhaustively one field at a
time for each shipped dialect (config/dialects/*.toml), with the compiled path itself
(_fast_encode / _fast_decode, no fallback) on valid input; one unit too long (or short) must
fail exactly as pyiso8583 fails, the compiled path handing it over rather than accepting it.
"""

from __future__ import annotations

import iso8583
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switch.wire.codec import FIELD_NOT_IN_DIALECT, DecodeError, Dialect, EncodeError, _fast_decode, _fast_encode, \
    _Fallback, decode_fields, dialects_dir, encode_fields, load_dialect, wire_decode, wire_encode
from switch.wire.framing import Framing

DIALECTS = [load_dialect(path.stem) for path in sorted(dialects_dir().glob("*.toml"))]  # every shipped dialect
DEFAULT = next(d for d in DIALECTS if d.name == "default")
# The codec sees only the field spec (framing is outside it): each distinct spec once.
SHIPPED_SPECS = [d for i, d in enumerate(DIALECTS) if all(d.spec != e.spec for e in DIALECTS[:i])]
HEADER_SPEC = {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 4, "desc": "Header"}
WITH_HEADER = Dialect(name="hdr", framing=Framing(), spec={**DEFAULT.spec, "h": HEADER_SPEC})
ALL = [*DIALECTS, WITH_HEADER]
HEX = "0123456789ABCDEF"


def outcome(fn, *args):
    """What a codec call gives: its result, or its error as (kind, field, message)."""
    try:
        result = fn(*args)
    except (DecodeError, EncodeError) as exc:
        return ("error", exc.field, exc.msg)
    except Exception as exc:  # pyiso8583 lets a few others through (KeyError for a field not in the spec)
        return (type(exc).__name__, str(exc))
    return bytes(result) if isinstance(result, bytearray) else result


def reference_decode(payload: bytes, dialect: Dialect):
    """pyiso8583's decode, with the codec's one documented difference: its KeyError for a field
    number the dialect lacks (behind bit 65) is a DecodeError naming that field."""
    result = outcome(lambda: iso8583.decode(payload, dialect.spec)[0])
    if isinstance(result, tuple) and result[0] == "KeyError":
        return ("error", result[1].strip("'"), FIELD_NOT_IN_DIALECT)
    return result


def ours_decode(payload: bytes, dialect: Dialect):
    return outcome(wire_decode, payload, dialect)


def reference_encode(doc: dict, dialect: Dialect):
    return outcome(lambda: iso8583.encode(dict(doc), dialect.spec)[0])


def ours_encode(doc: dict, dialect: Dialect):
    return outcome(wire_encode, doc, dialect)


@st.composite
def field_values(draw, spec: dict, *, valid: bool = True):
    """A value for one field: within the spec, or (valid=False) possibly one char off."""
    max_len = spec["max_len"]
    if spec["data_enc"] == "b":
        n = max_len if spec["len_type"] == 0 else draw(st.integers(0, max_len))
        value = draw(st.text(alphabet=HEX, min_size=2 * n, max_size=2 * n))
        if not valid:
            value = draw(st.sampled_from([value + "0", value[:-1], value.lower(), value + "G1", value + "  "]))
        return value
    n = max_len if spec["len_type"] == 0 else draw(st.integers(0, max_len))
    alphabet = st.characters(min_codepoint=32, max_codepoint=126)
    value = draw(st.text(alphabet=alphabet, min_size=n, max_size=n))
    if not valid:
        value = draw(st.sampled_from([value + "X", value[:-1], value + "é", value]))
    return value


@st.composite
def documents(draw, dialect: Dialect, *, valid: bool = True):
    numbers = sorted(int(k) for k in dialect.spec if k.isdigit() and 2 <= int(k) <= 128 and int(k) != 65)
    chosen = draw(st.lists(st.sampled_from(numbers), min_size=1, max_size=20, unique=True))
    doc = {"t": draw(st.sampled_from(["0200", "0210", "0400", "0800", "9999"]))}
    if dialect.spec["h"]["max_len"]:
        doc["h"] = draw(st.text(alphabet="0123456789", min_size=4, max_size=4))
    for no in chosen:
        doc[str(no)] = draw(field_values(dialect.spec[str(no)], valid=valid))
    return doc


@pytest.mark.parametrize("dialect", ALL, ids=lambda d: d.name)
def test_every_shipped_dialect_compiles(dialect):
    assert dialect.compiled is not None


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_valid_documents_encode_and_decode_exactly_as_pyiso8583(data):
    dialect = data.draw(st.sampled_from(ALL))
    doc = data.draw(documents(dialect))
    ours = ours_encode(doc, dialect)
    assert ours == reference_encode(doc, dialect)
    assert isinstance(ours, bytes)
    decoded = _fast_decode(ours, dialect.compiled)  # the compiled path itself, no fallback
    assert decoded == reference_decode(ours, dialect)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_off_by_one_documents_fail_exactly_as_pyiso8583(data):
    dialect = data.draw(st.sampled_from(ALL))
    doc = data.draw(documents(dialect, valid=False))
    if data.draw(st.booleans()):
        doc[data.draw(st.sampled_from(["1", "65", "129", "0", "02", "x"]))] = "00"
    assert ours_encode(doc, dialect) == reference_encode(doc, dialect)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_broken_bytes_decode_exactly_as_pyiso8583(data):
    dialect = data.draw(st.sampled_from(ALL))
    payload = reference_encode(data.draw(documents(dialect)), dialect)
    assert isinstance(payload, bytes)
    pos = data.draw(st.integers(0, len(payload)))
    how = data.draw(st.sampled_from(["truncate", "patch", "append"]))
    patch = data.draw(st.binary(min_size=1, max_size=3))
    broken = {"truncate": payload[:pos], "patch": payload[:pos] + patch + payload[pos + len(patch):],
              "append": payload + patch}[how]
    assert ours_decode(broken, dialect) == reference_decode(broken, dialect)


def test_a_standard_purchase_takes_the_compiled_path_both_ways():
    dialect = DEFAULT
    doc = {"t": "0200", "2": "9410100000012345", "3": "000000", "4": "000000020000", "7": "0715031500",
           "11": "000123", "41": "T0000001", "42": "EUM000000000001", "49": "410", "52": "0123456789ABCDEF",
           "53": "FFFF9876540000200001", "64": "0011223344556677"}
    payload = encode_fields(doc, dialect)
    assert payload == bytes(iso8583.encode(dict(doc), dialect.spec)[0])
    assert _fast_decode(payload, dialect.compiled) == {**doc, "p": "7220000000C09801"}


def test_the_compiled_decoder_hands_what_it_does_not_know_to_pyiso8583():
    dialect = DEFAULT
    payload = encode_fields({"t": "0800", "7": "0715031500", "11": "000001", "70": "301"}, dialect)
    with pytest.raises(_Fallback):
        _fast_decode(payload + b"X", dialect.compiled)  # extra data after the last field
    with pytest.raises(DecodeError, match="Extra data after last field") as err:
        decode_fields(payload + b"X", dialect)
    assert err.value.field == "70"


def test_a_dialect_the_compiled_codec_cannot_serve_uses_pyiso8583_throughout():
    spec = {**DEFAULT.spec, "2": {**DEFAULT.spec["2"], "len_enc": "bcd"}}
    dialect = Dialect(name="bcd-lengths", framing=Framing(), spec=spec)
    assert dialect.compiled is None
    doc = {"t": "0200", "2": "9410100000012345", "3": "000000"}
    payload = encode_fields(doc, dialect)
    assert payload[4 + 8 : 4 + 8 + 2] == b"\x00\x16"  # length 16 in two BCD bytes
    assert decode_fields(payload, dialect) == {**doc, "p": "6000000000000000"}


# ---------------------------------------------------------------------------- every length, one field at a time

def field_numbers(dialect: Dialect) -> list[int]:
    return sorted(int(k) for k in dialect.spec if k.isdigit() and 2 <= int(k) <= 128 and int(k) != 65)


def value_of(spec: dict, n: int, salt: int) -> str:
    """A value of n units (characters, or bytes as hex) whose content varies with n and salt."""
    if spec["data_enc"] == "b":
        return bytes((salt + 7 * i) % 256 for i in range(n)).hex().upper()
    return "".join(chr(32 + (salt + 7 * i) % 95) for i in range(n))


def lone_field(dialect: Dialect, no: int, value: str) -> dict[str, str]:
    doc = {"t": "0200", str(no): value}
    if dialect.spec["h"]["max_len"]:
        doc["h"] = "0" * dialect.spec["h"]["max_len"]
    return doc


@pytest.mark.parametrize("dialect", SHIPPED_SPECS, ids=lambda d: d.name)
def test_every_length_of_every_field_goes_through_the_compiled_path_exactly_as_pyiso8583(dialect):
    """Each field alone at every length it allows: the compiled encoder gives pyiso8583's
    bytes and the compiled decoder gives pyiso8583's fields back, neither falling back."""
    mismatches, longest = [], {}
    for no in field_numbers(dialect):
        spec = dialect.spec[str(no)]
        for n in [spec["max_len"]] if spec["len_type"] == 0 else range(spec["max_len"] + 1):
            doc = lone_field(dialect, no, value_of(spec, n, no))
            expected = reference_encode(doc, dialect)
            ours = outcome(_fast_encode, doc, dialect.compiled)
            if ours != expected or not isinstance(ours, bytes):
                mismatches.append(("encode", no, n, ours, expected))
            elif outcome(_fast_decode, ours, dialect.compiled) != reference_decode(ours, dialect):
                mismatches.append(("decode", no, n))
            longest[spec["len_type"]] = max(longest.get(spec["len_type"], 0), n)
    assert mismatches == []
    # by prefix size, the longest value sent: LLLVAR up to 999 characters (DE46-48, DE56-63)
    assert longest == {0: 42, 1: 16, 2: 76, 3: 999}


def too_long_payload(dialect: Dialect, no: int) -> bytes | None:
    """A message whose field `no` says (and carries) max_len + 1 units, or None when the
    length prefix cannot express that many (999 in three digits)."""
    spec = dialect.spec[str(no)]
    max_len, len_type = spec["max_len"], spec["len_type"]
    if spec["len_enc"] == "b":
        prefix = (max_len + 1).to_bytes(len_type, "big")
    elif len(str(max_len + 1)) <= len_type:
        prefix = str(max_len + 1).zfill(len_type).encode()
    else:
        return None
    payload = reference_encode(lone_field(dialect, no, value_of(spec, max_len, no)), dialect)
    at = dialect.spec["h"]["max_len"] + 4 + (16 if no > 64 else 8)  # header, MTI, bitmap(s)
    return payload[:at] + prefix + payload[at + len_type:] + (b"\x5a" if spec["data_enc"] == "b" else b"Z")


@pytest.mark.parametrize("dialect", ALL, ids=lambda d: d.name)
def test_a_value_one_unit_too_long_or_short_fails_exactly_as_pyiso8583(dialect):
    """Encoding max_len + 1 (and, for a fixed field, max_len - 1) and decoding a length
    prefix of max_len + 1: the same error (field, message) as pyiso8583, and the compiled
    path hands the input over (_Fallback) instead of accepting it."""
    mismatches, decoded_too_long = [], 0
    for no in field_numbers(dialect):
        spec = dialect.spec[str(no)]
        wrong = [spec["max_len"] + 1] + ([spec["max_len"] - 1] if spec["len_type"] == 0 else [])
        for n in wrong:
            doc = lone_field(dialect, no, value_of(spec, n, no))
            expected = reference_encode(doc, dialect)
            assert expected[0] == "error" and expected[1] == str(no), (no, n, expected)
            if ours_encode(doc, dialect) != expected:
                mismatches.append(("encode", no, n))
            if not falls_back(_fast_encode, doc, dialect.compiled):
                mismatches.append(("compiled encode accepted", no, n))
        payload = too_long_payload(dialect, no)
        if payload is not None:
            decoded_too_long += 1
            expected = reference_decode(payload, dialect)
            assert expected[0] == "error" and expected[1] == str(no), (no, expected)
            if ours_decode(payload, dialect) != expected:
                mismatches.append(("decode", no))
            if not falls_back(_fast_decode, payload, dialect.compiled):
                mismatches.append(("compiled decode accepted", no))
    assert mismatches == []
    assert decoded_too_long == 18  # DE52, every LLVAR field and the LLLVAR ones below 999


def falls_back(fn, *args) -> bool:
    try:
        fn(*args)
    except _Fallback:
        return True
    return False
