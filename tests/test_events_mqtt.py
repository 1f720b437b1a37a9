"""The outbox relay and the reference consumer against a real, private Mosquitto.

In process (fast): the relay publishes the backlog in seq order with QoS 1 and marks it
only after PUBACK; authorizations never wait for the broker; a backlog built while the
broker is down is delivered when it is back.

As processes (the issue's 'done means'): `eum switch --mqtt` and `eum events subscribe`
with real terminals over TCP; the broker is SIGKILLed and restarted mid-run, the switch is
SIGKILLed and restarted mid-run; the subscriber sees every event exactly once after
deduplication, re-sent events carry the same event_id, and the count and sum of cashback
events equal the ledger's cashback postings to the won.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import aiomqtt
import pytest
import structlog.testing

from conftest import LAUNCH, account_balances, provision, query, start_switch
from mqtt_broker import Broker, broker, needs_mosquitto, persistent_broker  # noqa: F401 (fixtures)
from switch.ledger.audit import verify
from switch.clock import FixedClock
from switch.wire.codec import load_dialect
from switch.ops.consumer import ConsumerConfig, consume
from switch.ledger.relay import Relay, RelayConfig
from switch.ledger.store import Store, connect, locate
from terminal_sim.client import TerminalClient
from terminal_sim.terminal import Terminal
from test_cli import EUM, admin_json, free_port, wait_listening
from waiting import eventually, settled, wait_until

pytestmark = [needs_mosquitto, pytest.mark.both_stores]  # SQLite and PostgreSQL (tests/conftest.py)
FAST = dict(status_interval_s=0.2, backoff_s_min=0.05, backoff_s_max=0.5, publish_timeout_s=3.0)


def outbox_payloads(db: Store) -> list[str]:
    return [p for (p,) in query(db, "SELECT payload FROM outbox ORDER BY seq")]


def relayed_seq(db: Store) -> int:
    rows = query(db, "SELECT seq FROM outbox_relay WHERE name='mqtt'")
    return rows[0][0] if rows else 0


class Listener:
    """The reference consumer, in process, collecting lines instead of printing them."""

    def __init__(self, b: Broker, **kw) -> None:
        self.lines: list[str] = []
        self.subscribed = asyncio.Event()
        self.config = ConsumerConfig(host="127.0.0.1", port=b.port, **kw)
        self.task: asyncio.Task | None = None

    def write(self, text: str) -> None:
        self.lines += [x for x in text.splitlines() if x]

    def flush(self) -> None:
        pass

    async def start(self) -> "Listener":
        self.task = asyncio.ensure_future(consume(self.config, self, on_subscribed=self.subscribed.set))
        await settled(self.subscribed.wait(), what="the consumer's subscription")
        return self

    async def result(self):
        return await settled(self.task, what="the consumer to print its count of events")


async def register_session(b: Broker, client_id: str) -> None:
    """A persistent session subscribed to every event topic, then gone: the broker queues
    QoS 1 events for it from now on."""
    async with aiomqtt.Client("127.0.0.1", b.port, identifier=client_id, clean_session=False) as c:
        await c.subscribe("eum/+/cashback", qos=1)
        await c.subscribe("eum/+/transactions", qos=1)


# ---------------------------------------------------------------------------- in process

async def test_relay_publishes_the_backlog_in_order_and_marks_it_only_after_puback(tmp_path, broker):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        client, term = await env.signed_on()
        pan = env.cards["namdong"]["pan"]
        assert (await client.request(term.purchase(pan, 20_000)))["39"] == "00"
        db = env.core.db_path
        backlog = outbox_payloads(db)
        assert len(backlog) == 4 and relayed_seq(db) == 0  # two charges, a purchase and its cashback
        listener = await Listener(broker, count_max=6).start()
        relay = Relay(RelayConfig(host="127.0.0.1", port=broker.port, **FAST), db, env.core.writer)
        relay.start()
        try:
            await eventually(lambda: len(listener.lines) == 4, what="the backlog")
            assert listener.lines == backlog  # byte for byte, in seq order
            await eventually(lambda: relayed_seq(db) == 4, what="the mark")
            # a new posting is relayed at once (the writer wakes the relay; no polling wait)
            assert (await client.request(term.purchase(pan, 10_000)))["39"] == "00"
            result = await listener.result()
            assert (result.printed, result.duplicates, result.complete) == (6, 0, True)
            assert listener.lines == outbox_payloads(db)
            await eventually(lambda: relayed_seq(db) == 6, what="the second mark")
        finally:
            await client.close()
            await relay.stop()
        assert relay.published == 6


async def test_authorizations_never_wait_for_a_broker_that_is_down_and_the_backlog_follows(tmp_path):
    b = Broker(tmp_path / "mosquitto", persistent=True).start()
    try:
        await register_session(b, "budget-office")
        b.stop()  # saved to disk; from here on the broker is down
        async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
            db = env.core.db_path
            relay = Relay(RelayConfig(host="127.0.0.1", port=b.port, **FAST), db, env.core.writer)
            relay.start()
            try:
                await provision(env)
                client, term = await env.signed_on()
                pan = env.cards["namdong"]["pan"]
                with structlog.testing.capture_logs() as logged:
                    answers = [await client.request(term.purchase(pan, 1_000 + i)) for i in range(20)]
                    # all 20 approved while the relay has never reached the broker: none waited on MQTT
                    assert (relay.connected, relay.published, relayed_seq(db)) == (False, 0, 0)
                    await client.close()
                    events = outbox_payloads(db)
                    assert len(events) == 2 + 20 * 2  # each purchase also credits cashback
                    await eventually(lambda: [e for e in logged if e["event"] == "relay_status"
                                              and e["backlog"] == len(events)],
                                     what="a relay_status line counting the whole backlog")
                assert [a["39"] for a in answers] == ["00"] * 20
                assert relay.reconnects >= 1 and relay.published == 0 and relayed_seq(db) == 0
                status = [e for e in logged if e["event"] == "relay_status"][-1]
                assert (status["connected"], status["backlog"], status["relayed_seq"]) == (False, len(events), 0)
                assert status["oldest_unrelayed_age_s"] > 0
                assert any(e["event"] == "relay_disconnected" for e in logged)
                b.start()  # the session comes back from disk; the relay reconnects and drains
                await eventually(lambda: relayed_seq(db) == len(events), what="the backlog relayed")
            finally:
                await relay.stop()
        listener = await Listener(b, client_id="budget-office", count_max=len(events)).start()
        result = await listener.result()
        assert (result.printed, result.duplicates) == (len(events), 0)
        assert listener.lines == events
    finally:
        b.stop()


# ---------------------------------------------------------------------------- as processes

CLOCK_START = "2019-07-20T12:00:00+09:00"
TERMINALS = (("T0000001", "NAMDONG01"), ("T0000002", "YEONSU01"))


class Shop:
    """Terminals that keep buying, refunding and reversing against a switch process over
    TCP, riding out a switch that dies (they reconnect and sign on again). Each terminal
    repeats: purchase ×3, refund of half the first, purchase, reversal of that purchase."""

    def __init__(self, port: int, pans: list[str]) -> None:
        self.port = port
        self.pans = pans
        self.dialect = load_dialect("default")
        self.answers: Counter[str] = Counter()   # "purchase 00", "refund 00", …
        self.approved_rrns: list[str] = []       # purchases and refunds answered 00
        self.lost = 0                            # sent, never answered (the switch died)
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task] = []

    def start(self) -> "Shop":
        self.tasks = [asyncio.ensure_future(self._terminal(tid, mid, n)) for n, (tid, mid) in enumerate(TERMINALS)]
        return self

    async def finish(self) -> None:
        self.stop.set()
        await settled(asyncio.gather(*self.tasks), what="the terminals to finish their last request")

    @property
    def done(self) -> int:
        return sum(self.answers.values())

    async def _connect(self, term: Terminal) -> TerminalClient:
        while True:
            try:
                client = await TerminalClient("127.0.0.1", self.port, self.dialect, response_timeout_ms=3000).connect()
                answer = await client.request(term.sign_on())
                if answer is not None and answer["39"] == "00":
                    return client
                await client.close()
            except (OSError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.1)

    async def _terminal(self, tid: str, mid: str, n: int) -> None:
        term = Terminal(tid, mid)
        client = await self._connect(term)
        step, recent = 0, {}
        while not self.stop.is_set():
            pan = self.pans[(step // 6 + n) % len(self.pans)]
            phase = step % 6
            if phase == 3:
                kind, original = "refund", recent.get(0)
                req = term.refund(original[0], original[1] // 2, original[2]) if original else None
            elif phase == 5:
                kind, original = "reversal", recent.get(4)
                req = term.reversal(original[3]) if original else None
            else:
                kind = "purchase"
                req = term.purchase(pan, 1_000 + (step * 1_379 + n * 501) % 19_000)
            step += 1
            if req is None:
                continue
            try:
                answer = await client.request(req)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                answer = None
            if answer is None:  # the switch died under us: what happened to this one is in the ledger
                self.lost += 1
                await client.close()
                client = await self._connect(term)
                continue
            self.answers[f"{kind} {answer['39']}"] += 1
            if answer["39"] == "00" and kind != "reversal":
                self.approved_rrns.append(answer["37"])
            if kind == "purchase" and answer["39"] == "00":
                recent[phase] = (req["2"], int(req["4"]), answer["37"], req)
            await asyncio.sleep(0.01)
        await client.close()


@pytest.fixture
def procs(tmp_path):
    """Starts `eum` processes; at the end each one still running is stopped by its PID."""
    started: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        out = (tmp_path / f"{name}.out").open("w")
        err = (tmp_path / f"{name}.err").open("w")
        proc = subprocess.Popen([*EUM, *args], cwd=tmp_path, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        out.close()
        err.close()
        proc.out_path, proc.err_path = tmp_path / f"{name}.out", tmp_path / f"{name}.err"  # type: ignore[attr-defined]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def populate(data: Path, cwd: Path) -> list[str]:
    """Two merchants (Namdong and Yeonsu, 250M) with a terminal each, four charged cards."""
    for mid, district in (("NAMDONG01", "namdong"), ("YEONSU01", "yeonsu")):
        admin_json(data, "merchant", "add", "--mid", mid, "--name", mid, "--district", district,
                   "--annual-sales", "250000000", cwd=cwd)
    for tid, mid in TERMINALS:
        admin_json(data, "terminal", "add", "--tid", tid, "--mid", mid, cwd=cwd)
    pans = []
    for program in ("namdong", "incheon", "namdong", "yeonsu"):
        pan = admin_json(data, "--clock-start", CLOCK_START, "card", "issue", "--program", program, cwd=cwd)["pan"]
        admin_json(data, "--clock-start", CLOCK_START, "card", "charge", "--pan", pan, "--amount", "1000000", cwd=cwd)
        pans.append(pan)
    return pans


def start_subscriber(procs, b: Broker, name: str, *extra: str) -> subprocess.Popen:
    proc = procs(name, "events", "subscribe", "--mqtt", b.url, "--client-id", name, "--timeout", "300", *extra)

    def subscribed() -> bool:
        assert proc.poll() is None, proc.err_path.read_text()
        return '"subscribed"' in proc.err_path.read_text()

    wait_until(subscribed, what=f"the {name} subscriber's \"subscribed\" log line")
    return proc


def start_switch_process(procs, name: str, data: Path, port: int, b: Broker) -> subprocess.Popen:
    proc = procs(name, "switch", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}", "--clock-start",
                 CLOCK_START, "--mqtt", b.url)
    wait_listening(port, proc)
    return proc


def lines(path: Path) -> list[str]:
    return [x for x in path.read_text().splitlines() if x]


async def wait_for_all(path: Path, db: Store, *, timeout_s: float = 60) -> None:
    """Until the subscriber has printed every event in the outbox."""
    def all_printed() -> bool:
        want = {json.loads(p)["event_id"] for p in outbox_payloads(db)}
        return want <= {json.loads(x)["event_id"] for x in lines(path)}

    await eventually(all_printed, what=f"every outbox event printed in {path.name}", timeout_s=timeout_s)


def stop(proc: subprocess.Popen) -> int:
    os.kill(proc.pid, signal.SIGTERM)
    return proc.wait(timeout=30)


def summary(proc: subprocess.Popen) -> dict:
    done = [json.loads(x) for x in lines(proc.err_path) if '"subscriber_done"' in x]
    assert len(done) == 1, proc.err_path.read_text()
    return done[0]


def assert_cashback_events_equal_the_ledger(events: list[dict], db: Store) -> None:
    """(c) count and sum of cashback events = the ledger's cashback postings, to the won,
    and by funder = the funders' cashback expense accounts."""
    cashback = [e for e in events if e["type"].startswith("cashback.")]
    count, total = query(db, "SELECT COUNT(*), COALESCE(SUM(cashback), 0) FROM postings WHERE cashback != 0")[0]
    assert (len(cashback), sum(e["cashback"] for e in cashback)) == (count, total)
    assert count > 0 and sorted(e["posting_id"] for e in cashback) == [
        pid for (pid,) in query(db, "SELECT id FROM postings WHERE cashback != 0 ORDER BY id")]
    by_funder: Counter[str] = Counter()
    for e in cashback:
        by_funder.update(e["by_funder"])
    expense = {acc.split(":", 1)[1]: -bal for acc, bal in account_balances(db).items()
               if acc.startswith("cashback_expense:")}
    assert dict(by_funder) == {f: v for f, v in expense.items() if v}


def assert_exactly_the_outbox(printed: list[str], db: Store) -> list[dict]:
    """Every committed event printed once, byte for byte, and nothing else; every
    transaction posting and every cashback posting has its event."""
    outbox = outbox_payloads(db)
    assert Counter(printed) == Counter(outbox)
    events = [json.loads(x) for x in printed]
    tx_postings = [pid for (pid,) in query(db, "SELECT id FROM postings WHERE kind IN "
                                               "('purchase', 'refund', 'reversal', 'charge') ORDER BY id")]
    assert sorted(e["posting_id"] for e in events if not e["type"].startswith("cashback.")) == tx_postings
    return events


async def test_broker_killed_and_restarted_mid_run_loses_no_event(tmp_path, procs, persistent_broker):
    b = persistent_broker
    data = tmp_path / "var"
    pans = populate(data, tmp_path)
    app = start_subscriber(procs, b, "member-app")
    subscribed_at = time.time()
    # the broker has saved the consumer's session (it saves every second or two), so the
    # restarted broker queues events for it even before it reconnects
    await eventually(lambda: b.saved_after(subscribed_at), what="the broker's save")
    port = free_port()
    switch = start_switch_process(procs, "switch", data, port, b)
    db = locate(data)  # the switch process's ledger: $EUM_STORE, which it inherits, or the data dir's file
    shop = Shop(port, pans).start()
    await eventually(lambda: relayed_seq(db) >= 30, what="events relayed before the kill")

    b.kill()  # mid-run: terminals keep buying, the outbox keeps filling
    before = shop.done
    await eventually(lambda: '"relay_disconnected"' in (data / "logs" / "switch.jsonl").read_text(),
                     what="the switch's relay_disconnected log line")
    await eventually(lambda: shop.done >= before + 30, what="approvals while the broker is down")
    assert relayed_seq(db) < len(outbox_payloads(db))  # a backlog the broker has not acknowledged
    b.start()
    backlog_end = len(outbox_payloads(db))
    await eventually(lambda: relayed_seq(db) >= backlog_end, what="the backlog relayed after the restart")
    await eventually(lambda: shop.done >= before + 60, what="traffic after the restart")
    await shop.finish()

    await wait_for_all(app.out_path, db)
    assert stop(switch) == 0
    assert stop(app) == 0
    assert shop.lost == 0 and set(shop.answers) == {"purchase 00", "refund 00", "reversal 00"}  # none waited on MQTT
    printed = lines(app.out_path)
    events = assert_exactly_the_outbox(printed, db)
    assert_cashback_events_equal_the_ledger(events, db)
    tx_rrns = {e["rrn"] for e in events if e["type"] in ("purchase", "refund")}
    assert set(shop.approved_rrns) <= tx_rrns
    assert summary(app)["printed"] == len(printed)
    log = [json.loads(x) for x in lines(data / "logs" / "switch.jsonl")]
    assert any(e["event"] == "relay_disconnected" for e in log)
    # what the broker acknowledged just before it died may not have been saved: sent again
    resend = [e for e in log if e["event"] == "relay_resend"]
    assert resend and resend[0]["rows"] >= 1 and resend[0]["window_s"] == 10.0
    last = [e for e in log if e["event"] == "relay_status"][-1]
    assert (last["backlog"], last["relayed_seq"], last["events"]) == (0, len(printed), len(printed))
    assert verify(db).ok


async def test_switch_killed_mid_run_loses_no_event_and_resends_with_the_same_ids(tmp_path, procs, broker):
    data = tmp_path / "var"
    pans = populate(data, tmp_path)
    app = start_subscriber(procs, broker, "member-app")
    audit = start_subscriber(procs, broker, "audit", "--no-dedup")
    port = free_port()
    first = start_switch_process(procs, "switch-1", data, port, broker)
    db = locate(data)  # the switch process's ledger: $EUM_STORE, which it inherits, or the data dir's file
    shop = Shop(port, pans).start()
    await eventually(lambda: relayed_seq(db) >= 30, what="events relayed before the kill")

    os.kill(first.pid, signal.SIGKILL)  # mid-run, with terminals waiting for answers
    first.wait(timeout=10)
    committed = subprocess.run([*EUM, "events", "tail", "--data-dir", str(data), "--last", "0"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()
    assert committed == outbox_payloads(db)
    # as a crash between PUBACK and the mark leaves it: the last 5 acknowledged rows unmarked
    position = relayed_seq(db)
    assert position >= 30
    conn = connect(db)
    try:
        assert conn.execute("UPDATE outbox_relay SET seq = ? WHERE name = 'mqtt'", (position - 5,)).rowcount == 1
    finally:
        conn.close()

    second = start_switch_process(procs, "switch-2", data, port, broker)
    before = shop.done
    await eventually(lambda: shop.done >= before + 40, what="traffic after the restart")
    await shop.finish()
    await wait_for_all(app.out_path, db)
    await wait_for_all(audit.out_path, db)
    assert stop(second) == 0
    assert stop(app) == 0 and stop(audit) == 0

    printed = lines(app.out_path)
    events = assert_exactly_the_outbox(printed, db)
    assert_cashback_events_equal_the_ledger(events, db)
    assert Counter(printed)[committed[0]] == 1 and set(committed) <= set(printed)  # same ids, same bytes
    assert set(shop.approved_rrns) <= {e["rrn"] for e in events if e["type"] in ("purchase", "refund")}
    deliveries = Counter(lines(audit.out_path))
    resent = committed[position - 5: position]
    assert all(deliveries[x] >= 2 for x in resent)  # re-sent after the restart, each with its event_id
    assert set(deliveries) == set(printed)          # a duplicate is the same event, byte for byte
    assert summary(app)["duplicates"] >= 5 and summary(app)["printed"] == len(printed)
    assert summary(audit)["printed"] == sum(deliveries.values())
    assert verify(db).ok
