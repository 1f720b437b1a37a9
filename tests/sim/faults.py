"""One seed's fault schedule, drawn up front, and the run's trace.

Every random choice of a run comes from `random.Random` instances seeded from the run's seed
and a name (`"<seed>/net"`, `"<seed>/hsm"`, ...): `random.Random` seeds a string through
SHA-512, not `hash()`, so the draws are the same in every process whatever PYTHONHASHSEED
is, and one subsystem drawing more numbers does not shift another's.

Until `heal_at_s` (virtual seconds) the faults of the schedule apply; from then on there are
none (no loss, no HSM fault, every commit succeeds), so every terminal can finish what it
started and the final checks see a quiet system.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field


def rng(seed: int, name: str) -> random.Random:
    return random.Random(f"{seed}/{name}")


@dataclass(frozen=True)
class Window:
    start_s: float
    end_s: float
    mode: str

    def covers(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


@dataclass(frozen=True)
class Schedule:
    heal_at_s: float
    drop_share: float              # of messages in either direction, lost
    duplicate_share: float         # of messages delivered twice
    delay_s_max: float             # one-way delay drawn uniformly from [0.1 ms, delay_s_max]
    hsm_windows: tuple[Window, ...]
    hsm_flaky_share: float         # of HSM calls outside the windows that fail or stall on their own
    hsm_errors: bool               # the HSM may also answer with its overload error (below)
    commit_fail_share: float       # of ledger commits that fail (full disk or failed fsync) before heal_at_s
    link_down: tuple[tuple[str, Window], ...]  # (terminal id, window): that terminal's link is cut

    @classmethod
    def draw(cls, seed: int, tids: list[str], *, hsm_errors: bool = False) -> "Schedule":
        """`hsm_errors` lets the HSM also answer with its overload error (67, hsm_mock's answer
        over its licensed capacity), in windows and single calls, instead of failing or stalling."""
        r = rng(seed, "schedule")
        heal = r.uniform(3.0, 12.0)
        hsm = []
        for _ in range(r.choice((0, 0, 1, 1, 2, 3))):
            start = r.uniform(0.0, heal)
            modes = ("down", "stall", "overloaded") if hsm_errors else ("down", "stall")
            hsm.append(Window(start, min(heal, start + r.uniform(0.05, 2.5)), r.choice(modes)))
        links = []
        for tid in tids:
            if r.random() < 0.25:
                start = r.uniform(0.0, heal)
                links.append((tid, Window(start, min(heal, start + r.uniform(0.2, 3.0)), "cut")))
        return cls(
            heal_at_s=heal,
            drop_share=r.choice((0.0, 0.02, 0.1, 0.25)),
            duplicate_share=r.choice((0.0, 0.05, 0.2)),
            delay_s_max=r.choice((0.005, 0.05, 0.4, 1.5)),
            hsm_windows=tuple(sorted(hsm, key=lambda w: w.start_s)),
            hsm_flaky_share=r.choice((0.0, 0.0, 0.03, 0.1)),
            hsm_errors=hsm_errors,
            commit_fail_share=r.choice((0.0, 0.0, 0.05, 0.2)),
            link_down=tuple(links),
        )


@dataclass
class Faults:
    """The schedule, asked with the virtual time; counts what it did; holds the trace."""

    schedule: Schedule
    net: random.Random
    ledger: random.Random
    hsm: random.Random
    lines: list[str] = field(default_factory=list)
    now: object = None  # a callable giving the virtual time (set by the world)
    counts: dict[str, int] = field(default_factory=lambda: {"dropped": 0, "duplicated": 0, "commit_failed": 0,
                                                            "link_cut": 0})

    def trace(self, line: str) -> None:
        self.lines.append(f"{self.now():10.6f} {line}")  # type: ignore[misc]

    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.lines).encode()).hexdigest()

    def healed(self, t: float) -> bool:
        return t >= self.schedule.heal_at_s

    def hsm_mode(self, t: float) -> str:
        if self.healed(t):
            return "ok"
        for w in self.schedule.hsm_windows:
            if w.covers(t):
                return w.mode
        if self.hsm.random() < self.schedule.hsm_flaky_share:
            return self.hsm.choice(("down", "stall", "overloaded") if self.schedule.hsm_errors else ("down", "stall"))
        return "ok"

    def link_cut(self, tid: str, t: float) -> bool:
        return any(who == tid and w.covers(t) for who, w in self.schedule.link_down)

    def copies(self, tid: str, t: float) -> list[float]:
        """The delays after which a message sent now arrives: [] lost, one, or two (a duplicate)."""
        s = self.schedule
        if self.healed(t):
            return [self.net.uniform(0.0001, 0.002)]
        if self.link_cut(tid, t):
            self.counts["link_cut"] += 1
            return []
        if self.net.random() < s.drop_share:
            self.counts["dropped"] += 1
            return []
        delays = [self.net.uniform(0.0001, s.delay_s_max)]
        if self.net.random() < s.duplicate_share:
            self.counts["duplicated"] += 1
            delays.append(self.net.uniform(0.0001, s.delay_s_max))
        return delays

    def commit_fault(self, t: float) -> str | None:
        """None (the commit goes through), "full" (SQLITE_FULL: nothing written) or "io" (an
        fsync failed: SQLITE_IOERR, after which the writer must not trust its connection)."""
        if self.healed(t) or self.ledger.random() >= self.schedule.commit_fail_share:
            return None
        kind = self.ledger.choice(("full", "io"))
        self.counts["commit_failed"] += 1
        self.counts[f"commit_failed_{kind}"] = self.counts.get(f"commit_failed_{kind}", 0) + 1
        return kind
