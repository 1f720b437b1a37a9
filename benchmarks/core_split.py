"""Where the plain path's CPU goes, piece by piece: core_bench.py's in-process run of this
tree, with each piece timed by thread CPU (time.thread_time_ns) around it.

    python benchmarks/core_split.py [--rounds 3] [--messages 10000] [--out-dir DIR]

Pieces, in microseconds of thread CPU per answered purchase (the measured pass only, after
the warm-up pass over the same cards):
  decide            the pure decision (switch/authorize/decide.py), called by the engine
  decide.isolated   the same purchases decided again one after another, on the same hot
                    state, after the measured pass (no other work between two decisions)
  apply             the decision's changes applied to the hot state after the commit
  decode, parse     the request's bytes to fields (codec decode_fields), the fields to a
                    Request (parse_request: the record and its idempotency digest)
  describe          the canonical line's description of the request (server `_describe`)
  response_fields   the decision's response to the answer's fields
  encode            the answer's fields to bytes (codec encode_fields, from the Answerer)
  log.canonical     the one log line per message, masked, rendered and queued
  writer.rows       the writer thread turning a group's Commits into rows (group_rows)
  writer.sql.TABLE  a table's rows of a group: its multi-row INSERTs (or executemany);
                    writer.sql.accounts: the balances folded (about once a second, in
                    the group that is committing then: switch/ledger/sqlite.py, fold_accounts)
  writer.commit     COMMIT: the WAL frames written, the fsync, a checkpoint when one is due
  gc                the cyclic collector, wherever it ran (a young collection here is a
                    fraction of a millisecond; `eum switch` freezes its start-up heap, this
                    run does not)
  total             process CPU (user + system, every thread), as core_bench.py reports it
  rows.TABLE        rows written per purchase, by table (not µs)
The rest of `total` is the async shell (engine, server, the writer's hand-off, locks,
futures, the event loop), the load's own coroutines and the kernel's work. The wrapping
costs a few microseconds per message of its own: compare pieces with one another, and
totals only with core_bench.py. Timed by wrapping names the engine, the server, the
answerer, the logs and the writer look up at call time (switch.authorize.engine.decide,
Engine._apply, the server's decode_fields, the writer's commit_group, …): this tree only, no
--base. The median of each piece over the rounds is written to
<out-dir>/<date>-<host>-core-split.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.core_bench import MEASURE, seed_template  # noqa: E402

# Put before core_bench.py's MEASURE `main`: wraps the pieces, and reports them for the
# measured pass only (the counters are zeroed when the measured pass starts).
HOOKS = r'''
import collections as _c, gc as _gc, time as _t
import switch.authorize.engine as _E, switch.ledger.sqlite as _S, switch.ledger.writer as _W
_split = _c.Counter()
_rows = _c.Counter()
def _timed(name, fn):
    def wrapped(*a, **k):
        t0 = _t.thread_time_ns()
        try:
            return fn(*a, **k)
        finally:
            _split[name] += _t.thread_time_ns() - t0
    return wrapped
import switch.authorize.answer as _A, switch.authorize.server as _SV, switch.ops.logs as _L
_E.decide = _timed("decide", _E.decide)
_E.Engine._apply = _timed("apply", _E.Engine._apply)
_E.response_fields = _timed("response_fields", _E.response_fields)
_SV.decode_fields = _timed("decode", _SV.decode_fields)
_SV.parse_request = _timed("parse", _SV.parse_request)
_SV._describe = _timed("describe", _SV._describe)
_A.encode_fields = _timed("encode", _A.encode_fields)
_L.canonical = _timed("log.canonical", _L.canonical)
_S.group_rows = _timed("writer.rows", _S.group_rows)
_TABLE_OF = {sql: table for table, sql in _S._SQL.items()}
_TABLE_OF_INSERT = {sql.partition(" VALUES ")[0]: table for table, sql in _S._SQL.items()}
_TABLE_OF_INSERT[_S._FOLD] = "accounts"
class _TimedConnection:
    """The writer's connection as the real commit_group uses it, each executemany and the
    COMMIT timed: the transaction itself is the project's, not a copy of it."""
    def __init__(self, conn):
        self._conn = conn
    def executemany(self, sql, rows):
        t1 = _t.thread_time_ns()
        try:
            return self._conn.executemany(sql, rows)
        finally:
            table = _TABLE_OF.get(sql, "other")
            _split["writer.sql." + table] += _t.thread_time_ns() - t1
            _rows[table] += len(rows)
    def execute(self, sql, *args):
        t1 = _t.thread_time_ns()
        try:
            return self._conn.execute(sql, *args)
        finally:
            if sql == "COMMIT":
                _split["writer.commit"] += _t.thread_time_ns() - t1
            elif sql.startswith("INSERT"):  # a multi-row INSERT (switch/ledger/sqlite.py, write_rows)
                table = _TABLE_OF_INSERT.get(sql.partition(" VALUES ")[0].replace(" OR ROLLBACK", ""), "other")
                _split["writer.sql." + table] += _t.thread_time_ns() - t1
                if table != "accounts":  # a fold: one statement of however many accounts moved
                    _rows[table] += sql.count("),(") + 1
    def __getattr__(self, name):
        return getattr(self._conn, name)
    def __setattr__(self, name, value):  # when the connection last folded: kept by the connection itself
        if name == "_conn":
            object.__setattr__(self, name, value)
        else:
            setattr(self._conn, name, value)
_commit_group_of_the_store = _W.commit_group
def _commit_group(conn, commits):
    return _commit_group_of_the_store(_TimedConnection(conn), commits)
_W.commit_group = _commit_group
_gc_started = [0]
def _gc_cb(phase, info):
    if phase == "start":
        _gc_started[0] = _t.thread_time_ns()
    else:
        _split["gc"] += _t.thread_time_ns() - _gc_started[0]
_gc.callbacks.append(_gc_cb)
'''

# After the measured pass: the pieces and rows per purchase, then the same purchases decided
# again in a loop on the same hot state (nothing committed: a decision changes nothing), the
# decision's cost without the rest of the flow between two decisions.
ISOLATED = r'''
        pieces = {k: v / messages / 1000 for k, v in _split.items()}
        rows = {k: round(v / messages, 2) for k, v in _rows.items()}
        from switch.authorize.decide import decide as _decide
        from switch.wire.codec import decode_fields as _decode, parse_request as _parse
        _requests = []
        for _fr in batch:
            _f = _decode(_fr.payload, dialect)
            _requests.append((_parse(_f), _f))
        _state, _rules = core.engine.state, core.engine.rules
        for _r, _f in _requests:
            _state.prefetch(_r, now)
        _t0 = _t.thread_time_ns()
        for _r, _f in _requests:
            _decide(_r, _f, _state, _rules, now)
        pieces["decide.isolated"] = (_t.thread_time_ns() - _t0) / len(_requests) / 1000
'''

MARK = "        c0 = cpu()\n"
REPORT = "        used = cpu() - c0\n"


def script() -> str:
    """core_bench.py's MEASURE with the hooks in, zeroed at the measured pass, reported at its end."""
    if MARK not in MEASURE or REPORT not in MEASURE or "async def main():" not in MEASURE:
        raise SystemExit("core_split: core_bench.py's MEASURE changed shape; update the marks here")
    s = MEASURE.replace("async def main():", HOOKS + "\nasync def main():", 1)
    s = s.replace(MARK, "        _split.clear(); _rows.clear()\n" + MARK, 1)
    return s.replace(REPORT, REPORT + ISOLATED, 1).replace(
        'print(json.dumps({"cpu_us_per_msg"', 'print(json.dumps({"pieces": pieces, "rows": rows, "cpu_us_per_msg"', 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    code = script()
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="eum-core-split-") as tmp:
        template = Path(tmp) / "template"
        template.mkdir()
        seed_template(ROOT, template)
        for r in range(args.rounds):
            done = subprocess.run([sys.executable, "-c", code, str(args.messages), str(args.concurrency), str(template)],
                                  env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                                  cwd=template, timeout=600)
            if done.returncode != 0:
                raise SystemExit(f"core_split: the run failed:\n{done.stderr[-2000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if result["codes"] != ["00"] or not result["verified"]:
                raise SystemExit(f"core_split: the run was not all approved and verified: {result}")
            pieces = {**result["pieces"], "total": result["cpu_us_per_msg"]}
            pieces.update({f"rows.{k}": v for k, v in result["rows"].items()})
            runs.append(pieces)
            print(f"round {r + 1}: total {pieces['total']} us/msg", flush=True)
    names = sorted({k for run in runs for k in run}, key=lambda k: (k.startswith("rows."), k == "total", k))
    medians = {k: round(statistics.median(run.get(k, 0.0) for run in runs), 1) for k in names}
    from benchmarks.bench import describe_machine
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    out = Path(args.out_dir) / f"{date.today().isoformat()}-vm-core-split.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"what": "thread CPU us per plain purchase, by piece (benchmarks/core_split.py)",
                               "machine": describe_machine(), "this_tree": head, "messages": args.messages,
                               "runs": runs, "median": medians}, indent=2) + "\n")
    for k, v in medians.items():
        print(f"{k:28} {v:8.1f}")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
