"""`eum logs`: the switch's log, read by an operator (docs/operations.md, "Logs").

Reads <data-dir>/logs/switch.jsonl (and its rotated files, oldest first: switch.jsonl.N …
.1, then the live one), keeps the lines the filters select and prints them in readable
columns (switch/ops/logs.py, console_line: time, kind, terminal, masked PAN, amount, code,
latency first) or, with --json, as they are stored. --follow keeps reading as the switch
writes, across its rotations, until interrupted. The log holds no secret to begin with: PANs
are masked and PIN blocks, keys and track data never written (switch/ops/logs.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator, TextIO

from switch.domain import KST
from switch.ops.logs import KEEP_DEFAULT, console_line

FOLLOW_POLL_S = 0.2
_SINCE_RE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class LogsError(ValueError):
    """A bad flag value or a missing log: one line, exit 2."""


def since_instant(text: str, now: datetime) -> datetime:
    """--since: an age (30s, 10m, 2h, 1d) before `now`, or an ISO 8601 instant (a naive one is KST)."""
    m = _SINCE_RE.match(text)
    if m:
        return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise LogsError(f"--since {text!r}: expected an age like 10m, 2h, 1d or an ISO 8601 time") from None
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=KST)


def _ts(event: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(event.get("ts", "")).replace("Z", "+00:00"))
    except ValueError:
        return None


class Filter:
    def __init__(self, args: argparse.Namespace, now: datetime) -> None:
        self.rc, self.tid, self.program, self.kind = args.rc, args.tid, args.program, args.kind
        self.last4 = args.pan_last4
        if self.last4 is not None and not (len(self.last4) == 4 and self.last4.isdigit()):
            raise LogsError(f"--pan-last4 {self.last4!r}: expected the card number's last 4 digits")
        self.since = since_instant(args.since, now) if args.since else None

    def __call__(self, event: dict[str, Any]) -> bool:
        if self.rc is not None and event.get("rc") != self.rc:
            return False
        if self.tid is not None and event.get("terminal") != self.tid:
            return False
        if self.program is not None and event.get("program") != self.program:
            return False
        if self.kind is not None and event.get("kind") != self.kind:
            return False
        if self.last4 is not None and not str(event.get("pan", "")).endswith(self.last4):
            return False
        if self.since is not None:
            at = _ts(event)
            if at is None or at < self.since:
                return False
        return True


def log_files(live: Path, keep: int = KEEP_DEFAULT) -> list[Path]:
    """The rotated files that exist, oldest first, then the live one."""
    rotated = [live.with_name(f"{live.name}.{n}") for n in range(keep, 0, -1)]
    return [p for p in rotated if p.exists()] + [live]


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash: the next one is whole
        if isinstance(event, dict):
            yield event


def _show(event: dict[str, Any], as_json: bool, out: TextIO) -> None:
    out.write((json.dumps(event, ensure_ascii=False) if as_json else console_line(event)) + "\n")


def run_logs(args: argparse.Namespace, *, stdout: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    live = Path(args.data_dir) / "logs" / "switch.jsonl"
    try:
        keep = Filter(args, datetime.now(tz=KST))
        if not live.exists():
            raise LogsError(f"no switch log at {live} (is --data-dir the switch's?)")
    except LogsError as exc:
        print(f"eum logs: {exc}", file=sys.stderr)
        return 2
    shown = 0
    for path in log_files(live):
        with path.open(encoding="utf-8", errors="replace") as f:
            for event in _events(f):
                if keep(event):
                    _show(event, args.json, out)
                    shown += 1
    out.flush()
    if not args.follow:
        return 0
    try:
        _follow(live, keep, args.json, out)
    except KeyboardInterrupt:
        pass
    return 0


def _follow(live: Path, keep: Filter, as_json: bool, out: TextIO) -> None:
    """Print new lines as they come; when the switch rotates (or logrotate moves) the file,
    finish the old one and go on with the new one."""
    f = live.open(encoding="utf-8", errors="replace")
    f.seek(0, 2)
    inode = live.stat().st_ino
    pending = ""
    try:
        while True:
            chunk = f.read()
            if chunk:
                pending += chunk
                *whole, pending = pending.split("\n")
                for event in _events(iter(whole)):
                    if keep(event):
                        _show(event, as_json, out)
                out.flush()
                continue
            try:
                moved = live.stat().st_ino != inode
            except FileNotFoundError:
                moved = False  # between logrotate's move and the switch's reopen: wait
            if moved:
                f.close()
                f = live.open(encoding="utf-8", errors="replace")
                inode = live.stat().st_ino
                pending = ""
                continue
            time.sleep(FOLLOW_POLL_S)
    finally:
        f.close()


def add_logs_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("logs", help="the switch's log in readable columns, filtered (--follow to keep reading)",
                       description="Reads <data-dir>/logs/switch.jsonl and its rotated files. Times are KST.")
    p.add_argument("--data-dir", default="var", help="the switch's data dir (default ./var)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until interrupted")
    p.add_argument("--rc", help="only answers with this response code (DE39), e.g. 51")
    p.add_argument("--tid", help="only this terminal (DE41)")
    p.add_argument("--pan-last4", help="only cards ending in these 4 digits")
    p.add_argument("--program", help="only this card program")
    p.add_argument("--kind", help="only this kind: purchase, refund, balance, reversal, pre-auth, completion, "
                                  "sign-on, echo…")
    p.add_argument("--since", help="only lines newer than an age (30s, 10m, 2h, 1d) or an ISO 8601 time")
    p.add_argument("--json", action="store_true", help="print the stored JSON lines instead of columns")
    p.set_defaults(func=run_logs)
    return p
