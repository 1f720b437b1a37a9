"""The engine's two waits (switch/authorize/engine.py): MemberLocks (one decision per member at
a time, first come first served) and Pending (a key being decided). Both create nothing for
an uncontended key (docs/performance.md "Issue 10 levers")."""

from __future__ import annotations

import asyncio

import pytest

from switch.authorize.engine import MemberLocks, Pending


async def _turns(locks: MemberLocks, order: list[str], name: str, gate: asyncio.Event | None = None) -> None:
    await locks.acquire("M1")
    order.append(f"{name} in")
    if gate is not None:
        await gate.wait()
    order.append(f"{name} out")
    locks.release("M1")


@pytest.mark.asyncio
async def test_an_uncontended_member_lock_holds_no_future():
    locks = MemberLocks()
    await locks.acquire("M1")
    assert locks._held == {"M1": None} and len(locks) == 1
    locks.release("M1")
    assert locks._held == {} and len(locks) == 0


@pytest.mark.asyncio
async def test_acquire_now_takes_a_free_lock_in_the_callers_step_and_queues_nothing():
    locks = MemberLocks()
    assert locks.acquire_now("M1") is True and locks._held == {"M1": None}
    assert locks.acquire_now("M1") is False and locks._held == {"M1": None}  # held: nothing taken or queued
    waiter = asyncio.ensure_future(locks.acquire("M1"))
    await asyncio.sleep(0)
    assert len(locks._held["M1"]) == 1
    locks.release("M1")  # handed to the waiter: still held
    assert locks.acquire_now("M1") is False
    await waiter
    locks.release("M1")
    assert locks._held == {} and locks.acquire_now("M2") is True and locks._held == {"M2": None}


@pytest.mark.asyncio
async def test_waiters_get_the_member_lock_one_at_a_time_in_arrival_order():
    locks, order, gate = MemberLocks(), [], asyncio.Event()
    first = asyncio.ensure_future(_turns(locks, order, "a", gate))
    await asyncio.sleep(0)
    others = [asyncio.ensure_future(_turns(locks, order, n)) for n in ("b", "c")]
    await asyncio.sleep(0)
    assert order == ["a in"] and len(locks._held["M1"]) == 2
    gate.set()
    await asyncio.gather(first, *others)
    assert order == ["a in", "a out", "b in", "b out", "c in", "c out"]
    assert locks._held == {}


@pytest.mark.asyncio
async def test_a_cancelled_waiter_does_not_keep_the_member_lock():
    locks, order, gate = MemberLocks(), [], asyncio.Event()
    first = asyncio.ensure_future(_turns(locks, order, "a", gate))
    await asyncio.sleep(0)
    cancelled = asyncio.ensure_future(_turns(locks, order, "b"))
    third = asyncio.ensure_future(_turns(locks, order, "c"))
    await asyncio.sleep(0)
    cancelled.cancel()
    gate.set()
    await asyncio.gather(first, third)
    assert cancelled.cancelled()
    assert order == ["a in", "a out", "c in", "c out"] and locks._held == {}


@pytest.mark.asyncio
async def test_a_waiter_cancelled_after_the_handover_passes_the_lock_on():
    locks, order = MemberLocks(), []
    await locks.acquire("M1")
    handed = asyncio.ensure_future(_turns(locks, order, "b"))
    after = asyncio.ensure_future(_turns(locks, order, "c"))
    await asyncio.sleep(0)
    locks.release("M1")   # b's future resolved: b owns the lock but has not run yet
    handed.cancel()       # … and is cancelled before it runs
    await asyncio.gather(after)
    assert handed.cancelled()
    assert order == ["c in", "c out"] and locks._held == {}


@pytest.mark.asyncio
async def test_a_pending_key_holds_its_waiters_until_finished_and_nothing_when_nobody_waits():
    pending, key, woke = Pending(), ("T0000001", "000001", "1015120000"), []
    pending.start(key)
    assert key in pending and pending._keys == {key: None}

    async def waiter(name: str) -> None:
        await pending.wait(key)
        woke.append(name)

    tasks = [asyncio.ensure_future(waiter(n)) for n in ("x", "y")]
    await asyncio.sleep(0)
    assert woke == [] and len(pending._keys[key]) == 2
    pending.finish(key)
    await asyncio.gather(*tasks)
    assert woke == ["x", "y"] and key not in pending
    await pending.wait(key)  # nothing in progress: returns at once
    pending.start(key)
    pending.finish(key)
    assert pending._keys == {}
