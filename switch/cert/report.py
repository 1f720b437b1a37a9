"""`eum cert report`: the journal of one terminal judged against the case list.

Pure but for reading the files: `evaluate` takes the last session of the terminal's journal
(switch/cert/journal.py), the case list (switch/cert/matrix.py) and, where a rule needs it, a
look-up into the ledger, and says per case passed, failed (with every reason, in words that
name the field or the rule), not run, or n/a (the case needs another security profile).

A case's message is the last one of the session that matches it: its MTI, processing code
(first two digits) or DE70, card (the masked PAN) and amount. Messages a case quotes or is
followed by (a repeat's original, a reversal, a refund's purchase) are found by their own
data elements, as the switch finds them. Every reason is one of the templates below
(`REASONS`); docs/certification.md lists them, generated.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Callable

from switch.cert.matrix import SECURED_PROFILES, Case, CertConfig

PASSED, FAILED, NOT_RUN, NOT_APPLICABLE = "passed", "failed", "not run", "n/a"
Entry = dict[str, Any]
Ledger = Callable[[str], "tuple[int, int] | None"]  # RRN → (amount, undone) of its posting

# Every reason a case can fail with, by what checks it (docs/certification.md, "Rules and reasons").
REASONS: dict[str, tuple[str, ...]] = {
    "any case": ("no {mti} with the {card} card for {amount} in the journal",
                 "no {mti} with DE70 {code} in the journal",
                 "for {profiles} terminals; this one is {profile}",
                 "answered {rc}, expected {expect}",
                 "answered {rc}, expected {expect}: {the switch's note, or the field it refused and why}",
                 "no answer (the connection closed or the frame was dropped)"),
    "fields": ("DE{no} missing", "DE{no} or DE{alt} missing", "DE{no} present: this case leaves it out"),
    "MAC (secured profiles, every financial message)": ("MAC missing", "MAC did not verify",
                                                         "MAC of the {mti} missing", "MAC of the {mti} did not verify"),
    "repeat": ("no {base} before the {mti}: a repeat sends its original again",
               "DE{no} of the {mti} differs from its {base}"),
    "reversal-after-timeout": (
        "the switch did not hold the answer (not the timeout card?)",
        "no 0400 reversal followed the unanswered request",
        "DE90 of the {mti} does not name the request (MTI, DE11, DE7)",
        "the reversal is an {mti}: after a timeout the terminal sends 0400",
        "DE{no} missing from the {mti}", "DE{no} of the {mti} differs from the request's",
        "reversal sent {seconds} s after the request, before the {timeout} s timeout",
        "reversal sent {seconds} s after the request, after the held answer left ({hold} s): it must follow the "
        "{timeout} s timeout at once",
        "the {mti} answered {rc}, expected 00",
        "the ledger shows the purchase not reversed ({undone} of {amount} undone)"),
    "quotes-purchase": ("DE37 names no approved purchase of this card from this terminal",),
    "incremental": ("DE37 names no approved pre-authorization of this card from this terminal",),
    "completion": ("DE37 names no approved pre-authorization of this card from this terminal",
                   "DE90 does not name the pre-authorization's {mti} (MTI, DE11, DE7)"),
    "reverses-purchase": ("DE90 names no 0200 of this terminal", "DE90 names a 0200 that was not approved",
                          "DE{no} of the {mti} differs from its 0200's"),
    "duplicate": ("DE11 and DE7 repeat no earlier message of this terminal: a duplicate reuses them",
                  "same content as the earlier message with this DE11 and DE7: a duplicate changes it"),
    "after-sign-off": ("the terminal's last 0800 before it was not a sign-off (DE70 002)",),
    "bad-mac": ("MAC missing: this case needs a MAC that does not verify",
                "the MAC verified: this case needs one that does not",
                "the switch could not check the MAC"),
}
REVERSAL_MTIS = ("0400", "0401", "0420", "0421")


@dataclass(frozen=True, slots=True)
class CaseResult:
    id: str
    title: str
    status: str
    reasons: tuple[str, ...] = ()
    rc: str = ""  # what the switch answered to the case's message


@dataclass(frozen=True, slots=True)
class Report:
    terminal: str
    profile: str
    session: str
    results: tuple[CaseResult, ...]

    @property
    def passed(self) -> bool:
        """Every case that applies to the terminal's profile passed."""
        return all(r.status in (PASSED, NOT_APPLICABLE) for r in self.results)

    def counts(self) -> dict[str, int]:
        out = {PASSED: 0, FAILED: 0, NOT_RUN: 0, NOT_APPLICABLE: 0}
        for r in self.results:
            out[r.status] += 1
        return out


# ---------------------------------------------------------------------------- reading entries

def _req(e: Entry) -> dict[str, str]:
    return e.get("request") or {}


def _resp(e: Entry) -> dict[str, str]:
    return e.get("response") or {}


def _mti(e: Entry) -> str:
    return _req(e).get("t", "")


def _rc(e: Entry) -> str:
    return _resp(e).get("39", "")


def _amount(e: Entry) -> int | None:
    value = _req(e).get("4", "")
    return int(value) if value.isdigit() else None


def _key(e: Entry) -> tuple[str, str]:
    return _req(e).get("11", ""), _req(e).get("7", "")


def _present(e: Entry, no: str) -> bool:
    return bool(_req(e).get(no)) or bool((e.get("present") or {}).get(no))


def _base(mti: str) -> str:
    """A repeat's original MTI (0201 → 0200)."""
    return mti[:3] + "0"


def _de90(e: Entry) -> str:
    """DE90 that names this message: original MTI, STAN, DE7, zero-filled ids."""
    return _base(_mti(e)) + _req(e).get("11", "") + _req(e).get("7", "") + "0" * 22


def _matches(case: Case, e: Entry, config: CertConfig) -> bool:
    req = _req(e)
    if req.get("t") != case.mti:
        return False
    if case.network_code:
        return req.get("70") == case.network_code
    return (req.get("3", "")[:2] == case.processing_code[:2] and e.get("pan") == config.card(case.card).masked
            and _amount(e) == case.amount)


def _won(amount: int | None) -> str:
    return "no amount" if amount is None else f"{amount:,}"


# ---------------------------------------------------------------------------- rules

Rule = Callable[[Case, Entry, list[Entry], list[Entry], CertConfig, "Ledger | None", str], list[str]]


def _repeat(case: Case, e: Entry, before: list[Entry], after: list[Entry], config: CertConfig,
            ledger: Ledger | None, profile: str) -> list[str]:
    base, mti = _base(case.mti), case.mti
    same_key = [p for p in before if _mti(p) == base and _key(p) == _key(e)]
    if same_key:
        original, compared = same_key[-1], sorted(set(_req(e)) | set(_req(same_key[-1])))
    else:
        candidates = [p for p in before if _mti(p) == base and p.get("pan") == e.get("pan")
                      and _amount(p) == _amount(e)]
        if not candidates:
            return [f"no {base} before the {mti}: a repeat sends its original again"]
        original, compared = candidates[-1], ["11", "7"]
    return [f"DE{no} of the {mti} differs from its {base}" for no in compared
            if no != "t" and _req(original).get(no) != _req(e).get(no)]


def _reversal_after_timeout(case: Case, e: Entry, before: list[Entry], after: list[Entry], config: CertConfig,
                            ledger: Ledger | None, profile: str) -> list[str]:
    if not e.get("held_ms"):
        return ["the switch did not hold the answer (not the timeout card?)"]
    reversals = [a for a in after if _mti(a) in REVERSAL_MTIS]
    named = [a for a in reversals if _req(a).get("90") == _de90(e)]
    if named:
        rev = named[0]
    else:
        same_card = [a for a in reversals if a.get("pan") == e.get("pan")]
        if not same_card:
            return ["no 0400 reversal followed the unanswered request"]
        rev = same_card[0]
    mti, reasons = _mti(rev), []
    if not named and _req(rev).get("90"):
        reasons.append(f"DE90 of the {mti} does not name the request (MTI, DE11, DE7)")
    if _base(mti) != "0400":
        reasons.append(f"the reversal is an {mti}: after a timeout the terminal sends 0400")
    reasons += [f"DE{no} missing from the {mti}" for no in ("2", "3", "4", "7", "11", "41", "42", "49", "90")
                if not _present(rev, no)]
    reasons += [f"DE{no} of the {mti} differs from the request's" for no in ("2", "3", "4")
                if _present(rev, no) and _req(rev).get(no) != _req(e).get(no)]
    timeout = config.timeout
    elapsed_s = rev["t"] - e["t"]
    seconds = f"{elapsed_s:.1f}"
    if elapsed_s * 1000 < timeout.response_timeout_ms - timeout.tolerance_ms:
        reasons.append(f"reversal sent {seconds} s after the request, before the "
                       f"{timeout.response_timeout_ms / 1000:g} s timeout")
    elif elapsed_s * 1000 > timeout.hold_ms:
        reasons.append(f"reversal sent {seconds} s after the request, after the held answer left "
                       f"({timeout.hold_ms / 1000:g} s): it must follow the {timeout.response_timeout_ms / 1000:g} s "
                       "timeout at once")
    reasons += _mac_reasons(rev, profile=profile, of=mti)
    if _rc(rev) != "00":
        reasons.append(f"the {mti} answered {_rc(rev) or 'nothing'}, expected 00")
    elif ledger is not None and _rc(e) == "00" and _resp(e).get("37"):
        posting = ledger(_resp(e)["37"])
        if posting is not None and posting[1] < posting[0]:
            reasons.append(f"the ledger shows the purchase not reversed ({posting[1]:,} of {posting[0]:,} undone)")
    return reasons


def _approved_holds(e: Entry, before: list[Entry]) -> list[Entry]:
    """Approved pre-authorizations (0100/0120 and repeats, processing code 00) of the card
    whose answer carried the RRN this message quotes in DE37."""
    rrn = _req(e).get("37", "")
    return [p for p in before if _base(_mti(p)) in ("0100", "0120") and _req(p).get("3", "")[:2] == "00"
            and p.get("pan") == e.get("pan") and _rc(p) == "00" and _resp(p).get("37") == rrn]


def _quotes_purchase(case: Case, e: Entry, before: list[Entry], after: list[Entry], config: CertConfig,
                     ledger: Ledger | None, profile: str) -> list[str]:
    rrn = _req(e).get("37")
    if not rrn:
        return []  # the field check says DE37 missing
    approved = [p for p in before if _base(_mti(p)) == "0200" and _req(p).get("3", "")[:2] == "00"
                and p.get("pan") == e.get("pan") and _rc(p) == "00" and _resp(p).get("37") == rrn]
    return [] if approved else ["DE37 names no approved purchase of this card from this terminal"]


def _incremental(case: Case, e: Entry, before: list[Entry], after: list[Entry], config: CertConfig,
                 ledger: Ledger | None, profile: str) -> list[str]:
    if not _req(e).get("37") or _approved_holds(e, before):
        return []
    return ["DE37 names no approved pre-authorization of this card from this terminal"]


def _completion(case: Case, e: Entry, before: list[Entry], after: list[Entry], config: CertConfig,
                ledger: Ledger | None, profile: str) -> list[str]:
    if not _req(e).get("37"):
        return []
    holds = _approved_holds(e, before)
    if not holds:
        return ["DE37 names no approved pre-authorization of this card from this terminal"]
    first = next((p for p in holds if not _req(p).get("37")), holds[0])  # the hold's own, not an increment
    quoted = _req(e).get("90")
    if quoted and quoted != _de90(first):
        return [f"DE90 does not name the pre-authorization's {_base(_mti(first))} (MTI, DE11, DE7)"]
    return []


def _reverses_purchase(case: Case, e: Entry, before: list[Entry], after: list[Entry], config: CertConfig,
                       ledger: Ledger | None, profile: str) -> list[str]:
    quoted = _req(e).get("90")
    if not quoted:
        return []
    originals = [p for p in before if _base(_mti(p)) == "0200" and _de90(p) == quoted]
    if not originals:
        return ["DE90 names no 0200 of this terminal"]
    original, mti = originals[-1], _mti(e)
    reasons = [] if _rc(original) == "00" else ["DE90 names a 0200 that was not approved"]
    return reasons + [f"DE{no} of the {mti} differs from its 0200's" for no in ("2", "3", "4")
                      if _req(original).get(no) != _req(e).get(no)]


def _duplicate(case: Case, e: Entry, before: list[Entry], after: list[Entry], config: CertConfig,
               ledger: Ledger | None, profile: str) -> list[str]:
    earlier = [p for p in before if _key(p) == _key(e) and _mti(p) != "0800"]
    if not earlier:
        return ["DE11 and DE7 repeat no earlier message of this terminal: a duplicate reuses them"]
    content = {k: v for k, v in _req(e).items() if k != "t"}
    if {k: v for k, v in _req(earlier[-1]).items() if k != "t"} == content:
        return ["same content as the earlier message with this DE11 and DE7: a duplicate changes it"]
    return []


def _after_sign_off(case: Case, e: Entry, before: list[Entry], after: list[Entry], config: CertConfig,
                    ledger: Ledger | None, profile: str) -> list[str]:
    network = [p for p in before if _mti(p) == "0800"]
    if network and _req(network[-1]).get("70") == "002":
        return []
    return ["the terminal's last 0800 before it was not a sign-off (DE70 002)"]


def _bad_mac(case: Case, e: Entry, before: list[Entry], after: list[Entry], config: CertConfig,
             ledger: Ledger | None, profile: str) -> list[str]:
    if not (_present(e, "64") or _present(e, "128")):
        return ["MAC missing: this case needs a MAC that does not verify"]
    verdict = e.get("mac_verified")
    if verdict is True:
        return ["the MAC verified: this case needs one that does not"]
    return ["the switch could not check the MAC"] if verdict is None else []


RULE_CHECKS: dict[str, Rule] = {
    "repeat": _repeat, "reversal-after-timeout": _reversal_after_timeout, "quotes-purchase": _quotes_purchase,
    "incremental": _incremental, "completion": _completion, "reverses-purchase": _reverses_purchase,
    "duplicate": _duplicate, "after-sign-off": _after_sign_off, "bad-mac": _bad_mac,
}


def _mac_reasons(e: Entry, *, profile: str, of: str = "") -> list[str]:
    """A secured terminal MACs every financial message, and its MAC verifies. of: the MTI of
    a message that goes with the case's (its reversal)."""
    if profile not in SECURED_PROFILES or _mti(e) == "0800":
        return []
    what = f"MAC of the {of}" if of else "MAC"
    if not (_present(e, "64") or _present(e, "128")):
        return [f"{what} missing"]
    return [f"{what} did not verify"] if e.get("mac_verified") is False else []


def _field_reasons(case: Case, e: Entry) -> list[str]:
    reasons = []
    for spec in case.fields:
        alternatives = spec.split("|")
        if not any(_present(e, no) for no in alternatives):
            reasons.append("DE" + " or DE".join(alternatives) + " missing")
    reasons += [f"DE{no} present: this case leaves it out" for no in case.omit if _present(e, no)]
    return reasons


# ---------------------------------------------------------------------------- evaluation

def evaluate_case(case: Case, entries: list[Entry], config: CertConfig, *, profile: str,
                  ledger: Ledger | None = None) -> CaseResult:
    if not case.applies_to(profile):
        return CaseResult(case.id, case.title, NOT_APPLICABLE,
                          (f"for {', '.join(case.profiles)} terminals; this one is {profile}",))
    found = [i for i, e in enumerate(entries) if _matches(case, e, config)]
    if not found:
        what = f"DE70 {case.network_code}" if case.network_code else \
            f"the {case.card} card for {_won(case.amount)}"
        return CaseResult(case.id, case.title, NOT_RUN, (f"no {case.mti} with {what} in the journal",))
    i = found[-1]
    e = entries[i]
    reasons = _field_reasons(case, e)
    for rule in case.rules:
        reasons += RULE_CHECKS[rule](case, e, entries[:i], entries[i + 1:], config, ledger, profile)
    if "bad-mac" not in case.rules:
        reasons += _mac_reasons(e, profile=profile)
    rc = _rc(e)
    if e.get("response") is None:
        reasons.append("no answer (the connection closed or the frame was dropped)")
    elif rc != case.expect:
        why = e.get("note") or (f"DE{e['field']} {e.get('reason', '')}".strip() if e.get("field") else "")
        reasons.append(f"answered {rc}, expected {case.expect}" + (f": {why}" if why else ""))
    return CaseResult(case.id, case.title, FAILED if reasons else PASSED, tuple(reasons), rc)


def evaluate(config: CertConfig, marker: dict[str, Any] | None, entries: list[Entry], *, terminal: str,
             ledger: Ledger | None = None) -> Report:
    """marker: the session line (its profile); None when the journal has no session."""
    profile = (marker or {}).get("profile", "none")
    results = tuple(evaluate_case(case, entries, config, profile=profile, ledger=ledger) for case in config.cases)
    return Report(terminal=terminal, profile=profile, session=(marker or {}).get("session", ""), results=results)


# ---------------------------------------------------------------------------- rendering

def _summary(report: Report) -> str:
    counts = report.counts()
    verdict = "PASSED" if report.passed else "FAILED"
    return (f"{verdict}: {counts[PASSED]} passed, {counts[FAILED]} failed, {counts[NOT_RUN]} not run, "
            f"{counts[NOT_APPLICABLE]} n/a")


def render_text(report: Report) -> str:
    rows = [("case", "status", "reason")] + [(r.id, r.status, "; ".join(r.reasons)) for r in report.results]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"terminal {report.terminal} ({report.profile}), session {report.session}"]
    lines += [f"{a.ljust(widths[0])}  {b.ljust(widths[1])}  {c}".rstrip() for a, b, c in rows]
    lines.append(_summary(report))
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(report: Report) -> str:
    lines = [f"# Certification report: terminal {report.terminal}", "",
             f"Security profile `{report.profile}`, session started {report.session}. {_summary(report)}.", "",
             "| case | title | status | reason |", "|---|---|---|---|"]
    lines += [f"| `{r.id}` | {_md(r.title)} | {r.status} | {_md('; '.join(r.reasons))} |" for r in report.results]
    return "\n".join(lines) + "\n"


def render_html(report: Report) -> str:
    e = html.escape
    rows = "\n".join(
        f'<tr class="{r.status.replace(" ", "-").replace("/", "")}"><td><code>{e(r.id)}</code></td><td>{e(r.title)}</td>'
        f"<td>{e(r.status)}</td><td>{'<br>'.join(e(x) for x in r.reasons)}</td></tr>" for r in report.results)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Certification report: terminal {e(report.terminal)}</title>\n"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #999;"
            "padding:4px 8px;text-align:left}.passed{background:#e6f4e6}.failed{background:#fbe3e3}"
            ".not-run{background:#fff4d6}.na{color:#777}</style></head>\n<body>\n"
            f"<h1>Certification report: terminal {e(report.terminal)}</h1>\n"
            f"<p>Security profile <code>{e(report.profile)}</code>, session started {e(report.session)}. "
            f"{e(_summary(report))}.</p>\n"
            "<table>\n<tr><th>case</th><th>title</th><th>status</th><th>reason</th></tr>\n"
            f"{rows}\n</table>\n</body></html>\n")
