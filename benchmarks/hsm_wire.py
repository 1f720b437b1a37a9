"""The HSM's cost per command over TCP, its transport included, before/after in one run.

    python benchmarks/hsm_wire.py --base REV [--head REV] [--rounds 5] [--commands 20000]

Each revision is checked out into a temporary git worktree. A round starts a fresh
interpreter in that tree which runs its `HsmServer` on uvloop and, in the same process and
loop, one client connection that keeps 32 `NC` commands in flight (the cheapest command: what
is measured is the framing, the read loop, the dispatch, the audit line and the writes, not
the crypto) until `--commands` are answered; it prints the process CPU per command. The
client's share is the same code in both trees, so the difference between them is the server's.
Rounds alternate base, head, base, head …; the result is each side's median and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.ab import short_revs, worktree  # noqa: E402  (one way to check out the trees compared)

ROUND = r"""
import asyncio, io, sys, time
from hsm_mock.audit import AuditLog
from hsm_mock.config import HsmConfig
from hsm_mock.service import HsmServer
from switch.wire.payshield import FrameReader, frame
from switch.wire.transport import run

N, WINDOW = int(sys.argv[1]), 32

async def main() -> float:
    async with HsmServer(HsmConfig(port=0), audit=AuditLog(stream=io.StringIO())) as hsm:
        reader, writer = await asyncio.open_connection("127.0.0.1", hsm.port)
        frames, sent, answered = FrameReader(), 0, 0
        def send(k):
            nonlocal sent
            writer.write(b"".join(frame(b"%04dNC" % ((sent + i) % 10000)) for i in range(k)))
            sent += k
        cpu0 = time.process_time()
        send(WINDOW)
        while answered < N:
            frames.receive_data(await reader.read(65536))
            got = 0
            while frames.next_frame() is not None:
                got += 1
            answered += got
            more = min(got, N - sent)
            if more > 0:
                send(more)
        cpu = time.process_time() - cpu0
        writer.close()
        return cpu / N * 1e6

print(round(run(main()), 2))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--head", default="HEAD")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--commands", type=int, default=20_000)
    args = ap.parse_args(argv)
    revs = short_revs(args.base, args.head)
    runs: dict[str, list[float]] = {"base": [], "head": []}
    with tempfile.TemporaryDirectory(prefix="eum-hsm-wire-") as tmp:
        trees = {name: worktree(rev, Path(tmp)) for name, rev in revs.items()}
        try:
            for _ in range(args.rounds):
                for name in ("base", "head"):
                    done = subprocess.run([sys.executable, "-c", ROUND, str(args.commands)], cwd=trees[name],
                                          env={**os.environ, "PYTHONPATH": str(trees[name])},
                                          capture_output=True, text=True, timeout=600, check=True)
                    runs[name].append(float(done.stdout.strip().splitlines()[-1]))
                    print(name, revs[name], runs[name][-1], "µs CPU per command", flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    medians = {name: statistics.median(v) for name, v in runs.items()}
    print(json.dumps({"revisions": revs, "runs": runs, "median_us_per_command": medians,
                      "ratio_head_to_base": round(medians["head"] / medians["base"], 3)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
