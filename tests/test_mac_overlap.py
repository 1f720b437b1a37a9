"""The request's MAC check and the response's MAC in one HSM round trip, end to end.

A secured request is decided while the HSM checks its MAC (switch/authorize/engine.py,
`_decided_while_checked`; docs/host-interface.md, "The MAC check and the response MAC in one
round trip"): the check (GW mode 11; with a TDES-DUKPT PIN, the GQ that checks both, the PIN
assumed right meanwhile) and the response MAC (GW mode 42) leave in one write, and the commit
waits for the check's verdict. The rules guarded:
a request whose MAC is refused is answered as before the overlap (63 "MAC does not verify",
or 91 when the HSM could not check it), without a MAC, with nothing posted or stored and its
KSN counter not spent, even though its response MAC was asked meanwhile; a repeat of an
approved purchase whose MAC is refused gets that refusal, not the replay; and a PIN the GQ
finds wrong is decided again on that verdict (55) and MAC'd again.

Real components: a real hsm_mock HsmServer behind tests/hsm_hop.py (which records the
order in which commands went and answers came back, and answers a refused command itself),
the switch's real objects with real TCP and a real ledger, terminal_sim's DUKPT terminal.
"""

from __future__ import annotations

import asyncio

import pytest
import structlog

from switch.authorize.hsm_client import HsmUnavailable
from switch.ledger.audit import verify
from terminal_sim.client import TerminalClient
from terminal_sim.terminal import Terminal

from conftest import card_accounts, postings, query
from hsm_hop import switch_behind_hop
from test_core_defects import PIN, TID, balances_de54, declined, message_rows, without
from waiting import logged

pytestmark = pytest.mark.both_stores  # SQLite and PostgreSQL (tests/conftest.py)


def exchanges(trace: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The hop's trace without the health checks (NC)."""
    return [t for t in trace if t[1] != "NC"]


async def test_a_purchase_without_a_pin_sends_its_mac_check_and_its_response_mac_before_either_is_answered(tmp_path):
    async with switch_behind_hop(tmp_path / "var", tid=TID) as setup:
        env, hop, pan, term, security = setup.env, setup.hop, setup.pan, setup.term, setup.security
        async with TerminalClient("127.0.0.1", env.port, env.dialect, security=security) as client:
            assert (await client.request(term.sign_on()))["39"] == "00"
            hop.trace.clear()
            answer = await client.request(term.purchase(pan, 20_000))
            assert (answer["39"], answer["37"], answer["54"], client.last_response_mac_ok) == (
                "00", "000000000002", balances_de54(80_000, 1_500), True)
            # one round trip: both commands went before the first answer came back
            assert exchanges(hop.trace) == [("sent", "GW11"), ("sent", "GW42"),
                                            ("answered", "GW11"), ("answered", "GW42")]
        assert card_accounts(env.core.db_path, pan) == (80_000, 1_500)
        assert verify(env.core.db_path).ok


@pytest.mark.parametrize("code, rc, note", [
    ("01", "63", "MAC does not verify"),  # GW mode 11's "verification failure" (docs/hsm.md §4)
    ("67", "91", "MAC: HSM error 67"),    # an error of the HSM's own: it could not check the MAC
])
async def test_a_refused_mac_check_overrides_the_decision_made_meanwhile_and_stores_nothing(tmp_path, code, rc, note):
    async with switch_behind_hop(tmp_path / "var", tid=TID) as setup:
        env, hop, pan, term, security = setup.env, setup.hop, setup.pan, setup.term, setup.security
        db = env.core.db_path
        async with TerminalClient("127.0.0.1", env.port, env.dialect, security=security) as client:
            assert (await client.request(term.sign_on()))["39"] == "00"
            hop.forwarded.clear()
            hop.refuse = {"GW11": code}
            with structlog.testing.capture_logs() as events:
                answer = await client.request(term.purchase(pan, 20_000))
            original = client.last_request
            # the response MAC was asked beside the check, and is not what went out
            assert (hop.refused, hop.commands()) == (["GW11"], ["GW42"])
            assert "64" not in answer and client.last_response_mac_ok is None
            assert without(answer) == declined(original, rc)
            assert [(e["rc"], e.get("note")) for e in logged(events, event="message")] == [(rc, note)]
            assert message_rows(db, TID, original["11"]) == []
            assert postings(db, "purchase") == []
            assert query(db, "SELECT ksn_max FROM terminals WHERE tid=?", TID) == [(0,)]
            assert card_accounts(db, pan) == (100_000, 0)

            hop.refuse = {}
            again = await client.resend(Terminal.repeat(original))
            assert client.last_request["53"] == original["53"]  # the same KSN: its counter was not spent
            # the decision made while the MAC was checked gave posting id 2 back (no later id was
            # taken meanwhile: docs/host-interface.md, "DE37 and DE38")
            assert (again["39"], again["37"], again["54"], client.last_response_mac_ok) == (
                "00", "000000000002", balances_de54(80_000, 1_500), True)
        assert [(p["stan"], p["amount"]) for p in postings(db, "purchase")] == [(original["11"], 20_000)]
        assert verify(db).ok


async def test_a_repeat_whose_mac_is_refused_gets_the_refusal_not_the_replay(tmp_path):
    async with switch_behind_hop(tmp_path / "var", tid=TID) as setup:
        env, hop, pan, term, security = setup.env, setup.hop, setup.pan, setup.term, setup.security
        db = env.core.db_path
        async with TerminalClient("127.0.0.1", env.port, env.dialect, security=security) as client:
            assert (await client.request(term.sign_on()))["39"] == "00"
            first = await client.request(term.purchase(pan, 20_000))
            original = client.last_request
            assert (first["39"], first["37"]) == ("00", "000000000002")
            stored = message_rows(db, TID, original["11"])
            assert [row[1:] for row in stored] == [("00", 2)]

            hop.refuse = {"GW11": "01"}
            with structlog.testing.capture_logs() as events:
                refused = await client.resend(Terminal.repeat(original))
            assert "64" not in refused and (refused["39"], refused.get("37")) == ("63", None)
            assert [(e["rc"], e.get("note"), e.get("replayed")) for e in logged(events, event="message")] == [
                ("63", "MAC does not verify", None)]

            hop.refuse = {}
            replayed = await client.resend(Terminal.repeat(original))
            assert (replayed["39"], replayed["37"], replayed["54"], client.last_response_mac_ok) == (
                "00", "000000000002", balances_de54(80_000, 1_500), True)
        assert message_rows(db, TID, original["11"]) == stored
        assert len(postings(db, "purchase")) == 1
        assert card_accounts(db, pan) == (80_000, 1_500)
        assert verify(db).ok


async def test_a_wrong_pin_the_gq_finds_is_decided_again_and_its_55_macd_again(tmp_path):
    """A PIN purchase is decided while its GQ is out, on the PIN assumed right, and its
    response MAC leaves beside the GQ. The GQ finds the PIN wrong: the approval is dropped,
    the request decided again on the HSM's verdict (55, one PIN try counted) and that answer
    MAC'd again; the approval's posting id goes back for the next purchase."""
    async with switch_behind_hop(tmp_path / "var", tid=TID, pin=PIN) as setup:
        env, hop, pan, term, security = setup.env, setup.hop, setup.pan, setup.term, setup.security
        db = env.core.db_path
        async with TerminalClient("127.0.0.1", env.port, env.dialect, security=security) as client:
            assert (await client.request(term.sign_on()))["39"] == "00"
            hop.trace.clear()
            wrong = await client.request(term.purchase(pan, 20_000), pin="9999", pan=pan)
            original = client.last_request
            assert (without(wrong, "64"), client.last_response_mac_ok) == (declined(original, "55"), True)
            assert exchanges(hop.trace) == [("sent", "GQ"), ("sent", "GW42"), ("answered", "GQ"),
                                            ("answered", "GW42"), ("sent", "GW42"), ("answered", "GW42")]
            assert message_rows(db, TID, original["11"]) == [("0200", "55", None)]
            assert query(db, "SELECT pin_tries, pin_blocked FROM cards WHERE pan=?", pan) == [(1, 0)]

            hop.trace.clear()
            right = await client.request(term.purchase(pan, 20_000), pin=PIN, pan=pan)
            assert (right["39"], right["37"], right["54"], client.last_response_mac_ok) == (
                "00", "000000000002", balances_de54(80_000, 1_500), True)
            assert exchanges(hop.trace) == [("sent", "GQ"), ("sent", "GW42"), ("answered", "GQ"),
                                            ("answered", "GW42")]
        assert query(db, "SELECT pin_tries, pin_blocked FROM cards WHERE pan=?", pan) == [(0, 0)]
        assert [(p["id"], p["amount"]) for p in postings(db, "purchase")] == [(2, 20_000)]
        assert verify(db).ok


async def test_a_check_abandoned_by_its_request_still_takes_its_verdict_and_keeps_it():
    """A request that ends before its check's verdict (a bug, a cancel: `Check.abandon`)
    leaves a task that takes the verdict anyway, so the HSM client's in-flight slot is given
    back and no reply or timeout goes unread; `result` then answers from what was kept."""
    from switch.authorize.engine import Check
    from switch.wire.messages import Rc

    loop = asyncio.get_running_loop()
    answer: asyncio.Future = loop.create_future()
    taken: list[str] = []

    async def verdict():
        try:
            return await answer
        finally:
            taken.append("taken")

    check = Check(verdict())
    check.abandon()
    await asyncio.sleep(0)
    assert taken == []  # still waiting for the HSM
    answer.set_result(((Rc.SECURITY_VIOLATION, "MAC does not verify"), None))
    for _ in range(3):
        await asyncio.sleep(0)
    assert taken == ["taken"]
    assert await check.result() == ((Rc.SECURITY_VIOLATION, "MAC does not verify"), None)

    unhandled: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    try:
        failing = Check(_raises(HsmUnavailable("no HSM answered GW")))
        failing.abandon()  # a verdict that fails is swallowed by the task nobody waits on
        for _ in range(3):
            await asyncio.sleep(0)
        import gc
        gc.collect()  # an exception never retrieved would be reported when its task is freed
    finally:
        loop.set_exception_handler(None)
    assert (unhandled, failing._result) == ([], None)


async def _raises(exc: BaseException):
    raise exc
