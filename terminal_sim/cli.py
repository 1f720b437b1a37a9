"""`eum terminal …`: one terminal, one message, the decoded answer printed (PAN masked).

The terminal keeps its STAN counter and its last financial request in a small state file
(`--state-dir`, default ./terminals, relative to the current directory and outside the
switch's data dir `var`: a terminal's memory is not the switch's), so `eum terminal reverse`
reverses the last transaction the way a POS does after a timeout, and STANs never repeat
across runs. No state file holds a clear PAN: the remembered transaction's DE2, like the
queue's, is sealed under `<state-dir>/.pan.key` (terminal_sim/pan_vault.py); a file an older
version wrote with a clear PAN is read and rewritten sealed.

Reversals go through the terminal's store-and-forward queue (terminal_sim/saf.py,
`<state-dir>/<TID>.saf.jsonl`): `reverse` stores its 0400/0420 there (fsync'd) before
connecting, and every invocation that signs on sends what is queued, oldest first, right
after the sign-on and before its own message, repeating (0401/0421) on the documented
schedule; an entry leaves the queue only when acknowledged. A reversal the switch did not
answer therefore goes out with the next `eum terminal` run. `eum terminal saf` lists the
queue (PANs masked) without connecting.

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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from switch.wire.codec import load_dialect
from switch.wire.transport import parse_hostport
from switch.domain import mask_pan
from switch.wire.messages import Rc, decode_balances

from .client import TerminalClient
from .pan_vault import PanVault, PanVaultError, holds_clear_pan
from .saf import (RESPONSE_TIMEOUT_MS, SAF_REPEAT_MTI, ClientLink, Forwarded, SafError, SafQueue, SafSchedule,
                  adopt_pending_reversals, forward)
from .security import (DUKPT_PROFILES, KEY_SETS, PROFILE_MAC, PROFILE_NONE, PROFILES, SECURED_MTIS, TakSecurity,
                       TerminalSecurity)
from .terminal import Terminal

PIN_ACTIONS = ("purchase", "refund", "balance")
EXIT_APPROVED, EXIT_DECLINED, EXIT_ERROR, EXIT_MAC_INVALID = 0, 1, 2, 3
_NOT_IN_STATE = ("35", "45", "52", "53", "64", "128")  # tracks, PIN block, KSN, MAC: never in the state file
STATE_DIR = "terminals"  # not under `var`, the switch's data dir

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
    tp.add_argument("action", choices=("sign-on", "sign-off", "echo", "purchase", "refund", "balance", "reverse",
                                       "saf"),
                    help="saf: list the terminal's store-and-forward queue (no connection)")
    tp.add_argument("--switch", default="127.0.0.1:8583", help="HOST:PORT")
    tp.add_argument("--tid", required=True)
    tp.add_argument("--mid", help="DE42 (default: the terminal's merchant from its last run)")
    tp.add_argument("--pan")
    tp.add_argument("--expiry", help="YYMM, sent in DE14 when given")
    tp.add_argument("--entry-mode", default="051",
                    help="DE22 POS entry mode (default 051, chip with PIN capability; 012 or 812: e-commerce, "
                         "as the city's online mall sends)")
    tp.add_argument("--amount", type=int, help="won (purchase and refund: required)")
    tp.add_argument("--rrn", help="refund: DE37 of the original purchase")
    tp.add_argument("--replacement-amount", type=int, help="reverse: partial, the amount that stands (DE95)")
    tp.add_argument("--advice", action="store_true", help="reverse: send 0420 instead of 0400")
    tp.add_argument("--dialect", default="default")
    tp.add_argument("--state-dir", default=STATE_DIR,
                    help=f"the terminal's STAN, DUKPT counter, last transaction and queue (default {STATE_DIR}, "
                         "relative to the current directory)")
    tp.add_argument("--timeout-ms", type=float, default=RESPONSE_TIMEOUT_MS,
                    help=f"response timeout (default {RESPONSE_TIMEOUT_MS}); queued repeats are this far apart")
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
    """The state file, the remembered transaction's DE2 opened. One an older version wrote
    with a clear DE2 is rewritten sealed at once."""
    path = _state_path(args)
    if not path.exists():
        return {}
    state = json.loads(path.read_text())
    last = state.get("last")
    if last:
        try:
            state["last"] = PanVault(path.parent).open_fields(last)
        except PanVaultError as exc:
            raise ValueError(f"state file {path}: {exc}") from None
        if holds_clear_pan(last):
            _save_state(args, state)
    return state


def _save_state(args: argparse.Namespace, state: dict[str, Any]) -> None:
    path = _state_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = dict(state)
    if doc.get("last"):
        doc["last"] = PanVault(path.parent).seal_fields(doc["last"])
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


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


@dataclass
class _Outcome:
    answer: dict[str, str] | None  # the answer to this invocation's own message (None: none came)
    sent: dict[str, str]  # that message as it went out (secured: with DE53)
    mac_ok: bool | None
    security: TerminalSecurity | TakSecurity | None
    forwarded: Forwarded | None  # what the queue sent after the sign-on
    queue: SafQueue


def _queue(args: argparse.Namespace) -> SafQueue:
    schedule = SafSchedule(repeat_interval_s=args.timeout_ms / 1000)
    return SafQueue.for_terminal(Path(args.state_dir), args.tid, schedule=schedule)


async def _exchange(args: argparse.Namespace) -> _Outcome:
    state = _load_state(args)
    mid = args.mid or state.get("mid")
    if not mid:
        raise ValueError("--mid is required the first time a terminal is used")
    security = terminal_security(args, state)
    _check_pin_use(args, security)
    queue = _queue(args)
    if adopt_pending_reversals(queue, state):  # a fleet state file's, from before the queue
        del state["pending_reversals"]
    term = Terminal(args.tid, mid, stan=state.get("stan", 0))
    host, port = parse_hostport(args.switch)
    dialect = load_dialect(args.dialect)
    # A POS signs on when it connects, then sends what its queue owes.
    sign_on = term.sign_on() if args.action not in ("sign-on", "sign-off", "echo") else None
    request = build_request(args, term, state)
    client = TerminalClient(host, port, dialect, response_timeout_ms=args.timeout_ms, security=security)

    def persist() -> None:  # STAN and KSN are spent from here on: on disk before the wire
        state.update(stan=term.stan, mid=mid, security=_security_state(security))
        _save_state(args, state)

    persist()
    owed = queue.enqueue(request) if request["t"] in SAF_REPEAT_MTI else None  # write-ahead, before connecting
    link = ClientLink(client, on_secured=persist)
    forwarded = None
    async with client:
        first = sign_on if sign_on is not None else (request if args.action == "sign-on" else None)
        if first is not None:
            signed = await link.request(first)
            forwarded = await forward(queue, link)
            if args.action == "sign-on":
                return _Outcome(signed, first, None, security, forwarded, queue)
        if owed is not None:
            answer = forwarded.answers.get(owed.seq) if forwarded else None
            sent = link.sent.get(owed.stan, owed.fields)
        else:
            sent, _ = client.secure(request, pin=args.pin, pan=args.pan)  # advances the KSN
            persist()
            answer = await link.request(sent)  # carries DE53: signed under that KSN
            sent = link.sent.get(sent["11"], sent)
    if request["t"] == "0200":
        state["last"] = {k: v for k, v in request.items() if k not in _NOT_IN_STATE}
        _save_state(args, state)
    return _Outcome(answer, sent, link.mac_ok.get(sent.get("11", "")), security, forwarded, queue)


def _mac_verdict(sent: dict[str, str], mac_ok: bool | None) -> str | None:
    """ok / INVALID / absent for a secured request's response; None when nothing was secured."""
    if "53" not in sent or sent.get("t") not in SECURED_MTIS:
        return None
    if mac_ok is None:
        return "absent"
    return "ok" if mac_ok else "INVALID"


def _queued_note(args: argparse.Namespace) -> str:
    try:
        queue = _queue(args)
    except (SafError, ValueError):
        return ""
    return f"; {len(queue)} message(s) stay queued for the next connection (eum terminal saf)" if len(queue) else ""


def _tell_forwarded(out: _Outcome, args: argparse.Namespace) -> None:
    """What the queue did, on stderr (stdout is this invocation's own answer)."""
    done, queue = out.forwarded, out.queue
    own = 1 if args.action == "reverse" else 0
    if done is not None and done.tries > own:
        print(f"eum terminal: store-and-forward sent {done.firsts} new and {done.repeats} repeated; "
              f"{done.accepted} acknowledged, {done.refused} refused, {len(queue)} still queued", file=sys.stderr)
    attention = queue.attention()
    if attention:
        print(f"eum terminal: {len(attention)} queued message(s) need operator attention (eum terminal saf)",
              file=sys.stderr)


def show_saf(args: argparse.Namespace) -> int:
    """`eum terminal saf`: the queue and the refused list, PANs masked; no connection."""
    try:
        queue = _queue(args)
    except SafError as exc:
        print(f"eum terminal: {exc}", file=sys.stderr)
        return EXIT_ERROR

    def row(e: Any, **extra: Any) -> dict[str, Any]:
        f = e.fields
        return {"seq": e.seq, "mti": e.mti, "stan": e.stan, "de7": f.get("7"),
                "card": mask_pan(f["2"]) if "2" in f else None, "amount": int(f["4"]) if "4" in f else None,
                "original": f.get("90", "")[:20], "tries": e.tries, "last_rc": e.last_rc,
                "queued_at": _when(e.queued_at), **extra}

    queued = [row(e, attention=queue.needs_attention(e)) for e in queue.entries]
    refused = [row(r.entry, rc=r.rc, refused_at=_when(r.refused_at)) for r in queue.refused]
    if args.json:
        print(json.dumps({"tid": args.tid, "queued": queued, "refused": refused}))
        return EXIT_APPROVED
    print(f"terminal {args.tid}: {len(queued)} queued, {len(refused)} refused")
    for q in queued:
        amount = "—" if q["amount"] is None else f"{q['amount']:,} KRW"
        print(f"  #{q['seq']} {q['mti']} stan {q['stan']}  card {q['card']}  amount {amount}  tries {q['tries']}"
              + (f"  last {q['last_rc']}" if q["last_rc"] else "") + f"  queued {q['queued_at']}"
              + ("  NEEDS ATTENTION" if q["attention"] else ""))
    for r in refused:
        print(f"  refused #{r['seq']} {r['mti']} stan {r['stan']}  card {r['card']}  response {r['rc']} "
              f"({RC_TEXT.get(r['rc'], 'unknown')}) at {r['refused_at']}")
    return EXIT_APPROVED


def _when(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat(timespec="seconds")


AMOUNT_ACTIONS = ("purchase", "refund")


def run_terminal(args: argparse.Namespace) -> int:
    if args.action == "saf":
        return show_saf(args)
    if args.action in AMOUNT_ACTIONS and args.amount is None:  # a usage error: nothing is sent, no STAN spent
        print(f"eum terminal: error: {args.action} needs --amount (won)", file=sys.stderr)
        return EXIT_ERROR
    try:
        out = asyncio.run(_exchange(args))
    except ConnectionRefusedError:  # no switch listening there: the one line says where (as the others, by type)
        print(f"eum terminal: ConnectionRefusedError: no switch listening at {args.switch}{_queued_note(args)}",
              file=sys.stderr)
        return EXIT_ERROR
    except (ValueError, OSError, asyncio.TimeoutError, SafError) as exc:
        print(f"eum terminal: {type(exc).__name__}: {exc}{_queued_note(args)}", file=sys.stderr)
        return EXIT_ERROR
    _tell_forwarded(out, args)
    final = out.answer
    if final is None:
        what = "the reversal" if args.action == "reverse" else "the request"
        print(f"eum terminal: no answer to {what} within {args.timeout_ms:g} ms, or the connection closed"
              + _queued_note(args), file=sys.stderr)
        return EXIT_ERROR
    verdict = _mac_verdict(out.sent, out.mac_ok)
    if args.json:
        shown = dict(final)
        if "2" in shown:
            shown["2"] = mask_pan(shown["2"])
        if verdict is not None:
            shown["response_mac"] = verdict
        print(json.dumps(shown))
    else:
        lines = describe(final)
        if verdict is not None:
            ksn = out.sent.get("53")
            lines.append(f"security {out.security.profile}  " + (f"ksn {ksn}  " if ksn else "")
                         + f"response MAC {verdict}")
        print("\n".join(lines))
    # An approval whose MAC is missing is as untrustworthy as one whose MAC is wrong.
    if verdict == "INVALID" or (verdict == "absent" and final.get("39") == "00"):
        print(f"eum terminal: response MAC {verdict}: the answer cannot be trusted", file=sys.stderr)
        return EXIT_MAC_INVALID
    return EXIT_APPROVED if final.get("39") == "00" else EXIT_DECLINED
