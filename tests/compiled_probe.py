"""The decision core driven through a seeded random day-to-day history, printed line by line:
run once on the compiled modules and once with EUM_PURE_PYTHON=1, the two outputs must be
identical (tests/test_compiled.py). Not a test file itself.

    python tests/compiled_probe.py SEED COUNT

The first line says which build ran (`compiled N/M`); then one line per request: its number,
what it was, and the Decision's repr (response, posting and entries, changes, card balances,
events with their ids and payloads), followed by one line per shipped dialect: the request
encoded, decoded and parsed, cut short and decoded, and the response encoded. Purchases of random amounts at shops of every district and
sales band, refunds and (partial) reversals of earlier purchases, balance inquiries, unknown
and expired cards, over five years of rules (2019-07 to 2024), so that tiers, caps and the
fee schedules' changes are all crossed.
"""

from __future__ import annotations

import random
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from switch import compiled  # noqa: E402
from switch.authorize.decide import decide  # noqa: E402
from switch.domain import DISTRICTS  # noqa: E402
from switch.wire.codec import (DecodeError, EncodeError, FieldError, decode_fields, dialects_dir,  # noqa: E402
                               encode_fields, load_dialect, parse_request, response_fields)
from switch.wire.messages import Rc  # noqa: E402
from test_decide import (LAUNCH, RULES, DictView, balance, committed, incheon_card, namdong_card, pan_of,  # noqa: E402
                         purchase, refund, reversal, shop)

SALES = (30_000_000, 250_000_000, 400_000_000, 700_000_000, 1_000_000_000, 3_000_000_000)


DIALECTS = [load_dialect(path.stem) for path in sorted(dialects_dir().glob("*.toml"))]


def outcome(fn, *args) -> str:  # type: ignore[no-untyped-def]
    """What a codec call gives, as text: its result, or its error (class, field, message)."""
    try:
        result = fn(*args)
    except (DecodeError, EncodeError, FieldError) as exc:
        return f"{type(exc).__name__}({getattr(exc, 'field', '')!r}, {str(exc)!r})"
    return result.hex() if isinstance(result, bytes) else repr(result)


def on_the_wire(rng: random.Random, fields: dict[str, str], decision: object) -> list[str]:
    """The request and the response through every shipped dialect's codec: encoded, decoded,
    parsed; the request also cut short at a random byte (a DecodeError's text must match)."""
    lines = []
    for dialect in DIALECTS:
        try:
            wire = encode_fields(fields, dialect)
        except EncodeError as exc:
            lines.append(f"  {dialect.name} request: EncodeError({exc.field!r}, {str(exc)!r})")
            continue
        decoded = outcome(decode_fields, wire, dialect)
        parsed = outcome(lambda w: parse_request(decode_fields(w, dialect)), wire)
        cut = outcome(decode_fields, wire[: rng.randrange(len(wire))], dialect)
        answer = outcome(encode_fields, response_fields(decision.response), dialect)  # type: ignore[attr-defined]
        lines.append(f"  {dialect.name} request {wire.hex()} -> {decoded} -> {parsed}; cut: {cut}; answer {answer}")
    return lines


def history(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    cards = [namdong_card(id=i, pan=pan_of("94101000", i), member=f"M{i:09d}", expiry="2912", cash=2_000_000)
             for i in (1, 3, 5)]
    cards += [incheon_card(id=i, pan=pan_of("94100000", i), member=f"M{i:09d}", expiry="2912", cash=1_500_000)
              for i in (2, 4, 6)]
    cards.append(incheon_card(id=7, pan=pan_of("94100000", 7), member="M000000007", expiry="2001", cash=50_000))
    shops = [shop(f"S{i:02d}{d[:6].upper()}", d, SALES[i % len(SALES)], online_mall=(i == 3))
             for i, d in enumerate(DISTRICTS)]
    view = DictView(tuple(cards), tuple(shops))
    now = LAUNCH
    approved: list[tuple[str, str, int, str, object]] = []  # (pan, stan, amount, rrn, shop) of purchases
    lines = []
    for n in range(count):
        now += timedelta(hours=rng.randrange(0, 200), seconds=rng.randrange(3600))
        stan = f"{n + 10:06d}"
        roll = rng.random()
        card = rng.choice(cards)
        where = rng.choice(shops)
        if roll < 0.6 or not approved:
            amount = rng.choice((0, 1, rng.randrange(1, 50_000), rng.randrange(50_000, 600_000)))
            pan = card.pan if rng.random() > 0.02 else pan_of("94100000", 99)  # an unknown card now and then
            req, fields = purchase(pan, amount, merchant=where, stan=stan, expiry=rng.choice(("", "2912") * 9 + ("2001",)))
            what = f"purchase {amount} at {where.mid.strip()}"
        elif roll < 0.75:
            pan, _, amount, rrn, at = rng.choice(approved)
            part = rng.randrange(1, amount + 1)
            req, fields = refund(pan, part, rrn, merchant=at, stan=stan)
            what = f"refund {part} of {rrn}"
        elif roll < 0.9:
            pan, original_stan, amount, _, at = rng.choice(approved)
            replacement = rng.choice((None, rng.randrange(0, amount + 1)))
            req, fields = reversal(pan, amount, original_stan, merchant=at, stan=stan, replacement=replacement)
            what = f"reversal of {original_stan} leaving {replacement}"
        else:
            req, fields = balance(card.pan, stan=stan)
            what = "balance"
        decision = decide(req, fields, view, RULES, now)
        committed(view, req, decision)
        if req.kind.name == "PURCHASE" and decision.response.rc is Rc.APPROVED:
            approved.append((req.pan, stan, req.amount, decision.response.rrn, where))
        lines.append(f"{n} {what}: {decision!r}")
        lines.extend(on_the_wire(rng, fields, decision))
    return lines


def main() -> None:
    seed, count = int(sys.argv[1]), int(sys.argv[2])
    loaded = compiled.status()
    print(f"compiled {sum(loaded.values())}/{len(loaded)}")
    for line in history(seed, count):
        print(line)


if __name__ == "__main__":
    main()
