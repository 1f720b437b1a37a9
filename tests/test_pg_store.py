"""The PostgreSQL store's own guarantees (switch/ledger/postgres.py; docs/scale-out.md, "How it
works"), on a private cluster with a fresh database per test: versioned migrations, one
round trip per group, the conditional balance update and the CHECK behind it, one writer
per ledger, synchronous commit, an ambiguous commit looked up, and no password in any error.
The behaviour the two stores share runs on both in the rest of the suite; `eum switch
--store` serving a fleet is at the end of this file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import psycopg
import pytest

from conftest import query
from fault_harness import free_port, wait_listening
from switch.ledger.postgres import MIGRATIONS, PgCommitter, WriterBusy, migrate
from switch.ledger.records import CardIssued, CardState, Commit, Posting
from switch.ledger.store import PgDsn, StoreUnavailable, redact

EUM = [sys.executable, "-m", "switch.cli.main"]
ROOT = Path(__file__).resolve().parents[1]
AT = "2026-11-28T10:00:00.000000+09:00"
PAN = "9410100000000011"


def card_issue(card_id: int = 1, pan: str = PAN) -> Commit:
    card = CardState(id=card_id, pan=pan, program="namdong", member="M000000001", expiry="3112", status="active")
    return Commit(changes=(CardIssued(card=card, issued_at=AT),))


def load(posting_id: int, amount: int, card_id: int = 1) -> Commit:
    """Money onto a card from the bank (a seed charge: a balanced posting no event tells of)."""
    return Commit(posting=Posting(id=posting_id, kind="seed_charge", at=AT, amount=amount,
                                  entries=((f"card:{card_id}:cash", amount), ("bank_settlement", -amount))))


def unload(posting_id: int, amount: int, card_id: int = 1) -> Commit:
    """The same posting backwards: takes `amount` off the card's cash."""
    return Commit(posting=Posting(id=posting_id, kind="seed_charge", at=AT, amount=amount,
                                  entries=((f"card:{card_id}:cash", -amount), ("bank_settlement", amount))))


def rows(dsn: str, sql: str, *args: object) -> list[tuple]:
    return query(PgDsn(dsn), sql, *args)  # conftest's probe, on this database


def balances(dsn: str) -> dict[str, int]:
    return dict(rows(dsn, "SELECT name, balance FROM accounts ORDER BY name"))


class CountingConnection:
    """The writer's asyncpg connection, counting its execute calls; `lose` makes the next
    call lose the connection before or after the server ran it."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.calls = 0
        self.lose: str | None = None  # "before" | "after"

    async def execute(self, *args, **kw):
        self.calls += 1
        lose, self.lose = self.lose, None
        if lose == "before":
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        result = await self.conn.execute(*args, **kw)
        if lose == "after":
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return result

    half_open = False  # terminate() leaves the server's session running, as a network partition does

    def terminate(self) -> None:
        if not self.half_open:
            self.conn.terminate()

    def __getattr__(self, name: str):
        return getattr(self.conn, name)


async def opened(dsn: str) -> tuple[PgCommitter, CountingConnection]:
    migrate(dsn)
    committer = PgCommitter(dsn)
    await committer.open()
    counting = CountingConnection(committer.conn)
    committer.conn = counting
    return committer, counting


# ---------------------------------------------------------------------------- migrations


def test_migrations_are_versioned_and_each_applied_once(pg_dsn):
    assert migrate(pg_dsn) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert migrate(pg_dsn) == []
    assert rows(pg_dsn, "SELECT version, name FROM schema_migrations ORDER BY version") == \
        [(v, name) for v, name, _ in MIGRATIONS]
    meta = dict(rows(pg_dsn, "SELECT key, value FROM meta ORDER BY key"))
    assert sorted(meta) == ["ledger_id", "outbox_since_posting"]
    assert meta["outbox_since_posting"] == "0"
    assert len(meta["ledger_id"]) == 36 and meta["ledger_id"].count("-") == 4
    migrate(pg_dsn)
    assert dict(rows(pg_dsn, "SELECT key, value FROM meta ORDER BY key")) == meta  # the ledger keeps its name


async def test_a_ledger_made_by_an_older_version_is_upgraded_in_place(pg_dsn, monkeypatch):
    from switch.ledger import postgres

    monkeypatch.setattr(postgres, "MIGRATIONS", MIGRATIONS[:3])  # a ledger of the adapter before leases
    assert migrate(pg_dsn) == [1, 2, 3]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # money it already holds
        conn.execute("INSERT INTO accounts(name, balance) VALUES ('card:1:cash', 50000), ('bank_settlement', -50000)")
    monkeypatch.setattr(postgres, "MIGRATIONS", MIGRATIONS)
    committer, _ = await opened(pg_dsn)  # migrates: version 4 replaces ledger_commit
    try:
        await committer.commit([card_issue(), load(1, 5_000)])
    finally:
        await committer.close()
    assert rows(pg_dsn, "SELECT version FROM schema_migrations ORDER BY version") == [(1,), (2,), (3,), (4,), (5,), (6,), (7,), (8,), (9,)]
    assert balances(pg_dsn) == {"bank_settlement": -55_000, "card:1:cash": 55_000}
    assert rows(pg_dsn, "SELECT COUNT(*), MIN(partition), MAX(partition) FROM partition_leases") == [(256, 0, 255)]


# ---------------------------------------------------------------------------- the group commit


async def test_a_group_is_one_call_and_all_of_it_lands(pg_dsn):
    committer, counting = await opened(pg_dsn)
    try:
        await committer.commit([card_issue(), load(1, 50_000), load(2, 7_000)])
        assert counting.calls == 1
    finally:
        await committer.close()
    assert rows(pg_dsn, "SELECT id, kind, amount FROM postings ORDER BY id") == \
        [(1, "seed_charge", 50_000), (2, "seed_charge", 7_000)]
    assert balances(pg_dsn) == {"bank_settlement": -57_000, "card:1:cash": 57_000}
    assert rows(pg_dsn, "SELECT COUNT(*) FROM entries") == [(4,)]


async def test_a_group_that_would_take_a_card_below_zero_fails_whole(pg_dsn):
    committer, counting = await opened(pg_dsn)
    try:
        await committer.commit([card_issue(), load(1, 50_000)])
        with pytest.raises(asyncpg.CheckViolationError) as refused:
            await committer.commit([load(2, 1_000), unload(3, 60_000)])
        assert refused.value.sqlstate == "23514"
        assert "conditional balance update refused" in str(refused.value)
    finally:
        await committer.close()
    # neither posting of the refused group, not even the valid one before it
    assert rows(pg_dsn, "SELECT id FROM postings ORDER BY id") == [(1,)]
    assert balances(pg_dsn) == {"bank_settlement": -50_000, "card:1:cash": 50_000}


def test_the_check_constraint_is_the_second_line(pg_dsn):
    migrate(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO accounts(name, balance) VALUES ('card:9:cashback', 10), ('card:9:receivable', 0)")
        with pytest.raises(psycopg.errors.CheckViolation, match="card_money_not_negative"):
            conn.execute("UPDATE accounts SET balance = -1 WHERE name = 'card:9:cashback'")
        conn.execute("UPDATE accounts SET balance = -5 WHERE name = 'card:9:receivable'")  # a receivable may be
        with pytest.raises(psycopg.errors.CheckViolation, match="undone_within_amount"):
            conn.execute("INSERT INTO postings(id, kind, at, amount, undone) VALUES (1, 'purchase', 'x', 100, 101)")
    assert balances(pg_dsn) == {"card:9:cashback": 10, "card:9:receivable": -5}


# ---------------------------------------------------------------------------- the writer's connection


async def test_one_writer_per_ledger(pg_dsn):
    first, _ = await opened(pg_dsn)
    second = PgCommitter(pg_dsn)
    try:
        with pytest.raises(WriterBusy) as busy:
            await second.open()
        assert str(busy.value) == (f"another switch writes the ledger at {pg_dsn} (it holds the ledger's writer "
                                   "lock); one writer per ledger, or every writer an instance of one cluster "
                                   "(--cluster)")
    finally:
        await first.close()
    await second.open()  # the lock goes with the first writer's connection
    await second.close()


async def test_the_writer_commits_synchronously_whatever_the_database_default(pg_dsn, pg_cluster):
    dbname = pg_dsn.rsplit("/", 1)[1]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{dbname}" SET synchronous_commit = off')
    committer, _ = await opened(pg_dsn)
    try:
        assert await committer.conn.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await committer.close()


async def test_a_commit_whose_connection_is_lost_after_the_server_committed_is_answered_committed(pg_dsn):
    committer, counting = await opened(pg_dsn)
    try:
        await committer.commit([card_issue(), load(1, 50_000)])
        counting.lose = "after"
        await committer.commit([load(2, 5_000)])  # no exception: the group is found durable
        assert committer.outcomes_recovered == 1
    finally:
        await committer.close()
    assert rows(pg_dsn, "SELECT id FROM postings ORDER BY id") == [(1,), (2,)]
    assert balances(pg_dsn)["card:1:cash"] == 55_000


@pytest.mark.parametrize("lose", ["before", "after"])
async def test_a_lost_connection_whose_session_lives_on_is_ended_before_the_writer_goes_on(pg_dsn, lose):
    """The server has not noticed the loss (a half-open socket): its session still holds the
    writer lock. The writer ends that session, takes the lock again and then looks whether the
    group landed."""
    committer, counting = await opened(pg_dsn)
    old = counting.get_server_pid()
    try:
        await committer.commit([card_issue(), load(1, 50_000)])
        counting.half_open, counting.lose = True, lose
        if lose == "after":
            await committer.commit([load(2, 5_000)])  # found durable on the new connection
        else:
            with pytest.raises(asyncpg.ConnectionDoesNotExistError):
                await committer.commit([load(2, 5_000)])
        assert committer.outcomes_recovered == (1 if lose == "after" else 0)
        assert committer.conn.get_server_pid() != old
        assert rows(pg_dsn, f"SELECT count(*) FROM pg_stat_activity WHERE pid = {old}") == [(0,)]
        await committer.commit([load(3, 1_000)])
    finally:
        await committer.close()
        await counting.conn.close()  # the old connection's socket (its session is gone)
    expected = [(1,), (2,), (3,)] if lose == "after" else [(1,), (3,)]
    assert rows(pg_dsn, "SELECT id FROM postings ORDER BY id") == expected
    assert balances(pg_dsn)["card:1:cash"] == (56_000 if lose == "after" else 51_000)


async def test_a_commit_whose_connection_is_lost_before_the_server_ran_it_fails(pg_dsn):
    committer, counting = await opened(pg_dsn)
    try:
        await committer.commit([card_issue(), load(1, 50_000)])
        counting.lose = "before"
        with pytest.raises(asyncpg.ConnectionDoesNotExistError):
            await committer.commit([load(2, 5_000)])
        assert committer.outcomes_recovered == 0
        await committer.commit([load(3, 1_000)])  # the writer reconnected and goes on
    finally:
        await committer.close()
    assert rows(pg_dsn, "SELECT id FROM postings ORDER BY id") == [(1,), (3,)]
    assert balances(pg_dsn)["card:1:cash"] == 51_000


# ---------------------------------------------------------------------------- secrets and errors


def test_a_store_url_password_is_never_shown():
    assert redact("postgresql://eum:s3cret@db.example:5432/ledger") == "postgresql://eum:***@db.example:5432/ledger"
    assert redact("postgresql://eum@db.example/ledger") == "postgresql://eum@db.example/ledger"


def test_an_unreachable_store_is_one_clear_line_without_its_password(tmp_path):
    port = free_port()  # nothing listens there
    url = f"postgresql://eum:s3cret@127.0.0.1:{port}/ledger"
    for argv in (["admin", "--data-dir", str(tmp_path / "var"), "--store", url, "verify"],
                 ["report", "daily", "--data-dir", str(tmp_path / "var"), "--store", url, "--date", "2026-11-28"],
                 ["switch", "--data-dir", str(tmp_path / "var"), "--store", url, "--listen", f"127.0.0.1:{free_port()}"]):
        done = subprocess.run([*EUM, *argv], capture_output=True, text=True, timeout=60, cwd=ROOT,
                              env={**os.environ, "EUM_STORE": ""})
        assert done.returncode == 2, (argv, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"eum: cannot open the ledger at postgresql://eum:***@127.0.0.1:{port}/ledger: "
                                   "connection failed"), lines[0]
        assert "s3cret" not in done.stdout + done.stderr
    with pytest.raises(StoreUnavailable):
        migrate(url)


def test_a_store_that_is_neither_sqlite_nor_postgresql_is_refused(tmp_path):
    done = subprocess.run([*EUM, "admin", "--data-dir", str(tmp_path / "var"), "--store", "mysql://u:pw@h/db",
                           "verify"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.strip() == "eum: --store: 'mysql://u:***@h/db' is neither 'sqlite' nor a postgresql:// URL"


# ---------------------------------------------------------------------------- eum switch --store, end to end


def test_eum_switch_on_postgresql_serves_a_fleet_and_the_ledger_agrees(pg_dsn, tmp_path):
    data, pop, report = tmp_path / "var", tmp_path / "pop.json", tmp_path / "fleet.json"
    env = {**os.environ, "EUM_STORE": ""}  # every command names its store: --store

    def eum(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*EUM, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)

    seeded = eum("admin", "--data-dir", str(data), "--store", pg_dsn, "--json", "seed", "--cards", "200",
                 "--merchants", "5", "--export", str(pop))
    assert seeded.returncode == 0, seeded.stderr
    assert json.loads(seeded.stdout)["cards"] == 200
    port = free_port()
    switch = subprocess.Popen([*EUM, "switch", "--data-dir", str(data), "--store", pg_dsn, "--listen",
                               f"127.0.0.1:{port}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_listening(port, switch)
        fleet = eum("fleet", "--switch", f"127.0.0.1:{port}", "--population", str(pop), "--terminals", "5",
                    "--rate", "150", "--duration", "3", "--no-progress", "--json", str(report))
        assert fleet.returncode == 0, fleet.stderr
    finally:
        switch.send_signal(signal.SIGTERM)
        assert switch.wait(timeout=60) == 0, switch.stderr.read() if switch.stderr else ""
    result = json.loads(report.read_text())
    assert result["timeouts"] == 0
    assert result["by_rc"].get("96", 0) == 0
    fleet_posted = sum(result["by_kind"].get(k, {}).get("approved", 0) for k in ("purchase", "refund", "reversal"))
    assert fleet_posted > 100
    ledger_posted = rows(pg_dsn, "SELECT COUNT(*) FROM messages m JOIN postings p ON p.id = m.posting_id "
                                 "WHERE m.rc = '00'")[0][0]
    assert ledger_posted == fleet_posted
    verified = eum("admin", "--data-dir", str(data), "--store", pg_dsn, "verify", "--json")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["ok"] is True
    assert not (data / "ledger.sqlite3").exists()  # nothing went to an embedded ledger by accident


async def test_a_bulk_load_refuses_a_ledger_a_switch_writes(pg_dsn):
    from switch.ledger.bulk import BulkLoad

    writer, _ = await opened(pg_dsn)
    try:
        with pytest.raises(StoreUnavailable) as busy:
            BulkLoad(PgDsn(pg_dsn))
        assert str(busy.value) == (f"a switch writes the ledger at {pg_dsn}: a bulk load needs it to itself "
                                   "(stop the switch or every instance, load, start again)")
    finally:
        await writer.close()
    with BulkLoad(PgDsn(pg_dsn)) as load:  # the writer gone, the load goes ahead
        assert load.next_ids().card == 1


def test_the_demo_runs_on_postgresql(pg_dsn, tmp_path):
    done = subprocess.run([*EUM, "demo", "--store", pg_dsn], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "EUM_STORE": ""})
    assert done.returncode == 0, done.stderr
    # the demo is the same whatever the timing (terminal_sim/demo.py lane_cards): its figures on
    # PostgreSQL are the SQLite run's, exactly
    assert done.stdout.strip().splitlines()[-1] == (
        "ledger verify: OK (postings 220, entries 1,782, accounts 319, cards 200, events 411)")
    assert rows(pg_dsn, "SELECT COUNT(*) FROM postings") == [(220,)]
    assert not list(tmp_path.rglob("*.sqlite3"))
