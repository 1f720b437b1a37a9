"""Worked hex examples for docs/host-interface.md, produced by the code over real TCP.

`python -m terminal_sim.docgen` rewrites the part of docs/host-interface.md between the markers;
tests/test_docs.py regenerates it and fails if the document no longer matches the code.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from datetime import datetime
from pathlib import Path

from switch.clock import FixedClock
from switch.wire.codec import load_dialect
from switch.ops.config import SwitchConfig
from switch.authorize.hsm_client import HsmConfig
from switch.ops.runtime import lock_data_dir, open_core, unlock
from switch.authorize.server import Processor, SwitchServer

BEGIN = "<!-- BEGIN GENERATED EXAMPLES (python -m terminal_sim.docgen) -->"
END = "<!-- END GENERATED EXAMPLES -->"
AT = datetime.fromisoformat("2019-07-20T12:00:00+09:00")


def hexdump(data: bytes) -> str:
    lines = []
    for off in range(0, len(data), 16):
        chunk = data[off : off + 16]
        hexes = " ".join(f"{b:02X}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{off:04X}  {hexes:<47}  {text}")
    return "\n".join(lines)


async def _examples(data_dir: Path) -> list[tuple[str, bytes, dict, bytes, dict]]:
    from hsm_mock.config import HsmConfig as HsmServiceConfig
    from hsm_mock.service import HsmServer

    clock = FixedClock(AT)
    out: list[tuple[str, bytes, dict, bytes, dict]] = []
    fd = lock_data_dir(data_dir, wait=False)
    try:
        async with HsmServer(HsmServiceConfig(port=0)) as hsm:
            endpoints = HsmConfig(endpoints=(("127.0.0.1", hsm.port),))
            async with open_core(data_dir, clock=clock, hsm=endpoints) as core:
                server = SwitchServer(SwitchConfig(port=0, data_dir=data_dir),
                                      Processor(core.engine, load_dialect("default")), core.ops)
                await server.start()
                try:
                    await _plain_examples(core.ops, server.port, clock, out)
                    await _secured_examples(core.ops, server.port, clock, out)
                finally:
                    await server.stop()
    finally:
        unlock(fd)
    return out


async def _plain_examples(ops, port: int, clock: FixedClock, out: list) -> None:
    from terminal_sim.client import TerminalClient
    from terminal_sim.terminal import Terminal

    await ops.run("merchant-add", {"mid": "NAMDONG01", "name": "Namdong Cafe", "district": "namdong",
                                   "annual_sales": 250_000_000})
    await ops.run("terminal-add", {"tid": "T0000001", "mid": "NAMDONG01"})
    card = await ops.run("card-issue", {"program": "namdong", "expiry": "2412"})
    await ops.run("card-charge", {"pan": card["pan"], "amount": 50_000})
    term = Terminal("T0000001", "NAMDONG01", now=clock.now)
    pan = card["pan"]
    async with TerminalClient("127.0.0.1", port, load_dialect("default")) as client:
        async def exchange(title: str, fields: dict[str, str]) -> dict[str, str]:
            raw = client.encode(fields)
            answer = await client.request(fields)
            out.append((title, raw, fields, client.last_response_bytes, answer))
            return answer

        await exchange("0800 sign-on → 0810", term.sign_on())
        purchase = term.purchase(pan, 20_000, expiry="2412")
        approved = await exchange("0200 purchase → 0210 approved", purchase)
        await exchange("0200 balance inquiry → 0210", term.balance(pan, expiry="2412"))
        await exchange("0201 repeat of the purchase → the stored 0210, nothing posted", term.repeat(purchase))
        await exchange("0200 refund (DE37 of the purchase) → 0210",
                       term.refund(pan, 5_000, approved["37"], expiry="2412"))
        await exchange("0400 partial reversal of the purchase (DE95 = 12,000 stands) → 0410",
                       term.reversal(purchase, replacement_amount=12_000))
        second = term.purchase(pan, 3_000, expiry="2412")
        await exchange("0200 purchase → 0210 approved", second)
        await exchange("0420 reversal advice → 0430", term.reversal(second, advice=True))
        await exchange("0200 purchase over the balance → 0210 declined 51",
                       term.purchase(pan, 900_000, expiry="2412"))
        await exchange("0800 echo → 0810", term.echo())


async def _secured_examples(ops, port: int, clock: FixedClock, out: list) -> None:
    """One PIN purchase per security profile, test keys, PIN 1234 (docs/security.md)."""
    from terminal_sim.client import TerminalClient
    from terminal_sim.security import TakSecurity, TerminalSecurity
    from terminal_sim.terminal import Terminal

    card = await ops.run("card-issue", {"program": "namdong", "expiry": "2412", "pin": "1234"})
    await ops.run("card-charge", {"pan": card["pan"], "amount": 50_000})
    for n, profile in enumerate(("mac", "dukpt-tdes", "dukpt-aes"), start=2):
        tid = f"T000000{n}"
        provisioned = await ops.run("terminal-add", {"tid": tid, "mid": "NAMDONG01", "security": profile})
        if profile == "mac":
            security = TakSecurity.for_test_keys()
        else:
            security = TerminalSecurity.for_test_keys(profile, provisioned["ksn"])
            security.iso4_fill = bytes.fromhex("2F69ADDE2E9E7ACE")  # the X9.24-3 supplement's fill
        term = Terminal(tid, "NAMDONG01", now=clock.now)
        async with TerminalClient("127.0.0.1", port, load_dialect("default"), security=security) as client:
            await client.request(term.sign_on())
            fields = term.purchase(card["pan"], 10_000, expiry="2412")
            pin = None if profile == "mac" else "1234"
            secured, payload = client.secure(fields, pin=pin, pan=card["pan"])
            await client.send_raw(client._frame(payload))
            answer = await client.receive()
            assert security.verify_response(client.last_response_payload, ksn=secured.get("53"))
            what = "no PIN" if pin is None else "PIN 1234"
            out.append((f"Security profile {profile}: 0200 purchase ({what}, MAC in DE64) → 0210 with its MAC",
                        client._frame(payload), {**secured, "64": payload[-8:].hex().upper()},
                        client.last_response_bytes, answer))


def render() -> str:
    with tempfile.TemporaryDirectory(prefix="eum-docgen-") as tmp:
        examples = asyncio.run(_examples(Path(tmp) / "var"))
    parts = [BEGIN, "",
             "Produced by `python -m terminal_sim.docgen` against a real switch (clock pinned to "
             "2019-07-20 12:00 KST; test card charged 50,000 KRW; default dialect). "
             "The first two bytes of each frame are the binary length header. The last three "
             "examples are one per security profile, with the published test keys (docs/security.md): "
             "their MACs and PIN blocks can be checked with any X9.24 tool.", ""]
    for title, req, req_fields, resp, resp_fields in examples:
        parts += [f"### {title}", "", "Request fields: `" + _fields(req_fields) + "`", "", "```", hexdump(req), "```",
                  "", "Response fields: `" + _fields(resp_fields) + "`", "", "```", hexdump(resp), "```", ""]
    parts.append(END)
    return "\n".join(parts)


def _fields(fields: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("p",))


def rewrite(doc: Path) -> bool:
    text = doc.read_text(encoding="utf-8")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    new = text[:start] + render() + text[end:]
    changed = new != text
    doc.write_text(new, encoding="utf-8")
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--doc", default=str(Path(__file__).resolve().parents[1] / "docs" / "host-interface.md"))
    args = parser.parse_args()
    print("updated" if rewrite(Path(args.doc)) else "unchanged", args.doc)


if __name__ == "__main__":
    main()
