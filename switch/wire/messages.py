"""Typed messages of the terminal interface, and the one table mapping them to ISO fields.

Pure module. The codec turns a decoded pyiso8583 dict into a `Request` (validating every
field it reads, blaming the field on failure) and a `Response` back into a dict.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

import msgspec

from switch.record import Record


class Kind(str, Enum):
    NETWORK = "network"
    PURCHASE = "purchase"
    REFUND = "refund"
    BALANCE = "balance"
    REVERSAL = "reversal"
    PREAUTH = "preauth"          # 0100/0120: a hold on the card (an incremental one quotes DE37)
    COMPLETION = "completion"    # 0220: the sale that completes a pre-authorization
    DEPOSIT = "deposit"          # 0200, processing code 21: a charge from a bank-channel terminal


class Rc(str, Enum):
    """Response codes (DE39) this switch sends; each is documented in host-interface.md."""

    APPROVED = "00"
    INVALID_TRANSACTION = "12"
    INVALID_AMOUNT = "13"
    UNKNOWN_CARD = "14"
    ORIGINAL_NOT_FOUND = "25"
    FORMAT_ERROR = "30"
    INSUFFICIENT_FUNDS = "51"
    EXPIRED_CARD = "54"
    INCORRECT_PIN = "55"
    NOT_PERMITTED = "57"
    TERMINAL_NOT_PERMITTED = "58"
    OVER_LIMIT = "61"
    CARD_BLOCKED = "62"
    SECURITY_VIOLATION = "63"
    PIN_TRIES_EXCEEDED = "75"
    HSM_UNAVAILABLE = "91"
    PROGRAM_BUSY = "91"  # the same code (issuer or switch inoperative): a program over its capacity
    OWNER_UNAVAILABLE = "91"  # … and no instance answered for the member's partition (switch/ops/cluster.py)
    DUPLICATE = "94"
    SYSTEM_ERROR = "96"


# The members the hot path compares with, bound once as module constants: on Python 3.11 every
# attribute read on an Enum class (`Kind.PURCHASE`) runs EnumType's `__getattr__` hook, ≈ 96 ns
# against ≈ 11 ns for a module global on the machine of 2026-12-01, and a purchase made ≈ 14
# such reads (docs/performance.md, "Enum members bound once (kept)").
KIND_NETWORK: Final = Kind.NETWORK
KIND_PURCHASE: Final = Kind.PURCHASE
KIND_REFUND: Final = Kind.REFUND
KIND_BALANCE: Final = Kind.BALANCE
KIND_REVERSAL: Final = Kind.REVERSAL
KIND_PREAUTH: Final = Kind.PREAUTH
KIND_COMPLETION: Final = Kind.COMPLETION
KIND_DEPOSIT: Final = Kind.DEPOSIT
RC_APPROVED: Final = Rc.APPROVED


# Request MTIs served, with their response MTI. Repeats (xx01, xx21) map to the same response.
RESPONSE_MTI = {
    "0800": "0810",
    "0100": "0110",
    "0101": "0110",
    "0120": "0130",
    "0121": "0130",
    "0220": "0230",
    "0221": "0230",
    "0200": "0210",
    "0201": "0210",
    "0400": "0410",
    "0401": "0410",
    "0420": "0430",
    "0421": "0430",
}
REPEAT_OF = {"0101": "0100", "0121": "0120", "0201": "0200", "0221": "0220", "0401": "0400", "0421": "0420"}

# Processing code (DE3) transaction type → kind, for 0200.
PROCESSING_KINDS = {"00": Kind.PURCHASE, "20": Kind.REFUND, "21": Kind.DEPOSIT, "31": Kind.BALANCE}
# … for 0100 and 0120 (authorization and its advice): a pre-authorization, or a balance inquiry.
AUTHORIZATION_KINDS = {"00": Kind.PREAUTH, "31": Kind.BALANCE}
NETWORK_CODES = {"001": "sign_on", "002": "sign_off", "301": "echo"}


class FieldError(ValueError):
    """A remote fault: a field is missing or malformed. Carries the field, never its value."""

    def __init__(self, field_no: str, reason: str, *, rc: Rc = Rc.FORMAT_ERROR) -> None:
        super().__init__(f"DE{field_no}: {reason}")
        self.field = field_no
        self.reason = reason
        self.rc = rc


class OriginalData(Record, frozen=True):
    """DE90: what a reversal points at."""

    mti: str
    stan: str
    transmission_time: str


class Request(Record, frozen=True):
    mti: str
    kind: Kind
    terminal: str
    stan: str
    transmission_time: str
    processing_code: str = ""
    pan: str = ""
    expiry: str = ""
    amount: int = 0
    currency: str = "410"
    local_time: str = ""
    local_date: str = ""
    entry_mode: str = ""
    rrn: str = ""
    merchant: str = ""
    network_code: str = ""
    original: OriginalData | None = None
    replacement_amount: int | None = None
    pin_block: str = ""
    ksn: str = ""
    mac: str = ""
    digest: str = ""  # content fingerprint for duplicate detection (see switch/wire/codec.py, idempotency_digest)

    @property
    def key(self) -> tuple[str, str, str]:
        """Idempotency key: terminal (DE41), STAN (DE11), transmission time (DE7)."""
        return (self.terminal, self.stan, self.transmission_time)

    @property
    def original_key(self) -> tuple[str, str, str]:
        """The idempotency key of the message DE90 names: a completion's or a reversal's
        (parsing requires DE90 of both; on any other request this is an error)."""
        original = self.original
        if original is None:
            raise ValueError(f"{self.mti} {self.kind.name} carries no DE90")
        return (self.terminal, original.stan, original.transmission_time)

    @property
    def is_repeat(self) -> bool:
        return self.mti in REPEAT_OF

    @property
    def base_mti(self) -> str:
        return REPEAT_OF.get(self.mti, self.mti)


class Balances(Record, frozen=True):
    cash: int
    cashback: int


class Response(Record, frozen=True):
    mti: str
    rc: Rc
    echo: dict[str, str] = msgspec.field(default_factory=dict)  # request fields echoed back, by DE number
    rrn: str = ""
    auth_code: str = ""
    balances: Balances | None = None


# Fields echoed from request to response, per response MTI (the one table).
ECHO_FIELDS = {
    "0810": ("7", "11", "41", "70"),
    "0110": ("2", "3", "4", "7", "11", "12", "13", "41", "42", "49"),
    "0130": ("2", "3", "4", "7", "11", "12", "13", "41", "42", "49"),
    "0230": ("2", "3", "4", "7", "11", "12", "13", "41", "42", "49", "90"),
    "0210": ("2", "3", "4", "7", "11", "12", "13", "41", "42", "49"),
    "0410": ("2", "3", "4", "7", "11", "41", "42", "49", "90", "95"),
    "0430": ("2", "3", "4", "7", "11", "41", "42", "49", "90", "95"),
}

# Fields that do not take part in duplicate detection (switch/wire/codec.py,
# `idempotency_digest`): the bitmaps, the MTI's repeat digit (a repeat is the same
# transaction), and per-transmission security fields.
DIGEST_SKIP = frozenset({"t", "p", "1", "52", "53", "64", "128"})


# The fields a secondary bitmap announces (DE65 is bit 1 of it), as canonical field keys.
_SECONDARY_FIELDS = frozenset(str(no) for no in range(65, 128))


def mac_field(fields: dict[str, str]) -> str:
    """Where a message's MAC goes, in canonical fields: DE128 when any field 65..127 needs the
    secondary bitmap, else DE64 (ISO 8583: the MAC is always the message's last field). A
    dialect with its own MAC field moves it there (codec `from_canonical`). One set lookup per
    key in C, not a parse of every key (the fleet read every message's keys this way)."""
    return "64" if _SECONDARY_FIELDS.isdisjoint(fields) else "128"


def decode_balances(text: str) -> Balances:
    """DE54 as switch/wire/codec.py `encode_balances` writes it (encoded there, in the compiled
    codec, once per approval)."""
    found: dict[str, int] = {}
    for i in range(0, len(text) - 19, 20):
        entry = text[i : i + 20]
        won = int(entry[8:20])
        found[entry[2:4]] = won if entry[7] == "C" else -won
    return Balances(cash=found.get("02", 0), cashback=found.get("91", 0))
