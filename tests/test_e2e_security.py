"""Secured terminals end to end: terminal_sim (DUKPT, PIN blocks, MACs) → switch → hsm_mock,
each a real TCP peer. The switch never sees a clear PIN or key."""

import json
from pathlib import Path

import pytest
import structlog

from hsm_mock.config import HsmConfig as ServiceConfig
from hsm_mock.service import HsmServer
from switch.ledger.audit import verify
from switch.clock import FixedClock
from switch.authorize.hsm_client import HsmConfig
from switch.ops.operations import OperationError
from terminal_sim.client import TerminalClient
from terminal_sim.security import SecurityError, TakSecurity, TerminalSecurity
from terminal_sim.terminal import Terminal

from conftest import LAUNCH, query, start_switch
from waiting import eventually

pytestmark = pytest.mark.both_stores  # SQLite and PostgreSQL (tests/conftest.py)

PIN = "1234"


async def _secured(tmp_path: Path, profile: str, *, hsms=1, **hsm_kw):
    servers = [HsmServer(ServiceConfig(port=0)) for _ in range(hsms)]
    for s in servers:
        await s.start()
    cfg = HsmConfig(endpoints=tuple(("127.0.0.1", s.port) for s in servers), call_timeout_ms=300,
                    health_interval_s=0.1, **hsm_kw)
    ctx = start_switch(tmp_path / "var", clock=FixedClock(LAUNCH), hsm=cfg)
    env = await ctx.__aenter__()
    await env.op("merchant-add", mid="NAMDONG01", name="Namdong Cafe", district="namdong", annual_sales=250_000_000)
    term = await env.op("terminal-add", tid="T0000001", mid="NAMDONG01", security=profile, keys="test")
    card = await env.op("card-issue", program="namdong", pin=PIN)  # only the PVV is kept
    await env.op("card-charge", pan=card["pan"], amount=100_000)
    security = TakSecurity.for_test_keys() if profile == "mac" else TerminalSecurity.for_test_keys(profile, term["ksn"])
    client = await TerminalClient("127.0.0.1", env.port, env.dialect, security=security).connect()
    terminal = Terminal("T0000001", "NAMDONG01")
    assert (await client.request(terminal.sign_on()))["39"] == "00"
    return env, ctx, servers, client, terminal, card, term


async def _close(ctx, servers, client):
    await client.close()
    await ctx.__aexit__(None, None, None)
    for s in servers:
        await s.stop()


def _purchases(db):
    return query(db, "SELECT COUNT(*) FROM postings WHERE kind='purchase'")[0][0]


@pytest.mark.parametrize("profile", ["dukpt-tdes", "dukpt-aes"])
async def test_pin_purchase_is_approved_with_the_right_pin_and_a_valid_mac(tmp_path, profile):
    env, ctx, servers, client, term, card, provisioned = await _secured(tmp_path, profile)
    try:
        assert provisioned["ksn"] == ("FFFF9876540000200000" if profile == "dukpt-tdes"
                                      else "123456780000000100000000")
        answer = await client.request(term.purchase(card["pan"], 20_000), pin=PIN, pan=card["pan"])
        assert answer["39"] == "00"
        assert client.last_response_mac_ok is True
        assert answer["54"] == "0002410C000000080000" + "0091410C000000001500"
        stored = json.dumps(env.core.reader.conn.execute("SELECT * FROM cards").fetchall())
        assert PIN not in stored.replace(card["pan"], "")  # only the PVV is kept
        assert verify(env.core.db_path).ok
    finally:
        await _close(ctx, servers, client)


async def test_wrong_pins_decline_55_then_75_and_block_until_unblocked(tmp_path):
    env, ctx, servers, client, term, card, _ = await _secured(tmp_path, "dukpt-tdes")
    try:
        codes = []
        for pin in ("0000", "1111", "2222", PIN):
            answer = await client.request(term.purchase(card["pan"], 1_000), pin=pin, pan=card["pan"])
            codes.append(answer["39"])
        assert codes == ["55", "55", "75", "75"]
        assert _purchases(env.core.db_path) == 0
        await env.op("card-unblock-pin", pan=card["pan"])
        answer = await client.request(term.purchase(card["pan"], 1_000), pin=PIN, pan=card["pan"])
        assert answer["39"] == "00"
        assert verify(env.core.db_path).ok
    finally:
        await _close(ctx, servers, client)


async def test_a_bad_mac_is_declined_63_and_nothing_is_posted(tmp_path):
    env, ctx, servers, client, term, card, _ = await _secured(tmp_path, "dukpt-tdes")
    try:
        fields, payload = client.secure(term.purchase(card["pan"], 5_000), pin=PIN, pan=card["pan"])
        tampered = payload[:-9] + bytes([payload[-9] ^ 0x01]) + payload[-8:]  # the last field before DE64
        await client.send_raw(client._frame(tampered))
        answer = await client.receive()
        assert answer["39"] == "63"
        unsigned = term.purchase(card["pan"], 5_000)  # no DE53/DE64 at all
        plain = TerminalClient("127.0.0.1", env.port, env.dialect)
        await plain.connect()
        assert (await plain.request(unsigned))["39"] == "30"
        await plain.close()
        assert _purchases(env.core.db_path) == 0
    finally:
        await _close(ctx, servers, client)


async def test_no_hsm_answering_declines_91_quickly_and_posts_nothing(tmp_path):
    env, ctx, servers, client, term, card, _ = await _secured(tmp_path, "dukpt-tdes")
    try:
        await servers[0].stop()
        await eventually(lambda: env.core.hsm.healthy == [], what="the health check to mark the stopped HSM down")
        (endpoint,) = env.core.hsm.endpoints
        before = (endpoint.calls, endpoint.errors)
        answer = await client.request(term.purchase(card["pan"], 5_000), pin=PIN, pan=card["pan"])
        assert answer["39"] == "91"
        # quickly: declined without trying the HSM that is down (no call made, none timed out)
        assert (endpoint.calls, endpoint.errors) == before
        assert _purchases(env.core.db_path) == 0
    finally:
        await _close(ctx, servers[1:], client)


async def test_a_hanging_hsm_fails_over_to_the_second(tmp_path):
    from hsm_mock.service import FaultPlan

    env, ctx, servers, client, term, card, _ = await _secured(tmp_path, "dukpt-tdes", hsms=2)
    try:
        servers[0].faults = FaultPlan(hang=1.0)
        answer = await client.request(term.purchase(card["pan"], 5_000), pin=PIN, pan=card["pan"])
        assert answer["39"] == "00"
        assert client.last_response_mac_ok is True
        assert env.core.hsm.healthy == [f"127.0.0.1:{servers[1].port}"]
    finally:
        await _close(ctx, servers, client)


async def test_a_secured_reversal_is_macd_in_de128_both_ways(tmp_path):
    env, ctx, servers, client, term, card, _ = await _secured(tmp_path, "dukpt-tdes")
    try:
        purchase = term.purchase(card["pan"], 7_000)
        assert (await client.request(purchase, pin=PIN, pan=card["pan"]))["39"] == "00"
        answer = await client.request(term.reversal(purchase))
        assert answer["t"] == "0410" and answer["39"] == "00"
        assert "128" in answer and "64" not in answer
        assert client.last_response_mac_ok is True
        assert answer["54"] == "0002410C000000100000" + "0091410C000000000000"
        assert verify(env.core.db_path).ok
    finally:
        await _close(ctx, servers, client)


async def test_a_mac_only_terminal_signs_both_ways_and_cannot_send_pins(tmp_path):
    env, ctx, servers, client, term, card, provisioned = await _secured(tmp_path, "mac")
    try:
        assert provisioned == {"tid": "T0000001", "mid": "NAMDONG01", "security": "mac", "keys": "test"}
        answer = await client.request(term.purchase(card["pan"], 3_000))
        assert answer["39"] == "00" and client.last_response_mac_ok is True
        reversal = await client.request(term.reversal(client.last_request))
        assert reversal["39"] == "00" and "128" in reversal and client.last_response_mac_ok is True
        # a TAK that is not the terminal's: 63, nothing posted
        wrong = TerminalClient("127.0.0.1", env.port, env.dialect, security=TakSecurity(bytes.fromhex("0123" * 8)))
        await wrong.connect()
        assert (await wrong.request(term.purchase(card["pan"], 3_000)))["39"] == "63"
        await wrong.close()
        # a PIN block from a mac-only terminal cannot be verified: 57
        fields, payload = client.secure({**term.purchase(card["pan"], 3_000), "52": "0123456789ABCDEF"})
        await client.send_raw(client._frame(payload))
        assert (await client.receive())["39"] == "57"
        assert _purchases(env.core.db_path) == 1
        assert verify(env.core.db_path).ok
    finally:
        await _close(ctx, servers, client)


async def test_a_replayed_ksn_or_another_devices_ksn_is_refused_63(tmp_path):
    env, ctx, servers, client, term, card, provisioned = await _secured(tmp_path, "dukpt-tdes")
    try:
        assert (await client.request(term.purchase(card["pan"], 2_000), pin=PIN, pan=card["pan"]))["39"] == "00"
        secured = client.last_request
        # the same KSN and PIN block under a new STAN: a replay, refused before any posting
        replay = {**secured, "11": "000777"}
        assert (await client.resend(replay))["39"] == "63"
        # a KSN of another device of the same BDK: refused
        other_device = "FFFF9876540000400001"
        other = TerminalSecurity.for_test_keys("dukpt-tdes", "FFFF9876540000400000")
        intruder = TerminalClient("127.0.0.1", env.port, env.dialect, security=other)
        await intruder.connect()
        answer = await intruder.request(term.purchase(card["pan"], 2_000))
        assert intruder.last_request["53"] == other_device and answer["39"] == "63"
        await intruder.close()
        # the repeat of the first (same key, same KSN) still gets its stored answer
        assert (await client.resend(Terminal.repeat(secured)))["39"] == "00"
        assert _purchases(env.core.db_path) == 1
        assert env.core.reader.conn.execute("SELECT ksn_max FROM terminals").fetchone() == (1,)
    finally:
        await _close(ctx, servers, client)


async def test_a_slow_hsm_answers_slowly_and_a_too_slow_one_gets_91(tmp_path):
    from dataclasses import replace

    env, ctx, servers, client, term, card, _ = await _secured(tmp_path, "dukpt-tdes")
    try:
        (endpoint,) = env.core.hsm.endpoints
        calls = endpoint.calls  # provisioning's own calls (key import, PVV)
        # the purchase's commands are slow; NC stays quick, so the health check never marks the HSM down itself
        servers[0].config = replace(servers[0].config, latency_ms=60, command_latency_ms=(("NC", 0.0),))
        answer = await client.request(term.purchase(card["pan"], 1_000), pin=PIN, pan=card["pan"])
        # the PIN with the request MAC (GQ), the response MAC (GW): two HSM calls, each answered
        assert answer["39"] == "00"
        assert (endpoint.calls - calls, endpoint.errors, env.core.hsm.healthy) == (2, 0, [endpoint.name])
        assert endpoint.commands == {**endpoint.commands, "GQ": 1, "GW": 1}
        servers[0].config = replace(servers[0].config, latency_ms=1_000, command_latency_ms=(("NC", 0.0),))
        with structlog.testing.capture_logs() as logged:
            answer = await client.request(term.purchase(card["pan"], 1_000), pin=PIN, pan=card["pan"])
        assert answer["39"] == "91"
        # declined by the call timeout: the GQ and the response MAC sent beside it (docs/host-interface.md,
        # "The MAC check and the response MAC in one round trip") both timed out, none answered, the HSM
        # marked down for it once
        assert (endpoint.calls - calls, endpoint.errors) == (2, 2)
        assert [(e["hsm"], e["reason"]) for e in logged if e["event"] == "hsm_down"] == [(endpoint.name, "timeout")]
        assert _purchases(env.core.db_path) == 1
    finally:
        await _close(ctx, servers, client)


# Two custodians' clear components of the key-injection facility's ZMK (test values).
KIF_COMPONENTS = ["0123456789ABCDEFFEDCBA9876543210", "0101010101010101" * 2]


@pytest.mark.parametrize("profile", ["dukpt-tdes", "dukpt-aes"])
async def test_a_generated_key_set_never_shows_the_bdk_and_works_end_to_end(tmp_path, profile):
    env, ctx, servers, client, term, card, _ = await _secured(tmp_path, profile)
    await client.close()
    try:
        with pytest.raises(OperationError, match="^no key-injection ZMK yet: custodians form it with "):
            await env.op("terminal-add", tid="T0000008", mid="NAMDONG01", security=profile, keys="generated")
        assert await env.op("kif-zmk", components=KIF_COMPONENTS) == {"kif_zmk_kcv": "08D7B4"}
        first = await env.op("terminal-add", tid="T0000008", mid="NAMDONG01", security=profile, keys="generated",
                             group="namdong")
        second = await env.op("terminal-add", tid="T0000009", mid="NAMDONG01", security=profile, keys="generated",
                              group="namdong")
        assert set(first) == {"tid", "mid", "security", "keys", "group", "ksn", "bdk_kcv",
                              "initial_key_under_kif_zmk", "initial_key_kcv"}
        assert first["bdk_kcv"] == second["bdk_kcv"]  # one BDK per group
        assert first["ksn"] != second["ksn"] and first["initial_key_kcv"] != second["initial_key_kcv"]
        rows = env.core.reader.conn.execute("SELECT name, profile, bdk FROM key_groups").fetchall()
        assert [(n, p) for n, p, _ in rows] == [("namdong", profile)] and rows[0][2][0] == "U"  # under the LMK only
        security = TerminalSecurity.for_injected_key(profile, first["ksn"], first["initial_key_under_kif_zmk"],
                                                     KIF_COMPONENTS, kcv=first["initial_key_kcv"])
        terminal = Terminal("T0000008", "NAMDONG01")
        async with TerminalClient("127.0.0.1", env.port, env.dialect, security=security) as injected:
            assert (await injected.request(terminal.sign_on()))["39"] == "00"
            answer = await injected.request(terminal.purchase(card["pan"], 4_000), pin=PIN, pan=card["pan"])
            assert answer["39"] == "00" and injected.last_response_mac_ok is True
        # the same KSN under the public test BDK is not this terminal's key: its MAC fails, 63
        wrong = TerminalSecurity.for_test_keys(profile, first["ksn"])
        wrong.next_ksn()
        async with TerminalClient("127.0.0.1", env.port, env.dialect, security=wrong) as impostor:
            assert (await impostor.request(terminal.purchase(card["pan"], 4_000)))["39"] == "63"
        with pytest.raises(SecurityError, match=r"^the initial key does not decrypt under the given ZMK components \(KCV differs\)$"):
            TerminalSecurity.for_injected_key(profile, first["ksn"], first["initial_key_under_kif_zmk"],
                                              ["0123456789ABCDEFFEDCBA9876543210", "1010101010101010" * 2],
                                              kcv=first["initial_key_kcv"])
        assert verify(env.core.db_path).ok
    finally:
        await ctx.__aexit__(None, None, None)
        for s in servers:
            await s.stop()
