"""asyncio TCP client for one terminal connection: frames, encodes, waits for the answer.

With a `TerminalSecurity`, secured requests (0200/0400/0420 and their repeats) go out with
DE53, DE52 (when a PIN is given) and a MAC, and the response's MAC is checked against the
request's KSN (`last_response_mac_ok`). The cryptography is in terminal_sim.security.
"""

from __future__ import annotations

import asyncio
import time

from switch.wire.codec import Dialect, decode_fields, encode_fields
from switch.wire.framing import FrameBuffer, FramingError, frame

from .security import SECURED_MTIS, TakSecurity, TerminalSecurity, mac_field

DEFAULT_TPDU = bytes.fromhex("6000010000")


class AnswerStream(asyncio.Protocol):
    """The receiving half of a load generator's connection (the fleet's terminal links, the
    replay's VAN lines): frames in, each decoded and handed to `answered(fields, payload, at)`
    with the perf_counter time it arrived; an undecodable frame goes to `undecodable()` and the stream
    goes on; an unframeable stream closes the connection (connection_lost follows). Subclasses
    match answers to their waiters and send."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.buffer = FrameBuffer(dialect.framing)
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        at = time.perf_counter()
        self.buffer.receive_data(data)
        while True:
            try:
                fr = self.buffer.next_frame()
            except FramingError:
                self.transport.close()
                return
            if fr is None:
                return
            try:
                fields = decode_fields(fr.payload, self.dialect)
            except Exception:  # noqa: BLE001 - an undecodable answer answers nothing we can match
                self.undecodable()
                continue
            self.answered(fields, fr.payload, at)

    def answered(self, fields: dict[str, str], payload: bytes, at: float) -> None:
        raise NotImplementedError

    def undecodable(self) -> None:
        """An answer that cannot be decoded: nothing to match it to (the default ignores it)."""


class TerminalClient:
    def __init__(self, host: str, port: int, dialect: Dialect, *, response_timeout_ms: float = 5000,
                 security: TerminalSecurity | TakSecurity | None = None) -> None:
        self.host = host
        self.port = port
        self.dialect = dialect
        self.response_timeout_ms = response_timeout_ms
        self.security = security
        self.buffer = FrameBuffer(dialect.framing)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_tpdu = b""
        self.last_response_bytes = b""  # the last response frame as it came off the wire
        self.last_response_payload = b""  # the same without length header and TPDU: the MAC input
        self.last_request: dict[str, str] = {}  # the fields last sent (secured: with DE52/DE53)
        self.last_response_mac_ok: bool | None = None  # None: nothing to verify (no MAC, or not secured)

    async def connect(self) -> "TerminalClient":
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def __aenter__(self) -> "TerminalClient":
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def _frame(self, payload: bytes) -> bytes:
        return frame(self.dialect.framing, payload, tpdu=DEFAULT_TPDU if self.dialect.framing.tpdu else b"")

    def encode(self, fields: dict[str, str]) -> bytes:
        return self._frame(encode_fields(fields, self.dialect))

    def secure(self, fields: dict[str, str], *, pin: str | None = None,
               pan: str | None = None, fresh_ksn: bool = False) -> tuple[dict[str, str], bytes]:
        """Sans I/O: the fields as they will be sent and the signed payload. Without security,
        or for an MTI that is not secured, the fields as given (a PIN then is an error: it
        cannot go out in clear)."""
        if self.security is None or fields.get("t") not in SECURED_MTIS:
            if pin is not None:
                raise ValueError("a PIN needs a DUKPT-secured terminal and a financial MTI")
            return dict(fields), encode_fields(fields, self.dialect)
        secured = self.security.protect(fields, pin=pin, pan=pan, fresh_ksn=fresh_ksn)
        payload = self.security.sign(encode_fields(secured, self.dialect), ksn=secured.get("53"))
        return secured, payload

    async def receive(self) -> dict[str, str] | None:
        """The next response, or None when the switch closed the connection."""
        async def read() -> dict[str, str] | None:
            while True:
                fr = self.buffer.next_frame()
                if fr is not None:
                    self.last_tpdu = fr.tpdu
                    self.last_response_payload = fr.payload
                    self.last_response_bytes = frame(self.dialect.framing, fr.payload, tpdu=fr.tpdu)
                    return decode_fields(fr.payload, self.dialect)
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.buffer.receive_data(data)
        return await asyncio.wait_for(read(), self.response_timeout_ms / 1000)

    async def request(self, fields: dict[str, str], *, pin: str | None = None,
                      pan: str | None = None) -> dict[str, str] | None:
        """Send one request and wait for its answer. A secured original advances the KSN;
        a repeat reuses its original's KSN and PIN block; fields that carry DE53 are re-signed
        under that KSN (see `resend`)."""
        secured, payload = self.secure(fields, pin=pin, pan=pan)
        self.last_request = secured
        self.last_response_mac_ok = None
        await self.send_raw(self._frame(payload))
        response = await self.receive()
        if response is not None and self.security is not None and secured.get("t") in SECURED_MTIS:
            self.last_response_mac_ok = self._response_mac_ok(response, secured.get("53"))
        return response

    async def resend(self, fields: dict[str, str]) -> dict[str, str] | None:
        """Send secured fields again (e.g. `Terminal.repeat(client.last_request)`) under the
        KSN in their DE53, with their DE52: no counter advance."""
        if self.security is not None and fields.get("t") in SECURED_MTIS and "53" not in fields:
            raise ValueError("resend needs fields that were secured before (with DE53)")
        return await self.request(fields)

    def _response_mac_ok(self, response: dict[str, str], ksn: str | None) -> bool | None:
        field = mac_field(response)
        if field not in response:
            stray = "64" in response or "128" in response
            return False if stray else None  # a MAC in a field that is not last cannot be right
        assert self.security is not None
        return self.security.verify_response(self.last_response_payload, ksn=ksn)
