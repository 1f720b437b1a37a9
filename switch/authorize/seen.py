"""Which idempotency keys the store holds, known without asking it: a Bloom filter.

A new message's key (DE41, DE11, DE7) is almost never in the store, yet finding that out
was a SQLite query per message. The filter answers "certainly not stored" exactly (a Bloom
filter has no false negatives: every committed key is added), so only a key it may hold —
a repeat, a duplicate, or a false positive (≈ 1 % by design) — is looked up in the store.

Bound: `bits_per_key` (10) bits per key of capacity, 7 probes (≈ 0.8 % false positives);
the capacity starts at twice the keys stored (at least `capacity_min`, 1,000,000, i.e.
1.2 MiB) and doubles, rebuilt from the store, when it is reached — so memory stays about
2.5 bytes per stored key, whatever their age: there is no horizon, the answer is exact for
every key ever stored.
"""

from __future__ import annotations

from typing import Iterable

MessageKey = tuple[str, str, str]

BITS_PER_KEY = 10
PROBES = 7
CAPACITY_MIN = 1_000_000


class SeenKeys:
    __slots__ = ("bits", "size", "capacity", "count")

    def __init__(self, capacity: int) -> None:
        self.capacity = max(capacity, 1)
        self.size = self.capacity * BITS_PER_KEY
        self.bits = bytearray((self.size + 7) // 8)
        self.count = 0

    @classmethod
    def of(cls, keys: Iterable[MessageKey], *, stored: int, capacity_min: int = CAPACITY_MIN) -> SeenKeys:
        seen = cls(max(capacity_min, 2 * stored))
        for key in keys:
            seen.add(key)
        return seen

    def _probes(self, key: MessageKey) -> list[int]:
        # two independent hashes, combined (Kirsch–Mitzenmacher): enough for a Bloom filter
        # reduced modulo the size first: the same probes ((a + i·b) mod n is ((a mod n) + i·(b mod n))
        # mod n), computed on small ints instead of 64-bit hashes times i, which overflow the
        # compiled module's native ints into Python's arbitrary-precision multiplication
        size = self.size
        h1 = hash(key) % size
        h2 = (hash((key, 0x9E3779B9)) | 1) % size
        return [(h1 + i * h2) % size for i in range(PROBES)]

    def add(self, key: MessageKey) -> None:
        bits = self.bits
        for p in self._probes(key):
            bits[p >> 3] |= 1 << (p & 7)
        self.count += 1

    def may_hold(self, key: MessageKey) -> bool:
        """False: the key is certainly not stored. True: it may be (ask the store)."""
        bits = self.bits
        for p in self._probes(key):
            if not bits[p >> 3] & (1 << (p & 7)):
                return False
        return True

    @property
    def full(self) -> bool:
        return self.count >= self.capacity
