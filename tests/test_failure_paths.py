"""Every failure path run end to end: the ledger's commit failing, a repeat racing a failed
commit, the HSM failing on the response MAC, and the exact shape of a 96.

Rules guarded (docs/architecture.md, "Hot state, members and the single writer"; docs/host-interface.md,
§4 and §6): a terminal never sees an approval that is not durable; if a commit fails, every
unit of the group and every unit queued behind it is answered 96, nothing is posted, and the
hot cache is dropped and rebuilt from the store; a 96 carries no RRN, authorization code or
balances; a repeat whose original was not stored is processed as the original.

How the commit is made to fail — two ways, each for what it proves:

* A real fault, in a real `eum switch` process: the test lowers the process's file-size limit
  (`resource.prlimit(pid, RLIMIT_FSIZE, (1, hard))`) while it runs. Python ignores SIGXFSZ, so
  the writer thread's next write to the WAL gets EFBIG, SQLite reports "disk I/O error" and
  rolls the transaction back itself; raising the limit again is the fault going away. This
  proves that the real writer connection survives a real write failure and serves the next
  commit, and that the process answers 96 rather than dying. It cannot say which requests
  shared the failing group and which were queued behind it: that depends on timing. It reads
  no log: under the limit the switch's log file cannot grow either, so its lines are not evidence.
  (`PRAGMA max_page_count` was not used: it cannot be set below the current page count and a
  small posting fits in pages the store already has, so it fails no commit deterministically.)

* A fault injected at the writer's commit, in process (the issue allows it): `LedgerWriter`
  exposes the one call that commits a group as `writer.commit_group` (the seam, in
  switch/ledger/store.py); on PostgreSQL that call is its committer's `commit` (one
  `ledger_commit` call, switch/ledger/postgres.py, on the event loop). `CommitSteps` wraps
  whichever the running writer of a real switch uses (real TCP, a real ledger): a wrapped call
  records its group, holds the writer until the test has lined up the requests it wants queued
  behind, then either commits for real or raises the store's full-disk error without touching
  the store (SQLite's sqlite3.OperationalError("database or disk is full"), PostgreSQL's
  DiskFullError, SQLSTATE 53100). That makes the group and the queue exact, so the tests can
  say which request was in which. Both stores run these tests (tests/conftest.py, both_stores).

The HSM failing on the response MAC goes through `HsmLink`, a TCP hop in front of a real
hsm_mock server: it forwards commands until the terminal's request MAC has been verified
(GW mode 11), then drops every connection and refuses new ones, as an HSM that dies between
the two commands would. Nothing of the switch is replaced.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import structlog

from switch.ledger.audit import verify
from switch.clock import FixedClock
from switch.wire.codec import load_dialect
from switch.ledger.writer import LedgerWriter
from terminal_sim.client import TerminalClient
from terminal_sim.terminal import Terminal

from conftest import (LAUNCH, SwitchEnv, account_balances, card_accounts, entry_count, postings, provision, query,
                      start_switch)
from fault_harness import free_port, listening
from hsm_hop import switch_behind_hop
from waiting import eventually, logged, settled, wait_until

pytestmark = pytest.mark.both_stores  # SQLite and PostgreSQL (tests/conftest.py)

EUM_SCRIPT = Path(sys.executable).parent / "eum"
EUM = [str(EUM_SCRIPT)] if EUM_SCRIPT.exists() else [sys.executable, "-m", "switch.cli.main"]
COMMAND_TIMEOUT_S = 30

# docs/host-interface.md §2: the 0210 echoes these fields of the 0200 (when present).
ECHOED_0210 = ("2", "3", "4", "7", "11", "12", "13", "41", "42", "49")


def balances_de54(cash: int, cashback: int) -> str:
    """DE54 as docs/host-interface.md §5 spells it: cash available, then cashback available."""
    return f"0002410C{cash:012d}0091410C{cashback:012d}"


def system_error_answer(request: dict[str, str]) -> dict[str, str]:
    """The one correct 96 to a 0200 (docs/host-interface.md §4, "nothing was posted"): the
    request's echoed fields, DE39 96, and no DE37, DE38 or DE54."""
    return {"t": "0210", **{k: request[k] for k in ECHOED_0210 if k in request}, "39": "96"}


def fields_of(answer: dict[str, str] | None) -> dict[str, str] | None:
    """A decoded answer without its bitmap (the bitmap only restates which fields are there)."""
    return None if answer is None else {k: v for k, v in answer.items() if k != "p"}


def message_rows(db: Path, tid: str, stan: str) -> list[tuple]:
    return query(db, "SELECT mti, rc, posting_id FROM messages WHERE tid=? AND stan=?", tid, stan)


def verify_cli(data_dir: Path, cwd: Path) -> dict:
    """`eum admin verify --json` on the data dir, as an operator runs it."""
    proc = subprocess.run([*EUM, "admin", "--data-dir", str(data_dir), "verify", "--json"], cwd=cwd,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


# ---------------------------------------------------------------------------- commit fault (seam)

class Step:
    """One upcoming call of the writer's commit: held until released, then committed for real
    (fail=False) or failed as a full disk (fail=True)."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.entered = threading.Event()   # the writer thread is inside this call
        self.release = threading.Event()   # the test lets it go on
        self.units = 0                     # units in the group

    async def reached(self, what: str) -> None:
        await eventually(self.entered.is_set, what=what)


class CommitSteps:
    """Wraps the one call that commits a group on a running writer: `writer.commit_group` (the
    seam; SQLite, on the writer thread) or, on PostgreSQL, its committer's `commit` (on the
    event loop). Calls beyond the planned steps commit for real and at once. `error` and
    `detail` are what the writer logs of a failed step (the store's own full-disk error)."""

    HOLD_TIMEOUT_S = 20

    def __init__(self, writer: LedgerWriter) -> None:
        self.writer = writer
        self.steps: list[Step] = []
        self.calls = 0
        self.pg = writer._pg  # PgCommitter on PostgreSQL, None on SQLite (switch/ledger/writer.py)
        if self.pg is not None:
            self.real = self.pg.commit
            self.pg.commit = self._commit_pg
            self.error, self.detail = "DiskFullError", "could not extend file: No space left on device"
        else:
            self.real = writer.commit_group
            writer.commit_group = self._commit
            self.error, self.detail = "OperationalError", "database or disk is full"

    def then(self, *, fail: bool) -> Step:
        step = Step(fail)
        self.steps.append(step)
        return step

    def _next(self, units: list) -> Step | None:
        index, self.calls = self.calls, self.calls + 1
        if index >= len(self.steps):
            return None
        step = self.steps[index]
        step.units = len(units)
        step.entered.set()
        return step

    def _commit(self, conn: sqlite3.Connection, units: list) -> None:
        step = self._next(units)
        if step is not None:
            if not step.release.wait(self.HOLD_TIMEOUT_S):
                raise AssertionError(f"commit step {self.steps.index(step)} was never released by the test")
            if step.fail:
                raise sqlite3.OperationalError(self.detail)
        return self.real(conn, units)

    async def _commit_pg(self, units: list) -> None:
        step = self._next(units)
        if step is not None:
            index = self.steps.index(step)
            await eventually(step.release.is_set, what=f"commit step {index} to be released by the test",
                             timeout_s=self.HOLD_TIMEOUT_S)
            if step.fail:
                import asyncpg

                raise asyncpg.DiskFullError(self.detail)
        return await self.real(units)

    def restore(self) -> None:
        if self.pg is not None:
            self.pg.commit = self.real
        else:
            self.writer.commit_group = self.real


async def queued(env: SwitchEnv, n: int) -> None:
    await eventually(lambda: env.core.writer.waiting == n, what=f"{n} units waiting in the ledger writer's queue")


async def clients(env: SwitchEnv, n: int) -> list[TerminalClient]:
    return [await env.client().connect() for _ in range(n)]


async def namdong_cards(env: SwitchEnv, n: int) -> list[str]:
    """n more Namdong cards, one member each, charged 100,000 (postings 3 … n+2)."""
    pans = []
    for _ in range(n):
        card = await env.op("card-issue", program="namdong")
        await env.op("card-charge", pan=card["pan"], amount=100_000)
        pans.append(card["pan"])
    return pans


async def test_a_failed_commit_answers_its_group_and_the_queue_behind_it_96_and_posts_nothing(switch_env, tmp_path):
    """Decisions of different members share a group commit (one member's decisions never
    overlap: docs/architecture.md, "One authorization, one direction"), so the failing group
    and the queue behind it hold seven members' purchases."""
    env = switch_env
    db, pan = env.core.db_path, env.cards["namdong"]["pan"]
    group_size, queue_size = 4, 3
    others = await namdong_cards(env, group_size + queue_size)   # postings 3 … 9
    main, term = await env.signed_on("T0000001", "NAMDONG01")
    steps = CommitSteps(env.core.writer)
    first = steps.then(fail=False)   # a purchase that commits, with the failing group lined up behind it
    failing = steps.then(fail=True)
    try:
        before_task = asyncio.ensure_future(main.request(term.purchase(pan, 20_000)))
        await first.reached("the first purchase's commit to start")
        group_clients = await clients(env, group_size)
        group_reqs = [term.purchase(card, 1_000 + i) for i, card in enumerate(others[:group_size])]
        group_tasks = [asyncio.ensure_future(c.request(r)) for c, r in zip(group_clients, group_reqs)]
        await queued(env, group_size)  # decided and waiting: they form the next group, all of them
        first.release.set()
        approved = await settled(before_task, what="the answer to the purchase before the fault")
        assert approved["39"] == "00" and approved["37"] == "000000000010"
        assert approved["54"] == balances_de54(80_000, 1_500)  # docs/domain.md, Worked examples: example 1
        snapshot = account_balances(db)
        entries_before = entry_count(db)

        await failing.reached("the failing group's commit to start")
        assert failing.units == group_size
        queue_clients = await clients(env, queue_size)
        queue_reqs = [term.purchase(card, 2_000 + i) for i, card in enumerate(others[group_size:])]
        queue_tasks = [asyncio.ensure_future(c.request(r)) for c, r in zip(queue_clients, queue_reqs)]
        await queued(env, queue_size)  # behind the failing group, decided on state about to be void
        with structlog.testing.capture_logs() as events:
            failing.release.set()
            answers = await settled(asyncio.gather(*group_tasks, *queue_tasks), what="the answers to the failed group")
    finally:
        steps.restore()

    for req, answer in zip(group_reqs + queue_reqs, answers):
        assert fields_of(answer) == system_error_answer(req)
    failures = logged(events, event="ledger_commit_failed")
    assert [(e["units"], e["error"], e["detail"]) for e in failures] == [(group_size, steps.error, steps.detail)]
    notes = [(e["stan"], e["rc"], e.get("note")) for e in logged(events, event="message")]
    assert sorted(notes) == sorted((r["11"], "96", "ledger unavailable") for r in group_reqs + queue_reqs)
    # nothing of the failed group or its queue reached the store
    assert [p["id"] for p in postings(db)] == list(range(1, 11))
    assert account_balances(db) == snapshot and entry_count(db) == entries_before
    assert query(db, "SELECT COUNT(*) FROM messages WHERE rc = '96' OR posting_id > 10") == [(0,)]
    # the hot cache was dropped: it is filled again from the store, posting ids restart after 10
    assert len(env.core.state.cards) == 0 and env.core.state.next_posting_id == 11
    assert all(env.core.state.messages.get((term.tid, r["11"], r["7"])) is None for r in group_reqs + queue_reqs)

    # a repeat (0201) of an original answered 96 is processed afresh: approved, posted once;
    # 2,000 from a card with no cashback yet earns 7.5 % = 150 (the store's balances)
    repeat = Terminal.repeat(queue_reqs[0])
    fresh = await main.request(repeat)
    assert (fresh["39"], fresh["37"], fresh["54"]) == ("00", "000000000011", balances_de54(98_000, 150))
    again = await main.request(repeat)
    assert fields_of(again) == fields_of(fresh)  # the stored answer now
    assert [(p["id"], p["stan"], p["amount"]) for p in postings(db, "purchase")] == [
        (10, approved["11"], 20_000), (11, repeat["11"], 2_000)]

    # once the fault is gone a new purchase is approved, with exact balances: 10,000 spends the
    # 1,500 cashback then 8,500 cash, and earns 750
    after = await main.request(term.purchase(pan, 10_000))
    assert (after["39"], after["37"], after["54"]) == ("00", "000000000012", balances_de54(71_500, 750))
    assert card_accounts(db, pan) == (71_500, 750)
    assert verify_cli(env.data_dir, tmp_path)["ok"] is True
    for c in (main, *group_clients, *queue_clients):
        await c.close()


async def test_a_request_waiting_on_its_members_lock_is_decided_after_the_failed_commit_on_the_store(switch_env):
    """A second purchase of the same member waits for the first's commit (the member's lock):
    when that commit fails, the second is decided afresh on the store's balances, not on the
    void decision before it, and is approved."""
    env = switch_env
    db, pan = env.core.db_path, env.cards["namdong"]["pan"]
    main, term = await env.signed_on("T0000001", "NAMDONG01")
    other = await env.client().connect()
    steps = CommitSteps(env.core.writer)
    failing = steps.then(fail=True)
    first_req, second_req = term.purchase(pan, 90_000), term.purchase(pan, 60_000)
    try:
        first_task = asyncio.ensure_future(main.request(first_req))
        await failing.reached("the first purchase's commit to start")
        second_task = asyncio.ensure_future(other.request(second_req))
        await eventually(lambda: len(env.core.engine.locks) == 1 and (term.tid, second_req["11"], second_req["7"])
                         in env.core.engine.pending, what="the second purchase waiting on the lock")
        failing.release.set()
        first, second = await settled(asyncio.gather(first_task, second_task), what="both answers")
    finally:
        steps.restore()
    assert fields_of(first) == system_error_answer(first_req)
    # had it been decided on the void 90,000 purchase, 60,000 would have been declined 51
    assert (second["39"], second["37"], second["54"]) == ("00", "000000000003", balances_de54(40_000, 4_500))
    assert [(p["id"], p["amount"]) for p in postings(db, "purchase")] == [(3, 60_000)]
    await main.close()
    await other.close()


async def test_a_repeat_waiting_on_an_original_whose_commit_fails_is_processed_afresh_and_posted_once(switch_env):
    env = switch_env
    db, pan = env.core.db_path, env.cards["namdong"]["pan"]
    first, term = await env.signed_on("T0000001", "NAMDONG01")
    second = await env.client().connect()
    gate, program = env.server.processor.gate, env.core.rules.program_for_pan(pan).id
    steps = CommitSteps(env.core.writer)
    failing = steps.then(fail=True)  # the original's group only; the next commit is real
    original = term.purchase(pan, 20_000)
    try:
        original_task = asyncio.ensure_future(first.request(original))
        await failing.reached("the original's commit to start")
        assert failing.units == 1
        repeat_task = asyncio.ensure_future(second.request(Terminal.repeat(original)))
        # A request holds its program's slot while the engine works on it; the repeat takes the
        # second and runs, with no pause, to the wait on its original's commit (engine._replay).
        await eventually(lambda: repeat_task.done() or gate.stats()[program]["in_flight"] == 2,
                         what="the repeat to be in the engine, waiting on its original")
        assert not repeat_task.done(), (
            f"the repeat was answered {repeat_task.result()['39']} before its original's commit ended")
        failing.release.set()
        original_answer = await settled(original_task, what="the original's answer")
        repeat_answer = await settled(repeat_task, what="the repeat's answer")
    finally:
        steps.restore()

    assert fields_of(original_answer) == system_error_answer(original)
    # nothing of the original was stored, so the repeat is the original (docs/host-interface.md §6):
    # decided afresh on the store's balances, committed, and approved
    assert (repeat_answer["t"], repeat_answer["39"], repeat_answer["37"], repeat_answer["54"]) == (
        "0210", "00", "000000000003", balances_de54(80_000, 1_500))
    assert [(p["id"], p["stan"], p["amount"]) for p in postings(db, "purchase")] == [(3, original["11"], 20_000)]
    assert message_rows(db, "T0000001", original["11"]) == [("0200", "00", 3)]
    assert card_accounts(db, pan) == (80_000, 1_500)
    await first.close()
    await second.close()


async def test_a_system_error_echoes_the_request_and_carries_no_rrn_authorization_or_balances(switch_env):
    """The three shapes of a 96 (docs/host-interface.md §2 and §4): a refund's, a balance
    inquiry's and a reversal's, each of which would have carried DE37/DE38/DE54 if approved.
    Afterwards the store's state holds: the voided partial refund left nothing behind."""
    env = switch_env
    db, pan = env.core.db_path, env.cards["namdong"]["pan"]
    main, term = await env.signed_on("T0000001", "NAMDONG01")
    sold = await main.request(term.purchase(pan, 20_000))
    kept = term.purchase(pan, 5_000)
    assert (sold["39"], sold["37"], (await main.request(kept))["39"]) == ("00", "000000000003", "00")
    snapshot = account_balances(db)
    refund = term.refund(pan, 3_000, sold["37"])
    inquiry = term.balance(pan)
    reversal = term.reversal(kept)
    steps = CommitSteps(env.core.writer)
    for _ in range(3):  # each of the three commits fails in turn
        steps.then(fail=True).release.set()
    try:
        answers = [await main.request(r) for r in (refund, inquiry, reversal)]
    finally:
        steps.restore()

    refund_96, inquiry_96, reversal_96 = (fields_of(a) for a in answers)
    assert refund_96 == {"t": "0210", "2": pan, "3": "200000", "4": "000000003000", "7": refund["7"],
                         "11": refund["11"], "12": refund["12"], "13": refund["13"], "39": "96",
                         "41": "T0000001", "42": "NAMDONG01      ", "49": "410"}  # DE37 of the request not echoed
    assert inquiry_96 == {"t": "0210", "2": pan, "3": "310000", "7": inquiry["7"], "11": inquiry["11"],
                          "12": inquiry["12"], "13": inquiry["13"], "39": "96", "41": "T0000001",
                          "42": "NAMDONG01      ", "49": "410"}
    reversal_96.pop("1", None)  # the secondary bitmap (DE90 is above 64)
    assert reversal_96 == {"t": "0410", "2": pan, "3": "000000", "4": "000000005000", "7": reversal["7"],
                           "11": reversal["11"], "39": "96", "41": "T0000001", "42": "NAMDONG01      ",
                           "49": "410", "90": reversal["90"]}
    assert [p["id"] for p in postings(db)] == [1, 2, 3, 4] and account_balances(db) == snapshot
    assert [p["undone"] for p in postings(db, "purchase")] == [0, 0]

    # the voided undo is forgotten with the cache: all 20,000 of the purchase can be refunded,
    # and the reversal, repeated, reverses all 5,000 of the other
    full = await main.request(term.refund(pan, 20_000, sold["37"]))
    again = await main.request(Terminal.repeat(reversal))
    assert (full["39"], full["37"], again["39"]) == ("00", "000000000005", "00")
    assert [(p["kind"], p["amount"], p["original_id"]) for p in postings(db)][4:] == [
        ("refund", 20_000, 3), ("reversal", 5_000, 4)]
    # 100,000 − 20,000 + 1,500 earned; − 5,000 (1,500 of it cashback) + 375 earned; the refund gives
    # 20,000 back and claws 1,500 (375 cashback, 1,125 cash); the reversal gives 3,500 cash and
    # 1,500 cashback back and claws 375 (docs/domain.md, Spending order and clawback (assumptions))
    assert card_accounts(db, pan) == (98_875, 1_125)
    await main.close()


# ---------------------------------------------------------------------------- a real write failure


@pytest.mark.sqlite_only("the fault is the switch process's own file writes (RLIMIT_FSIZE): a PostgreSQL "
                         "ledger is written by the server, not by the switch")
async def test_a_real_write_failure_answers_96_posts_nothing_and_the_running_switch_recovers(tmp_path):
    data_dir = tmp_path / "var"
    async with start_switch(data_dir, clock=FixedClock(LAUNCH)) as env:  # the usual population, then closed
        await provision(env)
        pan = env.cards["namdong"]["pan"]
    db = data_dir / "ledger.sqlite3"
    port = free_port()
    with (tmp_path / "switch.err").open("w") as err:
        proc = subprocess.Popen([*EUM, "switch", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}",
                                 "--clock-start", LAUNCH.isoformat()],
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: listening(port, proc), what=f"eum switch to listen on {port}")
        dialect = load_dialect("default")
        term = Terminal("T0000001", "NAMDONG01")
        main = await TerminalClient("127.0.0.1", port, dialect).connect()
        assert (await main.request(term.sign_on()))["39"] == "00"
        sold = await main.request(term.purchase(pan, 20_000))
        assert (sold["39"], sold["37"], sold["54"]) == ("00", "000000000003", balances_de54(80_000, 1_500))
        snapshot, entries = account_balances(db), entry_count(db)

        soft, hard = resource.prlimit(proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (1, hard))  # no file of the switch may grow past 1 byte
        try:
            others = [await TerminalClient("127.0.0.1", port, dialect).connect() for _ in range(6)]
            reqs = [term.purchase(pan, 1_000 + i) for i in range(6)]
            answers = await settled(asyncio.gather(*(c.request(r) for c, r in zip(others, reqs))),
                                    what="the answers under the file-size limit")
            assert proc.poll() is None, "the switch died of the write failure (SIGXFSZ?)"
            assert [fields_of(a) for a in answers] == [system_error_answer(r) for r in reqs]
            assert [p["id"] for p in postings(db)] == [1, 2, 3]
            assert account_balances(db) == snapshot and entry_count(db) == entries
            assert query(db, "SELECT COUNT(*) FROM messages") == [(1,)]  # the first purchase's only
        finally:
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (soft, hard))

        # the fault is gone: a repeat of a 96 is processed afresh on the store's balances (the
        # cache that had spent the six failed purchases was dropped), then a new purchase
        repeat = await main.request(Terminal.repeat(reqs[0]))
        assert (repeat["39"], repeat["37"], repeat["54"]) == ("00", "000000000004", balances_de54(80_000, 575))
        after = await main.request(term.purchase(pan, 10_000))
        assert (after["39"], after["37"], after["54"]) == ("00", "000000000005", balances_de54(70_575, 750))
        for c in (main, *others):
            await c.close()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=COMMAND_TIMEOUT_S) == 0
    assert [(p["id"], p["stan"], p["amount"]) for p in postings(db, "purchase")] == [
        (3, sold["11"], 20_000), (4, reqs[0]["11"], 1_000), (5, after["11"], 10_000)]
    assert card_accounts(db, pan) == (70_575, 750)
    audit = verify(db)
    assert (audit.ok, audit.problem, audit.stats["postings"]) == (True, "", 5)


# ---------------------------------------------------------------------------- the HSM failing on the response MAC

async def test_an_hsm_lost_before_the_response_mac_declines_91_posts_nothing_and_the_repeat_is_processed_afresh(
        tmp_path):
    async with switch_behind_hop(tmp_path / "var", tid="T0000001") as setup:
        env, link, pan, term, security = setup.env, setup.hop, setup.pan, setup.term, setup.security
        db = env.core.db_path
        async with TerminalClient("127.0.0.1", env.port, env.dialect, security=security) as client:
            assert (await client.request(term.sign_on()))["39"] == "00"
            link.forwarded.clear()
            link.cut_after_request_mac = True
            answer = await client.request(term.purchase(pan, 20_000))
            original = client.last_request
            # the window was exercised: the request MAC's check and the response MAC left in one
            # write (docs/host-interface.md, "The MAC check and the response MAC in one round
            # trip"), the check's answer came back, and the HSM was gone before the response MAC's
            assert [c for c in link.forwarded if c.startswith("GW")] == ["GW11", "GW42"] and link.up is False
            got = (answer["39"], answer.get("37"), client.last_response_mac_ok, len(postings(db, "purchase")))
            print("answer while the HSM is gone (rc, rrn, response MAC ok, purchases posted):", got)
            # required (docs/host-interface.md §4, 91; docs/security.md: never an approval
            # without the HSM's word): declined 91, nothing posted, nothing stored
            assert answer["39"] == "91", f"answered {answer['39']} with the HSM gone before the response MAC"
            assert postings(db, "purchase") == []
            assert message_rows(db, "T0000001", original["11"]) == []
            assert card_accounts(db, pan) == (100_000, 0)

            link.restore()
            await eventually(lambda: env.core.hsm.healthy, what="the switch to see the HSM back")
            again = await client.resend(Terminal.repeat(original))
            assert (again["39"], again["54"], client.last_response_mac_ok) == (
                "00", balances_de54(80_000, 1_500), True)
            assert [(p["stan"], p["amount"]) for p in postings(db, "purchase")] == [(original["11"], 20_000)]
