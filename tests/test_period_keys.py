"""The KST period keys, the zero-padded numbers of the hot path (switch/domain.py) and a
posting's time (switch/authorize/decide.py `iso`) give the text the formatting they replace
gave (docs/performance.md, "Numbers padded without a format spec", "A posting's time built
from its parts", "Dates without printf (kept)"): stored keys (card_day_moves.day, member_month_moves.month), postings.at and
the RRN and authorization code a terminal prints must not change with how they are built."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from switch.domain import KST, date_text, day_key, kst_instant, month_key, zero_padded
from switch.wire.framing import Framing


def _old_day(now: datetime) -> str:
    local = now.astimezone(KST)
    return f"{local.year:04d}-{local.month:02d}-{local.day:02d}"


def _old_month(now: datetime) -> str:
    local = now.astimezone(KST)
    return f"{local.year:04d}-{local.month:02d}"


@pytest.mark.parametrize("now", [
    datetime(2019, 7, 31, 14, 59, 59, 999_999, tzinfo=timezone.utc),   # 23:59:59.999999 KST, July
    datetime(2019, 7, 31, 15, 0, tzinfo=timezone.utc),                 # 00:00 KST, 1 August
    datetime(2025, 12, 31, 23, 30, tzinfo=KST),
    datetime(2026, 1, 1, 0, 0, tzinfo=KST),
    datetime(2024, 2, 29, 12, 0, tzinfo=timezone(timedelta(hours=-5))),
    datetime(999, 3, 4, 5, 6, tzinfo=KST),                              # a year of three digits, padded
    datetime(1, 1, 1, 9, 0, tzinfo=KST),
])
def test_the_period_keys_are_the_kst_day_and_month_as_before(now):
    assert day_key(now) == _old_day(now)
    assert month_key(now) == _old_month(now)


def test_the_last_instants_keys_are_kept_and_never_given_to_another():
    """day_key and month_key keep the last instant's keys (switch/domain.py `_last_keys`):
    asked in turn about instants on both sides of a KST day and month boundary, each in
    several objects of the same value and one same object asked twice, every answer is its
    own instant's."""
    before = datetime(2019, 7, 31, 14, 59, 59, 999_999, tzinfo=timezone.utc)
    after = before + timedelta(microseconds=1)
    asked = [before, before, after, before.replace(), after, after, after.replace(), before]
    assert [(day_key(n), month_key(n)) for n in asked] == [
        ("2019-07-31", "2019-07"), ("2019-07-31", "2019-07"), ("2019-08-01", "2019-08"), ("2019-07-31", "2019-07"),
        ("2019-08-01", "2019-08"), ("2019-08-01", "2019-08"), ("2019-08-01", "2019-08"), ("2019-07-31", "2019-07")]
    assert [month_key(n) for n in (after, before, after)] == ["2019-08", "2019-07", "2019-08"]


def test_an_instants_reading_is_its_own():
    """kst_instant: the KST datetime, the keys and the POSIX seconds of the instant asked
    about, the same object while that instant is asked again, a new one for the next."""
    now = datetime(2019, 7, 31, 15, 0, 0, 250_000, tzinfo=timezone.utc)
    reading = kst_instant(now)
    assert (reading.local, reading.day, reading.month, reading.seconds) == (
        datetime(2019, 8, 1, 0, 0, 0, 250_000, tzinfo=KST), "2019-08-01", "2019-08", 1_564_585_200.25)
    assert kst_instant(now) is reading
    later = now + timedelta(days=1)
    assert kst_instant(later) is not reading and kst_instant(later).day == "2019-08-02"


def test_date_text_is_the_dates_isoformat_on_every_day_of_four_years_and_at_the_ends():
    day = datetime(1999, 1, 1, 12, tzinfo=KST)
    days = [day + timedelta(days=n) for n in range(4 * 366)]  # 1999 to 2002, the leap day of 2000
    days += [datetime(1, 1, 1, tzinfo=KST), datetime(999, 12, 31, tzinfo=KST), datetime(9999, 12, 31, tzinfo=KST)]
    assert [date_text(d) for d in days] == [d.date().isoformat() for d in days]
    assert date_text(datetime(2000, 2, 29, tzinfo=KST)) == "2000-02-29"


def test_the_period_keys_of_two_instants_of_one_kst_day():
    assert day_key(datetime(2019, 7, 31, 15, 0, tzinfo=timezone.utc)) == "2019-08-01"
    assert day_key(datetime(2019, 7, 31, 14, 59, tzinfo=timezone.utc)) == "2019-07-31"
    assert (month_key(datetime(999, 3, 4, 5, 6, tzinfo=KST)), day_key(datetime(1, 1, 1, 9, 0, tzinfo=KST))) == (
        "0999-03", "0001-01-01")


@pytest.mark.parametrize("n, width", [(0, 12), (6400, 12), (123_456_789_012, 12), (1_234_567_890_123, 12),
                                      (42, 6), (999_999, 6), (-5, 12), (-5, 2), (7, 1), (140, 4)])
def test_zero_padded_is_the_format_spec_it_replaces(n, width):
    assert zero_padded(n, width) == f"{n:0{width}d}"


def test_the_bcd_length_header_is_the_length_in_four_digits():
    bcd = Framing(length_header="bcd2")
    assert [bcd.encode_length(n) for n in (0, 7, 146, 9999)] == [b"\x00\x00", b"\x00\x07", b"\x01\x46", b"\x99\x99"]


@pytest.mark.parametrize("now", [
    datetime(2019, 7, 31, 14, 59, 59, 999_999, tzinfo=timezone.utc),
    datetime(2019, 7, 31, 15, 0, tzinfo=timezone.utc),                 # microsecond 0: still six digits
    datetime(2025, 10, 15, 12, 0, 0, 7, tzinfo=KST),
    datetime(2024, 2, 29, 23, 59, 59, 500_000, tzinfo=timezone(timedelta(hours=-5))),
    datetime(999, 3, 4, 5, 6, 7, 8, tzinfo=KST),
])
def test_a_postings_time_is_the_kst_isoformat_with_microseconds(now):
    from switch.authorize.decide import iso

    assert iso(now) == now.astimezone(KST).isoformat(timespec="microseconds")
    assert iso(datetime(2019, 7, 31, 15, 0, tzinfo=timezone.utc)) == "2019-08-01T00:00:00.000000+09:00"
