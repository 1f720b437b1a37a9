"""The replayed day's report against the published figures, and its plots (docs/replay.md).

After `eum replay` has driven the day, the ledger says what happened: `eum report daily`'s
figures (switch/ledger/reports.py, on one snapshot, with the whole-ledger proof). This module
puts them beside what the city published for that day, times the scale:

- the comparison: sign-ups, charged and spent, each published, replayed and the difference;
  the replay passes when each is within the scenario's tolerance (1 %);
- the agreement: the replay's own approvals by kind against the ledger's postings of the day,
  which must be equal (an approval the ledger lacks, or a posting nobody was told of, is a bug);
- what the city does not publish but the ledger shows: payments, voids and refunds, cashback by
  funder, merchant fees and fee support by fee tier, members at the day's end;
- three PNG plots: hourly volume by kind, cashback by funder, answers by response code.

`<out>/replay-<day>.json` holds all of it, `<out>/replay-<day>.md` the tables (docs/replay.md
quotes one), `<out>/report/` the day's report as CSV (`eum report daily --out`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from switch.ledger.reports import Period, Report, build_report, kst_day, table
from switch.ledger.store import connect, locate
from switch.rules.fees import tier_for
from switch.rules.policy import Rules, default_config_dir, load_rules

from .replay import (AUTO_CHARGE, CHARGE, CHARGE_KINDS, FIRST_CHARGE, KINDS, PURCHASE, REFUND, SIGNUP, VOID, Plan,
                     ReplayError, ReplayOptions, ReplayRun, ReplayScenario, run_replay)

EXIT_OK, EXIT_MISMATCH, EXIT_ERROR = 0, 1, 2
KIND_LABELS = {SIGNUP: "sign-ups", FIRST_CHARGE: "first charges", CHARGE: "charges", AUTO_CHARGE: "auto-charges",
               PURCHASE: "payments", VOID: "voids", REFUND: "refunds"}
AUTO = "charge:auto"  # day_postings' key for the charges the switch's auto-charge made


# ---------------------------------------------------------------------------- the figures

@dataclass(frozen=True)
class Compared:
    """One published figure: the city's, times the scale, the ledger's, and whether it matches."""

    figure: str
    published: int
    scaled: int
    replayed: int
    tolerance_pct: float

    @property
    def difference(self) -> int:
        return self.replayed - self.scaled

    @property
    def difference_pct(self) -> float:
        return 100.0 * self.difference / self.scaled if self.scaled else 0.0

    @property
    def ok(self) -> bool:
        return abs(self.difference_pct) <= self.tolerance_pct

    def to_json(self) -> dict[str, Any]:
        return {"figure": self.figure, "published": self.published, "scaled": self.scaled,
                "replayed": self.replayed, "difference": self.difference,
                "difference_pct": round(self.difference_pct, 4), "ok": self.ok}


@dataclass(frozen=True)
class Agreement:
    """The replay's count (or won) of approvals of one kind, and the ledger's postings of it."""

    what: str
    replay: int
    ledger: int

    @property
    def equal(self) -> bool:
        return self.replay == self.ledger


def day_postings(db: Any, day: str) -> dict[str, tuple[int, int]]:
    """kind → (postings, won) posted on the KST day, read-only, and AUTO: the charges among
    them that were auto-charges. The report has no count of refunds, reversals or charges;
    this is the one question it does not answer."""
    conn = connect(db, readonly=True)
    try:
        conn.create_function("kst_day", 1, kst_day, deterministic=True)
        lo = (Period.day(day).first - timedelta(days=1)).isoformat()
        hi = (Period.day(day).first + timedelta(days=2)).isoformat()
        rows = conn.execute("SELECT kind, COUNT(*), COALESCE(SUM(amount), 0) FROM postings "
                            "WHERE at >= ? AND at < ? AND kst_day(at) = ? GROUP BY kind", (lo, hi, day)).fetchall()
        auto = conn.execute("SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM postings WHERE kind = 'charge' "
                            "AND at >= ? AND at < ? AND kst_day(at) = ? AND json_extract(detail, '$.auto') = 1",
                            (lo, hi, day)).fetchone()
    finally:
        conn.close()
    return {**{kind: (n, won) for kind, n, won in rows}, AUTO: (auto[0], auto[1])}


@dataclass
class DayResult:
    """Everything the replay says about its day (the JSON file, the tables, the plots)."""

    run: ReplayRun
    scenario: ReplayScenario
    report: Report
    compared: list[Compared]
    agreement: list[Agreement]
    postings: dict[str, tuple[int, int]]
    fees_by_tier: dict[str, dict[str, int]]
    cashback_by_funder: dict[str, int]
    plots: dict[str, str]
    speed: float
    report_dir: str = ""

    @property
    def plan(self) -> Plan:
        return self.run.plan

    @property
    def verified(self) -> bool:
        return self.report.verified is not None and self.report.verified.ok

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.compared) and all(a.equal for a in self.agreement) and self.report.ok \
            and self.verified

    def to_json(self) -> dict[str, Any]:
        plan, report = self.plan, self.report
        return {
            "scenario": plan.scenario, "day": plan.day.isoformat(), "scale": plan.scale, "speed": self.speed,
            "seed": plan.seed, "plan_digest": plan.digest(), "seconds": self.run.seconds,
            "plan": {"members_at_start": plan.existing, "merchants": len(plan.merchants),
                     "bank_terminals": len(plan.banks), "events": plan.counts()},
            "tally": self.run.tally.to_json(), "signup_errors": self.run.signup_errors,
            "comparison": [c.to_json() for c in self.compared],
            "agreement": [{"what": a.what, "replay": a.replay, "ledger": a.ledger, "equal": a.equal}
                          for a in self.agreement],
            "ledger": {"members": report.members, "new_members": report.new_members,
                       "purchases": sum(p.purchases for p in report.programs),
                       "spent_gross": sum(p.spent_gross for p in report.programs),
                       "refunds_reversals": sum(p.undone for p in report.programs),
                       "spent": report.city.spent, "charged": report.city.issued,
                       "cashback_by_funder": self.cashback_by_funder, "cashback_total": report.city.cashback,
                       "fees_by_tier": self.fees_by_tier, "postings": {k: list(v) for k, v in self.postings.items()}},
            "reconciled": report.ok, "verified": self.verified, "passed": self.passed, "plots": self.plots,
        }


def judge(run: ReplayRun, scenario: ReplayScenario, rules: Rules, *, speed: float) -> DayResult:
    """The day's report (with the ledger proof) and its comparisons."""
    plan = run.plan
    db = locate(run.data_dir, "sqlite")
    day = plan.day.isoformat()
    report = build_report(db, Period.day(day), verify=True)
    pub, t = scenario.published, plan.targets
    compared = [Compared("sign-ups (new members)", pub.signups, t.signups, report.new_members, pub.tolerance_pct),
                Compared("charged (won)", pub.charged_won, t.charged_won, report.city.issued, pub.tolerance_pct),
                Compared("spent (won)", pub.spent_won, t.spent_won, report.city.spent, pub.tolerance_pct)]
    postings = day_postings(db, day)
    tally = run.tally
    n = lambda kind: postings.get(kind, (0, 0))  # noqa: E731
    agreement = [
        Agreement("sign-ups = new members", tally.approved[SIGNUP], report.new_members),
        Agreement("payments = purchase postings", tally.approved[PURCHASE], n("purchase")[0]),
        Agreement("payments won = purchase postings won", tally.approved_won[PURCHASE], n("purchase")[1]),
        Agreement("voids = reversal postings", tally.approved[VOID], n("reversal")[0]),
        Agreement("refunds = refund postings", tally.approved[REFUND], n("refund")[0]),
        Agreement("charges = charge postings", sum(tally.approved[k] for k in CHARGE_KINDS), n("charge")[0]),
        Agreement("charges won = issued", sum(tally.approved_won[k] for k in CHARGE_KINDS), report.city.issued),
        Agreement("auto-charges = auto-charge postings", tally.approved[AUTO_CHARGE], n(AUTO)[0]),
    ]
    cashback: dict[str, int] = defaultdict(int)
    for p in report.programs:
        for funder, won in p.cashback.items():
            cashback[funder] += won
    return DayResult(run, scenario, report, compared, agreement, postings, fees_by_tier(report, plan, rules),
                     {f: cashback[f] for f in report.cashback_funders}, {}, speed)


def fees_by_tier(report: Report, plan: Plan, rules: Rules) -> dict[str, dict[str, int]]:
    """Net sales, fee, fee support (by funder and in total) and what merchants pay, by fee tier."""
    sales = {m.mid: m.annual_sales for m in plan.merchants}
    out: dict[str, dict[str, int]] = {}
    for tier in rules.fees.tiers:
        out[tier.id] = {"merchants": 0, "net_sales": 0, "fee": 0, "support": 0, "merchant_fee": 0}
    for m in report.merchants:
        if m.mid not in sales:
            continue
        row = out[tier_for(rules.fees.tiers, sales[m.mid])]
        row["merchants"] += 1
        row["net_sales"] += m.net_sales
        row["fee"] += m.fee
        row["support"] += m.support_total
        row["merchant_fee"] += m.merchant_fee
        for funder, won in m.support.items():
            row[f"support_{funder}"] = row.get(f"support_{funder}", 0) + won
    return out


# ---------------------------------------------------------------------------- tables

def _won(value: int) -> str:
    return f"{value:,}"


def _md(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def comparison_rows(result: DayResult) -> list[list[str]]:
    return [[c.figure, _won(c.published), _won(c.scaled), _won(c.replayed), f"{c.difference:+,}",
             f"{c.difference_pct:+.3f} %", "yes" if c.ok else "NO"] for c in result.compared]


COMPARISON_HEADER = ["figure", "published (city)", "× scale", "replayed (ledger)", "difference", "difference %",
                     "within 1 %"]


def markdown(result: DayResult) -> str:
    """The day's tables in Markdown (docs/replay.md quotes a full-scale one)."""
    plan, report, tally = result.plan, result.report, result.run.tally
    rate = 100.0 * report.city.cashback / report.city.spent if report.city.spent else 0.0
    parts = [
        f"Replay of {plan.day} (scenario `{plan.scenario}`), scale {plan.scale:g}, speed {result.speed:g}, "
        f"seed {plan.seed}; plan `{plan.digest()[:12]}`; {result.run.seconds['total']:,.0f} s in all "
        f"(the day {result.run.seconds.get('day', 0):,.0f} s).",
        "",
        _md(COMPARISON_HEADER, comparison_rows(result)),
        "",
        "The replay's approvals and the ledger's postings of the day:",
        "",
        _md(["what", "replay", "ledger", "equal"],
            [[a.what, _won(a.replay), _won(a.ledger), "yes" if a.equal else "NO"] for a in result.agreement]),
        "",
        f"Reconciled: {'yes' if report.ok else 'NO'} ({len(report.checks):,} checks); ledger verified: "
        f"{'yes' if result.verified else 'NO'}.",
        "",
        "What the city does not publish:",
        "",
        _md(["figure", "replayed (ledger)"], [
            ["payments", _won(sum(p.purchases for p in report.programs))],
            ["payments, gross (won)", _won(sum(p.spent_gross for p in report.programs))],
            ["voids, refunds (won)", _won(sum(p.undone for p in report.programs))],
            [f"charges (of which auto-charges, {plan.auto_mode})",
             f"{_won(sum(tally.approved[k] for k in CHARGE_KINDS))} ({_won(tally.approved[AUTO_CHARGE])})"],
            ["cashback (won)", f"{_won(report.city.cashback)} ({rate:.2f} % of spent)"],
            *[[f"cashback: {funder}", _won(won)] for funder, won in result.cashback_by_funder.items()],
            ["members at the day's end", _won(report.members)],
        ]),
        "",
        "Merchant fees and fee support by fee tier (won):",
        "",
        _md(["tier", "merchants paid", "net sales", "fee", "support", "merchants pay", "merchants pay, bp"],
            [[tier, _won(r["merchants"]), _won(r["net_sales"]), _won(r["fee"]), _won(r["support"]),
              _won(r["merchant_fee"]), f"{1e4 * r['merchant_fee'] / r['net_sales']:.1f}" if r["net_sales"] else "—"]
             for tier, r in result.fees_by_tier.items()]),
    ]
    if result.plots:
        parts += ["", "Plots: " + ", ".join(f"`{Path(p).name}`" for p in result.plots.values())]
    return "\n".join(parts) + "\n"


def print_summary(result: DayResult, out: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out or sys.stdout, highlight=False, width=None if (out or sys.stdout).isatty() else 160)
    plan = result.plan
    console.print(f"[bold]eum report daily --date {plan.day}[/bold] (the programs and city tables; every table as "
                  f"CSV in {result.report_dir})")
    for name in ("programs", "city"):
        header, rows = table(result.report, name, totals=True)
        t = Table()
        for col in header:
            t.add_column(col.replace("_", " "), justify="left" if col in ("program", "date") else "right")
        for row in rows:
            t.add_row(*(f"{v:,}" if isinstance(v, int) else str(v) for v in row))
        console.print(t)
    t = Table(title=f"Replay of {plan.day} against the published figures (× {plan.scale:g})")
    for col in COMPARISON_HEADER:
        t.add_column(col, justify="left" if col == "figure" else "right")
    for row in comparison_rows(result):
        t.add_row(*row)
    console.print(t)
    t = Table(title="The replay's approvals and the ledger's postings")
    for col in ("what", "replay", "ledger", "equal"):
        t.add_column(col, justify="left" if col == "what" else "right")
    for a in result.agreement:
        t.add_row(a.what, _won(a.replay), _won(a.ledger), "yes" if a.equal else "[red]NO[/red]")
    console.print(t)
    console.print(markdown(result).split("What the city does not publish:", 1)[1])
    verdict = "[green]passed[/green]" if result.passed else "[red]FAILED[/red]"
    console.print(f"replay {verdict}; {result.run.seconds['total']:,.1f} s ({', '.join(f'{k} {v:,.1f} s' for k, v in result.run.seconds.items() if k != 'total')})")


# ---------------------------------------------------------------------------- plots

def write_plots(result: DayResult, out: Path) -> dict[str, str]:
    """Hourly volume by kind, cashback by funder, answers by response code: PNG files in `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    thousands = FuncFormatter(lambda x, _: f"{x:,.0f}")
    day, tally = result.plan.day.isoformat(), result.run.tally
    paths = {}
    hours = list(range(24))

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), dpi=110, sharex=True)
    base = [0] * 24
    for kind in (PURCHASE, CHARGE, AUTO_CHARGE, FIRST_CHARGE):
        values = tally.hourly.get(kind, [0] * 24)
        top.bar(hours, values, bottom=base, label=KIND_LABELS[kind])
        base = [a + b for a, b in zip(base, values)]
    top.set_ylabel("approved per hour")
    top.yaxis.set_major_formatter(thousands)
    top.legend(fontsize=8)
    top.set_title(f"Replay of {day}: hourly volume by kind (scale {result.plan.scale:g}, the plan's hours)")
    for kind in (SIGNUP, VOID, REFUND):
        bottom.plot(hours, tally.hourly.get(kind, [0] * 24), marker="o", label=KIND_LABELS[kind])
    bottom.set_xlabel("hour (KST)")
    bottom.set_ylabel("approved per hour")
    bottom.set_xticks(hours)
    bottom.legend(fontsize=8)
    paths["hourly"] = _save(fig, out / f"{day}-hourly.png", plt)

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    funders = list(result.cashback_by_funder)
    ax.barh(funders, [result.cashback_by_funder[f] for f in funders])
    ax.invert_yaxis()
    ax.set_xlabel("net cashback (won)")
    ax.xaxis.set_major_formatter(thousands)
    ax.set_xlim(0, max(result.cashback_by_funder.values(), default=0) * 1.25 or 1)
    ax.set_title(f"Replay of {day}: cashback by funder")
    for i, f in enumerate(funders):
        ax.text(result.cashback_by_funder[f], i, f" {result.cashback_by_funder[f]:,}", va="center", fontsize=8)
    paths["cashback"] = _save(fig, out / f"{day}-cashback.png", plt)

    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    kinds = [k for k in KINDS if tally.by_rc.get(k)]
    codes = sorted({rc for k in kinds for rc in tally.by_rc[k]})
    width = 0.8 / max(1, len(codes))
    for j, rc in enumerate(codes):
        ax.bar([i + j * width for i in range(len(kinds))], [tally.by_rc[k].get(rc, 0) for k in kinds], width,
               label=f"DE39 {rc}" if rc.isdigit() else rc)
    ax.set_xticks([i + width * (len(codes) - 1) / 2 for i in range(len(kinds))])
    ax.set_xticklabels([KIND_LABELS[k] for k in kinds], rotation=15, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("answers")
    ax.legend(fontsize=8)
    ax.set_title(f"Replay of {day}: answers by response code")
    paths["approvals"] = _save(fig, out / f"{day}-approvals.png", plt)
    return paths


def _save(fig: Any, path: Path, plt: Any) -> str:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


# ---------------------------------------------------------------------------- the command line

def finish(run: ReplayRun, options: ReplayOptions, scenario: ReplayScenario, rules: Rules) -> DayResult:
    """Judge the run, write the JSON, the Markdown, the report's CSV files and the plots."""
    from switch.cli.report import write_csv_files

    result = judge(run, scenario, rules, speed=options.speed)
    out = options.out_dir
    out.mkdir(parents=True, exist_ok=True)
    day = run.plan.day.isoformat()
    write_csv_files(result.report, out / "report")
    result.plots.update(write_plots(result, out))
    result.report_dir = str(out / "report")
    (out / f"replay-{day}.json").write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    (out / f"replay-{day}.md").write_text(markdown(result), encoding="utf-8")
    return result


def report_cli(run: ReplayRun, options: ReplayOptions, scenario: ReplayScenario) -> int:
    try:
        result = finish(run, options, scenario, load_rules(default_config_dir()))
    except (ValueError, OSError) as exc:
        print(f"eum replay: the report failed: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print_summary(result)
    print(f"written: {options.out_dir / f'replay-{run.plan.day}.json'}, .md and the plots", file=sys.stderr)
    return EXIT_OK if result.passed else EXIT_MISMATCH


POLICY_HEADER = ["day", "period", "rule", "spent", "cashback", "cashback % of spent", "cashback by funder",
                 "fee", "fee support", "merchants pay", "merchants pay, bp"]


def policy_row(result: DayResult, period: Any) -> list[str]:
    r = result.report
    fee = sum(t["fee"] for t in result.fees_by_tier.values())
    support = sum(t["support"] for t in result.fees_by_tier.values())
    pays = sum(t["merchant_fee"] for t in result.fees_by_tier.values())
    spent = r.city.spent
    return [period.day.isoformat(), period.period, period.rule, _won(spent), _won(r.city.cashback),
            f"{100 * r.city.cashback / spent:.2f}" if spent else "—",
            ", ".join(f"{f} {_won(w)}" for f, w in result.cashback_by_funder.items()), _won(fee), _won(support),
            _won(pays), f"{1e4 * pays / spent:.1f}" if spent else "—"]


def tier_rows(results: list[tuple[Any, DayResult]]) -> tuple[list[str], list[list[str]]]:
    """Merchants' fee in bp of net sales, by tier and day: the fee schedules and support move it."""
    tiers = list(results[0][1].fees_by_tier) if results else []
    header = ["day", *tiers]
    rows = []
    for period, result in results:
        cells = []
        for tier in tiers:
            t = result.fees_by_tier[tier]
            cells.append(f"{1e4 * t['fee'] / t['net_sales']:.0f} − {1e4 * t['support'] / t['net_sales']:.0f}"
                         if t["net_sales"] else "—")
        rows.append([period.day.isoformat(), *cells])
    return header, rows


def policy_periods_cli(args: argparse.Namespace, scenario: ReplayScenario) -> int:
    """`eum replay --policy-periods`: the scenario's day of each policy period, one after the
    other, each in <data-dir>/<day>; their table in <out>/policy-periods.md and .json."""
    if not scenario.policy_periods:
        print(f"eum replay: scenario {scenario.name} lists no policy_periods", file=sys.stderr)
        return EXIT_ERROR
    base = args.data_dir or Path("var/replay-policy-periods")
    out = args.out or base / "report"
    rules = load_rules(default_config_dir())
    results: list[tuple[Any, DayResult]] = []
    try:
        for period in scenario.policy_periods:
            options = ReplayOptions(day=period.day, scale=args.scale, speed=args.speed, seed=args.seed,
                                    scenario=args.scenario, data_dir=base / period.day.isoformat(),
                                    out=out / period.day.isoformat(), progress=not args.no_progress)
            result = finish(run_replay(options), options, scenario, rules)
            results.append((period, result))
            print(f"{period.day}: {'passed' if result.passed else 'FAILED'}", file=sys.stderr)
    except (ReplayError, ValueError, OSError) as exc:
        print(f"eum replay: {exc}", file=sys.stderr)
        return EXIT_ERROR
    header, rows = tier_rows(results)
    text = "\n".join([
        f"The same day's traffic (scenario `{scenario.name}`, scale {args.scale:g}, seed {args.seed}) on a day of "
        "each policy period:", "",
        _md(POLICY_HEADER, [policy_row(r, p) for p, r in results]), "",
        "Fee and fee support by fee tier, in bp of the tier's net sales (fee − support):", "",
        _md(header, rows)]) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "policy-periods.md").write_text(text, encoding="utf-8")
    (out / "policy-periods.json").write_text(json.dumps([r.to_json() for _, r in results], indent=2) + "\n",
                                             encoding="utf-8")
    print(text)
    return EXIT_OK if all(r.passed for _, r in results) else EXIT_MISMATCH
