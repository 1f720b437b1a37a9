"""The log lines' JSON (switch/ops/logs.py, `_render`): orjson's indented output joined back
into the text the stdlib's encoder gave (", " and ": "), exactly, for what log lines hold;
the stdlib itself for what orjson refuses. docs/performance.md, "The log lines rendered by
orjson (kept)"."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import uuid

from hypothesis import given, strategies as st

from switch.ops import logs
from switch.ops.logs import _render

STDLIB = json.JSONEncoder(default=str, ensure_ascii=False).encode  # the renderer before


@dataclasses.dataclass
class Point:
    x: int


class Code(str, enum.Enum):
    APPROVED = "00"


CANONICAL = {"peer": "127.0.0.1:60034", "mti": "0200", "kind": "purchase", "processing_code": "000000",
             "stan": "000002", "terminal": "T0000001", "merchant": "EUM000000000001", "pan": "941000******0781",
             "amount": 23500, "program": "incheon", "fee": 35, "cashback": 2350, "rc": "00", "rrn": "000000000002",
             "latency_us": 4677, "event": "message", "level": "info", "ts": "2026-12-01T07:14:14.583112+09:00"}


def test_the_canonical_line_is_the_text_the_stdlib_wrote():
    assert _render(CANONICAL) == (
        '{"peer": "127.0.0.1:60034", "mti": "0200", "kind": "purchase", "processing_code": "000000", '
        '"stan": "000002", "terminal": "T0000001", "merchant": "EUM000000000001", "pan": "941000******0781", '
        '"amount": 23500, "program": "incheon", "fee": 35, "cashback": 2350, "rc": "00", "rrn": "000000000002", '
        '"latency_us": 4677, "event": "message", "level": "info", "ts": "2026-12-01T07:14:14.583112+09:00"}')
    assert _render(CANONICAL) == STDLIB(CANONICAL)


def test_nesting_escapes_and_what_goes_to_default_render_as_the_stdlib_did():
    cases = [
        {},
        {"a": {"b": [1, 2, {"c": []}], "d": {}}, "e": [[[]]]},
        {"text": '남동 e음 ,\n  "quoted" \\ \x01 \u2028 \x7f'},  # a newline and indentation inside a string
        {"none": None, "true": True, "false": False, "zero": 0, "negative": -12},
        {"point": Point(1), "at": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
         "day": datetime.date(2026, 1, 2), "id": uuid.UUID(int=5), "rc": Code.APPROVED},
        {"floats": [0.1, 12.5, 1e16, 1e22, -0.0, 0.30000000000000004]},
    ]
    for event in cases:
        assert _render(event) == STDLIB(event)
    assert _render(cases[4]) == ('{"point": "Point(x=1)", "at": "2026-01-01 00:00:00+00:00", "day": "2026-01-02", '
                                 '"id": "00000000-0000-0000-0000-000000000005", "rc": "00"}')


def test_what_orjson_refuses_is_rendered_by_the_stdlib():
    assert _render({"big": 2 ** 70, "n": 1}) == '{"big": 1180591620717411303424, "n": 1}'
    assert _render({1: "int key", "s": "x"}) == '{"1": "int key", "s": "x"}'
    assert _render({"surrogate": "\ud800"}) == STDLIB({"surrogate": "\ud800"})


class Fault(enum.Enum):
    HANG = "hang"


def test_a_plain_enum_member_is_written_as_its_value():
    assert _render({"fault": Fault.HANG}) == '{"fault": "hang"}'
    assert STDLIB({"fault": Fault.HANG}) == '{"fault": "Fault.HANG"}'


def test_small_floats_and_nan_are_written_as_orjson_writes_them():
    assert _render({"v": 1.5e-7, "w": 1e-05, "x": 0.0001}) == '{"v": 1.5e-7, "w": 0.00001, "x": 0.0001}'
    assert STDLIB({"v": 1.5e-7, "w": 1e-05, "x": 0.0001}) == '{"v": 1.5e-07, "w": 1e-05, "x": 0.0001}'
    assert _render({"nan": float("nan"), "inf": float("inf")}) == '{"nan": null, "inf": null}'


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 63, 2 ** 63 - 1), st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)


@given(st.dictionaries(st.text(max_size=12), values, max_size=8))
def test_any_line_of_strings_ints_and_nesting_is_the_stdlibs_text(event):
    assert _render(event) == STDLIB(event)


def test_a_lines_timestamp_is_kst_with_six_digits_of_microseconds(monkeypatch):
    for now, text in ((1_700_000_000.5, "2023-11-15T07:13:20.500000+09:00"),
                      (1_700_000_001.0, "2023-11-15T07:13:21.000000+09:00"),
                      (1_700_000_001.0625, "2023-11-15T07:13:21.062500+09:00")):
        monkeypatch.setattr(logs.time, "time", lambda: now)
        assert logs._now() == text
