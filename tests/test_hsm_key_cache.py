"""The HSM's key caches (hsm_mock/keycache.py): keys under the LMK decrypted once, a DUKPT
transaction key derived once per (BDK under the LMK, KSN) and shared by GW and G0.

Differential: the cached Hsm (default) and the reference path (`Hsm(key_cache_size_max=0)`,
every command from scratch) answer byte for byte alike, on the published vectors (ANSI
X9.24-1:2009 Annex A, all 38 rows, docs/hsm.md §8; X9.24-3 Annex B.1 for Z0/Z2) and on random
BDKs, KSNs and messages (hypothesis), first use and cache hit alike. Then: the count bound
holds whatever the number of KSNs, a different BDK or KSN never answers from another's entry,
a key of one type never answers as another type, and the audit log and the caches' repr hold
no key material.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_mock import dukpt, pinblock
from hsm_mock.commands import Hsm
from hsm_mock.config import HsmConfig
from hsm_mock.crypto import fix_parity, retail_mac_once, tdes_ecb_encrypt, tdes_ecb_encrypt_once, to_hex
from hsm_mock.keycache import KEY_CACHE_SIZE_MAX, KeyCache
from hsm_mock.lmk import encrypt_key_under_lmk
from hsm_mock.service import HsmServer
from test_hsm_crypto import ANNEX_A_CLEAR_BLOCK, X9_24_1_ANNEX_A  # ANSI X9.24-1:2009 Annex A, 38 rows

H = bytes.fromhex
BDK_CLEAR = H("0123456789ABCDEFFEDCBA9876543210")  # X9.24-1 Annex A BDK, KCV 08D7B4
BDK = "U8E3D3E2FD5919657F05A1AA90D32A014"  # that BDK under the test LMK, key type 009 (docs/hsm.md §3)
ZPK_CLEAR = H("1C1C1C1C1C1C1C1C7A7A7A7A7A7A7A7A")
ZPK = encrypt_key_under_lmk(ZPK_CLEAR, "001", "U")
AES_BDK = "UC0106228334ECB2E12B49BA556660547"  # X9.24-3 test BDK FEDCBA9876543210F1F1F1F1F1F1F1F1
ANNEX_A_ACCOUNT = "401234567890"  # PAN 4012345678909, the Annex A clear block's account
ANNEX_A_MESSAGE = b"1234567890" * 4  # the Annex A MAC input


def answer(hsm: Hsm, code: str, body: bytes | str) -> bytes:
    """Error code + response body, through parse (as the service does) and handle."""
    raw = body.encode("ascii") if isinstance(body, str) else body
    error, out, _ = hsm.handle(hsm.parse(b"0000" + code.encode() + raw))
    return error.encode() + out


def both(code: str, body: bytes | str, *hsms: Hsm) -> list[bytes]:
    return [answer(h, code, body) for h in hsms]


def gw(mode_method: str, bdk: str, ksn: str, message: bytes, mac: str = "") -> bytes:
    return (mode_method + bdk + "A05" + ksn + mac).encode() + b"%04d" % len(message) + message


def g0(bdk: str, ksn: str, block: str, account: str, zpk: str = ZPK) -> str:
    return bdk + zpk + "A05" + ksn + block + "0101" + account


@pytest.fixture
def pair() -> tuple[Hsm, Hsm]:
    """(cached, reference)."""
    return Hsm(), Hsm(key_cache_size_max=0)


def test_the_default_bound_is_4096_and_zero_turns_the_caches_off() -> None:
    assert KEY_CACHE_SIZE_MAX == 4096 == HsmConfig().key_cache_size_max
    hsm = Hsm()
    assert hsm._lmk_keys.size_max == hsm._dukpt_keys.size_max == 4096
    off = Hsm(key_cache_size_max=0)
    assert off._lmk_keys is None and off._dukpt_keys is None
    with pytest.raises(ValueError):
        Hsm(key_cache_size_max=-1)
    with pytest.raises(ValueError):
        HsmConfig(key_cache_size_max=-1)
    assert HsmServer(HsmConfig(port=0, key_cache_size_max=7)).hsm._dukpt_keys.size_max == 7


# ----------------------------------------------------------------------------- published vectors


@pytest.mark.parametrize(("ksn", "pin_key", "mac_key", "epb", "mac"), X9_24_1_ANNEX_A,
                         ids=[r[0][-6:] for r in X9_24_1_ANNEX_A])  # fmt: skip
def test_annex_a_rows_cached_and_uncached_alike(pair, ksn: str, pin_key: str, mac_key: str, epb: str,
                                                mac: str) -> None:  # fmt: skip
    # ANSI X9.24-1:2009 Annex A: the encrypted PIN block under the KSN's PIN key, and the X9.19
    # MAC (first 4 bytes) of "1234567890"×4 under its MAC-request key.
    cached, reference = pair
    expected_g0 = b"0004" + to_hex(tdes_ecb_encrypt(ZPK_CLEAR, ANNEX_A_CLEAR_BLOCK)).encode() + b"01"
    for _ in range(2):  # first use, then from the cache
        assert both("GW", gw("51", BDK, ksn, ANNEX_A_MESSAGE), cached, reference) == [b"00" + mac.encode()] * 2
        assert both("GW", gw("21", BDK, ksn, ANNEX_A_MESSAGE, mac), cached, reference) == [b"00"] * 2
        assert both("G0", g0(BDK, ksn, epb, ANNEX_A_ACCOUNT), cached, reference) == [expected_g0] * 2
        response = both("GW", gw("42", BDK, ksn, ANNEX_A_MESSAGE), cached, reference)
        assert response[0] == response[1] and len(response[0]) == 2 + 16
    assert ("T", BDK, ksn) in cached._dukpt_keys


def test_the_cached_transaction_key_is_annex_a_s(pair) -> None:
    # Counter 1 (docs/hsm.md §8): transaction key 042666B49184CFA368DE9628D0397BC9.
    cached, _ = pair
    answer(cached, "GW", gw("41", BDK, "FFFF9876543210E00001", b"x"))
    assert to_hex(cached._dukpt_keys.get(("T", BDK, "FFFF9876543210E00001"))) == "042666B49184CFA368DE9628D0397BC9"


def test_counter_1_request_and_response_macs_x9_24_1(pair) -> None:
    # docs/hsm.md §8: X9.19 over ASCII "4012345678909D987" at counter 1: request key 9CCC78173FC4FB64,
    # response key 20364223C1FF00FA; the verify (GW mode 1) that comes first fills the cache.
    msg, ksn = b"4012345678909D987", "FFFF9876543210E00001"
    cached, reference = pair
    assert both("GW", gw("11", BDK, ksn, msg, "9CCC78173FC4FB64"), cached, reference) == [b"00"] * 2
    assert both("GW", gw("42", BDK, ksn, msg), cached, reference) == [b"0020364223C1FF00FA"] * 2
    assert both("GW", gw("41", BDK, ksn, msg), cached, reference) == [b"009CCC78173FC4FB64"] * 2
    assert both("GW", gw("11", BDK, ksn, msg, "9CCC78173FC4FB65"), cached, reference) == [b"01"] * 2


def test_aes_dukpt_z2_and_z0_cached_and_uncached_alike(pair) -> None:
    # X9.24-3 Annex B.1 at KSN 123456789012345600000001 (moov-io/dukpt aes_test.go): CMAC of
    # "4012345678909D987" under the usage-2000 and 2001 keys; PIN 1234, PAN 4111111111111111
    # under the PIN key with fill 2F69ADDE2E9E7ACE → A912150391AB65A67E52883D81CE2D15.
    cached, reference = pair
    msg, ksn, pan = b"4012345678909D987", "123456789012345600000001", "4111111111111111"
    for _ in range(2):
        assert both("Z2", ("402" + AES_BDK + ksn).encode() + b"0017" + msg, cached, reference) == \
            [b"00A2EB5C1C35809E58404E873C3C411E31"] * 2
        assert both("Z2", ("412" + AES_BDK + ksn).encode() + b"0017" + msg, cached, reference) == \
            [b"00DD4E1895FD9BF53D8DAF25568ABF551D"] * 2
        z0 = both("Z0", AES_BDK + ZPK + ksn + "A912150391AB65A67E52883D81CE2D15" + "01" + "16" + pan, cached, reference)
        block = tdes_ecb_encrypt(ZPK_CLEAR, pinblock.encode_iso0("1234", account=pinblock.account_number(pan)))
        assert z0 == [b"0004" + to_hex(block).encode() + b"01"] * 2
    assert ("A", AES_BDK, ksn) in cached._dukpt_keys


# ----------------------------------------------------------------------------- random inputs


def _double_key(raw: bytes) -> bytes:
    key = fix_parity(raw)
    return key if key[:8] != key[8:] else fix_parity(raw[:8] + bytes(b ^ 0xF0 for b in raw[8:]))


@settings(max_examples=150, deadline=None)
@given(bdk_raw=st.binary(min_size=16, max_size=16), ksn=st.binary(min_size=10, max_size=10),
       message=st.binary(min_size=0, max_size=200), pin=st.from_regex(r"[0-9]{4,12}", fullmatch=True),
       account=st.from_regex(r"[0-9]{12}", fullmatch=True))  # fmt: skip
def test_random_bdks_and_ksns_cached_and_uncached_alike(bdk_raw, ksn, message, pin, account) -> None:
    cached, reference = Hsm(), Hsm(key_cache_size_max=0)
    bdk_clear = _double_key(bdk_raw)
    bdk = encrypt_key_under_lmk(bdk_clear, "009", "U")
    ksn_hex = to_hex(ksn)
    key = dukpt.tdes_transaction_key(bdk_clear, ksn)  # the reference derivation, straight from the BDK
    request_mac = to_hex(retail_mac_once(dukpt.tdes_mac_request_key(key), message))
    response_mac = to_hex(retail_mac_once(dukpt.tdes_mac_response_key(key), message))
    epb = to_hex(tdes_ecb_encrypt_once(dukpt.tdes_pin_key(key), pinblock.encode_iso0(pin, account=account)))
    expected_g0 = f"{len(pin):02d}".encode() + to_hex(
        tdes_ecb_encrypt(ZPK_CLEAR, pinblock.encode_iso0(pin, account=account))).encode() + b"01"
    for _ in range(2):  # miss, then hit: one authorisation's order (verify, PIN, response MAC)
        assert both("GW", gw("11", bdk, ksn_hex, message, request_mac), cached, reference) == [b"00"] * 2
        assert both("G0", g0(bdk, ksn_hex, epb, account), cached, reference) == [b"00" + expected_g0] * 2
        assert both("GW", gw("42", bdk, ksn_hex, message), cached, reference) == [b"00" + response_mac.encode()] * 2
        wrong = request_mac[:-1] + ("0" if request_mac[-1] != "0" else "1")
        assert both("GW", gw("11", bdk, ksn_hex, message, wrong), cached, reference) == [b"01"] * 2


# X9.19 of "1234567890"×4 under the Annex A MAC-request key at E00001: BF3DF9F4 (published), then A761D163.
ANNEX_A_FULL_MAC = "BF3DF9F4A761D163"
_rng = random.Random(10)
BDKS = [BDK, encrypt_key_under_lmk(BDK_CLEAR, "009", "X"),
        encrypt_key_under_lmk(_double_key(_rng.randbytes(16)), "009", "U"),
        encrypt_key_under_lmk(_double_key(_rng.randbytes(16)), "009", "U")]
KSNS = ["FFFF9876543210E00001", "FFFF9876543210E00002", "FFFF9876543210E10000", "FFFF9876543211E00001",
        "FFFF9876543211E00002", "FFFF9876543210EFF800"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["11", "42", "G0"]), st.integers(0, 3), st.integers(0, 5)), min_size=1,
                max_size=60))  # fmt: skip
def test_interleaved_bdks_and_ksns_never_answer_from_another_s_entry(steps) -> None:
    # Four BDKs (two of them the same clear key under two ciphertexts) × six KSNs of two devices,
    # in any order: the cached Hsm answers each as the reference does.
    cached, reference = Hsm(key_cache_size_max=3), Hsm(key_cache_size_max=0)
    for step, b, k in steps:
        bdk, ksn = BDKS[b], KSNS[k]
        if step == "G0":
            code, body = "G0", g0(bdk, ksn, "1B9C1845EB993A7A", ANNEX_A_ACCOUNT)
        else:  # "11" verify (the MAC of BDKS[0] and BDKS[1] at KSNS[0], Annex A), "42" MAC the response
            code, body = "GW", gw(step, bdk, ksn, ANNEX_A_MESSAGE, ANNEX_A_FULL_MAC if step == "11" else "")
        got = answer(cached, code, body)
        assert got == answer(reference, code, body)
        assert len(cached._dukpt_keys) <= 3
        if step == "11":
            assert (got == b"00") == (b in (0, 1) and k == 0)


def test_the_interleaving_accepts_the_annex_a_mac_only_for_its_bdk_and_ksn() -> None:
    hsm = Hsm()
    verdicts = {(b, k): answer(hsm, "GW", gw("11", BDKS[b], KSNS[k], ANNEX_A_MESSAGE, ANNEX_A_FULL_MAC))
                for k in range(len(KSNS)) for b in range(len(BDKS))}  # fmt: skip
    assert {key for key, v in verdicts.items() if v == b"00"} == {(0, 0), (1, 0)}


def test_a_different_bdk_or_ksn_has_its_own_entry() -> None:
    hsm = Hsm()
    other = encrypt_key_under_lmk(_double_key(bytes(range(16))), "009", "U")
    macs = {}
    for bdk in (BDK, other):
        for ksn in KSNS[:2]:
            macs[bdk, ksn] = answer(hsm, "GW", gw("41", bdk, ksn, ANNEX_A_MESSAGE))
    assert len(set(macs.values())) == 4  # four keys, four MACs
    assert len(hsm._dukpt_keys) == 4
    assert macs[BDK, KSNS[0]] == answer(Hsm(key_cache_size_max=0), "GW", gw("41", BDK, KSNS[0], ANNEX_A_MESSAGE))
    assert macs[other, KSNS[1]] == answer(Hsm(key_cache_size_max=0), "GW", gw("41", other, KSNS[1], ANNEX_A_MESSAGE))


def test_a_key_cached_as_one_type_answers_as_the_reference_under_another() -> None:
    # The BDK (009) in the ZPK's place of a G0, after it was cached as a BDK: key type
    # separation holds (the cache is keyed by the key type too).
    cached, reference = Hsm(), Hsm(key_cache_size_max=0)
    answer(cached, "GW", gw("41", BDK, KSNS[0], ANNEX_A_MESSAGE))
    body = g0(BDK, KSNS[0], "1B9C1845EB993A7A", ANNEX_A_ACCOUNT, zpk=BDK)
    assert answer(cached, "G0", body) == answer(reference, "G0", body)
    assert answer(cached, "G0", body)[:2] in (b"10", b"11", b"29")
    body = g0(ZPK, KSNS[0], "1B9C1845EB993A7A", ANNEX_A_ACCOUNT)  # a ZPK as the BDK
    assert answer(cached, "G0", body) == answer(reference, "G0", body) != b"00"


# ----------------------------------------------------------------------------- the bound


def test_the_bound_holds_after_many_ksns() -> None:
    hsm = Hsm(key_cache_size_max=64)
    bdks = [encrypt_key_under_lmk(_double_key(random.Random(i).randbytes(16)), "009", "U") for i in range(100)]
    ksn = H("FFFF9876543210E00000")
    for i in range(1000):
        ksn = dukpt.tdes_next_ksn(ksn)
        assert answer(hsm, "GW", gw("41", bdks[i % 100], to_hex(ksn), b"m"))[:2] == b"00"
        assert len(hsm._dukpt_keys) <= 64 and len(hsm._lmk_keys) <= 64
    assert len(hsm._dukpt_keys) == 64 == len(hsm._lmk_keys)
    # the most recent entries are the ones kept
    assert ("T", bdks[999 % 100], to_hex(ksn)) in hsm._dukpt_keys


def test_key_cache_is_least_recently_used_and_bounded() -> None:
    cache = KeyCache(3)
    for slot in "abc":
        cache.put(slot, slot.upper())
    assert cache.get("a") == "A"  # a is now the most recent
    cache.put("d", "D")
    assert "b" not in cache and [s for s in "acd" if s in cache] == ["a", "c", "d"] and len(cache) == 3
    cache.put("c", "C2")  # a re-put refreshes
    cache.put("e", "E")
    assert "a" not in cache and cache.get("c") == "C2" and cache.get("zz") is None
    with pytest.raises(ValueError):
        KeyCache(0)


def test_key_cache_shared_by_threads_stays_bounded_and_answers_only_its_own_values() -> None:
    import threading

    cache = KeyCache(8)
    wrong: list[tuple[int, object]] = []

    def worker(seed: int) -> None:
        for n in range(20_000):
            slot = (n * 7 + seed) % 40
            value = cache.get(slot)
            if value is None:
                cache.put(slot, f"value-{slot}")
            elif value != f"value-{slot}":
                wrong.append((slot, value))

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    assert len(cache) == 8


# ----------------------------------------------------------------------------- no key material out


def _secrets(ksn: str) -> list[str]:
    key = dukpt.tdes_transaction_key(BDK_CLEAR, ksn)
    return [to_hex(BDK_CLEAR), to_hex(ZPK_CLEAR), to_hex(key), to_hex(dukpt.tdes_pin_key(key)),
            to_hex(dukpt.tdes_mac_request_key(key)), to_hex(dukpt.tdes_mac_response_key(key)),
            to_hex(dukpt.tdes_ipek(BDK_CLEAR, ksn)), ksn, ksn[-10:]]  # fmt: skip


def test_repr_of_the_caches_and_of_the_hsm_show_no_key_material() -> None:
    hsm = Hsm()
    ksn = KSNS[0]
    answer(hsm, "GW", gw("41", BDK, ksn, ANNEX_A_MESSAGE))
    answer(hsm, "G0", g0(BDK, ksn, "1B9C1845EB993A7A", ANNEX_A_ACCOUNT))
    shown = repr(hsm._dukpt_keys) + repr(hsm._lmk_keys) + repr(hsm) + str(hsm._lmk_keys)
    assert shown.count("KeyCache(") >= 2
    for secret in _secrets(ksn) + [BDK, ZPK]:
        assert secret not in shown and secret.lower() not in shown


async def test_the_audit_log_holds_no_key_material(tmp_path: Path) -> None:
    # One authorisation's commands through the real server, twice (cache miss, then hits),
    # with the audit log as `eum hsm` writes it; scanned as tests/test_hsm_server.py does.
    from test_hsm_server import Client

    ksn = KSNS[0]
    key = dukpt.tdes_transaction_key(BDK_CLEAR, ksn)
    request_mac = to_hex(retail_mac_once(dukpt.tdes_mac_request_key(key), ANNEX_A_MESSAGE))
    commands = [b"0001GW" + gw("11", BDK, ksn, ANNEX_A_MESSAGE, request_mac),
                b"0002G0" + g0(BDK, ksn, "1B9C1845EB993A7A", ANNEX_A_ACCOUNT).encode(),
                b"0003GW" + gw("42", BDK, ksn, ANNEX_A_MESSAGE)] * 2  # fmt: skip
    server = HsmServer(HsmConfig(port=0, log_dir=tmp_path))
    async with server as hsm:
        client = await Client.connect(hsm.port)
        answers = [await client.call(cmd) for cmd in commands]
        await client.close()
    server.audit.close()
    assert [a[6:8] for a in answers] == [b"00"] * 6
    assert answers[0] == answers[3] and answers[1] == answers[4] and answers[2] == answers[5]
    text = (tmp_path / "hsm-audit.jsonl").read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["command"] for line in lines] == ["GW", "G0", "GW"] * 2
    assert [line["kcv"]["bdk"] for line in lines] == ["08D7B4"] * 6  # the KCV from the cache = computed
    assert lines[1]["kcv"] == lines[4]["kcv"]
    pin_block_out = answers[1][8:24].decode()
    for secret in _secrets(ksn) + [request_mac, answers[2][8:].decode(), pin_block_out, "1B9C1845EB993A7A",
                                   ANNEX_A_ACCOUNT, BDK[1:], ZPK[1:]]:  # fmt: skip
        assert secret not in text and secret.lower() not in text, "audit log leaks key material"


# ----------------------------------------------------------------------------- the benchmark


def test_the_auth_mix_benchmark_runs_both_paths_on_this_tree() -> None:
    # benchmarks/micro.py --hsm-auth-mix, tiny: every answer is checked "00" inside, and both
    # variants answer the first authorisations byte for byte alike.
    from benchmarks.micro import ROOT, hsm_auth_mix

    result = hsm_auth_mix(ROOT, rounds=2, block=8, terminals=4, warm=4)
    assert result["cache_on"] > 0 and result["cache_off"] > 0
    assert len(result["runs"]["cache_on"]) == len(result["runs"]["cache_off"]) == 2
