"""The pages a group commit writes, by the table or index they belong to.

    python benchmarks/wal_pages.py [--base REV ...] [--messages 4000] [--de7-step-us 0] [--out-dir DIR]

Each page a transaction changes is written whole (4 KiB) to the WAL, and again to the ledger
file at the next checkpoint, however few of its bytes changed: the writer's system time and
much of SQLite's own work go by pages, not rows. This counts them. core_bench.py's in-process
plain path (its SETUP: a copy of the seeded ledger, the logs, the core on a fixed clock, every
terminal signed on), with the group commit's connection set to checkpoint never
(`PRAGMA wal_autocheckpoint=0`, so every frame of the pass stays in the WAL); a warm-up pass,
then `--messages` purchases, after which the WAL's frames from the pass's start are read
(a 24-byte header each: the page number, and for a commit's last frame the database's size)
and each page is named by SQLite's `dbstat` table (the b-tree it belongs to, as of the end of
the pass). The figures: frames a commit, by b-tree, and WAL bytes a purchase. With --base,
each REV is checked out into a temporary git worktree and seeds its own ledger, with its
own schema; the runs are deterministic in what they write but for the grouping (how many
purchases a commit carries), which the result states.

The fixed clock gives every purchase the same DE7, so the messages' key (DE7 first) sorts
them by terminal alone: the most scattered case for a key of that table. With the real
clock, a second's messages share a DE7 and scatter the same way within that second:
--de7-step-us 300 advances each request's DE7 by 300 µs (≈ 3,300 a DE7 second), which
2026-11-30's twenty-second session found gives the messages' key index 10.8 pages a commit,
not the fixed DE7's 26.8 (docs/performance.md, "The messages' keys folded (not kept)").
Writes <out-dir>/<date>-<host>-wal-pages.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.core_bench import DE7_STEP_HELP, DRIVE, RUN_UVLOOP, SETUP  # noqa: E402

WAL_HEADER = 32
FRAME_HEADER = 24

# Runs inside the tree being measured (PYTHONPATH = that tree): core_bench.py's set-up, a warm
# pass, then the counted pass; copies of the WAL (with the offset the pass started at) and the
# ledger are left in the work dir the caller names.
MEASURE = r"""
import asyncio, json, os, shutil, sys, tempfile
from pathlib import Path
counted, concurrency, template, keep = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
from switch.clock import FixedClock
from switch.ops.runtime import open_core
from switch.authorize.server import Processor
from switch.wire.codec import encode_fields, load_dialect
from switch.wire.framing import Frame
from switch.ledger.audit import verify
from terminal_sim.terminal import Terminal
from datetime import datetime
import switch.ledger.writer as ledger_writer
_connect_writer = ledger_writer.connect_writer
def connect_writer(path):  # every frame stays in the WAL: no checkpoint resets it under the count
    conn = _connect_writer(path)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    return conn
ledger_writer.connect_writer = connect_writer

async def main():
""" + SETUP + DRIVE + r"""        await drive(frames(counted, 0))
        batch = frames(counted, 0)
        wal = work / "var" / "ledger.sqlite3-wal"
        writer = core.engine.writer
        start, groups, units = wal.stat().st_size, writer.batches, writer.units
        answers = await drive(batch)
        groups, units = writer.batches - groups, writer.units - units
        shutil.copy(wal, keep / "ledger.sqlite3-wal")
        shutil.copy(work / "var" / "ledger.sqlite3", keep / "ledger.sqlite3")
    logs.flush()
    from switch.wire.codec import decode_fields
    codes = sorted({decode_fields(a[2:], dialect)["39"] for a in answers})
    ok = verify(work / "var" / "ledger.sqlite3").ok
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"codes": codes, "verified": ok, "start": start, "groups": groups, "units": units}))

""" + RUN_UVLOOP


def wal_frames(wal: bytes, start: int) -> tuple[int, list[tuple[int, bool]]]:
    """(page size, [(page number, ends a commit)]) of the WAL's frames from byte `start` (a
    frame boundary), as long as they carry the header's salt (a frame with another is left
    over from before the WAL last restarted)."""
    _magic, _version, page_size, _ckpt, salt1, salt2 = struct.unpack(">6I", wal[:24])
    frames = []
    at = max(start, WAL_HEADER)
    if (at - WAL_HEADER) % (FRAME_HEADER + page_size):
        raise ValueError(f"offset {start} is not a frame boundary of a WAL of {page_size}-byte pages")
    while at + FRAME_HEADER + page_size <= len(wal):
        page, db_size, s1, s2 = struct.unpack(">4I", wal[at:at + 16])
        if (s1, s2) != (salt1, salt2):
            break
        frames.append((page, db_size != 0))
        at += FRAME_HEADER + page_size
    return page_size, frames


def page_owners(db: Path, wal: Path) -> dict[int, str]:
    """Page number → the table or index it belongs to, read through the WAL (dbstat)."""
    with tempfile.TemporaryDirectory(prefix="eum-wal-") as tmp:
        shutil.copy(db, Path(tmp) / "l.sqlite3")
        shutil.copy(wal, Path(tmp) / "l.sqlite3-wal")
        conn = sqlite3.connect(Path(tmp) / "l.sqlite3")
        try:
            return {page: name for name, page in conn.execute("SELECT name, pageno FROM dbstat")}
        finally:
            conn.close()


def run_tree(tree: Path, template: Path, messages: int, concurrency: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="eum-wal-keep-") as keep:
        done = subprocess.run([sys.executable, "-c", MEASURE, str(messages), str(concurrency), str(template), keep],
                              env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, cwd=template,
                              timeout=900)
        if done.returncode != 0:
            raise SystemExit(f"wal_pages: the run in {tree} failed:\n{done.stderr[-2000:]}")
        run = json.loads(done.stdout.strip().splitlines()[-1])
        if run["codes"] != ["00"] or not run["verified"]:
            raise SystemExit(f"wal_pages: the run in {tree} was not all approved and verified: {run}")
        wal = Path(keep) / "ledger.sqlite3-wal"
        page_size, frames = wal_frames(wal.read_bytes(), run["start"])
        owners = page_owners(Path(keep) / "ledger.sqlite3", wal)
    commits = sum(1 for _, last in frames if last)
    by_tree = Counter(owners.get(page, "(freed)") for page, _ in frames)
    return {"page_size": page_size, "frames": len(frames), "commits": commits, "groups": run["groups"],
            "units": run["units"], "purchases_per_commit": round(run["units"] / max(1, commits), 1),
            "frames_per_commit": round(len(frames) / max(1, commits), 2),
            "wal_bytes_per_purchase": round(len(frames) * (FRAME_HEADER + page_size) / max(1, run["units"])),
            "frames_per_commit_by_btree": {name: round(n / max(1, commits), 2) for name, n in by_tree.most_common()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", action="append", default=[], help="git revision to compare with (repeatable)")
    ap.add_argument("--messages", type=int, default=4000, help="purchases in the counted pass (and in the warm-up)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--de7-step-us", type=int, default=0, help=DE7_STEP_HELP)
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    os.environ["EUM_BENCH_DE7_STEP_US"] = str(args.de7_step_us)  # read by SETUP in the measured process
    if args.messages < 1 or args.messages > 20_000:
        raise SystemExit(f"--messages must be 1 to 20000 (the seeded cards), got {args.messages}")
    from benchmarks.ab import worktree
    from benchmarks.core_bench import seed_template
    results = {}
    with tempfile.TemporaryDirectory(prefix="eum-wal-pages-") as tmp:
        trees = {rev: worktree(rev, Path(tmp), rev.replace("/", "_")) for rev in args.base}
        trees["this tree"] = ROOT
        try:
            for i, (name, tree) in enumerate(trees.items()):  # each tree seeds with its own schema
                template = Path(tmp) / f"template{i}"
                template.mkdir()
                seed_template(tree, template)
                results[name] = run_tree(tree, template, args.messages, args.concurrency)
                r = results[name]
                print(f"{name}: {r['frames_per_commit']} pages a commit ({r['purchases_per_commit']} purchases), "
                      f"{r['wal_bytes_per_purchase']:,} WAL bytes a purchase; "
                      + ", ".join(f"{k} {v}" for k, v in r["frames_per_commit_by_btree"].items()), flush=True)
        finally:
            for name, tree in trees.items():
                if tree != ROOT:
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    from benchmarks.bench import describe_machine, write_result
    result = {"what": "WAL pages a group commit writes, by b-tree, in process, plain purchases "
                      "(benchmarks/wal_pages.py)",
              "machine": describe_machine(), "this_tree": head, "messages": args.messages,
              "concurrency": args.concurrency, "de7_step_us": args.de7_step_us, "runs": results}
    write_result(result, args.out_dir, "wal-pages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
