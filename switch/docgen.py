"""Worked hex examples for docs/host-interface.md, produced by the code over real TCP.

`python -m switch.docgen` rewrites the part of docs/host-interface.md between the markers;
tests/test_docs.py regenerates it and fails if the document no longer matches the code.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from datetime import datetime
from pathlib import Path

from .clock import FixedClock
from .codec import load_dialect
from .config import SwitchConfig
from .runtime import lock_data_dir, open_core, unlock
from .server import Processor, SwitchServer

BEGIN = "<!-- BEGIN GENERATED EXAMPLES (python -m switch.docgen) -->"
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
    from terminal_sim.client import TerminalClient
    from terminal_sim.terminal import Terminal

    clock = FixedClock(AT)
    out = []
    fd = lock_data_dir(data_dir, wait=False)
    try:
        async with open_core(data_dir, clock=clock) as core:
            ops = core.ops
            await ops.run("merchant-add", {"mid": "NAMDONG01", "name": "Namdong Cafe", "district": "namdong",
                                           "annual_sales": 250_000_000})
            await ops.run("terminal-add", {"tid": "T0000001", "mid": "NAMDONG01"})
            card = await ops.run("card-issue", {"program": "namdong", "expiry": "2412"})
            await ops.run("card-charge", {"pan": card["pan"], "amount": 50_000})
            server = SwitchServer(SwitchConfig(port=0, data_dir=data_dir), Processor(core.engine, load_dialect("default")), ops)
            await server.start()
            try:
                term = Terminal("T0000001", "NAMDONG01", now=lambda: clock.now())
                pan = card["pan"]
                async with TerminalClient("127.0.0.1", server.port, load_dialect("default")) as client:
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
            finally:
                await server.stop()
    finally:
        unlock(fd)
    return out


def render() -> str:
    with tempfile.TemporaryDirectory(prefix="eum-docgen-") as tmp:
        examples = asyncio.run(_examples(Path(tmp) / "var"))
    parts = [BEGIN, "",
             "Produced by `python -m switch.docgen` against a real switch (clock pinned to "
             "2019-07-20 12:00 KST; test card charged 50,000 KRW; default dialect). "
             "The first two bytes of each frame are the binary length header.", ""]
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
