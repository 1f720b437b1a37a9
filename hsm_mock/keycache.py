"""Bounded in-memory caches of key material for the command processor (hsm_mock/commands.py).

A real HSM keeps working keys in its secure memory between commands; this is the software
HSM's equivalent. Two caches per `Hsm`, each bounded by a count (`KEY_CACHE_SIZE_MAX`,
4,096 entries by default; `Hsm(key_cache_size_max=0)` or `key_cache_size_max = 0` in the
`[hsm]` TOML table turns both off):

- keys under the LMK: (algorithm, key type, the key as the host sent it, under the LMK) →
  (clear key, its 6H check value), so a BDK, ZPK or PVK is not decrypted again on every
  command;
- DUKPT: (algorithm, the BDK as the host sent it, under the LMK, KSN) → the TDES transaction
  key (or the AES derivation key) of that KSN, so the request-MAC check, the PIN translation
  and the response MAC of one transaction derive it once.

No cache is ever keyed by a clear key: the keys are what crosses the host interface anyway
(ciphertext under the LMK, KSNs). Values live only in this process's memory: never logged,
never written anywhere, never in a repr or an exception. Least recently used entries go
first once a cache holds `size_max` entries. Safe to share between threads (the only
compound steps tolerate a concurrent eviction).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

KEY_CACHE_SIZE_MAX = 4096


class KeyCache:
    """A least-recently-used map bounded to `size_max` entries (`size_max` ≥ 1)."""

    __slots__ = ("size_max", "_entries")

    def __init__(self, size_max: int = KEY_CACHE_SIZE_MAX) -> None:
        if size_max < 1:
            raise ValueError("a key cache holds at least one entry (0 means no cache: pass None)")
        self.size_max = size_max
        # A plain dict in recency order (it keeps insertion order): a hit is taken out and put
        # back last. Compiled, a dict's get, pop and set are direct calls where an
        # OrderedDict's get and move_to_end were generic method calls (≈ 1,800 instructions a
        # hit; docs/performance.md, "The DES core in rotated halves (kept)").
        self._entries: dict[Hashable, Any] = {}

    def get(self, slot: Hashable) -> Any:
        """The cached value, or None; a hit becomes the most recently used entry."""
        entries = self._entries
        value = entries.pop(slot, None)
        if value is not None:
            entries[slot] = value  # another thread's put of this slot in between: the same key
            if len(entries) > self.size_max:  # another thread's put in between
                self._trim()
        return value

    def put(self, slot: Hashable, value: Any) -> None:
        """Store `value` (not None) as the most recently used entry; evict beyond the bound."""
        entries = self._entries
        entries.pop(slot, None)  # an existing slot moves to the end
        entries[slot] = value
        if len(entries) > self.size_max:
            self._trim()

    def _trim(self) -> None:
        entries = self._entries
        while len(entries) > self.size_max:
            try:
                del entries[next(iter(entries))]  # the least recently used: the first
            except (KeyError, StopIteration, RuntimeError):  # changed by another thread: look again
                continue

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, slot: Hashable) -> bool:
        return slot in self._entries

    def __repr__(self) -> str:  # counts only: never a key or a value
        return f"KeyCache({len(self._entries)}/{self.size_max} entries)"


__all__ = ["KEY_CACHE_SIZE_MAX", "KeyCache"]
