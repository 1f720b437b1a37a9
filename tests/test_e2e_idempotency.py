"""Idempotency on DE41 + DE11 + DE7: duplicates and repeats replay the stored response and
post nothing; the same key with other content is declined 94."""

from __future__ import annotations

import asyncio

import pytest

from conftest import LAUNCH, card_accounts, posting_count, postings, provision, start_switch
from switch.ledger.audit import verify
from switch.clock import FixedClock
from switch.wire.messages import Balances, decode_balances
from terminal_sim.terminal import Terminal

pytestmark = pytest.mark.both_stores  # SQLite and PostgreSQL (tests/conftest.py)


async def test_exact_duplicate_purchase_returns_the_same_response_and_posts_once(switch_env):
    env = switch_env
    client, term = await env.signed_on()
    pan = env.cards["namdong"]["pan"]
    req = term.purchase(pan, 20_000)
    first = await client.request(req)
    before = posting_count(env.core.db_path)
    second = await client.request(req)
    await client.close()
    assert first["39"] == "00"
    assert second == first
    assert posting_count(env.core.db_path) == before
    assert card_accounts(env.core.db_path, pan) == (80_000, 1_500)
    assert verify(env.core.db_path).ok


async def test_repeats_0201_0401_0421_return_the_stored_response_and_post_nothing(switch_env):
    env = switch_env
    client, term = await env.signed_on()
    pan = env.cards["namdong"]["pan"]
    purchase = term.purchase(pan, 20_000)
    p_first = await client.request(purchase)
    refund = term.refund(pan, 4_000, p_first["37"])
    r_first = await client.request(refund)
    reversal = term.reversal(refund)
    v_first = await client.request(reversal)
    other = term.purchase(pan, 10_000)
    assert (await client.request(other))["39"] == "00"
    advice = term.reversal(other, advice=True)
    a_first = await client.request(advice)
    db = env.core.db_path
    before = posting_count(db)
    balances_before = card_accounts(db, pan)

    p_rep = await client.request(Terminal.repeat(purchase))
    r_rep = await client.request(Terminal.repeat(refund))
    v_rep = await client.request(Terminal.repeat(reversal))
    a_rep = await client.request(Terminal.repeat(advice))
    await client.close()

    assert (p_rep, r_rep, v_rep, a_rep) == (p_first, r_first, v_first, a_first)
    assert [p_rep["t"], v_rep["t"], a_rep["t"]] == ["0210", "0410", "0430"]
    assert posting_count(db) == before
    assert card_accounts(db, pan) == balances_before
    assert verify(db).ok


async def test_a_repeat_replays_a_decline_even_when_it_would_now_be_approved(switch_env):
    env = switch_env
    client, term = await env.signed_on()
    pan = env.cards["incheon"]["pan"]
    req = term.purchase(pan, 150_000)
    assert (await client.request(req))["39"] == "51"
    await env.op("card-charge", pan=pan, amount=100_000)
    again = await client.request(Terminal.repeat(req))
    fresh = await client.request(term.purchase(pan, 150_000))
    await client.close()
    assert again["39"] == "51"
    assert fresh["39"] == "00"
    assert len(postings(env.core.db_path, "purchase")) == 1
    assert verify(env.core.db_path).ok


async def test_a_repeat_of_an_unseen_message_is_processed_once(switch_env):
    env = switch_env
    client, term = await env.signed_on()
    pan = env.cards["incheon"]["pan"]
    req = term.purchase(pan, 7_000)
    first = await client.request(Terminal.repeat(req))  # the 0200 was lost; the 0201 arrives
    original = await client.request(req)  # and then the 0200 itself, late
    await client.close()
    assert first["39"] == "00"
    assert original == first
    assert len(postings(env.core.db_path, "purchase")) == 1
    assert card_accounts(env.core.db_path, pan) == (93_000, 420)
    assert verify(env.core.db_path).ok


async def test_same_key_different_content_is_declined_94_and_posts_nothing(switch_env):
    env = switch_env
    client, term = await env.signed_on()
    pan = env.cards["namdong"]["pan"]
    req = term.purchase(pan, 20_000)
    first = await client.request(req)
    before = posting_count(env.core.db_path)
    other_amount = await client.request({**req, "4": f"{21_000:012d}"})
    other_card = await client.request({**req, "2": env.cards["incheon"]["pan"]})
    as_reversal = await client.request({**term.reversal(req), "7": req["7"], "11": req["11"]})
    replay = await client.request(req)
    await client.close()
    assert (other_amount["39"], other_card["39"], as_reversal["39"]) == ("94", "94", "94")
    assert as_reversal["t"] == "0410"
    assert replay == first  # the stored response is untouched by the 94s
    assert posting_count(env.core.db_path) == before
    assert card_accounts(env.core.db_path, pan) == (80_000, 1_500)
    assert card_accounts(env.core.db_path, env.cards["incheon"]["pan"]) == (100_000, 0)
    assert verify(env.core.db_path).ok


async def test_mac_does_not_change_the_idempotency_digest(switch_env):
    env = switch_env
    client, term = await env.signed_on()
    req = term.purchase(env.cards["incheon"]["pan"], 5_000)
    first = await client.request({**req, "64": "0123456789ABCDEF"})
    second = await client.request({**req, "64": "FEDCBA9876543210"})
    # a PIN block from a terminal whose profile is none cannot be verified: 57, nothing stored
    refused = await client.request({**term.purchase(env.cards["incheon"]["pan"], 5_000), "52": "0123456789ABCDEF"})
    await client.close()
    assert refused["39"] == "57"
    assert first["39"] == "00" and second == first
    assert len(postings(env.core.db_path, "purchase")) == 1
    assert verify(env.core.db_path).ok


async def test_concurrent_duplicates_on_two_connections_post_once(switch_env):
    env = switch_env
    pan = env.cards["namdong"]["pan"]
    c1, term = await env.signed_on()
    c2 = await env.client().connect()
    reqs = [term.purchase(pan, 1_000 + i) for i in range(10)]
    for req in reqs:
        a, b = await asyncio.gather(c1.request(req), c2.request(req))
        assert a["39"] == "00"
        assert a == b
    await c1.close()
    await c2.close()
    db = env.core.db_path
    assert len(postings(db, "purchase")) == 10
    spent = sum(1_000 + i for i in range(10))
    credited = sum(p["cashback"] for p in postings(db, "purchase"))
    assert credited == sum((1_000 + i) * 400 // 10_000 + (1_000 + i) * 200 // 10_000 + (1_000 + i) * 150 // 10_000
                           for i in range(10))
    cash, cashback = card_accounts(db, pan)
    assert cash + cashback == 100_000 - spent + credited  # each purchase debited once
    assert verify(db).ok


async def test_a_burst_of_one_message_on_many_connections_posts_once(switch_env):
    env = switch_env
    pan = env.cards["incheon"]["pan"]
    first, term = await env.signed_on()
    clients = [first] + [await env.client().connect() for _ in range(7)]
    req = term.purchase(pan, 30_000)
    answers = await asyncio.gather(*(c.request(req) for c in clients))
    for c in clients:
        await c.close()
    assert all(a == answers[0] for a in answers)
    assert answers[0]["39"] == "00"
    assert decode_balances(answers[0]["54"]) == Balances(cash=70_000, cashback=1_800)
    assert len(postings(env.core.db_path, "purchase")) == 1
    assert verify(env.core.db_path).ok


async def test_stored_responses_survive_a_restart(tmp_path):
    data_dir = tmp_path / "var"
    clock = FixedClock(LAUNCH)
    term = Terminal("T0000001", "NAMDONG01", stan=40)
    async with start_switch(data_dir, clock=clock) as env:
        await provision(env)
        pan = env.cards["namdong"]["pan"]
        client = await env.client().connect()
        assert (await client.request(term.sign_on()))["39"] == "00"
        purchase = term.purchase(pan, 20_000)
        bought = await client.request(purchase)
        lost = term.purchase(pan, 9_000)
        rev = await client.request(term.reversal(lost))  # tombstone for `lost`
        await client.close()
        assert (bought["39"], rev["39"]) == ("00", "00")
        count = posting_count(env.core.db_path)

    async with start_switch(data_dir, clock=clock) as env:
        client = await env.client().connect()
        assert (await client.request(term.sign_on()))["39"] == "00"
        replay = await client.request(Terminal.repeat(purchase))
        dup = await client.request(purchase)
        changed = await client.request({**purchase, "4": f"{20_001:012d}"})
        late = await client.request(lost)
        await client.close()
        assert replay == bought and dup == bought
        assert changed["39"] == "94"
        assert late["39"] == "12"
        assert posting_count(env.core.db_path) == count
        assert card_accounts(env.core.db_path, pan) == (80_000, 1_500)
        assert verify(env.core.db_path).ok


async def test_the_outcome_cache_is_bounded_and_forgotten_outcomes_still_replay(switch_env):
    env = switch_env
    env.core.state.messages_max = 3
    client, term = await env.signed_on()
    sent = [term.purchase(env.cards["incheon"]["pan"], 1_000 + i) for i in range(6)]
    answers = [await client.request(fields) for fields in sent]
    assert [a["39"] for a in answers] == ["00"] * 6
    assert len(env.core.state.messages) == 3  # the oldest committed outcomes were dropped
    assert (await client.request(Terminal.repeat(sent[0]))) == answers[0]  # re-read from the store
    assert len(postings(env.core.db_path, "purchase")) == 6
    await client.close()
