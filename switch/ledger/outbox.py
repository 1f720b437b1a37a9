"""The outbox, read side: rows in `seq` order, the relay's position, the backlog.

Readers use their own read-only connection (WAL: a reader never blocks the ledger writer
and the writer never blocks a reader), so `eum events tail` works while a switch runs.
Every read is one short autocommit statement: no read transaction is held open, which
would keep the WAL from being checkpointed.

`seq` is the table's rowid, no row is ever deleted and only the single ledger writer inserts,
one transaction at a time, so the committed rows are always exactly seq 1..max: the backlog
is max − position.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from switch.ledger.events import STREAMS, topic
from switch.ledger.store import PgDsn, Store, connect

RELAY_NAME = "mqtt"  # the relay's row in outbox_relay


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    topic: str
    type: str
    payload: str
    committed_at: float  # unix seconds, when the ledger commit that wrote it began


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    events: int          # rows in the outbox (= its last seq)
    relayed_seq: int     # every row up to here has been acknowledged by the broker (PUBACK)
    backlog: int         # rows not yet acknowledged
    oldest_unrelayed_age_s: float  # how long the oldest of those has waited (0 with no backlog)

    def as_dict(self) -> dict[str, float | int]:
        return {"events": self.events, "relayed_seq": self.relayed_seq, "backlog": self.backlog,
                "oldest_unrelayed_age_s": self.oldest_unrelayed_age_s}


class OutboxReader:
    def __init__(self, db_path: Store) -> None:
        self.pg = isinstance(db_path, PgDsn)  # PostgreSQL: its migrations always made the outbox
        self.conn: sqlite3.Connection = connect(db_path, readonly=True)

    def close(self) -> None:
        self.conn.close()

    def has_outbox(self) -> bool:
        if self.pg:
            return True
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='outbox'").fetchone() is not None

    def rows_after(self, seq: int, *, limit: int, streams: tuple[str, ...] = (), program: str | None = None,
                   ) -> list[OutboxRow]:
        """Up to `limit` rows with seq > `seq`, in seq order, optionally only some topics."""
        where, args = _topic_filter(streams, program)
        sql = (f"SELECT seq, topic, type, payload, committed_at FROM outbox WHERE seq > ?{where} "
               "ORDER BY seq LIMIT ?")
        return [OutboxRow(*r) for r in self.conn.execute(sql, (seq, *args, limit))]

    def start_of_last(self, n: int, *, streams: tuple[str, ...] = (), program: str | None = None) -> int:
        """The seq to read after so as to get the last `n` matching rows."""
        where, args = _topic_filter(streams, program)
        row = self.conn.execute(f"SELECT seq FROM outbox WHERE TRUE{where} ORDER BY seq DESC LIMIT 1 OFFSET ?",
                                (*args, n - 1)).fetchone()
        return row[0] - 1 if row else 0

    def last_seq(self) -> int:
        return self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]

    def position(self, name: str = RELAY_NAME) -> int:
        row = self.conn.execute("SELECT seq FROM outbox_relay WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def status(self, *, relayed_seq: int | None = None, now: float | None = None) -> OutboxStatus:
        """`relayed_seq`: the relay's own (in-memory) position, which may be ahead of the
        durable one by the batch whose mark is being committed."""
        last = self.last_seq()
        relayed = self.position() if relayed_seq is None else relayed_seq
        if self._partitioned():  # several instances' relays: each partition from its own mark
            backlog, oldest = self.conn.execute(
                f"SELECT COUNT(*), MIN(o.committed_at) FROM outbox o LEFT JOIN outbox_relay r "
                f"ON r.name = '{RELAY_NAME}:' || o.partition WHERE o.pseq > COALESCE(r.seq, 0)").fetchone()
        else:
            backlog = max(0, last - relayed)
            row = self.conn.execute("SELECT committed_at FROM outbox WHERE seq > ? ORDER BY seq LIMIT 1",
                                    (relayed,)).fetchone()
            oldest = row[0] if row else None
        age = max(0.0, (now if now is not None else time.time()) - oldest) if oldest is not None else 0.0
        return OutboxStatus(events=last, relayed_seq=relayed, backlog=backlog, oldest_unrelayed_age_s=round(age, 3))

    def _partitioned(self) -> bool:
        """The outbox is relayed by partition (a cluster's relays mark `mqtt:<partition>`:
        docs/scale-out.md, "Outbox with several instances")."""
        return self.conn.execute(f"SELECT 1 FROM outbox_relay WHERE name LIKE '{RELAY_NAME}:%' LIMIT 1"
                                 ).fetchone() is not None


def _topic_filter(streams: tuple[str, ...], program: str | None) -> tuple[str, list[str]]:
    """Topics are exactly eum/<program>/<stream>, and the streams are known."""
    if program is not None:
        topics = [topic(program, s) for s in streams or STREAMS]
        return f" AND topic IN ({','.join('?' * len(topics))})", topics
    if streams:
        return " AND (" + " OR ".join("topic LIKE ?" for _ in streams) + ")", [topic("%", s) for s in streams]
    return "", []
