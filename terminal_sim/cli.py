"""`eum terminal …`: one terminal, one message, the decoded answer printed (PAN masked).

The terminal keeps its STAN counter and its last financial request in a small state file
(`--state-dir`, default ./var/terminals), so `eum terminal reverse` reverses the last
transaction the way a POS does after a timeout, and STANs never repeat across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Callable

from switch.codec import load_dialect
from switch.config import parse_hostport
from switch.domain import mask_pan
from switch.messages import Rc, decode_balances

from .client import TerminalClient
from .terminal import Terminal

RC_TEXT = {
    "00": "approved", "12": "invalid transaction", "13": "invalid amount", "14": "unknown card",
    "25": "original not found", "30": "format error", "51": "insufficient funds", "54": "expired card",
    "55": "incorrect PIN", "57": "not permitted", "58": "terminal not permitted", "61": "over limit",
    "62": "card blocked", "63": "security violation", "75": "PIN tries exceeded", "91": "HSM unavailable",
    "94": "duplicate", "96": "system error",
}
assert set(RC_TEXT) == {rc.value for rc in Rc}


def add_terminal_parser(sub: Any, func: Callable[[argparse.Namespace], int]) -> None:
    tp = sub.add_parser("terminal", help="send one message as a terminal and print the answer")
    tp.add_argument("action", choices=("sign-on", "sign-off", "echo", "purchase", "refund", "balance", "reverse"))
    tp.add_argument("--switch", default="127.0.0.1:8583", help="HOST:PORT")
    tp.add_argument("--tid", required=True)
    tp.add_argument("--mid", help="DE42 (default: the terminal's merchant from its last run)")
    tp.add_argument("--pan")
    tp.add_argument("--expiry", help="YYMM, sent in DE14 when given")
    tp.add_argument("--amount", type=int, default=0, help="won")
    tp.add_argument("--rrn", help="refund: DE37 of the original purchase")
    tp.add_argument("--replacement-amount", type=int, help="reverse: partial, the amount that stands (DE95)")
    tp.add_argument("--advice", action="store_true", help="reverse: send 0420 instead of 0400")
    tp.add_argument("--dialect", default="default")
    tp.add_argument("--state-dir", default="var/terminals")
    tp.add_argument("--timeout-ms", type=float, default=5000)
    tp.add_argument("--json", action="store_true", help="print the response fields as JSON")
    tp.set_defaults(func=func)


def _state_path(args: argparse.Namespace) -> Path:
    return Path(args.state_dir) / f"{args.tid}.json"


def _load_state(args: argparse.Namespace) -> dict[str, Any]:
    path = _state_path(args)
    return json.loads(path.read_text()) if path.exists() else {}


def _save_state(args: argparse.Namespace, state: dict[str, Any]) -> None:
    path = _state_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state))


def describe(fields: dict[str, str]) -> list[str]:
    rc = fields.get("39", "")
    lines = [f"MTI {fields.get('t')}  response {rc} ({RC_TEXT.get(rc, 'unknown')})"]
    if "2" in fields:
        lines.append(f"card     {mask_pan(fields['2'])}")
    if "4" in fields:
        lines.append(f"amount   {int(fields['4']):,} KRW")
    for no, label in (("11", "stan"), ("37", "rrn"), ("38", "auth"), ("41", "terminal")):
        if no in fields:
            lines.append(f"{label:<8} {fields[no]}")
    if "54" in fields:
        b = decode_balances(fields["54"])
        lines.append(f"balance  cash {b.cash:,} KRW, cashback {b.cashback:,} KRW")
    return lines


def build_request(args: argparse.Namespace, term: Terminal, state: dict[str, Any]) -> dict[str, str]:
    action = args.action
    if action in ("sign-on", "sign-off", "echo"):
        return {"sign-on": term.sign_on, "sign-off": term.sign_off, "echo": term.echo}[action]()
    if action == "reverse":
        last = state.get("last")
        if not last:
            raise ValueError("no earlier financial message from this terminal to reverse")
        return term.reversal(last, replacement_amount=args.replacement_amount, advice=args.advice)
    if not args.pan:
        raise ValueError(f"--pan is required for {action}")
    if action == "purchase":
        return term.purchase(args.pan, args.amount, expiry=args.expiry)
    if action == "refund":
        if not args.rrn:
            raise ValueError("--rrn (DE37 of the original purchase) is required for refund")
        return term.refund(args.pan, args.amount, args.rrn, expiry=args.expiry)
    return term.balance(args.pan, expiry=args.expiry)


async def _exchange(args: argparse.Namespace) -> tuple[list[dict[str, str]], dict[str, Any]]:
    state = _load_state(args)
    mid = args.mid or state.get("mid")
    if not mid:
        raise ValueError("--mid is required the first time a terminal is used")
    term = Terminal(args.tid, mid, stan=state.get("stan", 0))
    host, port = parse_hostport(args.switch)
    answers = []
    async with TerminalClient(host, port, load_dialect(args.dialect), response_timeout_ms=args.timeout_ms) as client:
        if args.action not in ("sign-on", "sign-off", "echo"):
            answers.append(await client.request(term.sign_on()))  # a POS signs on when it connects
        request = build_request(args, term, state)
        answers.append(await client.request(request))
    state.update(stan=term.stan, mid=mid)
    if request["t"] == "0200":
        state["last"] = request
    _save_state(args, state)
    return answers, state


def run_terminal(args: argparse.Namespace) -> int:
    try:
        answers, _ = asyncio.run(_exchange(args))
    except (ValueError, OSError, asyncio.TimeoutError) as exc:
        print(f"eum terminal: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    final = answers[-1]
    if final is None:
        print("eum terminal: the switch closed the connection without answering", file=sys.stderr)
        return 2
    if args.json:
        out = dict(final)
        if "2" in out:
            out["2"] = mask_pan(out["2"])
        print(json.dumps(out))
    else:
        print("\n".join(describe(final)))
    return 0 if final.get("39") == "00" else 1
