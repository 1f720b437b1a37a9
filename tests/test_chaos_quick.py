"""The chaos campaign (benchmarks/chaos.py, docs/reliability.md "Chaos campaign"): its quick form
run as an operator runs it, and the parts that decide its verdict checked on their own.

- `eum chaos --quick` as a subprocess (real `eum switch` and `eum hsm` processes on 127.0.0.1,
  killed, stopped and starved by PID): exit 0 and, in the JSON it wrote, every experiment that
  ran with 0 lost, 0 double-posted, 0 unanswered, 0 approvals without a valid MAC, verify ok,
  every fault recovered from, and as many approvals in the ledger as the clients received.
- The ledger check counts what it is there to count (an approval the ledger does not hold, a
  posting no message answers, a request left without an answer) and excuses exactly the
  requests whose switch process the experiment killed.
- The mutator is seeded, cuts at field boundaries, and owes an answer exactly for frames that
  are whole and start with a request MTI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.chaos import FAILURE_KEYS, PLANS, Run, ledger_figures
from benchmarks.chaos_load import Exchange, Target
from benchmarks.chaos_mutate import Mutator, answerable_mti, layout
from switch.ledger.sqlite import SqliteReader
from switch.wire.codec import load_dialect
from terminal_sim.terminal import Terminal

ROOT = Path(__file__).resolve().parents[1]
QUICK_TIMEOUT_S = 600  # bounds a failure only: the quick form takes about a minute here
DIALECT = load_dialect("default")


def test_quick_campaign_loses_nothing_and_answers_everything(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "switch.cli.main", "chaos", "--quick", "--out-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=QUICK_TIMEOUT_S)
    written = sorted(p.name for p in tmp_path.glob("*-chaos-quick.*"))
    assert [Path(n).suffix for n in written] == [".json", ".md"], (written, done.stderr[-2000:])
    result = json.loads((tmp_path / written[0]).read_text())
    assert done.returncode == 0, (done.stderr[-2000:], json.dumps(result.get("experiments"), indent=1)[-4000:])
    assert result["ok"] is True
    assert result["totals"] == {"lost": 0, "double_posted": 0, "unanswered": 0, "approvals_without_mac": 0,
                                "contradicted": 0, "inconsistent_repeats": 0, "verify_ok": True}
    exps = result["experiments"]
    assert list(exps) == ["kill", "hsm", "disk", "mutation", "junk"]
    ran = {name: e for name, e in exps.items() if not e.get("skipped")}
    assert set(ran) >= {"kill", "hsm", "mutation", "junk"}  # only the disk may be skipped (no mount namespace)
    for name, e in ran.items():
        assert {k: e[k] for k in ("lost", "double_posted", "unanswered", "approvals_without_mac")} == \
            {"lost": 0, "double_posted": 0, "unanswered": 0, "approvals_without_mac": 0}, name
        assert e["verify"]["ok"] is True, (name, e["verify"])
        assert e["approvals_in_ledger"] == e["approvals_received"] > 0, name
        assert e["posted_unseen"] == 0 and e["unresolved"] == 0, name
        assert all(f["recovery_s"] is not None for f in e["faults"]), (name, e["faults"])
    quick = PLANS["quick"]
    assert [f["what"] for f in ran["kill"]["faults"]] == ["switch SIGKILL"] * quick.kills
    assert ran["kill"]["repeats"]["stored"] + ran["kill"]["repeats"]["fresh"] > 0  # clients repeated after kills
    assert [f["what"] for f in ran["hsm"]["faults"]] == ["HSM SIGKILL", f"HSM SIGSTOP {quick.hsm_stop_s:g} s"]
    assert ran["hsm"]["answers_during_fault"].get("91", 0) > 0  # the HSM's absence was seen, and answered
    assert ran["mutation"]["mutation"]["frames"] == quick.mutated_frames
    assert ran["mutation"]["mutation"]["unanswered_owed"] == 0
    assert ran["junk"]["junk"]["open_max"] >= quick.idle_junk
    if exps["disk"].get("skipped"):
        assert exps["disk"]["skipped"].strip(), "a skipped experiment says why"
    else:
        assert ran["disk"]["answers_during_fault"].get("96", 0) > 0  # the full disk was met, and answered 96
    md = (tmp_path / written[1]).read_text()
    assert "Result: **passed**" in md
    assert "| kill | " in md and "| junk | " in md


def _exchange(key: tuple[str, str, str], *, rc: str | None, rrn: str | None = None, ending: str = "answered",
              incarnation: int = 0, sent_at: float = 1.0, ended_at: float = 2.0) -> Exchange:
    return Exchange(key[0], key, "0200", "purchase", 0, False, 1_000, incarnation, "load", sent_at,
                    datetime.now(timezone.utc), ended_at=ended_at, ending=ending, rc=rc, rrn=rrn)


async def test_ledger_figures_count_a_lost_approval_an_orphan_posting_and_an_unanswered_request(switch_env):
    """One real approval; a claimed approval the ledger never saw (lost); an operator's charge
    made during the run (a posting no message answers: counted double-posted); a request that
    timed out (unanswered); one dropped by a killed switch (excused)."""
    db = switch_env.data_dir / "ledger.sqlite3"
    reader = SqliteReader(db)
    baseline = reader.max_posting_id()
    reader.close()
    client, term = await switch_env.signed_on("T0000001", "NAMDONG01")
    request = term.purchase(switch_env.cards["namdong"]["pan"], 1_000)
    answer = await client.request(request)
    await client.close()
    assert answer["39"] == "00"
    await switch_env.op("card-charge", pan=switch_env.cards["incheon"]["pan"], amount=10_000)

    target = Target(port=switch_env.port)
    target.kill(lambda: None)  # incarnation 0 "killed" at this instant
    killed = target.killed_at[0]
    run = Run("unit", target)
    real = ("T0000001", request["11"], request["7"])
    run.log += [
        _exchange(real, rc="00", rrn=answer["37"]),
        _exchange(("T0000001", "999999", "0101000000"), rc="00", rrn="000000000999"),      # lost
        _exchange(("T0000001", "999998", "0101000000"), rc=None, ending="timeout",
                  sent_at=killed - 2, ended_at=killed - 1),                                 # unanswered
        _exchange(("T0000001", "999997", "0101000000"), rc=None, ending="dropped",
                  sent_at=killed - 1, ended_at=killed + 0.01),                              # excused: killed
        _exchange(("T0000001", "999996", "0101000000"), rc=None, ending="dropped", incarnation=1,
                  sent_at=killed + 1, ended_at=killed + 2),                                 # unanswered: alive
    ]
    f = ledger_figures(run, db, baseline)
    assert {k: f[k] for k in (*FAILURE_KEYS, "approvals_received", "approvals_in_ledger", "excused_by_kill",
                              "requests", "unresolved")} == {
        "lost": 1, "double_posted": 1, "unanswered": 2, "approvals_without_mac": 0, "contradicted": 0,
        "inconsistent_repeats": 0, "approvals_received": 2, "approvals_in_ledger": 1, "excused_by_kill": 1,
        "requests": 5, "unresolved": 3}
    assert f["double_posted_ids"] == [baseline + 2]  # the charge: the purchase is baseline + 1


def test_a_kill_excuses_only_connections_to_the_killed_process_that_dropped_after_it() -> None:
    target = Target(port=1)
    target.kill(lambda: None)
    t = target.killed_at[0]
    assert target.incarnation == 1
    assert target.excused(_exchange(("T", "1", "d"), rc=None, ending="dropped", sent_at=t + 0.001, ended_at=t + 0.002))
    assert not target.excused(_exchange(("T", "1", "d"), rc=None, ending="timeout", sent_at=t - 1, ended_at=t + 4))
    assert not target.excused(_exchange(("T", "1", "d"), rc=None, ending="dropped", sent_at=t - 2, ended_at=t - 1))
    assert not target.excused(_exchange(("T", "1", "d"), rc=None, ending="dropped", incarnation=1,
                                        sent_at=t + 1, ended_at=t + 2))


def test_answerable_mti_is_four_digits_with_an_even_third() -> None:
    assert [answerable_mti(m) for m in (b"0200", b"0800xyz", b"0420", b"0210", b"0230", b"02A0", b"020", b"\x00200")] \
        == [True, True, True, False, False, False, False, False]


def test_the_mutator_is_seeded_and_owes_answers_only_for_whole_frames_with_a_request_mti() -> None:
    term = Terminal("TMUT0001", "EUM000000000001", now=lambda: datetime(2026, 11, 28, 1, 2, 3, tzinfo=timezone.utc))
    bases = [term.purchase("9410100000000011", 1_000 + i, expiry="3111") for i in range(300)]
    first = [Mutator(DIALECT, seed=7).mutate(b) for b in bases[:1]]
    again = [Mutator(DIALECT, seed=7).mutate(b) for b in bases[:1]]
    assert first == again
    one = Mutator(DIALECT, seed=3)
    frames = [one.mutate(b) for b in bases]
    assert {m.kind for m in frames} == {"truncate", "bitmap", "field_bytes", "field_values", "field_length",
                                        "garbage", "header_lie"}
    for m in frames:
        whole = DIALECT.framing.decode_length(m.wire[:2]) == len(m.payload)
        assert m.wire[2:] == m.payload
        assert whole == (m.kind != "header_lie"), m.kind
        assert m.answer_owed == (whole and answerable_mti(m.payload)), m.kind
    for base, m in zip(bases, frames):
        payload, spans = layout(base, DIALECT)
        if m.kind == "truncate":  # a prefix of the valid message, ending where an element ends
            assert m.payload == payload[: len(m.payload)] and len(m.payload) in {s.end for s in spans}
            assert m.answer_owed  # it keeps its MTI
        if m.kind in ("field_values", "field_bytes"):
            assert len(m.payload) == len(payload) and m.payload[:4] == b"0200"
        if m.kind == "garbage":
            assert not m.answer_owed
