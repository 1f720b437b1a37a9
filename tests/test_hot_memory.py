"""benchmarks/hot_memory.py measures what it says (docs/architecture.md "Memory bounds"): every
card is used once and hot, every hostile purchase is declined 14 and its outcome stored. The
memory figures themselves belong to the benchmark, not to this test."""

from __future__ import annotations

from benchmarks import hot_memory


def test_every_card_is_approved_once_and_held_hot():
    result = hot_memory.one_run(1_500)
    assert (result["cards"], result["hot_cards"], result["codes"], result["verified"]) == (
        1_500, 1_500, {"00": 1_500}, True)
    assert result["rss_mib_hot"] > 0 and result["rss_mib_before"] > 0


def test_hostile_purchases_are_all_declined_14_and_only_the_bounded_outcomes_stay_in_memory():
    result = hot_memory.hostile_run(12_000)
    assert result["codes"] == {"14": 14_000}           # 2,000 warm-up frames and the 12,000 measured
    assert result["outcomes_in_memory"] == 2_000       # HotState.messages_max: the rest only in the store
