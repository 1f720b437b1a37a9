"""Metrics and health: what a Prometheus server scrapes from `eum switch --metrics HOST:PORT`.

The hot path only counts, in plain ints, dicts and lists (`Traffic`, `Buckets`): a message
costs one dict increment and one bucket increment (≈ 0.6 µs; prometheus-client's
`Counter.labels(...).inc()` and `Histogram.observe` cost ≈ 4 µs for the same: docs/performance.md,
"Metrics: the cost of counting"). At scrape time `SwitchMetrics.collect` reads those figures
and the ones the switch's parts already keep (the program gate's stats, the HSM pool's
endpoints, the ledger writer's groups, the outbox) and builds prometheus-client metric
families from them: nothing of prometheus-client runs per message.

The HTTP endpoint (`MetricsHttp`) is a small `http.server` in a thread of its own: a scrape
renders there, and the outbox's backlog is read there on its own read-only connection, so a
slow client or a slow read never waits on, or stalls, the event loop. What it reads from the
loop's objects it copies first (`dict(d)`, `list(cells)`: single C calls under the GIL), so a
dict the loop grows meanwhile is never iterated. Paths: `/metrics` (Prometheus text format
0.0.4), `/healthz` (alive: the event loop has turned within `loop_stall_s_max`), `/readyz`
(ready to take terminals: listening, not draining, the ledger writer running and its last
group committed, a healthy HSM when HSMs are configured; else 503 and one line saying why).

Metric names, types and labels: docs/operations.md, "Metrics and health".
prometheus-client itself is imported only where families are built and served, so the
commands that never serve metrics do not pay for importing it.
"""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger()

# Latency buckets, µs: 0.1 ms to 1 s in 1-2-5 steps (an authorization takes ≈ 0.3-20 ms; a
# commit 1-5 ms; past a second a terminal has given up). Counts above land in +Inf.
LATENCY_BOUNDS_US = (100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
                     1_000_000)
# Units per group commit: 1 to batch_size_max (512) in powers of two.
GROUP_SIZE_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Distinct label sets one counter keeps. Labels come partly from terminals (MTI, DE3): past
# this many, a new combination is counted under "other" so a hostile sender cannot grow
# the switch's memory or a Prometheus server's series without bound.
SERIES_MAX = 1_000
OTHER = "other"

# The reasons a connection is refused or closed by the switch (switch/authorize/server.py): shown
# at 0 from the start, so that rate() sees their first increase.
REFUSED = ("per_peer_max", "connections_max")
CLOSED = ("evicted", "frame_timeout", "signon_timeout", "idle", "framing")

HEARTBEAT_S = 1.0            # the event loop stamps the time this often …
LOOP_STALL_S_MAX = 10.0      # … and /healthz fails when the stamp is older than this
LEDGER_PROBE_S_MIN = 5.0     # /readyz asks for an empty commit at most this often while the ledger is failed
HTTP_CLIENT_TIMEOUT_S = 5.0  # a client of the metrics endpoint that sends nothing for this long is dropped


class Buckets:
    """A histogram the hot path can afford: one list of per-bucket counts (the last but one
    is +Inf) and the sum of the observed values, in the unit of `bounds`."""

    __slots__ = ("bounds", "cells")

    def __init__(self, bounds: tuple[int, ...] = LATENCY_BOUNDS_US) -> None:
        self.bounds = bounds
        self.cells = [0] * (len(bounds) + 2)

    def observe(self, value: int) -> None:
        cells = self.cells
        cells[bisect_left(self.bounds, value)] += 1  # the first bound ≥ value: Prometheus' `le`
        cells[-1] += value

    def snapshot(self) -> tuple[list[int], int]:
        """(cumulative counts per bound, then +Inf; the sum), from one copy of the cells."""
        cells = list(self.cells)
        cumulative, total = [], 0
        for n in cells[:-1]:
            total += n
            cumulative.append(total)
        return cumulative, cells[-1]


def count_into(counts: dict[Any, int], key: Any, overflow: Any) -> None:
    """counts[key] += 1, or counts[overflow] once SERIES_MAX keys are held."""
    n = counts.get(key)
    if n is None:
        if len(counts) >= SERIES_MAX:
            key = overflow
        n = counts.get(key, 0)
    counts[key] = n + 1


class Traffic:
    """The Processor's per-message counts: requests by (MTI, DE3, program, answer MTI, DE39)
    — answer MTI and DE39 empty for a dropped message — and latency by (MTI class, program).
    Counted when the message's processing ends, from its canonical log line."""

    def __init__(self, program_of: Callable[[str], str] = lambda pan: "") -> None:
        """program_of(pan): a card program's id by BIN ("" for none), for the messages the
        program gate does not see (reversals): the gate names the others' on the line."""
        self.program_of = program_of
        self.messages: dict[tuple[str, str, str, str, str], int] = {}
        self.latency: dict[tuple[str, str], Buckets] = {}

    def answered(self, line: dict[str, Any], fields: dict[str, str] | None, answer_mti: str, rc: str) -> None:
        mti = line.get("mti", "")
        program = self._program(line, mti, fields)
        count_into(self.messages, (mti, line.get("processing_code", ""), program, answer_mti, rc),
                   (OTHER, OTHER, program, OTHER, rc))
        buckets = self.latency.get((mti[:2], program))
        if buckets is None:
            buckets = self._new_buckets((mti[:2], program))
        buckets.observe(line["latency_us"])

    def dropped(self, line: dict[str, Any], fields: dict[str, str] | None) -> None:
        mti = line.get("mti", "")
        program = self._program(line, mti, fields)
        count_into(self.messages, (mti, line.get("processing_code", ""), program, "", ""),
                   (OTHER, OTHER, program, "", ""))

    def _new_buckets(self, key: tuple[str, str]) -> Buckets:
        if len(self.latency) >= SERIES_MAX:
            key = (OTHER, key[1])
        return self.latency.setdefault(key, Buckets())

    def _program(self, line: dict[str, Any], mti: str, fields: dict[str, str] | None) -> str:
        program = line.get("program")
        if program is not None:
            return program
        if fields and mti[:2] == "04" and "2" in fields:  # a reversal: not gated, so not named yet
            return self.program_of(fields["2"])
        return ""


# ----------------------------------------------------------------------------- health


class LoopHeartbeat:
    """Stamps the time from inside the event loop every HEARTBEAT_S, so that a thread can tell
    a turning loop from a stalled one (the HTTP thread answers even when the loop is stuck)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.beat = clock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="metrics-heartbeat")

    async def _run(self) -> None:
        while True:
            self.beat = self.clock()
            await asyncio.sleep(HEARTBEAT_S)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def health(self) -> tuple[bool, str]:
        return loop_health(self.clock() - self.beat)


def loop_health(stalled_s: float, *, stall_s_max: float = LOOP_STALL_S_MAX) -> tuple[bool, str]:
    """/healthz: alive while the event loop has turned within stall_s_max."""
    if stalled_s > stall_s_max:
        return False, f"event loop stalled: no turn for {stalled_s:.1f} s (limit {stall_s_max:g} s)"
    return True, "alive"


@dataclass(frozen=True, slots=True)
class ReadyView:
    """What readiness is decided on: a snapshot, so the rule is a pure function."""

    listening: bool
    draining: bool
    writer_running: bool
    failed_groups: int               # group commits failed in a row (0: the last one committed)
    hsms: tuple[str, ...] = ()       # configured HSMs; () when the switch runs without one
    healthy_hsms: tuple[str, ...] = ()


def readiness(view: ReadyView) -> tuple[bool, str]:
    """/readyz: (ready, one line). Draining first: a stopping switch is not coming back."""
    if view.draining:
        return False, "draining: stopping, answering what is in flight"
    if not view.listening:
        return False, "not listening for terminals yet"
    if not view.writer_running:
        return False, "ledger: the writer is not running"
    if view.failed_groups:
        return False, f"ledger: the last {view.failed_groups} group commit(s) failed; none committed since"
    if view.hsms and not view.healthy_hsms:
        return False, f"hsm: none of {', '.join(view.hsms)} is healthy"
    return True, "ready"


# ----------------------------------------------------------------------------- the switch's collector


class SwitchMetrics:
    """The prometheus-client collector of one switch: reads its parts' figures at scrape time.

    `server` is the terminals' SwitchServer (its Processor's Traffic, the program gate, the
    connection counts), `writer` the LedgerWriter, `hsm` the HsmPool (None without HSM),
    `relay` the outbox Relay (None without --mqtt), `store` the ledger the outbox is read from.
    Built on the event loop (it hooks the writer and starts the heartbeat); collected from the
    HTTP thread."""

    def __init__(self, server: Any, writer: Any, *, hsm: Any = None, relay: Any = None, store: Any = None) -> None:
        self.server = server
        self.writer = writer
        self.hsm = hsm
        self.relay = relay
        self.store = store
        self.group_sizes = Buckets(GROUP_SIZE_BOUNDS)
        self.commit_us = Buckets()
        writer.on_commit = self._committed
        self.heartbeat = LoopHeartbeat()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: Any = None  # OutboxReader, opened by the first scrape on the HTTP thread
        self._probed_at = float("-inf")
        self.ledger_probe_s_min = LEDGER_PROBE_S_MIN

    @classmethod
    def of(cls, core: Any, server: Any) -> "SwitchMetrics":
        """For the switch `open_core` built (switch/ops/runtime.py Core) and its terminal server."""
        return cls(server, core.writer, hsm=core.hsm, relay=core.relay, store=core.db_path)

    def _committed(self, units: int, commit_ms: float) -> None:
        self.group_sizes.observe(units)
        self.commit_us.observe(int(commit_ms * 1000))

    def start(self) -> None:
        """On the event loop: the heartbeat, and the loop /readyz sends its ledger probe to."""
        self._loop = asyncio.get_running_loop()
        self.heartbeat.start()

    def stop(self) -> None:
        self.heartbeat.stop()
        if self._outbox is not None:
            try:
                self._outbox.close()
            except Exception:  # closing a read connection at exit: nothing to do about it
                pass

    # ------------------------------------------------------------------ health

    def health(self) -> tuple[bool, str]:
        return self.heartbeat.health()

    def view(self) -> ReadyView:
        pool = self.hsm
        hsms = tuple(ep.name for ep in pool.endpoints) if pool is not None else ()
        return ReadyView(listening=self.server.listening, draining=self.server.draining,
                         writer_running=self.writer.running, failed_groups=self.writer.failed_groups,
                         hsms=hsms, healthy_hsms=tuple(pool.healthy) if pool is not None else ())

    def ready(self) -> tuple[bool, str]:
        """/readyz. After failed commits the switch is ready again only when a group commits;
        an unready switch gets no traffic, so this asks the writer for an empty group (at most
        every LEDGER_PROBE_S_MIN) and reports ready once one has committed."""
        view = self.view()
        if view.failed_groups and not view.draining:
            self._probe_ledger()
        return readiness(view)

    def _probe_ledger(self) -> None:
        now = time.monotonic()
        if self._loop is None or now - self._probed_at < self.ledger_probe_s_min:
            return
        self._probed_at = now
        from switch.ledger.records import Commit
        from switch.ledger.store import LedgerUnavailable

        async def probe() -> None:
            try:
                await self.writer.submit(Commit())
            except LedgerUnavailable:  # still failing: the writer logged it; the next probe tries again
                pass

        asyncio.run_coroutine_threadsafe(probe(), self._loop)

    # ------------------------------------------------------------------ collect (the HTTP thread)

    def collect(self) -> Iterator[Any]:
        yield from self._traffic()
        yield from self._connections()
        yield from self._programs()
        yield from self._hsms()
        yield from self._ledger()
        yield from self._outbox_families()
        ok, _ = readiness(self.view())
        yield gauge("eum_ready", "1 when /readyz answers 200: listening, not draining, ledger committing, "
                    "an HSM healthy when configured", (), [((), int(ok))])
        yield gauge("eum_draining", "1 once the switch is stopping (SIGTERM): it answers what is in flight",
                    (), [((), int(self.server.draining))])

    def _traffic(self) -> Iterator[Any]:
        traffic = self.server.processor.traffic
        requests: dict[tuple[str, str, str], int] = {}
        answers: dict[tuple[str, str, str, str], int] = {}
        for (mti, code, program, answer_mti, rc), n in dict(traffic.messages).items():
            key = (mti, code, program)
            requests[key] = requests.get(key, 0) + n
            if answer_mti or rc:
                answers[(answer_mti, code, program, rc)] = answers.get((answer_mti, code, program, rc), 0) + n
        yield counter("eum_requests", "frames with an MTI the switch read, counted when answered or dropped, by "
                      "request MTI, DE3 and card program", ("mti", "processing_code", "program"), requests.items())
        yield counter("eum_answers", "answers sent, by response MTI, DE3, card program and DE39",
                      ("mti", "processing_code", "program", "rc"), answers.items())
        yield histogram("eum_request_duration_seconds", "frame complete to answer framed (the canonical line's "
                        "latency_us), answered messages, by MTI class (02xx: financial) and card program",
                        ("mti_class", "program"),
                        (((c + "xx" if c != OTHER else OTHER, p), b) for (c, p), b in dict(traffic.latency).items()),
                        unit=1e6)

    def _connections(self) -> Iterator[Any]:
        server = self.server
        yield gauge("eum_connections_open", "terminal connections open", (), [((), len(server.connections))])
        yield gauge("eum_connections_unproven", "open connections never answered (the ones a new connection may "
                    "evict at a limit)", (), [((), len(server.unproven))])
        yield counter("eum_connections_opened", "terminal connections admitted", (), [((), server.opened)])
        yield counter("eum_connections_refused", "connections refused at a limit (per_peer_max, connections_max)",
                      ("reason",), {**dict.fromkeys(REFUSED, 0), **server.refused}.items(), keys=_one)
        yield counter("eum_connections_closed", "connections the switch closed, by reason (evicted, frame_timeout, "
                      "signon_timeout, idle, framing)", ("reason",),
                      {**dict.fromkeys(CLOSED, 0), **server.reaped}.items(), keys=_one)

    def _programs(self) -> Iterator[Any]:
        gate = self.server.processor.gate
        stats = gate.stats()
        yield gauge("eum_program_in_flight", "requests holding one of their program's slots",
                    ("program",), [((p, ), s["in_flight"]) for p, s in stats.items()])
        yield gauge("eum_program_waiting", "requests waiting for a slot of their program",
                    ("program",), [((p, ), s["waiting"]) for p, s in stats.items()])
        yield gauge("eum_program_in_flight_max", "slots per program (--program-in-flight-max)", (),
                    [((), gate.limits.in_flight_max)])
        yield gauge("eum_program_queue_max", "waiting room per program (--program-queue-max)", (),
                    [((), gate.limits.queue_max)])
        yield counter("eum_program_admitted", "requests that got a slot", ("program",),
                      [((p, ), s["admitted"]) for p, s in stats.items()])
        yield counter("eum_program_shed", "requests answered 91 at the gate: queue_full or timeout",
                      ("program", "reason"),
                      [((p, reason), s[f"shed_{reason}"]) for p, s in stats.items() for reason in ("queue_full", "timeout")])

    def _hsms(self) -> Iterator[Any]:
        pool = self.hsm
        if pool is None:
            return
        eps = list(pool.endpoints)
        yield gauge("eum_hsm_up", "1 while the HSM answers its health checks and has an open connection",
                    ("hsm",), [((ep.name, ), int(ep.healthy and bool(ep.open_conns))) for ep in eps])
        yield gauge("eum_hsm_connections_open", "pipelined connections open to the HSM", ("hsm",),
                    [((ep.name, ), len(ep.open_conns)) for ep in eps])
        yield counter("eum_hsm_calls", "commands the HSM answered (any error code), by command", ("hsm", "command"),
                      [((ep.name, code), n) for ep in eps for code, n in dict(ep.commands).items()])
        yield counter("eum_hsm_call_failures", "calls that failed over or failed: timeout, connection",
                      ("hsm", "reason"),
                      [((ep.name, reason), n) for ep in eps
                       for reason, n in (("timeout", ep.timeouts), ("connection", ep.errors - ep.timeouts))])
        yield counter("eum_hsm_unavailable", "calls no HSM answered (the message is declined 91)", (),
                      [((), pool.unavailable)])
        yield histogram("eum_hsm_call_duration_seconds", "one command, sent to answered (slot wait included)",
                        ("hsm",), [((ep.name, ), ep.latency) for ep in eps], unit=1e6)

    def _ledger(self) -> Iterator[Any]:
        w = self.writer
        yield counter("eum_ledger_commits", "group commits (one transaction, one fsync each)", (), [((), w.batches)])
        yield counter("eum_ledger_units", "units committed (postings with their message, operations, marks)", (),
                      [((), w.units)])
        yield counter("eum_ledger_commit_failures", "group commits that failed (their units answered 96)", (),
                      [((), w.failed_groups_total)])
        yield gauge("eum_ledger_failed_groups", "group commits failed in a row (0 once one commits)", (),
                    [((), w.failed_groups)])
        yield counter("eum_ledger_store_reopens", "ledger connections reopened after an I/O error", (),
                      [((), w.reopens)])
        yield gauge("eum_ledger_queue", "units waiting for the writer", (), [((), w.waiting)])
        yield histogram("eum_ledger_group_size", "units per group commit", (), [((), self.group_sizes)])
        yield histogram("eum_ledger_commit_duration_seconds", "one group commit, transaction and fsync", (),
                        [((), self.commit_us)], unit=1e6)

    def _outbox_families(self) -> Iterator[Any]:
        relay = self.relay
        status = self._outbox_status()
        if status is not None:
            yield counter("eum_outbox_events", "events written to the outbox (its last seq)", (),
                          [((), status.events)])
            yield gauge("eum_outbox_backlog", "outbox events the broker has not acknowledged", (),
                        [((), status.backlog)])
            yield gauge("eum_outbox_oldest_unrelayed_age_seconds", "relay lag: how long the oldest unacknowledged "
                        "event has waited (0 with no backlog)", (), [((), status.oldest_unrelayed_age_s)])
            yield gauge("eum_outbox_relayed_seq", "every event up to this seq is acknowledged", (),
                        [((), status.relayed_seq)])
        if relay is not None:
            yield gauge("eum_relay_connected", "1 while the relay holds a broker connection", (),
                        [((), int(relay.connected))])
            yield counter("eum_relay_published", "events the broker acknowledged (PUBACK) since start", (),
                          [((), relay.published)])
            yield counter("eum_relay_reconnects", "broker connections lost and retried", (), [((), relay.reconnects)])

    def _outbox_status(self) -> Any:
        """The outbox's status from the HTTP thread's own read connection; None if unreadable
        (logged: a scrape never fails for it)."""
        if self.store is None:
            return None
        from switch.ledger.outbox import OutboxReader

        try:
            if self._outbox is None:
                self._outbox = OutboxReader(self.store)
            # the relay's own position runs ahead of its durable mark by the batch being marked
            relayed = (self.relay.position or None) if self.relay is not None else None
            return self._outbox.status(relayed_seq=relayed)
        except Exception as exc:
            log.warning("metrics_outbox_unreadable", error=type(exc).__name__)
            self._outbox = None
            return None


def _one(key: Any) -> tuple[Any, ...]:
    return (key,)


# ----------------------------------------------------------------------------- families


def counter(name: str, doc: str, labels: tuple[str, ...], items: Any, *, keys: Callable[[Any], tuple] = tuple
            ) -> Any:
    from prometheus_client.core import CounterMetricFamily

    family = CounterMetricFamily(name, doc, labels=list(labels))
    for key, value in items:
        family.add_metric(list(keys(key)), value)
    return family


def gauge(name: str, doc: str, labels: tuple[str, ...], items: Any) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily(name, doc, labels=list(labels))
    for key, value in items:
        family.add_metric(list(key), value)
    return family


def histogram(name: str, doc: str, labels: tuple[str, ...], items: Any, *, unit: float = 1.0) -> Any:
    """A classic histogram per (label values, Buckets); bounds and sum divided by `unit`
    (1e6: µs → seconds, so 100 µs is le="0.0001")."""
    from prometheus_client.core import HistogramMetricFamily
    from prometheus_client.utils import floatToGoString

    family = HistogramMetricFamily(name, doc, labels=list(labels))
    for key, buckets in items:
        cumulative, total = buckets.snapshot()
        les = [floatToGoString(b / unit) for b in buckets.bounds] + ["+Inf"]
        family.add_metric(list(key), list(zip(les, cumulative)), total / unit)
    return family


def registry_of(*collectors: Any) -> Any:
    """A registry with these collectors and the process's own (CPU, memory, file descriptors)."""
    from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    for c in collectors:
        registry.register(c)
    return registry


# ----------------------------------------------------------------------------- HTTP


class MetricsHttp:
    """/metrics, /healthz, /readyz on HOST:PORT, served by one daemon thread.

    Binds in the constructor (a busy port is an error at start, before the switch serves),
    serves once `start` is called. One request at a time: Prometheus scrapes one at a time,
    and a client that sends nothing is dropped after HTTP_CLIENT_TIMEOUT_S."""

    def __init__(self, host: str, port: int) -> None:
        self.registry: Any = None
        self.health: Callable[[], tuple[bool, str]] = lambda: (True, "alive")
        self.ready: Callable[[], tuple[bool, str]] = lambda: (False, "starting")
        self._httpd = _QuietServer((host, port), _handler_for(self))
        self.host, self.port = self._httpd.server_address[:2]
        self._thread: threading.Thread | None = None
        self._closed = False

    def start(self, registry: Any, *, health: Callable[[], tuple[bool, str]],
              ready: Callable[[], tuple[bool, str]]) -> "MetricsHttp":
        self.registry, self.health, self.ready = registry, health, ready
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        log.info("metrics_listening", host=self.host, port=self.port)
        return self

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=HTTP_CLIENT_TIMEOUT_S + 1)
        self._httpd.server_close()

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _QuietServer(http.server.HTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-answer: nothing to report (socketserver would print a
        traceback to stderr)."""


def _handler_for(owner: MetricsHttp) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = HTTP_CLIENT_TIMEOUT_S
        server_version = "eum-metrics"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path == "/metrics" and owner.registry is None:
                body, status, kind = b"starting\n", 503, "text/plain; charset=utf-8"
            elif path == "/metrics":
                from prometheus_client import CONTENT_TYPE_LATEST

                try:
                    body, status, kind = owner.render(), 200, CONTENT_TYPE_LATEST
                except Exception as exc:  # a collector's bug: say so, keep serving
                    log.exception("metrics_render_failed", error=type(exc).__name__)
                    body, status, kind = f"{type(exc).__name__}\n".encode(), 500, "text/plain; charset=utf-8"
            elif path in ("/healthz", "/readyz"):
                ok, text = (owner.health if path == "/healthz" else owner.ready)()
                body, status, kind = (text + "\n").encode(), 200 if ok else 503, "text/plain; charset=utf-8"
            else:
                body, status, kind = b"not found: /metrics, /healthz, /readyz\n", 404, "text/plain; charset=utf-8"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes are not worth a log line each
            pass

    return Handler


def serve_switch_metrics(http_server: MetricsHttp, core: Any, server: Any) -> SwitchMetrics:
    """On the event loop: collect the switch `core` + `server` and serve them on `http_server`
    (bound earlier by MetricsHttp). The caller stops both: `metrics.stop()`, `http_server.close()`."""
    metrics = SwitchMetrics.of(core, server)
    metrics.start()
    http_server.start(registry_of(metrics), health=metrics.health, ready=metrics.ready)
    return metrics
