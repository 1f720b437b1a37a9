"""The transactional outbox: every posting commits with its events, in the same ledger
transaction (on SQLite and on PostgreSQL); events tell exactly what the posting's entries say;
repeats and duplicates of an ISO message never make a second event; no full PAN is ever in an
event.

Base case (docs/domain.md, "Worked examples", 1): the Namdong card buys 20,000 at NAMDONG01 on
2019-07-20: cashback 1,500 (national 800, city 400, Namdong 300), fee 100 paid by Namdong.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import AsyncIterator

import pytest

from conftest import LAUNCH, postings, query, start_switch
from conftest import bought as _bought
from switch.ledger.audit import verify
from switch.clock import FixedClock
from switch.domain import mask_pan
from switch.ledger.events import (CardFacts, PostingFacts, event_id, posting_events)
from switch.ledger.records import ChargeDetail, Commit, Posting
from switch.ledger.sqlite import commit_group
from switch.ledger.store import PgDsn, Store, connect, ledger_id, open_store
from switch.ledger.outbox import OutboxReader
from terminal_sim.terminal import Terminal
from test_cli import EUM
from waiting import eventually, settled

pytestmark = pytest.mark.both_stores  # SQLite and PostgreSQL (tests/conftest.py)

KST_LAUNCH = "2019-07-20T12:00:00.000000+09:00"


def outbox(db: Path) -> list[dict]:
    return [json.loads(p) for (p,) in query(db, "SELECT payload FROM outbox ORDER BY seq")]


def outbox_rows(db: Path) -> list[tuple]:
    return query(db, "SELECT seq, event_id, topic, type, posting_id FROM outbox ORDER BY seq")


def the_ledger_id(db: Path) -> str:
    return query(db, "SELECT value FROM meta WHERE key='ledger_id'")[0][0]


# ---------------------------------------------------------------------------- what events say

async def test_a_charge_writes_one_transaction_event_in_its_commit(switch_env):
    db = switch_env.core.db_path
    lid = the_ledger_id(db)
    card = switch_env.cards["namdong"]
    charge = postings(db, "charge")[0]
    events = outbox(db)
    assert [e["type"] for e in events] == ["charge", "charge"]  # provision charged two cards
    assert events[0] == {
        "event_id": event_id(lid, charge["id"], "charge"), "type": "charge", "schema": 1,
        "time": KST_LAUNCH, "posting_id": charge["id"], "program": "namdong",
        "member": card["member"], "pan": mask_pan(card["pan"]), "merchant": None, "district": None,
        "rrn": charge["rrn"], "terminal": None, "stan": None, "original_posting_id": None, "amount": 100_000,
        "fee": 0, "fee_support": {}, "cashback": 0, "cashback_by_funder": {}, "receivable_repaid": 0,
        "balances_after": {"cash": 100_000, "cashback": 0, "receivable": 0},
    }
    assert outbox_rows(db)[0][2:] == ("eum/namdong/transactions", "charge", charge["id"])


async def test_a_purchase_writes_its_transaction_and_cashback_events(switch_env):
    env = switch_env
    client, _, pan, _, resp = await _bought(env)
    await client.close()
    db = env.core.db_path
    lid = the_ledger_id(db)
    (purchase,) = postings(db, "purchase")
    card = env.cards["namdong"]
    tx, cb = outbox(db)[2:]
    common = {"time": KST_LAUNCH, "posting_id": purchase["id"], "program": "namdong", "member": card["member"],
              "pan": mask_pan(pan), "merchant": "NAMDONG01", "district": "namdong"}
    after = {"cash": 80_000, "cashback": 1_500, "receivable": 0}
    assert tx == {
        "event_id": event_id(lid, purchase["id"], "purchase"), "type": "purchase", "schema": 1, **common,
        "rrn": resp["37"], "terminal": "T0000001", "stan": "000002", "original_posting_id": None,
        "amount": 20_000, "fee": 100, "fee_support": {"namdong": 100}, "cashback": 1_500,
        "cashback_by_funder": {"national": 800, "city": 400, "namdong": 300}, "balances_after": after,
    }
    assert cb == {
        "event_id": event_id(lid, purchase["id"], "cashback.credited"), "type": "cashback.credited", "schema": 1,
        **common, "transaction": "purchase", "original_posting_id": None, "amount": 20_000, "cashback": 1_500,
        "by_funder": {"national": 800, "city": 400, "namdong": 300}, "balances_after": after,
    }
    assert [r[2:4] for r in outbox_rows(db)[2:]] == [("eum/namdong/transactions", "purchase"),
                                                     ("eum/namdong/cashback", "cashback.credited")]


async def test_refund_claws_back_and_its_reversal_credits_again_by_funder(switch_env):
    env = switch_env
    client, term, pan, _, bought = await _bought(env)
    refund = term.refund(pan, 3_333, bought["37"])
    assert (await client.request(refund))["39"] == "00"
    assert (await client.request(term.reversal(refund)))["39"] == "00"
    await client.close()
    db = env.core.db_path
    (purchase,) = postings(db, "purchase")
    (refund_p,) = postings(db, "refund")
    (reversal_p,) = postings(db, "reversal")
    events = outbox(db)[4:]
    assert [(e["type"], e["posting_id"]) for e in events] == [
        ("refund", refund_p["id"]), ("cashback.clawed_back", refund_p["id"]),
        ("reversal", reversal_p["id"]), ("cashback.credited", reversal_p["id"])]
    r_tx, r_cb, v_tx, v_cb = events
    # share 3,333/20,000 floored: national 133, city 66, Namdong 49; fee 16, support 16
    assert {k: r_tx[k] for k in ("amount", "fee", "fee_support", "cashback", "cashback_by_funder",
                                 "original_posting_id", "balances_after")} == {
        "amount": 3_333, "fee": -16, "fee_support": {"namdong": -16}, "cashback": -248,
        "cashback_by_funder": {"national": -133, "city": -66, "namdong": -49}, "original_posting_id": purchase["id"],
        "balances_after": {"cash": 83_333, "cashback": 1_252, "receivable": 0}}
    assert (r_cb["cashback"], r_cb["by_funder"], r_cb["transaction"]) == (
        -248, {"national": -133, "city": -66, "namdong": -49}, "refund")
    assert {k: v_tx[k] for k in ("amount", "fee", "cashback", "original_posting_id", "balances_after")} == {
        "amount": 3_333, "fee": 16, "cashback": 248, "original_posting_id": refund_p["id"],
        "balances_after": {"cash": 80_000, "cashback": 1_500, "receivable": 0}}
    assert (v_cb["cashback"], v_cb["by_funder"], v_cb["transaction"]) == (
        248, {"national": 133, "city": 66, "namdong": 49}, "reversal")
    assert_events_match_postings(db)


async def test_a_full_reversal_claws_back_everything_and_a_zero_cashback_undo_has_no_cashback_event(switch_env):
    env = switch_env
    client, term, pan, req, _ = await _bought(env)
    assert (await client.request(term.reversal(req)))["39"] == "00"
    tiny = term.purchase(pan, 10)      # cashback floor(10 × 7.5 %) = 0 by funder: no cashback event
    assert (await client.request(tiny))["39"] == "00"
    assert (await client.request(term.reversal(tiny)))["39"] == "00"
    await client.close()
    db = env.core.db_path
    types = [e["type"] for e in outbox(db)[4:]]
    assert types == ["reversal", "cashback.clawed_back", "purchase", "reversal"]
    assert outbox(db)[5]["by_funder"] == {"national": -800, "city": -400, "namdong": -300}
    assert_events_match_postings(db)


# ---------------------------------------------------------------------------- one event per posting

async def test_repeats_and_duplicates_of_a_message_never_make_a_second_event(switch_env):
    env = switch_env
    client, term, pan, purchase, bought = await _bought(env)
    refund = term.refund(pan, 4_000, bought["37"])
    assert (await client.request(refund))["39"] == "00"
    reversal = term.reversal(refund)
    assert (await client.request(reversal))["39"] == "00"
    db = env.core.db_path
    before = outbox_rows(db)
    for msg in (purchase, refund, reversal):
        await client.request(msg)                     # exact duplicate
        await client.request(Terminal.repeat(msg))    # 0201 / 0401 repeat
    again = await client.request(term.reversal(purchase))  # a new reversal: undoes the rest, one new posting
    await client.close()
    assert again["39"] == "00"
    after = outbox_rows(db)
    assert after[: len(before)] == before
    assert [r[3] for r in after[len(before):]] == ["reversal", "cashback.clawed_back"]
    assert len({r[1] for r in after}) == len(after)
    assert_events_match_postings(db)


async def test_declines_write_no_event(switch_env):
    env = switch_env
    client, term = await env.signed_on()
    pan = env.cards["namdong"]["pan"]
    db = env.core.db_path
    before = outbox_rows(db)
    assert (await client.request(term.purchase(pan, 100_001)))["39"] == "51"   # insufficient funds
    assert (await client.request(term.refund(pan, 1_000, "999999999999")))["39"] == "25"
    unknown = await client.request(term.reversal(term.purchase(pan, 5_000)))  # original never arrived
    await client.close()
    assert unknown["39"] == "00"  # acknowledged and remembered, but nothing was posted
    assert outbox_rows(db) == before


@contextlib.asynccontextmanager
async def group_commit(db: Store) -> AsyncIterator[tuple]:
    """The writer's one call that makes a group durable, on this store: SQLite's `commit_group`
    on a connection, or PostgreSQL's one `ledger_commit` call (PgCommitter); and the error each
    raises when a key is taken twice."""
    if isinstance(db, PgDsn):
        import asyncpg

        from switch.ledger.postgres import PgCommitter

        committer = PgCommitter(db)
        await committer.open()
        try:
            yield committer.commit, asyncpg.UniqueViolationError
        finally:
            await committer.close()
    else:
        conn = connect(db)

        async def commit(units: list[Commit]) -> None:
            commit_group(conn, units)

        try:
            yield commit, sqlite3.IntegrityError
        finally:
            conn.close()


async def test_a_posting_and_its_events_commit_together_or_not_at_all(tmp_path):
    db = open_store(tmp_path / "var")
    conn = connect(db, readonly=True)
    lid = ledger_id(conn)
    conn.close()
    facts = PostingFacts(posting_id=1, kind="charge", at="2019-07-20T12:00:00+09:00", amount=10_000,
                         entries=(("bank_settlement", -10_000), ("card:1:cash", 10_000)),
                         card=CardFacts("namdong", "M1", "9410100000000011", 10_000, 0, 0))
    posting = Posting(id=1, kind="charge", at="2019-07-20T12:00:00+09:00", amount=10_000, entries=facts.entries,
                      card_id=1, rrn="000000000001", detail=ChargeDetail("M1", 0))
    good = Commit(posting, events=tuple(posting_events(lid, facts)))
    clash = Commit(posting, events=tuple(posting_events(lid, facts)))  # the same posting id again: the group fails
    async with group_commit(db) as (commit, key_taken):
        with pytest.raises(key_taken):
            await commit([good, clash])
        assert query(db, "SELECT COUNT(*) FROM postings")[0][0] == 0
        assert query(db, "SELECT COUNT(*) FROM outbox")[0][0] == 0
        assert query(db, "SELECT COUNT(*) FROM entries")[0][0] == 0
        with pytest.raises(AssertionError, match="has no events"):  # a posting without its events is our bug
            await commit([Commit(posting)])
        await commit([good])
    assert query(db, "SELECT posting_id, type, topic FROM outbox") == [(1, "charge", "eum/namdong/transactions")]
    assert query(db, "SELECT COUNT(*) FROM postings")[0][0] == 1


def test_event_ids_are_stable_per_posting_and_type_and_differ_between_ledgers(tmp_path, ledger_store):
    a = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    b = "6fa459ea-ee8a-3ca4-894e-db77e160355e"
    assert event_id(a, 7, "purchase") == event_id(a, 7, "purchase")
    assert len({event_id(a, 7, "purchase"), event_id(a, 7, "cashback.credited"), event_id(a, 8, "purchase"),
                event_id(b, 7, "purchase")}) == 4
    first = open_store(tmp_path / "one")
    again = open_store(tmp_path / "one")  # reopening keeps the ledger's name
    with ledger_store.fresh():  # another ledger (on PostgreSQL, another database)
        other = the_ledger_id(open_store(tmp_path / "two"))
    assert the_ledger_id(first) == the_ledger_id(again) != other


async def test_no_event_carries_a_full_pan(switch_env):
    env = switch_env
    client, term, pan, _, bought = await _bought(env)
    await client.request(term.refund(pan, 1_000, bought["37"]))
    await client.close()
    text = "\n".join(p for (p,) in query(env.core.db_path, "SELECT payload FROM outbox"))
    for card in env.cards.values():
        assert card["pan"] not in text
        assert mask_pan(card["pan"]) in text


async def test_events_survive_a_restart_and_ids_continue(tmp_path):
    data = tmp_path / "var"
    async with start_switch(data, clock=FixedClock(LAUNCH)) as env:
        await env.op("merchant-add", mid="NAMDONG01", name="Namdong Cafe", district="namdong",
                     annual_sales=250_000_000)
        card = await env.op("card-issue", program="namdong")
        await env.op("card-charge", pan=card["pan"], amount=50_000)
    first = outbox_rows(data / "ledger.sqlite3")
    async with start_switch(data, clock=FixedClock(LAUNCH)) as env:
        await env.op("card-charge", pan=card["pan"], amount=20_000)
    rows = outbox_rows(data / "ledger.sqlite3")
    assert rows[:1] == first and [r[0] for r in rows] == [1, 2]
    assert [r[4] for r in rows] == [p["id"] for p in postings(data / "ledger.sqlite3", "charge")]


# ---------------------------------------------------------------------------- eum events tail / status

async def test_tail_and_status_read_the_outbox_while_the_switch_runs(switch_env, tmp_path):
    env = switch_env
    client, _, _, _, _ = await _bought(env)
    await client.close()
    data = env.data_dir

    def eum(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([*EUM, "events", *args, "--data-dir", str(data)], capture_output=True, text=True,
                              timeout=30, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return proc

    lines = eum("tail").stdout.splitlines()
    assert lines == [p for (p,) in query(env.core.db_path, "SELECT payload FROM outbox ORDER BY seq")]
    assert [json.loads(x)["type"] for x in eum("tail", "--last", "1").stdout.splitlines()] == ["cashback.credited"]
    cashback = [json.loads(x) for x in eum("tail", "--stream", "cashback").stdout.splitlines()]
    assert [(e["type"], e["cashback"]) for e in cashback] == [("cashback.credited", 1_500)]
    assert eum("tail", "--program", "incheon").stdout.count("\n") == 1  # the incheon card's charge
    enveloped = [json.loads(x) for x in eum("tail", "--envelope", "--after-seq", "2").stdout.splitlines()]
    assert [(e["seq"], e["topic"], e["relayed"], e["event"]["type"]) for e in enveloped] == [
        (3, "eum/namdong/transactions", False, "purchase"), (4, "eum/namdong/cashback", False, "cashback.credited")]
    status = json.loads(eum("status").stdout)
    assert (status["events"], status["relayed_seq"], status["backlog"]) == (4, 0, 4)
    assert status["oldest_unrelayed_age_s"] >= 0


async def test_tail_follow_prints_events_as_they_commit(switch_env, tmp_path):
    env = switch_env
    import asyncio

    app = f"eum-tail-{os.getpid()}"  # PostgreSQL: names the command's connection (libpq's PGAPPNAME)
    proc = await asyncio.create_subprocess_exec(
        *EUM, "events", "tail", "--data-dir", str(env.data_dir), "--follow", "--after-seq", "2", "--count", "2",
        "--timeout", "30", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp_path,
        env={**os.environ, "PGAPPNAME": app})
    # following, with nothing new yet: it has the ledger open and sleeps between polls
    fds = Path(f"/proc/{proc.pid}/fd")

    def ledger_open() -> bool:
        if isinstance(env.core.db_path, PgDsn):  # its connection to the database has read the outbox
            return query(env.core.db_path, "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
                                           "AND application_name = ? AND query LIKE '%outbox%'", app) == [(1,)]
        return any(os.path.realpath(fd) == str(env.core.db_path.resolve()) for fd in fds.glob("*"))

    def polling_in_vain() -> bool:
        try:  # the process opens and closes files while it starts: an fd may vanish while we look
            return ledger_open() and Path(f"/proc/{proc.pid}/wchan").read_text() == "hrtimer_nanosleep"
        except OSError:
            return False

    await eventually(polling_in_vain, what="`eum events tail --follow` to poll the ledger and find nothing new")
    client, _, _, _, _ = await _bought(env)
    await client.close()
    out, err = await settled(proc.communicate(), what="`eum events tail --follow --count 2` to print two events and exit")
    assert proc.returncode == 0, err
    assert [json.loads(x)["type"] for x in out.decode().splitlines()] == ["purchase", "cashback.credited"]


def test_status_reads_the_relay_position(tmp_path):
    db = open_store(tmp_path / "var")
    conn = connect(db)
    conn.execute("INSERT INTO outbox_relay(name, seq, at) VALUES ('mqtt', 0, 'x')")
    conn.close()
    reader = OutboxReader(db)
    try:
        assert reader.status().as_dict() == {"events": 0, "relayed_seq": 0, "backlog": 0,
                                             "oldest_unrelayed_age_s": 0.0}
    finally:
        reader.close()


# ---------------------------------------------------------------------------- the invariant

def assert_events_match_postings(db: Path) -> None:
    """Each purchase/refund/reversal/charge posting has exactly one transaction event; each
    posting whose cashback is not 0 exactly one cashback event, with the same amounts; and
    no event without its posting."""
    rows = query(db, "SELECT id, kind, cashback, amount, fee FROM postings "
                     "WHERE kind IN ('purchase', 'refund', 'reversal', 'charge') ORDER BY id")
    events = outbox(db)
    tx = {e["posting_id"]: e for e in events if e["type"] in ("purchase", "refund", "reversal", "charge")}
    cb = {e["posting_id"]: e for e in events if e["type"].startswith("cashback.")}
    assert len(tx) + len(cb) == len(events)
    assert sorted(tx) == [r[0] for r in rows]
    assert sorted(cb) == [r[0] for r in rows if r[2] != 0]
    for pid, kind, cashback, amount, fee in rows:
        assert (tx[pid]["type"], tx[pid]["amount"], tx[pid]["cashback"]) == (kind, amount, cashback)
        if kind != "charge":
            assert tx[pid]["fee"] == fee
        if cashback:
            assert cb[pid]["cashback"] == cashback == sum(cb[pid]["by_funder"].values())
    assert verify(db).ok
