"""Shared test harness: a real switch on a free loopback port, real SQLite in tmp_path.

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
                             hsm=hsm) as core:
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
# Read-only looks at the real SQLite ledger, for exact assertions after traffic.

import sqlite3  # noqa: E402


def query(db_path: Path, sql: str, *args: object) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
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
from typing import Iterator  # noqa: E402

from pg_cluster import PgCluster, pg_bindir  # noqa: E402


def _pg_missing(reason: str) -> None:
    """Skip, except under CI (CI=true), where .ci/run installs PostgreSQL: missing there is a defect."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI installs it (.ci/run), so this is a defect", pytrace=False)
    pytest.skip(f"{reason} (.ci/run installs it)")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One private PostgreSQL cluster for the test session, stopped (and its temp dir removed) at the end."""
    bindir = pg_bindir()
    if bindir is None:
        _pg_missing("PostgreSQL server binaries (initdb, pg_ctl) not found: pg_config --bindir, "
                    "/usr/lib/postgresql/*/bin, PATH")
    cluster = PgCluster(bindir=bindir).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_dsn(pg_cluster: PgCluster) -> Iterator[str]:
    """A fresh, empty database on the session's private cluster (its DSN), dropped after the test."""
    with pg_cluster.database() as dsn:
        yield dsn
