"""`eum report`: exact settlement and program figures over a ledger built by real traffic.

The ledger is built once per module (and store) by driving a real switch (open_core + TCP
terminals) over three KST days with a pinned clock; each test reads back its own copy of it
(conftest `BuiltLedger`). Every expected figure is worked out below from the docs/domain.md
rules in force in July 2019:

  cashback (policy 2019-04): national 4 %, city 2 %, + district 1.5 % (Namdong card in
  Namdong), 4 % (Seo card in Seo-gu), 4 % (Yeonsu card in Yeonsu); no monthly cap
  fees (2019-01-31 schedule): micro (<= 300M) 0.5 %, small1 (300-500M) 1.0 %;
  Namdong pays 0.5 % for its merchants <= 500M; Seo-gu pays 0.5 % under 1B;
  online mall: 3 % PG fee, no support.  Every won amount = floor(amount x bp / 10000);
  a refund or reversal of U of A undoes floor(x*U/A) of each figure (first undo).

A posting counts on the KST day it was posted (docs/reports.md).
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Iterator

import pytest

from conftest import BuiltLedger, account_balances, query, start_switch
from switch.ledger.audit import verify
from switch.ledger.store import PgDsn, Store, connect, locate, open_store
from switch.clock import FixedClock
from switch.cli.report import csv_text, write_csv_files
from switch.ledger.reports import Period, ReportError, build_report, kst_day, table
from terminal_sim.terminal import Terminal

D0 = "2019-07-19"  # day D-1
D1 = "2019-07-20"  # day D
D2 = "2019-07-21"  # day D+1

EUM_SCRIPT = Path(sys.executable).parent / "eum"
EUM = [str(EUM_SCRIPT)] if EUM_SCRIPT.exists() else [sys.executable, "-m", "switch.cli.main"]

pytestmark = pytest.mark.both_stores  # SQLite and PostgreSQL (tests/conftest.py)


def won(amount: int, bp: int) -> int:
    """The project's one rounding rule."""
    return amount * bp // 10_000


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


class Ledger:
    """A test's copy of the built ledger: its data dir, its store, the PANs of the traffic."""

    def __init__(self, data_dir: Path, pans: list[str]) -> None:
        self.data_dir = data_dir
        self.db: Store = locate(data_dir)  # the data dir's SQLite file, or this test's database ($EUM_STORE)
        self.pans = pans


async def _drive(data_dir: Path) -> list[str]:
    """The traffic; the PANs of its four cards."""
    clock = FixedClock(at(f"{D0}T12:00:00+09:00"))
    async with start_switch(data_dir, clock=clock) as env:
        for mid, district, sales, mall in (("NAMDONG01", "namdong", 250_000_000, False),
                                           ("YEONSU01", "yeonsu", 250_000_000, False),
                                           ("SEO01", "seo", 400_000_000, False),
                                           ("MALL01", "namdong", 250_000_000, True)):
            await env.op("merchant-add", mid=mid, name=f"{mid} shop", district=district, annual_sales=sales,
                         online_mall=mall)
        clients, terms = {}, {}
        for tid, mid in (("T0000001", "NAMDONG01"), ("T0000002", "YEONSU01"), ("T0000003", "MALL01"),
                         ("T0000004", "SEO01")):
            await env.op("terminal-add", tid=tid, mid=mid)
            clients[mid] = await env.client().connect()
            terms[mid] = Terminal(tid, mid, now=clock.now)
            assert (await clients[mid].request(terms[mid].sign_on()))["39"] == "00"

        async def send(mid: str, fields: dict) -> dict:
            resp = await clients[mid].request(fields)
            assert resp["39"] == "00", (mid, fields.get("3"), resp["39"])
            return resp

        # -- D-1: member M-A joins with a Namdong card and buys twice
        a = (await env.op("card-issue", program="namdong", member="M-A"))["pan"]
        await env.op("card-charge", pan=a, amount=100_000)
        p1 = await send("NAMDONG01", terms["NAMDONG01"].purchase(a, 20_000))   # worked example 1
        p2_req = terms["YEONSU01"].purchase(a, 10_000)
        await send("YEONSU01", p2_req)

        # -- D: yesterday's Yeonsu purchase reversed, a quarter of the Namdong one refunded;
        #       member M-B joins (Incheon card), M-A takes a second card (Seo program)
        clock.at = at(f"{D1}T12:00:00+09:00")
        await send("YEONSU01", terms["YEONSU01"].reversal(p2_req))
        await send("NAMDONG01", terms["NAMDONG01"].refund(a, 5_000, p1["37"]))
        b = (await env.op("card-issue", program="incheon", member="M-B"))["pan"]
        await env.op("card-charge", pan=b, amount=50_000)
        c = (await env.op("card-issue", program="seo", member="M-A"))["pan"]
        await env.op("card-charge", pan=c, amount=30_000)
        await send("SEO01", terms["SEO01"].purchase(b, 30_000))
        await send("MALL01", terms["MALL01"].purchase(c, 12_345, entry_mode="812"))
        p5 = await send("SEO01", terms["SEO01"].purchase(c, 8_000))
        clock.at = at(f"{D1}T23:59:59.999999+09:00")  # the last instant of D
        f2_req = terms["SEO01"].refund(c, 3_000, p5["37"])
        await send("SEO01", f2_req)

        # -- D+1: the first instant; member M-E joins (Yeonsu card) and buys; the refund of
        #         yesterday is reversed at noon
        clock.at = at(f"{D2}T00:00:00+09:00")
        e = (await env.op("card-issue", program="yeonsu", member="M-E"))["pan"]
        await env.op("card-charge", pan=e, amount=20_000)
        await send("YEONSU01", terms["YEONSU01"].purchase(e, 5_000))
        clock.at = at(f"{D2}T12:00:00+09:00")
        await send("SEO01", terms["SEO01"].reversal(f2_req))
        for client in clients.values():
            await client.close()
    return [a, b, c, e]


def _build(data_dir: Path) -> list[str]:
    pans = asyncio.run(_drive(data_dir))
    assert verify(locate(data_dir)).ok
    return pans


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Iterator[BuiltLedger]:
    with BuiltLedger(_build, tmp_path_factory) as ledgers:
        yield ledgers


@pytest.fixture
def ledger(built: BuiltLedger, ledger_store, tmp_path: Path) -> Ledger:
    """This test's own copy of the module's ledger."""
    data_dir = built.copy(ledger_store, tmp_path)
    return Ledger(data_dir, built.made(ledger_store))


def tamper(db: Store, sql: str) -> None:
    conn = connect(db)
    try:
        assert conn.execute(sql).rowcount == 1, sql
    finally:
        conn.close()


def contents(db: Store) -> dict[str, list[tuple]]:
    """Every row of every ledger table (sorted): what a read-only command must leave as it was."""
    tables = ("meta", "accounts", "merchants", "terminals", "cards", "postings", "entries", "member_months",
              "card_days", "card_months", "messages", "key_groups", "tombstones", "outbox", "outbox_relay")
    return {t: sorted(query(db, f"SELECT * FROM {t}"), key=repr) for t in tables}


def merchants_by_mid(report) -> dict[str, object]:
    return {m.mid: m for m in report.merchants}


def programs_by_id(report) -> dict[str, object]:
    return {p.program: p for p in report.programs}


def settlement(m) -> tuple:
    return (m.purchases, m.gross_sales, m.reversals, m.refunds, m.net_sales, m.fee, m.support, m.merchant_fee,
            m.payout)


def figures(p) -> tuple:
    return (p.members, p.new_members, p.charged, p.purchases, p.spent_gross, p.undone, p.spent, p.cashback)


# ---------------------------------------------------------------------------- exact figures, day by day

def test_day_before_holds_the_two_purchases(ledger):
    r = build_report(ledger.db, Period.day(D0))
    assert r.ok, r.failed
    m = merchants_by_mid(r)
    assert set(m) == {"NAMDONG01", "YEONSU01"}
    # worked example 1: fee 0.5 % = 100 fully supported by Namdong, payout 20,000
    assert settlement(m["NAMDONG01"]) == (1, 20_000, 0, 0, 20_000, won(20_000, 50), {"namdong": won(20_000, 50)},
                                          0, 20_000)
    # worked example 2 shape: Yeonsu, no support: fee 50, payout 9,950
    assert settlement(m["YEONSU01"]) == (1, 10_000, 0, 0, 10_000, 50, {}, 50, 9_950)
    (namdong,) = r.programs
    # Namdong card: 7.5 % in Namdong (800 + 400 + 300), 6 % in Yeonsu (400 + 200)
    assert namdong.program == "namdong"
    assert figures(namdong) == (1, 1, 100_000, 2, 30_000, 0, 30_000,
                                {"national": won(20_000, 400) + won(10_000, 400),
                                 "city": won(20_000, 200) + won(10_000, 200),
                                 "namdong": won(20_000, 150)})
    assert namdong.cashback == {"national": 1_200, "city": 600, "namdong": 300}
    assert [(d.day, d.subscribers, d.new_subscribers, d.issued, d.spent, d.cashback) for d in r.city_days] == [
        (D0, 1, 1, 100_000, 30_000, 2_100)]


def test_refunds_and_reversals_count_on_the_day_they_were_posted(ledger):
    r = build_report(ledger.db, Period.day(D1))
    assert r.ok, r.failed
    m = merchants_by_mid(r)
    # refund of 5,000 of yesterday's 20,000 (a quarter): fee 25 and Namdong's 25 come back
    assert settlement(m["NAMDONG01"]) == (0, 0, 0, 5_000, -5_000, -25, {"namdong": -25}, 0, -5_000)
    # yesterday's 10,000 reversed in full: fee 50 comes back
    assert settlement(m["YEONSU01"]) == (0, 0, 10_000, 0, -10_000, -50, {}, -50, -9_950)
    # Seo-gu, 400M (small1, 1.0 %; Seo pays 0.5 %): 30,000 -> fee 300, support 150;
    # 8,000 -> fee 80, support 40; refund 3,000 of the 8,000 (3/8): fee 30, support 15 back
    seo_fee = won(30_000, 100) + won(8_000, 100) - 80 * 3_000 // 8_000
    seo_support = won(30_000, 50) + won(8_000, 50) - 40 * 3_000 // 8_000
    assert (seo_fee, seo_support) == (350, 175)
    assert settlement(m["SEO01"]) == (2, 38_000, 0, 3_000, 35_000, 350, {"seo": 175}, 175,
                                      35_000 - 350 + 175)
    # the mall: 3 % PG fee floor(12,345 x 0.03) = 370, no support
    assert settlement(m["MALL01"]) == (1, 12_345, 0, 0, 12_345, 370, {}, 370, 11_975)
    assert m["MALL01"].channel == "mall" and m["SEO01"].channel == "shop"

    p = programs_by_id(r)
    assert set(p) == {"namdong", "incheon", "seo"}
    # namdong card: the reversal claws back 400 + 200, the refund a quarter of 800/400/300
    assert figures(p["namdong"]) == (1, 0, 0, 0, 0, 15_000, -15_000,
                                     {"national": -(400 + 200), "city": -(200 + 100), "namdong": -75})
    # incheon card at Seo-gu: 6 % (no Seo-gu layer for the city card)
    assert figures(p["incheon"]) == (1, 1, 50_000, 1, 30_000, 0, 30_000, {"national": 1_200, "city": 600})
    # seo card: 12,345 at the mall in Namdong (6 %: 493 + 246) and 8,000 in Seo-gu (10 %: 320 + 160 + 320),
    # then 3/8 of the latter clawed back (120, 60, 120)
    assert figures(p["seo"]) == (1, 1, 30_000, 2, 20_345, 3_000, 17_345,
                                 {"national": won(12_345, 400) + 320 - 120, "city": won(12_345, 200) + 160 - 60,
                                  "seo": 320 - 120})
    assert p["seo"].cashback == {"national": 693, "city": 346, "seo": 200}
    # M-A's Seo card is new to the Seo program, but M-A is not a new subscriber
    assert (r.members, r.new_members) == (2, 1)
    assert [(d.day, d.subscribers, d.new_subscribers, d.issued, d.spent, d.cashback) for d in r.city_days] == [
        (D1, 2, 1, 80_000, -15_000 + 30_000 + 17_345, -975 + 1_800 + 1_239)]


def test_a_refund_reversed_next_day_counts_back_as_a_sale_on_that_day(ledger):
    r = build_report(ledger.db, Period.day(D2))
    assert r.ok, r.failed
    m = merchants_by_mid(r)
    assert settlement(m["SEO01"]) == (0, 0, 0, -3_000, 3_000, 30, {"seo": 15}, 15, 2_985)
    # the purchase at 00:00:00 exactly belongs to D+1; Yeonsu card in Yeonsu earns 10 %
    assert settlement(m["YEONSU01"]) == (1, 5_000, 0, 0, 5_000, 25, {}, 25, 4_975)
    p = programs_by_id(r)
    assert figures(p["seo"]) == (1, 0, 0, 0, 0, -3_000, 3_000, {"national": 120, "city": 60, "seo": 120})
    assert figures(p["yeonsu"]) == (1, 1, 20_000, 1, 5_000, 0, 5_000, {"national": 200, "city": 100, "yeonsu": 200})
    assert figures(p["namdong"]) == (1, 0, 0, 0, 0, 0, 0, {})  # members, no activity
    assert [(d.subscribers, d.new_subscribers, d.issued, d.spent, d.cashback) for d in r.city_days] == [
        (3, 1, 20_000, 8_000, 800)]


def test_the_month_is_the_sum_of_its_days(ledger):
    month = build_report(ledger.db, Period.month("2019-07"))
    assert month.ok, month.failed
    days = [build_report(ledger.db, Period.day(d)) for d in (D0, D1, D2)]
    m = merchants_by_mid(month)
    assert settlement(m["SEO01"]) == (2, 38_000, 0, 0, 38_000, 380, {"seo": 190}, 190, 37_810)
    assert settlement(m["NAMDONG01"]) == (1, 20_000, 0, 5_000, 15_000, 75, {"namdong": 75}, 0, 15_000)
    assert settlement(m["YEONSU01"]) == (2, 15_000, 10_000, 0, 5_000, 25, {}, 25, 4_975)
    for mid, row in m.items():
        per_day = [merchants_by_mid(d).get(mid) for d in days]
        assert row.payout == sum(x.payout for x in per_day if x), mid
        assert row.fee == sum(x.fee for x in per_day if x), mid
    assert len(month.city_days) == 31
    by_day = {d.day: d for d in month.city_days}
    assert (by_day["2019-07-01"].subscribers, by_day["2019-07-31"].subscribers) == (0, 3)
    assert (by_day[D0].issued, by_day[D1].issued, by_day[D2].issued) == (100_000, 80_000, 20_000)
    assert (month.city.subscribers, month.city.new_subscribers, month.city.issued, month.city.spent,
            month.city.cashback) == (3, 3, 200_000, 30_000 + 32_345 + 8_000, 2_100 + 2_064 + 800)
    empty = build_report(ledger.db, Period.month("2019-06"))
    assert empty.ok and empty.merchants == [] and empty.programs == [] and empty.city.subscribers == 0


# ---------------------------------------------------------------------------- reconciliation with the ledger

def test_report_totals_equal_the_ledger_account_balances(ledger):
    month = build_report(ledger.db, Period.month("2019-07"))
    balances = account_balances(ledger.db)
    payables = sum(v for k, v in balances.items() if k.startswith("merchant:"))
    assert sum(m.payout for m in month.merchants) == payables == 15_000 + 4_975 + 37_810 + 11_975
    assert sum(m.fee for m in month.merchants) == balances["fee_income"]
    for funder in ("namdong", "seo"):
        assert sum(m.support.get(funder, 0) for m in month.merchants) == -balances[f"fee_subsidy:{funder}"]
    for funder in ("national", "city", "namdong", "seo", "yeonsu"):
        assert sum(p.cashback.get(funder, 0) for p in month.programs) == -balances[f"cashback_expense:{funder}"]
    assert sum(p.charged for p in month.programs) == -balances["bank_settlement"] == 200_000
    cards = sum(v for k, v in balances.items() if k.startswith("card:"))
    assert cards == sum(p.charged - p.spent + p.cashback_total for p in month.programs)
    # the account lines: nothing after July, so closing = the balances now
    for line in month.accounts:
        assert line.after == 0 and line.opening == 0 and line.closing == line.balance, line


def test_a_past_day_splits_each_account_into_opening_movement_and_later(ledger):
    r = build_report(ledger.db, Period.day(D1), verify=True)
    assert r.ok and r.verified.ok
    lines = {a.account: a for a in r.accounts}
    payables = lines["merchant payables"]
    assert (payables.opening, payables.movement, payables.after) == (20_000 + 9_950, 31_850, 2_985 + 4_975)
    assert payables.closing == payables.opening + payables.movement
    assert payables.closing + payables.after == payables.balance
    assert lines["bank_settlement"].movement == -80_000
    assert lines["cashback_expense:national"].movement == -(-600 + 1_200 + 693)
    assert [c.name for c in r.checks if not c.ok] == []


def test_a_check_fails_when_the_ledger_does_not_add_up(ledger):
    """The report proves itself: a payable changed behind the ledger's back is caught."""
    # SQLite: the payable's folded row (switch/ledger/store.py, account_folds: the view accounts adds its entries)
    table = "accounts" if isinstance(ledger.db, PgDsn) else "account_folds"
    tamper(ledger.db, f"UPDATE {table} SET balance = balance + 1 WHERE name LIKE 'merchant:SEO01%'")
    r = build_report(ledger.db, Period.day(D1))
    assert not r.ok
    assert [c.name for c in r.failed] == ["merchant payables: closing + later movement = ledger balance"]


# ---------------------------------------------------------------------------- CSV, days, inputs

def test_csv_parses_and_matches_the_report(ledger, tmp_path):
    r = build_report(ledger.db, Period.day(D1))
    rows = list(csv.DictReader(io.StringIO(csv_text(r, "merchants"))))
    assert [row["mid"] for row in rows] == ["MALL01", "NAMDONG01", "SEO01", "YEONSU01"]
    seo = rows[2]
    assert {k: seo[k] for k in ("gross_sales", "refunds", "net_sales", "fee", "support_seo", "support_namdong",
                                 "merchant_fee", "payout", "channel")} == {
        "gross_sales": "38000", "refunds": "3000", "net_sales": "35000", "fee": "350", "support_seo": "175",
        "support_namdong": "0", "merchant_fee": "175", "payout": "34825", "channel": "shop"}
    assert sum(int(row["payout"]) for row in rows) == 31_850  # no total row to double count
    programs = list(csv.DictReader(io.StringIO(csv_text(r, "programs"))))
    assert {row["program"]: int(row["cashback_total"]) for row in programs} == {
        "incheon": 1_800, "namdong": -975, "seo": 1_239}
    city = list(csv.DictReader(io.StringIO(csv_text(r, "city"))))
    assert city == [{"date": D1, "subscribers": "2", "new_subscribers": "1", "issued": "80000", "spent": "32345",
                     "cashback": "2064"}]
    for name in ("merchants", "programs", "city", "accounts"):
        header, body = table(r, name)
        parsed = list(csv.reader(io.StringIO(csv_text(r, name))))
        assert parsed == [header] + [[str(v) for v in row] for row in body]
    files = write_csv_files(r, tmp_path / "out")
    assert [f.name for f in files] == [f"{D1}-{n}.csv" for n in ("merchants", "programs", "holds", "city", "accounts")]
    assert files[0].read_text() == csv_text(r, "merchants")


KST_DAYS = {
    "2019-07-20T23:59:59.999999+09:00": "2019-07-20",
    "2019-07-21T00:00:00+09:00": "2019-07-21",
    "2019-07-20T14:59:59.999999+00:00": "2019-07-20",  # 23:59:59.999999 KST
    "2019-07-20T15:00:00Z": "2019-07-21",
    "2019-07-20T12:00:00": "2019-07-20",  # naive: taken as KST
}


def test_kst_day_is_exact_at_midnight(tmp_path):
    assert {at: kst_day(at) for at in KST_DAYS} == KST_DAYS
    # the report's SQL calls it in the store: SQLite's is this function (registered on the
    # connection), PostgreSQL's the schema's SQL function of the same name
    conn = connect(open_store(tmp_path / "var"), readonly=True)
    try:
        conn.create_function("kst_day", 1, kst_day, deterministic=True)
        assert {at: conn.execute("SELECT kst_day(?)", (at,)).fetchone()[0] for at in KST_DAYS} == KST_DAYS
    finally:
        conn.close()


def test_bad_dates_and_missing_ledger_are_refused(tmp_path):
    for bad in ("2019-7-20", "2019-02-30", "yesterday"):
        with pytest.raises(ReportError):
            Period.day(bad)
    for bad in ("2019-13", "2019-7", "2019-07-01"):
        with pytest.raises(ReportError):
            Period.month(bad)
    assert Period.month("2020-02").last.isoformat() == "2020-02-29"
    assert Period.month("2019-12").last.isoformat() == "2019-12-31"
    with pytest.raises(ReportError):
        build_report(tmp_path / "nothing.sqlite3", Period.day(D1))
    assert not (tmp_path / "nothing.sqlite3").exists()


# ---------------------------------------------------------------------------- the real command

def eum(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*EUM, *args], capture_output=True, text=True, timeout=60)


def test_eum_report_daily_and_month_as_separate_processes(ledger, ledger_store):
    data_dir = str(ledger.data_dir)
    before = contents(ledger.db), None if ledger_store.postgresql else ledger.db.stat().st_mtime_ns
    shown = eum("report", "daily", "--date", D1, "--data-dir", data_dir, "--verify")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "Merchant settlement" in text and "City figures" in text and "Ledger reconciliation" in text
    assert "34,825" in text and "11,975" in text and "31,850" in text
    assert "Reconciled:" in text and "Ledger proof (eum admin verify): verified" in text
    for pan in ledger.pans:  # no PAN, not even masked, in a report
        assert pan not in text and pan[:6] + "*" not in text
    assert not re.search(r"\d{13,19}", text)

    as_csv = eum("report", "daily", "--date", D1, "--data-dir", data_dir, "--csv")
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert {row["mid"]: int(row["payout"]) for row in rows} == {
        "MALL01": 11_975, "NAMDONG01": -5_000, "SEO01": 34_825, "YEONSU01": -9_950}

    month = eum("report", "month", "--month", "2019-07", "--data-dir", data_dir, "--csv", "--table", "city")
    assert month.returncode == 0, month.stderr
    city = {row["date"]: row for row in csv.DictReader(io.StringIO(month.stdout))}
    assert len(city) == 31 and city[D2]["subscribers"] == "3" and city[D0]["spent"] == "30000"

    bad = eum("report", "daily", "--date", "2019-07-32", "--data-dir", data_dir)
    assert bad.returncode == 2 and "calendar date" in bad.stderr
    if not ledger_store.postgresql:  # a data dir without its ledger file (a PostgreSQL ledger is not in one)
        missing = eum("report", "daily", "--date", D1, "--data-dir", str(ledger.data_dir.parent / "none"))
        assert missing.returncode == 2 and "no ledger" in missing.stderr
    # read-only: nothing in the ledger changed (and SQLite's file was not even written)
    assert (contents(ledger.db), None if ledger_store.postgresql else ledger.db.stat().st_mtime_ns) == before


def test_cli_main_exits_1_when_the_figures_do_not_reconcile(ledger, capsys):
    from switch.cli.main import main

    tamper(ledger.db, "DELETE FROM entries WHERE account = 'fee_income' AND amount = 370")  # the mall fee vanishes
    assert main(["report", "daily", "--date", D1, "--data-dir", str(ledger.data_dir), "--csv"]) == 1
    err = capsys.readouterr().err
    assert "does not reconcile" in err and "fee_income" in err


async def test_report_reads_a_snapshot_while_the_switch_writes(tmp_path):
    clock = FixedClock(at(f"{D1}T12:00:00+09:00"))
    async with start_switch(tmp_path / "var", clock=clock) as env:
        await env.op("merchant-add", mid="NAMDONG01", name="Cafe", district="namdong", annual_sales=250_000_000)
        await env.op("terminal-add", tid="T0000001", mid="NAMDONG01")
        pan = (await env.op("card-issue", program="namdong"))["pan"]
        await env.op("card-charge", pan=pan, amount=50_000)
        client, term = await env.signed_on()
        assert (await client.request(term.purchase(pan, 20_000)))["39"] == "00"
        r = build_report(env.core.db_path, Period.day(D1))
        assert r.ok
        assert settlement(r.merchants[0]) == (1, 20_000, 0, 0, 20_000, 100, {"namdong": 100}, 0, 20_000)
        assert (await client.request(term.purchase(pan, 10_000)))["39"] == "00"
        await client.close()
        again = build_report(env.core.db_path, Period.day(D1))
        assert again.ok and again.merchants[0].gross_sales == 30_000
        assert query(env.core.db_path, "SELECT COUNT(*) FROM postings WHERE kind='purchase'")[0][0] == 2
