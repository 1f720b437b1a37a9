"""The bare responder: the ceiling a switch is measured against.

    python benchmarks/responder.py --listen 127.0.0.1:9583 [--dialect default]

Same framing and dialect as `eum switch`, but no decode, no ledger, no HSM: it reads the MTI
of each request frame and writes back a response encoded once at start (0800→0810,
0200/0201→0210 approved, 0400/0401→0410, 0420/0421→0430, 0100/0120/0220 → 0110/0130/0230). The
fleet driving it measures what the fleet and the loopback network cost on their own
(`ceiling.per_s` in `eum bench`).

The responder answers with a fixed DE11/DE41 and no MAC: a client that matches responses by
STAN, or checks the response MAC, sees a mismatch, but still one answer per request with the
right MTI. An unknown MTI closes the connection (the switch answers those; this is a ceiling,
not a switch).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from switch.wire.codec import Dialect, encode_fields, load_dialect  # noqa: E402
from switch.wire.transport import parse_hostport  # noqa: E402
from switch.wire.framing import TPDU_SIZE, Framing, FramingError, frame, swap_tpdu  # noqa: E402
from switch.wire.messages import RESPONSE_MTI  # noqa: E402

# One response per request MTI, approved, with the fields a terminal reads.
RESPONSE_FIELDS = {
    "0810": {"7": "0101000000", "11": "000000", "41": "T0000000", "70": "001", "39": "00"},
    "0210": {"3": "000000", "4": "000000020000", "7": "0101000000", "11": "000000", "37": "000000000000",
             "38": "000000", "39": "00", "41": "T0000000", "49": "410",
             "54": "0002410C000000080000" + "0091410C000000001500"},
    "0110": {"3": "000000", "4": "000000020000", "7": "0101000000", "11": "000000", "37": "000000000000",
             "38": "000000", "39": "00", "41": "T0000000", "49": "410",
             "54": "0002410C000000080000" + "0091410C000000000000"},
    "0410": {"3": "000000", "4": "000000020000", "7": "0101000000", "11": "000000", "39": "00", "41": "T0000000",
             "49": "410"},
    "0430": {"3": "000000", "4": "000000020000", "7": "0101000000", "11": "000000", "39": "00", "41": "T0000000",
             "49": "410"},
}
RESPONSE_FIELDS["0130"] = RESPONSE_FIELDS["0110"]  # an authorization advice: answered as its 0100
RESPONSE_FIELDS["0230"] = RESPONSE_FIELDS["0210"]  # a completion: the sale's answer


class Responder:
    """Sans-I/O core: request frame bytes in, response frame bytes out."""

    __slots__ = ("framing", "_buf", "_mti_at", "_mti_size", "_answers")

    def __init__(self, dialect: Dialect) -> None:
        self.framing: Framing = dialect.framing
        self._buf = bytearray()
        header = dialect.spec["h"]
        mti = dialect.spec["t"]
        self._mti_at = header["max_len"] if header["len_type"] == 0 else 0
        self._mti_size = 4 if mti["data_enc"] != "b" else 2
        self._answers = precompute(dialect)

    def receive_data(self, data: bytes) -> bytes:
        """All complete responses for the frames now buffered (b"" if none is complete).
        Raises FramingError for an unframeable stream or an MTI it has no answer for."""
        buf = self._buf
        buf += data
        framing = self.framing
        hs = framing.header_size
        out = []
        while len(buf) >= hs:
            n = framing.decode_length(bytes(buf[:hs]))
            if n == 0 or n > framing.frame_size_max:
                raise FramingError(f"frame length {n} out of range")
            if len(buf) < hs + n:
                break
            at = hs + (TPDU_SIZE if framing.tpdu else 0)
            mti = bytes(buf[at + self._mti_at : at + self._mti_at + self._mti_size])
            answer = self._answers.get(mti)
            if answer is None:
                raise FramingError("MTI without a pre-encoded response")
            if framing.tpdu:
                tpdu = swap_tpdu(bytes(buf[hs:at]))
                answer = answer[:hs] + tpdu + answer[hs + TPDU_SIZE :]
            out.append(answer)
            del buf[: hs + n]
        return b"".join(out)


def precompute(dialect: Dialect) -> dict[bytes, bytes]:
    """Request MTI as it appears on the wire → the whole response frame."""
    header = dialect.spec["h"]
    mti_at = header["max_len"] if header["len_type"] == 0 else 0
    mti_size = 4 if dialect.spec["t"]["data_enc"] != "b" else 2
    tpdu = bytes(TPDU_SIZE) if dialect.framing.tpdu else b""
    answers: dict[bytes, bytes] = {}
    for request_mti, response_mti in RESPONSE_MTI.items():
        wire = encode_fields({"t": request_mti}, dialect)[mti_at : mti_at + mti_size]
        payload = encode_fields({"t": response_mti, **RESPONSE_FIELDS[response_mti]}, dialect)
        answers[wire] = frame(dialect.framing, payload, tpdu=tpdu)
    return answers


class ResponderProtocol(asyncio.Protocol):
    def __init__(self, dialect: Dialect) -> None:
        self.core = Responder(dialect)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            out = self.core.receive_data(data)
        except FramingError:
            self.transport.close()
            return
        if out:
            self.transport.write(out)


async def serve(host: str, port: int, dialect: Dialect, *, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or cancellation)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ResponderProtocol(dialect), host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    bound = server.sockets[0].getsockname()
    print(f'{{"event": "responder_listening", "host": "{bound[0]}", "port": {bound[1]}}}', flush=True)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", default="127.0.0.1:9583", help="HOST:PORT (default 127.0.0.1:9583)")
    ap.add_argument("--dialect", default="default", help="config/dialects/NAME.toml")
    args = ap.parse_args(argv)
    host, port = parse_hostport(args.listen)
    from switch.wire.transport import run

    run(serve(host, port, load_dialect(args.dialect)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
