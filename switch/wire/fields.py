"""The host interface's data elements, and what each message does with each of them.

Pure data: the one table behind docs/host-interface.md §2 ("Field dictionary" and the table
of each message pair), which `python -m terminal_sim.docgen` writes into the document.

Not restated here: a field's length and encoding (its spec in the dialect file,
config/dialects/default.toml) and the fields a response echoes (`ECHO_FIELDS`, which
`response_fields` applies). Restated, because the code spreads them over parse_request and
the engine: the request rules (M, C, O) and the fields the switch sets (S).
tests/test_host_spec.py holds these to the code: a field is M exactly when parse_request
refuses every valid message of the pair without it (and the switch answers 30 over TCP), C
when it refuses some, O when it refuses none; an answer carries exactly the E and S fields
given here.
"""

from __future__ import annotations

from dataclasses import dataclass

from switch.wire.messages import AUTHORIZATION_KINDS, ECHO_FIELDS, PROCESSING_KINDS, REPEAT_OF, Kind

# What each code means in a table (docs/host-interface.md §2). A request field not listed for
# a message is not read: if the dialect defines it, it must still decode (else 30), and it is
# part of the content a duplicate is compared on (§6).
CODES = {
    "M": "mandatory: a request without it is answered 30",
    "C": "conditional: the rule says when it is required",
    "O": "optional: read when present",
    "E": "echoed: the request's value, as it came, when the request carries it",
    "S": "set by the switch: the rule says when",
}
REQUEST_CODES = ("M", "C", "O")
SECURITY_FIELDS = ("52", "53", "64", "128")  # required by a terminal's profile, not by the message


@dataclass(frozen=True, slots=True)
class Element:
    """One data element. `kind`: the ISO 8583 attribute of the value the switch reads or
    sends (n digits, an letters and digits, ans with spaces and symbols, z track data, b
    binary); `holds`: what it carries in this interface."""

    name: str
    kind: str
    holds: str


ELEMENTS: dict[str, Element] = {
    "2": Element("Primary account number (PAN)", "n", "12 to 19 digits, the last one its Luhn check digit"),
    "3": Element("Processing code", "n", "the transaction type in its first two digits (§3), then `0000`"),
    "4": Element("Amount, transaction", "n", "whole won, zero-filled (KRW has no minor unit)"),
    "7": Element("Transmission date and time", "n", "MMDDhhmmss in UTC, the terminal's, new for every message"),
    "11": Element("System trace audit number (STAN)", "n", "with DE41 and DE7, the message's key (§6)"),
    "12": Element("Time, local transaction", "n", "hhmmss, the terminal's local time (KST)"),
    "13": Element("Date, local transaction", "n", "MMDD, the terminal's local date (KST)"),
    "14": Element("Date, expiration", "n", "YYMM"),
    "22": Element("Point-of-service entry mode", "n",
                  "positions 1–2 how the PAN was read, 3 the terminal's PIN capability (§3)"),
    "35": Element("Track 2 data", "z", "PAN, separator `=` or `D`, expiry YYMM, service code, discretionary data"),
    "37": Element("Retrieval reference number (RRN)", "an", "12 digits: the switch's posting id, zero-filled"),
    "38": Element("Authorization identification response", "an", "6 digits: the posting id modulo 1,000,000"),
    "39": Element("Response code", "an", "§4"),
    "41": Element("Card acceptor terminal id", "ans", "the terminal id as provisioned"),
    "42": Element("Card acceptor id code", "ans", "the merchant id, right-padded with spaces"),
    "49": Element("Currency code, transaction", "n", "`410` (KRW)"),
    "52": Element("PIN data", "b",
                  "the encrypted PIN block: 8 bytes (TDES, ISO 9564 format 0) or 16 (AES, format 4)"),
    "53": Element("Security related control information", "an",
                  "the DUKPT key serial number (KSN): 20 (TDES) or 24 (AES) upper-case hex characters; "
                  "lower-case is answered 30"),
    "54": Element("Additional amounts", "an", "the card's balances after the transaction, two 20-character entries (§5)"),
    "64": Element("Message authentication code (MAC)", "b", "8 bytes, the last field of a message without a "
                                                            "secondary bitmap"),
    "70": Element("Network management information code", "n", "`001` sign-on, `002` sign-off, `301` echo"),
    "90": Element("Original data elements", "n", "the original's MTI (4), STAN (6) and DE7 (10), then acquirer "
                                                 "and forwarding institution ids (11 + 11), zero-filled"),
    "95": Element("Replacement amounts", "an", "the amount that stands (12 digits), then 30 zeros"),
    "128": Element("Message authentication code (MAC)", "b", "8 bytes, the last field of a message with a "
                                                             "secondary bitmap"),
}


@dataclass(frozen=True, slots=True)
class Use:
    """What one message does with one field: `code` (CODES) and, but for a plain E, its rule."""

    code: str
    rule: str = ""


@dataclass(frozen=True)
class MessagePair:
    """A request MTI (its repeat, xxx1, is read the same way) and its response: the request
    rules, and the fields the switch sets in the response. The echoed fields are ECHO_FIELDS."""

    request: str
    response: str
    request_uses: dict[str, Use]
    response_sets: dict[str, Use]

    @property
    def repeat(self) -> str:
        """The repeat MTI (0201 for 0200), or "" for a message that has none (0800)."""
        return next((r for r, original in REPEAT_OF.items() if original == self.request), "")

    def response_uses(self) -> dict[str, Use]:
        """Every field of the response: echoed (ECHO_FIELDS) or set by the switch."""
        echoed = {no: Use("E") for no in ECHO_FIELDS.get(self.response, ())}
        overlap = set(echoed) & set(self.response_sets)
        if overlap:
            raise ValueError(f"{self.response}: DE{', DE'.join(sorted(overlap, key=int))} both echoed and set")
        return {**echoed, **self.response_sets}


# ---------------------------------------------------------------------------- the rules

_KEY = {
    "7": Use("M", "this message's own, a valid MMDDhhmmss; part of its key"),
    "11": Use("M", "this message's own; part of its key"),
    "41": Use("M", "a terminal provisioned with `eum admin terminal add` (else 58)"),
}
_CARD = {
    "2": Use("C", "required unless DE35 carries the PAN"),
    "14": Use("O", "when present (or read from DE35), it must be the card's expiry (else 14)"),
    "35": Use("C", "track 2: the PAN when DE2 is absent, the expiry when DE14 is absent; never logged"),
}
_SALE = {
    "12": Use("O", "echoed; no decision reads it"),
    "13": Use("O", "echoed; no decision reads it"),
    "22": Use("O", "absent counts as card present (§3, channels)"),
    "42": Use("M", "the merchant the terminal belongs to (else 58)"),
    "49": Use("M", "`410` (another currency: 13)"),
}
_TRACK2_PAN = Use("C", "track 2: the PAN when DE2 is absent; never logged")
_PIN = Use("O", "verified when present (§8, cardholder verification); from a terminal whose profile "
                "has no PIN key (`none`, `mac`): 57")
_KSN = Use("C", "required from a `dukpt-tdes` (20 characters) or `dukpt-aes` (24) terminal, absent from a "
                "`mac` one (else 30); when present, upper-case hex (else 30)")


def _mac(field_no: str) -> dict[str, Use]:
    return {field_no: Use("C", "required from a `mac`, `dukpt-tdes` or `dukpt-aes` terminal, as the last "
                               "field (else 30)")}


def _mac_set(field_no: str) -> dict[str, Use]:
    return {field_no: Use("S", "to a secured terminal's request whose MAC verified (§8, which responses "
                               "carry a MAC)")}


_KIND_NAMES = {Kind.PURCHASE: "purchase", Kind.REFUND: "refund", Kind.BALANCE: "balance inquiry",
               Kind.PREAUTH: "pre-authorization", Kind.DEPOSIT: "charge (bank channel only)"}


def _processing_codes(kinds: dict[str, Kind]) -> str:
    """The processing codes a message takes, from the codec's own table (§3)."""
    named = ", ".join(f"`{code}0000` {_KIND_NAMES.get(kind, kind.value)}" for code, kind in kinds.items())
    return f"{named} (another: 12)"


_RC = {"39": Use("S", "always (§4)")}
_BALANCES = Use("S", "on approval: the card's balances after it (§5)")

PAIRS: tuple[MessagePair, ...] = (
    MessagePair(
        "0800", "0810",
        {**_KEY, "70": Use("M", "`001` sign-on, `002` sign-off, `301` echo (another code: 12)")},
        _RC,
    ),
    *(MessagePair(
        request, response,
        {**_KEY, **_CARD, **_SALE,
         "3": Use("M", _processing_codes(AUTHORIZATION_KINDS)),
         "4": Use("C", "required for a pre-authorization: the amount to hold (an incremental one: the amount "
                       "to add); optional for a balance inquiry"),
         "37": Use("O", "an incremental authorization: the RRN the first 0110 returned"),
         "52": _PIN, "53": _KSN, **_mac("64")},
        {**_RC,
         "37": Use("S", "on approval of a pre-authorization: the hold's RRN, the same for every increment"),
         "38": Use("S", "on approval of a pre-authorization: this authorization's own"),
         "54": Use("S", "on approval: the card's balances after it, cash net of every open hold (§5)"),
         **_mac_set("64")},
    ) for request, response in (("0100", "0110"), ("0120", "0130"))),
    MessagePair(
        "0200", "0210",
        {**_KEY, **_CARD, **_SALE,
         "3": Use("M", _processing_codes(PROCESSING_KINDS)),
         "4": Use("C", "optional for a balance inquiry; required for every other processing code"),
         "37": Use("C", "required for a refund: the RRN of the original purchase"),
         "52": _PIN, "53": _KSN, **_mac("64")},
        {**_RC,
         "37": Use("S", "on approval, but for a balance inquiry: this transaction's own RRN (a refund's "
                        "too, not its purchase's)"),
         "38": Use("S", "with DE37"),
         "54": _BALANCES, **_mac_set("64")},
    ),
    MessagePair(
        "0220", "0230",
        {**_KEY, **_CARD, **_SALE,
         "2": Use("C", "the held card; required unless DE35 carries the PAN"),
         "3": Use("M", "`000000` (another: 12)"),
         "4": Use("M", "the final amount, at most the hold plus the tolerance (else 13)"),
         "14": Use("O", "not read: the hold was the approval"),
         "22": Use("O", "not read"),
         "35": _TRACK2_PAN,
         "37": Use("M", "the RRN the 0110 returned (no open hold of this card and merchant: 25)"),
         "41": Use("M", "the terminal that sent the pre-authorization (else 25)"),
         "42": Use("M", "the merchant the terminal belongs to (else 58), the hold's (else 25)"),
         "90": Use("M", "the pre-authorization's 0100 or 0120: its MTI, STAN and DE7"),
         "52": _PIN, "53": _KSN, **_mac("128")},
        {**_RC,
         "37": Use("S", "on approval: the completion's own RRN (a refund or reversal quotes this one)"),
         "38": Use("S", "on approval"),
         "54": _BALANCES, **_mac_set("128")},
    ),
    *(MessagePair(
        request, response,
        {**_KEY,
         "2": Use("C", "the original's PAN (else 25); required unless DE35 carries it"),
         "3": Use("M", "the original's processing code (a balance inquiry's, `310000`: 12)"),
         "4": Use("M", "the original's amount"),
         "35": _TRACK2_PAN,
         "41": Use("M", "the terminal that sent the original (a provisioned one, else 58)"),
         "42": Use("M", "the merchant the terminal belongs to (else 58)"),
         "49": Use("M", "`410` (another currency: 13)"),
         "90": Use("M", "the original: its first MTI (0100, 0120, 0200 or 0220), STAN and DE7"),
         "95": Use("O", "a partial reversal: the amount that stands"),
         "53": _KSN, **_mac("128")},
        {**_RC,
         "54": Use("S", "when the original was found, approved: the card's balances after the reversal "
                        "(also when nothing was left to undo)"),
         **_mac_set("128")},
    ) for request, response in (("0400", "0410"), ("0420", "0430"))),
)

PAIR_BY_REQUEST = {pair.request: pair for pair in PAIRS}


def fields_used() -> list[str]:
    """Every data element a request or response of any pair uses, in field order."""
    used = {no for pair in PAIRS for no in (*pair.request_uses, *pair.response_uses())}
    return sorted(used, key=int)


def same_rules(a: MessagePair, b: MessagePair) -> bool:
    """Whether two pairs read and answer every field alike (0100 and 0120; 0400 and 0420)."""
    return (a.request_uses == b.request_uses and a.response_sets == b.response_sets
            and ECHO_FIELDS.get(a.response) == ECHO_FIELDS.get(b.response))


def groups() -> list[tuple[MessagePair, ...]]:
    """The pairs, those with the same rules together, in PAIRS order."""
    out: list[tuple[MessagePair, ...]] = []
    for pair in PAIRS:
        for i, group in enumerate(out):
            if same_rules(group[0], pair):
                out[i] = (*group, pair)
                break
        else:
            out.append((pair,))
    return out


__all__ = ["CODES", "ELEMENTS", "Element", "MessagePair", "PAIRS", "PAIR_BY_REQUEST", "REQUEST_CODES",
           "SECURITY_FIELDS", "Use", "fields_used", "groups", "same_rules"]
