"""Codec: dialect files, decoding to typed requests, field blame, response encoding."""

import hashlib
import random
from pathlib import Path

import pytest

from switch.wire.codec import (DecodeError, decode_fields, describe_request, encode_balances, encode_fields,
                               idempotency_digest, kind_of, load_dialect, parse_request, response_fields)
from switch.wire.messages import DIGEST_SKIP, REPEAT_OF, Balances, FieldError, Kind, Rc, Response, decode_balances

DIALECT = load_dialect("default")

PURCHASE = {"t": "0200", "2": "9410100000000011", "3": "000000", "4": "000000020000", "7": "0720030000",
            "11": "000002", "12": "120000", "13": "0720", "14": "2412", "22": "051", "41": "T0000001",
            "42": "NAMDONG01      ", "49": "410"}


def roundtrip(fields):
    return decode_fields(encode_fields(fields, DIALECT), DIALECT)


def test_purchase_decodes_to_a_typed_request():
    req = parse_request(roundtrip(PURCHASE))
    assert req.kind is Kind.PURCHASE
    assert (req.pan, req.amount, req.expiry, req.merchant) == ("9410100000000011", 20000, "2412", "NAMDONG01      ")
    assert req.key == ("T0000001", "000002", "0720030000")
    assert not req.is_repeat


def test_default_dialect_has_binary_bitmap_and_binary_mac():
    raw = encode_fields({**PURCHASE, "64": "0102030405060708"}, DIALECT)
    assert raw[:4] == b"0200"
    assert raw[4] & 0x80 == 0  # no secondary bitmap
    assert raw.endswith(bytes.fromhex("0102030405060708"))


def test_present_but_empty_secondary_bitmap_is_accepted():
    raw = bytearray(encode_fields({"t": "0800", "7": "0720030000", "11": "000001", "41": "T0000001", "70": "001"},
                                  DIALECT))
    # 0800 with DE70 already has a secondary bitmap; build one with bit 1 set and nothing in 65-128
    plain = encode_fields({"t": "0800", "7": "0720030000", "11": "000001", "41": "T0000001"}, DIALECT)
    forged = plain[:4] + bytes([plain[4] | 0x80]) + plain[5:12] + bytes(8) + plain[12:]
    fields = decode_fields(forged, DIALECT)
    assert fields["1"] == "0000000000000000"
    assert fields["11"] == "000001"
    assert raw[4] & 0x80


def test_track2_supplies_pan_and_expiry():
    fields = {k: v for k, v in PURCHASE.items() if k not in ("2", "14")}
    fields["35"] = "9410100000000011=24121011234567"
    req = parse_request(roundtrip(fields))
    assert (req.pan, req.expiry) == ("9410100000000011", "2412")


@pytest.mark.parametrize("field, value, expected_field, rc", [
    ("4", "00000002000A", "4", Rc.FORMAT_ERROR),
    ("7", "1399999999", "7", Rc.FORMAT_ERROR),
    ("11", "12345", "11", Rc.FORMAT_ERROR),
    ("3", "990000", "3", Rc.INVALID_TRANSACTION),
    ("49", "840", "49", Rc.INVALID_AMOUNT),
])
def test_bad_fields_are_blamed_by_number(field, value, expected_field, rc):
    with pytest.raises(FieldError) as err:
        parse_request({**PURCHASE, field: value})
    assert err.value.field == expected_field
    assert err.value.rc is rc
    assert value not in str(err.value)


def test_missing_mandatory_field_is_named():
    fields = dict(PURCHASE)
    del fields["41"]
    with pytest.raises(FieldError, match="DE41: missing"):
        parse_request(fields)


def test_unsupported_mti_is_invalid_transaction():
    with pytest.raises(FieldError) as err:
        parse_request({**PURCHASE, "t": "0300"})
    assert err.value.rc is Rc.INVALID_TRANSACTION


def test_reversal_reads_de90_and_de95():
    fields = {**PURCHASE, "t": "0400", "11": "000003", "90": "0200" + "000002" + "0720030000" + "0" * 22,
              "95": "000000012000" + "0" * 30}
    req = parse_request(fields)
    assert req.kind is Kind.REVERSAL
    assert (req.original.mti, req.original.stan, req.original.transmission_time) == ("0200", "000002", "0720030000")
    assert req.replacement_amount == 12000


def test_field_longer_than_spec_fails_decode_with_field():
    raw = encode_fields(PURCHASE, DIALECT).replace(b"16" + b"9410100000000011", b"20" + b"94101000000000110000")
    with pytest.raises(DecodeError) as err:
        decode_fields(raw, DIALECT)
    assert err.value.field == "2"


def test_the_digest_hashes_the_same_text_as_every_stored_message_was_digested_by():
    """Stored digests (messages.digest) are compared with a repeat's: the text hashed is fixed.
    Values computed by the implementation before it moved into the compiled codec (b646293)."""
    assert idempotency_digest(PURCHASE) == "57c8c8e404cda992251c804f763b9c42"
    text = "\x1e".join(f"{k}={v}" for k, v in sorted(PURCHASE.items()) if k != "t") + "\x1et=0200"
    assert idempotency_digest(PURCHASE) == hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    skipped = {"t": "0400", "11": "000001", "90": "0" * 42, "53": "x", "52": "y", "1": "z", "p": "q"}
    assert idempotency_digest(skipped) == "28b7c853162fbf4013b0d39c7cab48c7"
    assert idempotency_digest({}) == "2bbd96d7e2fa8118976aa5ae2c0f764a"


def test_the_digest_is_the_same_whatever_order_the_fields_come_in_and_beyond_the_kept_shapes():
    """The keys' text order is sorted once per shape (the keys in the order the dict holds
    them) and kept for at most DIGEST_ORDERS_MAX shapes; every order, first seen or kept, and
    every shape past the bound, hashes the same text (the reference: sorted, then hashed)."""
    from switch.wire import codec

    def reference(fields: dict[str, str]) -> str:
        mti = fields.get("t", "")
        parts = [f"{k}={v}" for k, v in sorted(fields.items()) if k not in DIGEST_SKIP] + ["t=" + REPEAT_OF.get(mti, mti)]
        return hashlib.blake2b("\x1e".join(parts).encode(), digest_size=16).hexdigest()

    reordered = dict(reversed(list(PURCHASE.items())))
    assert idempotency_digest(reordered) == idempotency_digest(PURCHASE) == "57c8c8e404cda992251c804f763b9c42"
    assert idempotency_digest(reordered) == idempotency_digest(PURCHASE)  # both shapes kept now
    rng = random.Random(20261201)
    assert idempotency_digest({"52": "x", "t": "0200"}) == reference({"52": "x", "t": "0200"})  # all skipped
    for _ in range(codec.DIGEST_ORDERS_MAX + 200):  # invented shapes, past the bound
        fields = {str(rng.randrange(2, 129)): f"{rng.randrange(10**6):06d}" for _ in range(rng.randrange(1, 12))}
        fields["t"] = rng.choice(["0200", "0201", "0400", "0421", "0800"])
        assert idempotency_digest(fields) == reference(fields), fields
        assert idempotency_digest(fields) == reference(fields), fields  # again: from the kept order, if kept
    assert len(codec._DIGEST_ORDERS) == codec.DIGEST_ORDERS_MAX


def test_repeat_and_original_share_a_digest_but_content_changes_it():
    assert idempotency_digest(PURCHASE) == idempotency_digest({**PURCHASE, "t": "0201"})
    assert idempotency_digest(PURCHASE) != idempotency_digest({**PURCHASE, "4": "000000020001"})
    assert idempotency_digest(PURCHASE) == idempotency_digest({**PURCHASE, "64": "0102030405060708"})


def test_balances_roundtrip_de54():
    text = encode_balances(Balances(cash=30000, cashback=1500))
    assert text == "0002410C000000030000" + "0091410C000000001500"
    assert decode_balances(text) == Balances(cash=30000, cashback=1500)
    # a debit balance: sign D, the amount without its sign, zero-padded to 12 digits
    assert encode_balances(Balances(cash=-7, cashback=999_999_999_999)) == (
        "0002410D000000000007" + "0091410C999999999999")


def test_response_echoes_only_its_fields():
    resp = Response(mti="0210", rc=Rc.APPROVED, echo={**PURCHASE, "52": "AAAAAAAAAAAAAAAA", "35": "x"},
                    rrn="000000000002", auth_code="000002", balances=Balances(1, 2))
    out = response_fields(resp)
    assert "52" not in out and "35" not in out and "22" not in out
    assert (out["t"], out["39"], out["37"], out["38"]) == ("0210", "00", "000000000002", "000002")
    assert roundtrip(out)["54"] == "0002410C000000000001" + "0091410C000000000002"


def test_dialect_file_errors_name_the_key(tmp_path: Path):
    (tmp_path / "broken.toml").write_text('[framing]\nlength_header = "binary2"\n[fields."t"]\ndata_enc = "ascii"\n')
    with pytest.raises(ValueError, match=r"fields.t lacks len_enc, len_type, max_len, desc"):
        load_dialect("broken", directory=tmp_path)
    with pytest.raises(ValueError, match="unknown dialect 'nope'; known: broken"):
        load_dialect("nope", directory=tmp_path)


def test_bcd_tpdu_dialect_loads_with_the_same_fields():
    d = load_dialect("bcd-tpdu")
    assert (d.framing.length_header, d.framing.tpdu) == ("bcd2", True)
    assert d.spec == DIALECT.spec


@pytest.mark.parametrize("de7, valid", [
    ("0101000000", True), ("1231235959", True), ("0229120000", True),
    ("0001000000", False), ("1301000000", False), ("0100000000", False), ("0132000000", False),
    ("0101240000", False), ("0101006000", False), ("0101000060", False), ("9999999999", False),
])
def test_de7_is_checked_against_each_part_s_bounds(de7, valid):
    """DE7 (MMDDhhmmss): month 01-12, day 01-31, hour < 24, minute and second < 60; the
    check compares each pair of ASCII digits as text, which orders them as their numbers."""
    if valid:
        assert parse_request({**PURCHASE, "7": de7}).key == ("T0000001", "000002", de7)
    else:
        with pytest.raises(FieldError) as err:
            parse_request({**PURCHASE, "7": de7})
        assert (err.value.field, err.value.reason, err.value.rc) == ("7", "not a valid MMDDhhmmss", Rc.FORMAT_ERROR)


def test_the_fast_encoder_takes_the_same_field_keys_as_before_and_leaves_the_rest_to_pyiso8583():
    """Keys "2".."128" but "65" are the compiled encoder's; a key written otherwise ("002"), "1"
    or "65", or one out of range, is pyiso8583's (which drops "1" and "65" and refuses the
    others). The fast encoder's bytes are pyiso8583's for the keys it takes."""
    import iso8583

    from switch.wire.codec import _Fallback, _fast_encode

    assert _fast_encode(PURCHASE, DIALECT.compiled) == bytes(iso8583.encode(dict(PURCHASE), DIALECT.spec)[0])
    for key in ("002", "1", "65", "129", "0", "x", "２"):
        with pytest.raises(_Fallback):
            _fast_encode({**PURCHASE, key: "1"}, DIALECT.compiled)


@pytest.mark.parametrize("mti, extra, kind", [
    ("0200", {}, "purchase"), ("0201", {}, "purchase"), ("0200", {"3": "200000"}, "refund"),
    ("0200", {"3": "210000"}, "charge"), ("0200", {"3": "310000"}, "balance"), ("0200", {"3": "990000"}, "other"),
    ("0100", {}, "pre-auth"), ("0101", {"37": "000000000042"}, "incremental"), ("0120", {}, "pre-auth-advice"),
    ("0100", {"3": "310000"}, "balance"), ("0220", {}, "completion"), ("0400", {}, "reversal"),
    ("0421", {}, "reversal-advice"), ("0800", {"70": "001"}, "sign-on"), ("0800", {"70": "002"}, "sign-off"),
    ("0800", {"70": "301"}, "echo"), ("0800", {"70": "999"}, "other"), ("0300", {}, "other"), ("", {}, "other"),
])
def test_the_canonical_lines_kind_names_each_message(mti, extra, kind):
    assert kind_of({**PURCHASE, "t": mti, **extra}) == kind


def test_the_canonical_line_describes_a_request_with_its_pan_masked_and_its_fields_stripped():
    line = {"peer": "127.0.0.1:5000"}
    describe_request(line, PURCHASE)
    assert line == {"peer": "127.0.0.1:5000", "mti": "0200", "kind": "purchase", "processing_code": "000000",
                    "stan": "000002", "terminal": "T0000001", "merchant": "NAMDONG01", "pan": "941010******0011"}
    line = {}
    describe_request(line, {"t": "0800", "70": "301", "11": "000009"})  # as much as was decoded
    assert line == {"mti": "0800", "kind": "echo", "de70": "301", "stan": "000009"}
