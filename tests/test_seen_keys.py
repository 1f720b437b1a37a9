"""The filter of stored idempotency keys (switch/authorize/seen.py): a new message's key is
known to be new without a store query, and a stored key is never missed."""

from __future__ import annotations

from conftest import LAUNCH, start_switch, provision
from switch.authorize.seen import BITS_PER_KEY, SeenKeys
from switch.clock import FixedClock
from terminal_sim.terminal import Terminal


def keys(n: int, *, tid: str = "T0000001") -> list[tuple[str, str, str]]:
    return [(tid, f"{i % 1_000_000:06d}", f"0720{i // 1_000_000:02d}{i % 10_000:04d}") for i in range(n)]


def test_every_added_key_is_held_and_false_positives_stay_near_one_percent():
    seen = SeenKeys(20_000)
    stored = keys(20_000)
    for k in stored:
        seen.add(k)
    assert all(seen.may_hold(k) for k in stored)  # a Bloom filter has no false negatives
    others = keys(50_000, tid="T0000002")
    false_positives = sum(seen.may_hold(k) for k in others)
    assert false_positives < 0.02 * len(others), false_positives  # ≈ 0.8 % at 10 bits and 7 probes
    assert len(seen.bits) == 20_000 * BITS_PER_KEY // 8 and seen.full  # at capacity: the switch doubles it


def test_a_key_s_probes_are_kirsch_mitzenmacher_s_on_its_two_hashes_whatever_the_size():
    """Probe i of a key is (h1 + i·h2) mod size, h1 = hash(key), h2 = hash((key, 0x9E3779B9)) | 1,
    computed here on Python's unbounded ints; the filter reduces the hashes first (the same
    numbers, on ints the compiled module keeps native). Sizes from one key's bits to a
    million keys', keys of random terminals, STANs and times."""
    import random

    from switch.authorize.seen import PROBES

    rng = random.Random(3)
    for capacity in (1, 7, 1000, 123_457, 1_000_000):
        seen = SeenKeys(capacity)
        for _ in range(500):
            key = (f"T{rng.randrange(10**7):07d}", f"{rng.randrange(10**6):06d}", f"{rng.randrange(10**10):010d}")
            h1, h2 = hash(key), hash((key, 0x9E3779B9)) | 1
            assert seen._probes(key) == [(h1 + i * h2) % seen.size for i in range(PROBES)]


def test_the_filter_is_full_at_its_capacity_and_is_built_with_room_to_double():
    seen = SeenKeys.of(keys(3), stored=3, capacity_min=4)
    assert (seen.capacity, seen.count, seen.full) == (6, 3, False)
    for k in keys(6, tid="T0000009")[:3]:
        seen.add(k)
    assert seen.full


async def test_a_new_purchase_reads_no_message_from_the_store_and_a_repeat_finds_its_original(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)
        state = env.core.state
        reads: list[tuple] = []
        real = state.reader.message
        state.reader.message = lambda key: reads.append(key) or real(key)
        client, term = await env.signed_on()
        pan = env.cards["namdong"]["pan"]
        purchase = term.purchase(pan, 20_000)
        assert (await client.request(purchase))["39"] == "00"
        assert reads == []  # new: the filter said so, no query
        state.messages.clear()  # forget the cached outcome: the repeat must find it in the store
        replayed = await client.request(Terminal.repeat(purchase))
        assert (replayed["39"], replayed["37"]) == ("00", "000000000003")
        assert reads == [(term.tid, purchase["11"], purchase["7"])]
        await client.close()

    # a restart builds the filter from the store: the old key is held, a repeat is answered from it
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        assert env.core.state.seen.may_hold((term.tid, purchase["11"], purchase["7"]))
        assert env.core.state.seen.count == 1
