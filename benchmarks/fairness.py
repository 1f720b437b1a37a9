"""Per-program fairness, timed: the scenario of tests/test_fairness.py with and without the gate.

    python benchmarks/fairness.py [--out FILE.json]

Incheon cards flood from 24 MAC'd terminals against an HSM capped at 300 commands/s while a
Namdong card buys 12 times. Prints (and optionally writes) the median purchase latency of the
Namdong card and of the flood, with the gate (2 Incheon slots) and without it, and the most
HSM commands any Namdong command found waiting ahead of it. The test asserts the queue
positions only; the latencies depend on the machine and are measured here
(docs/architecture.md, "Per-program fairness").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from test_fairness import GATE_SLOTS, _run  # noqa: E402


async def measure() -> dict[str, dict[str, float]]:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, slots in (("gated", GATE_SLOTS), ("ungated", 1_000)):
            run = await _run(Path(tmp) / name, program_in_flight_max=slots)
            out[name] = {"victim_median_ms": round(run["victim_median_s"] * 1000, 1),
                         "flood_median_ms": round(run["flood_median_s"] * 1000, 1),
                         "victim_commands_ahead_max": max(run["victim_ahead"])}
    out["victim_speedup_vs_flood"] = round(out["gated"]["flood_median_ms"] / out["gated"]["victim_median_ms"], 1)
    out["victim_speedup_vs_ungated"] = round(out["ungated"]["victim_median_ms"] / out["gated"]["victim_median_ms"], 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    import structlog
    import logging

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    result = asyncio.run(measure())
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
