"""`eum admin verify` holds the event outbox to the postings: a lost, orphaned or wrong event
fails the proof, naming the posting."""

from __future__ import annotations

import json

import pytest

from switch.ledger.audit import verify
from switch.ledger.store import PgDsn, connect

from conftest import postings, query

pytestmark = pytest.mark.both_stores  # SQLite and PostgreSQL (tests/conftest.py)


async def _traffic(env) -> dict:
    """A purchase (cashback credited) and its full reversal (cashback clawed back)."""
    client, term = await env.signed_on()
    pan = env.cards["namdong"]["pan"]
    bought = await client.request(term.purchase(pan, 20_000))
    assert bought["39"] == "00"
    assert (await client.request(term.reversal(bought)))["39"] == "00"
    await client.close()
    return bought


def _tamper(db, sql: str, *args) -> None:
    conn = connect(db)
    try:
        conn.execute(sql, args)
    finally:
        conn.close()


async def test_a_ledger_with_its_events_verifies_and_counts_them(switch_env):
    await _traffic(switch_env)
    result = verify(switch_env.core.db_path)
    assert result.ok, result.problem
    # two charges (one event each), a purchase and a reversal (transaction + cashback each)
    assert result.stats["events"] == 2 + 2 + 2


async def test_a_lost_event_fails_the_proof_naming_its_posting(switch_env):
    await _traffic(switch_env)
    db = switch_env.core.db_path
    (purchase,) = postings(db, "purchase")
    _tamper(db, "DELETE FROM outbox WHERE posting_id = ? AND type = 'purchase'", purchase["id"])
    assert verify(db).problem == f"posting {purchase['id']} (purchase) has no purchase event"


async def test_a_cashback_event_that_disagrees_with_the_entries_fails(switch_env):
    await _traffic(switch_env)
    db = switch_env.core.db_path
    (purchase,) = postings(db, "purchase")
    ((stored,),) = query(db, "SELECT payload FROM outbox WHERE posting_id = ? AND type = 'cashback.credited'",
                         purchase["id"])
    payload = json.loads(stored)
    assert payload["cashback"] == purchase["cashback"] == 1_500
    _tamper(db, "UPDATE outbox SET payload = ? WHERE posting_id = ? AND type = 'cashback.credited'",
            json.dumps({**payload, "cashback": 1_501}), purchase["id"])
    assert verify(db).problem == f"posting {purchase['id']} moved 1500 won of cashback, its cashback event says 1501"
    _tamper(db, "DELETE FROM outbox WHERE posting_id = ? AND type = 'cashback.credited'", purchase["id"])
    assert verify(db).problem == f"posting {purchase['id']} moved 1500 won of cashback, its cashback event says 0"


async def test_an_event_without_its_posting_fails(switch_env):
    await _traffic(switch_env)
    db = switch_env.core.db_path
    _tamper(db, "UPDATE outbox SET posting_id = 999 WHERE seq = (SELECT MAX(seq) FROM outbox)")
    ((seq,),) = query(db, "SELECT MAX(seq) FROM outbox")
    assert verify(db).problem == f"event {seq} tells of posting 999, which does not exist"


def test_postings_older_than_the_outbox_are_not_held_to_it(tmp_path):
    from switch.ledger.store import open_store

    db = open_store(tmp_path / "var")
    conn = connect(db)
    # a store that had postings before any switch with an outbox opened it
    conn.execute("DELETE FROM meta WHERE key IN ('ledger_id', 'outbox_since_posting')")
    if isinstance(db, PgDsn):  # SQLite: the entries below are the balances (the view accounts sums them)
        conn.execute("INSERT INTO accounts(name, balance) VALUES ('bank_settlement', -5000), ('card:1:cash', 5000)")
    conn.execute("INSERT INTO postings(id, kind, at, card_id, amount) VALUES (1, 'charge', '2025-10-15', 1, 5000)")
    conn.execute("INSERT INTO entries VALUES (1, 'bank_settlement', -5000), (1, 'card:1:cash', 5000)")
    conn.close()
    open_store(tmp_path / "var")  # the upgrade: the outbox starts above posting 1
    assert query(db, "SELECT value FROM meta WHERE key = 'outbox_since_posting'") == [("1",)]
    assert verify(db).ok
