"""The asyncio glue: TCP connections from terminals, the control socket for operators.

Thin by design: a Protocol feeds bytes to the sans-I/O FrameBuffer, hands each frame to
`Processor.process` (codec → engine → codec) in its own task, and writes the framed response.
Every limit is named with its unit: connections_max, per_peer_max, in_flight_max,
idle_timeout_s, frame_timeout_ms, signon_timeout_s, write_buffer_max.

Every frame whose MTI the switch can answer (four digits, a request, advice or notification)
gets exactly one answer: the engine's, or 30/12/96 built here with the fields that could be
echoed; only a frame without such an MTI closes its connection (docs/host-interface.md §4).
Junk connections cannot lock terminals out (docs/architecture.md, "Connection limits"): a
cap per peer address, deadlines for a frame to complete and for a first valid frame, and at
a cap the oldest connection that never sent a valid frame makes room for the new one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import structlog

from switch.wire.codec import (DecodeError, Dialect, EncodeError, check_responses, decode_fields, describe_request,
                               encode_fields, parse_request, partial_fields)
from switch import compiled
from switch.ops import logs
from switch.ops.config import SwitchConfig
from switch.ops.metrics import Traffic
from switch.domain import mask_pan
from switch.authorize.answer import Answerer
from switch.authorize.engine import Engine
from switch.wire.framing import Frame, FrameBuffer, FramingError, frame, swap_tpdu
from switch.authorize.fairness import ProgramGate, ProgramLimits
from switch.wire.messages import KIND_NETWORK, KIND_REVERSAL, RESPONSE_MTI, FieldError, Rc
from switch.ops.operations import OperationError, Operations

log = structlog.get_logger()


def _response_mti(mti: str) -> str | None:
    """Response MTI for any request-class MTI (third digit even), e.g. 0300 → 0310."""
    if mti in RESPONSE_MTI:
        return RESPONSE_MTI[mti]
    if len(mti) == 4 and mti.isdigit() and int(mti[2]) % 2 == 0:
        return mti[:2] + str(int(mti[2]) + 1) + "0"
    return None


_ERROR_ECHO = ("2", "3", "4", "7", "11", "12", "13", "41", "42", "49", "70", "90")
_NEVER_DROPPED = ("t", "39")


def _error_response(fields: dict[str, str], rc: Rc) -> dict[str, str] | None:
    """The switch's own answer (30, 12, 91, 96) to a request it could read as far as its MTI:
    the response MTI, the request's fields that can be echoed, DE39. None: no MTI to answer."""
    mti = _response_mti(fields.get("t", ""))
    if mti is None:
        return None
    out = {k: v for k, v in fields.items() if k in _ERROR_ECHO}
    out["t"] = mti
    out["39"] = rc.value
    return out


def encode_answer(out: dict[str, str], dialect: Dialect) -> tuple[bytes | None, list[str]]:
    """An answer that is not MAC'd, as bytes, and the echoed fields that had to be left out
    for it to encode: the field the encoder blames is dropped and the rest encoded again, one
    field at a time, never the MTI or DE39. (None, dropped) only if even those cannot."""
    fields, dropped = dict(out), []
    while True:
        try:
            return encode_fields(fields, dialect), dropped
        except EncodeError as exc:
            blamed = exc.field
        except ValueError:  # no field to blame: keep only what is never dropped
            blamed = None
        if blamed in fields and blamed not in _NEVER_DROPPED:
            del fields[blamed]
            dropped.append(blamed)
        elif set(fields) - set(_NEVER_DROPPED):
            dropped.extend(k for k in fields if k not in _NEVER_DROPPED)
            fields = {k: fields[k] for k in _NEVER_DROPPED if k in fields}
        else:
            return None, dropped


# The canonical line's view of a request, built in the compiled codec (switch/wire/codec.py);
# a module global, so benchmarks/core_split.py can time it by this name.
_describe = describe_request


class Processor:
    """Frame → response bytes, plus the one canonical log line. Shared by all connections."""

    def __init__(self, engine: Engine, dialect: Dialect, *, program_limits: ProgramLimits = ProgramLimits(),
                 check_dialect: bool = True, router: Any = None, link: bool = False) -> None:
        """router: with several instances (switch/ops/cluster.py), sends a request whose member
        another instance holds to it. link: this Processor serves the link listener, whose peers
        are instances that checked the terminal's sign-on; it decides only what it holds."""
        if check_dialect:  # refuse a dialect that cannot carry every response (DialectError, one line)
            check_responses(dialect)
        self.engine = engine
        self.router = router
        self.link = link
        self.dialect = dialect
        self.counts: dict[str, int] = {}
        # per-message counts read at scrape time (switch/ops/metrics.py): plain dicts, ≈ 0.6 µs a message
        self.traffic = Traffic(program_of=self._program_of)
        self.gate = ProgramGate(program_limits)
        self.answerer = Answerer(dialect, engine.security)
        # certification mode (`eum cert serve`, switch/cert/journal.py CertJournal): journals a cert
        # terminal's exchanges and holds the timeout card's answers. None (off): one check a message.
        self.cert: Any = None

    async def process(self, fr: Frame, peer: str) -> bytes | None:
        started = time.perf_counter_ns()
        line: dict[str, Any] = {"peer": peer}
        try:
            out, payload = await self._process(fr, line)
        except Exception as exc:  # our bug: answer 96 if we can, keep serving
            log.exception("processing_failed", peer=peer, error=type(exc).__name__)
            out, payload = _error_response(line.pop("_fields", {}), Rc.SYSTEM_ERROR), None
        fields = line.pop("_fields", None)
        if out is not None and payload is None:  # an answer of the server's own: no MAC, nothing stored
            payload = self._encode_plain(out, line)
        if out is None or payload is None:
            if out is None and line.get("field") != "t":  # read, but not an MTI with a response MTI
                line.update(error="mti", field="t", reason="not a request MTI: no response MTI to answer with")
            line["latency_us"] = (time.perf_counter_ns() - started) // 1000
            log.warning("message_dropped", **line)
            self.traffic.dropped(line, fields)
            if self.cert is not None:
                await self.cert.exchanged(fields, None, line, started)
            return None
        data = frame(self.dialect.framing, payload, tpdu=swap_tpdu(fr.tpdu) if fr.tpdu else b"")
        rc = out.get("39", "")
        self.counts[rc] = self.counts.get(rc, 0) + 1
        line.update(rc=rc, rrn=out.get("37", ""), latency_us=(time.perf_counter_ns() - started) // 1000)
        logs.canonical("message", line)  # no processor chain per message (switch/ops/logs.py)
        self.traffic.answered(line, fields, out.get("t", ""), rc)
        if self.cert is not None:  # journaled; the timeout card's answer is held here
            await self.cert.exchanged(fields, out, line, started)
        return data

    def _encode_plain(self, out: dict[str, str], line: dict[str, Any]) -> bytes | None:
        payload, dropped = encode_answer(out, self.dialect)
        if dropped:
            line["unechoed"] = dropped  # echoed fields the response could not carry
        if payload is None:
            line["error"] = "response cannot be encoded"
        return payload

    def _program_of(self, pan: str) -> str:
        """The card program's id by BIN, "" for none (the metrics' label of an ungated reversal)."""
        program = self.engine.rules.program_for_pan(pan)
        return "" if program is None else program.id

    def _gated_program(self, req: Any) -> str | None:
        """The program whose slot a request takes (switch/authorize/fairness.py): financial requests but
        reversals, by BIN; None for network messages, reversals and PANs of no program."""
        if not req.pan or req.kind is KIND_REVERSAL:
            return None
        program = self.engine.rules.program_for_pan(req.pan)
        return None if program is None else program.id

    async def _process(self, fr: Frame, line: dict[str, Any]) -> tuple[dict[str, str] | None, bytes | None]:
        """The answer's fields and, when the engine built it (encoded, MAC'd), its bytes."""
        try:
            fields = decode_fields(fr.payload, self.dialect)
        except DecodeError as exc:
            partial = partial_fields(exc)
            _describe(line, partial)
            line.update(error="decode", field=exc.field, reason=exc.msg)
            return _error_response(partial, Rc.FORMAT_ERROR), None
        line["_fields"] = fields
        _describe(line, fields)
        try:
            req = parse_request(fields)
        except FieldError as exc:
            line.update(error="field", field=exc.field, reason=exc.reason)
            return _error_response(fields, exc.rc), None
        line["amount"] = req.amount
        if req.pan:
            line["pan"] = mask_pan(req.pan)
        if self.router is not None and req.pan and req.kind is not KIND_NETWORK:
            routed = await self._route(req, fields, fr, line)
            if routed is not None:
                return routed
        program = self._gated_program(req)
        if program is not None:
            line["program"] = program
            if not (self.gate.enter_now(program) or await self.gate.enter(program)):
                line["note"] = "program over capacity: shed"
                return _error_response(fields, Rc.PROGRAM_BUSY), None
            try:
                outcome = await self.engine.handle(req, fields, fr.payload, self.answerer, trusted=self.link)
            finally:
                self.gate.leave(program)
        else:
            outcome = await self.engine.handle(req, fields, fr.payload, self.answerer, trusted=self.link)
        line.update(fee=outcome.fee, cashback=outcome.cashback)
        if outcome.note:
            line["note"] = outcome.note
        if outcome.replayed:
            line["replayed"] = True
        return outcome.response, outcome.payload

    async def _route(self, req: Any, fields: dict[str, str], fr: Frame, line: dict[str, Any]
                     ) -> tuple[dict[str, str] | None, bytes | None] | None:
        """None: decided here. Otherwise the owner's answer, relayed as it sent it (its MAC
        included), or 91 with nothing stored here when no owner answered."""
        from switch.ops.cluster import LinkError

        router = self.router
        partition = router.partition_for(req.pan)
        if partition is None or router.cluster.owns(partition):
            return None
        line["partition"] = partition
        if self.link:  # sent by an instance whose routes are behind (a hand-over in progress): 91,
            line["note"] = "partition not held here"  # nothing stored; the terminal may send it again
            return _error_response(fields, Rc.OWNER_UNAVAILABLE), None
        if req.terminal not in self.engine.signed_on and not await self.engine.signed_on_elsewhere(req.terminal):
            return None  # refused here: not signed on
        try:
            forwarded = await router.forward(partition, req.terminal, req.stan, fr.payload, fr.tpdu)
        except LinkError as exc:
            line["note"] = f"no owner answered: {exc}"
            return _error_response(fields, Rc.OWNER_UNAVAILABLE), None
        if forwarded is None:
            return None
        out, payload, owner = forwarded
        line["forwarded"] = owner
        return out, payload


class TerminalConnection(asyncio.Protocol):
    """One peer's TCP connection: frames in, answers out, and its deadlines.

    `proven` once the switch has answered one of its frames (a frame with an MTI it can
    answer). Until then the connection is one the switch may close to make room
    (SwitchServer.admit) and must prove itself within signon_timeout_s. A frame whose first
    byte has arrived must be complete within frame_timeout_ms: one timer, armed only while a
    partial frame waits and reading is not paused by the switch itself, so a terminal whose
    frames arrive whole never arms it."""

    def __init__(self, server: "SwitchServer") -> None:
        self.server = server
        self.buffer = FrameBuffer(server.processor.dialect.framing)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.host = "?"
        self.in_flight = 0
        self.reading_paused = False
        self.writing_paused = False
        self.last_activity = time.monotonic()
        self.closed = False
        self.closing = False
        self.proven = False
        self._frame_timer: asyncio.TimerHandle | None = None
        self._signon_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.host = peer[0] if peer else "?"
        if not self.server.admit(self):
            transport.close()
            self.closed = True
            return
        self.transport.set_write_buffer_limits(high=self.server.config.write_buffer_max)
        self._signon_timer = asyncio.get_running_loop().call_later(self.server.config.signon_timeout_s,
                                                                   self._signon_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timers()
        self.server.forget(self)

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        self.buffer.receive_data(data)
        self._take_frames()

    def _take_frames(self) -> None:
        """Start buffered frames while the connection has room: fewer than in_flight_max in
        progress and a peer that reads its responses."""
        while not (self.closed or self.closing or self.writing_paused
                   or self.in_flight >= self.server.config.in_flight_max):
            try:
                fr = self.buffer.next_frame()
            except FramingError as exc:
                log.warning("connection_closed", peer=self.peer, reason="framing", detail=str(exc))
                self.server.closing_for("framing")
                self._close_when_answered()
                return
            if fr is None:
                break
            self._disarm_frame_timer()  # that frame is complete; the next one has its own deadline
            self.in_flight += 1
            task = asyncio.get_running_loop().create_task(self._handle(fr))
            self.server.tasks.add(task)
            task.add_done_callback(self.server.tasks.discard)
        self._update_reading()
        self._watch_frame()

    def _watch_frame(self) -> None:
        """Arm the frame deadline while a partial frame waits on the peer (reading not paused
        by the switch: a paused peer cannot complete it); disarm it otherwise."""
        waiting_on_peer = not (self.closed or self.closing or self.reading_paused) and self.buffer.partial
        if not waiting_on_peer:
            self._disarm_frame_timer()
        elif self._frame_timer is None:
            self._frame_timer = asyncio.get_running_loop().call_later(
                self.server.config.frame_timeout_ms / 1000, self._frame_expired)

    def _disarm_frame_timer(self) -> None:
        if self._frame_timer is not None:
            self._frame_timer.cancel()
            self._frame_timer = None

    def _frame_expired(self) -> None:
        self._frame_timer = None
        if self.closed or self.closing or self.reading_paused or not self.buffer.partial:
            return
        log.info("connection_closed", peer=self.peer, reason="frame_timeout",
                 frame_timeout_ms=self.server.config.frame_timeout_ms, buffered=self.buffer.pending)
        self.server.closing_for("frame_timeout")
        self._close_when_answered()

    def _signon_expired(self) -> None:
        """No valid frame within signon_timeout_s. A frame still being processed settles it:
        answered, the connection is proven; dropped, it is closed."""
        self._signon_timer = None
        if self.proven or self.closed or self.closing or self.in_flight:
            return
        log.info("connection_closed", peer=self.peer, reason="signon_timeout",
                 signon_timeout_s=self.server.config.signon_timeout_s)
        self.server.closing_for("signon_timeout")
        self._close_when_answered()

    def _prove(self) -> None:
        self.proven = True
        if self._signon_timer is not None:
            self._signon_timer.cancel()
            self._signon_timer = None
        self.server.proved(self)

    def _cancel_timers(self) -> None:
        self._disarm_frame_timer()
        if self._signon_timer is not None:
            self._signon_timer.cancel()
            self._signon_timer = None

    def evict(self) -> None:
        """Closed by the switch to make room for a new connection (SwitchServer.admit)."""
        self.closing = True
        self._cancel_timers()
        if self.transport is not None:
            self.transport.close()

    def _close_when_answered(self) -> None:
        """Take no more requests; close once every request already taken is answered."""
        self.closing = True
        self._disarm_frame_timer()
        if self.in_flight == 0 and not self.closed:
            self.transport.close()
        else:
            self._update_reading()

    async def _handle(self, fr: Frame) -> None:
        try:
            data = await self.server.processor.process(fr, self.peer)
            if data is None:
                self.closing = True
            elif not self.closed:
                if not self.proven:
                    self._prove()
                self.transport.write(data)
                self.last_activity = time.monotonic()
        finally:
            self.in_flight -= 1
            if self.closing:
                self._close_when_answered()
            else:
                self._take_frames()

    def pause_writing(self) -> None:  # the peer does not read: stop taking its requests
        self.writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._take_frames()

    def _update_reading(self) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            return
        want_pause = (self.closing or self.writing_paused
                      or self.in_flight >= self.server.config.in_flight_max)
        if want_pause and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True
            self._disarm_frame_timer()  # the switch holds the peer back: no deadline on it
        elif not want_pause and self.reading_paused:
            self.transport.resume_reading()
            self.reading_paused = False


def _oldest_unproven(conns: Iterable[TerminalConnection]) -> TerminalConnection | None:
    """The first (oldest) connection that never sent a valid frame and has none in progress."""
    return next((c for c in conns if not (c.proven or c.in_flight or c.closing or c.closed)), None)


class SwitchServer:
    def __init__(self, config: SwitchConfig, processor: Processor, ops: Operations, *, control: bool = True) -> None:
        """control: also serve the admin control socket (not for a link listener)."""
        self.control = control
        self.config = config
        self.processor = processor
        self.ops = ops
        self.connections: set[TerminalConnection] = set()
        # insertion-ordered (oldest first): every connection per peer address, and those not yet proven
        self.by_peer: dict[str, dict[TerminalConnection, None]] = {}
        self.unproven: dict[TerminalConnection, None] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._tcp: asyncio.base_events.Server | None = None
        self._control: asyncio.base_events.Server | None = None
        self._reaper: asyncio.Task[None] | None = None
        self.port = config.port
        # counted for the metrics (switch/ops/metrics.py): admitted, refused and closed by the switch, by reason
        self.opened = 0
        self.refused: dict[str, int] = {}
        self.reaped: dict[str, int] = {}
        self.draining = False  # set by stop(): /readyz says so while what is in flight is answered

    def admit(self, conn: TerminalConnection) -> bool:
        """Room for a new connection, or a refusal (logged). At per_peer_max the peer's oldest
        unproven connection is closed to make room, at connections_max anyone's: junk that
        never sent a valid frame gives way to a terminal connecting later. Refused only when
        every connection in the way has proven itself (or has a frame in progress)."""
        config = self.config
        mine = self.by_peer.get(conn.host)
        if mine is not None and len(mine) >= config.per_peer_max:
            if not self._evict(_oldest_unproven(mine), conn, "per_peer_max"):
                log.warning("connection_refused", peer=conn.peer, reason="per_peer_max",
                            per_peer_max=config.per_peer_max)
                self.refused["per_peer_max"] = self.refused.get("per_peer_max", 0) + 1
                return False
        if len(self.connections) >= config.connections_max:
            if not self._evict(_oldest_unproven(self.unproven), conn, "connections_max"):
                log.warning("connection_refused", peer=conn.peer, reason="connections_max",
                            connections_max=config.connections_max)
                self.refused["connections_max"] = self.refused.get("connections_max", 0) + 1
                return False
        self.connections.add(conn)
        self.by_peer.setdefault(conn.host, {})[conn] = None
        self.unproven[conn] = None
        log.debug("connection_opened", peer=conn.peer, connections=len(self.connections))
        self.opened += 1
        return True

    def _evict(self, victim: TerminalConnection | None, newcomer: TerminalConnection, limit: str) -> bool:
        if victim is None:
            return False
        log.info("connection_closed", peer=victim.peer, reason="evicted", limit=limit, admitted=newcomer.peer)
        self.closing_for("evicted")
        victim.evict()
        self.forget(victim)
        return True

    def closing_for(self, reason: str) -> None:
        """Count a connection the switch closes (evicted, frame_timeout, signon_timeout, idle, framing)."""
        self.reaped[reason] = self.reaped.get(reason, 0) + 1

    @property
    def listening(self) -> bool:
        return self._tcp is not None and self._tcp.is_serving()

    def proved(self, conn: TerminalConnection) -> None:
        self.unproven.pop(conn, None)

    def forget(self, conn: TerminalConnection) -> None:
        """Out of every count (idempotent): closed, or closing to make room."""
        self.connections.discard(conn)
        self.unproven.pop(conn, None)
        mine = self.by_peer.get(conn.host)
        if mine is not None:
            mine.pop(conn, None)
            if not mine:
                del self.by_peer[conn.host]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tcp = await loop.create_server(lambda: TerminalConnection(self), self.config.host, self.config.port,
                                             reuse_address=True, backlog=1024)
        self.port = self._tcp.sockets[0].getsockname()[1]
        if self.control:
            sock_path = control_socket_path(self.config.data_dir)
            sock_path.unlink(missing_ok=True)
            self._control = await asyncio.start_unix_server(self._control_client, path=str(sock_path))
        self._reaper = loop.create_task(self._reap_idle())
        log.info("switch_listening", host=self.config.host, port=self.port, dialect=self.processor.dialect.name,
                 data_dir=str(self.config.data_dir), compiled=compiled.summary())

    async def _reap_idle(self) -> None:
        timeout = self.config.idle_timeout_s
        while True:
            await asyncio.sleep(min(timeout / 4, 5.0))
            cutoff = time.monotonic() - timeout
            for conn in list(self.connections):
                if conn.last_activity < cutoff and conn.in_flight == 0:
                    log.info("connection_closed", peer=conn.peer, reason="idle", idle_timeout_s=timeout)
                    self.closing_for("idle")
                    conn.transport.close()

    async def _control_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            raw = await asyncio.wait_for(reader.readline(), 10)
            request = json.loads(raw)
            result = await self.ops.run(request["op"], request.get("args", {}))
            reply = {"ok": True, "result": result}
            log.info("operation", op=request["op"])
        except OperationError as exc:
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:  # malformed request or our bug
            log.exception("operation_failed", error=type(exc).__name__)
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        writer.write(json.dumps(reply).encode() + b"\n")
        try:
            await writer.drain()
        finally:
            writer.close()

    async def stop(self) -> None:
        """Stop accepting, answer what is in flight, then the caller flushes the ledger."""
        self.draining = True
        if self._tcp is not None:
            self._tcp.close()
        if self._control is not None:
            self._control.close()
        if self._reaper is not None:
            self._reaper.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=self.config.shutdown_grace_s)
        for conn in list(self.connections):
            conn.transport.close()
        if self.control:
            control_socket_path(self.config.data_dir).unlink(missing_ok=True)
        log.info("switch_stopped", responses=self.processor.counts)


def control_socket_path(data_dir: Path) -> Path:
    """<data-dir>/switch.sock, or a short name in the temp dir when that path is too long
    for a Unix socket (108 bytes on Linux)."""
    path = data_dir.resolve() / "switch.sock"
    if len(str(path)) < 100:
        return path
    digest = hashlib.blake2b(str(path).encode(), digest_size=8).hexdigest()
    return Path(tempfile.gettempdir()) / f"eum-{digest}.sock"


async def serve_until_signalled(server: SwitchServer, *others: SwitchServer) -> None:
    """others: listeners that stop after the terminals' one (a cluster's link: requests other
    instances still send while this one's terminals are answered)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for other in others:
        await other.start()
    await server.start()
    await stop.wait()
    log.info("switch_stopping")
    await server.stop()
    for other in others:
        await other.stop()
