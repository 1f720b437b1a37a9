"""The newcomer's first command: `eum demo` drives every message kind and proves the ledger."""

import re
import subprocess
import sys


def test_demo_runs_every_kind_and_verifies(capsys):
    from terminal_sim.demo import run_demo

    assert run_demo(transactions=200, seed_value=3) == 0
    out = capsys.readouterr().out
    for kind in ("purchase", "balance", "refund", "reversal", "repeat", "duplicate", "unknown card", "blocked card"):
        assert re.search(rf"^  {kind}\s+\d\d ", out, re.M), f"demo summary lacks {kind}"
    assert re.search(r"^  unknown card\s+14 unknown card", out, re.M)
    assert re.search(r"^  blocked card\s+62 card blocked", out, re.M)
    assert "ledger verify: OK" in out
    assert re.search(r"^  (micro|small1|small2|small3|general)\s+fee\s+[\d,]+", out, re.M)
    assert re.search(r"^  incheon\s+national\s+[\d,]+", out, re.M)


def test_demo_command_exits_zero_as_a_process():
    proc = subprocess.run([sys.executable, "-m", "switch.cli", "demo", "--transactions", "100"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ledger verify: OK" in proc.stdout
