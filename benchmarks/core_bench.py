"""The switch's own CPU per message, in process, with no network, fleet or HSM to share the
machine with: frames go straight into the Processor and answers come straight back.

    python benchmarks/core_bench.py [--base REV ...] [--pure] [--rounds 5] [--messages 4000]
                                    [--de7-step-us 0] [--out-dir DIR]

The plain path (security `none`, no HSM): a seeded ledger (`eum admin seed`, 20,000 cards,
64 terminals), every terminal signed on, then `--messages` purchases of distinct cards and
STANs, `--concurrency` (32) in flight at a time as a closed-loop fleet would keep them, so
group commit works as under load. The figure is process CPU (user + system, the writer
thread included) per answered purchase, after a warm-up pass over the same cards (every
request's DE7 the same, or, with --de7-step-us N, advancing N µs a request as a fleet's clock
would: `DE7_STEP_HELP`); every
answer must be 00 and the ledger must verify, or the run fails. With --base, each REV is
checked out into a temporary git worktree (each tree seeds its own ledger, with its own schema) and
rounds alternate REV…, this tree; medians per
tree. This is how docs/performance.md's "Issue 10 levers" table is measured: one lever per
commit, compared in one run. A worktree with the optional compiled build (setup.py) is built in
place first (benchmarks/ab.py `worktree`); this tree runs as installed. --pure adds this tree
with EUM_PURE_PYTHON=1 as one more side: its compiled modules against its own pure Python.
Writes <out-dir>/<date>-<host>-core.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs inside the tree being measured (PYTHONPATH = that tree), printing one JSON line.
# The in-process plain path's set-up, in the body of MEASURE's `async def main():`: a copy of
# the seeded ledger, the logs as `eum switch` configures them, the core opened on a fixed clock,
# every terminal signed on. benchmarks/instructions.py runs the same set-up.
SETUP = r"""    work = Path(tempfile.mkdtemp(prefix="eum-core-"))
    shutil.copytree(template / "var", work / "var")
    population = json.loads((template / "pop.json").read_text())
    now = datetime.fromisoformat("2025-10-15T12:00:00+09:00")
    import os as _os
    from datetime import timedelta as _timedelta
    de7_step_us = int(_os.environ.get("EUM_BENCH_DE7_STEP_US", "0"))  # --de7-step-us; 0: one DE7 for all
    sent = [now]  # the DE7 of the request being built
    dialect = load_dialect("default")
    from switch.ops import logs  # as `eum switch` configures them: JSON lines, queued off the hot path
    logs.configure(data_dir=work / "var", name="switch", stream=open(work / "stdout.log", "w"), json_output=True,
                   queued=True)
    async with open_core(work / "var", clock=FixedClock(now)) as core:
        proc = Processor(core.engine, dialect)
        terminals = [Terminal(t["tid"], t["mid"], now=lambda: sent[0]) for t in population["terminals"]]
        cards = [c["pan"] for c in population["cards"]]
        for t in terminals:
            answer = await proc.process(Frame(encode_fields(t.sign_on(), dialect)), "bench")
"""

# --de7-step-us: the requests' DE7 (transmission time) advances this many microseconds a request,
# as a real fleet's does with the clock (300: ≈ 3,300 requests a DE7 second); 0 (the default, the
# figures before 2026-11-30's twenty-second session): every request has the same DE7, the most
# scattered case for a key that begins with DE7 (the messages'). SETUP reads it from
# $EUM_BENCH_DE7_STEP_US, which each script's flag sets.
DE7_STEP_HELP = ("the requests' DE7 advances this many µs a request (300: ≈ 3,300 a second, as the clock "
                 "gives a fleet); 0: one DE7 for all (default)")

# The load of the in-process runs, after SETUP: `frames(n, offset)`, n purchases of distinct
# cards over the terminals in turn, encoded before any is timed; `drive(batch)`, the batch
# through the Processor, `concurrency` in flight at a time. benchmarks/wal_pages.py uses it too.
DRIVE = r"""        built = [0]
        def frames(n, offset):
            out = []
            for i in range(n):
                sent[0] = now + _timedelta(microseconds=de7_step_us * built[0])
                built[0] += 1
                out.append(Frame(encode_fields(terminals[i % len(terminals)].purchase(cards[(offset + i) % len(cards)],
                                                                                      1_000), dialect)))
            return out
        async def drive(batch):
            sem = asyncio.Semaphore(concurrency)
            async def one(fr):
                async with sem:
                    return await proc.process(fr, "bench")
            return await asyncio.gather(*(one(fr) for fr in batch))
"""

# The end of a measured script that runs its `main()` under uvloop, as `eum switch` runs
# (benchmarks/instructions.py, benchmarks/wal_pages.py).
RUN_UVLOOP = r"""
try:
    from switch.wire.transport import run  # uvloop, as `eum switch` runs
except ImportError:
    run = asyncio.run
run(main())
"""

MEASURE = r"""
import asyncio, json, resource, shutil, subprocess, sys, tempfile
from pathlib import Path
messages, concurrency, template = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
from switch.clock import FixedClock
from switch.ops.config import SwitchConfig
from switch.ops.runtime import open_core
from switch.authorize.server import Processor
from switch.wire.codec import encode_fields, load_dialect
from switch.wire.framing import Frame
from switch.ledger.audit import verify
from terminal_sim.terminal import Terminal
from datetime import datetime

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

async def main():
""" + SETUP + DRIVE + r"""        await drive(frames(messages, 0))                      # warm: every card cached once
        batch = frames(messages, 0)
        c0 = cpu()
        answers = await drive(batch)
        used = cpu() - c0
    logs.flush()
    from switch.wire.codec import decode_fields
    codes = sorted({decode_fields(a[2:], dialect)["39"] for a in answers})  # after the binary2 length
    ok = verify(work / "var" / "ledger.sqlite3").ok
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"cpu_us_per_msg": round(used / messages * 1e6, 1), "codes": codes, "verified": ok}))

asyncio.run(main())
"""


def seed_template(tree: Path, work: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-m", "switch.cli", "admin", "--data-dir", str(work / "var"), "--json",
                           "--clock-start", "2025-10-15T12:00:00+09:00", "seed", "--cards", "20000", "--merchants",
                           "64", "--security", "none", "--export", str(work / "pop.json"), "--export-cards", "20000"],
                          env=env, capture_output=True, text=True, cwd=work)
    if done.returncode != 0 and tree != ROOT and "AttributeError" in done.stderr:
        # an older tree's CLI cannot load a subcommand this installation registers (entry
        # points are per installation): seed with this tree, whose schema such a tree shares
        # when its store.py is the same (checked)
        if (tree / "switch/ledger/store.py").read_text() != (ROOT / "switch/ledger/store.py").read_text():
            raise SystemExit(f"core_bench: {tree} cannot seed and has another schema:\n{done.stderr[-2000:]}")
        print(f"core_bench: {tree.name} seeded by this tree (same schema; its CLI lacks a registered command)")
        return seed_template(ROOT, work)
    if done.returncode != 0:
        raise SystemExit(f"core_bench: seeding with {tree} failed:\n{done.stderr[-2000:]}")


def measure(tree: Path, template: Path, messages: int, concurrency: int, extra_env: dict[str, str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), **extra_env}
    done = subprocess.run([sys.executable, "-c", MEASURE, str(messages), str(concurrency), str(template)],
                          env=env, capture_output=True, text=True, cwd=template, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"core_bench: the run in {tree} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["codes"] != ["00"] or not result["verified"]:
        raise SystemExit(f"core_bench: the run in {tree} was not all approved and verified: {result}")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", action="append", default=[], help="git revision to compare with (repeatable)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--messages", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--pure", action="store_true",
                    help="also measure this tree with EUM_PURE_PYTHON=1 (its compiled build against its pure Python)")
    ap.add_argument("--de7-step-us", type=int, default=0, help=DE7_STEP_HELP)
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    os.environ["EUM_BENCH_DE7_STEP_US"] = str(args.de7_step_us)
    sys.path.insert(0, str(ROOT))
    from benchmarks.ab import round_order, worktree
    with tempfile.TemporaryDirectory(prefix="eum-core-bench-") as tmp:
        trees = {rev: worktree(rev, Path(tmp), rev.replace("/", "_")) for rev in args.base}
        trees["this tree"] = ROOT
        envs = {name: {} for name in trees}
        if args.pure:
            trees["this tree, pure"], envs["this tree, pure"] = ROOT, {"EUM_PURE_PYTHON": "1"}
        templates = {}
        for i, (name, tree) in enumerate(trees.items()):  # each tree seeds with its own schema
            templates[name] = Path(tmp) / f"template{i}"
            templates[name].mkdir()
            seed_template(tree, templates[name])
        runs: dict[str, list[float]] = {name: [] for name in trees}
        try:
            for r in range(args.rounds):
                for name in round_order(trees, r):  # ABBA: the side run second is slower
                    tree = trees[name]
                    result = measure(tree, templates[name], args.messages, args.concurrency, envs[name])
                    runs[name].append(result["cpu_us_per_msg"])
                    print(f"round {r + 1} {name}: {result['cpu_us_per_msg']} us/msg", flush=True)
        finally:
            for name, tree in trees.items():
                if tree != ROOT and name in args.base:
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    medians = {name: statistics.median(v) for name, v in runs.items()}
    from benchmarks.bench import describe_machine
    result = {"what": "switch CPU us per plain purchase, in process (benchmarks/core_bench.py)",
              "machine": describe_machine(), "this_tree": head, "messages": args.messages, "concurrency": args.concurrency,
              "de7_step_us": args.de7_step_us, "loadavg_at_end": os.getloadavg(), "runs": runs, "median": medians}
    out = Path(args.out_dir) / f"{date.today().isoformat()}-vm-core.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"median": medians}, indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
