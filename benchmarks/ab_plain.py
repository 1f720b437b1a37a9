"""Before/after in one run for `switch_plain.cpu_us_per_msg`: `eum switch` over TCP with no HSM.

    python benchmarks/ab_plain.py --base REV [--base REV …] [--rounds 6] [--out-dir DIR]

Each REV is checked out into a temporary git worktree, with its compiled modules built in place
as `pip install -e .` builds them (benchmarks/ab.py `worktree`: before, a revision was measured
in pure Python against this tree's compiled build); every round runs, in each tree in turn
(REV…, then this tree), the quick plan's switch_plain run (benchmarks/bench.py
`run_switch_plain`: its own seeded ledger of `--security none` terminals, `eum switch` of that
tree, the fleet closed loop, verify and fleet = ledger checked). Rounds alternate the trees so
each sees the same machine; the medians per tree are the result. This VM swings by a third
between runs of the same tree, so only figures of one such run are compared
(docs/performance.md, "Targets of issue 10 after issue 11"). Writes
<out-dir>/<date>-<host>-ab-switch-plain.json.
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

# One round inside the tree being measured (its switch, fleet and bench code), one JSON line.
ROUND = r"""
import json, tempfile
from pathlib import Path
from benchmarks.bench import PLANS, Processes, run_switch_plain
work = Path(tempfile.mkdtemp(prefix="eum-ab-plain-"))
procs = Processes(work)
try:
    flat, details, check = run_switch_plain(PLANS["quick"], work, procs)
finally:
    procs.stop_all()
print(json.dumps({**flat, "check": check}))
"""


def one_round(tree: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", ROUND], cwd=tree, env=env, capture_output=True, text=True,
                          timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"ab_plain: the round in {tree} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", action="append", required=True, help="git revision to compare with (repeatable)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from benchmarks.ab import built_summary, round_order, worktree

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="eum-ab-plain-") as tmp:
        trees: dict[str, Path] = {}
        for rev in args.base:
            trees[rev] = worktree(rev, Path(tmp), rev.replace("/", "_"))
        trees[f"{head} (this tree)"] = ROOT
        print(f"tree {head} (this tree): {built_summary(ROOT)}", flush=True)
        runs: dict[str, list[float]] = {name: [] for name in trees}
        try:
            for r in range(args.rounds):
                for name in round_order(trees, r):  # ABBA: the side run second is slower
                    tree = trees[name]
                    result = one_round(tree)
                    if isinstance(result["check"], dict) and result["check"].get("ok") is False:
                        raise SystemExit(f"ab_plain: {name} failed its correctness check: {result['check']}")
                    runs[name].append(result["switch_plain.cpu_us_per_msg"])
                    print(f"round {r + 1} {name}: {result['switch_plain.cpu_us_per_msg']} us/msg", flush=True)
        finally:
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    result = {"what": "switch_plain.cpu_us_per_msg, trees alternated in one run (benchmarks/ab_plain.py)",
              "rounds": args.rounds, "loadavg_at_end": os.getloadavg(), "runs": runs,
              "median": {name: statistics.median(v) for name, v in runs.items()}}
    out = Path(args.out_dir) / f"{date.today().isoformat()}-vm-ab-switch-plain.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"median": result["median"]}, indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
