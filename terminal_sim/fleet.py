"""`eum fleet`: N simulated terminals against a switch, measured without coordinated omission.

Each terminal is a real POS in miniature: its own TCP connection, TID/MID, keys, STAN and
KSN counters; it signs on first (0800/001, again after a dropped connection), handles one
transaction at a time, reverses a transaction that got no answer (0400, then 0401 repeats:
below), and sends an echo (0800/301) when idle. What it sends comes from a scenario
(terminal_sim/scenario.py); which terminals and cards it plays, from a population file
(terminal_sim/population.py).

Load model (docs/performance.md, "Latency in the load generator"):
- Open loop (default). Every transaction has an *intended* send time from the arrival
  schedule (Poisson or constant, the total rate split evenly over the terminals, seeded).
  A terminal still busy when its next intended time comes sends it as soon as it is free,
  and that transaction's latency includes the wait: latency = reply time − intended send
  time, so a stalled switch shows in the percentiles instead of silencing the sampler
  (wrk2's fix for coordinated omission). A terminal woken within EARLY_SEND_S of its
  intended time sends at once, and then latency = reply − min(intended, sent).
- Closed loop (`closed_loop=True`, capacity search). Each terminal keeps
  `in_flight_per_terminal_max` requests outstanding and sends the next as soon as one is
  answered; latency = reply − send.
Latencies go, in microseconds, into HdrHistogram(1, 60_000_000, 3): counted at its
resolution as they come (`Latencies`, a dict of bucket → count; hdrh's own recording is
several Python calls a value) and made into the HdrHistogram once, for the report. `service_ms`
in the report is reply − actual send for the same transactions: the gap between the two is
the queueing the open-loop view exposes.

Reversals go through the terminal's store-and-forward queue (terminal_sim/saf.py;
docs/host-interface.md, "Store-and-forward: the terminal's timeout, reversal and advice
schedule"), `<state_dir>/<TID>.saf.jsonl`: a timed-out purchase's or refund's 0400, and the
scenario's own reversals, are on disk (fsync'd, off the event loop) before their first send,
and leave it only when the switch acknowledges them (00, or a final decline). A terminal
sends what is due in its queue before each new transaction and when idle; an unanswered
try is repeated (0401) at once, one answered 58/91/96 a response timeout after it was sent,
at most 1 + `reversal_repeats_max` tries per connection; a new connection (reconnect,
switch restart, the next run) resumes the queue at once. What is owed when the run ends
stays queued and is sent first on the next run, as a POS keeps it across power-off. An old
state file's `pending_reversals` is moved into the queue once.

Bounded: no new message leaves after `duration_s`; what is in flight gets at most
`response_timeout_ms` more (the drain).

KSN counters (docs/security.md: the switch answers 63 to a reused counter) live in
`state_dir/<TID>.json` (the `eum terminal` state format). Before traffic, each DUKPT
terminal *reserves* a block of counters by writing a KSN beyond the ones it will use (and
another block when that one is spent); the exact counter is written at the end. A crash
therefore wastes counters but never reuses one.

Several switches (`switches`, `eum fleet --switch H:P,H:P,…`; docs/scale-out.md, "Several
instances by member ownership"): terminal i connects first to switch i mod N, so the
terminals are spread evenly. When its connection drops or cannot be opened it reconnects to
the next switch in the list (round robin from its current one) with the usual backoff, and
signs on there; repeats and reversals of what was in flight go out on the new connection.
Each scenario transaction is counted against the switch it was sent to (`by_switch`).

Responses are matched to requests by DE11 (the connection is the terminal, so DE41 is
implied); a response with the STAN of a request that timed out is counted late and dropped.
A response whose STAN matches nothing this terminal sent (a peer that does not echo DE11,
like benchmarks/responder.py) answers the oldest outstanding request.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple

from hdrh.histogram import HdrHistogram

from hsm_mock import dukpt
from switch.wire.codec import Dialect, encode_fields, load_dialect
from switch.wire.framing import frame
from switch.wire.transport import Deadlines

from .client import DEFAULT_TPDU, AnswerStream
from .population import Population, PopulationCard, PopulationError, PopulationTerminal, load_population
from .scenario import ARRIVALS, KINDS, Scenario, ScenarioError, arrival_offsets, load_scenario
from .security import (DUKPT_PROFILES, PROFILE_MAC, PROFILE_TDES, SECURED_MTIS, SecurityError, TakSecurity,
                       TerminalSecurity, mac_field)
from .pan_vault import PanVault, PanVaultError
from .saf import Forwarded, SafError, SafQueue, SafSchedule, Verdict, adopt_pending_reversals, forward
from .terminal import Terminal

__all__ = ["FleetConfig", "FleetConfigError", "FleetError", "FleetReport", "REPORT_KEYS", "Population",
           "PopulationError", "Scenario", "ScenarioError", "load_population", "load_scenario", "run_fleet"]

# Every time in the fleet is this clock's, in seconds. Not loop.time(): uvloop's is whole
# milliseconds, cached once per loop iteration.
now = time.perf_counter

LATENCY_US_MIN = 1
LATENCY_US_MAX = 60_000_000
LATENCY_DIGITS = 3
PERCENTILES = (0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 75.0, 80.0, 90.0, 95.0, 97.5, 99.0, 99.5, 99.75,
               99.9, 99.95, 99.99, 99.995, 99.999, 100.0)
CONNECT_CONCURRENCY_MAX = 64  # terminals connecting and signing on at once at the start
RECONNECT_BACKOFF_S_MAX = 1.0
REFUNDABLE_MAX = 32  # approved purchases a terminal remembers for refunds
# uvloop rounds a timer's delay to whole milliseconds from the loop time cached at the start of
# the iteration, so a sleep may end up to about a millisecond before its time; a terminal
# woken that close to its intended send time sends at once (its latency then counts from
# the send) instead of sleeping the remainder, which uvloop rounds to 0 ms: the loop spun.
EARLY_SEND_S = 0.001
TIMED_OUT_REMEMBERED_MAX = 64  # STANs whose late answers are recognised as late
KSN_BLOCK_MIN = 256
PROGRESS_INTERVAL_S = 0.5
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8583
CARDS_STATE = "cards"  # <state_dir>/cards.json: cards whose last PIN from the fleet was wrong (PANs sealed)
STATE_DIR = "terminals/fleet"  # relative to the cwd, outside the switch's data dir `var`


class FleetError(RuntimeError):
    """The fleet could not run: a terminal cannot connect or sign on."""


class FleetConfigError(ValueError):
    """A fleet setting is out of range or contradicts another; names the setting."""


@dataclass(frozen=True, kw_only=True)
class FleetConfig:
    """Every default of a fleet run. Relationships between settings are checked here."""

    population: Population
    # The switch: `host`/`port`, or several in `switches` ((host, port), …); each fills in the
    # other (host/port are the first switch). Both given: host/port must be the first switch.
    host: str | None = None
    port: int | None = None
    switches: tuple[tuple[str, int], ...] = ()
    terminals: int = 10
    rate_per_s: float = 100.0
    duration_s: float = 10.0
    arrivals: str = "poisson"
    closed_loop: bool = False
    in_flight_per_terminal_max: int = 1
    scenario: Scenario = field(default_factory=lambda: load_scenario("standard"))
    response_timeout_ms: float = 2000.0
    seed: int = 1
    progress: bool = True
    dialect: str = "default"
    state_dir: Path | None = Path(STATE_DIR)  # None: counters only in memory (a bare responder)

    def __post_init__(self) -> None:
        self._resolve_switches()
        if self.state_dir is not None:
            object.__setattr__(self, "state_dir", Path(self.state_dir))
        available = len(self.population.terminals)
        pool = self.scenario.pools.terminals
        if self.terminals < 1 or self.terminals > available:
            raise FleetConfigError(f"terminals must be 1..{available} (the population's terminals)")
        if pool and self.terminals > pool:
            raise FleetConfigError(f"terminals ({self.terminals}) exceeds the scenario's pools.terminals ({pool})")
        if not self.closed_loop and not self.rate_per_s > 0:
            raise FleetConfigError("rate_per_s must be positive (open loop)")
        if not self.duration_s > 0:
            raise FleetConfigError("duration_s must be positive")
        if self.arrivals not in ARRIVALS:
            raise FleetConfigError(f"arrivals must be one of {', '.join(ARRIVALS)}")
        if self.in_flight_per_terminal_max < 1:
            raise FleetConfigError("in_flight_per_terminal_max must be at least 1")
        if self.in_flight_per_terminal_max > 1 and not self.closed_loop:
            raise FleetConfigError("in_flight_per_terminal_max > 1 needs closed_loop: an open-loop POS "
                                   "handles one transaction at a time")
        if not self.response_timeout_ms > 0:
            raise FleetConfigError("response_timeout_ms must be positive")
        if self.dialect != self.population.dialect:
            raise FleetConfigError(f"dialect {self.dialect!r} differs from the population's "
                                   f"({self.population.dialect!r})")

    def _resolve_switches(self) -> None:
        if not self.switches:
            host = DEFAULT_HOST if self.host is None else self.host
            port = DEFAULT_PORT if self.port is None else self.port
            switches: tuple[tuple[str, int], ...] = ((host, port),)
        else:
            switches = tuple((h, p) for h, p in self.switches)
            first = switches[0]
            if (self.host is not None and self.host != first[0]) or (self.port is not None and self.port != first[1]):
                given = f"{first[0] if self.host is None else self.host}:{first[1] if self.port is None else self.port}"
                raise FleetConfigError(f"host/port ({given}) differ from the first of switches "
                                       f"({first[0]}:{first[1]}): give one or the other")
        for host, port in switches:
            if not isinstance(host, str) or not host:
                raise FleetConfigError(f"switches: {host!r}:{port} has no host")
            if not isinstance(port, int) or not 0 < port < 65536:
                raise FleetConfigError("port must be 1..65535" + (f" ({host}:{port})" if len(switches) > 1 else ""))
        object.__setattr__(self, "switches", switches)
        object.__setattr__(self, "host", switches[0][0])
        object.__setattr__(self, "port", switches[0][1])

    @property
    def switch_names(self) -> tuple[str, ...]:
        """Each switch as `host:port`, in order: the keys of the report's `by_switch`."""
        return tuple(f"{h}:{p}" for h, p in self.switches)


# ---------------------------------------------------------------------------- report

REPORT_KEYS = (
    "started_at", "duration_s", "elapsed_s", "mode", "arrivals", "terminals", "scenario", "seed",
    "target_per_s", "offered", "offered_per_s", "sent", "unsent", "responses", "achieved_per_s",
    "approved", "approved_per_s", "timeouts", "late_responses", "unmatched_responses",
    "reversals_sent", "reversal_repeats_sent", "reversals_answered", "reversals_unanswered",
    "saf_refused", "saf_attention", "echoes_sent", "echo_failures", "connection_drops", "reconnects", "mac_invalid",
    "mac_missing",
    "pin_purchases", "wrong_pins_sent", "by_rc", "by_kind", "by_switch", "latency_ms", "service_ms", "series",
    "histogram", "percentiles",
)


@dataclass
class FleetReport:
    """What a run measured. JSON (`to_json`) keys, all always present:

    - started_at (ISO 8601 UTC), duration_s (configured), elapsed_s (with sign-on and drain),
      mode ("open" | "closed"), arrivals, terminals, scenario, seed;
    - target_per_s (configured rate; null in closed loop), offered (intended transactions in
      the run; in closed loop the transactions sent), offered_per_s = offered / duration_s,
      sent, unsent (offered but never sent: the terminals' backlog at the end; 0 in closed
      loop), responses, achieved_per_s = responses / duration_s,
      approved (DE39 00 of scenario transactions: purchase, refund, balance, reversal),
      approved_per_s;
    - timeouts (no answer within response_timeout_ms, or the connection dropped first):
      sent == responses + timeouts; late_responses (answers after their timeout),
      unmatched_responses (answers whose DE11 matched no request: given to the oldest
      outstanding one, as from a peer that does not echo DE11; or undecodable);
    - reversals_sent (0400 for timed-out purchases/refunds), reversal_repeats_sent (0401, for
      those and for scenario reversals left unacknowledged), reversals_answered (queued
      reversals acknowledged: 00 or a final decline; a 58/91/96 answer is not one),
      reversals_unanswered (still in the terminals' store-and-forward queues at the end, for
      the next run), saf_refused (of the acknowledged, those refused with a final decline
      such as 25 or 30: kept in the queue file's `refused` list for the operator),
      saf_attention (queued entries older than an hour or sent 6 times: terminal_sim/saf.py);
    - echoes_sent, echo_failures, connection_drops, reconnects (connections signed on again
      during the run after one dropped, at whichever switch; a first connection is not one,
      even to the next switch), mac_invalid (a response MAC that does not verify), mac_missing
      (an approval of a secured request without a MAC);
    - pin_purchases, wrong_pins_sent;
    - by_rc {DE39: count} over scenario responses; by_kind {kind: {sent, responses, approved,
      timeouts}} for purchase/refund/balance/reversal (timeout reversals are not in it);
    - by_switch {"host:port": {sent, responses, approved, timeouts, connects, by_kind}} for
      every configured switch in order: the scenario transactions sent to it (each counted
      where it was sent; they sum to the totals), `connects` the sign-ons it accepted (first
      connections and reconnects), by_kind as above for that switch alone;
    - latency_ms and service_ms {p50, p90, p99, p999, max, mean} (null when nothing answered);
    - series [{t, sent, responses, approved, p99_ms}] per second from the start (sent by
      send time, the rest by reply time);
    - histogram: the latency HdrHistogram, hdrh-encoded (HdrHistogram.decode); percentiles:
      [[percentile %, ms], ...] for plotting.
    """

    started_at: str
    duration_s: float
    elapsed_s: float
    mode: str
    arrivals: str
    terminals: int
    scenario: str
    seed: int
    target_per_s: float | None
    offered: int
    offered_per_s: float
    sent: int
    unsent: int
    responses: int
    achieved_per_s: float
    approved: int
    approved_per_s: float
    timeouts: int
    late_responses: int
    unmatched_responses: int
    reversals_sent: int
    reversal_repeats_sent: int
    reversals_answered: int
    reversals_unanswered: int
    saf_refused: int
    saf_attention: int
    echoes_sent: int
    echo_failures: int
    connection_drops: int
    reconnects: int
    mac_invalid: int
    mac_missing: int
    pin_purchases: int
    wrong_pins_sent: int
    by_rc: dict[str, int]
    by_kind: dict[str, dict[str, int]]
    by_switch: dict[str, dict[str, Any]]
    latency_ms: dict[str, float | None]
    service_ms: dict[str, float | None]
    series: list[dict[str, Any]]
    histogram: str
    percentiles: list[tuple[float, float]]
    latency_histogram: HdrHistogram = field(repr=False, compare=False)
    service_histogram: HdrHistogram = field(repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        out = {key: getattr(self, key) for key in REPORT_KEYS}
        out["percentiles"] = [list(p) for p in self.percentiles]
        return json.loads(json.dumps(out))  # plain JSON types only (tuples → lists)

    def approved_of(self, kind: str) -> int:
        return self.by_kind.get(kind, {}).get("approved", 0)


# HdrHistogram(1, LATENCY_US_MAX, 3) keeps 2,048 sub-buckets a bucket (the smallest power of
# two ≥ 2 × 10^3): a value below 2,048 is its own bucket, and a larger one shares its bucket
# with the values that agree with it above its lowest `bit_length() - 11` bits.
LATENCY_SUB_BUCKET_BITS = 11


class Latencies:
    """Latencies in µs, counted as HdrHistogram(LATENCY_US_MIN, LATENCY_US_MAX, LATENCY_DIGITS)
    counts them: by bucket, each value under its bucket's lowest value (`bucket`), in a dict.
    The fleet's hot path inlines `record` (_Recorder.answered). Percentiles are hdrh's, in one
    pass over the buckets in order (`values_at`); `histogram()` is the HdrHistogram itself,
    with the same counts, so the same percentiles, maximum and encoding. Bounded as hdrh's
    counts array is: at most 17,408 buckets (16 of 2,048, the upper half of each above the
    first), whatever the run's length."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0

    @staticmethod
    def bucket(us: int) -> int:
        shift = us.bit_length() - LATENCY_SUB_BUCKET_BITS
        return us if shift <= 0 else us >> shift << shift

    @staticmethod
    def highest(bucket: int) -> int:
        """The highest value sharing `bucket` (hdrh's highest equivalent value)."""
        shift = bucket.bit_length() - LATENCY_SUB_BUCKET_BITS
        return bucket if shift <= 0 else bucket + (1 << shift) - 1

    def record(self, us: int) -> None:
        key = self.bucket(us)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.total += 1

    def values_at(self, percentiles: Iterable[float]) -> dict[float, int]:
        """hdrh's `get_value_at_percentile` for each: the first bucket, in order, at which the
        count reaches max(1, int(p / 100 × total + 0.5)) (p at most 100); its highest value, or
        its lowest for p = 0. Nothing recorded: 0 for each."""
        wanted = sorted(set(percentiles))
        out = {p: 0 for p in wanted}
        if not self.total:
            return out
        targets = [(p, max(int(min(p, 100.0) * self.total / 100 + 0.5), 1)) for p in wanted]
        i, seen = 0, 0
        for key in sorted(self.counts):
            seen += self.counts[key]
            while i < len(targets) and seen >= targets[i][1]:
                p = targets[i][0]
                out[p] = self.highest(key) if p else key
                i += 1
            if i == len(targets):
                break
        return out

    def max_value(self) -> int:
        return self.highest(max(self.counts)) if self.counts else 0

    def histogram(self) -> HdrHistogram:
        h = HdrHistogram(LATENCY_US_MIN, LATENCY_US_MAX, LATENCY_DIGITS)
        for key, n in sorted(self.counts.items()):
            h.record_value(key, n)
        return h


class _Second:
    __slots__ = ("sent", "responses", "approved", "latencies_us")

    def __init__(self) -> None:
        self.sent = 0
        self.responses = 0
        self.approved = 0
        self.latencies_us: list[int] = []


def _summary_ms(h: Latencies, total_us: int) -> dict[str, float | None]:
    """Percentiles from the histogram, in one pass; the mean from the exact sum (hdrh's own
    mean walks every bucket: ~0.1 s)."""
    count = h.total
    if count == 0:
        return {k: None for k in ("p50", "p90", "p99", "p999", "max", "mean")}
    pct = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
    values = h.values_at(pct.values())
    out: dict[str, float | None] = {k: values[p] / 1000 for k, p in pct.items()}
    out["max"] = h.max_value() / 1000
    out["mean"] = round(total_us / count / 1000, 3)
    return out


def _p99_ms(latencies_us: list[int]) -> float | None:
    if not latencies_us:
        return None
    ordered = sorted(latencies_us)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] / 1000


class _Recorder:
    """Counters and histograms of one run. Times are `now()` seconds; t0 is the start."""

    def __init__(self, switches: tuple[str, ...]) -> None:
        self.t0 = 0.0
        self.latency = Latencies()
        self.service = Latencies()
        self.latency_total_us = 0
        self.service_total_us = 0
        self.kinds: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
        self.by_rc: Counter[str] = Counter()
        self.seconds: list[_Second] = []
        self.n: Counter[str] = Counter()  # the report's scalar counters, by report key
        # per switch ("host:port"): kind → counts, and the sign-ons it accepted
        self.switch_kinds: dict[str, dict[str, Counter[str]]] = {s: {k: Counter() for k in KINDS} for s in switches}
        self.switch_connects: Counter[str] = Counter({s: 0 for s in switches})

    def connected(self, switch: str) -> None:
        self.switch_connects[switch] += 1

    def by_switch(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, kinds in self.switch_kinds.items():
            per_kind = {k: {c: kinds[k][c] for c in ("sent", "responses", "approved", "timeouts")} for k in KINDS}
            totals = {c: sum(v[c] for v in per_kind.values()) for c in ("sent", "responses", "approved", "timeouts")}
            out[name] = {**totals, "connects": self.switch_connects[name], "by_kind": per_kind}
        return out

    def _second(self, at: float) -> _Second:
        i = max(0, int(at - self.t0))
        while len(self.seconds) <= i:
            self.seconds.append(_Second())
        return self.seconds[i]

    def sent(self, kind: str, at: float, switch: str) -> None:
        self.kinds[kind]["sent"] += 1
        self.switch_kinds[switch][kind]["sent"] += 1
        self.n["sent"] += 1
        self._second(at).sent += 1

    def answered(self, kind: str, rc: str, *, intended: float, sent_at: float, at: float, switch: str) -> None:
        us = min(max(round((at - intended) * 1e6), LATENCY_US_MIN), LATENCY_US_MAX)
        service_us = min(max(round((at - sent_at) * 1e6), LATENCY_US_MIN), LATENCY_US_MAX)
        # Latencies.record, inlined (two a transaction)
        shift = us.bit_length() - LATENCY_SUB_BUCKET_BITS
        key = us if shift <= 0 else us >> shift << shift
        counts = self.latency.counts
        counts[key] = counts.get(key, 0) + 1
        self.latency.total += 1
        shift = service_us.bit_length() - LATENCY_SUB_BUCKET_BITS
        key = service_us if shift <= 0 else service_us >> shift << shift
        counts = self.service.counts
        counts[key] = counts.get(key, 0) + 1
        self.service.total += 1
        self.latency_total_us += us
        self.service_total_us += service_us
        counts = self.kinds[kind]
        counts["responses"] += 1
        at_switch = self.switch_kinds[switch][kind]
        at_switch["responses"] += 1
        self.n["responses"] += 1
        self.by_rc[rc] += 1
        second = self._second(at)
        second.responses += 1
        second.latencies_us.append(us)
        if rc == "00":
            counts["approved"] += 1
            at_switch["approved"] += 1
            self.n["approved"] += 1
            second.approved += 1

    def timed_out(self, kind: str, switch: str) -> None:
        self.kinds[kind]["timeouts"] += 1
        self.switch_kinds[switch][kind]["timeouts"] += 1
        self.n["timeouts"] += 1

    def series(self) -> list[dict[str, Any]]:
        return [{"t": i, "sent": s.sent, "responses": s.responses, "approved": s.approved,
                 "p99_ms": _p99_ms(s.latencies_us)} for i, s in enumerate(self.seconds)]

    def progress_text(self, now: float, duration_s: float) -> str:
        elapsed = now - self.t0
        last = self.seconds[int(elapsed) - 1] if 1 <= int(elapsed) <= len(self.seconds) else None
        rate = last.responses if last else 0
        p99 = self.latency.values_at((99.0,))[99.0] / 1000
        declines = self.n["responses"] - self.n["approved"]
        return (f"{min(elapsed, duration_s):6.1f}/{duration_s:g} s  {rate:>5}/s  p99 {p99:7.1f} ms  "
                f"sent {self.n['sent']:>7}  declines {declines:>5}  timeouts {self.n['timeouts']:>4}")


# ---------------------------------------------------------------------------- the wire

class _Answer(NamedTuple):
    fields: dict[str, str]
    payload: bytes  # the ISO message as received: the response-MAC input
    at: float  # now() when the frame was complete


TIMED_OUT = "timed out"
DROPPED = "dropped"


class _Link(AnswerStream):
    """One terminal's TCP connection: frames out; frames in (AnswerStream), handed to the
    waiter of their DE11."""

    def __init__(self, dialect: Dialect, rec: _Recorder) -> None:
        super().__init__(dialect)
        self.rec = rec
        self.waiters: OrderedDict[str, asyncio.Future] = OrderedDict()
        self.timed_out: OrderedDict[str, None] = OrderedDict()
        self.loop = asyncio.get_running_loop()

    def undecodable(self) -> None:
        self.rec.n["unmatched_responses"] += 1

    def answered(self, fields: dict[str, str], payload: bytes, at: float) -> None:
        self._deliver(_Answer(fields, payload, at))

    def _deliver(self, answer: _Answer) -> None:
        stan = answer.fields.get("11", "")
        waiter = self.waiters.pop(stan, None)
        if waiter is None:
            if stan in self.timed_out:
                self.rec.n["late_responses"] += 1
                return
            if not self.waiters:
                self.rec.n["unmatched_responses"] += 1
                return
            self.rec.n["unmatched_responses"] += 1  # a peer that does not echo DE11: oldest first
            _, waiter = self.waiters.popitem(last=False)
        if not waiter.done():
            waiter.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost:
            self.rec.n["connection_drops"] += 1
        self.lost = True
        for waiter in self.waiters.values():
            if not waiter.done():
                waiter.set_result(DROPPED)
        self.waiters.clear()

    def send(self, stan: str, data: bytes) -> asyncio.Future:
        waiter = self.loop.create_future()
        if self.lost or self.transport is None or self.transport.is_closing():
            waiter.set_result(DROPPED)
            return waiter
        self.waiters[stan] = waiter
        self.transport.write(data)
        return waiter

    def forget(self, stan: str, waiter: asyncio.Future) -> None:
        if self.waiters.get(stan) is waiter:
            del self.waiters[stan]
        self.timed_out[stan] = None
        if len(self.timed_out) > TIMED_OUT_REMEMBERED_MAX:
            self.timed_out.popitem(last=False)

    def close(self) -> None:
        self.lost = True  # ours, not a drop: later sends get DROPPED at once
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(TIMED_OUT)


# ---------------------------------------------------------------------------- state files

class _StateStore:
    """`<dir>/<TID>.json`: stan, mid, security (profile, keys, initial and current KSN); the
    format `eum terminal` keeps (owed reversals are in `<dir>/<TID>.saf.jsonl`, saf.py).
    `<dir>/cards.json`: the cards whose last PIN was wrong (never a PIN; the PANs sealed under
    `<dir>/.pan.key`, terminal_sim/pan_vault.py). Written atomically."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.vault = None if directory is None else PanVault(directory)

    def load_wrong_pins(self) -> set[str]:
        """The PANs whose last PIN was wrong; an older file's clear PANs are read as they are."""
        listed = self.load(CARDS_STATE).get("pin_wrong_last", ())
        if self.vault is None:
            return set()
        try:
            return {self.vault.open(p) for p in listed}
        except PanVaultError as exc:
            raise FleetError(f"state file {CARDS_STATE}.json: {exc}") from None

    def save_wrong_pins(self, pans: set[str]) -> None:
        if self.vault is not None:
            self.save(CARDS_STATE, {"pin_wrong_last": [self.vault.seal(p) for p in sorted(pans)]})

    def load(self, name: str) -> dict[str, Any]:
        if self.directory is None:
            return {}
        path = self.directory / f"{name}.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, OSError) as exc:
            raise FleetError(f"state file {path} is unreadable ({exc})") from None

    def save(self, name: str, state: dict[str, Any]) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)


def _security_for(spec: PopulationTerminal, stored: dict[str, Any]) -> TerminalSecurity | TakSecurity | None:
    """The terminal's keys: continue the stored KSN when the state is of the same injected
    key, else start at the population's initial KSN (re-provisioned)."""
    if spec.security == PROFILE_MAC:
        return TakSecurity.for_test_keys()
    if spec.security not in DUKPT_PROFILES:
        return None
    st = stored.get("security") or {}
    same = (st.get("profile") == spec.security and st.get("keys", "test") == spec.keys
            and str(st.get("initial_ksn", "")).upper() == spec.ksn.upper())
    if same:
        try:
            return TerminalSecurity.from_state(st)
        except SecurityError as exc:
            raise FleetError(f"terminal {spec.tid}: stored security state is unusable ({exc})") from None
    return TerminalSecurity.for_test_keys(spec.security, spec.ksn)


def _ksn_with_counter(profile: str, ksn: str, counter: int) -> str:
    if profile == PROFILE_TDES:
        value = (int(ksn, 16) & ~dukpt.TDES_COUNTER_MASK) | counter
        return f"{value:0{len(ksn)}X}"
    return ksn[:-8] + f"{counter:08X}"


def _counter_max(profile: str) -> int:
    return dukpt.TDES_COUNTER_MASK if profile == PROFILE_TDES else 0xFFFFFFFF


# ---------------------------------------------------------------------------- one terminal

@dataclass(eq=False)
class _Approved:
    fields: dict[str, str]  # the original as built (no PIN block, no MAC)
    rrn: str


@dataclass
class _RunContext:
    loop: asyncio.AbstractEventLoop
    config: FleetConfig
    dialect: Dialect
    rec: _Recorder
    store: _StateStore
    cards: tuple[PopulationCard, ...]
    pin_cards: tuple[PopulationCard, ...]
    ksn_block: int
    card_pins: dict[str, str] = field(default_factory=dict)
    pin_wrong_last: set[str] = field(default_factory=set)  # PANs whose last PIN from the fleet was wrong
    end: float = float("inf")
    # every terminal's request awaiting its answer, by deadline: one timer for the fleet, not a
    # call_later handle per request (switch/wire/transport.py)
    deadlines: Deadlines = field(default_factory=lambda: Deadlines(_expire))
    # config.switch_names, formatted once: each transaction names its switch in the report
    switch_names: tuple[str, ...] = ()

    @property
    def timeout_s(self) -> float:
        return self.config.response_timeout_ms / 1000

    @property
    def scenario(self) -> Scenario:
        return self.config.scenario


class _SimTerminal:
    def __init__(self, spec: PopulationTerminal, ctx: _RunContext, index: int = 0) -> None:
        self.spec = spec
        self.ctx = ctx
        # The switch this terminal connects to (its index in config.switches): i mod N at
        # first, the next one in the list after a drop or a failed attempt.
        self.switch_index = index % len(ctx.config.switches)
        stored = ctx.store.load(spec.tid)
        self.builder = Terminal(spec.tid, spec.mid, stan=int(stored.get("stan", 0)))
        self.security = _security_for(spec, stored)
        # Reversals owed, oldest first, on disk before they are sent (saf.py). Each connection
        # gives each one 1 + reversal_repeats_max tries; the interval is the response timeout.
        schedule = SafSchedule(repeat_interval_s=ctx.timeout_s,
                               tries_per_connection_max=ctx.scenario.terminal.reversal_repeats_max + 1)
        try:
            self.saf = SafQueue.for_terminal(ctx.config.state_dir, spec.tid, schedule=schedule)
            adopt_pending_reversals(self.saf, stored)  # an old state file's; the next save drops them
        except SafError as exc:
            raise FleetError(f"terminal {spec.tid}: {exc}") from None
        self._saf_link = _SafLink(self)
        self._reversal_lock = asyncio.Lock()
        self.link: _Link | None = None
        self.refundable: list[_Approved] = []
        self.last_purchase: _Approved | None = None
        self.last_activity = 0.0
        self.ksn_reserved = 0
        self.rng = random.Random(f"{ctx.config.seed}:plan:{spec.tid}")
        self._link_lock = asyncio.Lock()

    # -- state and keys

    def _state(self, *, security_state: dict[str, Any] | None = None) -> dict[str, Any]:
        state: dict[str, Any] = {"stan": self.builder.stan, "mid": self.spec.mid,
                                 "security": security_state or (self.security.to_state() if self.security
                                                                else {"profile": "none"})}
        return state

    def reserve_ksns(self) -> None:
        """Write a KSN `ksn_block` counters ahead before using any of them."""
        if not isinstance(self.security, TerminalSecurity):
            return
        sec = self.security
        self.ksn_reserved = min(sec.counter + self.ctx.ksn_block, _counter_max(sec.profile))
        ahead = {**sec.to_state(), "ksn": _ksn_with_counter(sec.profile, sec.ksn, self.ksn_reserved)}
        self.ctx.store.save(self.spec.tid, self._state(security_state=ahead))

    def save(self) -> None:
        self.ctx.store.save(self.spec.tid, self._state())

    def _secure(self, fields: dict[str, str], pin: str | None, pan: str | None, *,
                fresh_ksn: bool = False) -> tuple[dict[str, str], bytes]:
        sec = self.security
        if sec is None or fields.get("t") not in SECURED_MTIS:
            return fields, encode_fields(fields, self.ctx.dialect)
        secured = sec.protect(fields, pin=pin, pan=pan, fresh_ksn=fresh_ksn)
        if isinstance(sec, TerminalSecurity) and sec.counter >= self.ksn_reserved:
            self.reserve_ksns()
        return secured, sec.sign(encode_fields(secured, self.ctx.dialect), ksn=secured.get("53"))

    def _check_mac(self, secured: dict[str, str], answer: _Answer) -> None:
        if self.security is None or secured.get("t") not in SECURED_MTIS:
            return
        if mac_field(answer.fields) in answer.fields:
            if not self.security.verify_response(answer.payload, ksn=secured.get("53")):
                self.ctx.rec.n["mac_invalid"] += 1
        elif answer.fields.get("39") == "00":
            self.ctx.rec.n["mac_missing"] += 1  # an approval nobody signed is worth nothing

    # -- the connection

    @property
    def switch(self) -> str:
        """The switch of the current (or next) connection, as `host:port`."""
        return self.ctx.switch_names[self.switch_index]

    def _next_switch(self) -> None:
        self.switch_index = (self.switch_index + 1) % len(self.ctx.config.switches)

    async def connect(self) -> None:
        """Connect and sign on, to this terminal's first switch or else to each next one in
        turn; FleetError when every switch fails (the start of a run)."""
        problems = []
        for _ in self.ctx.config.switches:
            problem = await self._connect_once()
            if not problem:
                return
            problems.append(problem)
            self._next_switch()
        raise FleetError(f"terminal {self.spec.tid}: {'; '.join(problems)}")

    async def _connect_once(self) -> str:
        loop, ctx = self.ctx.loop, self.ctx
        host, port = ctx.config.switches[self.switch_index]
        try:
            _, link = await asyncio.wait_for(
                loop.create_connection(lambda: _Link(ctx.dialect, ctx.rec), host, port), ctx.timeout_s)
        except (OSError, asyncio.TimeoutError) as exc:
            return f"cannot connect to {host}:{port} ({type(exc).__name__}: {exc})"
        self.link = link
        _, answer, _ = await self._exchange(self.builder.sign_on())
        rc = answer.fields.get("39") if isinstance(answer, _Answer) else None
        if rc != "00":
            link.close()
            self.link = None
            where = f" at {host}:{port}" if len(ctx.config.switches) > 1 else ""
            return (f"sign-on {answer}" if rc is None else f"sign-on answered {rc}") + where
        ctx.rec.connected(self.switch)
        self.saf.connection_opened()  # what is queued is due again, at once
        return ""

    async def _ensure_link(self) -> bool:
        """A signed-on connection, reconnecting (with backoff) until the run's end, each try
        to the next switch of the list (the same one when there is one)."""
        link = self.link
        if link is not None and not link.lost and not self._link_lock.locked():  # nothing to wait for
            return now() < self.ctx.end
        async with self._link_lock:
            backoff = 0.05
            while self.link is None or self.link.lost:
                if now() >= self.ctx.end:
                    return False
                self._next_switch()
                if not await self._connect_once():
                    self.ctx.rec.n["reconnects"] += 1
                    break
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_BACKOFF_S_MAX)
        return now() < self.ctx.end

    def close(self) -> None:
        if self.link is not None:
            self.link.close()

    async def _exchange(self, fields: dict[str, str], *, pin: str | None = None,
                        pan: str | None = None) -> tuple[dict[str, str], _Answer | str, float]:
        """Send one request; its answer, TIMED_OUT or DROPPED after at most the response timeout."""
        secured, payload = self._secure(fields, pin, pan)
        link = self.link
        assert link is not None
        data = frame(self.ctx.dialect.framing, payload,
                     tpdu=DEFAULT_TPDU if self.ctx.dialect.framing.tpdu else b"")
        sent_at = now()
        self.last_activity = sent_at
        stan = secured["11"]
        waiter = link.send(stan, data)
        self.ctx.deadlines.add(self.ctx.loop, waiter, self.ctx.timeout_s)
        answer = await waiter
        if answer is TIMED_OUT:
            link.forget(stan, waiter)
        elif isinstance(answer, _Answer):
            self._check_mac(secured, answer)
        return secured, answer, sent_at

    # -- behaviour

    async def idle_until(self, intended: float) -> None:
        """Wait for an intended send time, sending what falls due in the store-and-forward
        queue meanwhile and echoing (0800/301) when idle too long."""
        ctx = self.ctx
        echo_idle_s = ctx.scenario.terminal.echo_idle_s
        while True:
            t = now()
            if intended <= t + EARLY_SEND_S:
                return
            saf_in = self.saf.due_in()
            if saf_in == 0.0 and t < ctx.end and (await self.settle_reversals()).tries:
                continue
            echo_at = self.last_activity + echo_idle_s
            if echo_at <= t and echo_at < intended and echo_at < ctx.end:
                await self.echo()
                continue
            wake = intended
            if echo_at < min(intended, ctx.end):
                wake = echo_at
            if saf_in and t + saf_in < min(wake, ctx.end):
                wake = t + saf_in
            await asyncio.sleep(wake - t)  # may wake a little early (uvloop): check again

    async def echo(self) -> None:
        if not await self._ensure_link():
            return
        self.ctx.rec.n["echoes_sent"] += 1
        _, answer, _ = await self._exchange(self.builder.echo())
        if not isinstance(answer, _Answer) or answer.fields.get("39") != "00":
            self.ctx.rec.n["echo_failures"] += 1

    async def transact(self, intended: float | None) -> bool:
        """One scenario transaction intended at `intended` (None: closed loop, when sent).
        False: it could not be sent before the run's end (counted unsent)."""
        if not await self._ensure_link():
            return False
        if self.saf.next_due() is not None:
            await self.settle_reversals()
            if now() >= self.ctx.end or not await self._ensure_link():
                return False
        kind, fields, pin, pan = self._plan()
        rec = self.ctx.rec
        owed = None
        if kind == "reversal":  # on disk, secured, before it leaves: one write for both
            fields, _ = self._secure(fields, None, None)
            owed = await self._saf_do(self.saf.enqueue, fields, sending=True)
        switch = self.switch  # where this one goes: _exchange uses the link as it is
        _, answer, sent_at = await self._exchange(fields, pin=pin, pan=pan)
        rec.sent(kind, sent_at, switch)
        if pin is not None:
            self._note_pin(pan, pin, answer)
        if isinstance(answer, _Answer):
            rc = answer.fields.get("39", "")
            rec.answered(kind, rc, intended=sent_at if intended is None else min(intended, sent_at), sent_at=sent_at,
                         at=answer.at, switch=switch)
            if rc == "00":
                self._approved(kind, fields, answer)
            if owed is not None and self._saf_answered(owed.seq, rc) is Verdict.REFUSED:
                rec.n["saf_refused"] += 1
            return True  # a reversal answered 91/96 stays queued: sent again before the next transaction
        rec.timed_out(kind, switch)
        if kind in ("purchase", "refund"):
            await self._saf_do(self.saf.enqueue, self.builder.reversal(fields))
        elif owed is not None:
            self._saf_answered(owed.seq, None)
        await self.settle_reversals()
        return True

    async def settle_reversals(self) -> Forwarded:
        """Send what is due in the queue, oldest first: 0400 (if not sent yet), then 0401
        repeats, at most 1 + `reversal_repeats_max` tries per connection, never after the
        run's end. What stays is sent first on the next connection or run."""
        async with self._reversal_lock:
            done = await forward(self.saf, self._saf_link, offload=self._saf_do)
        n = self.ctx.rec.n
        n["reversals_sent"] += done.firsts
        n["reversal_repeats_sent"] += done.repeats
        n["reversals_answered"] += done.accepted + done.refused
        n["saf_refused"] += done.refused
        return done

    def _saf_answered(self, seq: int, rc: str | None) -> Verdict:
        """An answer (or its absence) recorded in the queue: written without an fdatasync
        (saf.py, SafQueue.answered), so inline."""
        try:
            return self.saf.answered(seq, rc)
        except SafError as exc:
            raise FleetError(f"terminal {self.spec.tid}: {exc}") from None

    async def _saf_do(self, change: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """A queue change: its fsyncs run off the event loop, so a reversal's write-ahead
        delays that terminal only, as a POS waits for its flash, and not every other one."""
        try:
            if self.saf.path is None:
                return change(*args, **kw)
            return await asyncio.to_thread(change, *args, **kw)
        except SafError as exc:
            raise FleetError(f"terminal {self.spec.tid}: {exc}") from None

    def _plan(self) -> tuple[str, dict[str, str], str | None, str | None]:
        """The next transaction: kind, fields, PIN (or None) and PAN for the PIN block. The
        purchase a refund or reversal refers to leaves the terminal's memory; with nothing to
        refer to, the transaction is a purchase."""
        rng, ctx, b = self.rng, self.ctx, self.builder
        kind = ctx.scenario.mix.pick(rng)
        if kind == "refund" and self.refundable:
            original = self.refundable.pop(rng.randrange(len(self.refundable)))
            if self.last_purchase is original:
                self.last_purchase = None  # refunded: the scenario's reversals leave it alone
            o = original.fields
            return kind, b.refund(o["2"], int(o["4"]), original.rrn, expiry=o.get("14")), None, None
        if kind == "reversal" and self.last_purchase is not None:
            original, self.last_purchase = self.last_purchase, None
            if original in self.refundable:
                self.refundable.remove(original)
            return kind, b.reversal(original.fields), None, None
        if kind == "balance":
            card = rng.choice(ctx.cards)
            return kind, b.balance(card.pan, expiry=card.expiry), None, None
        return self._plan_purchase()

    def _plan_purchase(self) -> tuple[str, dict[str, str], str | None, str | None]:
        rng, ctx = self.rng, self.ctx
        policy = ctx.scenario.pin
        amount = ctx.scenario.amount.draw(rng)
        if self.spec.pin_capable and ctx.pin_cards and rng.random() < policy.share:
            card = rng.choice(ctx.pin_cards)
            assert card.pin is not None
            pin = card.pin
            # Never two wrong PINs in a row on a card (three block it: 75); kept across runs.
            if rng.random() < policy.wrong_share and card.pan not in ctx.pin_wrong_last:
                pin = pin[:-1] + str((int(pin[-1]) + 1) % 10)
                ctx.rec.n["wrong_pins_sent"] += 1
            ctx.rec.n["pin_purchases"] += 1
            return "purchase", self.builder.purchase(card.pan, amount, expiry=card.expiry), pin, card.pan
        card = rng.choice(ctx.cards)
        return "purchase", self.builder.purchase(card.pan, amount, expiry=card.expiry), None, None

    def _note_pin(self, pan: str, pin: str, answer: _Answer | str) -> None:
        """A wrong PIN counts at the switch until a right one is approved (a decline may come
        before the PIN check, and a timeout says nothing)."""
        if pin != self._card_pin(pan):
            self.ctx.pin_wrong_last.add(pan)
        elif isinstance(answer, _Answer) and answer.fields.get("39") == "00":
            self.ctx.pin_wrong_last.discard(pan)

    def _card_pin(self, pan: str) -> str | None:
        return self.ctx.card_pins.get(pan)

    def _approved(self, kind: str, fields: dict[str, str], answer: _Answer) -> None:
        if kind == "purchase":
            approved = _Approved(fields=fields, rrn=answer.fields.get("37", ""))
            self.last_purchase = approved
            self.refundable.append(approved)
            if len(self.refundable) > REFUNDABLE_MAX:
                self.refundable.pop(0)


class _SafLink:
    """The queue's view of a fleet terminal's connection (saf.SafLink): reconnecting as
    `_ensure_link` does, answers matched by DE11 as the link matches them."""

    def __init__(self, term: _SimTerminal) -> None:
        self.term = term

    async def ready(self) -> bool:
        return await self.term._ensure_link()

    def secure(self, fields: dict[str, str]) -> dict[str, str]:
        secured, _ = self.term._secure(fields, None, None, fresh_ksn=True)  # each try its own KSN (saf.py)
        return secured

    async def exchange(self, secured: dict[str, str]) -> dict[str, str] | None:
        _, answer, _ = await self.term._exchange(secured)
        return answer.fields if isinstance(answer, _Answer) else None


# ---------------------------------------------------------------------------- the run

def _lanes(terms: list[_SimTerminal], ctx: _RunContext, t0: float) -> list[Any]:
    cfg = ctx.config
    if cfg.closed_loop:
        return [_closed_lane(t, ctx) for t in terms for _ in range(cfg.in_flight_per_terminal_max)]
    per_terminal = cfg.rate_per_s / len(terms)
    lanes = []
    for i, t in enumerate(terms):
        rng = random.Random(f"{cfg.seed}:arrivals:{t.spec.tid}")
        schedule = arrival_offsets(per_terminal, cfg.duration_s, arrivals=cfg.arrivals, rng=rng,
                                   phase=i / len(terms), profile=cfg.scenario.day_profile)
        lanes.append(_open_lane(t, ctx, t0, schedule))
    return lanes


def schedule_for(config: FleetConfig, index: int) -> list[float]:
    """The intended send offsets (s from the start) of the terminal at `index`, as a run with
    this config generates them: the same seed gives the same schedule."""
    tid = config.population.terminals[index].tid
    rng = random.Random(f"{config.seed}:arrivals:{tid}")
    return list(arrival_offsets(config.rate_per_s / config.terminals, config.duration_s, arrivals=config.arrivals,
                                rng=rng, phase=index / config.terminals, profile=config.scenario.day_profile))


async def _open_lane(term: _SimTerminal, ctx: _RunContext, t0: float, schedule: Iterator[float]) -> None:
    rec = ctx.rec
    for offset in schedule:
        rec.n["offered"] += 1
        intended = t0 + offset
        if now() >= ctx.end:
            rec.n["unsent"] += 1  # the terminal's backlog when the run ends
            continue
        await term.idle_until(intended)
        if now() >= ctx.end or not await term.transact(intended):
            rec.n["unsent"] += 1
    await term.idle_until(ctx.end)  # a terminal with nothing more to send stays on line (echoes)


async def _closed_lane(term: _SimTerminal, ctx: _RunContext) -> None:
    """A closed loop has no schedule: it offers a transaction when it sends one, so its
    offered == sent and unsent == 0. A try that finds the run over (or the link lost until
    the end) is no offer: counting it would make the count race the end by a microsecond."""
    rec = ctx.rec
    while now() < ctx.end:
        if not await term.transact(None):
            return
        rec.n["offered"] += 1


async def _progress(ctx: _RunContext, done: asyncio.Event) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    rec, duration = ctx.rec, ctx.config.duration_s
    with Live(Text(""), console=Console(stderr=True), refresh_per_second=4, transient=False) as live:
        while not done.is_set():
            live.update(Text(rec.progress_text(now(), duration)))
            try:
                await asyncio.wait_for(done.wait(), PROGRESS_INTERVAL_S)
            except asyncio.TimeoutError:
                pass
        live.update(Text(rec.progress_text(now(), duration)))


def _ksn_block(config: FleetConfig) -> int:
    """Counters to reserve per terminal: twice the expected secured messages, at least 256."""
    if config.closed_loop:
        return 4096
    expected = config.rate_per_s / config.terminals * config.duration_s
    return max(KSN_BLOCK_MIN, int(2 * expected) + 64)


async def run_fleet(config: FleetConfig) -> FleetReport:
    """Run the fleet once; every terminal's state is saved whatever happens."""
    loop = asyncio.get_running_loop()
    scenario = config.scenario
    cards = config.population.cards[: scenario.pools.cards or None]
    switch_names = config.switch_names
    ctx = _RunContext(loop=loop, config=config, dialect=load_dialect(config.dialect),
                      rec=_Recorder(switch_names), switch_names=switch_names,
                      store=_StateStore(config.state_dir), cards=cards,
                      pin_cards=tuple(c for c in cards if c.pin), ksn_block=_ksn_block(config),
                      card_pins={c.pan: c.pin for c in cards if c.pin})
    ctx.pin_wrong_last = ctx.store.load_wrong_pins()
    terms = [_SimTerminal(spec, ctx, i) for i, spec in enumerate(config.population.terminals[: config.terminals])]
    for t in terms:
        t.reserve_ksns()
    done = asyncio.Event()
    progress = None
    started = datetime.now(timezone.utc)
    start = now()
    try:
        await _connect_all(terms)
        t0 = now()
        ctx.rec.t0, ctx.end = t0, t0 + config.duration_s
        if config.progress:
            progress = asyncio.create_task(_progress(ctx, done))
        await _run_lanes(_lanes(terms, ctx, t0), deadline=ctx.end + 3 * ctx.timeout_s + 1.0)
    finally:
        done.set()
        ctx.deadlines.close()  # no request is awaited any more: the lanes ended
        if progress is not None:
            await progress
        for t in terms:
            t.close()
            t.save()
        ctx.store.save_wrong_pins(ctx.pin_wrong_last)
    ctx.rec.n["reversals_unanswered"] = sum(len(t.saf) for t in terms)
    ctx.rec.n["saf_attention"] = sum(len(t.saf.attention()) for t in terms)
    return _report(config, ctx.rec, started=started, elapsed_s=now() - start)


async def _connect_all(terms: list[_SimTerminal]) -> None:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY_MAX)

    async def one(t: _SimTerminal) -> None:
        async with gate:
            await t.connect()

    tasks = [asyncio.ensure_future(one(t)) for t in terms]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _run_lanes(coros: list[Any], *, deadline: float) -> None:
    """Run every lane; the first failure cancels the others and is raised. Lanes end by
    themselves before `deadline`; anything left then is cancelled (a bug, not a wait)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        finished, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - now()),
                                               return_when=asyncio.FIRST_EXCEPTION)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for task in finished:
            if task.exception() is not None:
                raise task.exception()
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _report(config: FleetConfig, rec: _Recorder, *, started: datetime, elapsed_s: float) -> FleetReport:
    n, duration = rec.n, config.duration_s
    assert n["sent"] == n["responses"] + n["timeouts"], "every sent transaction is answered or timed out"
    assert n["offered"] == n["sent"] + n["unsent"], "every offered transaction is sent or left unsent"
    values = rec.latency.values_at(PERCENTILES)
    percentiles = [(p, values[p] / 1000) for p in PERCENTILES] if rec.latency.total else []
    latency, service = rec.latency.histogram(), rec.service.histogram()
    return FleetReport(
        started_at=started.isoformat(timespec="milliseconds"), duration_s=duration, elapsed_s=round(elapsed_s, 3),
        mode="closed" if config.closed_loop else "open", arrivals="closed" if config.closed_loop else config.arrivals,
        terminals=config.terminals, scenario=config.scenario.name, seed=config.seed,
        target_per_s=None if config.closed_loop else config.rate_per_s,
        offered=n["offered"], offered_per_s=round(n["offered"] / duration, 3), sent=n["sent"], unsent=n["unsent"],
        responses=n["responses"], achieved_per_s=round(n["responses"] / duration, 3), approved=n["approved"],
        approved_per_s=round(n["approved"] / duration, 3), timeouts=n["timeouts"],
        late_responses=n["late_responses"], unmatched_responses=n["unmatched_responses"],
        reversals_sent=n["reversals_sent"], reversal_repeats_sent=n["reversal_repeats_sent"],
        reversals_answered=n["reversals_answered"], reversals_unanswered=n["reversals_unanswered"],
        saf_refused=n["saf_refused"], saf_attention=n["saf_attention"],
        echoes_sent=n["echoes_sent"], echo_failures=n["echo_failures"], connection_drops=n["connection_drops"],
        reconnects=n["reconnects"],
        mac_invalid=n["mac_invalid"], mac_missing=n["mac_missing"], pin_purchases=n["pin_purchases"],
        wrong_pins_sent=n["wrong_pins_sent"], by_rc=dict(sorted(rec.by_rc.items())),
        by_kind={k: {c: rec.kinds[k][c] for c in ("sent", "responses", "approved", "timeouts")} for k in KINDS},
        by_switch=rec.by_switch(),
        latency_ms=_summary_ms(rec.latency, rec.latency_total_us),
        service_ms=_summary_ms(rec.service, rec.service_total_us), series=rec.series(),
        histogram=latency.encode().decode("ascii"), percentiles=percentiles,
        latency_histogram=latency, service_histogram=service)
