"""payShield-style host protocol, sans I/O: frames, commands, responses, field readers.

On TCP each message is a 2-byte big-endian length, then the message header (a configured
number of characters, returned unchanged: the client's correlation id), a 2-character
command code and the fields; optionally 0x19 and a trailer of up to 32 characters, echoed.
The response code is the command code with its second letter advanced by one (NC→ND,
CA→CB, M6→M7), followed by a 2-digit error code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TRAILER_DELIMITER = 0x19
TRAILER_SIZE_MAX = 32
FRAME_SIZE_MAX = 32_768


class ProtocolError(ValueError):
    """Input the HSM cannot parse: answered with error 15 when the command code is known."""

    def __init__(self, reason: str, *, code: str = "15") -> None:
        super().__init__(reason)
        self.code = code


@dataclass(slots=True)
class Command:
    """One host command as framed. Not frozen: the HSM builds one per command, and a frozen
    dataclass sets each field through object.__setattr__ (≈ 3× the time); nothing changes one
    after `parse` built it."""

    header: bytes
    code: str
    body: bytes
    trailer: bytes | None = None
    # what the command's field parser made of `body` while `parse` looked for the trailer
    # (commands with binary data only); `handle` uses it instead of parsing again
    request: Any = field(default=None, compare=False, repr=False)


UNKNOWN_RESPONSE_CODE = "ZZ"  # answer code for a command code that cannot be advanced (garbage, 'xZ', 'x9')


def response_code(command_code: str) -> str:
    """NC→ND, CA→CB, A0→A1, CY→CZ: the second character advanced by one. A code that is not
    two ASCII letters/digits, or whose second character cannot be advanced, answers 'ZZ'."""
    if len(command_code) != 2 or not (command_code.isascii() and command_code.isalnum()):
        return UNKNOWN_RESPONSE_CODE
    advanced = chr(ord(command_code[1]) + 1)
    if not advanced.isalnum():
        return UNKNOWN_RESPONSE_CODE
    return command_code[0] + advanced


def build_response(cmd: Command, error: str, body: bytes = b"") -> bytes:
    out = cmd.header + response_code(cmd.code).encode("ascii") + error.encode("ascii") + body
    if cmd.trailer is not None:
        out += bytes([TRAILER_DELIMITER]) + cmd.trailer
    return out


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(2, "big") + payload


class FrameReader:
    """2-byte length frames out of a byte stream; partial reads handled."""

    __slots__ = ("_buf", "frame_size_max")

    def __init__(self, *, frame_size_max: int = FRAME_SIZE_MAX) -> None:
        self._buf = bytearray()
        self.frame_size_max = frame_size_max

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def next_frame(self) -> bytes | None:
        if len(self._buf) < 2:
            return None
        n = int.from_bytes(self._buf[:2], "big")
        if n == 0 or n > self.frame_size_max:
            raise ProtocolError(f"frame length {n} out of range 1..{self.frame_size_max}")
        if len(self._buf) < 2 + n:
            return None
        out = bytes(self._buf[2 : 2 + n])
        del self._buf[: 2 + n]
        return out


# FieldReader.hex: a hex digit → itself upper-cased, any other byte → NUL (a NUL → NUL too).
_HEX_UPPER = bytes(c if chr(c) in "0123456789ABCDEF" else c - 32 if chr(c) in "abcdef" else 0 for c in range(256))


class FieldReader:
    """Reads fixed and key fields from a command body, left to right; exact lengths."""

    __slots__ = ("data", "pos", "parsed")

    def __init__(self, body: bytes, *, parsed: Any = None) -> None:
        self.data = body
        self.pos = 0
        self.parsed = parsed  # the body already parsed by `Hsm.parse`, or None

    def parse_with(self, parser: Any) -> Any:
        """The body's fields: as parsed before (the reader then stands at the end), or now."""
        if self.parsed is not None:
            self.pos = len(self.data)
            return self.parsed
        return parser(self)

    def take(self, n: int, what: str) -> str:
        if self.pos + n > len(self.data):
            raise ProtocolError(f"{what}: expected {n} characters")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        try:
            return chunk.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError(f"{what}: not ASCII") from None

    def raw(self, n: int, what: str) -> bytes:
        """n bytes as sent (binary message data: never decoded)."""
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError(f"{what}: expected {n} bytes")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return bytes(chunk)

    def until(self, delimiter: bytes, what: str, *, size_max: int) -> str:
        """ASCII text up to (not including) `delimiter`, which is consumed too."""
        end = self.data.find(delimiter, self.pos, self.pos + size_max + len(delimiter))
        if end < 0:
            raise ProtocolError(f"{what}: delimiter missing or field longer than {size_max}")
        value = self.take(end - self.pos, what)
        self.pos += len(delimiter)
        return value

    def peek(self, n: int = 1) -> bytes:
        return bytes(self.data[self.pos : self.pos + n])

    def hex(self, n: int, what: str) -> str:
        """n hex digits, upper-cased. Checked and upper-cased on the bytes in one
        `bytes.translate` through a full table (a digit to itself upper-cased, anything else to
        NUL): the table form is CPython's loop without set-up, where deleting the digits
        (`translate(None, digits)`) built a 256-entry table each call, ≈ 900 instructions a
        field (docs/performance.md, "The DES core in rotated halves (kept)")."""
        pos = self.pos
        if pos + n > len(self.data):
            raise ProtocolError(f"{what}: expected {n} characters")
        chunk = self.data[pos : pos + n].translate(_HEX_UPPER)
        if 0 in chunk:  # an int: `b"\0" in chunk` first tries the bytes as an int (a TypeError raised and cleared)
            raise ProtocolError(f"{what}: not hexadecimal")
        self.pos = pos + n
        return chunk.decode("ascii")

    def digits(self, n: int, what: str) -> str:
        value = self.take(n, what)
        if not value.isdigit():
            raise ProtocolError(f"{what}: not numeric")
        return value

    def key(self, what: str, *, single_allowed: bool = True) -> str:
        """A key under the LMK: 16H (single, no scheme), or scheme letter + 32H (U, X)
        or + 48H (T, Y), or Z + 16H. Returns the text with its scheme tag."""
        tag = self.take(1, what)
        self.pos -= 1
        if tag in "UX":
            return tag + self._hex_after_tag(32, what)
        if tag in "TY":
            return tag + self._hex_after_tag(48, what)
        if tag == "Z":
            return tag + self._hex_after_tag(16, what)
        if tag in "SR":
            raise ProtocolError(f"{what}: key blocks not supported", code="26")
        if not single_allowed:
            raise ProtocolError(f"{what}: double length key required", code="27")
        return self.hex(16, what)

    def double_key(self, what: str) -> str:
        """32H or 1A+32H (PVK pairs, BDKs): plain 32 hex is a double-length key, no tag."""
        tag = self.take(1, what)
        self.pos -= 1
        if tag in "UXTY":
            return self.key(what)
        return self.hex(32, what)

    def _hex_after_tag(self, n: int, what: str) -> str:
        self.pos += 1
        return self.hex(n, what)

    def rest(self) -> str:
        value = self.data[self.pos :].decode("ascii", "replace")
        self.pos = len(self.data)
        return value

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def done(self, what: str = "command") -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"{what}: {len(self.data) - self.pos} unexpected trailing characters", code="15")
