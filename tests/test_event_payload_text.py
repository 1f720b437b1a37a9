"""An event's payload text (switch/ledger/events.py `posting_events`): its keys in the order
docs/events.md lists them, the kind-specific figures after the common ones and before
`balances_after`, compact JSON. Pinned as the text the `{**common, …}` merges wrote before the
payloads were built whole (docs/performance.md, "Event payloads built whole (kept)"), for a
purchase with fee support and cashback from two funders, a hold (its `added` and `expires`),
and a refund clawing cashback back with a charge's figures."""

from __future__ import annotations

from switch.ledger.events import CardFacts, PostingFacts, posting_events

LEDGER_ID = "6f0c3f4e-1b1e-4c9a-9d1e-3f5e8a7b2c10"
AT = "2025-10-15T12:00:00.000000+09:00"
CARD = CardFacts("namdong", "M1", "9410123400000967", 100, 20, 0)

PURCHASE = PostingFacts(
    posting_id=7, kind="purchase", at=AT, card=CARD, amount=5000,
    entries=(("card:1:cashback", -20), ("card:1:cash", -4980), ("merchant:M:payable", 5000),
             ("merchant:M:payable", -50), ("fee_income", 50), ("fee_subsidy:city", -10), ("merchant:M:payable", 10),
             ("cashback_expense:city", -500), ("cashback_expense:namdong", -250), ("card:1:cashback", 750)),
    rrn="000000000007", merchant="M", district="namdong", terminal="T1", stan="000001", original_posting_id=None)
HOLD = PostingFacts(
    posting_id=8, kind="hold", at=AT, card=CARD, amount=5000, entries=(("card:1:cash", -5000), ("card:1:held", 5000)),
    rrn="000000000008", merchant="M", district=None, terminal="T1", stan="000002",
    extra=(("added", 5000), ("expires", "2025-10-22")))
REFUND = PostingFacts(
    posting_id=9, kind="refund", at=AT, card=CARD, amount=5000,
    entries=(("card:1:cashback", -750), ("cashback_expense:city", 500), ("cashback_expense:namdong", 250)),
    rrn="000000000009", original_posting_id=7, extra=(("receivable_repaid", 3), ("auto_charge", True)))


def texts(facts: PostingFacts) -> list[tuple[str, str, str]]:
    return [(e.type, e.topic, e.payload) for e in posting_events(LEDGER_ID, facts)]



def test_the_purchase_payload_text():
    assert texts(PURCHASE) == [
        ('purchase', 'eum/namdong/transactions',
         '{"event_id":"5136e768-400b-5122-b315-03551f97d005","type":"purchase","schema":1,"time":"2025-10-'
         '15T12:00:00.000000+09:00","posting_id":7,"program":"namdong","member":"M1","pan":"941012******09'
         '67","merchant":"M","district":"namdong","rrn":"000000000007","terminal":"T1","stan":"000001","or'
         'iginal_posting_id":null,"amount":5000,"fee":50,"fee_support":{"city":10},"cashback":750,"cashbac'
         'k_by_funder":{"city":500,"namdong":250},"balances_after":{"cash":100,"cashback":20,"receivable":'
         '0}}'),
        ('cashback.credited', 'eum/namdong/cashback',
         '{"event_id":"1da5e626-aaca-55fe-8cbc-6bc255165d34","type":"cashback.credited","schema":1,"time":'
         '"2025-10-15T12:00:00.000000+09:00","posting_id":7,"program":"namdong","member":"M1","pan":"94101'
         '2******0967","merchant":"M","district":"namdong","transaction":"purchase","original_posting_id":'
         'null,"amount":5000,"cashback":750,"by_funder":{"city":500,"namdong":250},"balances_after":{"cash'
         '":100,"cashback":20,"receivable":0}}'),
    ]


def test_the_hold_payload_text():
    assert texts(HOLD) == [
        ('hold', 'eum/namdong/transactions',
         '{"event_id":"a11bc134-0390-5e43-91d8-02422ea8a413","type":"hold","schema":1,"time":"2025-10-15T1'
         '2:00:00.000000+09:00","posting_id":8,"program":"namdong","member":"M1","pan":"941012******0967",'
         '"merchant":"M","district":null,"rrn":"000000000008","terminal":"T1","stan":"000002","original_po'
         'sting_id":null,"amount":5000,"fee":0,"fee_support":{},"cashback":0,"cashback_by_funder":{},"adde'
         'd":5000,"expires":"2025-10-22","balances_after":{"cash":100,"cashback":20,"receivable":0}}'),
    ]


def test_the_refund_payload_text():
    assert texts(REFUND) == [
        ('refund', 'eum/namdong/transactions',
         '{"event_id":"ac50d681-5af8-52f8-8d21-eb95a2d111c7","type":"refund","schema":1,"time":"2025-10-15'
         'T12:00:00.000000+09:00","posting_id":9,"program":"namdong","member":"M1","pan":"941012******0967'
         '","merchant":null,"district":null,"rrn":"000000000009","terminal":null,"stan":null,"original_pos'
         'ting_id":7,"amount":5000,"fee":0,"fee_support":{},"cashback":-750,"cashback_by_funder":{"city":-'
         '500,"namdong":-250},"receivable_repaid":3,"auto_charge":true,"balances_after":{"cash":100,"cashb'
         'ack":20,"receivable":0}}'),
        ('cashback.clawed_back', 'eum/namdong/cashback',
         '{"event_id":"8a013852-fe5c-5cb2-841b-379d2a910bc8","type":"cashback.clawed_back","schema":1,"tim'
         'e":"2025-10-15T12:00:00.000000+09:00","posting_id":9,"program":"namdong","member":"M1","pan":"94'
         '1012******0967","merchant":null,"district":null,"transaction":"refund","original_posting_id":7,"'
         'amount":5000,"cashback":-750,"by_funder":{"city":-500,"namdong":-250},"balances_after":{"cash":1'
         '00,"cashback":20,"receivable":0}}'),
    ]
