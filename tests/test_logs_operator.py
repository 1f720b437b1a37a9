"""Logs an operator can use (docs/operations.md, "Logs"): the canonical line's kind and DE70,
KST timestamps, the console's columns within 120, `eum logs` and its filters, admin actions
logged with what changed, size rotation with a retention count, and reopening on SIGHUP for
logrotate. A real `eum switch` process writes the log (tests/switch_process.py)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from switch.ops import logs
from switch.ops.logs import console_line
from switch_process import EUM, COMMAND_TIMEOUT_S, provisioned, running_switch
from terminal_sim.terminal import Terminal
from waiting import wait_until

KST_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+09:00")


def eum(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*EUM, *args], cwd=cwd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                          stdin=subprocess.DEVNULL)


async def _traffic(sw, cards: dict) -> dict[str, dict]:
    """One of each kind from T0000001; returns the requests sent, by kind."""
    client = await sw.client()
    term = Terminal("T0000001", "NAMDONG01")
    pan = cards["namdong"]["pan"]
    sent: dict[str, dict] = {}
    try:
        for kind, fields in (("sign-on", term.sign_on()), ("echo", term.echo())):
            sent[kind] = fields
            assert (await client.request(fields))["39"] == "00"
        bought = term.purchase(pan, 20_000)
        sent["purchase"] = bought
        answer = await client.request(bought)
        sent["refund"] = term.refund(pan, 5_000, answer["37"])
        sent["balance"] = term.balance(pan)
        sent["over"] = term.purchase(pan, 1_000_000)  # 51: more than the card holds
        auth = term.preauth(pan, 10_000)
        sent["pre-auth"] = auth
        for kind in ("refund", "balance", "over", "pre-auth"):
            await client.request(sent[kind])
        sent["reversal"] = term.reversal(bought)
        await client.request(sent["reversal"])
        sent["sign-off"] = term.sign_off()
        await client.request(sent["sign-off"])
    finally:
        await client.close()
    return sent


def test_the_canonical_line_says_kind_de70_and_kst_time_and_eum_logs_filters_it(tmp_path):
    data = tmp_path / "var"
    cards = asyncio.run(provisioned(data))
    with running_switch(data, tmp_path) as sw:
        sent = asyncio.run(_traffic(sw, cards))
        lines = sw.logged("the sign-off's line", event="message", kind="sign-off")
        messages = sw.events(event="message")
    assert [(m["kind"], m.get("de70"), m["rc"]) for m in messages] == [
        ("sign-on", "001", "00"), ("echo", "301", "00"), ("purchase", None, "00"), ("refund", None, "00"),
        ("balance", None, "00"), ("purchase", None, "51"), ("pre-auth", None, "00"), ("reversal", None, "00"),
        ("sign-off", "002", "00")]
    assert lines[0]["stan"] == sent["sign-off"]["11"]
    assert all(KST_TS.fullmatch(m["ts"]) for m in messages)
    assert {m.get("program") for m in messages if m["kind"] in ("purchase", "refund", "pre-auth")} == {"namdong"}

    pan = cards["namdong"]["pan"]
    shown = eum("logs", "--data-dir", str(data), "--rc", "51", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    (line,) = shown.stdout.splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} purchase\s+T0000001 " + re.escape(pan[:6] + "******" + pan[-4:])
                        + r"\s+1,000,000 51\s+\d+\.\dms .*", line), line
    assert len(line) <= 120
    by_kind = eum("logs", "--data-dir", str(data), "--kind", "pre-auth", "--json", cwd=tmp_path)
    assert [json.loads(x)["stan"] for x in by_kind.stdout.splitlines()] == [sent["pre-auth"]["11"]]
    card = eum("logs", "--data-dir", str(data), "--pan-last4", pan[-4:], "--tid", "T0000001", "--since", "1h",
               "--json", cwd=tmp_path)
    assert [json.loads(x)["kind"] for x in card.stdout.splitlines()] == [
        "purchase", "refund", "balance", "purchase", "pre-auth", "reversal"]
    assert pan not in (data / "logs" / "switch.jsonl").read_text()
    none = eum("logs", "--data-dir", str(data), "--since", "2000-01-01T00:00:00", "--program", "seo", cwd=tmp_path)
    assert (none.returncode, none.stdout) == (0, "")
    bad = eum("logs", "--data-dir", str(data), "--since", "yesterday", cwd=tmp_path)
    assert (bad.returncode, bad.stderr.strip()) == (
        2, "eum logs: --since 'yesterday': expected an age like 10m, 2h, 1d or an ISO 8601 time")
    missing = eum("logs", "--data-dir", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert (missing.returncode, missing.stderr.strip()) == (
        2, f"eum logs: no switch log at {tmp_path / 'nowhere' / 'logs' / 'switch.jsonl'} (is --data-dir the switch's?)")


def test_an_admin_action_is_logged_with_what_it_changed_never_a_full_pan(tmp_path):
    data = tmp_path / "var"
    cards = asyncio.run(provisioned(data))
    pan = cards["namdong"]["pan"]
    with running_switch(data, tmp_path) as sw:
        charged = eum("admin", "--data-dir", str(data), "card", "charge", "--pan", pan, "--amount", "30000",
                      cwd=tmp_path)
        assert charged.returncode == 0, charged.stderr
        (line,) = sw.logged("the charge's admin_action line", event="admin_action", op="card-charge")
        blocked = eum("admin", "--data-dir", str(data), "card", "block", "--pan", pan, cwd=tmp_path)
        assert blocked.returncode == 0, blocked.stderr
        (block,) = sw.logged("the block's admin_action line", event="admin_action", op="card-block")
    masked = pan[:6] + "******" + pan[-4:]
    assert (line["pan"], line["charged"], line["cash"], line["receivable_repaid"]) == (masked, 30_000, 130_000, 0)
    assert (block["pan"], block["status"]) == (masked, "blocked")
    assert pan not in (data / "logs" / "switch.jsonl").read_text()


def test_the_log_rotates_at_its_size_keeping_the_count_asked(tmp_path):
    out = tmp_path / "logs"
    logs.configure(data_dir=tmp_path, name="switch", stream=open(os.devnull, "w"), json_output=True,
                   max_bytes=1_000, keep=2)
    try:
        for i in range(60):  # ≈ 100 bytes a line: about six files' worth
            logs.canonical("message", {"stan": f"{i:06d}", "note": "x" * 40})
        logs.flush()
    finally:
        logs.configure(stream=open(os.devnull, "w"), json_output=True)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["switch.jsonl", "switch.jsonl.1", "switch.jsonl.2"]
    stans = [json.loads(x)["stan"] for name in ("switch.jsonl.2", "switch.jsonl.1", "switch.jsonl")
             for x in (out / name).read_text().splitlines()]
    assert stans == [f"{i:06d}" for i in range(60 - len(stans), 60)]  # the newest, in order, none torn
    assert all((out / n).stat().st_size <= 1_000 + 200 for n in names)


def test_sighup_reopens_the_log_after_logrotate_moved_it(tmp_path):
    data = tmp_path / "var"
    asyncio.run(provisioned(data))
    live = data / "logs" / "switch.jsonl"
    with running_switch(data, tmp_path, "--log-max-mb", "0") as sw:
        sw.logged("the switch's start line", event="switch_listening")
        moved = live.with_name("switch.jsonl.logrotated")
        os.replace(live, moved)  # logrotate's default: move, then signal
        os.kill(sw.proc.pid, signal.SIGHUP)

        async def echo() -> None:
            client = await sw.client()
            term = Terminal("T0000001", "NAMDONG01", stan=500)
            try:
                await client.request(term.sign_on())
            finally:
                await client.close()

        asyncio.run(echo())
        wait_until(lambda: live.exists() and "sign-on" in live.read_text(), what="the sign-on in a new switch.jsonl")
        assert sw.proc.poll() is None  # SIGHUP does not stop the switch
    assert "sign-on" not in moved.read_text()


@pytest.mark.parametrize("event, expected", [
    ({"ts": "2026-11-28T15:40:01.234567+09:00", "event": "message", "kind": "purchase", "terminal": "T0000001",
      "pan": "941010******0011", "amount": 20_000, "rc": "00", "latency_us": 1234, "stan": "000002", "mti": "0200"},
     "15:40:01.234 purchase        T0000001 941010******0011      20,000 00     1.2ms stan=000002 mti=0200"),
    ({"ts": "2026-11-28T15:40:01.234567+09:00", "event": "message", "kind": "sign-on", "terminal": "T0000001",
      "rc": "00", "latency_us": 80, "de70": "001"},
     "15:40:01.234 sign-on         T0000001                              00     0.1ms de70=001"),
])
def test_the_console_line_puts_the_operators_columns_first(event, expected):
    assert console_line(event) == expected


def test_the_console_line_is_cut_at_120_columns():
    line = console_line({"ts": "2026-11-28T15:40:01.234567+09:00", "event": "message", "kind": "purchase",
                         "note": "n" * 300})
    assert (len(line), line[-1]) == (120, "…")
