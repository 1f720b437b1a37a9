"""Event payloads, posting details and stored responses are rendered once with orjson; the
text must be exactly what the standard library renders compactly (the outbox and the ledger
were written that way before, and consumers may compare texts)."""

from __future__ import annotations

import json

from hypothesis import given, strategies as st

from switch.ledger.events import _encode
from switch.ledger.records import PurchaseDetail
from switch.ledger.rows import detail_json, parse_detail

values = st.recursive(
    st.none() | st.integers(min_value=-(2**53), max_value=2**53) | st.text(),  # Korean, emoji, controls
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@given(st.dictionaries(st.text(max_size=10), values, max_size=6))
def test_payload_text_is_what_json_renders_compactly(payload):
    assert _encode(payload) == json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def test_a_purchase_detail_round_trips_and_keeps_the_earlier_json_shape():
    detail = PurchaseDetail(member="M000000001", month="2019-07", day="2019-07-20", cb_used=0, cash_used=20_000,
                            fee=100, fee_tier="small", rate_bp=50, support=(("namdong", 100),),
                            cashback=(("national", 800), ("city", 400), ("namdong", 300)), eligible=20_000,
                            policy="2019-04-namdong")
    text = detail_json(detail)
    assert text == ('{"member":"M000000001","month":"2019-07","day":"2019-07-20","cb_used":0,"cash_used":20000,'
                    '"fee":100,"fee_tier":"small","rate_bp":50,"support":[["namdong",100]],'
                    '"cashback":[["national",800],["city",400],["namdong",300]],"eligible":20000,'
                    '"policy":"2019-04-namdong"}')
    assert parse_detail(text) == detail


@given(st.uuids(), st.integers(min_value=1, max_value=10**12), st.sampled_from(
    ["purchase", "refund", "reversal", "charge", "cashback.credited", "cashback.clawed_back"]))
def test_an_event_id_is_uuid5_of_the_ledger_and_the_posting(ledger, posting_id, event_type):
    """docs/events.md, "event_id": uuid5(ledger id, "<posting id>/<type>"), computed without uuid.uuid5."""
    import uuid

    from switch.ledger.events import event_id

    assert event_id(str(ledger), posting_id, event_type) == str(uuid.uuid5(ledger, f"{posting_id}/{event_type}"))
