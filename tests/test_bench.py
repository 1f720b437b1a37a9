"""The benchmark suite's parts: the bare responder on the wire, the codec micro-benchmark,
the /proc CPU reader, the ledger-vs-fleet check, the result writers and plots, and (when the
fleet exists) a tiny end-to-end `run_bench` smoke run.

Every process is on a free loopback port, under a timeout, and stopped by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.bench import (
    REQUIRED_KEYS,
    BenchPlan,
    SwitchRun,
    check_run,
    cores_busy,
    kst_now_iso,
    latency_targets,
    markdown,
    plot_rates,
    process_cpu_s,
    result_stem,
    run_bench,
    throughput_targets,
    write_json,
)
from benchmarks.codec_bench import codec_bench
from benchmarks.plots import (CEILING_NOTE, latency_figure, percentile_points, plot_latency, plot_throughput,
                              throughput_figure, whole_seconds)
from benchmarks.plots import plt  # the Agg backend, set by benchmarks.plots
from benchmarks.responder import Responder
from switch.wire.codec import decode_fields, encode_fields, load_dialect
from waiting import wait_until
from switch.wire.framing import FrameBuffer, frame
from switch.ledger.store import open_store
from terminal_sim.client import TerminalClient
from terminal_sim.terminal import Terminal

ROOT = Path(__file__).resolve().parents[1]
PROCESS_TIMEOUT_S = 20


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def spawn(tmp_path):
    """Starts processes; each one still running at the end is stopped by its PID."""
    started: list[subprocess.Popen] = []

    def start(argv: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(tmp_path / "err").open("ab"),
                                stdin=subprocess.DEVNULL)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=PROCESS_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=PROCESS_TIMEOUT_S)


def wait_listening(port: int, proc: subprocess.Popen) -> None:
    import socket

    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the process exited while starting"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


# ---------------------------------------------------------------------------- responder

async def test_responder_process_answers_a_terminal_client_with_the_response_mti(spawn):
    port = free_port()
    proc = spawn([sys.executable, str(ROOT / "benchmarks" / "responder.py"), "--listen", f"127.0.0.1:{port}"])
    wait_listening(port, proc)
    term = Terminal("T0000001", "EUM000000000001")
    async with TerminalClient("127.0.0.1", port, load_dialect("default"), response_timeout_ms=3000) as client:
        signed_on = await client.request(term.sign_on())
        bought = await client.request(term.purchase("9410100000012345", 20_000))
        reversed_ = await client.request(term.reversal(client.last_request))
        advised = await client.request(term.reversal(client.last_request, advice=True))
        repeated = await client.request(Terminal.repeat(term.purchase("9410100000012345", 1_000)))
    assert [(r["t"], r["39"]) for r in (signed_on, bought, reversed_, advised, repeated)] == [
        ("0810", "00"), ("0210", "00"), ("0410", "00"), ("0430", "00"), ("0210", "00")]
    assert client.last_response_bytes[:2] == (len(client.last_response_bytes) - 2).to_bytes(2, "big")
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=PROCESS_TIMEOUT_S) == 0


def test_responder_core_answers_split_and_pipelined_frames_and_swaps_the_tpdu():
    dialect = load_dialect("bcd-tpdu")
    core = Responder(dialect)
    tpdu = bytes.fromhex("6000010000")
    requests = b"".join(frame(dialect.framing, encode_fields(fields, dialect), tpdu=tpdu) for fields in (
        Terminal("T0000001", "M1").sign_on(), Terminal("T0000001", "M1").purchase("9410100000012345", 5_000)))
    out = b"".join(core.receive_data(requests[i : i + 7]) for i in range(0, len(requests), 7))
    buffer = FrameBuffer(dialect.framing)
    buffer.receive_data(out)
    frames = [buffer.next_frame(), buffer.next_frame()]
    assert buffer.next_frame() is None and buffer.pending == 0
    assert [decode_fields(f.payload, dialect)["t"] for f in frames] == ["0810", "0210"]
    assert [f.tpdu for f in frames] == [bytes.fromhex("6000000001")] * 2


# ---------------------------------------------------------------------------- codec, /proc

def test_codec_bench_returns_positive_microseconds():
    result = codec_bench(number=50, repeat=3)
    assert set(result) == {"codec.decode_us", "codec.encode_us", "codec.decode_bytes", "codec.pyiso8583_decode_us",
                           "codec.pyiso8583_encode_us"}
    assert result["codec.decode_bytes"] == 146  # the standard 0200 with PIN block, KSN and MAC
    for key in ("codec.decode_us", "codec.encode_us", "codec.pyiso8583_decode_us", "codec.pyiso8583_encode_us"):
        assert isinstance(result[key], float) and result[key] > 0


def test_micro_benchmarks_measure_every_key_on_this_tree():
    from benchmarks.micro import ROOT, measure

    result = measure(ROOT)
    assert set(result) == {"log.canonical_line_us", "log.canonical_direct_us", "hsm.audit_record_us",
                           "hsm.gw_generate_us", "hsm.retail_mac_fresh_key_us", "terminal.transaction_us",
                           "decide.purchase_us"}
    assert all(isinstance(v, float) and v > 0 for v in result.values())


def test_proc_cpu_reader_sees_a_busy_process_and_not_a_sleeping_one(spawn):
    # The loop burns 0.9 s by the process's own clock and the test waits for 0.8 in /proc: the
    # kernel's utime + stime there are in clock ticks, scaled, and may read a little under the
    # precise CPU time (a loop to exactly 0.8 once read 0.79 and never more, asleep after it).
    busy = spawn([sys.executable, "-c", "import time\nend = time.process_time() + 0.9\n"
                                        "while time.process_time() < end: pass\ntime.sleep(30)"])
    idle = spawn([sys.executable, "-c", "import time; time.sleep(30)"])
    wait_until(lambda: process_cpu_s(busy.pid) >= 0.8, what="/proc to show the busy process's 0.8 CPU seconds")
    busy_s, idle_s = process_cpu_s(busy.pid), process_cpu_s(idle.pid)
    # the sleeping one has burnt only its python start-up; the busy one that plus its 0.9 s loop
    assert idle_s < 0.3
    assert 0.8 <= busy_s < 0.9 + 0.3


# ---------------------------------------------------------------------------- correctness check

def ledger_with(tmp_path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """A data dir whose messages table holds (mti, rc, posting kind or '') rows, posted at one
    instant; zero-amount postings, each with its transaction event, so `eum admin verify`
    passes."""
    data_dir = tmp_path / "var"
    db = open_store(data_dir)
    conn = sqlite3.connect(db)
    at = kst_now_iso()
    for i, (mti, rc, kind) in enumerate(rows, start=1):
        posting_id = i if kind else None
        if kind:
            conn.execute("INSERT INTO postings(id, kind, at, amount) VALUES (?,?,?,0)", (i, kind, at))
            conn.execute("INSERT INTO outbox(event_id, topic, type, posting_id, payload, committed_at) "
                         "VALUES (?, 'eum/incheon/transactions', ?, ?, '{}', 0)", (f"event-{i}", kind, i))
        conn.execute("INSERT INTO messages(tid, stan, tx_time, mti, digest, rc, response, posting_id, at) "
                     "VALUES ('T0000001', ?, '0101000000', ?, '', ?, '{}', ?, ?)",
                     (f"{i:06d}", mti, rc, posting_id, at))
    conn.commit()
    conn.close()
    return data_dir


def test_approvals_check_passes_on_equal_counts_and_fails_on_a_lost_posting(tmp_path):
    data_dir = ledger_with(tmp_path, [("0200", "00", "purchase"), ("0200", "00", "purchase"),
                                      ("0200", "51", ""), ("0200", "00", ""), ("0400", "00", "reversal")])
    start, end = "2000-01-01T00:00:00+09:00", "2999-01-01T00:00:00+09:00"
    equal = SimpleNamespace(approved=5, timeouts=0, by_kind={
        "purchase": {"approved": 2}, "balance": {"approved": 2}, "reversal": {"approved": 1}})
    ok = check_run("e2e", data_dir=data_dir, report=equal, start=start, end=end)
    assert (ok["ok"], ok["verify_ok"], ok["ledger_approved"], ok["ledger_by_kind"]) == (
        True, True, 3, {"purchase": 2, "reversal": 1})
    one_more = SimpleNamespace(approved=5, timeouts=0, by_kind={
        "purchase": {"approved": 3}, "reversal": {"approved": 1}})
    unsigned = SimpleNamespace(approved=5, timeouts=0, mac_missing=2, by_kind=equal.by_kind)
    lost = check_run("e2e", data_dir=data_dir, report=one_more, start=start, end=end)
    assert not lost["ok"] and "the fleet counted 4 approvals, the ledger holds 3" in lost["problem"]
    timed_out = SimpleNamespace(approved=4, timeouts=1, reversals_sent=1, by_kind={"purchase": {"approved": 2}})
    allowed = check_run("e2e", data_dir=data_dir, report=timed_out, start=start, end=end)
    # the timeout and its reversal may each have posted unseen: 2 ≤ 3 ≤ 2 + 2, passed but not exact
    assert allowed == {"run": "e2e", "ok": True, "verify_ok": True, "fleet_approved": 2, "ledger_approved": 3,
                       "ledger_by_kind": {"purchase": 2, "reversal": 1}, "timeouts": 1, "exact": False,
                       "mac_invalid": 0, "mac_missing": 0, "problem": ""}
    too_many = check_run("e2e", data_dir=data_dir, report=SimpleNamespace(
        approved=2, timeouts=1, by_kind={"purchase": {"approved": 1}}), start=start, end=end)
    assert (too_many["ok"], too_many["exact"]) == (False, False)
    assert too_many["problem"].startswith("e2e run: the fleet counted 1 approvals, the ledger holds 3 approved "
                                          "postings {'purchase': 2, 'reversal': 1} between ")
    assert too_many["problem"].endswith("(at most 1 more allowed: timeouts and timeout reversals)")
    bad_macs = check_run("e2e", data_dir=data_dir, report=unsigned, start=start, end=end)
    assert not bad_macs["ok"] and "2 approvals of secured requests came without a MAC" in bad_macs["problem"]
    before = check_run("e2e", data_dir=data_dir, report=equal, start=start, end="2001-01-01T00:00:00+09:00")
    assert not before["ok"] and before["ledger_approved"] == 0


# ---------------------------------------------------------------------------- writers and plots

def fake_result() -> dict:
    result = {key: float(i + 1) for i, key in enumerate(REQUIRED_KEYS)}
    result.update({"date": "2026-11-25", "mode": "quick", "scale.cards": 100_000, "correctness.ok": True,
                   "machine": {"host": "vm", "cpu": "AMD EPYC", "cores": 2, "packages": {"pyiso8583": "4.0.1"}},
                   "checks": [{"run": "e2e", "ok": True, "verify_ok": True, "fleet_approved": 10,
                               "ledger_approved": 10, "ledger_by_kind": {"purchase": 10}, "timeouts": 0,
                               "problem": ""}],
                   "runs": {"e2e": {"offered_per_s": 100.0, "latency_ms": {"p50": 1.0, "p99": 2.0, "p999": 3.0},
                                    "by_rc": {"00": 10}}}})
    return result


def test_cores_busy_is_the_runs_cpu_over_its_wall_time():
    run = SwitchRun(name="capacity", report=None, switch_cpu_s=3.35, switch_system_s=0.61, fleet_cpu_s=1.61,
                    hsm_cpu_s=1.18, wall_s=5.07, check={})
    assert cores_busy(run) == 1.21  # (3.35 + 1.18 + 1.61) / 5.07 = 1.211
    pg = SwitchRun(name="capacity", report=None, switch_cpu_s=2.0, switch_system_s=0.5, fleet_cpu_s=1.0,
                   hsm_cpu_s=0.5, wall_s=4.0, check={}, db_cpu_s=1.5)
    assert cores_busy(pg) == 1.25  # PostgreSQL's CPU counts: it is one of the run's processes
    assert cores_busy(SwitchRun(name="x", report=None, switch_cpu_s=1.0, switch_system_s=0.0, fleet_cpu_s=1.0,
                                hsm_cpu_s=0.0, wall_s=0.0, check={})) == 0.0


def test_json_and_markdown_writers_carry_every_key(tmp_path):
    result = fake_result()
    path = tmp_path / f"{result_stem(quick=True, host='vm')}.json"
    write_json(result, path)
    loaded = json.loads(path.read_text())
    assert all(loaded[key] == result[key] for key in REQUIRED_KEYS)
    assert path.name.endswith("-vm-quick.json")
    md = markdown(result)
    for key in REQUIRED_KEYS:
        assert f"| `{key}` |" in md
    assert "| `e2e.approved_per_s` | 3.000 | >= 3,000 | **no** |" in md
    assert "Correctness under load: **passed**" in md and "| e2e | passed | 10 |" in md
    assert "Result:" not in md


def test_markdown_lists_each_target_as_met_or_not_met_with_the_figure():
    result = fake_result()  # each required key i is the float i + 1 (fake_result)
    result.update({"hsm.cpu_us_per_auth": 149.0, "fleet.cpu_us_per_tx": 101.0})  # issue 10's, either side
    md = markdown(result)
    start = md.index("Targets:")
    assert md[start:md.index("\n\n| key |", start)].splitlines() == [
        "Targets: 7 met, 2 not met, 3 not measured in this run.",
        "",
        "- `e2e.approved_per_s` ≥ 3,000: **not met** (3.000)",
        "- `e2e_half.latency_ms.p99` ≤ 20: met (15.0)",
        "- `switch.cpu_us_per_auth` ≤ 150: met (10.0)",
        "- `hsm.cpu_us_per_auth` ≤ 150: met (149.0)",
        "- `fleet.cpu_us_per_tx` ≤ 100: **not met** (101.0)",
        "- `ratio.e2e_to_ceiling` ≥ 0.350: met (9.000)",
        "- `scale.rss_mib_1m` ≤ 1,024: met (13.0)",
        "- `scale.rss_mib_1m_hot` ≤ 512: met (14.0)",
        "- `switch_plain.cpu_us_per_msg` ≤ 100: met (17.0)",
        "- `pg.ratio.e2e_to_sqlite` ≥ 0.800: not measured",
        "- `pg.switch.cpu_us_over_sqlite` ≤ 60: not measured",
        "- `pg.postgres.cpu_us_per_auth` ≤ 150: not measured",
    ]


def test_the_latency_plot_names_offered_rates_marks_the_target_and_explains_the_ceiling():
    runs = {"e2e": {"offered_per_s": 1234.4, "achieved_per_s": 1200.0},
            "e2e_half": {"offered_per_s": 617.2}, "ceiling": {"offered_per_s": 0.0, "achieved_per_s": 4173.0}}
    tables = {name: [(50, 1.0), (99, 5.0)] for name in runs}
    fig = latency_figure(tables, offered_per_s=plot_rates(runs), targets=latency_targets())
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "e2e (offered 1,234/s)", "e2e_half (offered 617/s)", "ceiling (closed loop, achieved 4,173/s)",
        "target: e2e_half p99 ≤ 20 ms"]
    [target] = [line for line in ax.lines if line.get_label().startswith("target")]
    assert list(target.get_ydata()) == [20, 20]
    assert [t.get_text() for t in fig.texts] == [CEILING_NOTE]
    assert "benchmarks/responder.py" in CEILING_NOTE and "without a switch" in CEILING_NOTE
    plt.close(fig)


def test_the_throughput_plot_drops_the_last_partial_second_and_marks_rate_targets():
    series = [{"t": t, "sent": 100, "responses": 99, "approved": 95 if t < 4 else 40, "p99_ms": 4.0}
              for t in range(6)]  # 4.0 s of traffic: t=4 is the drain's partial second, t=5 the drain
    assert [row["t"] for row in whole_seconds(series, 4.0)] == [0, 1, 2, 3]
    assert [row["t"] for row in whole_seconds(series, 4.5)] == [0, 1, 2, 3]
    assert [row["t"] for row in whole_seconds(series)] == [0, 1, 2, 3, 4]  # no duration: the last row goes
    fig = throughput_figure({"e2e": series}, offered_per_s={"e2e": 1500.0}, durations_s={"e2e": 4.0},
                            targets={"e2e": throughput_targets(4000.0)}, ceiling_per_s=4000.0)
    ax = fig.axes[0]
    assert list(ax.lines[0].get_xdata()) == [0, 1, 2, 3]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "sent/s", "responses/s", "approved/s", "offered 1,500/s", "target: approved/s ≥ 3,000",
        "target: approved/s ≥ 0.35 × ceiling = 1,400", "ceiling 4,000/s", "p99 ms"]
    assert ax.get_title() == "e2e (offered 1,500/s): throughput over time (whole seconds)"
    assert [t.get_text() for t in fig.texts] == [CEILING_NOTE]
    plt.close(fig)


def test_plots_write_pngs_from_a_percentile_table_and_a_series(tmp_path):
    table = [{"percentile": p, "latency_ms": ms} for p, ms in ((0, 0.5), (50, 1.0), (90, 2.0), (99, 5.0),
                                                               (99.9, 9.0), (100, 12.0))]
    assert percentile_points({"0.5": 1.0, "0.99": 5.0}) == [(50.0, 1.0), (99.0, 5.0)]
    series = [{"t": t, "sent": 100, "responses": 99, "approved": 95, "p99_ms": 4.0} for t in range(5)]
    latency = plot_latency({"e2e": table, "ceiling": [(50, 0.3), (99, 1.0)]}, tmp_path / "lat.png")
    throughput = plot_throughput({"e2e": series}, tmp_path / "tp.png")
    for png in (latency, throughput):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000


# ---------------------------------------------------------------------------- end to end (small)

def _fleet_exists() -> bool:
    return (ROOT / "terminal_sim" / "fleet.py").exists()


@pytest.mark.skipif(not _fleet_exists(), reason="terminal_sim/fleet.py is not there yet")
def test_tiny_bench_runs_every_part_and_the_ledger_agrees_with_the_fleet(tmp_path):
    plan = BenchPlan(mode="smoke", terminals=4, capacity_terminals=2, cards=400, pin_cards=100, capacity_s=1.5,
                     e2e_s=2.0, half_s=1.5,
                     ceiling_s=1.0, scale_cards=2_000, scale_merchants=10)
    result = run_bench(True, tmp_path, plan=plan)
    assert all(key in result for key in REQUIRED_KEYS)
    assert result["correctness.ok"] and [c["run"] for c in result["checks"]] == ["capacity", "e2e", "e2e_half",
                                                                                 "switch_plain"]
    assert all(c["fleet_approved"] == c["ledger_approved"] > 0 for c in result["checks"] if c["exact"])
    assert result["e2e.approved_per_s"] > 0 and result["ceiling.per_s"] > 0 and result["scale.cards"] == 2_000
    capacity = result["runs"]["capacity"]  # its figures rounded (wall_s to 10 ms): the key within that rounding
    busy = (capacity["switch_cpu_s"] + capacity["hsm_cpu_s"] + capacity["fleet_cpu_s"]) / capacity["wall_s"]
    assert result["e2e.capacity_cores_busy"] == pytest.approx(busy, abs=0.02) and result["e2e.capacity_cores_busy"] > 0
    written = json.loads(Path(result["files"][0]).read_text())
    assert all(key in written for key in REQUIRED_KEYS)
    assert Path(result["files"][1]).read_text().count("| `") >= len(REQUIRED_KEYS)


@pytest.mark.skipif(not _fleet_exists(), reason="terminal_sim/fleet.py is not there yet")
def test_switch_plain_run_measures_cpu_per_message_without_an_hsm_and_the_ledger_agrees(tmp_path):
    from benchmarks.bench import Processes, run_switch_plain

    plan = BenchPlan(mode="smoke", terminals=4, capacity_terminals=2, cards=400, pin_cards=100, plain_cards=300,
                     plain_s=1.5)
    procs = Processes(tmp_path)
    try:
        flat, runs, check = run_switch_plain(plan, tmp_path, procs)
    finally:
        procs.stop_all()
    assert set(flat) == {"switch_plain.cpu_us_per_msg", "switch_plain.answered_per_s"}
    assert 0 < flat["switch_plain.cpu_us_per_msg"] < float("inf") and flat["switch_plain.answered_per_s"] > 0
    assert check["ok"] and check["verify_ok"] and check["run"] == "switch_plain", check["problem"]
    assert check["fleet_approved"] == check["ledger_approved"] > 0 or not check["exact"]
    plain = runs["switch_plain"]
    # security none: no PIN block sent, no MAC expected or missing; no HSM process was started
    assert (plain["pin_purchases"], plain["mac_missing"], plain["mac_invalid"]) == (0, 0, 0)
    assert runs["seed_plain"]["security"] == "none" and runs["seed_plain"]["pin_cards"] == 0
    assert "hsm" not in procs.running and not (tmp_path / "hsm.err").exists()


def test_bench_plans_record_a_flame_graph_only_in_full_mode_and_fail_clearly_without_py_spy(monkeypatch):
    import benchmarks.bench as bench

    assert bench.PLANS["full"].flame_graph and not bench.PLANS["quick"].flame_graph
    assert (bench.PLANS["quick"].plain_cards, bench.PLANS["quick"].plain_s) == (20_000, 8.0)
    assert bench.TARGETS["switch_plain.cpu_us_per_msg"] == (100, "<=")
    assert (bench.TARGETS["hsm.cpu_us_per_auth"], bench.TARGETS["fleet.cpu_us_per_tx"]) == ((150, "<="), (100, "<="))
    monkeypatch.setattr(bench.sys, "executable", "/nonexistent/python3")
    monkeypatch.setattr(bench.shutil, "which", lambda name: None)
    with pytest.raises(bench.BenchFailure, match="py-spy is not installed"):
        bench.py_spy_path()


def _py_spy_found() -> bool:
    import shutil

    return (Path(sys.executable).parent / "py-spy").exists() or shutil.which("py-spy") is not None


@pytest.mark.skipif(not _py_spy_found(), reason="py-spy is not installed (pip install -e '.[test]')")
def test_flame_graph_of_a_short_lived_python_process_is_a_non_empty_svg(spawn, tmp_path):
    from benchmarks.bench import FlameGraph

    busy = spawn([sys.executable, "-c", "import time\ndef spin_for_the_flame_graph(end):\n"
                                        "    while time.monotonic() < end: pass\n"
                                        "spin_for_the_flame_graph(time.monotonic() + 6)"])
    wait_until(lambda: process_cpu_s(busy.pid) >= 0.3, what="the busy process to be spinning")
    svg = FlameGraph(busy.pid, tmp_path / "busy-flame.svg", 2).finish()
    text = svg.read_text()
    assert svg.stat().st_size > 1_000 and "<svg" in text and "</svg>" in text
    assert "spin_for_the_flame_graph" in text  # the sampled process's own frame
    assert busy.poll() is None  # --nonblocking: sampled, not stopped


@pytest.mark.skipif(not _py_spy_found(), reason="py-spy is not installed (pip install -e '.[test]')")
def test_flame_graph_of_a_process_py_spy_cannot_sample_is_a_bench_failure(spawn, tmp_path):
    from benchmarks.bench import BenchFailure, FlameGraph

    not_python = spawn(["sleep", "30"])
    with pytest.raises(BenchFailure, match=r"py-spy could not record the switch's flame graph \(exit [1-9]"):
        FlameGraph(not_python.pid, tmp_path / "none.svg", 1).finish()
    assert not (tmp_path / "none.svg").exists()


# ---------------------------------------------------------------------------- several instances (pure parts)

def test_leases_are_settled_only_when_the_named_instances_alone_hold_every_partition_at_their_share():
    from benchmarks.bench import leases_settled

    two = ["switch-1", "switch-2"]
    assert leases_settled({"switch-1": 128, "switch-2": 128}, two, 256)
    assert not leases_settled({"switch-1": 256}, two, 256)                       # the second holds nothing yet
    assert not leases_settled({"switch-1": 129, "switch-2": 127}, two, 256)      # one above its share
    assert not leases_settled({"switch-1": 128, "switch-2": 127}, two, 256)      # one partition unheld
    assert not leases_settled({"switch-1": 128, "switch-2": 64, "gone": 64}, two, 256)  # a stale owner's lease
    three = ["a", "b", "c"]
    assert leases_settled({"a": 86, "b": 86, "c": 84}, three, 256)               # ceil(256 / 3) = 86, the rest 84
    assert leases_settled({"a": 86, "b": 85, "c": 85}, three, 256)
    assert not leases_settled({"a": 87, "b": 85, "c": 84}, three, 256)
    assert not leases_settled({"a": 86, "b": 87, "c": 83}, three, 256)
    assert leases_settled({"solo": 256}, ["solo"], 256)


def test_instances_are_checked_before_any_run_and_several_need_postgresql(tmp_path):
    from benchmarks.bench import BenchFailure, E2eSuite, Processes, check_instances, main

    check_instances("sqlite", 1)
    check_instances("postgresql", 2)
    check_instances("postgresql", 256)
    with pytest.raises(BenchFailure, match=r"^--instances 2: several switch instances share a PostgreSQL ledger; "
                                           r"add --store postgresql$"):
        check_instances("sqlite", 2)
    for bad in (0, 257):
        with pytest.raises(BenchFailure, match=rf"^--instances {bad}: between 1 and 256 \(one per member partition"):
            check_instances("postgresql", bad)
    with pytest.raises(BenchFailure, match="several need a PostgreSQL ledger"):
        E2eSuite(BenchPlan(mode="smoke"), tmp_path, Processes(tmp_path), instances=2)
    # the bench refuses at once: nothing was started, nothing written
    started = time.monotonic()
    assert main(["--quick", "--instances", "2", "--out-dir", str(tmp_path / "out")]) == 1
    assert time.monotonic() - started < 5 and not (tmp_path / "out").exists()


def test_two_instances_each_get_their_own_data_dir_listen_and_link_port_and_the_same_ledger_and_hsm(tmp_path):
    from benchmarks.bench import E2eSuite, Processes

    suite = E2eSuite(BenchPlan(mode="smoke"), tmp_path, Processes(tmp_path), new_store=lambda: "unused",
                     instances=2)
    suite.store, suite.hsm_port = "postgresql://postgres@127.0.0.1:5999/eum_test_x", 1500
    specs = suite._switch_specs()
    assert [name for name, *_ in specs] == ["switch-1", "switch-2"]
    assert [d for *_, d in specs] == [tmp_path / "var-pg-x2-switch-1", tmp_path / "var-pg-x2-switch-2"]
    assert suite.data_dir == tmp_path / "var-pg-x2" and suite.state_dir == tmp_path / "fleet-state-pg-x2"
    links = []
    for name, port, argv, data_dir in specs:
        i = argv.index("switch")
        link = argv[argv.index("--link") + 1]
        links.append(int(link.rsplit(":", 1)[1]))
        assert argv[i:] == ["switch", "--data-dir", str(data_dir), "--store", suite.store, "--hsm", "127.0.0.1:1500",
                            "--log-level", "info", "--listen", f"127.0.0.1:{port}", "--cluster", "--link", link,
                            "--instance-id", name]
    ports = [port for _, port, _, _ in specs] + links
    assert len(set(ports)) == 4
    one = E2eSuite(BenchPlan(mode="smoke"), tmp_path, Processes(tmp_path), new_store=lambda: "unused")
    one.store, one.hsm_port = suite.store, 1500
    [(name, port, argv, data_dir)] = one._switch_specs()
    assert (name, data_dir) == ("switch", tmp_path / "var-pg") and "--cluster" not in argv


def fake_e2e(instances: int, *, approved: int, switch_cpu_s: float, db_cpu_s: float, forwarded: int) -> SimpleNamespace:
    report = SimpleNamespace(approved=approved, approved_per_s=approved / 10, sent=2 * approved,
                             latency_ms={"p50": 4.25, "p99": 31.5})
    return SimpleNamespace(instances=instances, report=report, switch_cpu_s=switch_cpu_s, db_cpu_s=db_cpu_s,
                           hsm_cpu_s=approved * 200e-6, forwarded=forwarded)


def test_an_instances_row_divides_the_summed_cpu_by_approvals_and_gives_the_flat_keys():
    from benchmarks.bench import instances_keys, instances_row

    row = instances_row(1234.56, fake_e2e(2, approved=8_000, switch_cpu_s=6.4, db_cpu_s=2.0, forwarded=4_000))
    assert row == {"instances": 2, "capacity_per_s": 1234.6, "e2e_approved_per_s": 800.0,
                   "switch_cpu_us_per_auth": 800.0, "postgres_cpu_us_per_auth": 250.0, "hsm_cpu_us_per_auth": 200.0,
                   "e2e_latency_ms_p50": 4.25, "e2e_latency_ms_p99": 31.5, "forwarded_share": 0.25}
    assert instances_keys(row) == {"pg.instances.2.e2e.approved_per_s": 800.0, "pg.instances.2.capacity_per_s": 1234.6,
                                   "pg.instances.2.switch.cpu_us_per_auth": 800.0,
                                   "pg.instances.2.postgres.cpu_us_per_auth": 250.0}
    none = instances_row(0.0, fake_e2e(2, approved=0, switch_cpu_s=1.0, db_cpu_s=1.0, forwarded=0))
    assert (none["switch_cpu_us_per_auth"], none["forwarded_share"]) == (float("inf"), 0.0)


def test_markdown_shows_the_instances_table_when_there_are_two_rows_and_the_note_says_why_it_is_not_scaling():
    from benchmarks.bench import PLANS, notes_for

    result = fake_result()
    rows = [{"instances": 1, "capacity_per_s": 1010.0, "e2e_approved_per_s": 905.3, "switch_cpu_us_per_auth": 455.1,
             "postgres_cpu_us_per_auth": 218.2},
            {"instances": 2, "capacity_per_s": 880.0, "e2e_approved_per_s": 790.0, "switch_cpu_us_per_auth": 610.5,
             "postgres_cpu_us_per_auth": 240.0}]
    result["runs"]["pg_instances"] = rows
    result["runs"]["pg_x2_e2e"] = {"offered_per_s": 792.0, "latency_ms": {"p50": 5.0, "p99": 40.0, "p999": 80.0},
                                   "by_rc": {"00": 7900}}
    md = markdown(result)
    table = md.split("## Instances\n", 1)[1].split("\n\n", 2)
    assert table[1].splitlines() == [
        "| instances | capacity/s | e2e approved/s | switch µs/auth | PostgreSQL µs/auth |",
        "|---:|---:|---:|---:|---:|",
        "| 1 | 1,010.0 | 905.3 | 455.1 | 218.2 |",
        "| 2 | 880.0 | 790.0 | 610.5 | 240.0 |"]
    assert "| pg_x2_e2e | open | 792.0 |" in md
    result["runs"]["pg_instances"] = rows[:1]
    assert "## Instances" not in markdown(result)
    [note] = [n for n in notes_for(PLANS["quick"], instances=2, cores=2) if n.startswith("pg.instances.2.*")]
    assert "share this machine's 2 cores, so a second instance cannot add throughput here" in note
    assert "cost of coordination" in note and "not scaling" in note
    assert not [n for n in notes_for(PLANS["quick"]) if n.startswith("pg.instances")]


def test_forwarded_lines_are_counted_from_an_offset_of_the_switch_log(tmp_path):
    from benchmarks.bench import forwarded_lines, log_size

    log = tmp_path / "switch.jsonl"
    assert (log_size(log), forwarded_lines(log, 0)) == (0, 0)
    log.write_text('{"event":"purchase","forwarded":"switch-2"}\n{"event":"purchase"}\n')
    since = log_size(log)
    with log.open("a") as f:
        f.write('{"event":"purchase","forwarded":"switch-1"}\n{"event":"refund","forwarded":"switch-1"}\n'
                '{"event":"balance"}\n')
    assert (forwarded_lines(log, 0), forwarded_lines(log, since)) == (3, 2)


def test_the_fleet_waits_for_a_lease_round_begun_after_the_leases_settled_to_be_over_at_every_instance():
    from benchmarks.bench import rounds_done_since

    settled = 100.0
    first: dict = {"switch-1": None, "switch-2": None}
    assert not rounds_done_since(first, {"switch-1": 99.5, "switch-2": 100.2}, settled)  # switch-1: a round before
    assert first == {"switch-1": None, "switch-2": 100.2}
    assert not rounds_done_since(first, {"switch-1": 100.5, "switch-2": 100.2}, settled)  # both rounds still running
    assert not rounds_done_since(first, {"switch-1": 100.5, "switch-2": 101.2}, settled)  # switch-2's is over
    assert first == {"switch-1": 100.5, "switch-2": 100.2}
    assert rounds_done_since(first, {"switch-1": 101.5, "switch-2": 101.2, "stranger": 101.0}, settled)
    assert "stranger" not in first
    assert not rounds_done_since({"switch-1": None}, {}, settled)  # no heartbeat at all yet


def test_core_split_times_each_piece_of_a_real_plain_run(tmp_path):
    """benchmarks/core_split.py end to end on a small run: a seeded ledger, 300 purchases all
    approved and verified (the script refuses otherwise), every piece timed, and the rows
    written per purchase counted from the writer's own statements: one posting, one message,
    one card-day and one member-month row each (distinct cards of distinct members)."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "core_split.py"), "--rounds", "1",
                           "--messages", "300", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (out,) = tmp_path.glob("*-core-split.json")
    median = json.loads(out.read_text())["median"]
    assert {k: median[k] for k in ("rows.postings", "rows.messages", "rows.card_days", "rows.member_months")} == {
        "rows.postings": 1.0, "rows.messages": 1.0, "rows.card_days": 1.0, "rows.member_months": 1.0}
    pieces = ("decide", "decide.isolated", "apply", "decode", "parse", "describe", "response_fields", "encode",
              "log.canonical", "writer.rows", "writer.commit", "writer.sql.postings",
              "writer.sql.entries", "writer.sql.messages", "writer.sql.outbox")
    assert all(median[k] > 0 for k in pieces), median
    # the balances are not written per group: folded about once a second (switch/ledger/sqlite.py)
    assert "rows.accounts" not in median
    # the thread-CPU pieces are parts of the process CPU they are taken from
    assert sum(median[k] for k in pieces if k != "decide.isolated") < median["total"]


def test_wakeups_measures_the_echo_server_at_each_rate_and_closed_loop_with_and_without_busy_neighbours(tmp_path):
    """benchmarks/wakeups.py end to end on a short run: exactly the messages asked for at each
    rate and closed loop, both halves, every CPU figure positive, each row's ratio to its own
    closed-loop figure (1.0 for the closed loop itself); and no busy neighbour left running."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "wakeups.py"), "--rates", "400,1000",
                           "--messages", "40", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (out,) = tmp_path.glob("*-wakeups.json")
    result = json.loads(out.read_text())
    assert result["messages_per_rate"] == 40 and result["machine"]["cores"] == os.cpu_count()
    for half in ("idle_cores", "busy_neighbours"):
        rows = result[half]
        assert [r["rate_per_s"] for r in rows] == [400.0, 1000.0, None]
        assert [r["messages"] for r in rows] == [40, 40, 40]
        assert all(r["server_cpu_us_per_msg"] > 0 and r["client_cpu_us_per_msg"] > 0 for r in rows), rows
        closed = rows[-1]["server_cpu_us_per_msg"]
        assert rows[-1]["server_to_closed_loop"] == 1.0
        assert [r["server_to_closed_loop"] for r in rows] == [round(r["server_cpu_us_per_msg"] / closed, 2)
                                                             for r in rows]
        assert rows[0]["achieved_per_s"] <= 400 * 1.05  # paced: never faster than asked
    spinners = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"eum-wakeups-neighbour" in cmdline.read_bytes():
                spinners.append(cmdline.parent.name)
        except OSError:  # a process that ended meanwhile
            continue
    assert spinners == []


def test_wakeups_refuses_rates_that_are_not_positive_numbers(tmp_path):
    for rates in ("fast", "0,100"):
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "wakeups.py"), "--rates", rates,
                               "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "--rates" in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_ab_refuses_a_fleet_of_no_terminals_or_more_than_the_seeded_merchants(tmp_path):
    for terminals in ("0", "201"):
        done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ab.py"), "--base", "HEAD~1",
                               "--terminals", terminals, "--out-dir", str(tmp_path)],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert done.returncode == 1, done.stderr
        assert done.stderr.strip() == f"--terminals must be 1 to 200 (the seeded merchants), got {terminals}"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ab.py"), "--base", "HEAD~1", "--against", "hsm",
                           "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2 and "--against: invalid choice: 'hsm'" in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_fold_time_times_each_piece_of_a_fold_and_checks_every_posting_reached_its_card(tmp_path):
    """benchmarks/fold_time.py end to end on a small ledger: every piece of the fold timed
    (positive), the sizes written down, and the script's own check that card_postings holds
    one row per posting (it exits non-zero otherwise)."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fold_time.py"), "--cards", "500",
                           "--postings", "2000", "--per-fold", "300", "--folds", "3", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (out,) = tmp_path.glob("*-fold-time.json")
    result = json.loads(out.read_text())
    assert {k: result[k] for k in ("cards", "postings", "per_fold", "folds")} == {
        "cards": 500, "postings": 2000, "per_fold": 300, "folds": 3}
    assert sorted(result["median"]) == ["balances_ms", "card_postings_ms", "commit_ms"]
    assert all(v > 0 for v in result["median"].values()), result


# A callgrind output file as valgrind 3.19 writes it (format version 1): names are given once,
# in ob=/cob= and fn=/cfn=, then by (id) alone; the cost line after calls= is that call's
# inclusive cost, not the caller's own.
CALLGRIND_SAMPLE = """# callgrind format
version: 1
creator: callgrind-3.19.0
positions: line
events: Ir
summary: 1111

ob=(1) /usr/lib/libpython3.11.so.1.0
fl=(1) ???
fn=(1) _PyEval_EvalFrameDefault
0 500
cob=(2) /usr/lib/libsqlite3.so.0.8.6
cfn=(2) sqlite3VdbeExec
calls=3 0
0 250
+2 100

ob=(2)
fl=(2) ???
fn=(2)
0 250
fn=(3) sqlite3BtreeInsert
0 11

ob=(3) /srv/eum/switch/_hot__mypyc.cpython-311-x86_64-linux-gnu.so
fn=(4) CPyDef_decide
* 150
ob=(1)
fn=(1)
0 100
"""


def test_instructions_reads_self_costs_by_object_and_function_from_a_callgrind_file(tmp_path):
    """benchmarks/instructions.py's reader: every function's own instructions (a call's
    inclusive cost is not added to its caller), names resolved from their first mention,
    whichever of ob=/cob= (fn=/cfn=) gave them, and objects grouped for the split."""
    from benchmarks.instructions import by_object, grouped, per_purchase, self_costs, top_functions

    path = tmp_path / "callgrind.out"
    path.write_text(CALLGRIND_SAMPLE)
    costs = self_costs(path)
    assert costs == {("/usr/lib/libpython3.11.so.1.0", "_PyEval_EvalFrameDefault"): 700,
                     ("/usr/lib/libsqlite3.so.0.8.6", "sqlite3VdbeExec"): 250,
                     ("/usr/lib/libsqlite3.so.0.8.6", "sqlite3BtreeInsert"): 11,
                     ("/srv/eum/switch/_hot__mypyc.cpython-311-x86_64-linux-gnu.so", "CPyDef_decide"): 150}
    assert sum(costs.values()) == 1111  # the file's own summary
    split = grouped(by_object(costs))
    assert split == {"python": 700, "sqlite": 261, "compiled": 150, "libc": 0, "msgspec/orjson": 0, "uvloop": 0,
                     "other": 0}
    assert per_purchase({**split, "total": 1111, "units_per_group": 2.5}, 10) == {
        "python": 70.0, "sqlite": 26.1, "compiled": 15.0, "libc": 0.0, "msgspec/orjson": 0.0, "uvloop": 0.0,
        "other": 0.0, "total": 111.1, "units_per_group": 2.5}
    assert top_functions(costs, 10, 2) == [
        {"object": "libpython3.11.so.1.0", "function": "_PyEval_EvalFrameDefault", "per_purchase": 70.0},
        {"object": "libsqlite3.so.0.8.6", "function": "sqlite3VdbeExec", "per_purchase": 25.0}]


def instructions_run(tmp_path: Path, *args: str) -> dict:
    """benchmarks/instructions.py on 20 counted purchases, its result as written; it must exit
    0. Skipped without valgrind, except on CI, which installs it (.ci/run): there a defect."""
    if shutil.which("valgrind") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("valgrind is missing; CI installs it (.ci/run), so this is a defect", pytrace=False)
        pytest.skip("valgrind is missing (.ci/run installs it)")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "instructions.py"), "--messages", "20",
                           *args, "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (out,) = tmp_path.glob("*-instructions.json")
    return json.loads(out.read_text())


def test_instructions_counts_a_real_plain_run_under_valgrind(tmp_path):
    """benchmarks/instructions.py end to end on a small run (20 counted purchases after 20 to
    warm up, all approved and verified or the script exits non-zero): the per-purchase split
    is the counted pass's raw count over its 20 purchases (with its group commits' size as seen),
    the groups add up to the total, and the plain path runs in the interpreter, SQLite and the
    compiled modules alike."""
    result = instructions_run(tmp_path, "--functions", "5")
    assert result["messages"] == 20 and list(result["runs"]) == ["this tree"]
    (split,) = result["runs"]["this tree"]
    raw = result["raw"]["this tree run 1"]
    groups = raw.pop("units_per_group")
    assert split == {**{key: round(value / 20, 1) for key, value in raw.items()}, "units_per_group": groups}
    assert raw["total"] == sum(v for k, v in raw.items() if k != "total")
    assert 1 <= groups <= 20  # the group commit's units a group, as they were in the counted pass
    assert split["python"] > 0 and split["sqlite"] > 0
    if not result["machine"]["compiled"].startswith("0/"):  # a build with the compiled modules (N/M)
        assert split["compiled"] > 0
    assert len(result["functions"]["this tree"]) == 5


def test_instructions_counts_a_real_standard_run_with_an_hsm_process(tmp_path):
    """--scenario standard end to end on a small run: DUKPT-TDES terminals seeded against a
    real `eum hsm` process that the script starts and stops, 20 counted purchases (a PIN on 1
    in 4) all approved with a response MAC the terminal verifies, else the script exits
    non-zero; the result names its scenario and counts the switch's own work (the HSM runs
    outside valgrind), in the interpreter, SQLite and the compiled modules."""
    result = instructions_run(tmp_path, "--scenario", "standard")
    assert (result["scenario"], result["messages"], list(result["runs"])) == ("standard", 20, ["this tree"])
    assert result["what"].startswith("instructions per warm standard purchase")
    (split,) = result["runs"]["this tree"]
    assert split["python"] > 0 and split["sqlite"] > 0
    if not result["machine"]["compiled"].startswith("0/"):
        assert split["compiled"] > 0


def test_instructions_counts_the_terminals_security_work_with_every_mac_checked(tmp_path):
    """--scenario terminal end to end: no switch and no ledger, 20 transactions of the fleet's
    DUKPT-TDES terminals counted (the next KSN from the key registers, a PIN block on 1 in 4,
    the request MAC, a response MAC checked); the script exits non-zero unless every request
    MAC equals the host's own derivation's (hsm_mock.dukpt, hsm_mock.crypto). Nothing is
    committed, so no group size is reported, and nothing runs in SQLite."""
    result = instructions_run(tmp_path, "--scenario", "terminal")
    assert (result["scenario"], result["messages"], list(result["runs"])) == ("terminal", 20, ["this tree"])
    assert result["what"].startswith("instructions per transaction of a fleet terminal's security work")
    (split,) = result["runs"]["this tree"]
    assert "units_per_group" not in split and split["sqlite"] == 0 and split["python"] > 0
    if not result["machine"]["compiled"].startswith("0/"):  # setup.py builds hsm_mock/_des.c with them
        assert split["compiled"] > 0  # the C DES


def test_instructions_counts_the_hsms_work_per_authorisation(tmp_path):
    """--scenario hsm end to end: the standard scenario's commands for 20 authorisations (GW
    verify, G0 + EC on 1 in 4, GW generate), built as micro.py's --hsm-auth-mix builds them and
    answered by `Hsm.handle` in process, every answer 00 or the script exits non-zero; no
    switch, no ledger."""
    result = instructions_run(tmp_path, "--scenario", "hsm")
    assert (result["scenario"], result["messages"], list(result["runs"])) == ("hsm", 20, ["this tree"])
    assert result["what"].startswith("instructions per authorisation of the HSM's commands")
    (split,) = result["runs"]["this tree"]
    assert "units_per_group" not in split and split["sqlite"] == 0 and split["python"] > 0


def test_wal_pages_reads_each_commits_frames_and_names_their_btrees(tmp_path):
    """benchmarks/wal_pages.py's reader on a WAL SQLite wrote here: two transactions, the
    first making a table and an index, the second inserting one row; every frame of the second
    is the table's, the index's, or page 1 (the header, whose page count changed), and only
    each transaction's last frame ends a commit. Read from the second's start, only its frames."""
    from benchmarks.wal_pages import FRAME_HEADER, WAL_HEADER, page_owners, wal_frames

    db = tmp_path / "t.sqlite3"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("BEGIN")
    conn.execute("CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT)")
    conn.execute("CREATE INDEX t_b ON t(b)")
    conn.execute("COMMIT")
    wal = tmp_path / "t.sqlite3-wal"
    start = wal.stat().st_size
    conn.execute("INSERT INTO t(b) VALUES ('x')")
    page_size, everything = wal_frames(wal.read_bytes(), 0)
    assert page_size == 4096
    assert (start - WAL_HEADER) % (FRAME_HEADER + page_size) == 0
    first = (start - WAL_HEADER) // (FRAME_HEADER + page_size)
    ends = [i for i, (_, last) in enumerate(everything) if last]
    assert ends == [first - 1, len(everything) - 1]
    _, frames = wal_frames(wal.read_bytes(), start)
    assert frames == everything[first:]
    owners = page_owners(db, wal)
    assert sorted(owners[page] for page, _ in frames) == ["t", "t_b"]
    assert owners[1] == "sqlite_schema"
    with pytest.raises(ValueError, match="not a frame boundary"):
        wal_frames(wal.read_bytes(), start + 1)
    conn.close()


def test_wal_pages_counts_a_real_plain_run(tmp_path):
    """benchmarks/wal_pages.py end to end on a small run (40 purchases after 40 to warm up,
    all approved and verified or the script exits non-zero): every group commit the writer
    made is one commit in the WAL, the frames by b-tree add up to the frames, and the hot
    tables the plain path appends to are among them."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "wal_pages.py"), "--messages", "40",
                           "--de7-step-us", "300000", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (out,) = tmp_path.glob("*-wal-pages.json")
    result = json.loads(out.read_text())
    assert result["de7_step_us"] == 300_000  # the requests' DE7 advanced (80 of them: 24 s), all approved
    run = result["runs"]["this tree"]
    assert run["units"] == 40 and run["commits"] == run["groups"] >= 2
    assert run["page_size"] == 4096
    by_tree = run["frames_per_commit_by_btree"]
    assert abs(sum(by_tree.values()) - run["frames"] / run["commits"]) < 0.01 * len(by_tree)
    assert {"messages", "messages_key", "postings", "entries", "outbox"} <= set(by_tree)
    assert run["wal_bytes_per_purchase"] == round(run["frames"] * (24 + 4096) / 40)
