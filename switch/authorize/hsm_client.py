"""The switch's HSM client: a pool of pipelined connections to one or more payShield-style HSMs.

`connections_per_hsm` connections to each HSM, used in turn, one per turn of the event loop (the
commands of one turn leave in one write, unless that connection's in-flight slots are taken);
each carries many commands at once; the 4-character message header is the correlation id (the
HSM returns it unchanged). Every call has a timeout. A background task health-checks each HSM
with NC and reconnects with backoff; calls go to the first healthy HSM in the configured order
and fail over to the next on a timeout or a broken connection. With no HSM answering, `call`
raises HsmUnavailable quickly, and the engine declines (91): never an approval without the
HSM's word. `send` begins a call in the caller's turn without awaiting it (its frame joins
that turn's write) and `reply` awaits its answer, with the same failover: the engine checks a
request's MAC that way while it decides the request.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import structlog

from switch.wire.payshield import FrameReader, ProtocolError, frame

from switch.wire.transport import parse_hostport
from switch.wire.transport import Deadlines, WriteBatch
from switch.ops.metrics import Buckets

log = structlog.get_logger()


PIN_VERIFY_METHODS = ("gq", "g0-ec")


class HsmUnavailable(RuntimeError):
    """No HSM answered in time; the message is declined and nothing is posted."""


@dataclass(frozen=True, slots=True)
class HsmReply:
    code: str    # response code, e.g. "ND"
    error: str   # "00" success, "01" verification failure, ...
    body: bytes  # fields after the error code (trailer removed)


@dataclass(frozen=True, slots=True)
class HsmConfig:
    endpoints: tuple[tuple[str, int], ...]
    header_length: int = 4
    call_timeout_ms: float = 300.0
    connect_timeout_ms: float = 500.0
    health_interval_s: float = 2.0
    connections_per_hsm: int = 2      # pipelined connections to each HSM, one per loop turn in turn
    in_flight_max: int = 256          # per connection; callers wait beyond it
    reconnect_backoff_s_max: float = 5.0
    # How a TDES-DUKPT PIN is verified (docs/hsm.md, "PIN verification"): "gq", one command
    # with the request MAC (GQ mode 1); "g0-ec", the MAC (GW), then the block translated to
    # the ZPK (G0) and verified there (EC), for an HSM without GQ enabled or licensed.
    pin_verify: str = "gq"

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError("hsm endpoints: at least one HOST:PORT")
        if self.connections_per_hsm < 1:
            raise ValueError("hsm connections_per_hsm must be ≥ 1")
        if self.pin_verify not in PIN_VERIFY_METHODS:
            raise ValueError(f"hsm pin_verify must be one of {', '.join(PIN_VERIFY_METHODS)}")
        if self.header_length < 4:
            raise ValueError("hsm header_length must be ≥ 4 (it carries the correlation id)")


class _Slots:
    """A connection's in-flight commands: at most `size` at once; a call beyond them waits,
    first come first served. Unlike asyncio.Semaphore a slot can also be taken without
    awaiting (`take_now`), for a command queued in its caller's turn (`HsmPool.send`)."""

    __slots__ = ("free", "_waiters")

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def locked(self) -> bool:
        return self.free <= 0

    def take_now(self) -> bool:
        if self.free > 0:  # callers wait only while no slot is free
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        if self.take_now():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed a slot, then cancelled: pass it on
                self.give()
            elif fut in self._waiters:
                self._waiters.remove(fut)
            raise

    def give(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():  # the slot passes to the first caller still waiting
                fut.set_result(None)
                return
        self.free += 1


class _Attempt(NamedTuple):
    """A command queued on a connection: its header and the future of its reply."""

    header: bytes
    fut: asyncio.Future[HsmReply]


class _Connection(asyncio.Protocol):
    """One TCP connection; responses matched to calls by header. The connection is its own
    protocol: each read is split into frames and each reply resolves its call's future in
    `data_received`, in the loop's callback (no reader task to wake, no stream buffer to copy
    through: docs/performance.md, "The HSM client's connection as a protocol")."""

    def __init__(self, host: str, port: int, config: HsmConfig) -> None:
        self.host, self.port, self.config = host, port, config
        self.transport: asyncio.Transport | None = None
        self.pending: dict[bytes, asyncio.Future[HsmReply]] = {}
        self.ids = itertools.count()
        self._header_modulus = 10 ** config.header_length  # headers cycle through n digits
        self.slots = _Slots(config.in_flight_max)
        self.deadlines = Deadlines(_timed_out)
        self.frames = FrameReader()
        self.out: WriteBatch | None = None  # commands of one loop iteration leave in one write

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.create_connection(lambda: self, self.host, self.port),
                               self.config.connect_timeout_ms / 1000)
        self.out = WriteBatch(self.transport.write, lambda: self.open)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def _next_header(self) -> bytes:
        n = self.config.header_length
        modulus = self._header_modulus
        while True:  # zfill, not a nested format spec: docs/performance.md, "The HSM client's formatting (kept)"
            header = str(next(self.ids) % modulus).zfill(n).encode()
            if header not in self.pending:
                return header

    async def call(self, code: str, body: bytes, timeout_s: float) -> HsmReply:
        await self.slots.take()
        if not self.open:
            self.slots.give()
            raise ConnectionError("hsm connection closed")
        return await self.reply(self._queue(code, body, timeout_s))

    def send_now(self, code: str, body: bytes, timeout_s: float) -> _Attempt | None:
        """The command queued in this turn's write when the connection is open and has a free
        slot (its reply then comes from `reply`), else None."""
        if not self.open or not self.slots.take_now():
            return None
        return self._queue(code, body, timeout_s)

    def _queue(self, code: str, body: bytes, timeout_s: float) -> _Attempt:
        """With a slot taken: the frame queued, its future made and its deadline kept."""
        header = self._next_header()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[HsmReply] = loop.create_future()
        self.pending[header] = fut
        self.deadlines.add(loop, fut, timeout_s)
        self.out.add(frame(header + code.encode() + body))
        return _Attempt(header, fut)

    async def reply(self, attempt: _Attempt) -> HsmReply:
        """The reply to a queued command; its slot is given back whatever happens."""
        try:
            return await attempt.fut
        finally:
            self.pending.pop(attempt.header, None)
            self.slots.give()

    def data_received(self, data: bytes) -> None:
        frames = self.frames
        hl = self.config.header_length
        pending = self.pending
        try:
            frames.receive_data(data)
            while (payload := frames.next_frame()) is not None:
                fut = pending.get(payload[:hl])
                if fut is None or fut.done():
                    continue  # a late answer to a call that timed out
                rest = payload[hl:]
                body = rest[4:].split(b"\x19", 1)[0]
                fut.set_result(HsmReply(rest[:2].decode("ascii", "replace"), rest[2:4].decode("ascii", "replace"),
                                        body))
        except ProtocolError:  # a stream that cannot be framed: nothing more on it can be trusted
            self.close()

    def eof_received(self) -> bool:
        self.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("hsm connection lost"))
        self.pending.clear()
        self.deadlines.close()


def _timed_out(fut: asyncio.Future[HsmReply]) -> None:
    fut.set_exception(asyncio.TimeoutError())


class Sent(NamedTuple):
    """A call begun by `HsmPool.send`: the endpoint it was queued at (its index; past the
    last: none was usable) and, when a slot was free there, the queued attempt."""

    code: str
    body: bytes
    index: int
    conn: _Connection | None
    attempt: _Attempt | None
    started: int  # perf_counter_ns when queued


@dataclass
class _Endpoint:
    host: str
    port: int
    healthy: bool = False
    conns: list[_Connection] = field(default_factory=list)
    turn: int = 0
    last: _Connection | None = None  # the connection next_conn chose last
    failures: int = 0
    last_check: float = 0.0
    lmk_check: str = ""
    calls: int = 0
    errors: int = 0
    timeouts: int = 0  # of the errors
    # for the metrics (switch/ops/metrics.py): calls answered by command, their latency (µs)
    commands: dict[str, int] = field(default_factory=dict)
    latency: Buckets = field(default_factory=Buckets)
    reconnect_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def open_conns(self) -> list[_Connection]:
        return [c for c in self.conns if c.open]

    def next_conn(self) -> _Connection | None:
        """The endpoint's open connections in turn, one per turn of the event loop: a call
        joins the connection whose commands of this turn still wait to leave (one write, one
        wake-up of the HSM), unless its in-flight slots are taken; the next turn's calls go
        to the next connection, so pipelining is spread over all of them."""
        last = self.last
        if last is not None and last.open and last.out is not None and last.out.pending and not last.slots.locked():
            return last
        live = self.open_conns
        if not live:
            return None
        self.turn += 1
        self.last = live[self.turn % len(live)]
        return self.last

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.conns = []
        self.last = None


class HsmPool:
    def __init__(self, config: HsmConfig) -> None:
        self.config = config
        self.endpoints = [_Endpoint(h, p) for h, p in config.endpoints]
        self._health_task: asyncio.Task[None] | None = None
        self.unavailable = 0  # calls no HSM answered (HsmUnavailable)

    async def start(self) -> None:
        await asyncio.gather(*(self._check(ep) for ep in self.endpoints))
        self._health_task = asyncio.get_running_loop().create_task(self._health_loop())

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            try:
                await self._health_task
            except asyncio.CancelledError:
                pass
        for ep in self.endpoints:
            ep.close()

    @property
    def healthy(self) -> list[str]:
        return [ep.name for ep in self.endpoints if self._usable(ep)]

    @staticmethod
    def _usable(ep: _Endpoint) -> bool:
        return ep.healthy and bool(ep.open_conns)

    async def call(self, code: str, body: bytes) -> HsmReply:
        """Send one command to the first healthy HSM; fail over on timeout or broken link."""
        return await self.reply(self.send(code, body))

    def send(self, code: str, body: bytes) -> Sent:
        """A call whose command is queued now, in the caller's turn of the loop, so that it
        leaves in that turn's write (unless the first usable HSM's connection has no free slot:
        then it is sent when awaited); `await reply(sent)` gives its answer, with `call`'s
        failover. The engine sends a request's MAC check this way before it decides the request
        and has its response MAC'd (switch/authorize/engine.py, `_decided_while_checked`)."""
        timeout_s = self.config.call_timeout_ms / 1000
        for index, ep in enumerate(self.endpoints):
            # usable (`_usable`) and its connection in one step: next_conn is None when none is open
            conn = ep.next_conn() if ep.healthy else None
            if conn is None:
                if ep.healthy:
                    self._mark_down(ep, "connection closed")
                continue
            return Sent(code, body, index, conn, conn.send_now(code, body, timeout_s), time.perf_counter_ns())
        return Sent(code, body, len(self.endpoints), None, None, 0)

    async def reply(self, sent: Sent) -> HsmReply:
        """The answer to a `send`: from the HSM it was queued at, else (a timeout, a broken link,
        no free slot then) from the next healthy HSM in order, as `call`."""
        code, body = sent.code, sent.body
        timeout_s = self.config.call_timeout_ms / 1000
        tried: list[_Endpoint] = []  # named only in the error (`name` formats host:port)
        for index in range(sent.index, len(self.endpoints)):
            ep = self.endpoints[index]
            first = sent.attempt if index == sent.index else None
            if first is None and not self._usable(ep):
                if ep.healthy:
                    self._mark_down(ep, "connection closed")
                continue
            tried.append(ep)
            started = sent.started if first is not None else time.perf_counter_ns()
            try:
                if first is not None:
                    reply = await sent.conn.reply(first)
                else:
                    reply = await ep.next_conn().call(code, body, timeout_s)
                ep.calls += 1
                ep.commands[code] = ep.commands.get(code, 0) + 1
                ep.latency.observe((time.perf_counter_ns() - started) // 1000)
                return reply
            except asyncio.TimeoutError:
                # slow, not necessarily gone: send new calls elsewhere, but let the calls in
                # flight on its connections finish; the health check decides when it is back
                ep.errors += 1
                ep.timeouts += 1
                self._mark_down(ep, "timeout", close=False)
            except (ConnectionError, OSError) as exc:
                ep.errors += 1
                self._mark_down(ep, type(exc).__name__)
        self.unavailable += 1
        raise HsmUnavailable(f"no HSM answered {code} (tried: {', '.join(ep.name for ep in tried) or 'none healthy'})")

    def _mark_down(self, ep: _Endpoint, reason: str, *, close: bool = True) -> None:
        if ep.healthy:
            log.warning("hsm_down", hsm=ep.name, reason=reason)
        ep.healthy = False
        if close:
            ep.close()

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            await asyncio.gather(*(self._check(ep) for ep in self.endpoints), return_exceptions=True)

    async def _check(self, ep: _Endpoint) -> None:
        """NC diagnostics on each of the endpoint's connections, (re)connecting the missing
        ones, with backoff after failures."""
        async with ep.lock:
            now = time.monotonic()
            ep.conns = ep.open_conns
            if len(ep.conns) < self.config.connections_per_hsm:
                if now < ep.reconnect_at:
                    return
                try:
                    while len(ep.conns) < self.config.connections_per_hsm:
                        conn = _Connection(ep.host, ep.port, self.config)
                        await conn.connect()
                        ep.conns.append(conn)
                except (asyncio.TimeoutError, OSError) as exc:
                    ep.failures += 1
                    backoff = min(self.config.reconnect_backoff_s_max, 0.1 * 2 ** min(ep.failures, 10))
                    ep.reconnect_at = now + backoff
                    self._mark_down(ep, type(exc).__name__)
                    return
            try:
                replies = await asyncio.gather(*(c.call("NC", b"", self.config.call_timeout_ms / 1000)
                                                 for c in ep.conns))
            except (asyncio.TimeoutError, ConnectionError, OSError) as exc:
                ep.failures += 1
                self._mark_down(ep, type(exc).__name__)
                return
            ep.last_check = now
            reply = replies[0]
            if any(r.error != "00" for r in replies):
                self._mark_down(ep, f"NC error {reply.error}")
                return
            if not ep.healthy:
                ep.lmk_check = reply.body[:16].decode("ascii", "replace")
                log.info("hsm_up", hsm=ep.name, lmk_check=ep.lmk_check)
            ep.healthy = True
            ep.failures = 0


def parse_endpoints(text: str) -> tuple[tuple[str, int], ...]:
    """'HOST:PORT[,HOST:PORT…]', in failover order; each part must name its port."""
    parts = [p.strip() for p in text.split(",")]
    if any(":" not in p for p in parts):
        raise ValueError(f"--hsm: {text!r} is not HOST:PORT[,HOST:PORT…]")
    return tuple(parse_hostport(p) for p in parts)
