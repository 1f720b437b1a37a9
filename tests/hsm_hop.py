"""A TCP hop between the switch and a real hsm_mock server, under the test's control.

It forwards payShield frames both ways (2-byte length, 4-character header, 2-character command
code: docs/hsm.md, "Framing") and records each command it forwards as code plus mode for GW
("GW11" is the TDES DUKPT request-MAC check, "GW42" the response MAC; "GQ" the PIN checked
with the request MAC, docs/hsm.md "PIN verification"). What it does to a command is the
test's choice:

- `hold_pin`: the PIN check — a G0 (DUKPT PIN translation, docs/hsm.md "PIN translation")
  or a GQ — is swallowed: recorded in `swallowed`, never forwarded, so never answered;
- `cut_after_request_mac`: the reply to the next GW11 (or GQ) is delivered and then the HSM is gone:
  every connection is dropped and new ones are closed at once, until `restore()`;
- `refuse`: a command whose label is a key ("GW11", "G0", …) is answered by the hop itself
  with that error code (docs/hsm.md §4, e.g. 67 over capacity), recorded in `refused`.

`trace` lists, in the order the hop saw them, each command forwarded ("sent", label) and each
of the HSM's replies delivered ("answered", the label of the command it answers).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from hsm_mock.config import HsmConfig as HsmServiceConfig
from hsm_mock.service import HsmServer
from switch.authorize.hsm_client import HsmConfig
from switch.clock import FixedClock
from terminal_sim.security import TerminalSecurity
from terminal_sim.terminal import Terminal

from conftest import LAUNCH, SwitchEnv, start_switch


class HsmHop:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.up = True
        self.hold_pin = False
        self.cut_after_request_mac = False
        self.forwarded: list[str] = []
        self.swallowed: list[str] = []
        self.refuse: dict[str, str] = {}
        self.refused: list[str] = []
        self.trace: list[tuple[str, str]] = []
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._drop_all()
        self.server.close()
        await self.server.wait_closed()

    def restore(self) -> None:
        self.up = True

    def commands(self, *, but: tuple[str, ...] = ("NC",)) -> list[str]:
        """What was forwarded, without the health checks (NC)."""
        return [c for c in self.forwarded if c[:2] not in but]

    def _drop_all(self) -> None:
        for w in list(self.writers):
            w.close()
        self.writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.writers |= {writer, up_writer}
        watched: set[bytes] = set()  # headers of request-MAC checks after which the HSM goes
        labels: dict[bytes, str] = {}  # header → label of the commands forwarded on this connection
        await asyncio.gather(self._commands(reader, up_writer, watched, writer, labels),
                             self._replies(up_reader, writer, watched, labels), return_exceptions=True)
        for w in (writer, up_writer):
            w.close()
            self.writers.discard(w)

    @staticmethod
    async def _frame(reader: asyncio.StreamReader) -> bytes:
        size = int.from_bytes(await reader.readexactly(2), "big")
        return await reader.readexactly(size)

    async def _commands(self, reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter,
                        watched: set[bytes], writer: asyncio.StreamWriter, labels: dict[bytes, str]) -> None:
        while True:
            payload = await self._frame(reader)
            if not self.up:
                raise ConnectionError("the HSM is gone")
            code = payload[4:6].decode()
            label = code + (payload[6:8].decode() if code == "GW" else "")
            if code in ("G0", "GQ") and self.hold_pin:
                self.swallowed.append(label)
                continue
            if label in self.refuse:  # the response code is the command's with its second letter + 1
                self.refused.append(label)
                reply = payload[:4] + (code[0] + chr(ord(code[1]) + 1)).encode() + self.refuse[label].encode()
                writer.write(len(reply).to_bytes(2, "big") + reply)
                continue
            self.forwarded.append(label)
            self.trace.append(("sent", label))
            labels[payload[:4]] = label
            if label in ("GW11", "GQ") and self.cut_after_request_mac:
                watched.add(payload[:4])
            up_writer.write(len(payload).to_bytes(2, "big") + payload)

    async def _replies(self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       watched: set[bytes], labels: dict[bytes, str]) -> None:
        while True:
            payload = await self._frame(up_reader)
            writer.write(len(payload).to_bytes(2, "big") + payload)
            self.trace.append(("answered", labels.pop(payload[:4], "?")))
            if payload[:4] in watched:  # the request MAC is verified: the HSM dies before anything else
                self.cut_after_request_mac = False
                self.up = False
                await writer.drain()
                self._drop_all()
                return


@dataclass
class BehindHop:
    """A switch whose HSM (a real hsm_mock) answers through an HsmHop, provisioned with one
    merchant (NAMDONG01), one DUKPT-TDES terminal under the test keys and one Namdong card
    charged 100,000 (posting 1)."""

    env: SwitchEnv
    hop: HsmHop
    pan: str
    term: Terminal
    security: TerminalSecurity


@asynccontextmanager
async def switch_behind_hop(data_dir: Path, *, tid: str, pin: str | None = None,
                            pin_verify: str = "gq") -> AsyncIterator[BehindHop]:
    """pin_verify: the switch's HsmConfig.pin_verify ("gq", its default, or "g0-ec")."""
    hsm = HsmServer(HsmServiceConfig(port=0))
    await hsm.start()
    hop = HsmHop(hsm.port)
    await hop.start()
    config = HsmConfig(endpoints=(("127.0.0.1", hop.port),), call_timeout_ms=300, health_interval_s=0.05,
                       reconnect_backoff_s_max=0.1, pin_verify=pin_verify)
    try:
        async with start_switch(data_dir, clock=FixedClock(LAUNCH), hsm=config) as env:
            await env.op("merchant-add", mid="NAMDONG01", name="Namdong Cafe", district="namdong",
                         annual_sales=250_000_000)
            provisioned = await env.op("terminal-add", tid=tid, mid="NAMDONG01", security="dukpt-tdes", keys="test")
            issue = {"program": "namdong", **({"pin": pin} if pin is not None else {})}
            pan = (await env.op("card-issue", **issue))["pan"]
            await env.op("card-charge", pan=pan, amount=100_000)  # posting 1
            yield BehindHop(env, hop, pan, Terminal(tid, "NAMDONG01"),
                            TerminalSecurity.for_test_keys("dukpt-tdes", provisioned["ksn"]))
    finally:
        await hop.stop()
        await hsm.stop()
