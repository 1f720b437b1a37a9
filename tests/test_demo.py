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
    # Which answer each kind may get: a purchase may meet a balance its lane spent (51), a refund
    # one that was partly refunded already (13); every other kind has exactly one.
    allowed = {"purchase": {"00", "51"}, "balance": {"00"}, "refund": {"00", "13"}, "reversal": {"00"},
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


def test_the_demo_is_the_same_whatever_the_timing(capsys):
    """Ten lanes run concurrently, each over its own members' cards: the same seed prints the
    same answers, fees, cashback and ledger totals run after run (only the data dir and the
    port differ)."""
    from terminal_sim.demo import run_demo

    outputs = []
    for _ in range(2):
        assert run_demo(transactions=150, seed_value=11) == 0
        out = capsys.readouterr().out
        outputs.append([line for line in out.splitlines()
                        if not line.startswith(("eum demo: data dir", "switch listening on"))])
    assert outputs[0] == outputs[1]
    assert any(line.startswith("ledger verify: OK (postings ") for line in outputs[0])


def test_each_member_s_cards_go_to_one_lane_and_every_lane_gets_cards():
    from terminal_sim.demo import lane_cards

    cards = [(f"94100000000000{i:02d}", f"m{i // 3}") for i in range(40)]  # three cards a member, the last one
    dealt = lane_cards(cards, 4)
    assert sorted(p for lane in dealt for p in lane) == sorted(p for p, _ in cards)
    member_of = dict(cards)
    lanes_of: dict[str, set[int]] = {}
    for n, lane in enumerate(dealt):
        for pan in lane:
            lanes_of.setdefault(member_of[pan], set()).add(n)
    assert all(len(lanes) == 1 for lanes in lanes_of.values())
    assert [len(lane) for lane in dealt] == [12, 10, 9, 9]  # 14 members dealt in turn: 4, 4, 3, 3
