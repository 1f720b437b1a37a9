"""Cipher contexts from cryptography's Rust binding (hsm_mock/crypto.py) against the public API.

The HSM and the terminals build their contexts through the binding's create_encryption_ctx /
create_decryption_ctx, skipping `Cipher`'s Python checks, which cannot fail for the algorithm
objects and mode constants crypto.py builds. These tests hold the two paths to the same bytes,
and run the MAC and DUKPT functions on the public path against the published vectors that
tests/test_crypto.py and tests/test_dukpt.py check on the default path.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import algorithms
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_mock import crypto


def _binding():
    try:
        from cryptography.hazmat.bindings._rust import openssl as rust_openssl

        return rust_openssl.ciphers.create_encryption_ctx, rust_openssl.ciphers.create_decryption_ctx
    except (ImportError, AttributeError):
        return None


def test_the_binding_is_used_exactly_when_it_exists_and_agrees():
    if _binding() is None:
        assert crypto.CONTEXTS_FROM_BINDING is False
        assert crypto.encryptor is crypto.public_encryptor
        pytest.skip("this cryptography has no create_encryption_ctx in its binding: the public API is used")
    assert crypto.CONTEXTS_FROM_BINDING is True
    assert crypto.encryptor is _binding()[0] and crypto.decryptor is _binding()[1]


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=24, max_size=24), blocks=st.integers(1, 6), data=st.data())
def test_tdes_contexts_agree_with_the_public_api(key, blocks, data):
    plain = data.draw(st.binary(min_size=8 * blocks, max_size=8 * blocks))
    algorithm = TripleDES(key)
    for mode in (crypto._ECB, crypto._CBC_ZERO[8]):
        assert crypto.encryptor(algorithm, mode).update(plain) == crypto.public_encryptor(algorithm, mode).update(plain)
        assert crypto.decryptor(algorithm, mode).update(plain) == crypto.public_decryptor(algorithm, mode).update(plain)


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
       blocks=st.integers(1, 4), data=st.data())
def test_aes_contexts_agree_with_the_public_api(key, blocks, data):
    plain = data.draw(st.binary(min_size=16 * blocks, max_size=16 * blocks))
    algorithm = algorithms.AES(key)
    for mode in (crypto._ECB, crypto._CBC_ZERO[16]):
        assert crypto.encryptor(algorithm, mode).update(plain) == crypto.public_encryptor(algorithm, mode).update(plain)
        assert crypto.decryptor(algorithm, mode).update(plain) == crypto.public_decryptor(algorithm, mode).update(plain)


@pytest.fixture
def public_path(monkeypatch):
    """crypto.py on the public API only, with no context cached from the other path."""
    monkeypatch.setattr(crypto, "encryptor", crypto.public_encryptor)
    monkeypatch.setattr(crypto, "decryptor", crypto.public_decryptor)
    crypto._tdes_contexts.cache_clear()
    crypto._aes_contexts.cache_clear()
    yield
    crypto._tdes_contexts.cache_clear()
    crypto._aes_contexts.cache_clear()


# ISO/IEC 9797-1:2011 B.4, MAC algorithm 3 (the ANSI X9.19 retail MAC), padding method 1, as
# tests/test_hsm_commands.py cites it: K||K' 0123456789ABCDEFFEDCBA9876543210 over
# "Now is the time for all " → A1C72E74EA3FA9B6.
X919_KEY = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
X919_DATA = b"Now is the time for all "
X919_MAC = "A1C72E74EA3FA9B6"


def test_the_public_path_gives_the_published_retail_mac(public_path):
    assert crypto.retail_mac_once(X919_KEY, X919_DATA).hex().upper() == X919_MAC
    assert crypto.mac_iso9797_alg3(X919_KEY, X919_DATA).hex().upper() == X919_MAC


def test_the_default_path_gives_the_published_retail_mac():
    assert crypto.retail_mac_once(X919_KEY, X919_DATA).hex().upper() == X919_MAC
    assert crypto.mac_iso9797_alg3(X919_KEY, X919_DATA).hex().upper() == X919_MAC


def test_the_public_path_gives_the_published_dukpt_keys(public_path):
    # ANSI X9.24-1:2009 Annex A: BDK 0123456789ABCDEFFEDCBA9876543210, KSN FFFF9876543210E00000
    # → IPEK 6AC292FAA1315B4D858AB3A3D7D5933A; KSN …E00001 → PIN key 042666B49184CF5C68DE9628D0397B36
    # (the rows tests/test_future_keys.py checks on the default path).
    from hsm_mock import dukpt

    bdk = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    assert dukpt.tdes_ipek(bdk, "FFFF9876543210E00000").hex().upper() == "6AC292FAA1315B4D858AB3A3D7D5933A"
    key = dukpt.tdes_transaction_key(bdk, "FFFF9876543210E00001")
    assert dukpt.tdes_pin_key(key).hex().upper() == "042666B49184CF5C68DE9628D0397B36"
