"""Inventory (issue 14 item 4): `eum admin terminal|merchant|card` list, show, find, disable,
enable, update, as an operator runs them beside a running switch, on both stores.

The switch runs in the test's event loop (conftest's switch_env: two merchants, T0000001 at
NAMDONG01 and T0000002 at YEONSU01, two charged cards); the commands run as real `eum`
subprocesses: reads open the ledger read-only, changes reach the switch over its control
socket, so the switch honours them at once. Every subprocess is bounded in time.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from conftest import LAUNCH, SwitchEnv, account, card_id, postings, query
from conftest import payable as payable_account
from switch.domain import mask_pan
from switch.ledger.audit import card_statement
from switch.ledger.records import Commit, PinTriesSet

pytestmark = pytest.mark.both_stores  # SQLite and PostgreSQL (tests/conftest.py); subprocesses inherit $EUM_STORE

EUM_SCRIPT = Path(sys.executable).parent / "eum"
EUM = [str(EUM_SCRIPT)] if EUM_SCRIPT.exists() else [sys.executable, "-m", "switch.cli.main"]
COMMAND_TIMEOUT_S = 30


async def eum(*args: str, rc: int = 0) -> tuple[str, str]:
    """One `eum` command as a process (the switch in this loop keeps serving while it runs)."""
    proc = await asyncio.create_subprocess_exec(*EUM, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    out, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT_S)
    assert proc.returncode == rc, (args, proc.returncode, out.decode(), err.decode())
    return out.decode(), err.decode()


async def admin(env: SwitchEnv, *args: str, rc: int = 0) -> tuple[str, str]:
    return await eum("admin", "--data-dir", str(env.data_dir), *args, rc=rc)


async def json_lines(env: SwitchEnv, *args: str) -> tuple[list[dict], str]:
    out, err = await admin(env, *args, "--json")
    return [json.loads(line) for line in out.splitlines()], err


async def test_terminal_disable_answers_its_next_message_58_and_enable_undoes_it(switch_env):
    """Over TCP: a signed-on terminal disabled by `eum admin terminal disable` (through the
    running switch's control socket) has its very next purchase answered 58, nothing posted,
    and cannot sign on again; the other terminal is untouched; enable undoes it."""
    env = switch_env
    pan = env.cards["namdong"]["pan"]
    client, term = await env.signed_on("T0000001", "NAMDONG01")
    other, other_term = await env.signed_on("T0000002", "YEONSU01")
    posted = len(postings(env.data_dir / "ledger.sqlite3"))

    out, _ = await admin(env, "terminal", "disable", "--tid", "T0000001", "--json")
    assert json.loads(out) == {"tid": "T0000001", "mid": "NAMDONG01", "status": "disabled"}
    assert (await client.request(term.purchase(pan, 1_000)))["39"] == "58"
    assert (await client.request(term.sign_on()))["39"] == "58"
    assert len(postings(env.data_dir / "ledger.sqlite3")) == posted
    assert (await other.request(other_term.purchase(pan, 1_000)))["39"] == "00"
    shown, _ = await admin(env, "terminal", "show", "--tid", "T0000001", "--json")
    assert json.loads(shown) == {"tid": "T0000001", "mid": "NAMDONG01", "security": "none", "status": "disabled",
                                 "merchant": "Namdong Cafe"}

    out, _ = await admin(env, "terminal", "enable", "--tid", "T0000001", "--json")
    assert json.loads(out) == {"tid": "T0000001", "mid": "NAMDONG01", "status": "active"}
    assert (await client.request(term.sign_on()))["39"] == "00"
    assert (await client.request(term.purchase(pan, 1_000)))["39"] == "00"
    assert query(env.data_dir / "ledger.sqlite3", "SELECT tid, status FROM terminals ORDER BY tid") == [
        ("T0000001", "active"), ("T0000002", "active")]
    _, err = await admin(env, "terminal", "disable", "--tid", "T0000009", rc=1)
    assert err == "eum admin: terminal T0000009 not found\n"
    await client.close()
    await other.close()


async def test_merchant_update_moves_the_fee_tier_of_the_next_purchase(switch_env):
    """A merchant's yearly annual sales, changed by `eum admin merchant update` while the switch
    runs, decide the fee of the next authorization. Expected fees from config/fees.toml (the
    2019-01-31 schedule, docs/domain.md "Merchant fees"): 250,000,000 won of sales is micro at
    50 bp, 400,000,000 is small1 at 100 bp; fee = floor(20,000 × bp / 10,000)."""
    env = switch_env
    pan = env.cards["namdong"]["pan"]
    client, term = await env.signed_on("T0000001", "NAMDONG01")
    before = await client.request(term.purchase(pan, 20_000))
    out, _ = await admin(env, "merchant", "update", "--mid", "NAMDONG01", "--annual-sales", "400000000", "--json")
    assert json.loads(out) == {"mid": "NAMDONG01", "name": "Namdong Cafe", "district": "namdong",
                               "annual_sales": 400_000_000, "category": "general", "online_mall": False,
                               "fee_tier": "small1"}
    after = await client.request(term.purchase(pan, 20_000))
    await client.close()
    assert (before["39"], after["39"]) == ("00", "00")
    db = env.data_dir / "ledger.sqlite3"
    rows = {int(r["37"]): r for r in (before, after)}
    fees = {pid: (fee, json.loads(detail)["fee_tier"], json.loads(detail)["rate_bp"])
            for pid, fee, detail in query(db, "SELECT id, fee, detail FROM postings WHERE kind = 'purchase'")}
    assert [fees[pid] for pid in sorted(rows)] == [(100, "micro", 50), (200, "small1", 100)]

    shown, _ = await admin(env, "merchant", "show", "--mid", "NAMDONG01", "--json")
    payable = account(db, payable_account("NAMDONG01"))
    assert payable > 0
    assert json.loads(shown) == {"mid": "NAMDONG01", "name": "Namdong Cafe", "district": "namdong",
                                 "annual_sales": 400_000_000, "category": "general", "online_mall": False,
                                 "fee_tier": "small1", "terminals": 1, "payable": payable}
    renamed, _ = await admin(env, "merchant", "update", "--mid", "NAMDONG01", "--name", "Namdong Bakery",
                             "--category", "bakery", "--json")
    assert (json.loads(renamed)["name"], json.loads(renamed)["category"]) == ("Namdong Bakery", "bakery")
    assert query(db, "SELECT name, annual_sales, category, district FROM merchants WHERE mid = ?",
                 "NAMDONG01".ljust(15)) == [("Namdong Bakery", 400_000_000, "bakery", "namdong")]
    _, err = await admin(env, "merchant", "update", "--mid", "NAMDONG01", rc=1)
    assert err == "eum admin: merchant update: give --name, --annual-sales or --category\n"


async def test_lists_page_by_key_with_masked_pans(switch_env):
    """Keyset pages: --limit rows, the next page's --after on stderr while one follows; --json
    prints one object per line; a PAN is always masked; filters by program, member, status."""
    env = switch_env
    extra = [await env.op("card-issue", program="incheon", member="M-PAGE") for _ in range(3)]
    await env.op("card-block", pan=extra[1]["pan"])
    pans = [env.cards["namdong"]["pan"], env.cards["incheon"]["pan"], *(c["pan"] for c in extra)]

    first, err = await json_lines(env, "card", "list", "--limit", "2")
    assert [c["id"] for c in first] == [1, 2] and err == "eum admin: more after this page: --after 2\n"
    second, err = await json_lines(env, "card", "list", "--limit", "2", "--after", "2")
    assert [c["id"] for c in second] == [3, 4] and err == "eum admin: more after this page: --after 4\n"
    last, err = await json_lines(env, "card", "list", "--limit", "2", "--after", "4")
    assert [c["id"] for c in last] == [5] and err == ""
    assert [c["pan"] for c in first + second + last] == [mask_pan(p) for p in pans]
    namdong = env.cards["namdong"]
    assert first[0] == {"id": 1, "pan": mask_pan(pans[0]), "program": "namdong", "member": namdong["member"],
                        "expiry": namdong["expiry"], "status": "active", "pin_blocked": False, "cash": 100_000,
                        "cashback": 0}
    text, _ = await admin(env, "card", "list")
    assert not any(p in text for p in pans)

    found, err = await json_lines(env, "card", "find", "--member", "M-PAGE")
    assert [(c["id"], c["status"]) for c in found] == [(3, "active"), (4, "blocked"), (5, "active")] and err == ""
    blocked, _ = await json_lines(env, "card", "list", "--status", "blocked")
    assert [c["id"] for c in blocked] == [4]
    incheon, _ = await json_lines(env, "card", "list", "--program", "incheon", "--member", "M-PAGE", "--after", "3")
    assert [c["id"] for c in incheon] == [4, 5]

    merchants, err = await json_lines(env, "merchant", "list", "--limit", "1")
    assert [m["mid"] for m in merchants] == ["NAMDONG01"]
    assert err == "eum admin: more after this page: --after NAMDONG01\n"
    merchants, err = await json_lines(env, "merchant", "list", "--after", "NAMDONG01")
    assert merchants == [{"mid": "YEONSU01", "name": "Yeonsu Bakery", "district": "yeonsu", "annual_sales": 250_000_000,
                          "category": "general", "online_mall": False}] and err == ""
    terminals, _ = await json_lines(env, "terminal", "list", "--mid", "YEONSU01")
    assert terminals == [{"tid": "T0000002", "mid": "YEONSU01", "security": "none", "status": "active"}]
    table, _ = await admin(env, "terminal", "list")
    assert table == ("tid       mid        security  status\n"
                     "T0000001  NAMDONG01  none      active\n"
                     "T0000002  YEONSU01   none      active\n")
    _, err = await admin(env, "card", "list", "--limit", "0", rc=2)
    assert err == "eum: --limit must be 1..1,000, got 0\n"


async def test_a_terminal_shown_never_carries_its_keys(switch_env):
    """A MAC terminal under the test keys: show and list name its profile, never its TAK (the
    key under the LMK stays in the ledger)."""
    env = switch_env
    await env.op("terminal-add", tid="T0000003", mid="NAMDONG01", security="mac")
    key = query(env.data_dir / "ledger.sqlite3", "SELECT key_lmk FROM terminals WHERE tid = 'T0000003'")[0][0]
    assert len(key) >= 16
    shown, _ = await admin(env, "terminal", "show", "--tid", "T0000003", "--json")
    assert json.loads(shown) == {"tid": "T0000003", "mid": "NAMDONG01", "security": "mac", "status": "active",
                                 "merchant": "Namdong Cafe"}
    listed, _ = await admin(env, "terminal", "list", "--json")
    assert key not in listed and key not in shown


async def test_card_show_says_whether_the_pin_is_blocked(switch_env):
    """`card show` gains pin_blocked and pin_tries; unblock-pin clears both. The block is the
    change the engine commits at the PIN-tries limit (PinTriesSet), committed here directly."""
    env = switch_env
    pan = env.cards["namdong"]["pan"]
    cid = card_id(env.data_dir / "ledger.sqlite3", pan)
    await env.core.writer.submit(Commit(changes=(PinTriesSet(cid, 3, True),)))
    shown, _ = await admin(env, "card", "show", "--pan", pan, "--json")
    statement = json.loads(shown)
    assert (statement["pan"], statement["pin_blocked"], statement["pin_tries"]) == (mask_pan(pan), True, 3)
    text, _ = await admin(env, "card", "show", "--pan", pan)
    assert "pin_blocked: True\npin_tries: 3\n" in text and pan not in text
    await admin(env, "card", "unblock-pin", "--pan", pan)
    after = card_statement(env.core.db_path, pan)
    assert (after["pin_blocked"], after["pin_tries"]) == (False, 0)


async def test_data_dir_and_store_are_taken_before_or_after_the_subcommand(switch_env, tmp_path, ledger_store):
    """`eum admin|report|events`: --data-dir before the subcommand and after it read the same
    ledger; given after, it wins over the default; a mistyped one is one line, and nothing is made."""
    env = switch_env
    data_dir = str(env.data_dir)
    before, _ = await eum("admin", "--data-dir", data_dir, "card", "list", "--json")
    after, _ = await eum("admin", "card", "list", "--json", "--data-dir", data_dir)
    assert before == after and len(before.splitlines()) == 2
    day = LAUNCH.date().isoformat()
    report_before, _ = await eum("report", "--data-dir", data_dir, "daily", "--date", day, "--csv")
    report_after, _ = await eum("report", "daily", "--date", day, "--csv", "--data-dir", data_dir)
    assert report_before == report_after and report_before.startswith("mid,")
    status_before, _ = await eum("events", "--data-dir", data_dir, "status")
    status_after, _ = await eum("events", "status", "--data-dir", data_dir)
    assert json.loads(status_before)["events"] == json.loads(status_after)["events"] > 0

    if ledger_store.postgresql:
        return  # PostgreSQL: $EUM_STORE names the ledger, the data dir only holds the lock and logs
    typo = tmp_path / "vra"
    for command in (("admin", "--data-dir", str(typo), "card", "list"),
                    ("admin", "terminal", "show", "--tid", "T0000001", "--data-dir", str(typo)),
                    ("admin", "--data-dir", str(typo), "terminal", "disable", "--tid", "T0000001"),
                    ("report", "daily", "--date", day, "--data-dir", str(typo)),
                    ("events", "tail", "--data-dir", str(typo))):
        _, err = await eum(*command, rc=2)
        assert err == f"eum: no ledger at {typo}\n", command
    assert not typo.exists()
