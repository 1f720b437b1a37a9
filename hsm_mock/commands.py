"""payShield-style host commands, sans I/O: a parsed Command in, (error code, response body,
audit event) out. No sockets, no clocks, no logging: the service (hsm_mock/service.py) feeds
frames in and writes what comes out; tests call `Hsm.handle` directly.

Layouts follow the payShield 9000/10K host command reference (variant LMK) as far as the
public excerpts and the ThalesSim host-command tests show them; docs/hsm.md lists every
command as implemented, with our own choices marked. In short:

    NC diagnostics      NO status          B2 echo
    A0 generate key     BU key check value FA ZPK ZMK→LMK      GC ZPK LMK→ZMK
    CA PIN TPK→ZPK      CC PIN ZPK→ZPK     CI/G0 PIN TDES-DUKPT→ZPK
    Z0 PIN AES-DUKPT→ZPK (ours)            GW MAC with a TDES-DUKPT key
    Z2 MAC with an AES-DUKPT key (ours)
    GQ verify a TDES-DUKPT PIN by Visa PVV, and optionally the request's DUKPT MAC with it
    DC/EC verify PIN, Visa PVV (TPK/ZPK)   DA/EA verify PIN, IBM 3624 offset (TPK/ZPK)
    FW PVV / BK IBM offset of a customer-selected PIN (from an encrypted PIN block)
    BA clear PIN → PIN under LMK, DG PVV / DE IBM offset from a PIN under LMK
    CW/CY generate/verify Visa CVV         M6/M8 generate/verify MAC (TAK/ZAK)

Every key crosses this API encrypted (under the LMK, or under a ZMK/TMK on export/import);
each key field is decrypted under the key type the command expects, so a key of another type
decrypts to garbage. That garbage fails the parity check; before answering with the parity
error (10/11) the HSM checks whether the key decrypts with good parity under another key type
and then answers 29 (key function not permitted) — explicit key-type separation, computed only
on the error path. The audit event carries the command, key check values (6H, on the clear
keys) and non-secret parameters: never a key, PIN, PAN or PIN block.

Key caches (hsm_mock/keycache.py, docs/hsm.md §6): a key under the LMK is decrypted once and
kept (with its check value) keyed by its ciphertext and key type, and a DUKPT transaction key
is derived once per (BDK under the LMK, KSN), so the request-MAC check (GW), the PIN
translation (G0) and the response MAC (GW) of one transaction share it. Bounded by count,
in memory only; `key_cache_size_max=0` runs every command from scratch (the reference path).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from functools import lru_cache
from typing import Any, NamedTuple

from hsm_mock import cardverify, dukpt, pinblock
from hsm_mock.crypto import (
    HsmCryptoError,
    KeyParityError,
    aes_cmac,
    aes_key_check_value,
    combine_components,
    fix_parity,
    has_odd_parity,
    key_check_value,
    pad_iso9797,
    retail_mac_once,
    tdes_cbc_encrypt,
    tdes_ecb_decrypt,
    tdes_ecb_decrypt_once,
    tdes_ecb_encrypt,
    to_hex,
)
from hsm_mock.keycache import KEY_CACHE_SIZE_MAX, KeyCache
from hsm_mock.lmk import (
    KEY_TYPES,
    LMK_CODES,
    SCHEME_KEY_SIZES,
    TEST_LMK,
    VariantLmk,
    decrypt_key_under_kek,
    decrypt_key_under_lmk,
    encrypt_key_under_kek,
    encrypt_key_under_lmk,
    lmk_variant_key,
    resolve_key_type,
    split_key,
)
from switch.wire.payshield import (
    TRAILER_DELIMITER,
    TRAILER_SIZE_MAX,
    Command,
    FieldReader,
    ProtocolError,
)

FIRMWARE = "1500-0023"
OK = "00"
VERIFICATION_FAILED = "01"
COMMAND_DISABLED = "68"
UNKNOWN_COMMAND = COMMAND_DISABLED  # our choice: an unknown code is answered like a disabled one

ZMK, ZPK, TPK, PVK, TAK, ZAK, BDK, CVK, TMK = "000", "001", "002", "002", "003", "008", "009", "402", "002"
MAC_KEY_TYPES = (TAK, ZAK)
PIN_KEY_TYPES = (ZPK, TPK)
# Thales PIN block format codes each command takes (docs/hsm.md §5, "PIN translation"); any
# other code answers 23. 34 (ISO-2: payShield outputs it only from its EMV PIN change commands)
# and 41/42 (Visa PIN change: bound to the card's UDK, which these commands do not carry) are
# in none of them. Which translations PCI allows is pinblock.check_translation's rule.
# PIN_FORMATS: CA, CC (source and destination), Z0 (destination), DC, EC, DA, EA, FW, BK.
PIN_FORMATS = frozenset({pinblock.ISO0, pinblock.DOCUTEL, pinblock.DIEBOLD, pinblock.PLUS, pinblock.ISO1,
                         pinblock.PAY_NOW, pinblock.ISO3, pinblock.ISO4})  # fmt: skip
DUKPT_SOURCE_FORMATS = frozenset({pinblock.ISO0, pinblock.ISO1, pinblock.ISO3})  # G0 (CI: 01)
DUKPT_DESTINATION_FORMATS = frozenset({pinblock.ISO0, pinblock.PLUS, pinblock.ISO1, pinblock.ISO3})  # G0 CI
ISO4 = pinblock.ISO4
PLUS = pinblock.PLUS
ACCOUNT_DIGITS = 12  # the account field: 12 rightmost PAN digits excluding the check digit
PLUS_ACCOUNT_SIZE = 18  # the account field when format 04 is involved (payShield)
PIN_UNDER_LMK_PAIR = "02-03"  # our PIN-under-LMK encoding (docs/hsm.md, "Card issuance": BA/DG/DE)
KSN_TDES_HEX_MAX = 20
KSN_AES_HEX = 24
MAC_SIZES = {"0": 4, "1": 8, "2": 16}  # MAC size flag → bytes (8H, 16H, 32H)
MAC_ALG_CMAC = "5"  # ours: ISO/IEC 9797-1:2011 MAC algorithm 5 = CMAC, with an AES TAK/ZAK
MESSAGE_SIZE_MAX = 32_000  # characters in an M6/M8/GW/Z2/B2 message field

Reply = tuple[str, bytes | str]
Handler = Callable[[FieldReader, "Audit"], Reply]


class Audit:
    """The audit event of one command: key check values and non-secret parameters only."""

    __slots__ = ("event",)

    def __init__(self, event: dict[str, Any]) -> None:
        self.event = event

    def kcv(self, role: str, clear: bytes, *, aes: bool = False) -> str:
        check = aes_key_check_value(clear) if aes else key_check_value(clear)
        self.event.setdefault("kcv", {})[role] = check
        return check

    def kcv_known(self, role: str, check: str) -> None:
        self.event.setdefault("kcv", {})[role] = check

    def note(self, **values: Any) -> None:
        self.event.update(values)


# A parsed request's fields: NamedTuples, immutable as frozen dataclasses are and built in a
# third of their time (a frozen dataclass sets each field through object.__setattr__), once or
# twice an authorisation (docs/performance.md, "The HSM's parse records and audit line").
class _MacRequest(NamedTuple):
    mode: str
    input_format: str
    size: int
    algorithm: str
    padding: int
    key_type: str
    key: str
    iv: bytes
    message: bytes
    mac: str | None


class _DukptMacRequest(NamedTuple):
    mode: str
    variant: str
    bdk: str
    ksn: str
    mac: str | None
    message: bytes


class _DukptPvvRequest(NamedTuple):
    """GQ: a TDES-DUKPT PIN block checked against a PVV, and in mode 1 the message's MAC."""

    mode: str
    mac_mode: str
    bdk: str
    pvk: str
    ksn: str
    block: str
    fmt: str
    account: str
    pvki: str
    pvv: str
    mac: str | None
    message: bytes


class Hsm:
    """The command processor: one per HSM process, shared by every connection. Between
    commands it keeps only its key caches (a pure function of the LMK and the inputs, so a
    hit answers exactly as a miss would); concurrent use from one event loop is safe.
    `key_cache_size_max`: entries per cache (docs/hsm.md §6); 0 = no cache."""

    def __init__(
        self,
        lmk: VariantLmk = TEST_LMK,
        *,
        firmware: str = FIRMWARE,
        lmk_check_convention: str = "thalessim",
        header_length: int = 4,
        disabled_commands: frozenset[str] = frozenset(),
        tcp_sockets: int = 64,
        random_bytes: Callable[[int], bytes] = os.urandom,
        key_cache_size_max: int = KEY_CACHE_SIZE_MAX,
    ) -> None:
        if not 0 <= header_length <= 255:
            raise ValueError("header_length must be 0..255")
        if key_cache_size_max < 0:
            raise ValueError("key_cache_size_max must be ≥ 0 (0: no key cache)")
        # Keys under the LMK → (clear, KCV); (BDK under the LMK, KSN) → DUKPT key. None: off.
        self._lmk_keys = KeyCache(key_cache_size_max) if key_cache_size_max else None
        self._dukpt_keys = KeyCache(key_cache_size_max) if key_cache_size_max else None
        self.lmk = lmk
        self.firmware = firmware
        self.lmk_check_value = lmk.check_value(convention=lmk_check_convention)
        self.header_length = header_length
        self.disabled_commands = frozenset(c.upper() for c in disabled_commands)
        self.tcp_sockets = tcp_sockets
        self._random = random_bytes
        self._handlers: dict[str, Handler] = {
            "NC": self._nc, "NO": self._no, "B2": self._b2,
            "A0": self._a0, "BU": self._bu, "FA": self._fa, "GC": self._gc,
            "CA": self._ca, "CC": self._cc, "CI": self._ci, "G0": self._g0, "Z0": self._z0,
            "DC": self._dc, "EC": self._ec, "DA": self._da, "EA": self._ea,
            "FW": self._fw, "BK": self._bk, "BA": self._ba, "DG": self._dg, "DE": self._de,
            "CW": self._cw, "CY": self._cy,
            "M6": self._m6, "M8": self._m8, "GW": self._gw, "Z2": self._z2, "GQ": self._gq,
            "Z4": self._z4, "Z6": self._z6,
        }  # fmt: skip
        # Commands whose bodies carry binary data (which may hold 0x19): their trailer is
        # found after the fields, by parsing them (see `parse`).
        self._binary_parsers: dict[str, Callable[[FieldReader], Any]] = {
            "B2": self._parse_b2, "M6": self._parse_m6, "M8": self._parse_m8,
            "GW": self._parse_gw, "Z2": self._parse_z2, "GQ": self._parse_gq,
        }  # fmt: skip

    @property
    def commands(self) -> tuple[str, ...]:
        return tuple(sorted(self._handlers))

    # ------------------------------------------------------------------------- entry points

    def parse(self, payload: bytes) -> Command:
        """Frame payload → Command. The trailer (0x19 + up to 32 characters) is split off at
        the first 0x19, except for commands carrying binary data, where it is what follows
        the exactly parsed fields. ProtocolError when the payload is shorter than header +
        command code (the service then closes the connection)."""
        h = self.header_length
        if len(payload) < h + 2:
            raise ProtocolError("message shorter than header + command code")
        header = bytes(payload[:h])
        code = payload[h : h + 2].decode("ascii", "replace")
        rest = bytes(payload[h + 2 :])
        parser = self._binary_parsers.get(code)
        if parser is not None:
            reader = FieldReader(rest)
            try:
                request = parser(reader)
            except (ProtocolError, HsmCryptoError):
                pass  # answered with an error by `handle`; fall back to the first-0x19 split
            else:
                tail = rest[reader.pos :]
                if not tail:
                    return Command(header, code, rest, None, request=request)
                if tail[0] == TRAILER_DELIMITER and len(tail) - 1 <= TRAILER_SIZE_MAX:
                    return Command(header, code, rest[: reader.pos], tail[1:], request=request)
        idx = rest.find(bytes([TRAILER_DELIMITER]))
        if idx >= 0 and len(rest) - idx - 1 <= TRAILER_SIZE_MAX:
            return Command(header, code, rest[:idx], rest[idx + 1 :])
        return Command(header, code, rest, None)

    def handle(self, cmd: Command) -> tuple[str, bytes, dict[str, Any]]:
        """Run one command: (2-digit error code, response body after the error code, audit)."""
        event: dict[str, Any] = {"command": cmd.code}
        if cmd.code in self.disabled_commands:
            event["reason"] = "command disabled"
            return COMMAND_DISABLED, b"", event
        handler = self._handlers.get(cmd.code)
        if handler is None:
            event["reason"] = "unknown command"
            return UNKNOWN_COMMAND, b"", event
        audit = Audit(event)
        try:
            error, body = handler(FieldReader(cmd.body, parsed=cmd.request), audit)
        except (ProtocolError, HsmCryptoError) as exc:
            event["reason"] = str(exc)  # our messages name fields and rules, never values
            return exc.code, b"", event
        return error, body.encode("ascii") if isinstance(body, str) else body, event

    # ------------------------------------------------------------------------- keys

    def _tdes(self, text: str, key_type: str, role: str, audit: Audit, *, parity: str = "10") -> bytes:
        """A DES/TDES key under the LMK as the command's key type, parity checked. Cached by
        (key type, ciphertext) once it decrypted with good parity (errors are never cached:
        the parity code, 10 or 11, only matters on the error path)."""
        cache = self._lmk_keys
        if cache is not None:
            hit = cache.get(("T", key_type, text))
            if hit is not None:
                audit.kcv_known(role, hit[1])
                return hit[0]
        try:
            clear = decrypt_key_under_lmk(text, key_type, lmk=self.lmk, parity_error_code=parity)
        except KeyParityError:
            if self._decrypts_as_other_type(text, key_type):
                raise HsmCryptoError(f"{role}: key of another key type", code="29") from None
            raise
        check = audit.kcv(role, clear)
        if cache is not None:
            cache.put(("T", key_type, text), (clear, check))
        return clear

    def _aes(self, text: str, key_type: str, role: str, audit: Audit) -> bytes:
        """An AES key under the variant LMK (our convention: scheme U = AES-128, T = AES-192,
        no parity); the command decides that the field holds an AES key."""
        cache = self._lmk_keys
        if cache is not None:
            hit = cache.get(("A", key_type, text))
            if hit is not None:
                audit.kcv_known(role, hit[1])
                return hit[0]
        scheme, _ = split_key(text)
        if scheme not in ("U", "T"):
            raise HsmCryptoError(f"{role}: AES keys travel in key scheme U or T", code="26")
        clear = decrypt_key_under_lmk(text, key_type, lmk=self.lmk, check_key_parity=False)
        check = audit.kcv(role, clear, aes=True)
        if cache is not None:
            cache.put(("A", key_type, text), (clear, check))
        return clear

    def _tdes_transaction_key(self, bdk_text: str, bdk: bytes, ksn: str) -> bytes:
        """The TDES DUKPT transaction key of `ksn` (20H) under the clear BDK whose ciphertext
        under the LMK is `bdk_text`: derived once per (BDK under the LMK, KSN)."""
        cache = self._dukpt_keys
        if cache is None:
            return dukpt.tdes_transaction_key(bdk, ksn)
        slot = ("T", bdk_text, ksn.upper())
        key = cache.get(slot)
        if key is None:
            key = dukpt.tdes_transaction_key(bdk, ksn)
            cache.put(slot, key)
        return key

    def _aes_working_key(self, bdk_text: str, bdk: bytes, ksn: str, usage: dukpt.AesUsage) -> bytes:
        """An AES DUKPT working key (AES-128) of `ksn` (24H): the KSN's derivation key is
        derived once per (BDK under the LMK, KSN), each working key is one AES block from it."""
        cache = self._dukpt_keys
        if cache is None:
            return dukpt.aes_transaction_key(bdk, ksn, usage)
        slot = ("A", bdk_text, ksn.upper())
        derivation = cache.get(slot)
        if derivation is None:
            derivation = dukpt.aes_derivation_key(dukpt.aes_initial_key(bdk, ksn), ksn)
            cache.put(slot, derivation)
        return dukpt.aes_working_key(derivation, ksn, usage)

    def _decrypts_as_other_type(self, text: str, key_type: str) -> bool:
        # Only for double/triple-length keys: a random 8-byte block has odd parity 1 time in
        # 256, a random 16-byte key 1 time in 65 536 (per type tried).
        scheme, cipher = split_key(text)
        if len(cipher) < 16:
            return False
        expected = lmk_variant_key(self.lmk, key_type)
        tried = {expected}
        for other in KEY_TYPES:
            variant_key = lmk_variant_key(self.lmk, other)
            if variant_key in tried:
                continue
            tried.add(variant_key)
            clear = decrypt_key_under_lmk(text, other, lmk=self.lmk, check_key_parity=False)
            if has_odd_parity(clear):
                return True
        return False

    def _new_key(self, size: int, *, aes: bool) -> bytes:
        while True:
            key = self._random(size)
            if aes:
                return key
            key = fix_parity(key)
            halves = [key[i : i + 8] for i in range(0, size, 8)]
            if len(set(halves)) == len(halves):  # K1 = K2 would be single DES in disguise
                return key

    # ------------------------------------------------------------------------- NC NO B2

    def _nc(self, r: FieldReader, audit: Audit) -> Reply:
        r.done()
        return OK, self.lmk_check_value + self.firmware

    def _no(self, r: FieldReader, audit: Audit) -> Reply:
        mode = r.digits(2, "mode flag") if r.remaining else "00"
        r.done()
        if mode != "00":
            raise ProtocolError("NO mode flag must be 00")
        # I/O buffer size 1N, Ethernet type 1N, TCP sockets 2N, firmware 9A, DSP fitted 1N, DSP firmware 4A
        return OK, f"31{min(self.tcp_sockets, 99):02d}{self.firmware[:9]:<9}00000"

    @staticmethod
    def _parse_b2(r: FieldReader) -> bytes:
        n = int(r.hex(4, "length"), 16)
        if n > r.remaining:
            raise ProtocolError("echo data shorter than its length", code="80")
        return r.raw(n, "echo data")

    def _b2(self, r: FieldReader, audit: Audit) -> Reply:
        data = r.parse_with(self._parse_b2)
        r.done()
        audit.note(length=len(data))
        return OK, data

    # ------------------------------------------------------------------------- keys: A0 BU FA GC

    def _a0(self, r: FieldReader, audit: Audit) -> Reply:
        mode = r.take(1, "mode")
        if mode not in "01":
            raise ProtocolError("A0 mode must be 0 or 1 (derive modes A/B are not supported)")
        key_type = resolve_key_type(r.take(3, "key type")).code
        lmk_scheme = _scheme(r.take(1, "key scheme (LMK)"))
        kek_text = kek_scheme = None
        kek_type = ZMK
        if mode == "1":
            if r.peek() == b";":
                r.pos += 1
                flag = r.take(1, "ZMK/TMK flag")
                if flag not in "01":
                    raise ProtocolError("ZMK/TMK flag must be 0 or 1")
                kek_type = ZMK if flag == "0" else TMK
            kek_text = r.key("ZMK/TMK")
            kek_scheme = _scheme(r.take(1, "key scheme (ZMK)"))
        aes = False
        if r.peek() == b"#":  # ours: '#A' = generate an AES key (docs/hsm.md)
            r.pos += 1
            if r.take(1, "key algorithm") != "A":
                raise ProtocolError("key algorithm must be A (AES)")
            aes = True
            if lmk_scheme not in ("U", "T"):
                raise HsmCryptoError("AES keys travel in key scheme U or T", code="26")
        r.done()
        size = SCHEME_KEY_SIZES[lmk_scheme]
        if kek_scheme is not None and SCHEME_KEY_SIZES[kek_scheme] != size:
            raise HsmCryptoError("key scheme (ZMK) does not fit the key length", code="26")
        kek = self._tdes(kek_text, kek_type, "kek", audit) if kek_text is not None else None
        clear = self._new_key(size, aes=aes)
        under_lmk = encrypt_key_under_lmk(clear, key_type, lmk_scheme, lmk=self.lmk, check_key_parity=not aes)
        under_kek = ""
        if kek is not None:
            under_kek = encrypt_key_under_kek(clear, kek, kek_scheme, check_key_parity=not aes)
        audit.kcv("generated", clear, aes=aes)
        audit.note(key_type=key_type, scheme=lmk_scheme, aes=aes, export=kek is not None)
        check = aes_key_check_value(clear) if aes else key_check_value(clear)
        return OK, under_lmk + under_kek + check

    def _bu(self, r: FieldReader, audit: Audit) -> Reply:
        code = r.hex(2, "key type code")
        length_flag = r.take(1, "key length flag")
        key_text = r.key("key")
        key_type = None
        if r.peek() == b";":
            r.pos += 1
            key_type = resolve_key_type(r.take(3, "key type")).code
        r.done()
        if code == "FF":
            if key_type is None:
                raise ProtocolError("key type code FF needs ';' and a 3-digit key type")
        elif code in LMK_CODES:
            key_type = key_type or resolve_key_type("0" + code).code
        else:
            raise HsmCryptoError("key type code not supported", code="28")
        sizes = {"0": 8, "1": 16, "2": 24}
        if length_flag not in sizes:
            raise ProtocolError("key length flag must be 0, 1 or 2")
        clear = self._tdes(key_text, key_type, "checked", audit)
        if len(clear) != sizes[length_flag]:
            raise HsmCryptoError("key length flag does not match the key", code="27")
        audit.note(key_type=key_type)
        return OK, key_check_value(clear, length=16)

    def _key_exchange_options(self, r: FieldReader) -> tuple[str | None, str | None, int]:
        """Optional ';' + key scheme (ZMK) + key scheme (LMK) + check value type (0: 16H, 1: 6H)."""
        if r.peek() != b";":
            return None, None, 16
        r.pos += 1
        zmk_scheme = _scheme(r.take(1, "key scheme (ZMK)"))
        lmk_scheme = _scheme(r.take(1, "key scheme (LMK)"))
        kcv_type = r.take(1, "key check value type")
        if kcv_type not in "01":
            raise ProtocolError("key check value type must be 0 or 1")
        return zmk_scheme, lmk_scheme, 16 if kcv_type == "0" else 6

    def _fa(self, r: FieldReader, audit: Audit) -> Reply:
        zmk_text = r.key("ZMK")
        zpk_text = r.key("ZPK under ZMK")
        _, lmk_scheme, kcv_len = self._key_exchange_options(r)
        r.done()
        zmk = self._tdes(zmk_text, ZMK, "zmk", audit, parity="10")
        zpk = decrypt_key_under_kek(zpk_text, zmk, parity_error_code="11")
        audit.kcv("zpk", zpk)
        return OK, encrypt_key_under_lmk(zpk, ZPK, lmk_scheme, lmk=self.lmk) + key_check_value(zpk, length=kcv_len)

    def _gc(self, r: FieldReader, audit: Audit) -> Reply:
        zmk_text = r.key("ZMK")
        zpk_text = r.key("ZPK")
        zmk_scheme, _, kcv_len = self._key_exchange_options(r)
        r.done()
        zmk = self._tdes(zmk_text, ZMK, "zmk", audit, parity="10")
        zpk = self._tdes(zpk_text, ZPK, "zpk", audit, parity="11")
        return OK, encrypt_key_under_kek(zpk, zmk, zmk_scheme) + key_check_value(zpk, length=kcv_len)

    # ------------------------------------------------------------------------- PIN blocks

    def _pin_key(self, text: str, key_type: str, role: str, fmt: str, audit: Audit, *, parity: str) -> bytes:
        if fmt == ISO4:
            return self._aes(text, key_type, role, audit)
        return self._tdes(text, key_type, role, audit, parity=parity)

    @staticmethod
    def _decrypt_pin(key: bytes, block_hex: str, fmt: str, inputs: pinblock.BlockInputs) -> str:
        block = bytes.fromhex(block_hex)
        if fmt == ISO4:
            return pinblock.decipher_iso4(key, block, inputs.pan or "")
        return pinblock.decode_block(fmt, tdes_ecb_decrypt(key, block), inputs)

    @staticmethod
    def _encrypt_pin(key: bytes, pin: str, fmt: str, inputs: pinblock.BlockInputs) -> str:
        if fmt == ISO4:
            return to_hex(pinblock.encipher_iso4(key, pin, inputs.pan or ""))
        return to_hex(tdes_ecb_encrypt(key, pinblock.encode_block(fmt, pin, inputs)))

    def _translate(
        self, r: FieldReader, audit: Audit, *, src_type: str, dst_type: str
    ) -> Reply:
        """CA and CC: source key, destination key, max PIN length, block, formats, account."""
        src_text = r.key("source key")
        dst_text = r.key("destination key")
        max_len = _max_pin_length(r.digits(2, "maximum PIN length"))

        def fields(block_hex: int) -> tuple[str, str, str, pinblock.BlockInputs]:
            block = r.hex(block_hex, "source PIN block")
            src, dst = _format(r, "source", PIN_FORMATS), _format(r, "destination", PIN_FORMATS)
            _block_fits(block_hex, src)
            inputs = _account(r, src, dst)
            r.done()
            return block, src, dst, inputs

        block, src, dst, inputs = _alternatives(r, fields)
        pinblock.check_translation(src, dst)
        src_key = self._pin_key(src_text, src_type, "source", src, audit, parity="10")
        dst_key = self._pin_key(dst_text, dst_type, "destination", dst, audit, parity="11")
        pin = self._decrypt_pin(src_key, block, src, inputs)
        if len(pin) > max_len:
            raise HsmCryptoError("PIN longer than the maximum PIN length", code="24")
        audit.note(formats=f"{src}>{dst}")
        return OK, f"{len(pin):02d}" + self._encrypt_pin(dst_key, pin, dst, inputs) + dst

    def _ca(self, r: FieldReader, audit: Audit) -> Reply:
        return self._translate(r, audit, src_type=TPK, dst_type=ZPK)

    def _cc(self, r: FieldReader, audit: Audit) -> Reply:
        return self._translate(r, audit, src_type=ZPK, dst_type=ZPK)

    # ------------------------------------------------------------------------- DUKPT PIN

    def _dukpt_to_zpk(self, r: FieldReader, audit: Audit, *, with_source_format: bool) -> Reply:
        """G0 (and CI, without the source format): BDK, ZPK, KSN descriptor, KSN, block,
        [source format], destination format, account (12N; 18 characters for destination 04)."""
        bdk_text = r.double_key("BDK")
        zpk_text = r.key("ZPK")
        descriptor = r.hex(3, "KSN descriptor")

        def fields(account_size: int) -> tuple[str, str, str, str, pinblock.BlockInputs]:
            # The KSN (12..20H) is what remains before the fixed-length tail, whose account
            # field is 18 characters only when the destination is 04: parse with 12, then 18.
            tail = 16 + (2 if with_source_format else 0) + 2 + account_size
            ksn = _tdes_ksn(descriptor, r.hex(r.remaining - tail, "KSN") if r.remaining > tail else "")
            block = r.hex(16, "source PIN block")
            src = _format(r, "source", DUKPT_SOURCE_FORMATS) if with_source_format else pinblock.ISO0
            dst = _format(r, "destination", DUKPT_DESTINATION_FORMATS)
            if (dst == PLUS) != (account_size == PLUS_ACCOUNT_SIZE):
                raise ProtocolError("account field: 18 characters with format 04, else 12 digits")
            inputs = _account(r, dst)
            r.done()
            return ksn, block, src, dst, inputs

        ksn, block, src, dst, inputs = _alternatives(r, fields, lengths=(ACCOUNT_DIGITS, PLUS_ACCOUNT_SIZE))
        pinblock.check_translation(src, dst)
        bdk = self._tdes(bdk_text, BDK, "bdk", audit, parity="10")
        if len(bdk) != 16:
            raise HsmCryptoError("TDES DUKPT needs a double-length BDK", code="27")
        zpk = self._tdes(zpk_text, ZPK, "zpk", audit, parity="11")
        pin_key = dukpt.tdes_pin_key(self._tdes_transaction_key(bdk_text, bdk, ksn))
        pin = pinblock.decode_block(src, tdes_ecb_decrypt_once(pin_key, bytes.fromhex(block)), inputs)
        audit.note(formats=f"{src}>{dst}", ksn_counter=dukpt.tdes_ksn_counter(ksn))
        return OK, f"{len(pin):02d}" + self._encrypt_pin(zpk, pin, dst, inputs) + dst

    def _g0(self, r: FieldReader, audit: Audit) -> Reply:
        return self._dukpt_to_zpk(r, audit, with_source_format=True)

    def _ci(self, r: FieldReader, audit: Audit) -> Reply:
        return self._dukpt_to_zpk(r, audit, with_source_format=False)

    def _z0(self, r: FieldReader, audit: Audit) -> Reply:
        """Ours: PIN from AES DUKPT (X9.24-3, ISO-4 source) to a ZPK. BDK 1A+32H/1A+48H,
        ZPK, KSN 24H, source block 32H, destination format 2N, PAN length 2N + PAN."""
        bdk_text = r.key("BDK", single_allowed=False)
        zpk_text = r.key("ZPK")
        ksn = r.hex(KSN_AES_HEX, "KSN")
        block = r.hex(32, "source PIN block")
        dst = _format(r, "destination", PIN_FORMATS)
        pan = _pan(r)
        r.done()
        inputs = _inputs(pan)
        pinblock.check_translation(ISO4, dst)
        bdk = self._aes(bdk_text, BDK, "bdk", audit)
        zpk = self._pin_key(zpk_text, ZPK, "zpk", dst, audit, parity="11")
        pin_key = self._aes_working_key(bdk_text, bdk, ksn, dukpt.AesUsage.PIN_ENCRYPTION)
        pin = pinblock.decipher_iso4(pin_key, bytes.fromhex(block), pan)
        audit.note(formats=f"{ISO4}>{dst}", ksn_counter=dukpt.aes_ksn_counter(ksn))
        return OK, f"{len(pin):02d}" + self._encrypt_pin(zpk, pin, dst, inputs) + dst

    # ------------------------------------------------------------------------- PIN verification

    def _verify_pvv(self, r: FieldReader, audit: Audit, *, key_type: str) -> Reply:
        """DC (TPK) and EC (ZPK): key, PVK pair, block, format, account, PVKI, PVV."""
        key_text = r.key("PIN key")
        pvk_text = r.double_key("PVK")

        def fields(block_hex: int) -> tuple[str, str, pinblock.BlockInputs, str, str]:
            block = r.hex(block_hex, "PIN block")
            fmt = _format(r, "PIN block", PIN_FORMATS)
            _block_fits(block_hex, fmt)
            inputs = _account(r, fmt)
            pvki, pvv = r.digits(1, "PVKI"), r.digits(4, "PVV")
            r.done()
            return block, fmt, inputs, pvki, pvv

        block, fmt, inputs, pvki, pvv = _alternatives(r, fields)
        key = self._pin_key(key_text, key_type, "pin_key", fmt, audit, parity="10")
        pvk = self._tdes(pvk_text, PVK, "pvk", audit, parity="11")
        pin = self._decrypt_pin(key, block, fmt, inputs)
        expected = cardverify.visa_pvv(pvk, _account_digits(inputs), pvki, pin, check_digit_included=False)
        audit.note(format=fmt)
        return (OK if hmac.compare_digest(expected, pvv) else VERIFICATION_FAILED), ""

    def _dc(self, r: FieldReader, audit: Audit) -> Reply:
        return self._verify_pvv(r, audit, key_type=TPK)

    def _ec(self, r: FieldReader, audit: Audit) -> Reply:
        return self._verify_pvv(r, audit, key_type=ZPK)

    def _ibm_fields(
        self, r: FieldReader, *, with_max_length: bool, with_offset: bool
    ) -> tuple[str, str, int, int, pinblock.BlockInputs, str, str, str | None]:
        """PVK-dependent tail of DA/EA/BK: [max PIN length], block, format, check length,
        account, decimalisation table, validation data, [offset]."""

        def fields(block_hex: int) -> tuple[str, str, int, int, pinblock.BlockInputs, str, str, str | None]:
            max_len = _max_pin_length(r.digits(2, "maximum PIN length")) if with_max_length else 12
            block = r.hex(block_hex, "PIN block")
            fmt = _format(r, "PIN block", PIN_FORMATS)
            _block_fits(block_hex, fmt)
            check_len = int(r.digits(2, "check length"))
            if not 4 <= check_len <= 12:
                raise ProtocolError("check length must be 04..12")
            inputs = _account(r, fmt)
            table = r.take(16, "decimalisation table")
            data = r.take(12, "PIN validation data")
            offset = None
            if with_offset:
                offset = r.take(12, "offset")[:check_len]
                if not offset.isdigit():
                    raise ProtocolError("offset must be check-length digits, left-justified, F-padded")
            r.done()
            return block, fmt, max_len, check_len, inputs, table, data, offset

        return _alternatives(r, fields)

    def _pvk_any_length(self, r: FieldReader, parse_rest: Callable[[], Any]) -> tuple[str, Any]:
        """A PVK that may be bare 16H or 32H (IBM 3624): the exact length decides."""
        if r.peek() in (b"U", b"X", b"T", b"Y", b"Z", b"S", b"R"):
            return r.key("PVK"), parse_rest()

        def attempt(n: int) -> tuple[str, Any]:
            return r.hex(n, "PVK"), parse_rest()

        return _alternatives(r, attempt, lengths=(16, 32))

    def _verify_ibm(self, r: FieldReader, audit: Audit, *, key_type: str) -> Reply:
        """DA (TPK) and EA (ZPK): key, PVK, max PIN length, block, format, check length,
        account, decimalisation table, validation data, offset."""
        key_text = r.key("PIN key")
        pvk_text, (block, fmt, max_len, check_len, inputs, table, data, offset) = self._pvk_any_length(
            r, lambda: self._ibm_fields(r, with_max_length=True, with_offset=True)
        )
        key = self._pin_key(key_text, key_type, "pin_key", fmt, audit, parity="10")
        pvk = self._tdes(pvk_text, PVK, "pvk", audit, parity="11")
        pin = self._decrypt_pin(key, block, fmt, inputs)
        if len(pin) > max_len:
            raise HsmCryptoError("PIN longer than the maximum PIN length", code="24")
        validation = cardverify.expand_validation_data(data, _account_digits(inputs))
        matched = len(pin) >= check_len and cardverify.verify_ibm3624_offset(pvk, validation, table, pin, offset)
        audit.note(format=fmt)
        return (OK if matched else VERIFICATION_FAILED), ""

    def _da(self, r: FieldReader, audit: Audit) -> Reply:
        return self._verify_ibm(r, audit, key_type=TPK)

    def _ea(self, r: FieldReader, audit: Audit) -> Reply:
        return self._verify_ibm(r, audit, key_type=ZPK)

    # ------------------------------------------------------------------------- issuance

    def _pin_key_type(self, r: FieldReader) -> str:
        key_type = resolve_key_type(r.take(3, "key type")).code
        if key_type not in PIN_KEY_TYPES:
            raise HsmCryptoError("key type must be 001 (ZPK) or 002 (TPK)", code="29")
        return key_type

    def _fw(self, r: FieldReader, audit: Audit) -> Reply:
        """PVV of a customer-selected PIN: key type, TPK/ZPK, PVK pair, block, format, account, PVKI."""
        key_type = self._pin_key_type(r)
        key_text = r.key("PIN key")
        pvk_text = r.double_key("PVK")

        def fields(block_hex: int) -> tuple[str, str, pinblock.BlockInputs, str]:
            block = r.hex(block_hex, "PIN block")
            fmt = _format(r, "PIN block", PIN_FORMATS)
            _block_fits(block_hex, fmt)
            inputs = _account(r, fmt)
            pvki = r.digits(1, "PVKI")
            r.done()
            return block, fmt, inputs, pvki

        block, fmt, inputs, pvki = _alternatives(r, fields)
        key = self._pin_key(key_text, key_type, "pin_key", fmt, audit, parity="10")
        pvk = self._tdes(pvk_text, PVK, "pvk", audit, parity="11")
        pin = self._decrypt_pin(key, block, fmt, inputs)
        audit.note(format=fmt)
        return OK, cardverify.visa_pvv(pvk, _account_digits(inputs), pvki, pin, check_digit_included=False)

    def _bk(self, r: FieldReader, audit: Audit) -> Reply:
        """IBM 3624 offset of a customer-selected PIN: key type, TPK/ZPK, PVK, block, format,
        check length, account, decimalisation table, validation data."""
        key_type = self._pin_key_type(r)
        key_text = r.key("PIN key")
        pvk_text, (block, fmt, _, check_len, inputs, table, data, _) = self._pvk_any_length(
            r, lambda: self._ibm_fields(r, with_max_length=False, with_offset=False)
        )
        key = self._pin_key(key_text, key_type, "pin_key", fmt, audit, parity="10")
        pvk = self._tdes(pvk_text, PVK, "pvk", audit, parity="11")
        pin = self._decrypt_pin(key, block, fmt, inputs)
        if len(pin) < check_len:
            raise HsmCryptoError("PIN shorter than the check length", code="24")
        validation = cardverify.expand_validation_data(data, _account_digits(inputs))
        offset = cardverify.ibm3624_offset(pvk, validation, table, pin)
        audit.note(format=fmt)
        return OK, offset.ljust(12, "F")

    def _pin_lmk_key(self) -> bytes:
        return self.lmk.pair(PIN_UNDER_LMK_PAIR)

    def _ba(self, r: FieldReader, audit: Audit) -> Reply:
        """Clear PIN (4..12 digits, may be right-padded with F to 13) + account 12N → PIN
        under LMK, 16H (our encoding, docs/hsm.md)."""
        if r.remaining < 12 + 4:
            raise ProtocolError("BA needs a PIN and a 12-digit account number")
        pin = r.take(r.remaining - 12, "PIN").rstrip("F")
        account = r.digits(12, "account number")
        r.done()
        block = pinblock.encode_iso0(pin, account=account)
        return OK, to_hex(tdes_ecb_encrypt(self._pin_lmk_key(), block))

    def _pin_under_lmk(self, text: str, account: str) -> str:
        clear = tdes_ecb_decrypt(self._pin_lmk_key(), bytes.fromhex(text))
        return pinblock.decode_iso0(clear, account=account)

    def _dg(self, r: FieldReader, audit: Audit) -> Reply:
        """Visa PVV from a PIN under LMK: PVK pair, PIN 16H, account 12N, PVKI 1N."""
        pvk_text = r.double_key("PVK")
        pin_text = r.hex(16, "PIN under LMK")
        account = r.digits(12, "account number")
        pvki = r.digits(1, "PVKI")
        r.done()
        pvk = self._tdes(pvk_text, PVK, "pvk", audit)
        pin = self._pin_under_lmk(pin_text, account)
        return OK, cardverify.visa_pvv(pvk, account, pvki, pin, check_digit_included=False)

    def _de(self, r: FieldReader, audit: Audit) -> Reply:
        """IBM offset from a PIN under LMK: PVK, PIN 16H, check length 2N, account 12N,
        decimalisation table 16N, validation data 12A."""

        def rest() -> tuple[str, int, str, str, str]:
            pin_text = r.hex(16, "PIN under LMK")
            check_len = int(r.digits(2, "check length"))
            account = r.digits(12, "account number")
            table, data = r.take(16, "decimalisation table"), r.take(12, "PIN validation data")
            r.done()
            return pin_text, check_len, account, table, data

        pvk_text, (pin_text, check_len, account, table, data) = self._pvk_any_length(r, rest)
        pvk = self._tdes(pvk_text, PVK, "pvk", audit)
        pin = self._pin_under_lmk(pin_text, account)
        if not 4 <= check_len <= len(pin):
            raise HsmCryptoError("check length must be 4..PIN length", code="24")
        offset = cardverify.ibm3624_offset(pvk, cardverify.expand_validation_data(data, account), table, pin)
        return OK, offset.ljust(12, "F")

    # ------------------------------------------------------------------------- CVV

    def _cvv_fields(self, r: FieldReader) -> tuple[str, str, str]:
        pan = r.until(b";", "primary account number", size_max=19)
        if not pan.isdigit():
            raise ProtocolError("primary account number must be digits")
        expiry = r.digits(4, "expiration date")
        service_code = r.digits(3, "service code")
        r.done()
        return pan, expiry, service_code

    def _cw(self, r: FieldReader, audit: Audit) -> Reply:
        cvk_text = r.double_key("CVK")
        pan, expiry, service_code = self._cvv_fields(r)
        cvk = self._tdes(cvk_text, CVK, "cvk", audit)
        return OK, cardverify.visa_cvv(cvk, pan, expiry, service_code)

    def _cy(self, r: FieldReader, audit: Audit) -> Reply:
        cvk_text = r.double_key("CVK")
        cvv = r.digits(3, "CVV")
        pan, expiry, service_code = self._cvv_fields(r)
        cvk = self._tdes(cvk_text, CVK, "cvk", audit)
        expected = cardverify.visa_cvv(cvk, pan, expiry, service_code)
        return (OK if hmac.compare_digest(expected, cvv) else VERIFICATION_FAILED), ""

    # ------------------------------------------------------------------------- MAC: M6 M8

    def _parse_mac(self, r: FieldReader, *, verify: bool) -> _MacRequest:
        mode = r.take(1, "mode flag")
        input_format = r.take(1, "input format flag")
        size_flag = r.take(1, "MAC size")
        algorithm = r.take(1, "MAC algorithm")
        padding = r.take(1, "padding method")
        key_type = r.hex(3, "key type")
        key = r.key("MAC key")
        if mode not in "0123" or input_format not in "012" or size_flag not in MAC_SIZES:
            raise ProtocolError("mode 0-3, input format 0-2, MAC size 0-2")
        if algorithm not in ("1", "3", MAC_ALG_CMAC) or padding not in "0123":
            raise ProtocolError("MAC algorithm 1, 3 or 5; padding method 0-3")
        if size_flag == "2" and algorithm != MAC_ALG_CMAC:
            raise ProtocolError("MAC size 2 (32H) is for algorithm 5 (CMAC) only")
        if algorithm == MAC_ALG_CMAC and (mode != "0" or padding != "0"):
            raise ProtocolError("CMAC: mode 0 and padding method 0 only")
        iv = bytes.fromhex(r.hex(16, "IV")) if mode in "23" else bytes(8)
        length = int(r.hex(4, "message length"), 16)
        if length > MESSAGE_SIZE_MAX:
            raise ProtocolError("message longer than the limit", code="80")
        message = r.raw(length, "message")
        if input_format == "1":
            try:
                message = bytes.fromhex(message.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                raise ProtocolError("hex-encoded message is not hex") from None
        mac = None
        if verify and mode in "03":
            mac = r.hex(2 * MAC_SIZES[size_flag], "MAC")
        return _MacRequest(mode, input_format, MAC_SIZES[size_flag], algorithm, int(padding), key_type, key, iv,
                           message, mac)  # fmt: skip

    def _parse_m6(self, r: FieldReader) -> _MacRequest:
        return self._parse_mac(r, verify=False)

    def _parse_m8(self, r: FieldReader) -> _MacRequest:
        return self._parse_mac(r, verify=True)

    def _mac(self, req: _MacRequest, audit: Audit) -> bytes:
        """The full MAC (mode 0/3) or the intermediate chaining value (mode 1/2)."""
        if req.key_type not in MAC_KEY_TYPES:
            resolve_key_type(req.key_type)  # 28 when the code is unknown
            raise HsmCryptoError("key type must be 003 (TAK) or 008 (ZAK)", code="29")
        audit.note(algorithm=req.algorithm, padding=req.padding, mode=req.mode, key_type=req.key_type)
        if req.algorithm == MAC_ALG_CMAC:
            return aes_cmac(self._aes(req.key, req.key_type, "mac_key", audit), req.message)
        key = self._tdes(req.key, req.key_type, "mac_key", audit)
        if req.algorithm == "3" and len(key) != 16:
            raise HsmCryptoError("ISO 9797-1 algorithm 3 needs a double-length key", code="27")
        final = req.mode in "03"
        if final:
            if req.padding == 3 and req.mode == "3":
                raise ProtocolError("padding method 3 needs the whole message (mode 0)")
            data = pad_iso9797(req.message, req.padding)
        else:
            if not req.message or len(req.message) % 8:
                raise ProtocolError("blocks of a multi-block message are multiples of 8 bytes")
            data = req.message
        chaining_key = key if req.algorithm == "1" else key[:8]
        state = tdes_cbc_encrypt(chaining_key, data, iv=req.iv)[-8:]
        if not final:
            return state
        if req.algorithm == "3":
            state = tdes_ecb_encrypt(key[:8], tdes_ecb_decrypt(key[8:], state))
        return state

    def _m6(self, r: FieldReader, audit: Audit) -> Reply:
        req = r.parse_with(self._parse_m6)
        r.done()
        value = self._mac(req, audit)
        return OK, to_hex(value if req.mode in "12" else value[: req.size])

    def _m8(self, r: FieldReader, audit: Audit) -> Reply:
        req = r.parse_with(self._parse_m8)
        r.done()
        value = self._mac(req, audit)
        if req.mode in "12":
            return OK, to_hex(value)
        return (OK if hmac.compare_digest(to_hex(value[: req.size]), req.mac or "") else VERIFICATION_FAILED), ""

    # ------------------------------------------------------------------------- key ceremony: Z4 Z6

    def _z4(self, r: FieldReader, audit: Audit) -> Reply:
        """Ours (payShield does this at its console, FK): form a double-length key from 2..9
        clear components entered by key custodians, XORed. Key type 3H, LMK scheme 1A (U),
        component count 1N, components 32H each (odd parity) → key under the LMK + KCV 6H."""
        key_type = resolve_key_type(r.take(3, "key type")).code
        scheme = _scheme(r.take(1, "key scheme (LMK)"))
        if SCHEME_KEY_SIZES[scheme] != 16:
            raise HsmCryptoError("components form double-length keys: scheme U or X", code="26")
        count = int(r.digits(1, "number of components"))
        if not 2 <= count <= 9:
            raise ProtocolError("number of components must be 2..9")
        components = []
        for n in range(count):
            component = bytes.fromhex(r.hex(32, f"component {n + 1}"))
            if not has_odd_parity(component):
                raise HsmCryptoError(f"component {n + 1} parity", code="10")
            components.append(component)
        r.done()
        clear = combine_components(components)
        audit.kcv("formed", clear)
        audit.note(key_type=key_type, components=count)
        return OK, encrypt_key_under_lmk(clear, key_type, scheme, lmk=self.lmk) + key_check_value(clear)

    def _z6(self, r: FieldReader, audit: Audit) -> Reply:
        """Ours (payShield A0 derive modes): derive a DUKPT initial key and export it under a
        ZMK for the key-injection facility. Algorithm 1A (`T` TDES: IPEK from BDK + KSN 20H;
        `A` AES-128: initial key from BDK + initial key ID 16H), BDK (009), KSN / IKID, ZMK
        (000), export scheme 1A (X or U) → initial key under the ZMK + KCV 6H (TDES KCV; AES:
        CMAC KCV). The BDK never leaves the HSM; the initial key leaves only under the ZMK."""
        algorithm = r.take(1, "algorithm")
        if algorithm not in "TA":
            raise ProtocolError("algorithm must be T (TDES DUKPT) or A (AES DUKPT)")
        bdk_text = r.key("BDK", single_allowed=False)
        ident = r.hex(20 if algorithm == "T" else 16, "KSN" if algorithm == "T" else "initial key ID")
        zmk = self._tdes(r.key("ZMK", single_allowed=False), ZMK, "zmk", audit, parity="11")
        export = _scheme(r.take(1, "key scheme (ZMK)"))
        r.done()
        if algorithm == "T":
            bdk = self._tdes(bdk_text, BDK, "bdk", audit)
            initial = dukpt.tdes_ipek(bdk, ident)
            check = key_check_value(initial)
        else:
            bdk = self._aes(bdk_text, BDK, "bdk", audit)
            initial = dukpt.aes_initial_key(bdk, ident)
            check = aes_key_check_value(initial)
        audit.note(algorithm=algorithm)
        under_zmk = encrypt_key_under_kek(initial, zmk, export, check_key_parity=False)
        return OK, under_zmk + check

    # ------------------------------------------------------------------------- DUKPT MAC: GW Z2

    def _parse_gw(self, r: FieldReader) -> _DukptMacRequest:
        mode = r.take(1, "MAC mode")
        method = r.take(1, "MAC method")
        if mode not in "123456" or method not in "12":
            raise ProtocolError("MAC mode 1-6, MAC method 1 (request key) or 2 (response key)")
        bdk = r.double_key("BDK")
        descriptor = r.hex(3, "KSN descriptor")
        ksn = _tdes_ksn(descriptor, r.hex(_descriptor_length(descriptor), "KSN"))
        mac = r.hex(16 if mode == "1" else 8, "MAC") if mode in "123" else None
        length = int(r.digits(4, "message length"))
        return _DukptMacRequest(mode, method, bdk, ksn, mac, r.raw(length, "message"))

    def _gw(self, r: FieldReader, audit: Audit) -> Reply:
        """MAC with the TDES DUKPT MAC key (X9.19, zero padding): modes 1-3 verify the 8-byte,
        approval (left 4 bytes) or decline (right 4 bytes) MAC, modes 4-6 generate them."""
        req = r.parse_with(self._parse_gw)
        r.done()
        bdk = self._tdes(req.bdk, BDK, "bdk", audit)
        if len(bdk) != 16:
            raise HsmCryptoError("TDES DUKPT needs a double-length BDK", code="27")
        transaction_key = self._tdes_transaction_key(req.bdk, bdk, req.ksn)
        variant = dukpt.tdes_mac_request_key if req.variant == "1" else dukpt.tdes_mac_response_key
        mac = retail_mac_once(variant(transaction_key), req.message)  # a key used once
        part = {"1": mac, "4": mac, "2": mac[:4], "5": mac[:4], "3": mac[4:], "6": mac[4:]}[req.mode]
        audit.note(mode=req.mode, method=req.variant, ksn_counter=dukpt.tdes_ksn_counter(req.ksn))
        if req.mode in "456":
            return OK, to_hex(part)
        return (OK if hmac.compare_digest(to_hex(part), req.mac or "") else VERIFICATION_FAILED), ""

    def _parse_gq(self, r: FieldReader) -> _DukptPvvRequest:
        mode = r.take(1, "mode")
        if mode not in "01":
            raise ProtocolError("mode 0 (PIN) or 1 (PIN and MAC)")
        mac_mode = ""
        if mode == "1":
            mac_mode, method = r.take(1, "MAC mode"), r.take(1, "MAC method")
            if mac_mode not in "123" or method != "1":
                raise ProtocolError("MAC mode 1-3, MAC method 1 (X9.19)")
        bdk = r.double_key("BDK")
        pvk = r.double_key("PVK")
        descriptor = r.hex(3, "KSN descriptor")
        ksn = _tdes_ksn(descriptor, r.hex(_descriptor_length(descriptor), "KSN"))
        block = r.hex(16, "source PIN block")
        fmt = _format(r, "source", DUKPT_SOURCE_FORMATS)
        account = r.digits(ACCOUNT_DIGITS, "account number")
        pvki, pvv = r.digits(1, "PVKI"), r.digits(4, "PVV")
        mac, message = None, b""
        if mode == "1":
            mac = r.hex(16 if mac_mode == "1" else 8, "MAC")
            message = r.raw(int(r.digits(4, "message length")), "message")
        return _DukptPvvRequest(mode, mac_mode, bdk, pvk, ksn, block, fmt, account, pvki, pvv, mac, message)

    def _gq(self, r: FieldReader, audit: Audit) -> Reply:
        """Verify a PIN by Visa PVV from its TDES-DUKPT block (X9.24: the transaction's PIN
        key), the work of G0 + EC in one command; mode 1 also verifies the message's X9.19 MAC
        under the transaction's request MAC key, as GW mode 1-3 does. The error code is the
        PIN's (00, 01, or 20/24 for a block that does not decode); in mode 1 the body is the
        MAC's code (00, 01), given whenever the keys were usable, so a host learns both."""
        req = r.parse_with(self._parse_gq)
        r.done()
        bdk = self._tdes(req.bdk, BDK, "bdk", audit, parity="10")
        if len(bdk) != 16:
            raise HsmCryptoError("TDES DUKPT needs a double-length BDK", code="27")
        pvk = self._tdes(req.pvk, PVK, "pvk", audit, parity="11")
        transaction_key = self._tdes_transaction_key(req.bdk, bdk, req.ksn)
        mac_code = ""
        if req.mode == "1":
            mac = retail_mac_once(dukpt.tdes_mac_request_key(transaction_key), req.message)
            part = {"1": mac, "2": mac[:4], "3": mac[4:]}[req.mac_mode]
            mac_code = OK if hmac.compare_digest(to_hex(part), req.mac or "") else VERIFICATION_FAILED
        audit.note(mode=req.mode, format=req.fmt, ksn_counter=dukpt.tdes_ksn_counter(req.ksn))
        inputs = pinblock.BlockInputs(account=req.account, pad=req.account[: pinblock.DOCUTEL_PAD_SIZE])
        pin_key = dukpt.tdes_pin_key(transaction_key)
        try:
            pin = pinblock.decode_block(req.fmt, tdes_ecb_decrypt_once(pin_key, bytes.fromhex(req.block)), inputs)
        except (ProtocolError, HsmCryptoError) as exc:
            if not mac_code:
                raise
            audit.note(mac=mac_code)
            return exc.code, mac_code  # the PIN's error, and still the MAC's verdict
        expected = cardverify.visa_pvv(pvk, req.account, req.pvki, pin, check_digit_included=False)
        if mac_code:
            audit.note(mac=mac_code)
        return (OK if hmac.compare_digest(expected, req.pvv) else VERIFICATION_FAILED), mac_code

    def _parse_z2(self, r: FieldReader) -> _DukptMacRequest:
        mode = r.take(1, "MAC mode")
        direction = r.take(1, "direction")
        size_flag = r.take(1, "MAC size")
        if mode not in "14" or direction not in "01" or size_flag not in MAC_SIZES:
            raise ProtocolError("MAC mode 1 or 4, direction 0 or 1, MAC size 0-2")
        bdk = r.key("BDK", single_allowed=False)
        ksn = r.hex(KSN_AES_HEX, "KSN")
        mac = r.hex(2 * MAC_SIZES[size_flag], "MAC") if mode == "1" else None
        length = int(r.digits(4, "message length"))
        message = r.raw(length, "message")
        return _DukptMacRequest(mode, direction + size_flag, bdk, ksn, mac, message)

    def _z2(self, r: FieldReader, audit: Audit) -> Reply:
        """Ours: AES-CMAC with the AES DUKPT MAC key (X9.24-3; usage 2000 for requests,
        2001 for responses; AES-128 working key)."""
        req = r.parse_with(self._parse_z2)
        r.done()
        direction, size_flag = req.variant
        bdk = self._aes(req.bdk, BDK, "bdk", audit)
        usage = dukpt.AES_MAC_REQUEST_USAGE if direction == "0" else dukpt.AES_MAC_RESPONSE_USAGE
        key = self._aes_working_key(req.bdk, bdk, req.ksn, usage)
        mac = to_hex(aes_cmac(key, req.message, length=MAC_SIZES[size_flag]))
        audit.note(mode=req.mode, direction=direction, ksn_counter=dukpt.aes_ksn_counter(req.ksn))
        if req.mode == "4":
            return OK, mac
        return (OK if hmac.compare_digest(mac, req.mac or "") else VERIFICATION_FAILED), ""


# ----------------------------------------------------------------------------- field helpers


def _scheme(tag: str) -> str:
    if tag in ("S", "R"):
        raise HsmCryptoError("key blocks are not supported by this variant-LMK HSM", code="26")
    if tag not in SCHEME_KEY_SIZES:
        raise HsmCryptoError("key scheme must be Z, U, T, X or Y", code="26")
    return tag


def _format(r: FieldReader, what: str, accepted: frozenset[str]) -> str:
    """A Thales PIN block format code the command takes; any other answers 23."""
    code = r.digits(2, f"{what} PIN block format")
    if code not in accepted:
        raise ProtocolError(f"{what} PIN block format not supported by this command", code="23")
    return code


def _block_fits(block_hex: int, fmt: str) -> None:
    if 2 * pinblock.pin_block_format(fmt).size != block_hex:
        raise ProtocolError("PIN block length does not fit its format (48: 32H, others 16H)")


def _pan(r: FieldReader) -> str:
    n = int(r.digits(2, "PAN length"))
    if not 12 <= n <= 19:
        raise ProtocolError("PAN length must be 12..19")
    return r.digits(n, "PAN")


def _plus_pan(r: FieldReader) -> str:
    """The 18-character account field of format 04: the PAN right-justified, F-filled on the
    left (payShield); 13..18 digits, so that 12 digits precede the check digit."""
    text = r.take(PLUS_ACCOUNT_SIZE, "account number (format 04)")
    pan = text.lstrip("F")
    if not pan.isascii() or not pan.isdigit() or not 13 <= len(pan) <= PLUS_ACCOUNT_SIZE:
        raise ProtocolError("format 04: the account field is the PAN (13..18 digits), F-filled on the left to 18")
    return pan


def _inputs(pan: str) -> pinblock.BlockInputs:
    account = pinblock.account_number(pan)
    return pinblock.BlockInputs(account=account, pan=pan, pad=account[: pinblock.DOCUTEL_PAD_SIZE])


def _account(r: FieldReader, *formats: str) -> pinblock.BlockInputs:
    """The account field, shaped by the formats involved: with format 48, PAN length 2N + PAN
    (ours: ISO-4 binds the whole PAN); else with 04, 18 characters (the PAN, F-filled on the
    left: 04 binds the 12 leftmost digits); else the 12-digit account number. The account
    number (12 rightmost digits excluding the check digit) is derived from a whole PAN; the
    Docutel pad (02) is its first 9 digits (ThalesSim's convention)."""
    if ISO4 in formats:
        return _inputs(_pan(r))
    if PLUS in formats:
        return _inputs(_plus_pan(r))
    account = r.digits(ACCOUNT_DIGITS, "account number")
    return pinblock.BlockInputs(account=account, pad=account[: pinblock.DOCUTEL_PAD_SIZE])


def _account_digits(inputs: pinblock.BlockInputs) -> str:
    """The 12-digit account number PVV and IBM 3624 validation data are computed from."""
    assert inputs.account is not None, "_account always sets the account number"
    return inputs.account


def _max_pin_length(text: str) -> int:
    value = int(text)
    if not 4 <= value <= 12:
        raise ProtocolError("maximum PIN length must be 04..12")
    return value


def _alternatives(r: FieldReader, parse: Callable[[int], Any], *, lengths: tuple[int, ...] = (16, 32)) -> Any:
    """Parse the rest of the command with each candidate field length (a PIN block of 16H or,
    for ISO-4, 32H; a bare PVK of 16H or 32H): exact-length parsing accepts at most one."""
    start = r.pos
    first: ProtocolError | None = None
    for n in lengths:
        r.pos = start
        try:
            return parse(n)
        except ProtocolError as exc:
            first = first or exc
    assert first is not None
    raise first


@lru_cache(maxsize=256)  # a handful of descriptors in use; parsed twice per GW/G0 otherwise
def _descriptor_length(descriptor: str) -> int:
    """KSN descriptor 3H: key set ID length, sub-key length, device ID length (hex digits);
    the KSN those describe has them plus 5 hex digits for the counter."""
    return sum(int(c, 16) for c in descriptor) + 5


def _tdes_ksn(descriptor: str, ksn: str) -> str:
    """A 12..20H KSN as the 20H KSN of X9.24-1: left-padded with F. The descriptor's length
    must fit; digits beyond it on the left must already be F padding."""
    needed = _descriptor_length(descriptor)
    if not 12 <= len(ksn) <= KSN_TDES_HEX_MAX or needed > len(ksn):
        raise ProtocolError("KSN must be 12..20H and as long as its descriptor says")
    if set(ksn[: len(ksn) - needed]) - {"F"}:
        raise ProtocolError("KSN longer than its descriptor, and not F-padded")
    return ksn.rjust(KSN_TDES_HEX_MAX, "F")


def _retail_mac(key: bytes, message: bytes) -> bytes:
    """ANSI X9.19 (ISO 9797-1 algorithm 3), padding method 1 (zeros), full 8 bytes."""
    padded = pad_iso9797(message, 1)
    state = tdes_cbc_encrypt(key[:8], padded)[-8:]
    return tdes_ecb_encrypt(key[:8], tdes_ecb_decrypt(key[8:], state))
