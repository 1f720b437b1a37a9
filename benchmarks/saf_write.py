"""What one change of a terminal's store-and-forward queue costs on this machine's disk.

    python benchmarks/saf_write.py [--changes 300] [--rounds 3] [--dir DIR]

Three ways of making one change durable, alternated in each round, each `--changes` times
on a queue file of one entry (a reversal with a sealed PAN, ≈ 0.6 KB a line):

- `rewrite`: the whole file replaced (temp file, fsync, rename, directory fsync): how the
  queue was kept before it became a journal (terminal_sim/saf.py `_write_durably`);
- `append+fdatasync`: one line appended and fdatasync'd (a queued message, a try);
- `append`: one line appended, not synced (an answer: terminal_sim/saf.py `SafQueue.answered`).

Prints, per way, the median over the rounds of the process CPU (user + system, this process
only: the kernel's journal threads are not in it) and of the wall time per change, and writes
nothing else. `--dir`: where the files go (default: a temporary directory under /tmp, the
disk the fleet's state directory is on in the bench).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from terminal_sim.saf import _append, _write_durably  # noqa: E402  (the two write paths measured)


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _line() -> str:
    entry = {"seq": 1, "fields": {"t": "0400", "2": "pan:v1:" + "A" * 64, "3": "000000", "4": "000000001000",
                                  "7": "0720030000", "11": "000001", "41": "T0000001", "42": "NAMDONG01      ",
                                  "53": "FFFF9876543210E00001", "90": "0200000009072002595900000000000000000000000"},
             "queued_at": 1750000000.0, "tries": 1, "last_try_at": 1750000000.0, "next_try_at": 1750000005.0,
             "last_rc": None}
    return json.dumps({"put": entry, "next_seq": 2}, separators=(",", ":")) + "\n"


def measure(directory: Path, changes: int) -> dict[str, tuple[float, float]]:
    """One round: way → (CPU µs, wall µs) per change."""
    line = _line()
    snapshot = json.dumps({"format": "eum-saf/2", "next_seq": 2, "entries": [json.loads(line)["put"]],
                           "refused": []}, separators=(",", ":")) + "\n"
    path = directory / "T0000001.saf.jsonl"
    out: dict[str, tuple[float, float]] = {}
    ways = {
        "rewrite": lambda: _write_durably(path, snapshot),
        "append+fdatasync": lambda: _append(path, line.encode(), sync=True),
        "append": lambda: _append(path, line.encode(), sync=False),
    }
    for name, change in ways.items():
        _write_durably(path, snapshot)  # each way starts from the same one-line file
        c0, t0 = _cpu_s(), time.perf_counter()
        for _ in range(changes):
            change()
        out[name] = ((_cpu_s() - c0) * 1e6 / changes, (time.perf_counter() - t0) * 1e6 / changes)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--changes", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for r in range(args.rounds):
            rounds.append(measure(Path(tmp), args.changes))
            print(f"round {r + 1}: " + ", ".join(f"{k} {c:.0f} µs CPU / {w:.0f} µs wall" for k, (c, w) in rounds[-1].items()),
                  file=sys.stderr)
    result = {name: {"cpu_us": round(statistics.median(r[name][0] for r in rounds), 1),
                     "wall_us": round(statistics.median(r[name][1] for r in rounds), 1)} for name in rounds[0]}
    print(json.dumps({"changes": args.changes, "rounds": args.rounds, "median": result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
