"""How long one fold of the balances and the card postings takes (SQLite, this machine).

    python benchmarks/fold_time.py [--cards 30000] [--postings 150000] [--per-fold 2400] [--folds 8] [--out-dir DIR]

A ledger of `--postings` purchases on `--cards` cards at 200 merchants (five entries each: card
cash and cashback, merchant payable, fee income, a funder), folded once; then `--folds` times:
`--per-fold` more purchases committed, and one fold of them timed piece by piece, as the group
commit runs it once a second (switch/ledger/sqlite.py, fold_accounts): the balances' upsert,
the card postings' insert, and the COMMIT (the WAL written and fsynced). 2,400 purchases are
about one second of the closed loop on the AMD kind. The medians are written to
<out-dir>/<date>-<host>-fold-time.json. docs/performance.md, "A card's postings folded with the
balances (kept)".
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench import result_stem  # noqa: E402
from switch.ledger.sqlite import _FOLD, _FOLD_CARD_POSTINGS, connect_writer, fold_now  # noqa: E402
from switch.ledger.store import open_store  # noqa: E402

MERCHANTS = 200


def purchases(rnd: random.Random, first_id: int, n: int, cards: int) -> tuple[list[tuple], list[tuple]]:
    """(posting rows, entry rows) of n purchases from posting id `first_id`."""
    postings, entries = [], []
    for pid in range(first_id, first_id + n):
        card, merchant = rnd.randrange(1, cards + 1), rnd.randrange(MERCHANTS)
        postings.append((pid, "purchase", "2025-10-15T12:00:00+09:00", card, 1_000))
        entries += [(pid, f"card:{card}:cash", -1_000), (pid, f"merchant:M{merchant:04d}:payable", 990),
                    (pid, "fee_income", 10), (pid, f"card:{card}:cashback", 15), (pid, "cashback_expense:city", -15)]
    return postings, entries


def run(cards: int, postings: int, per_fold: int, folds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        conn = connect_writer(open_store(Path(tmp)))
        rnd = random.Random(1)
        next_id = 1

        def commit(n: int) -> None:
            nonlocal next_id
            p, e = purchases(rnd, next_id, n, cards)
            next_id += n
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO postings(id, kind, at, card_id, amount) VALUES (?,?,?,?,?)", p)
            conn.executemany("INSERT INTO entries(posting_id, account, amount) VALUES (?,?,?)", e)
            conn.execute("COMMIT")

        commit(postings)
        fold_now(conn)
        pieces: dict[str, list[float]] = {"balances_ms": [], "card_postings_ms": [], "commit_ms": []}
        for _ in range(folds):
            commit(per_fold)
            mark = conn.execute("SELECT entries_rowid FROM accounts_folded").fetchone()[0]
            last = conn.execute("SELECT MAX(rowid) FROM entries").fetchone()[0]
            conn.execute("BEGIN IMMEDIATE")
            t0 = time.perf_counter()
            conn.execute(_FOLD, (mark, last))
            t1 = time.perf_counter()
            conn.execute(_FOLD_CARD_POSTINGS, (mark, last))
            t2 = time.perf_counter()
            conn.execute("UPDATE accounts_folded SET entries_rowid = ?", (last,))
            conn.execute("COMMIT")
            t3 = time.perf_counter()
            pieces["balances_ms"].append((t1 - t0) * 1e3)
            pieces["card_postings_ms"].append((t2 - t1) * 1e3)
            pieces["commit_ms"].append((t3 - t2) * 1e3)
        rows = conn.execute("SELECT COUNT(*) FROM card_postings").fetchone()[0]
        conn.close()
    if rows != postings + per_fold * folds:
        raise SystemExit(f"fold_time: card_postings holds {rows} rows, not {postings + per_fold * folds}")
    return {k: round(statistics.median(v), 2) for k, v in pieces.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cards", type=int, default=30_000)
    ap.add_argument("--postings", type=int, default=150_000)
    ap.add_argument("--per-fold", type=int, default=2_400)
    ap.add_argument("--folds", type=int, default=8)
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    median = run(args.cards, args.postings, args.per_fold, args.folds)
    out = args.out_dir / f"{result_stem(quick=False)}-fold-time.json"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cards": args.cards, "postings": args.postings, "per_fold": args.per_fold,
                               "folds": args.folds, "median": median}, indent=2) + "\n")
    print(json.dumps(median), f"\nwritten: {out}")


if __name__ == "__main__":
    main()
