"""`eum demo`: the whole system on embedded defaults, for a newcomer's first run.

Seeds a small population in a temporary data dir, starts the switch on a free loopback
port, drives a few hundred transactions of every kind through real TCP with the
terminal_sim code (purchases, balance inquiries, refunds, reversals, advices, repeats,
duplicates and deliberate declines), then prints what the ledger says and proves it.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from switch.ops import logs
from switch.ledger.audit import verify
from switch.clock import OffsetClock, parse_instant
from switch.wire.codec import load_dialect
from switch.ops.config import SwitchConfig
from switch.rules.policy import default_config_dir, load_rules
from switch.ops.runtime import lock_data_dir, open_core, unlock
from switch.ledger.store import connect, locate, open_store
from switch.ops.seed import seed, tid_for
from switch.authorize.server import Processor, SwitchServer

from .cli import RC_TEXT
from .client import TerminalClient
from .terminal import Terminal

TERMINALS = 10
DEMO_START = "2025-10-15T12:00:00+09:00"  # lunch peak under the 2025-09 policy (10 %, 15 % Ganghwa/Ongjin)


def register(sub: Any) -> None:
    """`eum demo` (entry point `eum.commands`, pyproject.toml)."""
    de = sub.add_parser("demo", help="switch + terminals + summary on embedded defaults, in a temp dir")
    de.add_argument("--transactions", type=int, default=300)
    de.add_argument("--seed", type=int, default=7)
    de.add_argument("--keep", action="store_true", help="keep the temporary data dir and print its path")
    de.add_argument("--store", help="the ledger: the temporary data dir's SQLite file (default), or an empty "
                    "PostgreSQL database, postgresql://… (docs/scale-out.md)")
    de.add_argument("--clock-start", default="2025-10-15T12:00:00+09:00",
                    help="the switch's clock starts here (default: a lunch peak under the 2025-09 policy)")
    de.set_defaults(func=lambda args: run_demo(transactions=args.transactions, seed_value=args.seed,
                                                keep=args.keep, clock_start=args.clock_start))


def run_demo(*, transactions: int = 300, seed_value: int = 7, keep: bool = False,
             clock_start: str = DEMO_START) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="eum-demo-")) / "var"
    try:
        return asyncio.run(_demo(data_dir, transactions, seed_value, clock_start))
    finally:
        if keep:
            print(f"\ndata dir kept: {data_dir}")
        else:
            shutil.rmtree(data_dir.parent, ignore_errors=True)


async def _demo(data_dir: Path, transactions: int, seed_value: int, clock_start: str) -> int:
    clock = OffsetClock(parse_instant(clock_start))
    logs.configure(data_dir=data_dir, name="switch", stream=open(data_dir.parent / "switch.out", "w"),
                   json_output=True)
    rules = load_rules(default_config_dir())
    result = seed(open_store(data_dir), rules, cards=200, merchants=TERMINALS, seed_value=seed_value,
                  now=clock.now())
    print(f"eum demo: data dir {data_dir}")
    print(f"seeded {result.merchants} merchants with a terminal each, {result.cards} cards "
          f"({result.members} members), {result.charged:,} KRW charged; clock starts {clock_start}")
    fd = lock_data_dir(data_dir, wait=False)
    try:
        async with open_core(data_dir, clock=clock) as core:
            server = SwitchServer(SwitchConfig(port=0, data_dir=data_dir), Processor(core.engine, load_dialect("default")),
                                  core.ops)
            await server.start()
            print(f"switch listening on 127.0.0.1:{server.port}; driving {transactions} transactions over TCP\n")
            try:
                sent = await _drive(server.port, core, transactions, random.Random(seed_value))
            finally:
                await server.stop()
    finally:
        unlock(fd)
        logs.flush()
    return _summary(data_dir, sent)


def lane_cards(cards: list[tuple[str, str]], lanes: int) -> list[list[str]]:
    """The PANs of (pan, member) pairs dealt to `lanes` lanes by member, members in turn: a
    card's balance and a member's monthly cashback counters are then moved by one lane only,
    so no outcome depends on which lane's request the switch took first."""
    lane_of = {member: i % lanes for i, member in enumerate(dict.fromkeys(m for _, m in cards))}
    dealt: list[list[str]] = [[] for _ in range(lanes)]
    for pan, member in cards:
        dealt[lane_of[member]].append(pan)
    return dealt


async def _drive(port: int, core, transactions: int, rng: random.Random) -> Counter:
    conn = connect(core.db_path, readonly=True)
    cards = conn.execute("SELECT pan, member FROM cards ORDER BY id").fetchall()
    mids = {tid: mid for tid, mid in conn.execute("SELECT tid, mid FROM terminals")}
    conn.close()
    blocked = cards[-1][0]
    lane_pans = lane_cards(cards[:-1], TERMINALS)
    await core.ops.run("card-block", {"pan": blocked})
    dialect = load_dialect("default")
    lanes = []
    for i in range(TERMINALS):
        tid = tid_for(i + 1)
        client = await TerminalClient("127.0.0.1", port, dialect).connect()
        term = Terminal(tid, mids[tid])
        assert (await client.request(term.sign_on()))["39"] == "00"
        lanes.append((client, term, []))
    sent: Counter = Counter()
    per_lane = transactions // TERMINALS
    # each terminal draws from its own generator (seeded from the demo's) over its own cards:
    # what a lane sends depends only on its own answers, not on which lane's answer the event
    # loop saw first, so the run is the same whatever the timing (the ledger's group commit
    # sends answers in an order that depends on it)
    seeds = [rng.getrandbits(64) for _ in lanes]
    await asyncio.gather(*(_lane(lane, per_lane, own, blocked, random.Random(s), sent)
                           for lane, own, s in zip(lanes, lane_pans, seeds)))
    for client, term, _ in lanes:
        await client.request(term.sign_off())
        await client.close()
    return sent


async def _lane(lane, count: int, pans: list[str], blocked: str, rng: random.Random, sent: Counter) -> None:
    """pans: the lane's own cards (the blocked card is not among them)."""
    client, term, history = lane
    for _ in range(count):
        roll = rng.random()
        if roll < 0.55 or not history:
            kind, fields = "purchase", term.purchase(rng.choice(pans), rng.choice((5_000, 12_000, 20_000, 23_500, 48_000)))
        elif roll < 0.63:
            kind, fields = "balance", term.balance(rng.choice(pans))
        elif roll < 0.73:
            orig, answer = rng.choice(history)
            amount = int(orig["4"]) if rng.random() < 0.5 else int(orig["4"]) // 2
            kind, fields = "refund", term.refund(orig["2"], amount, answer.get("37", "000000000000"))
        elif roll < 0.81:
            orig, _ = history[-1]
            partial = int(orig["4"]) // 2 if rng.random() < 0.3 else None
            kind, fields = "reversal", term.reversal(orig, replacement_amount=partial, advice=rng.random() < 0.4)
        elif roll < 0.86:
            orig, _ = rng.choice(history)
            kind, fields = "repeat", term.repeat(orig)
        elif roll < 0.89:
            orig, _ = rng.choice(history)
            kind, fields = "duplicate", dict(orig)
        elif roll < 0.92:
            kind, fields = "unknown card", term.purchase("9410099999999999", 10_000)
        elif roll < 0.95:
            kind, fields = "blocked card", term.purchase(blocked, 10_000)
        else:
            kind, fields = "over balance", term.purchase(rng.choice(pans), 1_900_000)
        answer = await client.request(fields)
        sent[(kind, answer["39"])] += 1
        if fields["t"] == "0200" and answer["39"] == "00" and fields["3"].startswith("00"):
            history.append((fields, answer))


def _summary(data_dir: Path, sent: Counter) -> int:
    db = connect(locate(data_dir), readonly=True)
    print("responses by kind and code")
    for (kind, rc), n in sorted(sent.items()):
        print(f"  {kind:<13} {rc} {RC_TEXT.get(rc, '?'):<22} {n:>5}")
    by_rc = Counter()
    for (_, rc), n in sent.items():
        by_rc[rc] += n
    print("  total        " + ", ".join(f"{rc}: {n}" for rc, n in sorted(by_rc.items())))

    print("\nmerchant fees by tier (net of refunds and reversals, KRW)")
    tiers: Counter = Counter()
    support: Counter = Counter()
    for detail, fee, sup, orig_detail in db.execute(
            "SELECT p.detail, p.fee, p.support, o.detail FROM postings p LEFT JOIN postings o ON o.id = p.original_id "
            "WHERE p.kind IN ('purchase', 'refund', 'reversal')"):
        tier = json.loads(detail).get("fee_tier") or json.loads(orig_detail or "{}").get("fee_tier", "?")
        tiers[tier] += fee
        support[tier] += sup
    for tier, fee in sorted(tiers.items()):
        print(f"  {tier:<12} fee {fee:>9,}   of which funders' support {support[tier]:>7,}")

    print("\ncashback by card program and funder (net, KRW)")
    rows = db.execute(
        "SELECT c.program, substr(e.account, 18), -SUM(e.amount) FROM entries e JOIN postings p ON p.id = e.posting_id "
        "JOIN cards c ON c.id = p.card_id WHERE e.account LIKE 'cashback_expense:%' GROUP BY 1, 2 ORDER BY 1, 2")
    for program, funder, won in rows:
        print(f"  {program:<10} {funder:<10} {won:>9,}")
    db.close()

    result = verify(locate(data_dir))
    stats = ", ".join(f"{k} {v:,}" for k, v in result.stats.items())
    print(f"\nledger verify: {'OK' if result.ok else 'FAILED: ' + result.problem} ({stats})")
    return 0 if result.ok else 1
