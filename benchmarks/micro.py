"""Hot-path micro-benchmarks, and the same measured on an earlier revision in the same run.

    python benchmarks/micro.py [--base REV] [--rounds 3] [--out-dir DIR]

Per-call microseconds (median of timeit runs) of the pieces docs/performance.md's
optimisation table names, each measured through the public functions both old and new
revisions have:
  log.canonical_line_us   one `message` log line as `eum switch` configures its logs
                          (JSON to a file and to stdout, which is a file here)
  hsm.audit_record_us     one HSM audit line (hsm_mock.audit.AuditLog.record)
  hsm.gw_generate_us      HSM compute for GW (DUKPT response MAC), a fresh KSN each time:
                          parse + handle, no I/O
  hsm.retail_mac_fresh_key_us  X9.19 MAC over 140 bytes under a key used once, as the HSM
                          and the terminals compute it for a DUKPT transaction
Without --base: this tree only. With --base REV: REV is checked out into a temporary git
worktree and each round measures base, then this tree, alternating; medians per side.
Writes <out-dir>/<date>-<host>-micro.json.
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

# Runs inside the tree being measured (PYTHONPATH), printing one JSON line.
MEASURE = r"""
import io, itertools, json, os, sys, tempfile
from pathlib import Path
from benchmarks.codec_bench import per_call_us as _per_call_us

def per_call_us(fn, number=3000, repeat=7):
    return round(_per_call_us(fn, number=number, repeat=repeat), 2)

out = {}
tmp = Path(tempfile.mkdtemp(prefix="eum-micro-"))

import structlog
from switch import logs
kw = {"queued": True} if "queued" in logs.configure.__code__.co_varnames else {}
stdout = open(tmp / "stdout.jsonl", "w")
logs.configure(data_dir=tmp, name="switch", stream=stdout, json_output=True, **kw)
log = structlog.get_logger()
line = {"peer": "127.0.0.1:5555", "mti": "0200", "processing_code": "000000", "stan": "000123",
        "terminal": "T0000001", "merchant": "EUM000000000001", "pan": "941010******2345", "amount": 20000,
        "fee": 100, "cashback": 1500, "rc": "00", "rrn": "000000012345", "latency_us": 1234}
out["log.canonical_line_us"] = per_call_us(lambda: log.info("message", **line))
logs.flush()

from hsm_mock.audit import AuditLog
audit = AuditLog(tmp / "audit.jsonl", stream=io.StringIO())
fields = {"conn": 3, "header": "0001", "command": "GW", "kcv": {"bdk": "ABC123"}, "mode": "4", "ksn_counter": 17,
          "response": "GX", "error": "00", "fault": "none", "queue_ms": 0.0, "latency_ms": 0.123}
out["hsm.audit_record_us"] = per_call_us(lambda: audit.record(**fields))
audit.close()

from hsm_mock.commands import Hsm
from hsm_mock.lmk import TEST_LMK
from switch.security import TEST_KEYS_UNDER_TEST_LMK
hsm = Hsm(TEST_LMK, header_length=4)
bdk = TEST_KEYS_UNDER_TEST_LMK["dukpt-tdes"].encode()
message = b"0200" + bytes(range(136))
counter = itertools.count(1)

def gw():
    ksn = f"FFFF98765400002{next(counter) % 0x1FFFFF:05X}".encode()
    body = b"42" + bdk + b"A05" + ksn + f"{len(message):04d}".encode() + message
    error, _, _ = hsm.handle(hsm.parse(b"0001GW" + body))
    assert error == "00", error

out["hsm.gw_generate_us"] = per_call_us(gw, number=2000, repeat=5)

from hsm_mock import crypto
keys = itertools.cycle([os.urandom(16) for _ in range(20000)])
mac = getattr(crypto, "retail_mac_once", None) or (lambda k, d: crypto.mac_iso9797_alg3(k, d))
out["hsm.retail_mac_fresh_key_us"] = per_call_us(lambda: mac(next(keys), message))
logs.flush()
import shutil
shutil.rmtree(tmp, ignore_errors=True)
print(json.dumps(out))
"""


def measure(tree: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", MEASURE], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"measuring {tree} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="git revision to compare with, in the same run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from benchmarks.ab import worktree
    from benchmarks.bench import describe_machine

    sides: dict[str, list[dict[str, float]]] = {"head": []}
    with tempfile.TemporaryDirectory(prefix="eum-micro-") as tmp:
        trees = {"head": ROOT}
        if args.base:
            sides = {"base": [], "head": []}
            trees = {"base": worktree(args.base, Path(tmp)), "head": ROOT}
        try:
            for _ in range(args.rounds):
                for side, tree in trees.items():
                    sides[side].append(measure(tree))
                    print(side, json.dumps(sides[side][-1]), flush=True)
        finally:
            if args.base:
                subprocess.run(["git", "worktree", "remove", "--force", str(trees["base"])], cwd=ROOT, check=False)
    medians = {side: {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
               for side, runs in sides.items()}
    result = {"machine": describe_machine(), "base": args.base, "rounds": args.rounds, "median": medians, "runs": sides}
    if args.base:
        result["ratio_head_to_base"] = {k: round(medians["head"][k] / medians["base"][k], 3) for k in medians["head"]}
    out = Path(args.out_dir) / f"{date.today().isoformat()}-{socket.gethostname()}-micro.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k in ("median", "ratio_head_to_base")}, indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
