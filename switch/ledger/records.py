"""The ledger's vocabulary: typed records that cross the store port (switch/ledger/port.py).

Pure module: no SQL, no I/O. The decision core (switch/authorize/decide.py) and the
operations build these; the store adapter (switch/ledger/sqlite.py) is the only code that
turns them into rows. Money is an int of whole won; an entry is (account, signed won),
credit positive, and a posting's entries sum to zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import itemgetter

from switch.domain import Merchant, card_accounts, card_held_account
from switch.record import Record

Entry = tuple[str, int]          # (account name, signed won)
Shares = tuple[tuple[str, int], ...]  # (funder, won) in the rules' order
MessageKey = tuple[str, str, str]     # DE41 terminal, DE11 STAN, DE7 transmission time
_AMOUNT = itemgetter(1)               # an Entry's amount


# ---------------------------------------------------------------------------- what a posting remembers

class PurchaseDetail(Record, frozen=True):
    """What a refund or reversal of this purchase needs: the shares to give back."""

    member: str
    month: str          # the member's month (KST) whose eligible spend the purchase counted in
    day: str            # the card's day (KST) whose spending limit it used
    cb_used: int        # cashback balance spent (the rest came from cash)
    cash_used: int
    fee: int
    fee_tier: str
    rate_bp: int
    support: Shares     # fee support by funder
    cashback: Shares    # cashback earned by funder
    eligible: int       # what counted toward the month's eligible spend
    policy: str


class UndoDetail(Record, frozen=True):
    """A refund or (partial) reversal of a purchase: what it gave back."""

    member: str
    month: str
    day: str
    cb_back: int
    fee_back: int
    support_back: Shares
    claw: Shares
    eligible_back: int


class RefundReversalDetail(Record, frozen=True):
    """A reversal of a refund."""

    member: str
    month: str
    day: str
    reverses: int       # the refund's posting id


class HoldDetail(Record, frozen=True):
    """A pre-authorization's hold (posting kind `hold`): money moved from the card's cash to
    its held account, nothing to the merchant. An incremental authorization is a new hold
    posting with the same RRN that closes the one before and holds the total."""

    member: str
    expires: str        # ISO 8601 in KST: after it the hold is released, never completed
    added: int          # what this authorization added to the hold (its own 0100's amount)


class ChargeDetail(Record, frozen=True):
    member: str
    receivable_repaid: int
    auto: bool = False      # an auto-charge: the top-up a purchase triggered (docs/host-interface.md, "Auto-charge")


class AutoCharge(Record, frozen=True):
    """A card's auto-charge setting: when a purchase finds cash + cashback below `threshold`,
    `amount` is charged from the member's bank first, in the purchase's own commit."""

    threshold: int
    amount: int


AUTO_CHARGE_META = "auto_charge:"  # meta key prefix: auto_charge:<card id> → "<threshold>,<amount>"


Detail = PurchaseDetail | UndoDetail | RefundReversalDetail | HoldDetail | ChargeDetail | None


class Posting(Record, frozen=True):
    """One balanced set of entries, and the columns reports and undo read."""

    id: int
    kind: str                 # purchase | refund | reversal | hold | release | charge | charge_reversal | seed_charge
    at: str                   # ISO 8601 in KST, microseconds
    amount: int
    entries: tuple[Entry, ...]
    card_id: int | None = None
    mid: str | None = None
    tid: str | None = None
    stan: str | None = None
    rrn: str | None = None
    fee: int = 0
    support: int = 0
    cashback: int = 0
    original_id: int | None = None
    detail: Detail = None

    def imbalance(self) -> int:
        return sum(map(_AMOUNT, self.entries))  # in C: a generator would resume once an entry


@dataclass(slots=True)
class PostingState:
    """A posting as the hot state keeps it: `undone` and `reversed` move with later undos."""

    id: int
    kind: str
    card_id: int | None
    mid: str | None
    amount: int
    undone: int
    at: str
    rrn: str | None
    original_id: int | None
    detail: Detail
    reversed: int = 0         # of a purchase: the part undone by reversals (DE95 bookkeeping)

    @property
    def remaining(self) -> int:
        return self.amount - self.undone


class MessageOutcome(Record, frozen=True):
    """The stored answer to one financial message, by its idempotency key."""

    key: MessageKey
    mti: str                  # the base MTI (a repeat is stored as its original)
    digest: str
    rc: str
    response: dict[str, str]  # the response fields as sent (without the MAC)
    posting_id: int | None
    at: str


# ---------------------------------------------------------------------------- rows of reference data

@dataclass(slots=True)
class CardState:
    id: int
    pan: str
    program: str
    member: str
    expiry: str
    status: str
    cash: int = 0
    cashback: int = 0
    receivable: int = 0
    pvv: str = ""
    pin_tries: int = 0
    pin_blocked: bool = False

    def accounts(self) -> tuple[str, str, str]:
        return card_accounts(self.id)

    @property
    def held_account(self) -> str:
        """Cash held by the card's open pre-authorizations (out of its available cash)."""
        return card_held_account(self.id)


TERMINAL_STATUSES = ("active", "disabled")


class Terminal(Record, frozen=True):
    tid: str
    mid: str
    security: str
    key_lmk: str = ""      # BDK (DUKPT profiles) or TAK (mac) under the LMK; empty for none
    ksn_initial: str = ""
    ksn_max: int = 0       # highest DUKPT counter accepted before this process started
    status: str = "active"  # active | disabled (`eum admin terminal disable`): a disabled one is answered 58


# ---------------------------------------------------------------------------- changes a commit makes

class MemberMonthMoved(Record, frozen=True):
    member: str
    month: str
    eligible: int           # delta of the member's eligible spend in that month


class CardDayMoved(Record, frozen=True):
    card_id: int
    day: str
    spent: int              # delta of the card's spending that day


class CardMonthCharged(Record, frozen=True):
    card_id: int
    month: str
    charged: int            # delta of what was charged onto the card that month


class PostingUndone(Record, frozen=True):
    posting_id: int
    undone: int             # delta of the amount undone (refunds and reversals)
    reversed: int = 0       # of that, by reversal (a purchase's DE95 bookkeeping)


class OriginalTombstoned(Record, frozen=True):
    key: MessageKey         # a reversal arrived before this original
    at: str


class PinTriesSet(Record, frozen=True):
    card_id: int
    tries: int
    blocked: bool


class KsnAccepted(Record, frozen=True):
    tid: str
    counter: int            # the terminal's highest DUKPT counter is at least this


class CardStatusSet(Record, frozen=True):
    card_id: int
    status: str


class CardPvvSet(Record, frozen=True):
    card_id: int
    pvv: str


class CardIssued(Record, frozen=True):
    card: CardState
    issued_at: str


class MerchantAdded(Record, frozen=True):
    merchant: Merchant


class TerminalAdded(Record, frozen=True):
    terminal: Terminal


class TerminalStatusSet(Record, frozen=True):
    tid: str
    status: str             # TERMINAL_STATUSES


class MerchantUpdated(Record, frozen=True):
    merchant: Merchant      # the whole row as it stands after the update (same mid)


class MetaSet(Record, frozen=True):
    key: str
    value: str


class KeyGroupAdded(Record, frozen=True):
    name: str
    profile: str
    bdk: str                # under the LMK
    kcv: str


class RelayMarked(Record, frozen=True):
    name: str
    seq: int
    at: str


Change = (MemberMonthMoved | CardDayMoved | CardMonthCharged | PostingUndone | OriginalTombstoned | PinTriesSet
          | KsnAccepted | CardStatusSet | CardPvvSet | CardIssued | MerchantAdded | TerminalAdded | MetaSet
          | KeyGroupAdded | RelayMarked | TerminalStatusSet | MerchantUpdated)


class OutboxEvent(Record, frozen=True):
    """One outbox row: `payload` is the JSON published as is (`event_id` is inside it too)."""

    event_id: str
    topic: str
    type: str
    posting_id: int
    payload: str


@dataclass(slots=True)
class Commit:
    """One unit of the group commit: a posting (or none), the message it answers, the changes
    that go with it and the events that tell of it. All or nothing, with its whole group."""

    posting: Posting | None = None
    message: MessageOutcome | None = None
    changes: tuple[Change, ...] = ()
    events: tuple[OutboxEvent, ...] = field(default=())
    partition: int | None = None  # the member's partition, with several instances (switch/ops/cluster.py)
    before: tuple[Posting, ...] = ()  # postings written before `posting` (a purchase's auto-charge)
