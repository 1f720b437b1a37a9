"""Wiring: the one place concrete collaborators (store, writer, rules, clock) are built."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator

import structlog

from switch.clock import Clock
from switch.authorize.engine import Engine, MemberLocks
from switch.authorize.hsm_client import HsmConfig, HsmPool
from switch.ledger.records import Commit, MetaSet
from switch.ledger.sqlite import SqliteReader
from switch.ledger.store import PgDsn, Store, open_store
from switch.ops.config import SwitchConfig
from switch.wire.transport import freeze_heap
from switch.ledger.leases import IdBlocks, SignOns
from switch.ops.cluster import Cluster, ClusterConfig
from switch.ledger.writer import LedgerWriter
from switch.ops.operations import Operations
from switch.ledger.outbox import OutboxReader, OutboxStatus
from switch.rules.policy import Rules, default_config_dir, load_rules
from switch.authorize.security import Security
from switch.authorize.state import HotState

if TYPE_CHECKING:  # aiomqtt is imported only by a switch that relays
    from switch.ledger.relay import Relay, RelayConfig

log = structlog.get_logger()


class DataDirBusy(RuntimeError):
    """Another process (a running switch) owns the data dir."""


def settle_heap() -> None:
    """Before `eum switch` listens: `freeze_heap` (switch/wire/transport.py), logged."""
    log.info("heap_settled", **freeze_heap())


def lock_data_dir(data_dir: Path, *, wait: bool) -> int:
    """Take the data dir's exclusive lock; the holder is the only writer of its ledger."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "switch.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        raise DataDirBusy(str(data_dir)) from None
    return fd


def unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@dataclass
class Core:
    rules: Rules
    reader: SqliteReader
    state: HotState
    writer: LedgerWriter
    engine: Engine
    ops: Operations
    db_path: Store
    hsm: HsmPool | None = None
    relay: Relay | None = None
    cluster: Cluster | None = None


@contextlib.asynccontextmanager
async def open_core(data_dir: Path, *, clock: Clock, config_dir: Path | None = None,
                    batch_size_max: int = 512, commit_interval_ms_max: float = 2.0,
                    commit_linger_ms: float = 0.0,
                    queue_size_max: int = 8192, hsm: HsmConfig | None = None,
                    relay: RelayConfig | None = None, store: str | None = None,
                    cluster: ClusterConfig | None = None,
                    warm_s: float | None = SwitchConfig().warm_s) -> AsyncIterator[Core]:
    """Store, hot state, writer, engine and operations for a data dir (caller holds the lock).
    The ledger is the data dir's SQLite file, or the PostgreSQL database `store` (or
    $EUM_STORE) names. With `relay`, the outbox is published to that MQTT broker while the core
    is open. warm_s: the ledger's one writer loads the current day's and month's counters and
    then cards, for at most this many seconds, before it serves (HotState.warm), so no request
    waits on a read of its card; None: every card, whatever it takes; 0: none (each card is read
    on its first use). An instance of a cluster never warms (other instances change the cards
    it does not hold)."""
    rules = load_rules(config_dir or default_config_dir())
    db_path = open_store(data_dir, store)
    members: Cluster | None = None
    if cluster is not None:
        if not isinstance(db_path, PgDsn):
            raise ValueError("--cluster: several instances share a PostgreSQL ledger: pass --store postgresql://…")
        members = Cluster(db_path, cluster)
    reader = SqliteReader(db_path)
    writer = LedgerWriter(db_path, batch_size_max=batch_size_max, commit_interval_ms_max=commit_interval_ms_max,
                          commit_linger_ms=commit_linger_ms,
                          queue_size_max=queue_size_max, owner=cluster.instance_id if cluster else "",
                          leases=members.leases if members is not None else None)
    try:
        await writer.open()
    except BaseException:
        reader.close()
        await writer.close()
        raise
    state = HotState(reader, ledger_id=writer.ledger_id)
    if (warm_s is None or warm_s > 0) and members is None:  # the one writer: a new card would otherwise cost a read
        started = time.perf_counter()
        log.info("hot_state_warmed", cards=state.warm(clock.now(), budget_s=warm_s),
                 seconds=round(time.perf_counter() - started, 2))
    writer.on_failure = state.clear
    writer.start()
    pool = security = relay_task = signons = None
    try:
        if members is not None:
            ids = IdBlocks(db_path)
            ids.align()
            state.use_ids(ids)
            # gained partitions: their messages and early reversals, committed by other instances, are
            # learnt from the ledger; a partition held before (its cards may sit in memory, stale) drops
            # the whole hot state, as a failed commit does (decisions in flight are answered 96)
            def gained(partitions: list[int], again: list[int]) -> None:
                writer.forget_pseq(partitions)
                state.clear() if again else state.refresh_filters()

            members.on_gain = gained
            members.drain = writer.drain
            members.barrier = lambda: writer.submit(Commit())  # FIFO: after every unit queued before it
            await members.start()
        if relay is not None and members is not None:  # the partitions this instance holds
            from switch.ledger.relay import PartitionRelay

            held = members
            relay_task = PartitionRelay(relay, db_path, writer, lambda: [p for p in held.held if held.owns(p)],
                                        cluster.instance_id)
            relay_task.start()
        elif relay is not None:
            from switch.ledger.relay import Relay

            relay_task = Relay(relay, db_path, writer)
            relay_task.start()
        else:  # the outbox fills all the same; say so once
            log.info("outbox_not_relayed", **_outbox_status(db_path).as_dict())
        if hsm is not None:
            pool = HsmPool(hsm)
            await pool.start()
            security = await _switch_security(pool, reader, writer)
        locks = MemberLocks()  # one decision per member at a time, authorizations and operations alike
        engine = Engine(rules=rules, state=state, writer=writer, clock=clock, security=security, locks=locks)
        if members is not None:  # a terminal signed on at one instance is signed on at every one
            engine.signons = signons = SignOns(db_path, cluster.instance_id)
        ops = Operations(rules=rules, state=state, writer=writer, clock=clock, security=security, locks=locks)
        ops.cluster = members
        yield Core(rules, reader, state, writer, engine, ops, db_path, pool, relay_task, members)
    finally:
        if relay_task is not None:  # before the writer closes: the relay marks through it
            await relay_task.stop()
        if members is not None:  # gives its leases back once what it decided is committed
            await members.stop()
        if signons is not None:
            await signons.close()
        if pool is not None:
            await pool.close()
        await writer.close()
        reader.close()


def _outbox_status(db_path: Store) -> OutboxStatus:
    reader = OutboxReader(db_path)
    try:
        return reader.status()
    finally:
        reader.close()


async def _switch_security(pool: HsmPool, reader: SqliteReader, writer: LedgerWriter) -> Security:
    """The switch's ZPK and PVK (under the LMK) live in the ledger's meta table; the first
    start with an HSM has the HSM generate them (A0), so that first start needs an HSM
    answering (HsmUnavailable otherwise). Later starts only read them."""
    zpk, pvk = reader.meta("zpk"), reader.meta("pvk")
    if zpk is None or pvk is None:
        zpk, pvk = await Security.switch_keys(pool)
        await writer.submit(Commit(changes=(MetaSet("zpk", zpk), MetaSet("pvk", pvk))))
    return Security(pool, zpk=zpk, pvk=pvk, pin_verify=pool.config.pin_verify)
