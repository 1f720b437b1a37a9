"""Scale benchmark: seed N cards, start `eum switch` on them, serve the first purchase.

    python benchmarks/scale.py [--cards 1000000] [--merchants 10000] [--runs 1]

Figures (JSON keys, so runs compare over time):
  scale.seed_1m_s   wall time of `eum admin seed` (process start to exit)
  scale.start_1m_s  from `eum switch` spawn until it accepts TCP
  scale.first_purchase_ms  sign-on + one purchase on a card seeded last, after start
  scale.rss_mib_1m  the switch's resident memory after that purchase
Writes benchmarks/results/<date>-<host>-scale.json with the machine's description.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from switch.wire.codec import load_dialect  # noqa: E402
from terminal_sim.client import TerminalClient  # noqa: E402
from terminal_sim.terminal import Terminal  # noqa: E402


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import importlib.metadata as md

    versions = {p: md.version(p) for p in ("pyiso8583", "structlog", "cryptography", "uvloop")}
    return {"host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version, "kernel": platform.release(), "packages": versions}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def wait_listening(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"switch not listening after {timeout_s} s")
            await asyncio.sleep(0.02)


async def first_purchase(port: int, tid: str, mid: str, pan: str) -> str:
    async with TerminalClient("127.0.0.1", port, load_dialect("default")) as client:
        term = Terminal(tid, mid)
        await client.request(term.sign_on())
        answer = await client.request(term.purchase(pan, 10_000))
        return answer["39"]


def one_run(cards: int, merchants: int) -> dict:
    eum = [sys.executable, "-m", "switch.cli.main"]
    with tempfile.TemporaryDirectory(prefix="eum-scale-") as tmp:
        data = Path(tmp) / "var"
        t0 = time.perf_counter()
        subprocess.run(eum + ["admin", "--data-dir", str(data), "seed", "--cards", str(cards), "--merchants",
                              str(merchants), "--seed", "1"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        seed_s = time.perf_counter() - t0
        db = sqlite3.connect(data / "ledger.sqlite3")
        pan = db.execute("SELECT pan FROM cards ORDER BY id DESC LIMIT 1").fetchone()[0]
        tid, mid = db.execute("SELECT tid, mid FROM terminals LIMIT 1").fetchone()
        db.close()
        port = free_port()
        t0 = time.perf_counter()
        proc = subprocess.Popen(eum + ["switch", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}",
                                       "--log-level", "warning"], cwd=ROOT, stdout=subprocess.DEVNULL)
        try:
            asyncio.run(wait_listening(port, 60))
            start_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            rc = asyncio.run(first_purchase(port, tid, mid, pan))
            first_ms = (time.perf_counter() - t1) * 1000
            rss = rss_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        if rc != "00":
            raise SystemExit(f"first purchase on the seeded ledger answered {rc}, expected 00")
        verify = subprocess.run(eum + ["admin", "--data-dir", str(data), "verify"], cwd=ROOT, capture_output=True,
                                text=True)
        if verify.returncode != 0:
            raise SystemExit(f"verify failed after the scale run: {verify.stderr}")
        return {"seed_s": seed_s, "start_s": start_s, "first_purchase_ms": first_ms, "rss_mib": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cards", type=int, default=1_000_000)
    ap.add_argument("--merchants", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    runs = [one_run(args.cards, args.merchants) for _ in range(args.runs)]
    med = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
    suffix = "1m" if args.cards == 1_000_000 else str(args.cards)
    result = {
        "date": date.today().isoformat(), "machine": machine(), "cards": args.cards, "merchants": args.merchants,
        "runs": runs,
        f"scale.seed_{suffix}_s": med["seed_s"], f"scale.start_{suffix}_s": med["start_s"],
        f"scale.first_purchase_{suffix}_ms": med["first_purchase_ms"], f"scale.rss_mib_{suffix}": med["rss_mib"],
    }
    out = ROOT / "benchmarks" / "results" / f"{date.today().isoformat()}-{socket.gethostname()}-scale.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k.startswith("scale.")}, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
