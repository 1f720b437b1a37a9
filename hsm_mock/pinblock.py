"""ISO 9564-1 PIN blocks: formats 0, 1 and 3 (clear 8-byte blocks for TDES) and format 4
(16-byte, enciphered with AES); and the other payShield PIN block formats, by Thales format
code (docs/hsm.md §8, "PIN blocks (ISO 9564)"). Pure functions; errors carry a payShield error
code and never the PIN, the PAN or a block.

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

The other Thales codes (8-byte blocks; `encode_block` / `decode_block` take any 8-byte code):
    02 Docutel ATM:       L P..P(4..6, left-justified, 0-filled to 6) + 9 pad characters
    03 Diebold/IBM 3624:  P..P (4..12) F..F                      (pad character F)
    04 PLUS network:      as format 0, but the account is the 12 leftmost PAN digits
                          excluding the check digit
    34 ISO 9564 format 2: 2 L P..P F..F                          (EMV offline PIN; no PAN)
    35 Mastercard Pay Now & Pay Later: 2 L P..P F..F XOR 0000 + account (12 rightmost)
    41 Visa new PIN only: 0 L P..P F..F XOR 00000000 + the 8 rightmost hex digits of UDK-A
    42 Visa new & old PIN: as 41, XOR also the old PIN left-justified, 0-filled to 16
PAN-bound (`PinBlockFormat.pan_bound`): 01, 04, 35, 47, 48. Not PAN-bound: 02, 03, 05, 34,
41 and 42 (41/42 are bound to the card's key, not to its PAN). PCI: a PAN-bound block never
becomes a block that is not (`check_translation`, error 23).

Error codes (payShield): 20 PIN block invalid (control nibble, length nibble, padding),
23 unknown PIN block format, 24 PIN length outside 4..12 (4..6 for Docutel), 15 invalid
input (non-digit PIN or PAN, malformed fill, pad or UDK-A).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from typing import TypeVar

from hsm_mock.crypto import AES_BLOCK_SIZE, DES_BLOCK_SIZE, HsmCryptoError, aes_ecb_decrypt, aes_ecb_encrypt, xor

PIN_LENGTH_MIN = 4
PIN_LENGTH_MAX = 12
PAN_LENGTH_MAX = 19
ISO4_PAN_LENGTH_MAX = 19  # the M nibble covers 12..19 digits
FORMATS_TDES = (0, 1, 3)
FORMAT_AES = 4

# Thales PIN block format codes (docs/hsm.md §8, "payShield host protocol: sources"); 48 is
# ours for ISO-4. This map: the ISO format number of the codes that have one (for
# format_from_thales_code and build/parse_pin_block); every code: PIN_BLOCK_FORMATS below.
THALES_FORMAT_CODES = {"01": 0, "05": 1, "47": 3, "48": 4}

ISO0, DOCUTEL, DIEBOLD, PLUS, ISO1, ISO2, PAY_NOW, VISA_NEW, VISA_NEW_OLD, ISO3, ISO4 = (
    "01", "02", "03", "04", "05", "34", "35", "41", "42", "47", "48"
)  # fmt: skip
DOCUTEL_PIN_LENGTH_MAX = 6  # the Docutel PIN field holds 6 digits
DOCUTEL_PAD_SIZE = 9  # pad characters after the length digit and the 6-digit PIN field
UDK_A_SIZE = 8  # bytes: the left half of the card's unique key (UDK-A, payShield *DK-AC)

_HEX = "0123456789ABCDEF"
_T = TypeVar("_T")
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


# ----------------------------------------------------------------------------- Thales codes


@dataclass(frozen=True, slots=True)
class PinBlockFormat:
    """One payShield PIN block format: its Thales code, its name, whether the block binds the
    PIN to the PAN (PCI: such a block never becomes one that does not), its size in bytes."""

    code: str
    name: str
    pan_bound: bool
    size: int = DES_BLOCK_SIZE


PIN_BLOCK_FORMATS: dict[str, PinBlockFormat] = {
    f.code: f
    for f in (
        PinBlockFormat(ISO0, "ISO 9564-1 format 0 (ANSI X9.8)", True),
        PinBlockFormat(DOCUTEL, "Docutel ATM", False),
        PinBlockFormat(DIEBOLD, "Diebold and IBM ATM (IBM 3624)", False),
        PinBlockFormat(PLUS, "PLUS network", True),
        PinBlockFormat(ISO1, "ISO 9564-1 format 1", False),
        PinBlockFormat(ISO2, "ISO 9564-1 format 2 (EMV)", False),
        PinBlockFormat(PAY_NOW, "Mastercard Pay Now & Pay Later", True),
        PinBlockFormat(VISA_NEW, "Visa new PIN only", False),
        PinBlockFormat(VISA_NEW_OLD, "Visa new and old PIN", False),
        PinBlockFormat(ISO3, "ISO 9564-1 format 3", True),
        PinBlockFormat(ISO4, "ISO 9564-1 format 4 (AES)", True, AES_BLOCK_SIZE),
    )
}


@dataclass(frozen=True, slots=True)
class BlockInputs:
    """What a format binds the PIN to besides the PIN, each only where its format needs it:
    `account` the 12 rightmost PAN digits excluding the check digit (01, 35, 47), `pan` the
    whole PAN (04 takes its 12 leftmost digits, 48 all of it), `pad` the Docutel pad string
    (02), `udk_a` the card's UDK-A (41, 42), `old_pin` the current PIN (42). Kept out of repr:
    each is cardholder data or key material."""

    account: str | None = field(default=None, repr=False)
    pan: str | None = field(default=None, repr=False)
    pad: str | None = field(default=None, repr=False)
    udk_a: bytes | None = field(default=None, repr=False)
    old_pin: str | None = field(default=None, repr=False)


def pin_block_format(code: str) -> PinBlockFormat:
    """The format of a Thales PIN block format code; error 23 for a code we do not know."""
    try:
        return PIN_BLOCK_FORMATS[code]
    except (KeyError, TypeError):
        raise PinBlockError("PIN block format code not supported", code="23") from None


def check_translation(source: str, destination: str) -> None:
    """PCI PIN: a PAN-bound block (01, 04, 35, 47, 48) may only become another PAN-bound
    block; asking for anything else is refused with 23 (payShield's answer)."""
    if pin_block_format(source).pan_bound and not pin_block_format(destination).pan_bound:
        raise PinBlockError("PCI: a PAN-bound PIN block may not become a non-PAN-bound format", code="23")


def plus_account(pan: str) -> str:
    """The account field of format 04 (PLUS): the 12 leftmost PAN digits excluding the check
    digit, so the PAN needs at least 13 digits."""
    _check_pan(pan)
    if len(pan) < 13:
        raise PinBlockError("format 04 needs a PAN of at least 13 digits", code="15")
    return pan[:12]


def _hex(block: bytes) -> str:
    return block.hex().upper()


def _pin_field_f(control: int, pin: str) -> bytes:
    _check_pin(pin)
    return _pin_field(control, pin, "F" * (14 - len(pin)))


# 02 Docutel ------------------------------------------------------------------


def encode_docutel(pin: str, *, pad: str) -> bytes:
    """Format 02: PIN length (1 digit), the PIN left-justified and 0-filled to 6 digits, then
    `pad` (9 hex characters; commands take the first 9 characters of the account field, as
    ThalesSim does). PINs of 4..6 digits (24 otherwise)."""
    _check_pin(pin)
    if len(pin) > DOCUTEL_PIN_LENGTH_MAX:
        raise PinBlockError(f"Docutel PINs are {PIN_LENGTH_MIN}..{DOCUTEL_PIN_LENGTH_MAX} digits", code="24")
    pad_text = pad.upper() if isinstance(pad, str) else ""
    if len(pad_text) != DOCUTEL_PAD_SIZE or any(c not in _HEX for c in pad_text):
        raise PinBlockError(f"Docutel pad must be {DOCUTEL_PAD_SIZE} hex characters", code="15")
    return bytes.fromhex(f"{len(pin)}{pin.ljust(DOCUTEL_PIN_LENGTH_MAX, '0')}{pad_text}")


def decode_docutel(block: bytes) -> str:
    """PIN from a format 02 block; the pad characters are not checked (the HSM cannot know
    which pad the ATM used)."""
    text = _hex(_block(block, DES_BLOCK_SIZE))
    if text[0] not in "0123456789":
        raise PinBlockError("PIN block length digit is not a digit", code="20")
    length = int(text[0])
    if not PIN_LENGTH_MIN <= length <= DOCUTEL_PIN_LENGTH_MAX:
        raise PinBlockError(f"Docutel PINs are {PIN_LENGTH_MIN}..{DOCUTEL_PIN_LENGTH_MAX} digits", code="24")
    pin, zeros = text[1 : 1 + length], text[1 + length : 1 + DOCUTEL_PIN_LENGTH_MAX]
    if not pin.isdigit() or set(zeros) - {"0"}:
        raise PinBlockError("PIN block digits or padding are invalid", code="20")
    return pin


# 03 Diebold / IBM 3624 ----------------------------------------------------------


def encode_diebold(pin: str) -> bytes:
    """Format 03: the PIN left-justified, padded with F to 16 digits (no length, no PAN)."""
    _check_pin(pin)
    return bytes.fromhex(pin.ljust(16, "F"))


def decode_diebold(block: bytes) -> str:
    """PIN from a format 03 block: the digits before the F padding."""
    pin = _hex(_block(block, DES_BLOCK_SIZE)).rstrip("F")
    if any(c not in "0123456789" for c in pin):
        raise PinBlockError("PIN block digits or padding are invalid", code="20")
    if not PIN_LENGTH_MIN <= len(pin) <= PIN_LENGTH_MAX:
        raise PinBlockError(f"PIN length must be {PIN_LENGTH_MIN}..{PIN_LENGTH_MAX} digits", code="24")
    return pin


# 04 PLUS ---------------------------------------------------------------------


def _resolve_plus_account(pan: str | None, account: str | None) -> str:
    if (pan is None) == (account is None):
        raise PinBlockError("give exactly one of pan= or account=", code="15")
    return plus_account(pan) if pan is not None else account  # type: ignore[return-value]


def encode_plus(pin: str, pan: str | None = None, *, account: str | None = None) -> bytes:
    """Format 04: the format-0 PIN field XOR 0000 + the 12 leftmost PAN digits (excluding the
    check digit). Give the full PAN, or those 12 digits as `account`."""
    return xor(_pin_field_f(0, pin), _pan_field(_resolve_plus_account(pan, account)))


def decode_plus(block: bytes, pan: str | None = None, *, account: str | None = None) -> str:
    """PIN from a format 04 block."""
    field_ = xor(_block(block, DES_BLOCK_SIZE), _pan_field(_resolve_plus_account(pan, account)))
    return _parse_pin_field(field_, 0, "F")


# 34 ISO 9564 format 2 and 35 Mastercard Pay Now & Pay Later ------------------------------


def encode_iso2(pin: str) -> bytes:
    """ISO 9564 format 2 (Thales 34, EMV offline PIN): 2 L PIN F-fill, bound to nothing."""
    return _pin_field_f(2, pin)


def decode_iso2(block: bytes) -> str:
    """PIN from an ISO 9564 format 2 block."""
    return _parse_pin_field(_block(block, DES_BLOCK_SIZE), 2, "F")


def encode_pay_now(pin: str, pan: str | None = None, *, account: str | None = None) -> bytes:
    """Thales format 35 (Mastercard Pay Now & Pay Later): the format-2 PIN field XOR the
    format-0 account field."""
    return xor(_pin_field_f(2, pin), _pan_field(_resolve_account(pan, account)))


def decode_pay_now(block: bytes, pan: str | None = None, *, account: str | None = None) -> str:
    """PIN from a Thales format 35 block."""
    field_ = xor(_block(block, DES_BLOCK_SIZE), _pan_field(_resolve_account(pan, account)))
    return _parse_pin_field(field_, 2, "F")


# 41 / 42 Visa PIN change -------------------------------------------------------------


def _udk_field(udk_a: bytes | None) -> bytes:
    if not isinstance(udk_a, (bytes, bytearray)) or len(udk_a) != UDK_A_SIZE:
        raise PinBlockError(f"UDK-A must be {UDK_A_SIZE} bytes", code="15")
    return bytes(4) + bytes(udk_a[-4:])  # 8 zero digits + the 8 rightmost hex digits of UDK-A


def _old_pin_field(old_pin: str | None) -> bytes:
    if old_pin is None:
        raise PinBlockError("format 42 needs the current (old) PIN", code="15")
    _check_pin(old_pin)
    return bytes.fromhex(old_pin.ljust(16, "0"))


def encode_visa_new_pin(pin: str, *, udk_a: bytes) -> bytes:
    """Thales format 41 (Visa PIN change without the current PIN): the format-0 PIN field of
    the new PIN XOR 00000000 + the 8 rightmost hex digits of the card's UDK-A."""
    return xor(_pin_field_f(0, pin), _udk_field(udk_a))


def decode_visa_new_pin(block: bytes, *, udk_a: bytes) -> str:
    """New PIN from a Thales format 41 block."""
    return _parse_pin_field(xor(_block(block, DES_BLOCK_SIZE), _udk_field(udk_a)), 0, "F")


def encode_visa_new_old_pin(pin: str, old_pin: str, *, udk_a: bytes) -> bytes:
    """Thales format 42 (Visa PIN change with the current PIN): format 41 XOR the old PIN
    left-justified and 0-filled to 16 digits."""
    return xor(encode_visa_new_pin(pin, udk_a=udk_a), _old_pin_field(old_pin))


def decode_visa_new_old_pin(block: bytes, old_pin: str, *, udk_a: bytes) -> str:
    """New PIN from a Thales format 42 block, given the old PIN (which the block hides)."""
    return decode_visa_new_pin(xor(_block(block, DES_BLOCK_SIZE), _old_pin_field(old_pin)), udk_a=udk_a)


# by code ---------------------------------------------------------------------------


def encode_block(code: str, pin: str, inputs: BlockInputs = BlockInputs(), *, fill: str | None = None) -> bytes:
    """Clear 8-byte block of `pin` in the format of Thales code `code`, bound to what
    `inputs` gives (23 for 48 and unknown codes; `fill` for 05 and 47, random by default)."""
    fmt = pin_block_format(code).code
    if fmt == ISO0:
        return encode_iso0(pin, account=_need(inputs.account, "account"))
    if fmt == DOCUTEL:
        return encode_docutel(pin, pad=_need(inputs.pad, "Docutel pad"))
    if fmt == DIEBOLD:
        return encode_diebold(pin)
    if fmt == PLUS:
        return encode_plus(pin, _need(inputs.pan, "PAN"))
    if fmt == ISO1:
        return encode_iso1(pin, fill=fill)
    if fmt == ISO2:
        return encode_iso2(pin)
    if fmt == PAY_NOW:
        return encode_pay_now(pin, account=_need(inputs.account, "account"))
    if fmt == VISA_NEW:
        return encode_visa_new_pin(pin, udk_a=_need(inputs.udk_a, "UDK-A"))
    if fmt == VISA_NEW_OLD:
        return encode_visa_new_old_pin(pin, _need(inputs.old_pin, "old PIN"), udk_a=_need(inputs.udk_a, "UDK-A"))
    if fmt == ISO3:
        return encode_iso3(pin, account=_need(inputs.account, "account"), fill=fill)
    raise PinBlockError("format 48 blocks are AES-enciphered: use encipher_iso4", code="23")


def decode_block(code: str, block: bytes, inputs: BlockInputs = BlockInputs()) -> str:
    """PIN from a clear 8-byte block in the format of Thales code `code` (inverse of
    `encode_block`; the new PIN for 41 and 42)."""
    fmt = pin_block_format(code).code
    if fmt == ISO0:
        return decode_iso0(block, account=_need(inputs.account, "account"))
    if fmt == DOCUTEL:
        return decode_docutel(block)
    if fmt == DIEBOLD:
        return decode_diebold(block)
    if fmt == PLUS:
        return decode_plus(block, _need(inputs.pan, "PAN"))
    if fmt == ISO1:
        return decode_iso1(block)
    if fmt == ISO2:
        return decode_iso2(block)
    if fmt == PAY_NOW:
        return decode_pay_now(block, account=_need(inputs.account, "account"))
    if fmt == VISA_NEW:
        return decode_visa_new_pin(block, udk_a=_need(inputs.udk_a, "UDK-A"))
    if fmt == VISA_NEW_OLD:
        return decode_visa_new_old_pin(block, _need(inputs.old_pin, "old PIN"), udk_a=_need(inputs.udk_a, "UDK-A"))
    if fmt == ISO3:
        return decode_iso3(block, account=_need(inputs.account, "account"))
    raise PinBlockError("format 48 blocks are AES-enciphered: use decipher_iso4", code="23")


def _need(value: _T | None, what: str) -> _T:
    if value is None:
        raise PinBlockError(f"this PIN block format needs the {what}", code="15")
    return value
