"""Hostile frames for the chaos campaign (benchmarks/chaos.py, experiment `mutation`), sans I/O.

A valid request (a terminal_sim `Terminal`'s fields) is encoded with the dialect, its byte
layout taken from pyiso8583 (MTI, bitmaps, then each field's length prefix and data), and one
mutation is applied, drawn from a seeded generator:

  truncate      the message cut at a field boundary (after the MTI: a frame that ends where
                a field would start, e.g. a 0200 whose DE49 is missing), honest length header
  bitmap        one to three bits of the primary or secondary bitmap flipped (DE65 included)
  field_bytes   the bytes of one field (data or length prefix) replaced by random bytes
  field_length  a variable field's length prefix changed (shorter, longer, not digits)
  field_values  one or two fields given other values of their own kind (digits for a numeric
                field, printable text for text, bytes for binary; same length): a frame that
                decodes and is decided and stored — the hostile load that grows memory
  garbage       random bytes, no MTI
  header_lie    the frame's length header says more than is sent (the switch must not wait
                for it forever: docs/architecture.md, "Connection limits")

What the switch owes each frame (docs/host-interface.md §4): a frame delivered whole whose
payload starts with an MTI the switch can answer — four ASCII digits whose third is even (a
request, advice or notification; 0210 is a response and has nothing to answer it with) —
gets exactly one answer. Any other frame may close the connection. `MutatedFrame.answer_owed`
says which; a header_lie frame is never whole, so nothing is owed for it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import iso8583

from switch.wire.codec import Dialect
from switch.wire.framing import frame

MUTATIONS = ("truncate", "bitmap", "field_bytes", "field_values", "field_length", "garbage", "header_lie")
# Shares of each mutation, in MUTATIONS order. header_lie frames cost a connection each
# (the switch waits frame_timeout_ms for the rest), so they are few.
WEIGHTS = (20, 15, 15, 30, 12, 5, 3)


@dataclass(frozen=True)
class Span:
    """One element of an encoded message: `key` ("t", "p", "1", "2"...), where its length
    prefix starts, where its data starts, and where it ends (payload offsets)."""

    key: str
    start: int
    data_start: int
    end: int


@dataclass(frozen=True)
class MutatedFrame:
    kind: str
    wire: bytes            # what is sent: length header + payload (header_lie: a header that lies)
    payload: bytes         # the message bytes after the length header
    answer_owed: bool      # the switch must answer this frame (it is whole and has an MTI)
    base_mti: str          # the MTI of the valid request it was made from


def answerable_mti(payload: bytes) -> bool:
    """Four ASCII digits whose third is even: a request, advice or notification MTI."""
    mti = payload[:4]
    return len(mti) == 4 and mti.isdigit() and int(chr(mti[2])) % 2 == 0


def layout(fields: dict[str, str], dialect: Dialect) -> tuple[bytes, list[Span]]:
    """The encoded message and each element's span, in wire order (pyiso8583 writes the
    MTI, the primary bitmap, the secondary bitmap if any, then fields in number order)."""
    raw, enc = iso8583.encode(dict(fields), dialect.spec)
    keys = [k for k in ("h", "t", "p", "1") if k in enc] + sorted((k for k in enc if k.isdigit() and k != "1"),
                                                                      key=int)
    spans, at = [], 0
    for key in keys:
        prefix, data = len(enc[key]["len"]), len(enc[key]["data"])
        spans.append(Span(key, at, at + prefix, at + prefix + data))
        at += prefix + data
    assert at == len(raw), "pyiso8583's element sizes must add up to the message"
    return bytes(raw), spans


class Mutator:
    """Seeded: the same seed and the same requests give the same frames."""

    def __init__(self, dialect: Dialect, *, seed: int) -> None:
        if dialect.framing.tpdu:
            raise ValueError("the mutator frames for dialects without a TPDU")
        self.dialect = dialect
        self.rng = random.Random(seed)

    def mutate(self, fields: dict[str, str]) -> MutatedFrame:
        payload, spans = layout(fields, self.dialect)
        kind = self.rng.choices(MUTATIONS, WEIGHTS)[0]
        mutated = getattr(self, "_" + kind)(payload, spans)
        mutated = mutated[: self.dialect.framing.frame_size_max] or b"0"
        if kind == "header_lie":
            declared = min(len(mutated) + self.rng.randint(1, 64), self.dialect.framing.frame_size_max)
            wire = self.dialect.framing.encode_length(declared) + mutated
            return MutatedFrame(kind, wire, mutated, False, fields["t"])
        return MutatedFrame(kind, frame(self.dialect.framing, mutated), mutated, answerable_mti(mutated),
                            fields["t"])

    # Each takes the valid payload and its spans and returns the mutated payload.

    def _truncate(self, payload: bytes, spans: list[Span]) -> bytes:
        cuts = [s.end for s in spans[:-1] if s.key not in ("h",)]  # after the MTI, bitmaps or a field
        return payload[: self.rng.choice(cuts)]

    def _bitmap(self, payload: bytes, spans: list[Span]) -> bytes:
        maps = [s for s in spans if s.key in ("p", "1")]
        out = bytearray(payload)
        for _ in range(self.rng.randint(1, 3)):
            s = self.rng.choice(maps)
            bit = self.rng.randrange((s.end - s.data_start) * 8)
            if self.rng.random() < 0.2 and s.key == "p":
                bit = 0  # bit 1: the secondary bitmap (and with it DE65..128) appears or goes
            out[s.data_start + bit // 8] ^= 0x80 >> (bit % 8)
        return bytes(out)

    def _field_bytes(self, payload: bytes, spans: list[Span]) -> bytes:
        fields = [s for s in spans if s.key not in ("h", "t", "p", "1")]
        s = self.rng.choice(fields)
        prefix_too = s.data_start > s.start and self.rng.random() < 0.25  # the length prefix, not the data
        lo, hi = (s.start, s.data_start) if prefix_too else (s.data_start, s.end)
        noise = bytes(self.rng.randrange(256) for _ in range(hi - lo))
        return payload[:lo] + noise + payload[hi:]

    def _field_values(self, payload: bytes, spans: list[Span]) -> bytes:
        fields = [s for s in spans if s.key not in ("h", "t", "p", "1") and s.end > s.data_start]
        out = bytearray(payload)
        for s in self.rng.sample(fields, min(len(fields), self.rng.choice((1, 1, 2)))):
            data = payload[s.data_start : s.end]
            if self.dialect.spec[s.key]["data_enc"] == "b":
                new = bytes(self.rng.randrange(256) for _ in data)
            elif data.isdigit():
                new = bytes(self.rng.choice(b"0123456789") for _ in data)
            else:
                new = bytes(self.rng.randrange(0x20, 0x7F) for _ in data)
            out[s.data_start : s.end] = new
        return bytes(out)

    def _field_length(self, payload: bytes, spans: list[Span]) -> bytes:
        variable = [s for s in spans if s.data_start > s.start]
        if not variable:
            return self._field_bytes(payload, spans)
        s = self.rng.choice(variable)
        size = s.data_start - s.start
        choice = self.rng.random()
        if choice < 0.2:
            prefix = bytes(self.rng.choice(b"ABCZ :") for _ in range(size))  # not digits
        else:
            actual = s.end - s.data_start
            wrong = max(0, actual + self.rng.choice((-3, -1, 1, 2, 7, 10 ** size - 1 - actual)))
            prefix = str(min(wrong, 10 ** size - 1)).zfill(size).encode()
        return payload[: s.start] + prefix + payload[s.data_start :]

    def _garbage(self, payload: bytes, spans: list[Span]) -> bytes:
        size = self.rng.randint(1, 120)
        out = bytes(self.rng.randrange(256) for _ in range(size))
        if answerable_mti(out):  # garbage means no MTI: break the fourth byte
            out = out[:3] + b"X" + out[4:]
        return out

    def _header_lie(self, payload: bytes, spans: list[Span]) -> bytes:
        return payload
