"""Store-and-forward (SAF): a terminal's durable queue of reversals and advices.

A reversal owes the cardholder money back; a POS that loses one after a power cut or a
dropped line leaves a purchase standing that the customer was told failed. So a terminal
keeps every reversal and advice in flash until the switch acknowledges it, and repeats it
(0401, 0421) until then, across its own restarts and the switch's. This module is that
flash: one journal per terminal, `<state_dir>/<TID>.saf.jsonl` (JSON Lines), durable before
anything it records goes on the wire. Its first line is a snapshot of the whole queue, written
atomically (temp file, fsync, rename, fsync of the directory); each later change is one line
appended (a queued, tried, acknowledged or refused entry), as a POS appends to its flash log
rather than rewriting it. A queued message and each try (with the KSN it used) are
fdatasync'd before they leave; an answer's line is written without its own fdatasync and made
durable by the next synced change: a crash may lose the last ones, which costs one more
repeat of a message the switch has stored (answered from its stored outcome), never a
reversal. Once `CHANGES_MAX` change lines are written, the next synced change rewrites the
file as one snapshot again, so the file holds the queue (at most `ENTRIES_MAX` entries and
`REFUSED_KEPT_MAX` refused), `CHANGES_MAX` lines, and the answers recorded since. A last line
cut short by a crash is a change whose call never returned, so nothing it recorded was sent:
it is ignored, and the next change rewrites the snapshot. An older version's
`<TID>.saf.json` (one JSON document, format eum-saf/1) is read and replaced by the journal
when the queue is opened.

The schedule (docs/host-interface.md, "Store-and-forward: the terminal's timeout, reversal
and advice schedule"), as named constants and `SafSchedule`:

- A financial request unanswered within the terminal's response timeout
  (`RESPONSE_TIMEOUT_MS`; the fleet's own setting) is reversed: its 0400 is queued at once
  and sent at once, as the queue's newest entry. An advice (0420) is queued and sent the
  same way. The entry is on disk before its first send (write-ahead), and each try is
  recorded (tries, and the KSN it used) before it leaves.
- A try unanswered within the response timeout is repeated at once (the wait was the
  timeout); one answered with a code that stored nothing (`DE39_REPEAT`: 58, 91, 96, or a
  code this switch does not send) is repeated `repeat_interval_s` after it was sent. Every
  try after the first is the repeat MTI (`SAF_REPEAT_MTI`: 0401, 0421), with the same STAN,
  DE7 and content; a secured try takes a new KSN (no PIN block is stored, so none is bound
  to the first send's: a restarted switch refuses a counter at or below the highest it
  accepted) and a MAC computed afresh, never stored.
- At most `tries_per_connection_max` tries per entry on one connection; then it waits for
  the next connection. A new connection (a reconnect, a switch restart, a terminal
  restart) makes every entry due at once, oldest first.
- Acknowledged = the entry's answer (matched by DE11) with a final DE39: `DE39_ACCEPTED`
  (00) or a decline in `DE39_REFUSED` (repeating the same message can only get the same
  answer). Only then does the entry leave the queue; a refused one moves to the file's
  `refused` list for the operator.
- Nothing is ever dropped for age: an entry queued longer than `attention_age_s`, or sent
  `attention_tries` times, is still repeated but reported as needing operator attention
  (`eum terminal saf`, the fleet's `saf_attention`).

FIFO: entries are tried oldest first; an entry that is not due (or has used its tries on
this connection) does not hold back the ones behind it, so one message the switch keeps
refusing to store cannot block the queue.

What the file never holds: a MAC, a PIN block or track data (`NEVER_STORED`), or a clear PAN:
a repeat needs its DE2, so DE2 is kept sealed under the state directory's PAN key
(terminal_sim/pan_vault.py) and opened when the file is read. An older file's clear DE2 is
read as it is and the file rewritten sealed at once (migrate on read).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol, TypeVar

from switch.wire.messages import Rc

from .client import TerminalClient
from .pan_vault import PanVault, PanVaultError, holds_clear_pan
from .security import SECURED_MTIS, mac_field
from .terminal import REPEAT_MTI

# What the queue may hold, and what it repeats each as: the reversals (class 4) and advices
# (function 2) of terminal.py's one REPEAT_MTI mapping. A 0200 is never stored and
# forwarded: unanswered, it is reversed.
SAF_REPEAT_MTI = {mti: repeat for mti, repeat in REPEAT_MTI.items() if mti[1] == "4" or mti[2] == "2"}

RESPONSE_TIMEOUT_MS = 5_000  # how long a terminal waits for any answer (`eum terminal --timeout-ms`)
REPEAT_INTERVAL_S = RESPONSE_TIMEOUT_MS / 1000  # between the sends of two tries of one entry, at least
TRIES_PER_CONNECTION_MAX = 4  # the first send and three repeats on one connection, then the next one
ATTENTION_AGE_S = 3600.0  # queued this long: reported for operator attention (still repeated)
ATTENTION_TRIES = 6  # sent this often without acknowledgement: likewise (PayEx: manual handling after 6)
ENTRIES_MAX = 10_000  # a terminal with this many owed messages is broken: enqueue refuses
REFUSED_KEPT_MAX = 256  # refused entries kept in the file for the operator, newest last

DE39_ACCEPTED = frozenset({Rc.APPROVED.value})
# Answered, nothing stored, and a sign-on or time cures it: repeat. Any code this switch does
# not send counts here too: a message is never given up on a code nobody defined.
DE39_REPEAT = frozenset({Rc.TERMINAL_NOT_PERMITTED.value, Rc.HSM_UNAVAILABLE.value, Rc.SYSTEM_ERROR.value})
# Every other code the switch sends: final, the same message would get the same answer.
DE39_REFUSED = frozenset(rc.value for rc in Rc) - DE39_ACCEPTED - DE39_REPEAT

NEVER_STORED = ("35", "45", "52", "64", "128")  # track 2, track 1, PIN block, MAC
FILE_FORMAT = "eum-saf/2"  # the journal (module docstring)
LEGACY_FORMAT = "eum-saf/1"  # an older version's file: one JSON document, rewritten whole on every change
CHANGES_MAX = 256  # change lines after the snapshot line; the next change rewrites the file as one snapshot


class SafError(RuntimeError):
    """The queue file cannot be read or written; it may hold owed reversals, so nothing is
    assumed about it."""


class Verdict(Enum):
    ACCEPTED = "accepted"  # acknowledged 00: landed; the entry leaves the queue
    REFUSED = "refused"  # acknowledged with a final decline: moved to `refused`
    REPEAT = "repeat"  # no answer, or one that stored nothing: stays queued


def verdict(rc: str | None) -> Verdict:
    """What an answer's DE39 (None: no answer) means for a queued message."""
    if rc in DE39_ACCEPTED:
        return Verdict.ACCEPTED
    if rc in DE39_REFUSED:
        return Verdict.REFUSED
    return Verdict.REPEAT


@dataclass(frozen=True, kw_only=True)
class SafSchedule:
    """When entries are tried (module docstring). A terminal whose response timeout is not
    `RESPONSE_TIMEOUT_MS` passes its own as `repeat_interval_s`."""

    repeat_interval_s: float = REPEAT_INTERVAL_S
    tries_per_connection_max: int = TRIES_PER_CONNECTION_MAX
    attention_age_s: float = ATTENTION_AGE_S
    attention_tries: int = ATTENTION_TRIES

    def __post_init__(self) -> None:
        if self.repeat_interval_s < 0:
            raise ValueError("repeat_interval_s must not be negative")
        if self.tries_per_connection_max < 1:
            raise ValueError("tries_per_connection_max must be at least 1")
        if not self.attention_age_s > 0 or self.attention_tries < 1:
            raise ValueError("attention_age_s must be positive and attention_tries at least 1")


@dataclass(frozen=True, kw_only=True)
class SafEntry:
    """One owed message. `fields` is the message as first sent (MTI 0400/0420), with the KSN
    (DE53) its first secured send used; times are the queue clock's (epoch seconds)."""

    seq: int  # FIFO order, unique within the terminal's file
    fields: dict[str, str]
    queued_at: float
    tries: int = 0  # sends so far, on every connection
    last_try_at: float | None = None
    next_try_at: float | None = None  # due from then on this connection (None: at once)
    last_rc: str | None = None  # the last answer's DE39 that asked for a repeat

    @property
    def stan(self) -> str:
        return self.fields["11"]

    @property
    def mti(self) -> str:
        return self.fields["t"]

    @property
    def key(self) -> tuple[str, str]:
        """(STAN, DE7): with the TID, the switch's idempotency key."""
        return self.fields["11"], self.fields["7"]


@dataclass(frozen=True, kw_only=True)
class RefusedEntry:
    entry: SafEntry
    rc: str
    refused_at: float


@dataclass
class Forwarded:
    """What one pass of `forward` did."""

    firsts: int = 0  # first sends (0400, 0420)
    repeats: int = 0  # repeats (0401, 0421)
    accepted: int = 0
    refused: int = 0
    unacknowledged: int = 0  # tries without a final answer
    answers: dict[int, dict[str, str]] = field(default_factory=dict)  # seq → its last answer

    @property
    def tries(self) -> int:
        return self.firsts + self.repeats


def _storable(fields: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in fields.items() if k not in NEVER_STORED}


def saf_path(state_dir: Path, tid: str) -> Path:
    return Path(state_dir) / f"{tid}.saf.jsonl"


def legacy_saf_path(path: Path) -> Path:
    """Where an older version kept the queue `path` now journals (`<TID>.saf.json`)."""
    return Path(path).with_suffix(".json")


# ---------------------------------------------------------------------------- the file

def _write_durably(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a crash leaves the old file or the new one, and
    the new one survives a power cut once this returns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _entry_from(d: dict[str, Any], vault: PanVault) -> SafEntry:
    fields = {str(k): str(v) for k, v in d["fields"].items()}
    return SafEntry(seq=int(d["seq"]), fields=vault.open_fields(fields),
                    queued_at=float(d["queued_at"]), tries=int(d.get("tries", 0)),
                    last_try_at=d.get("last_try_at"), next_try_at=d.get("next_try_at"), last_rc=d.get("last_rc"))


def _entry_doc(e: SafEntry, vault: PanVault) -> dict[str, Any]:
    return {**asdict(e), "fields": vault.seal_fields(e.fields)}


def _refused_doc(r: RefusedEntry, vault: PanVault) -> dict[str, Any]:
    return {"entry": _entry_doc(r.entry, vault), "rc": r.rc, "refused_at": r.refused_at}


def _clear_pans_in(doc: Any) -> bool:
    """True when a queue file (as read) holds a DE2 in clear: an older version's, to be resealed."""
    try:
        docs = [*doc["entries"], *(r["entry"] for r in doc.get("refused", ()))]
        return any(holds_clear_pan(d["fields"]) for d in docs)
    except (AttributeError, KeyError, TypeError):
        return False


def _remove_durably(path: Path) -> None:
    """Remove `path` and fsync its directory (the older version's file, once journalled)."""
    os.unlink(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _append(path: Path, line: bytes, *, sync: bool) -> None:
    """Append one whole line to `path`, and fdatasync it when `sync`. A failed or short write
    is cut off again, so the file never holds half a change before a whole one."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        size = os.fstat(fd).st_size
        try:
            if os.write(fd, line) != len(line):
                raise OSError(errno.EIO, "short write")
            if sync:
                os.fdatasync(fd)
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def _unreadable(path: Path, why: str) -> SafError:
    return SafError(f"queue file {path} is unreadable ({why}); it may hold owed reversals: repair or "
                    "move it, never delete it unread")


def _check_format(path: Path, doc: Any, expected: str) -> None:
    if not isinstance(doc, dict) or doc.get("format") != expected:
        raise SafError(f"queue file {path} is not an {expected} file (format "
                       f"{doc.get('format') if isinstance(doc, dict) else None!r})")


def _replay(path: Path, text: str) -> tuple[dict[str, Any], int, bool]:
    """A journal's queue as stored (entries sealed): its snapshot with every change applied;
    how many change lines it holds; whether its last line was cut short (ignored)."""
    lines = text.split("\n")
    torn = lines.pop() != ""  # what follows the last newline: a change cut short, or nothing
    if not lines:
        raise _unreadable(path, "no snapshot line")
    try:
        doc = json.loads(lines[0])
        changes = [json.loads(line) for line in lines[1:]]
    except ValueError as exc:
        raise _unreadable(path, type(exc).__name__) from None
    _check_format(path, doc, FILE_FORMAT)
    try:
        entries = {int(d["seq"]): d for d in doc["entries"]}
        refused = list(doc.get("refused", ()))
        next_seq = int(doc["next_seq"])
        for n, change in enumerate(changes, 2):
            if "put" in change:
                entries[int(change["put"]["seq"])] = change["put"]
                next_seq = max(next_seq, int(change["next_seq"]))
            elif "done" in change:
                entries.pop(int(change["done"]), None)
            elif "refused" in change:
                entries.pop(int(change["refused"]["entry"]["seq"]), None)
                refused = [*refused, change["refused"]][-REFUSED_KEPT_MAX:]
            else:
                raise ValueError(f"line {n}: no change named in {sorted(change)}")
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise SafError(f"queue file {path} is not an {FILE_FORMAT} file ({type(exc).__name__}: {exc})") from None
    return ({"format": FILE_FORMAT, "next_seq": next_seq, "entries": sorted(entries.values(), key=lambda d: d["seq"]),
             "refused": refused}, len(changes), torn)


def _read_legacy(path: Path) -> dict[str, Any] | None:
    """An older version's queue file (one JSON document), or None when there is none."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise _unreadable(path, type(exc).__name__) from None
    _check_format(path, doc, LEGACY_FORMAT)
    return {**doc, "format": FILE_FORMAT}


def on_disk(path: Path) -> dict[str, Any] | None:
    """The queue file at `path` as stored (PANs sealed), replayed: {"format", "next_seq",
    "entries", "refused"}; an older version's file when there is no journal; None when there
    is neither. For `eum terminal saf`-style inspection and tests: it never opens a PAN."""
    return _read(Path(path))[0]


def _read(path: Path) -> tuple[dict[str, Any] | None, int, bool, bool]:
    """(doc, change lines, torn last line, read from the older version's file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        legacy = _read_legacy(legacy_saf_path(path))
        return legacy, 0, False, legacy is not None
    except (OSError, ValueError) as exc:
        raise _unreadable(path, type(exc).__name__) from None
    doc, changes, torn = _replay(path, text)
    return doc, changes, torn, False


def _load(path: Path, vault: PanVault) -> tuple[int, list[SafEntry], list[RefusedEntry], int, bool, bool]:
    """The file's next seq, entries, refused entries and change lines; whether the next change
    must rewrite the snapshot (a torn last line, a clear PAN, an older version's file), and
    whether that must happen now (a clear PAN or an older file: not left as it is)."""
    doc, changes, torn, legacy = _read(path)
    if doc is None:
        return 1, [], [], 0, False, False
    try:
        entries = [_entry_from(d, vault) for d in doc["entries"]]
        unknown = sorted({e.mti for e in entries} - set(SAF_REPEAT_MTI))
        if unknown:
            raise ValueError(f"MTI {', '.join(unknown)} is not stored and forwarded by this version")
        refused = [RefusedEntry(entry=_entry_from(d["entry"], vault), rc=str(d["rc"]),
                                refused_at=float(d["refused_at"])) for d in doc.get("refused", ())]
        next_seq = int(doc["next_seq"])
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise SafError(f"queue file {path} is not an {FILE_FORMAT} file ({type(exc).__name__}: {exc})") from None
    except PanVaultError as exc:
        raise SafError(f"queue file {path}: {exc}") from None
    now = legacy or _clear_pans_in(doc)
    return next_seq, sorted(entries, key=lambda e: e.seq), refused, changes, now or torn, now


# ---------------------------------------------------------------------------- the queue

class SafQueue:
    """One terminal's queue. Every change is on disk (when there is a file) before the call
    returns; `path=None` keeps it in memory only (a fleet without a state dir).

    Changes may come from worker threads (the fleet writes off its event loop): they are
    serialised by a lock and publish a new tuple, so a reader always sees a whole queue."""

    def __init__(self, path: Path | None, *, schedule: SafSchedule = SafSchedule(),
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.schedule = schedule
        self.clock = clock
        self._lock = threading.Lock()
        self._vault = None if path is None else PanVault(Path(path).parent)
        now = False
        self._changes = 0  # change lines in the file after its snapshot line
        self._rewrite = True  # the next change writes a snapshot (no file yet, or one to replace)
        if self._vault is None:
            self._next_seq, entries, refused = 1, [], []
        else:
            self._next_seq, entries, refused, self._changes, self._rewrite, now = _load(Path(path), self._vault)
            self._rewrite = self._rewrite or not Path(path).exists()
        self._entries: tuple[SafEntry, ...] = tuple(entries)
        self._refused: tuple[RefusedEntry, ...] = tuple(refused)
        self._tries_here: dict[int, int] = {}  # seq → tries on the current connection
        if now:  # a clear PAN, or an older version's file: sealed and journalled now, not at the next change
            self._publish(self._next_seq, self._entries, self._refused, None)
            legacy = legacy_saf_path(Path(path))
            if legacy.exists():
                _remove_durably(legacy)

    @classmethod
    def for_terminal(cls, state_dir: Path | None, tid: str, **kw: Any) -> SafQueue:
        return cls(None if state_dir is None else saf_path(state_dir, tid), **kw)

    # -- reading

    @property
    def entries(self) -> tuple[SafEntry, ...]:
        return self._entries

    @property
    def refused(self) -> tuple[RefusedEntry, ...]:
        return self._refused

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, seq: int) -> SafEntry | None:
        return next((e for e in self._entries if e.seq == seq), None)

    def _due_at(self, e: SafEntry) -> float | None:
        """When `e` may next be tried on this connection (None: not on this one)."""
        tried = self._tries_here.get(e.seq, 0)
        if tried >= self.schedule.tries_per_connection_max:
            return None
        if tried == 0 or e.next_try_at is None:
            return float("-inf")  # first try on this connection: at once
        return e.next_try_at

    def next_due(self) -> SafEntry | None:
        """The oldest entry that may be tried now on this connection."""
        now = self.clock()
        for e in self._entries:
            at = self._due_at(e)
            if at is not None and at <= now:
                return e
        return None

    def due_in(self) -> float | None:
        """Seconds until an entry may be tried on this connection (0: now; None: none may)."""
        times = [at for e in self._entries if (at := self._due_at(e)) is not None]
        if not times:
            return None
        return max(0.0, min(times) - self.clock())

    def needs_attention(self, e: SafEntry) -> bool:
        return (self.clock() - e.queued_at >= self.schedule.attention_age_s
                or e.tries >= self.schedule.attention_tries)

    def attention(self) -> list[SafEntry]:
        return [e for e in self._entries if self.needs_attention(e)]

    @staticmethod
    def outgoing(e: SafEntry) -> dict[str, str]:
        """The fields of `e`'s next try: the first send's MTI, or its repeat MTI once sent."""
        return {**e.fields, "t": SAF_REPEAT_MTI[e.mti] if e.tries else e.mti}

    # -- changing (each one durable before it returns)

    def connection_opened(self) -> None:
        """A new connection: every entry may be tried again, at once, oldest first."""
        self._tries_here = {}

    def enqueue(self, fields: dict[str, str], *, sending: bool = False) -> SafEntry:
        """Store a reversal or advice before it is sent (write-ahead). `sending`: its first
        try starts now, and `fields` are as secured for it (one write instead of two). The
        same message (STAN and DE7) queued twice is one entry."""
        mti = fields.get("t", "")
        if mti not in SAF_REPEAT_MTI:
            raise ValueError(f"MTI {mti!r} is not stored and forwarded (only {', '.join(SAF_REPEAT_MTI)})")
        if not fields.get("11") or not fields.get("7"):
            raise ValueError("a queued message needs its STAN (DE11) and DE7: they are its idempotency key")
        with self._lock:
            same = next((e for e in self._entries if e.key == (fields["11"], fields["7"])), None)
            if same is not None:
                return same
            if len(self._entries) >= ENTRIES_MAX:
                raise SafError(f"the queue holds {ENTRIES_MAX} messages already: the terminal must not "
                               "take new transactions")
            now = self.clock()
            e = SafEntry(seq=self._next_seq, fields=_storable(fields), queued_at=now)
            if sending:
                e = self._tried(e, now)
            self._publish(self._next_seq + 1, (*self._entries, e), self._refused, ("put", e))
            return e

    def sending(self, seq: int, secured: dict[str, str]) -> SafEntry:
        """Record a try of entry `seq` before it leaves: one more try, and the fields as
        secured (a first send's KSN is kept for every repeat; the MAC is not)."""
        with self._lock:
            e = self._get(seq)
            base = {**_storable(secured), "t": e.mti}
            tried = self._tried(replace(e, fields=base), self.clock())
            self._publish(self._next_seq, self._swap(tried), self._refused, ("put", tried))
            return tried

    def answered(self, seq: int, rc: str | None) -> Verdict:
        """The outcome of entry `seq`'s last try: its answer's DE39, or None (no answer within
        the timeout, or the connection dropped). The caller matched the answer by DE11.

        Written, not fdatasync'd (no wait for the disk: callable on an event loop): a crash may
        lose the last acknowledgements, which costs one more repeat of a message the switch
        has stored, answered from that stored outcome; never a lost reversal. Every queued
        message and every try (with its KSN) is fdatasync'd before it leaves."""
        v = verdict(rc)
        with self._lock:
            e = self.entry(seq)
            if e is None:
                return v  # acknowledged already (a late answer to an earlier try)
            now = self.clock()
            if v is Verdict.ACCEPTED:
                self._publish(self._next_seq, tuple(x for x in self._entries if x.seq != seq), self._refused,
                              ("done", e), sync=False)
            elif v is Verdict.REFUSED:
                gone = RefusedEntry(entry=e, rc=str(rc), refused_at=now)
                self._publish(self._next_seq, tuple(x for x in self._entries if x.seq != seq),
                              (*self._refused, gone)[-REFUSED_KEPT_MAX:], ("refused", gone), sync=False)
            elif rc is None:
                due = replace(e, next_try_at=now)
                self._publish(self._next_seq, self._swap(due), self._refused, ("put", due), sync=False)
            else:
                sent = e.last_try_at if e.last_try_at is not None else now
                later = replace(e, next_try_at=sent + self.schedule.repeat_interval_s, last_rc=rc)
                self._publish(self._next_seq, self._swap(later), self._refused, ("put", later), sync=False)
            return v

    def _get(self, seq: int) -> SafEntry:
        e = self.entry(seq)
        if e is None:
            raise KeyError(f"no queued entry {seq}")
        return e

    def _tried(self, e: SafEntry, now: float) -> SafEntry:
        """In flight: not due again on this connection before its answer could time out."""
        self._tries_here[e.seq] = self._tries_here.get(e.seq, 0) + 1
        return replace(e, tries=e.tries + 1, last_try_at=now, next_try_at=now + self.schedule.repeat_interval_s)

    def _swap(self, e: SafEntry) -> tuple[SafEntry, ...]:
        return tuple(e if x.seq == e.seq else x for x in self._entries)

    def _publish(self, next_seq: int, entries: tuple[SafEntry, ...], refused: tuple[RefusedEntry, ...],
                 change: tuple[str, Any] | None, *, sync: bool = True) -> None:
        """Make the queue (next_seq, entries, refused) durable, then current: `change` appended
        as one journal line, or (None, a file still to create or replace, or CHANGES_MAX lines
        written) the whole queue as a new snapshot. sync=False (an acknowledgement): the line is
        written but not fdatasync'd; the next synced change makes it durable with its own."""
        if self.path is not None and self._vault is not None:
            vault = self._vault
            try:
                if change is None or self._rewrite or (sync and self._changes >= CHANGES_MAX):
                    doc = {"format": FILE_FORMAT, "next_seq": next_seq,
                           "entries": [_entry_doc(e, vault) for e in entries],
                           "refused": [_refused_doc(r, vault) for r in refused]}
                    self._rewrite = True  # until the snapshot is in place
                    _write_durably(self.path, json.dumps(doc, separators=(",", ":")) + "\n")
                    self._rewrite, self._changes = False, 0
                else:
                    kind, what = change
                    if kind == "put":
                        line: dict[str, Any] = {"put": _entry_doc(what, vault), "next_seq": next_seq}
                    elif kind == "done":
                        line = {"done": what.seq}
                    else:
                        line = {"refused": _refused_doc(what, vault)}
                    _append(self.path, (json.dumps(line, separators=(",", ":")) + "\n").encode(), sync=sync)
                    self._changes += 1
            except PanVaultError as exc:
                raise SafError(f"queue file {self.path}: {exc}") from None
            except OSError as exc:
                self._rewrite = True  # whatever a failed write left at the end, the next change replaces
                raise SafError(f"queue file {self.path} could not be written ({type(exc).__name__}: "
                               f"{exc.strerror})") from None
        self._next_seq, self._entries, self._refused = next_seq, entries, refused


def adopt_pending_reversals(queue: SafQueue, state: dict[str, Any]) -> bool:
    """Move a state file's old `pending_reversals` (the fleet's format before the queue:
    {"fields", "sent"}) into the queue, durably; the caller then saves its state without
    them. True if there were any. Adopting twice queues nothing twice (same STAN and DE7)."""
    pending = state.get("pending_reversals") or ()
    for p in pending:
        e = queue.enqueue(p["fields"])
        if p.get("sent") and e.tries == 0:
            queue.sending(e.seq, p["fields"])  # sent before: its next try is a repeat, with its KSN
    return bool(pending)


# ---------------------------------------------------------------------------- forwarding

class SafLink(Protocol):
    """The connection `forward` sends on."""

    async def ready(self) -> bool:
        """True when a signed-on connection is there to send on (False ends the pass)."""

    def secure(self, fields: dict[str, str]) -> dict[str, str]:
        """The fields as they will be sent: a new KSN for every try (none carries a PIN block,
        so nothing binds it to its first send's) — a switch that restarted refuses a counter at
        or below the highest it accepted; the MAC is added when sent."""

    async def exchange(self, secured: dict[str, str]) -> dict[str, str] | None:
        """Send and return the answer with the same DE11, or None (timeout, dropped)."""


T = TypeVar("T")


async def _inline(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    return fn(*args, **kw)


async def forward(queue: SafQueue, link: SafLink, *,
                  offload: Callable[..., Awaitable[Any]] = _inline) -> Forwarded:
    """One pass over the queue on `link`'s connection: each due entry, oldest first, until
    none is due or the link is gone. Every try is recorded before it is sent. `offload` runs
    the queue's fdatasync'ing changes (each try): inline, or `asyncio.to_thread` in a fleet
    that must not stall its event loop; an answer is recorded inline (`SafQueue.answered`)."""
    done = Forwarded()
    while (e := queue.next_due()) is not None:
        if not await link.ready():
            break
        secured = link.secure(queue.outgoing(e))
        await offload(queue.sending, e.seq, secured)
        if e.tries:
            done.repeats += 1
        else:
            done.firsts += 1
        answer = await link.exchange(secured)
        if answer is not None:
            done.answers[e.seq] = answer
        v = queue.answered(e.seq, None if answer is None else answer.get("39", ""))  # no fdatasync: inline
        if v is Verdict.ACCEPTED:
            done.accepted += 1
        elif v is Verdict.REFUSED:
            done.refused += 1
        else:
            done.unacknowledged += 1
    return done


class ClientLink:
    """`SafLink` over one `TerminalClient` connection (signed on by the caller), with
    answers matched by DE11: a late answer to another message is skipped, not taken for
    this one's. `on_secured` runs after a first send took a new KSN, before it is sent
    (`eum terminal` persists its counter there)."""

    def __init__(self, client: TerminalClient, *, on_secured: Callable[[], None] = lambda: None) -> None:
        self.client = client
        self.on_secured = on_secured
        self.down = False
        self.sent: dict[str, dict[str, str]] = {}  # STAN → the fields last sent with it (secured)
        self.mac_ok: dict[str, bool | None] = {}  # STAN → the matched answer's MAC verdict

    async def ready(self) -> bool:
        return not self.down and self.client.writer is not None and not self.client.writer.is_closing()

    def secure(self, fields: dict[str, str]) -> dict[str, str]:
        secured, _ = self.client.secure(fields, fresh_ksn=True)
        if secured.get("53") != fields.get("53"):
            self.on_secured()
        return secured

    async def exchange(self, secured: dict[str, str]) -> dict[str, str] | None:
        return await self.request(secured)

    async def request(self, fields: dict[str, str]) -> dict[str, str] | None:
        """Send `fields` (secured already when they carry DE53) and wait, at most the client's
        response timeout in all, for the answer with their DE11."""
        client, stan = self.client, fields.get("11")
        try:
            async with asyncio.timeout(client.response_timeout_ms / 1000):
                try:
                    answer = await client.request(fields)
                finally:
                    self.sent[stan] = client.last_request
                first = True
                while answer is not None and answer.get("11") != stan:
                    answer, first = await client.receive(), False
        except (TimeoutError, asyncio.TimeoutError):
            return None
        except (ConnectionError, OSError):
            self.down = True
            return None
        if answer is None:
            self.down = True  # the switch closed the connection
            return None
        self.mac_ok[stan] = client.last_response_mac_ok if first else self._mac_ok(answer)
        return answer

    def _mac_ok(self, answer: dict[str, str]) -> bool | None:
        """The verdict `TerminalClient.request` gives the first frame it reads, for a later one."""
        client, sent = self.client, self.client.last_request
        if client.security is None or sent.get("t") not in SECURED_MTIS:
            return None
        if mac_field(answer) not in answer:
            return False if ("64" in answer or "128" in answer) else None  # a MAC not last cannot be right
        return client.security.verify_response(client.last_response_payload, ksn=sent.get("53"))
