"""Decoder fuzz: whatever bytes arrive, the codec either decodes or raises a typed error
that names a field; it never crashes with anything else. And the format error the switch
builds from what it could read always encodes (docs/host-interface.md §4, "Malformed frames"):
a request MTI is never left without an answer because its echo cannot be encoded."""

from hypothesis import given, settings
from hypothesis import strategies as st

from switch.authorize.server import _error_response, encode_answer
from switch.wire.codec import DecodeError, decode_fields, encode_fields, load_dialect, parse_request, partial_fields
from switch.wire.messages import FieldError, Rc

DIALECT = load_dialect("default")
VALID = encode_fields({"t": "0200", "2": "9410100000000011", "3": "000000", "4": "000000020000",
                       "7": "0720030000", "11": "000002", "41": "T0000001", "42": "NAMDONG01      ",
                       "49": "410"}, DIALECT)


def _decode_and_parse(data: bytes) -> None:
    try:
        fields = decode_fields(data, DIALECT)
    except DecodeError as exc:
        assert exc.field  # blame is always attached
        return
    try:
        parse_request(fields)
    except FieldError as exc:
        assert exc.field


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_decoder(data):
    _decode_and_parse(data)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(VALID) - 1), st.binary(min_size=1, max_size=4), st.booleans())
def test_mutated_valid_messages_never_crash_the_decoder(pos, patch, truncate):
    data = VALID[:pos] if truncate else VALID[:pos] + patch + VALID[pos + len(patch):]
    _decode_and_parse(data)


def _answer_of(data: bytes) -> tuple[dict[str, str] | None, bytes | None]:
    """What the switch answers before the engine: a 30 to an undecodable frame, a 30 or 12
    to a field it cannot parse; (None, None) when the frame is decoded and parsed."""
    try:
        fields = decode_fields(data, DIALECT)
    except DecodeError as exc:
        out = _error_response(partial_fields(exc), Rc.FORMAT_ERROR)
    else:
        try:
            parse_request(fields)
            return None, None
        except FieldError as exc:
            out = _error_response(fields, exc.rc)
    return out, None if out is None else encode_answer(out, DIALECT)[0]


def _request_mti(data: bytes) -> bool:
    return len(data) >= 4 and data[:4].isascii() and data[:4].isdigit() and int(chr(data[2])) % 2 == 0


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(VALID)), st.binary(min_size=1, max_size=4), st.sampled_from(["truncate", "patch", "flip"]))
def test_a_frame_with_a_request_mti_always_has_an_answer_that_encodes(pos, patch, how):
    if how == "truncate":
        data = VALID[:pos]
    elif how == "patch":
        data = VALID[:pos] + patch + VALID[pos + len(patch):]
    else:  # one bitmap bit
        bit = pos % 64
        data = VALID[:4 + bit // 8] + bytes([VALID[4 + bit // 8] ^ (0x80 >> bit % 8)]) + VALID[5 + bit // 8:]
    out, payload = _answer_of(data)
    if out is None:
        assert payload is None and (not _request_mti(data) or decode_fields(data, DIALECT))
        return
    assert _request_mti(data)
    assert payload is not None, (data.hex(), out)
    assert decode_fields(payload, DIALECT)["39"] == out["39"]
