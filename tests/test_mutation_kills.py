"""Tests written for mutants that survived the mutation run (docs/testing.md, tests/mutation/run.sh).

Each test states a behaviour of the rules (switch/rules/), the decision code
(switch/authorize/decide.py, engine.py) or the ledger views (switch/ledger/audit.py) that no
other in-process test pinned down; the docstring names the mutants it kills. Pure rules are tested
at unit level, engine behaviour end to end (`switch_env`: real TCP, real SQLite, FixedClock).
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime

import pytest
import structlog

from conftest import LAUNCH, bought, card_id, posting_entries, postings, provision, query, start_switch
from switch.clock import FixedClock
from switch.ledger.audit import card_statement, verify
from switch.ledger.sqlite import fold_now
from switch.rules.cashback import clawback, proportional
from switch.wire.messages import Balances, decode_balances
from terminal_sim.terminal import Terminal


def _notes(logged: list[dict], rc: str) -> list[str]:
    """The `note` of each canonical message line answered `rc`, in order."""
    return [e.get("note", "") for e in logged if e["event"] == "message" and e.get("rc") == rc]


# ---------------------------------------------------------------------------------- rules


def test_undoing_nothing_gives_back_nothing_and_a_negative_undo_is_refused():
    """docs/architecture.md, "Refund and partial reversal": the cumulative floor rule for
    U = 0 gives 0 for every share. Kills `undone_now < 0` → `<= 0` / `< 1` in
    switch/rules/cashback.py _check_undo (a zero-won step would be refused)."""
    assert proportional(100, original_amount=20_000, undone_before=5_000, undone_now=0) == 0
    assert clawback((("national", 800), ("city", 400)), original_amount=20_000, undone_before=0, undone_now=0) == ()
    with pytest.raises(ValueError, match=r"^cannot undo -1 after 0 of 20000$"):
        proportional(100, original_amount=20_000, undone_before=0, undone_now=-1)


# ---------------------------------------------------------------------------------- audit


async def test_card_statement_shows_masked_pan_balances_and_the_latest_postings_newest_first(switch_env):
    """`eum admin card show` (switch/ledger/audit.py card_statement), read in process: every field
    exact, postings newest first, `recent` of them, merchant without DE42 padding, and the
    masked PAN only. Kills the card_statement mutants (column order, keys, masking, the
    balance look-ups, ORDER BY/LIMIT, the default of 10 recent postings)."""
    env = switch_env
    client, term, pan, _, first = await bought(env, 20_000)  # cashback 1,500 credited
    for amount in range(1_001, 1_011):  # ten more: 1,001 … 1,010, cashback spent first
        assert (await client.request(term.purchase(pan, amount)))["39"] == "00"
    await client.close()
    db = env.core.db_path
    cid = card_id(db, pan)
    card = env.cards["namdong"]

    statement = card_statement(db, pan)
    rows = postings(db)
    mine = [p for p in rows if p["card_id"] == cid]
    assert len(mine) == 12  # the charge, then 11 purchases
    cash, cashback = (query(db, "SELECT balance FROM accounts WHERE name=?", f"card:{cid}:{k}")[0][0]
                      for k in ("cash", "cashback"))
    assert {k: v for k, v in statement.items() if k != "postings"} == {
        "pan": pan[:6] + "******" + pan[-4:], "program": "namdong", "member": card["member"],
        "expiry": card["expiry"], "status": "active", "pin_blocked": False, "pin_tries": 0, "cash": cash,
        "cashback": cashback, "receivable": 0, "held": 0}
    assert statement["postings"] == [
        {"id": p["id"], "kind": "purchase", "at": "2019-07-20T12:00:00.000000+09:00", "amount": p["amount"],
         "fee": p["fee"], "cashback": p["cashback"], "rrn": f"{p['id']:012d}", "merchant": "NAMDONG01"}
        for p in reversed(mine[2:])]
    assert [p["amount"] for p in statement["postings"]] == list(range(1_010, 1_000, -1))
    assert statement["postings"][-1]["cashback"] == 75  # 1,001 at 7.5 % (Namdong card, Namdong merchant)
    assert first["37"] == f"{mine[1]['id']:012d}"

    oldest = card_statement(db, pan, recent=12)["postings"]
    assert [p["kind"] for p in oldest[-2:]] == ["purchase", "charge"]
    assert oldest[-1]["merchant"] == "" and oldest[-1]["amount"] == 100_000
    assert card_statement(db, "9410100000099997") is None


async def test_card_statement_shows_the_receivable_a_reversed_refund_left(switch_env):
    """docs/architecture.md, "Refund and partial reversal" and "Receivables": reversing a refund
    whose money was already spent takes what the balances hold and records the rest on the
    card's receivable, which the statement shows. Kills card_statement's `bal("receivable")`
    replaced (`bal(None)`, `"XXreceivableXX"`, `"RECEIVABLE"`: all read 0)."""
    env = switch_env
    client, term, pan, _, first = await bought(env, 20_000)  # cash 80,000, cashback 1,500
    refund = term.refund(pan, 20_000, first["37"])
    assert (await client.request(refund))["39"] == "00"  # cash 100,000, cashback 0
    assert (await client.request(term.purchase(pan, 100_000)))["39"] == "00"  # cash 0, cashback 7,500
    assert (await client.request(term.purchase(pan, 7_500)))["39"] == "00"  # cashback 562 (300 + 150 + 112)
    assert (await client.request(term.reversal(refund)))["39"] == "00"  # takes back 20,000 - 1,500 - 562
    await client.close()
    statement = card_statement(env.core.db_path, pan)
    assert (statement["cash"], statement["cashback"], statement["receivable"]) == (0, 0, -17_938)
    assert verify(env.core.db_path).ok


async def test_verify_reports_the_counts_of_what_it_proved(switch_env):
    """`eum admin verify` prints its counts (docs/architecture.md, Ledger): postings, entries,
    accounts, cards and events of the snapshot it proved. Kills the stats keys replaced in
    audit._verify (`"entries"` → `"XXentriesXX"`, `"ACCOUNTS"`, …)."""
    env = switch_env
    client, *_ = await bought(env, 20_000)
    await client.close()
    db = env.core.db_path
    result = verify(db)
    assert (result.ok, result.problem) == (True, "")
    assert result.stats == {
        "postings": 3, "cards": 2,
        "entries": query(db, "SELECT COUNT(*) FROM entries")[0][0],
        "accounts": query(db, "SELECT COUNT(*) FROM accounts")[0][0],
        "events": query(db, "SELECT COUNT(*) FROM outbox")[0][0]}
    # two charges of two entries; the purchase's ten: cash, payable (gross, fee, support), fee income,
    # fee subsidy, three funders' cashback expense, cashback credited
    assert result.stats["entries"] == 2 + 2 + 10


# ---------------------------------------------------------------------------------- engine


async def test_a_reversed_refund_is_one_reversal_row_naming_the_refund_with_its_exact_shares(switch_env):
    """docs/architecture.md, "Refund and partial reversal": reversing a refund of 5,000 of the
    20,000 purchase posts back fee 25, support 25 and cashback 375 (national 200, city 100,
    Namdong 75), and the posting row says which refund it reverses. Kills, in
    switch/authorize/decide.py _Deciding._undo_refund, the posting row's fields and detail
    keys replaced (card, merchant, RRN, original id, detail), and the reversal's
    kind or card (a reversal of this reversal must still be refused as a reversal)."""
    env = switch_env
    client, term, pan, _, bought_resp = await bought(env)
    refund_req = term.refund(pan, 5_000, bought_resp["37"])
    assert (await client.request(refund_req))["39"] == "00"
    reversal_req = term.reversal(refund_req)
    assert (await client.request(reversal_req))["39"] == "00"
    db = env.core.db_path
    cid = card_id(db, pan)
    purchase, refund = postings(db, "purchase")[0], postings(db, "refund")[0]
    (reversal,) = postings(db, "reversal")
    assert reversal == {
        "id": refund["id"] + 1, "kind": "reversal", "card_id": cid, "mid": "NAMDONG01".ljust(15), "tid": "T0000001",
        "stan": reversal_req["11"], "rrn": f"{refund['id'] + 1:012d}", "amount": 5_000, "fee": 25, "support": 25,
        "cashback": 375, "original_id": refund["id"], "undone": 0}
    (detail,) = query(db, "SELECT detail FROM postings WHERE id=?", reversal["id"])[0]
    assert json.loads(detail) == {"reverses": refund["id"], "member": env.cards["namdong"]["member"],
                                  "month": "2019-07", "day": "2019-07-20"}
    assert (purchase["undone"], refund["undone"]) == (0, 5_000)

    # a reversal of that reversal (DE90 pointing at the 0400) is refused: 12, nothing posted
    with structlog.testing.capture_logs() as logged:
        again = await client.request(term.reversal(reversal_req))
    await client.close()
    assert (again["t"], again["39"]) == ("0410", "12")
    assert _notes(logged, "12") == ["cannot reverse a reversal"]
    assert [p["kind"] for p in postings(db)] == ["charge", "charge", "purchase", "refund", "reversal"]
    assert verify(db).ok


# One tampering per check of audit._verify, in the order verify makes them; each leaves every
# earlier check passing. {p}: the purchase's posting id, {c}: the Namdong card id, {seq}: the seq
# of the purchase's cashback event. The ledger is folded whole first (switch/ledger/store.py,
# account_folds): an entry added after that moves its account's balance by itself (the view
# `accounts` adds the entries past the fold mark), and {fold_mark} takes every entry into the
# folded rows without folding it, as a fold that lost a row would.
TAMPERINGS = {
    "posting_unbalanced": (["UPDATE entries SET amount = amount + 1 WHERE posting_id = {p} AND account = 'fee_income'"],
                           "posting {p} does not balance: entries sum to 1"),
    "entries_without_posting": (["DELETE FROM postings WHERE id = {p}"],
                                "entries reference posting {p}, which does not exist"),
    "accounts_not_zero": (["UPDATE accounts SET balance = balance + 7 WHERE name = 'fee_income'"],
                          "accounts sum to 7, not 0"),
    "account_off_its_entries": (["UPDATE accounts SET balance = balance + 5 WHERE name = 'bank_settlement'",
                                 "UPDATE accounts SET balance = balance - 5 WHERE name = 'card:{c}:cash'"],
                                "account bank_settlement balance -199995 != its entries -200000"),
    "entry_to_no_account": (["INSERT INTO entries(posting_id, account, amount) VALUES ({p}, 'ghost', 0)",
                             "{fold_mark}"],
                            "entries post to account ghost, which does not exist"),
    "negative_card_cash": (["INSERT INTO entries(posting_id, account, amount) VALUES ({p}, 'card:{c}:cash', -90000),"
                            " ({p}, 'card:{c}:cashback', 90000)"],
                           "card account card:{c}:cash is negative: -10000"),
    "posting_without_entries": (["INSERT INTO postings(id, kind, at, amount) VALUES (999, 'charge', '2019-07-20', 5)"],
                                "posting 999 has an amount but no entries"),
    "posting_answers_two_messages": (["INSERT INTO messages(tid, stan, tx_time, mti, digest, rc, response, posting_id, at)"
                                      " VALUES ('T0000009', '000999', '0720030000', '0200', 'x', '00', '{{}}', {p},"
                                      " '2019-07-20')"],
                                     "posting {p} answers 2 messages"),
    "undone_beyond_amount": (["UPDATE postings SET undone = 20001 WHERE id = {p}"],
                             "posting {p} undone 20001 outside 0..20000"),
    "event_without_posting": (["UPDATE outbox SET posting_id = 999 WHERE seq = {seq}"],
                              "event {seq} tells of posting 999, which does not exist"),
    "transaction_event_lost": (["DELETE FROM outbox WHERE posting_id = {p} AND type = 'purchase'"],
                               "posting {p} (purchase) has no purchase event"),
    "cashback_event_disagrees": (["UPDATE outbox SET payload = json_set(payload, '$.cashback', 1499) WHERE seq = {seq}"],
                                 "posting {p} moved 1500 won of cashback, its cashback event says 1499"),
}


FOLD_MARK = "UPDATE accounts_folded SET entries_rowid = (SELECT MAX(rowid) FROM entries)"


@pytest.mark.parametrize("case", TAMPERINGS)
async def test_verify_in_process_names_each_discrepancy_exactly(switch_env, case):
    """docs/architecture.md, Ledger: verify fails with the first discrepancy, named. The
    command-line proof is tests/test_verify_fails.py (it kills each check turned off with
    `if False:`); mutmut judges mutants inside the test process, where that subprocess cannot
    see them, so this is the same proof through switch.ledger.audit.verify itself. Kills, in
    audit._verify/_verify_outbox: a check's `row = None` (check off), `VerifyResult(None, …)`,
    the problem text replaced or None, and the stats dropped from a failure."""
    env = switch_env
    client, term, pan, _, _ = await bought(env, 20_000)
    await client.close()
    db = env.core.db_path
    p = postings(db, "purchase")[0]["id"]
    c = card_id(db, pan)
    (seq,) = query(db, "SELECT seq FROM outbox WHERE posting_id = ? AND type = 'cashback.credited'", p)[0]
    assert verify(db).ok
    statements, problem = TAMPERINGS[case]
    conn = sqlite3.connect(db, isolation_level=None)
    fold_now(conn)
    conn.execute("BEGIN")
    for sql in statements:
        conn.execute(sql.format(p=p, c=c, seq=seq, fold_mark=FOLD_MARK))
    conn.execute("COMMIT")
    conn.close()
    result = verify(db)
    assert (result.ok, result.problem) == (False, problem.format(p=p, c=c, seq=seq))
    assert (result.stats["postings"], result.stats["cards"]) == (query(db, "SELECT COUNT(*) FROM postings")[0][0], 2)


async def test_every_decline_and_every_answer_without_a_posting_is_logged_with_its_reason(switch_env):
    """docs/host-interface.md §4: the response code tells the terminal; the canonical log line's
    `note` tells the operator why (the only place the reason is kept). Kills the replaced or
    emptied reason strings of Engine.handle (switch/authorize/engine.py) and of _card,
    _purchase, _refund and _reversal (switch/authorize/decide.py) (e.g.
    `"original purchase not found for this card"` → `"XX…XX"`/upper case/None)."""
    env = switch_env
    namdong, incheon = env.cards["namdong"]["pan"], env.cards["incheon"]["pan"]
    await env.op("merchant-add", mid="DEPT0001", name="Big Department Store", district="namdong",
                 annual_sales=250_000_000, category="department_store")
    await env.op("terminal-add", tid="T0000009", mid="DEPT0001")
    await env.op("terminal-add", tid="T0000003", mid="NAMDONG01")  # known, never signed on
    old = await env.op("card-issue", program="incheon", expiry="1906")
    await env.op("card-charge", pan=old["pan"], amount=50_000)
    big = await env.op("card-issue", program="incheon")
    await env.op("card-charge", pan=big["pan"], amount=2_000_000)
    client, term = await env.signed_on()
    yeonsu, yterm = await env.signed_on("T0000002", "YEONSU01")
    dept, dterm = await env.signed_on("T0000009", "DEPT0001")
    assert (await yeonsu.request(yterm.purchase(big["pan"], 1_500_000)))["39"] == "00"
    await env.op("card-charge", pan=big["pan"], amount=1_000_000)

    answers = []
    with structlog.testing.capture_logs() as logged:
        async def send(c, fields):
            resp = await c.request(fields)
            answers.append(resp["39"])
            return resp

        await send(client, Terminal("T9999999", "NAMDONG01", stan=10).purchase(namdong, 1_000))
        await send(client, Terminal("T0000003", "NAMDONG01", stan=20).purchase(namdong, 1_000))
        await send(client, Terminal("T0000001", "YEONSU01", stan=500).purchase(namdong, 1_000))
        await send(client, term.purchase(namdong, 1_000, expiry="9912"))
        await send(client, term.purchase(old["pan"], 1_000))
        await send(client, term.purchase(namdong, 0))
        await send(dept, dterm.purchase(incheon, 10_000))
        await send(yeonsu, yterm.purchase(big["pan"], 500_001))
        too_much = term.purchase(namdong, 100_001)
        await send(client, too_much)
        await send(client, term.refund(namdong, 1_000, "000000009999"))
        sale = term.purchase(namdong, 20_000)
        sale_rrn = (await client.request(sale))["37"]
        await send(client, term.refund(namdong, 20_001, sale_rrn))
        await send(yeonsu, yterm.refund(namdong, 1_000, sale_rrn))
        await send(client, {**term.reversal(sale), "2": incheon})
        await send(client, term.reversal(term.purchase(namdong, 3_000)))  # never sent
        await send(client, term.reversal(too_much))  # declined: no posting
        await send(client, term.reversal(sale))
        nothing_left = await send(client, term.reversal(sale))  # another STAN, same original
        sale2 = term.purchase(namdong, 10_000)
        refund = term.refund(namdong, 5_000, (await client.request(sale2))["37"])
        await send(client, refund)
        await send(client, term.reversal(refund))
        already = await send(client, term.reversal(refund))
        await env.op("card-block", pan=namdong)
        await send(client, term.balance(namdong))
    for c in (client, yeonsu, dept):
        await c.close()
    reasons = [(e["rc"], e["note"]) for e in logged if e["event"] == "message" and "note" in e]
    assert reasons == [
        ("58", "terminal unknown"),
        ("58", "terminal not signed on"),
        ("58", "DE42 is not the terminal's merchant"),
        ("14", "expiry does not match the card"),
        ("54", "card expired"),
        ("13", "amount out of range"),
        ("57", "card not accepted at category department_store"),
        ("61", "daily spend limit"),
        ("51", "insufficient funds"),
        ("25", "original purchase not found for this card"),
        ("13", "refund exceeds what is left of the original"),
        ("25", "original purchase was at another merchant"),
        ("25", "reversal PAN differs from the original's"),
        ("00", "original unknown: remembered"),
        ("00", "original had no posting"),
        ("00", "nothing left to reverse"),
        ("00", "refund already reversed"),
        ("62", "card blocked"),
    ]
    assert answers == ["58", "58", "58", "14", "54", "13", "57", "61", "51", "25", "13", "25", "25", "00", "00", "00",
                       "00", "00", "00", "00", "62"]
    # a reversal that undoes nothing more still tells the card's balances (DE54): the sale was
    # reversed, so 100,000 cash; after sale2 (750 cashback) and its refund reversed, 90,000 + 750
    assert (decode_balances(nothing_left["54"]), decode_balances(already["54"])) == (
        Balances(cash=100_000, cashback=0), Balances(cash=90_000, cashback=750))
    assert verify(env.core.db_path).ok


def _detail(db, posting_id: int) -> dict:
    return json.loads(query(db, "SELECT detail FROM postings WHERE id=?", posting_id)[0][0])


async def test_each_posting_records_how_its_figures_were_computed(switch_env):
    """A posting's detail is its audit trail: for a purchase the fee tier, rate, fee support,
    cashback per funder, eligible spend and policy it was priced with, and the split between
    cashback and cash spent; for a refund or reversal the shares it gave back; the purchase
    keeps how much of it was reversed (docs/architecture.md, "Partial reversal (DE95)"). Worked example 1
    (docs/domain.md): 20,000 by a Namdong card at a 250M Namdong merchant on 2019-07-20.
    Kills the detail fields replaced or dropped in _Deciding._purchase and _undo_purchase
    (switch/authorize/decide.py)."""
    env = switch_env
    client, term, pan, sale, resp = await bought(env)
    db = env.core.db_path
    member = env.cards["namdong"]["member"]
    purchase = postings(db, "purchase")[0]
    assert _detail(db, purchase["id"]) == {
        "member": member, "month": "2019-07", "day": "2019-07-20", "cb_used": 0, "cash_used": 20_000, "fee": 100,
        "fee_tier": "micro", "rate_bp": 50, "support": [["namdong", 100]],
        "cashback": [["national", 800], ["city", 400], ["namdong", 300]], "eligible": 20_000, "policy": "2019-04"}

    refund_req = term.refund(pan, 5_000, resp["37"])
    assert (await client.request(refund_req))["39"] == "00"
    refund = postings(db, "refund")[0]
    assert (refund["tid"], refund["stan"], refund["original_id"]) == ("T0000001", refund_req["11"], purchase["id"])
    assert _detail(db, refund["id"]) == {
        "cb_back": 0, "fee_back": 25, "support_back": [["namdong", 25]],
        "claw": [["national", 200], ["city", 100], ["namdong", 75]], "eligible_back": 5_000,
        "member": member, "month": "2019-07", "day": "2019-07-20"}

    # a second purchase spends the 1,125 cashback left first; a partial reversal to 4,000 undoes 6,000
    second = term.purchase(pan, 10_000)
    assert (await client.request(second))["39"] == "00"
    assert (await client.request(term.reversal(second, replacement_amount=4_000)))["39"] == "00"
    await client.close()
    p2 = postings(db, "purchase")[1]
    d2 = _detail(db, p2["id"])
    assert (d2["cb_used"], d2["cash_used"], d2["eligible"]) == (1_125, 8_875, 10_000)
    assert query(db, "SELECT undone, reversed FROM postings WHERE id=?", p2["id"]) == [(6_000, 6_000)]
    reversal = postings(db, "reversal")[0]
    assert _detail(db, reversal["id"]) == {
        "cb_back": 675, "fee_back": 30, "support_back": [["namdong", 30]],
        "claw": [["national", 240], ["city", 120], ["namdong", 90]], "eligible_back": 6_000,
        "member": member, "month": "2019-07", "day": "2019-07-20"}
    assert verify(db).ok


async def test_a_refund_and_a_reversal_log_the_fee_and_cashback_they_give_back_as_negatives(switch_env):
    """The canonical log line's `fee` and `cashback` are what the message moved: a refund of
    5,000 of worked example 1 gives back fee 25 and cashback 375, logged as -25 and -375; a
    reversal of the rest, -75 and -1,125. Kills the Decision's fee/cashback of a refund or
    reversal dropped or None (switch/authorize/decide.py _refund, _reversal)."""
    env = switch_env
    client, term, pan, sale, resp = await bought(env)
    with structlog.testing.capture_logs() as logged:
        assert (await client.request(term.refund(pan, 5_000, resp["37"])))["39"] == "00"
        assert (await client.request(term.reversal(sale)))["39"] == "00"
    await client.close()
    lines = [(e["mti"], e["amount"], e["fee"], e["cashback"]) for e in logged if e["event"] == "message"]
    assert lines == [("0200", 5_000, -25, -375), ("0400", 20_000, -75, -1_125)]
    assert verify(env.core.db_path).ok


async def test_a_refund_of_one_won_is_approved_and_gives_back_one_won(switch_env):
    """docs/host-interface.md §4: 13 is for a refund of 0 or beyond what is left; 1 won is a
    refund. Its shares all floor to 0. Kills `req.amount <= 0` → `<= 1` in _refund."""
    env = switch_env
    client, term, pan, _, resp = await bought(env)
    one = await client.request(term.refund(pan, 1, resp["37"]))
    await client.close()
    assert one["39"] == "00"
    refund = postings(env.core.db_path, "refund")[0]
    assert (refund["amount"], refund["fee"], refund["support"], refund["cashback"]) == (1, 0, 0, 0)
    assert posting_entries(env.core.db_path, refund["id"]) == {
        f"card:{card_id(env.core.db_path, pan)}:cash": 1, "merchant:NAMDONG01      :payable": -1}


async def test_de38_is_the_last_six_digits_of_a_posting_id_past_a_million(tmp_path):
    """docs/architecture.md, Choices: "RRN is the posting id, 12 digits; DE38 its last 6
    digits". With the ledger's last posting at 999,999, the next purchase is posting 1,000,000:
    RRN 000001000000, DE38 000000; its refund 000001. Kills `pid % 1_000_000` → `% 1000001`
    in _purchase and _refund (the same figures below a million)."""
    data = tmp_path / "var"
    async with start_switch(data, clock=FixedClock(LAUNCH)) as env:
        await provision(env)
    conn = sqlite3.connect(data / "ledger.sqlite3")
    with conn:  # a posting that moved nothing, numbered as if 999,999 had gone before
        conn.execute("INSERT INTO postings(id, kind, at, amount) VALUES (999999, 'seed_charge', '2019-07-20', 0)")
    conn.close()
    async with start_switch(data, clock=FixedClock(LAUNCH)) as env:
        env.cards.update({"namdong": {"pan": query(env.core.db_path, "SELECT pan FROM cards WHERE program='namdong'")[0][0]}})
        client, term, pan, _, resp = await bought(env)
        refund = await client.request(term.refund(pan, 1_000, resp["37"]))
        await client.close()
        assert (resp["37"], resp["38"]) == ("000001000000", "000000")
        assert (refund["39"], refund["37"], refund["38"]) == ("00", "000001000001", "000001")
        assert verify(env.core.db_path).ok


async def test_a_store_that_never_recorded_where_its_outbox_began_is_not_held_to_events(switch_env):
    """switch/ledger/audit.py _verify_outbox: without `outbox_since_posting` in meta (a store
    from before the outbox) no posting is held to an event, and verify passes. Kills
    `since = int(row[0]) if (row) or True else None` (a crash on such a store) and the
    early `return ""` replaced by `"XXXX"`."""
    env = switch_env
    client, *_ = await bought(env)
    await client.close()
    db = env.core.db_path
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM meta WHERE key = 'outbox_since_posting'")
        conn.execute("DELETE FROM outbox WHERE type = 'purchase'")
    conn.close()
    result = verify(db)
    assert (result.ok, result.problem, result.stats["postings"]) == (True, "", 3)


async def test_a_card_expiring_in_october_is_valid_through_october_and_declined_54_in_november(switch_env):
    """docs/architecture.md, Choices: a card is valid through its expiry month (YYMM, KST).
    A two-digit month is read whole. Kills `int(expiry[2:])` → `int(expiry[3:])` in
    decide.expired (which reads 10 as 0 and 11 as 1, the same as 07 for July)."""
    env = switch_env
    card = await env.op("card-issue", program="incheon", expiry="1910")
    await env.op("card-charge", pan=card["pan"], amount=50_000)
    env.clock.at = datetime.fromisoformat("2019-10-31T23:59:59+09:00")
    client, term = await env.signed_on()
    october = await client.request(term.purchase(card["pan"], 1_000))
    env.clock.at = datetime.fromisoformat("2019-11-01T00:00:00+09:00")
    november = await client.request(term.purchase(card["pan"], 1_000))
    await client.close()
    assert (october["39"], november["39"]) == ("00", "54")
