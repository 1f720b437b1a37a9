"""DUKPT key derivation, host side and terminal side: ANSI X9.24-1:2009 (TDES) and
ANSI X9.24-3:2017 (AES). Pure functions over bytes (hex text is accepted too).

TDES DUKPT (X9.24-1:2009)
    KSN: 10 bytes = key set id and device id (59 bits) + a 21-bit transaction counter.
    IPEK: left = TDES(BDK, leftmost 8 KSN bytes once the counter is cleared), right = the
    same under BDK ⊕ C0C0C0C000000000C0C0C0C000000000.
    Transaction key: from the IPEK, for each counter bit from the top (0x100000) down that is
    set, OR it into a register (the rightmost 8 KSN bytes, counter cleared) and run the
    non-reversible key generation process on it.
    Working keys are variants of the transaction key (XOR masks, X9.24-1:2009 Table 3):
        PIN           00000000000000FF 00000000000000FF
        MAC request   000000000000FF00 000000000000FF00
        MAC response  00000000FF000000 00000000FF000000
        data request  0000000000FF0000 0000000000FF0000
        data response 000000FF00000000 000000FF00000000
    and the data keys go through the 2009 one-way step: each half of the variant is
    TDES-encrypted under the whole variant.
    Host derivation accepts any 21-bit counter; terminals only use counters with at most 10
    one-bits (`tdes_next_ksn`). Shared intermediate keys are memoised, so consecutive
    transactions of one terminal cost one or two DES operations.

AES DUKPT (X9.24-3:2017)
    KSN: 12 bytes = initial key ID (BDK ID 4 bytes + derivation ID 4 bytes) + 32-bit counter.
    Every key is AES-ECB(parent, derivation data), with 16-byte derivation data
        version 01 | block counter 01.. | key usage (2) | algorithm (2) | length in bits (2) |
        initial key ID (8)               for the initial key (usage 8001), else
        IKID[4:8] | counter (4)          for intermediate (usage 8000) and working keys.
    Longer keys concatenate blocks with block counter 01, 02, ...
    Usage codes: 0002 key encryption, 1000 PIN, 2000 MAC generation, 2001 MAC verification,
    2002 MAC both ways, 3000 data encrypt, 3001 data decrypt, 3002 data both ways, 8000
    key derivation, 8001 initial key. Following the moov-io/dukpt test vectors (Annex B.1),
    a request MAC is made with a 2000 key and a response MAC with a 2001 key; request data is
    enciphered with a 3000 key and response data with a 3001 key.
"""

from __future__ import annotations

from enum import Enum, IntEnum
from functools import lru_cache

from hsm_mock.crypto import _DES as _C_DES  # hsm_mock/_des.c where the build made it (crypto.DES_COMPILED), else None
from hsm_mock.crypto import (
    HsmCryptoError,
    aes_ecb_encrypt_once,
    tdes_ecb_encrypt,
    tdes_ecb_encrypt_once,
    unhex,
    xor,
)

TDES_KSN_SIZE = 10
TDES_COUNTER_BITS = 21
TDES_COUNTER_MASK = (1 << TDES_COUNTER_BITS) - 1
TDES_COUNTER_ONE_BITS_MAX = 10  # X9.24-1: a terminal never uses a counter with more one-bits
AES_KSN_SIZE = 12
AES_IKID_SIZE = 8
AES_COUNTER_BITS = 32
AES_COUNTER_ONE_BITS_MAX = 16  # X9.24-3: likewise for the 32-bit AES counter

_BDK_MASK = bytes.fromhex("C0C0C0C000000000C0C0C0C000000000")
_PIN_VARIANT = bytes.fromhex("00000000000000FF00000000000000FF")
_MAC_REQUEST_VARIANT = bytes.fromhex("000000000000FF00000000000000FF00")
_MAC_RESPONSE_VARIANT = bytes.fromhex("00000000FF00000000000000FF000000")
_DATA_REQUEST_VARIANT = bytes.fromhex("0000000000FF00000000000000FF0000")
_DATA_RESPONSE_VARIANT = bytes.fromhex("000000FF00000000000000FF00000000")
DERIVATION_CACHE_SIZE_MAX = 8192


class DukptError(HsmCryptoError):
    """A KSN, BDK or derivation input is unusable (payShield answers 15)."""


def _as_bytes(value: bytes | str, *, what: str, size: int | tuple[int, ...]) -> bytes:
    raw = unhex(value, what=what)
    sizes = (size,) if isinstance(size, int) else size
    if len(raw) not in sizes:
        raise DukptError(f"{what} must be {' or '.join(map(str, sizes))} bytes, got {len(raw)}")
    return raw


# ----------------------------------------------------------------------------- TDES DUKPT


class TdesUsage(Enum):
    """Working keys a TDES DUKPT transaction key yields (X9.24-1:2009 variants)."""

    PIN = "pin"
    MAC_REQUEST = "mac-request"
    MAC_RESPONSE = "mac-response"
    DATA_REQUEST = "data-request"
    DATA_RESPONSE = "data-response"


def tdes_ksn_counter(ksn: bytes | str) -> int:
    """The 21-bit transaction counter of a 10-byte KSN."""
    raw = _as_bytes(ksn, what="KSN", size=TDES_KSN_SIZE)
    return int.from_bytes(raw[-3:], "big") & TDES_COUNTER_MASK


def tdes_ipek(bdk: bytes | str, ksn: bytes | str) -> bytes:
    """Initial PIN encryption key (16 bytes) from a double-length BDK and any KSN of the device."""
    bdk_raw = _as_bytes(bdk, what="BDK", size=16)
    raw = _as_bytes(ksn, what="KSN", size=TDES_KSN_SIZE)
    # The leftmost 64 bits of the KSN once the counter (its rightmost 21 bits) is cleared.
    base = ((int.from_bytes(raw, "big") & ~TDES_COUNTER_MASK) >> 16).to_bytes(8, "big")
    return _tdes_ipek(bdk_raw, base)


@lru_cache(maxsize=DERIVATION_CACHE_SIZE_MAX)
def _tdes_ipek(bdk: bytes, base: bytes) -> bytes:
    # The BDK is a long-lived key: its contexts are worth caching (the variant's are not).
    return tdes_ecb_encrypt(bdk, base) + tdes_ecb_encrypt_once(xor(bdk, _BDK_MASK), base)


def _nonreversible_half(key: bytes, register: bytes) -> bytes:
    # X9.24-1 non-reversible key generation, one half: (register XOR right) under DES(left), XOR right.
    left, right = key[:8], key[8:]
    return xor(tdes_ecb_encrypt_once(left, xor(register, right)), right)


def _nonreversible_key(key: bytes, register: bytes) -> bytes:
    # X9.24-1 non-reversible key generation: the right half under the key, the left under the key
    # XOR the BDK mask. The reference of hsm_mock/_des.c's `future_key` (tests/test_des_c.py).
    new_right = _nonreversible_half(key, register)
    new_left = _nonreversible_half(xor(key, _BDK_MASK), register)
    return new_left + new_right


@lru_cache(maxsize=DERIVATION_CACHE_SIZE_MAX)
def _tdes_future_key(key: bytes, register: bytes) -> bytes:
    # in C where the build made it: one call, no slices or XORs through Python's objects
    # (docs/performance.md, "The HSM's XOR and DUKPT step in C (kept)")
    if _C_DES is not None:
        return _C_DES.future_key(key, register)
    return _nonreversible_key(key, register)


def tdes_derive_key(ipek: bytes | str, ksn: bytes | str) -> bytes:
    """The transaction key (16 bytes, before any variant) for the KSN's counter, from the IPEK."""
    key = _as_bytes(ipek, what="IPEK", size=16)
    ksn8 = _as_bytes(ksn, what="KSN", size=TDES_KSN_SIZE)[-8:]
    value = int.from_bytes(ksn8, "big")
    counter = value & TDES_COUNTER_MASK
    register = value & ~TDES_COUNTER_MASK
    bit = 1 << (TDES_COUNTER_BITS - 1)
    while bit:
        if counter & bit:
            register |= bit
            key = _tdes_future_key(key, register.to_bytes(8, "big"))
        bit >>= 1
    return key


def tdes_transaction_key(bdk: bytes | str, ksn: bytes | str) -> bytes:
    """BDK + KSN → transaction key (host side: IPEK, then the counter's derivation path)."""
    return tdes_derive_key(tdes_ipek(bdk, ksn), ksn)


def tdes_pin_key(transaction_key: bytes) -> bytes:
    """PIN encryption key: the PIN variant of the transaction key."""
    return xor(transaction_key, _PIN_VARIANT)


def tdes_mac_request_key(transaction_key: bytes) -> bytes:
    """MAC key for request messages (terminal → host)."""
    return xor(transaction_key, _MAC_REQUEST_VARIANT)


def tdes_mac_response_key(transaction_key: bytes) -> bytes:
    """MAC key for response messages (host → terminal)."""
    return xor(transaction_key, _MAC_RESPONSE_VARIANT)


def tdes_data_request_variant(transaction_key: bytes) -> bytes:
    """The data-request variant itself (before the 2009 one-way step)."""
    return xor(transaction_key, _DATA_REQUEST_VARIANT)


def tdes_data_response_variant(transaction_key: bytes) -> bytes:
    """The data-response variant itself (before the 2009 one-way step)."""
    return xor(transaction_key, _DATA_RESPONSE_VARIANT)


def _one_way(variant: bytes) -> bytes:
    # X9.24-1:2009 data keys: each half encrypted under the whole variant key.
    return tdes_ecb_encrypt_once(variant, variant[:8]) + tdes_ecb_encrypt_once(variant, variant[8:])


def tdes_data_request_key(transaction_key: bytes) -> bytes:
    """Data encryption key for requests (one-way function of the data-request variant)."""
    return _one_way(tdes_data_request_variant(transaction_key))


def tdes_data_response_key(transaction_key: bytes) -> bytes:
    """Data encryption key for responses (one-way function of the data-response variant)."""
    return _one_way(tdes_data_response_variant(transaction_key))


_TDES_WORKING = {
    TdesUsage.PIN: tdes_pin_key,
    TdesUsage.MAC_REQUEST: tdes_mac_request_key,
    TdesUsage.MAC_RESPONSE: tdes_mac_response_key,
    TdesUsage.DATA_REQUEST: tdes_data_request_key,
    TdesUsage.DATA_RESPONSE: tdes_data_response_key,
}


def tdes_working_key(bdk: bytes | str, ksn: bytes | str, usage: TdesUsage) -> bytes:
    """BDK + KSN + usage → the working key the terminal used for that transaction."""
    return _TDES_WORKING[usage](tdes_transaction_key(bdk, ksn))


def tdes_next_ksn(ksn: bytes | str) -> bytes:
    """The terminal's next KSN: counter + 1, skipping counters with more than 10 one-bits
    (X9.24-1: add the lowest set bit instead). Raises DukptError when the counter is spent."""
    raw = _as_bytes(ksn, what="KSN", size=TDES_KSN_SIZE)
    counter = tdes_ksn_counter(raw) + 1
    while counter <= TDES_COUNTER_MASK and bin(counter).count("1") > TDES_COUNTER_ONE_BITS_MAX:
        counter += counter & -counter
    if counter > TDES_COUNTER_MASK:
        raise DukptError("KSN transaction counter exhausted")
    value = (int.from_bytes(raw, "big") & ~TDES_COUNTER_MASK) | counter
    return value.to_bytes(TDES_KSN_SIZE, "big")


# ----------------------------------------------------------------------------- AES DUKPT


class AesKeyType(Enum):
    """Algorithm indicator and key length in bits (X9.24-3:2017 derivation data)."""

    TDES2 = (0x0000, 128)
    TDES3 = (0x0001, 192)
    AES128 = (0x0002, 128)
    AES192 = (0x0003, 192)
    AES256 = (0x0004, 256)

    @property
    def indicator(self) -> int:
        return self.value[0]

    @property
    def bits(self) -> int:
        return self.value[1]

    @classmethod
    def aes_for_length(cls, size: int) -> AesKeyType:
        return {16: cls.AES128, 24: cls.AES192, 32: cls.AES256}[size]


class AesUsage(IntEnum):
    """Key usage indicators of X9.24-3:2017 derivation data."""

    KEY_ENCRYPTION = 0x0002
    PIN_ENCRYPTION = 0x1000
    MAC_GENERATION = 0x2000
    MAC_VERIFICATION = 0x2001
    MAC_BOTH_WAYS = 0x2002
    DATA_ENCRYPT = 0x3000
    DATA_DECRYPT = 0x3001
    DATA_BOTH_WAYS = 0x3002
    KEY_DERIVATION = 0x8000
    INITIAL_KEY = 0x8001


# Which usage a message direction uses (moov-io/dukpt pkg/aes, X9.24-3 Annex B.1 vectors).
AES_MAC_REQUEST_USAGE = AesUsage.MAC_GENERATION
AES_MAC_RESPONSE_USAGE = AesUsage.MAC_VERIFICATION
AES_DATA_REQUEST_USAGE = AesUsage.DATA_ENCRYPT
AES_DATA_RESPONSE_USAGE = AesUsage.DATA_DECRYPT


def aes_derivation_data(usage: AesUsage, key_type: AesKeyType, initial_key_id: bytes, counter: int) -> bytes:
    """The 16-byte derivation data block (block counter 01)."""
    head = bytes((0x01, 0x01)) + usage.to_bytes(2, "big") + key_type.indicator.to_bytes(2, "big")
    head += key_type.bits.to_bytes(2, "big")
    if usage == AesUsage.INITIAL_KEY:
        return head + initial_key_id
    return head + initial_key_id[4:8] + counter.to_bytes(4, "big")


def _aes_derive(parent: bytes, key_type: AesKeyType, data: bytes) -> bytes:
    blocks = -(-key_type.bits // 128)
    out = b"".join(aes_ecb_encrypt_once(parent, data[:1] + bytes((i,)) + data[2:]) for i in range(1, blocks + 1))
    return out[: key_type.bits // 8]


def _split_aes_ksn(ksn: bytes | str) -> tuple[bytes, int]:
    raw = _as_bytes(ksn, what="KSN", size=AES_KSN_SIZE)
    return raw[:AES_IKID_SIZE], int.from_bytes(raw[AES_IKID_SIZE:], "big")


def aes_initial_key(bdk: bytes | str, initial_key_id: bytes | str) -> bytes:
    """Initial key from the BDK (AES-128/192/256) and the 8-byte initial key ID (or a whole
    12-byte KSN, whose first 8 bytes are the IKID). The initial key has the BDK's length."""
    bdk_raw = _as_bytes(bdk, what="BDK", size=(16, 24, 32))
    ikid = _as_bytes(initial_key_id, what="initial key ID", size=(AES_IKID_SIZE, AES_KSN_SIZE))[:AES_IKID_SIZE]
    return _aes_initial_key(bdk_raw, ikid)


@lru_cache(maxsize=DERIVATION_CACHE_SIZE_MAX)
def _aes_initial_key(bdk: bytes, ikid: bytes) -> bytes:
    key_type = AesKeyType.aes_for_length(len(bdk))
    return _aes_derive(bdk, key_type, aes_derivation_data(AesUsage.INITIAL_KEY, key_type, ikid, 0))


@lru_cache(maxsize=DERIVATION_CACHE_SIZE_MAX)
def _aes_intermediate(parent: bytes, ikid: bytes, counter: int) -> bytes:
    key_type = AesKeyType.aes_for_length(len(parent))
    return _aes_derive(parent, key_type, aes_derivation_data(AesUsage.KEY_DERIVATION, key_type, ikid, counter))


def aes_derivation_key(initial_key: bytes | str, ksn: bytes | str) -> bytes:
    """The intermediate derivation key for the KSN's counter (the "current key" of the
    X9.24-3 vectors), walked down from the initial key one set counter bit at a time."""
    key = _as_bytes(initial_key, what="initial key", size=(16, 24, 32))
    ikid, counter = _split_aes_ksn(ksn)
    working = 0
    bit = 1 << (AES_COUNTER_BITS - 1)
    while bit:
        if counter & bit:
            working |= bit
            key = _aes_intermediate(key, ikid, working)
        bit >>= 1
    return key


def aes_working_key(
    derivation_key: bytes | str,
    ksn: bytes | str,
    usage: AesUsage,
    *,
    key_type: AesKeyType = AesKeyType.AES128,
) -> bytes:
    """A working key (PIN, MAC, data...) of `key_type` from the KSN's derivation key."""
    parent = _as_bytes(derivation_key, what="derivation key", size=(16, 24, 32))
    if key_type.bits > 8 * len(parent):
        raise DukptError("working key may not be longer than the derivation key", code="27")
    ikid, counter = _split_aes_ksn(ksn)
    return _aes_derive(parent, key_type, aes_derivation_data(usage, key_type, ikid, counter))


def aes_transaction_key(
    bdk: bytes | str,
    ksn: bytes | str,
    usage: AesUsage,
    *,
    key_type: AesKeyType = AesKeyType.AES128,
) -> bytes:
    """Host side in one call: BDK + KSN + usage → working key."""
    initial = aes_initial_key(bdk, ksn)
    return aes_working_key(aes_derivation_key(initial, ksn), ksn, usage, key_type=key_type)


def aes_ksn_counter(ksn: bytes | str) -> int:
    """The 32-bit transaction counter of a 12-byte AES KSN."""
    return _split_aes_ksn(ksn)[1]


def aes_next_ksn(ksn: bytes | str) -> bytes:
    """The terminal's next AES KSN: counter + 1, skipping counters with more than 16 one-bits."""
    ikid, counter = _split_aes_ksn(ksn)
    counter += 1
    limit = (1 << AES_COUNTER_BITS) - 1
    while counter <= limit and bin(counter).count("1") > AES_COUNTER_ONE_BITS_MAX:
        counter += counter & -counter
    if counter > limit:
        raise DukptError("KSN transaction counter exhausted")
    return ikid + counter.to_bytes(4, "big")
