"""The reference consumer (`eum events subscribe`): MQTT → one JSON event per line, each
event once.

Delivery is at least once (docs/events.md): the relay re-sends after a crash between PUBACK
and its mark, the broker re-delivers QoS 1 messages it has no PUBACK for. The consumer
therefore keeps the `event_id`s it has seen (the "inbox", here bounded in memory) and
prints an event only the first time. A real consumer keeps them durably, in the same
transaction as its own effect.

With a client id the session is persistent (clean_session false): a broker that keeps
sessions holds QoS 1 events for this consumer while it is away.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, TextIO

import aiomqtt
import structlog

from switch.ledger.events import STREAMS

log = structlog.get_logger()


class Inbox:
    """The event_ids seen, at most `size_max` (the oldest are forgotten first)."""

    def __init__(self, size_max: int = 1_000_000) -> None:
        self.size_max = size_max
        self._seen: set[str] = set()
        self._order: deque[str] = deque()

    def first_time(self, event_id: str) -> bool:
        if event_id in self._seen:
            return False
        self._seen.add(event_id)
        self._order.append(event_id)
        if len(self._order) > self.size_max:
            self._seen.discard(self._order.popleft())
        return True


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    host: str
    port: int
    programs: tuple[str, ...] = ()              # empty: every program
    streams: tuple[str, ...] = STREAMS
    client_id: str = ""                         # set: persistent session
    count_max: int | None = None                # stop after this many events printed
    timeout_s: float | None = None              # stop after this long in all
    dedup: bool = True
    inbox_size_max: int = 1_000_000
    backoff_s_min: float = 0.1
    backoff_s_max: float = 2.0

    def topics(self) -> list[str]:
        return [f"eum/{p}/{s}" for p in (self.programs or ("+",)) for s in self.streams]


@dataclass
class ConsumerResult:
    received: int = 0
    printed: int = 0
    duplicates: int = 0
    malformed: int = 0
    reconnects: int = 0
    complete: bool = False  # count_max reached (or no count asked for)
    by_type: dict[str, int] = field(default_factory=dict)


async def consume(config: ConsumerConfig, out: TextIO, *, stop: asyncio.Event | None = None,
                  on_subscribed: Callable[[], None] | None = None) -> ConsumerResult:
    result = ConsumerResult()
    inbox = Inbox(config.inbox_size_max)
    stop = stop or asyncio.Event()

    async def run() -> None:
        backoff = config.backoff_s_min
        while True:
            try:
                async with aiomqtt.Client(config.host, config.port, identifier=config.client_id or None,
                                          clean_session=not config.client_id, timeout=5) as client:
                    for t in config.topics():
                        await client.subscribe(t, qos=1)
                    backoff = config.backoff_s_min
                    log.info("subscribed", broker=f"{config.host}:{config.port}", topics=config.topics(),
                             persistent=bool(config.client_id))
                    if on_subscribed is not None:
                        on_subscribed()
                    async for message in client.messages:
                        if _take(message.payload, config, inbox, result, out):
                            return
            except aiomqtt.MqttError as exc:
                result.reconnects += 1
                wait = backoff * (0.5 + random.random() / 2)
                log.warning("subscriber_disconnected", error=str(exc), retry_in_s=round(wait, 2))
                await asyncio.sleep(wait)
                backoff = min(backoff * 2, config.backoff_s_max)

    task = asyncio.ensure_future(run())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, timeout=config.timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, stopper):
            t.cancel()
        await asyncio.gather(task, stopper, return_exceptions=True)
    result.complete = config.count_max is None or result.printed >= config.count_max
    return result


def _take(payload: object, config: ConsumerConfig, inbox: Inbox, result: ConsumerResult, out: TextIO) -> bool:
    """Print one delivery unless it is a duplicate; True when count_max is reached."""
    result.received += 1
    text = payload.decode("utf-8", "replace") if isinstance(payload, (bytes, bytearray)) else str(payload)
    try:
        event = json.loads(text)
        event_id, event_type = event["event_id"], event["type"]
    except (ValueError, KeyError, TypeError):
        result.malformed += 1
        log.warning("event_malformed", size=len(text))
        return False
    if not inbox.first_time(event_id):
        result.duplicates += 1
        if config.dedup:
            return False
    out.write(text + "\n")
    out.flush()
    result.printed += 1
    result.by_type[event_type] = result.by_type.get(event_type, 0) + 1
    return config.count_max is not None and result.printed >= config.count_max
