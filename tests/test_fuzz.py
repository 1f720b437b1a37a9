"""Decoder fuzz: whatever bytes arrive, the codec either decodes or raises a typed error
that names a field; it never crashes with anything else."""

from hypothesis import given, settings
from hypothesis import strategies as st

from switch.wire.codec import DecodeError, decode_fields, encode_fields, load_dialect, parse_request
from switch.wire.messages import FieldError

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
