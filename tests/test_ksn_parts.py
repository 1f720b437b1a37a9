"""The KSN's counter and device as the engine reads them (switch/authorize/security.py
`ksn_counter`, `same_device`: integers, no formatting) agree with `ksn_parts`, the reference
that formats the device part, on every KSN: TDES (20 hex digits, a 21-bit counter) and AES
(24 hex digits, a 32-bit counter), including counters at their limits and devices that differ
in one bit next to the counter."""

from __future__ import annotations

from hypothesis import given, strategies as st

from switch.authorize.security import TDES_COUNTER_MASK, ksn_counter, ksn_parts, same_device

HEX = "0123456789ABCDEF"
tdes = st.text(HEX, min_size=20, max_size=20)
aes = st.text(HEX, min_size=24, max_size=24)


@given(tdes, tdes)
def test_tdes_counter_and_device_agree_with_ksn_parts(a, b):
    assert ksn_counter("dukpt-tdes", a) == ksn_parts("dukpt-tdes", a)[1]
    assert same_device("dukpt-tdes", a, b) == (ksn_parts("dukpt-tdes", a)[0] == ksn_parts("dukpt-tdes", b)[0])


@given(aes, aes)
def test_aes_counter_and_device_agree_with_ksn_parts(a, b):
    assert ksn_counter("dukpt-aes", a) == ksn_parts("dukpt-aes", a)[1]
    assert same_device("dukpt-aes", a, b) == (ksn_parts("dukpt-aes", a)[0] == ksn_parts("dukpt-aes", b)[0])


def test_the_edges_of_a_tdes_ksn():
    base = 0xFFFF9876543210E00000
    first, last = f"{base:020X}", f"{base | TDES_COUNTER_MASK:020X}"
    neighbour = f"{base ^ (1 << 21):020X}"  # the device's lowest bit, just above the counter
    assert (ksn_counter("dukpt-tdes", first), ksn_counter("dukpt-tdes", last)) == (0, 2_097_151)
    assert same_device("dukpt-tdes", first, last) and not same_device("dukpt-tdes", first, neighbour)


def test_the_edges_of_an_aes_ksn():
    device = "0123456789ABCDEF"
    assert ksn_counter("dukpt-aes", device + "FFFFFFFF") == 4_294_967_295
    assert same_device("dukpt-aes", device + "00000000", device + "FFFFFFFF")
    assert not same_device("dukpt-aes", device + "00000001", "0123456789ABCDEE00000001")
