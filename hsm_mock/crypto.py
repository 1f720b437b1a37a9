"""Cryptographic primitives of the software HSM: DES/TDES, AES, MACs, parity, check values.

Pure functions, bytes in and bytes out, on the `cryptography` package only. No I/O, no
logging; nothing here ever puts a key, PIN or data value into an exception message.

Hot-path notes (docs/performance.md, "Crypto costs on this machine kind"): building a `Cipher` and a context costs
about 4 µs on the AMD VM (14 µs on the Intel one), half of it `Cipher`'s argument checks, which
contexts here skip ("contexts" below); an update on a reused context about 0.4 µs. ECB is stateless, so one encryptor
and one decryptor context per key can serve any number of block-aligned `update()` calls and
are never finalised. They are cached per key *and per thread* (contexts are not thread-safe),
in an LRU of bounded size. CBC reuses one long-lived context per key too, by folding the
chaining state into the first block (see `_Contexts`). AES-CMAC copies a keyed template
(`CMAC.copy()`). Keys used once (DUKPT intermediates) bypass the cache (`*_once`); where the
optional build compiled hsm_mock/_des.c, their TDES and the retail MAC run there instead, one
call without a cipher context (`DES_COMPILED`; docs/performance.md, "DES for keys used once, in
C"), and `cryptography` stays the reference (EUM_PURE_PYTHON=1 selects it).

TDES keys: 8-byte keys run as K|K|K (single DES), 16-byte keys as K1|K2|K1, 24-byte keys as
given. We expand to 24 bytes ourselves because `cryptography` deprecates short TDES keys.
"""

from __future__ import annotations

import binascii
import os
import threading
from functools import lru_cache
from typing import Any

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

DES_BLOCK_SIZE = 8
AES_BLOCK_SIZE = 16
TDES_KEY_SIZES = (8, 16, 24)
AES_KEY_SIZES = (16, 24, 32)
CIPHER_CACHE_SIZE_MAX = 2048  # keys (per thread) whose ECB contexts stay warm
MAC_PADDINGS = (0, 1, 2, 3)  # 0 = none (data must be block-aligned), then ISO/IEC 9797-1 methods 1..3

ZERO_BLOCK_DES = bytes(DES_BLOCK_SIZE)
ZERO_BLOCK_AES = bytes(AES_BLOCK_SIZE)

# Mode objects hold no key and no state (CBC only its IV), so one instance serves every Cipher:
# building `modes.ECB()` / `modes.CBC(iv)` costs about as much as the rest of a one-shot
# Cipher's set-up (docs/performance.md, "Issue 10 levers").
_ECB = modes.ECB()
_CBC_ZERO = {DES_BLOCK_SIZE: modes.CBC(ZERO_BLOCK_DES), AES_BLOCK_SIZE: modes.CBC(ZERO_BLOCK_AES)}


# ----------------------------------------------------------------------------- contexts
#
# `Cipher(algorithm, mode).encryptor()` checks its arguments in Python (ABC isinstance checks,
# the mode against the algorithm) and then calls the Rust binding's create_encryption_ctx.
# Every context here is built from an algorithm object this module made (its key size checked
# by TripleDES/AES) and one of the two mode constants above, whose IV fits its algorithm's
# block by construction, so those checks cannot fail: where the binding has these two
# functions (cryptography 48.0 and 50.0 have them), contexts come straight from it, at half
# the cost of a one-shot set-up (docs/performance.md, "Crypto contexts without the Python
# checks").
# The binding is private: it is only used after it produced, at import, the same bytes as the
# public API for TDES and AES in ECB and CBC, both ways; otherwise (a future cryptography
# moved it) the public API is used. tests/test_crypto_contexts.py compares the two paths.


def public_encryptor(algorithm: algorithms.AES | TripleDES, mode: modes.Mode):
    return Cipher(algorithm, mode).encryptor()


def public_decryptor(algorithm: algorithms.AES | TripleDES, mode: modes.Mode):
    return Cipher(algorithm, mode).decryptor()


def _binding_contexts():
    """(encryptor, decryptor) factories of the Rust binding, or None when they are missing or
    disagree with the public API on the self-check."""
    try:
        # the submodule through its parent's attribute: it is not in sys.modules under its own
        # name, where mypyc's compiled `from … import` looks (a compiled build found no binding)
        import cryptography.hazmat.bindings._rust as rust

        rust_openssl = rust.openssl
        enc, dec = rust_openssl.ciphers.create_encryption_ctx, rust_openssl.ciphers.create_decryption_ctx
        data = bytes(range(32))
        for algorithm, block in ((TripleDES(bytes(range(1, 25))), DES_BLOCK_SIZE),
                                 (algorithms.AES(bytes(range(1, 17))), AES_BLOCK_SIZE)):
            for mode in (_ECB, _CBC_ZERO[block]):
                if enc(algorithm, mode).update(data) != public_encryptor(algorithm, mode).update(data):
                    return None
                if dec(algorithm, mode).update(data) != public_decryptor(algorithm, mode).update(data):
                    return None
    except Exception:  # noqa: BLE001 - any surprise from a private API: use the public one
        return None
    return enc, dec


_BINDING = _binding_contexts()
CONTEXTS_FROM_BINDING = _BINDING is not None
encryptor, decryptor = _BINDING if _BINDING is not None else (public_encryptor, public_decryptor)


def _compiled_des():  # type: ignore[no-untyped-def]
    """hsm_mock/_des.c's module where the optional build made it, unless EUM_PURE_PYTHON=1 asks
    for `cryptography` (as it does for the switch's compiled modules, switch/compiled.py), or it
    disagrees with `cryptography` on a self-check at import (a build from other sources): then
    None, and every caller uses `cryptography`. tests/test_des_c.py compares the two paths."""
    if os.environ.get("EUM_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from hsm_mock import _des  # type: ignore[attr-defined]
    except ImportError:
        return None
    key, data = bytes(range(1, 25)), bytes(range(32))
    reference = public_encryptor(TripleDES(key), _ECB).update(data)
    if _des.ecb(key, data, False) != reference or _des.ecb(key, reference, True) != data:
        return None
    return _des


_DES = _compiled_des()
DES_COMPILED = _DES is not None


class HsmCryptoError(ValueError):
    """A cryptographic input is unusable. `code` is the payShield error code to answer with.

    Messages name the field and the rule, never the value: keys, PINs, PANs and data stay out.
    """

    def __init__(self, message: str, *, code: str = "15") -> None:
        super().__init__(message)
        self.code = code


class KeyParityError(HsmCryptoError):
    """A DES/TDES key does not have odd parity (payShield 10 source / 11 destination)."""

    def __init__(self, message: str = "key parity error", *, code: str = "10") -> None:
        super().__init__(message, code=code)


# ----------------------------------------------------------------------------- small helpers


def xor(a: bytes, b: bytes) -> bytes:
    """Byte-wise XOR of two equally long strings: in hsm_mock/_des.c where the build made it
    (two bytes objects), else through Python's ints (the reference; tests/test_des_c.py
    compares the two)."""
    if len(a) != len(b):
        raise HsmCryptoError(f"xor operands differ in length ({len(a)} vs {len(b)} bytes)")
    if _DES is not None and type(a) is bytes and type(b) is bytes:
        return _DES.xor(a, b)
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _xor3(a: bytes, b: bytes, c: bytes) -> bytes:
    # One block: a ⊕ b ⊕ c in a single big-int pass (the CBC hot path).
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big") ^ int.from_bytes(c, "big")).to_bytes(len(a), "big")


_a2b_hex = binascii.a2b_hex


def unhex(text: str | bytes, *, what: str = "data", size: int | None = None) -> bytes:
    """Hex text (or bytes passed through) to bytes; the error names `what`, not the value."""
    if type(text) is not str and isinstance(text, (bytes, bytearray, memoryview)):  # text first: the usual case
        raw = bytes(text)
    else:
        try:
            # a module function: `bytes.fromhex` binds the class method on every call from
            # compiled code (≈ 700 instructions more), and accepts spaces between digits
            raw = _a2b_hex(text)
        except (ValueError, TypeError):
            if isinstance(text, str) and len(text) % 2:
                raise HsmCryptoError(f"{what} has an odd number of hex digits") from None
            raise HsmCryptoError(f"{what} is not valid hex") from None
    if size is not None and len(raw) != size:
        raise HsmCryptoError(f"{what} must be {size} bytes, got {len(raw)}")
    return raw


def to_hex(data: bytes) -> str:
    """Upper-case hex, the form payShield uses on the wire."""
    return data.hex().upper()


# ----------------------------------------------------------------------------- parity


def _odd_parity_byte(b: int) -> int:
    # Keep the 7 high bits, set the low bit so the byte has an odd number of 1s.
    high = b & 0xFE
    return high | (0 if bin(high).count("1") % 2 else 1)


_ODD_PARITY = bytes(_odd_parity_byte(b) for b in range(256))


def has_odd_parity(key: bytes) -> bool:
    """True when every byte of a DES/TDES key has an odd number of 1 bits."""
    return key == key.translate(_ODD_PARITY)


def fix_parity(key: bytes) -> bytes:
    """Adjust the low bit of each byte so the key has odd parity (payShield does so on generation)."""
    return bytes(key).translate(_ODD_PARITY)


def check_parity(key: bytes, *, code: str = "10") -> None:
    """Raise KeyParityError (with the caller's payShield code, 10 or 11) unless parity is odd."""
    if not has_odd_parity(key):
        raise KeyParityError(code=code)


# ----------------------------------------------------------------------------- TDES


def expand_tdes_key(key: bytes) -> bytes:
    """8 → K|K|K, 16 → K1|K2|K1, 24 → unchanged; anything else is error 27 (key length)."""
    n = len(key)
    if n == 24:
        return bytes(key)
    if n == 16:
        return bytes(key) + bytes(key[:8])
    if n == 8:
        return bytes(key) * 3
    raise HsmCryptoError(f"TDES key must be 8, 16 or 24 bytes, got {n}", code="27")


class _Contexts:
    """Cipher contexts of one key in one thread, reused for every call and never finalised.

    ECB is stateless, so its two contexts serve any block-aligned update. A CBC context
    carries the last ciphertext block as state; we keep that block and fold it into the first
    block of the next message (encrypt: feed P1 ⊕ IV ⊕ state; decrypt: fix D(C1) ⊕ state up
    with state ⊕ IV), which turns one long-lived context into fresh CBC runs with any IV.
    """

    __slots__ = (
        "_algorithm", "_block", "ecb_encryptor", "ecb_decryptor", "_cbc_enc", "_cbc_dec", "_enc_state", "_dec_state",
    )  # fmt: skip

    def __init__(self, algorithm: algorithms.AES | TripleDES, block: int) -> None:
        self._algorithm = algorithm
        self._block = block
        self.ecb_encryptor = encryptor(algorithm, _ECB)
        self.ecb_decryptor = decryptor(algorithm, _ECB)
        self._cbc_enc: Any = None  # made on the first CBC call: most keys only ever see ECB
        self._cbc_dec: Any = None
        self._enc_state = self._dec_state = bytes(block)

    def cbc_encrypt(self, data: bytes, iv: bytes) -> bytes:
        if not data:
            return b""
        if self._cbc_enc is None:
            self._cbc_enc = encryptor(self._algorithm, _CBC_ZERO[self._block])
        b = self._block
        out = self._cbc_enc.update(_xor3(data[:b], iv, self._enc_state) + data[b:])
        self._enc_state = out[-b:]
        return out

    def cbc_decrypt(self, data: bytes, iv: bytes) -> bytes:
        if not data:
            return b""
        if self._cbc_dec is None:
            self._cbc_dec = decryptor(self._algorithm, _CBC_ZERO[self._block])
        b = self._block
        out = self._cbc_dec.update(data)
        first = _xor3(out[:b], self._dec_state, iv)
        self._dec_state = data[-b:]
        return first + out[b:]


@lru_cache(maxsize=CIPHER_CACHE_SIZE_MAX)
def _tdes_contexts(key: bytes, _thread: int) -> _Contexts:
    # Keyed on the key as given, so a cache hit skips the 8/16 → 24-byte expansion.
    return _Contexts(TripleDES(expand_tdes_key(key)), DES_BLOCK_SIZE)


@lru_cache(maxsize=CIPHER_CACHE_SIZE_MAX)
def _aes_contexts(key: bytes, _thread: int) -> _Contexts:
    return _Contexts(algorithms.AES(_aes_key(key)), AES_BLOCK_SIZE)


def _aligned(data: bytes, block: int, what: str) -> None:
    if len(data) % block:
        raise HsmCryptoError(f"{what} length must be a multiple of {block} bytes, got {len(data)}", code="15")


def _iv(iv: bytes, block: int) -> bytes:
    if len(iv) != block:
        raise HsmCryptoError(f"IV must be {block} bytes")
    return iv


def tdes_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """TDES-ECB encryption (8/16/24-byte key) of block-aligned data, on a cached context."""
    _aligned(data, DES_BLOCK_SIZE, "TDES data")
    return _tdes_contexts(bytes(key), threading.get_ident()).ecb_encryptor.update(data)


def tdes_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """TDES-ECB decryption (8/16/24-byte key) of block-aligned data, on a cached context."""
    _aligned(data, DES_BLOCK_SIZE, "TDES data")
    return _tdes_contexts(bytes(key), threading.get_ident()).ecb_decryptor.update(data)


def tdes_ecb_encrypt_once(key: bytes, data: bytes) -> bytes:
    """TDES-ECB for a key used once (DUKPT intermediates): no cache, so hot keys stay cached."""
    _aligned(data, DES_BLOCK_SIZE, "TDES data")
    if _DES is not None:
        return _DES.ecb(expand_tdes_key(key), data, False)
    enc = encryptor(TripleDES(expand_tdes_key(key)), _ECB)
    return enc.update(data) + enc.finalize()


def tdes_ecb_decrypt_once(key: bytes, data: bytes) -> bytes:
    """TDES-ECB decryption for a key used once (a DUKPT PIN key): no cache, one context."""
    _aligned(data, DES_BLOCK_SIZE, "TDES data")
    if _DES is not None:
        return _DES.ecb(expand_tdes_key(key), data, True)
    dec = decryptor(TripleDES(expand_tdes_key(key)), _ECB)
    return dec.update(data) + dec.finalize()


def tdes_cbc_encrypt(key: bytes, data: bytes, *, iv: bytes = ZERO_BLOCK_DES) -> bytes:
    """TDES-CBC encryption, no padding (data must be block-aligned), on a cached context."""
    _aligned(data, DES_BLOCK_SIZE, "TDES data")
    return _tdes_contexts(bytes(key), threading.get_ident()).cbc_encrypt(data, _iv(iv, DES_BLOCK_SIZE))


def tdes_cbc_decrypt(key: bytes, data: bytes, *, iv: bytes = ZERO_BLOCK_DES) -> bytes:
    """TDES-CBC decryption, no padding removal, on a cached context."""
    _aligned(data, DES_BLOCK_SIZE, "TDES data")
    return _tdes_contexts(bytes(key), threading.get_ident()).cbc_decrypt(data, _iv(iv, DES_BLOCK_SIZE))


# ----------------------------------------------------------------------------- AES


def _aes_key(key: bytes) -> bytes:
    if len(key) not in AES_KEY_SIZES:
        raise HsmCryptoError(f"AES key must be 16, 24 or 32 bytes, got {len(key)}", code="27")
    return bytes(key)


def aes_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """AES-ECB encryption of block-aligned data, on a cached context."""
    _aligned(data, AES_BLOCK_SIZE, "AES data")
    return _aes_contexts(bytes(key), threading.get_ident()).ecb_encryptor.update(data)


def aes_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    """AES-ECB decryption of block-aligned data, on a cached context."""
    _aligned(data, AES_BLOCK_SIZE, "AES data")
    return _aes_contexts(bytes(key), threading.get_ident()).ecb_decryptor.update(data)


def aes_ecb_encrypt_once(key: bytes, data: bytes) -> bytes:
    """AES-ECB for a key used once (AES DUKPT intermediates): bypasses the context cache."""
    _aligned(data, AES_BLOCK_SIZE, "AES data")
    enc = encryptor(algorithms.AES(_aes_key(key)), _ECB)
    return enc.update(data) + enc.finalize()


def aes_cbc_encrypt(key: bytes, data: bytes, *, iv: bytes = ZERO_BLOCK_AES) -> bytes:
    """AES-CBC encryption, no padding (data must be block-aligned), on a cached context."""
    _aligned(data, AES_BLOCK_SIZE, "AES data")
    return _aes_contexts(bytes(key), threading.get_ident()).cbc_encrypt(data, _iv(iv, AES_BLOCK_SIZE))


def aes_cbc_decrypt(key: bytes, data: bytes, *, iv: bytes = ZERO_BLOCK_AES) -> bytes:
    """AES-CBC decryption, no padding removal, on a cached context."""
    _aligned(data, AES_BLOCK_SIZE, "AES data")
    return _aes_contexts(bytes(key), threading.get_ident()).cbc_decrypt(data, _iv(iv, AES_BLOCK_SIZE))


@lru_cache(maxsize=CIPHER_CACHE_SIZE_MAX)
def _cmac_template(key: bytes, _thread: int) -> cmac.CMAC:
    return cmac.CMAC(algorithms.AES(key))


def aes_cmac(key: bytes, data: bytes, *, length: int = AES_BLOCK_SIZE) -> bytes:
    """AES-CMAC (NIST SP 800-38B / RFC 4493), optionally truncated to `length` leftmost bytes."""
    if not 1 <= length <= AES_BLOCK_SIZE:
        raise HsmCryptoError("CMAC length must be 1..16 bytes")
    mac = _cmac_template(_aes_key(key), threading.get_ident()).copy()
    mac.update(data)
    return mac.finalize()[:length]


# ----------------------------------------------------------------------------- check values


def key_check_value(key: bytes, *, length: int = 6) -> str:
    """TDES key check value: encrypt 8 zero bytes, keep the first `length` hex digits (6 or 16)."""
    if not 1 <= length <= 16:
        raise HsmCryptoError("check value length must be 1..16 hex digits")
    return to_hex(tdes_ecb_encrypt(key, ZERO_BLOCK_DES))[:length]


def aes_key_check_value(key: bytes, *, length: int = 6) -> str:
    """AES key check value, the CMAC of one zero block (the X9.24-1:2017 / TR-31 AES convention)."""
    if not 1 <= length <= 32:
        raise HsmCryptoError("check value length must be 1..32 hex digits")
    return to_hex(aes_cmac(key, ZERO_BLOCK_AES))[:length]


# ----------------------------------------------------------------------------- ISO/IEC 9797-1 MACs


def pad_iso9797(data: bytes, method: int, *, block_size: int = DES_BLOCK_SIZE) -> bytes:
    """ISO/IEC 9797-1 padding. 0: none (must be aligned); 1: zeros (empty data → one zero
    block); 2: 0x80 then zeros; 3: a block holding the bit length, then method-1 zeros."""
    if method == 0:
        _aligned(data, block_size, "MAC data")
        if not data:
            raise HsmCryptoError("MAC data must not be empty without padding", code="80")
        return bytes(data)
    if method == 1:
        if not data:
            return bytes(block_size)
        return bytes(data) + bytes(-len(data) % block_size)
    if method == 2:
        padded = bytes(data) + b"\x80"
        return padded + bytes(-len(padded) % block_size)
    if method == 3:
        bit_length = (8 * len(data)).to_bytes(block_size, "big")
        return bit_length + bytes(data) + bytes(-len(data) % block_size)
    raise HsmCryptoError(f"MAC padding method must be one of {MAC_PADDINGS}")


def _mac_length(length: int) -> None:
    if not 1 <= length <= DES_BLOCK_SIZE:
        raise HsmCryptoError("MAC length must be 1..8 bytes")


def mac_iso9797_alg1(key: bytes, data: bytes, *, padding: int = 1, length: int = DES_BLOCK_SIZE) -> bytes:
    """ISO/IEC 9797-1 MAC algorithm 1: CBC-MAC, zero IV, under the whole key (DES with an
    8-byte key, TDES with 16/24 bytes, as payShield M6 mode 01 does)."""
    _mac_length(length)
    padded = pad_iso9797(data, padding)
    return tdes_cbc_encrypt(key, padded)[-DES_BLOCK_SIZE:][:length]


def mac_iso9797_alg3(key: bytes, data: bytes, *, padding: int = 1, length: int = DES_BLOCK_SIZE) -> bytes:
    """ISO/IEC 9797-1 MAC algorithm 3, the ANSI X9.19 retail MAC: single-DES CBC under K (left
    half), then the last block is decrypted under K' (right half) and encrypted under K."""
    if len(key) != 16:
        raise HsmCryptoError(f"retail MAC key must be 16 bytes (K||K'), got {len(key)}", code="27")
    _mac_length(length)
    k, k_prime = key[:8], key[8:]
    padded = pad_iso9797(data, padding)
    chained = tdes_cbc_encrypt(k, padded)[-DES_BLOCK_SIZE:]
    return tdes_ecb_encrypt(k, tdes_ecb_decrypt(k_prime, chained))[:length]


def retail_mac_once(key: bytes, data: bytes, *, length: int = DES_BLOCK_SIZE) -> bytes:
    """MAC algorithm 3 (X9.19), padding method 1, for a key used once (a DUKPT transaction's
    MAC key): two fresh contexts, nothing cached. The final E_K(D_K'(·)) after the single-DES
    CBC is a 2-key TDES-EDE encryption of the last block (P_n ⊕ C_{n-1}) under K||K', so the
    single-DES CBC runs over the first n-1 blocks only; equal to mac_iso9797_alg3, which
    keeps contexts warm for long-lived keys."""
    if len(key) != 16:
        raise HsmCryptoError(f"retail MAC key must be 16 bytes (K||K'), got {len(key)}", code="27")
    _mac_length(length)
    padded = pad_iso9797(data, 1)
    if _DES is not None:
        return _DES.retail_mac(bytes(key), padded)[:length]
    chained = ZERO_BLOCK_DES
    if len(padded) > DES_BLOCK_SIZE:
        cbc = encryptor(TripleDES(bytes(key[:8]) * 3), _CBC_ZERO[DES_BLOCK_SIZE])
        chained = cbc.update(padded[:-DES_BLOCK_SIZE])[-DES_BLOCK_SIZE:]
    last = xor(padded[-DES_BLOCK_SIZE:], chained)
    ede = encryptor(TripleDES(bytes(key) + bytes(key[:8])), _ECB)
    return ede.update(last)[:length]


def combine_components(components: list[bytes]) -> bytes:
    """A key formed from clear components held by separate custodians: their XOR, with odd
    parity restored (an even number of odd-parity components gives even parity)."""
    if len(components) < 2 or len({len(c) for c in components}) != 1:
        raise HsmCryptoError("key components: at least two, all of one length", code="15")
    key = bytes(len(components[0]))
    for component in components:
        key = xor(key, component)
    return fix_parity(key)
