"""A deterministic population: merchants (one terminal each) and charged cards.

Same `--seed`, same population, so benchmarks and demos are repeatable. Bulk inserts in one
transaction (one fsync); the opening charges of all cards are one balanced posting with one
entry per card against bank_settlement.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

from switch.domain import DISTRICTS, PROGRAMS
from switch.ledger.bulk import BulkLoad, population_rows
from switch.ops.operations import card_pan, default_expiry
from switch.rules.policy import Rules
from switch.authorize.security import SECURED, provision_test_keys

# Annual sales (won) cycle over merchants: every fee tier and the >3B cashback ceiling appear
# in any run of six merchants, in every district over sixty.
SALES_TIERS = (250_000_000, 400_000_000, 800_000_000, 2_000_000_000, 150_000_000, 4_000_000_000)
CATEGORIES = ("general", "restaurant", "cafe", "grocery", "gambling", "large_electronics")
CATEGORY_WEIGHTS = (40, 25, 15, 16, 2, 2)
PROGRAM_WEIGHTS = (40, 15, 15, 15, 15)
CHARGE_STEPS = tuple(range(50_000, 500_001, 10_000))


@dataclass(frozen=True)
class SeedResult:
    merchants: int
    terminals: int
    cards: int
    members: int
    charged: int
    first_mid: str
    first_tid: str


def mid_for(i: int) -> str:
    return f"EUM{i:012d}"


def tid_for(i: int) -> str:
    return f"T{i:07d}"


def seed(db_path: Path, rules: Rules, *, cards: int, merchants: int, seed_value: int, now: datetime,
         security: str = "none") -> SeedResult:
    """`security` provisions every seeded terminal with that profile under the published test
    keys (DUKPT device ids continue after the ledger's existing DUKPT terminals)."""
    rng = random.Random(seed_value)
    with BulkLoad(db_path) as load:
        ids = load.next_ids()
        m0, c0, p0 = ids.merchant, ids.card, ids.posting
        merchant_rows = list(_merchants(rng, m0, merchants))
        load.merchants(merchant_rows)
        terminal_rows = []
        for i, row in enumerate(merchant_rows):
            keys = provision_test_keys(security, ids.dukpt_device + i) if security in SECURED else None
            terminal_rows.append((tid_for(m0 + i), row[0], security, keys.key if keys else "",
                                  keys.ksn_initial if keys else ""))
        load.terminals(terminal_rows)
        expiry = default_expiry(now)
        card_rows, charges = [], []
        for cid, program, member, amount in _cards(rng, rules, c0, cards):
            pan = card_pan(rules.programs[program].bins[0][0], cid, rules.programs[program].pan_length)
            card_rows.append((cid, pan, program, member, expiry, "active", now.isoformat()))
            charges.append((cid, amount))
        members = len({r[3] for r in card_rows})
        load.cards(card_rows)
        total = load.opening_charges(p0, now.isoformat(), charges, {"cards": len(card_rows), "seed": seed_value}) \
            if charges else 0
    return SeedResult(merchants=merchants, terminals=merchants, cards=cards, members=members, charged=total,
                      first_mid=mid_for(m0), first_tid=tid_for(m0))


def _merchants(rng: random.Random, start: int, n: int) -> Iterator[tuple[str, str, str, int, str]]:
    for i in range(start, start + n):
        district = DISTRICTS[(i - start) % len(DISTRICTS)]
        sales = SALES_TIERS[(i - start) % len(SALES_TIERS)]
        category = rng.choices(CATEGORIES, CATEGORY_WEIGHTS)[0]
        yield (mid_for(i), f"Shop {i} ({district})", district, sales, category)


def _cards(rng: random.Random, rules: Rules, start: int, n: int) -> Iterator[tuple[int, str, str, int]]:
    programs = [p for p in PROGRAMS if p in rules.programs]
    weights = PROGRAM_WEIGHTS[: len(programs)]
    member = None
    for cid in range(start, start + n):
        # one member in ten holds a second card (cashback tiers count across both)
        if member is None or rng.random() >= 0.1:
            member = f"M{cid:09d}"
        program = rng.choices(programs, weights)[0]
        yield cid, program, member, rng.choice(CHARGE_STEPS)



def export_population(db_path: Path, *, first_tid: str, first_card_id: int, cards_max: int,
                      pins: dict[str, str]) -> dict:
    """The population file a fleet drives (docs/performance.md): the seeded terminals with their
    profile and initial KSN, and up to `cards_max` seeded cards (PAN, expiry, PIN if one was set).
    It holds full PANs and test PINs: test data for load generators, never a log."""
    terminal_rows, rows = population_rows(db_path, first_tid=first_tid, first_card_id=first_card_id,
                                          cards_max=cards_max)
    terminals = [{"tid": t, "mid": m.strip(), "security": s, "keys": "test", **({"ksn": k} if k else {})}
                 for t, m, s, k in terminal_rows]
    return {"dialect": "default", "terminals": terminals,
            "cards": [{"pan": pan, "expiry": expiry, "pin": pins.get(pan)} for pan, expiry in rows]}
