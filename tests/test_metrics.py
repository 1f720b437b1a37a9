"""Metrics and health (switch/ops/metrics.py; docs/operations.md, "Metrics and health").

- The collector's exact values after known traffic, on a real switch over TCP (conftest's
  start_switch), and the HSM's commands by code and error code (`eum hsm --metrics`).
- /healthz and /readyz: ready, then 503 with its reason when the ledger's commits fail (and
  200 again once one commits, without traffic), when no HSM is healthy, and while draining.
- End to end: `eum hsm --metrics` and `eum switch --metrics` processes scraped every second by
  a real Prometheus server (Debian's `prometheus`, on a free port, stopped by PID); after a
  fleet run, PromQL over the scraped data equals the fleet's own counts, and every query of
  docs/grafana-dashboard.json and every rule of docs/alerts.yml evaluates without error.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import LAUNCH, provision, query, start_switch
from fault_harness import free_port, listening
from hsm_mock.config import HsmConfig as ServiceConfig
from hsm_mock.service import HsmServer, serve_metrics
from switch.authorize.hsm_client import HsmConfig, HsmPool, HsmUnavailable
from switch.clock import FixedClock
from switch.ops.metrics import (OTHER, SERIES_MAX, Buckets, LoopHeartbeat, MetricsHttp, ReadyView, SwitchMetrics,
                                Traffic, count_into, loop_health, readiness, registry_of)
from switch.wire.codec import encode_fields
from switch.wire.framing import frame
from switch_process import EUM, running_switch
from terminal_sim.fleet import FleetConfig, Population, run_fleet
from terminal_sim.scenario import load_scenario
from waiting import eventually, wait_until

DOCS = Path(__file__).resolve().parents[1] / "docs"


# ---------------------------------------------------------------------------- helpers

def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of a GET on 127.0.0.1:port, 4xx/5xx included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def get(port: int, path: str) -> tuple[int, str]:
    return await asyncio.to_thread(http_get, port, path)


def samples(registry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called `name` the registry renders, by its sorted labels."""
    return {tuple(sorted(s.labels.items())): s.value
            for family in registry.collect() for s in family.samples if s.name == name}


def labels(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


class Metered:
    """A switch env with its collector and its HTTP endpoint on a free port."""

    def __init__(self, env, metrics: SwitchMetrics, http: MetricsHttp) -> None:
        self.env, self.metrics, self.http = env, metrics, http
        self.registry = http.registry


async def metered(env) -> Metered:
    metrics = SwitchMetrics.of(env.core, env.server)
    metrics.start()
    http = MetricsHttp("127.0.0.1", 0)
    http.start(registry_of(metrics), health=metrics.health, ready=metrics.ready)
    return Metered(env, metrics, http)


@pytest.fixture
async def switch_metered(tmp_path: Path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        m = await metered(env)
        try:
            yield m
        finally:
            m.metrics.stop()
            m.http.close()


# ---------------------------------------------------------------------------- the counting primitives

def test_a_bucket_holds_values_up_to_its_bound_and_the_rest_go_to_inf():
    b = Buckets((100, 1_000))
    for value in (0, 100, 101, 1_000, 1_001, 5_000_000):
        b.observe(value)
    # le=100: 0 and 100; le=1000: and 101, 1000; +Inf: all six. Sum of the values themselves.
    assert b.snapshot() == ([2, 4, 6], 0 + 100 + 101 + 1_000 + 1_001 + 5_000_000)


def test_hostile_label_values_fold_into_other_past_the_series_limit():
    counts: dict = {}
    for i in range(SERIES_MAX + 5):
        count_into(counts, (f"{i:06d}",), (OTHER,))
    assert len(counts) == SERIES_MAX + 1
    assert counts[(OTHER,)] == 5
    count_into(counts, ("000000",), (OTHER,))  # a key already held keeps counting as itself
    assert counts[("000000",)] == 2


def test_traffic_names_a_reversals_program_by_bin_and_a_gated_request_by_its_line():
    asked: list[str] = []

    def program_of(pan: str) -> str:
        asked.append(pan)
        return "namdong"

    t = Traffic(program_of=program_of)
    t.answered({"mti": "0200", "processing_code": "000000", "program": "seo", "latency_us": 150},
               {"2": "9410400000000011"}, "0210", "00")
    t.answered({"mti": "0400", "processing_code": "000000", "latency_us": 90}, {"2": "9410100000000011"}, "0410", "00")
    t.dropped({"mti": "0210"}, {"t": "0210"})
    assert asked == ["9410100000000011"]  # only the reversal's BIN was looked up
    assert t.messages == {("0200", "000000", "seo", "0210", "00"): 1, ("0400", "000000", "namdong", "0410", "00"): 1,
                          ("0210", "", "", "", ""): 1}
    assert {k: b.snapshot() for k, b in t.latency.items()} == {
        ("02", "seo"): ([0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 150),
        ("04", "namdong"): ([1] * 14, 90)}


# ---------------------------------------------------------------------------- health rules (pure)

def test_readiness_names_the_first_reason_it_is_not_ready():
    ok = ReadyView(listening=True, draining=False, writer_running=True, failed_groups=0,
                   hsms=("127.0.0.1:1500", "127.0.0.1:1501"), healthy_hsms=("127.0.0.1:1501",))
    from dataclasses import replace

    assert readiness(ok) == (True, "ready")
    assert readiness(replace(ok, hsms=(), healthy_hsms=())) == (True, "ready")  # no HSM configured
    assert readiness(replace(ok, draining=True, failed_groups=3)) == (
        False, "draining: stopping, answering what is in flight")
    assert readiness(replace(ok, listening=False)) == (False, "not listening for terminals yet")
    assert readiness(replace(ok, writer_running=False)) == (False, "ledger: the writer is not running")
    assert readiness(replace(ok, failed_groups=2)) == (
        False, "ledger: the last 2 group commit(s) failed; none committed since")
    assert readiness(replace(ok, healthy_hsms=())) == (
        False, "hsm: none of 127.0.0.1:1500, 127.0.0.1:1501 is healthy")


def test_liveness_fails_when_the_event_loop_has_not_turned_for_ten_seconds():
    now = [100.0]
    beat = LoopHeartbeat(clock=lambda: now[0])
    assert beat.health() == (True, "alive")
    now[0] += 10.0
    assert beat.health() == (True, "alive")
    now[0] += 0.5
    assert beat.health() == (False, "event loop stalled: no turn for 10.5 s (limit 10 s)")
    assert loop_health(3.0, stall_s_max=2.0) == (False, "event loop stalled: no turn for 3.0 s (limit 2 s)")


# ---------------------------------------------------------------------------- the switch's collector

async def test_the_collector_counts_each_message_by_mti_code_program_and_rc(switch_metered):
    m = switch_metered
    env, registry, writer = m.env, m.registry, m.env.core.writer
    batches_before, units_before = writer.batches, writer.units
    client, term = await env.signed_on()  # 0800 → 0810 00
    namdong, incheon = env.cards["namdong"]["pan"], env.cards["incheon"]["pan"]
    bought = term.purchase(namdong, 20_000)
    assert (await client.request(bought))["39"] == "00"
    assert (await client.request(term.purchase(namdong, 500_000)))["39"] == "51"  # 80,000 left
    assert (await client.request(term.purchase(incheon, 10_000)))["39"] == "00"
    assert (await client.request(term.reversal(bought)))["39"] == "00"  # not gated: named by its BIN
    # a response MTI sent as a request: read, not answerable, dropped (and its connection closed)
    stray = await env.client().connect()
    await stray.send_raw(frame(env.dialect.framing, encode_fields({"t": "0210", "11": "000009", "39": "00"},
                                                                   env.dialect)))
    await eventually(lambda: len(env.server.connections) == 1, what="the switch to close the stray connection")

    assert samples(registry, "eum_requests_total") == {
        labels(mti="0800", processing_code="", program=""): 1,
        labels(mti="0200", processing_code="000000", program="namdong"): 2,
        labels(mti="0200", processing_code="000000", program="incheon"): 1,
        labels(mti="0400", processing_code="000000", program="namdong"): 1,
        labels(mti="0210", processing_code="", program=""): 1,
    }
    assert samples(registry, "eum_answers_total") == {
        labels(mti="0810", processing_code="", program="", rc="00"): 1,
        labels(mti="0210", processing_code="000000", program="namdong", rc="00"): 1,
        labels(mti="0210", processing_code="000000", program="namdong", rc="51"): 1,
        labels(mti="0210", processing_code="000000", program="incheon", rc="00"): 1,
        labels(mti="0410", processing_code="000000", program="namdong", rc="00"): 1,
    }
    answered = {labels(mti_class="08xx", program=""): 1, labels(mti_class="02xx", program="namdong"): 2,
                labels(mti_class="02xx", program="incheon"): 1, labels(mti_class="04xx", program="namdong"): 1}
    assert samples(registry, "eum_request_duration_seconds_count") == answered
    inf = {tuple(sorted(k + (("le", "+Inf"),))): v for k, v in answered.items()}
    assert {k: v for k, v in samples(registry, "eum_request_duration_seconds_bucket").items()
            if ("le", "+Inf") in k} == inf
    # connections: two admitted, one open, none closed by a limit or deadline
    assert samples(registry, "eum_connections_opened_total") == {(): 2}
    assert samples(registry, "eum_connections_open") == {(): 1}
    assert samples(registry, "eum_connections_closed_total") == {
        labels(reason=r): 0 for r in ("evicted", "frame_timeout", "signon_timeout", "idle", "framing")}
    assert samples(registry, "eum_connections_refused_total") == {labels(reason="per_peer_max"): 0,
                                                                 labels(reason="connections_max"): 0}
    # the program gate: three purchases took a slot (the reversal took none), all given back
    assert samples(registry, "eum_program_admitted_total") == {labels(program="namdong"): 2,
                                                              labels(program="incheon"): 1}
    assert set(samples(registry, "eum_program_in_flight").values()) == {0}
    assert set(samples(registry, "eum_program_shed_total").values()) == {0}
    # the ledger: every group since the collector was built, in the histograms; nothing failed
    groups, units = writer.batches - batches_before, writer.units - units_before
    assert groups >= 1
    assert samples(registry, "eum_ledger_group_size_count") == {(): groups}
    assert samples(registry, "eum_ledger_group_size_sum") == {(): units}
    assert samples(registry, "eum_ledger_commit_duration_seconds_count") == {(): groups}
    assert samples(registry, "eum_ledger_commit_failures_total") == {(): 0}
    # the outbox, read from the ledger on the collector's own connection: no relay, all unrelayed
    events = query(env.core.db_path, "SELECT COUNT(*) FROM outbox")[0][0]
    assert events > 0
    assert samples(registry, "eum_outbox_events_total") == {(): events}
    assert samples(registry, "eum_outbox_backlog") == {(): events}
    assert samples(registry, "eum_ready") == {(): 1}
    status, body = await get(m.http.port, "/metrics")
    assert status == 200 and 'eum_answers_total{mti="0210",processing_code="000000",program="incheon",rc="00"} 1.0' \
        in body.splitlines()
    await client.close()
    await stray.close()


async def test_the_outbox_backlog_counts_from_the_relays_position(switch_metered):
    """With --mqtt the relay's in-memory position (ahead of its durable mark by the batch being
    marked) is what the broker has; the relay's own figures are exposed as it keeps them."""
    from types import SimpleNamespace

    env = switch_metered.env
    events = query(env.core.db_path, "SELECT COUNT(*) FROM outbox")[0][0]
    assert events == 2  # the two cards' charges (conftest's provision)
    relay = SimpleNamespace(connected=True, published=1, reconnects=1, position=1)
    registry = registry_of(SwitchMetrics(env.server, env.core.writer, relay=relay, store=env.core.db_path))
    assert samples(registry, "eum_outbox_relayed_seq") == {(): 1}
    assert samples(registry, "eum_outbox_backlog") == {(): 1}
    assert samples(registry, "eum_relay_connected") == {(): 1}
    assert samples(registry, "eum_relay_published_total") == {(): 1}
    assert samples(registry, "eum_relay_reconnects_total") == {(): 1}


async def test_health_and_readiness_answer_200_on_a_serving_switch_and_404_elsewhere(switch_metered):
    port = switch_metered.http.port
    assert await get(port, "/healthz") == (200, "alive\n")
    assert await get(port, "/readyz") == (200, "ready\n")
    assert await get(port, "/other") == (404, "not found: /metrics, /healthz, /readyz\n")


async def test_a_failed_commit_makes_the_switch_unready_until_a_probe_commits(switch_metered):
    m = switch_metered
    env, writer = m.env, m.env.core.writer
    m.metrics.ledger_probe_s_min = 0.0  # probe at every /readyz (default: at most every 5 s)
    real = writer.commit_group
    failing = [True]

    def commit_group(conn, units):  # the writer's seam (tests/test_failure_paths.py): a full disk
        if failing[0]:
            raise sqlite3.OperationalError("database or disk is full")
        return real(conn, units)

    writer.commit_group = commit_group
    client, term = await env.signed_on()
    assert (await client.request(term.purchase(env.cards["namdong"]["pan"], 20_000)))["39"] == "96"
    status, body = await get(m.http.port, "/readyz")
    assert status == 503 and re.fullmatch(r"ledger: the last \d+ group commit\(s\) failed; none committed since\n",
                                          body), body
    assert samples(m.registry, "eum_ready") == {(): 0}
    assert samples(m.registry, "eum_ledger_commit_failures_total")[()] >= 1
    failing[0] = False  # space again: no terminal sends anything, the probe's empty group commits
    await eventually(lambda: http_get(m.http.port, "/readyz") == (200, "ready\n"),
                     what="/readyz to answer 200 once a probe commit succeeds")
    assert writer.failed_groups == 0
    await client.close()


async def test_draining_is_unready(switch_metered):
    m = switch_metered
    await m.env.server.stop()  # what SIGTERM does first; the fixture's stop() after it is a no-op
    assert await get(m.http.port, "/readyz") == (503, "draining: stopping, answering what is in flight\n")
    assert samples(m.registry, "eum_draining") == {(): 1}


async def test_hsm_calls_are_counted_per_hsm_and_command_and_no_healthy_hsm_is_unready(tmp_path):
    hsm = HsmServer(ServiceConfig(port=0))
    await hsm.start()
    name = f"127.0.0.1:{hsm.port}"
    cfg = HsmConfig(endpoints=(("127.0.0.1", hsm.port),), call_timeout_ms=500, health_interval_s=0.1,
                    reconnect_backoff_s_max=0.2)
    try:
        async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH), hsm=cfg) as env:
            m = await metered(env)
            try:
                # the first start had the HSM generate the switch's ZPK and PVK: two A0 (switch/ops/runtime.py)
                await env.core.hsm.call("NC", b"")
                assert samples(m.registry, "eum_hsm_calls_total") == {labels(hsm=name, command="A0"): 2,
                                                                     labels(hsm=name, command="NC"): 1}
                assert samples(m.registry, "eum_hsm_call_duration_seconds_count") == {labels(hsm=name): 3}
                assert samples(m.registry, "eum_hsm_up") == {labels(hsm=name): 1}
                assert samples(m.registry, "eum_hsm_connections_open") == {labels(hsm=name): 2}
                assert await get(m.http.port, "/readyz") == (200, "ready\n")
                await hsm.stop()
                await eventually(lambda: http_get(m.http.port, "/readyz")[0] == 503,
                                 what="/readyz to answer 503 once the HSM's health check fails")
                assert await get(m.http.port, "/readyz") == (503, f"hsm: none of {name} is healthy\n")
                assert samples(m.registry, "eum_hsm_up") == {labels(hsm=name): 0}
                with pytest.raises(HsmUnavailable):
                    await env.core.hsm.call("NC", b"")
                assert samples(m.registry, "eum_hsm_unavailable_total") == {(): 1}
            finally:
                m.metrics.stop()
                m.http.close()
    finally:
        await hsm.stop()


# ---------------------------------------------------------------------------- the HSM's own metrics

def parse_exposition(text: str) -> dict[str, dict[tuple, float]]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


async def test_the_hsm_exposes_its_commands_by_code_and_error_code():
    hsm = HsmServer(ServiceConfig(port=0))
    await hsm.start()
    http = MetricsHttp("127.0.0.1", 0)
    served = serve_metrics(http, hsm)
    # one connection, a health interval longer than the test: exactly one NC from the pool's start
    pool = HsmPool(HsmConfig(endpoints=(("127.0.0.1", hsm.port),), connections_per_hsm=1, health_interval_s=600))
    await pool.start()
    try:
        assert (await pool.call("B2", b"0002ok")).error == "00"
        assert (await pool.call("ZZ", b"")).error == "68"  # unknown command (docs/hsm.md §4)
        assert await get(http.port, "/readyz") == (200, "ready\n")
        status, body = await get(http.port, "/metrics")
        assert status == 200
        scraped = parse_exposition(body)
        assert scraped["eum_hsm_server_commands_total"] == {labels(code="NC", error="00"): 1,
                                                            labels(code="B2", error="00"): 1,
                                                            labels(code="ZZ", error="68"): 1}
        assert scraped["eum_hsm_server_connections_open"] == {(): 1}
    finally:
        await pool.close()
        await hsm.stop()
    assert await get(http.port, "/readyz") == (503, "not serving\n")
    served.heartbeat.stop()
    http.close()


async def test_the_hsm_counts_unanswered_commands_by_fault():
    hsm = HsmServer(ServiceConfig(port=0, fault_hang_share=1.0, fault_seed=1))
    await hsm.start()
    http = MetricsHttp("127.0.0.1", 0)
    served = serve_metrics(http, hsm)
    pool = HsmPool(HsmConfig(endpoints=(("127.0.0.1", hsm.port),), connections_per_hsm=1, health_interval_s=600,
                             call_timeout_ms=100))
    await pool.start()  # its NC hangs: the HSM never answers it
    try:
        scraped = parse_exposition((await get(http.port, "/metrics"))[1])
        assert scraped["eum_hsm_server_unanswered_total"] == {labels(code="NC", fault="hang"): 1}
        assert "eum_hsm_server_commands_total" not in scraped  # a family with no samples: only its HELP
    finally:
        await pool.close()
        await hsm.stop()
        served.heartbeat.stop()
        http.close()


# ---------------------------------------------------------------------------- the command line

def test_eum_switch_refuses_a_metrics_port_already_taken(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([*EUM, "switch", "--data-dir", str(tmp_path / "var"), "--listen", "127.0.0.1:0",
                               "--metrics", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=30,
                              cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"eum switch: --metrics 127.0.0.1:{port}: Address already in use"


def test_eum_switch_refuses_a_metrics_address_that_is_not_host_port(tmp_path):
    done = subprocess.run([*EUM, "switch", "--data-dir", str(tmp_path / "var"), "--metrics", "localhost:http"],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "eum: 'localhost:http' is not HOST:PORT"


# ---------------------------------------------------------------------------- end to end: a real Prometheus

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PIN = "1234"


def _prometheus_or_skip() -> None:
    if os.access(PROMETHEUS, os.X_OK):
        return
    reason = "the prometheus server binary is missing (Debian's package `prometheus`)"
    if os.environ.get("CI") == "true":  # .ci/run installs it: missing there is a defect, as for PostgreSQL
        pytest.fail(f"{reason}; CI installs it (.ci/run), so this is a defect", pytrace=False)
    pytest.skip(f"{reason} (.ci/run installs it)")


class Prometheus:
    """A private Prometheus server: a temp config and storage dir, a free loopback port."""

    def __init__(self, workdir: Path, targets: dict[str, int]) -> None:
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir()
        scrape = "\n".join(f"  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']"
                           for job, port in targets.items())
        (workdir / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - '{DOCS / 'alerts.yml'}'\n"
            f"scrape_configs:\n{scrape}\n")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Prometheus":
        with (self.workdir / "prometheus.log").open("w") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={self.workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_until(self._ready, what=f"prometheus to be ready on {self.port}", timeout_s=60)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _ready(self) -> bool:
        assert self.proc.poll() is None, (self.workdir / "prometheus.log").read_text()[-2000:]
        try:
            return http_get(self.port, "/-/ready")[0] == 200
        except OSError:
            return False

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)

    def api(self, path: str, **params: str) -> object:
        status, body = http_get(self.port, f"/api/v1/{path}?{urllib.parse.urlencode(params)}")
        reply = json.loads(body)
        assert status == 200 and reply["status"] == "success", (params, reply)
        return reply["data"]

    def query(self, promql: str) -> list[dict]:
        data = self.api("query", query=promql)
        return data["result"] if isinstance(data, dict) else data

    def value(self, promql: str) -> float:
        """One number: the single series the query returns (0 when it returns none)."""
        result = self.query(promql)
        assert len(result) <= 1, (promql, result)
        return float(result[0]["value"][1]) if result else 0.0

    def by(self, promql: str, label: str) -> dict[str, int]:
        return {r["metric"].get(label, ""): int(float(r["value"][1])) for r in self.query(promql)}


def _running_hsm(port: int, metrics_port: int, cwd: Path):
    with (cwd / "hsm.err").open("w") as err:
        proc = subprocess.Popen([*EUM, "hsm", "--listen", f"127.0.0.1:{port}", "--metrics",
                                 f"127.0.0.1:{metrics_port}"], cwd=cwd, stdout=subprocess.DEVNULL, stderr=err,
                                stdin=subprocess.DEVNULL)
    return proc


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    return proc.wait(timeout=30)


async def _provision_fleet(data_dir: Path, hsm_port: int, *, terminals: int, cards: int) -> Population:
    """Terminals of two security profiles (MAC'd, DUKPT with PINs) and charged cards, half of
    them with PIN 1234, through the real operations, with an in-process HSM the test started."""
    cfg = HsmConfig(endpoints=(("127.0.0.1", hsm_port),), call_timeout_ms=2000)
    async with start_switch(data_dir, clock=FixedClock(LAUNCH), hsm=cfg) as env:
        await env.op("merchant-add", mid="NAMDONG01", name="Namdong Cafe", district="namdong",
                     annual_sales=250_000_000)
        out_terminals = []
        for i in range(1, terminals + 1):
            tid, security = f"T{i:07d}", ("mac", "dukpt-tdes")[i % 2]
            added = await env.op("terminal-add", tid=tid, mid="NAMDONG01", security=security, keys="test")
            out_terminals.append({"tid": tid, "mid": "NAMDONG01", "security": security, "keys": "test",
                                  **({"ksn": added["ksn"]} if "ksn" in added else {})})
        out_cards = []
        for i in range(cards):
            pin = PIN if i % 2 else None
            card = await env.op("card-issue", program=("namdong", "incheon")[i % 2], **({"pin": pin} if pin else {}))
            await env.op("card-charge", pan=card["pan"], amount=1_000_000)
            out_cards.append({"pan": card["pan"], "expiry": card["expiry"], "pin": pin})
    return Population.from_dict({"dialect": "default", "terminals": out_terminals, "cards": out_cards})


def _dashboard_panels() -> dict[str, list[str]]:
    """Every panel of docs/grafana-dashboard.json: its title and its targets' PromQL, with
    Grafana's variables replaced as Grafana would for "All" instances over a short range."""
    board = json.loads((DOCS / "grafana-dashboard.json").read_text(encoding="utf-8"))
    out: dict[str, list[str]] = {}
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        exprs = [t["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*") for t in panel["targets"]]
        assert exprs and not any("$" in e for e in exprs), (panel["title"], exprs)
        out[panel["title"]] = exprs
    return out


def _alert_names() -> list[str]:
    """The alerts docs/alerts.yml defines, in order (one `- alert: Name` line each)."""
    return re.findall(r"^\s*- alert: (\S+)\s*$", (DOCS / "alerts.yml").read_text(encoding="utf-8"), re.M)


def test_the_alert_rules_file_passes_promtool():
    if not os.access(PROMTOOL, os.X_OK):
        _prometheus_or_skip()  # promtool ships in the same package
        pytest.skip("promtool is missing")
    done = subprocess.run([PROMTOOL, "check", "rules", str(DOCS / "alerts.yml")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_alert_names())} rules found" in done.stdout


async def test_prometheus_scrapes_exactly_what_the_fleet_counted(tmp_path):
    """The fleet: 4 terminals (MAC'd and DUKPT), the standard scenario, 100/s for 3 s (≈ 300
    transactions) against `eum switch --hsm --metrics` and `eum hsm --metrics`, both scraped
    every second. Once both have been scraped after the fleet's last answer, PromQL over the
    stored samples equals the fleet report's counts, and the HSM's own count of commands
    equals the switch's count of HSM calls."""
    _prometheus_or_skip()
    data_dir = tmp_path / "var"
    provisioning_hsm = HsmServer(ServiceConfig(port=0))  # the keys live under the test LMK, as in eum hsm
    await provisioning_hsm.start()
    try:
        population = await _provision_fleet(data_dir, provisioning_hsm.port, terminals=4, cards=20)
    finally:
        await provisioning_hsm.stop()
    hsm_port, hsm_metrics, switch_metrics = free_port(), free_port(), free_port()
    hsm = _running_hsm(hsm_port, hsm_metrics, tmp_path)
    try:
        wait_until(lambda: listening(hsm_port, hsm) and listening(hsm_metrics, hsm),
                   what=f"eum hsm to listen on {hsm_port} and serve metrics on {hsm_metrics}")
        with running_switch(data_dir, tmp_path, "--hsm", f"127.0.0.1:{hsm_port}",
                            "--metrics", f"127.0.0.1:{switch_metrics}") as switch, \
                Prometheus(tmp_path / "prometheus", {"eum-switch": switch_metrics, "eum-hsm": hsm_metrics}) as prom:
            assert await get(switch_metrics, "/readyz") == (200, "ready\n")
            await asyncio.to_thread(wait_until, lambda: prom.value('sum(up{job=~"eum-switch|eum-hsm"})') == 2,
                                    what="prometheus to scrape both targets")
            config = FleetConfig(host="127.0.0.1", port=switch.port, population=population, terminals=4,
                                 rate_per_s=100.0, duration_s=3.0, scenario=load_scenario("standard"), seed=3,
                                 progress=False, state_dir=tmp_path / "fleet", response_timeout_ms=3000.0)
            report = await run_fleet(config)
            ended = time.time()
            assert report.timeouts == 0 and report.sent == report.responses >= 100
            assert report.mac_invalid == 0 and report.mac_missing == 0
            await asyncio.to_thread(
                wait_until, lambda: prom.value('min(timestamp(up{job=~"eum-switch|eum-hsm"}))') > ended,
                what="a scrape of both targets that began after the fleet's last answer")

            financial = sum(report.by_kind[k]["sent"] for k in ("purchase", "refund", "balance"))
            assert prom.value('sum(eum_requests_total{job="eum-switch",mti="0200"})') == financial
            assert prom.value('sum(eum_requests_total{job="eum-switch",mti="0400"})') == report.by_kind["reversal"]["sent"]
            assert prom.value('sum(eum_requests_total{job="eum-switch",mti="0800"})') == 4 + report.echoes_sent
            assert prom.by('sum by (rc) (eum_answers_total{job="eum-switch",mti=~"0210|0410"})', "rc") == report.by_rc
            assert prom.value('sum(eum_answers_total{job="eum-switch",mti=~"0210|0410",rc="00"})') == report.approved
            assert prom.value('sum(eum_request_duration_seconds_count{job="eum-switch",mti_class="02xx"})') == financial
            # every HSM command the switch's calls sent, the HSM answered and counted (health checks aside)
            calls = prom.value('sum(eum_hsm_calls_total{job="eum-switch",command!="NC"})')
            assert calls > 0 and prom.value('sum(eum_hsm_server_commands_total{job="eum-hsm",code!="NC"})') == calls
            assert prom.value('sum(eum_hsm_up{job="eum-switch"})') == 1
            assert prom.value('eum_ready{job="eum-switch"}') == 1

            # the dashboard's queries and the alert rules, against the same data
            panels = _dashboard_panels()
            assert len(panels) == 21
            empty = [title for title, exprs in panels.items() if not any([prom.query(e) for e in exprs])]
            assert empty == ["Outbox relay: connected, published/s"], empty  # no --mqtt in this run
            names = _alert_names()

            def evaluated() -> list[dict]:  # every rule of the file loaded and evaluated at least once
                loaded = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
                done = [r for r in loaded if not r.get("lastEvaluation", "0001").startswith("0001")]
                return loaded if len(loaded) == len(names) == len(done) else []

            loaded = await asyncio.to_thread(wait_until, evaluated, what="prometheus to evaluate every rule once")
            assert sorted(r["name"] for r in loaded) == sorted(names)
            assert {r["name"]: (r["health"], r.get("lastError", "")) for r in loaded} == {n: ("ok", "") for n in names}
            for rule in loaded:
                prom.query(rule["query"])  # and as an instant query (a failure raises with Prometheus' error)
            quantiles = {q: prom.value(q) for q in (
                'histogram_quantile(0.99, sum by (le) (rate(eum_request_duration_seconds_bucket{mti_class="02xx"}[1m])))',
                'histogram_quantile(0.99, sum by (le) (rate(eum_hsm_call_duration_seconds_bucket[1m])))',
                'histogram_quantile(0.99, sum by (le) (rate(eum_ledger_commit_duration_seconds_bucket[1m])))')}
            active = [r["name"] for r in loaded if r["state"] != "inactive"]
            assert active == [], (active, quantiles)  # a healthy run raises none, not even pending
    finally:
        assert _stop(hsm) == 0, (tmp_path / "hsm.err").read_text()[-2000:]
