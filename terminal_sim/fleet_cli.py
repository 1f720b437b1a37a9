"""`eum fleet`: the command line around terminal_sim.fleet, and its readable report.

    eum fleet --switch HOST:PORT[,HOST:PORT…] --population FILE --terminals N --rate TPS --duration S
              [--arrivals poisson|constant] [--closed-loop] [--in-flight N] [--scenario NAME|PATH]
              [--json FILE] [--seed S] [--state-dir D] [--timeout-ms MS] [--dialect NAME]
              [--no-progress]

Several switches (`--switch H:P,H:P,…`): terminal i connects first to switch i mod N and,
when its connection drops or cannot be opened, to the next one of the list (terminal_sim/fleet.py);
the report counts each switch's transactions (`by_switch`).

Wire it into a parser with `add_fleet_parser(sub, func)`; `func(args)` calls
`run_fleet_cli(args)`. Exit codes: 0 the run completed; 1 it completed but measured
nothing (no response) or a response MAC failed; 2 it could not run (bad setting, population
or scenario, switch unreachable, sign-on refused).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from switch.wire.transport import parse_hostport

from .fleet import STATE_DIR, FleetConfig, FleetError, FleetReport, load_population, load_scenario, run_fleet
from .scenario import ARRIVALS

EXIT_OK, EXIT_SUSPECT, EXIT_ERROR = 0, 1, 2


def register(sub: Any) -> None:
    """`eum fleet` (entry point `eum.commands`, pyproject.toml)."""
    add_fleet_parser(sub, run_fleet_cli)


def add_fleet_parser(sub: Any, func: Callable[[argparse.Namespace], int]) -> None:
    fp = sub.add_parser("fleet", help="drive N simulated terminals against a switch; latency without "
                                      "coordinated omission")
    fp.add_argument("--switch", default="127.0.0.1:8583",
                    help="HOST:PORT[,HOST:PORT…] (default 127.0.0.1:8583); several: terminal i starts on the "
                         "(i mod N)-th and reconnects to the next one in the list")
    fp.add_argument("--population", required=True,
                    help="population JSON (`eum admin seed … --export FILE`): terminals, keys, cards")
    fp.add_argument("--terminals", type=int, default=10, help="the first N terminals of the population (default 10)")
    fp.add_argument("--rate", type=float, default=100.0, help="target transactions per second, all terminals "
                                                              "together (open loop; default 100)")
    fp.add_argument("--duration", type=float, default=10.0, help="seconds of traffic (default 10), then a drain "
                                                                 "of at most the response timeout")
    fp.add_argument("--arrivals", choices=ARRIVALS, default="poisson", help="open-loop arrivals (default poisson)")
    fp.add_argument("--closed-loop", action="store_true",
                    help="capacity search: each terminal sends the next as soon as one is answered")
    fp.add_argument("--in-flight", type=int, default=1,
                    help="closed loop: requests outstanding per terminal (default 1)")
    fp.add_argument("--scenario", default="standard", help="config/scenarios/NAME.toml or a path (default standard)")
    fp.add_argument("--json", help="write the report as JSON to this file")
    fp.add_argument("--seed", type=int, default=1, help="arrivals and transaction choices (default 1)")
    fp.add_argument("--state-dir", default=STATE_DIR,
                    help="per-terminal STAN and KSN counters and queued reversals, kept across runs (default "
                         f"{STATE_DIR}, relative to the current directory; PANs in it are sealed)")
    fp.add_argument("--timeout-ms", type=float, default=2000.0, help="response timeout (default 2000)")
    fp.add_argument("--dialect", help="default: the population's")
    fp.add_argument("--no-progress", action="store_true", help="no live progress line")
    fp.set_defaults(func=func)


def parse_switches(text: str) -> tuple[tuple[str, int], ...]:
    """`--switch`: HOST:PORT[,HOST:PORT…] (an entry may be a PORT alone, on 127.0.0.1, as
    before). ValueError, one line naming --switch and the entry, for a malformed entry."""
    switches = []
    for entry in text.split(","):
        item = entry.strip()
        if not item:
            raise ValueError(f"--switch: an empty entry (in {text!r})")
        try:
            host, port = parse_hostport(item)
        except ValueError:
            raise ValueError(f"--switch: {item!r} is not HOST:PORT (in {text!r})") from None
        if not 0 < port < 65536:
            raise ValueError(f"--switch: {item!r}: the port must be 1..65535 (in {text!r})")
        switches.append((host, port))
    return tuple(switches)


def config_from_args(args: argparse.Namespace) -> FleetConfig:
    switches = parse_switches(args.switch)
    population = load_population(args.population)
    return FleetConfig(switches=switches, terminals=args.terminals, rate_per_s=args.rate,
                       duration_s=args.duration, arrivals=args.arrivals, closed_loop=args.closed_loop,
                       in_flight_per_terminal_max=args.in_flight, scenario=load_scenario(args.scenario),
                       population=population, response_timeout_ms=args.timeout_ms, seed=args.seed,
                       progress=not args.no_progress, dialect=args.dialect or population.dialect,
                       state_dir=Path(args.state_dir))


def run_fleet_cli(args: argparse.Namespace) -> int:
    from switch.wire.transport import run

    try:
        config = config_from_args(args)
        report = run(run_fleet(config))
    except (FleetError, ValueError, OSError) as exc:
        print(f"eum fleet: {exc}", file=sys.stderr)
        return EXIT_ERROR
    Console().print(report_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if report.responses == 0 or report.mac_invalid or report.mac_missing:
        return EXIT_SUSPECT
    return EXIT_OK


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.2f}"


def report_table(report: FleetReport) -> Table:
    """The end-of-run report, one table: rates, latency, outcomes."""
    table = Table(title=f"eum fleet: {report.terminals} terminals, {report.mode} loop"
                        + (f" ({report.arrivals})" if report.mode == "open" else "")
                        + f", scenario {report.scenario}, {report.duration_s:g} s",
                  show_header=True, header_style="bold")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows: list[tuple[str, str]] = []
    if report.target_per_s is not None:
        rows.append(("target rate", f"{report.target_per_s:,.1f}/s"))
    rows += [
        ("offered", f"{report.offered:,} ({report.offered_per_s:,.1f}/s)"),
        ("sent", f"{report.sent:,}" + (f"  ({report.unsent:,} never sent: backlog)" if report.unsent else "")),
        ("answered", f"{report.responses:,} ({report.achieved_per_s:,.1f}/s)"),
        ("approved", f"{report.approved:,} ({report.approved_per_s:,.1f}/s)"),
        ("timeouts", f"{report.timeouts:,}"),
    ]
    for name, summary in (("latency (from intended send)", report.latency_ms),
                          ("service time (from send)", report.service_ms)):
        rows.append((name, "  ".join(f"{k} {_ms(summary[k])}" for k in ("p50", "p90", "p99", "p999", "max"))
                     + " ms"))
    rows.append(("by response code", "  ".join(f"{rc}: {n:,}" for rc, n in report.by_rc.items()) or "—"))
    rows.append(("by kind (sent/approved)",
                 "  ".join(f"{k} {c['sent']:,}/{c['approved']:,}" for k, c in report.by_kind.items() if c["sent"])
                 or "—"))
    rows.append(("reversals (0400 / 0401 / unanswered)",
                 f"{report.reversals_sent:,} / {report.reversal_repeats_sent:,} / {report.reversals_unanswered:,}"))
    if report.saf_refused or report.saf_attention:  # terminal_sim/saf.py: declined for good, or owed too long
        rows.append(("store-and-forward (refused / needing attention)",
                     f"{report.saf_refused:,} / {report.saf_attention:,}"))
    rows.append(("PIN purchases (wrong PIN)", f"{report.pin_purchases:,} ({report.wrong_pins_sent:,})"))
    rows.append(("echoes (failed)", f"{report.echoes_sent:,} ({report.echo_failures:,})"))
    if report.late_responses or report.unmatched_responses or report.connection_drops or report.reconnects:
        rows.append(("late / unmatched answers, drops / reconnects",
                     f"{report.late_responses:,} / {report.unmatched_responses:,}, {report.connection_drops:,} / "
                     f"{report.reconnects:,}"))
    for name, counts in report.by_switch.items():
        rows.append((f"switch {name}", f"sent {counts['sent']:,}  answered {counts['responses']:,}  "
                                       f"approved {counts['approved']:,}  sign-ons {counts['connects']:,}"))
    if report.mac_invalid or report.mac_missing:
        rows.append(("[red]response MAC invalid / missing[/red]",
                     f"[red]{report.mac_invalid:,} / {report.mac_missing:,}[/red]"))
    for name, value in rows:
        table.add_row(name, value)
    return table
