"""The generated parts of docs/host-interface.md: the field dictionary and each message
pair's field table (from switch/wire/fields.py, the dialect file and ECHO_FIELDS), and the
worked hex examples (produced by the code over real TCP).

`python -m terminal_sim.docgen` rewrites every part of docs/host-interface.md between its
markers; tests/test_docs.py regenerates them and fails if the document no longer matches the
code.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from switch.clock import FixedClock
from switch.wire import fields as spec
from switch.wire.codec import Dialect, load_dialect
from switch.ops.config import SwitchConfig
from switch.authorize.hsm_client import HsmConfig
from switch.ops.runtime import lock_data_dir, open_core, unlock
from switch.authorize.server import Processor, SwitchServer

BEGIN = "<!-- BEGIN GENERATED EXAMPLES (python -m terminal_sim.docgen) -->"
END = "<!-- END GENERATED EXAMPLES -->"
AT = datetime.fromisoformat("2019-07-20T12:00:00+09:00")
FIELDS_BEGIN = "<!-- BEGIN GENERATED FIELD DICTIONARY (python -m terminal_sim.docgen) -->"
FIELDS_END = "<!-- END GENERATED FIELD DICTIONARY -->"


def pair_markers(request: str) -> tuple[str, str]:
    """The markers around a message pair's field table, named by its request MTI."""
    return (f"<!-- BEGIN GENERATED FIELDS {request} (python -m terminal_sim.docgen) -->",
            f"<!-- END GENERATED FIELDS {request} -->")


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


# ---------------------------------------------------------------------------- field tables

_VAR = {1: "LVAR", 2: "LLVAR", 3: "LLLVAR", 4: "LLLLVAR"}
_ENCODING = {"ascii": "ASCII", "b": "binary", "bcd": "BCD", "cp500": "EBCDIC"}


def wire_format(f: dict[str, Any]) -> str:
    """A field's format as its dialect spec gives it: encoding, fixed or variable, its
    (maximum) length and, for a variable one, how its length is written."""
    binary = f["data_enc"] == "b"
    unit = " bytes" if binary else ""
    data = _ENCODING.get(f["data_enc"], f["data_enc"])
    if not f["len_type"]:
        return f"{data}, fixed {f['max_len']}{unit}"
    if f["len_enc"] == "b":
        length = f"{f['len_type']}-byte binary length"
    else:
        length = f"{f['len_type']}-digit {_ENCODING.get(f['len_enc'], f['len_enc'])} length"
    return f"{data}, {_VAR[f['len_type']]} ..{f['max_len']}{unit}, {length}"


def _header(group: tuple[spec.MessagePair, ...], side: str) -> str:
    return ", ".join(getattr(pair, side) for pair in group)


def render_field_dictionary(*, dialect: Dialect | None = None) -> str:
    """§2 "Field dictionary": every data element a request or response uses, its format in
    the default dialect, and its code in each message pair."""
    dialect = dialect or load_dialect("default")
    s = dialect.spec
    parts = [FIELDS_BEGIN, "",
             "Generated by `python -m terminal_sim.docgen` from switch/wire/fields.py, the dialect file "
             f"config/dialects/{dialect.name}.toml and the echoed fields (switch/wire/messages.py, "
             "`ECHO_FIELDS`); tests/test_host_spec.py checks these rules against what the switch does.",
             "",
             f"In the `{dialect.name}` dialect the MTI is {wire_format(s['t'])}, the primary bitmap "
             f"{wire_format(s['p'])}, the secondary bitmap (DE1) {wire_format(s['1'])}, present only when a "
             "field 65–128 is (a secondary bitmap that is present but empty is accepted). A variable "
             "field's length comes before its data.",
             "",
             f"| DE | name | type | `{dialect.name}` dialect | holds |",
             "|---|---|---|---|---|"]
    for no in spec.fields_used():
        e = spec.ELEMENTS[no]
        parts.append(f"| {no} | {e.name} | {e.kind} | {wire_format(s[no])} | {e.holds} |")
    parts += ["", "Codes: " + "; ".join(f"**{code}** {text}" for code, text in spec.CODES.items()) + ".", ""]
    groups = spec.groups()
    head = ["DE"]
    for group in groups:
        head += [_header(group, "request"), _header(group, "response")]
    parts += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for no in spec.fields_used():
        row = [no]
        for group in groups:
            pair = group[0]
            row += [_code(pair.request_uses.get(no)), _code(pair.response_uses().get(no))]
        parts.append("| " + " | ".join(row) + " |")
    repeats = ", ".join(p.repeat for p in spec.PAIRS if p.repeat)
    parts += ["",
              f"A repeat ({repeats}) is read as its original and answered with the original's response MTI. "
              "A request field not listed for a message is not read: when the dialect defines it, it must "
              "still decode (else 30), and it is part of the content a duplicate is compared on (§6). DE12, "
              "DE13, DE14 and DE22 must be digits of their length in every financial message that carries "
              "them (else 30). DE52, DE53, DE64 and DE128 are required by the terminal's security profile, "
              "not by the message (§8).",
              "", FIELDS_END]
    return "\n".join(parts)


def _code(use: spec.Use | None) -> str:
    return use.code if use is not None else ""


def _cell(use: spec.Use | None) -> str:
    if use is None:
        return ""
    return f"{use.code} — {use.rule}" if use.rule else use.code


def render_pair(request: str) -> str:
    """The field table of the pair whose request is `request`, with every pair that has the
    same rules (0100 with 0120, 0400 with 0420)."""
    group = next(g for g in spec.groups() if g[0].request == request)
    begin, end = pair_markers(request)
    requests = " / ".join(f"{p.request} (repeat {p.repeat})" if p.repeat else p.request for p in group)
    responses = " / ".join(p.response for p in group)
    pair = group[0]
    response = pair.response_uses()
    parts = [begin, "", f"| DE | {requests} | {responses} |", "|---|---|---|"]
    for no in sorted({*pair.request_uses, *response}, key=int):
        parts.append(f"| {no} | {_cell(pair.request_uses.get(no))} | {_cell(response.get(no))} |")
    parts += ["", end]
    return "\n".join(parts)


def field_blocks() -> dict[tuple[str, str], str]:
    """Every generated field table, by its markers: the dictionary and one per pair group."""
    blocks = {(FIELDS_BEGIN, FIELDS_END): render_field_dictionary()}
    for group in spec.groups():
        blocks[pair_markers(group[0].request)] = render_pair(group[0].request)
    return blocks


def replace_block(text: str, begin: str, end: str, rendered: str) -> str:
    start, stop = text.index(begin), text.index(end) + len(end)
    return text[:start] + rendered + text[stop:]


# ---------------------------------------------------------------------------- the document

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
    new = replace_block(text, BEGIN, END, render())
    for (begin, end), rendered in field_blocks().items():
        new = replace_block(new, begin, end, rendered)
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
