"""A terminal's DUKPT security, sans I/O: KSN counter, PIN blocks, request MACs, response MACs.

Profiles (`eum admin terminal add --security ...`): `none` (no object of this class: the
terminal sends neither PIN nor MAC), `dukpt-tdes` (ANSI X9.24-1:2009) and `dukpt-aes`
(ANSI X9.24-3:2017, AES-128 working keys), and `mac` (`TakSecurity`: a static TAK, X9.19
MACs both ways, no PIN, no KSN).

Key injection. A real terminal leaves the key-injection facility holding only its initial key
(TDES IPEK, AES initial key) and initial KSN; the BDK never enters it. terminal_sim plays
that facility too: for the certification key set (`keys="test"`, the only one supported) it
derives the initial key from the *public* test BDK, TDES `0123456789ABCDEFFEDCBA9876543210`
(X9.24-1 Annex A) or AES-128 `FEDCBA9876543210F1F1F1F1F1F1F1F1` (X9.24-3 Annex B), the same
BDKs `eum admin terminal add --keys test` provisions at the switch. From then on only the
initial key is used. Production key sets stay in the HSM and cannot be simulated this way.

Wire contract (docs/host-interface.md; the switch implements the other side):
    - Before each secured message (0200, 0400, 0420) the terminal advances to its next KSN
      (X9.24 skips counters with too many one-bits) and uses that KSN's keys; a repeat
      (0201, 0401, 0421) reuses its original's KSN and PIN block.
    - DE53: the current KSN, ASCII hex (20 TDES, 24 AES).
    - DE52: the encrypted PIN block, binary: TDES, ISO 9564 format 0 under the PIN variant
      of the transaction key (8 bytes); AES, ISO format 4 under the usage-1000 working key
      (16 bytes). In pyiso8583 dict form, uppercase hex.
    - MAC (8 bytes) in the message's last field, DE64, or DE128 when the secondary bitmap is
      present (a reversal's DE90/DE95). Input: the encoded message (MTI, bitmaps, fields; no
      length header, no TPDU) up to the MAC itself. TDES: ANSI X9.19 = ISO 9797-1 algorithm 3,
      padding method 1, MAC-request variant; AES: AES-CMAC with the usage-2000 key, leftmost
      8 bytes. The response carries a MAC made the same way with the response key of the
      request's KSN (TDES MAC-response variant; AES usage 2001).

Key registers (the terminal algorithm of ANSI X9.24-1:2009 Annex A, "Future Key Registers";
its AES form in X9.24-3:2017, the intermediate derivation key registers). Register i holds the
key of the next counter whose lowest one-bit is bit i: TDES, that counter's transaction key;
AES, its intermediate derivation key. A transaction takes the key of its counter's lowest
one-bit register and erases it, then ("New Key") generates, from that key, the keys of the
counters it leads to (the counter with each lower bit set) into the lower registers, unless
the counter already has the most one-bits a terminal uses (10 TDES, 16 AES; such counters are
skipped, as `next_ksn` does). So a transaction costs one batch of derivations from one key
(TDES: two single-DES contexts, the halves of the non-reversible key generation; AES: one
AES context, which also gives the working keys) instead of walking every set counter bit from
the initial key. The walk from the initial key (`_derive`, the host's derivation in
hsm_mock.dukpt) stays as the reference: tests/test_future_keys.py checks the registers
against it, and it serves a KSN whose keys are no longer at hand (a repeat after more than
KEY_CACHE_SIZE_MAX transactions, a restored terminal's last KSN).

Nothing here logs, and no exception message carries a key, PIN or PIN block. The state
(`to_state`) is the profile, the key set name and the KSNs: all public on the wire anyway.
The registers are never part of it: they hold at most 21 (TDES) / 32 (AES) keys per terminal,
in memory only, and a terminal restored with `from_state` rebuilds them from its initial key
at its saved counter, as the simulator always re-derives the initial key itself (test key set:
from the public test BDK; generated: from the KIF's ZMK components).
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from hsm_mock import dukpt, pinblock
from hsm_mock.crypto import (HsmCryptoError, aes_cmac, aes_ecb_encrypt_once, aes_key_check_value, combine_components,
                             key_check_value, mac_iso9797_alg3, retail_mac_once, tdes_ecb_encrypt_once)
from hsm_mock.lmk import decrypt_key_under_kek
from switch.wire.messages import mac_field

from .terminal import REPEAT_MTI

PROFILE_NONE = "none"
PROFILE_TDES = "dukpt-tdes"
PROFILE_AES = "dukpt-aes"
PROFILE_MAC = "mac"
PROFILES = (PROFILE_NONE, PROFILE_MAC, PROFILE_TDES, PROFILE_AES)
DUKPT_PROFILES = (PROFILE_TDES, PROFILE_AES)
KEY_SETS = ("test", "generated")

# The certification key set: published test BDKs (docs/hsm.md, "Test vectors and their sources").
TEST_BDKS = {
    PROFILE_TDES: bytes.fromhex("0123456789ABCDEFFEDCBA9876543210"),  # ANSI X9.24-1 Annex A
    PROFILE_AES: bytes.fromhex("FEDCBA9876543210F1F1F1F1F1F1F1F1"),  # ANSI X9.24-3 Annex B
}
TEST_TAK = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")  # the certification TAK (docs/security.md)
KSN_HEX_SIZE = {PROFILE_TDES: 2 * dukpt.TDES_KSN_SIZE, PROFILE_AES: 2 * dukpt.AES_KSN_SIZE}

MAC_SIZE = 8
MAC_PLACEHOLDER = "00" * MAC_SIZE
KEY_CACHE_SIZE_MAX = 8  # KSNs whose working keys stay derived (the current one and a few repeats)
# Key registers per terminal (X9.24-1 "Future Key Registers": one per counter bit; X9.24-3 likewise)
# and the most one-bits a counter the terminal uses may have.
KEY_REGISTERS = {PROFILE_TDES: dukpt.TDES_COUNTER_BITS, PROFILE_AES: dukpt.AES_COUNTER_BITS}  # 21 / 32 keys at most
COUNTER_ONE_BITS_MAX = {PROFILE_TDES: dukpt.TDES_COUNTER_ONE_BITS_MAX, PROFILE_AES: dukpt.AES_COUNTER_ONE_BITS_MAX}
COUNTER_MAX = {PROFILE_TDES: dukpt.TDES_COUNTER_MASK, PROFILE_AES: (1 << dukpt.AES_COUNTER_BITS) - 1}
SENT_REMEMBERED_MAX = 64  # originals whose KSN and PIN block a repeat may still need

ORIGINAL_MTI = {repeat: original for original, repeat in REPEAT_MTI.items()}
SECURED_MTIS = frozenset(REPEAT_MTI) | frozenset(ORIGINAL_MTI)


class SecurityError(ValueError):
    """Terminal-side security cannot proceed (bad profile, KSN, state, or call order).
    Messages name the rule, never a key, PIN, PAN or PIN block."""


@dataclass(frozen=True)
class SecurityConfig:
    """What provisioning fixed: profile, key set and the initial KSN (counter 0)."""

    profile: str
    initial_ksn: str
    keys: str = "test"

    def __post_init__(self) -> None:
        if self.profile not in DUKPT_PROFILES:
            raise SecurityError(f"security profile must be one of {', '.join(DUKPT_PROFILES)}")
        if self.keys not in KEY_SETS:
            raise SecurityError(f"key set must be one of {', '.join(KEY_SETS)}")
        object.__setattr__(self, "initial_ksn", _ksn_text(self.profile, self.initial_ksn, what="initial KSN"))
        if _counter(self.profile, self.initial_ksn) != 0:
            raise SecurityError("initial KSN must have transaction counter 0")


class _WorkingKeys:
    """One KSN's working keys. No repr of its values (no key in any log or error)."""

    __slots__ = ("pin", "mac_request", "mac_response")

    def __init__(self, pin: bytes, mac_request: bytes, mac_response: bytes) -> None:
        self.pin = pin
        self.mac_request = mac_request
        self.mac_response = mac_response

    def __repr__(self) -> str:
        return "_WorkingKeys(...)"


@dataclass(frozen=True, repr=False)
class _Sent:
    ksn: str
    pin_block: str | None


def _ksn_text(profile: str, ksn: str, *, what: str = "KSN") -> str:
    size = KSN_HEX_SIZE[profile]
    if not isinstance(ksn, str) or len(ksn) != size:
        raise SecurityError(f"{what} must be {size} hex digits for {profile}")
    try:
        bytes.fromhex(ksn)
    except ValueError:
        raise SecurityError(f"{what} is not valid hex") from None
    return ksn.upper()


def _counter(profile: str, ksn: str) -> int:
    if profile == PROFILE_TDES:
        return dukpt.tdes_ksn_counter(ksn)
    return dukpt.aes_ksn_counter(ksn)


def _device(profile: str, ksn: str) -> str:
    """The KSN without its counter: what every KSN of one initial key shares."""
    if profile == PROFILE_TDES:
        value = int(ksn, 16) & ~dukpt.TDES_COUNTER_MASK
        return f"{value:0{KSN_HEX_SIZE[profile]}X}"
    return ksn[: 2 * dukpt.AES_IKID_SIZE]


def _next_counter(profile: str, counter: int) -> int | None:
    """The counter after `counter` that a terminal uses (dukpt.tdes_next_ksn / aes_next_ksn on
    integers: + 1, then skip counters with too many one-bits by adding their lowest one-bit),
    or None when the counter is spent."""
    limit, ones = COUNTER_MAX[profile], COUNTER_ONE_BITS_MAX[profile]
    counter += 1
    while counter <= limit and counter.bit_count() > ones:
        counter += counter & -counter
    return counter if counter <= limit else None


# ----------------------------------------------------------------------------- key registers

_TDES_BDK_MASK = int.from_bytes(bytes.fromhex("C0C0C0C000000000C0C0C0C000000000"), "big")  # X9.24-1 key mask
_TDES_VARIANTS = tuple(int.from_bytes(bytes.fromhex(v), "big") for v in (  # X9.24-1:2009 Table 3
    "00000000000000FF00000000000000FF",  # PIN
    "000000000000FF00000000000000FF00",  # MAC request
    "00000000FF00000000000000FF000000",  # MAC response
))
_LOW64 = (1 << 64) - 1


def _tdes_future_keys(key: bytes, registers: list[int]) -> list[bytes]:
    """X9.24-1 non-reversible key generation of `key` for each KSN register value (the KSN's
    rightmost 64 bits, counter included), in one batch: every right half is DES under the
    key's left half, every left half DES under the left half of key XOR C0C0C0C0 00000000
    C0C0C0C0 00000000, so two single-DES contexts serve any number of registers."""
    k = int.from_bytes(key, "big")
    km = k ^ _TDES_BDK_MASK
    right, right_m = k & _LOW64, km & _LOW64
    plain = b"".join((reg ^ right).to_bytes(8, "big") for reg in registers)
    plain_m = b"".join((reg ^ right_m).to_bytes(8, "big") for reg in registers)
    crypt = tdes_ecb_encrypt_once((k >> 64).to_bytes(8, "big"), plain)
    crypt_m = tdes_ecb_encrypt_once((km >> 64).to_bytes(8, "big"), plain_m)
    out = []
    for i in range(0, 8 * len(registers), 8):
        new_left = int.from_bytes(crypt_m[i:i + 8], "big") ^ right_m
        new_right = int.from_bytes(crypt[i:i + 8], "big") ^ right
        out.append(((new_left << 64) | new_right).to_bytes(16, "big"))
    return out


@lru_cache(maxsize=16)  # a handful of (usage, key type) pairs; no key material
def _aes_data_head(usage: dukpt.AesUsage, key_type: dukpt.AesKeyType) -> bytes:
    """The first 8 bytes of X9.24-3 derivation data (version, block counter 01, usage,
    algorithm, length), as hsm_mock.dukpt builds them."""
    return dukpt.aes_derivation_data(usage, key_type, bytes(dukpt.AES_IKID_SIZE), 0)[:8]


_AES_WORKING_USAGES = (dukpt.AesUsage.PIN_ENCRYPTION, dukpt.AES_MAC_REQUEST_USAGE, dukpt.AES_MAC_RESPONSE_USAGE)


def _aes_keys(key: bytes, ikid: bytes, counter: int | None, future: list[int]) -> list[bytes]:
    """From an intermediate derivation key in one AES-ECB pass (X9.24-3: every key is
    AES(parent, derivation data)): the AES-128 working keys of `counter` (PIN 1000, MAC 2000,
    MAC 2001; none when counter is None), then the intermediate derivation keys (usage 8000,
    the parent's length) of the `future` counters."""
    key_type = dukpt.AesKeyType.aes_for_length(len(key))
    blocks = -(-key_type.bits // 128)
    tail = ikid[4:8]
    data = []
    if counter is not None:
        suffix = tail + counter.to_bytes(4, "big")
        data += [_aes_data_head(usage, dukpt.AesKeyType.AES128) + suffix for usage in _AES_WORKING_USAGES]
    head = _aes_data_head(dukpt.AesUsage.KEY_DERIVATION, key_type)
    for c in future:
        suffix = tail + c.to_bytes(4, "big")
        data += [head[:1] + bytes((b,)) + head[2:] + suffix for b in range(1, blocks + 1)]
    crypt = aes_ecb_encrypt_once(key, b"".join(data))
    at = 0 if counter is None else 16 * len(_AES_WORKING_USAGES)
    size, step = key_type.bits // 8, 16 * blocks
    return [crypt[i:i + 16] for i in range(0, at, 16)] + [crypt[i:i + size] for i in range(at, len(crypt), step)]


class _KeyRegisters:
    """One terminal's key registers, ready for counter `next_counter` (None: spent).

    Register i (bit i of the counter) holds the key of the next counter whose lowest one-bit
    is bit i, or None (erased, or never needed). `advance()` runs one transaction: take the
    register of the counter's lowest one-bit, erase it, refill the lower registers from it.
    At most KEY_REGISTERS[profile] keys, in memory only (never in `to_state`, logs or errors).
    """

    __slots__ = ("profile", "next_counter", "_regs", "_register_base", "_ikid")

    def __init__(self, profile: str, initial_key: bytes, initial_ksn: str, next_counter: int | None) -> None:
        self.profile = profile
        self.next_counter = next_counter
        self._regs: list[bytes | None] = [None] * KEY_REGISTERS[profile]
        raw = bytes.fromhex(initial_ksn)
        self._register_base = int.from_bytes(raw[-8:], "big") & ~dukpt.TDES_COUNTER_MASK  # TDES: KSN register, counter 0
        self._ikid = raw[:dukpt.AES_IKID_SIZE]  # AES: the initial key ID
        if next_counter is not None:
            self._load(bytes(initial_key), next_counter)

    def __repr__(self) -> str:
        return f"_KeyRegisters(profile={self.profile!r}, next_counter={self.next_counter!r})"

    def _future(self, key: bytes, counters: list[int]) -> list[bytes]:
        if self.profile == PROFILE_TDES:
            return _tdes_future_keys(key, [self._register_base | c for c in counters])
        return _aes_keys(key, self._ikid, None, counters)

    def _load(self, initial_key: bytes, counter: int) -> None:
        """The registers as the terminal holds them when `counter` is next: walk the counter's
        one-bits from the top, and from each key on the way fill the registers of the zero
        bits it passes (their counters come later) and step to the next one-bit. A fresh
        terminal (counter 1) gets X9.24-1's "Load Initial Key": every register from the
        initial key."""
        key, prefix = initial_key, 0
        above = KEY_REGISTERS[self.profile]  # the bit above the last one-bit passed
        while True:
            bit = (counter & ~prefix).bit_length() - 1  # the highest one-bit not yet walked
            zeros = list(range(above - 1, bit, -1))
            keys = self._future(key, [prefix | (1 << z) for z in zeros] + [prefix | (1 << bit)])
            for z, k in zip(zeros, keys):
                self._regs[z] = k
            key, prefix, above = keys[-1], prefix | (1 << bit), bit
            if prefix == counter:
                self._regs[bit] = key
                return

    def advance(self) -> tuple[int, _WorkingKeys]:
        """The next counter and its working keys; the registers move on to the counter after."""
        counter = self.next_counter
        if counter is None:
            raise SecurityError("KSN transaction counter exhausted: inject a new initial key")
        low = (counter & -counter).bit_length() - 1
        key = self._regs[low]
        if key is None:  # cannot happen while the registers follow the counter
            raise SecurityError("key register empty: the terminal's key registers lost their place")
        self._regs[low] = None  # X9.24-1: a used key is erased
        # "New Key": the counters this one leads to, one per lower bit, unless it has the most
        # one-bits a terminal uses (then those counters are skipped).
        lower = list(range(low - 1, -1, -1)) if counter.bit_count() < COUNTER_ONE_BITS_MAX[self.profile] else []
        future = [counter | (1 << j) for j in lower]
        if self.profile == PROFILE_TDES:
            k = int.from_bytes(key, "big")
            pin_v, request_v, response_v = _TDES_VARIANTS  # each variant XORed in place: no generator
            keys = _WorkingKeys((k ^ pin_v).to_bytes(16, "big"), (k ^ request_v).to_bytes(16, "big"),
                                (k ^ response_v).to_bytes(16, "big"))
            new = _tdes_future_keys(key, [self._register_base | c for c in future]) if future else []
        else:
            pin, mac_request, mac_response, *new = _aes_keys(key, self._ikid, counter, future)
            keys = _WorkingKeys(pin=pin, mac_request=mac_request, mac_response=mac_response)
        for j, future_key in zip(lower, new):
            self._regs[j] = future_key
        self.next_counter = _next_counter(self.profile, counter)
        return counter, keys


class TerminalSecurity:
    """One terminal's DUKPT state: a frozen config, its initial key, and the current KSN.

    `next_ksn()` advances the counter; `pin_block`, `sign` and `verify_response` use the keys
    of the current KSN unless given another of this terminal's KSNs (a repeat's). `protect`
    does all of it at the field level for one request.
    """

    def __init__(self, config: SecurityConfig, initial_key: bytes, *, ksn: str | None = None,
                 injected: str | None = None) -> None:
        self.config = config
        self._injected = injected  # generated key set: the initial key as the KIF received it, under its ZMK
        self._initial_key = bytes(initial_key)
        self._ksn = config.initial_ksn
        self._counter = 0
        self._registers: _KeyRegisters | None = None  # built at the first next_ksn(), from the initial key
        self._ksn_base: tuple[int, str] | None = None  # TDES: the initial KSN as an int, its format (_ksn_of)
        self._keys: OrderedDict[str, _WorkingKeys] = OrderedDict()
        self._sent: OrderedDict[tuple[str, str, str], _Sent] = OrderedDict()
        self.iso4_fill: bytes | None = None  # fixed ISO-4 random fill: reproducible documents only
        if ksn is not None:
            self._ksn = self._own_ksn(ksn)
            self._counter = _counter(self.profile, self._ksn)

    # ------------------------------------------------------------------ construction, state

    @classmethod
    def for_test_keys(cls, profile: str, ksn: str) -> TerminalSecurity:
        """A terminal injected under the public test BDK of `profile`, initial KSN `ksn`."""
        config = SecurityConfig(profile=profile, initial_ksn=ksn, keys="test")
        return cls(config, _initial_key(config))

    @classmethod
    def for_injected_key(cls, profile: str, ksn: str, initial_key_under_zmk: str,
                         zmk_components: list[str], *, kcv: str | None = None) -> TerminalSecurity:
        """A terminal of a generated key set (`eum admin terminal add --keys generated`): the
        key-injection facility forms its ZMK from the custodians' components, decrypts the
        initial key the HSM exported under it, and injects it. Nothing else ever held it."""
        config = SecurityConfig(profile=profile, initial_ksn=ksn, keys="generated")
        key = _injected_key(initial_key_under_zmk, zmk_components)
        if kcv is not None:  # the KIF checks what it decrypted against the HSM's check value
            check = key_check_value(key) if profile == PROFILE_TDES else aes_key_check_value(key)
            if not hmac.compare_digest(check, kcv.upper()):
                raise SecurityError("the initial key does not decrypt under the given ZMK components (KCV differs)")
        return cls(config, key, injected=initial_key_under_zmk)

    @classmethod
    def from_state(cls, state: dict[str, Any], *, zmk_components: list[str] | None = None) -> TerminalSecurity:
        """Inverse of `to_state`: the terminal continues from its saved counter. A generated
        key set needs the KIF's ZMK components again (the state keeps the key only under it)."""
        try:
            config = SecurityConfig(profile=state["profile"], initial_ksn=state["initial_ksn"],
                                    keys=state.get("keys", "test"))
            ksn = state["ksn"]
        except (KeyError, TypeError):
            raise SecurityError("security state lacks profile, initial_ksn or ksn") from None
        if config.keys == "generated":
            injected = state.get("initial_key_under_kif_zmk")
            if not injected or not zmk_components:
                raise SecurityError("a generated key set needs its initial key under the KIF ZMK and the ZMK components")
            return cls(config, _injected_key(injected, zmk_components), ksn=ksn, injected=injected)
        return cls(config, _initial_key(config), ksn=ksn)

    def to_state(self) -> dict[str, str]:
        """Public values only: profile, key set name, initial and current KSN (and, for a
        generated key set, the initial key under the KIF ZMK, useless without its components)."""
        state = {"profile": self.profile, "keys": self.config.keys,
                 "initial_ksn": self.config.initial_ksn, "ksn": self._ksn}
        if self._injected is not None:
            state["initial_key_under_kif_zmk"] = self._injected
        return state

    def __repr__(self) -> str:
        return f"TerminalSecurity(profile={self.profile!r}, ksn={self._ksn!r})"

    @property
    def profile(self) -> str:
        return self.config.profile

    @property
    def initial_ksn(self) -> str:
        return self.config.initial_ksn

    @property
    def ksn(self) -> str:
        """The current KSN: the one the last secured message used (the initial one before any)."""
        return self._ksn

    @property
    def counter(self) -> int:
        return self._counter

    # ------------------------------------------------------------------ counter

    def next_ksn(self) -> str:
        """Advance to the next valid KSN (X9.24: at most 10 (TDES) / 16 (AES) counter one-bits)
        and return it, its working keys taken from the key registers. Raises SecurityError
        when the counter is spent: the terminal needs a new initial key."""
        registers = self._registers
        if registers is None:
            registers = self._registers = _KeyRegisters(self.profile, self._initial_key, self.config.initial_ksn,
                                                        _next_counter(self.profile, self._counter))
        counter, keys = registers.advance()
        self._ksn = self._ksn_of(counter)
        self._counter = counter
        self._remember_keys(self._ksn, keys)
        return self._ksn

    def _ksn_of(self, counter: int) -> str:
        initial = self.config.initial_ksn
        if self.profile == PROFILE_TDES:  # the initial KSN's counter is 0
            base = self._ksn_base
            if base is None:  # parsed once, not per transaction
                base = self._ksn_base = (int(initial, 16), f"%0{len(initial)}X")
            return base[1] % (base[0] | counter)
        return initial[: 2 * dukpt.AES_IKID_SIZE] + f"{counter:08X}"

    def _own_ksn(self, ksn: str) -> str:
        text = _ksn_text(self.profile, ksn)
        if _device(self.profile, text) != _device(self.profile, self.config.initial_ksn):
            raise SecurityError("KSN does not belong to this terminal's initial key")
        return text

    def _usable_ksn(self, ksn: str | None) -> str:
        text = self._ksn if ksn is None else self._own_ksn(ksn)
        counter = _counter(self.profile, text)
        if counter == 0:
            raise SecurityError("KSN counter 0 has no transaction key: call next_ksn() first")
        if counter > self.counter:
            raise SecurityError("KSN is ahead of the terminal's counter")
        return text

    # ------------------------------------------------------------------ keys

    def _keys_for(self, ksn: str | None) -> _WorkingKeys:
        """The working keys of `ksn` (default: the current KSN). A KSN whose keys are at hand
        is one this terminal used, checked when it was made; any other is checked first."""
        keys = self._keys.get(self._ksn if ksn is None else ksn)
        if keys is not None:
            self._keys.move_to_end(self._ksn if ksn is None else ksn)
            return keys
        return self._working_keys(self._usable_ksn(ksn))

    def _working_keys(self, ksn: str) -> _WorkingKeys:
        keys = self._keys.get(ksn)
        if keys is not None:
            self._keys.move_to_end(ksn)
            return keys
        keys = self._derive(ksn)
        self._remember_keys(ksn, keys)
        return keys

    def _remember_keys(self, ksn: str, keys: _WorkingKeys) -> None:
        self._keys[ksn] = keys
        self._keys.move_to_end(ksn)
        if len(self._keys) > KEY_CACHE_SIZE_MAX:
            self._keys.popitem(last=False)

    def _derive(self, ksn: str) -> _WorkingKeys:
        """The reference: the KSN's keys walked down from the initial key (hsm_mock.dukpt, the
        host's derivation). Used for a KSN whose keys are no longer at hand."""
        if self.profile == PROFILE_TDES:
            transaction = dukpt.tdes_derive_key(self._initial_key, ksn)
            return _WorkingKeys(pin=dukpt.tdes_pin_key(transaction),
                                mac_request=dukpt.tdes_mac_request_key(transaction),
                                mac_response=dukpt.tdes_mac_response_key(transaction))
        derivation = dukpt.aes_derivation_key(self._initial_key, ksn)
        return _WorkingKeys(pin=dukpt.aes_working_key(derivation, ksn, dukpt.AesUsage.PIN_ENCRYPTION),
                            mac_request=dukpt.aes_working_key(derivation, ksn, dukpt.AES_MAC_REQUEST_USAGE),
                            mac_response=dukpt.aes_working_key(derivation, ksn, dukpt.AES_MAC_RESPONSE_USAGE))

    # ------------------------------------------------------------------ PIN

    def pin_block(self, pin: str, pan: str, *, ksn: str | None = None) -> str:
        """The encrypted PIN block for DE52, uppercase hex: ISO-0 under the TDES PIN key
        (16 hex) or ISO-4 under the AES PIN key (32 hex, random fill)."""
        keys = self._keys_for(ksn)
        if self.profile == PROFILE_TDES:
            block = tdes_ecb_encrypt_once(keys.pin, pinblock.encode_iso0(pin, pan))
        else:
            block = pinblock.encipher_iso4(keys.pin, pin, pan, fill=self.iso4_fill)
        return block.hex().upper()

    # ------------------------------------------------------------------ MAC

    def _mac(self, key: bytes, data: bytes) -> bytes:
        if self.profile == PROFILE_TDES:
            return retail_mac_once(key, data, length=MAC_SIZE)  # this transaction's key: no warm contexts
        return aes_cmac(key, data, length=MAC_SIZE)

    def request_mac(self, data: bytes, *, ksn: str | None = None) -> bytes:
        """The 8-byte request MAC of `data` (the MAC input itself, not a whole payload)."""
        return self._mac(self._keys_for(ksn).mac_request, bytes(data))

    def response_mac(self, data: bytes, *, ksn: str | None = None) -> bytes:
        """The 8-byte MAC the switch puts on its response to a request sent under `ksn`."""
        return self._mac(self._keys_for(ksn).mac_response, bytes(data))

    def sign(self, payload_with_zero_mac: bytes, *, ksn: str | None = None) -> bytes:
        """The encoded message with its MAC in place of the 8 zero bytes that end it."""
        payload = bytes(payload_with_zero_mac)
        if len(payload) <= MAC_SIZE or payload[-MAC_SIZE:] != bytes(MAC_SIZE):
            raise SecurityError("payload must end with the 8-byte zero MAC placeholder (the MAC field last)")
        body = payload[:-MAC_SIZE]
        return body + self.request_mac(body, ksn=ksn)

    def verify_response(self, payload: bytes, *, ksn: str | None = None) -> bool:
        """True when the response's last 8 bytes are its MAC under the response key of `ksn`
        (default: the current KSN, the one the request used)."""
        payload = bytes(payload)
        if len(payload) <= MAC_SIZE:
            return False
        body, mac = payload[:-MAC_SIZE], payload[-MAC_SIZE:]
        return hmac.compare_digest(self.response_mac(body, ksn=ksn), mac)

    # ------------------------------------------------------------------ fields

    def protect(self, fields: dict[str, str], *, pin: str | None = None, pan: str | None = None,
                fresh_ksn: bool = False) -> dict[str, str]:
        """A secured copy of a request: DE53 (KSN), DE52 (PIN block, when `pin`) and the MAC
        field holding the zero placeholder (encode, then `sign` with `ksn=result["53"]`).

        - An original (0200/0400/0420) without DE53 advances the KSN.
        - A repeat (0201/0401/0421) gets its original's KSN and PIN block, remembered by
          (MTI, STAN, DE7) for the last SENT_REMEMBERED_MAX originals.
        - Fields that already carry DE53 (a resend) keep that KSN and their DE52.
        - fresh_ksn: a new KSN whatever the fields carry — each try of a stored-and-forwarded
          reversal or advice (terminal_sim/saf.py), which carries no PIN block: a switch that
          restarted refuses a counter at or below the highest it accepted (docs/host-interface.md,
          "KSN counters"), so a try with its first send's counter could be refused for good.
        Other MTIs (0800) come back unchanged.
        """
        mti = fields.get("t", "")
        if mti not in SECURED_MTIS:
            return dict(fields)
        out = {k: v for k, v in fields.items() if k not in ("64", "128")}
        if fresh_ksn:
            if pin is not None or "52" in fields:
                raise SecurityError("a PIN block is bound to its KSN: a message with a PIN keeps its KSN")
            out["53"] = self.next_ksn()
        elif "53" in fields:
            if pin is not None:
                raise SecurityError("a resend keeps its PIN block: give no PIN with DE53 present")
            out["53"] = self._usable_ksn(fields["53"])
        elif mti in ORIGINAL_MTI:
            sent = self._sent.get(self._sent_key(fields))
            if sent is None:
                raise SecurityError("repeat of an original this terminal did not secure: resend the "
                                    "secured original's fields (with DE53) instead")
            out["53"] = sent.ksn
            if sent.pin_block is not None:
                out["52"] = sent.pin_block
        else:
            out["53"] = self.next_ksn()
            if pin is not None:
                out["52"] = self.pin_block(pin, pan if pan is not None else _pan_of(fields))
            self._remember(fields, out)
        out[mac_field(out)] = MAC_PLACEHOLDER
        return out

    @staticmethod
    def _sent_key(fields: dict[str, str]) -> tuple[str, str, str]:
        mti = fields.get("t", "")
        return ORIGINAL_MTI.get(mti, mti), fields.get("11", ""), fields.get("7", "")

    def _remember(self, original: dict[str, str], secured: dict[str, str]) -> None:
        key = self._sent_key(original)
        self._sent[key] = _Sent(ksn=secured["53"], pin_block=secured.get("52"))
        self._sent.move_to_end(key)
        if len(self._sent) > SENT_REMEMBERED_MAX:
            self._sent.popitem(last=False)


def _pan_of(fields: dict[str, str]) -> str:
    if fields.get("2"):
        return fields["2"]
    track2 = fields.get("35", "")
    for sep in ("=", "D"):
        if sep in track2:
            return track2.split(sep, 1)[0]
    raise SecurityError("a PIN block needs the PAN: DE2 or track 2 (DE35), or pan=")


def _injected_key(under_zmk: str, components: list[str]) -> bytes:
    try:
        zmk = combine_components([bytes.fromhex(c) for c in components])
        return decrypt_key_under_kek(under_zmk, zmk, check_key_parity=False)
    except (ValueError, HsmCryptoError):
        raise SecurityError("the initial key does not decrypt under the given ZMK components") from None


def _initial_key(config: SecurityConfig) -> bytes:
    """Key injection for the test key set: the initial key from the public test BDK."""
    bdk = TEST_BDKS[config.profile]
    if config.profile == PROFILE_TDES:
        return dukpt.tdes_ipek(bdk, config.initial_ksn)
    return dukpt.aes_initial_key(bdk, config.initial_ksn[: 2 * dukpt.AES_IKID_SIZE])


class TakSecurity:
    """A MAC-only terminal (`mac` profile): one static TAK, ANSI X9.19 (ISO 9797-1 algorithm 3,
    padding method 1) over the same MAC input as DUKPT terminals, both ways. No PIN, no KSN;
    the same duck type as TerminalSecurity for the client (`protect`, `sign`,
    `verify_response`, `to_state`)."""

    profile = PROFILE_MAC

    def __init__(self, tak: bytes, *, keys: str = "test") -> None:
        self._tak = bytes(tak)
        self.keys = keys

    @classmethod
    def for_test_keys(cls) -> TakSecurity:
        return cls(TEST_TAK)

    def __repr__(self) -> str:
        return "TakSecurity(profile='mac')"

    def to_state(self) -> dict[str, str]:
        return {"profile": PROFILE_MAC, "keys": self.keys}

    def protect(self, fields: dict[str, str], *, pin: str | None = None, pan: str | None = None,
                fresh_ksn: bool = False) -> dict[str, str]:
        """fresh_ksn: as DUKPT's; a static TAK has no KSN, so it changes nothing."""
        if pin is not None:
            raise SecurityError("a mac-profile terminal has no PIN key: PINs need a DUKPT profile")
        if fields.get("t", "") not in SECURED_MTIS:
            return dict(fields)
        out = {k: v for k, v in fields.items() if k not in ("64", "128")}
        out[mac_field(out)] = MAC_PLACEHOLDER
        return out

    def _mac(self, data: bytes) -> bytes:
        return mac_iso9797_alg3(self._tak, bytes(data), padding=1, length=MAC_SIZE)

    def sign(self, payload_with_zero_mac: bytes, *, ksn: str | None = None) -> bytes:
        payload = bytes(payload_with_zero_mac)
        if len(payload) <= MAC_SIZE or payload[-MAC_SIZE:] != bytes(MAC_SIZE):
            raise SecurityError("payload must end with the 8-byte zero MAC placeholder (the MAC field last)")
        return payload[:-MAC_SIZE] + self._mac(payload[:-MAC_SIZE])

    def verify_response(self, payload: bytes, *, ksn: str | None = None) -> bool:
        payload = bytes(payload)
        if len(payload) <= MAC_SIZE:
            return False
        return hmac.compare_digest(self._mac(payload[:-MAC_SIZE]), payload[-MAC_SIZE:])
