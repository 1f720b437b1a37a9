"""hsm_mock/_des.c, the optional compiled DES for keys used once, against `cryptography`.

hsm_mock/crypto.py runs `tdes_ecb_encrypt_once`, `tdes_ecb_decrypt_once`, `retail_mac_once` and
`xor`, and hsm_mock/dukpt.py the TDES derivation's step (`future_key`), in the C module where the
build made it (`DES_COMPILED`), and through `cryptography` and Python otherwise or with
EUM_PURE_PYTHON=1 (docs/performance.md, "DES for keys used once, in C" and "The HSM's XOR and
DUKPT step in C (kept)"). Here:

- published known answers on the C module itself: FIPS PUB 81 Appendix B (single DES, ECB) and
  NIST SP 800-67 Rev. 1 Appendix B (three-key TDEA, with the example's own "qufck");
- differential: the same bytes from both paths for random keys of 8, 16 and 24 bytes, data of
  one to six blocks, both ways, and the X9.19 MAC for data of 0 to 70 bytes and every length;
- where a C compiler is found the build has it, EUM_PURE_PYTHON=1 rules it out, and the
  DUKPT, PIN block and MAC vector tests pass on the pure path too (the normal run takes the
  compiled one).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from hsm_mock import crypto
from switch import compiled

ROOT = Path(__file__).resolve().parents[1]
needs_c = pytest.mark.skipif(not crypto.DES_COMPILED, reason="no compiled DES in this install (or EUM_PURE_PYTHON=1)")
H = bytes.fromhex


@pytest.fixture
def pure(monkeypatch):
    """hsm_mock/crypto.py on `cryptography` alone, as without the build."""
    monkeypatch.setattr(crypto, "_DES", None)


def both(fn, *args, **kwargs) -> tuple[bytes, bytes]:
    """fn's result on the compiled path, then on `cryptography`'s."""
    c = fn(*args, **kwargs)
    saved, crypto._DES = crypto._DES, None
    try:
        return c, fn(*args, **kwargs)
    finally:
        crypto._DES = saved


@needs_c
def test_fips_81_single_des_ecb_known_answer():
    from hsm_mock import _des

    # FIPS PUB 81, Appendix B, Table B1 (ECB): K 0123456789ABCDEF, "Now is the time for all "
    key = H("0123456789ABCDEF") * 3  # K|K|K: single DES
    plain = b"Now is the time for all "
    cipher = "3FA40E8A984D4815" "6A271787AB8883F9" "893D51EC4B563B53"
    assert _des.ecb(key, plain, False).hex().upper() == cipher
    assert _des.ecb(key, H(cipher), True) == plain


@needs_c
def test_sp_800_67_three_key_tdea_known_answer():
    from hsm_mock import _des

    # NIST SP 800-67 Rev. 1, Appendix B: K1 0123456789ABCDEF, K2 23456789ABCDEF01,
    # K3 456789ABCDEF0123, plaintext "The qufck brown fox jump" (sic).
    key = H("0123456789ABCDEF" "23456789ABCDEF01" "456789ABCDEF0123")
    cipher = "A826FD8CE53B855F" "CCE21C8112256FE6" "68D5C05DD9B6B900"
    assert _des.ecb(key, b"The qufck brown fox jump", False).hex().upper() == cipher
    assert _des.ecb(key, H(cipher), True) == b"The qufck brown fox jump"


@needs_c
def test_the_c_module_rejects_what_it_cannot_take():
    from hsm_mock import _des

    with pytest.raises(ValueError, match="24 bytes"):
        _des.ecb(bytes(16), bytes(8), False)
    with pytest.raises(ValueError, match="multiple of 8"):
        _des.ecb(bytes(24), bytes(7), False)
    with pytest.raises(ValueError, match="16 bytes"):
        _des.retail_mac(bytes(24), bytes(8))
    with pytest.raises(ValueError, match="multiple of 8"):
        _des.retail_mac(bytes(16), b"")


@needs_c
def test_tdes_once_is_the_same_on_both_paths_for_random_keys_and_data():
    rng = random.Random(20261130)
    for i in range(1500):
        size = (8, 16, 24)[i % 3]
        key = rng.randbytes(size)
        data = rng.randbytes(8 * rng.randint(1, 6))
        c, p = both(crypto.tdes_ecb_encrypt_once, key, data)
        assert c == p, (size, i)
        c, p = both(crypto.tdes_ecb_decrypt_once, key, data)
        assert c == p, (size, i)
        assert crypto.tdes_ecb_decrypt_once(key, crypto.tdes_ecb_encrypt_once(key, data)) == data


@needs_c
def test_retail_mac_once_is_the_same_on_both_paths_for_every_length():
    rng = random.Random(11)
    for n in range(71):
        for length in (4, 8):
            key, data = rng.randbytes(16), rng.randbytes(n)
            c, p = both(crypto.retail_mac_once, key, data, length=length)
            assert c == p, (n, length)
            assert c == crypto.mac_iso9797_alg3(key, data, padding=1, length=length)


@needs_c
def test_x9_19_counter_1_macs_on_the_c_path():
    # the same published values as tests/test_hsm_crypto.py, on this path explicitly
    from hsm_mock import dukpt

    key = dukpt.tdes_transaction_key(H("0123456789ABCDEFFEDCBA9876543210"), "FFFF9876543210E00001")
    mac = crypto.retail_mac_once(dukpt.tdes_mac_request_key(key), b"4012345678909D987")
    assert mac.hex().upper() == "9CCC78173FC4FB64"
    assert crypto.retail_mac_once(dukpt.tdes_mac_response_key(key), b"4012345678909D987").hex().upper() == (
        "20364223C1FF00FA")


@needs_c
def test_xor_is_the_same_on_both_paths_and_the_c_module_takes_only_bytes_of_one_length():
    from hsm_mock import _des

    rng = random.Random(20261201)
    for n in (0, 1, 3, 8, 10, 16, 24, 32):
        for _ in range(40):
            a, b = rng.randbytes(n), rng.randbytes(n)
            c, p = both(crypto.xor, a, b)
            assert c == p == bytes(x ^ y for x, y in zip(a, b)), n
    # the X9.24-1 key mask on the Annex A BDK, as tdes_ipek applies it (the XOR written out)
    assert crypto.xor(H("0123456789ABCDEFFEDCBA9876543210"), H("C0C0C0C000000000C0C0C0C000000000")) == H(
        "C1E385A789ABCDEF3E1C7A5876543210")
    with pytest.raises(ValueError, match="differ in length"):
        _des.xor(bytes(8), bytes(16))
    with pytest.raises(TypeError, match="two bytes objects"):
        _des.xor(bytearray(8), bytes(8))
    with pytest.raises(crypto.HsmCryptoError, match="differ in length"):
        crypto.xor(bytes(8), bytes(16))


@needs_c
def test_the_dukpt_step_in_c_is_the_python_reference_for_random_keys_and_registers():
    """hsm_mock/_des.c `future_key` against hsm_mock/dukpt.py `_nonreversible_key`, and the
    published ANSI X9.24-1:2009 Annex A PIN keys (BDK 0123456789ABCDEFFEDCBA9876543210, KSN
    FFFF9876543210E0000x; the first rows of tests/test_hsm_crypto.py's table) derived on each
    path."""
    from hsm_mock import _des, dukpt

    rng = random.Random(924)
    for _ in range(500):
        key, register = rng.randbytes(16), rng.randbytes(8)
        assert _des.future_key(key, register) == dukpt._nonreversible_key(key, register)
    bdk = H("0123456789ABCDEFFEDCBA9876543210")
    published = {"FFFF9876543210E00001": "042666B49184CF5C68DE9628D0397B36",
                 "FFFF9876543210E00002": "C46551CEF9FD244FAA9AD834130D3B38",
                 "FFFF9876543210E00003": "0DF3D9422ACA561A47676D07AD6BAD05",
                 "FFFF9876543210E0000C": "B716E1E11CF53D7F726CAEE75C3A62B0"}
    for ksn, pin_key in published.items():
        dukpt._tdes_future_key.cache_clear()
        assert dukpt.tdes_pin_key(dukpt.tdes_transaction_key(bdk, ksn)).hex().upper() == pin_key, ksn
    saved, dukpt._C_DES = dukpt._C_DES, None
    try:
        for ksn, pin_key in published.items():
            dukpt._tdes_future_key.cache_clear()
            assert dukpt.tdes_pin_key(dukpt.tdes_transaction_key(bdk, ksn)).hex().upper() == pin_key, ksn
    finally:
        dukpt._C_DES = saved
        dukpt._tdes_future_key.cache_clear()
    with pytest.raises(ValueError, match="16-byte key and an 8-byte register"):
        _des.future_key(bytes(8), bytes(8))
    with pytest.raises(TypeError, match="two bytes objects"):
        _des.future_key(bytearray(16), bytes(8))


def test_errors_are_the_same_without_the_c_module(pure):
    with pytest.raises(crypto.HsmCryptoError, match="8, 16 or 24 bytes"):
        crypto.tdes_ecb_encrypt_once(bytes(12), bytes(8))
    with pytest.raises(crypto.HsmCryptoError, match="16 bytes"):
        crypto.retail_mac_once(bytes(8), b"data")
    assert crypto.tdes_ecb_encrypt_once(H("0123456789ABCDEF"), b"Now is t").hex().upper() == "3FA40E8A984D4815"


def test_where_a_compiler_is_found_the_build_has_the_c_des():
    if compiled.pure_wanted():
        pytest.skip("EUM_PURE_PYTHON is set for this run: the pure path is wanted")
    if not compiled.compiler_found() or os.environ.get("EUM_BUILD_PURE"):
        pytest.skip("no C compiler here (or EUM_BUILD_PURE): the pure path is the install")
    assert crypto.DES_COMPILED, (
        "a C compiler is here but hsm_mock/_des.c is not built: run `python3 -m pip install -e .` "
        "(or `python3 setup.py build_ext --inplace`)")


def test_eum_pure_python_rules_the_c_des_out():
    env = {**os.environ, compiled.PURE_ENV: "1"}
    done = subprocess.run([sys.executable, "-c", "from hsm_mock import crypto; print(crypto.DES_COMPILED)"],
                          env=env, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


@needs_c
def test_the_crypto_vector_tests_pass_on_the_pure_path_too():
    env = {**os.environ, compiled.PURE_ENV: "1"}
    files = ["tests/test_hsm_crypto.py", "tests/test_future_keys.py", "tests/test_terminal_security.py",
             "tests/test_pinblock_formats.py"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
                          env=env, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:]
    last = done.stdout.splitlines()[-1]
    assert " passed" in last and "failed" not in last and "error" not in last, last
