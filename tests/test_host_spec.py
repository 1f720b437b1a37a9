"""docs/host-interface.md as the switch serves it: the field dictionary of §2 (the table in
switch/wire/fields.py) and the rules of §8 (DE52 and DE53, which answers carry a MAC, KSN
counters, cardholder verification) and §9 (business date), held to the code.

The field dictionary is checked two ways. Without sockets, against parse_request: for each
message pair a few valid messages (every variant the rules name: track 2 instead of DE2, a
refund, a balance inquiry, an incremental authorization, a partial reversal) lose one field
at a time, and a field is M exactly when every message is refused 30 without it, C when
some are, O when none is. Over real TCP: every M field deleted is answered 30 with the
pair's response MTI, and each kind of answer carries exactly the echoed and set fields the
table gives it.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from conftest import LAUNCH, card_id, postings, provision, query, start_switch
from hsm_mock.config import HsmConfig as ServiceConfig
from hsm_mock.service import HsmServer
from switch.authorize.hsm_client import HsmConfig
from switch.clock import FixedClock
from switch.domain import KST
from switch.wire.codec import encode_fields, parse_request
from switch.wire.fields import ELEMENTS, PAIR_BY_REQUEST, PAIRS, SECURITY_FIELDS, fields_used, groups
from switch.wire.messages import ECHO_FIELDS, RESPONSE_MTI, FieldError, Rc
from terminal_sim.client import TerminalClient
from terminal_sim.security import TakSecurity, TerminalSecurity
from terminal_sim.terminal import Terminal

PAN = "9410100000000011"  # the first card conftest's provision issues (Namdong program)
EXPIRY = "2412"
PIN = "1234"


def _track2(fields: dict[str, str]) -> dict[str, str]:
    """The same message with the card read from track 2 (DE35) instead of DE2 and DE14."""
    out = {k: v for k, v in fields.items() if k not in ("2", "14")}
    out["35"] = f"{fields['2']}={fields.get('14', EXPIRY)}1011234567890"
    return out


def samples(term: Terminal) -> dict[str, list[dict[str, str]]]:
    """Valid requests per request MTI, covering every variant the rules of §2 name."""
    purchase = term.purchase(PAN, 20_000, expiry=EXPIRY)
    preauth = term.preauth(PAN, 30_000, expiry=EXPIRY)
    balance_0100 = {**term.balance(PAN, expiry=EXPIRY), "t": "0100"}
    out = {
        "0800": [term.sign_on()],
        "0200": [purchase, term.refund(PAN, 5_000, "000000000002", expiry=EXPIRY), term.balance(PAN, expiry=EXPIRY),
                 _track2(purchase)],
        "0100": [preauth, term.preauth(PAN, 5_000, rrn="000000000003", expiry=EXPIRY), balance_0100,
                 _track2(preauth)],
        "0220": [term.completion(preauth, "000000000003", 25_000, expiry=EXPIRY)],
        "0400": [term.reversal(purchase), term.reversal(purchase, replacement_amount=12_000)],
    }
    out["0220"].append(_track2(out["0220"][0]))
    out["0400"].append(_track2(out["0400"][0]))
    out["0120"] = [{**f, "t": "0120"} for f in out["0100"]]
    out["0420"] = [{**f, "t": "0420"} for f in out["0400"]]
    return out


def _refused_without(fields: dict[str, str], no: str) -> bool:
    """Whether parse_request refuses the message without field `no` as a format error (30)."""
    try:
        parse_request({k: v for k, v in fields.items() if k != no})
    except FieldError as exc:
        assert exc.rc is Rc.FORMAT_ERROR, f"DE{no} deleted: {exc.rc} for DE{exc.field}, not 30"
        return True
    return False


def derived_codes(messages: list[dict[str, str]]) -> dict[str, str]:
    """M, C or O per field, from what parse_request refuses (the security fields are the
    profile's to require, not the message's: tested over TCP below)."""
    codes = {}
    for no in sorted({k for m in messages for k in m if k.isdigit()} - set(SECURITY_FIELDS), key=int):
        refused = [_refused_without(m, no) for m in messages]
        codes[no] = "M" if all(refused) else "C" if any(refused) else "O"
    return codes


# ---------------------------------------------------------------------------- the table itself

def test_every_sample_is_a_valid_request_of_its_pair():
    for mti, messages in samples(Terminal("T0000001", "NAMDONG01")).items():
        for fields in messages:
            assert parse_request(fields).mti == mti


@pytest.mark.parametrize("request_mti", [pair.request for pair in PAIRS])
def test_the_request_codes_are_what_parse_request_requires(request_mti):
    pair = PAIR_BY_REQUEST[request_mti]
    derived = derived_codes(samples(Terminal("T0000001", "NAMDONG01"))[request_mti])
    stated = {no: use.code for no, use in pair.request_uses.items() if no not in SECURITY_FIELDS}
    assert derived == stated


def test_the_dictionary_names_every_field_a_pair_uses_and_its_type_matches_the_dialect():
    from switch.wire.codec import load_dialect

    spec = load_dialect("default").spec
    used = fields_used()
    assert set(used) == set(ELEMENTS)  # no element without a message, no message field without an element
    assert {no: ELEMENTS[no].kind == "b" for no in used} == {no: spec[no]["data_enc"] == "b" for no in used}
    for pair in PAIRS:
        assert RESPONSE_MTI[pair.request] == pair.response
        assert set(pair.response_uses()) >= set(ECHO_FIELDS[pair.response]) | {"39"}
        assert {use.code for use in pair.request_uses.values()} <= {"M", "C", "O"}
        assert {use.code for use in pair.response_uses().values()} <= {"E", "S"}
    assert [[p.request for p in g] for g in groups()] == [["0800"], ["0100", "0120"], ["0200"], ["0220"],
                                                          ["0400", "0420"]]


# ---------------------------------------------------------------------------- over TCP

async def test_every_mandatory_field_deleted_is_answered_30_with_the_pairs_response_mti(switch_env):
    env = switch_env  # tests/conftest.py: two merchants, their terminals, two cards of 100,000
    client, term = await env.signed_on()
    tried = 0
    for request_mti, messages in samples(term).items():
        pair = PAIR_BY_REQUEST[request_mti]
        for no, use in pair.request_uses.items():
            if use.code != "M":
                continue
            for fields in messages:
                answer = await client.request({k: v for k, v in fields.items() if k != no})
                assert (answer["t"], answer["39"]) == (pair.response, "30"), f"{request_mti} without DE{no}"
                tried += 1
    # M fields × messages: 0800 4 × 1; 0100 and 0120 6 × 4 each; 0200 6 × 4; 0220 9 × 2; 0400 and 0420 8 × 3 each
    assert tried == 4 + 2 * 24 + 24 + 18 + 2 * 24
    assert [p["kind"] for p in postings(env.core.db_path)] == ["charge", "charge"]  # provision's; nothing else
    await client.close()


def expected_keys(request: dict[str, str], response_mti: str, sets: set[str]) -> set[str]:
    """The fields an answer carries: what the pair echoes of the request, what the switch set,
    the MTI and bitmaps (the secondary one when a field above 64 is present)."""
    keys = {"t", "p", *(no for no in ECHO_FIELDS[response_mti] if no in request), *sets}
    if any(int(k) > 64 for k in keys if k.isdigit()):
        keys.add("1")
    return keys


async def exchange(client, fields: dict[str, str], sets: set[str], rc: str = "00") -> dict[str, str]:
    """Send `fields`; the answer must carry code `rc`, echo the request's values exactly, set
    `sets` (each a field the table says the switch sets in that response) and nothing else."""
    pair = PAIR_BY_REQUEST[fields["t"]]
    assert sets <= {no for no, use in pair.response_uses().items() if use.code == "S"}
    answer = await client.request(fields)
    assert (answer["t"], answer["39"]) == (pair.response, rc)
    assert set(answer) == expected_keys(fields, pair.response, sets)
    assert {no: answer[no] for no in ECHO_FIELDS[pair.response] if no in fields} == \
        {no: fields[no] for no in ECHO_FIELDS[pair.response] if no in fields}
    return answer


async def test_each_answer_echoes_and_sets_exactly_the_fields_of_the_dictionary(switch_env):
    env = switch_env
    assert env.cards["namdong"]["pan"] == PAN
    db = env.core.db_path
    client, term = await env.signed_on()
    approved = {"37", "38", "39", "54"}
    expiry = env.cards["namdong"]["expiry"]
    await exchange(client, term.echo(), {"39"})
    purchase = term.purchase(PAN, 20_000, expiry=expiry)
    sale = await exchange(client, purchase, approved)
    assert sale["37"] == f"{postings(db, 'purchase')[0]['id']:012d}" and sale["38"] == sale["37"][-6:]
    await exchange(client, term.balance(PAN, expiry=expiry), {"39", "54"})
    refund = await exchange(client, term.refund(PAN, 5_000, sale["37"], expiry=expiry), approved)
    assert refund["37"] == f"{postings(db, 'refund')[0]['id']:012d}" != sale["37"]
    await exchange(client, term.purchase(PAN, 900_000, expiry=expiry), {"39"}, rc="51")
    await exchange(client, term.reversal(purchase, replacement_amount=12_000), {"39", "54"})
    await exchange(client, term.reversal(term.purchase(PAN, 1_000), advice=True), {"39"})  # original unknown

    preauth = term.preauth(PAN, 30_000, expiry=expiry)
    hold = await exchange(client, preauth, approved)
    increment = await exchange(client, term.preauth(PAN, 5_000, rrn=hold["37"], expiry=expiry), approved)
    assert increment["37"] == hold["37"] and increment["38"] != hold["37"][-6:]
    holds = postings(db, "hold")
    assert (hold["38"], increment["38"]) == tuple(f"{h['id'] % 1_000_000:06d}" for h in holds)
    await exchange(client, {**term.balance(PAN, expiry=expiry), "t": "0100"}, {"39", "54"})
    advice = await exchange(client, term.preauth(PAN, 1_000, advice=True, expiry=expiry), approved)
    assert advice["37"] == advice["38"].rjust(12, "0")
    done = await exchange(client, term.completion(preauth, hold["37"], 30_000, expiry=expiry), approved)
    assert done["37"] == f"{postings(db, 'purchase')[-1]['id']:012d}" != hold["37"]
    await exchange(client, term.completion(preauth, hold["37"], 30_000, expiry=expiry), {"39"}, rc="25")
    declined = term.purchase(PAN, 900_000, expiry=expiry)
    await exchange(client, declined, {"39"}, rc="51")
    await exchange(client, term.reversal(declined), {"39"})  # the original stored no posting: no balances
    await client.close()


# ---------------------------------------------------------------------------- §8, secured terminals

async def _secured(tmp_path, profile: str, *, clock: FixedClock | None = None):
    hsm = HsmServer(ServiceConfig(port=0))
    await hsm.start()
    cfg = HsmConfig(endpoints=(("127.0.0.1", hsm.port),), call_timeout_ms=300, health_interval_s=0.1)
    ctx = start_switch(tmp_path / "var", clock=clock or FixedClock(LAUNCH), hsm=cfg)
    env = await ctx.__aenter__()
    await env.op("merchant-add", mid="NAMDONG01", name="Namdong Cafe", district="namdong", annual_sales=250_000_000)
    provisioned = await env.op("terminal-add", tid="T0000001", mid="NAMDONG01", security=profile, keys="test")
    card = await env.op("card-issue", program="namdong", pin=PIN)
    await env.op("card-charge", pan=card["pan"], amount=100_000)
    security = (TakSecurity.for_test_keys() if profile == "mac"
                else TerminalSecurity.for_test_keys(profile, provisioned["ksn"]))
    client = await TerminalClient("127.0.0.1", env.port, env.dialect, security=security).connect()

    async def close() -> None:
        await client.close()
        await ctx.__aexit__(None, None, None)
        await hsm.stop()
    return env, client, security, card["pan"], close


async def send_signed(client, security, fields: dict[str, str]) -> dict[str, str]:
    """`fields` as given (already secured, perhaps altered), MAC'd under their DE53."""
    payload = security.sign(encode_fields(fields, client.dialect), ksn=fields.get("53"))
    await client.send_raw(client._frame(payload))
    return await client.receive()


def carries_mac(answer: dict[str, str]) -> bool:
    return "64" in answer or "128" in answer


def pin_tries(env, pan: str) -> tuple[int, int]:
    (row,) = query(env.core.db_path, "SELECT pin_tries, pin_blocked FROM cards WHERE id = ?",
                   card_id(env.core.db_path, pan))
    return tuple(row)


async def test_which_answers_carry_a_mac(tmp_path):
    env, client, security, pan, close = await _secured(tmp_path, "dukpt-tdes")
    try:
        term = Terminal("T0000001", "NAMDONG01")
        early = await client.request(term.purchase(pan, 1_000), pin=PIN, pan=pan)
        assert (early["39"], carries_mac(early)) == ("58", False)  # not signed on: before the MAC check
        signed = await client.request(term.sign_on())
        assert (signed["t"], signed["39"], carries_mac(signed)) == ("0810", "00", False)
        purchase = term.purchase(pan, 1_000)
        sale = await client.request(purchase, pin=PIN, pan=pan)
        assert (sale["39"], "64" in sale, client.last_response_mac_ok) == ("00", True, True)
        reversal = await client.request(term.reversal(client.last_request))
        assert (reversal["t"], reversal["39"], "128" in reversal, client.last_response_mac_ok) == \
            ("0410", "00", True, True)  # a secondary bitmap (DE90): the MAC is DE128

        lower, _ = client.secure(term.purchase(pan, 1_000))
        assert lower["53"] != lower["53"].lower()  # a TDES KSN has letters (FFFF…)
        answer = await send_signed(client, security, {**lower, "53": lower["53"].lower()})
        assert (answer["39"], carries_mac(answer)) == ("30", False)

        reused = {**term.purchase(pan, 1_000), "53": lower["53"], "64": "0" * 16}  # another message, same KSN
        first = await send_signed(client, security, {**lower, "53": lower["53"]})
        assert first["39"] == "00"
        answer = await send_signed(client, security, reused)
        assert (answer["39"], carries_mac(answer)) == ("63", True)  # a counter used before: MAC'd, nothing stored
        assert security.verify_response(client.last_response_payload, ksn=lower["53"])

        fields, payload = client.secure(term.purchase(pan, 1_000))
        flipped = payload[:-9] + bytes([payload[-9] ^ 0x01]) + payload[-8:]
        await client.send_raw(client._frame(flipped))
        answer = await client.receive()
        assert (answer["39"], carries_mac(answer)) == ("63", False)  # a MAC that does not verify
        assert len(postings(env.core.db_path, "purchase")) == 2
    finally:
        await close()


@pytest.mark.parametrize("profile, size, rc", [("dukpt-tdes", 4, "63"), ("dukpt-tdes", 16, "63"),
                                               ("dukpt-aes", 8, "55")])
async def test_a_pin_block_of_another_length_is_refused_by_the_hsm_without_counting(tmp_path, profile, size, rc):
    env, client, security, pan, close = await _secured(tmp_path, profile)
    try:
        term = Terminal("T0000001", "NAMDONG01")
        assert (await client.request(term.sign_on()))["39"] == "00"
        fields, _ = client.secure(term.purchase(pan, 1_000), pin=PIN, pan=pan)
        block = fields["52"] * 2
        answer = await send_signed(client, security, {**fields, "52": block[: 2 * size]})
        assert answer["39"] == rc
        assert pin_tries(env, pan) == (0, 0)
        assert postings(env.core.db_path, "purchase") == []
    finally:
        await close()


async def test_a_mac_terminal_sending_a_ksn_is_answered_30(tmp_path):
    env, client, security, pan, close = await _secured(tmp_path, "mac")
    try:
        term = Terminal("T0000001", "NAMDONG01")
        assert (await client.request(term.sign_on()))["39"] == "00"
        fields, _ = client.secure(term.purchase(pan, 1_000))
        answer = await send_signed(client, security, {**fields, "53": "FFFF9876540000200001"})
        assert (answer["39"], carries_mac(answer)) == ("30", False)
    finally:
        await close()


async def test_a_card_whose_pin_is_blocked_refuses_every_pin_but_pays_without_one(tmp_path):
    env, client, security, pan, close = await _secured(tmp_path, "dukpt-aes")
    try:
        term = Terminal("T0000001", "NAMDONG01")
        assert (await client.request(term.sign_on()))["39"] == "00"
        codes = [(await client.request(term.purchase(pan, 1_000), pin=pin, pan=pan))["39"]
                 for pin in ("0000", "1111", "2222")]
        assert codes == ["55", "55", "75"] and pin_tries(env, pan) == (3, 1)
        with_pin = [(await client.request(fields, pin=PIN, pan=pan))["39"]
                    for fields in (term.purchase(pan, 1_000), term.balance(pan), term.preauth(pan, 1_000))]
        assert with_pin == ["75", "75", "75"]  # the right PIN too: PINs are blocked
        without = [(await client.request(fields))["39"] for fields in (term.purchase(pan, 1_000),
                                                                         term.preauth(pan, 1_000))]
        assert without == ["00", "00"]  # the issuer's rule (§8): the block is the PIN's, not the card's
        assert pin_tries(env, pan) == (3, 1)
        assert [p["amount"] for p in postings(env.core.db_path, "purchase")] == [1_000]
    finally:
        await close()


# ---------------------------------------------------------------------------- §9, business date

async def test_a_reversal_after_midnight_counts_on_its_own_day_and_gives_back_the_purchases_day(tmp_path):
    clock = FixedClock(datetime(2019, 7, 20, 23, 59, 30, tzinfo=KST))
    async with start_switch(tmp_path / "var", clock=clock) as env:
        await provision(env)
        db = env.core.db_path
        client, term = await env.signed_on()
        purchase = term.purchase(PAN, 20_000)
        assert (await client.request(purchase))["39"] == "00"
        clock.advance(minutes=1)  # 2019-07-21 00:00:30 KST
        assert (await client.request(term.reversal(purchase)))["39"] == "00"
        at = [(kind, when[:10]) for kind, when in query(db, "SELECT kind, at FROM postings ORDER BY id")]
        assert at[-2:] == [("purchase", "2019-07-20"), ("reversal", "2019-07-21")]
        days = query(db, "SELECT day, spent FROM card_days WHERE card_id = ? ORDER BY day", card_id(db, PAN))
        assert [tuple(row) for row in days] == [("2019-07-20", 0)]  # the purchase's day, given back
        cutover = await client.request({**term.purchase(PAN, 1_000), "t": "0500"})
        assert (cutover["t"], cutover["39"]) == ("0510", "12")  # no batch close: nothing to do
        await client.close()
