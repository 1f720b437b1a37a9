"""ISO 9564-1 PIN blocks: formats 0, 1 and 3 (clear 8-byte blocks for TDES) and format 4
(16-byte, enciphered with AES). Pure functions; errors carry a payShield error code and
never the PIN, the PAN or a block.

Clear block layouts (one hex digit per nibble):
    format 0: PIN field  0 L P P P P P/F ... F            XOR  PAN field 0000 + account (12)
    format 1: PIN field  1 L P P P P P/R ... R            (no PAN; R = any hex fill)
    format 3: PIN field  3 L P P P P P/R ... R            XOR  PAN field, R = fill from A..F
    format 4: PIN field  4 L P P P P P/A ... A (8 bytes) + 8 random bytes
              PAN field  M + PAN (M = PAN length - 12, 12 digits left-padded with 0 when
              shorter) + zeros to 16 bytes;  block = AES(K, AES(K, PIN field) XOR PAN field)
Account number (formats 0 and 3): the 12 rightmost PAN digits excluding the check digit,
left-padded with zeros if the PAN is shorter (payShield takes the same 12 digits as a field).
Fill for formats 1, 3 and 4 is a parameter for deterministic tests; by default it is drawn
from the OS CSPRNG (secrets / os.urandom).

Error codes (payShield): 20 PIN block invalid (control nibble, length nibble, padding),
23 unknown PIN block format, 24 PIN length outside 4..12, 15 invalid input (non-digit PIN
or PAN, malformed fill).
"""

from __future__ import annotations

import os
import secrets

from hsm_mock.crypto import AES_BLOCK_SIZE, DES_BLOCK_SIZE, HsmCryptoError, aes_ecb_decrypt, aes_ecb_encrypt, xor

PIN_LENGTH_MIN = 4
PIN_LENGTH_MAX = 12
PAN_LENGTH_MAX = 19
ISO4_PAN_LENGTH_MAX = 19  # the M nibble covers 12..19 digits
FORMATS_TDES = (0, 1, 3)
FORMAT_AES = 4

# Thales PIN block format codes (docs/hsm.md §8, "payShield host protocol: sources"); 48 is
# ours for ISO-4.
THALES_FORMAT_CODES = {"01": 0, "05": 1, "47": 3, "48": 4}

_HEX = "0123456789ABCDEF"
_ISO3_FILL = "ABCDEF"


class PinBlockError(HsmCryptoError):
    """A PIN, PAN or PIN block is unusable; `code` is the payShield error code."""


# ----------------------------------------------------------------------------- inputs


def _check_pin(pin: str) -> None:
    if not isinstance(pin, str) or not pin.isascii() or not pin.isdigit():
        raise PinBlockError("PIN must be decimal digits", code="15")
    if not PIN_LENGTH_MIN <= len(pin) <= PIN_LENGTH_MAX:
        raise PinBlockError(f"PIN length must be {PIN_LENGTH_MIN}..{PIN_LENGTH_MAX} digits", code="24")


def _check_pan(pan: str) -> None:
    if not isinstance(pan, str) or not pan.isascii() or not pan.isdigit() or not 1 <= len(pan) <= PAN_LENGTH_MAX:
        raise PinBlockError(f"PAN must be 1..{PAN_LENGTH_MAX} decimal digits", code="15")


def account_number(pan: str) -> str:
    """The 12 rightmost PAN digits excluding the check digit (formats 0 and 3, payShield's
    12-digit account field), left-padded with zeros when the PAN is shorter than 13 digits."""
    _check_pan(pan)
    return pan[:-1][-12:].rjust(12, "0")


def _pan_field(account: str) -> bytes:
    if len(account) != 12 or not account.isascii() or not account.isdigit():
        raise PinBlockError("account number must be 12 decimal digits", code="15")
    return bytes.fromhex("0000" + account)


def _resolve_account(pan: str | None, account: str | None) -> str:
    if (pan is None) == (account is None):
        raise PinBlockError("give exactly one of pan= or account=", code="15")
    return account_number(pan) if pan is not None else account  # type: ignore[return-value]


def _fill(count: int, fill: str | None, alphabet: str) -> str:
    if fill is None:
        return "".join(secrets.choice(alphabet) for _ in range(count))
    fill = fill.upper()
    if len(fill) < count or any(c not in alphabet for c in fill[:count]):
        raise PinBlockError(f"fill must be at least {count} characters from {alphabet}", code="15")
    return fill[:count]


def _pin_field(control: int, pin: str, fill: str) -> bytes:
    return bytes.fromhex(f"{control:X}{len(pin):X}{pin}{fill}")


def _parse_pin_field(field: bytes, control: int, fill_alphabet: str) -> str:
    text = field.hex().upper()
    if int(text[0], 16) != control:
        raise PinBlockError("PIN block control field does not match the format", code="20")
    length = int(text[1], 16)
    if not PIN_LENGTH_MIN <= length <= PIN_LENGTH_MAX:
        raise PinBlockError(f"PIN length must be {PIN_LENGTH_MIN}..{PIN_LENGTH_MAX} digits", code="24")
    pin, fill = text[2 : 2 + length], text[2 + length :]
    if not pin.isdigit() or any(c not in fill_alphabet for c in fill):
        raise PinBlockError("PIN block digits or padding are invalid", code="20")
    return pin


def _block(block: bytes, size: int) -> bytes:
    if not isinstance(block, (bytes, bytearray)) or len(block) != size:
        raise PinBlockError(f"PIN block must be {size} bytes", code="20")
    return bytes(block)


# ----------------------------------------------------------------------------- formats 0, 1, 3


def encode_iso0(pin: str, pan: str | None = None, *, account: str | None = None) -> bytes:
    """ISO 9564 format 0 clear block. Give the full PAN, or the 12-digit account field."""
    _check_pin(pin)
    field = _pin_field(0, pin, "F" * (14 - len(pin)))
    return xor(field, _pan_field(_resolve_account(pan, account)))


def decode_iso0(block: bytes, pan: str | None = None, *, account: str | None = None) -> str:
    """PIN from an ISO 9564 format 0 clear block."""
    field = xor(_block(block, DES_BLOCK_SIZE), _pan_field(_resolve_account(pan, account)))
    return _parse_pin_field(field, 0, "F")


def encode_iso1(pin: str, *, fill: str | None = None) -> bytes:
    """ISO 9564 format 1 clear block; `fill` = hex digits (a transaction number or random)."""
    _check_pin(pin)
    return _pin_field(1, pin, _fill(14 - len(pin), fill, _HEX))


def decode_iso1(block: bytes) -> str:
    """PIN from an ISO 9564 format 1 clear block."""
    return _parse_pin_field(_block(block, DES_BLOCK_SIZE), 1, _HEX)


def encode_iso3(pin: str, pan: str | None = None, *, account: str | None = None, fill: str | None = None) -> bytes:
    """ISO 9564 format 3 clear block; `fill` = digits from A..F."""
    _check_pin(pin)
    field = _pin_field(3, pin, _fill(14 - len(pin), fill, _ISO3_FILL))
    return xor(field, _pan_field(_resolve_account(pan, account)))


def decode_iso3(block: bytes, pan: str | None = None, *, account: str | None = None) -> str:
    """PIN from an ISO 9564 format 3 clear block."""
    field = xor(_block(block, DES_BLOCK_SIZE), _pan_field(_resolve_account(pan, account)))
    return _parse_pin_field(field, 3, _ISO3_FILL)


def build_pin_block(
    fmt: int, pin: str, pan: str | None = None, *, account: str | None = None, fill: str | None = None
) -> bytes:
    """Clear 8-byte block in format 0, 1 or 3 (23 for any other format)."""
    if fmt == 0:
        return encode_iso0(pin, pan, account=account)
    if fmt == 1:
        return encode_iso1(pin, fill=fill)
    if fmt == 3:
        return encode_iso3(pin, pan, account=account, fill=fill)
    raise PinBlockError("PIN block format not supported for TDES blocks", code="23")


def parse_pin_block(fmt: int, block: bytes, pan: str | None = None, *, account: str | None = None) -> str:
    """PIN from a clear 8-byte block in format 0, 1 or 3 (23 for any other format)."""
    if fmt == 0:
        return decode_iso0(block, pan, account=account)
    if fmt == 1:
        return decode_iso1(block)
    if fmt == 3:
        return decode_iso3(block, pan, account=account)
    raise PinBlockError("PIN block format not supported for TDES blocks", code="23")


def format_from_thales_code(code: str) -> int:
    """ISO format number for a Thales PIN block format code (01, 05, 47, 48), else error 23."""
    try:
        return THALES_FORMAT_CODES[code]
    except KeyError:
        raise PinBlockError("PIN block format code not supported", code="23") from None


# ----------------------------------------------------------------------------- format 4 (AES)


def iso4_pin_field(pin: str, *, fill: bytes | str | None = None) -> bytes:
    """Plain-text PIN field of format 4: 4 L PIN A..A (8 bytes) + 8 random bytes."""
    _check_pin(pin)
    head = bytes.fromhex(f"4{len(pin):X}{pin}" + "A" * (14 - len(pin)))
    if fill is None:
        tail = os.urandom(8)
    elif isinstance(fill, str):
        try:
            tail = bytes.fromhex(fill)
        except ValueError:
            raise PinBlockError("ISO-4 fill is not valid hex", code="15") from None
    else:
        tail = bytes(fill)
    if len(tail) != 8:
        raise PinBlockError("ISO-4 fill must be 8 bytes", code="15")
    return head + tail


def iso4_pan_field(pan: str) -> bytes:
    """Plain-text PAN field of format 4: M (PAN length - 12) + PAN + zero padding."""
    _check_pan(pan)
    digits = pan.rjust(12, "0")
    return bytes.fromhex(f"{len(digits) - 12:X}{digits}".ljust(32, "0"))


def encipher_iso4(key: bytes, pin: str, pan: str, *, fill: bytes | str | None = None) -> bytes:
    """Enciphered ISO 9564 format 4 block: AES(K, AES(K, PIN field) XOR PAN field)."""
    intermediate_a = aes_ecb_encrypt(key, iso4_pin_field(pin, fill=fill))
    return aes_ecb_encrypt(key, xor(intermediate_a, iso4_pan_field(pan)))


def decipher_iso4(key: bytes, block: bytes, pan: str) -> str:
    """PIN from an enciphered format 4 block (inverse of `encipher_iso4`)."""
    intermediate_b = aes_ecb_decrypt(key, _block(block, AES_BLOCK_SIZE))
    field = aes_ecb_decrypt(key, xor(intermediate_b, iso4_pan_field(pan)))
    return _parse_pin_field(field[:8], 4, "A")
