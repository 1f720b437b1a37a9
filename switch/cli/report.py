"""`eum report daily|month`: the operator's reports (switch/ledger/reports.py) as terminal tables
or CSV. docs/reports.md describes the figures and the options.

The terminal tables fit the width (the terminal's, or 80 columns when the output is not a
terminal): columns are dropped by a fixed priority (`DROP_ORDER`; the figures that settle
a merchant stay) and one line under the table names what was dropped. `--wide` shows
every column; CSV always has every column.

The main CLI (switch/cli/main.py) wires it with:

    from switch.cli.report import add_report_parser
    add_report_parser(sub)   # sub = the subparsers of `eum`; sets func

Exit status: 0 when every figure reconciles with the ledger, 1 when a check fails (the
report says which), 2 for a bad date or a missing ledger ("no ledger at DIR", from main).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from switch.ledger.store import existing
from switch.ledger.reports import TABLES, Period, Report, ReportError, build_report, table

TEXT_COLUMNS = frozenset({"mid", "name", "district", "channel", "program", "date", "account"})
TITLES = {
    "merchants": "Merchant settlement (won)",
    "programs": "Programs (won)",
    "holds": "Pre-authorization holds by program (won)",
    "city": "City figures: subscribers, issued, spent per day (won)",
    "accounts": "Ledger reconciliation by account (won)",
}
WIDTH_DEFAULT = 80  # columns, when the output is not a terminal (a pipe, a file, an e-mail)
WIDTH_WIDE = 1000  # --wide, not a terminal: no column is cut or wrapped

# Which columns go first when a table is too wide: earlier patterns first, detail before
# summary (a `*` pattern never matches a `_total` column); a column matching none is never dropped (mid, gross and net sales, fee, payout;
# a program's members, charged, spent and cashback total; each table's first column).
# docs/reports.md, "Width: which columns the terminal drops".
DROP_ORDER: dict[str, tuple[str, ...]] = {
    "merchants": ("support_*", "name", "channel", "district", "merchant_fee", "refunds", "reversals",
                  "support_total", "purchases"),
    "programs": ("cashback_*", "new_members", "refunds_reversals", "spent_gross", "purchases"),
    "holds": ("completed", "released", "placed", "completed_released", "released_amount"),
    "city": ("new_subscribers",),
    "accounts": ("after_period", "opening"),
}


def add_report_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="daily or monthly settlement and program figures, reconciled with the ledger",
                       description="Reads the ledger read-only (safe while a switch runs). Days are KST calendar "
                                   "days; a posting counts on the day it was posted (docs/reports.md).")
    from switch.cli.main import ledger_flags

    ledger_flags(p, after_subcommand=False)
    rsub = p.add_subparsers(dest="report_kind", required=True)
    daily = rsub.add_parser("daily", help="one KST day")
    daily.add_argument("--date", required=True, help="YYYY-MM-DD (KST)")
    monthly = rsub.add_parser("month", help="one KST calendar month, with the city figures per day")
    monthly.add_argument("--month", required=True, help="YYYY-MM (KST)")
    for sp in (daily, monthly):
        ledger_flags(sp, after_subcommand=True)
        sp.add_argument("--csv", action="store_true", help="write one table as CSV to stdout (see --table)")
        sp.add_argument("--table", choices=TABLES, default="merchants",
                        help="the table --csv writes (default merchants)")
        sp.add_argument("--out", type=Path, help="write every table as CSV into this directory: "
                        "<label>-merchants.csv, -programs.csv, -city.csv, -accounts.csv")
        sp.add_argument("--wide", action="store_true",
                        help="terminal tables: every column, however wide (default: columns are dropped by "
                             "priority to fit the terminal, or 80 columns; the CSV always has them all)")
        sp.add_argument("--verify", action="store_true",
                        help="also run the whole-ledger proof of `eum admin verify` on the same snapshot")
        sp.set_defaults(func=run_report)
    return p


def run_report(args: argparse.Namespace, *, stdout: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    try:
        period = Period.day(args.date) if args.report_kind == "daily" else Period.month(args.month)
        report = build_report(existing(Path(args.data_dir)), period, verify=args.verify)
    except ReportError as exc:
        print(f"eum report: {exc}", file=sys.stderr)
        return 2
    if args.out is not None:
        for path in write_csv_files(report, args.out):
            print(f"written: {path}", file=sys.stderr)
    if args.csv:
        write_csv(report, args.table, out)
    elif args.out is None:
        render(report, out, wide=args.wide)
    if not report.ok:
        for check in report.failed:
            print(f"eum report: does not reconcile: {check.name}: report {check.report:,} != ledger "
                  f"{check.ledger:,}", file=sys.stderr)
        if report.verified is not None and not report.verified.ok:
            print(f"eum report: ledger NOT verified: {report.verified.problem}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------- CSV

def write_csv(report: Report, name: str, out: TextIO) -> None:
    """One table: a header row of snake_case names, then one row per line, plain integers
    (no thousands separators), no total row."""
    header, rows = table(report, name)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)


def csv_text(report: Report, name: str) -> str:
    buf = io.StringIO()
    write_csv(report, name, buf)
    return buf.getvalue()


def write_csv_files(report: Report, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in TABLES:
        path = directory / f"{report.period.label}-{name}.csv"
        path.write_text(csv_text(report, name), encoding="utf-8")
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------- terminal

@dataclass(frozen=True)
class Fitted:
    """A table cut to a width: the kept columns' indexes and the dropped columns' names."""

    kept: tuple[int, ...]
    dropped: tuple[str, ...]


def _label(column: str) -> str:
    return column.replace("_", " ")


def table_width(labels: list[str], cells: list[list[str]], kept: tuple[int, ...]) -> int:
    """Characters a rich `Table` (default box, one space of padding each side) takes for
    these columns: each column its widest cell + 2, plus a border between and around them."""
    widths = [max([len(labels[i]), *(len(row[i]) for row in cells)]) for i in kept]
    return sum(widths) + 3 * len(widths) + 1


def fit_columns(name: str, header: list[str], cells: list[list[str]], width: int) -> Fitted:
    """Drop columns of table `name` in `DROP_ORDER` until it is at most `width` wide (or
    only the columns that are never dropped are left)."""
    labels = [_label(c) for c in header]
    order = [i for pattern in DROP_ORDER.get(name, ()) for i, c in enumerate(header)
             if i > 0 and fnmatch.fnmatchcase(c, pattern) and not ("*" in pattern and c.endswith("_total"))]
    kept = tuple(range(len(header)))
    dropped: list[str] = []
    for i in dict.fromkeys(order):  # a column matched twice goes once, at its first pattern
        if table_width(labels, cells, kept) <= width:
            break
        kept = tuple(k for k in kept if k != i)
        dropped.append(header[i])
    return Fitted(kept, tuple(dropped))


def _cell(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) else str(v)


def render(report: Report, out: TextIO, *, wide: bool = False, width: int | None = None) -> None:
    """The report as tables. `width`: the columns to fit (default: the terminal's, or
    `WIDTH_DEFAULT` when `out` is not a terminal); `wide`: every column, no fitting."""
    from rich.console import Console
    from rich.table import Table

    tty = out.isatty()
    if width is None and not tty:
        width = WIDTH_WIDE if wide else WIDTH_DEFAULT
    console = Console(file=out, highlight=False, width=width)
    fit_to = None if wide else console.width
    p = report.period
    console.print(f"[bold]eum report[/bold] — {p.kind} {p.label} (KST days {p.first} … {p.last}); "
                  "a posting counts on the day it was posted")
    for name in TABLES:
        header, body = table(report, name)
        if name == "holds" and not body:  # a ledger without pre-authorizations: no table to show
            continue
        rows = table(report, name, totals=True)[1] if body else []
        cells = [[_cell(v) for v in row] for row in rows] or [["(none)", *[""] * (len(header) - 1)]]
        fitted = Fitted(tuple(range(len(header))), ()) if fit_to is None else fit_columns(name, header, cells, fit_to)
        t = Table()
        for i in fitted.kept:
            text = header[i] in TEXT_COLUMNS
            t.add_column(_label(header[i]), justify="left" if text else "right", no_wrap=True)
        for j, row in enumerate(cells):
            is_total = j >= len(body)
            t.add_row(*(row[i] for i in fitted.kept), style="bold" if is_total and rows else None,
                      end_section=j == len(body) - 1 and len(rows) > len(body))
        console.print()
        console.print(f"[bold]{TITLES[name]}[/bold]")
        console.print(t)
        if fitted.dropped:
            console.print(f"not shown to fit {fit_to} columns: {', '.join(_label(c) for c in fitted.dropped)} "
                          "(--wide, --csv)")
    failed = report.failed
    if failed:
        console.print(f"[bold red]{len(failed)} of {len(report.checks)} checks do NOT reconcile with the "
                      "ledger:[/bold red]")
        for c in failed:
            console.print(f"  {c.name}: report {c.report:,} != ledger {c.ledger:,}")
    else:
        console.print(f"\nReconciled: {len(report.checks)} checks, every total equals the ledger's movement "
                      "to the won.")
    if report.verified is not None:
        v = report.verified
        console.print("Ledger proof (eum admin verify): " + ("verified" if v.ok else f"NOT verified: {v.problem}"))
