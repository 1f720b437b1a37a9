"""A terminal's time fields (DE7, DE12, DE13), where a message's MAC goes (DE64 or DE128), and
the scenario's draw of the next transaction's kind.

`clock_fields` formats the three time fields once a second from one instant
(terminal_sim/terminal.py); `mac_field` is one set test over the canonical field keys
(switch/wire/messages.py), shared by the switch's answerer and the simulated terminals.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from switch.authorize.answer import mac_field as answer_mac_field
from switch.domain import KST
from switch.wire.messages import mac_field
from terminal_sim.security import mac_field as terminal_mac_field
from terminal_sim.terminal import Terminal, clock_fields

PAN = "9410100000000011"


def test_clock_fields_are_utc_for_de7_and_korea_for_de12_de13():
    # 23:59:59.999999 UTC on Nov 29 is 08:59:59 on Nov 30 in Korea (UTC+9, no daylight saving)
    t = datetime(2026, 11, 29, 23, 59, 59, 999_999, tzinfo=timezone.utc)
    assert clock_fields(t) == ("1129235959", "085959", "1130")


def test_clock_fields_take_any_zone_for_the_same_instant():
    utc = datetime(2026, 12, 31, 15, 0, 0, tzinfo=timezone.utc)  # 00:00:00 Jan 1 in Korea
    assert clock_fields(utc) == ("1231150000", "000000", "0101")
    assert clock_fields(utc.astimezone(KST)) == ("1231150000", "000000", "0101")


def test_clock_fields_follow_the_clock_from_one_second_to_the_next():
    t = datetime(2026, 11, 30, 1, 2, 3, 100_000, tzinfo=timezone.utc)
    assert clock_fields(t) == ("1130010203", "100203", "1130")
    assert clock_fields(t + timedelta(microseconds=800_000)) == ("1130010203", "100203", "1130")  # same second
    assert clock_fields(t + timedelta(seconds=1)) == ("1130010204", "100204", "1130")
    assert clock_fields(t - timedelta(days=1)) == ("1129010203", "100203", "1129")  # back again: not stale


def test_a_purchase_takes_de7_de12_de13_from_one_instant():
    t = datetime(2026, 11, 29, 14, 59, 59, 999_999, tzinfo=timezone.utc)  # 23:59:59 in Korea
    term = Terminal("T0000001", "M1", stan=41, now=lambda: t)
    fields = term.purchase(PAN, 12_000, expiry="3012")
    assert fields == {"t": "0200", "2": PAN, "3": "000000", "4": "000000012000", "7": "1129145959", "11": "000042",
                      "41": "T0000001", "12": "235959", "13": "1129", "22": "051", "42": "M1             ",
                      "49": "410", "14": "3012"}
    assert list(fields)[:9] == ["t", "2", "3", "4", "7", "11", "41", "12", "13"]  # the order it always had
    assert term.stan == 42


def test_network_and_reversal_messages_carry_de7_and_the_next_stan():
    t = datetime(2026, 11, 30, 0, 0, 1, tzinfo=timezone.utc)
    term = Terminal("T0000002", "M2", stan=999_999, now=lambda: t)
    assert term.sign_on() == {"t": "0800", "7": "1130000001", "11": "000001", "41": "T0000002", "70": "001"}
    original = term.purchase(PAN, 5_000)
    reversal = term.reversal(original)
    assert (reversal["7"], reversal["11"], reversal["90"]) == ("1130000001", "000003",
                                                               "0200" + "000002" + "1130000001" + "0" * 22)


def test_mac_field_is_de128_exactly_when_a_field_of_the_secondary_bitmap_is_present():
    assert mac_field({"t": "0200", "2": PAN, "41": "T0000001", "64": "00"}) == "64"
    assert mac_field({"t": "0400", "90": "0" * 42}) == "128"
    assert mac_field({"t": "0400", "95": "0" * 42}) == "128"
    assert mac_field({"65": ""}) == "128" and mac_field({"127": ""}) == "128"
    assert mac_field({"128": "00", "64": "00", "1": "F" * 16}) == "64"  # the MAC fields and bitmap do not count
    assert mac_field({}) == "64"


def test_one_mac_field_for_the_switch_and_the_terminals():
    assert answer_mac_field is mac_field and terminal_mac_field is mac_field


def test_the_mix_draws_what_random_choices_draws_from_the_same_state():
    import random

    from terminal_sim.scenario import KINDS, Mix

    for mix in (Mix(), Mix(0.85, 0.03, 0.09, 0.03), Mix(0, 0, 1, 0), Mix(1, 2, 3, 4), Mix(0.5, 0.5, 0, 0)):
        weights = (mix.purchase, mix.refund, mix.balance, mix.reversal)
        reference, drawn = random.Random(15), random.Random(15)
        expected = [reference.choices(KINDS, weights=weights)[0] for _ in range(5_000)]
        assert [mix.pick(drawn) for _ in range(5_000)] == expected
        assert reference.random() == drawn.random()  # one random() a draw, as choices takes
    counts = {k: 0 for k in KINDS}
    rng = random.Random(3)
    for _ in range(10_000):
        counts[Mix(0, 0, 1, 0).pick(rng)] += 1
    assert counts == {"purchase": 0, "refund": 0, "balance": 10_000, "reversal": 0}
