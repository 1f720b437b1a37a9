"""The PostgreSQL adapter of the ledger port: the same records, rows and guarantees as
switch/ledger/sqlite.py, on a database several processes can share.

Three parts:
- `migrate`: versioned schema migrations (table `schema_migrations`), run under an advisory
  lock so two starting processes never race. The tables are SQLite's, typed for PostgreSQL
  (BIGINT money), with CHECK constraints as a second line of defence: a card's cash and
  cashback never below zero, a posting's undone part within its amount.
- `PgCommitter`: the writer's group commit on asyncpg. A group is ONE round trip: the
  function `ledger_commit` takes every table's rows of the group as arrays (one array per
  column) and applies them in one statement's transaction, so a group of N approvals costs
  one call, not N × 8 statements (docs/scale-out.md, "Group commit on PostgreSQL").
  `synchronous_commit` is set on for the connection: the call returns only when the group
  is durable, and only then does a response leave (switch/ledger/writer.py). Card balances
  move by a conditional update (… WHERE balance + delta >= 0) whose row count is checked: a
  row the guard refuses fails the whole group, as the CHECK would.
- `PgConnection`: a small DB-API face over psycopg (synchronous) that runs the SQL the read
  side already speaks (`?` and `:name` parameters, SQLite's `kst_day`, `json_extract` and
  `instr`, which the schema defines as PostgreSQL functions), so readers, reports, verify and
  the outbox reader are written once for both stores. The hot state's cache misses read
  through it too, as they do on SQLite, on the event loop: a point read on 127.0.0.1.

One writer per ledger: the committer holds a session advisory lock (WRITER_LOCK) for as long
as it is connected; a second switch on the same database refuses to start. Several writers
by member ownership are the next step (docs/scale-out.md).
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
import uuid
from typing import Any, Callable, Iterable, Sequence

from switch.ledger.records import Commit
from switch.ledger.store import StoreUnavailable, redact

WRITER_LOCK = 0x65756D01  # pg advisory lock key held by the ledger's one writer ("eum" 1)
MIGRATE_LOCK = 0x65756D02  # held while migrations run

# ---------------------------------------------------------------------------- schema, versioned

_SCHEMA_1 = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE accounts(
    name TEXT PRIMARY KEY,
    balance BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT card_money_not_negative
        CHECK (balance >= 0 OR NOT (name LIKE 'card:%:cash' OR name LIKE 'card:%:cashback'))
);
CREATE TABLE merchants(
    mid TEXT PRIMARY KEY, name TEXT NOT NULL, district TEXT NOT NULL,
    annual_sales BIGINT NOT NULL CHECK (annual_sales >= 0), category TEXT NOT NULL, online_mall BIGINT NOT NULL
);
CREATE TABLE terminals(
    tid TEXT PRIMARY KEY, mid TEXT NOT NULL REFERENCES merchants(mid), security TEXT NOT NULL,
    key_lmk TEXT NOT NULL DEFAULT '', ksn_initial TEXT NOT NULL DEFAULT '', ksn_max BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE cards(
    id BIGINT PRIMARY KEY, pan TEXT UNIQUE NOT NULL, program TEXT NOT NULL,
    member TEXT NOT NULL, expiry TEXT NOT NULL, status TEXT NOT NULL, issued_at TEXT NOT NULL,
    pvv TEXT NOT NULL DEFAULT '', pin_tries BIGINT NOT NULL DEFAULT 0, pin_blocked BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX cards_member ON cards(member);
CREATE TABLE postings(
    id BIGINT PRIMARY KEY, kind TEXT NOT NULL, at TEXT NOT NULL, card_id BIGINT,
    mid TEXT, tid TEXT, stan TEXT, rrn TEXT, amount BIGINT NOT NULL CHECK (amount >= 0),
    fee BIGINT NOT NULL DEFAULT 0, support BIGINT NOT NULL DEFAULT 0,
    cashback BIGINT NOT NULL DEFAULT 0, original_id BIGINT, undone BIGINT NOT NULL DEFAULT 0,
    detail TEXT NOT NULL DEFAULT '{}', reversed BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT undone_within_amount CHECK (undone >= 0 AND (kind NOT IN ('purchase', 'refund') OR undone <= amount))
);
CREATE INDEX postings_rrn ON postings(rrn);
CREATE INDEX postings_card ON postings(card_id);
CREATE TABLE entries(posting_id BIGINT NOT NULL, account TEXT NOT NULL, amount BIGINT NOT NULL);
CREATE INDEX entries_posting ON entries(posting_id);
CREATE TABLE member_months(
    member TEXT NOT NULL, month TEXT NOT NULL, eligible BIGINT NOT NULL, PRIMARY KEY(month, member));
CREATE TABLE card_days(
    card_id BIGINT NOT NULL, day TEXT NOT NULL, spent BIGINT NOT NULL, PRIMARY KEY(day, card_id));
CREATE TABLE card_months(
    card_id BIGINT NOT NULL, month TEXT NOT NULL, charged BIGINT NOT NULL, PRIMARY KEY(month, card_id));
CREATE TABLE messages(
    tid TEXT NOT NULL, stan TEXT NOT NULL, tx_time TEXT NOT NULL, mti TEXT NOT NULL,
    digest TEXT NOT NULL, rc TEXT NOT NULL, response TEXT NOT NULL, posting_id BIGINT,
    at TEXT NOT NULL, PRIMARY KEY(tx_time, tid, stan)
);
CREATE TABLE key_groups(
    name TEXT NOT NULL, profile TEXT NOT NULL, bdk TEXT NOT NULL, kcv TEXT NOT NULL, PRIMARY KEY(name, profile));
CREATE TABLE tombstones(
    tid TEXT NOT NULL, stan TEXT NOT NULL, tx_time TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY(tx_time, tid, stan));
CREATE TABLE outbox(
    seq BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL, topic TEXT NOT NULL, type TEXT NOT NULL,
    posting_id BIGINT NOT NULL, payload TEXT NOT NULL, committed_at DOUBLE PRECISION NOT NULL
);
CREATE UNIQUE INDEX outbox_posting_type ON outbox(posting_id, type);
CREATE TABLE outbox_relay(name TEXT PRIMARY KEY, seq BIGINT NOT NULL, at TEXT NOT NULL);

-- SQLite's functions that the shared read SQL uses (reports, verify), as PostgreSQL functions.
-- kst_day: the KST calendar day of a stored ISO stamp (switch/ledger/reports.py, kst_day);
-- a stamp without an offset is Korean local time.
CREATE FUNCTION kst_day(at TEXT) RETURNS TEXT LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN at IS NULL THEN NULL
                WHEN right(at, 6) = '+09:00' THEN left(at, 10)
                WHEN at ~ '(Z|[+-][0-9][0-9]:?[0-9][0-9])$'
                    THEN to_char(at::timestamptz AT TIME ZONE 'Asia/Seoul', 'YYYY-MM-DD')
                ELSE left(at, 10) END
$$;
-- json_extract of a whole-number field ('$.a' or '$.a.b'): the only use the read side makes of it
CREATE FUNCTION json_extract(doc TEXT, path TEXT) RETURNS BIGINT LANGUAGE sql IMMUTABLE AS $$
    SELECT ((doc::jsonb) #>> string_to_array(substr(path, 3), '.'))::BIGINT
$$;
CREATE FUNCTION instr(haystack TEXT, needle TEXT) RETURNS INTEGER LANGUAGE sql IMMUTABLE AS $$
    SELECT strpos(haystack, needle)
$$;
"""

# ---------------------------------------------------------------------------- the group commit function
# One array per column of each table a group writes, in switch/ledger/rows.py _Rows' row order.
COMMIT_TABLES_5: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("merchants", (("mid", "text"), ("name", "text"), ("district", "text"), ("annual_sales", "bigint"),
                   ("category", "text"), ("online_mall", "bigint"))),
    ("terminals", (("tid", "text"), ("mid", "text"), ("security", "text"), ("key_lmk", "text"),
                   ("ksn_initial", "text"))),
    ("cards", (("id", "bigint"), ("pan", "text"), ("program", "text"), ("member", "text"), ("expiry", "text"),
               ("status", "text"), ("issued_at", "text"), ("pvv", "text"))),
    ("postings", (("id", "bigint"), ("kind", "text"), ("at", "text"), ("card_id", "bigint"), ("mid", "text"),
                  ("tid", "text"), ("stan", "text"), ("rrn", "text"), ("amount", "bigint"), ("fee", "bigint"),
                  ("support", "bigint"), ("cashback", "bigint"), ("original_id", "bigint"), ("detail", "text"))),
    ("entries", (("posting_id", "bigint"), ("account", "text"), ("amount", "bigint"))),
    ("messages", (("tid", "text"), ("stan", "text"), ("tx_time", "text"), ("mti", "text"), ("digest", "text"),
                  ("rc", "text"), ("response", "text"), ("posting_id", "bigint"), ("at", "text"))),
    ("outbox", (("event_id", "text"), ("topic", "text"), ("type", "text"), ("posting_id", "bigint"),
                ("payload", "text"), ("committed_at", "double precision"))),
    ("accounts", (("name", "text"), ("balance", "bigint"))),
    ("member_months", (("member", "text"), ("month", "text"), ("eligible", "bigint"))),
    ("card_days", (("card_id", "bigint"), ("day", "text"), ("spent", "bigint"))),
    ("card_months", (("card_id", "bigint"), ("month", "text"), ("charged", "bigint"))),
    ("undone", (("undone", "bigint"), ("reversed", "bigint"), ("posting_id", "bigint"))),
    ("tombstones", (("tid", "text"), ("stan", "text"), ("tx_time", "text"), ("at", "text"))),
    ("pin_tries", (("tries", "bigint"), ("blocked", "bigint"), ("card_id", "bigint"))),
    ("ksn", (("ksn_max", "bigint"), ("tid", "text"))),
    ("status", (("status", "text"), ("card_id", "bigint"))),
    ("pvv", (("pvv", "text"), ("card_id", "bigint"))),
    ("meta", (("key", "text"), ("value", "text"))),
    ("key_groups", (("name", "text"), ("profile", "text"), ("bdk", "text"), ("kcv", "text"))),
    ("relay", (("name", "text"), ("seq", "bigint"), ("at", "text"))),
)

# From version 6 an outbox row also carries its partition and its place in that partition's
# sequence (written by the partition's one owner), which the relays of a cluster follow.
_OUTBOX_6 = (("event_id", "text"), ("topic", "text"), ("type", "text"), ("posting_id", "bigint"),
             ("payload", "text"), ("committed_at", "double precision"), ("partition", "integer"), ("pseq", "bigint"))


# From version 9 a group may disable or enable terminals and update merchants (eum admin
# terminal disable|enable, merchant update), after the inserts of the same group.
_INVENTORY_9 = (
    ("terminal_status", (("status", "text"), ("tid", "text"))),
    ("merchant_update", (("name", "text"), ("annual_sales", "bigint"), ("category", "text"), ("mid", "text"))),
)


def _tables(version: int) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    if version < 6:
        return COMMIT_TABLES_5
    tables = tuple((t, _OUTBOX_6 if t == "outbox" else cols) for t, cols in COMMIT_TABLES_5)
    return tables + _INVENTORY_9 if version >= 9 else tables


_TAILS = {  # what follows `SELECT * FROM unnest(...)` for the tables that merge rather than insert
    "member_months": " ON CONFLICT (month, member) DO UPDATE SET eligible = t.eligible + excluded.eligible",
    "card_days": " ON CONFLICT (day, card_id) DO UPDATE SET spent = t.spent + excluded.spent",
    "card_months": " ON CONFLICT (month, card_id) DO UPDATE SET charged = t.charged + excluded.charged",
    "tombstones": " ON CONFLICT DO NOTHING",
    "meta": " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    "relay": " ON CONFLICT (name) DO UPDATE SET seq = GREATEST(t.seq, excluded.seq), at = excluded.at",
}
_UPDATES = {  # tables a group updates in place: (target, SET, key column of the target, key column of the rows)
    # the conditional update: a card's money moves only while it stays >= 0 (ledger_commit
    # counts the rows; the CHECK is the second line). Accounts a group names for the first time
    # are created at 0 just before (a CHECK is tested on an upsert's proposed row, so a
    # negative delta cannot itself be upserted).
    "accounts": ("accounts", "balance = t.balance + u.balance", "name", "name"),
    "undone": ("postings", "undone = t.undone + u.undone, reversed = t.reversed + u.reversed", "id", "posting_id"),
    "pin_tries": ("cards", "pin_tries = u.tries, pin_blocked = u.blocked", "id", "card_id"),
    "ksn": ("terminals", "ksn_max = GREATEST(t.ksn_max, u.ksn_max)", "tid", "tid"),
    "status": ("cards", "status = u.status", "id", "card_id"),
    "pvv": ("cards", "pvv = u.pvv", "id", "card_id"),
    "terminal_status": ("terminals", "status = u.status", "tid", "tid"),
    "merchant_update": ("merchants", "name = u.name, annual_sales = u.annual_sales, category = u.category",
                        "mid", "mid"),
}
_TARGET = {"relay": "outbox_relay"}


def _param(table: str, col: str) -> str:
    return f"p_{table}_{col}"


# Tables whose rows are few and rare (refunds, reversals, PIN tries, KSNs, card status): from
# version 3 one indexed UPDATE per row in a loop. A set-based UPDATE … FROM unnest(…) gets a
# generic plan that may hash-join against the whole table (postings: measured ≈ 1 ms a call at
# 10,000 postings; docs/performance.md, "PostgreSQL: the commit function").
_ROW_LOOPS = frozenset({"undone", "pin_tries", "ksn", "status", "pvv", "terminal_status", "merchant_update"})


def _commit_function(version: int) -> str:
    """ledger_commit as migration `version` defines it (2: the first; 3: row loops for the rare
    updates, and new accounts found by an index probe before the insert, not a speculative one)."""
    params, body = [], []
    if version >= 4:  # the lease fence (docs/scale-out.md, "Several instances"): every partition of the
        # group must be leased to this owner at the epoch the group was decided under, now; the lease
        # rows stay locked (FOR SHARE) until the group commits, so no hand-over can slip in between
        params += ["p_owner text", "p_fence_partition integer[]", "p_fence_epoch bigint[]"]
        body.append(
            "    IF cardinality(p_fence_partition) > 0 THEN\n"
            "        PERFORM 1 FROM partition_leases l JOIN unnest(p_fence_partition, p_fence_epoch) AS f(part, ep) "
            "ON l.partition = f.part WHERE l.owner = p_owner AND l.epoch = f.ep AND l.expires_at > clock_timestamp() "
            "FOR SHARE OF l;\n"
            "        GET DIAGNOSTICS n = ROW_COUNT;\n"
            "        IF n <> cardinality(p_fence_partition) THEN RAISE EXCEPTION "
            "'fenced: this instance no longer holds the lease of a partition in the group' "
            "USING ERRCODE = 'EUM01'; END IF;\n"
            "    END IF;")
    for table, cols in _tables(version):
        names = [_param(table, c) for c, _ in cols]
        params += [f"{n} {t}[]" for n, (_, t) in zip(names, cols)]
        unnest = f"unnest({', '.join(names)})"
        if table in _UPDATES and version >= 3 and table in _ROW_LOOPS:
            target, sets, key, row_key = _UPDATES[table]
            row_sets = re.sub(r"\bu\.(\w+)", lambda m: f"{_param(table, m.group(1))}[i]", sets)
            stmt = (f"FOR i IN 1..cardinality({names[0]}) LOOP\n            UPDATE {target} t SET {row_sets} "
                    f"WHERE t.{key} = {_param(table, row_key)}[i];\n        END LOOP")
        elif table in _UPDATES:
            target, sets, key, row_key = _UPDATES[table]
            stmt = (f"UPDATE {target} t SET {sets} FROM {unnest} AS u({', '.join(c for c, _ in cols)}) "
                    f"WHERE t.{key} = u.{row_key}")
            if table == "accounts":
                insert = (f"INSERT INTO accounts(name, balance) SELECT u.name, 0 FROM unnest({names[0]}) AS u(name) "
                          "WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.name = u.name) " if version >= 3 else
                          f"INSERT INTO accounts(name, balance) SELECT name, 0 FROM unnest({names[0]}) AS name ")
                lock = ""
                if version >= 5:  # several writers share house accounts: lock them in one order (name)
                    lock = (f"PERFORM 1 FROM accounts WHERE name = ANY({names[0]}) ORDER BY name FOR UPDATE;"
                            "\n        ")
                stmt = (f"{insert}ON CONFLICT DO NOTHING;\n        " + lock + stmt
                        + " AND (t.balance + u.balance >= 0 OR NOT (t.name LIKE 'card:%:cash' "
                          "OR t.name LIKE 'card:%:cashback'))")
        else:
            target = _TARGET.get(table, table)
            stmt = (f"INSERT INTO {target} AS t({', '.join(c for c, _ in cols)}) SELECT * FROM {unnest}"
                    + _TAILS.get(table, ""))
        check = ""
        if table == "accounts":  # the conditional update: a refused row fails the whole group
            check = (f"\n        GET DIAGNOSTICS n = ROW_COUNT;\n        IF n <> cardinality({names[0]}) THEN "
                     "RAISE EXCEPTION 'conditional balance update refused: a card account would go negative' "
                     "USING ERRCODE = 'check_violation'; END IF;")
        body.append(f"    IF cardinality({names[0]}) > 0 THEN\n        {stmt};{check}\n    END IF;")
    return ("CREATE OR REPLACE FUNCTION ledger_commit(\n    " + ",\n    ".join(params) + "\n) RETURNS void "
            "LANGUAGE plpgsql AS $fn$\nDECLARE n bigint;" + (" i integer;" if version >= 3 else "") + "\nBEGIN\n" + "\n".join(body) + "\nEND\n$fn$;")


def _row_types(version: int) -> list[str]:
    return [f"{t}[]" for _, cols in _tables(version) for _, t in cols]


_ROW_TYPES = _row_types(3)  # the signature of versions 2 and 3 (dropped by migration 4)
LATEST = 9
COMMIT_TABLES = _tables(LATEST)
COMMIT_CALL = ("SELECT ledger_commit(" + ", ".join(
    f"${i + 1}::{t}" for i, t in enumerate(["text", "integer[]", "bigint[]"] + _row_types(LATEST))) + ")")

_SCHEMA_4 = """
CREATE TABLE instances(
    id TEXT PRIMARY KEY, link TEXT NOT NULL, heartbeat_at TIMESTAMPTZ NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE partition_leases(
    partition INTEGER PRIMARY KEY CHECK (partition >= 0 AND partition < 256),
    owner TEXT, epoch BIGINT NOT NULL DEFAULT 0, expires_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
);
INSERT INTO partition_leases(partition) SELECT generate_series(0, 255);
-- ids with several writers: each instance takes a block at a time (switch/ops/cluster.py, IdBlocks)
CREATE SEQUENCE posting_ids INCREMENT BY 10000 MINVALUE 1 START WITH 1;
CREATE SEQUENCE card_ids INCREMENT BY 1000 MINVALUE 1 START WITH 1;
DROP FUNCTION ledger_commit(""" + ", ".join(_ROW_TYPES) + """);
"""

# (version, name, SQL): applied in order, each once, each in its own transaction. A change to
# the schema or to ledger_commit is a new version; an applied one is never edited.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "ledger tables, CHECK constraints, SQLite compat functions", _SCHEMA_1),
    (2, "ledger_commit: one round trip per group", _commit_function(2)),
    (3, "ledger_commit: rare updates row by row, new accounts probed before insert", _commit_function(3)),
    (4, "several instances: instances, partition leases, id sequences; ledger_commit fenced by lease epoch",
     _SCHEMA_4 + _commit_function(4)),
    (5, "ledger_commit: accounts locked in name order (no deadlock between instances' groups)",
     _commit_function(5)),
    (6, "outbox rows carry their partition and per-partition sequence (the relays of a cluster follow it)",
     "ALTER TABLE outbox ADD COLUMN partition INTEGER, ADD COLUMN pseq BIGINT;\n"
     "CREATE UNIQUE INDEX outbox_partition_pseq ON outbox(partition, pseq) WHERE pseq IS NOT NULL;\n"
     "DROP FUNCTION ledger_commit(text, integer[], bigint[], " + ", ".join(_row_types(5)) + ");\n"
     + _commit_function(6)),
    (7, "sign-ons shared by a cluster's instances",
     "CREATE TABLE terminal_signons(tid TEXT PRIMARY KEY, instance TEXT NOT NULL, "
     "at TIMESTAMPTZ NOT NULL DEFAULT now());"),
    (8, "pre-authorizations: open holds indexed (a partial index: only holds not yet completed or released)",
     "CREATE INDEX postings_open_holds ON postings(id) WHERE kind = 'hold' AND undone < amount;\n"
     "ALTER TABLE postings DROP CONSTRAINT undone_within_amount, ADD CONSTRAINT undone_within_amount "
     "CHECK (undone >= 0 AND (kind NOT IN ('purchase', 'refund', 'hold') OR undone <= amount));\n"
     "ALTER TABLE accounts ADD CONSTRAINT held_not_negative CHECK (balance >= 0 OR name NOT LIKE 'card:%:held');"),
    (9, "inventory: a terminal's status (disabled: answered 58); ledger_commit disables terminals and updates "
        "merchants",
     "ALTER TABLE terminals ADD COLUMN status TEXT NOT NULL DEFAULT 'active' "
     "CONSTRAINT terminal_status_known CHECK (status IN ('active', 'disabled'));\n"
     "DROP FUNCTION ledger_commit(text, integer[], bigint[], " + ", ".join(_row_types(6)) + ");\n"
     + _commit_function(9)),
)


def migrate(dsn: str) -> list[int]:
    """Apply the migrations this database lacks; name the ledger on its first open. Returns
    the versions applied now."""
    import psycopg

    applied: list[int] = []
    try:
        conn = psycopg.connect(dsn, autocommit=True)
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"cannot open the ledger at {redact(dsn)}: {_first_line(exc, dsn)}") from None
    with conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK,))
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations("
                         "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            have = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for version, name, sql in MIGRATIONS:
                if version in have:
                    continue
                with conn.transaction():
                    conn.execute(sql)
                    conn.execute("INSERT INTO schema_migrations(version, name) VALUES (%s, %s)", (version, name))
                applied.append(version)
            # as SQLite's open_store: event ids derive from the ledger's id (events.event_id)
            conn.execute("INSERT INTO meta(key, value) VALUES ('ledger_id', %s) ON CONFLICT DO NOTHING",
                         (str(uuid.uuid4()),))
            conn.execute("INSERT INTO meta(key, value) SELECT 'outbox_since_posting', COALESCE(MAX(id), 0)::text "
                         "FROM postings ON CONFLICT DO NOTHING")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK,))
    return applied


def _first_line(exc: BaseException, dsn: str) -> str:
    """An error's first line, without the URL's password should the driver have quoted it."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    password = re.search(r"://[^:/@]+:([^@/]*)@", dsn)
    return line.replace(password.group(1), "***") if password and password.group(1) else line


# ---------------------------------------------------------------------------- the writer's group commit


def commit_args(commits: Sequence[Commit], committed_at: float, *, owner: str = "",
                leases: dict[int, int] | None = None, pseq: Callable[[int], int] | None = None) -> list[Any]:
    """ledger_commit's arguments: the fence (this owner and, for each partition the group's units
    name, the epoch of its lease; none outside a cluster), then the group's rows as arrays, one
    per column (COMMIT_TABLES' order). A unit of a partition not in `leases` raises Fenced
    before anything is sent."""
    from switch.ledger.rows import group_rows

    parts = sorted({c.partition for c in commits if c.partition is not None}) if leases is not None else []
    missing = [p for p in parts if p not in leases] if leases is not None else []
    if missing:
        raise Fenced(f"partitions {missing} are not leased to this instance")
    args: list[Any] = [owner, parts, [leases[p] for p in parts] if leases is not None else []]
    tables = group_rows(commits, committed_at, pseq)
    for table, cols in COMMIT_TABLES:
        rows = tables[table]
        if rows:
            args.extend(list(col) for col in zip(*rows))
        else:
            args.extend([] for _ in cols)
    return args


class Fenced(RuntimeError):
    """A group names a partition this instance does not hold (any more): nothing was written."""


class WriterBusy(StoreUnavailable):
    """Another process holds this ledger's writer lock."""


# Errors after which the connection, not the group, is in doubt: whether COMMIT happened is unknown.
def _connection_lost(exc: BaseException) -> bool:
    import asyncpg

    return isinstance(exc, (OSError, asyncio.TimeoutError, asyncpg.InterfaceError,
                            asyncpg.ConnectionDoesNotExistError, asyncpg.CannotConnectNowError,
                            asyncpg.AdminShutdownError))


class PgCommitter:
    """The ledger writer's connection: one `ledger_commit` call per group (see the module doc)."""

    def __init__(self, dsn: str, *, call_timeout_s: float = 30.0, owner: str = "",
                 leases: Callable[[], dict[int, int]] | None = None) -> None:
        """owner, leases: one of several instances (switch/ops/cluster.py): its id, and the
        partitions it holds now with their epochs, for the fence of every group. Without them,
        the one writer of the ledger."""
        self.dsn = dsn
        self.call_timeout_s = call_timeout_s
        self.owner = owner
        self.leases = leases
        self.conn: Any = None
        self.session: tuple[int, Any] | None = None  # `conn`'s server process and its start
        self._lost: tuple[int, Any] | None = None  # a lost connection's session, ended by the next `open`
        self.outcomes_recovered = 0  # groups found committed after the connection was lost mid-call
        self._pseq: dict[int, int] = {}  # partition → its last event sequence number handed out (a cluster)

    async def open(self) -> None:
        """Connect and take the writer lock. After a lost connection (`close_quietly`) the
        server may not have noticed the loss yet (a half-open socket): the old session still
        holds the writer lock and may still be running the last group. It is ended first
        (pg_terminate_backend, allowed on one's own role's sessions) and waited for, at most
        call_timeout_s, so the lock is this writer's again and the last group's outcome is
        final before `_landed` looks at it."""
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute("SET synchronous_commit = on")
            if self._lost is not None:
                await self._end_session(conn, *self._lost)
                self._lost = None
            # the one writer holds the lock alone; instances of a cluster share it (and fence by lease)
            take = "pg_try_advisory_lock_shared" if self.leases is not None else "pg_try_advisory_lock"
            if not await conn.fetchval(f"SELECT {take}($1)", WRITER_LOCK):
                raise WriterBusy(f"another switch writes the ledger at {redact(self.dsn)} "
                                 "(it holds the ledger's writer lock); one writer per ledger, or every "
                                 "writer an instance of one cluster (--cluster)")
        except BaseException:
            await conn.close()
            raise
        self.conn = conn
        self.session = (conn.get_server_pid(), await conn.fetchval(
            "SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"))

    async def _end_session(self, conn: Any, pid: int, started: Any) -> None:
        """End this writer's lost session (server process `pid`, started at `started`: after a
        server restart the number may be another client's) and wait until the server has let
        it go: its locks released, its transaction committed or rolled back."""
        deadline = time.monotonic() + self.call_timeout_s
        while await conn.fetchval("SELECT EXISTS(SELECT 1 FROM pg_stat_activity WHERE pid = $1 "
                                  "AND backend_start = $2)", pid, started):
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"the ledger writer's lost session (server process {pid}) at "
                                       f"{redact(self.dsn)} did not end within {self.call_timeout_s:g} s")
            await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            await conn.close()

    async def commit(self, commits: Sequence[Commit]) -> None:
        """Make the group durable, or raise. A connection lost during the call leaves the
        outcome unknown: reconnect and look (the group's first message or posting), so a group
        that did commit is never answered 96."""
        if self.conn is None:
            await self.open()
        pseq = None
        if self.leases is not None:  # each partition's events in the order its one owner commits them
            await self._load_pseq(commits)
            pseq = self._next_pseq
        args = commit_args(commits, time.time(), owner=self.owner,
                           leases=self.leases() if self.leases is not None else None, pseq=pseq)
        try:
            await self.conn.execute(COMMIT_CALL, *args, timeout=self.call_timeout_s)
        except BaseException as exc:
            if not _connection_lost(exc):
                raise
            await self.close_quietly()
            await self.open()
            if await self._landed(commits):
                self.outcomes_recovered += 1
                return
            raise

    async def _load_pseq(self, commits: Sequence[Commit]) -> None:
        """Where each partition's event sequence stands, read once per partition held: the
        owner before this one is fenced, so its last number is final."""
        need = sorted({c.partition for c in commits
                       if c.events and c.partition is not None and c.partition not in self._pseq})
        if need:
            rows = await self.conn.fetch("SELECT partition, MAX(pseq) AS top FROM outbox "
                                         "WHERE partition = ANY($1::int[]) GROUP BY partition", need)
            top = {r["partition"]: r["top"] or 0 for r in rows}
            for p in need:
                self._pseq[p] = top.get(p, 0)

    def _next_pseq(self, partition: int) -> int:
        self._pseq[partition] += 1
        return self._pseq[partition]

    def forget_pseq(self, partitions: Iterable[int]) -> None:
        """Partitions (re)gained: another owner may have added events since."""
        for p in partitions:
            self._pseq.pop(p, None)

    async def close_quietly(self) -> None:
        """Drop a connection that was lost: the next `open` ends its server session."""
        conn, self.conn = self.conn, None
        if conn is not None:
            self._lost, self.session = self.session, None
            conn.terminate()

    async def _landed(self, commits: Sequence[Commit]) -> bool:
        for c in commits:
            if c.message is not None:
                return bool(await self.conn.fetchval(
                    "SELECT EXISTS(SELECT 1 FROM messages WHERE tid=$1 AND stan=$2 AND tx_time=$3)", *c.message.key))
            if c.posting is not None:
                return bool(await self.conn.fetchval("SELECT EXISTS(SELECT 1 FROM postings WHERE id=$1)",
                                                     c.posting.id))
        return False  # a group of bookkeeping only (relay marks, meta): re-done by its caller if needed


# ---------------------------------------------------------------------------- the read side's connection

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@functools.lru_cache(maxsize=512)
def translate(sql: str, readonly: bool = False) -> str:
    """The read side's SQLite SQL as psycopg SQL: `?` → %s, `:name` → %(name)s, a literal % doubled;
    BEGIN IMMEDIATE → BEGIN (a read-only BEGIN is one REPEATABLE READ snapshot, as SQLite's
    read transaction is); INSERT OR IGNORE → ON CONFLICT DO NOTHING; a PRAGMA does nothing."""
    head = sql.lstrip().upper()
    if head.startswith("PRAGMA"):
        return "SELECT 1 WHERE FALSE"
    if head.startswith("BEGIN"):
        return "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" if readonly else "BEGIN"
    ignore = head.startswith("INSERT OR IGNORE")
    if ignore:
        sql = re.sub(r"(?i)INSERT\s+OR\s+IGNORE", "INSERT", sql, count=1)
    out: list[str] = []
    i, n, quote = 0, len(sql), ""
    while i < n:
        ch = sql[i]
        if quote:
            out.append("%%" if ch == "%" else ch)
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        elif ch == ":" and i + 1 < n and sql[i + 1] != ":" and (i == 0 or sql[i - 1] != ":"):
            m = _WORD.match(sql, i + 1)
            if m:
                out.append(f"%({m.group()})s")
                i = m.end()
                continue
            out.append(ch)
        else:
            out.append(ch)
        i += 1
    text = "".join(out)
    return text + " ON CONFLICT DO NOTHING" if ignore else text


class PgConnection:
    """Just enough of sqlite3.Connection for the read side (see the module doc)."""

    def __init__(self, dsn: str, *, readonly: bool = False) -> None:
        import psycopg
        from psycopg.types.numeric import NumericLoader

        class _WholeNumeric(NumericLoader):
            """SUM(bigint) is numeric in PostgreSQL; money here is whole won: give ints back."""

            def load(self, data: Any) -> Any:
                value = super().load(data)
                return int(value) if value == value.to_integral_value() else value

        self.readonly = readonly
        try:
            self._conn = psycopg.connect(dsn, autocommit=True)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"cannot open the ledger at {redact(dsn)}: {_first_line(exc, dsn)}") from None
        self._conn.adapters.register_loader("numeric", _WholeNumeric)
        if readonly:
            self._conn.execute("SET default_transaction_read_only = on")

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
        return self._conn.execute(translate(sql, self.readonly), params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        cur = self._conn.cursor()
        cur.executemany(translate(sql, self.readonly), list(rows))
        return cur

    def create_function(self, *_: Any, **__: Any) -> None:
        """The read side's SQLite functions exist in the database (migration 1)."""

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self._conn.info.transaction_status != TransactionStatus.IDLE

    def close(self) -> None:
        self._conn.close()
