"""Per-module totals of the last mutation run (read from ./mutants/**/*.meta), and the survivors.

Run from the repository root after tests/mutation/run.sh. Not a test module (pytest collects
only test_*.py). Exit status 1 if the kill rate is below the target in docs/testing.md.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

# run.sh's module names → the mutated files under switch/
MODULES = {"policy": "rules/policy", "fees": "rules/fees", "cashback": "rules/cashback",
           "decide": "authorize/decide", "engine": "authorize/engine", "audit": "ledger/audit"}
TARGET = 0.85
COLUMNS = ("mutants", "killed", "survived", "timeout", "skipped", "no tests", "unchecked", "other")


def names(modules: list[str]) -> int:
    """The names of the mutants not killed last time, one a line (run.sh --survivors)."""
    for module in modules or MODULES:
        meta = Path(f"mutants/switch/{MODULES[module]}.py.meta")
        if meta.exists():
            for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
                if status_by_exit_code[code] in ("survived", "no tests", "suspicious", "segfault"):
                    print(name)
    return 0


def main() -> int:
    root = Path("mutants/switch")
    if not root.is_dir():
        print("no ./mutants directory: run tests/mutation/run.sh first", file=sys.stderr)
        return 2
    totals: dict[str, Counter] = {}
    survivors: list[str] = []
    for module, path in MODULES.items():
        meta = root / f"{path}.py.meta"
        if not meta.exists():
            continue
        counts: Counter = Counter()
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            status = status_by_exit_code[code]
            column = {"killed": "killed", "caught by type check": "killed", "survived": "survived",
                      "timeout": "timeout", "skipped": "skipped", "no tests": "no tests",
                      "not checked": "unchecked"}.get(status, "other")
            counts[column] += 1
            counts["mutants"] += 1
            if status in ("survived", "no tests", "suspicious", "segfault"):
                survivors.append(f"{status:11} {name}")
        totals[f"switch/{path}.py"] = counts
    overall: Counter = sum(totals.values(), Counter())
    print(f"{'module':28}" + "".join(f"{c:>10}" for c in COLUMNS) + f"{'kill rate':>11}")
    for module, counts in [*totals.items(), ("total", overall)]:
        decided = counts["mutants"] - counts["skipped"] - counts["unchecked"]
        rate = (counts["killed"] + counts["timeout"]) / decided if decided else 0.0
        print(f"{module:28}" + "".join(f"{counts[c]:>10}" for c in COLUMNS) + f"{rate:>10.1%}")
    if survivors:
        print("\nnot killed (see `python3 -m mutmut show NAME`):")
        print("\n".join(sorted(survivors)))
    decided = overall["mutants"] - overall["skipped"] - overall["unchecked"]
    if overall["unchecked"]:
        print(f"\n{overall['unchecked']} mutants not checked yet (run stopped early): kill rates are over the checked ones")
    rate = (overall["killed"] + overall["timeout"]) / decided if decided else 0.0
    return 0 if rate >= TARGET else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--names"]:
        sys.exit(names(sys.argv[2:]))
    sys.exit(main())
