"""`eum bench`: the standard benchmark set on this machine, and correctness under load.

    eum bench [--quick] [--out-dir benchmarks/results]
    python benchmarks/bench.py [--quick] [--out-dir DIR]

What runs (issue 4, items 4 and 5), every process on 127.0.0.1 free ports, in a temp dir:
  1. codec: one 0200 decode and one 0210 encode, in process (benchmarks/codec_bench.py);
  2. e2e: `eum hsm` and `eum switch --hsm` as separate processes, a data dir seeded with
     DUKPT-TDES terminals and PIN cards, the fleet (this process) driving the standard
     scenario: a short closed-loop capacity run finds the maximum rate, then open loop at
     OFFERED_FRACTION of it (60 s; quick 10 s), then open loop at half that rate (p99 target);
  3. ceiling: the same fleet, closed loop, against benchmarks/responder.py;
  4. scale: benchmarks/scale.py's one_run (1,000,000 cards; quick: 100,000), and
     benchmarks/hot_memory.py's one_run on as many cards, every one used once (RSS of the
     switch's core with every card hot: scale.rss_mib_1m_hot);
  5. switch_plain (issue 10, item 5): `eum switch` without an HSM on its own data dir seeded with
     `--security none` terminals (no MAC, no PIN block), the fleet closed loop with the standard
     scenario's mix; switch CPU per message answered.
A full run also records a py-spy flame graph of the switch during the e2e run
(<out-dir>/<date>-<host>-switch-flame.svg); py-spy missing or failing fails a full run.
After every e2e run and the switch_plain run the switch is stopped, `eum admin verify` must
pass and the fleet's approvals must equal the ledger's approved postings of that run; otherwise
the bench writes its results marked failed and raises BenchFailure (non-zero exit).

With --store postgresql (issue 12), after the standard set: a private PostgreSQL cluster
(benchmarks/pg_cluster.py), a fresh database seeded like the e2e one, and the e2e procedure
again (capacity, then open loop) with `eum switch --store postgresql://…`; the pg.* keys and
their ratios to the SQLite e2e of the same bench run; the cluster's own CPU per approval.
With --instances N (N > 1; PostgreSQL only), the same procedure once more on a fresh database
seeded the same way, with N `eum switch --cluster` instances sharing it (each its own data dir,
listen and link port; the fleet waits for the 256 member partitions to be shared out, then
spreads its terminals over them): the pg.instances.<N>.* keys and runs["pg_instances"], the
instances × throughput table (switch CPU: the sum over the N processes).

Writes <out-dir>/<date>-<host>.json (quick: <date>-<host>-quick.json), a Markdown table of the
same name (.md) and PNG plots (-latency.png, -throughput.png).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.codec_bench import codec_bench  # noqa: E402
from benchmarks.scale import free_port  # noqa: E402

EUM = [sys.executable, "-m", "switch.cli.main"]  # run with cwd=ROOT: works from a fresh clone
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0       # SIGTERM, then SIGKILL after this
COMMAND_TIMEOUT_S = 600.0   # seed of 1M cards takes ~40 s on this machine kind
OFFERED_FRACTION = 0.9      # open loop at this share of the closed-loop capacity
CLOSED_LOOP_RATE_PER_S = 1_000_000.0  # closed loop: each terminal sends as soon as answered
PIN = "1234"
SEED_ATTEMPTS_MAX = 3
OVERLOAD_RCS = ("91", "96")  # issuer/switch inoperative, system malfunction
# The machine description's key for each group of compiled modules (switch/compiled.py
# GROUP_PACKAGES): how many of the group's modules ran compiled, `N/M`.
COMPILED_KEYS = {"switch": "compiled", "hsm_mock": "compiled_hsm", "terminal_sim": "compiled_terminal"}

# key → (target, comparison) for the Markdown table; the bench does not fail on a target
TARGETS: dict[str, tuple[float, str]] = {
    "e2e.approved_per_s": (3000, ">="),
    "e2e_half.latency_ms.p99": (20, "<="),
    "switch.cpu_us_per_auth": (150, "<="),
    "hsm.cpu_us_per_auth": (150, "<="),   # issue 10
    "fleet.cpu_us_per_tx": (100, "<="),   # issue 10
    "ratio.e2e_to_ceiling": (0.35, ">="),
    "scale.rss_mib_1m": (1024, "<="),
    "scale.rss_mib_1m_hot": (512, "<="),
    "switch_plain.cpu_us_per_msg": (100, "<="),
    # issue 12, one instance on PostgreSQL against SQLite in the same bench run
    "pg.ratio.e2e_to_sqlite": (0.8, ">="),
    "pg.switch.cpu_us_over_sqlite": (60, "<="),
    "pg.postgres.cpu_us_per_auth": (150, "<="),
}
SIGN = {">=": "≥", "<=": "≤"}  # how a target's operator is written for people
REQUIRED_KEYS = (
    "codec.decode_us", "codec.encode_us",
    "e2e.approved_per_s", "e2e.latency_ms.p50", "e2e.latency_ms.p99", "e2e.latency_ms.p999", "e2e.offered_per_s",
    "ceiling.per_s", "ratio.e2e_to_ceiling", "switch.cpu_us_per_auth",
    "scale.seed_1m_s", "scale.start_1m_s", "scale.rss_mib_1m", "scale.rss_mib_1m_hot",
    "e2e_half.latency_ms.p99", "e2e_half.offered_per_s",
    "switch_plain.cpu_us_per_msg",
)


@dataclass(frozen=True)
class BenchPlan:
    """Every size and duration of one bench run."""

    mode: str
    terminals: int = 200            # one per seeded merchant; each its own TCP connection
    capacity_terminals: int = 32    # closed-loop capacity run: enough in flight to saturate, few
                                    # enough that queueing stays under the HSM call timeout
    cards: int = 100_000            # seeded for the e2e ledger, all in the population file
    pin_cards: int = 2_000          # the first K get PIN 1234, for the scenario's PIN share (the
                                    # seed asks the HSM for their PVVs, 32 at a time)
    capacity_s: float = 15.0
    e2e_s: float = 60.0
    half_s: float = 30.0
    ceiling_s: float = 15.0
    scale_cards: int = 1_000_000
    scale_merchants: int = 10_000
    switch_log_level: str = "info"  # as `eum switch` runs by default: one canonical line per message
    response_timeout_ms: int = 2000
    scenario: str = "standard"
    plain_cards: int | None = None  # switch_plain's own ledger (security none, no PIN); None: `cards`
    plain_s: float | None = None    # switch_plain closed-loop run (capacity_terminals); None: capacity_s
    flame_graph: bool = False       # py-spy flame graph of the switch during the e2e run (full runs)

    def __post_init__(self) -> None:
        if self.plain_cards is None:
            object.__setattr__(self, "plain_cards", self.cards)
        if self.plain_s is None:
            object.__setattr__(self, "plain_s", self.capacity_s)
        assert self.plain_cards > 0 and self.plain_s > 0
        assert 0 < self.pin_cards <= self.cards
        assert 0 < self.capacity_terminals <= self.terminals
        assert min(self.capacity_s, self.e2e_s, self.half_s, self.ceiling_s) > 0


PLANS = {
    "full": BenchPlan(mode="full", plain_s=20.0, flame_graph=True),
    "quick": BenchPlan(mode="quick", cards=30_000, capacity_s=5.0, e2e_s=10.0, half_s=8.0,
                       ceiling_s=5.0, scale_cards=100_000, scale_merchants=1_000, plain_cards=20_000, plain_s=8.0),
}


class BenchFailure(Exception):
    """The bench could not measure, or the ledger disagrees with the fleet: exit non-zero."""


# ---------------------------------------------------------------------------- processes and /proc

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def process_cpu_split_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all its threads, from /proc/PID/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()  # comm may hold spaces and parentheses
    utime, stime = int(fields[11]), int(fields[12])  # stat fields 14 and 15
    return utime / CLOCK_TICKS_PER_S, stime / CLOCK_TICKS_PER_S


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    return sum(process_cpu_split_s(pid))


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class Processes:
    """Starts named processes with output to files; stops each by its PID (SIGTERM, then SIGKILL)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        out = (self.log_dir / f"{name}.out").open("ab")
        err = (self.log_dir / f"{name}.err").open("ab")
        try:
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        finally:
            out.close()
            err.close()
        self.running[name] = proc
        return proc

    def stop(self, name: str) -> int:
        proc = self.running.pop(name)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                return proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT_S)
                raise BenchFailure(f"{name} (pid {proc.pid}) ignored SIGTERM for {STOP_TIMEOUT_S} s; killed") from None
        return proc.returncode

    def stop_all(self) -> None:
        for name in list(self.running):
            with contextlib.suppress(BenchFailure):
                self.stop(name)

    def stderr_tail(self, name: str, lines: int = 15) -> str:
        path = self.log_dir / f"{name}.err"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_listening(self, name: str, port: int) -> None:
        proc = self.running[name]
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchFailure(f"{name} exited with {proc.returncode} while starting:\n{self.stderr_tail(name)}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise BenchFailure(f"{name} did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S} s")


def store_flag(store: str | None) -> list[str]:
    """`--store URL` for a PostgreSQL run; always explicit, so $EUM_STORE never picks a bench's ledger."""
    return ["--store", store or "sqlite"]


def eum_command(*args: str, timeout_s: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([*EUM, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)


# ---------------------------------------------------------------------------- flame graph (py-spy)

FLAME_FINISH_TIMEOUT_S = 60.0  # py-spy writes the SVG after its --duration; allow it this long more


def py_spy_path() -> str:
    """The py-spy executable (the project's `test` extra installs it beside this Python); raises
    BenchFailure when there is none: a full bench run needs it."""
    beside = Path(sys.executable).parent / "py-spy"
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if not found:
        raise BenchFailure("py-spy is not installed, and a full bench run records a flame graph of the switch: "
                           "pip install py-spy (or pip install -e '.[test]'), or run `eum bench --quick`")
    return found


class FlameGraph:
    """`py-spy record --pid PID --duration N --format flamegraph -o PATH --nonblocking`: samples a
    running Python process (needs ptrace: root, or kernel.yama.ptrace_scope 0) without pausing it,
    and writes an SVG flame graph when the duration is over."""

    def __init__(self, pid: int, path: Path, duration_s: int, *, log_dir: Path | None = None) -> None:
        self.path = Path(path)
        self.duration_s = max(1, int(duration_s))
        self.log = (log_dir or self.path.parent) / "py-spy.err"
        self.path.unlink(missing_ok=True)  # a stale SVG must not pass for this run's
        argv = [py_spy_path(), "record", "--pid", str(pid), "--duration", str(self.duration_s),
                "--format", "flamegraph", "-o", str(self.path), "--nonblocking"]
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)

    def finish(self) -> Path:
        """Wait for py-spy to write the SVG; BenchFailure if it failed or wrote nothing."""
        try:
            rc = self.proc.wait(timeout=self.duration_s + FLAME_FINISH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.stop()
            raise BenchFailure(f"py-spy (pid {self.proc.pid}) did not finish its {self.duration_s} s recording "
                               f"within {FLAME_FINISH_TIMEOUT_S:g} s more; killed") from None
        if rc != 0 or not self.path.exists() or self.path.stat().st_size == 0:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-5:] if self.log.exists() else []
            raise BenchFailure(f"py-spy could not record the switch's flame graph (exit {rc}, "
                               f"{self.path.name} {'empty' if self.path.exists() else 'not written'}): "
                               f"{' / '.join(tail) or 'no output'}")
        return self.path

    def stop(self) -> None:
        """Stop py-spy by its PID if it still runs (the run failed under it)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_S)


# ---------------------------------------------------------------------------- ledger checks

def kst_now_iso() -> str:
    """The switch's `messages.at` format (KST, microseconds), so bounds compare as strings."""
    from switch.domain import KST

    return datetime.now(timezone.utc).astimezone(KST).isoformat(timespec="microseconds")


def ledger_approvals(db_path: Any, *, start: str, end: str) -> dict[str, int]:
    """Approved postings of a run, by posting kind: messages answered 00 that posted, read
    read-only after the switch stopped. db_path: the SQLite file or a PostgreSQL store (PgDsn)."""
    from switch.ledger.store import PgDsn, connect

    conn = (connect(db_path, readonly=True) if isinstance(db_path, PgDsn)
            else sqlite3.connect(f"file:{db_path}?mode=ro", uri=True))
    try:
        rows = conn.execute(
            "SELECT p.kind, COUNT(*) FROM messages m JOIN postings p ON p.id = m.posting_id "
            "WHERE m.rc = '00' AND m.at >= ? AND m.at <= ? GROUP BY p.kind", (start, end)).fetchall()
    finally:
        conn.close()
    return dict(rows)


POSTING_KINDS = ("purchase", "refund", "reversal")  # the fleet's kinds whose approval posts (not balance)


def fleet_posting_approvals(report: Any) -> int:
    """The fleet's approvals of scenario messages that post: purchases, refunds, reversals
    (FleetReport.by_kind; a balance inquiry is approved without a posting)."""
    return sum(int(report.by_kind.get(kind, {}).get("approved", 0)) for kind in POSTING_KINDS)


def check_run(name: str, *, data_dir: Path, report: Any, start: str, end: str,
              store: str | None = None) -> dict[str, Any]:
    """`eum admin verify` and approvals fleet == ledger. Never raises: the caller decides.
    store: the PostgreSQL URL the run's ledger is on (None: the data dir's SQLite file)."""
    from switch.ledger.store import PgDsn

    verify = eum_command("admin", "--data-dir", str(data_dir), *store_flag(store), "verify", "--json", timeout_s=120)
    verified = verify.returncode == 0
    problem = ""
    if not verified:
        problem = f"eum admin verify failed after the {name} run: {(verify.stdout + verify.stderr).strip()}"
    ledger = ledger_approvals(PgDsn(store) if store else data_dir / "ledger.sqlite3", start=start, end=end)
    ledger_total = sum(ledger.values())
    fleet_total = fleet_posting_approvals(report)
    timeouts = int(getattr(report, "timeouts", 0))
    # What the fleet cannot count: a message it gave up on (timeout) may still have posted,
    # and a timeout reversal (0400/0401, also one carried over from an earlier run) posts
    # when its original did. Without either, the counts must be equal; with them, the ledger
    # may hold at most that many approved postings more than the fleet saw.
    unseen_max = (timeouts + int(getattr(report, "reversals_sent", 0))
                  + int(getattr(report, "reversal_repeats_sent", 0)))
    exact = unseen_max == 0
    matched = fleet_total <= ledger_total <= fleet_total + unseen_max
    if verified and not matched:
        problem = (f"{name} run: the fleet counted {fleet_total} approvals, the ledger holds {ledger_total} "
                   f"approved postings {ledger} between {start} and {end} (at most {unseen_max} more allowed: "
                   f"timeouts and timeout reversals)")
    # Every approval of a secured request is signed. A MAC that does not verify is not a ledger
    # fault: the switch sends a zero MAC when the HSM fails at response time (server._encode),
    # for the terminal to reverse; it is recorded, not failed.
    mac_invalid, mac_missing = int(getattr(report, "mac_invalid", 0)), int(getattr(report, "mac_missing", 0))
    macs_ok = mac_missing == 0
    if verified and matched and not macs_ok:
        problem = f"{name} run: {mac_missing} approvals of secured requests came without a MAC"
    return {"run": name, "ok": verified and matched and macs_ok, "verify_ok": verified, "fleet_approved": fleet_total,
            "ledger_approved": ledger_total, "ledger_by_kind": ledger, "timeouts": timeouts, "exact": exact,
            "mac_invalid": mac_invalid, "mac_missing": mac_missing, "problem": problem}


# ---------------------------------------------------------------------------- the fleet

def fleet_api() -> Any:
    try:
        from terminal_sim import fleet
    except ImportError as exc:
        raise BenchFailure(f"terminal_sim.fleet is not importable ({exc}): the e2e and ceiling runs need it") from None
    return fleet


def drive(port: int | tuple[int, ...], plan: BenchPlan, population: Any, state_dir: Path | None, *,
          closed_loop: bool, rate_per_s: float, duration_s: float, seed: int,
          terminals: int | None = None) -> tuple[Any, float]:
    """One fleet run from this process; returns its report and the fleet's own CPU seconds.
    port: one switch, or a tuple of several (terminal i connects to switch i mod N)."""
    from switch.wire.transport import run

    fleet = fleet_api()
    ports = port if isinstance(port, tuple) else (port,)
    config = fleet.FleetConfig(switches=tuple(("127.0.0.1", p) for p in ports), terminals=terminals or plan.terminals,
                               rate_per_s=rate_per_s, duration_s=duration_s, arrivals="poisson",
                               closed_loop=closed_loop, scenario=fleet.load_scenario(plan.scenario),
                               population=population,
                               response_timeout_ms=plan.response_timeout_ms, seed=seed, progress=False,
                               state_dir=state_dir)
    cpu0 = own_cpu_s()
    try:
        report = run(fleet.run_fleet(config))
    except fleet.FleetError as exc:
        where = ", ".join(f"127.0.0.1:{p}" for p in ports)
        raise BenchFailure(f"the fleet could not run against {where}: {exc}") from None
    return report, own_cpu_s() - cpu0


def summary(report: Any) -> dict[str, Any]:
    """The fleet report as JSON, without the encoded histogram (the percentiles stay)."""
    return {k: v for k, v in report.to_json().items() if k != "histogram"}


# ---------------------------------------------------------------------------- e2e suite

@dataclass
class SwitchRun:
    name: str
    report: Any
    switch_cpu_s: float
    switch_system_s: float
    fleet_cpu_s: float
    hsm_cpu_s: float
    wall_s: float
    check: dict[str, Any]
    db_cpu_s: float = 0.0   # the PostgreSQL cluster's CPU over the run (0 on SQLite: in the switch)
    instances: int = 1      # switch processes (several: `eum switch --cluster`, the CPU above their sum)
    switch_cpu_by_instance: dict[str, float] | None = None  # several instances: each one's CPU seconds
    forwarded: int = 0      # requests an ingress sent over a link to their member's owner (logged `forwarded`)


LEASE_SETTLE_TIMEOUT_S = 60.0  # instances of a cluster share the partitions out within a few heartbeats


def leases_settled(counts: dict[str, int], names: list[str], partitions: int) -> bool:
    """The live leases, per owner, are shared out among `names` alone: every partition held, and
    each instance at its fair share (ceil(partitions / N), switch/ops/cluster.py) or the rest
    the others leave it: 128 + 128 of 256 for two, 86 + 86 + 84 for three."""
    share = -(-partitions // len(names))
    floor = partitions - share * (len(names) - 1)
    return (set(counts) == set(names) and sum(counts.values()) == partitions
            and all(floor <= counts[n] <= share for n in names))


def _pg_rows(store: str, sql: str) -> list[tuple]:
    """Rows of one read on a fresh connection (a read-only transaction is one snapshot, and
    its now() would not move: a poll needs a new one each time)."""
    from switch.ledger.store import PgDsn, connect

    conn = connect(PgDsn(store), readonly=True)
    try:
        return [tuple(row) for row in conn.execute(sql).fetchall()]
    finally:
        conn.close()


def live_leases(store: str) -> tuple[dict[str, int], Any]:
    """Live partition leases per owner, and the database's now() they were counted at."""
    rows = _pg_rows(store, "SELECT owner, COUNT(*), now() FROM partition_leases WHERE expires_at > now() "
                           "GROUP BY owner")
    at = rows[0][2] if rows else _pg_rows(store, "SELECT now()")[0][0]
    return {str(owner): int(n) for owner, n, _ in rows}, at


def heartbeats(store: str) -> dict[str, Any]:
    """Each live instance's last heartbeat (the start of its last lease round)."""
    return {str(name): at for name, at in _pg_rows(store, "SELECT id, heartbeat_at FROM instances")}


def rounds_done_since(first_beat: dict[str, Any], beats: dict[str, Any], since: Any) -> bool:
    """Updates first_beat (instance → its first heartbeat after `since`) from beats; True once
    every instance of first_beat has started a round after that one: the round that began after
    `since` is over, and with it its refresh of the routes (switch/ops/cluster.py, Cluster.round)."""
    for name, at in beats.items():
        if name in first_beat and first_beat[name] is None and at > since:
            first_beat[name] = at
    return all(first is not None and beats.get(name, first) > first for name, first in first_beat.items())


def distinct_free_ports(n: int) -> list[int]:
    """n free loopback ports, no two equal (free_port may hand back one it just gave)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def forwarded_lines(path: Path, since: int) -> int:
    """Canonical log lines from byte `since` on that name the owner a request was forwarded to."""
    if not path.exists():
        return 0
    with path.open("rb") as f:
        f.seek(since)
        return sum(1 for line in f if b'"forwarded"' in line)


class E2eSuite:
    """plain=False: the e2e ledger (DUKPT-TDES terminals, PIN cards, the switch with --hsm).
    plain=True: the switch_plain ledger in its own files (security none, no PIN, no HSM)."""

    def __init__(self, plan: BenchPlan, tmp: Path, procs: Processes, *, plain: bool = False,
                 new_store: Any = None, instances: int = 1) -> None:
        """new_store: returns the URL of a fresh PostgreSQL database (one per seed attempt);
        None: the ledger is the data dir's SQLite file. instances > 1 (PostgreSQL only): each
        switch_run starts that many `eum switch --cluster` processes on the ledger, each with its
        own data dir, listen port and link port, and the fleet spread over them."""
        if instances < 1 or (instances > 1 and new_store is None):
            raise BenchFailure(f"{instances} switch instances: several need a PostgreSQL ledger, and at least one")
        self.plan = plan
        self.tmp = tmp
        self.procs = procs
        self.plain = plain
        self.new_store = new_store
        self.instances = instances
        self.store: str | None = None
        suffix = (("-plain" if plain else "") + ("-pg" if new_store else "")
                  + (f"-x{instances}" if instances > 1 else ""))
        self.data_dir = tmp / f"var{suffix}"
        self.population_path = tmp / f"population{suffix}.json"
        self.state_dir = tmp / f"fleet-state{suffix}"
        self.hsm_port = 0
        self.population: Any = None

    def start_hsm(self) -> None:
        self.hsm_port = free_port()
        self.procs.start("hsm", [*EUM, "hsm", "--listen", f"127.0.0.1:{self.hsm_port}"])
        self.procs.wait_listening("hsm", self.hsm_port)

    def seed(self) -> dict[str, Any]:
        """Seed the e2e data dir and export the population. The PIN cards' PVVs come from the
        HSM in one unbounded burst (switch/cli/main.py _set_pins); one call timing out fails the
        seed, so a failed seed is retried on a fresh data dir."""
        plan = self.plan
        t0 = time.perf_counter()
        failures = []
        cards = plan.plain_cards if self.plain else plan.cards
        security = (["--security", "none"] if self.plain
                    else ["--security", "dukpt-tdes", "--pin-cards", str(plan.pin_cards), "--pin", PIN])
        hsm = [] if self.plain else ["--hsm", f"127.0.0.1:{self.hsm_port}"]
        for _ in range(SEED_ATTEMPTS_MAX):
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.store = self.new_store() if self.new_store else None
            done = eum_command("admin", "--data-dir", str(self.data_dir), *store_flag(self.store), *hsm,
                               "--json", "seed", "--cards", str(cards), "--merchants", str(plan.terminals),
                               *security,
                               "--export", str(self.population_path), "--export-cards", str(cards))
            if done.returncode == 0:
                break
            failures.append(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
        else:
            raise BenchFailure(f"eum admin seed failed {SEED_ATTEMPTS_MAX} times: {'; '.join(failures)}")
        self.population = fleet_api().load_population(self.population_path)
        return {"seconds": round(time.perf_counter() - t0, 2), "failed_attempts": failures, **json.loads(done.stdout)}

    def _switch_specs(self) -> list[tuple[str, int, list[str], Path]]:
        """(process name, listen port, argv, data dir) of each switch process of a run."""
        hsm = [] if self.plain else ["--hsm", f"127.0.0.1:{self.hsm_port}"]
        common = [*store_flag(self.store), *hsm, "--log-level", self.plan.switch_log_level]
        if self.instances == 1:
            port = free_port()
            return [("switch", port, [*EUM, "switch", "--data-dir", str(self.data_dir), *store_flag(self.store),
                                      "--listen", f"127.0.0.1:{port}", *hsm, "--log-level", self.plan.switch_log_level],
                     self.data_dir)]
        ports = distinct_free_ports(2 * self.instances)
        specs = []
        for i in range(self.instances):
            name, port, link = f"switch-{i + 1}", ports[2 * i], ports[2 * i + 1]
            data_dir = self.data_dir.with_name(f"{self.data_dir.name}-{name}")
            specs.append((name, port, [*EUM, "switch", "--data-dir", str(data_dir), *common,
                                       "--listen", f"127.0.0.1:{port}", "--cluster", "--link", f"127.0.0.1:{link}",
                                       "--instance-id", name], data_dir))
        return specs

    def wait_leases(self, names: list[str]) -> dict[str, int]:
        """Until the instances have shared the 256 member partitions out (leases_settled), and
        then until each has finished a lease round begun after that: an instance refreshes its
        routes (which instance owns which partition) once per round, so until then a request for
        a partition it has just given back waits for the next round at its ingress (measured:
        up to ≈ 0.9 s, the first second of a run). The fleet starts on the steady state.
        BenchFailure, with the last counts, when this takes over LEASE_SETTLE_TIMEOUT_S."""
        from switch.domain import PARTITIONS

        assert self.store is not None
        deadline = time.monotonic() + LEASE_SETTLE_TIMEOUT_S
        counts: dict[str, int] = {}
        settled_at: Any = None
        first_beat: dict[str, Any] = {name: None for name in names}
        beats: dict[str, Any] = {}
        while time.monotonic() < deadline:
            for name in names:
                proc = self.procs.running[name]
                if proc.poll() is not None:
                    raise BenchFailure(f"{name} exited with {proc.returncode} while taking its leases:\n"
                                       f"{self.procs.stderr_tail(name)}")
            if settled_at is None:
                counts, at = live_leases(self.store)
                if leases_settled(counts, names, PARTITIONS):
                    settled_at = at
            if settled_at is not None:
                beats = heartbeats(self.store)
                if rounds_done_since(first_beat, beats, settled_at):
                    return counts
            time.sleep(0.1)
        raise BenchFailure(f"the {len(names)} switch instances did not share the {PARTITIONS} partitions out and "
                           f"finish a lease round after it within {LEASE_SETTLE_TIMEOUT_S:g} s: live leases by owner "
                           f"{counts}, settled at {settled_at}, heartbeats {beats}")

    def switch_run(self, name: str, *, closed_loop: bool, rate_per_s: float, duration_s: float,
                   seed: int, terminals: int | None = None, flame: Path | None = None,
                   db_cpu_now: Any = None) -> SwitchRun:
        """flame: record a py-spy flame graph of the switch into this SVG during the run (one
        instance only). db_cpu_now: the database server's CPU seconds so far (PostgreSQL runs).
        Several instances: all started, their leases settled, then the fleet over all of them;
        the switch CPU is the sum over the processes."""
        if flame is not None and self.instances != 1:
            raise BenchFailure("a flame graph is recorded of one switch instance only")
        specs = self._switch_specs()
        names = [spec[0] for spec in specs]
        spy: FlameGraph | None = None
        try:
            for proc_name, _, argv, _ in specs:
                self.procs.start(proc_name, argv)
            for proc_name, port, _, _ in specs:
                self.procs.wait_listening(proc_name, port)
            if self.instances > 1:
                self.wait_leases(names)
            pids = [self.procs.running[n].pid for n in names]
            logs = [data_dir / "logs" / "switch.jsonl" for *_, data_dir in specs]
            hsm_cpu_now = (lambda: 0.0) if self.plain else (lambda: process_cpu_s(self.procs.running["hsm"].pid))
            if flame is not None:  # sample all but the run's last seconds: py-spy must end before the switch
                spy = FlameGraph(pids[0], flame, max(1, int(duration_s) - 5), log_dir=self.procs.log_dir)
            db_cpu_now = db_cpu_now or (lambda: 0.0)
            log_from = [log_size(path) for path in logs]
            start = kst_now_iso()
            cpu0, hsm0, db0, t0 = ([process_cpu_split_s(pid) for pid in pids], hsm_cpu_now(), db_cpu_now(),
                                   time.perf_counter())
            ports = tuple(spec[1] for spec in specs)
            report, fleet_cpu = drive(ports if self.instances > 1 else ports[0], self.plan, self.population,
                                      self.state_dir, closed_loop=closed_loop, rate_per_s=rate_per_s,
                                      duration_s=duration_s, seed=seed, terminals=terminals)
            wall = time.perf_counter() - t0
            cpu1, hsm_cpu, db_cpu = [process_cpu_split_s(pid) for pid in pids], hsm_cpu_now() - hsm0, db_cpu_now() - db0
            by_instance = {n: sum(b) - sum(a) for n, a, b in zip(names, cpu0, cpu1)}
            switch_cpu, switch_sys = sum(by_instance.values()), sum(b[1] - a[1] for a, b in zip(cpu0, cpu1))
            if spy is not None:
                spy.finish()
        finally:
            if spy is not None:
                spy.stop()
            rcs, stop_failures = {}, []
            for proc_name in names:
                if proc_name in self.procs.running:
                    try:
                        rcs[proc_name] = self.procs.stop(proc_name)
                    except BenchFailure as exc:
                        stop_failures.append(str(exc))
        end = kst_now_iso()
        if stop_failures:
            raise BenchFailure("; ".join(stop_failures))
        for proc_name, rc in rcs.items():
            if rc != 0:
                raise BenchFailure(f"eum switch ({proc_name}) exited with {rc} after the {name} run:\n"
                                   f"{self.procs.stderr_tail(proc_name)}")
        forwarded = sum(forwarded_lines(path, since) for path, since in zip(logs, log_from))
        check = check_run(name, data_dir=self.data_dir, report=report, start=start, end=end, store=self.store)
        return SwitchRun(name, report, switch_cpu, switch_sys, fleet_cpu, hsm_cpu, wall, check, db_cpu,
                         instances=self.instances,
                         switch_cpu_by_instance=by_instance if self.instances > 1 else None, forwarded=forwarded)

    def ceiling_run(self, *, duration_s: float, seed: int) -> tuple[Any, float, float]:
        port = free_port()
        self.procs.start("responder", [sys.executable, str(ROOT / "benchmarks" / "responder.py"),
                                       "--listen", f"127.0.0.1:{port}"])
        try:
            self.procs.wait_listening("responder", port)
            pid = self.procs.running["responder"].pid
            cpu0 = process_cpu_s(pid)
            report, fleet_cpu = drive(port, self.plan, self.population, None,  # no KSNs to keep
                                      closed_loop=True, rate_per_s=CLOSED_LOOP_RATE_PER_S, duration_s=duration_s,
                                      seed=seed)
            responder_cpu = process_cpu_s(pid) - cpu0
        finally:
            self.procs.stop("responder")
        return report, fleet_cpu, responder_cpu


def run_e2e(plan: BenchPlan, tmp: Path, procs: Processes, *,
            flame: Path | None = None) -> tuple[dict[str, Any], dict[str, Any], list[dict]]:
    """Returns (flat keys, run details, correctness checks). flame: the SVG of the switch's
    py-spy flame graph during the e2e run (None: not recorded)."""
    suite = E2eSuite(plan, tmp, procs)
    suite.start_hsm()
    seeded = suite.seed()
    capacity = suite.switch_run("capacity", closed_loop=True, rate_per_s=CLOSED_LOOP_RATE_PER_S,
                                duration_s=plan.capacity_s, seed=11, terminals=plan.capacity_terminals)
    capacity_per_s = served_per_s(capacity.report)
    if capacity_per_s <= 0:
        raise BenchFailure(f"the capacity run served nothing: by_rc {capacity.report.by_rc}, "
                           f"timeouts {capacity.report.timeouts}")
    rate = round(capacity_per_s * OFFERED_FRACTION, 1)
    e2e = suite.switch_run("e2e", closed_loop=False, rate_per_s=rate, duration_s=plan.e2e_s, seed=12, flame=flame)
    half = suite.switch_run("e2e_half", closed_loop=False, rate_per_s=round(rate / 2, 1), duration_s=plan.half_s,
                            seed=13)
    ceiling, ceiling_fleet_cpu, responder_cpu = suite.ceiling_run(duration_s=plan.ceiling_s, seed=14)
    procs.stop("hsm")
    plain_flat, plain_runs, plain_check = run_switch_plain(plan, tmp, procs)

    ceiling_per_s = float(ceiling.achieved_per_s)
    approved = int(e2e.report.approved)
    lat, half_lat = e2e.report.latency_ms, half.report.latency_ms
    flat = {
        "e2e.approved_per_s": round(float(e2e.report.approved_per_s), 1),
        "e2e.latency_ms.p50": _ms(lat["p50"]), "e2e.latency_ms.p99": _ms(lat["p99"]),
        "e2e.latency_ms.p999": _ms(lat["p999"]),
        "e2e.offered_per_s": round(float(e2e.report.offered_per_s), 1),
        "e2e.capacity_per_s": round(capacity_per_s, 1),
        "e2e.capacity_cores_busy": cores_busy(capacity),
        "ceiling.per_s": round(ceiling_per_s, 1),
        "ratio.e2e_to_ceiling": round(float(e2e.report.approved_per_s) / ceiling_per_s, 3) if ceiling_per_s else 0.0,
        "switch.cpu_us_per_auth": round(e2e.switch_cpu_s * 1e6 / approved, 1) if approved else float("inf"),
        "hsm.cpu_us_per_auth": round(e2e.hsm_cpu_s * 1e6 / approved, 1) if approved else float("inf"),
        "fleet.cpu_us_per_tx": round(e2e.fleet_cpu_s * 1e6 / max(1, int(e2e.report.sent)), 1),
        "e2e_half.latency_ms.p50": _ms(half_lat["p50"]), "e2e_half.latency_ms.p99": _ms(half_lat["p99"]),
        "e2e_half.latency_ms.p999": _ms(half_lat["p999"]),
        "e2e_half.offered_per_s": round(float(half.report.offered_per_s), 1),
        "e2e_half.approved_per_s": round(float(half.report.approved_per_s), 1),
        "e2e.overload_declines": sum(int(e2e.report.by_rc.get(rc, 0)) for rc in OVERLOAD_RCS),
        "e2e.mac_invalid": int(e2e.report.mac_invalid),
        **plain_flat,
    }
    runs: dict[str, Any] = {"seed": seeded}
    for r in (capacity, e2e, half):
        runs[r.name] = {**summary(r.report), "closed_loop": r.name == "capacity", "wall_s": round(r.wall_s, 2),
                        "switch_cpu_s": round(r.switch_cpu_s, 3), "switch_system_s": round(r.switch_system_s, 3),
                        "hsm_cpu_s": round(r.hsm_cpu_s, 3),
                        "fleet_cpu_s": round(r.fleet_cpu_s, 3), "check": r.check}
    runs["ceiling"] = {**summary(ceiling), "closed_loop": True, "fleet_cpu_s": round(ceiling_fleet_cpu, 3),
                       "responder_cpu_s": round(responder_cpu, 3)}
    runs.update(plain_runs)
    return flat, runs, [capacity.check, e2e.check, half.check, plain_check]


def cluster_cpu_s(postmaster_pid: int) -> float:
    """A PostgreSQL cluster's CPU seconds so far: the postmaster's own, its exited children's
    (cutime + cstime: backends and autovacuum workers that came and went) and its live
    children's. A delta over a run is the database's CPU for that run."""
    def fields(pid: int) -> list[str]:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()

    tick = os.sysconf("SC_CLK_TCK")
    own = fields(postmaster_pid)  # after ")": state ppid … utime(11) stime(12) cutime(13) cstime(14)
    total = sum(int(own[i]) for i in (11, 12, 13, 14))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            f = fields(int(entry.name))
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(f[1]) == postmaster_pid:
            total += int(f[11]) + int(f[12])
    return total / tick


def run_pg(plan: BenchPlan, tmp: Path, procs: Processes, sqlite_flat: dict[str, Any], *,
           instances: int = 1) -> tuple[dict[str, Any], dict[str, Any], list[dict]]:
    """Issue 12: the e2e procedure (capacity, then open loop at OFFERED_FRACTION of it) with the
    ledger on a private PostgreSQL cluster (benchmarks/pg_cluster.py: initdb on a free port,
    synchronous_commit and fsync on), one switch instance; compared with the SQLite e2e of the
    same bench run. The cluster's CPU (postmaster and every backend) is measured over the run.
    instances > 1: then the same procedure again on a fresh database seeded the same way, with
    that many `eum switch --cluster` instances sharing it and the fleet spread over them
    (pg.instances.<N>.* keys; runs["pg_instances"] holds a row for 1 and for N)."""
    from benchmarks.pg_cluster import PgCluster, pg_bindir

    check_instances("postgresql", instances)
    if pg_bindir() is None:
        raise BenchFailure("--store postgresql: no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    cluster = PgCluster().start()
    try:
        suite = E2eSuite(plan, tmp, procs, new_store=cluster.create_database)
        suite.start_hsm()
        seeded = suite.seed()
        postmaster = cluster._postmaster_pid()
        assert postmaster is not None, "a started cluster has a postmaster"
        db_cpu = lambda: cluster_cpu_s(postmaster)  # noqa: E731
        capacity, capacity_per_s, e2e = pg_procedure(suite, "pg", db_cpu)
        many: tuple[SwitchRun, float, SwitchRun] | None = None
        if instances > 1:
            assert suite.store is not None
            cluster.drop_database(suite.store)  # checked already; the next run gets the cluster to itself
            multi = E2eSuite(plan, tmp, procs, new_store=cluster.create_database, instances=instances)
            multi.hsm_port = suite.hsm_port
            seeded_multi = multi.seed()
            many = pg_procedure(multi, f"pg_x{instances}", db_cpu)
        procs.stop("hsm")
    finally:
        cluster.stop()
    approved = int(e2e.report.approved)
    per_auth = (lambda cpu_s: round(cpu_s * 1e6 / approved, 1) if approved else float("inf"))
    pg_e2e = round(float(e2e.report.approved_per_s), 1)
    flat = {
        "pg.e2e.approved_per_s": pg_e2e,
        "pg.e2e.latency_ms.p50": _ms(e2e.report.latency_ms["p50"]),
        "pg.e2e.latency_ms.p99": _ms(e2e.report.latency_ms["p99"]),
        "pg.e2e.capacity_per_s": round(capacity_per_s, 1),
        "pg.switch.cpu_us_per_auth": per_auth(e2e.switch_cpu_s),
        "pg.postgres.cpu_us_per_auth": per_auth(e2e.db_cpu_s),
        "pg.hsm.cpu_us_per_auth": per_auth(e2e.hsm_cpu_s),
    }
    sqlite_e2e, sqlite_cpu = sqlite_flat["e2e.approved_per_s"], sqlite_flat["switch.cpu_us_per_auth"]
    flat["pg.ratio.e2e_to_sqlite"] = round(pg_e2e / sqlite_e2e, 3) if sqlite_e2e else float("inf")
    flat["pg.switch.cpu_us_over_sqlite"] = round(flat["pg.switch.cpu_us_per_auth"] - sqlite_cpu, 1)
    runs: dict[str, Any] = {"pg_seed": seeded}
    pg_runs = [capacity, e2e] + ([many[0], many[2]] if many else [])
    for r in pg_runs:
        runs[r.name] = {**summary(r.report), "closed_loop": r.name.endswith("_capacity"), "wall_s": round(r.wall_s, 2),
                        "switch_cpu_s": round(r.switch_cpu_s, 3), "postgres_cpu_s": round(r.db_cpu_s, 3),
                        "hsm_cpu_s": round(r.hsm_cpu_s, 3), "fleet_cpu_s": round(r.fleet_cpu_s, 3), "check": r.check,
                        "instances": r.instances, "forwarded": r.forwarded,
                        **({"switch_cpu_s_by_instance": {k: round(v, 3) for k, v in r.switch_cpu_by_instance.items()}}
                           if r.switch_cpu_by_instance else {})}
    rows = [instances_row(capacity_per_s, e2e)]
    if many:
        runs[f"pg_x{instances}_seed"] = seeded_multi
        row = instances_row(many[1], many[2])
        rows.append(row)
        flat.update(instances_keys(row))
    runs["pg_instances"] = rows
    return flat, runs, [r.check for r in pg_runs]


def check_instances(store: str, instances: int) -> None:
    """--instances N: 1 on any store; more only on PostgreSQL (several instances share one
    ledger by member ownership), and at most one per member partition."""
    from switch.domain import PARTITIONS

    if not 1 <= instances <= PARTITIONS:
        raise BenchFailure(f"--instances {instances}: between 1 and {PARTITIONS} (one per member partition at most)")
    if instances > 1 and store != "postgresql":
        raise BenchFailure(f"--instances {instances}: several switch instances share a PostgreSQL ledger; "
                           "add --store postgresql")


def pg_procedure(suite: E2eSuite, prefix: str, db_cpu: Any) -> tuple[SwitchRun, float, SwitchRun]:
    """The e2e procedure on a seeded PostgreSQL suite: `<prefix>_capacity` (closed loop,
    capacity_terminals) and `<prefix>_e2e` (open loop at OFFERED_FRACTION of the served rate).
    Returns (capacity run, served per second, e2e run)."""
    plan = suite.plan
    capacity = suite.switch_run(f"{prefix}_capacity", closed_loop=True, rate_per_s=CLOSED_LOOP_RATE_PER_S,
                                duration_s=plan.capacity_s, seed=11, terminals=plan.capacity_terminals,
                                db_cpu_now=db_cpu)
    capacity_per_s = served_per_s(capacity.report)
    if capacity_per_s <= 0:
        raise BenchFailure(f"the PostgreSQL capacity run ({suite.instances} instance(s)) served nothing: "
                           f"by_rc {capacity.report.by_rc}")
    rate = round(capacity_per_s * OFFERED_FRACTION, 1)
    e2e = suite.switch_run(f"{prefix}_e2e", closed_loop=False, rate_per_s=rate, duration_s=plan.e2e_s, seed=12,
                           db_cpu_now=db_cpu)
    return capacity, capacity_per_s, e2e


def instances_row(capacity_per_s: float, e2e: Any) -> dict[str, Any]:
    """One row of the instances × throughput table: the capacity run's served rate and the e2e
    run's approvals, CPU per approval (switch: the sum over the instances) and latency."""
    approved = int(e2e.report.approved)
    per_auth = (lambda cpu_s: round(cpu_s * 1e6 / approved, 1) if approved else float("inf"))
    sent = int(e2e.report.sent)
    return {"instances": e2e.instances, "capacity_per_s": round(capacity_per_s, 1),
            "e2e_approved_per_s": round(float(e2e.report.approved_per_s), 1),
            "switch_cpu_us_per_auth": per_auth(e2e.switch_cpu_s), "postgres_cpu_us_per_auth": per_auth(e2e.db_cpu_s),
            "hsm_cpu_us_per_auth": per_auth(e2e.hsm_cpu_s),
            "e2e_latency_ms_p50": _ms(e2e.report.latency_ms["p50"]),
            "e2e_latency_ms_p99": _ms(e2e.report.latency_ms["p99"]),
            "forwarded_share": round(e2e.forwarded / sent, 3) if sent else 0.0}


def instances_keys(row: dict[str, Any]) -> dict[str, Any]:
    """The flat pg.instances.<N>.* keys of a row of the instances table."""
    n = row["instances"]
    return {f"pg.instances.{n}.e2e.approved_per_s": row["e2e_approved_per_s"],
            f"pg.instances.{n}.capacity_per_s": row["capacity_per_s"],
            f"pg.instances.{n}.switch.cpu_us_per_auth": row["switch_cpu_us_per_auth"],
            f"pg.instances.{n}.postgres.cpu_us_per_auth": row["postgres_cpu_us_per_auth"]}


def run_switch_plain(plan: BenchPlan, tmp: Path, procs: Processes) -> tuple[dict[str, Any], dict[str, Any], dict]:
    """The switch_plain run (issue 10, item 5): `eum switch` without an HSM on its own ledger of
    plan.plain_cards cards and plan.terminals `--security none` terminals (no MAC, no PIN block),
    closed loop with plan.capacity_terminals terminals for plan.plain_s, the standard scenario's
    mix. Returns (flat keys, run details, correctness check); the switch's CPU (/proc) ÷ messages
    answered is switch_plain.cpu_us_per_msg."""
    suite = E2eSuite(plan, tmp, procs, plain=True)
    seeded = suite.seed()
    r = suite.switch_run("switch_plain", closed_loop=True, rate_per_s=CLOSED_LOOP_RATE_PER_S,
                         duration_s=plan.plain_s, seed=15, terminals=plan.capacity_terminals)
    answered = int(r.report.responses)
    flat = {"switch_plain.cpu_us_per_msg": round(r.switch_cpu_s * 1e6 / answered, 1) if answered else float("inf"),
            "switch_plain.answered_per_s": round(answered / float(r.report.duration_s), 1)}
    details = {**summary(r.report), "closed_loop": True, "wall_s": round(r.wall_s, 2),
               "switch_cpu_s": round(r.switch_cpu_s, 3), "switch_system_s": round(r.switch_system_s, 3),
               "fleet_cpu_s": round(r.fleet_cpu_s, 3), "check": r.check}
    return flat, {"seed_plain": seeded, "switch_plain": details}, r.check


def cores_busy(run: SwitchRun) -> float:
    """How many cores a run kept busy: the CPU the switch, the HSM, PostgreSQL and the fleet
    spent over it ÷ its wall time. A closed loop that keeps fewer busy than the machine has is
    held back by latency, not by the cores: its requests wait behind each other's stages
    (docs/performance.md, "The closed loop is not CPU-bound: where an approval's 11 ms go")."""
    if run.wall_s <= 0:
        return 0.0
    return round((run.switch_cpu_s + run.hsm_cpu_s + run.fleet_cpu_s + run.db_cpu_s) / run.wall_s, 2)


def served_per_s(report: Any) -> float:
    """Answers per second that are decisions, not overload: 91/96 (HSM or switch unavailable)
    and timeouts are what a rate beyond capacity produces, so they do not count."""
    overload = sum(int(report.by_rc.get(rc, 0)) for rc in OVERLOAD_RCS)
    return max(0, int(report.responses) - overload) / float(report.duration_s)


def _ms(value: Any) -> float:
    return round(float(value), 3)


# ---------------------------------------------------------------------------- scale

def run_scale(plan: BenchPlan) -> dict[str, Any]:
    from benchmarks import hot_memory
    from benchmarks.scale import one_run

    try:
        r = one_run(plan.scale_cards, plan.scale_merchants)
        hot = hot_memory.one_run(plan.scale_cards)
    except SystemExit as exc:  # one_run reports a failed purchase or verify this way
        raise BenchFailure(f"scale run: {exc}") from None
    return {"scale.cards": plan.scale_cards, "scale.merchants": plan.scale_merchants,
            "scale.seed_1m_s": round(r["seed_s"], 3), "scale.start_1m_s": round(r["start_s"], 3),
            "scale.first_purchase_1m_ms": round(r["first_purchase_ms"], 3), "scale.rss_mib_1m": round(r["rss_mib"], 1),
            "scale.rss_mib_1m_hot": hot["rss_mib_hot"]}


# ---------------------------------------------------------------------------- machine and output

def describe_machine() -> dict[str, Any]:
    import importlib.metadata as md

    from benchmarks.scale import machine

    m = machine()
    for package in ("eum-switch", "hdrhistogram", "rich", "matplotlib", "py-spy"):
        with contextlib.suppress(md.PackageNotFoundError):
            m["packages"][package] = md.version(package)
    m["python_implementation"] = platform.python_implementation()
    from switch import compiled  # which build of each group of compiled modules ran (docs/operations.md)
    for package in compiled.GROUP_PACKAGES:
        m[COMPILED_KEYS[package]] = compiled.summary(importlib.import_module(f"{package}.compiled").MODULES)
    with contextlib.suppress(OSError):
        m["loadavg_at_start"] = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            m["git"] = head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    return m


def result_stem(*, quick: bool, today: date | None = None, host: str | None = None) -> str:
    stem = f"{(today or date.today()).isoformat()}-{host or socket.gethostname()}"
    return stem + "-quick" if quick else stem


def target_met(key: str, value: Any) -> bool | None:
    if key not in TARGETS or not isinstance(value, (int, float)):
        return None
    target, op = TARGETS[key]
    return value >= target if op == ">=" else value <= target


def target_lines(result: dict[str, Any]) -> list[str]:
    """The Markdown's verdict on the targets: a count, then each target, met or not, with the
    figure measured (a target whose key this run did not measure is named as such)."""
    verdicts = {key: target_met(key, result.get(key)) for key in TARGETS}
    measured = [k for k, v in verdicts.items() if v is not None]
    met = [k for k in measured if verdicts[k]]
    unmeasured = len(TARGETS) - len(measured)
    lines = [f"Targets: {len(met)} met, {len(measured) - len(met)} not met"
             + (f", {unmeasured} not measured in this run." if unmeasured else "."), ""]
    for key, (target, op) in TARGETS.items():
        sign = SIGN[op]
        verdict = verdicts[key]
        if verdict is None:
            lines.append(f"- `{key}` {sign} {_fmt(target)}: not measured")
        else:
            lines.append(f"- `{key}` {sign} {_fmt(target)}: {'met' if verdict else '**not met**'} "
                         f"({_fmt(result[key])})")
    return lines


def write_json(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")


def write_result(result: dict[str, Any], out_dir: str | Path, kind: str) -> Path:
    """A benchmark script's result as <out-dir>/<date>-vm-<kind>.json (the directory made if
    missing), its path printed and returned."""
    out = Path(out_dir) / f"{date.today().isoformat()}-vm-{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {out}")
    return out


def markdown(result: dict[str, Any]) -> str:
    m = result.get("machine", {})
    packages = ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items())
    lines = [
        f"# eum bench {result.get('mode', '')} — {result.get('date', '')} on {m.get('host', '?')}",
        "",
        f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, kernel {m.get('kernel', '?')}, "
        f"Python {m.get('python', '?')}, SQLite {m.get('sqlite', '?')}; {packages}. "
        f"Load average at start: {m.get('loadavg_at_start', '?')}. Commit {m.get('git', '?')}; "
        f"compiled modules {m.get('compiled', '?')} (HSM {m.get('compiled_hsm', '?')}, "
        f"terminals {m.get('compiled_terminal', '?')}).",
        "",
        f"Correctness under load: **{'passed' if result.get('correctness.ok') else 'FAILED'}** "
        f"(verify + approvals fleet = ledger after every e2e run and the switch_plain run).",
        "",
        *target_lines(result),
        "",
        "| key | value | target | met |",
        "|---|---|---|---|",
    ]
    for key in sorted(k for k in result if "." in k and not isinstance(result[k], (dict, list))):
        value = result[key]
        target = TARGETS.get(key)
        met = target_met(key, value)
        lines.append(f"| `{key}` | {_fmt(value)} | {f'{target[1]} {_fmt(target[0])}' if target else ''} | "
                     f"{'' if met is None else ('yes' if met else '**no**')} |")
    runs = result.get("runs", {})
    if runs:
        lines += ["", "## Runs", "", "| run | loop | offered/s | achieved/s | approved/s | p50 ms | p99 ms | "
                  "p99.9 ms | sent | timeouts | reversals | response codes |", "|---" * 12 + "|"]
        pg_multi = sorted(n for n in runs if n.startswith("pg_x") and n.endswith(("_capacity", "_e2e")))
        for name in ("capacity", "e2e", "e2e_half", "ceiling", "switch_plain", "pg_capacity", "pg_e2e", *pg_multi):
            r = runs.get(name)
            if not r:
                continue
            lat = r.get("latency_ms") or {}
            lines.append(
                f"| {name} | {'closed' if r.get('closed_loop') else 'open'} | {_fmt(r.get('offered_per_s'))} | "
                f"{_fmt(r.get('achieved_per_s'))} | {_fmt(r.get('approved_per_s'))} | {_fmt(lat.get('p50'))} | "
                f"{_fmt(lat.get('p99'))} | {_fmt(lat.get('p999'))} | {_fmt(r.get('sent'))} | "
                f"{_fmt(r.get('timeouts'))} | {_fmt(r.get('reversals_sent'))} | "
                f"{', '.join(f'{k}: {v}' for k, v in sorted((r.get('by_rc') or {}).items()))} |")
    instance_rows = runs.get("pg_instances") or []
    if len(instance_rows) > 1:
        lines += ["", "## Instances", "", "PostgreSQL ledger, the e2e procedure with each number of `eum switch` "
                  "instances (switch µs/auth: the sum over the instances).", "",
                  "| instances | capacity/s | e2e approved/s | switch µs/auth | PostgreSQL µs/auth |",
                  "|---:|---:|---:|---:|---:|"]
        for row in instance_rows:
            lines.append(f"| {row['instances']} | {_fmt(row.get('capacity_per_s'))} | "
                         f"{_fmt(row.get('e2e_approved_per_s'))} | {_fmt(row.get('switch_cpu_us_per_auth'))} | "
                         f"{_fmt(row.get('postgres_cpu_us_per_auth'))} |")
    checks = result.get("checks", [])
    if checks:
        lines += ["", "## Correctness under load", "", "| run | verify | fleet approvals | ledger approved postings "
                  "| timeouts | ok |", "|---|---|---|---|---|---|"]
        for c in checks:
            lines.append(f"| {c['run']} | {'passed' if c['verify_ok'] else '**failed**'} | {c['fleet_approved']} | "
                         f"{c['ledger_approved']} {c['ledger_by_kind']} | {c['timeouts']} | "
                         f"{'yes' if c['ok'] else '**no**: ' + c['problem']} |")
    plots = result.get("plots", [])
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    if result.get("flame_graph"):
        lines += ["", f"Flame graph of the switch during the e2e run (py-spy): [{result['flame_graph']}]"
                      f"({result['flame_graph']})"]
    notes = result.get("notes", [])
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def notes_for(plan: BenchPlan, *, instances: int = 1, cores: Any = None) -> list[str]:
    """The Markdown's notes; instances > 1: the PostgreSQL runs were repeated with that many
    switch instances on one machine (cores: its core count, as describe_machine gives it)."""
    return [
        f"mode {plan.mode}: e2e {plan.e2e_s:g} s open loop at {OFFERED_FRACTION:g} × the closed-loop capacity "
        f"({plan.capacity_s:g} s, {plan.capacity_terminals} terminals; answers other than "
        f"{'/'.join(OVERLOAD_RCS)} per second), e2e_half {plan.half_s:g} s at half that rate, "
        f"ceiling {plan.ceiling_s:g} s "
        f"closed loop against benchmarks/responder.py; {plan.terminals} terminals (DUKPT-TDES, test keys), "
        f"{plan.cards:,} cards of which {plan.pin_cards:,} with a PIN; scenario {plan.scenario}.",
        "fleet, switch, HSM and responder share this machine's cores: the fleet runs in the bench process.",
        f"latencies from each transaction's intended send time (open loop), HdrHistogram; the switch logs at "
        f"{plan.switch_log_level}.",
        f"scale.* keys are measured with scale.cards = {plan.scale_cards:,} cards "
        f"({'not 1,000,000: quick mode' if plan.scale_cards != 1_000_000 else 'as named'}).",
        "switch.cpu_us_per_auth: the switch process's utime+stime (/proc/PID/stat) over the e2e run ÷ approvals.",
        "e2e.capacity_cores_busy: the CPU of the switch, the HSM and the fleet over the closed-loop capacity run ÷ "
        "its wall time; fewer than the machine's cores: the capacity is held by latency, not by the cores.",
        f"switch_plain.cpu_us_per_msg: the same over a {plan.plain_s:g} s closed-loop run of "
        f"{plan.capacity_terminals} terminals against `eum switch` without an HSM, on its own ledger of "
        f"{plan.plain_cards:,} cards seeded with --security none (no MAC, no PIN block; the standard "
        f"scenario's mix) ÷ messages answered; checked like the e2e runs.",
    ] + (["the switch's flame graph: py-spy record --nonblocking (100 samples/s) during the e2e run; py-spy "
          "runs on the same cores."] if plan.flame_graph else []) + (
        [f"pg.instances.{instances}.*: the PostgreSQL e2e procedure again on a fresh database seeded the same way, "
         f"with {instances} `eum switch --cluster` instances sharing it (256 member partitions leased, "
         f"{256 // instances}{'' if 256 % instances == 0 else ' or so'} each before the fleet starts; "
         f"the fleet's terminal i on instance i mod {instances}); "
         f"switch CPU is the sum over the instances. All {instances} instances, the HSM, PostgreSQL and the fleet "
         f"share this machine's {cores if cores is not None else '?'} cores, so a second instance cannot add "
         f"throughput here: the Instances table shows the cost of coordination (requests forwarded over the link "
         f"to their member's owner, leases), not scaling."] if instances > 1 else [])


# ---------------------------------------------------------------------------- entry point

def run_bench(quick: bool, out_dir: Path, *, plan: BenchPlan | None = None, store: str = "sqlite",
              instances: int = 1) -> dict[str, Any]:
    """Run the standard set, write JSON + Markdown + PNGs into out_dir, return the result.
    Raises BenchFailure (after writing the files, when there is something to write) if a run
    could not be measured or the ledger disagrees with the fleet."""
    plan = plan or PLANS["quick" if quick else "full"]
    check_instances(store, instances)  # before the long runs, not after them
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: dict[str, Any] = {"date": date.today().isoformat(), "mode": plan.mode, "machine": describe_machine(),
                              "plan": asdict(plan)}
    result.update(codec_bench())
    stem = (result_stem(quick=plan.mode == "quick") + ("-pg" if store == "postgresql" else "")
            + (f"-x{instances}" if instances > 1 else ""))
    flame = None
    if plan.flame_graph:
        py_spy_path()  # missing: fail now, not after the long runs
        flame = out_dir / f"{stem}-switch-flame.svg"
    with tempfile.TemporaryDirectory(prefix="eum-bench-") as tmp_name:
        tmp = Path(tmp_name)
        procs = Processes(tmp)
        try:
            flat, runs, checks = run_e2e(plan, tmp, procs, flame=flame)
            if store == "postgresql":
                pg_flat, pg_runs, pg_checks = run_pg(plan, tmp, procs, flat, instances=instances)
                flat.update(pg_flat)
                runs.update(pg_runs)
                checks += pg_checks
        except BenchFailure as exc:
            procs.stop_all()
            kept = keep_logs(tmp, out_dir / f"{stem}-failed-logs")
            raise BenchFailure(f"{exc}\n(the processes' output is in {kept})") from None
        finally:
            procs.stop_all()
    result.update(flat)
    result.update(run_scale(plan))
    result["correctness.ok"] = all(c["ok"] for c in checks)
    result["checks"] = checks
    result["runs"] = runs
    result["notes"] = notes_for(plan, instances=instances if store == "postgresql" else 1,
                                cores=result["machine"].get("cores"))
    if flame is not None:
        result["flame_graph"] = flame.name  # relative to the result JSON, like the plots
    result["bench.seconds"] = round(time.perf_counter() - started, 1)
    missing = [k for k in REQUIRED_KEYS if k not in result]
    assert not missing, f"bench result lacks {missing}"  # our bug, not the machine's
    result["plots"] = write_plots(result, out_dir, stem)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    write_json(result, json_path)
    md_path.write_text(markdown(result))
    result["files"] = [str(json_path), str(md_path), *(str(out_dir / name) for name in result["plots"]),
                       *([str(flame)] if flame is not None else [])]
    if not result["correctness.ok"]:
        problems = "; ".join(c["problem"] for c in checks if not c["ok"])
        raise BenchFailure(f"correctness under load failed: {problems} (results written to {json_path})")
    return result


def keep_logs(tmp: Path, dest: Path) -> Path:
    """Copy the processes' stdout/stderr files out of the temp dir before it goes."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in (*tmp.glob("*.out"), *tmp.glob("*.err")):
        shutil.copy2(path, dest / path.name)
    return dest


def write_plots(result: dict[str, Any], out_dir: Path, stem: str) -> list[str]:
    """Write the PNGs into out_dir; return their file names, relative to the result JSON (no
    absolute path of this machine goes into a committed result)."""
    from benchmarks.plots import plot_latency, plot_throughput

    runs = result.get("runs", {})
    written = []
    offered = plot_rates(runs)
    tables = {name: runs[name].get("percentiles") for name in ("e2e", "e2e_half", "ceiling")
              if runs.get(name) and runs[name].get("percentiles")}
    if tables:
        written.append(plot_latency(tables, out_dir / f"{stem}-latency.png", title=f"eum bench {stem}",
                                    offered_per_s=offered, targets=latency_targets()).name)
    series = {name: runs[name].get("series") for name in ("e2e", "e2e_half")
              if runs.get(name) and runs[name].get("series")}
    if series:
        ceiling = (runs.get("ceiling") or {}).get("achieved_per_s")
        durations = {name: runs[name]["duration_s"] for name in series if runs[name].get("duration_s")}
        written.append(plot_throughput(series, out_dir / f"{stem}-throughput.png", title=f"eum bench {stem}",
                                       offered_per_s=offered, durations_s=durations,
                                       targets={"e2e": throughput_targets(ceiling)}, ceiling_per_s=ceiling).name)
    return written


def plot_rates(runs: dict[str, Any]) -> dict[str, float]:
    """Each plotted run's rate for the legend: the open-loop runs' offered rate, the ceiling's
    achieved one (closed loop: nothing is offered, it answers as fast as it can)."""
    rates = {name: runs[name].get("offered_per_s") for name in ("e2e", "e2e_half") if runs.get(name)}
    if runs.get("ceiling"):
        rates["ceiling"] = runs["ceiling"].get("achieved_per_s")
    return {name: float(rate) for name, rate in rates.items() if rate is not None}


def latency_targets() -> list[Any]:
    from benchmarks.plots import TargetLine

    value, op = TARGETS["e2e_half.latency_ms.p99"]
    return [TargetLine(value, f"target: e2e_half p99 {SIGN[op]} {_fmt(value)} ms")]


def throughput_targets(ceiling_per_s: float | None) -> list[Any]:
    """The e2e run's targets as rates: approved/s, and the ratio to the ceiling times the ceiling."""
    from benchmarks.plots import TargetLine

    value, op = TARGETS["e2e.approved_per_s"]
    lines = [TargetLine(value, f"target: approved/s {SIGN[op]} {_fmt(value)}")]
    if ceiling_per_s:
        ratio, op = TARGETS["ratio.e2e_to_ceiling"]
        lines.append(TargetLine(ratio * ceiling_per_s, f"target: approved/s {SIGN[op]} {ratio:g} × ceiling "
                                                       f"= {ratio * ceiling_per_s:,.0f}"))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter runs, 100,000 cards for scale (< 3 min)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--instances", type=int, default=1,
                    help="with --store postgresql: N > 1 repeats the PostgreSQL runs with N switch instances")
    args = ap.parse_args(argv)
    try:
        result = run_bench(args.quick, args.out_dir, store=args.store, instances=args.instances)
    except BenchFailure as exc:
        print(f"eum bench: FAILED: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in result.items() if "." in k and not isinstance(v, (dict, list))}, indent=2))
    print("written: " + ", ".join(result["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
