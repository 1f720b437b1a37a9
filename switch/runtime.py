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
from .ledger import LedgerWriter, open_store
from .operations import Operations
from .policy import Rules, default_config_dir, load_rules
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


@contextlib.asynccontextmanager
async def open_core(data_dir: Path, *, clock: Clock, config_dir: Path | None = None,
                    batch_size_max: int = 512, commit_interval_ms_max: float = 2.0,
                    queue_size_max: int = 8192) -> AsyncIterator[Core]:
    """Store, hot state, writer, engine and operations for a data dir (caller holds the lock)."""
    rules = load_rules(config_dir or default_config_dir())
    db_path = open_store(data_dir)
    reader = StoreReader(db_path)
    state = HotState(reader)
    writer = LedgerWriter(db_path, batch_size_max=batch_size_max, commit_interval_ms_max=commit_interval_ms_max,
                          queue_size_max=queue_size_max, on_failure=state.clear)
    writer.start()
    engine = Engine(rules=rules, state=state, writer=writer, clock=clock)
    ops = Operations(rules=rules, state=state, writer=writer, clock=clock)
    try:
        yield Core(rules, reader, state, writer, engine, ops, db_path)
    finally:
        await writer.close()
        reader.close()
