"""`eum`: the one console command. Entry point: wires concrete collaborators, configures logs."""

from __future__ import annotations

import argparse
import asyncio
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
from switch.ledger.store import STORE_ENV, STORE_HELP, StoreUnavailable, store_url
from switch.wire.transport import parse_hostport
from switch.wire.transport import run as _run


def _clock(args: argparse.Namespace) -> Clock:
    start = getattr(args, "clock_start", None)
    return OffsetClock(parse_instant(start)) if start else SystemClock()


def _hsm(args: argparse.Namespace) -> Any:
    from switch.authorize.hsm_client import HsmConfig, parse_endpoints

    text = getattr(args, "hsm", None)
    return HsmConfig(endpoints=parse_endpoints(text)) if text else None


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
    from switch.ops.runtime import DataDirBusy, lock_data_dir, open_core, unlock
    from switch.authorize.server import Processor, SwitchServer, serve_until_signalled

    host, port = parse_hostport(args.listen)
    config = SwitchConfig(host=host, port=port, data_dir=Path(args.data_dir), dialect=args.dialect,
                          program_in_flight_max=args.program_in_flight_max, program_queue_max=args.program_queue_max,
                          program_wait_ms=args.program_wait_ms, connections_max=args.connections_max,
                          per_peer_max=args.per_peer_max, idle_timeout_s=args.idle_timeout_s,
                          frame_timeout_ms=args.frame_timeout_ms, signon_timeout_s=args.signon_timeout_s,
                          commit_interval_ms_max=args.commit_interval_ms)
    dialect = load_dialect(config.dialect)
    check_responses(dialect)  # before anything is created: a dialect that cannot answer is refused
    relay = _relay(args)
    cluster = _cluster(args)
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

    async def main() -> None:
        async with open_core(config.data_dir, clock=_clock(args), batch_size_max=config.batch_size_max,
                             commit_interval_ms_max=config.commit_interval_ms_max,
                             queue_size_max=config.queue_size_max, hsm=_hsm(args), relay=relay,
                             cluster=cluster) as core:
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
            expiring = asyncio.create_task(_expire_holds(core.ops))
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, logs.reopen)  # after logrotate
            try:
                await serve_until_signalled(server, *links)
            finally:
                expiring.cancel()
                if router is not None:
                    await router.close()

    try:
        _run(main())
    finally:
        logs.flush()
        unlock(fd)
    return 0


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

def _admin_op(data_dir: Path, op: str, op_args: dict[str, Any], *, clock: Clock, hsm: Any = None) -> dict[str, Any]:
    """Run an operation in the process that owns the data dir: here if no switch runs,
    else in the switch, over its control socket."""
    from switch.ops.runtime import DataDirBusy, lock_data_dir, open_core, unlock
    from switch.authorize.server import control_socket_path

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
    return _admin_op(data_dir, "card-charge", {"pan": args.pan, "amount": args.amount}, clock=_clock(args))


def _card_status(op: str):
    def action(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
        return _admin_op(data_dir, op, {"pan": args.pan}, clock=_clock(args))
    return action


def _card_show(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    from switch.ledger.audit import card_statement
    from switch.ledger.store import open_store
    from switch.ops.operations import OperationError
    from switch.domain import mask_pan

    result = card_statement(open_store(data_dir), args.pan)
    if result is None:
        raise OperationError(f"card {mask_pan(args.pan)} not found")
    return result


def _verify(args: argparse.Namespace, data_dir: Path) -> int:
    from switch.ledger.audit import verify
    from switch.ledger.store import open_store

    result = verify(open_store(data_dir))
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


ADMIN_ACTIONS = {
    "merchant-add": _merchant_add,
    "terminal-add": _terminal_add,
    "card-issue": _card_issue,
    "card-charge": _card_charge,
    "card-block": _card_status("card-block"),
    "card-unblock": _card_status("card-unblock"),
    "card-unblock-pin": _card_status("card-unblock-pin"),
    "card-show": _card_show,
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
                    help="the ledger's group window: a group commits at most this long after its first unit "
                         "(longer: larger groups, less CPU per approval, more latency; default %(default)s)")
    # several instances on one PostgreSQL ledger: docs/scale-out.md
    sw.add_argument("--cluster", action="store_true",
                    help="one of several instances sharing the --store ledger, by member ownership")
    sw.add_argument("--link", help="with --cluster: HOST:PORT this instance takes the other instances' requests on")
    sw.add_argument("--instance-id", help="with --cluster: this instance's name (default: its --link)")
    sw.add_argument("--lease-ttl-s", type=float, default=5.0,
                    help="with --cluster: a partition whose owner stops renewing is taken over after this long "
                         "(default %(default)s)")
    sw.add_argument("--dialect", default="default", help="config/dialects/NAME.toml (default: default)")
    sw.add_argument("--clock-start", help="run the clock from this instant, e.g. 2019-07-20T12:00:00+09:00")
    sw.add_argument("--hsm", help="HOST:PORT[,HOST:PORT…] of the HSMs, in failover order (eum hsm: 127.0.0.1:1500)")
    sw.add_argument("--mqtt", help="mqtt://HOST:PORT: publish the event outbox to this broker (docs/events.md)")
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
    ad.add_argument("--data-dir", default="var")
    ad.add_argument("--store", help=STORE_HELP)
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

    from switch.cert.cli import add_cert_parser

    add_cert_parser(sub)  # `eum cert serve|report`; terminal_sim adds `drive` (switch/cert/cli.py, cert_commands)

    for command in entry_points(group=COMMANDS_GROUP):  # eum hsm, terminal, fleet, demo, bench
        command.load()(sub)
    return p


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
    cc.set_defaults(admin_action="card-charge")
    for name in ("block", "unblock", "unblock-pin", "show"):
        cp = c.add_parser(name)
        cp.add_argument("--pan", required=True)
        cp.set_defaults(admin_action=f"card-{name}")

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
    for sp in (ma, ta, ci, cc, v, s, kz, he) + tuple(c.choices[n] for n in ("block", "unblock", "unblock-pin", "show")):
        _json_flag(sp)


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
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except (ValueError, StoreUnavailable) as exc:
        print(f"eum: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
