"""Card and PIN verification values: Visa CVV, Visa PVV, IBM 3624 natural PIN and offset.

Pure functions over clear keys (the command layer decrypts them from under the LMK first).
Errors carry a payShield code and never a key, PIN, PAN or computed value.

Visa CVV (CVK A||B, 16 bytes): PAN + expiry (YYMM) + service code, right-padded with zeros
    to 32 digits = blocks B1 and B2. R = TDES(A||B, DES(A, B1) XOR B2). Decimalise R (see
    below), keep 3 digits. Service code 000 gives the CVV2 convention.
Visa PVV (PVK pair, 16 bytes): TSP = 11 rightmost PAN digits excluding the check digit +
    PVKI (1 digit) + the 4 leftmost PIN digits. R = TDES(PVK, TSP); decimalise, keep 4.
Decimalisation (Visa): the decimal digits of hex(R) left to right, then its letters A..F
    left to right as 0..5.
IBM 3624 (PVK 8 or 16 bytes): natural PIN = the first L digits of
    decimalise_table(TDES(PVK, validation data)), each hex digit mapped through the
    16-digit decimalisation table; offset = (PIN - natural) digit by digit mod 10;
    PIN = (natural + offset) mod 10.

Validation data and 'N' (as payShield DA/EA/CK/DE do, confirmed by the ThalesSim DA
implementation): the host sends 12 characters of hex user data in which the single
character 'N' marks where the HSM inserts the last 5 digits of the 12-digit account number
(PAN digits excluding the check digit). Example: account 401234567890, data '0004012345N9'
→ '0004012345' + '67890' + '9' = '0004012345678909'. Data without 'N' is used as is. After
substitution the data must be exactly 16 hex digits (error 15 otherwise); more than one 'N'
is rejected (15).
"""

from __future__ import annotations

from hsm_mock.crypto import HsmCryptoError, tdes_ecb_encrypt, xor

CVV_DIGITS = 3
PVV_DIGITS = 4
DECIMALISATION_TABLE_SIZE = 16
VALIDATION_DATA_SIZE = 16
VALIDATION_ACCOUNT_DIGITS = 5  # digits an 'N' stands for
_HEX_DIGITS = set("0123456789ABCDEF")


class CardVerifyError(HsmCryptoError):
    """Input to a CVV/PVV/IBM 3624 computation is unusable; `code` is the payShield code."""


def _digits(value: str, what: str, *, lengths: range | tuple[int, ...]) -> str:
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) not in lengths:
        raise CardVerifyError(f"{what} must be decimal digits of an allowed length", code="15")
    return value


def _key16(key: bytes, what: str) -> bytes:
    if len(key) != 16:
        raise CardVerifyError(f"{what} must be a 16-byte key pair", code="27")
    return key


def visa_decimalise(block: bytes, count: int) -> str:
    """Visa decimalisation: decimal digits of hex(block) in order, then letters A..F as 0..5."""
    text = block.hex().upper()
    ordered = [c for c in text if c.isdigit()] + [str(int(c, 16) - 10) for c in text if not c.isdigit()]
    return "".join(ordered[:count])


def visa_cvv(cvk: bytes, pan: str, expiry: str, service_code: str) -> str:
    """Visa CVV/CVC (3 digits) from CVK A||B, PAN, expiry YYMM and the 3-digit service code."""
    _key16(cvk, "CVK")
    _digits(pan, "PAN", lengths=range(1, 20))
    _digits(expiry, "expiry (YYMM)", lengths=(4,))
    _digits(service_code, "service code", lengths=(3,))
    data = (pan + expiry + service_code).ljust(32, "0")
    if len(data) > 32:
        raise CardVerifyError("PAN, expiry and service code exceed 32 digits", code="15")
    block1, block2 = bytes.fromhex(data[:16]), bytes.fromhex(data[16:])
    result = tdes_ecb_encrypt(cvk, xor(tdes_ecb_encrypt(cvk[:8], block1), block2))
    return visa_decimalise(result, CVV_DIGITS)


def visa_pvv(pvk: bytes, pan: str, pvki: str, pin: str, *, check_digit_included: bool = True) -> str:
    """Visa PVV (4 digits). `pan` is the full PAN; with check_digit_included=False it is a
    number that already excludes the check digit (payShield's 12-digit account field)."""
    _key16(pvk, "PVK")
    _digits(pan, "PAN", lengths=range(12, 20))
    _digits(pvki, "PVKI", lengths=(1,))
    _digits(pin, "PIN", lengths=range(4, 13))
    body = pan[:-1] if check_digit_included else pan
    tsp = body[-11:] + pvki + pin[:4]
    return visa_decimalise(tdes_ecb_encrypt(pvk, bytes.fromhex(tsp)), PVV_DIGITS)


def verify_visa_pvv(
    pvk: bytes, pan: str, pvki: str, pin: str, pvv: str, *, check_digit_included: bool = True
) -> bool:
    """True when the PIN's PVV equals `pvv`."""
    return visa_pvv(pvk, pan, pvki, pin, check_digit_included=check_digit_included) == pvv


# ----------------------------------------------------------------------------- IBM 3624


def expand_validation_data(validation_data: str, account: str) -> str:
    """Replace 'N' in payShield validation data with the last 5 digits of the 12-digit account
    number; the result must be 16 hex digits (see the module docstring)."""
    data = validation_data.upper()
    if data.count("N") > 1:
        raise CardVerifyError("validation data may contain at most one 'N'", code="15")
    if "N" in data:
        _digits(account, "account number", lengths=(12,))
        data = data.replace("N", account[-VALIDATION_ACCOUNT_DIGITS:])
    if len(data) != VALIDATION_DATA_SIZE or not set(data) <= _HEX_DIGITS:
        raise CardVerifyError("validation data must give 16 hex digits", code="15")
    return data


def _decimalisation_table(table: str) -> str:
    if len(table) != DECIMALISATION_TABLE_SIZE or not table.isascii() or not table.isdigit():
        raise CardVerifyError("decimalisation table must be 16 decimal digits", code="25")
    return table


def ibm3624_natural_pin(pvk: bytes, validation_data: str, decimalisation_table: str, pin_length: int) -> str:
    """IBM 3624 natural PIN of `pin_length` (4..12) digits for 16-hex-digit validation data."""
    if not 4 <= pin_length <= 12:
        raise CardVerifyError("PIN length must be 4..12 digits", code="24")
    if len(pvk) not in (8, 16):
        raise CardVerifyError("PVK must be 8 or 16 bytes", code="27")
    table = _decimalisation_table(decimalisation_table)
    data = validation_data.upper()
    if len(data) != VALIDATION_DATA_SIZE or not set(data) <= _HEX_DIGITS:
        raise CardVerifyError("validation data must be 16 hex digits ('N' expanded first)", code="15")
    enciphered = tdes_ecb_encrypt(pvk, bytes.fromhex(data)).hex()
    return "".join(table[int(c, 16)] for c in enciphered[:pin_length])


def ibm3624_offset(pvk: bytes, validation_data: str, decimalisation_table: str, pin: str) -> str:
    """PIN offset (same length as the PIN): (PIN - natural PIN) digit by digit mod 10."""
    _digits(pin, "PIN", lengths=range(4, 13))
    natural = ibm3624_natural_pin(pvk, validation_data, decimalisation_table, len(pin))
    return "".join(str((int(p) - int(n)) % 10) for p, n in zip(pin, natural))


def ibm3624_pin(pvk: bytes, validation_data: str, decimalisation_table: str, offset: str) -> str:
    """The PIN an offset stands for: (natural PIN + offset) digit by digit mod 10."""
    _digits(offset, "offset", lengths=range(4, 13))
    natural = ibm3624_natural_pin(pvk, validation_data, decimalisation_table, len(offset))
    return "".join(str((int(n) + int(o)) % 10) for n, o in zip(natural, offset))


def verify_ibm3624_offset(pvk: bytes, validation_data: str, decimalisation_table: str, pin: str, offset: str) -> bool:
    """True when `offset` (check length = its length) matches the PIN's leading digits."""
    _digits(pin, "PIN", lengths=range(4, 13))
    if len(offset) > len(pin):
        return False
    return ibm3624_pin(pvk, validation_data, decimalisation_table, offset) == pin[: len(offset)]
