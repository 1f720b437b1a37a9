"""Defects of the old engine that the redesigned authorization core fixes, each end to end.

The old engine (`git show 14cd5a4:switch/engine.py`) stored a message's outcome in the commit
whatever happened before it, and built the response's bytes only after that commit. So an HSM
that timed out on the PIN stored a 91 (its repeat was replayed 91, the KSN counter was spent),
a response that could not be encoded was posted and then answered 96, and a dialect that could
not carry a response was found out only when a terminal got none. The rules guarded:

* docs/host-interface.md §4, 91: "Nothing is posted and nothing is stored: the terminal may
  send the request again"; docs/security.md: a repeat is re-sent with its original's KSN, and
  no HSM answering gets 91 within one call timeout, never an approval.
* docs/host-interface.md §4, 96: "nothing was posted"; docs/architecture.md, "Hot state,
  members and the single writer": a terminal never sees an approval that is not durable — and the switch never
  makes durable what it cannot answer.
* switch/wire/codec.py `check_responses`: `eum switch` refuses, at start, a dialect that
  cannot carry every response, with one line naming the field.

Real components only: a real hsm_mock HsmServer behind a TCP hop the test controls
(tests/hsm_hop.py: it forwards every payShield command but, while told to, swallows the PIN
check — G0, or GQ where the PIN is checked with the request MAC — as an HSM that hangs on
it), the switch's real objects in the test's event loop (real TCP, real
SQLite), terminal_sim's DUKPT terminal with a PIN, and `eum switch` as a subprocess.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import AsyncIterator

import pytest
import structlog

from switch.clock import FixedClock
from switch.ledger.audit import verify
from switch.rules.policy import default_config_dir
from switch.wire.codec import DialectError, check_responses, load_dialect
from terminal_sim.client import TerminalClient
from terminal_sim.terminal import Terminal

from conftest import LAUNCH, SwitchEnv, card_accounts, postings, provision, query, start_switch
from hsm_hop import switch_behind_hop
from waiting import eventually, logged

pytestmark = pytest.mark.both_stores  # SQLite and PostgreSQL (tests/conftest.py)

EUM_SCRIPT = Path(sys.executable).parent / "eum"
EUM = [str(EUM_SCRIPT)] if EUM_SCRIPT.exists() else [sys.executable, "-m", "switch.cli.main"]
COMMAND_TIMEOUT_S = 30
PIN = "1234"
TID = "T0000001"

# docs/host-interface.md §2: the 0210 echoes these fields of the 0200 (when present).
ECHOED_0210 = ("2", "3", "4", "7", "11", "12", "13", "41", "42", "49")


def balances_de54(cash: int, cashback: int) -> str:
    """DE54 as docs/host-interface.md §5 spells it: cash available, then cashback available."""
    return f"0002410C{cash:012d}0091410C{cashback:012d}"


def declined(request: dict[str, str], rc: str) -> dict[str, str]:
    """An answer with nothing posted (docs/host-interface.md §4): the request's echoed fields
    and DE39, no DE37, DE38 or DE54."""
    return {"t": "0210", **{k: request[k] for k in ECHOED_0210 if k in request}, "39": rc}


def without(answer: dict[str, str], *keys: str) -> dict[str, str]:
    return {k: v for k, v in answer.items() if k not in ("p", *keys)}


def message_rows(db: Path, tid: str, stan: str) -> list[tuple]:
    return query(db, "SELECT mti, rc, posting_id FROM messages WHERE tid=? AND stan=?", tid, stan)


def dialect_variant(source: Path, target: Path, field_no: str, **spec: int) -> None:
    """A copy of the dialect file `source` with some keys of one field's spec changed (text
    edit of that field's block only)."""
    text = source.read_text(encoding="utf-8")
    head, sep, rest = text.partition(f'[fields."{field_no}"]\n')
    assert sep, f"DE{field_no} not in {source}"
    block, nxt, tail = rest.partition("\n[")
    lines = block.split("\n")
    for key, value in spec.items():
        hits = [i for i, line in enumerate(lines) if line.startswith(f"{key} = ")]
        assert len(hits) == 1, (field_no, key)
        lines[hits[0]] = f"{key} = {value}"
    target.write_text(head + sep + "\n".join(lines) + nxt + tail, encoding="utf-8")


# ---------------------------------------------------------------------------- the HSM hop

# ---------------------------------------------------------------------------- a: G0 timeout

# The HSM commands of one PIN purchase, by the switch's pin_verify (docs/hsm.md, "PIN
# verification"): what is forwarded while the PIN check is held, what is held, a whole purchase.
# With GQ the response MAC leaves beside the check, for a decision that assumed the PIN right
# (docs/host-interface.md, "The MAC check and the response MAC in one round trip").
PIN_CHECKS = {
    "g0-ec": (["GW11"], ["G0"], ["GW11", "G0", "EC", "GW42"]),
    "gq": (["GW42"], ["GQ"], ["GQ", "GW42"]),
}


@pytest.mark.parametrize("pin_verify", ["g0-ec", "gq"])
async def test_a_pin_translation_the_hsm_never_answers_is_declined_91_stores_nothing_and_the_repeat_is_approved(
        tmp_path, pin_verify):
    """The HSM never answers the PIN check: the translation (G0) after it verified the request
    MAC (GW11), or the GQ that checks both at once. The switch answers 91 after its call
    timeout, and nothing of the message is stored: no message row, no posting, no KSN
    counter, no PIN count. When the HSM answers again, the terminal's 0201 repeat — re-sent
    under the original's KSN and PIN block (docs/security.md) — is processed afresh and
    approved, posted once. The old engine committed the 91 with the message (its repeat was
    replayed 91) and persisted the KSN counter."""
    held_forwarded, held, whole = PIN_CHECKS[pin_verify]
    async with switch_behind_hop(tmp_path / "var", tid=TID, pin=PIN, pin_verify=pin_verify) as setup:
        env, hop, pan, term, security = setup.env, setup.hop, setup.pan, setup.term, setup.security
        db = env.core.db_path
        async with TerminalClient("127.0.0.1", env.port, env.dialect, security=security) as client:
            assert (await client.request(term.sign_on()))["39"] == "00"
            hop.forwarded.clear()
            hop.hold_pin = True
            with structlog.testing.capture_logs() as events:
                answer = await client.request(term.purchase(pan, 20_000), pin=PIN, pan=pan)
            original = client.last_request
            assert (hop.commands(), hop.swallowed) == (held_forwarded, held)  # the PIN never answered
            assert without(answer, "64") == declined(original, "91")
            assert [(e["rc"], e.get("note")) for e in logged(events, event="message")] == [
                ("91", "HSM unavailable")]
            # nothing stored: no message, no posting, no KSN counter persisted, no PIN try counted
            assert message_rows(db, TID, original["11"]) == []
            assert postings(db, "purchase") == []
            assert card_accounts(db, pan) == (100_000, 0)
            assert query(db, "SELECT ksn_max FROM terminals WHERE tid=?", TID) == [(0,)]
            assert query(db, "SELECT pin_tries, pin_blocked FROM cards WHERE pan=?", pan) == [(0, 0)]
            assert env.core.state.messages.get((TID, original["11"], original["7"])) is None

            hop.hold_pin = False
            await eventually(lambda: env.core.hsm.healthy, what="the switch to see the HSM healthy again")
            hop.forwarded.clear()
            again = await client.resend(Terminal.repeat(original))
            assert client.last_request["53"] == original["53"]  # the same KSN: its counter was not spent
            assert again["39"] == "00", f"the repeat under the original's KSN was answered {again['39']}"
            assert (again["t"], again["37"], again["38"], again["54"], client.last_response_mac_ok) == (
                "0210", "000000000002", "000002", balances_de54(80_000, 1_500), True)
            # processed afresh: its MAC and PIN checked by the HSM, its response MAC'd
            assert hop.commands() == whole
            replay = await client.resend(Terminal.repeat(original))
            assert without(replay, "64") == without(again, "64")  # now the stored answer

        assert [(p["id"], p["stan"], p["amount"]) for p in postings(db, "purchase")] == [
            (2, original["11"], 20_000)]
        assert message_rows(db, TID, original["11"]) == [("0200", "00", 2)]
        assert card_accounts(db, pan) == (80_000, 1_500)
        counter = int(original["53"], 16) & ((1 << 21) - 1)  # docs/security.md: the 21-bit counter
        assert query(db, "SELECT ksn_max FROM terminals WHERE tid=?", TID) == [(counter,)]
        assert verify(db).ok


# ---------------------------------------------------------------------------- a2: an HSM error of its own

@pytest.mark.parametrize("pin_verify, refused, forwarded, note", [
    ("g0-ec", "GW11", [], "MAC: HSM error 67"),              # the request MAC: nothing else is asked
    ("g0-ec", "G0", ["GW11", "GW42"], "PIN: HSM error 67"),  # the PIN, after the MAC verified; the 91 is MAC'd
    ("gq", "GQ", ["GW42"], "MAC and PIN: HSM error 67"),     # both in one command, the response MAC beside it
])
async def test_an_hsm_that_answers_an_error_of_its_own_is_declined_91_stores_nothing_and_the_repeat_is_approved(
        tmp_path, pin_verify, refused, forwarded, note):
    """The HSM answers 67 (over capacity: an error of its own, not about the data, docs/hsm.md §4)
    to the request-MAC check, to the PIN translation or to the GQ that checks both. It could
    not check them: 91, nothing stored, the KSN counter not spent (docs/host-interface.md, 91).
    Before the fix the MAC case was answered 63 and the PIN case a stored 63 (found by
    tests/test_simulation.py, seeds 1 and 64). When the HSM answers again the 0201 repeat is
    processed afresh and approved."""
    async with switch_behind_hop(tmp_path / "var", tid=TID, pin=PIN, pin_verify=pin_verify) as setup:
        env, hop, pan, term, security = setup.env, setup.hop, setup.pan, setup.term, setup.security
        db = env.core.db_path
        async with TerminalClient("127.0.0.1", env.port, env.dialect, security=security) as client:
            assert (await client.request(term.sign_on()))["39"] == "00"
            hop.forwarded.clear()
            hop.refuse = {refused: "67"}
            with structlog.testing.capture_logs() as events:
                answer = await client.request(term.purchase(pan, 20_000), pin=PIN, pan=pan)
            original = client.last_request
            assert (hop.commands(), hop.refused) == (forwarded, [refused])
            assert without(answer, "64") == declined(original, "91")
            assert [(e["rc"], e.get("note")) for e in logged(events, event="message")] == [("91", note)]
            assert message_rows(db, TID, original["11"]) == []
            assert postings(db, "purchase") == []
            assert query(db, "SELECT ksn_max FROM terminals WHERE tid=?", TID) == [(0,)]
            assert query(db, "SELECT pin_tries, pin_blocked FROM cards WHERE pan=?", pan) == [(0, 0)]

            hop.refuse = {}
            hop.forwarded.clear()
            again = await client.resend(Terminal.repeat(original))
            assert client.last_request["53"] == original["53"]  # the same KSN: its counter was not spent
            assert (again["39"], again["37"], again["54"], client.last_response_mac_ok) == (
                "00", "000000000002", balances_de54(80_000, 1_500), True)
            assert hop.commands() == PIN_CHECKS[pin_verify][2]
        assert card_accounts(db, pan) == (80_000, 1_500)
        assert verify(db).ok


async def test_an_hsm_without_gq_is_asked_gw_g0_ec_from_then_on(tmp_path):
    """An HSM that answers GQ "command disabled" (68: not enabled or not licensed there,
    docs/hsm.md §4) is not a reason to refuse PINs: that purchase is checked the two-command
    way (GW11, then G0 and EC) and approved, one line says the switch changed its method, and
    the next PIN purchase goes straight to GW11 without asking GQ again."""
    async with switch_behind_hop(tmp_path / "var", tid=TID, pin=PIN, pin_verify="gq") as setup:
        env, hop, pan, term, security = setup.env, setup.hop, setup.pan, setup.term, setup.security
        db = env.core.db_path
        async with TerminalClient("127.0.0.1", env.port, env.dialect, security=security) as client:
            assert (await client.request(term.sign_on()))["39"] == "00"
            hop.forwarded.clear()
            hop.refuse = {"GQ": "68"}
            with structlog.testing.capture_logs() as events:
                first = await client.request(term.purchase(pan, 20_000), pin=PIN, pan=pan)
            assert (first["39"], first["37"], client.last_response_mac_ok) == ("00", "000000000002", True)
            # the response MAC was asked beside the GQ, for the PIN assumed right, which G0 and EC confirmed
            assert (hop.refused, hop.commands()) == (["GQ"], ["GW42", "GW11", "G0", "EC"])
            assert [(e["log_level"], e["pin_verify"]) for e in logged(events, event="hsm_gq_disabled")] == [
                ("warning", "g0-ec")]
            hop.forwarded.clear()
            second = await client.request(term.purchase(pan, 10_000), pin=PIN, pan=pan)
            assert (second["39"], second["37"]) == ("00", "000000000003")
            assert (hop.refused, hop.commands()) == (["GQ"], ["GW11", "G0", "EC", "GW42"])
        assert card_accounts(db, pan) == (71_500, 750)  # the second spent the first's 1,500 cashback first
        assert verify(db).ok


# ---------------------------------------------------------------------------- c: dialect refused at start

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


THREE_DE39 = ("dialect three: DE39 cannot carry the 0110 response (DE39 = '00'): "
              "Field data is 2 bytes, expecting 3")


def config_with_three(tmp_path: Path) -> Path:
    """A copy of the config dir with dialects/three.toml: the default dialect but DE39 fixed `an 3`."""
    config = tmp_path / "config"
    shutil.copytree(default_config_dir(), config)
    dialects = config / "dialects"
    dialect_variant(dialects / "default.toml", dialects / "three.toml", "39", max_len=3)
    return config


def test_a_dialect_whose_de39_cannot_carry_a_response_is_refused_by_check_responses(tmp_path):
    config = config_with_three(tmp_path)
    with pytest.raises(DialectError) as refused:
        check_responses(load_dialect("three", directory=config / "dialects"))
    assert str(refused.value) == THREE_DE39
    for shipped in ("default", "bcd-tpdu"):  # the dialects we ship carry every response
        assert check_responses(load_dialect(shipped)) is None


def test_eum_switch_refuses_to_start_with_a_dialect_that_cannot_carry_every_response(tmp_path):
    """`eum switch --dialect three` exits 2 with one stderr line naming DE39 (the command's
    `eum: ` prefix for a refused configuration, then DialectError's one line) before it creates
    anything: no data dir, ledger, log or lock. The old switch started and listened: a terminal learnt of the bad dialect
    only when its response could not be sent."""
    config = config_with_three(tmp_path)
    data_dir, port = tmp_path / "var", free_port()
    env = {**os.environ, "EUM_CONFIG_DIR": str(config)}
    proc = subprocess.Popen([*EUM, "switch", "--dialect", "three", "--listen", f"127.0.0.1:{port}",
                             "--data-dir", str(data_dir), "--clock-start", LAUNCH.isoformat()],
                            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=COMMAND_TIMEOUT_S)
        pytest.fail(f"eum switch --dialect three was still running after {COMMAND_TIMEOUT_S} s: it did not refuse")
    assert proc.returncode == 2, (proc.returncode, err)
    assert err.splitlines() == [f"eum: {THREE_DE39}"]
    # refused before anything was made: no data dir, so no ledger, no log and no lock
    assert not data_dir.exists()


# ---------------------------------------------------------------------------- d: a response that cannot be encoded

@pytest.fixture
async def narrow_de54_env(tmp_path: Path) -> AsyncIterator[SwitchEnv]:
    """A switch whose dialect's DE54 holds at most 39 characters (balances take 40), started
    with check_dialect=False, and the usual population (tests/conftest.py provision)."""
    dialects = tmp_path / "dialects"
    dialects.mkdir()
    dialect_variant(default_config_dir() / "dialects" / "default.toml", dialects / "narrow54.toml", "54", max_len=39)
    with pytest.raises(DialectError, match=r"^dialect narrow54: DE54 cannot carry the 0110 response"):
        check_responses(load_dialect("narrow54", directory=dialects))  # what the start-up check would say
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH), dialect="narrow54", dialect_dir=dialects,
                                check_dialect=False) as env:
        await provision(env)
        yield env


async def test_an_answer_that_cannot_be_encoded_is_96_and_nothing_of_it_is_posted_or_stored(narrow_de54_env):
    """An approval would carry DE54 (40 characters) that the dialect cannot encode: the purchase
    and the balance inquiry are answered 96 — which carries no DE54, so it encodes — and nothing
    is posted or stored; the card's balances, in the ledger and in the hot state, are unchanged.
    A decline carries no DE54 either: it is answered and stored as usual. The old engine encoded
    after the commit: the purchase was posted, and its terminal got a 96."""
    env = narrow_de54_env
    db, pan = env.core.db_path, env.cards["namdong"]["pan"]
    client, term = await env.signed_on(TID, "NAMDONG01")
    sale, inquiry = term.purchase(pan, 20_000), term.balance(pan)
    with structlog.testing.capture_logs() as events:
        answers = [await client.request(sale), await client.request(inquiry)]
    assert [without(a) for a in answers] == [declined(sale, "96"), declined(inquiry, "96")]
    cannot = "response cannot be encoded: Field data is 40 bytes, larger than maximum 39: field 54"
    assert [(e["stan"], e["rc"], e.get("note")) for e in logged(events, event="message")] == [
        (sale["11"], "96", cannot), (inquiry["11"], "96", cannot)]
    assert postings(db, "purchase") == []
    assert [p["id"] for p in postings(db)] == [1, 2]  # the two charges of provision()
    assert query(db, "SELECT COUNT(*) FROM messages") == [(0,)]
    assert card_accounts(db, pan) == (100_000, 0)
    card = env.core.state.cards[pan]
    assert (card.cash, card.cashback) == (100_000, 0)
    assert query(db, "SELECT COUNT(*) FROM outbox WHERE type IN ('purchase', 'cashback.credited')") == [(0,)]

    # a decline has no DE54: answered 51 and stored, posting nothing
    too_much = term.purchase(pan, 150_000)
    assert without(await client.request(too_much)) == declined(too_much, "51")
    assert message_rows(db, TID, too_much["11"]) == [("0200", "51", None)]
    # the repeat of the 96 is processed afresh (nothing was stored) and is again 96
    repeat = Terminal.repeat(sale)
    assert without(await client.request(repeat)) == declined(sale, "96")
    assert message_rows(db, TID, sale["11"]) == []
    assert postings(db, "purchase") == [] and card_accounts(db, pan) == (100_000, 0)
    assert verify(db).ok
    # each decided request announced its unit to the ledger writer (a group may wait for it);
    # the two that could not be encoded withdrew theirs, the decline submitted its own
    assert env.core.writer.coming == 0
    await client.close()
