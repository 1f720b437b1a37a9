"""The generated part of docs/certification.md: the matrix, the cases and the reasons, from
config/cert/*.toml and switch/cert/report.py. `python -m switch.cert.docgen` rewrites it;
tests/test_cert.py fails when the document and the data differ."""

from __future__ import annotations

from pathlib import Path

from switch.cert.matrix import PROFILES, CertConfig, load_cert
from switch.cert.report import REASONS

BEGIN = "<!-- BEGIN GENERATED (python -m switch.cert.docgen) -->"
END = "<!-- END GENERATED -->"
DOC = Path(__file__).resolve().parents[2] / "docs" / "certification.md"


def _state(card) -> str:
    if not card.issued:
        return "never issued"
    parts = [f"charged to {card.charge_to:,}"] if card.charge_to else []
    if card.status != "active":
        parts.append(card.status)
    if card.pin:
        parts.append(f"PIN {card.pin}, tries reset")
    if card.spent_today:
        parts.append(f"{card.spent_today:,} spent today")
    return ", ".join(parts) or "as issued"


def _fields(fields: tuple[str, ...]) -> str:
    return ", ".join(" or ".join(f.split("|")) for f in fields)


def _message(case) -> str:
    if case.network_code:
        return f"{case.mti}, DE70 {case.network_code}"
    amount = "no amount" if case.amount is None else f"{case.amount:,}"
    extra = f", PIN {case.pin}" if case.pin else ""
    extra += f", DE22 {case.entry_mode}" if case.entry_mode != "051" else ""
    return f"{case.mti} {case.processing_code[:2]}, {case.card}, {amount}{extra}"


def render(config: CertConfig) -> str:
    t = config.timeout
    lines = ["### Test-card matrix (generated)", "",
             f"Merchant `{config.merchant.mid}` ({config.merchant.name}, {config.merchant.district}, "
             f"{config.merchant.annual_sales:,} won a year, category `{config.merchant.category}`). Card program: "
             "the city card's BIN range. Valid cards expire in December 2049.", "",
             "| card | PAN | expiry | state at every start | produces |", "|---|---|---|---|---|"]
    for card in config.cards.values():
        lines.append(f"| `{card.name}` | `{card.pan}` | {card.expiry} | {_state(card)} | {card.produces} |")
    lines += ["", f"Timeout card `{t.card}`: its 0100/0200 is answered {t.hold_ms:,} ms late; the terminal's "
              f"response timeout is {t.response_timeout_ms:,} ms, and its 0400 must arrive between "
              f"{t.response_timeout_ms - t.tolerance_ms:,} ms (the timeout, less {t.tolerance_ms} ms of "
              f"measurement) and {t.hold_ms:,} ms after the request.", "",
              "### Cases (generated)", "",
              "| # | case | what the terminal does | message judged | expect | must carry | rules | profiles |",
              "|---|---|---|---|---|---|---|---|"]
    for n, case in enumerate(config.cases, 1):
        profiles = "all" if case.profiles == PROFILES else ", ".join(case.profiles)
        omit = f"; without {', '.join('DE' + no for no in case.omit)}" if case.omit else ""
        lines.append(f"| {n} | `{case.id}` {case.title} | {case.do} | {_message(case)} | {case.expect} | "
                     f"{_fields(case.fields)}{omit} | {', '.join(case.rules) or '—'} | {profiles} |")
    lines += ["", "### Reasons (generated)", ""]
    for what, reasons in REASONS.items():
        lines.append(f"- **{what}**: " + "; ".join(f"“{r}”" for r in reasons))
    return "\n".join(lines) + "\n"


def generated_block(doc_text: str) -> str:
    return doc_text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def main() -> None:
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    DOC.write_text(f"{head}{BEGIN}\n\n{render(load_cert())}\n{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    main()
