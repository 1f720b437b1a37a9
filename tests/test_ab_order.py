"""benchmarks/ab.py, ab_plain.py and core_bench.py run the sides of a pair in alternating
order (ABBA): on this VM whichever side runs second is slower (docs/performance.md, "Which
side runs first (the A/B tools now alternate it)"), so a fixed order would bias every ratio."""

from __future__ import annotations

from benchmarks.ab import round_order


def test_even_rounds_keep_the_order_and_odd_rounds_reverse_it():
    assert [round_order(("base", "head"), i) for i in range(4)] == [
        ["base", "head"], ["head", "base"], ["base", "head"], ["head", "base"]]


def test_each_side_runs_first_in_half_of_an_even_number_of_rounds():
    trees = {"a1b2c3d": "/tmp/base", "e4f5a6b (this tree)": "/work"}
    firsts = [round_order(trees, i)[0] for i in range(6)]
    assert firsts.count("a1b2c3d") == 3 and firsts.count("e4f5a6b (this tree)") == 3
