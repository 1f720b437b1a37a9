"""Shared test harness: a real switch on a free loopback port, a real ledger: SQLite in tmp_path,
or a fresh PostgreSQL database for the [postgresql] run of a both_stores module (end of file).

`switch_env` starts the same objects `eum switch` wires (open_core + Processor +
SwitchServer) inside the test's event loop, with a FixedClock the test can move, and
provisions a small population through the real operations. Terminals connect over TCP.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import AsyncIterator

import pytest

import hypothesis_profiles  # noqa: F401  (registers and loads the Hypothesis profile: HYPOTHESIS_PROFILE)
from switch.clock import FixedClock
from switch.wire.codec import Dialect, load_dialect
from switch.ops.config import SwitchConfig
from switch.ops.runtime import Core, lock_data_dir, open_core, unlock
from switch.authorize.server import Processor, SwitchServer
from terminal_sim.client import TerminalClient
from terminal_sim.terminal import Terminal

LAUNCH = datetime.fromisoformat("2019-07-20T12:00:00+09:00")


@dataclass
class SwitchEnv:
    core: Core
    server: SwitchServer
    clock: FixedClock
    dialect: Dialect
    data_dir: Path
    cards: dict[str, dict] = field(default_factory=dict)  # name -> issue result (pan, expiry, member)

    @property
    def port(self) -> int:
        return self.server.port

    def client(self, **kw) -> TerminalClient:
        return TerminalClient("127.0.0.1", self.port, self.dialect, **kw)

    async def op(self, op_name: str, /, **args) -> dict:
        return await self.core.ops.run(op_name, args)

    async def signed_on(self, tid: str = "T0000001", mid: str = "NAMDONG01") -> tuple[TerminalClient, Terminal]:
        client = await self.client().connect()
        term = Terminal(tid, mid)
        answer = await client.request(term.sign_on())
        assert answer["39"] == "00"
        return client, term


@contextlib.asynccontextmanager
async def start_switch(data_dir: Path, *, clock: FixedClock, dialect: str = "default",
                       dialect_dir: Path | None = None, hsm=None, check_dialect: bool = True,
                       **config_kw) -> AsyncIterator[SwitchEnv]:
    """check_dialect=False skips the Processor's start-up dialect check, only to reach the
    run-time second line of defence (switch/authorize/server.py)."""
    config = SwitchConfig(port=0, data_dir=data_dir, dialect=dialect, **config_kw)
    fd = lock_data_dir(data_dir, wait=False)
    try:
        async with open_core(data_dir, clock=clock, commit_interval_ms_max=config.commit_interval_ms_max,
                             commit_linger_ms=config.commit_linger_ms, hsm=hsm) as core:
            d = load_dialect(dialect, directory=dialect_dir)
            processor = Processor(core.engine, d, program_limits=config.program_limits(), check_dialect=check_dialect)
            server = SwitchServer(config, processor, core.ops)
            await server.start()
            try:
                yield SwitchEnv(core, server, clock, d, data_dir)
            finally:
                await server.stop()
    finally:
        unlock(fd)


async def provision(env: SwitchEnv) -> None:
    """Two merchants (Namdong 250M, Yeonsu 250M), one terminal each, two charged cards."""
    await env.op("merchant-add", mid="NAMDONG01", name="Namdong Cafe", district="namdong", annual_sales=250_000_000)
    await env.op("merchant-add", mid="YEONSU01", name="Yeonsu Bakery", district="yeonsu", annual_sales=250_000_000)
    await env.op("terminal-add", tid="T0000001", mid="NAMDONG01")
    await env.op("terminal-add", tid="T0000002", mid="YEONSU01")
    for name, program in (("namdong", "namdong"), ("incheon", "incheon")):
        card = await env.op("card-issue", program=program)
        await env.op("card-charge", pan=card["pan"], amount=100_000)
        env.cards[name] = card


async def bought(env: SwitchEnv, amount: int = 20_000):
    """A signed-on Namdong terminal buys `amount` with the Namdong card: approved."""
    client, term = await env.signed_on("T0000001", "NAMDONG01")
    pan = env.cards["namdong"]["pan"]
    req = term.purchase(pan, amount)
    resp = await client.request(req)
    assert resp["39"] == "00"
    return client, term, pan, req, resp


@pytest.fixture
async def switch_env(tmp_path: Path) -> AsyncIterator[SwitchEnv]:
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        yield env


# ---------------------------------------------------------------------------- ledger probes
# Read-only looks at the real ledger, for exact assertions after traffic. They take the path a
# SQLite test would open, `<data dir>/ledger.sqlite3`, and read the ledger that data dir's switch
# really used: `locate(<data dir>)`, so the PostgreSQL database $EUM_STORE names when a test runs
# on PostgreSQL ([postgresql] below). Any other path is read as a SQLite file. Results are the
# same Python values on both stores (ints and strs); a probe that returns rows in an order says
# ORDER BY.

from switch.ledger.store import STORE_ENV, Store, connect, locate  # noqa: E402


def ledger_of(db_path: Path | Store) -> Store:
    """The store behind a probe's path: `<dir>/ledger.sqlite3` is whatever `locate(<dir>)` says."""
    if isinstance(db_path, Path) and db_path.name == "ledger.sqlite3":
        return locate(db_path.parent)
    return db_path


def query(db_path: Path | Store, sql: str, *args: object) -> list[tuple]:
    conn = connect(ledger_of(db_path), readonly=True)
    try:
        return [tuple(row) for row in conn.execute(sql, args).fetchall()]
    finally:
        conn.close()


def posting_count(db_path: Path) -> int:
    return query(db_path, "SELECT COUNT(*) FROM postings")[0][0]


def entry_count(db_path: Path) -> int:
    return query(db_path, "SELECT COUNT(*) FROM entries")[0][0]


def account_balances(db_path: Path) -> dict[str, int]:
    return dict(query(db_path, "SELECT name, balance FROM accounts"))


def account(db_path: Path, name: str) -> int:
    return account_balances(db_path).get(name, 0)


def payable(mid: str) -> str:
    """The merchant's payable account name (DE42 is padded to 15 characters)."""
    return f"merchant:{mid.ljust(15)}:payable"


def card_id(db_path: Path, pan: str) -> int:
    return query(db_path, "SELECT id FROM cards WHERE pan=?", pan)[0][0]


def card_accounts(db_path: Path, pan: str) -> tuple[int, int]:
    """(cash, cashback) from the ledger's accounts table."""
    cid = card_id(db_path, pan)
    balances = account_balances(db_path)
    return balances.get(f"card:{cid}:cash", 0), balances.get(f"card:{cid}:cashback", 0)


def postings(db_path: Path, kind: str | None = None) -> list[dict]:
    cols = ("id", "kind", "card_id", "mid", "tid", "stan", "rrn", "amount", "fee", "support", "cashback",
            "original_id", "undone")
    sql = f"SELECT {', '.join(cols)} FROM postings" + (" WHERE kind=?" if kind else "") + " ORDER BY id"
    return [dict(zip(cols, row)) for row in query(db_path, sql, *((kind,) if kind else ()))]


def posting_entries(db_path: Path, posting_id: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for acc, amount in query(db_path, "SELECT account, amount FROM entries WHERE posting_id=?", posting_id):
        out[acc] = out.get(acc, 0) + amount
    return out


# ---------------------------------------------------------------------------- PostgreSQL
# A private cluster (tests/pg_cluster.py) on a free loopback port, never the system server on
# 5432: one per session, a fresh database per test.

import os  # noqa: E402
import shutil  # noqa: E402
from typing import Callable, Iterator  # noqa: E402

from pg_cluster import PgCluster, pg_bindir  # noqa: E402


def _pg_missing(reason: str) -> None:
    """Skip, except under CI (CI=true), where .ci/run installs PostgreSQL: missing there is a defect."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI installs it (.ci/run), so this is a defect", pytrace=False)
    pytest.skip(f"{reason} (.ci/run installs it)")


SHM_FREE_MIN = 2 << 30  # the test cluster goes to tmpfs only with this much room (WAL, a database per test)


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One private PostgreSQL cluster for the test session, stopped (and its temp dir removed) at the end.
    Its data directory is on tmpfs (/dev/shm) when there is one, as the Hypothesis and simulation
    tests' SQLite ledgers are: the settings stay durable (fsync, synchronous_commit), the fsyncs
    then cost nothing, so a fresh database per test (and per Hypothesis example) is cheap."""
    bindir = pg_bindir()
    if bindir is None:
        _pg_missing("PostgreSQL server binaries (initdb, pg_ctl) not found: pg_config --bindir, "
                    "/usr/lib/postgresql/*/bin, PATH")
    shm = Path("/dev/shm")
    roomy = shm.is_dir() and os.access(shm, os.W_OK) and _free_bytes(shm) >= SHM_FREE_MIN
    cluster = PgCluster(bindir=bindir, base_dir=shm if roomy else None).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_dsn(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh, empty database on the session's private cluster (its DSN), dropped after the test."""
    with pg_cluster.database() as dsn:
        yield dsn


# ---------------------------------------------------------------------------- both stores
# A module that touches the ledger opts in with `pytestmark = pytest.mark.both_stores`: each of
# its tests then runs twice, `[sqlite]` (the data dir's ledger.sqlite3) and `[postgresql]` (a
# fresh database on the private cluster, $EUM_STORE set to it for the test's duration, so
# open_core, open_store, verify, the reports, the probes above and every `eum` subprocess the test
# starts use it). A test of such a module that is SQLite's by nature (the file, its WAL, PRAGMAs,
# the writer's commit_group seam) is marked `sqlite_only("why")` and runs as `[sqlite]` only.
# `-k sqlite` / `-k postgresql` runs one store (docs/testing.md, "Both stores").

STORES = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_stores: run each test of the module on SQLite and on PostgreSQL "
                                       "(ids [sqlite], [postgresql]; tests/conftest.py)")
    config.addinivalue_line("markers", "sqlite_only(reason): in a both_stores module, run this test on SQLite only")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_stores") is None:
        return
    stores = ("sqlite",) if metafunc.definition.get_closest_marker("sqlite_only") else STORES
    metafunc.parametrize("ledger_store", stores, indirect=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:  # a reason is required: say why the behaviour is SQLite's alone
        marker = item.get_closest_marker("sqlite_only")
        if marker is not None and not (marker.args or marker.kwargs.get("reason")):
            raise pytest.UsageError(f"{item.nodeid}: sqlite_only needs a reason")


class LedgerStore:
    """The store the running test uses: `name` is "sqlite" or "postgresql"; `dsn` the test's
    database on PostgreSQL (None on SQLite)."""

    def __init__(self, name: str, monkeypatch: pytest.MonkeyPatch, cluster: "PgCluster | None" = None,
                 dsn: str | None = None) -> None:
        self.name = name
        self.dsn = dsn
        self._monkeypatch = monkeypatch
        self._cluster = cluster
        self._copies: list[str] = []  # databases made by use_copy_of, dropped after the test

    @property
    def postgresql(self) -> bool:
        return self.name == "postgresql"

    @contextlib.contextmanager
    def fresh(self) -> Iterator[str | None]:
        """A ledger of its own for one part of a test (a Hypothesis example, a second data dir):
        on PostgreSQL a fresh database that $EUM_STORE names inside the block, dropped after it
        (and $EUM_STORE back to the test's); on SQLite nothing to do, a data dir is a ledger."""
        if self._cluster is None:
            yield None
            return
        with self._cluster.database() as dsn, self._monkeypatch.context() as patch:
            patch.setenv(STORE_ENV, dsn)
            yield dsn

    def use_copy_of(self, template: str) -> str:
        """PostgreSQL: from now on this test's ledger is a new database copied from `template`
        (CREATE DATABASE … TEMPLATE; nothing else may be connected to it), dropped after the test."""
        assert self._cluster is not None, "a copy of a database is for [postgresql] tests"
        dsn = _copy_database(self._cluster, template)
        self._copies.append(dsn)
        self._monkeypatch.setenv(STORE_ENV, dsn)
        return dsn

    def _drop_copies(self) -> None:
        while self._copies:
            assert self._cluster is not None
            self._cluster.drop_database(self._copies.pop())


def _copy_database(cluster: "PgCluster", template: str) -> str:
    """A new database of `cluster`, a copy of the database `template` (a DSN of the same cluster)."""
    import uuid

    import psycopg
    from psycopg import conninfo, sql

    name = f"eum_test_copy_{uuid.uuid4().hex[:16]}"
    source = conninfo.conninfo_to_dict(template)["dbname"]
    with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(source)))
    return cluster.dsn(name)


@pytest.fixture(autouse=True)
def ledger_store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[LedgerStore]:
    """Every test: "sqlite" unless a both_stores module parametrized it (pytest_generate_tests).
    $EUM_STORE from the shell never leaks into a test: SQLite unless this fixture says otherwise."""
    name = getattr(request, "param", "sqlite")
    monkeypatch.delenv(STORE_ENV, raising=False)
    if name == "sqlite":
        yield LedgerStore(name, monkeypatch)
        return
    assert name == "postgresql", name
    cluster = request.getfixturevalue("pg_cluster")
    tmp = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    with cluster.database() as dsn:
        monkeypatch.setenv(STORE_ENV, dsn)
        store = LedgerStore(name, monkeypatch, cluster, dsn)
        try:
            yield store
        finally:
            store._drop_copies()
    if tmp is not None:  # the test really ran on PostgreSQL: no SQLite ledger appeared in its tmp_path
        stray = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*.sqlite3"))
        assert not stray, f"a [postgresql] test made a SQLite ledger in its tmp_path: {stray}"


class BuiltLedger:
    """A ledger built once per module and store by `build(data_dir)` (real traffic, then the
    switch stopped), of which every test gets its own copy, so nothing is shared between tests:
    on SQLite the closed data dir is copied; on PostgreSQL the data dir is copied and the built
    database is the template of the test's own (`LedgerStore.use_copy_of`). For a module-scoped
    fixture: `with BuiltLedger(build, tmp_path_factory) as built: yield built`. What `build`
    returns is `made(store)`."""

    def __init__(self, build: "Callable[[Path], object]", tmp_path_factory: pytest.TempPathFactory) -> None:
        self._build = build
        self._factory = tmp_path_factory
        self._built: dict[str, tuple[Path, str | None, object]] = {}
        self._templates: list[tuple["PgCluster", str]] = []

    def __enter__(self) -> "BuiltLedger":
        return self

    def __exit__(self, *exc: object) -> None:
        while self._templates:
            cluster, template = self._templates.pop()
            cluster.drop_database(template)

    def copy(self, store: LedgerStore, tmp_path: Path) -> Path:
        """This test's own copy of the built data dir (on PostgreSQL, $EUM_STORE then names its
        own copy of the built database)."""
        if store.name not in self._built:
            data_dir = self._factory.mktemp(f"built-{store.name}") / "var"
            template = None
            if store.postgresql:
                assert store._cluster is not None
                template = store._cluster.create_database()
                self._templates.append((store._cluster, template))
                with pytest.MonkeyPatch.context() as patch:
                    patch.setenv(STORE_ENV, template)
                    made = self._build(data_dir)
            else:
                made = self._build(data_dir)
            self._built[store.name] = (data_dir, template, made)
        built, template, _ = self._built[store.name]
        data_dir = Path(shutil.copytree(built, tmp_path / built.name))
        if template is not None:
            store.use_copy_of(template)
        return data_dir

    def made(self, store: LedgerStore) -> object:
        """What `build` returned for this store (after `copy`)."""
        return self._built[store.name][2]
