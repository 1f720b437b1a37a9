"""Sans-I/O framing: length header (+ optional TPDU) around each ISO 8583 message.

Bytes in with `receive_data`, whole frames out with `next_frame`; `frame` builds the bytes
for one outgoing message. No asyncio here (h11's shape), so the framing is tested without
sockets and reused by the server and terminal_sim alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from switch.domain import zero_padded

LENGTH_HEADERS = ("binary2", "ascii4", "bcd2")
TPDU_SIZE = 5


class FramingError(ValueError):
    """The peer sent bytes that cannot be framed: the connection must be closed."""


@dataclass(frozen=True, slots=True)
class Framing:
    length_header: str = "binary2"
    tpdu: bool = False
    frame_size_max: int = 4096

    def __post_init__(self) -> None:
        if self.length_header not in LENGTH_HEADERS:
            raise ValueError(f"framing.length_header must be one of {LENGTH_HEADERS}, got {self.length_header!r}")
        limit = 9999 if self.length_header in ("ascii4", "bcd2") else 65535
        if not 0 < self.frame_size_max <= limit:
            raise ValueError(f"framing.frame_size_max must be 1..{limit} for {self.length_header}")

    @property
    def header_size(self) -> int:
        return 4 if self.length_header == "ascii4" else 2

    def encode_length(self, n: int) -> bytes:
        if self.length_header == "binary2":
            return n.to_bytes(2, "big")
        if self.length_header == "ascii4":
            return b"%04d" % n
        return bytes.fromhex(zero_padded(n, 4))  # BCD

    def decode_length(self, raw: bytes) -> int:
        if self.length_header == "binary2":
            return int.from_bytes(raw, "big")
        text = raw.decode("ascii", "replace") if self.length_header == "ascii4" else raw.hex()
        if not text.isdigit():
            raise FramingError(f"length header is not decimal ({self.length_header})")
        return int(text)


@dataclass(frozen=True, slots=True)
class Frame:
    """One message as received: the TPDU (if the dialect has one) and the ISO 8583 payload."""

    payload: bytes
    tpdu: bytes = b""


def swap_tpdu(tpdu: bytes) -> bytes:
    """A response TPDU is the request's with destination and source addresses swapped."""
    return tpdu[:1] + tpdu[3:5] + tpdu[1:3]


def frame(framing: Framing, payload: bytes, *, tpdu: bytes = b"") -> bytes:
    body = (tpdu if framing.tpdu else b"") + payload
    if len(body) > framing.frame_size_max:
        raise ValueError(f"frame of {len(body)} bytes exceeds frame_size_max {framing.frame_size_max}")
    return framing.encode_length(len(body)) + body


class FrameBuffer:
    """Accumulates stream bytes and yields complete frames; handles partial reads."""

    __slots__ = ("framing", "_buf")

    def __init__(self, framing: Framing) -> None:
        self.framing = framing
        self._buf = bytearray()

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    @property
    def pending(self) -> int:
        return len(self._buf)

    @property
    def partial(self) -> bool:
        """True when the buffer starts with a frame whose last byte has not arrived (the
        length header itself may be incomplete). A buffer holding only whole frames, or
        nothing, is not partial; nor is one whose length header `next_frame` will refuse.
        The server runs its frame deadline (frame_timeout_ms) while this holds."""
        buffered = len(self._buf)
        if buffered == 0:
            return False
        hs = self.framing.header_size
        if buffered < hs:
            return True
        try:
            n = self.framing.decode_length(bytes(self._buf[:hs]))
        except FramingError:
            return False
        return 0 < n <= self.framing.frame_size_max and buffered < hs + n

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None if more bytes are needed.

        Raises FramingError for a zero or oversize length or a frame too short for its TPDU.
        """
        framing = self.framing
        hs = framing.header_size
        if len(self._buf) < hs:
            return None
        n = framing.decode_length(bytes(self._buf[:hs]))
        if n == 0:
            raise FramingError("zero-length frame")
        if n > framing.frame_size_max:
            raise FramingError(f"frame length {n} exceeds frame_size_max {framing.frame_size_max}")
        if len(self._buf) < hs + n:
            return None
        body = bytes(self._buf[hs : hs + n])
        del self._buf[: hs + n]
        if framing.tpdu:
            if n <= TPDU_SIZE:
                raise FramingError("frame shorter than its TPDU")
            return Frame(payload=body[TPDU_SIZE:], tpdu=body[:TPDU_SIZE])
        return Frame(payload=body)
