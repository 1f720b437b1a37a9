"""Hot-path micro-benchmarks, and the same measured on an earlier revision in the same run.

    python benchmarks/micro.py [--base REV] [--rounds 3] [--out-dir DIR]

Per-call microseconds (median of timeit runs) of the pieces docs/performance.md's
optimisation table names, each measured through the public functions both old and new
revisions have:
  log.canonical_line_us   one `message` log line as `eum switch` configures its logs
                          (JSON to a file and to stdout, which is a file here), through
                          structlog's processor chain
  log.canonical_direct_us the same line as the switch writes it per message
                          (switch.ops.logs.canonical: the same masking and timestamp, no
                          chain); trees without it leave the key out
  hsm.audit_record_us     one HSM audit line (hsm_mock.audit.AuditLog.record)
  hsm.gw_generate_us      HSM compute for GW (DUKPT response MAC), a fresh KSN each time:
                          parse + handle, no I/O
  hsm.retail_mac_fresh_key_us  X9.19 MAC over 140 bytes under a key used once, as the HSM
                          and the terminals compute it for a DUKPT transaction
  terminal.transaction_us the terminal side of one DUKPT-TDES transaction (next KSN, PIN
                          block on 1 in 4, request MAC, response MAC check), 200 terminals
                          in turn: the fleet's security work per transaction
  decide.purchase_us      one purchase decision (switch/authorize/decide.py) with the shipped
                          rules at a 2026 instant, over a view of plain dicts: the pure core
  --hsm-auth-mix          instead of the above: the HSM's CPU per authorisation of the
                          standard scenario's commands, key caches on and off (HSM_AUTH_MIX)
Without --base: this tree only. With --base REV: REV is checked out into a temporary git
worktree and each round measures base, then this tree, alternating; medians per side.
Writes <out-dir>/<date>-<host>-micro.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs inside the tree being measured (PYTHONPATH), printing one JSON line.
MEASURE = r"""
import io, itertools, json, os, sys, tempfile
from pathlib import Path
from benchmarks.codec_bench import per_call_us as _per_call_us

def per_call_us(fn, number=3000, repeat=7):
    return round(_per_call_us(fn, number=number, repeat=repeat), 2)

out = {}
tmp = Path(tempfile.mkdtemp(prefix="eum-micro-"))

import structlog
from switch.ops import logs
kw = {"queued": True} if "queued" in logs.configure.__code__.co_varnames else {}
stdout = open(tmp / "stdout.jsonl", "w")
logs.configure(data_dir=tmp, name="switch", stream=stdout, json_output=True, **kw)
log = structlog.get_logger()
line = {"peer": "127.0.0.1:5555", "mti": "0200", "processing_code": "000000", "stan": "000123",
        "terminal": "T0000001", "merchant": "EUM000000000001", "pan": "941010******2345", "amount": 20000,
        "fee": 100, "cashback": 1500, "rc": "00", "rrn": "000000012345", "latency_us": 1234}
out["log.canonical_line_us"] = per_call_us(lambda: log.info("message", **line))
if hasattr(logs, "canonical"):  # the switch's own path since 0a04d41 (no processor chain)
    out["log.canonical_direct_us"] = per_call_us(lambda: logs.canonical("message", line))  # it copies the fields itself
logs.flush()

from hsm_mock.audit import AuditLog
audit = AuditLog(tmp / "audit.jsonl", stream=io.StringIO())
fields = {"conn": 3, "header": "0001", "command": "GW", "kcv": {"bdk": "ABC123"}, "mode": "4", "ksn_counter": 17,
          "response": "GX", "error": "00", "fault": "none", "queue_ms": 0.0, "latency_ms": 0.123}
out["hsm.audit_record_us"] = per_call_us(lambda: audit.record(**fields))
audit.close()

from hsm_mock.commands import Hsm
from hsm_mock.lmk import TEST_LMK
from switch.authorize.security import TEST_KEYS_UNDER_TEST_LMK
hsm = Hsm(TEST_LMK, header_length=4)
bdk = TEST_KEYS_UNDER_TEST_LMK["dukpt-tdes"].encode()
message = b"0200" + bytes(range(136))
counter = itertools.count(1)

def gw():
    ksn = f"FFFF98765400002{next(counter) % 0x1FFFFF:05X}".encode()
    body = b"42" + bdk + b"A05" + ksn + f"{len(message):04d}".encode() + message
    error, _, _ = hsm.handle(hsm.parse(b"0001GW" + body))
    assert error == "00", error

out["hsm.gw_generate_us"] = per_call_us(gw, number=2000, repeat=5)

from hsm_mock import crypto
keys = itertools.cycle([os.urandom(16) for _ in range(20000)])
mac = getattr(crypto, "retail_mac_once", None) or (lambda k, d: crypto.mac_iso9797_alg3(k, d))
out["hsm.retail_mac_fresh_key_us"] = per_call_us(lambda: mac(next(keys), message))

# The terminal side of one transaction of the standard scenario (the fleet's security work):
# the next KSN and its keys, a PIN block on 1 in 4, the request MAC and the check of the
# response's MAC (140 bytes each; the check's answer is False here, its work the same).
# 200 terminals in turn, fresh devices each timing run so no register carries over.
from terminal_sim.security import TerminalSecurity
from switch.authorize.security import initial_ksn
devices = itertools.count(1)
signed = b"0200" + bytes(range(128)) + bytes(8)

def terminal_batch(n=2000, fleet=200):
    terms = [TerminalSecurity.for_test_keys("dukpt-tdes", initial_ksn("dukpt-tdes", next(devices)))
             for _ in range(fleet)]
    import time as _t
    c0 = _t.process_time()
    for i in range(n):
        t = terms[i % fleet]
        req = t.protect({"t": "0200", "2": "9410100000002345"}, pin="1234" if i % 4 == 0 else None,
                        pan="9410100000002345")
        t.sign(signed, ksn=req["53"])
        t.verify_response(signed, ksn=req["53"])
    return (_t.process_time() - c0) / n * 1e6

terminal_batch(400)
out["terminal.transaction_us"] = round(sorted(terminal_batch() for _ in range(5))[2], 2)

# One purchase decision (switch/authorize/decide.py `decide`): the shipped rules at an instant
# of 2026 (the rules in force then are the newest), a Namdong card at a Namdong shop, over a
# view of plain dicts (no hot state, no store): the pure core's own cost.
from datetime import datetime
from switch.authorize.decide import decide
from switch.domain import KST, Merchant
from switch.ledger.records import CardState
from switch.rules.policy import default_config_dir, load_rules
from switch.wire.messages import Kind, Request

class _View:
    ledger_id, next_posting_id = "00000000-0000-0000-0000-000000000001", 3
    def __init__(self, card, shop):
        self._card, self._shop = card, shop
    def card(self, pan): return self._card if pan == self._card.pan else None
    def card_by_id(self, card_id): return self._card if card_id == self._card.id else None
    def merchant(self, mid): return self._shop if mid == self._shop.mid else None
    def member_month(self, member, month): return 0
    def card_day(self, card_id, day): return 0
    def card_month_charged(self, card_id, month): return 0
    def auto_charge(self, card_id): return None
    def posting(self, posting_id): return None
    def posting_by_rrn(self, rrn): return None
    def message(self, key): return None
    def tombstoned(self, key): return False

rules = load_rules(default_config_dir())
shop = Merchant("NAMDONG01      ", "Namdong Cafe", "namdong", 250_000_000)
card = CardState(id=1, pan="9410100000000011", program="namdong", member="M000000001", expiry="3012",
                 status="active", cash=10**9)
view = _View(card, shop)
req = Request(mti="0200", kind=Kind.PURCHASE, terminal="T0000001", stan="000002", transmission_time="1129030000",
              processing_code="000000", pan=card.pan, expiry="", amount=20_000, merchant=shop.mid, entry_mode="",
              pin_block="")
req_fields = {"t": "0200", "2": card.pan, "3": "000000", "4": "000000020000", "7": "1129030000", "11": "000002",
              "41": "T0000001", "42": shop.mid, "49": "410"}
at = datetime(2026, 11, 29, 12, 0, tzinfo=KST)
assert decide(req, req_fields, view, rules, at).posting is not None  # approved: a posting
out["decide.purchase_us"] = per_call_us(lambda: decide(req, req_fields, view, rules, at), number=2000)
logs.flush()
import shutil
shutil.rmtree(tmp, ignore_errors=True)
print(json.dumps(out))
"""


def measure(tree: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", MEASURE], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"measuring {tree} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- HSM: one authorisation's commands
# Issue 10, item 4 (HSM lever): `python benchmarks/micro.py --hsm-auth-mix [--base REV] [--rounds 5]`.
# The HSM's command handler (Hsm.parse + Hsm.handle, no I/O, no audit line) for the commands one
# authorisation of the standard scenario sends (switch/authorize/security.py, switch/authorize/engine.py): GW mode 1
# method 1 (verify the request's X9.19 MAC), on 1 purchase in 4 G0 (PIN block DUKPT → ZPK) and EC
# (PVV check under the ZPK), then GW mode 4 method 2 (MAC the response). 32 terminals (the bench's
# capacity run) under the X9.24-1 test BDK as the switch holds it, each transaction a fresh KSN
# (the terminal's next counter), MAC inputs the size of codec_bench's 0200 and 0210. Every answer
# is checked ("00"). CPU µs per authorisation = time.process_time() of the block / authorisations.
# Variants in one process, alternated block by block: `cache_on` (the default Hsm) and
# `cache_off` (Hsm(key_cache_size_max=0), the reference path); a tree without key caches
# (--base before them) measures `default` only. The terminal-side precomputation shares
# hsm_mock.dukpt's derivation memo, so that memo is cleared before the HSM sees any command.
# The HSM's work per authorisation of the standard scenario, in process (no transport): each
# authorisation's commands built as the switch sends them (GW verify of the request MAC; 1 in 4
# also G0 + EC for the PIN; GW generate of the response MAC), answered by `Hsm.handle` with its
# key caches on and off (`hsms`), after a warm-up. `rounds block terminals warm` in argv.
HSM_AUTH_SETUP = r"""
import json, statistics, sys, time
from hsm_mock import cardverify, dukpt, pinblock
from hsm_mock.commands import Hsm
from hsm_mock.crypto import retail_mac_once, tdes_ecb_encrypt, tdes_ecb_encrypt_once
from hsm_mock.lmk import TEST_LMK, encrypt_key_under_lmk
from benchmarks.codec_bench import APPROVAL_0210, PURCHASE_0200
from switch.wire.codec import encode_fields, load_dialect
from switch.authorize.security import TEST_KEYS_UNDER_TEST_LMK, initial_ksn

rounds, block, terminals, warm = (int(a) for a in sys.argv[1:5])
BDK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")  # X9.24-1 Annex A test BDK
ZPK = bytes.fromhex("1C1C1C1C1C1C1C1C7A7A7A7A7A7A7A7A")
PVK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
dialect = load_dialect("default")
request = encode_fields(PURCHASE_0200, dialect)[:-8]                         # MAC input: all but DE64
response = encode_fields(dict(APPROVAL_0210, **{"64": "0" * 16}), dialect)[:-8]
bdk = TEST_KEYS_UNDER_TEST_LMK["dukpt-tdes"].encode()
zpk = encrypt_key_under_lmk(ZPK, "001", "U").encode()
pvk = encrypt_key_under_lmk(PVK, "002", "U").encode()

def luhn(digits):
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)

variants = {"cache_on": {}, "cache_off": {"key_cache_size_max": 0}}
try:  # a revision before the key caches has no such parameter (a compiled Hsm has no signature)
    Hsm(TEST_LMK, key_cache_size_max=0)
except TypeError:
    variants = {"default": {}}
count = warm * len(variants) + rounds * block * len(variants)
ksns = [bytes.fromhex(initial_ksn("dukpt-tdes", d)) for d in range(terminals)]
auths = []
for n in range(count):
    d = n % terminals
    ksns[d] = dukpt.tdes_next_ksn(ksns[d])
    ksn = ksns[d].hex().upper().encode()
    key = dukpt.tdes_transaction_key(BDK, ksns[d])
    mac = retail_mac_once(dukpt.tdes_mac_request_key(key), request).hex().upper().encode()
    cmds = [b"0001GW11" + bdk + b"A05" + ksn + mac + b"%04d" % len(request) + request]
    if n % 4 == 0:  # the standard scenario: 1 purchase in 4 with an online PIN
        pan = "9410100000" + "%05d" % (n % 100000)
        account = (pan + luhn(pan))[:-1][-12:]
        clear = pinblock.encode_iso0("1234", account=account)
        epb = tdes_ecb_encrypt_once(dukpt.tdes_pin_key(key), clear).hex().upper().encode()
        cmds.append(b"0002G0" + bdk + zpk + b"A05" + ksn + epb + b"0101" + account.encode())
        zpb = tdes_ecb_encrypt(ZPK, clear).hex().upper().encode()
        pvv = cardverify.visa_pvv(PVK, account, "1", "1234", check_digit_included=False).encode()
        cmds.append(b"0003EC" + zpk + pvk + zpb + b"01" + account.encode() + b"1" + pvv)
    cmds.append(b"0004GW42" + bdk + b"A05" + ksn + b"%04d" % len(response) + response)
    auths.append(cmds)
for memo in ("_tdes_future_key", "_tdes_ipek"):  # the terminal side's derivations are not the HSM's
    getattr(getattr(dukpt, memo, None), "cache_clear", lambda: None)()

hsms = {name: Hsm(TEST_LMK, **kw) for name, kw in variants.items()}

def run(hsm, part):
    answers = []
    for cmds in part:
        for payload in cmds:
            error, body, _ = hsm.handle(hsm.parse(payload))
            if error != "00":
                raise SystemExit(f"{payload[4:6]!r} answered {error}")
            answers.append(body)
    return answers

pos = 0
for hsm in hsms.values():  # warm-up: fills the caches' steady state (previous KSNs of each terminal)
    run(hsm, auths[pos:pos + warm])
    pos += warm
# The variants give byte-identical answers (the same commands, answered by each).
same = [run(hsm, auths[:8]) for hsm in hsms.values()]
assert all(s == same[0] for s in same), "variants disagree"
"""
# The timed blocks, after HSM_AUTH_SETUP (benchmarks/instructions.py --scenario hsm counts one
# block of the same set-up instead).
HSM_AUTH_MIX = HSM_AUTH_SETUP + r"""
cpu = {name: [] for name in hsms}
names = list(hsms)
for r in range(rounds):
    for name in (names if r % 2 == 0 else names[::-1]):  # alternate the order
        part = auths[pos:pos + block]
        pos += block
        t0 = time.process_time()
        run(hsms[name], part)
        cpu[name].append(round((time.process_time() - t0) / len(part) * 1e6, 2))
print(json.dumps({name: round(statistics.median(v), 2) for name, v in cpu.items()} | {"runs": cpu}))
"""


def hsm_auth_mix(tree: Path, *, rounds: int, block: int = 400, terminals: int = 32, warm: int = 128) -> dict:
    """One process in `tree`: CPU µs per authorisation of each variant (median of its blocks)."""
    done = subprocess.run([sys.executable, "-c", HSM_AUTH_MIX, str(rounds), str(block), str(terminals), str(warm)],
                          cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True,
                          timeout=1200)
    if done.returncode != 0:
        raise SystemExit(f"hsm auth mix in {tree} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def hsm_auth_mix_main(args: argparse.Namespace) -> int:
    """--hsm-auth-mix: this tree's cache_on/cache_off alternated in one process per round; with
    --base, the base tree's process runs before this tree's in each round. Medians of rounds."""
    from benchmarks.ab import worktree
    from benchmarks.bench import describe_machine

    per_round: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="eum-micro-hsm-") as tmp:
        trees = {"head": ROOT}
        if args.base:
            trees = {"base": worktree(args.base, Path(tmp)), "head": ROOT}
        try:
            for _ in range(args.rounds):
                for side, tree in trees.items():
                    r = hsm_auth_mix(tree, rounds=5)
                    per_round.setdefault(side, []).append(r)
                    print(side, json.dumps({k: v for k, v in r.items() if k != "runs"}), flush=True)
        finally:
            if args.base:
                subprocess.run(["git", "worktree", "remove", "--force", str(trees["base"])], cwd=ROOT, check=False)
    median = {f"{side}.{k}": round(statistics.median(r[k] for r in rs), 2)
              for side, rs in per_round.items() for k in rs[0] if k != "runs"}
    ratios = {"head.cache_on/head.cache_off": round(median["head.cache_on"] / median["head.cache_off"], 3)}
    if "base.default" in median:
        ratios["head.cache_on/base.default"] = round(median["head.cache_on"] / median["base.default"], 3)
    result = {"machine": describe_machine(), "what": "hsm.auth_mix_cpu_us (HSM command handler, CPU µs per "
              "authorisation: GW verify + 1/4 (G0 + EC) + GW generate)", "base": args.base, "rounds": args.rounds,
              "median": median, "ratio": ratios, "runs": per_round}
    out = Path(args.out_dir) / f"{date.today().isoformat()}-{socket.gethostname()}-micro-hsm-auth.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"median": median, "ratio": ratios}, indent=2))
    print(f"written: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="git revision to compare with, in the same run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--hsm-auth-mix", action="store_true", help="only the HSM authorisation mix (key caches on/off)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.hsm_auth_mix:
        return hsm_auth_mix_main(args)
    from benchmarks.ab import worktree
    from benchmarks.bench import describe_machine

    sides: dict[str, list[dict[str, float]]] = {"head": []}
    with tempfile.TemporaryDirectory(prefix="eum-micro-") as tmp:
        trees = {"head": ROOT}
        if args.base:
            sides = {"base": [], "head": []}
            trees = {"base": worktree(args.base, Path(tmp)), "head": ROOT}
        try:
            for _ in range(args.rounds):
                for side, tree in trees.items():
                    sides[side].append(measure(tree))
                    print(side, json.dumps(sides[side][-1]), flush=True)
        finally:
            if args.base:
                subprocess.run(["git", "worktree", "remove", "--force", str(trees["base"])], cwd=ROOT, check=False)
    medians = {side: {k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]}
               for side, runs in sides.items()}
    result = {"machine": describe_machine(), "base": args.base, "rounds": args.rounds, "median": medians, "runs": sides}
    if args.base:
        result["ratio_head_to_base"] = {k: round(medians["head"][k] / medians["base"][k], 3) for k in medians["head"]
                                        if k in medians["base"]}  # a key the base tree cannot measure: no ratio
    out = Path(args.out_dir) / f"{date.today().isoformat()}-{socket.gethostname()}-micro.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k in ("median", "ratio_head_to_base")}, indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
