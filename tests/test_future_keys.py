"""The terminal's key registers (terminal_sim.security._KeyRegisters) against the reference
derivation from the initial key, and against the published vectors.

ANSI X9.24-1:2009 Annex A "Future Key Registers" (TDES) and the X9.24-3:2017 intermediate
derivation key registers (AES): each transaction takes its key from one register and refills
the lower ones from it. What must hold is that every key equals the host's derivation (the
walk over the counter's one-bits from the initial key, hsm_mock.dukpt, and
TerminalSecurity._derive, the terminal's reference path), for every counter a terminal uses.

Exact values, each cited (docs/hsm.md §8, "Test vectors and their sources"):
- ANSI X9.24-1:2009 Annex A, the "DUKPT 2000" table as published in GVRlib `dukpt3` (BDK
  0123456789ABCDEFFEDCBA9876543210, KSN FFFF9876543210E00000, PIN 1234, PAN 4012345678909):
  all 38 rows E00001 … F00000: PIN key, MAC-request key, encrypted PIN block, X9.19 MAC over
  "1234567890" × 4 (first 4 bytes). The same table as tests/test_hsm_crypto.py.
- ANSI X9.24-3:2017 Annex B.1 (AES BDK FEDCBA9876543210F1F1F1F1F1F1F1F1, IKID
  1234567890123456), as moov-io/dukpt pkg/aes/aes_test.go runs it: the derivation keys of
  counters 1 … 8, the AES-CMACs over "4012345678909D987" with the usage-2000 / 2001 keys,
  the PIN and MAC-generation keys of counter 1 and the PIN key of counter 2.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsm_mock import crypto, dukpt
from switch import compiled as switch_compiled
from terminal_sim import security
from terminal_sim.security import (KEY_CACHE_SIZE_MAX, KEY_REGISTERS, SecurityError, TerminalSecurity, _KeyRegisters,
                                   _next_counter)

H = bytes.fromhex
TDES_BDK = H("0123456789ABCDEFFEDCBA9876543210")
TDES_KSN0 = "FFFF9876543210E00000"
IPEK = H("6AC292FAA1315B4D858AB3A3D7D5933A")  # X9.24-1 Annex A
AES_BDK = H("FEDCBA9876543210F1F1F1F1F1F1F1F1")
AES_KSN0 = "123456789012345600000000"
AES_INITIAL_KEY = H("1273671EA26AC29AFA4D1084127652A1")  # X9.24-3:2017 B.1
ANNEX_A_PIN, ANNEX_A_PAN = "1234", "4012345678909"
ANNEX_A_MAC_DATA = b"1234567890" * 4
MAC_INPUT = b"4012345678909D987"

# KSN, PIN key, MAC-request key, EPB, MAC (X9.24-1:2009 Annex A; GVRlib dukpt3).
X9_24_1_ANNEX_A = [
    ("FFFF9876543210E00001", "042666B49184CF5C68DE9628D0397B36", "042666B4918430A368DE9628D03984C9", "1B9C1845EB993A7A", "BF3DF9F4"),
    ("FFFF9876543210E00002", "C46551CEF9FD244FAA9AD834130D3B38", "C46551CEF9FDDBB0AA9AD834130DC4C7", "10A01C8D02C69107", "1F05D23A"),
    ("FFFF9876543210E00003", "0DF3D9422ACA561A47676D07AD6BAD05", "0DF3D9422ACAA9E547676D07AD6B52FA", "18DC07B94797B466", "70D151A4"),
    ("FFFF9876543210E00004", "279C0F6AEED0BE9A2B2C733E1383AE6E", "279C0F6AEED041652B2C733E13835191", "0BC79509D5645DF7", "00B50910"),
    ("FFFF9876543210E00005", "5F8DC6D2C845C1DA508DDC048093B8C0", "5F8DC6D2C8453E25508DDC048093473F", "5BC0AF22AD87B327", "581ED2C6"),
    ("FFFF9876543210E00006", "5E415CB0BAF9F0C3D0C14B63FB62FFBC", "5E415CB0BAF90F3CD0C14B63FB620043", "A16DF70AE36158D8", "39B5EE87"),
    ("FFFF9876543210E00007", "0C8F780B7C8B492FAE84A9EB2A6CE69F", "0C8F780B7C8BB6D0AE84A9EB2A6C1960", "27711C16CB257F8E", "226C141F"),
    ("FFFF9876543210E00008", "27F66D5244FF621EAA6F6120EDEB427F", "27F66D5244FF9DE1AA6F6120EDEBBD80", "50E55547A5027551", "40412159"),
    ("FFFF9876543210E00009", "27E31064FDC565968900E2057F658E81", "27E31064FDC59A698900E2057F65717E", "536CF7F678ACFC8D", "621F9B4F"),
    ("FFFF9876543210E0000A", "6CF2500A22507C83C776CEADC1E330EB", "6CF2500A2250837CC776CEADC1E3CF14", "EDABBA23221833FE", "7B79E6A3"),
    ("FFFF9876543210E0000B", "3E8260BA04B2D6DFC01482B3819A1848", "3E8260BA04B22920C01482B3819AE7B7", "2328981C57B4BDBA", "CC92E456"),
    ("FFFF9876543210E0000C", "B716E1E11CF53D7F726CAEE75C3A62B0", "B716E1E11CF5C280726CAEE75C3A9D4F", "038D03CC926CF286", "1BA8BCA1"),
    ("FFFF9876543210E0000D", "E072EDF9534053A0B6C581C58FBF25CC", "E072EDF95340AC5FB6C581C58FBFDA33", "6C8AA97088B62C68", "A733F330"),
    ("FFFF9876543210E0000E", "A80046087F5B8FDB5AAD95E1842908B0", "A80046087F5B70245AAD95E18429F74F", "F17C9E1D72CD4950", "8844EEAA"),
    ("FFFF9876543210E0000F", "93DD5B956C4878B82E453AAEFD32A555", "93DD5B956C4887472E453AAEFD325AAA", "B170F6E7F7F2F64A", "1B1A40E7"),
    ("FFFF9876543210E00010", "59598DCBD9BD943F94165CE453585FA8", "59598DCBD9BD6BC094165CE45358A057", "D5D9638559EF53D6", "DB05312F"),
    ("FFFF9876543210E00011", "2B5F01F4F0CC0515639D523231BF1B5D", "2B5F01F4F0CCFAEA639D523231BFE4A2", "D544F8CDD292C863", "9C4253EB"),
    ("FFFF9876543210E00012", "9CF640F279C2AE1915F725EEEAC2CB50", "9CF640F279C251E615F725EEEAC234AF", "7A21BD10F36DC41D", "9237DD4E"),
    ("FFFF9876543210E00013", "C3DF489FDF11534BF03DE97C27DC4CD0", "C3DF489FDF11ACB4F03DE97C27DCB32F", "78649BD17D0DFA60", "5402D529"),
    ("FFFF9876543210E00014", "658488507721B30E4737FA93F923CB2D", "6584885077214CF14737FA93F92334D2", "7E7E16EA0C31AD56", "99DC2A04"),
    ("FFFF9876543210E00015", "E161D1956A61F62DF37AFD7F9CC36965", "E161D1956A6109D2F37AFD7F9CC3969A", "72105C22EBC791E6", "2B42A5B7"),
    ("FFFF9876543210E10000", "2F9A0C0B46ECCBA1F8287A7A071AF54B", "2F9A0C0B46EC345EF8287A7A071A0AB4", "19776D96D73AF1E2", "D9DFF7D6"),
    ("FFFF9876543210E20000", "DEFDE0EA1043B58D2FA013DE6C4B8F04", "DEFDE0EA10434A722FA013DE6C4B70FB", "83F14581B8946B2D", "AB8E57A9"),
    ("FFFF9876543210E40000", "9F59E8536BDB056513C856FCCF9A0981", "9F59E8536BDBFA9A13C856FCCF9AF67E", "96B3ADCBF9F5219C", "B72B23BF"),
    ("FFFF9876543210E80000", "87B9983D9D23047A8D199F5CA0C3DEEC", "87B9983D9D23FB858D199F5CA0C32113", "1E0F453FD55FCE45", "B27DF964"),
    ("FFFF9876543210EFF800", "F9CDFEBF4F5B1D61B3EC12454527E189", "F9CDFEBF4F5BE29EB3EC124545271E76", "33365F5CC6F23C35", "3F7A0CE1"),
    ("FFFF9876543210EFF801", "5BEE92627E9782A3911BF619DF72CAC4", "5BEE92627E977D5C911BF619DF72353B", "3A86BF003F835C9D", "72653326"),
    ("FFFF9876543210EFF802", "64CA2F8AB93F614F1620B00BF77C73FE", "64CA2F8AB93F9EB01620B00BF77C8C01", "3DB977D05C36DF3F", "FB38BE77"),
    ("FFFF9876543210EFF804", "35A168695B3BA8CC07E871C42021DDC8", "35A168695B3B573307E871C420212237", "BA83243305712099", "22BFAA61"),
    ("FFFF9876543210EFF808", "12C380FCB72ED33D6FC6079AF63F4778", "12C380FCB72E2CC26FC6079AF63FB887", "B0DA04AC90A36D85", "08602C13"),
    ("FFFF9876543210EFF810", "D8007C833A1E3CB6C6889B97A68C5400", "D8007C833A1EC349C6889B97A68CABFF", "2CF02BD9C309EEDA", "2E033EBC"),
    ("FFFF9876543210EFF820", "A9C9FF9B735FDDB6591F296B0BF0FD8F", "A9C9FF9B735F2249591F296B0BF00270", "9D1E2F77AEEE81C6", "A821E7C7"),
    ("FFFF9876543210EFF840", "0E3E221062CB5EFCA384602783A00405", "0E3E221062CBA103A384602783A0FBFA", "40870B0F8BA2011C", "F765BD9E"),
    ("FFFF9876543210EFF880", "CA8225C587124D04B87F279C0BE297D8", "CA8225C58712B2FBB87F279C0BE26827", "22E340D6ABB40981", "393982DC"),
    ("FFFF9876543210EFF900", "906AAC1751D497E5144D52C76C6E1F68", "906AAC1751D4681A144D52C76C6EE097", "1A4C10AFBA03A430", "8A7D5738"),
    ("FFFF9876543210EFFA00", "2B9E2CE7C27503C8E10B54D2989EA650", "2B9E2CE7C275FC37E10B54D2989E59AF", "849763B43E5F9CFF", "2A15EFF9"),
    ("FFFF9876543210EFFC00", "F9430DF97508246EC77BE4EF4FDB9111", "F9430DF97508DB91C77BE4EF4FDB6EEE", "DEFC6F09F8927B71", "2EBFA205"),
    ("FFFF9876543210F00000", "AA4D58DB653EC7B548C75F2F047DD24A", "AA4D58DB653E384A48C75F2F047D2DB5", "73EC88AD0AC5830E", "E771B48A"),
]  # fmt: skip
ANNEX_A = {row[0]: row for row in X9_24_1_ANNEX_A}

# Counter, derivation key, AES-CMAC request (2000), response (2001) over "4012345678909D987"
# (X9.24-3:2017 Annex B.1 via moov-io/dukpt; the same table as tests/test_hsm_crypto.py).
X9_24_3_SEQUENCE = [
    (1, "4F21B565BAD9835E112B6465635EAE44", "A2EB5C1C35809E58404E873C3C411E31", "DD4E1895FD9BF53D8DAF25568ABF551D"),
    (2, "2F34D68DE10F68D38091A73B9E7C437C", "4D104704C53491A60944193DCAF6B411", "008CEAAE2B913BEEE76209EE9406DAC1"),
    (3, "031504E530365CF81264238540518318", "6A18904AA8E966A03505F5EEBDAEBD82", "40CB2F0C2E043D060063FAA916A849E1"),
    (4, "0EEFC7ADA628BA68878DA9165A8A1887", "77BBD3FB827158B9B12880B0794D1C74", "51FDE192BC484F769AA0A86F8BC5CB30"),
    (5, "C2A7AC328A5DA2D6002D62465BFC028B", "C0CE6DA1F4434AD16EEEBF486C9616CD", "4B508F51104D184A9190061ED854200E"),
    (6, "D30F7D9351DA58448A2F5E92B4EE3B7D", "05222AE91471C590B3A9471523324C14", "ED90BD8AE4571C75CF08EA3EA195ABF8"),
    (7, "A8253CEED9AC042C54F75D35C8352278", "37FA54258AAF805A44AA1273C0DF928C", "52D6C1D3A95B1D21761E20870D9A7E8C"),
    (8, "718EE6CF0B27E53D5F7AF99C4D8146A2", "85C7CA68F55F51E7DCAC969B8C111130", "B45399DB90C0BA75DB4B86605758695A"),
]  # fmt: skip

PROFILES = {"dukpt-tdes": TDES_KSN0, "dukpt-aes": AES_KSN0}
REFERENCE = TerminalSecurity._derive  # the walk from the initial key, kept before any test patches it


def ksn_at(profile: str, counter: int) -> str:
    initial = PROFILES[profile]
    if profile == "dukpt-tdes":
        return f"{int(initial, 16) | counter:020X}"
    return initial[:16] + f"{counter:08X}"


def restored(profile: str, counter: int) -> TerminalSecurity:
    """A terminal whose saved state says its last KSN had `counter` (as the fleet reserves
    counters ahead, that counter may be one a terminal would skip)."""
    state = {"profile": profile, "keys": "test", "initial_ksn": PROFILES[profile], "ksn": ksn_at(profile, counter)}
    return TerminalSecurity.from_state(json.loads(json.dumps(state)))


def keys_tuple(keys) -> tuple[bytes, bytes, bytes]:
    return keys.pin, keys.mac_request, keys.mac_response


def host_keys(profile: str, ksn: str) -> tuple[bytes, bytes, bytes]:
    """The host's working keys for `ksn`, from the BDK (hsm_mock.dukpt)."""
    if profile == "dukpt-tdes":
        return tuple(dukpt.tdes_working_key(TDES_BDK, ksn, usage)  # type: ignore[return-value]
                     for usage in (dukpt.TdesUsage.PIN, dukpt.TdesUsage.MAC_REQUEST, dukpt.TdesUsage.MAC_RESPONSE))
    return tuple(dukpt.aes_transaction_key(AES_BDK, ksn, usage)  # type: ignore[return-value]
                 for usage in (dukpt.AesUsage.PIN_ENCRYPTION, dukpt.AES_MAC_REQUEST_USAGE, dukpt.AES_MAC_RESPONSE_USAGE))


def reference_next(profile: str, ksn: str) -> str | None:
    try:
        raw = dukpt.tdes_next_ksn(ksn) if profile == "dukpt-tdes" else dukpt.aes_next_ksn(ksn)
    except dukpt.DukptError:
        return None
    return raw.hex().upper()


@pytest.fixture
def registers_only(monkeypatch):
    """Make the reference path fail: whatever the test checks came from the key registers."""
    def no_reference(self, ksn):
        raise AssertionError("reference derivation used where the key registers should serve")
    monkeypatch.setattr(TerminalSecurity, "_derive", no_reference)


def expected_registers(profile: str, counter: int) -> dict[int, int]:
    """Which registers hold a key when `counter` is next, and for which counter: the register
    of its lowest one-bit holds its own key; above, each register of a zero bit holds the key
    of the counter with the bits above it and that bit set, unless that counter has more
    one-bits than a terminal uses (X9.24-1 Annex A). Every other register is erased."""
    low = (counter & -counter).bit_length() - 1
    out = {low: counter}
    for bit in range(low + 1, KEY_REGISTERS[profile]):
        if not counter >> bit & 1:
            future = (counter >> (bit + 1) << (bit + 1)) | (1 << bit)
            if future.bit_count() <= security.COUNTER_ONE_BITS_MAX[profile]:
                out[bit] = future
    return out


def reference_key(sec: TerminalSecurity, counter: int) -> bytes:
    """The key a register holds for `counter`, walked from the initial key (hsm_mock.dukpt):
    TDES, the transaction key; AES, the intermediate derivation key."""
    ksn = ksn_at(sec.profile, counter)
    if sec.profile == "dukpt-tdes":
        return dukpt.tdes_derive_key(sec._initial_key, ksn)
    return dukpt.aes_derivation_key(sec._initial_key, ksn)


def check_registers(sec: TerminalSecurity) -> None:
    registers = sec._registers
    assert registers is not None
    if registers.next_counter is None:
        return
    expected = expected_registers(sec.profile, registers.next_counter)
    held = {bit: key for bit, key in enumerate(registers._regs) if key is not None}
    assert sorted(held) == sorted(expected)
    for bit, key in held.items():
        assert key == reference_key(sec, expected[bit]), (bit, expected[bit])


def advance_and_compare(sec: TerminalSecurity, steps: int, *, registers_every: int = 1) -> list[str]:
    """Advance `steps` times; each KSN must be the reference's next one and its keys (taken from
    the registers) the reference derivation's; every `registers_every` steps, the registers
    must hold exactly the keys the standard's terminal holds at that point. Returns the KSNs."""
    profile, seen = sec.profile, []
    for step in range(steps):
        expected = reference_next(profile, sec.ksn)
        if expected is None:
            with pytest.raises(SecurityError, match="exhausted"):
                sec.next_ksn()
            break
        assert sec.next_ksn() == expected
        got = keys_tuple(sec._keys[expected])
        assert got == keys_tuple(REFERENCE(sec, expected)), expected
        if step % registers_every == 0:
            check_registers(sec)
        seen.append(expected)
    return seen


# ============================================================================ published vectors


def check_annex_a_row(sec: TerminalSecurity, ksn: str) -> None:
    _, pin_key, mac_key, epb, mac = ANNEX_A[ksn]
    keys = sec._keys[ksn]
    assert keys.pin == H(pin_key)
    assert keys.mac_request == H(mac_key)
    assert sec.pin_block(ANNEX_A_PIN, ANNEX_A_PAN) == epb
    assert sec.request_mac(ANNEX_A_MAC_DATA)[:4] == H(mac)


def test_annex_a_e00001_to_e00015_from_a_fresh_terminal(registers_only) -> None:
    sec = TerminalSecurity.for_test_keys("dukpt-tdes", TDES_KSN0)
    for counter in range(1, 0x16):
        ksn = sec.next_ksn()
        assert ksn == ksn_at("dukpt-tdes", counter)
        check_annex_a_row(sec, ksn)


@pytest.mark.parametrize("counter", [0x010000, 0x020000, 0x040000, 0x080000])
def test_annex_a_single_bit_counters_after_a_restore(registers_only, counter: int) -> None:
    # Saved one counter short (a counter with many one-bits, which the terminal skips).
    sec = restored("dukpt-tdes", counter - 1)
    ksn = sec.next_ksn()
    assert ksn == ksn_at("dukpt-tdes", counter)
    check_annex_a_row(sec, ksn)


def test_annex_a_eff800_to_f00000_is_the_terminals_own_sequence(registers_only) -> None:
    # EFF800 … EFFC00 and F00000 are consecutive for a terminal: the counters between them
    # have more than 10 one-bits. Restored once before EFF800, every later key comes from the
    # registers filled by the terminal's own "New Key" steps.
    tail = [row[0] for row in X9_24_1_ANNEX_A if row[0] >= "FFFF9876543210EFF800"]
    sec = restored("dukpt-tdes", 0x0FF800 - 1)
    for expected in tail:
        assert sec.next_ksn() == expected
        check_annex_a_row(sec, expected)


def test_annex_a_rows_on_the_fleets_path_too() -> None:
    # Every Annex A KSN through protect/sign, as the fleet calls them, with the IPEK published
    # in Annex A: the registers' keys are the table's.
    sec = TerminalSecurity.for_test_keys("dukpt-tdes", TDES_KSN0)
    assert sec._initial_key == IPEK
    for counter in range(1, 0x16):
        fields = sec.protect({"t": "0200", "2": ANNEX_A_PAN, "11": f"{counter:06d}", "7": "1125120000"},
                             pin=ANNEX_A_PIN)
        row = ANNEX_A[fields["53"]]
        assert fields["52"] == row[3]
        signed = sec.sign(ANNEX_A_MAC_DATA + bytes(8), ksn=fields["53"])
        assert signed[-8:] == crypto.mac_iso9797_alg3(H(row[2]), ANNEX_A_MAC_DATA)


def test_x9_24_3_annex_b1_derivation_keys_and_cmacs_counters_1_to_8(registers_only) -> None:
    registers = _KeyRegisters("dukpt-aes", AES_INITIAL_KEY, AES_KSN0, 1)
    sec = TerminalSecurity.for_test_keys("dukpt-aes", AES_KSN0)
    for counter, derivation, request, response in X9_24_3_SEQUENCE:
        low = (counter & -counter).bit_length() - 1
        assert registers._regs[low] == H(derivation)  # the register this counter takes its key from
        assert registers.advance()[0] == counter
        assert registers._regs[low] is None  # used, erased
        assert sec.next_ksn() == ksn_at("dukpt-aes", counter)
        assert sec.request_mac(MAC_INPUT) == H(request)[:8]
        assert sec.response_mac(MAC_INPUT) == H(response)[:8]
        assert crypto.aes_cmac(sec._keys[sec.ksn].mac_request, MAC_INPUT) == H(request)
        assert crypto.aes_cmac(sec._keys[sec.ksn].mac_response, MAC_INPUT) == H(response)
        if counter == 1:
            assert sec._keys[sec.ksn].pin == H("AF8CB133A78F8DC2D1359F18527593FB")
            assert sec._keys[sec.ksn].mac_request == H("A2DC23DE6FDE0824A2BC321E08E4B8B7")
        if counter == 2:
            assert sec._keys[sec.ksn].pin == H("D30BDC73EC9714B000BEC66BDB7B6D09")


def test_tdes_registers_hold_transaction_keys_counter_1() -> None:
    # Annex A: the transaction key of counter 1, 042666B49184CFA368DE9628D0397BC9 (docs/hsm.md §8).
    registers = _KeyRegisters("dukpt-tdes", IPEK, TDES_KSN0, 1)
    assert registers._regs[0] == H("042666B49184CFA368DE9628D0397BC9")
    assert sum(r is not None for r in registers._regs) == 21  # "Load Initial Key": every register


# ============================================================================ long runs, any start


@pytest.mark.parametrize(("profile", "steps"), [("dukpt-tdes", 5000), ("dukpt-aes", 2000)])
def test_consecutive_counters_from_a_fresh_initial_key(registers_only, profile: str, steps: int) -> None:
    sec = TerminalSecurity.for_test_keys(profile, PROFILES[profile])
    seen = advance_and_compare(sec, steps, registers_every=7)
    assert len(seen) == steps
    for ksn in seen[:: 97] + seen[-3:]:  # and the host's derivation from the BDK, on a sample
        assert host_keys(profile, ksn) == keys_tuple(REFERENCE(sec, ksn))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.integers(0, dukpt.TDES_COUNTER_MASK), steps=st.integers(1, 40))
def test_tdes_any_restored_counter_then_consecutive(registers_only, start: int, steps: int) -> None:
    advance_and_compare(restored("dukpt-tdes", start), steps)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=st.integers(0, (1 << 32) - 1), steps=st.integers(1, 40))
def test_aes_any_restored_counter_then_consecutive(registers_only, start: int, steps: int) -> None:
    advance_and_compare(restored("dukpt-aes", start), steps)


@pytest.mark.parametrize(("profile", "start"), [("dukpt-tdes", 0x1FE000), ("dukpt-aes", 0xFFFC0000)])
def test_the_counter_runs_out_where_the_reference_does(registers_only, profile: str, start: int) -> None:
    sec = restored(profile, start - 1)
    seen = advance_and_compare(sec, 100_000)
    assert seen and reference_next(profile, seen[-1]) is None
    with pytest.raises(SecurityError, match="exhausted"):
        sec.next_ksn()
    assert sec.ksn == seen[-1]  # a spent terminal stays where it was


@given(counter=st.integers(0, dukpt.TDES_COUNTER_MASK))
def test_next_counter_is_the_reference_next_ksn(counter: int) -> None:
    expected = reference_next("dukpt-tdes", ksn_at("dukpt-tdes", counter))
    got = _next_counter("dukpt-tdes", counter)
    assert (None if got is None else ksn_at("dukpt-tdes", got)) == expected


# ============================================================================ cost


def test_one_transaction_is_one_batch_from_one_key(monkeypatch) -> None:
    # TDES: at most two single-DES contexts per transaction (the two halves of the
    # non-reversible key generation, for every register refilled); AES: one AES context.
    # Counted by replacing the module's names, which only the pure build looks up at each call:
    # compiled, terminal_sim.security and hsm_mock.crypto are one mypyc group whose calls are
    # direct (setup.py ONE_GROUP). tests/test_compiled.py runs this file on the pure build too.
    if switch_compiled.is_compiled(security):
        pytest.skip("counts calls through module names: the pure build's run (tests/test_compiled.py) does")
    calls = {"des": 0, "aes": 0}
    des, aes = security.tdes_ecb_encrypt_once, security.aes_ecb_encrypt_once

    def count_des(key, data):
        calls["des"] += 1
        return des(key, data)

    def count_aes(key, data):
        calls["aes"] += 1
        return aes(key, data)

    monkeypatch.setattr(security, "tdes_ecb_encrypt_once", count_des)
    monkeypatch.setattr(security, "aes_ecb_encrypt_once", count_aes)
    for profile, kind, per_tx in (("dukpt-tdes", "des", 2), ("dukpt-aes", "aes", 1)):
        sec = TerminalSecurity.for_test_keys(profile, PROFILES[profile])
        sec.next_ksn()  # loads the registers
        total = 0
        for _ in range(2000):
            before = calls[kind]
            sec.next_ksn()
            assert calls[kind] - before <= per_tx
            total += calls[kind] - before
        # TDES: a refill on every even counter (two contexts), none on odd ones; AES: always one.
        # Exactly 2000 either way over these counters: the counting wrappers were called.
        assert total <= 2000 * per_tx and (kind == "aes" or total <= 2000 + 2)
        assert total == 2000


def test_registers_are_bounded() -> None:
    for profile in PROFILES:
        sec = TerminalSecurity.for_test_keys(profile, PROFILES[profile])
        for _ in range(300):
            sec.next_ksn()
            assert len(sec._registers._regs) == KEY_REGISTERS[profile]
            assert len(sec._keys) <= KEY_CACHE_SIZE_MAX
    assert KEY_REGISTERS == {"dukpt-tdes": 21, "dukpt-aes": 32}


# ============================================================================ state


@pytest.mark.parametrize("profile", list(PROFILES))
def test_save_and_restore_continues_with_the_same_keys(profile: str) -> None:
    straight = TerminalSecurity.for_test_keys(profile, PROFILES[profile])
    for _ in range(150):
        straight.next_ksn()
    state = json.loads(json.dumps(straight.to_state()))
    assert state == {"profile": profile, "keys": "test", "initial_ksn": PROFILES[profile], "ksn": straight.ksn}
    again = TerminalSecurity.from_state(state)
    assert again.counter == straight.counter and again._registers is None  # rebuilt at the next advance
    for _ in range(150):
        assert again.next_ksn() == straight.next_ksn()
        assert keys_tuple(again._keys[again.ksn]) == keys_tuple(straight._keys[straight.ksn])
    # The restored terminal's last saved KSN (keys not at hand) falls back to the reference.
    assert again.request_mac(MAC_INPUT, ksn=state["ksn"]) == straight.request_mac(MAC_INPUT, ksn=state["ksn"])


@pytest.mark.parametrize("profile", list(PROFILES))
def test_no_key_leaves_the_terminal_in_state_repr_or_errors(profile: str) -> None:
    sec = TerminalSecurity.for_test_keys(profile, PROFILES[profile])
    for _ in range(40):
        sec.next_ksn()
    secrets = [r.hex() for r in sec._registers._regs if r is not None]
    secrets += [k.hex() for keys in sec._keys.values() for k in keys_tuple(keys)]
    secrets.append(sec._initial_key.hex())
    assert len(secrets) > 20
    shown = " ".join([json.dumps(sec.to_state()), repr(sec), repr(sec._registers),
                      repr(next(iter(sec._keys.values())))]).lower()
    for secret in secrets:
        assert secret not in shown and secret[:16] not in shown and secret[16:] not in shown
    spent = restored(profile, {"dukpt-tdes": dukpt.TDES_COUNTER_MASK, "dukpt-aes": (1 << 32) - 1}[profile])
    with pytest.raises(SecurityError) as info:
        spent.next_ksn()
    assert "inject a new initial key" in str(info.value)


def test_repeats_beyond_the_cache_use_the_reference_and_agree() -> None:
    sec = TerminalSecurity.for_test_keys("dukpt-tdes", TDES_KSN0)
    first = sec.next_ksn()
    mac = sec.request_mac(MAC_INPUT)
    for _ in range(KEY_CACHE_SIZE_MAX + 2):
        sec.next_ksn()
    assert first not in sec._keys
    assert sec.request_mac(MAC_INPUT, ksn=first) == mac == H("9CCC78173FC4FB64")  # docs/hsm.md §8, counter 1
