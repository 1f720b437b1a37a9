"""Wiring: the one place concrete collaborators (store, writer, rules, clock) are built."""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from .clock import Clock
from .engine import Engine
from .hsm_client import HsmConfig, HsmPool
from .ledger import LedgerWriter, Unit, open_store
from .operations import Operations
from .policy import Rules, default_config_dir, load_rules
from .security import Security
from .state import HotState, StoreReader


class DataDirBusy(RuntimeError):
    """Another process (a running switch) owns the data dir."""


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
    reader: StoreReader
    state: HotState
    writer: LedgerWriter
    engine: Engine
    ops: Operations
    db_path: Path
    hsm: HsmPool | None = None


@contextlib.asynccontextmanager
async def open_core(data_dir: Path, *, clock: Clock, config_dir: Path | None = None,
                    batch_size_max: int = 512, commit_interval_ms_max: float = 2.0,
                    queue_size_max: int = 8192, hsm: HsmConfig | None = None) -> AsyncIterator[Core]:
    """Store, hot state, writer, engine and operations for a data dir (caller holds the lock)."""
    rules = load_rules(config_dir or default_config_dir())
    db_path = open_store(data_dir)
    reader = StoreReader(db_path)
    state = HotState(reader)
    writer = LedgerWriter(db_path, batch_size_max=batch_size_max, commit_interval_ms_max=commit_interval_ms_max,
                          queue_size_max=queue_size_max, on_failure=state.clear)
    writer.start()
    pool = security = None
    try:
        if hsm is not None:
            pool = HsmPool(hsm)
            await pool.start()
            security = await _switch_security(pool, reader, writer)
        engine = Engine(rules=rules, state=state, writer=writer, clock=clock, security=security)
        ops = Operations(rules=rules, state=state, writer=writer, clock=clock, security=security)
        yield Core(rules, reader, state, writer, engine, ops, db_path, pool)
    finally:
        if pool is not None:
            await pool.close()
        await writer.close()
        reader.close()


async def _switch_security(pool: HsmPool, reader: StoreReader, writer: LedgerWriter) -> Security:
    """The switch's ZPK and PVK (under the LMK) live in the ledger's meta table; the first
    start with an HSM has the HSM generate them (A0), so that first start needs an HSM
    answering (HsmUnavailable otherwise). Later starts only read them."""
    zpk, pvk = reader.meta("zpk"), reader.meta("pvk")
    if zpk is None or pvk is None:
        zpk, pvk = await Security.switch_keys(pool)
        await writer.submit(Unit(statements=[
            ("INSERT OR REPLACE INTO meta(key, value) VALUES ('zpk', ?)", (zpk,)),
            ("INSERT OR REPLACE INTO meta(key, value) VALUES ('pvk', ?)", (pvk,)),
        ]))
    return Security(pool, zpk=zpk, pvk=pvk)
