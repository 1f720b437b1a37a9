"""`eum top`: a live console of one switch, from its metrics endpoint and its log.

Every `interval_s` (1 s) it scrapes `eum switch --metrics` (/metrics, Prometheus text) and
computes, from the last two scrapes, what an operator watches: requests and approvals per
second by card program, answers per second by response code, p50/p99 of financial messages
(from the latency histogram's buckets over the interval, as Prometheus' `histogram_quantile`
interpolates), each HSM's health and call rate, the ledger's group commits and their latency,
the outbox's backlog and relay lag. The metrics have no per-terminal label (one would be
unbounded: docs/operations.md, "Metrics and health"), so "top declining terminals" come from
the switch's log instead: the tail of <data-dir>/logs/switch.jsonl, its canonical `message`
lines (`terminal`, `rc`), over the last WINDOW_S.

The computations are pure functions of scrape texts and log events (`figures`,
`quantile`, `DeclineWindow`); `render` turns them into one rich renderable that fits 80×24;
`run_top` is the thin loop around them (docs/operations.md, "Live console").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from switch.domain import KST
from switch.wire.messages import Rc

INTERVAL_S = 1.0              # between two scrapes, and so between two frames
SCRAPE_TIMEOUT_S = 2.0        # a metrics endpoint that takes longer is reported as failing
WINDOW_S = 60.0               # top declining terminals: declines of the last minute
TAIL_BYTES_MAX = 1 << 20      # at start, the log's last MiB is read for the window
READ_BYTES_MAX = 8 << 20      # per frame: a switch logging faster than this is read over several frames
WINDOW_EVENTS_MAX = 200_000   # answers held for the window, whatever the rate
PROGRAM_ROWS_MAX = 6
CODE_ROWS_MAX = 6
HSM_ROWS_MAX = 3
TERMINAL_ROWS_MAX = 6         # 24 lines: header 2, programs 8, HSM 6, terminals 8
LEFT_COLUMNS, GAP_COLUMNS = 40, 2  # 80 columns: 40 left, 2 apart, 38 right
DEFAULT_URL = "http://127.0.0.1:9464/metrics"

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs
Samples = dict[tuple[str, Labels], float]


class TopError(RuntimeError):
    """The metrics endpoint cannot be read or parsed: one line, said on screen (or exit 2 with --once)."""


# ----------------------------------------------------------------------------- scrapes


@dataclass(frozen=True, slots=True)
class Scrape:
    """One scrape: its samples and when it was taken (monotonic seconds)."""

    at_s: float
    samples: Samples


def parse_samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by (sample name, sorted labels)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        return {(s.name, tuple(sorted(s.labels.items()))): float(s.value)
                for family in text_string_to_metric_families(text) for s in family.samples}
    except ValueError as exc:
        raise TopError(f"not Prometheus text: {exc}") from None


def metrics_url(text: str) -> str:
    """--switch-metrics: a URL, or HOST:PORT (what `eum switch --metrics` takes) for its /metrics."""
    url = text if "://" in text else f"http://{text}"
    rest = url.partition("://")[2]
    return url if "/" in rest else f"{url}/metrics"


def scrape(url: str, *, clock: Callable[[], float] = time.monotonic, timeout_s: float = SCRAPE_TIMEOUT_S) -> Scrape:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            text = answer.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        raise TopError(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TopError(f"{url}: {reason}") from None
    return Scrape(clock(), parse_samples(text))


def _matches(labels: Labels, match: dict[str, Callable[[str], bool]]) -> bool:
    values = dict(labels)
    return all(test(values.get(name, "")) for name, test in match.items())


def increase(prev: Samples, cur: Samples, name: str, by: tuple[str, ...] = (),
             match: dict[str, Callable[[str], bool]] | None = None) -> dict[tuple[str, ...], float]:
    """How much counter `name` grew between two scrapes, summed by the `by` labels, over the
    series `match` selects. A series that went down was reset (a restarted switch): its new
    value is its increase, as Prometheus' `increase` takes it; one absent before began at 0."""
    out: dict[tuple[str, ...], float] = {}
    for (sample, labels), value in cur.items():
        if sample != name or (match and not _matches(labels, match)):
            continue
        before = prev.get((sample, labels), 0.0)
        grown = value - before if value >= before else value
        values = dict(labels)
        key = tuple(values.get(b, "") for b in by)
        out[key] = out.get(key, 0.0) + grown
    return out


def latest(cur: Samples, name: str, by: tuple[str, ...] = ()) -> dict[tuple[str, ...], float]:
    """A gauge's values now, summed by the `by` labels."""
    out: dict[tuple[str, ...], float] = {}
    for (sample, labels), value in cur.items():
        if sample == name:
            values = dict(labels)
            key = tuple(values.get(b, "") for b in by)
            out[key] = out.get(key, 0.0) + value
    return out


def bucket_increase(prev: Samples, cur: Samples, histogram: str,
                    match: dict[str, Callable[[str], bool]] | None = None) -> list[tuple[float, float]]:
    """The histogram's cumulative buckets over the interval, (upper bound, count) by bound,
    +Inf last, summed over the series `match` selects."""
    grown = increase(prev, cur, f"{histogram}_bucket", ("le",), match)
    return sorted((float(le), n) for (le,), n in grown.items())


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The q-quantile of cumulative buckets, interpolated linearly inside the bucket it falls
    in, the way Prometheus' `histogram_quantile` does: the first bucket starts at 0, and a rank
    in +Inf answers the largest finite bound. None when nothing was observed."""
    if not buckets or buckets[-1][0] != math.inf or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    below_bound, below_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == math.inf:
                return below_bound
            if count == below_count:
                return bound
            return below_bound + (bound - below_bound) * (rank - below_count) / (count - below_count)
        below_bound, below_count = bound, count
    return below_bound


# ----------------------------------------------------------------------------- figures


@dataclass(frozen=True, slots=True)
class ProgramRow:
    program: str                 # "" for PANs of no program
    requests_per_s: float
    approved_per_s: float        # answers 00
    declined_per_s: float        # answers other than 00
    p99_s: float | None


@dataclass(frozen=True, slots=True)
class CodeRow:
    rc: str
    per_s: float
    total: int                   # since the switch started


@dataclass(frozen=True, slots=True)
class HsmRow:
    hsm: str
    up: bool
    calls_per_s: float
    failures_per_s: float
    p99_s: float | None


@dataclass(frozen=True, slots=True)
class Figures:
    """What one frame shows, from two scrapes. Traffic is terminals' traffic: network
    management (08xx: sign-on, echo) is left out of every rate."""

    interval_s: float
    requests_per_s: float
    approved_per_s: float
    answers_per_s: float
    p50_s: float | None          # financial messages (02xx), over the interval
    p99_s: float | None
    programs: tuple[ProgramRow, ...]
    codes: tuple[CodeRow, ...]
    hsms: tuple[HsmRow, ...]     # () when the switch runs without an HSM
    commits_per_s: float
    commit_p50_s: float | None
    commit_p99_s: float | None
    ledger_queue: int
    failed_groups: int
    outbox_backlog: int | None   # None: the outbox could not be read
    outbox_lag_s: float | None
    broker_connected: bool | None  # None: no --mqtt
    ready: bool
    draining: bool
    connections_open: int


def _not_network(mti: str) -> bool:
    return not mti.startswith("08")


def figures(prev: Scrape, cur: Scrape) -> Figures:
    """Rates per second and percentiles over the interval between two scrapes."""
    span = cur.at_s - prev.at_s
    assert span > 0, "scrapes out of order"
    a, b = prev.samples, cur.samples
    terminal = {"mti": _not_network}
    requests = increase(a, b, "eum_requests_total", ("program",), terminal)
    answers = increase(a, b, "eum_answers_total", ("program", "rc"), terminal)
    answered_total = increase({}, b, "eum_answers_total", ("rc",), terminal)
    by_rc: dict[str, float] = {}
    for (_, rc), n in answers.items():
        by_rc[rc] = by_rc.get(rc, 0.0) + n
    programs = []
    for program in sorted({p for (p,) in requests} | {p for p, _ in answers}):
        approved = answers.get((program, "00"), 0.0)
        declined = sum(n for (p, rc), n in answers.items() if p == program and rc != "00")
        latency = bucket_increase(a, b, "eum_request_duration_seconds",
                                  {"mti_class": "02xx".__eq__, "program": program.__eq__})
        programs.append(ProgramRow(program, requests.get((program,), 0.0) / span, approved / span, declined / span,
                                   quantile(0.99, latency)))
    programs.sort(key=lambda r: (-r.requests_per_s, r.program))
    codes = sorted((CodeRow(rc, by_rc.get(rc, 0.0) / span, int(n)) for (rc,), n in answered_total.items()),
                   key=lambda r: (-r.per_s, -r.total, r.rc))
    financial = bucket_increase(a, b, "eum_request_duration_seconds", {"mti_class": "02xx".__eq__})
    commits = bucket_increase(a, b, "eum_ledger_commit_duration_seconds")
    backlog = latest(b, "eum_outbox_backlog")
    lag = latest(b, "eum_outbox_oldest_unrelayed_age_seconds")
    broker = latest(b, "eum_relay_connected")
    return Figures(
        interval_s=span,
        requests_per_s=sum(requests.values()) / span,
        approved_per_s=by_rc.get("00", 0.0) / span,
        answers_per_s=sum(by_rc.values()) / span,
        p50_s=quantile(0.5, financial), p99_s=quantile(0.99, financial),
        programs=tuple(programs), codes=tuple(codes), hsms=_hsm_rows(a, b, span),
        commits_per_s=sum(increase(a, b, "eum_ledger_commits_total").values()) / span,
        commit_p50_s=quantile(0.5, commits), commit_p99_s=quantile(0.99, commits),
        ledger_queue=int(sum(latest(b, "eum_ledger_queue").values())),
        failed_groups=int(sum(latest(b, "eum_ledger_failed_groups").values())),
        outbox_backlog=int(backlog[()]) if backlog else None,
        outbox_lag_s=lag[()] if lag else None,
        broker_connected=bool(broker[()]) if broker else None,
        ready=latest(b, "eum_ready").get((), 0.0) == 1.0,
        draining=latest(b, "eum_draining").get((), 0.0) == 1.0,
        connections_open=int(latest(b, "eum_connections_open").get((), 0.0)),
    )


def _hsm_rows(a: Samples, b: Samples, span: float) -> tuple[HsmRow, ...]:
    up = latest(b, "eum_hsm_up", ("hsm",))
    calls = increase(a, b, "eum_hsm_calls_total", ("hsm",), {"command": "NC".__ne__})  # health checks aside
    failures = increase(a, b, "eum_hsm_call_failures_total", ("hsm",))
    rows = []
    for (hsm,), value in sorted(up.items()):
        latency = bucket_increase(a, b, "eum_hsm_call_duration_seconds", {"hsm": hsm.__eq__})
        rows.append(HsmRow(hsm, value == 1.0, calls.get((hsm,), 0.0) / span, failures.get((hsm,), 0.0) / span,
                           quantile(0.99, latency)))
    return tuple(rows)


# ----------------------------------------------------------------------------- declining terminals (the log)


@dataclass(frozen=True, slots=True)
class TerminalRow:
    terminal: str
    declines: int
    answers: int
    top_rc: str                  # its most frequent decline code (the lowest code on a tie)


class DeclineWindow:
    """The switch's answers of the last `window_s`, by terminal, from its canonical `message`
    lines (only those carry `terminal` and `rc`). Bounded: at most WINDOW_EVENTS_MAX held."""

    def __init__(self, *, window_s: float = WINDOW_S, events_max: int = WINDOW_EVENTS_MAX) -> None:
        self.window = timedelta(seconds=window_s)
        self.answers: deque[tuple[datetime, str, str]] = deque(maxlen=events_max)

    def add(self, events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            if event.get("event") != "message" or not event.get("rc") or not event.get("terminal"):
                continue
            if str(event.get("mti", "")).startswith("08"):  # sign-on, echo: not the terminal's customers
                continue
            try:
                at = datetime.fromisoformat(str(event["ts"]))
            except (KeyError, ValueError):
                continue
            self.answers.append((at, str(event["terminal"]), str(event["rc"])))

    def top(self, now: datetime, rows_max: int = TERMINAL_ROWS_MAX) -> list[TerminalRow]:
        """The terminals with the most declines (answers other than 00) since now − window_s."""
        since = now - self.window
        while self.answers and self.answers[0][0] < since:
            self.answers.popleft()
        answered: dict[str, int] = {}
        declined: dict[str, dict[str, int]] = {}
        for at, terminal, rc in self.answers:
            if at < since:  # lines are appended in log order: a late one may sit behind a newer one
                continue
            answered[terminal] = answered.get(terminal, 0) + 1
            if rc != "00":
                codes = declined.setdefault(terminal, {})
                codes[rc] = codes.get(rc, 0) + 1
        rows = [TerminalRow(t, sum(codes.values()), answered[t], min(codes, key=lambda rc: (-codes[rc], rc)))
                for t, codes in declined.items()]
        rows.sort(key=lambda r: (-r.declines, r.terminal))
        return rows[:rows_max]


class LogTail:
    """The new whole lines of <data-dir>/logs/switch.jsonl since the last call, across its
    rotations (a new inode: the rest of the old file is dropped, the new one read from its
    start). The first call starts TAIL_BYTES_MAX before the end."""

    def __init__(self, path: Path, *, tail_bytes: int = TAIL_BYTES_MAX, read_bytes_max: int = READ_BYTES_MAX) -> None:
        self.path = path
        self.tail_bytes = tail_bytes
        self.read_bytes_max = read_bytes_max
        self._file: Any = None
        self._inode: int | None = None
        self._pending = b""

    @property
    def opened(self) -> bool:
        return self._file is not None

    def events(self) -> list[dict[str, Any]]:
        if not self._open():
            return []
        data = self._pending + self._file.read(self.read_bytes_max)
        *whole, self._pending = data.split(b"\n")
        out = []
        for line in whole:
            try:
                event = json.loads(line)
            except ValueError:  # a line cut by a crash, or the first one cut by the tail's start
                continue
            if isinstance(event, dict):
                out.append(event)
        return out

    def _open(self) -> bool:
        try:
            inode = self.path.stat().st_ino
        except FileNotFoundError:
            return self._file is not None  # between a rotation's move and the reopen: finish the old one
        if self._file is not None and inode == self._inode:
            return True
        first = self._file is None
        self.close()
        self._file = self.path.open("rb")
        self._inode = inode
        if first:
            size = self.path.stat().st_size
            if size > self.tail_bytes:
                self._file.seek(size - self.tail_bytes)
        return True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._pending = None, b""


# ----------------------------------------------------------------------------- rendering

_RC_NAMES = {m.value: m.name.lower().replace("_", " ") for m in reversed(list(Rc))}
_RC_NAMES["91"] = "unavailable"  # HSM, program gate or partition owner: the same code


def rc_name(rc: str) -> str:
    return _RC_NAMES.get(rc, "")


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.0f} s"


def rate(per_s: float) -> str:
    return f"{per_s:.1f}"


@dataclass(frozen=True, slots=True)
class Screen:
    """Everything one frame shows."""

    url: str
    interval_s: float
    clock: str                   # wall time of the scrape, HH:MM:SS KST
    figures: Figures | None      # None before a second scrape
    status: str                  # "" or what went wrong (a scrape that failed)
    terminals: list[TerminalRow] | None  # None: no log to read
    terminals_note: str          # where the terminals come from, or why there are none


def render(screen: Screen) -> Any:
    """A rich Layout that fits 80×24: header, programs | response codes, HSM | ledger and
    outbox, top declining terminals."""
    from rich.layout import Layout

    layout = Layout()
    layout.split_column(Layout(_header(screen), name="header", size=2),
                        Layout(name="traffic", size=PROGRAM_ROWS_MAX + 2),
                        Layout(name="parts", size=HSM_ROWS_MAX + 3),
                        Layout(_terminals(screen), name="terminals", minimum_size=3))
    f = screen.figures
    layout["traffic"].split_row(Layout(_programs(f), size=LEFT_COLUMNS), Layout(" ", size=GAP_COLUMNS),
                                Layout(_codes(f)))
    layout["parts"].split_row(Layout(_hsms(f), size=LEFT_COLUMNS), Layout(" ", size=GAP_COLUMNS), Layout(_ledger(f)))
    return layout


def _line(*parts: tuple[str, str]) -> Any:
    from rich.text import Text

    text = Text(no_wrap=True, overflow="ellipsis")
    for chunk, style in parts:
        text.append(chunk, style=style)
    return text


def _header(screen: Screen) -> Any:
    from rich.console import Group

    f = screen.figures
    top = _line(("eum top ", "bold"), (f"{screen.url}  {screen.clock}  every {screen.interval_s:g} s  q quits", "dim"))
    if screen.status:
        second = _line((screen.status, "bold red"))
    elif f is None:
        second = _line(("waiting for a second scrape…", "dim"))
    else:
        state = ("draining", "bold yellow") if f.draining else ("ready", "green") if f.ready else ("NOT READY", "bold red")
        share = f" ({100 * f.approved_per_s / f.answers_per_s:.1f} %)" if f.answers_per_s else ""
        second = _line(state, (f"  conns {f.connections_open}  req/s {rate(f.requests_per_s)}  approved/s "
                               f"{rate(f.approved_per_s)}{share}  p50 {ms(f.p50_s)}  p99 {ms(f.p99_s)}", ""))
    return Group(top, second)


def _table(title: str, *columns: tuple[str, str], expand: bool = False) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left", title_style="bold", box=None, pad_edge=False,
                  padding=(0, 1, 0, 0), header_style="dim", expand=expand)
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis")  # type: ignore[arg-type]
    return table


def _programs(f: Figures | None) -> Any:
    table = _table("Programs", ("program", "left"), ("req/s", "right"), ("ok/s", "right"), ("decl/s", "right"),
                   ("p99", "right"))
    for row in (f.programs if f else ())[:PROGRAM_ROWS_MAX]:
        table.add_row(row.program or "(none)", rate(row.requests_per_s), rate(row.approved_per_s),
                      rate(row.declined_per_s), ms(row.p99_s))
    return table


def _codes(f: Figures | None) -> Any:
    table = _table("Response codes", ("rc", "left"), ("meaning", "left"), ("/s", "right"), ("total", "right"))
    for row in (f.codes if f else ())[:CODE_ROWS_MAX]:
        table.add_row(row.rc, rc_name(row.rc), rate(row.per_s), f"{row.total:,}")
    return table


def _hsms(f: Figures | None) -> Any:
    table = _table("HSM", ("hsm", "left"), ("up", "left"), ("call/s", "right"), ("fail/s", "right"),
                   ("p99", "right"))
    if f is not None and not f.hsms:
        table.add_row("none configured", "", "", "", "")
    for row in (f.hsms if f else ())[:HSM_ROWS_MAX]:
        table.add_row(row.hsm, "up" if row.up else "[bold red]DOWN[/]", rate(row.calls_per_s),
                      rate(row.failures_per_s), ms(row.p99_s))
    return table


def _ledger(f: Figures | None) -> Any:
    table = _table("Ledger and outbox", ("", "left"), ("", "right"))
    table.show_header = False
    if f is None:
        return table
    table.add_row("commits/s", rate(f.commits_per_s))
    table.add_row("commit p50/p99", f"{ms(f.commit_p50_s)} / {ms(f.commit_p99_s)}")
    table.add_row("queue, failed", f"{f.ledger_queue}, {f.failed_groups}" if not f.failed_groups
                  else f"{f.ledger_queue}, [bold red]{f.failed_groups}[/]")
    backlog = "—" if f.outbox_backlog is None else f"{f.outbox_backlog:,}"
    lag = "—" if f.outbox_lag_s is None else f"{f.outbox_lag_s:.1f} s"
    broker = {None: "no --mqtt", True: "broker up", False: "[bold red]broker DOWN[/]"}[f.broker_connected]
    table.add_row("outbox backlog, lag", f"{backlog}, {lag}")
    table.add_row("relay", broker)
    return table


def _terminals(screen: Screen) -> Any:
    table = _table(f"Top declining terminals, last {WINDOW_S:g} s ({screen.terminals_note})", ("terminal", "left"),
                   ("declines", "right"), ("answers", "right"), ("top rc", "left"), expand=True)
    for row in screen.terminals or ():
        table.add_row(row.terminal, f"{row.declines:,}", f"{row.answers:,}", f"{row.top_rc} {rc_name(row.top_rc)}")
    return table


# ----------------------------------------------------------------------------- the loop


class Keys:
    """Single keys from a terminal stdin (cbreak: no Enter needed; Ctrl-C still interrupts);
    without a TTY, no keys, and `wait` only waits."""

    def __init__(self) -> None:
        self._saved: Any = None
        self._fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None

    def __enter__(self) -> "Keys":
        if self._fd is not None:
            import termios
            import tty

            self._saved = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._saved is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)

    def wait(self, timeout_s: float) -> str:
        """A key pressed within timeout_s, or "" once it has passed."""
        if timeout_s <= 0:
            return ""
        if self._fd is None:
            time.sleep(timeout_s)
            return ""
        ready, _, _ = select.select([self._fd], [], [], timeout_s)
        return os.read(self._fd, 1).decode(errors="replace") if ready else ""


class Top:
    """The state between frames: the last scrape, the last figures, the log's window."""

    def __init__(self, url: str, log_path: Path | None, *, interval_s: float = INTERVAL_S,
                 scraper: Callable[[str], Scrape] = scrape,
                 wall: Callable[[], datetime] = lambda: datetime.now(tz=KST)) -> None:
        self.url = url
        self.interval_s = interval_s
        self.scraper = scraper
        self.wall = wall
        self.tail = LogTail(log_path) if log_path is not None else None
        self.log_path = log_path
        self.window = DeclineWindow()
        self.last: Scrape | None = None
        self.figures: Figures | None = None

    def step(self) -> Screen:
        """Scrape once, read the log's new lines, and say what the frame shows."""
        status = ""
        try:
            current = self.scraper(self.url)
            if self.last is not None and current.at_s > self.last.at_s:
                self.figures = figures(self.last, current)
            self.last = current
        except TopError as exc:
            status = f"scrape failed: {exc}"
        now = self.wall()
        terminals, note = None, "no --data-dir"
        if self.tail is not None and self.log_path is not None:
            if self.log_path.exists() or self.tail.opened:
                self.window.add(self.tail.events())
                terminals, note = self.window.top(now), "from the switch's log"
            else:
                note = f"no log at {self.log_path}"
        return Screen(self.url, self.interval_s, now.strftime("%H:%M:%S"), self.figures, status, terminals, note)

    def close(self) -> None:
        if self.tail is not None:
            self.tail.close()


def run_top(args: argparse.Namespace) -> int:
    from rich.console import Console

    url = metrics_url(args.switch_metrics)
    log_path = Path(args.data_dir) / "logs" / "switch.jsonl" if args.data_dir else None
    interval_s = args.interval_s
    if not interval_s > 0:
        print(f"eum top: --interval-s {interval_s:g}: must be positive", file=sys.stderr)
        return 2
    top = Top(url, log_path, interval_s=interval_s)
    try:
        if args.once:  # two scrapes an interval apart: rates need both
            first = top.step()
            if first.status:
                print(f"eum top: {first.status}", file=sys.stderr)
                return 2
            time.sleep(interval_s)
            screen = top.step()
            Console(width=80, height=24).print(render(screen))
            return 0 if not screen.status else 2
        return _live(top, interval_s)
    except KeyboardInterrupt:
        return 0
    finally:
        top.close()


def _live(top: Top, interval_s: float) -> int:
    from rich.live import Live

    with Keys() as keys, Live(render(top.step()), screen=True, auto_refresh=False, redirect_stderr=False) as live:
        deadline = time.monotonic() + interval_s
        while True:
            key = keys.wait(deadline - time.monotonic())
            if key in ("q", "Q"):
                return 0
            if key:
                continue
            deadline += interval_s
            if deadline < time.monotonic():  # a slow scrape: keep the pace, skip what was missed
                deadline = time.monotonic() + interval_s
            live.update(render(top.step()), refresh=True)


def add_top_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("top", help="a live console: rates by program and response code, latency, HSM, ledger, "
                                   "outbox, top declining terminals",
                       description="Scrapes `eum switch --metrics` every second; q or Ctrl-C quits "
                                   "(docs/operations.md, \"Live console\").")
    p.add_argument("--switch-metrics", default=DEFAULT_URL, metavar="URL",
                   help="the switch's metrics: a URL or HOST:PORT (default %(default)s)")
    p.add_argument("--data-dir", help="the switch's data dir: top declining terminals come from its log "
                                      "(logs/switch.jsonl); without it, that table stays empty")
    p.add_argument("--interval-s", type=float, default=INTERVAL_S, help="seconds between frames (default %(default)s)")
    p.add_argument("--once", action="store_true", help="print one 80×24 frame (two scrapes an interval apart) and exit")
    p.set_defaults(func=run_top)
    return p
