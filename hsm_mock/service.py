"""The software HSM over TCP: thin asyncio glue around the sans-I/O core.

bytes → FrameReader (2-byte length frames) → Hsm.parse → Command → Hsm.handle → response →
frame → bytes, inside each connection's asyncio Protocol (`_Connection.data_received`: no task
and no timeout object per read; one idle sweep per server). A command with nothing to wait for
is answered at once; one that waits (latency, capacity) runs as its own task, so many commands
are in flight on one connection (pipelining: a slow command does not hold up a fast one,
responses may come back in any order, and the client matches them by the message header it
chose). Reads pause when `in_flight_max` commands of a connection are in progress or when the
peer stops reading; a peer that half-closes gets its answers, then the close.

Operations, all from the frozen HsmConfig:
- latency: `latency_ms` (or `command_latency_ms[code]`) before each answer;
- capacity: a token bucket of `cps_max` commands per second (bucket `cps_burst`); a command
  without a token waits for one; when `queue_size_max` commands already wait, or the wait
  would exceed `queue_timeout_ms`, it is answered at once with `overload_error_code` (67);
- faults, drawn per command in arrival order from one seeded RNG (`FaultPlan`): hang (never
  answered), drop (the connection is closed, in-flight answers are lost), error (answered
  with `fault_error_code` instead of being run);
- bad frames: a length of 0 or above `frame_size_max`, or a frame shorter than header +
  command code, closes the connection (nothing can be answered); anything parseable is
  answered (field errors → 15);
- audit: one line per command (audit.py).

`FaultPlan` and `TokenBucket` are sans-I/O too (time is a parameter), so tests predict their
decisions exactly.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import random
import signal
from typing import Any

import structlog

from hsm_mock import compiled
from hsm_mock.audit import AuditLog
from hsm_mock.commands import Hsm
from hsm_mock.config import HsmConfig
from hsm_mock.crypto import DES_COMPILED
from hsm_mock.lmk import TEST_LMK, VariantLmk
from switch.compiled import summary
from switch.ops.metrics import OTHER, LoopHeartbeat, MetricsHttp, count_into, counter, gauge, registry_of
from switch.wire.payshield import Command, FrameReader, ProtocolError, build_response, frame, response_code
from switch.wire.transport import WriteBatch, freeze_heap

log = structlog.get_logger("hsm")

INTERNAL_ERROR = "13"  # our bug (logged with its traceback): "report to supervisor"


# ----------------------------------------------------------------------------- sans-I/O parts


class Fault(enum.Enum):
    NONE = "none"
    HANG = "hang"
    DROP = "drop"
    ERROR = "error"


class FaultPlan:
    """One uniform draw per command u: u < hang → HANG; < hang+drop → DROP;
    < hang+drop+error → ERROR; else NONE. Same seed and same command order, same faults."""

    def __init__(self, *, hang: float = 0.0, drop: float = 0.0, error: float = 0.0, seed: int | None = None) -> None:
        self._limits = (hang, hang + drop, hang + drop + error)
        self._rng = random.Random(seed)
        self.active = self._limits[2] > 0

    @classmethod
    def from_config(cls, config: HsmConfig) -> FaultPlan:
        return cls(hang=config.fault_hang_share, drop=config.fault_drop_share, error=config.fault_error_share,
                   seed=config.fault_seed)  # fmt: skip

    def decide(self) -> Fault:
        if not self.active:
            return Fault.NONE
        u = self._rng.random()
        if u < self._limits[0]:
            return Fault.HANG
        if u < self._limits[1]:
            return Fault.DROP
        if u < self._limits[2]:
            return Fault.ERROR
        return Fault.NONE


class TokenBucket:
    """Calls-per-second cap: `size` tokens, refilled at `rate` per second. `reserve(now)`
    takes a token and returns how long the caller must wait for it (tokens may go negative:
    those are reservations in the queue)."""

    def __init__(self, rate: float, size: int, *, now: float) -> None:
        assert rate > 0 and size >= 1
        self.rate = rate
        self.size = size
        self.tokens = float(size)
        self.updated = now

    def reserve(self, now: float) -> float:
        self.tokens = min(float(self.size), self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def refund(self) -> None:
        self.tokens += 1


# ----------------------------------------------------------------------------- connections


class _Connection(asyncio.Protocol):
    """One host connection, as an asyncio Protocol: bytes arrive in `data_received` and are
    framed and dispatched there, with no task wake-up and no timeout object per read (the
    server's idle sweep closes a silent connection). Reads pause while `in_flight_max`
    commands are in progress or while the peer does not read (the transport's write buffer
    above `write_buffer_max`), and resume when a command ends or the buffer drains; complete
    frames read meanwhile wait in the frame buffer, in order."""

    def __init__(self, server: HsmServer) -> None:
        self.server = server
        self.id = 0
        self.writer: Any = None  # the transport (asyncio's or uvloop's; named as the stream writer was)
        self.in_flight = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self.out: WriteBatch | None = None
        self.frames = FrameReader(frame_size_max=server.config.frame_size_max)
        self.last_read = 0.0
        self.reason = "eof"
        self.refused = False
        self._eof = False
        self._writing_paused = False
        self.reading_paused = False
        self._pumping = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: Any) -> None:  # asyncio's or uvloop's TCP transport
        server, cfg = self.server, self.server.config
        self.writer = transport
        if len(server._connections) >= cfg.connections_max:
            log.warning("hsm_connection_refused", reason="connections_max", connections=len(server._connections))
            self.refused = self.closed = True
            transport.close()
            return
        self.id = next(server._ids)
        self.out = WriteBatch(transport.write, lambda: not self.closed)
        transport.set_write_buffer_limits(high=cfg.write_buffer_max)
        self.last_read = asyncio.get_running_loop().time()
        server._connections.add(self)
        log.info("hsm_connection_opened", conn=self.id, peer=str(transport.get_extra_info("peername")))

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_read = asyncio.get_running_loop().time()
        self.frames.receive_data(data)
        self._pump()

    def eof_received(self) -> bool:
        """The peer half-closed: answer what it asked for (within shutdown_grace_s), then close."""
        self._eof = True
        self._pump()
        if not self.closed:
            asyncio.get_running_loop().call_later(self.server.config.shutdown_grace_s, self.close)
        return True  # keep the transport open for the answers; _finish_if_done closes it

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._set_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if self.refused:
            return
        if isinstance(exc, (ConnectionError, OSError)) and self.reason == "eof" and not self.closed:
            self.reason = "reset"
        elif self.reason == "eof" and self.closed and not self._eof:
            server = self.server._server
            self.reason = "dropped" if server is not None and server.is_serving() else "server_stopped"
        self.closed = True
        self.server._connections.discard(self)
        log.info("hsm_connection_closed", conn=self.id, reason=self.reason)

    # ------------------------------------------------------------------ commands

    def _pump(self) -> None:
        """Dispatch the complete frames waiting, while there is room; then pause or resume
        reading. Not re-entered: a command answered at once ends inside the loop below."""
        if self._pumping or self.closed:
            return
        self._pumping = True
        server, limit = self.server, self.server.config.in_flight_max
        loop = asyncio.get_running_loop()
        try:
            while not self.closed and self.in_flight < limit and not self._writing_paused:
                payload = self.frames.next_frame()
                if payload is None:
                    break
                self.in_flight += 1
                server._dispatch(self, payload, loop.time())
        except ProtocolError as exc:
            self.reason = "bad_frame"
            log.warning("hsm_bad_frame", conn=self.id, reason=str(exc))
            self.close()
        finally:
            self._pumping = False
        if not self.closed:
            self._set_reading()
            self._finish_if_done()

    def release(self) -> None:
        """A command ended (answered, or never to be): room for the next frame."""
        self.in_flight -= 1
        if not self._pumping and not self.closed:
            self._pump()

    def _set_reading(self) -> None:
        pause = self.in_flight >= self.server.config.in_flight_max or self._writing_paused
        if pause != self.reading_paused and self.writer is not None and not self.writer.is_closing():
            self.reading_paused = pause
            if pause:
                self.writer.pause_reading()
            else:
                self.writer.resume_reading()

    def _finish_if_done(self) -> None:
        """After the peer's EOF: close once every command read has been answered; a command
        still waiting (latency, capacity) is given shutdown_grace_s."""
        if not self._eof or self.closed or self.in_flight > 0:
            return
        self.close()

    # ------------------------------------------------------------------ output

    def write(self, data: bytes) -> None:
        """Queue a response; the responses of one loop iteration leave in one write."""
        if not self.closed and self.out is not None:
            self.out.add(data)

    def close(self) -> None:
        if not self.closed:
            if self.out is not None:
                self.out.flush()
            self.closed = True
            if self.writer is not None:
                self.writer.close()


def load_lmk(config: HsmConfig) -> VariantLmk:
    return VariantLmk.load(config.lmk_path) if config.lmk_path is not None else TEST_LMK


class HsmServer:
    """`async with HsmServer(config) as server:` serves on server.port until the block ends."""

    def __init__(self, config: HsmConfig, *, hsm: Hsm | None = None, audit: AuditLog | None = None) -> None:
        self.config = config
        self.hsm = hsm or Hsm(
            load_lmk(config),
            firmware=config.firmware,
            lmk_check_convention=config.lmk_check_convention,
            header_length=config.header_length,
            disabled_commands=config.disabled_commands,
            tcp_sockets=config.connections_max,
            key_cache_size_max=config.key_cache_size_max,
        )
        assert self.hsm.header_length == config.header_length, "Hsm and config disagree on the header length"
        self.audit = audit if audit is not None else AuditLog(config.audit_path)
        self.faults = FaultPlan.from_config(config)
        self._bucket: TokenBucket | None = None
        self._waiting = 0
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._all: set[_Connection] = set()  # every protocol made, until its connection is lost (stop waits)
        self._sweeper: asyncio.Task[None] | None = None  # closes silent connections (idle_timeout_s)
        self._ids = itertools.count(1)
        self.port = config.port
        self.counts: dict[str, int] = {"commands": 0, "hang": 0, "drop": 0, "error": 0, "overload": 0}
        # for `eum hsm --metrics` (HsmMetrics): commands answered by (code, error code), and
        # those never answered by (code, fault: hang or drop)
        self.answered: dict[tuple[str, str], int] = {}
        self.unanswered: dict[tuple[str, str], int] = {}

    async def __aenter__(self) -> HsmServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.config.cps_max > 0:
            self._bucket = TokenBucket(self.config.cps_max, self.config.bucket_size, now=loop.time())
        self._server = await loop.create_server(self._protocol, self.config.host, self.config.port,
                                                reuse_address=True)
        self._sweeper = loop.create_task(self._sweep_idle(), name="hsm-idle-sweep")
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("hsm_listening", host=self.config.host, port=self.port, header_length=self.config.header_length,
                 lmk_check_value=self.hsm.lmk_check_value, test_lmk=self.hsm.lmk == TEST_LMK,
                 firmware=self.hsm.firmware, des="c" if DES_COMPILED else "py",
                 compiled=summary(compiled.MODULES))  # fmt: skip

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        tasks = [t for c in self._connections for t in c.tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=self.config.shutdown_grace_s)
        for conn in list(self._connections):
            conn.close()
        lost = [c.lost for c in self._all if not c.lost.done()]
        if lost:
            await asyncio.wait(lost, timeout=self.config.shutdown_grace_s)
        await self._server.wait_closed()
        self._server = None
        self.audit.flush()
        log.info("hsm_stopped", **self.counts)

    # ------------------------------------------------------------------------- connections

    def _protocol(self) -> _Connection:
        conn = _Connection(self)
        self._all.add(conn)
        conn.lost.add_done_callback(lambda _: self._all.discard(conn))
        return conn

    async def _sweep_idle(self) -> None:
        """Close every connection that sent nothing for idle_timeout_s (one timer for all, not
        one per read); checked every quarter of the timeout, at most every 5 s. A connection
        whose reads are paused (in_flight_max reached, or a peer that does not read) is not
        idle: it is not being read, as the old read loop's timer ran only while it read."""
        timeout = self.config.idle_timeout_s
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(timeout / 4, 5.0))
            now = loop.time()
            for conn in list(self._connections):
                if now - conn.last_read >= timeout and not conn.closed and not conn.reading_paused:
                    conn.reason = "idle"
                    conn.close()

    def _dispatch(self, conn: _Connection, payload: bytes, received: float) -> None:
        """Synchronous, in arrival order: parse, draw the fault, reserve capacity, start the task."""
        try:
            cmd = self.hsm.parse(payload)
        except ProtocolError:
            conn.release()
            raise
        self.counts["commands"] += 1
        fault = self.faults.decide()
        if fault in (Fault.HANG, Fault.DROP):
            self.counts[fault.value] += 1
            count_into(self.unanswered, (cmd.code, fault.value), (OTHER, fault.value))
            conn.release()
            self._record(conn, cmd, None, {"command": cmd.code}, fault=fault, received=received, queued_s=0.0)
            if fault is Fault.DROP:
                conn.close()
            return
        wait, refused = 0.0, False
        if self._bucket is not None:
            if self._waiting >= self.config.queue_size_max:
                refused = True
            else:
                wait = self._bucket.reserve(received)
                if wait * 1000 > self.config.queue_timeout_ms:
                    self._bucket.refund()
                    refused, wait = True, 0.0
                elif wait > 0:
                    self._waiting += 1  # counted now: the frames of one read are dispatched before any task runs
        if wait == 0 and self.config.latency_s(cmd.code) == 0:
            # Nothing to wait for: answer now, in arrival order, without a task per command.
            try:
                self._answer(conn, cmd, fault, received, 0.0, refused)
            finally:
                conn.release()
            return
        task = asyncio.get_running_loop().create_task(self._process(conn, cmd, fault, received, wait, refused))
        conn.tasks.add(task)
        task.add_done_callback(conn.tasks.discard)

    async def _process(
        self, conn: _Connection, cmd: Command, fault: Fault, received: float, wait: float, refused: bool
    ) -> None:
        """A command that waits first: for capacity (cps cap) and/or the configured latency."""
        wait_done = False
        try:
            if wait > 0:
                await asyncio.sleep(wait)
                self._waiting -= 1
                wait_done = True
            delay = 0.0 if refused else self.config.latency_s(cmd.code)
            if delay > 0:
                await asyncio.sleep(delay)
            self._answer(conn, cmd, fault, received, wait, refused)
        finally:
            if wait > 0 and not wait_done:  # cancelled while queued
                self._waiting -= 1
            conn.release()

    def _answer(self, conn: _Connection, cmd: Command, fault: Fault, received: float, wait: float,
                refused: bool) -> None:
        try:
            if refused:
                self.counts["overload"] += 1
                error, body, event = self.config.overload_error_code, b"", {"command": cmd.code, "reason": "over capacity"}
            elif fault is Fault.ERROR:
                self.counts["error"] += 1
                error, body, event = self.config.fault_error_code, b"", {"command": cmd.code}
            else:
                error, body, event = self.hsm.handle(cmd)
            conn.write(frame(build_response(cmd, error, body)))
            count_into(self.answered, (cmd.code, error), (OTHER, error))
            self._record(conn, cmd, error, event, fault=fault, received=received, queued_s=wait,
                         refused=refused, now=asyncio.get_running_loop().time())  # fmt: skip
        except Exception:
            log.exception("hsm_internal_error", conn=conn.id, command=cmd.code)
            conn.write(frame(build_response(cmd, INTERNAL_ERROR, b"")))
            count_into(self.answered, (cmd.code, INTERNAL_ERROR), (OTHER, INTERNAL_ERROR))

    def _record(self, conn: _Connection, cmd: Command, error: str | None, event: dict[str, Any], *, fault: Fault,
                received: float, queued_s: float, refused: bool = False, now: float | None = None) -> None:  # fmt: skip
        header = cmd.header.decode("ascii", "replace")  # AuditLog.record masks any PAN-like run
        fields: dict[str, Any] = {"conn": conn.id, "header": header, **event,
                                  "response": response_code(cmd.code) if error is not None else None,
                                  "error": error, "fault": "overload" if refused else fault.value}  # fmt: skip
        if now is not None:
            fields["queue_ms"] = round(queued_s * 1000, 3)
            fields["latency_ms"] = round((now - received) * 1000, 3)
        self.audit.record_event(fields)


class HsmMetrics:
    """The prometheus-client collector of `eum hsm --metrics` (docs/operations.md, "Metrics and
    health"): reads the server's plain counts at scrape time, from the HTTP thread."""

    def __init__(self, server: HsmServer) -> None:
        self.server = server
        self.heartbeat = LoopHeartbeat()

    def collect(self) -> Any:
        s = self.server
        yield counter("eum_hsm_server_commands", "commands answered, by command code and error code (00: success)",
                      ("code", "error"), dict(s.answered).items())
        yield counter("eum_hsm_server_unanswered", "commands never answered: a hang or a drop fault",
                      ("code", "fault"), dict(s.unanswered).items())
        yield gauge("eum_hsm_server_connections_open", "host connections open", (), [((), len(s._connections))])
        yield gauge("eum_hsm_server_waiting", "commands waiting for capacity (cps_max)", (), [((), s._waiting)])

    def ready(self) -> tuple[bool, str]:
        serving = self.server._server is not None and self.server._server.is_serving()
        return (True, "ready") if serving else (False, "not serving")


def serve_metrics(http: MetricsHttp, server: HsmServer) -> HsmMetrics:
    """On the event loop, once the server listens: serve its metrics on `http` (bound earlier)."""
    metrics = HsmMetrics(server)
    metrics.heartbeat.start()
    http.start(registry_of(metrics), health=metrics.heartbeat.health, ready=metrics.ready)
    return metrics


async def serve_until_signalled(server: HsmServer, *, metrics: MetricsHttp | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully. `metrics`: `eum hsm --metrics`."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    log.info("heap_settled", **freeze_heap())  # before any command: start's objects frozen (transport.py)
    served = serve_metrics(metrics, server) if metrics is not None else None
    try:
        await stop.wait()
    finally:
        log.info("hsm_stopping")
        if served is not None:
            served.heartbeat.stop()
            metrics.close()
        await server.stop()
