"""`eum hsm`: the entry point of the software HSM process.

The main CLI (switch/cli/main.py) wires it with:

    from hsm_mock.cli import add_hsm_parser, run_hsm
    add_hsm_parser(sub, run_hsm)      # sub = the subparsers of `eum`; sets func=run_hsm

`python -m hsm_mock.cli [flags]` runs the same thing stand-alone.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from switch.wire.transport import run as _run

DESCRIPTION = ("payShield-style software HSM over TCP (variant LMK; default LMK = Thales' public TEST LMK, "
               "never for production)")  # fmt: skip


def add_hsm_parser(sub: Any, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """Add the `hsm` subcommand to `sub` (an argparse subparsers object); `func` becomes its
    `func` default, the callable the main CLI dispatches to (normally `run_hsm`)."""
    p = sub.add_parser("hsm", help="run the software HSM (payShield host protocol over TCP)", description=DESCRIPTION)
    _add_arguments(p)
    p.set_defaults(func=func)
    return p


def register(sub: Any) -> None:
    """`eum hsm` (entry point `eum.commands`, pyproject.toml)."""
    add_hsm_parser(sub, run_hsm)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    # Defaults are None so that --config values apply unless a flag overrides them.
    p.add_argument("--listen", metavar="HOST:PORT", help="address to serve on (default 127.0.0.1:1500)")
    p.add_argument("--lmk", type=Path, metavar="FILE", help="variant LMK file: 20 pairs of 32 hex digits "
                   "(default: Thales' public test LMK)")  # fmt: skip
    p.add_argument("--header-length", type=int, metavar="N", help="message header length (default 4)")
    p.add_argument("--latency-ms", type=float, metavar="N", help="added latency per command")
    p.add_argument("--cps-max", type=float, metavar="N", help="calls per second (token bucket); 0 = unlimited")
    p.add_argument("--fault-hang", type=float, metavar="SHARE", help="share of commands never answered")
    p.add_argument("--fault-drop", type=float, metavar="SHARE", help="share of commands that close the connection")
    p.add_argument("--fault-error", metavar="CODE:SHARE", help="share of commands answered with error CODE")
    p.add_argument("--fault-seed", type=int, metavar="N", help="seed of the fault draws (repeatable runs)")
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML file with HSM settings (flags win)")
    p.add_argument("--log-dir", type=Path, metavar="DIR", help="directory of the audit log hsm-audit.jsonl")
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics (/metrics: commands by code "
                   "and error code), /healthz and /readyz here, e.g. 127.0.0.1:9465")


def config_from_args(args: argparse.Namespace) -> Any:
    from hsm_mock.config import build_config, parse_fault_error, parse_hostport

    overrides: dict[str, Any] = {
        "header_length": args.header_length,
        "lmk_path": args.lmk,
        "latency_ms": args.latency_ms,
        "cps_max": args.cps_max,
        "fault_hang_share": args.fault_hang,
        "fault_drop_share": args.fault_drop,
        "fault_seed": getattr(args, "fault_seed", None),
        "log_dir": args.log_dir,
    }
    if args.listen:
        overrides["host"], overrides["port"] = parse_hostport(args.listen)
    if args.fault_error:
        overrides["fault_error_code"], overrides["fault_error_share"] = parse_fault_error(args.fault_error)
    return build_config(toml_path=args.config, **overrides)


def _configure_logs() -> None:
    import structlog

    from hsm_mock.audit import scrub_secrets

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            scrub_secrets,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        cache_logger_on_first_use=False,
    )


def run_hsm(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; 0 on a clean stop, 2 on a configuration error."""
    from hsm_mock.audit import AuditLog
    from hsm_mock.crypto import HsmCryptoError
    from hsm_mock.service import HsmServer, serve_until_signalled

    try:
        config = config_from_args(args)
        metrics = _metrics_http(getattr(args, "metrics", None))  # bound now: a busy port is an error at start
        server = HsmServer(config, audit=AuditLog.to_stdout(config.audit_path))
    except (ValueError, OSError, HsmCryptoError) as exc:
        print(f"eum hsm: {exc}", file=sys.stderr)
        return 2
    _configure_logs()
    try:
        _run(serve_until_signalled(server, metrics=metrics))
    except OSError as exc:  # e.g. address in use
        print(f"eum hsm: {exc}", file=sys.stderr)
        return 2
    finally:
        if metrics is not None:
            metrics.close()
        server.audit.close()
    return 0


def _metrics_http(listen: str | None) -> Any:
    """--metrics HOST:PORT: the metrics endpoint, bound, not serving yet (None without the flag)."""
    if not listen:
        return None
    from hsm_mock.config import parse_hostport
    from switch.ops.metrics import MetricsHttp

    try:
        return MetricsHttp(*parse_hostport(listen))
    except OSError as exc:
        raise OSError(f"--metrics {listen}: {exc.strerror or exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eum-hsm", description=DESCRIPTION)
    _add_arguments(parser)
    return run_hsm(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
