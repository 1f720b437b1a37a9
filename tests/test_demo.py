"""The newcomer's first command: `eum demo` drives every message kind and proves the ledger."""

import re
import subprocess
import sys


def test_demo_runs_every_kind_and_verifies(capsys):
    from terminal_sim.demo import run_demo

    assert run_demo(transactions=200, seed_value=3) == 0
    out = capsys.readouterr().out
    table = {(kind, rc): int(n) for kind, rc, n in
             re.findall(r"^  ([a-z ]+?)\s+(\d\d) [a-z ]+?\s+(\d+)$", out, re.M)}
    # Ten terminals draw from one seeded generator concurrently, so how many of each kind is
    # not fixed; which answer each kind gets is. A purchase may meet a balance another lane
    # spent (51), a refund one that was partly refunded already (13), a balance enquiry the
    # blocked card (62); every other kind has exactly one possible answer.
    allowed = {"purchase": {"00", "51"}, "balance": {"00", "62"}, "refund": {"00", "13"}, "reversal": {"00"},
               "repeat": {"00"}, "duplicate": {"00"}, "unknown card": {"14"}, "blocked card": {"62"},
               "over balance": {"51"}}
    by_kind: dict[str, set[str]] = {}
    for kind, rc in table:
        by_kind.setdefault(kind, set()).add(rc)
    assert set(allowed) - {"over balance"} <= set(by_kind) <= set(allowed)
    assert all(by_kind[kind] <= allowed[kind] for kind in allowed), by_kind
    assert "00" in by_kind["purchase"] and "00" in by_kind["refund"]
    assert sum(table.values()) == 200
    assert re.search(r"^  unknown card\s+14 unknown card ", out, re.M)
    assert re.search(r"^  blocked card\s+62 card blocked ", out, re.M)
    assert "ledger verify: OK" in out
    assert re.search(r"^  (micro|small1|small2|small3|general)\s+fee\s+[\d,]+", out, re.M)
    assert re.search(r"^  incheon\s+national\s+[\d,]+", out, re.M)


def test_demo_command_exits_zero_as_a_process():
    proc = subprocess.run([sys.executable, "-m", "switch.cli.main", "demo", "--transactions", "100"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ledger verify: OK" in proc.stdout
