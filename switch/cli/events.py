"""`eum events tail|status|subscribe`: the outbox from the store, and the MQTT stream.

`tail` and `status` read the ledger's outbox on a read-only connection (WAL), so they work
with or without a switch running, and with or without a broker. `subscribe` is the
reference consumer (switch/ops/consumer.py). Each prints one JSON object per line on stdout;
logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from switch.ledger.events import STREAMS
from switch.ledger.store import existing

FOLLOW_POLL_S = 0.2
TAIL_BATCH_MAX = 1000


def add_events_parser(sub: Any) -> None:
    from switch.cli.main import ledger_flags

    ev = sub.add_parser("events", help="the event outbox and its MQTT topics (docs/events.md)")
    ledger_flags(ev, after_subcommand=False)
    esub = ev.add_subparsers(dest="events_action", required=True)

    tail = esub.add_parser("tail", help="print events from the outbox (works while a switch runs)")
    ledger_flags(tail, after_subcommand=True)
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing events as they are committed")
    tail.add_argument("--last", type=int, default=10, help="start with the last N events (default 10; 0: all)")
    tail.add_argument("--after-seq", type=int, help="start after this outbox sequence number instead")
    tail.add_argument("--program", help="only this program's events")
    tail.add_argument("--stream", choices=STREAMS, help="only cashback or only transaction events")
    tail.add_argument("--envelope", action="store_true",
                      help='print {"seq", "topic", "relayed", "event"} instead of the bare event')
    tail.add_argument("--count", type=int, help="stop after N events")
    tail.add_argument("--timeout", type=float, help="with --follow: stop after S seconds")
    tail.set_defaults(func=cmd_tail)

    st = esub.add_parser("status", help="outbox size, relay position, backlog and its age, as JSON")
    ledger_flags(st, after_subcommand=True)
    st.set_defaults(func=cmd_status)

    sb = esub.add_parser("subscribe", help="reference consumer: print each event once (dedup on event_id)")
    sb.add_argument("--mqtt", required=True, help="mqtt://HOST:PORT of the broker")
    sb.add_argument("--program", action="append", help="only this program (repeatable; default: all)")
    sb.add_argument("--stream", choices=STREAMS, help="only cashback or only transaction events")
    sb.add_argument("--client-id", default="", help="a persistent session under this id: the broker keeps "
                    "events for it while it is away (default: a clean session)")
    sb.add_argument("--count", type=int, help="exit 0 after printing N events")
    sb.add_argument("--timeout", type=float, help="exit after S seconds (1 if --count was not reached)")
    sb.add_argument("--no-dedup", action="store_true", help="print duplicates too (they are still counted)")
    sb.set_defaults(func=cmd_subscribe)


# ---------------------------------------------------------------------------- tail, status

def _reader(data_dir: Path):
    from switch.ledger.outbox import OutboxReader

    db = existing(data_dir)  # "no ledger at DIR" (NoLedger, one line from main): never an empty one made
    reader = OutboxReader(db)
    if not reader.has_outbox():  # a store no switch of this version has opened yet
        reader.close()
        raise ValueError(f"{db} has no outbox yet: start the switch (or any eum admin command) on it once")
    return reader


def cmd_status(args: argparse.Namespace) -> int:
    reader = _reader(Path(args.data_dir))
    try:
        print(json.dumps(reader.status().as_dict()))
    finally:
        reader.close()
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    if args.last < 0 or (args.count is not None and args.count < 1):
        raise ValueError("--last must be ≥ 0 and --count ≥ 1")
    reader = _reader(Path(args.data_dir))
    streams = (args.stream,) if args.stream else ()
    deadline = time.monotonic() + args.timeout if args.timeout is not None else None
    printed = 0
    try:
        if args.after_seq is not None:
            position = args.after_seq
        elif args.last == 0:
            position = 0
        else:
            position = reader.start_of_last(args.last, streams=streams, program=args.program)
        while True:
            limit = TAIL_BATCH_MAX if args.count is None else min(TAIL_BATCH_MAX, args.count - printed)
            rows = reader.rows_after(position, limit=limit, streams=streams, program=args.program)
            relayed = reader.position() if args.envelope and rows else 0
            for row in rows:
                if args.envelope:
                    line = json.dumps({"seq": row.seq, "topic": row.topic, "relayed": row.seq <= relayed,
                                       "event": json.loads(row.payload)}, ensure_ascii=False)
                else:
                    line = row.payload
                sys.stdout.write(line + "\n")
                position = row.seq
            printed += len(rows)
            sys.stdout.flush()
            if args.count is not None and printed >= args.count:
                return 0
            if not args.follow:
                if len(rows) == limit:
                    continue
                return 0
            if deadline is not None and time.monotonic() >= deadline:
                return 0
            if not rows:
                time.sleep(FOLLOW_POLL_S)
    except KeyboardInterrupt:
        return 0
    finally:  # `eum events tail | head`: the broken pipe is one line from main, as for every command
        reader.close()


# ---------------------------------------------------------------------------- subscribe

BROKER_PROBE_TIMEOUT_S = 2.0


async def broker_problem(host: str, port: int, *, timeout_s: float = BROKER_PROBE_TIMEOUT_S) -> str | None:
    """Why the broker's TCP port does not answer ("connection refused", "no answer within 2 s"),
    or None when it does. A probe, not a session: the consumer and the relay connect on their own."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except asyncio.TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except OSError as exc:  # its text names the address; the reason is the errno's
        return os.strerror(exc.errno).lower() if exc.errno else type(exc).__name__
    writer.close()
    return None


def cmd_subscribe(args: argparse.Namespace) -> int:
    from switch.ops import logs
    from switch.ops.consumer import ConsumerConfig, consume
    from switch.ledger.relay import parse_mqtt_url

    host, port = parse_mqtt_url(args.mqtt)
    # a broker that is not there at the start is the environment's fault: one line, exit 2; once
    # connected, the consumer rides out the broker's restarts (docs/events.md)
    problem = asyncio.run(broker_problem(host, port))
    if problem is not None:
        print(f"eum events: the MQTT broker at {host}:{port} does not answer ({problem})", file=sys.stderr)
        return 2
    config = ConsumerConfig(host=host, port=port, programs=tuple(args.program or ()),
                            streams=(args.stream,) if args.stream else STREAMS, client_id=args.client_id,
                            count_max=args.count, timeout_s=args.timeout, dedup=not args.no_dedup)
    logs.configure(stream=sys.stderr, level="info")  # stdout carries the events
    import structlog

    log = structlog.get_logger()

    async def main() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await consume(config, sys.stdout, stop=stop)

    # the standard event loop, not uvloop: with uvloop, aiomqtt 2.5 now and then misses the
    # broker's death while receiving (a queued add_writer on the closed socket fails) and the
    # consumer would wait forever; the relay is safe there (every publish has a timeout)
    result = asyncio.run(main())
    log.info("subscriber_done", received=result.received, printed=result.printed, duplicates=result.duplicates,
             malformed=result.malformed, reconnects=result.reconnects, complete=result.complete,
             by_type=result.by_type)
    return 0 if result.complete else 1
