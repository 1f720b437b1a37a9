"""Several switch instances on one PostgreSQL ledger, by member ownership (docs/scale-out.md,
"Several instances by member ownership").

- `partition_of` (switch/domain.py): 256 virtual partitions by a stable hash of the member id.
- `Cluster`: this instance's leases. Every `heartbeat_s` it renews what it holds, counts the
  live instances, claims expired or free partitions up to its fair share and gives back its
  surplus (stops deciding them, lets the writer commit what was decided, then expires the
  lease). A lease is trusted locally only until `lease_ttl_s - margin_s` after its last
  renewal; the ledger's fence (switch/ledger/postgres.py, ledger_commit) is the last line.
- `IdBlocks` (switch/ledger/leases.py, with the lease table's statements): posting and card
  ids from PostgreSQL sequences, a block at a time, so ids (and the RRNs made from them) stay
  unique with several writers.
- `Router`: at the instance a terminal is connected to (the ingress), a request whose card's
  partition another instance holds is sent over that instance's link (an ISO 8583 listener of
  the same switch, whose connections are trusted to have checked the terminal's sign-on) and
  its answer relayed. A link that fails or an owner that is gone: the request is sent again,
  to the owner of record, until an answer or `forward_deadline_s`; the message key makes a
  second send safe (the owner replays what it committed, or decides it afresh if nothing was).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import structlog

from switch.domain import PARTITIONS, partition_of
from switch.ledger.leases import LeaseTable
from switch.wire.framing import FrameBuffer, frame

log = structlog.get_logger()

PAN_CACHE_MAX = 200_000  # PAN → partition at the ingress (a card's member never changes): ≈ 100 bytes each


@dataclass(frozen=True)
class ClusterConfig:
    instance_id: str
    link: str                     # HOST:PORT of this instance's link listener
    lease_ttl_s: float = 5.0      # a lease not renewed for this long is free to take
    heartbeat_s: float = 0.0      # renew this often (0: a fifth of the lease)
    margin_s: float = 0.0         # stop deciding this long before a lease not renewed would expire (0: a fifth)
    forward_timeout_s: float = 1.5  # one send over a link
    forward_deadline_s: float = 0.0  # sends of one request, across failovers, then 91 (0: 2 × lease + 2 s)

    def __post_init__(self) -> None:
        ttl = self.lease_ttl_s
        for name, value in (("heartbeat_s", ttl / 5), ("margin_s", ttl / 5), ("forward_deadline_s", 2 * ttl + 2)):
            if not getattr(self, name):
                object.__setattr__(self, name, value)
        if not (0 < self.heartbeat_s < ttl - self.margin_s and self.margin_s > 0):
            raise ValueError("--lease-ttl-s: need 0 < heartbeat < lease - margin (heartbeat and margin a fifth of it)")


class Cluster:
    def __init__(self, dsn: str, config: ClusterConfig, *,
                 on_gain: Callable[[list[int], list[int]], None] | None = None,
                 drain: Callable[[], Awaitable[None]] | None = None,
                 barrier: Callable[[], Awaitable[None]] | None = None) -> None:
        """drain: every queued unit committed (at stop). barrier: every unit queued so far
        committed (before a partition is given back; the writer's queue is FIFO)."""
        self.dsn = dsn
        self.config = config
        self.me = config.instance_id
        self.on_gain = on_gain
        self.drain = drain
        self.barrier = barrier
        self._giving: asyncio.Task[None] | None = None
        self._db = asyncio.Lock()  # one statement at a time on the connection (rounds, give-backs)
        self.held: dict[int, int] = {}          # partition → epoch of the lease held
        self.ever_held: set[int] = set()        # held at some time by this process (its memory may know them)
        self.draining: set[int] = set()         # held, no longer decided: being given back
        self.valid_until = 0.0                  # monotonic: the held leases are trusted until then
        self.routes: dict[int, tuple[str, str, int]] = {}  # partition → (owner, link, epoch)
        self.rounds = 0
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ what the switch asks

    def owns(self, partition: int) -> bool:
        return partition in self.held and partition not in self.draining and time.monotonic() < self.valid_until

    def leases(self) -> dict[int, int]:
        """For the fence of a group commit: what this instance holds now (nothing once stale)."""
        return dict(self.held) if time.monotonic() < self.valid_until else {}

    def route(self, partition: int) -> tuple[str, str, int] | None:
        return self.routes.get(partition)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        import asyncpg

        self._conn = LeaseTable(await asyncpg.connect(self.dsn))
        await self.round()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cluster-leases")

    async def stop(self) -> None:
        """Give every lease back at once (a graceful stop hands over without waiting for expiry)."""
        for task in (self._task, self._giving):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._conn is None:
            return
        with contextlib.suppress(Exception):
            self.draining = set(self.held)
            if self.drain is not None:
                await self.drain()
            await self._conn.leave(self.me)
            log.info("cluster_left", instance=self.me, released=len(self.held))
        self.held.clear()
        await self._conn.close()
        self._conn = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            try:
                await self.round()
            except Exception as exc:  # the database is unreachable: leases lapse by themselves (owns())
                log.warning("cluster_round_failed", instance=self.me, error=type(exc).__name__, detail=str(exc))

    async def round(self) -> None:
        """One heartbeat: renew, count the live, claim or start giving back, refresh the routes."""
        async with self._db:
            await self._round()

    async def _round(self) -> None:
        c, ttl, me = self._conn, self.config.lease_ttl_s, self.me
        started = time.monotonic()
        await c.heartbeat(me, self.config.link)
        kept = await c.renew(me, ttl, list(self.held))
        lost = sorted(set(self.held) - set(kept))
        if lost:
            log.warning("cluster_leases_lost", instance=me, partitions=len(lost))
        self.held = {p: e for p, e in kept.items() if self.held.get(p) == e}
        self.draining &= set(self.held)
        self.valid_until = started + ttl - self.config.margin_s
        live = await c.live(ttl)
        share = math.ceil(PARTITIONS / max(1, live))
        if len(self.held) < share:
            gained = await c.claim(me, ttl, share - len(self.held))
            if gained:
                parts = sorted(gained)
                again = [p for p in parts if p in self.ever_held]
                self.held.update(gained)
                self.ever_held.update(parts)
                log.info("cluster_leases_gained", instance=me, partitions=len(gained), held=len(self.held),
                         live=live, held_before=len(again))
                if self.on_gain is not None:  # what another instance decided for them is not in memory here
                    self.on_gain(parts, again)
        elif len(self.held) > share and not self.draining:
            # given back in the background: the rounds go on renewing (the drained ones too) meanwhile
            self.draining = set(sorted(self.held)[share:])
            self._giving = asyncio.get_running_loop().create_task(self._give_back(sorted(self.draining)),
                                                                  name="cluster-give-back")
        self.routes = await c.routes()
        self.rounds += 1

    async def _give_back(self, surplus: list[int]) -> None:
        """No new decision for `surplus` (owns() is false for it); once every unit queued before
        is committed under the lease, expire the leases for another instance to claim."""
        try:
            if self.barrier is not None:
                await self.barrier()
            async with self._db:
                await self._conn.expire(self.me, surplus)
            for p in surplus:
                self.held.pop(p, None)
            log.info("cluster_leases_given_back", instance=self.me, partitions=len(surplus), held=len(self.held))
        except Exception as exc:  # still held: decided here again; given back at a later round
            log.warning("cluster_give_back_failed", instance=self.me, error=type(exc).__name__, detail=str(exc))
        finally:
            self.draining = set()


# ---------------------------------------------------------------------------- forwarding


class LinkError(RuntimeError):
    """The link to an owner failed; whether the request reached it is unknown."""


class LinkClient:
    """One connection to another instance's link listener: framed ISO 8583 both ways, answers
    matched to requests by (DE41, DE11), in order for the same pair (a repeat)."""

    def __init__(self, address: str, dialect: Any) -> None:
        from switch.wire.codec import decode_fields

        self.address = address
        self.dialect = dialect
        self._decode = decode_fields
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: dict[tuple[str, str], deque[asyncio.Future[tuple[dict[str, str], bytes]]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def _ensure(self) -> None:
        if self._writer is not None and not self._writer.is_closing():
            return
        async with self._lock:
            if self._writer is not None and not self._writer.is_closing():
                return
            host, port = self.address.rsplit(":", 1)
            self._reader, self._writer = await asyncio.open_connection(host, int(port))
            self._task = asyncio.get_running_loop().create_task(self._read(self._reader), name=f"link-{self.address}")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        buf = FrameBuffer(self.dialect.framing)
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                buf.receive_data(data)
                while (fr := buf.next_frame()) is not None:
                    fields = self._decode(fr.payload, self.dialect)
                    queue = self._waiting.get((fields.get("41", ""), fields.get("11", "")))
                    if queue:
                        fut = queue.popleft()
                        if not fut.done():
                            fut.set_result((fields, fr.payload))
        except Exception as exc:  # a frame we cannot read from our own peer: drop the link
            log.warning("link_read_failed", link=self.address, error=type(exc).__name__)
        finally:
            self._fail_all()

    def _fail_all(self) -> None:
        if self._writer is not None:
            self._writer.close()
        for queue in self._waiting.values():
            for fut in queue:
                if not fut.done():
                    fut.set_exception(LinkError(f"link to {self.address} closed"))
        self._waiting.clear()

    async def request(self, terminal: str, stan: str, payload: bytes, tpdu: bytes, timeout_s: float
                      ) -> tuple[dict[str, str], bytes]:
        try:
            await self._ensure()
        except OSError as exc:
            raise LinkError(f"link to {self.address}: {exc}") from None
        fut: asyncio.Future[tuple[dict[str, str], bytes]] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault((terminal, stan), deque()).append(fut)
        assert self._writer is not None
        self._writer.write(frame(self.dialect.framing, payload, tpdu=tpdu))
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except asyncio.TimeoutError:
            queue = self._waiting.get((terminal, stan))
            if queue and fut in queue:
                queue.remove(fut)
            raise LinkError(f"link to {self.address}: no answer in {timeout_s:g} s") from None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._fail_all()


class Router:
    """Which instance decides a request, and the sending when it is another one."""

    def __init__(self, cluster: Cluster, reader: Any, dialect: Any, state: Any = None) -> None:
        """state: the hot state, whose cards (those this instance decides) answer without a read."""
        self.cluster = cluster
        self.reader = reader
        self.state = state
        self.dialect = dialect
        self.pans: OrderedDict[str, int] = OrderedDict()
        self.links: dict[str, LinkClient] = {}
        self.forwarded = 0
        self.resent = 0

    def partition_for(self, pan: str) -> int | None:
        """The partition of the card's member (None: no such card; decided here as a decline)."""
        p = self.pans.get(pan)
        if p is not None:
            self.pans.move_to_end(pan)
            return p
        card = self.state.card(pan) if self.state is not None else None
        member = card.member if card is not None else self.reader.member_of(pan)  # one column, not the card
        if member is None:
            return None
        p = partition_of(member)
        self.pans[pan] = p
        if len(self.pans) > PAN_CACHE_MAX:
            self.pans.popitem(last=False)
        return p

    async def forward(self, partition: int, terminal: str, stan: str, payload: bytes, tpdu: bytes
                      ) -> tuple[dict[str, str], bytes, str] | None:
        """The owner's answer (fields, payload, owner id), or None when this instance became the
        owner meanwhile (decide here). Raises LinkError after forward_deadline_s."""
        config = self.cluster.config
        deadline = time.monotonic() + config.forward_deadline_s
        attempt = 0
        while True:
            if self.cluster.owns(partition):
                return None
            route = self.cluster.route(partition)
            if route is not None and route[0] != self.cluster.me:
                owner, link, _ = route
                client = self.links.get(link)
                if client is None:
                    client = self.links[link] = LinkClient(link, self.dialect)
                try:
                    fields, answer = await client.request(terminal, stan, payload, tpdu, config.forward_timeout_s)
                    self.forwarded += 1
                    self.resent += attempt
                    return fields, answer, owner
                except LinkError as exc:
                    attempt += 1
                    log.warning("forward_failed", owner=owner, link=link, partition=partition, attempt=attempt,
                                error=str(exc))
            if time.monotonic() >= deadline:
                raise LinkError(f"partition {partition}: no owner answered in {config.forward_deadline_s:g} s")
            await asyncio.sleep(min(config.heartbeat_s / 2, 0.25))

    async def close(self) -> None:
        for client in self.links.values():
            await client.close()
