"""`eum report` in the terminal fits 80 columns (issue 14 item 6; docs/reports.md, "Width:
which columns the terminal drops"): columns go by a fixed priority, one line says which,
`--wide` shows them all. The figures are the ledger test_reports.py builds by real traffic
(its day 2019-07-20, whose settlement docs/reports.md's example shows)."""

from __future__ import annotations

import io
import re

from switch.cli.report import WIDTH_DEFAULT, fit_columns, render, table_width
from switch.ledger.reports import Period, build_report
from test_reports import D1, built, ledger  # noqa: F401  (fixtures)


def _rendered(ledger, **kw) -> str:  # noqa: F811
    out = io.StringIO()
    render(build_report(ledger.db, Period.day(D1)), out, **kw)
    return out.getvalue()


def _section(text: str, title: str) -> list[str]:
    """The lines of one table: from its title to the blank line after it."""
    lines = text.splitlines()
    start = lines.index(title)
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].strip())
    return lines[start + 1:end]


def _header(lines: list[str]) -> list[str]:
    return [cell.strip() for cell in lines[1].strip("┃").split("┃")]


def _note(lines: list[str]) -> str:
    """The "not shown" line under a table (rich wraps it at the width), as one line."""
    start = next(i for i, line in enumerate(lines) if line.startswith("not shown"))
    return re.sub(r"\s+", " ", " ".join(lines[start:])).strip()


def test_columns_are_dropped_in_priority_order_until_the_table_fits():
    header = ["mid", "name", "channel", "fee"]
    cells = [["M1", "x" * 20, "shop", "1"]]
    # widths 3, 20, 7, 3: each + 2 padding, + 5 borders
    assert table_width(header, cells, (0, 1, 2, 3)) == 33 + 4 * 3 + 1
    assert fit_columns("merchants", header, cells, 46).dropped == ()
    assert fit_columns("merchants", header, cells, 40) == fit_columns("merchants", header, cells, 23)
    assert (fit_columns("merchants", header, cells, 23).kept, fit_columns("merchants", header, cells, 23).dropped) \
        == ((0, 2, 3), ("name",))
    assert fit_columns("merchants", header, cells, 22).dropped == ("name", "channel")
    # mid (the first column) and fee are never dropped, however narrow
    assert fit_columns("merchants", header, cells, 5).kept == (0, 3)


def test_a_star_pattern_never_drops_a_total_column():
    header = ["program", "cashback_national", "cashback_total"]
    cells = [["seo", "693", "1,239"]]
    assert fit_columns("programs", header, cells, 10).dropped == ("cashback_national",)


def test_the_report_fits_80_columns_keeping_the_settlement_figures(ledger):  # noqa: F811
    text = _rendered(ledger, width=WIDTH_DEFAULT)
    assert max(len(line) for line in text.splitlines()) <= 80
    merchants = _section(text, "Merchant settlement (won)")
    assert _header(merchants) == ["mid", "purchases", "gross sales", "net sales", "fee", "payout"]
    assert [line.split("│")[1].strip() + " " + line.split("│")[-2].strip() for line in merchants[3:7]] == \
        ["MALL01 11,975", "NAMDONG01 -5,000", "SEO01 34,825", "YEONSU01 -9,950"]
    assert _note(merchants) == ("not shown to fit 80 columns: support namdong, support seo, name, channel, "
                                "district, merchant fee, refunds, reversals, support total (--wide, --csv)")
    programs = _section(text, "Programs (won)")
    assert _header(programs) == ["program", "members", "charged", "spent", "cashback total"]
    assert _note(programs) == ("not shown to fit 80 columns: cashback national, cashback city, cashback namdong, "
                               "cashback seo, new members, refunds reversals, spent gross, purchases "
                               "(--wide, --csv)")
    city = _section(text, "City figures: subscribers, issued, spent per day (won)")
    assert _header(city) == ["date", "subscribers", "new subscribers", "issued", "spent", "cashback"]
    assert not any(line.startswith("not shown") for line in city)
    accounts = _section(text, "Ledger reconciliation by account (won)")
    assert _header(accounts) == ["account", "opening", "movement", "closing", "ledger balance"]
    assert _note(accounts) == "not shown to fit 80 columns: after period (--wide, --csv)"


def test_wide_shows_every_column_and_no_note(ledger):  # noqa: F811
    text = _rendered(ledger, wide=True)
    assert "not shown" not in text
    assert _header(_section(text, "Merchant settlement (won)")) == [
        "mid", "name", "district", "channel", "purchases", "gross sales", "reversals", "refunds", "net sales",
        "fee", "support namdong", "support seo", "support total", "merchant fee", "payout"]
    assert _header(_section(text, "Ledger reconciliation by account (won)")) == [
        "account", "opening", "movement", "closing", "after period", "ledger balance"]
    assert max(len(line) for line in text.splitlines()) == 203  # the programs table, uncut
