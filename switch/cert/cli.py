"""`eum cert serve` and `eum cert report` (docs/certification.md).

`serve` is `eum switch` with the same wiring (switch/cli/main.py, `cmd_switch`), given a
`prepare` step that provisions the matrix and turns the journal on before the port opens.
`drive`, the reference terminal, is terminal_sim's (terminal_sim/cert_driver.py): it adds
itself to `eum cert` through `cert_commands`, so the switch imports nothing of it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from switch.cert.matrix import PROFILES

COMMANDS_ATTRIBUTE = "cert_commands"


def add_cert_parser(sub: Any) -> None:
    cp = sub.add_parser("cert", help="certification run: the test-card matrix, the case list, a report per terminal "
                                     "(docs/certification.md)")
    commands = cp.add_subparsers(dest="cert_command", required=True)
    setattr(cp, COMMANDS_ATTRIBUTE, commands)  # where `eum cert drive` is added (cert_commands)

    sv = commands.add_parser("serve", help="provision the certification population, then run the switch in "
                                           "certification mode (journal per terminal, held timeout answers)")
    sv.add_argument("--data-dir", required=True, help="a data dir of its own (empty, or made by eum cert serve)")
    sv.add_argument("--store", help=argparse.SUPPRESS)  # as eum switch: $EUM_STORE for this process
    sv.add_argument("--listen", default="127.0.0.1:8583", help="HOST:PORT (default 127.0.0.1:8583)")
    sv.add_argument("--dialect", default="default", help="config/dialects/NAME.toml (default: default)")
    sv.add_argument("--hsm", help="HOST:PORT[,HOST:PORT…] of the HSMs (eum hsm): needed by secured profiles and "
                                  "the PIN card")
    sv.add_argument("--terminal", action="append", required=True, metavar="TID",
                    help="a terminal to certify (8 characters); repeat for several")
    sv.add_argument("--security", default="dukpt-tdes", choices=PROFILES,
                    help="the terminals' security profile (default %(default)s; none and mac make the PIN cases n/a)")
    sv.add_argument("--clock-start", help="run the switch's clock from this instant")
    sv.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    sv.set_defaults(func=cmd_cert_serve)

    rp = commands.add_parser("report", help="judge a terminal's last session: per case passed, failed (why), "
                                            "not run, n/a; exit 0 only when every case passed")
    rp.add_argument("--data-dir", required=True)
    rp.add_argument("--store", help=argparse.SUPPRESS)
    rp.add_argument("--terminal", required=True, metavar="TID")
    rp.add_argument("--out", help="also write the report: Markdown, or HTML when FILE ends in .html")
    rp.set_defaults(func=cmd_cert_report)


def cert_commands(sub: Any) -> Any:
    """The subcommands of `eum cert`, for a package built on the switch to add to."""
    return getattr(sub.choices["cert"], COMMANDS_ATTRIBUTE)


def cmd_cert_serve(args: argparse.Namespace) -> int:
    from switch.cert.matrix import load_cert
    from switch.cert.provision import start_certification
    from switch.cli.main import build_parser, cmd_switch

    config = load_cert()
    bad = [tid for tid in args.terminal if len(tid) != 8]
    if bad:
        raise ValueError(f"--terminal must be 8 characters (DE41): {', '.join(bad)}")
    argv = ["switch", "--data-dir", args.data_dir, "--listen", args.listen, "--dialect", args.dialect,
            "--log-level", args.log_level]
    for flag, value in (("--hsm", args.hsm), ("--clock-start", args.clock_start)):
        if value:
            argv += [flag, value]
    switch_args = build_parser().parse_args(argv)
    terminals = {tid: args.security for tid in args.terminal}

    async def prepare(core: Any, server: Any) -> None:
        await start_certification(core, server, config, terminals)

    switch_args.prepare = prepare
    return cmd_switch(switch_args)


def cmd_cert_report(args: argparse.Namespace) -> int:
    from switch.cert.journal import journal_path, read_session
    from switch.cert.matrix import load_cert
    from switch.cert.report import evaluate, render_html, render_markdown, render_text

    data_dir = Path(args.data_dir)
    path = journal_path(data_dir, args.terminal)
    if not path.exists():
        print(f"eum cert report: no journal for terminal {args.terminal} ({path}): run it against "
              f"eum cert serve --terminal {args.terminal}", file=sys.stderr)
        return 2
    config = load_cert()
    marker, entries = read_session(path)
    reader = _ledger_reader(data_dir)
    try:
        ledger = None if reader is None else _posting_lookup(reader)
        report = evaluate(config, marker, entries, terminal=args.terminal, ledger=ledger)
    finally:
        if reader is not None:
            reader.close()
    sys.stdout.write(render_text(report))
    if args.out:
        out = Path(args.out)
        out.write_text(render_html(report) if out.suffix.lower() == ".html" else render_markdown(report),
                       encoding="utf-8")
    return 0 if report.passed else 1


def _ledger_reader(data_dir: Path) -> Any:
    """A read-only view of the data dir's ledger (a snapshot beside a running switch), or None."""
    from switch.ledger.sqlite import SqliteReader
    from switch.ledger.store import locate

    where = locate(data_dir)
    if isinstance(where, Path) and not where.exists():
        return None
    return SqliteReader(where)


def _posting_lookup(reader: Any) -> Any:
    def lookup(rrn: str) -> tuple[int, int] | None:
        posting = reader.posting_by_rrn(rrn)
        return None if posting is None else (posting.amount, posting.undone)
    return lookup
