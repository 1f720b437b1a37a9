"""Before/after in one run: the closed-loop capacity of two source trees, alternated.

    python benchmarks/ab.py --base REV [--head REV] [--rounds 3] [--seconds 12] [--rate R] [--terminals N]
                            [--against switch|responder]
                            [--base-env KEY=VALUE ...] [--tag T] [--out-dir DIR]

Each revision is checked out into a temporary git worktree; for each, an `eum hsm`, a seeded
data dir (the quick bench's: DUKPT-TDES terminals, PIN cards) and, per round, `eum switch`
plus the fleet of that same tree (closed loop, 32 terminals, the standard scenario; the bench's
own E2eSuite.switch_run, so every round is also checked: verify, fleet = ledger). Rounds
alternate base, head, base, head … so both see the same machine; the result is the median of
the rounds per revision: approvals per second, latency, and CPU per approval of the switch,
the HSM and the fleet (from /proc). This is how docs/performance.md's before/after table is
measured. `--rate R`: open loop instead, Poisson arrivals at R a second over the same 32
terminals (the bench's e2e_half procedure at a rate you choose): for latency levers, p99 at a
fixed load. `--terminals N`: that many terminals instead of 32 (the bench's open-loop e2e runs
use 200, each with its own connection and timers). `--against responder`: the fleet alone,
against benchmarks/responder.py (answers at once, no MAC, no switch or HSM on the cores): the
fleet's CPU per transaction without the e2e's noise, for the fleet's own levers. A tree with
the optional compiled build (setup.py) is built in place first, as `pip install -e .` builds
it; `--base REV --head REV --base-env EUM_PURE_PYTHON=1` measures a revision's compiled modules
against its own pure Python. Writes <out-dir>/<date>-<host>-ab[-T].json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# One round, run by a fresh interpreter inside the tree being measured (its own switch,
# fleet and HSM code), printing one JSON line.
ROUND = r"""
import json, sys
from pathlib import Path
from benchmarks.bench import BenchPlan, E2eSuite, Processes, fleet_api
work, seconds, seed, rate = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
terminals, against = int(sys.argv[5]), sys.argv[6]
plan = BenchPlan(mode="quick", cards=30_000)
procs = Processes(work)
suite = E2eSuite(plan, work, procs)
try:
    suite.start_hsm()
    if (work / "population.json").exists() and (work / "var").exists():
        suite.population = fleet_api().load_population(suite.population_path)
    else:
        suite.seed()
    if against == "responder":  # the fleet alone: benchmarks/responder.py answers at once
        # (not E2eSuite.ceiling_run: it is closed loop over plan.terminals only, and this code
        # runs against each tree's own bench.py, so it uses only what older trees have too)
        from benchmarks.bench import drive, free_port, process_cpu_s, ROOT
        procs.stop("hsm")
        port = free_port()
        procs.start("responder", [sys.executable, str(ROOT / "benchmarks" / "responder.py"),
                                  "--listen", f"127.0.0.1:{port}"])
        procs.wait_listening("responder", port)
        cpu0 = process_cpu_s(procs.running["responder"].pid)
        report, fleet_cpu = drive(port, plan, suite.population, None, closed_loop=rate <= 0,
                                  rate_per_s=rate if rate > 0 else 1e6, duration_s=seconds, seed=seed,
                                  terminals=terminals or plan.capacity_terminals)
        responder_cpu = process_cpu_s(procs.running["responder"].pid) - cpu0
    else:
        run = suite.switch_run("ab", closed_loop=rate <= 0, rate_per_s=rate if rate > 0 else 1e6,
                               duration_s=seconds, seed=seed, terminals=terminals or plan.capacity_terminals)
finally:
    procs.stop_all()
if against == "responder":
    n = max(1, int(report.sent))
    print(json.dumps({"sent_per_s": round(n / seconds, 1), "p50_ms": round(float(report.latency_ms["p50"]), 3),
                      "p99_ms": round(float(report.latency_ms["p99"]), 3),
                      "fleet_cpu_us_per_tx": round(fleet_cpu * 1e6 / n, 1),
                      "responder_cpu_us_per_tx": round(responder_cpu * 1e6 / n, 1)}))
    sys.exit(0)
if not run.check["ok"]:
    sys.exit(f"correctness check failed: {run.check['problem']}")
report, n = run.report, max(1, int(run.report.approved))
print(json.dumps({"approved_per_s": round(float(report.approved_per_s), 1),
                  "p50_ms": round(float(report.latency_ms["p50"]), 3),
                  "p99_ms": round(float(report.latency_ms["p99"]), 3),
                  "switch_cpu_us_per_auth": round(run.switch_cpu_s * 1e6 / n, 1),
                  "switch_system_us_per_auth": round(run.switch_system_s * 1e6 / n, 1),
                  "hsm_cpu_us_per_auth": round(run.hsm_cpu_s * 1e6 / n, 1),
                  "fleet_cpu_us_per_auth": round(run.fleet_cpu_s * 1e6 / n, 1)}))
"""

KEYS = ("approved_per_s", "p50_ms", "p99_ms", "switch_cpu_us_per_auth", "switch_system_us_per_auth",
        "hsm_cpu_us_per_auth", "fleet_cpu_us_per_auth")
RESPONDER_KEYS = ("sent_per_s", "p50_ms", "p99_ms", "fleet_cpu_us_per_tx", "responder_cpu_us_per_tx")


def round_order(names, i: int) -> list:
    """The sides of round i: in order in even rounds, reversed in odd ones (ABBA). In six
    pairs of core_split.py, the pieces whose code both trees share cost 2-16 % more in
    whichever tree ran second (docs/performance.md, "Which side runs first (the A/B tools
    now alternate it)"), so a fixed order biases every ratio by about that much."""
    names = list(names)
    return names if i % 2 == 0 else names[::-1]


def worktree(rev: str, parent: Path, name: str = "") -> Path:
    """REV checked out under `parent`, with its compiled modules built in place where the tree
    has the optional build (setup.py), as `pip install -e .` would build them: a revision is
    measured as it is installed. Prints which build the tree runs."""
    path = parent / (name or f"tree-{rev.replace('/', '_')}")
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(path), rev], cwd=ROOT, check=True)
    if (path / "setup.py").exists():
        subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=path, check=True,
                       capture_output=True)
        print(f"tree {rev}: {built_summary(path)}", flush=True)
    return path


def built_summary(tree: Path) -> str:
    """Which build `tree` runs: its compiled modules (N/M), the HSM's and the terminals' groups
    (trees before hsm_mock/compiled.py or terminal_sim/compiled.py have none) and its DES
    (hsm_mock/_des.c or `cryptography`; trees older than the C DES have only the latter)."""
    groups = "".join(f", {label} {{c.summary(__import__('{package}.compiled').compiled.MODULES)}}"
                     for label, package in (("HSM", "hsm_mock"), ("terminals", "terminal_sim"))
                     if (tree / package / "compiled.py").is_file())
    probe = ("import switch.compiled as c, hsm_mock.crypto as h; "
             f"print(f\"compiled modules {{c.summary()}}{groups}, DES {{'c' if getattr(h, 'DES_COMPILED', False) else 'py'}}\")")
    return subprocess.run([sys.executable, "-c", probe], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                          capture_output=True, text=True, check=True).stdout.strip()


def parse_env(pairs: list[str]) -> dict[str, str]:
    """KEY=VALUE arguments as a dict (--base-env)."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--base-env wants KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def short_revs(base: str, head: str) -> dict[str, str]:
    """{"base": …, "head": …} as short commit ids."""
    return {name: subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.strip() for name, rev in (("base", base), ("head", head))}


def one_round(tree: Path, work: Path, seconds: float, seed: int, rate: float = 0.0,
              extra_env: dict[str, str] | None = None, terminals: int = 0, against: str = "switch") -> dict:
    """terminals: 0 for the plan's capacity_terminals (32). against: "switch" (the e2e: switch,
    HSM and fleet) or "responder" (the fleet alone against benchmarks/responder.py)."""
    env = {**os.environ, "PYTHONPATH": str(tree), **(extra_env or {})}  # the tree's own packages, in every process
    done = subprocess.run([sys.executable, "-c", ROUND, str(work), str(seconds), str(seed), str(rate),
                           str(terminals), against], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"round in {tree} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="git revision before")
    ap.add_argument("--head", default="HEAD", help="git revision after (default HEAD)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--rate", type=float, default=0.0,
                    help="open loop at this many requests a second (default 0: closed loop, capacity)")
    ap.add_argument("--terminals", type=int, default=32,
                    help="terminals of the fleet, each its own connection (default 32; the bench's e2e: 200)")
    ap.add_argument("--against", choices=("switch", "responder"), default="switch",
                    help="switch: the e2e (switch, HSM, fleet); responder: the fleet alone against "
                         "benchmarks/responder.py, which answers at once (for the fleet's own levers)")
    ap.add_argument("--base-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment of the base side's processes (repeatable), e.g. EUM_PURE_PYTHON=1 to "
                         "measure a revision's compiled build against its own pure Python (--base REV --head REV)")
    ap.add_argument("--tag", default="", help="suffix of the result file's name")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench import describe_machine

    if not 1 <= args.terminals <= 200:
        raise SystemExit(f"--terminals must be 1 to 200 (the seeded merchants), got {args.terminals}")
    revs = short_revs(args.base, args.head)
    base_env = parse_env(args.base_env)
    if revs["base"] == revs["head"] and not base_env:
        raise SystemExit(f"--base and --head are the same commit ({revs['base']}): nothing to compare")
    runs: dict[str, list[dict]] = {"base": [], "head": []}
    with tempfile.TemporaryDirectory(prefix="eum-ab-") as tmp:
        trees = {name: worktree(rev, Path(tmp), f"tree-{name}") for name, rev in revs.items()}
        try:
            for i in range(args.rounds):
                for name in round_order(("base", "head"), i):
                    work = Path(tmp) / f"work-{name}"
                    work.mkdir(exist_ok=True)
                    r = one_round(trees[name], work, args.seconds, seed=100 + i, rate=args.rate,
                                  extra_env=base_env if name == "base" else None, terminals=args.terminals,
                                  against=args.against)
                    runs[name].append(r)
                    print(name, revs[name], json.dumps(r), flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    keys = RESPONDER_KEYS if args.against == "responder" else KEYS
    medians = {name: {k: round(statistics.median(r[k] for r in rs), 1) for k in keys} for name, rs in runs.items()}
    result = {"machine": describe_machine(), "revisions": revs, "base_env": base_env, "rounds": args.rounds,
              "seconds": args.seconds, "terminals": args.terminals, "against": args.against,
              "loop": f"open, {args.rate:g}/s" if args.rate > 0 else "closed",
              "median": medians, "runs": runs,
              "ratio_head_to_base": {k: round(medians["head"][k] / medians["base"][k], 3)
                                     for k in keys if medians["base"][k]}}
    tag = f"-{args.tag}" if args.tag else ""
    out = Path(args.out_dir) / f"{date.today().isoformat()}-{socket.gethostname()}-ab{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"median": medians, "ratio_head_to_base": result["ratio_head_to_base"]}, indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
