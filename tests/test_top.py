"""`eum top`, the live console (switch/ops/top.py; docs/operations.md, "Live console").

- The computations on fixed scrape texts: rates per second between two scrapes (network
  management left out, a new series counted from 0, a reset counter from its new value),
  p50/p99 from the interval's buckets, HSM, ledger and outbox figures; the log's window of
  declining terminals. No published vectors exist for these: every expected value is worked
  out by hand in the test (Prometheus' `histogram_quantile` interpolation: linear inside the
  bucket the rank falls in, the first bucket starting at 0).
- End to end: a real `eum switch --metrics` under a bounded fleet, `eum top` running inside a
  tmux session of 80×24, and the captured screen: its row labels, a rate above 0 for the
  program driven, the 00 row, and the declining terminals the switch's log holds.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import os
import shutil
import subprocess
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from conftest import LAUNCH, start_switch
from fault_harness import free_port
from switch.clock import FixedClock
from switch.domain import KST
from switch.ops.top import (DeclineWindow, Figures, LogTail, Scrape, Screen, TerminalRow, figures, metrics_url,
                            parse_samples, quantile, render)
from switch_process import EUM, running_switch
from terminal_sim.fleet import FleetConfig, Population, run_fleet
from terminal_sim.scenario import Scenario
from waiting import eventually, wait_until

TMUX = shutil.which("tmux")


# ---------------------------------------------------------------------------- computations

BEFORE = """\
# TYPE eum_requests counter
eum_requests_total{mti="0200",processing_code="000000",program="namdong"} 100.0
eum_requests_total{mti="0800",processing_code="990000",program=""} 4.0
# TYPE eum_answers counter
eum_answers_total{mti="0210",processing_code="000000",program="namdong",rc="00"} 90.0
eum_answers_total{mti="0210",processing_code="000000",program="namdong",rc="51"} 10.0
eum_answers_total{mti="0810",processing_code="990000",program="",rc="00"} 4.0
# TYPE eum_request_duration_seconds histogram
eum_request_duration_seconds_bucket{le="0.001",mti_class="02xx",program="namdong"} 50.0
eum_request_duration_seconds_bucket{le="0.002",mti_class="02xx",program="namdong"} 90.0
eum_request_duration_seconds_bucket{le="0.005",mti_class="02xx",program="namdong"} 100.0
eum_request_duration_seconds_bucket{le="+Inf",mti_class="02xx",program="namdong"} 100.0
eum_request_duration_seconds_count{mti_class="02xx",program="namdong"} 100.0
eum_request_duration_seconds_sum{mti_class="02xx",program="namdong"} 0.15
# TYPE eum_hsm_up gauge
eum_hsm_up{hsm="127.0.0.1:1500"} 1.0
eum_hsm_up{hsm="127.0.0.1:1501"} 1.0
# TYPE eum_hsm_calls counter
eum_hsm_calls_total{command="CA",hsm="127.0.0.1:1500"} 10.0
eum_hsm_calls_total{command="NC",hsm="127.0.0.1:1500"} 3.0
# TYPE eum_hsm_call_failures counter
eum_hsm_call_failures_total{hsm="127.0.0.1:1501",reason="timeout"} 0.0
# TYPE eum_ledger_commits counter
eum_ledger_commits_total 50.0
# TYPE eum_ledger_commit_duration_seconds histogram
eum_ledger_commit_duration_seconds_bucket{le="0.001"} 10.0
eum_ledger_commit_duration_seconds_bucket{le="0.002"} 40.0
eum_ledger_commit_duration_seconds_bucket{le="+Inf"} 50.0
eum_ledger_commit_duration_seconds_count 50.0
eum_ledger_commit_duration_seconds_sum 0.08
# TYPE eum_outbox_backlog gauge
eum_outbox_backlog 7.0
"""

# Two seconds later: namdong +200 requests (+180 approved, +20 declined 51), a program new
# since the first scrape (seo, +40, all approved), echoes (0800/0810) that must not count.
AFTER = """\
# TYPE eum_requests counter
eum_requests_total{mti="0200",processing_code="000000",program="namdong"} 300.0
eum_requests_total{mti="0200",processing_code="000000",program="seo"} 40.0
eum_requests_total{mti="0800",processing_code="990000",program=""} 10.0
# TYPE eum_answers counter
eum_answers_total{mti="0210",processing_code="000000",program="namdong",rc="00"} 270.0
eum_answers_total{mti="0210",processing_code="000000",program="namdong",rc="51"} 30.0
eum_answers_total{mti="0210",processing_code="000000",program="seo",rc="00"} 40.0
eum_answers_total{mti="0810",processing_code="990000",program="",rc="00"} 10.0
# TYPE eum_request_duration_seconds histogram
eum_request_duration_seconds_bucket{le="0.001",mti_class="02xx",program="namdong"} 130.0
eum_request_duration_seconds_bucket{le="0.002",mti_class="02xx",program="namdong"} 250.0
eum_request_duration_seconds_bucket{le="0.005",mti_class="02xx",program="namdong"} 300.0
eum_request_duration_seconds_bucket{le="+Inf",mti_class="02xx",program="namdong"} 300.0
eum_request_duration_seconds_count{mti_class="02xx",program="namdong"} 300.0
eum_request_duration_seconds_sum{mti_class="02xx",program="namdong"} 0.45
eum_request_duration_seconds_bucket{le="0.001",mti_class="02xx",program="seo"} 0.0
eum_request_duration_seconds_bucket{le="0.002",mti_class="02xx",program="seo"} 20.0
eum_request_duration_seconds_bucket{le="0.005",mti_class="02xx",program="seo"} 40.0
eum_request_duration_seconds_bucket{le="+Inf",mti_class="02xx",program="seo"} 40.0
eum_request_duration_seconds_count{mti_class="02xx",program="seo"} 40.0
eum_request_duration_seconds_sum{mti_class="02xx",program="seo"} 0.1
# TYPE eum_hsm_up gauge
eum_hsm_up{hsm="127.0.0.1:1500"} 1.0
eum_hsm_up{hsm="127.0.0.1:1501"} 0.0
# TYPE eum_hsm_calls counter
eum_hsm_calls_total{command="CA",hsm="127.0.0.1:1500"} 30.0
eum_hsm_calls_total{command="NC",hsm="127.0.0.1:1500"} 5.0
# TYPE eum_hsm_call_failures counter
eum_hsm_call_failures_total{hsm="127.0.0.1:1501",reason="timeout"} 4.0
# TYPE eum_hsm_call_duration_seconds histogram
eum_hsm_call_duration_seconds_bucket{hsm="127.0.0.1:1500",le="0.001"} 20.0
eum_hsm_call_duration_seconds_bucket{hsm="127.0.0.1:1500",le="+Inf"} 20.0
eum_hsm_call_duration_seconds_count{hsm="127.0.0.1:1500"} 20.0
eum_hsm_call_duration_seconds_sum{hsm="127.0.0.1:1500"} 0.01
# TYPE eum_ledger_commits counter
eum_ledger_commits_total 70.0
# TYPE eum_ledger_commit_duration_seconds histogram
eum_ledger_commit_duration_seconds_bucket{le="0.001"} 10.0
eum_ledger_commit_duration_seconds_bucket{le="0.002"} 50.0
eum_ledger_commit_duration_seconds_bucket{le="+Inf"} 70.0
eum_ledger_commit_duration_seconds_count 70.0
eum_ledger_commit_duration_seconds_sum 0.2
# TYPE eum_ledger_queue gauge
eum_ledger_queue 3.0
# TYPE eum_ledger_failed_groups gauge
eum_ledger_failed_groups 0.0
# TYPE eum_outbox_backlog gauge
eum_outbox_backlog 12.0
# TYPE eum_outbox_oldest_unrelayed_age_seconds gauge
eum_outbox_oldest_unrelayed_age_seconds 2.5
# TYPE eum_ready gauge
eum_ready 1.0
# TYPE eum_draining gauge
eum_draining 0.0
# TYPE eum_connections_open gauge
eum_connections_open 4.0
"""


def _figures() -> Figures:
    return figures(Scrape(10.0, parse_samples(BEFORE)), Scrape(12.0, parse_samples(AFTER)))


def test_rates_are_per_second_over_the_interval_without_network_management():
    f = _figures()
    assert f.interval_s == 2.0
    assert (f.requests_per_s, f.approved_per_s, f.answers_per_s) == (120.0, 110.0, 120.0)  # (200 + 40) / 2 s
    assert [(r.program, r.requests_per_s, r.approved_per_s, r.declined_per_s) for r in f.programs] == [
        ("namdong", 100.0, 90.0, 10.0), ("seo", 20.0, 20.0, 0.0)]
    assert [(c.rc, c.per_s, c.total) for c in f.codes] == [("00", 110.0, 310), ("51", 10.0, 30)]
    assert (f.ready, f.draining, f.connections_open) == (True, False, 4)


def test_percentiles_interpolate_inside_the_buckets_of_the_interval():
    f = _figures()
    # namdong over the interval: le 1 ms 80, 2 ms 160, 5 ms 200. p99: rank 198, in (2, 5] ms
    # holding 40: 2 + 3 × (198 − 160) / 40 = 4.85 ms
    assert f.programs[0].p99_s == pytest.approx(0.00485, abs=1e-12)
    # seo: 0, 20, 40. p99: rank 39.6 in (2, 5] ms: 2 + 3 × 19.6 / 20 = 4.94 ms
    assert f.programs[1].p99_s == pytest.approx(0.00494, abs=1e-12)
    # both financial: 80, 180, 240. p50: rank 120 in (1, 2]: 1 + 40 / 100 = 1.4 ms;
    # p99: rank 237.6 in (2, 5]: 2 + 3 × 57.6 / 60 = 4.88 ms
    assert f.p50_s == pytest.approx(0.0014, abs=1e-12)
    assert f.p99_s == pytest.approx(0.00488, abs=1e-12)
    # commits: 0, 10, 20 (+Inf). p50: rank 10 in (1, 2] ms holding 10: 2 ms; p99: rank 19.8
    # lands in +Inf: the largest finite bound, 2 ms
    assert (f.commit_p50_s, f.commit_p99_s) == (0.002, 0.002)
    assert f.commits_per_s == 10.0


def test_hsm_ledger_and_outbox_figures():
    f = _figures()
    assert [(h.hsm, h.up, h.calls_per_s, h.failures_per_s, h.p99_s) for h in f.hsms] == [
        ("127.0.0.1:1500", True, 10.0, 0.0, pytest.approx(0.00099, abs=1e-12)),  # NC left out; p99 1 × 19.8 / 20 ms
        ("127.0.0.1:1501", False, 0.0, 2.0, None)]
    assert (f.ledger_queue, f.failed_groups, f.outbox_backlog, f.outbox_lag_s, f.broker_connected) == (
        3, 0, 12, 2.5, None)


def test_a_counter_that_went_down_was_reset_and_counts_from_its_new_value():
    before = parse_samples('# TYPE eum_requests counter\neum_requests_total{mti="0200",program="seo"} 500.0\n')
    after = parse_samples('# TYPE eum_requests counter\neum_requests_total{mti="0200",program="seo"} 30.0\n')
    f = figures(Scrape(0.0, before), Scrape(3.0, after))
    assert [(r.program, r.requests_per_s) for r in f.programs] == [("seo", 10.0)]


def test_quantile_edges():
    inf = math.inf
    assert quantile(0.5, [(1.0, 0.0), (2.0, 4.0), (inf, 4.0)]) == 1.5
    assert quantile(0.25, [(1.0, 4.0), (inf, 4.0)]) == 0.25  # the first bucket starts at 0
    assert quantile(0.99, [(1.0, 0.0), (inf, 0.0)]) is None  # nothing observed
    assert quantile(0.99, []) is None
    assert quantile(0.5, [(1.0, 0.0), (inf, 3.0)]) == 1.0


def test_metrics_url_takes_what_eum_switch_metrics_takes():
    assert metrics_url("127.0.0.1:9464") == "http://127.0.0.1:9464/metrics"
    assert metrics_url("http://127.0.0.1:9464") == "http://127.0.0.1:9464/metrics"
    assert metrics_url("http://h:1/x/metrics") == "http://h:1/x/metrics"


def test_once_against_nothing_listening_says_so_and_exits_2(tmp_path):
    port = free_port()
    done = subprocess.run([*EUM, "top", "--once", "--switch-metrics", f"127.0.0.1:{port}"], capture_output=True,
                          text=True, timeout=30, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"eum top: scrape failed: http://127.0.0.1:{port}/metrics: [Errno 111] Connection refused\n"


def _message(at: datetime, terminal: str, rc: str, mti: str = "0200") -> dict:
    return {"event": "message", "ts": at.isoformat(), "terminal": terminal, "rc": rc, "mti": mti}


def test_declining_terminals_are_counted_over_the_window_from_message_lines():
    now = datetime(2026, 1, 5, 12, 0, 0, tzinfo=KST)
    w = DeclineWindow(window_s=60)
    w.add([_message(now - timedelta(seconds=61), "T0000009", "51"),  # before the window
           _message(now - timedelta(seconds=30), "T0000001", "51"),
           _message(now - timedelta(seconds=20), "T0000001", "55"),
           _message(now - timedelta(seconds=10), "T0000001", "55"),
           _message(now - timedelta(seconds=10), "T0000001", "00"),
           _message(now - timedelta(seconds=5), "T0000002", "51"),
           _message(now - timedelta(seconds=5), "T0000002", "00"),
           _message(now - timedelta(seconds=5), "T0000003", "00"),
           _message(now - timedelta(seconds=5), "T0000004", "00", mti="0800"),
           {"event": "hsm_down", "ts": now.isoformat(), "terminal": "T0000005", "rc": "91"}])
    assert w.top(now) == [TerminalRow("T0000001", 3, 4, "55"), TerminalRow("T0000002", 1, 2, "51")]
    assert w.top(now, rows_max=1) == [TerminalRow("T0000001", 3, 4, "55")]


def test_the_log_tail_reads_new_whole_lines_and_follows_a_rotation(tmp_path):
    log = tmp_path / "switch.jsonl"
    log.write_text('{"n": 1}\n{"n": 2}\n{"n": ')
    tail = LogTail(log, tail_bytes=17)  # starts inside the first line: its rest is dropped
    assert tail.events() == [{"n": 2}]
    with log.open("a") as f:
        f.write('3}\n')
    assert tail.events() == [{"n": 3}]
    log.rename(tmp_path / "switch.jsonl.1")
    log.write_text('{"n": 4}\n')
    assert tail.events() == [{"n": 4}]
    tail.close()


def test_a_frame_fits_80_by_24():
    from rich.console import Console

    screen = Screen("http://127.0.0.1:9464/metrics", 1.0, "12:00:00", _figures(), "",
                    [TerminalRow("T0000001", 3, 4, "55")], "from the switch's log")
    console = Console(width=80, height=24, record=True, color_system=None)
    console.print(render(screen))
    lines = console.export_text().splitlines()
    assert len(lines) == 24 and max(len(line) for line in lines) <= 80
    text = "\n".join(lines)
    assert "req/s 120.0  approved/s 110.0 (91.7 %)  p50 1.4 ms  p99 4.9 ms" in text
    assert re.search(r"^namdong +100\.0 +90\.0 +10\.0 +4\.9 ms +00 +approved +110\.0 +310 *$", text, re.M), text
    assert re.search(r"^127\.0\.0\.1:1501 +DOWN +0\.0 +2\.0 +—", text, re.M), text
    assert re.search(r"^T0000001 +3 +4 +55 incorrect pin", text, re.M), text


# ---------------------------------------------------------------------------- end to end, in tmux

async def _provision(data_dir: Path) -> Population:
    """Four open terminals, five namdong cards: four charged, one never charged (its purchases
    are declined 51, so some terminals decline)."""
    async with start_switch(data_dir, clock=FixedClock(LAUNCH)) as env:
        await env.op("merchant-add", mid="NAMDONG01", name="Namdong Cafe", district="namdong",
                     annual_sales=250_000_000)
        terminals = []
        for i in range(1, 5):
            await env.op("terminal-add", tid=f"T{i:07d}", mid="NAMDONG01", security="none", keys="test")
            terminals.append({"tid": f"T{i:07d}", "mid": "NAMDONG01", "security": "none", "keys": "test"})
        cards = []
        for i in range(5):
            card = await env.op("card-issue", program="namdong")
            if i < 4:
                await env.op("card-charge", pan=card["pan"], amount=2_000_000)
            cards.append({"pan": card["pan"], "expiry": card["expiry"], "pin": None})
    return Population.from_dict({"dialect": "default", "terminals": terminals, "cards": cards})


def _capture(tmux: list[str], session: str) -> list[str]:
    done = subprocess.run([*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True, timeout=10)
    return done.stdout.split("\n")[:-1] if done.returncode == 0 else []


def _declines_in_log(data_dir: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (data_dir / "logs" / "switch.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("event") == "message" and e.get("rc") not in (None, "", "00") and not e["mti"].startswith("08"):
            out[e["terminal"]] = out.get(e["terminal"], 0) + 1
    return out


async def test_eum_top_in_tmux_shows_the_switch_under_load(tmp_path):
    """A fleet of 4 terminals at 40/s for 8 s against `eum switch --metrics`; `eum top` in an
    80×24 tmux session shows namdong's rate above 0 and approvals under 00 while it runs, and
    once it has stopped, the declining terminals the switch's log holds, with their counts;
    `--once` prints the same 80×24 frame; q quits."""
    if TMUX is None:
        if os.environ.get("CI") == "true":  # .ci/run installs it: under CI a missing tmux is a failure
            pytest.fail("tmux is not installed (.ci/run installs it with apt-get)")
        pytest.skip("tmux is not installed (Debian: apt-get install tmux)")
    data_dir = tmp_path / "var"
    population = await _provision(data_dir)
    metrics_port = free_port()
    session = f"eum-top-{uuid.uuid4().hex[:8]}"
    tmux = [TMUX, "-L", session]  # a tmux server of the test's own, apart from anyone else's
    with running_switch(data_dir, tmp_path, "--metrics", f"127.0.0.1:{metrics_port}") as switch:
        command = " ".join([*EUM, "top", "--switch-metrics", f"127.0.0.1:{metrics_port}", "--data-dir", str(data_dir)])
        subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "80", "-y", "24", command],
                       check=True, timeout=10, cwd=tmp_path)
        try:
            config = FleetConfig(host="127.0.0.1", port=switch.port, population=population, terminals=4,
                                 rate_per_s=40.0, duration_s=8.0, scenario=Scenario(name="purchases"), seed=5,
                                 progress=False, state_dir=tmp_path / "fleet", response_timeout_ms=3000.0)
            fleet = asyncio.create_task(run_fleet(config))

            def under_load() -> list[str]:
                lines = _capture(tmux, session)
                row = next((line for line in lines if line.startswith("namdong ")), "")
                rate = re.match(r"namdong +(\d+\.\d)", row)
                ok = rate and float(rate.group(1)) > 0 and any(re.match(r".* 00 +approved +\d", x) for x in lines)
                return lines if ok else []

            lines = await eventually(lambda: asyncio.to_thread(under_load), what="eum top to show namdong's "
                                     "rate above 0 and a 00 row while the fleet runs", timeout_s=30)
            assert not fleet.done()  # seen under load, not after it
            assert len(lines) == 24 and max(len(line) for line in lines) <= 80, lines
            assert lines[0].startswith("eum top http://127.0.0.1:")
            assert re.match(r"ready  conns [1-4]  req/s \d+\.\d  approved/s \d+\.\d \(\d+\.\d %\)  p50 ", lines[1]), lines[1]
            labels = [line.split()[0] if line.split() else "" for line in lines]
            assert labels[2:4] == ["Programs", "program"] and "Response codes" in lines[2]
            assert lines[3].split() == ["program", "req/s", "ok/s", "decl/s", "p99", "rc", "meaning", "/s", "total"]
            assert labels[10:12] == ["HSM", "hsm"] and "Ledger and outbox" in lines[10]
            assert lines[12].startswith("none configured") and lines[11].split()[-2] == "commits/s"
            assert lines[15].split() == ["relay", "no", "--mqtt"]
            assert lines[16].startswith("Top declining terminals, last 60 s (from the switch's log)")
            assert lines[17].split() == ["terminal", "declines", "answers", "top", "rc"]

            report = await fleet
            assert report.timeouts == 0 and report.sent == report.responses > 200
            expected = _declines_in_log(data_dir)
            assert sum(expected.values()) == sum(n for rc, n in report.by_rc.items() if rc != "00") > 0

            def settled_rows() -> dict[str, int]:
                rows = {}
                for line in _capture(tmux, session)[18:]:
                    m = re.match(r"(T\d{7}) +(\d+) +(\d+) +\d\d ", line)
                    if m:
                        rows[m.group(1)] = int(m.group(2))
                return rows if rows == expected else {}  # 4 terminals: all fit in the table's 5 rows

            await asyncio.to_thread(wait_until, settled_rows, what="eum top's declining terminals to equal the log's")

            once = subprocess.run([*EUM, "top", "--once", "--switch-metrics", f"127.0.0.1:{metrics_port}"],
                                  capture_output=True, text=True, timeout=30, cwd=tmp_path)
            frame = once.stdout.split("\n")[:-1]
            assert (once.returncode, len(frame), max(len(line) for line in frame)) == (0, 24, 80), once.stderr
            assert frame[16].startswith("Top declining terminals, last 60 s (no --data-dir)")

            subprocess.run([*tmux, "send-keys", "-t", session, "q"], check=True, timeout=10)
            def gone() -> bool:
                return subprocess.run([*tmux, "has-session", "-t", session], capture_output=True,
                                      timeout=10).returncode == 1

            await asyncio.to_thread(wait_until, gone, what="eum top to quit on q (its tmux session then ends)")
        finally:
            subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=10)  # our own socket's server only
