"""The Luhn check digit (switch/domain.py, `luhn_digit`, `luhn_ok`), computed on native ints
when compiled (docs/performance.md, "The Luhn digit in native ints (kept)"), against the
textbook algorithm and ISO/IEC 7812-1's example."""

from __future__ import annotations

import random

import pytest

from switch.domain import luhn_digit, luhn_ok


def textbook(body: str) -> str:
    """Double every second digit from the right, starting with the rightmost; sum the digits."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d // 10 + d % 10
    return str((10 - total % 10) % 10)


def test_the_standard_example_and_the_switchs_bins():
    assert luhn_digit("7992739871") == "3"  # ISO/IEC 7812-1's worked example: 79927398713
    assert luhn_ok("79927398713") and not luhn_ok("79927398714")
    assert luhn_digit("941012340000001") == textbook("941012340000001")
    assert luhn_digit("") == "0"


def test_random_bodies_agree_with_the_textbook():
    rng = random.Random(7812)
    for _ in range(5_000):
        body = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 19)))
        assert luhn_digit(body) == textbook(body), body


def test_another_scripts_digits_count_as_before_and_anything_else_is_refused():
    # Arabic-Indic digits: str.isdigit accepts them and int() reads them, as it did
    assert luhn_digit("٧٩٩٢٧٣٩٨٧١") == "3"
    assert luhn_ok("٧٩٩٢٧٣٩٨٧١3")
    assert not luhn_ok("7992739871x") and not luhn_ok("")
    with pytest.raises(ValueError):
        luhn_digit("79927a9871")
