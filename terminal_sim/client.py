"""asyncio TCP client for one terminal connection: frames, encodes, waits for the answer."""

from __future__ import annotations

import asyncio

from switch.codec import Dialect, decode_fields, encode_fields
from switch.framing import FrameBuffer, frame

DEFAULT_TPDU = bytes.fromhex("6000010000")


class TerminalClient:
    def __init__(self, host: str, port: int, dialect: Dialect, *, response_timeout_ms: float = 5000) -> None:
        self.host = host
        self.port = port
        self.dialect = dialect
        self.response_timeout_ms = response_timeout_ms
        self.buffer = FrameBuffer(dialect.framing)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_tpdu = b""
        self.last_response_bytes = b""  # the last response frame as it came off the wire

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

    def encode(self, fields: dict[str, str]) -> bytes:
        return frame(self.dialect.framing, encode_fields(fields, self.dialect),
                     tpdu=DEFAULT_TPDU if self.dialect.framing.tpdu else b"")

    async def receive(self) -> dict[str, str] | None:
        """The next response, or None when the switch closed the connection."""
        async def read() -> dict[str, str] | None:
            while True:
                fr = self.buffer.next_frame()
                if fr is not None:
                    self.last_tpdu = fr.tpdu
                    self.last_response_bytes = frame(self.dialect.framing, fr.payload, tpdu=fr.tpdu)
                    return decode_fields(fr.payload, self.dialect)
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.buffer.receive_data(data)
        return await asyncio.wait_for(read(), self.response_timeout_ms / 1000)

    async def request(self, fields: dict[str, str]) -> dict[str, str] | None:
        await self.send_raw(self.encode(fields))
        return await self.receive()
