"""`eum admin verify` fails, naming the discrepancy, for every check it makes.

One ledger is built through real traffic (the same `start_switch` + `provision` that make the
`switch_env` fixture: real TCP, a real ledger, a FixedClock), once per module and store; the
switch is stopped, and each test gets its own copy of the closed data dir (on PostgreSQL, of
the built database: conftest `BuiltLedger`), changes the ledger in one way with plain SQL, and
runs the real CLI (`eum admin --data-dir DIR verify`) as a subprocess: exit 1 and the exact
line naming the check, posting, account and amount.

What verify proves is in docs/architecture.md, Ledger (every posting balances; all accounts
sum to 0; every account's balance equals its entries, so each card's cash and cashback do;
no card balance is negative; every entry has a posting and an account; no posting answers
two messages; no purchase is undone beyond its amount) and docs/events.md, Delivery
semantics: at least once (the outbox agrees with the postings). A card balance never goes
negative: docs/domain.md, Spending order and clawback (assumptions).

verify reports the FIRST discrepancy, in this order (switch/ledger/audit.py): posting balance,
entries without a posting, accounts sum, account balance = entries, entries without an
account, negative card balance, posting with an amount and no entries, posting answering two
messages, undone outside 0..amount, then the outbox. Each tamper leaves every earlier check
holding, so the line names the intended check. Some tampers cannot help breaking a later check
too (an unbalanced posting also leaves an account off its entries: the accounts sum is the sum
of all postings); the test then still fails if the intended check is removed, because the
later check's line differs.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from switch.clock import FixedClock
from switch.ledger.store import PgDsn, connect, locate

from conftest import (LAUNCH, BuiltLedger, account_balances, bought, card_id, payable, postings, provision,
                      start_switch)

pytestmark = pytest.mark.both_stores  # SQLite and PostgreSQL (tests/conftest.py)

EUM_SCRIPT = Path(sys.executable).parent / "eum"
EUM = [str(EUM_SCRIPT)] if EUM_SCRIPT.exists() else [sys.executable, "-m", "switch.cli.main"]
COMMAND_TIMEOUT_S = 30

# The postings of the traffic below, in order (asserted by the `built` fixture).
CHARGE_NAMDONG, CHARGE_INCHEON = 1, 2
PURCHASE = 3            # Namdong card, 20,000 at NAMDONG01 (worked example 1: cashback 1,500)
REFUND = 4              # 5,000 of PURCHASE
REVERSED_PURCHASE = 5   # Namdong card, 10,000 at NAMDONG01 (spends the 1,125 cashback first)
REVERSAL = 6            # all of REVERSED_PURCHASE
YEONSU_PURCHASE = 7     # Incheon card, 30,000 at YEONSU01: its only purchase (cashback 1,800)
RECHARGE = 8            # 50,000 more on the Namdong card
NAMDONG_PAYABLE = payable("NAMDONG01")
YEONSU_PAYABLE = payable("YEONSU01")

# The balances after that traffic: what each tamper starts from.
BALANCES = {
    "bank_settlement": -250_000,
    "card:1:cash": 135_000,
    "card:1:cashback": 1_125,
    "card:2:cash": 70_000,
    "card:2:cashback": 1_800,
    "cashback_expense:city": -900,
    "cashback_expense:namdong": -225,
    "cashback_expense:national": -1_800,
    "fee_income": 225,
    "fee_subsidy:namdong": -75,
    NAMDONG_PAYABLE: 15_000,
    YEONSU_PAYABLE: 29_850,
}


async def _traffic(data_dir: Path) -> None:
    """Charges, a purchase and its partial refund, a purchase and its full reversal, a
    purchase by the other card at the other merchant, a second charge; then the switch stops."""
    async with start_switch(data_dir, clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        client, term, pan, _, purchase = await bought(env, 20_000)
        assert (await client.request(term.refund(pan, 5_000, purchase["37"])))["39"] == "00"
        reversed_purchase = await client.request(term.purchase(pan, 10_000))
        assert reversed_purchase["39"] == "00"
        assert (await client.request(term.reversal(reversed_purchase)))["39"] == "00"
        await client.close()
        client, term = await env.signed_on("T0000002", "YEONSU01")
        assert (await client.request(term.purchase(env.cards["incheon"]["pan"], 30_000)))["39"] == "00"
        await client.close()
        await env.op("card-charge", pan=pan, amount=50_000)
        assert card_id(env.core.db_path, pan) == 1
        assert card_id(env.core.db_path, env.cards["incheon"]["pan"]) == 2


def _build(data_dir: Path) -> None:
    """The closed data dir after the traffic, and its postings and balances."""
    asyncio.run(_traffic(data_dir))
    db = data_dir / "ledger.sqlite3"
    assert [(p["id"], p["kind"], p["amount"], p["original_id"], p["undone"]) for p in postings(db)] == [
        (CHARGE_NAMDONG, "charge", 100_000, None, 0),
        (CHARGE_INCHEON, "charge", 100_000, None, 0),
        (PURCHASE, "purchase", 20_000, None, 5_000),
        (REFUND, "refund", 5_000, PURCHASE, 0),
        (REVERSED_PURCHASE, "purchase", 10_000, None, 10_000),
        (REVERSAL, "reversal", 10_000, REVERSED_PURCHASE, 0),
        (YEONSU_PURCHASE, "purchase", 30_000, None, 0),
        (RECHARGE, "charge", 50_000, None, 0),
    ]
    assert account_balances(db) == BALANCES


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BuiltLedger]:
    """The ledger after the traffic, built once for the module (per store)."""
    with BuiltLedger(_build, tmp_path_factory) as ledger:
        yield ledger


@pytest.fixture
def data_dir(built: BuiltLedger, ledger_store, tmp_path: Path) -> Path:
    """This test's own copy of the built (closed) data dir, and of its ledger."""
    return built.copy(ledger_store, tmp_path)


def tamper(data_dir: Path, *changes: tuple[str, tuple, int]) -> None:
    """Apply (sql, args, rows it must change) to the data dir's ledger in one transaction.

    On SQLite a balance is a folded row plus the entries past the fold mark (switch/ledger/store.py:
    account_folds, under the view `accounts`), and the built ledger is folded whole (a switch
    folds as it stops). There a change to the accounts is made to the folded rows (SQLite counts
    no row changed through a view), and the mark then moves past every entry, as a fold would
    take the tampered entries with it: the same corruption as in a table of balances."""
    where = locate(data_dir)
    folded = not isinstance(where, PgDsn)
    conn = connect(where)
    try:
        conn.execute("BEGIN")
        for sql, args, rows in changes:
            if folded:
                sql = (sql.replace("UPDATE accounts ", "UPDATE account_folds ")
                       .replace("accounts.name", "account_folds.name"))
            changed = conn.execute(sql, args).rowcount
            assert changed == rows, f"tamper {sql!r} {args} changed {changed} rows, not {rows}"
        if folded:
            conn.execute("UPDATE accounts_folded SET entries_rowid = (SELECT MAX(rowid) FROM entries)")
        conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


def tamper_past_check(ledger_store, data_dir: Path, table: str, constraint: str,
                      *changes: tuple[str, tuple, int]) -> None:
    """`tamper`, for a corruption PostgreSQL's schema refuses itself with a CHECK constraint (its
    second line of defence, switch/ledger/postgres.py): there, the tamper is refused first (and
    rolled back), then the constraint dropped, as on a store that lost it, so that verify's own
    check is reached. SQLite has no such constraint: the tamper applies."""
    if ledger_store.postgresql:
        import psycopg

        with pytest.raises(psycopg.errors.CheckViolation, match=constraint):
            tamper(data_dir, *changes)
        tamper(data_dir, (f"ALTER TABLE {table} DROP CONSTRAINT {constraint}", (), -1))
    tamper(data_dir, *changes)


def add_to_balance(name: str, delta: int) -> tuple[str, tuple, int]:
    return "UPDATE accounts SET balance = balance + ? WHERE name = ?", (delta, name), 1


def add_entry(posting_id: int, account: str, amount: int) -> tuple[str, tuple, int]:
    return "INSERT INTO entries(posting_id, account, amount) VALUES (?, ?, ?)", (posting_id, account, amount), 1


def run_verify(data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*EUM, "admin", "--data-dir", str(data_dir), "verify"], cwd=data_dir.parent,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)


def assert_not_verified(data_dir: Path, problem: str) -> None:
    proc = run_verify(data_dir)
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", f"ledger NOT verified: {problem}\n")


# ---------------------------------------------------------------------------- the untampered ledger

def test_the_ledger_of_real_traffic_verifies_with_exit_0_and_its_counts(data_dir):
    # also the boundary of the undo check: REVERSED_PURCHASE is undone by exactly its amount
    proc = run_verify(data_dir)
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0, "ledger verified: postings 8, entries 54, accounts 12, cards 2, events 13\n", "")


# ---------------------------------------------------------------------------- postings and entries

def test_a_posting_whose_entries_do_not_balance_fails_naming_it(data_dir):
    # the merchant's gross credit of PURCHASE says 20,001 for a 20,000 debit of the card
    tamper(data_dir, ("UPDATE entries SET amount = 20001 WHERE posting_id = ? AND account = ? AND amount = 20000",
                      (PURCHASE, NAMDONG_PAYABLE), 1))
    assert_not_verified(data_dir, f"posting {PURCHASE} does not balance: entries sum to 1")


def test_entries_whose_posting_is_gone_fail_naming_the_posting(data_dir):
    tamper(data_dir, ("DELETE FROM postings WHERE id = ?", (RECHARGE,), 1))
    assert_not_verified(data_dir, f"entries reference posting {RECHARGE}, which does not exist")


def test_entries_booked_to_an_account_that_does_not_exist_fail_naming_it(data_dir):
    # a balanced pair on a card account with no row: every posting and every account row still agree
    # (on SQLite: folded, with no folded row, as a fold that lost the row would leave it)
    tamper(data_dir, add_entry(YEONSU_PURCHASE, "card:3:cash", 100), add_entry(YEONSU_PURCHASE, "card:3:cash", -100))
    assert_not_verified(data_dir, "entries post to account card:3:cash, which does not exist")


def test_a_posting_with_an_amount_and_no_entries_fails_naming_it(data_dir):
    # YEONSU_PURCHASE's entries are lost and the balances rebuilt from the entries that remain:
    # postings balance, accounts agree with entries and sum to 0, no card goes negative
    tamper(data_dir,
           ("DELETE FROM entries WHERE posting_id = ?", (YEONSU_PURCHASE,), 7),
           ("UPDATE accounts SET balance = "
            "COALESCE((SELECT SUM(amount) FROM entries e WHERE e.account = accounts.name), 0)", (), len(BALANCES)))
    balances = account_balances(data_dir / "ledger.sqlite3")
    assert (balances["card:2:cash"], balances["card:2:cashback"], balances[YEONSU_PAYABLE]) == (100_000, 0, 0)
    assert_not_verified(data_dir, f"posting {YEONSU_PURCHASE} has an amount but no entries")


def test_a_posting_that_answers_two_messages_fails_naming_it(data_dir):
    # the refund's message now points at the purchase, which already answers its own
    tamper(data_dir, ("UPDATE messages SET posting_id = ? WHERE posting_id = ?", (PURCHASE, REFUND), 1))
    assert_not_verified(data_dir, f"posting {PURCHASE} answers 2 messages")


@pytest.mark.parametrize("undone", [20_001, -1], ids=["beyond_the_amount", "negative"])
def test_a_purchase_undone_outside_0_to_its_amount_fails_naming_it(data_dir, undone, ledger_store):
    tamper_past_check(ledger_store, data_dir, "postings", "undone_within_amount",
                      ("UPDATE postings SET undone = ? WHERE id = ?", (undone, PURCHASE), 1))
    assert_not_verified(data_dir, f"posting {PURCHASE} undone {undone} outside 0..20000")


# ---------------------------------------------------------------------------- accounts

def test_accounts_that_do_not_sum_to_zero_fail_with_the_sum(data_dir):
    # 1,000 won appear on the card's cash balance from nowhere (this also leaves the account
    # off its entries: with every posting balanced that is the only way the sum can move)
    tamper(data_dir, add_to_balance("card:1:cash", 1_000))
    assert_not_verified(data_dir, "accounts sum to 1000, not 0")


def test_a_card_cash_balance_off_its_entries_fails_naming_the_account(data_dir):
    # 10,000 moved from the merchant's payable to the card's cash without a posting
    tamper(data_dir, add_to_balance("card:1:cash", 10_000), add_to_balance(NAMDONG_PAYABLE, -10_000))
    assert_not_verified(data_dir, "account card:1:cash balance 145000 != its entries 135000")


def test_a_merchant_payable_off_its_entries_fails_naming_the_account(data_dir):
    # 100 won of Namdong's payable booked to Yeonsu's balance without a posting
    tamper(data_dir, add_to_balance(NAMDONG_PAYABLE, -100), add_to_balance(YEONSU_PAYABLE, 100))
    assert_not_verified(data_dir, f"account {NAMDONG_PAYABLE} balance 14900 != its entries 15000")


def test_a_card_cashback_balance_off_its_entries_fails_naming_the_account(data_dir):
    # 1,000 won of cashback credited to the balance with no posting, charged to the city
    tamper(data_dir, add_to_balance("card:1:cashback", 1_000), add_to_balance("cashback_expense:city", -1_000))
    assert_not_verified(data_dir, "account card:1:cashback balance 2125 != its entries 1125")


def test_a_card_balance_moved_from_cash_to_cashback_without_entries_fails(data_dir):
    # the card's total is right, its split between cash and cashback is not
    tamper(data_dir, add_to_balance("card:2:cash", -1_800), add_to_balance("card:2:cashback", 1_800))
    assert_not_verified(data_dir, "account card:2:cash balance 68200 != its entries 70000")


@pytest.mark.parametrize("kind, other, balance", [("cash", "cashback", 70_000), ("cashback", "cash", 1_800)])
def test_a_negative_card_balance_fails_even_when_every_sum_agrees(data_dir, kind, other, balance, ledger_store):
    # YEONSU_PURCHASE gets a balanced pair moving one won more than the balance from one of the
    # Incheon card's accounts to the other, and both balances follow: only the sign is wrong
    moved = balance + 1
    tamper_past_check(ledger_store, data_dir, "accounts", "card_money_not_negative",
                      add_entry(YEONSU_PURCHASE, f"card:2:{kind}", -moved),
                      add_entry(YEONSU_PURCHASE, f"card:2:{other}", moved),
                      add_to_balance(f"card:2:{kind}", -moved), add_to_balance(f"card:2:{other}", moved))
    assert_not_verified(data_dir, f"card account card:2:{kind} is negative: -1")


# ---------------------------------------------------------------------------- the outbox

def test_an_event_of_a_posting_that_does_not_exist_fails_naming_the_event(data_dir):
    tamper(data_dir, ("INSERT INTO outbox(event_id, topic, type, posting_id, payload, committed_at) "
                      "SELECT event_id, topic, type, 99, payload, committed_at FROM outbox WHERE posting_id = ?",
                      (RECHARGE,), 1))
    assert_not_verified(data_dir, "event 14 tells of posting 99, which does not exist")


@pytest.mark.parametrize("posting_id, kind", [(REFUND, "refund"), (REVERSAL, "reversal"), (RECHARGE, "charge")])
def test_a_posting_whose_transaction_event_is_lost_fails_naming_it(data_dir, posting_id, kind):
    tamper(data_dir, ("DELETE FROM outbox WHERE posting_id = ? AND type = ?", (posting_id, kind), 1))
    assert_not_verified(data_dir, f"posting {posting_id} ({kind}) has no {kind} event")


def test_a_clawback_event_that_disagrees_with_the_entries_fails_with_both_amounts(data_dir, ledger_store):
    # the same change of the payload's cashback, in each store's JSON functions
    changed = ("jsonb_set(payload::jsonb, '{cashback}', '-749')::text" if ledger_store.postgresql
               else "json_set(payload, '$.cashback', -749)")
    tamper(data_dir, (f"UPDATE outbox SET payload = {changed} "
                      "WHERE posting_id = ? AND type = 'cashback.clawed_back' "
                      "AND json_extract(payload, '$.cashback') = -750",
                      (REVERSAL,), 1))
    assert_not_verified(data_dir, f"posting {REVERSAL} moved -750 won of cashback, its cashback event says -749")


def test_a_posting_that_moved_cashback_without_its_cashback_event_fails(data_dir):
    tamper(data_dir, ("DELETE FROM outbox WHERE posting_id = ? AND type = 'cashback.credited'", (YEONSU_PURCHASE,), 1))
    assert_not_verified(data_dir, f"posting {YEONSU_PURCHASE} moved 1800 won of cashback, its cashback event says 0")
