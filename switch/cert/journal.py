"""The certification journal, and the held answer of the timeout card.

`eum cert serve` sets a `CertJournal` on its Processor (switch/authorize/server.py, the
`cert` hook; None otherwise, so the hot path pays one check). For every exchange of a
certified terminal it appends one JSON line to `<data-dir>/cert/<TID>.jsonl`: when the request
arrived, its fields and the answer's as decoded, how long the answer took and whether it was
held. What a journal never holds: a full PAN (DE2 is masked, first 6 / last 4), the expiry
(DE14), track data (DE35, DE45), the PIN block (DE52), the KSN (DE53) or a MAC (DE64, DE128):
for those only whether they were present, and whether the MAC verified.

Whether the MAC verified is read from the switch's own verdict, the canonical line's `note`
(switch/authorize/engine.py, `_check_mac`): a request of a secured terminal that got past the
MAC check verified; one refused with a MAC note did not; one refused before the check (not
signed on, a format error, no HSM answering: 91) is unknown (null).

The timeout card's 0100/0200 answer leaves `hold_ms` late (docs/certification.md, "Test-card
matrix"): the terminal must time out and reverse. The journal line is written before the
hold, with `held_ms`, so it is there for the report as soon as the request is decided.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from switch.domain import mask_pan

JOURNAL_DIR = "cert"
NEVER_WRITTEN = ("14", "35", "45", "52", "53", "64", "128")  # expiry, track 2, track 1, PIN block, KSN, MACs
HELD_MTIS = ("0100", "0200")
SECURED = ("mac", "dukpt-tdes", "dukpt-aes")
# Notes of the switch's MAC check (switch/authorize/engine.py, `_check_mac`)
MAC_FAILED_NOTES = ("MAC does not verify", "must be the last field")
MAC_UNCHECKED_NOTES = ("terminal unknown", "terminal not signed on", "DE42 is not the terminal's merchant",
                       "KSN of another device", "no HSM configured", "HSM unavailable", "required by the terminal's")


def journal_path(data_dir: Path, tid: str) -> Path:
    return Path(data_dir) / JOURNAL_DIR / f"{tid}.jsonl"


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clean_fields(fields: dict[str, str] | None) -> dict[str, str]:
    """The fields a journal may hold: data elements (no bitmaps, no codec keys), DE2 masked,
    track data, PIN block, KSN and MACs left out."""
    out: dict[str, str] = {}
    for key, value in (fields or {}).items():
        if key == "t" or (key.isdigit() and key not in ("1", *NEVER_WRITTEN)):
            out[key] = mask_pan(value) if key == "2" else value
    return out


def pan_of(fields: dict[str, str]) -> str:
    """The PAN a request carries, from DE2 or else track 2 (DE35): for the masked `pan` key."""
    if fields.get("2"):
        return fields["2"]
    track2 = fields.get("35", "")
    for separator in ("=", "D"):
        if separator in track2:
            return track2.split(separator, 1)[0]
    return ""


def mac_verdict(profile: str, fields: dict[str, str], line: dict[str, Any]) -> bool | None:
    """True: the switch verified the request's MAC; False: it did not verify; None: not checked
    (no MAC, a terminal without MAC, a network message, or refused before the check)."""
    if profile not in SECURED or not fields or fields.get("t") == "0800" or "error" in line:
        return None
    if not (fields.get("64") or fields.get("128")):
        return None
    note = str(line.get("note", ""))
    if note.startswith("MAC") and line.get("rc") != "63":
        return None  # an HSM failure while checking it: 91, unknown
    if any(failed in note for failed in MAC_FAILED_NOTES) or note.startswith("MAC"):
        return False
    if any(unchecked in note for unchecked in MAC_UNCHECKED_NOTES) or line.get("rc") in ("91", "96"):
        return None
    return True


def journal_entry(fields: dict[str, str] | None, out: dict[str, str] | None, line: dict[str, Any], *,
                  arrived_s: float, latency_ms: float, held_ms: int, profile: str) -> dict[str, Any]:
    """One exchange as the journal keeps it (pure)."""
    entry: dict[str, Any] = {
        "at": _utc(arrived_s), "t": round(arrived_s, 6), "latency_ms": round(latency_ms, 3), "held_ms": held_ms,
        "peer": line.get("peer", ""), "pan": mask_pan(pan_of(fields or {})),
        "request": clean_fields(fields), "response": clean_fields(out) if out else None,
        "present": {no: bool((fields or {}).get(no)) for no in NEVER_WRITTEN},
        "mac_verified": mac_verdict(profile, fields or {}, line),
    }
    for key in ("note", "replayed", "error", "field", "reason"):
        if key in line:
            entry[key] = line[key]
    return entry


class CertJournal:
    """The Processor's `cert` hook: journal the certified terminals' exchanges; hold the
    timeout card's answers."""

    def __init__(self, data_dir: Path, profiles: dict[str, str], *, hold_pans: frozenset[str], hold_ms: int) -> None:
        """profiles: the certified terminals (TID → security profile)."""
        self.data_dir = Path(data_dir)
        self.profiles = dict(profiles)
        self.hold_pans = hold_pans
        self.hold_ms = hold_ms
        (self.data_dir / JOURNAL_DIR).mkdir(parents=True, exist_ok=True)

    def begin_session(self, now_s: float | None = None) -> None:
        """A marker in each terminal's journal: the report judges what follows the last one
        (a run starts with the switch, which resets the matrix's state)."""
        at = time.time() if now_s is None else now_s
        for tid, profile in self.profiles.items():
            self._append(tid, {"session": _utc(at), "t": round(at, 6), "terminal": tid, "profile": profile})

    async def exchanged(self, fields: dict[str, str] | None, out: dict[str, str] | None, line: dict[str, Any],
                        started_ns: int) -> None:
        tid = ((fields or {}).get("41") or str(line.get("terminal", ""))).strip()
        profile = self.profiles.get(tid)
        if profile is None:
            return
        elapsed_ns = time.perf_counter_ns() - started_ns
        arrived_s = time.time() - elapsed_ns / 1e9
        held = out is not None and fields is not None and fields.get("t") in HELD_MTIS \
            and fields.get("2") in self.hold_pans
        held_ms = self.hold_ms if held else 0
        self._append(tid, journal_entry(fields, out, line, arrived_s=arrived_s, latency_ms=elapsed_ns / 1e6,
                                        held_ms=held_ms, profile=profile))
        if held:
            await asyncio.sleep(held_ms / 1000)

    def _append(self, tid: str, record: dict[str, Any]) -> None:
        with journal_path(self.data_dir, tid).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_session(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The last session of a journal: its marker (None: no session) and its exchanges, in order."""
    marker: dict[str, Any] | None = None
    entries: list[dict[str, Any]] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(raw)
        except ValueError:  # a line half written when the switch was killed
            continue
        if "session" in record:
            marker, entries = record, []
        else:
            entries.append(record)
    return marker, entries
