"""`eum`: the one console command. Entry point: wires concrete collaborators, configures logs."""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import os
import signal
import sys
import time
from pathlib import Path
from importlib.metadata import entry_points
from typing import Any

from switch.clock import Clock, OffsetClock, SystemClock, parse_instant
from switch.ops.config import SwitchConfig
from switch.authorize.hsm_client import HsmUnavailable
from switch.ledger.store import STORE_ENV, STORE_HELP, StoreUnavailable, existing, store_url, writable_dir
from switch.wire.transport import parse_hostport
from switch.wire.transport import run as _run


class EnvironmentFault(RuntimeError):
    """The machine around the command is not as the command needs it (a port taken, a broker
    or HSM that does not answer): one line on stderr, exit 2 (main)."""


def _clock(args: argparse.Namespace) -> Clock:
    start = getattr(args, "clock_start", None)
    if not start:
        return SystemClock()
    try:
        return OffsetClock(parse_instant(start))
    except ValueError:
        raise ValueError(f"--clock-start {start!r} is not an ISO 8601 instant with its UTC offset, "
                         "e.g. 2019-07-20T12:00:00+09:00") from None


def _hsm(args: argparse.Namespace) -> Any:
    from switch.authorize.hsm_client import HsmConfig, parse_endpoints

    text = getattr(args, "hsm", None)
    pin_verify = getattr(args, "hsm_pin_verify", None) or "gq"
    return HsmConfig(endpoints=parse_endpoints(text), pin_verify=pin_verify) if text else None


def _relay(args: argparse.Namespace) -> Any:
    """--mqtt mqtt://HOST:PORT: the outbox relay's broker (docs/events.md); None: no relay."""
    url = getattr(args, "mqtt", None)
    if not url:
        return None
    from switch.ledger.relay import RelayConfig

    return RelayConfig.from_url(url)


# ---------------------------------------------------------------------------- switch

def cmd_switch(args: argparse.Namespace) -> int:
    from switch.ops import logs
    from switch.wire.codec import check_responses, load_dialect
    from switch.ops.runtime import DataDirBusy, lock_data_dir, open_core, settle_heap, unlock
    from switch.authorize.server import Processor, SwitchServer, serve_until_signalled

    host, port = parse_hostport(args.listen)
    config = SwitchConfig(host=host, port=port, data_dir=Path(args.data_dir), dialect=args.dialect,
                          program_in_flight_max=args.program_in_flight_max, program_queue_max=args.program_queue_max,
                          program_wait_ms=args.program_wait_ms, connections_max=args.connections_max,
                          per_peer_max=args.per_peer_max, idle_timeout_s=args.idle_timeout_s,
                          frame_timeout_ms=args.frame_timeout_ms, signon_timeout_s=args.signon_timeout_s,
                          commit_interval_ms_max=args.commit_interval_ms, commit_linger_ms=args.commit_linger_ms,
                          metrics=getattr(args, "metrics", None) or "",
                          warm_s=args.warm_s)
    dialect = load_dialect(config.dialect)
    check_responses(dialect)  # before anything is created: a dialect that cannot answer is refused
    relay = _relay(args)
    cluster = _cluster(args)
    _clock(args)  # a bad --clock-start is refused before anything is made
    writable_dir(config.data_dir)  # a file, or a directory this process cannot write in: one line
    try:
        fd = lock_data_dir(config.data_dir, wait=False)
    except DataDirBusy:
        print(f"eum switch: another process holds {config.data_dir}/switch.lock (a switch already runs there)",
              file=sys.stderr)
        return 2
    if args.log_keep < 1 or args.log_max_mb < 0:
        raise ValueError(f"--log-keep must be at least 1 (got {args.log_keep}) and --log-max-mb at least 0 "
                         f"(got {args.log_max_mb})")
    logs.configure(data_dir=config.data_dir, name="switch", level=args.log_level, queued=True,
                   max_bytes=args.log_max_mb * 1024 * 1024 if args.log_max_mb else None, keep=args.log_keep)
    try:
        metrics_http = _metrics_http(config)  # bound now: a busy port stops the start here
    except OSError as exc:
        print(f"eum switch: --metrics {config.metrics}: {exc.strerror or exc}", file=sys.stderr)
        unlock(fd)
        return 2

    async def main() -> None:
        await _broker_at_start(relay)
        async with open_core(config.data_dir, clock=_clock(args), batch_size_max=config.batch_size_max,
                             commit_interval_ms_max=config.commit_interval_ms_max,
                             commit_linger_ms=config.commit_linger_ms,
                             queue_size_max=config.queue_size_max, hsm=_hsm(args), relay=relay,
                             cluster=cluster, warm_s=config.warm_s) as core:
            _hsm_down_at_start(core.hsm)
            router = None
            links: list[SwitchServer] = []
            if core.cluster is not None:  # one of several instances: docs/scale-out.md
                from dataclasses import replace

                from switch.ops.cluster import Router

                router = Router(core.cluster, core.reader, dialect, core.state)
                link_host, link_port = parse_hostport(cluster.link)
                link_config = replace(config, host=link_host, port=link_port, in_flight_max=4096,
                                      per_peer_max=config.connections_max)
                links.append(SwitchServer(link_config, Processor(core.engine, dialect, link=True,
                                                                 program_limits=config.program_limits()),
                                          core.ops, control=False))
            server = SwitchServer(config, Processor(core.engine, dialect, program_limits=config.program_limits(),
                                                    router=router), core.ops)
            prepare = getattr(args, "prepare", None)  # `eum cert serve`: provision, journal (switch/cert/cli.py)
            if prepare is not None:
                await prepare(core, server)
            metrics = None
            if metrics_http is not None:  # /metrics, /healthz, /readyz: docs/operations.md, "Metrics and health"
                from switch.ops.metrics import serve_switch_metrics

                metrics = serve_switch_metrics(metrics_http, core, server)
            expiring = asyncio.create_task(_expire_holds(core.ops))
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, logs.reopen)  # after logrotate
            settle_heap()  # what start loaded, frozen; fewer young collections (switch/ops/runtime.py)
            try:
                await serve_until_signalled(server, *links)
            finally:
                expiring.cancel()
                if metrics is not None:
                    metrics.stop()
                    metrics_http.close()
                if router is not None:
                    await router.close()

    try:
        _run(main())
    except OSError as exc:  # the listening address is taken, or not this machine's
        if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            raise
        raise EnvironmentFault(f"cannot listen: {exc.strerror}") from None
    finally:
        if metrics_http is not None:
            metrics_http.close()
        logs.flush()
        unlock(fd)
    return 0


def _metrics_http(config: SwitchConfig) -> Any:
    """--metrics HOST:PORT: the metrics endpoint, bound (not serving yet); None without the flag."""
    if not config.metrics:
        return None
    from switch.ops.metrics import MetricsHttp

    return MetricsHttp(*config.metrics_address())


def _hsm_down_at_start(pool: Any) -> None:
    """The switch serves with no HSM answering (what needs one is answered 91 until one does,
    docs/reliability.md): said at start, as hsm_down lines and one line on stderr."""
    if pool is None:
        return
    import structlog

    down = [ep.name for ep in pool.endpoints if ep.name not in pool.healthy]
    for name in down:
        structlog.get_logger().warning("hsm_down", hsm=name, reason="no answer at start")
    if down and not pool.healthy:
        print(f"eum switch: no HSM answers at {', '.join(down)}: serving anyway; what needs the HSM (PINs, MACs) "
              "is answered 91 until one does", file=sys.stderr)


async def _broker_at_start(relay: Any) -> None:
    """The relay keeps the events in the outbox until the broker answers (docs/events.md): the
    switch serves anyway, and says so once on stderr (the relay logs each retry)."""
    if relay is None:
        return
    from switch.cli.events import broker_problem

    problem = await broker_problem(relay.host, relay.port)
    if problem is not None:
        print(f"eum switch: the MQTT broker at {relay.host}:{relay.port} does not answer ({problem}): serving "
              "anyway; events wait in the outbox until it does", file=sys.stderr)


HOLDS_EXPIRE_EVERY_S = 60.0


async def _expire_holds(ops: Any) -> None:
    """Release pre-authorization holds past their expiry, every minute while the switch runs
    (docs/host-interface.md, "0100 / 0110 pre-authorization")."""
    import structlog

    log = structlog.get_logger()
    while True:
        try:
            released = await ops.op_holds_expire()
            if released["released"]:
                log.info("holds_expired", **released)
        except Exception as exc:  # the ledger unavailable, say: the next round tries again
            log.warning("holds_expire_failed", error=type(exc).__name__)
        await asyncio.sleep(HOLDS_EXPIRE_EVERY_S)


def _cluster(args: argparse.Namespace) -> Any:
    """--cluster: this switch is one of several instances on its PostgreSQL ledger."""
    if not args.cluster:
        if args.link or args.instance_id:
            raise ValueError("--link and --instance-id need --cluster")
        return None
    from switch.ops.cluster import ClusterConfig

    if not args.link:
        raise ValueError("--cluster needs --link HOST:PORT (where the other instances send this one's requests)")
    parse_hostport(args.link)
    return ClusterConfig(instance_id=args.instance_id or args.link, link=args.link, lease_ttl_s=args.lease_ttl_s)


# ---------------------------------------------------------------------------- admin

# The changes that can be a ledger's first (a merchant, a card, the KIF key): any other change
# needs the ledger to exist already.
BEGINS_LEDGER = frozenset({"merchant-add", "card-issue", "kif-zmk"})


def _admin_op(data_dir: Path, op: str, op_args: dict[str, Any], *, clock: Clock, hsm: Any = None) -> dict[str, Any]:
    """Run an operation in the process that owns the data dir: here if no switch runs,
    else in the switch, over its control socket."""
    from switch.ops.runtime import DataDirBusy, lock_data_dir, open_core, unlock
    from switch.authorize.server import control_socket_path

    if op not in BEGINS_LEDGER:
        existing(data_dir)  # a mistyped --data-dir: "no ledger at …", never an empty one made
    writable_dir(data_dir)
    try:
        fd = lock_data_dir(data_dir, wait=False)
    except DataDirBusy:
        return _run(_control_call(control_socket_path(data_dir), op, op_args))
    try:
        async def direct() -> dict[str, Any]:
            async with open_core(data_dir, clock=clock, commit_interval_ms_max=0.1, hsm=hsm) as core:
                return await core.ops.run(op, op_args)
        return _run(direct())
    finally:
        unlock(fd)


async def _control_call(path: Path, op: str, op_args: dict[str, Any]) -> dict[str, Any]:
    from switch.ops.operations import OperationError

    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(json.dumps({"op": op, "args": op_args}).encode() + b"\n")
    await writer.drain()
    reply = json.loads(await asyncio.wait_for(reader.readline(), 30))
    writer.close()
    if not reply["ok"]:
        raise OperationError(reply["error"])
    return reply["result"]


def _print(result: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
        return
    if isinstance(result, dict):
        for k, v in result.items():
            if isinstance(v, list):
                print(f"{k}:")
                for item in v:
                    print("  " + "  ".join(f"{ik}={iv}" for ik, iv in item.items()))
            else:
                print(f"{k}: {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k}: {v}")
    else:
        print(result)


def cmd_admin(args: argparse.Namespace) -> int:
    from switch.ops import logs
    from switch.ops.operations import OperationError

    data_dir = Path(args.data_dir)
    logs.configure(stream=sys.stderr, level="warning")  # stdout carries the result (--json)
    try:
        result = ADMIN_ACTIONS[args.admin_action](args, data_dir)
    except OperationError as exc:
        print(f"eum admin: {exc}", file=sys.stderr)
        return 1
    if isinstance(result, int):
        return result
    _print(result, args.json)
    return 0


def _merchant_add(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    return _admin_op(data_dir, "merchant-add", {"mid": args.mid, "name": args.name, "district": args.district,
                                                 "annual_sales": args.annual_sales, "category": args.category,
                                                 "online_mall": args.online_mall}, clock=_clock(args))


def _terminal_add(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    return _admin_op(data_dir, "terminal-add", {"tid": args.tid, "mid": args.mid, "security": args.security,
                                                 "keys": args.keys, "group": args.group},
                     clock=_clock(args), hsm=_hsm(args))


def _kif_zmk(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    return _admin_op(data_dir, "kif-zmk", {"components": args.component}, clock=_clock(args), hsm=_hsm(args))


def _card_issue(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    return _admin_op(data_dir, "card-issue", {"program": args.program, "member": args.member, "expiry": args.expiry,
                                               "pin": args.pin}, clock=_clock(args), hsm=_hsm(args))


def _card_charge(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    op_args = {"pan": args.pan, "amount": args.amount}
    if args.request_id is not None:
        op_args["request_id"] = args.request_id
    return _admin_op(data_dir, "card-charge", op_args, clock=_clock(args))


def _card_status(op: str):
    def action(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
        return _admin_op(data_dir, op, {"pan": args.pan}, clock=_clock(args))
    return action


def _card_show(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    from switch.ledger.audit import card_statement
    from switch.ops.operations import OperationError
    from switch.domain import mask_pan

    result = card_statement(existing(data_dir), args.pan)
    if result is None:
        raise OperationError(f"card {mask_pan(args.pan)} not found")
    return result


def _verify(args: argparse.Namespace, data_dir: Path) -> int:
    from switch.ledger.audit import verify

    result = verify(existing(data_dir))
    if args.json:
        print(json.dumps({"ok": result.ok, "problem": result.problem, **result.stats}))
    elif result.ok:
        print("ledger verified: " + ", ".join(f"{k} {v:,}" for k, v in result.stats.items()))
    else:
        print(f"ledger NOT verified: {result.problem}", file=sys.stderr)
    return 0 if result.ok else 1


def _seed(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    from switch.ops.operations import OperationError
    from switch.rules.policy import default_config_dir, load_rules
    from switch.ops.runtime import DataDirBusy, lock_data_dir, unlock
    from switch.ledger.store import open_store
    from switch.ops.seed import export_population, seed

    writable_dir(data_dir)
    try:
        fd = lock_data_dir(data_dir, wait=False)
    except DataDirBusy:
        raise OperationError("a switch is running on this data dir; seed bulk-loads the ledger and needs it "
                             "to itself: stop the switch, seed, start it again") from None
    if args.pin_cards and not (args.hsm and args.pin):
        raise OperationError("--pin-cards needs --pin and --hsm (the HSM turns the PIN into each card's PVV)")
    try:
        started = time.perf_counter()
        db = open_store(data_dir)
        first_card = db_first_free_card(db)
        result = seed(db, load_rules(default_config_dir()), cards=args.cards, merchants=args.merchants,
                      seed_value=args.seed, now=_clock(args).now(), security=args.security)
        pins = _run(_set_pins(data_dir, first_card, args)) if args.pin_cards else {}
        if args.export:
            population = export_population(db, first_tid=result.first_tid, first_card_id=first_card,
                                           cards_max=args.export_cards, pins=pins)
            Path(args.export).write_text(json.dumps(population))
        return {**result.__dict__, "pin_cards": len(pins), "security": args.security,
                "seconds": round(time.perf_counter() - started, 2)}
    finally:
        unlock(fd)


def db_first_free_card(db: Path) -> int:
    from switch.ledger.sqlite import SqliteReader

    reader = SqliteReader(db)
    try:
        return reader.max_card_id() + 1
    finally:
        reader.close()


async def _set_pins(data_dir: Path, first_card: int, args: argparse.Namespace) -> dict[str, str]:
    """PVVs for the first --pin-cards seeded cards, computed by the HSM (BA + DG)."""
    from switch.ledger.records import CardPvvSet, Commit
    from switch.ops.runtime import open_core

    async with open_core(data_dir, clock=_clock(args), hsm=_hsm(args)) as core:
        rows = core.reader.cards_from(first_card, args.pin_cards)
        slots = asyncio.Semaphore(32)  # bounded: an HSM answers a few commands at a time, not thousands

        async def pvv(pan: str) -> str:
            async with slots:
                return await core.ops.security.pvv_for(args.pin, pan)

        pvvs = await asyncio.gather(*(pvv(pan) for _, pan in rows))
        await core.writer.submit(Commit(changes=tuple(CardPvvSet(cid, pvv) for (cid, _), pvv in zip(rows, pvvs))))
    return {pan: args.pin for _, pan in rows}


# ---------------------------------------------------------------------------- inventory
# Reads go to the ledger read-only (switch/ledger/audit.py): they work while a switch runs, on
# either store, and never make a ledger. Changes go through Operations, as card block does.

MONEY_COLUMNS = frozenset({"annual_sales", "cash", "cashback", "payable"})


def _table(rows: list[dict[str, Any]]) -> str:
    """Rows as aligned columns: text left, numbers right (won with thousands separators)."""
    if not rows:
        return "(none)"
    header = list(rows[0])
    cells = [[f"{r[k]:,}" if k in MONEY_COLUMNS else str(r[k]) for k in header] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    right = [isinstance(rows[0][k], int) and not isinstance(rows[0][k], bool) for k in header]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)).rstrip()
    return "\n".join([line(header), *(line(c) for c in cells)])


def _paged(args: argparse.Namespace, page: Any) -> int:
    """One page on stdout (a table, or one JSON object per line with --json); where the next
    page starts, on stderr, so stdout stays the rows alone."""
    if args.json:
        for row in page.rows:
            print(json.dumps(row, ensure_ascii=False))
    else:
        print(_table(page.rows))
    if page.next_after is not None:
        print(f"eum admin: more after this page: --after {page.next_after}", file=sys.stderr)
    return 0


def _terminal_list(args: argparse.Namespace, data_dir: Path) -> int:
    from switch.ledger.audit import terminal_page

    return _paged(args, terminal_page(existing(data_dir), after=args.after or "", limit=args.limit, mid=args.mid))


def _terminal_show(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    from switch.ledger.audit import terminal_view
    from switch.ops.operations import OperationError

    found = terminal_view(existing(data_dir), args.tid)
    if found is None:
        raise OperationError(f"terminal {args.tid} not found")
    return found


def _terminal_status(op: str):
    def action(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
        return _admin_op(data_dir, op, {"tid": args.tid}, clock=_clock(args))
    return action


def _merchant_list(args: argparse.Namespace, data_dir: Path) -> int:
    from switch.ledger.audit import merchant_page

    return _paged(args, merchant_page(existing(data_dir), after=args.after or "", limit=args.limit))


def _merchant_show(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    from switch.ledger.audit import merchant_view
    from switch.ops.operations import OperationError
    from switch.rules.fees import tier_for
    from switch.rules.policy import default_config_dir, load_rules

    tiers = load_rules(default_config_dir()).fees.tiers
    found = merchant_view(existing(data_dir), args.mid, fee_tier=lambda sales: tier_for(tiers, sales))
    if found is None:
        raise OperationError(f"merchant {args.mid} not found")
    return found


def _merchant_update(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    return _admin_op(data_dir, "merchant-update", {"mid": args.mid, "name": args.name, "category": args.category,
                                                    "annual_sales": args.annual_sales}, clock=_clock(args))


def _card_list(args: argparse.Namespace, data_dir: Path) -> int:
    from switch.ledger.audit import card_page

    return _paged(args, card_page(existing(data_dir), after=args.after or 0, limit=args.limit, program=args.program,
                                  member=args.member, status=args.status))


ADMIN_ACTIONS = {
    "merchant-add": _merchant_add,
    "merchant-list": _merchant_list,
    "merchant-show": _merchant_show,
    "merchant-update": _merchant_update,
    "terminal-add": _terminal_add,
    "terminal-list": _terminal_list,
    "terminal-show": _terminal_show,
    "terminal-disable": _terminal_status("terminal-disable"),
    "terminal-enable": _terminal_status("terminal-enable"),
    "card-list": _card_list,
    "card-find": _card_list,
    "card-issue": _card_issue,
    "card-charge": _card_charge,
    "card-block": _card_status("card-block"),
    "card-unblock": _card_status("card-unblock"),
    "card-unblock-pin": _card_status("card-unblock-pin"),
    "card-show": _card_show,
    "card-auto-charge": lambda args, data_dir: _admin_op(
        data_dir, "card-auto-charge", {"pan": args.pan, "threshold": args.threshold, "amount": args.amount},
        clock=_clock(args)),
    "holds-expire": lambda args, data_dir: _admin_op(data_dir, "holds-expire", {}, clock=_clock(args)),
    "verify": _verify,
    "kif-zmk": _kif_zmk,
    "seed": _seed,
}


# ---------------------------------------------------------------------------- parser

# Packages built on the switch add their subcommands here (pyproject.toml, [project.entry-points]):
# each entry point is a function taking the subparsers object. The switch imports none of them.
COMMANDS_GROUP = "eum.commands"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eum", description="eum-switch: ISO 8583 switch for a city prepaid card")
    sub = p.add_subparsers(dest="command", required=True)

    sw = sub.add_parser("switch", help="run the switch (ISO 8583 over TCP)")
    sw.add_argument("--listen", default="127.0.0.1:8583", help="HOST:PORT (default 127.0.0.1:8583)")
    sw.add_argument("--data-dir", default="var", help="ledger and logs (default ./var)")
    sw.add_argument("--store", help=STORE_HELP)
    sw.add_argument("--commit-interval-ms", type=float, default=SwitchConfig().commit_interval_ms_max,
                    help="the ledger's group window: a group may wait at most this long after its first unit "
                         "for requests already decided whose response is being MACed (never when none is; "
                         "0: never; longer: larger groups under load, more latency; default %(default)s)")
    sw.add_argument("--commit-linger-ms", type=float, default=SwitchConfig().commit_linger_ms,
                    help="under load (requests arriving less than 1 ms apart), how long a group may keep "
                         "waiting for requests not yet received, while each comes within 1 ms of the last: "
                         "less CPU a request at part load, up to this much more latency (0: never; "
                         "default %(default)s)")
    # several instances on one PostgreSQL ledger: docs/scale-out.md
    sw.add_argument("--cluster", action="store_true",
                    help="one of several instances sharing the --store ledger, by member ownership")
    sw.add_argument("--link", help="with --cluster: HOST:PORT this instance takes the other instances' requests on")
    sw.add_argument("--instance-id", help="with --cluster: this instance's name (default: its --link)")
    sw.add_argument("--lease-ttl-s", type=float, default=5.0,
                    help="with --cluster: a partition whose owner stops renewing is taken over after this long "
                         "(default %(default)s)")
    sw.add_argument("--warm-s", type=float, default=SwitchConfig().warm_s, metavar="SECONDS",
                    help="before serving, load cards into memory for at most this long, so that their first "
                         "requests read nothing from the ledger (0: none, each card read on its first use; "
                         "default %(default)s; docs/performance.md, \"A warm hot state on SQLite\")")
    sw.add_argument("--dialect", default="default", help="config/dialects/NAME.toml (default: default)")
    sw.add_argument("--clock-start", help="run the clock from this instant, e.g. 2019-07-20T12:00:00+09:00")
    sw.add_argument("--hsm", help="HOST:PORT[,HOST:PORT…] of the HSMs, in failover order (eum hsm: 127.0.0.1:1500)")
    sw.add_argument("--hsm-pin-verify", choices=("gq", "g0-ec"), default="gq",
                    help="TDES-DUKPT PIN check: gq (one command, with the request MAC; default) or g0-ec "
                         "(GW, then G0 and EC: an HSM without GQ)")
    sw.add_argument("--mqtt", help="mqtt://HOST:PORT: publish the event outbox to this broker (docs/events.md)")
    sw.add_argument("--metrics", metavar="HOST:PORT",
                    help="serve Prometheus metrics (/metrics), /healthz and /readyz here, e.g. 127.0.0.1:9464 "
                         "(docs/operations.md, \"Metrics and health\")")
    sw.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    sw.add_argument("--log-max-mb", type=int, default=100,
                    help="rotate <data-dir>/logs/switch.jsonl at this size (default 100; 0: never, for logrotate)")
    sw.add_argument("--log-keep", type=int, default=5, help="rotated log files kept (default 5)")
    defaults = SwitchConfig()
    sw.add_argument("--program-in-flight-max", type=int, default=defaults.program_in_flight_max,
                    help="requests of one card program in progress at once (default %(default)s)")
    sw.add_argument("--program-queue-max", type=int, default=defaults.program_queue_max,
                    help="requests of one program waiting for a slot; more are answered 91 (default %(default)s)")
    sw.add_argument("--program-wait-ms", type=float, default=defaults.program_wait_ms,
                    help="longest wait for a program slot, then 91 (default %(default)s)")
    # connection limits: docs/architecture.md, "Connection limits"
    sw.add_argument("--connections-max", type=int, default=defaults.connections_max,
                    help="open terminal connections; at the limit the oldest one that never sent a valid frame "
                    "is closed for a new one, else the new one is refused (default %(default)s)")
    sw.add_argument("--per-peer-max", type=int, default=defaults.per_peer_max,
                    help="open connections from one IP address, same rule (default %(default)s)")
    sw.add_argument("--idle-timeout-s", type=float, default=defaults.idle_timeout_s,
                    help="close a connection silent this long (default %(default)s)")
    sw.add_argument("--frame-timeout-ms", type=float, default=defaults.frame_timeout_ms,
                    help="close a connection whose frame is not complete this long after its first byte "
                    "(default %(default)s)")
    sw.add_argument("--signon-timeout-s", type=float, default=defaults.signon_timeout_s,
                    help="close a connection that has sent no valid frame (one with an MTI) this long after "
                    "connecting (default %(default)s)")
    sw.set_defaults(func=cmd_switch)

    ad = sub.add_parser("admin", help="operate on data: merchants, terminals, cards, verify, seed")
    ledger_flags(ad, after_subcommand=False)
    ad.add_argument("--json", action="store_true", help="machine-readable output")
    ad.add_argument("--hsm", help="HOST:PORT[,HOST:PORT] of the HSM, for card issue --pin when no switch runs")
    ad.add_argument("--clock-start", help="when no switch runs: date the operation at this instant "
                    "(e.g. the --clock-start the switch will use); a running switch uses its own clock")
    asub = ad.add_subparsers(dest="admin_group", required=True)
    _admin_parsers(asub)
    ad.set_defaults(func=cmd_admin)

    from switch.cli.report import add_report_parser

    add_report_parser(sub)

    from switch.cli.events import add_events_parser
    from switch.cli.logs import add_logs_parser

    add_events_parser(sub)
    add_logs_parser(sub)

    from switch.ops.top import add_top_parser

    add_top_parser(sub)  # `eum top`: a live console (docs/operations.md, "Live console")

    from switch.cert.cli import add_cert_parser

    add_cert_parser(sub)  # `eum cert serve|report`; terminal_sim adds `drive` (switch/cert/cli.py, cert_commands)

    for command in entry_points(group=COMMANDS_GROUP):  # eum hsm, terminal, fleet, demo, bench
        try:
            register = command.load()
        except ImportError:  # an entry point this source tree does not have (another tree's install
            continue         # metadata, as benchmarks/ab.py runs older trees): its command is absent
        register(sub)
    return p


def ledger_flags(parser: argparse.ArgumentParser, *, after_subcommand: bool) -> None:
    """--data-dir and --store, accepted before the subcommand (the default lives there) and
    after it (eum admin, eum report, eum events: `eum report daily --data-dir D` and
    `eum report --data-dir D daily` alike). After it, an absent flag must not overwrite one
    given before (argparse copies a subcommand's defaults over): hence SUPPRESS."""
    absent = {"default": argparse.SUPPRESS} if after_subcommand else {}
    parser.add_argument("--data-dir", **({"default": "var"} | absent), help="the switch's data dir (default ./var)")
    parser.add_argument("--store", **absent, help=STORE_HELP)


def _page_flags(parser: argparse.ArgumentParser, *, key: str, key_type: Any = str) -> None:
    from switch.ledger.audit import PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX

    parser.add_argument("--limit", type=int, default=PAGE_LIMIT_DEFAULT,
                        help=f"rows per page (default %(default)s, at most {PAGE_LIMIT_MAX:,})")
    parser.add_argument("--after", type=key_type, metavar=key,
                        help="the page after this key (the last row's, as the previous page says on stderr)")


def _json_flag(parser: argparse.ArgumentParser) -> None:
    # --json is accepted after the subcommand too (eum admin card show --pan P --json)
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")


def _admin_parsers(asub: Any) -> None:
    m = asub.add_parser("merchant").add_subparsers(dest="action", required=True)
    ma = m.add_parser("add")
    ma.add_argument("--mid", required=True)
    ma.add_argument("--name", required=True)
    ma.add_argument("--district", required=True)
    ma.add_argument("--annual-sales", type=int, required=True, help="won")
    ma.add_argument("--category", default="general")
    ma.add_argument("--online-mall", action="store_true")
    ma.set_defaults(admin_action="merchant-add")
    ml = m.add_parser("list", help="merchants in mid order, a page at a time")
    _page_flags(ml, key="MID")
    ml.set_defaults(admin_action="merchant-list")
    ms = m.add_parser("show", help="one merchant, its fee tier, terminals and payable")
    ms.add_argument("--mid", required=True)
    ms.set_defaults(admin_action="merchant-show")
    mu = m.add_parser("update", help="annual sales (each year: the fee tier follows), trade name or category; "
                      "the next authorization at the merchant uses them (docs/operations.md, \"Inventory\")")
    mu.add_argument("--mid", required=True)
    mu.add_argument("--annual-sales", type=int, help="won")
    mu.add_argument("--name")
    mu.add_argument("--category")
    mu.set_defaults(admin_action="merchant-update")

    t = asub.add_parser("terminal").add_subparsers(dest="action", required=True)
    ta = t.add_parser("add")
    ta.add_argument("--tid", required=True)
    ta.add_argument("--mid", required=True)
    ta.add_argument("--security", default="none", help="none | mac | dukpt-tdes | dukpt-aes")
    ta.add_argument("--keys", default="test", choices=("test", "generated"),
                    help="test: the published X9.24 test keys; generated: a BDK generated in the HSM per "
                         "--group, the terminal's initial key exported under the KIF ZMK (docs/security.md)")
    ta.add_argument("--group", default="default", help="terminal group sharing one generated BDK")
    ta.set_defaults(admin_action="terminal-add")
    tl = t.add_parser("list", help="terminals in tid order, a page at a time")
    _page_flags(tl, key="TID")
    tl.add_argument("--mid", help="only this merchant's terminals")
    tl.set_defaults(admin_action="terminal-list")
    inventory = [ml, ms, mu, tl]
    for name, help_ in (("show", "one terminal (never its keys)"),
                        ("disable", "answer the terminal's every message 58 from its next one on"),
                        ("enable", "undo disable")):
        tp = t.add_parser(name, help=help_)
        tp.add_argument("--tid", required=True)
        tp.set_defaults(admin_action=f"terminal-{name}")
        inventory.append(tp)

    c = asub.add_parser("card").add_subparsers(dest="action", required=True)
    ci = c.add_parser("issue")
    ci.add_argument("--program", required=True)
    ci.add_argument("--member")
    ci.add_argument("--expiry", help="YYMM (default: 5 years from now)")
    ci.add_argument("--pin", help="4-12 digits; the HSM turns it into a PVV, which is all that is stored")
    ci.set_defaults(admin_action="card-issue")
    cc = c.add_parser("charge")
    cc.add_argument("--pan", required=True)
    cc.add_argument("--amount", type=int, required=True, help="won")
    cc.add_argument("--request-id", help="makes the call idempotent: the same id again answers the first call's "
                    "result and charges nothing")
    cc.set_defaults(admin_action="card-charge")
    ac = c.add_parser("auto-charge", help="top the card up by --amount when a purchase finds it below --threshold "
                      "(--amount 0: off)")
    ac.add_argument("--pan", required=True)
    ac.add_argument("--threshold", type=int, required=True, help="won: cash + cashback below this triggers it")
    ac.add_argument("--amount", type=int, required=True, help="won charged from the member's bank (0: off)")
    ac.set_defaults(admin_action="card-auto-charge")
    for name in ("block", "unblock", "unblock-pin", "show"):
        cp = c.add_parser(name)
        cp.add_argument("--pan", required=True)
        cp.set_defaults(admin_action=f"card-{name}")
    cl = c.add_parser("list", help="cards in id order (PANs masked), a page at a time")
    cf = c.add_parser("find", help="a member's cards (PANs masked)")
    for cp, member_required in ((cl, False), (cf, True)):
        _page_flags(cp, key="ID", key_type=int)
        cp.add_argument("--member", required=member_required)
        cp.add_argument("--program", help="only this program's cards")
        cp.add_argument("--status", choices=("active", "blocked"))
    cl.set_defaults(admin_action="card-list")
    cf.set_defaults(admin_action="card-find")
    inventory += [cl, cf]

    h = asub.add_parser("holds", help="pre-authorization holds").add_subparsers(dest="action", required=True)
    he = h.add_parser("expire", help="release every open hold past its expiry ([preauth] hold_days; the running "
                      "switch does this every minute)")
    he.set_defaults(admin_action="holds-expire")

    kz = asub.add_parser("kif-zmk", help="form the key-injection facility's ZMK in the HSM from custodians' "
                         "clear components")
    kz.add_argument("--component", action="append", required=True, help="32 hex digits; give it 2-9 times")
    kz.set_defaults(admin_action="kif-zmk")
    v = asub.add_parser("verify", help="prove the whole ledger; exit 1 at the first discrepancy")
    v.set_defaults(admin_action="verify")
    s = asub.add_parser("seed", help="deterministic population of merchants, terminals and charged cards")
    s.add_argument("--cards", type=int, required=True)
    s.add_argument("--merchants", type=int, required=True)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--security", default="none", help="profile of the seeded terminals, under the test keys")
    s.add_argument("--pin-cards", type=int, default=0, help="the first K seeded cards get --pin (needs --hsm)")
    s.add_argument("--pin", help="the PIN of the --pin-cards cards")
    s.add_argument("--export", help="write the population file (terminals, cards, PINs) a fleet drives")
    s.add_argument("--export-cards", type=int, default=10_000, help="cards in the population file")
    s.set_defaults(admin_action="seed")
    for sp in (ma, ta, ci, cc, ac, v, s, kz, he, *inventory) + tuple(c.choices[n] for n in ("block", "unblock",
                                                                                        "unblock-pin", "show")):
        _json_flag(sp)
        ledger_flags(sp, after_subcommand=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "json"):
        args.json = False
    try:
        if getattr(args, "store", None) is not None:
            # the flag is $EUM_STORE for this process: every ledger reader and writer it opens
            # (and any command it runs) finds the same store (switch/ledger/store.py, locate)
            url = store_url(args.store)
            os.environ[STORE_ENV] = url or "sqlite"
        code = args.func(args) or 0
        sys.stdout.flush()  # a reader gone from stdout shows here, not as a traceback at exit
        return code
    except KeyboardInterrupt:
        return 130
    # the environment's faults, each one line and exit 2 (docs/operations.md, "Environment errors")
    except (ValueError, StoreUnavailable, EnvironmentFault) as exc:
        print(f"eum: {exc}", file=sys.stderr)
        return 2
    except HsmUnavailable as exc:
        print(f"eum: the HSM does not answer (--hsm {getattr(args, 'hsm', None)}): {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        if not _stdout_gone():  # a socket's broken pipe is not the environment's: a bug to see whole
            raise
        print("eum: standard output was closed before everything was written (broken pipe)", file=sys.stderr)
        return 2


def _stdout_gone() -> bool:
    """Whether stdout's reader has gone (`eum … | head`); if so stdout is pointed at /dev/null,
    so that the flush at exit does not fail a second time."""
    import select

    try:
        fd = sys.stdout.fileno()
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        gone = any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError):  # stdout is no file (captured): not a pipe that broke
        return False
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    return gone


if __name__ == "__main__":
    sys.exit(main())
