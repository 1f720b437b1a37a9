"""The chaos campaign's own clients (benchmarks/chaos.py): recording terminals, a mutator of
frames, and a crowd of junk connections (run as a process of its own: `python -m
benchmarks.chaos_load junk …`). asyncio over TCP on 127.0.0.1; messages are built by
terminal_sim's `Terminal` and secured (DUKPT PIN block and MAC, response MAC checked) by its
`TerminalClient`.

Every request a recording terminal sends and what came back is written down as an
`Exchange`: its idempotency key (DE41, DE11, DE7), the MTI sent, DE39, DE37, whether the
response MAC verified, and how the exchange ended. A transaction that got no answer (the
connection dropped, or no answer within the response timeout) is repeated as 0201 on a new,
signed-on connection until it is answered (docs/host-interface.md §6: a repeat gets the stored
response, or is processed afresh when nothing was stored). A repeat answered 91 or 96 is
repeated again: the terminal still does not know what became of the original.

An exchange without an answer is excused only when the experiment killed the switch process
the connection was talking to and the client saw that connection drop after the kill
(`Target.excused`). Every other exchange without an answer is an unanswered
request: the campaign fails on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Callable

from switch.wire.codec import Dialect, decode_fields
from switch.wire.framing import FrameBuffer, FramingError
from terminal_sim.client import TerminalClient
from terminal_sim.security import TerminalSecurity
from terminal_sim.terminal import Terminal

from benchmarks.chaos_mutate import MutatedFrame, Mutator

now = time.monotonic

CONNECT_TIMEOUT_S = 5.0
RECONNECT_BACKOFF_S = (0.02, 0.5)   # first and longest pause between connection attempts
REPEAT_AFTER_DECLINE_S = 0.05       # a repeat answered 91/96 is sent again after this pause
UNSTORED_RCS = ("91", "96")         # nothing stored for these answers (docs/host-interface.md §6)


@dataclass
class Target:
    """The switch as the clients see it, and what the experiment did to it. `incarnation`
    grows by one each time the experiment kills the switch (before it starts the next one),
    so a connection knows which process it talks to."""

    port: int
    host: str = "127.0.0.1"
    incarnation: int = 0
    killed_at: dict[int, float] = field(default_factory=dict)   # incarnation → monotonic time of its SIGKILL
    phase: str = "load"

    def kill(self, kill: Callable[[], None]) -> None:
        """SIGKILL the current switch process through `kill`; the next one started is a new
        incarnation. Synchronous: no client runs between the time taken and the kill."""
        self.killed_at[self.incarnation] = now()
        kill()
        self.incarnation += 1

    def excused(self, x: "Exchange") -> bool:
        """No answer is owed for an exchange whose connection was to a switch process the
        experiment killed, and which ended by the connection dropping after the kill (before
        it, or by a timeout, the process was alive and owed an answer). A request written to
        such a connection after the kill, before the client noticed, is excused too: nothing
        could answer it."""
        killed = self.killed_at.get(x.incarnation)
        return killed is not None and x.ending == "dropped" and x.ended_at >= killed


@dataclass
class Exchange:
    tid: str
    key: tuple[str, str, str]       # (DE41, DE11, DE7): the transaction's idempotency key
    mti: str                        # as sent: 0800, 0200, 0201
    kind: str                       # sign_on | purchase
    attempt: int                    # 0: the original; 1, 2…: repeats
    secured: bool
    amount: int
    incarnation: int
    phase: str
    sent_at: float                  # monotonic
    sent_wall: datetime             # UTC, to compare with the ledger's `messages.at`
    ended_at: float = 0.0
    ending: str = ""                # answered | dropped | timeout | bad_answer
    rc: str | None = None
    rrn: str | None = None
    mac_ok: bool | None = None      # None: no MAC to verify (an unsecured terminal, or a network message)

    @property
    def answered(self) -> bool:
        return self.ending == "answered"

    def to_json(self, t0: float) -> dict:
        """The record as written down (no PAN: the key, amount and answer only)."""
        return {"tid": self.tid, "stan": self.key[1], "de7": self.key[2], "mti": self.mti, "kind": self.kind,
                "attempt": self.attempt, "amount": self.amount, "incarnation": self.incarnation, "phase": self.phase,
                "sent_s": round(self.sent_at - t0, 6), "ended_s": round(self.ended_at - t0, 6),
                "ending": self.ending, "de39": self.rc, "de37": self.rrn, "mac_ok": self.mac_ok}

    @property
    def latency_s(self) -> float:
        return self.ended_at - self.sent_at


@dataclass(frozen=True, repr=False)
class Card:
    pan: str
    expiry: str | None
    pin: str | None

    def __repr__(self) -> str:  # never a whole PAN
        return f"Card({self.pan[:6]}…{self.pan[-4:]})"


async def open_from(host: str, port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection from `source` (any 127/8 address is a distinct peer for the switch)."""
    return await asyncio.wait_for(asyncio.open_connection(host, port, local_addr=(source, 0)), CONNECT_TIMEOUT_S)


class RecordingTerminal:
    """One POS: one connection at a time, one transaction at a time, every exchange recorded."""

    def __init__(self, target: Target, dialect: Dialect, *, tid: str, mid: str, cards: list[Card],
                 log: list[Exchange], rng: random.Random, security: TerminalSecurity | None = None,
                 source: str = "127.0.0.1", response_timeout_s: float = 5.0, pause_s: float = 0.0,
                 pin_share: float = 0.0, amount_range: tuple[int, int] = (1_000, 9_000)) -> None:
        self.target = target
        self.dialect = dialect
        self.builder = Terminal(tid, mid)
        self.cards = cards
        self.log = log
        self.rng = rng
        self.security = security
        self.source = source
        self.response_timeout_s = response_timeout_s
        self.pause_s = pause_s
        self.pin_share = pin_share
        self.amount_range = amount_range
        self.client: TerminalClient | None = None
        self.incarnation = -1
        self.pending: tuple[dict[str, str], str | None, str | None, int] | None = None  # fields, pin, pan, attempts
        self.signed_on_at: float | None = None   # when the first sign-on of this terminal was answered 00
        self.connects = 0
        self.connect_failures = 0
        self.deadline = float("inf")   # no exchange starts after this (the drain's end)

    @property
    def tid(self) -> str:
        return self.builder.tid

    async def run(self, stop: asyncio.Event) -> None:
        """Transact until `stop`, then finish the transaction in hand (repeat until it is
        answered); never past `self.deadline` (monotonic, set when stopping): what is pending
        then stays unresolved."""
        try:
            while now() < self.deadline and not (stop.is_set() and self.pending is None):
                if self.client is None and not await self._connect():
                    break
                await self._transact()
                if self.pause_s and self.pending is None:
                    await asyncio.sleep(self.pause_s)
        finally:
            await self._drop()

    async def _connect(self) -> bool:
        pause = RECONNECT_BACKOFF_S[0]
        while now() < self.deadline:
            before = self.target.incarnation
            try:
                reader, writer = await open_from(self.target.host, self.target.port, self.source)
            except (OSError, asyncio.TimeoutError):
                self.connect_failures += 1
                await asyncio.sleep(pause)
                pause = min(pause * 2, RECONNECT_BACKOFF_S[1])
                continue
            client = TerminalClient(self.target.host, self.target.port, self.dialect,
                                    response_timeout_ms=self.response_timeout_s * 1000, security=self.security)
            client.reader, client.writer = reader, writer
            self.client, self.incarnation = client, before
            self.connects += 1
            if self.target.incarnation != before:  # killed while connecting: which process is it?
                await self._drop()
                continue
            x = await self._exchange(self.builder.sign_on(), kind="sign_on", attempt=0)
            if x.answered and x.rc == "00":
                if self.signed_on_at is None:
                    self.signed_on_at = x.ended_at
                return True
            await self._drop()
            await asyncio.sleep(pause)
            pause = min(pause * 2, RECONNECT_BACKOFF_S[1])
        return False

    async def _drop(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.writer.close()

    def _new_purchase(self) -> tuple[dict[str, str], str | None, str | None]:
        card = self.rng.choice(self.cards)
        amount = self.rng.randint(*self.amount_range)
        fields = self.builder.purchase(card.pan, amount, expiry=card.expiry)
        pin = card.pin if (self.security is not None and card.pin and self.rng.random() < self.pin_share) else None
        return fields, pin, (card.pan if pin else None)

    async def _transact(self) -> None:
        if self.pending is None:
            fields, pin, pan = self._new_purchase()
            attempt = 0
        else:
            original, pin, pan, attempt = self.pending
            fields = Terminal.repeat(original)
        x = await self._exchange(fields, kind="purchase", attempt=attempt, pin=pin if attempt == 0 else None, pan=pan)
        original = fields if attempt == 0 else self.pending[0]
        if not x.answered:
            self.pending = (original, pin, pan, attempt + 1)
            await self._drop()
        elif attempt > 0 and x.rc in UNSTORED_RCS:  # still unknown what became of the original
            self.pending = (original, pin, pan, attempt + 1)
            await asyncio.sleep(REPEAT_AFTER_DECLINE_S)
        else:
            self.pending = None
            if x.rc in UNSTORED_RCS:  # switch or HSM unavailable: a till does not try again at once
                await asyncio.sleep(REPEAT_AFTER_DECLINE_S)

    async def _exchange(self, fields: dict[str, str], *, kind: str, attempt: int, pin: str | None = None,
                        pan: str | None = None) -> Exchange:
        client = self.client
        assert client is not None
        key = (self.tid, fields["11"], fields["7"])
        secured = self.security is not None and fields["t"] != "0800"
        x = Exchange(self.tid, key, fields["t"], kind, attempt, secured, int(fields.get("4", "0")),
                     self.incarnation, self.target.phase, now(), datetime.now(timezone.utc))
        self.log.append(x)
        try:
            answer = await client.request(fields, pin=pin, pan=pan)
        except asyncio.TimeoutError:
            x.ending = "timeout"
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            x.ending = "dropped"
        except Exception:  # an answer that does not decode is no answer
            x.ending = "bad_answer"
        else:
            if answer is None:
                x.ending = "dropped"
            else:
                x.ending, x.rc, x.rrn = "answered", answer.get("39"), answer.get("37")
                x.mac_ok = client.last_response_mac_ok if secured else None
        x.ended_at = now()
        return x


# ---------------------------------------------------------------------------- the mutator

@dataclass
class MutationStats:
    frames: int = 0
    owed: int = 0                   # frames the switch must answer (whole, with a request MTI)
    answered_owed: int = 0
    unanswered_owed: int = 0        # owed, but the connection closed or nothing came in time
    answered_unowed: int = 0
    closed_unowed: int = 0          # no MTI: the switch closed the connection, as it may
    hung_unowed: int = 0            # no MTI: neither an answer nor a close within the timeout
    header_lies: int = 0            # sent on a connection of their own, closed by the mutator
    by_rc: Counter = field(default_factory=Counter)
    by_kind: Counter = field(default_factory=Counter)
    unanswered_by_kind: Counter = field(default_factory=Counter)
    approvals: list[tuple[tuple[str, str, str], str]] = field(default_factory=list)  # (key, DE37) of 0210 00
    reconnects: int = 0

    def to_json(self) -> dict:
        return {"frames": self.frames, "owed": self.owed, "answered_owed": self.answered_owed,
                "unanswered_owed": self.unanswered_owed, "answered_unowed": self.answered_unowed,
                "closed_unowed": self.closed_unowed, "hung_unowed": self.hung_unowed,
                "header_lies": self.header_lies, "by_rc": dict(sorted(self.by_rc.items())),
                "by_kind": dict(sorted(self.by_kind.items())),
                "unanswered_by_kind": dict(sorted(self.unanswered_by_kind.items())),
                "approvals": len(self.approvals), "reconnects": self.reconnects}


class _RawLink:
    """One connection that sends frames and reads one answer or the close."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dialect: Dialect) -> None:
        self.reader, self.writer = reader, writer
        self.buffer = FrameBuffer(dialect.framing)

    async def answer(self, timeout_s: float) -> bytes | None | str:
        """The next frame's payload, None when the switch closed, "timeout"."""
        async def read() -> bytes | None:
            while True:
                try:
                    fr = self.buffer.next_frame()
                except FramingError:
                    return None
                if fr is not None:
                    return fr.payload
                try:
                    data = await self.reader.read(65536)
                except (OSError, ConnectionError):
                    return None
                if not data:
                    return None
                self.buffer.receive_data(data)
        try:
            return await asyncio.wait_for(read(), timeout_s)
        except asyncio.TimeoutError:
            return "timeout"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class MutatorRun:
    """`frames` mutated requests from one signed-on terminal (security none, so its frames
    are decoded, decided and stored: the hostile load that grows the switch's memory), over
    `connections` connections, one frame in flight on each."""

    def __init__(self, target: Target, dialect: Dialect, *, tid: str, mid: str, cards: list[Card], frames: int,
                 seed: int, connections: int = 4, source: str = "127.0.0.4", response_timeout_s: float = 5.0,
                 resign_every: int = 200) -> None:
        self.target, self.dialect = target, dialect
        self.builder = Terminal(tid, mid)
        self.cards = cards
        self.frames = frames
        self.connections = connections
        self.source = source
        self.response_timeout_s = response_timeout_s
        self.resign_every = resign_every
        self.mutator = Mutator(dialect, seed=seed)
        self.rng = random.Random(seed + 1)
        self.stats = MutationStats()
        self.unanswered_samples: list[dict] = []   # a few owed frames that got no answer (hex, no PAN)
        self._budget = frames
        self._recent: list[dict[str, str]] = []   # purchases to build reversals of

    async def _link(self) -> _RawLink:
        reader, writer = await open_from(self.target.host, self.target.port, self.source)
        return _RawLink(reader, writer, self.dialect)

    async def sign_on(self) -> None:
        """A clean sign-on (a mutated frame may have signed the terminal off)."""
        link = await self._link()
        try:
            link.writer.write(TerminalClient(self.target.host, self.target.port, self.dialect).encode(
                self.builder.sign_on()))
            await link.answer(self.response_timeout_s)
        finally:
            link.close()

    def _base(self) -> dict[str, str]:
        b, r = self.builder, self.rng.random()
        card = self.rng.choice(self.cards)
        if r < 0.55:
            fields = b.purchase(card.pan, self.rng.randint(100, 900), expiry=card.expiry)
            self._recent = (self._recent + [fields])[-16:]
            return fields
        if r < 0.65:
            return b.balance(card.pan, expiry=card.expiry)
        if r < 0.80 and self._recent:
            return b.reversal(self.rng.choice(self._recent))
        if r < 0.95:
            return b.echo()
        return b.sign_on()

    def _take(self) -> bool:
        if self._budget <= 0:
            return False
        self._budget -= 1
        return True

    async def run(self) -> MutationStats:
        await self.sign_on()
        await asyncio.gather(*(self._worker() for _ in range(self.connections)))
        return self.stats

    async def _worker(self) -> None:
        link: _RawLink | None = None
        sent = 0
        try:
            while self._take():
                sent += 1
                if sent % self.resign_every == 0:
                    await self.sign_on()
                m = self.mutator.mutate(self._base())
                self.stats.frames += 1
                self.stats.by_kind[m.kind] += 1
                if m.kind == "header_lie":
                    await self._lie(m)
                    continue
                if link is None:
                    link = await self._link()
                    self.stats.reconnects += 1
                keep = await self._one(link, m)
                if not keep:
                    link.close()
                    link = None
        finally:
            if link is not None:
                link.close()

    async def _lie(self, m: MutatedFrame) -> None:
        """A frame whose header promises more: its own connection, closed by us at once (the
        switch's frame deadline is for senders that keep such a connection)."""
        self.stats.header_lies += 1
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            link = await self._link()
            link.writer.write(m.wire)
            with contextlib.suppress(OSError, ConnectionError):
                await link.writer.drain()
            link.close()

    async def _one(self, link: _RawLink, m: MutatedFrame) -> bool:
        """Send one frame, take its answer or the close; False: the link is done."""
        s = self.stats
        try:
            link.writer.write(m.wire)
            await link.writer.drain()
        except (OSError, ConnectionError):
            got: bytes | None | str = None
        else:
            got = await link.answer(self.response_timeout_s)
        if isinstance(got, bytes):
            if m.answer_owed:
                s.owed += 1
                s.answered_owed += 1
            else:
                s.answered_unowed += 1
            self._answered(got)
            return True
        if m.answer_owed:
            s.owed += 1
            s.unanswered_owed += 1
            s.unanswered_by_kind[m.kind] += 1
            if len(self.unanswered_samples) < 10:  # what it was, never its bytes (a PAN may be in them)
                self.unanswered_samples.append({"kind": m.kind, "mti": m.payload[:4].decode("ascii", "replace"),
                                                "ending": "timeout" if got == "timeout" else "closed",
                                                "length": len(m.payload)})
        elif got == "timeout":
            s.hung_unowed += 1
        else:
            s.closed_unowed += 1
        return False

    def _answered(self, payload: bytes) -> None:
        try:
            fields = decode_fields(payload, self.dialect)
        except Exception:
            self.stats.by_rc["undecodable"] += 1
            return
        rc = fields.get("39", "none")
        self.stats.by_rc[rc] += 1
        keyed = all(k in fields for k in ("7", "11", "41"))
        if rc == "00" and fields.get("t") == "0210" and fields.get("37") and keyed:
            self.stats.approvals.append(((fields["41"], fields["11"], fields["7"]), fields["37"]))


# ---------------------------------------------------------------------------- junk connections

@dataclass
class JunkStats:
    opened: int = 0
    connect_failures: int = 0
    closed_by_switch: int = 0
    open_now: int = 0
    open_max: int = 0
    bytes_trickled: int = 0


class JunkCrowd:
    """`idle` connections that never send a byte and `slow` ones that announce a frame and
    trickle it one byte every `trickle_s`, spread over `sources`; each reconnects (after
    `reconnect_s`) when the switch closes it, until stopped."""

    def __init__(self, target: Target, *, idle: int, slow: int, sources: list[str], trickle_s: float = 1.0,
                 reconnect_s: float = 0.5) -> None:
        self.target = target
        self.idle, self.slow = idle, slow
        self.sources = sources
        self.trickle_s = trickle_s
        self.reconnect_s = reconnect_s
        self.stats = JunkStats()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        n = self.idle + self.slow
        for i in range(n):
            source = self.sources[i % len(self.sources)]
            self._tasks.append(asyncio.ensure_future(self._one(source, slow=i >= self.idle)))

    async def stop(self) -> None:
        self._stop.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _one(self, source: str, *, slow: bool) -> None:
        s = self.stats
        while not self._stop.is_set():
            try:
                reader, writer = await open_from(self.target.host, self.target.port, source)
            except (OSError, asyncio.TimeoutError):
                s.connect_failures += 1
                await asyncio.sleep(self.reconnect_s)
                continue
            s.opened += 1
            s.open_now += 1
            s.open_max = max(s.open_max, s.open_now)
            try:
                if slow:
                    await self._trickle(reader, writer)
                else:
                    await reader.read(1)   # returns when the switch closes it
            except (OSError, ConnectionError):
                pass
            finally:
                s.open_now -= 1
                with contextlib.suppress(Exception):
                    writer.close()
            if not self._stop.is_set():
                s.closed_by_switch += 1
                await asyncio.sleep(self.reconnect_s)

    async def _trickle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\x00\xc8")  # binary2 header: a 200-byte frame is coming
        while True:
            try:
                data = await asyncio.wait_for(reader.read(1), self.trickle_s)
            except asyncio.TimeoutError:
                writer.write(b"x")  # never a digit: the frame could never become a request
                self.stats.bytes_trickled += 1
                continue
            if not data:
                return


async def junk_main(args: argparse.Namespace) -> None:
    """The junk crowd as a process of its own (`python -m benchmarks.chaos_load junk …`), so
    its thousands of sockets and reconnects do not delay the measured terminals' event loop:
    one JSON line of `JunkStats` every `report_s`, and a last one with "final": true after
    SIGTERM."""
    crowd = JunkCrowd(Target(port=args.port), idle=args.idle, slow=args.slow, sources=args.sources.split(","),
                      trickle_s=args.trickle_s, reconnect_s=args.reconnect_s)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    crowd.start()

    def report(**extra: object) -> None:
        sys.stdout.write(json.dumps({**asdict(crowd.stats), **extra}) + "\n")
        sys.stdout.flush()

    while not stop.is_set():
        report()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), args.report_s)
    await crowd.stop()
    report(final=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="the chaos campaign's junk connections, as a process of their own")
    sub = ap.add_subparsers(dest="command", required=True)
    junk = sub.add_parser("junk", help="idle and slowloris connections to 127.0.0.1:PORT until SIGTERM")
    junk.add_argument("--port", type=int, required=True)
    junk.add_argument("--idle", type=int, required=True)
    junk.add_argument("--slow", type=int, required=True)
    junk.add_argument("--sources", required=True, help="comma-separated loopback addresses to connect from")
    junk.add_argument("--trickle-s", type=float, default=1.0)
    junk.add_argument("--reconnect-s", type=float, default=0.5)
    junk.add_argument("--report-s", type=float, default=0.25)
    asyncio.run(junk_main(ap.parse_args(argv)))
    return 0


def p99_ms(latencies_s: list[float]) -> float | None:
    """The 99th percentile (nearest rank) in milliseconds; None without samples."""
    if not latencies_s:
        return None
    ordered = sorted(latencies_s)
    rank = max(0, min(len(ordered) - 1, int(0.99 * len(ordered) + 0.999999) - 1))
    return round(ordered[rank] * 1000, 3)


if __name__ == "__main__":
    sys.exit(main())
