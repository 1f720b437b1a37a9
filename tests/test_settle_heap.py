"""The collector once the switch is started (switch/ops/runtime.py `settle_heap`; measured in
docs/performance.md, "The collector after start, measured again"): what start loaded is
frozen out of every later collection, and the young generation is collected a tenth as often
as CPython's default. In process, and in a real `eum switch`, whose log says so before it
listens."""

from __future__ import annotations

import gc

from switch.ops.runtime import settle_heap
from switch.wire.transport import GC_OLDER_THRESHOLD, GC_YOUNG_THRESHOLD
from switch_process import provisioned, running_switch


def test_settle_heap_freezes_what_is_loaded_and_sets_the_thresholds():
    before, frozen_before = gc.get_threshold(), gc.get_freeze_count()
    kept = [[i] for i in range(1000)]  # objects alive now: frozen with the rest
    try:
        settle_heap()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, GC_OLDER_THRESHOLD, GC_OLDER_THRESHOLD) == (7000, 10, 10)
        assert gc.get_freeze_count() >= frozen_before + len(kept)
        assert gc.get_count()[2] == 0  # the oldest generation is empty: all of it is frozen
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_eum_switch_settles_its_heap_before_it_listens(tmp_path):
    data_dir = tmp_path / "var"
    await provisioned(data_dir)
    with running_switch(data_dir, tmp_path) as switch:
        [settled] = switch.logged("the heap settled", event="heap_settled")
        switch.logged("the listening line", event="switch_listening")  # the log is written up to 50 ms late
        order = [e["event"] for e in switch.events() if e["event"] in ("heap_settled", "switch_listening")]
    assert order == ["heap_settled", "switch_listening"]
    assert settled["gc_threshold"] == [7000, 10, 10]
    assert settled["frozen"] > 10_000  # at least the modules, rules and dialect a started switch holds
    assert settled["ms"] >= 0
