"""`eum bench`: the benchmark suite (benchmarks/bench.py) behind the main CLI.

`eum` finds it through the entry point `eum.commands` (pyproject.toml): `register` adds the
subcommand; the switch itself imports nothing from benchmarks/.

The suite lives in benchmarks/ next to this package (a source checkout, as installed with
`pip install -e .`); it is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def add_bench_parser(sub: Any, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="run the benchmark suite on this machine (fleet + switch + HSM, codec, scale)",
                       description="Runs the standard benchmark set and checks correctness under load; writes "
                                   "<out-dir>/<date>-<host>[-quick].json, .md and PNG plots. Exit 1 when a run "
                                   "cannot be measured or the ledger disagrees with the fleet.")
    p.add_argument("--quick", action="store_true", help="shorter runs and 100,000 cards for scale (< 3 minutes)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results",
                   help="where results go (default benchmarks/results)")
    p.add_argument("--store", dest="bench_store", choices=("sqlite", "postgresql"), default="sqlite",
                   help="postgresql: after the standard set, the e2e procedure again with the ledger on a private "
                        "PostgreSQL cluster (pg.* keys, compared with the SQLite run of the same bench)")
    p.add_argument("--instances", type=int, default=1, help="switch instances on the PostgreSQL ledger (default 1)")
    p.set_defaults(func=func)
    return p


def register(sub: Any) -> None:
    """`eum bench` and `eum chaos` (one entry point of `eum.commands`, pyproject.toml: a new
    subcommand joins this function rather than adding an entry point, so a checkout of an older
    revision — benchmarks/core_bench.py and ab.py run them — still loads its own `register`)."""
    add_bench_parser(sub, run_bench_cli)
    register_chaos(sub)


def run_bench_cli(args: argparse.Namespace) -> int:
    if not (ROOT / "benchmarks" / "bench.py").exists():
        print(f"eum bench: benchmarks/bench.py not found under {ROOT} (needs a source checkout)", file=sys.stderr)
        return 2
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.bench import BenchFailure, run_bench

    try:
        result = run_bench(args.quick, Path(args.out_dir), store=args.bench_store, instances=args.instances)
    except BenchFailure as exc:
        print(f"eum bench: FAILED: {exc}", file=sys.stderr)
        return 1
    flat = {k: v for k, v in result.items() if "." in k and not isinstance(v, (dict, list))}
    print(json.dumps(flat, indent=2))
    print("written: " + ", ".join(result["files"]))
    return 0


def register_chaos(sub: Any) -> None:
    """`eum chaos`: benchmarks/chaos.py (registered by `register`)."""
    p = sub.add_parser("chaos", help="the chaos campaign: kill -9, HSM faults, a full disk, mutated frames, junk "
                                     "connections, each held to the ledger",
                       description="Runs the chaos campaign (benchmarks/chaos.py) against real processes on "
                                   "127.0.0.1 and writes <out-dir>/<date>-<host>-chaos[-quick].json and .md. Exit 1 "
                                   "on any loss, double posting, unanswered request with an MTI, 00 without a "
                                   "valid MAC, failed verify, or an experiment that could not run.")
    add_chaos_arguments(p)
    p.set_defaults(func=run_chaos_cli)


CHAOS_EXPERIMENTS = ("kill", "hsm", "disk", "mutation", "junk")


def add_chaos_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `eum chaos` and of `python -m benchmarks.chaos` (nothing heavy imported here:
    every `eum` command builds this parser)."""
    p.add_argument("--quick", action="store_true", help="a smaller campaign (< 3 minutes), as the test suite runs it")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results",
                   help="where the JSON and Markdown go (default benchmarks/results)")
    p.add_argument("--only", type=lambda s: tuple(x.strip() for x in s.split(",") if x.strip()),
                   default=CHAOS_EXPERIMENTS, help=f"a comma-separated subset of {','.join(CHAOS_EXPERIMENTS)}")


def run_chaos_cli(args: argparse.Namespace) -> int:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from benchmarks.chaos import main_with

    return main_with(args)
