"""The switch's memory with every card hot: `scale.rss_mib_1m_hot`.

    python -m benchmarks.hot_memory [--cards 1000000] [--json]
    python -m benchmarks.hot_memory --hostile 100000 [--json]

Seeds a ledger of N cards (`eum admin seed --security none`), opens the switch's core in a
fresh process (the same `open_core` that `eum switch` runs, the canonical log line written
as `eum switch` writes it), signs every terminal on and sends one real purchase of 1,000 won
on every card through the Processor (frames in, answers out; no TCP, so no client shares the
process), 32 in flight. Afterwards every card is in the hot state with its day and month
counters, and the bounded caches (outcomes, postings) are full. Reports the process's
resident memory (VmRSS) before the purchases and after them; every answer must be 00 and the
ledger must verify. docs/architecture.md "Memory bounds" states the ceiling this checks
(≤ 512 MiB for 1,000,000 hot cards).

--hostile N: the same core on a ledger of 20,000 cards receives N decodable purchases of
distinct PANs that no card has (Luhn-valid, so each is declined 14 and its outcome stored),
from distinct STANs; reports the RSS growth over them (issue 11's bound: ≤ 32 MiB for 10^5).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter so the figure is the switch's own memory, nothing of the seeding.
PREAMBLE = r"""
import asyncio, gc, json, random, sqlite3, sys
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from switch.clock import FixedClock
from switch.domain import luhn_digit
from switch.ops.runtime import open_core
from switch.ops import logs
from switch.authorize.server import Processor
from switch.wire.codec import decode_fields, encode_fields, load_dialect
from switch.wire.framing import Frame
from switch.ledger.audit import verify
from terminal_sim.terminal import Terminal

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")

@asynccontextmanager
async def signed_on(data, pop_path):
    # the switch's core as `eum switch` opens it, with every terminal of the population signed on
    population = json.loads(pop_path.read_text())
    now = datetime.fromisoformat("2025-10-15T12:00:00+09:00")
    dialect = load_dialect("default")
    logs.configure(data_dir=data, name="switch", stream=open(data / "stdout.log", "w"), json_output=True, queued=True)
    async with open_core(data, clock=FixedClock(now)) as core:
        proc = Processor(core.engine, dialect)
        terminals = [Terminal(t["tid"], t["mid"], now=lambda: now) for t in population["terminals"]]
        for t in terminals:
            await proc.process(Frame(encode_fields(t.sign_on(), dialect)), "bench")
        yield core, proc, terminals, dialect
"""

# Every card used once.
MEASURE = PREAMBLE + r"""
data, pop_path = Path(sys.argv[1]), Path(sys.argv[2])

async def main():
    async with signed_on(data, pop_path) as (core, proc, terminals, dialect):
        gc.collect()
        before = rss_mib()
        cards_db = sqlite3.connect(f"file:{data / 'ledger.sqlite3'}?mode=ro", uri=True)
        sem = asyncio.Semaphore(32)
        codes = {}
        async def one(i, pan):
            async with sem:
                frame = Frame(encode_fields(terminals[i % len(terminals)].purchase(pan, 1_000), dialect))
                answer = await proc.process(frame, "bench")
            rc = decode_fields(answer[2:], dialect)["39"]
            codes[rc] = codes.get(rc, 0) + 1
        # the driver holds one chunk of PANs and tasks at a time, read from the ledger: the
        # figure is the switch's memory, not the driver's
        step, last = 5_000, 0
        while True:
            rows = cards_db.execute("SELECT id, pan FROM cards WHERE id > ? ORDER BY id LIMIT ?", (last, step)).fetchall()
            if not rows:
                break
            last = rows[-1][0]
            await asyncio.gather(*(one(i, pan) for i, (_, pan) in enumerate(rows)))
            del rows
        cards_db.close()
        gc.collect()
        after = rss_mib()
        hot = len(core.state.cards)
    logs.flush()
    print(json.dumps({"rss_mib_before": round(before, 1), "rss_mib_hot": round(after, 1), "hot_cards": hot,
                      "codes": codes, "verified": verify(data / "ledger.sqlite3").ok}))

asyncio.run(main())
"""


# Hostile purchases: PANs no program has.
HOSTILE = PREAMBLE + r"""
data, pop_path, frames = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])

async def main():
    async with signed_on(data, pop_path) as (core, proc, terminals, dialect):
        rng = random.Random(7)
        sem = asyncio.Semaphore(32)
        codes = {}
        async def one(i):
            body = "9419" + "".join(rng.choice("0123456789") for _ in range(11))  # a BIN no program has
            frame = Frame(encode_fields(terminals[i % len(terminals)].purchase(body + luhn_digit(body), 1_000), dialect))
            async with sem:
                answer = await proc.process(frame, "hostile")
            rc = decode_fields(answer[2:], dialect)["39"]
            codes[rc] = codes.get(rc, 0) + 1
        await asyncio.gather(*(one(i) for i in range(2_000)))  # warm: caches and code paths
        gc.collect()
        before = rss_mib()
        for start in range(0, frames, 5_000):
            await asyncio.gather(*(one(i) for i in range(start, min(frames, start + 5_000))))
        gc.collect()
        after = rss_mib()
        outcomes = len(core.state.messages)
    logs.flush()
    print(json.dumps({"rss_mib_before": round(before, 1), "rss_mib_after": round(after, 1),
                      "growth_mib": round(after - before, 1), "outcomes_in_memory": outcomes, "codes": codes}))

asyncio.run(main())
"""


def hostile_run(frames: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="eum-hostile-") as tmp:
        data, pop = Path(tmp) / "var", Path(tmp) / "pop.json"
        _seed(data, pop, 20_000)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-c", HOSTILE, str(data), str(pop), str(frames)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise SystemExit(f"hot_memory: the hostile run failed:\n{done.stderr[-2000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
    if set(result["codes"]) != {"14"}:
        raise SystemExit(f"hot_memory: hostile purchases not all declined 14: {result}")
    return {"frames": frames, **result}


def _seed(data: Path, pop: Path, cards: int) -> None:
    seeded = subprocess.run(
        [sys.executable, "-m", "switch.cli", "admin", "--data-dir", str(data), "--json", "--clock-start",
         "2025-10-15T12:00:00+09:00", "seed", "--cards", str(cards), "--merchants", "64", "--security", "none",
         "--export", str(pop), "--export-cards", "1"], cwd=ROOT, capture_output=True, text=True)
    if seeded.returncode != 0:
        raise SystemExit(f"hot_memory: seeding failed:\n{seeded.stderr[-2000:]}")
    exported = json.loads(pop.read_text())
    pop.write_text(json.dumps({"terminals": exported["terminals"]}))


def one_run(cards: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="eum-hot-") as tmp:
        data, pop = Path(tmp) / "var", Path(tmp) / "pop.json"
        _seed(data, pop, cards)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-c", MEASURE, str(data), str(pop)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise SystemExit(f"hot_memory: the run failed:\n{done.stderr[-2000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["codes"] != {"00": cards} or not result["verified"] or result["hot_cards"] != cards:
        raise SystemExit(f"hot_memory: not every card approved once and hot, or verify failed: {result}")
    return {"cards": cards, **result}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cards", type=int, default=1_000_000)
    ap.add_argument("--hostile", type=int, default=0, help="instead: RSS growth over N hostile purchases")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.hostile:
        result = hostile_run(args.hostile)
        print(json.dumps(result) if args.json else
              f"{args.hostile:,} hostile purchases: RSS grew {result['growth_mib']} MiB")
        return 0
    result = one_run(args.cards)
    print(json.dumps(result) if args.json else
          f"{args.cards:,} hot cards: {result['rss_mib_hot']} MiB RSS (before the purchases {result['rss_mib_before']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
