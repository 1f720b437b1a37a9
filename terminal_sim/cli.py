"""`eum terminal …`: one terminal, one message, the decoded answer printed (PAN masked).

The terminal keeps its STAN counter and its last financial request in a small state file
(`--state-dir`, default ./var/terminals), so `eum terminal reverse` reverses the last
transaction the way a POS does after a timeout, and STANs never repeat across runs.

A secured terminal (`--security dukpt-tdes|dukpt-aes --ksn INITIAL`, remembered after the
first run) also keeps its DUKPT state there: profile, key set, initial KSN and current KSN.
The counter advances before each secured message and the state file is written *before*
the message goes on the wire, so a crash or timeout never makes a KSN be used twice. The
state file and the output never hold the PIN or the PIN block.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from switch.wire.codec import load_dialect
from switch.wire.transport import parse_hostport
from switch.domain import mask_pan
from switch.wire.messages import Rc, decode_balances

from .client import TerminalClient
from .security import (DUKPT_PROFILES, KEY_SETS, PROFILE_MAC, PROFILE_NONE, PROFILES, SECURED_MTIS, TakSecurity,
                       TerminalSecurity)
from .terminal import Terminal

PIN_ACTIONS = ("purchase", "refund", "balance")
EXIT_APPROVED, EXIT_DECLINED, EXIT_ERROR, EXIT_MAC_INVALID = 0, 1, 2, 3
_NOT_IN_STATE = ("52", "53", "64", "128")  # PIN block, KSN, MAC: never written to the state file

RC_TEXT = {
    "00": "approved", "12": "invalid transaction", "13": "invalid amount", "14": "unknown card",
    "25": "original not found", "30": "format error", "51": "insufficient funds", "54": "expired card",
    "55": "incorrect PIN", "57": "not permitted", "58": "terminal not permitted", "61": "over limit",
    "62": "card blocked", "63": "security violation", "75": "PIN tries exceeded", "91": "HSM unavailable",
    "94": "duplicate", "96": "system error",
}
assert set(RC_TEXT) == {rc.value for rc in Rc}


def register(sub: Any) -> None:
    """`eum terminal` (entry point `eum.commands`, pyproject.toml)."""
    add_terminal_parser(sub, run_terminal)


def add_terminal_parser(sub: Any, func: Callable[[argparse.Namespace], int]) -> None:
    tp = sub.add_parser("terminal", help="send one message as a terminal and print the answer")
    tp.add_argument("action", choices=("sign-on", "sign-off", "echo", "purchase", "refund", "balance", "reverse"))
    tp.add_argument("--switch", default="127.0.0.1:8583", help="HOST:PORT")
    tp.add_argument("--tid", required=True)
    tp.add_argument("--mid", help="DE42 (default: the terminal's merchant from its last run)")
    tp.add_argument("--pan")
    tp.add_argument("--expiry", help="YYMM, sent in DE14 when given")
    tp.add_argument("--entry-mode", default="051",
                    help="DE22 POS entry mode (default 051, chip with PIN capability; 012 or 812: e-commerce, "
                         "as the city's online mall sends)")
    tp.add_argument("--amount", type=int, default=0, help="won")
    tp.add_argument("--rrn", help="refund: DE37 of the original purchase")
    tp.add_argument("--replacement-amount", type=int, help="reverse: partial, the amount that stands (DE95)")
    tp.add_argument("--advice", action="store_true", help="reverse: send 0420 instead of 0400")
    tp.add_argument("--dialect", default="default")
    tp.add_argument("--state-dir", default="var/terminals")
    tp.add_argument("--timeout-ms", type=float, default=5000)
    tp.add_argument("--json", action="store_true", help="print the response fields as JSON")
    tp.add_argument("--pin", help="purchase/refund/balance: the cardholder's PIN, sent only as an encrypted "
                                  "PIN block (needs a DUKPT profile)")
    tp.add_argument("--security", choices=PROFILES,
                    help="the terminal's security profile (default: as in its state file, else none)")
    tp.add_argument("--ksn", help="initial KSN of a DUKPT terminal (counter 0), as `eum admin terminal add "
                                  "--json` prints it; needed once, then remembered with the counter")
    tp.add_argument("--keys", choices=KEY_SETS, default=None,
                    help="key set the terminal was injected with: test (the public test BDKs, default) or "
                         "generated (give --initial-key and the KIF ZMK components)")
    tp.add_argument("--initial-key", help="generated key set: the initial key under the KIF ZMK, as "
                                          "`eum admin terminal add --keys generated --json` prints it")
    tp.add_argument("--initial-key-kcv", help="generated key set: its check value, verified after decryption")
    tp.add_argument("--zmk-component", action="append", default=None,
                    help="generated key set: a KIF ZMK component (2-9 times; also EUM_KIF_ZMK_COMPONENTS, "
                         "comma-separated); never stored")
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
        return term.purchase(args.pan, args.amount, expiry=args.expiry, entry_mode=args.entry_mode)
    if action == "refund":
        if not args.rrn:
            raise ValueError("--rrn (DE37 of the original purchase) is required for refund")
        return term.refund(args.pan, args.amount, args.rrn, expiry=args.expiry, entry_mode=args.entry_mode)
    return term.balance(args.pan, expiry=args.expiry, entry_mode=args.entry_mode)


def terminal_security(args: argparse.Namespace, state: dict[str, Any]) -> TerminalSecurity | TakSecurity | None:
    """The terminal's DUKPT state: from the state file, unless --security/--ksn re-provision it
    (another profile or initial KSN: the counter restarts at that KSN). None for `none`."""
    stored = state.get("security") or {"profile": PROFILE_NONE}
    profile = args.security or stored["profile"]
    if profile in (PROFILE_NONE, PROFILE_MAC):
        if args.ksn:
            raise ValueError("--ksn is for a DUKPT terminal: give --security dukpt-tdes or dukpt-aes")
        return TakSecurity.for_test_keys() if profile == PROFILE_MAC else None
    keys = args.keys or stored.get("keys", "test")
    same_profile = stored["profile"] == profile and stored.get("keys", "test") == keys
    initial = args.ksn or (stored.get("initial_ksn") if same_profile else None)
    if not initial:
        raise ValueError(f"--ksn (the initial KSN) is required the first time a terminal uses {profile}")
    components = args.zmk_component or [c for c in os.environ.get("EUM_KIF_ZMK_COMPONENTS", "").split(",") if c]
    if keys == "generated":
        injected = args.initial_key or (stored.get("initial_key_under_kif_zmk") if same_profile else None)
        if not injected or not components:
            raise ValueError("a generated key set needs --initial-key (once) and the KIF ZMK components")
        fresh = TerminalSecurity.for_injected_key(profile, initial, injected, components, kcv=args.initial_key_kcv)
    else:
        fresh = TerminalSecurity.for_test_keys(profile, initial)
    if same_profile and stored.get("initial_ksn") == fresh.initial_ksn \
            and stored.get("initial_key_under_kif_zmk") == fresh.to_state().get("initial_key_under_kif_zmk"):
        return TerminalSecurity.from_state(stored, zmk_components=components)  # same injected key: keep counting
    return fresh


def _security_state(security: TerminalSecurity | TakSecurity | None) -> dict[str, str]:
    return security.to_state() if security is not None else {"profile": PROFILE_NONE}


def _check_pin_use(args: argparse.Namespace, security: TerminalSecurity | TakSecurity | None) -> None:
    if args.pin is None:
        return
    if args.action not in PIN_ACTIONS:
        raise ValueError(f"--pin is for {', '.join(PIN_ACTIONS)}")
    if security is None or security.profile not in DUKPT_PROFILES:
        raise ValueError(f"--pin needs a DUKPT terminal (--security {' or '.join(DUKPT_PROFILES)}): "
                         "a PIN never goes out in clear")


async def _exchange(args: argparse.Namespace) -> tuple[list[dict[str, str]], dict[str, Any], TerminalClient]:
    state = _load_state(args)
    mid = args.mid or state.get("mid")
    if not mid:
        raise ValueError("--mid is required the first time a terminal is used")
    security = terminal_security(args, state)
    _check_pin_use(args, security)
    term = Terminal(args.tid, mid, stan=state.get("stan", 0))
    host, port = parse_hostport(args.switch)
    dialect = load_dialect(args.dialect)
    # A POS signs on when it connects.
    sign_on = term.sign_on() if args.action not in ("sign-on", "sign-off", "echo") else None
    request = build_request(args, term, state)
    client = TerminalClient(host, port, dialect, response_timeout_ms=args.timeout_ms, security=security)
    secured, _ = client.secure(request, pin=args.pin, pan=args.pan)  # advances the KSN
    # STAN and KSN are spent from here on: persist them before anything goes on the wire.
    state.update(stan=term.stan, mid=mid, security=_security_state(security))
    _save_state(args, state)
    answers = []
    async with client:
        if sign_on is not None:
            answers.append(await client.request(sign_on))
        answers.append(await client.request(secured))  # carries DE53: signed under that KSN
    if request["t"] == "0200":
        state["last"] = {k: v for k, v in request.items() if k not in _NOT_IN_STATE}
        _save_state(args, state)
    return answers, state, client


def _mac_verdict(client: TerminalClient) -> str | None:
    """ok / INVALID / absent for a secured request's response; None when nothing was secured."""
    if "53" not in client.last_request or client.last_request.get("t") not in SECURED_MTIS:
        return None
    ok = client.last_response_mac_ok
    if ok is None:
        return "absent"
    return "ok" if ok else "INVALID"


def run_terminal(args: argparse.Namespace) -> int:
    try:
        answers, _, client = asyncio.run(_exchange(args))
    except (ValueError, OSError, asyncio.TimeoutError) as exc:
        print(f"eum terminal: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    final = answers[-1]
    if final is None:
        print("eum terminal: the switch closed the connection without answering", file=sys.stderr)
        return EXIT_ERROR
    verdict = _mac_verdict(client)
    if args.json:
        out = dict(final)
        if "2" in out:
            out["2"] = mask_pan(out["2"])
        if verdict is not None:
            out["response_mac"] = verdict
        print(json.dumps(out))
    else:
        lines = describe(final)
        if verdict is not None:
            ksn = client.last_request.get("53")
            lines.append(f"security {client.security.profile}  " + (f"ksn {ksn}  " if ksn else "")
                         + f"response MAC {verdict}")
        print("\n".join(lines))
    # An approval whose MAC is missing is as untrustworthy as one whose MAC is wrong.
    if verdict == "INVALID" or (verdict == "absent" and final.get("39") == "00"):
        print(f"eum terminal: response MAC {verdict}: the answer cannot be trusted", file=sys.stderr)
        return EXIT_MAC_INVALID
    return EXIT_APPROVED if final.get("39") == "00" else EXIT_DECLINED
