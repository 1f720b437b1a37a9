"""The asyncio glue: TCP connections from terminals, the control socket for operators.

Thin by design: a Protocol feeds bytes to the sans-I/O FrameBuffer, hands each frame to
`process_frame` (codec → engine → codec) in its own task, and writes the framed response.
Every limit is named with its unit: connections_max, in_flight_max, idle_timeout_s,
write_buffer_max.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from switch.wire.codec import (DecodeError, Dialect, EncodeError, check_responses, decode_fields, encode_fields,
                               parse_request, partial_fields)
from switch.ops import logs
from switch.ops.config import SwitchConfig
from switch.domain import mask_pan
from switch.authorize.answer import Answerer
from switch.authorize.engine import Engine
from switch.wire.framing import Frame, FrameBuffer, FramingError, frame, swap_tpdu
from switch.authorize.fairness import ProgramGate, ProgramLimits
from switch.wire.messages import RESPONSE_MTI, FieldError, Kind, Rc
from switch.ops.operations import OperationError, Operations

log = structlog.get_logger()

_LOG_FIELDS = {"3": "processing_code", "11": "stan", "41": "terminal", "42": "merchant"}


def _response_mti(mti: str) -> str | None:
    """Response MTI for any request-class MTI (third digit even), e.g. 0300 → 0310."""
    if mti in RESPONSE_MTI:
        return RESPONSE_MTI[mti]
    if len(mti) == 4 and mti.isdigit() and int(mti[2]) % 2 == 0:
        return mti[:2] + str(int(mti[2]) + 1) + "0"
    return None


def _error_response(fields: dict[str, str], rc: Rc) -> dict[str, str] | None:
    mti = _response_mti(fields.get("t", ""))
    if mti is None:
        return None
    out = {k: v for k, v in fields.items() if k in ("2", "3", "4", "7", "11", "12", "13", "41", "42", "49", "70", "90")}
    out["t"] = mti
    out["39"] = rc.value
    return out


class Processor:
    """Frame → response bytes, plus the one canonical log line. Shared by all connections."""

    def __init__(self, engine: Engine, dialect: Dialect, *, program_limits: ProgramLimits = ProgramLimits(),
                 check_dialect: bool = True) -> None:
        if check_dialect:  # refuse a dialect that cannot carry every response (DialectError, one line)
            check_responses(dialect)
        self.engine = engine
        self.dialect = dialect
        self.counts: dict[str, int] = {}
        self.gate = ProgramGate(program_limits)
        self.answerer = Answerer(dialect, engine.security)

    async def process(self, fr: Frame, peer: str) -> bytes | None:
        started = time.perf_counter_ns()
        line: dict[str, Any] = {"peer": peer}
        try:
            out, payload = await self._process(fr, line)
        except Exception as exc:  # our bug: answer 96 if we can, keep serving
            log.exception("processing_failed", peer=peer, error=type(exc).__name__)
            out, payload = _error_response(line.pop("_fields", {}), Rc.SYSTEM_ERROR), None
        line.pop("_fields", None)
        if out is not None and payload is None:  # an answer of the server's own: no MAC, nothing stored
            payload = self._encode_plain(out, line)
        if out is None or payload is None:
            line["latency_us"] = (time.perf_counter_ns() - started) // 1000
            log.warning("message_dropped", **line)
            return None
        data = frame(self.dialect.framing, payload, tpdu=swap_tpdu(fr.tpdu) if fr.tpdu else b"")
        rc = out.get("39", "")
        self.counts[rc] = self.counts.get(rc, 0) + 1
        line.update(rc=rc, rrn=out.get("37", ""), latency_us=(time.perf_counter_ns() - started) // 1000)
        logs.canonical("message", line)  # no processor chain per message (switch/ops/logs.py)
        return data

    def _encode_plain(self, out: dict[str, str], line: dict[str, Any]) -> bytes | None:
        try:
            return encode_fields(out, self.dialect)
        except (EncodeError, ValueError) as exc:
            line["error"] = f"response cannot be encoded: {exc}"
            return None

    def _gated_program(self, req: Any) -> str | None:
        """The program whose slot a request takes (switch/authorize/fairness.py): financial requests but
        reversals, by BIN; None for network messages, reversals and PANs of no program."""
        if not req.pan or req.kind is Kind.REVERSAL:
            return None
        program = self.engine.rules.program_for_pan(req.pan)
        return None if program is None else program.id

    async def _process(self, fr: Frame, line: dict[str, Any]) -> tuple[dict[str, str] | None, bytes | None]:
        """The answer's fields and, when the engine built it (encoded, MAC'd), its bytes."""
        try:
            fields = decode_fields(fr.payload, self.dialect)
        except DecodeError as exc:
            partial = partial_fields(exc)
            line.update(mti=partial.get("t", ""), error="decode", field=exc.field, reason=exc.msg)
            return _error_response(partial, Rc.FORMAT_ERROR), None
        line["_fields"] = fields
        line["mti"] = fields.get("t", "")
        for no, name in _LOG_FIELDS.items():
            if no in fields:
                line[name] = fields[no].strip()
        if "2" in fields:
            line["pan"] = mask_pan(fields["2"])  # masked at the source, and again by the log processor
        try:
            req = parse_request(fields)
        except FieldError as exc:
            line.update(error="field", field=exc.field, reason=exc.reason)
            return _error_response(fields, exc.rc), None
        line["amount"] = req.amount
        if req.pan:
            line["pan"] = mask_pan(req.pan)
        program = self._gated_program(req)
        if program is not None:
            if not await self.gate.enter(program):
                line.update(program=program, note="program over capacity: shed")
                return _error_response(fields, Rc.PROGRAM_BUSY), None
            try:
                outcome = await self.engine.handle(req, fields, fr.payload, self.answerer)
            finally:
                self.gate.leave(program)
        else:
            outcome = await self.engine.handle(req, fields, fr.payload, self.answerer)
        line.update(fee=outcome.fee, cashback=outcome.cashback)
        if outcome.note:
            line["note"] = outcome.note
        if outcome.replayed:
            line["replayed"] = True
        return outcome.response, outcome.payload


class TerminalConnection(asyncio.Protocol):
    def __init__(self, server: "SwitchServer") -> None:
        self.server = server
        self.buffer = FrameBuffer(server.processor.dialect.framing)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.in_flight = 0
        self.reading_paused = False
        self.writing_paused = False
        self.last_activity = time.monotonic()
        self.closed = False
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        if len(self.server.connections) >= self.server.config.connections_max:
            log.warning("connection_refused", peer=self.peer, reason="connections_max",
                        connections_max=self.server.config.connections_max)
            transport.close()
            self.closed = True
            return
        self.server.connections.add(self)
        self.transport.set_write_buffer_limits(high=self.server.config.write_buffer_max)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)

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
                self._close_when_answered()
                return
            if fr is None:
                break
            self.in_flight += 1
            task = asyncio.get_running_loop().create_task(self._handle(fr))
            self.server.tasks.add(task)
            task.add_done_callback(self.server.tasks.discard)
        self._update_reading()

    def _close_when_answered(self) -> None:
        """Take no more requests; close once every request already taken is answered."""
        self.closing = True
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
        elif not want_pause and self.reading_paused:
            self.transport.resume_reading()
            self.reading_paused = False


class SwitchServer:
    def __init__(self, config: SwitchConfig, processor: Processor, ops: Operations) -> None:
        self.config = config
        self.processor = processor
        self.ops = ops
        self.connections: set[TerminalConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self._tcp: asyncio.base_events.Server | None = None
        self._control: asyncio.base_events.Server | None = None
        self._reaper: asyncio.Task[None] | None = None
        self.port = config.port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tcp = await loop.create_server(lambda: TerminalConnection(self), self.config.host, self.config.port,
                                             reuse_address=True, backlog=1024)
        self.port = self._tcp.sockets[0].getsockname()[1]
        sock_path = control_socket_path(self.config.data_dir)
        sock_path.unlink(missing_ok=True)
        self._control = await asyncio.start_unix_server(self._control_client, path=str(sock_path))
        self._reaper = loop.create_task(self._reap_idle())
        log.info("switch_listening", host=self.config.host, port=self.port, dialect=self.processor.dialect.name,
                 data_dir=str(self.config.data_dir))

    async def _reap_idle(self) -> None:
        timeout = self.config.idle_timeout_s
        while True:
            await asyncio.sleep(min(timeout / 4, 5.0))
            cutoff = time.monotonic() - timeout
            for conn in list(self.connections):
                if conn.last_activity < cutoff and conn.in_flight == 0:
                    log.info("connection_closed", peer=conn.peer, reason="idle", idle_timeout_s=timeout)
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


async def serve_until_signalled(server: SwitchServer) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    await stop.wait()
    log.info("switch_stopping")
    await server.stop()
