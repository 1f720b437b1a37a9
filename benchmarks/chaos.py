"""`eum chaos [--quick]`: the chaos campaign (issue 11, "The harness"), every process real and
on 127.0.0.1, every fault injected from outside, every request written down and held to the
ledger afterwards.

    eum chaos [--quick] [--out-dir benchmarks/results] [--only kill,hsm,disk,mutation,junk]
    python -m benchmarks.chaos [--quick] …

Experiments (full form; quick form in parentheses), each on its own copy of one seeded data
dir (DUKPT-TDES terminals under the test keys, PIN cards, plain terminals), with the
campaign's own recording clients (benchmarks/chaos_load.py):

  kill      `eum switch --hsm` killed with SIGKILL 20 (3) times under load and restarted each
            time on the same port; clients reconnect, sign on and repeat (0201) what went
            unanswered (docs/host-interface.md §6).
  hsm       `eum hsm` killed with SIGKILL and restarted, then stopped with SIGSTOP for 10 s
            (2 s) and continued, under load from DUKPT terminals (MACs both ways, PINs).
  disk      the data dir on a small tmpfs of its own (a private mount namespace: `unshare
            --mount`), filled to the last byte during load for 10 s (3 s), and until 20
            purchases were answered 96, then freed.
            Skipped, with the reason, where no mount namespace can be made.
  mutation  100,000 (5,000) mutated frames (benchmarks/chaos_mutate.py) from a signed-on
            terminal while two good terminals keep buying; the switch's VmRSS before/after.
  junk      2,000 idle + 200 slowloris connections (200 + 20) from other loopback addresses,
            from a process of their own, beside a fleet; a probe terminal's p99 before, and that of a terminal connecting
            after the junk arrived (the issue's target: within 2×).

Per experiment: requests, approvals received, approvals in the ledger, lost, double-posted,
unanswered, repeats stored/fresh, answers by code during the faults, recovery times, RSS
before/after, and `eum admin verify` (it includes the outbox). Written to
<out-dir>/<date>-<host>-chaos.json (quick: -chaos-quick.json) and a Markdown table beside it.

Definitions (docs/reliability.md, "Chaos campaign"):
- lost: a 00 a client received whose key (DE41, DE11, DE7) has no approved message in the
  ledger, or whose DE37 is not that message's posting's RRN.
- double-posted: a posting made during the run that no stored message refers to, or that
  two messages refer to (each request posts at most once, under its key).
- unanswered: a request with an MTI (every recording client's message; a mutated frame that
  is whole and starts with a request MTI) that got no answer, where the experiment did not
  kill the switch process its connection was to, the connection dropping after the kill
  (chaos_load.Target.excused).
- approvals without a valid MAC: a 00 to a secured terminal whose response MAC is absent or
  does not verify under the request's KSN.
- contradicted: a key that was answered, never with 00, while the ledger holds an approval
  for it; inconsistent repeats: two 00s for one key with different RRNs.
Exit 1 if any of these is not 0, if verify fails, or if an experiment could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Awaitable, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.cli import CHAOS_EXPERIMENTS, add_chaos_arguments  # noqa: E402
from benchmarks.chaos_load import (Card, Exchange, MutatorRun, RecordingTerminal, Target, now,  # noqa: E402
                                   p99_ms)
from benchmarks.scale import free_port, rss_mib  # noqa: E402
from switch.ledger.sqlite import SqliteReader  # noqa: E402
from switch.wire.codec import load_dialect  # noqa: E402
from terminal_sim.security import TerminalSecurity  # noqa: E402

EUM = [sys.executable, "-m", "switch.cli.main"]   # run with cwd=ROOT
EXPERIMENTS = CHAOS_EXPERIMENTS   # each a Campaign method, run in this order
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 300.0
DISK_FULL_96_MIN = 20           # the disk stays full until this many purchases were answered 96
RECOVERY_TIMEOUT_S = 30.0       # a fault cleared must give an approval within this, else it is a problem
RESPONSE_TIMEOUT_S = 5.0        # a client waits this long for an answer (the switch's HSM calls time out at 0.3 s)
PIN = "1234"
RSS_TARGET_FRAMES, RSS_GROWTH_MIB_MAX = 100_000, 32.0   # issue 11, defect 4: 10^5 hostile frames, ≤ 32 MiB
MUTATOR_TID, PLAIN_TIDS, PROBE_TIDS = "TMUT0001", ("TPLN0001", "TPLN0002", "TPLN0003", "TPLN0004"), \
    ("TPRB0001", "TPRB0002")
FAILURE_KEYS = ("lost", "double_posted", "unanswered", "approvals_without_mac", "contradicted",
                "inconsistent_repeats")


class ChaosFailure(Exception):
    """An experiment could not run (a process would not start, a deadline passed)."""


@dataclass(frozen=True)
class ChaosPlan:
    """Every size and duration of one campaign."""

    mode: str
    cards: int = 3_000
    pin_cards: int = 300
    dukpt_terminals: int = 8        # recording terminals with DUKPT-TDES (kill, hsm)
    kills: int = 20
    load_between_kills_s: tuple[float, float] = (1.5, 3.0)   # drawn per kill (seeded)
    hsm_down_s: float = 3.0         # the HSM stays dead this long before it is restarted
    hsm_stop_s: float = 10.0        # SIGSTOP … SIGCONT
    steady_s: float = 3.0           # load before a fault and after its recovery
    disk_full_s: float = 10.0
    disk_headroom_mib: int = 24     # tmpfs size = the seeded data dir + this
    mutated_frames: int = 100_000
    mutator_connections: int = 4
    idle_junk: int = 2_000
    slow_junk: int = 200
    junk_sources: int = 10          # loopback addresses the junk comes from (127.0.1.1 …)
    junk_fleet: int = 4             # plain terminals transacting beside the junk
    probe_s: float = 20.0           # each probe's run (without junk, then with)
    probe_pause_s: float = 0.02
    drain_s: float = 60.0           # after the load stops, pending transactions get this long
    experiment_s_max: float = 1_800.0
    seed: int = 1


PLANS = {
    "full": ChaosPlan(mode="full"),
    "quick": ChaosPlan(mode="quick", cards=1_000, pin_cards=100, dukpt_terminals=6, kills=3,
                       load_between_kills_s=(1.0, 2.0), hsm_down_s=1.0, hsm_stop_s=2.0, steady_s=1.5,
                       disk_full_s=3.0, mutated_frames=5_000, idle_junk=200, slow_junk=20, junk_sources=2,
                       junk_fleet=2, probe_s=5.0, drain_s=20.0, experiment_s_max=120.0),
}


# ---------------------------------------------------------------------------- processes

class Processes:
    """Children by name, output to files; each stopped or killed by its PID, never by name."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        with (self.log_dir / f"{name}.out").open("ab") as out, (self.log_dir / f"{name}.err").open("ab") as err:
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        self.running[name] = proc
        return proc

    def pid(self, name: str) -> int:
        return self.running[name].pid

    def kill(self, name: str) -> None:
        """SIGKILL, as the experiment's fault; reaped at once."""
        proc = self.running.pop(name)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_S)

    def signal(self, name: str, signum: int) -> None:
        os.kill(self.running[name].pid, signum)

    def stop(self, name: str) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; the exit status (None: it had to be killed)."""
        proc = self.running.pop(name, None)
        if proc is None:
            return 0
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
                os.kill(proc.pid, signal.SIGTERM)
            try:
                return proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT_S)
                return None
        return proc.returncode

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)

    def stderr_tail(self, name: str, lines: int = 8) -> str:
        path = self.log_dir / f"{name}.err"
        text = path.read_text(errors="replace") if path.exists() else ""
        return " / ".join(text.strip().splitlines()[-lines:])

    async def listening(self, name: str, port: int) -> float:
        """Wait until the process accepts TCP on 127.0.0.1:port; the seconds it took."""
        proc, t0 = self.running[name], now()
        while now() - t0 < START_TIMEOUT_S:
            if proc.poll() is not None:
                raise ChaosFailure(f"{name} exited with {proc.returncode} while starting: {self.stderr_tail(name)}")
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.02)
                continue
            writer.close()
            return now() - t0
        raise ChaosFailure(f"{name} did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S:g} s")


def eum(*args: str, timeout_s: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([*EUM, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)


def switch_argv(data_dir: Path, port: int, *, hsm_port: int | None = None) -> list[str]:
    """`eum switch` on its documented defaults (connection limits included), real clock."""
    return [*EUM, "switch", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}",
            *(["--hsm", f"127.0.0.1:{hsm_port}"] if hsm_port else [])]


def hsm_argv(port: int) -> list[str]:
    return [*EUM, "hsm", "--listen", f"127.0.0.1:{port}"]


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), /proc/PID/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        return float(Path("/proc/loadavg").read_text().split()[0])
    return None


def rss(pid: int) -> float | None:
    with contextlib.suppress(OSError, ValueError):
        return round(rss_mib(pid), 1)
    return None


# ---------------------------------------------------------------------------- the seeded data dir

@dataclass
class Population:
    """What the template data dir holds, as the clients need it."""

    dukpt: list[tuple[str, str, str]]      # (tid, mid, initial KSN)
    plain: list[tuple[str, str]]           # (tid, mid), security none
    cards: list[Card]
    template: Path
    baseline_posting_id: int
    size_bytes: int


def seed_template(plan: ChaosPlan, tmp: Path, procs: Processes) -> Population:
    """`eum admin seed` with DUKPT-TDES terminals and PIN cards (the HSM makes the PVVs), then
    plain terminals for the mutator, the probes and the plain load."""
    template, pop_file = tmp / "template", tmp / "population.json"
    hsm_port = free_port()
    procs.start("hsm-seed", hsm_argv(hsm_port))
    try:
        asyncio.run(procs.listening("hsm-seed", hsm_port))
        merchants = plan.dukpt_terminals + 2
        done = eum("admin", "--data-dir", str(template), "--hsm", f"127.0.0.1:{hsm_port}", "--json", "seed",
                   "--cards", str(plan.cards), "--merchants", str(merchants), "--seed", str(plan.seed),
                   "--security", "dukpt-tdes", "--pin-cards", str(plan.pin_cards), "--pin", PIN,
                   "--export", str(pop_file), "--export-cards", str(plan.cards))
        if done.returncode != 0:
            raise ChaosFailure(f"eum admin seed failed: {done.stderr.strip()[-500:]}")
    finally:
        procs.stop("hsm-seed")
    data = json.loads(pop_file.read_text())
    pop_file.unlink()  # it holds PANs and PINs: not left behind
    terminals = data["terminals"]
    plain = [(tid, terminals[i % len(terminals)]["mid"]) for i, tid in enumerate((MUTATOR_TID, *PLAIN_TIDS,
                                                                                   *PROBE_TIDS))]
    for tid, t_mid in plain:
        added = eum("admin", "--data-dir", str(template), "terminal", "add", "--tid", tid, "--mid", t_mid)
        if added.returncode != 0:
            raise ChaosFailure(f"eum admin terminal add {tid} failed: {added.stderr.strip()[-300:]}")
    reader = SqliteReader(template / "ledger.sqlite3")
    try:
        baseline = reader.max_posting_id()
    finally:
        reader.close()
    size = sum(p.stat().st_size for p in template.rglob("*") if p.is_file())
    return Population(dukpt=[(t["tid"], t["mid"], t["ksn"]) for t in terminals], plain=plain,
                      cards=[Card(c["pan"], c.get("expiry"), c.get("pin")) for c in data["cards"]],
                      template=template, baseline_posting_id=baseline, size_bytes=size)


# ---------------------------------------------------------------------------- one experiment's record

@dataclass
class Fault:
    what: str
    started: float
    cleared: float | None = None
    recovered: float | None = None     # the first approval of a request sent after `cleared`

    def to_json(self, t0: float) -> dict[str, Any]:
        rel = (lambda t: None if t is None else round(t - t0, 3))
        return {"what": self.what, "at_s": rel(self.started), "cleared_s": rel(self.cleared),
                "recovery_s": None if self.recovered is None or self.cleared is None
                else round(self.recovered - self.cleared, 3)}


@dataclass
class Run:
    """What one experiment did and saw, before the ledger is read."""

    name: str
    target: Target
    log: list[Exchange] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    t0: float = field(default_factory=now)
    rss_before: float | None = None
    rss_after: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    hostile_approvals: list[tuple[tuple[str, str, str], str]] = field(default_factory=list)
    hostile_unanswered: int = 0

    async def answered_with(self, rc: str, count: int, *, since: float, timeout_s: float) -> None:
        """Wait until `count` purchases sent after `since` were answered `rc` (bounded; a note if not)."""
        t0 = now()
        while now() - t0 < timeout_s:
            if sum(1 for x in self.log if x.kind == "purchase" and x.sent_at >= since and x.rc == rc) >= count:
                return
            await asyncio.sleep(0.05)
        self.notes.append(f"fewer than {count} purchases answered {rc} within {timeout_s:g} s")

    async def recovered(self, fault: Fault) -> None:
        """Wait for the first 00 to a purchase sent after the fault was cleared."""
        assert fault.cleared is not None
        # exchanges are appended as they are sent, so sent_at never decreases along the log
        start = bisect.bisect_left(self.log, fault.cleared, key=lambda x: x.sent_at)
        while now() - fault.cleared < RECOVERY_TIMEOUT_S:
            for x in self.log[start:]:
                if x.kind == "purchase" and x.sent_at >= fault.cleared and x.answered and x.rc == "00":
                    fault.recovered = x.ended_at
                    return
            await asyncio.sleep(0.01)
        self.notes.append(f"no approval within {RECOVERY_TIMEOUT_S:g} s after {fault.what} was cleared")


class Load:
    """Recording terminals running until stopped, then draining what is pending."""

    def __init__(self, run: Run, plan: ChaosPlan, terminals: list[RecordingTerminal]) -> None:
        self.run, self.plan, self.terminals = run, plan, terminals
        self.stop_event = asyncio.Event()
        self.tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self.tasks = [asyncio.ensure_future(t.run(self.stop_event)) for t in self.terminals]

    async def stop(self) -> None:
        """Stop sending new transactions; repeat pending ones for at most drain_s."""
        for t in self.terminals:
            t.deadline = now() + self.plan.drain_s
        self.stop_event.set()
        done, pending = await asyncio.wait(self.tasks, timeout=self.plan.drain_s + RESPONSE_TIMEOUT_S + 5)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                raise ChaosFailure(f"a recording terminal failed: {task.exception()!r}")
        if pending:
            self.run.notes.append(f"{len(pending)} terminals still had a transaction pending after "
                                  f"{self.plan.drain_s:g} s of draining")

    async def approvals(self, count: int, *, timeout_s: float) -> None:
        """Wait until `count` more purchases are approved (bounded)."""
        def approved() -> int:
            return sum(1 for x in self.run.log if x.kind == "purchase" and x.rc == "00")
        target, t0 = approved() + count, now()
        while approved() < target and now() - t0 < timeout_s:
            await asyncio.sleep(0.02)


def dukpt_terminals(pop: Population, run: Run, plan: ChaosPlan, dialect: Any, *, count: int,
                    pin_share: float = 0.3) -> list[RecordingTerminal]:
    out = []
    for i, (tid, mid, ksn) in enumerate(pop.dukpt[:count]):
        out.append(RecordingTerminal(run.target, dialect, tid=tid, mid=mid, cards=pop.cards, log=run.log,
                                     rng=random.Random(f"{plan.seed}:{run.name}:{tid}"),
                                     security=TerminalSecurity.for_test_keys("dukpt-tdes", ksn),
                                     response_timeout_s=RESPONSE_TIMEOUT_S, pin_share=pin_share))
    return out


def plain_terminal(pop: Population, run: Run, plan: ChaosPlan, dialect: Any, tid: str, *,
                   source: str = "127.0.0.1", pause_s: float = 0.0) -> RecordingTerminal:
    mid = dict(pop.plain)[tid]
    return RecordingTerminal(run.target, dialect, tid=tid, mid=mid, cards=pop.cards, log=run.log,
                             rng=random.Random(f"{plan.seed}:{run.name}:{tid}"), source=source,
                             response_timeout_s=RESPONSE_TIMEOUT_S, pause_s=pause_s)


# ---------------------------------------------------------------------------- experiments

class Campaign:
    def __init__(self, plan: ChaosPlan, tmp: Path, procs: Processes, pop: Population) -> None:
        self.plan, self.tmp, self.procs, self.pop = plan, tmp, procs, pop
        self.dialect = load_dialect("default")
        self.rng = random.Random(plan.seed)

    def data_dir(self, name: str) -> Path:
        d = self.tmp / f"var-{name}"
        shutil.copytree(self.pop.template, d)
        return d

    async def start_switch(self, data_dir: Path, port: int, *, hsm_port: int | None = None) -> float:
        self.procs.start("switch", switch_argv(data_dir, port, hsm_port=hsm_port))
        return await self.procs.listening("switch", port)

    async def start_hsm(self, port: int) -> None:
        self.procs.start("hsm", hsm_argv(port))
        await self.procs.listening("hsm", port)

    def stop_switch(self, run: Run) -> None:
        rc = self.procs.stop("switch")
        if rc != 0:
            run.notes.append(f"eum switch exited {rc} on SIGTERM: {self.procs.stderr_tail('switch')}")

    # -- kill -9 of the switch under load

    async def kill(self) -> tuple[Run, Path]:
        plan, procs = self.plan, self.procs
        data, hsm_port, port = self.data_dir("kill"), free_port(), free_port()
        run = Run("kill", Target(port))
        await self.start_hsm(hsm_port)
        await self.start_switch(data, port, hsm_port=hsm_port)
        terms = dukpt_terminals(self.pop, run, plan, self.dialect, count=plan.dukpt_terminals)
        terms += [plain_terminal(self.pop, run, plan, self.dialect, tid) for tid in PLAIN_TIDS[:2]]
        load = Load(run, plan, terms)
        load.start()
        await load.approvals(20, timeout_s=RECOVERY_TIMEOUT_S)
        run.rss_before = rss(procs.pid("switch"))
        starts = []
        for _ in range(plan.kills):
            await asyncio.sleep(self.rng.uniform(*plan.load_between_kills_s))
            fault = Fault("switch SIGKILL", now())
            run.target.kill(lambda: procs.kill("switch"))
            run.faults.append(fault)
            fault.cleared = now()
            starts.append(await self.start_switch(data, port, hsm_port=hsm_port))
            await run.recovered(fault)
        await asyncio.sleep(plan.steady_s)
        run.rss_after = rss(procs.pid("switch"))
        await load.stop()
        self.stop_switch(run)
        procs.stop("hsm")
        run.extra["kills"] = plan.kills
        run.extra["switch_start_s"] = {"median": round(statistics.median(starts), 3), "max": round(max(starts), 3)}
        return run, data

    # -- the HSM killed, then stopped

    async def hsm(self) -> tuple[Run, Path]:
        plan, procs = self.plan, self.procs
        data, hsm_port, port = self.data_dir("hsm"), free_port(), free_port()
        run = Run("hsm", Target(port))
        await self.start_hsm(hsm_port)
        await self.start_switch(data, port, hsm_port=hsm_port)
        load = Load(run, plan, dukpt_terminals(self.pop, run, plan, self.dialect, count=plan.dukpt_terminals))
        load.start()
        await load.approvals(20, timeout_s=RECOVERY_TIMEOUT_S)
        run.rss_before = rss(procs.pid("switch"))
        await asyncio.sleep(plan.steady_s)

        fault = Fault("HSM SIGKILL", now())
        run.faults.append(fault)
        run.target.phase = "hsm killed"
        procs.kill("hsm")
        await asyncio.sleep(plan.hsm_down_s)
        await self.start_hsm(hsm_port)
        fault.cleared, run.target.phase = now(), "load"
        await run.recovered(fault)
        await asyncio.sleep(plan.steady_s)

        fault = Fault(f"HSM SIGSTOP {plan.hsm_stop_s:g} s", now())
        run.faults.append(fault)
        run.target.phase = "hsm stopped"
        procs.signal("hsm", signal.SIGSTOP)
        try:
            await asyncio.sleep(plan.hsm_stop_s)
        finally:
            procs.signal("hsm", signal.SIGCONT)
        fault.cleared, run.target.phase = now(), "load"
        await run.recovered(fault)
        await asyncio.sleep(plan.steady_s)
        run.rss_after = rss(procs.pid("switch"))
        await load.stop()
        self.stop_switch(run)
        procs.stop("hsm")
        return run, data

    # -- the disk full

    async def disk(self) -> tuple[Run, Path] | str:
        """A string: the reason the experiment was skipped."""
        plan, procs = self.plan, self.procs
        prefix, why = mount_namespace()
        if prefix is None:
            return why
        mnt = self.tmp / "disk-mnt"
        mnt.mkdir()
        size_kib = self.pop.size_bytes // 1024 + plan.disk_headroom_mib * 1024
        port = free_port()
        run = Run("disk", Target(port))
        script = (f'mount -t tmpfs -o size={size_kib}k,mode=0755 tmpfs "$0" && cp -a "$1"/. "$0"/ '
                  f'&& shift && exec "$@"')
        procs.start("switch", [*prefix, "sh", "-c", script, str(mnt), str(self.pop.template),
                               *switch_argv(mnt, port)])
        await procs.listening("switch", port)
        pid = procs.pid("switch")
        inside = Path(f"/proc/{pid}/root") / str(mnt).lstrip("/")  # the tmpfs, as seen from outside its namespace
        if not (inside / "ledger.sqlite3").exists():
            procs.stop("switch")
            return f"the switch's mount namespace is not reachable through /proc/{pid}/root"
        terms = [plain_terminal(self.pop, run, plan, self.dialect, tid) for tid in PLAIN_TIDS]
        load = Load(run, plan, terms)
        load.start()
        await load.approvals(20, timeout_s=RECOVERY_TIMEOUT_S)
        run.rss_before = rss(pid)
        await asyncio.sleep(plan.steady_s)
        fault = Fault(f"data dir full {plan.disk_full_s:g} s", now())
        run.faults.append(fault)
        run.target.phase = "disk full"
        filler = inside / "filler"
        run.extra["filled_bytes"] = fill(filler)
        await asyncio.sleep(plan.disk_full_s)
        # A full disk may take a moment to bite (the WAL's next frames can fit in space its file
        # already has): keep it full until it has failed some purchases (bounded).
        await run.answered_with("96", DISK_FULL_96_MIN, since=fault.started, timeout_s=RECOVERY_TIMEOUT_S)
        filler.unlink()
        fault.cleared, run.target.phase = now(), "load"
        await run.recovered(fault)
        await asyncio.sleep(plan.steady_s)
        run.rss_after = rss(pid)
        await load.stop()
        # The tmpfs lives as long as the switch: copy it out before stopping, check the copy.
        copy = self.tmp / "var-disk"
        copy_frozen(pid, inside, copy)
        run.extra["tmpfs_kib"] = size_kib
        run.extra["switch_log"] = log_events(copy)
        self.stop_switch(run)
        return run, copy

    # -- mutated frames

    async def mutation(self) -> tuple[Run, Path]:
        plan, procs = self.plan, self.procs
        data, port = self.data_dir("mutation"), free_port()
        run = Run("mutation", Target(port))
        await self.start_switch(data, port)
        load = Load(run, plan, [plain_terminal(self.pop, run, plan, self.dialect, tid, pause_s=0.005)
                                for tid in PLAIN_TIDS[:2]])
        load.start()
        await load.approvals(20, timeout_s=RECOVERY_TIMEOUT_S)
        mutator = MutatorRun(run.target, self.dialect, tid=MUTATOR_TID, mid=dict(self.pop.plain)[MUTATOR_TID],
                             cards=self.pop.cards, frames=plan.mutated_frames, seed=plan.seed,
                             connections=plan.mutator_connections, response_timeout_s=RESPONSE_TIMEOUT_S)
        run.rss_before = rss(procs.pid("switch"))
        fault = Fault(f"{plan.mutated_frames:,} mutated frames", now())
        run.faults.append(fault)
        run.target.phase = "mutation"
        stats = await mutator.run()
        fault.cleared, run.target.phase = now(), "load"
        run.rss_after = rss(procs.pid("switch"))
        await run.recovered(fault)
        await load.stop()
        run.extra["switch_log"] = log_events(data)
        self.stop_switch(run)
        run.extra["mutation"] = {**stats.to_json(), "seconds": round(fault.cleared - fault.started, 2),
                                 "unanswered_samples": mutator.unanswered_samples}
        if run.rss_before is not None and run.rss_after is not None:
            grown = run.rss_after - run.rss_before
            run.extra["rss_growth_mib"] = round(grown, 1)
            # the target: 10^5 hostile frames grow RSS by at most 32 MiB (judged on the full form only:
            # a few thousand frames grow RSS by less than its noise)
            if plan.mutated_frames >= RSS_TARGET_FRAMES:
                run.extra["rss_growth_target_mib"] = RSS_GROWTH_MIB_MAX
                run.extra["rss_growth_target_met"] = grown <= RSS_GROWTH_MIB_MAX
        run.hostile_approvals = stats.approvals
        run.hostile_unanswered = stats.unanswered_owed
        return run, data

    # -- junk connections beside a fleet

    async def junk(self) -> tuple[Run, Path]:
        plan, procs = self.plan, self.procs
        data, port = self.data_dir("junk"), free_port()
        run = Run("junk", Target(port))
        await self.start_switch(data, port)
        fleet = Load(run, plan, [plain_terminal(self.pop, run, plan, self.dialect, tid, pause_s=0.005)
                                 for tid in PLAIN_TIDS[: plan.junk_fleet]])
        fleet.start()
        await fleet.approvals(20, timeout_s=RECOVERY_TIMEOUT_S)
        run.rss_before = rss(procs.pid("switch"))
        quiet = await self._probe(run, PROBE_TIDS[0], "127.0.0.3")
        sources = [f"127.0.1.{i + 1}" for i in range(plan.junk_sources)]
        fault = Fault(f"{plan.idle_junk:,} idle + {plan.slow_junk:,} slowloris connections", now())
        run.faults.append(fault)
        run.target.phase = "junk"
        crowd = await JunkProcess.start(port, idle=plan.idle_junk, slow=plan.slow_junk, sources=sources)
        try:
            wanted, t0 = int(0.9 * (plan.idle_junk + plan.slow_junk)), now()
            while crowd.stats.get("open_now", 0) < wanted and now() - t0 < RECOVERY_TIMEOUT_S:
                await asyncio.sleep(0.05)
            junk_open_at_probe = crowd.stats.get("open_now", 0)
            loud = await self._probe(run, PROBE_TIDS[1], "127.0.0.5", crowd)
        finally:
            await crowd.stop()
        fault.cleared, run.target.phase = now(), "load"
        await run.recovered(fault)
        run.rss_after = rss(procs.pid("switch"))
        await fleet.stop()
        run.extra["switch_log"] = log_events(data)
        self.stop_switch(run)
        ratio = (round(loud["p99_ms"] / quiet["p99_ms"], 2)
                 if loud["p99_ms"] is not None and quiet["p99_ms"] else None)
        run.extra["junk"] = {**crowd.stats, "sources": len(sources), "open_when_probe_connected":
                             junk_open_at_probe, "probe_without_junk": quiet, "probe_with_junk": loud,
                             "p99_ratio": ratio, "p99_ratio_target": 2.0,
                             "p99_ratio_target_met": ratio is not None and ratio <= 2.0}
        return run, data

    async def _probe(self, run: Run, tid: str, source: str, junk: "JunkProcess | None" = None) -> dict[str, Any]:
        """A terminal that connects now, signs on and buys every probe_pause_s for probe_s; the
        CPU share (cores) the switch and the junk process used meanwhile, and the load average."""
        term = plain_terminal(self.pop, run, self.plan, self.dialect, tid, source=source,
                              pause_s=self.plan.probe_pause_s)
        first = len(run.log)
        probe = Load(run, self.plan, [term])
        pids = {"switch": self.procs.pid("switch"), **({"junk": junk.proc.pid} if junk else {})}
        cpu0, t0 = {k: process_cpu_s(pid) for k, pid in pids.items()}, now()
        probe.start()
        await asyncio.sleep(self.plan.probe_s)
        cpu = {f"{k}_cpu_share": round((process_cpu_s(pid) - cpu0[k]) / (now() - t0), 2) for k, pid in pids.items()}
        await probe.stop()
        mine = [x for x in run.log[first:] if x.tid == tid and x.kind == "purchase" and x.answered]
        return {**cpu, "loadavg": loadavg(), "purchases": len(mine), "p99_ms": p99_ms([x.latency_s for x in mine]),
                "p50_ms": round(statistics.median(x.latency_s for x in mine) * 1000, 3) if mine else None,
                "signed_on_after_s": None if term.signed_on_at is None else round(term.signed_on_at - t0, 3),
                "connect_failures": term.connect_failures}


class JunkProcess:
    """benchmarks/chaos_load.py's junk crowd in a child process (its sockets and reconnects
    must not delay the probe's event loop); `stats` is its latest report. Stopped by its PID."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stats: dict[str, Any] = {}
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, port: int, *, idle: int, slow: int, sources: list[str]) -> "JunkProcess":
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.chaos_load", "junk", "--port", str(port), "--idle", str(idle),
            "--slow", str(slow), "--sources", ",".join(sources), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL)
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.stats = json.loads(line)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
        except asyncio.TimeoutError:
            os.kill(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
            raise ChaosFailure("the junk process ignored SIGTERM; killed") from None
        await asyncio.wait_for(self.reader, STOP_TIMEOUT_S)
        if not self.stats.get("final"):
            raise ChaosFailure(f"the junk process exited {self.proc.returncode} without its final report")
        self.stats.pop("final")


def mount_namespace() -> tuple[list[str] | None, str]:
    """The command prefix that runs a process in a private mount namespace where it may mount
    a tmpfs, or (None, why not). Root: `unshare --mount`; others: with --map-root-user."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None, "unshare(1) is not installed: no private mount namespace for a small filesystem"
    prefix = [unshare, "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        prefix.append("--map-root-user")
    with tempfile.TemporaryDirectory(prefix="eum-chaos-mount-") as probe:
        try:
            tried = subprocess.run([*prefix, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", probe],
                                   capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"cannot make a mount namespace: {exc}"
    if tried.returncode != 0:
        who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
        return None, f"`unshare --mount … mount -t tmpfs` failed as {who}: {tried.stderr.strip()[-200:]}"
    return prefix, ""


def fill(path: Path) -> int:
    """Write until the filesystem is full (ENOSPC); the bytes written."""
    written, chunk = 0, b"\0" * (1 << 20)
    with path.open("wb", buffering=0) as f:
        while len(chunk) >= 512:
            try:
                written += f.write(chunk)
            except OSError:
                chunk = chunk[: len(chunk) // 4]
    return written


def copy_frozen(pid: int, src: Path, dest: Path) -> None:
    """Copy a live data dir out of the switch's mount namespace: the ledger with its WAL, and
    the logs. SQLite cannot open the ledger through /proc/PID/root (it resolves that link to
    this namespace's path), so the files are copied while the switch is stopped (SIGSTOP): the
    copy is what a crash at that instant would leave, and SQLite opens it as it would after
    one (an unfinished WAL frame at the end is ignored)."""
    dest.mkdir(parents=True)
    os.kill(pid, signal.SIGSTOP)
    try:
        for name in ("ledger.sqlite3", "ledger.sqlite3-wal"):
            if (src / name).exists():
                shutil.copyfile(src / name, dest / name)
        if (src / "logs").exists():
            shutil.copytree(src / "logs", dest / "logs")
    finally:
        os.kill(pid, signal.SIGCONT)


def log_events(data_dir: Path) -> dict[str, int]:
    """Counts of the switch's log events other than the canonical `message` line, and of
    messages by DE39 (switch.jsonl; names and counts only)."""
    path = data_dir / "logs" / "switch.jsonl"
    counts: Counter = Counter()
    if not path.exists():
        return {}
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                counts["(unreadable line)"] += 1
                continue
            name = event.get("event", "?")
            if name == "message":
                continue
            reason = event.get("reason")
            counts[f"{name}:{reason}" if isinstance(reason, str) and len(reason) < 40 else name] += 1
    return dict(counts.most_common(20))


# ---------------------------------------------------------------------------- the ledger afterwards

def ledger_figures(run: Run, db: Path, baseline_posting_id: int) -> dict[str, Any]:
    """Every figure that needs the ledger, read through the store's own reader."""
    reader = SqliteReader(db)
    try:
        return _figures(run, reader, baseline_posting_id)
    finally:
        reader.close()


def _figures(run: Run, reader: SqliteReader, baseline: int) -> dict[str, Any]:
    by_key: dict[tuple[str, str, str], list[Exchange]] = {}
    for x in run.log:
        if x.kind == "purchase":
            by_key.setdefault(x.key, []).append(x)
    tids = {x.tid for x in run.log}
    stored = {key: reader.message(key) for key in by_key}

    lost, contradicted, inconsistent, posted_unseen, unresolved = 0, 0, 0, 0, 0
    repeats = Counter()
    approvals_received = 0
    for key, xs in by_key.items():
        answered = [x for x in xs if x.answered]
        approved = {x.rrn for x in answered if x.rc == "00"}
        m = stored[key]
        in_ledger = m is not None and m.rc == "00" and m.posting_id is not None
        if len(approved) > 1:
            inconsistent += 1
        if approved:
            approvals_received += 1
            posting = reader.posting(m.posting_id) if in_ledger else None
            if posting is None or posting.rrn not in approved:
                lost += 1
        elif answered and in_ledger:
            contradicted += 1       # told declined (or failed), posted all the same
        elif not answered and in_ledger:
            posted_unseen += 1
        if not answered:
            unresolved += 1
        for x in answered:
            if x.attempt > 0:
                fresh = m is None or datetime.fromisoformat(m.at) >= x.sent_wall
                repeats["fresh" if fresh else "stored"] += 1

    hostile_lost = 0
    for key, rrn in run.hostile_approvals:
        m = reader.message(key)
        posting = reader.posting(m.posting_id) if m is not None and m.posting_id is not None else None
        if m is None or m.rc != "00" or posting is None or posting.rrn != rrn:
            hostile_lost += 1

    # Every posting made during the run is the answer of exactly one stored message.
    referenced: Counter = Counter()
    approvals_in_ledger = 0
    for key in list(reader.message_keys()):
        m = reader.message(tuple(key))
        if m is None or m.posting_id is None:
            continue
        referenced[m.posting_id] += 1
        if m.key[0] in tids and m.rc == "00" and m.mti == "0200":
            approvals_in_ledger += 1
    orphans, shared = [], [pid for pid, n in referenced.items() if n > 1]
    for pid in range(baseline + 1, reader.max_posting_id() + 1):
        if referenced[pid] == 0 and reader.posting(pid) is not None:
            orphans.append(pid)

    unanswered, excused, samples = 0, 0, []
    for x in run.log:
        if x.answered:
            continue
        if run.target.excused(x):
            excused += 1
            continue
        unanswered += 1
        if len(samples) < 10:
            samples.append({"kind": x.kind, "mti": x.mti, "ending": x.ending or "cancelled", "phase": x.phase,
                            "attempt": x.attempt, "at_s": round(x.sent_at - run.t0, 3)})
    without_mac = sum(1 for x in run.log if x.secured and x.answered and x.rc == "00" and x.mac_ok is not True)
    in_faults = Counter()
    for f in run.faults:  # from the fault until the first approval after it was cleared
        end = f.recovered or f.cleared or float("inf")
        for x in run.log:
            if f.started <= x.sent_at <= end and x.kind == "purchase":
                in_faults[x.rc if x.answered else f"({x.ending or 'cancelled'})"] += 1
    return {
        "requests": len(by_key),
        "messages_sent": len(run.log),
        "approvals_received": approvals_received,
        "approvals_in_ledger": approvals_in_ledger,
        "lost": lost + hostile_lost,
        "double_posted": len(orphans) + len(shared),
        "unanswered": unanswered + run.hostile_unanswered,
        "excused_by_kill": excused,
        "unresolved": unresolved,
        "posted_unseen": posted_unseen,
        "contradicted": contradicted,
        "inconsistent_repeats": inconsistent,
        "approvals_without_mac": without_mac,
        "repeats": {"stored": repeats["stored"], "fresh": repeats["fresh"]},
        "answers_during_fault": dict(sorted(in_faults.items())),
        "hostile_approvals": len(run.hostile_approvals),
        "double_posted_ids": (orphans + shared)[:10],
        "unanswered_samples": samples,
    }


def verify(data_dir: Path) -> dict[str, Any]:
    done = eum("admin", "--data-dir", str(data_dir), "verify", "--json", timeout_s=COMMAND_TIMEOUT_S)
    try:
        out = json.loads(done.stdout)
    except ValueError:
        out = {"ok": False, "problem": (done.stdout + done.stderr).strip()[-300:]}
    out["ok"] = done.returncode == 0 and bool(out.get("ok"))
    return out


def judge(result: dict[str, Any]) -> list[str]:
    problems = [f"{k} {result[k]}" for k in FAILURE_KEYS if result.get(k)]
    if not result.get("verify", {}).get("ok"):
        problems.append(f"verify failed: {result.get('verify', {}).get('problem', '?')}")
    return problems


def write_exchanges(run: Run, path: Path) -> None:
    """Every request and answer of the run, one JSON line each (kept with the logs when the
    campaign fails)."""
    with path.open("w") as f:
        for x in run.log:
            f.write(json.dumps(x.to_json(run.t0)) + "\n")


def experiment_result(run: Run, data: Path, pop: Population, seconds: float) -> dict[str, Any]:
    write_exchanges(run, data.parent / f"exchanges-{run.name}.jsonl")
    figures = ledger_figures(run, data / "ledger.sqlite3", pop.baseline_posting_id)
    recoveries = [f.to_json(run.t0)["recovery_s"] for f in run.faults]
    measured = [r for r in recoveries if r is not None]
    result = {"name": run.name, "seconds": round(seconds, 1), **figures,
              "faults": [f.to_json(run.t0) for f in run.faults],
              "recovery_s": {"max": max(measured), "median": round(statistics.median(measured), 3)}
              if measured else None,
              "rss_mib": {"before": run.rss_before, "after": run.rss_after},
              "verify": verify(data), **run.extra, "notes": run.notes}
    result["problems"] = judge(result)
    result["ok"] = not result["problems"]
    return result


# ---------------------------------------------------------------------------- the campaign

def run_chaos(quick: bool, out_dir: Path, *, only: tuple[str, ...] = EXPERIMENTS,
              plan: ChaosPlan | None = None) -> dict[str, Any]:
    """Run the campaign, write JSON + Markdown into out_dir, return the result (its "ok" says
    whether the campaign passed)."""
    plan = plan or PLANS["quick" if quick else "full"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: dict[str, Any] = {"date": date.today().isoformat(), "mode": plan.mode, "machine": describe(),
                              "plan": asdict(plan), "experiments": {}}
    stem = f"{date.today().isoformat()}-{socket.gethostname()}-chaos" + ("-quick" if plan.mode == "quick" else "")
    raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="eum-chaos-") as tmp_name:
        tmp = Path(tmp_name)
        procs = Processes(tmp)
        try:
            pop = seed_template(plan, tmp, procs)
            campaign = Campaign(plan, tmp, procs, pop)
            for name in only:
                result["experiments"][name] = one_experiment(campaign, name)
        except ChaosFailure as exc:
            result["error"] = str(exc)
        finally:
            procs.stop_all()
            if not all(e.get("ok", True) for e in result["experiments"].values()) or "error" in result:
                keep_logs(tmp, out_dir / f"{stem}-logs")
    exps = [e for e in result["experiments"].values() if not e.get("skipped")]
    result["totals"] = {k: sum(int(e.get(k, 0)) for e in exps) for k in FAILURE_KEYS}
    result["totals"]["verify_ok"] = all(e.get("verify", {}).get("ok") for e in exps)
    result["ok"] = "error" not in result and all(e["ok"] for e in result["experiments"].values())
    result["seconds"] = round(time.perf_counter() - started, 1)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    md_path.write_text(markdown(result))
    result["files"] = [str(json_path), str(md_path)]
    return result


def one_experiment(campaign: Campaign, name: str) -> dict[str, Any]:
    plan = campaign.plan
    t0 = time.perf_counter()
    step: Callable[[], Awaitable[Any]] = getattr(campaign, name)
    try:
        outcome = asyncio.run(asyncio.wait_for(step(), plan.experiment_s_max))
    except asyncio.TimeoutError:
        outcome = f"did not finish within {plan.experiment_s_max:g} s"
        failed = True
    except ChaosFailure as exc:
        outcome, failed = str(exc), True
    except Exception as exc:  # the harness's own bug: reported, the other experiments still run
        outcome, failed = f"harness error: {exc!r}", True
    else:
        failed = False
    finally:
        campaign.procs.stop_all()
    if isinstance(outcome, str):
        if failed:
            return {"name": name, "ok": False, "error": outcome, "problems": [outcome]}
        return {"name": name, "ok": True, "skipped": outcome}
    run, data = outcome
    return experiment_result(run, data, campaign.pop, time.perf_counter() - t0)


def raise_fd_limit() -> None:
    """The junk experiment holds thousands of sockets here and in the switch (which inherits it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def keep_logs(tmp: Path, dest: Path) -> None:
    """The processes' output, for a campaign that failed."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in (*tmp.glob("*.out"), *tmp.glob("*.err"), *tmp.glob("exchanges-*.jsonl")):
        shutil.copy2(path, dest / path.name)
    for log in tmp.glob("var-*/logs/switch.jsonl"):  # PANs in it are masked (first 6, last 4)
        shutil.copy2(log, dest / f"switch-{log.parent.parent.name.removeprefix('var-')}.jsonl")


def describe() -> dict[str, Any]:
    """The machine as `eum bench` describes it (benchmarks/bench.py), and the user running it
    (a tmpfs in a private namespace needs root or a user namespace)."""
    from benchmarks.bench import describe_machine

    m = describe_machine()
    m["uid"] = os.geteuid()
    return m


# ---------------------------------------------------------------------------- Markdown

COLUMNS = (
    ("experiment", lambda e: e["name"]),
    ("requests", lambda e: e.get("requests")),
    ("approvals received", lambda e: e.get("approvals_received")),
    ("approvals in ledger", lambda e: e.get("approvals_in_ledger")),
    ("lost", lambda e: e.get("lost")),
    ("double-posted", lambda e: e.get("double_posted")),
    ("unanswered", lambda e: e.get("unanswered")),
    ("00 w/o valid MAC", lambda e: e.get("approvals_without_mac")),
    ("repeats stored/fresh", lambda e: "{stored}/{fresh}".format(**e["repeats"]) if e.get("repeats") else None),
    ("answers during fault", lambda e: ", ".join(f"{k}: {v}" for k, v in
                                                 (e.get("answers_during_fault") or {}).items())),
    ("recovery s (max)", lambda e: (e.get("recovery_s") or {}).get("max")),
    ("RSS MiB before/after", lambda e: "{before}/{after}".format(**e["rss_mib"]) if e.get("rss_mib") else None),
    ("verify", lambda e: None if "verify" not in e else ("ok" if e["verify"].get("ok") else "**FAILED**")),
)


def markdown(result: dict[str, Any]) -> str:
    m = result.get("machine", {})
    lines = [f"# eum chaos {result.get('mode', '')} — {result.get('date', '')} on {m.get('host', '?')}", "",
             f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, kernel {m.get('kernel', '?')}, "
             f"Python {m.get('python', '?')}, SQLite {m.get('sqlite', '?')}. Commit {m.get('git', '?')}. "
             f"{result.get('seconds', '?')} s.", "",
             f"Result: **{'passed' if result.get('ok') else 'FAILED'}** (exit 1 on any loss, double posting, "
             f"unanswered request with an MTI, 00 without a valid MAC, contradicted or inconsistent answer, "
             f"failed verify, or an experiment that could not run).", ""]
    if result.get("error"):
        lines += [f"Campaign error: {result['error']}", ""]
    lines += ["| " + " | ".join(c for c, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for e in result.get("experiments", {}).values():
        if e.get("skipped") or e.get("error"):
            why = e.get("skipped") or f"**error**: {e['error']}"
            lines.append(f"| {e['name']} | " + " | ".join([f"skipped: {why}" if e.get("skipped") else why]
                                                          + [""] * (len(COLUMNS) - 2)) + " |")
            continue
        lines.append("| " + " | ".join(_fmt(get(e)) for _, get in COLUMNS) + " |")
    details = []
    for e in result.get("experiments", {}).values():
        extra = []
        if e.get("faults"):
            extra.append("faults: " + "; ".join(f"{f['what']} at {f['at_s']} s, recovered in {f['recovery_s']} s"
                                                for f in e["faults"]))
        if e.get("mutation"):
            mu = e["mutation"]
            extra.append(f"mutation: {mu['frames']:,} frames in {mu['seconds']} s, {mu['owed']:,} owed an answer, "
                         f"{mu['unanswered_owed']:,} unanswered, {mu['closed_unowed']:,} without an MTI closed, "
                         f"{mu['header_lies']:,} header lies; answers {mu['by_rc']}; RSS growth "
                         f"{e.get('rss_growth_mib')} MiB" + ("" if "rss_growth_target_met" not in e else
                         f" (target ≤ {e['rss_growth_target_mib']:g} MiB: "
                         f"{'met' if e['rss_growth_target_met'] else 'NOT met'})"))
        if e.get("junk"):
            j = e["junk"]
            extra.append(f"junk: up to {j['open_max']:,} open at once ({j['open_when_probe_connected']:,} when the "
                         f"probe connected), {j['opened']:,} opened, {j['closed_by_switch']:,} closed by the switch; "
                         f"probe p99 {j['probe_without_junk']['p99_ms']} ms without, "
                         f"{j['probe_with_junk']['p99_ms']} ms with junk (ratio {j['p99_ratio']}, target ≤ 2: "
                         f"{'met' if j['p99_ratio_target_met'] else 'NOT met'}); signed on "
                         f"{j['probe_with_junk']['signed_on_after_s']} s after connecting")
        if e.get("problems"):
            extra.append("**problems**: " + "; ".join(e["problems"]))
        if e.get("notes"):
            extra.append("notes: " + "; ".join(e["notes"]))
        if extra:
            details += [f"- **{e['name']}**: " + " — ".join(extra)]
    if details:
        lines += ["", "## Details", "", *details]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# ---------------------------------------------------------------------------- entry point

def main_with(args: argparse.Namespace) -> int:
    unknown = [n for n in args.only if n not in EXPERIMENTS]
    if unknown:
        print(f"eum chaos: unknown experiment(s) {', '.join(unknown)}; known: {', '.join(EXPERIMENTS)}",
              file=sys.stderr)
        return 2
    result = run_chaos(args.quick, args.out_dir, only=args.only)
    print(json.dumps({"ok": result["ok"], "totals": result["totals"], "seconds": result["seconds"],
                      **({"error": result["error"]} if "error" in result else {})}, indent=2))
    print("written: " + ", ".join(result["files"]))
    if not result["ok"]:
        failed = {n: e.get("problems") for n, e in result["experiments"].items() if not e.get("ok")}
        print(f"eum chaos: FAILED: {json.dumps(failed) if failed else result.get('error')}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_chaos_arguments(ap)
    return main_with(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
