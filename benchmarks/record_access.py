"""What a record costs compiled code: a msgspec Struct (the hot path's records, switch/record.py)
against a mypyc native class, read and built from the same function compiled with mypyc and
interpreted.

    python benchmarks/record_access.py [--records 100000] [--out-dir DIR]

A four-field record (three ints, one str) is read field by field in a loop and built in a
list comprehension, in a module written to a temporary directory and compiled there with
mypyc (the build requirement of the optional compiled build, which pip installs only into
its isolated build environment: here it must be importable, `pip install mypy==2.4.1`); the
same source is also imported as plain Python. Nanoseconds per field read and per record built, best of five.
This is the figure behind docs/performance.md, "What stands in the way (after the ninth
session)": compiled code reads a Struct's field through the generic attribute protocol, and
a native class's as a load. Writes <out-dir>/<date>-<host>-record-access.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import timeit
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SOURCE = '''
from __future__ import annotations

import msgspec


class StructRecord(msgspec.Struct, frozen=True):
    a: int
    b: int
    c: str
    d: int


class NativeRecord:
    __slots__ = ("a", "b", "c", "d")

    def __init__(self, a: int, b: int, c: str, d: int) -> None:
        self.a = a
        self.b = b
        self.c = c
        self.d = d


def read_struct(xs: list[StructRecord]) -> int:
    t = 0
    for x in xs:
        t += x.a + x.b + x.d + len(x.c)
    return t


def read_native(xs: list[NativeRecord]) -> int:
    t = 0
    for x in xs:
        t += x.a + x.b + x.d + len(x.c)
    return t


def build_struct(n: int) -> list[StructRecord]:
    return [StructRecord(i, i, "x", i) for i in range(n)]


def build_native(n: int) -> list[NativeRecord]:
    return [NativeRecord(i, i, "x", i) for i in range(n)]
'''


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(module, n: int) -> dict[str, float]:
    structs, natives = module.build_struct(n), module.build_native(n)
    fields = 4

    def best(fn, number: int) -> float:
        return min(timeit.repeat(fn, number=number, repeat=5)) / number

    return {
        "read_ns_per_field.struct": round(best(lambda: module.read_struct(structs), 5) / n / fields * 1e9, 1),
        "read_ns_per_field.native": round(best(lambda: module.read_native(natives), 5) / n / fields * 1e9, 1),
        "build_ns_per_record.struct": round(best(lambda: module.build_struct(n), 3) / n * 1e9, 1),
        "build_ns_per_record.native": round(best(lambda: module.build_native(n), 3) / n * 1e9, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="eum-record-access-") as tmp:
        work = Path(tmp)
        (work / "record_probe.py").write_text(SOURCE)
        (work / "record_probe_pure.py").write_text(SOURCE)
        results["interpreted"] = measure(load(work / "record_probe_pure.py", "record_probe_pure"), args.records)
        built = subprocess.run([sys.executable, "-m", "mypyc", "record_probe.py"], cwd=work, capture_output=True,
                               text=True, timeout=600)
        if built.returncode != 0:
            raise SystemExit(f"record_access: mypyc could not build the probe:\n{built.stdout[-2000:]}{built.stderr[-2000:]}")
        (extension,) = work.glob("record_probe.*.so")
        sys.path.insert(0, str(work))
        try:
            results["compiled"] = measure(load(extension, "record_probe"), args.records)
        finally:
            sys.path.remove(str(work))
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench import describe_machine
    out = Path(args.out_dir) / f"{date.today().isoformat()}-vm-record-access.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"what": "ns per field read and per record built, msgspec Struct vs mypyc native class "
                                       "(benchmarks/record_access.py)", "machine": describe_machine(),
                               "records": args.records, "results": results}, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
