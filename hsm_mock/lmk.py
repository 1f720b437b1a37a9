"""The variant LMK of a Thales payShield (9000/10K, variant mode) and keys under it.

Sources: docs/hsm.md, "payShield host protocol: sources" (key type codes, variants, key
schemes, the public test LMK) and the ThalesSim / thalessimulatorlibrary code and its
published test vectors (tests/test_hsm_lmk.py reproduces them).

The default LMK is Thales' public *test* LMK set (pairs 00-01 … 38-39, below). It is printed
in Thales documentation and simulators and is known to everyone: it exists for development
and certification only and must never protect production keys. `VariantLmk.load(path)` reads
another set (20 pairs of 32 hex digits, whitespace separated, '#' comments).

Key type code vLL: v = variant (0..9), LL = LMK code → LMK pair:
    00 04-05   01 06-07   02 14-15   03 16-17   04 18-19   05 20-21   06 22-23   07 24-25
    08 26-27   09 28-29   0A 30-31   0B 32-33   0C 34-35   0D 36-37   0E 38-39
Key types this HSM knows (`KEY_TYPES`, the payShield variant-LMK key type table):
    000 ZMK (04-05)              100 ZMK component (04-05 v1)
    001 ZPK (06-07)              002 TPK / TMK / PVK (14-15)    402 CVK / CSCK (14-15 v4)
    003 TAK (16-17)              006 WWK (22-23)                008 ZAK (26-27)
    009 BDK type-1 (28-29)       109 MK-AC (28-29 v1)           209 MK-SMI (28-29 v2)
    309 MK-SMC (28-29 v3)        00A ZEK (30-31)
A code outside the table is error 28.

Encryption under the LMK, for key type (pair P, variant v) and key scheme:
    P' = P with byte 0 XOR V[v], V[1..9] = A6 5A 6A DE 2B 50 74 9C FA (no change for v = 0)
    Z / none  single-length key: TDES-ECB under P' (output without a prefix)
    U         double length: half i under P' with byte 8 XOR (A6, 5A)[i], prefix 'U'
    T         triple length: third i under P' with byte 8 XOR (6A, DE, 2B)[i], prefix 'T'
    X / Y     double / triple length, X9.17 style: each 8-byte block TDES-ECB under P'
A bare 32 or 48 hex-digit key on input is read as X or Y (legacy, as ThalesSim does).

Keys under a ZMK or TMK (export/import: A0 export, GC, FA, A6/A8). Our choice, matching
ThalesSim and its published A6/A8/FA/FC vectors: the key-encrypting key (8 bytes → K|K) is
used without a key-type variant; scheme X/Y (the default for 16/24-byte keys, ANSI X9.17:
TDES-ECB per 8-byte block) or U/T (block i under the KEK with byte 8 XOR the U/T variant
above); single-length keys (Z) are TDES-ECB under the KEK, without a prefix.

LMK check value (NC): the algorithm of a real payShield is not published. Default convention
"thalessim": XOR the 20 pairs, then XOR the two halves → 16 hex digits. For the test LMK this
gives 7B44AC1DDEE2A94B, the value every ThalesSim-based simulator returns in
`0000ND007B44AC1DDEE2A94B0007-E000`, so tools written against those simulators see the
value they expect. Convention "kcv": the 6-digit check value of pair 00-01 padded with ten
zeros (7D22270000000000), the shape a real payShield answers with (docs/hsm.md §8
quotes 5D67270000000000). Both are deterministic, so HSMs sharing an LMK agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hsm_mock.crypto import (
    HsmCryptoError,
    check_parity,
    has_odd_parity,
    key_check_value,
    tdes_ecb_decrypt,
    tdes_ecb_encrypt,
    to_hex,
    xor,
)

LMK_PAIR_COUNT = 20
LMK_PAIR_NAMES = tuple(f"{2 * i:02d}-{2 * i + 1:02d}" for i in range(LMK_PAIR_COUNT))

# Thales' public test LMK set, pairs 00-01 … 38-39 (docs/hsm.md §3; ThalesSim LMKStorage).
TEST_LMK_HEX = (
    "01010101010101017902CD1FD36EF8BA",
    "20202020202020203131313131313131",
    "40404040404040405151515151515151",
    "61616161616161617070707070707070",
    "80808080808080809191919191919191",
    "A1A1A1A1A1A1A1A1B0B0B0B0B0B0B0B0",
    "C1C1010101010101D0D0010101010101",
    "E0E0010101010101F1F1010101010101",
    "1C587F1C13924FEF0101010101010101",
    "01010101010101010101010101010101",
    "02020202020202020404040404040404",
    "07070707070707071010101010101010",
    "13131313131313131515151515151515",
    "16161616161616161919191919191919",
    "1A1A1A1A1A1A1A1A1C1C1C1C1C1C1C1C",
    "23232323232323232525252525252525",
    "26262626262626262929292929292929",
    "2A2A2A2A2A2A2A2A2C2C2C2C2C2C2C2C",
    "2F2F2F2F2F2F2F2F3131313131313131",
    "01010101010101010101010101010101",
)

KEY_TYPE_VARIANTS = bytes.fromhex("A65A6ADE2B50749CFA")  # variants 1..9
SCHEME_VARIANTS = {"U": bytes.fromhex("A65A"), "T": bytes.fromhex("6ADE2B")}
SCHEME_KEY_SIZES = {"Z": 8, "U": 16, "X": 16, "T": 24, "Y": 24}
DEFAULT_LMK_SCHEMES = {8: "Z", 16: "U", 24: "T"}
DEFAULT_KEK_SCHEMES = {8: "Z", 16: "X", 24: "Y"}
LMK_CODES = {
    "00": "04-05", "01": "06-07", "02": "14-15", "03": "16-17", "04": "18-19",
    "05": "20-21", "06": "22-23", "07": "24-25", "08": "26-27", "09": "28-29",
    "0A": "30-31", "0B": "32-33", "0C": "34-35", "0D": "36-37", "0E": "38-39",
}  # fmt: skip
LMK_CHECK_CONVENTIONS = ("thalessim", "kcv")


class LmkError(HsmCryptoError):
    """A key type, key scheme, encrypted key or LMK is unusable; `code` is the payShield code
    (26 scheme, 27 key length, 28 key type, 15 malformed input, 13 LMK error)."""


# ----------------------------------------------------------------------------- the LMK


@dataclass(frozen=True, slots=True)
class VariantLmk:
    """Twenty 16-byte LMK pairs; index 0 is pair 00-01."""

    pairs: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if len(self.pairs) != LMK_PAIR_COUNT or any(len(p) != 16 for p in self.pairs):
            raise LmkError(f"a variant LMK is {LMK_PAIR_COUNT} pairs of 16 bytes", code="13")
        if not all(has_odd_parity(p) for p in self.pairs):
            raise LmkError("LMK pair parity error", code="13")

    @classmethod
    def from_text(cls, text: str) -> VariantLmk:
        """Whitespace-separated pairs of 32 hex digits; '#' starts a comment."""
        words = [w for line in text.splitlines() for w in line.split("#", 1)[0].split()]
        try:
            pairs = tuple(bytes.fromhex(w) for w in words)
        except ValueError:
            raise LmkError("LMK file holds a word that is not hex", code="13") from None
        return cls(pairs)

    @classmethod
    def load(cls, path: str | Path) -> VariantLmk:
        return cls.from_text(Path(path).read_text(encoding="ascii"))

    def pair(self, name: str) -> bytes:
        """An LMK pair by name ('04-05') or by its first number ('04')."""
        first = name.split("-", 1)[0]
        if not first.isdigit() or int(first) % 2 or not 0 <= int(first) // 2 < LMK_PAIR_COUNT:
            raise LmkError("unknown LMK pair", code="28")
        return self.pairs[int(first) // 2]

    def check_value(self, *, convention: str = "thalessim") -> str:
        """The 16-hex-digit LMK check value returned by NC (conventions in the module doc)."""
        if convention == "thalessim":
            folded = bytes(16)
            for p in self.pairs:
                folded = xor(folded, p)
            return to_hex(xor(folded[:8], folded[8:]))
        if convention == "kcv":
            return key_check_value(self.pairs[0], length=6) + "0" * 10
        raise LmkError(f"LMK check value convention must be one of {LMK_CHECK_CONVENTIONS}")


TEST_LMK = VariantLmk(tuple(bytes.fromhex(h) for h in TEST_LMK_HEX))


def lmk_check_value(lmk: VariantLmk = TEST_LMK, *, convention: str = "thalessim") -> str:
    """NC's 16-hex-digit LMK check value (default: the ThalesSim convention)."""
    return lmk.check_value(convention=convention)


# ----------------------------------------------------------------------------- key types


@dataclass(frozen=True, slots=True)
class KeyType:
    """A payShield key type code vLL: the LMK pair and variant its keys are encrypted under."""

    code: str
    name: str
    lmk_pair: str
    variant: int


def _key_type(code: str, name: str) -> KeyType:
    return KeyType(code, name, LMK_CODES[code[1:]], int(code[0]))


KEY_TYPES: dict[str, KeyType] = {
    kt.code: kt
    for kt in (
        _key_type("000", "ZMK"),
        _key_type("100", "ZMK component"),
        _key_type("001", "ZPK"),
        _key_type("002", "TPK/TMK/PVK"),
        _key_type("402", "CVK/CSCK"),
        _key_type("003", "TAK"),
        _key_type("006", "WWK"),
        _key_type("008", "ZAK"),
        _key_type("009", "BDK type-1"),
        _key_type("109", "MK-AC"),
        _key_type("209", "MK-SMI"),
        _key_type("309", "MK-SMC"),
        _key_type("00A", "ZEK"),
    )
}


def resolve_key_type(code: object) -> KeyType:
    """The KeyType for a 3-character code (error 28 when the code is not in the table, or is
    no code at all: the compiled build checks a parameter's declared type, so anything is
    accepted here and sorted out in the body, as the pure build always did)."""
    if isinstance(code, KeyType):
        return code
    found = KEY_TYPES.get(code.upper()) if isinstance(code, str) else None
    if found is None:
        raise LmkError("key type code not supported", code="28")
    return found


# ----------------------------------------------------------------------------- key fields


def key_field_length(text: str, *, bare_hex_digits: int = 16) -> int:
    """How many characters an encrypted-key field starting at text[0] takes: 'U'/'X' + 32,
    'T'/'Y' + 48, 'Z' + 16, or `bare_hex_digits` for a key without a scheme tag."""
    if not text:
        raise LmkError("key field is empty", code="15")
    tag = text[0].upper()
    if tag in SCHEME_KEY_SIZES:
        return 1 + 2 * SCHEME_KEY_SIZES[tag]
    return bare_hex_digits


def split_key(encrypted: str) -> tuple[str, bytes]:
    """'U'+32H → ('U', 16 bytes); bare 16/32/48 hex digits → ('Z' | 'X' | 'Y', bytes)."""
    if not isinstance(encrypted, str) or not encrypted:
        raise LmkError("encrypted key is empty", code="15")
    tag = encrypted[0].upper()
    if tag in SCHEME_KEY_SIZES:
        body, scheme = encrypted[1:], tag
    else:
        body = encrypted
        scheme = {16: "Z", 32: "X", 48: "Y"}.get(len(body), "")
        if not scheme:
            raise LmkError("encrypted key has an invalid length", code="15")
    try:
        raw = bytes.fromhex(body)
    except ValueError:
        raise LmkError("encrypted key is not valid hex", code="15") from None
    if len(body) % 2 or len(raw) != SCHEME_KEY_SIZES[scheme]:
        raise LmkError("encrypted key length does not match its key scheme", code="27")
    return scheme, raw


def _scheme(scheme: str | None, size: int, defaults: dict[int, str]) -> str:
    if size not in defaults:
        raise LmkError(f"key must be 8, 16 or 24 bytes, got {size}", code="27")
    chosen = (scheme or defaults[size]).upper()
    if chosen not in SCHEME_KEY_SIZES:
        raise LmkError("key scheme not supported", code="26")
    if SCHEME_KEY_SIZES[chosen] != size:
        raise LmkError("key length does not match the key scheme", code="27")
    return chosen


def _tag(scheme: str) -> str:
    return "" if scheme == "Z" else scheme


def _scheme_keys(kek: bytes, scheme: str) -> list[bytes]:
    """The key that protects each 8-byte block of a key in `scheme` under `kek` (16/24 bytes)."""
    blocks = SCHEME_KEY_SIZES[scheme] // 8
    if scheme not in SCHEME_VARIANTS:
        return [kek] * blocks
    keys = []
    for v in SCHEME_VARIANTS[scheme]:
        adjusted = bytearray(kek)
        adjusted[8] ^= v
        keys.append(bytes(adjusted))
    return keys


def _encrypt_blocks(kek: bytes, clear: bytes, scheme: str) -> bytes:
    keys = _scheme_keys(kek, scheme)
    return b"".join(tdes_ecb_encrypt(k, clear[8 * i : 8 * i + 8]) for i, k in enumerate(keys))


def _decrypt_blocks(kek: bytes, cipher: bytes, scheme: str) -> bytes:
    keys = _scheme_keys(kek, scheme)
    return b"".join(tdes_ecb_decrypt(k, cipher[8 * i : 8 * i + 8]) for i, k in enumerate(keys))


# ----------------------------------------------------------------------------- under the LMK


def lmk_variant_key(lmk: VariantLmk, key_type: str | KeyType) -> bytes:
    """The LMK pair of a key type with the type's variant XORed into byte 0."""
    kt = resolve_key_type(key_type)
    pair = bytearray(lmk.pair(kt.lmk_pair))
    if kt.variant:
        pair[0] ^= KEY_TYPE_VARIANTS[kt.variant - 1]
    return bytes(pair)


def encrypt_key_under_lmk(
    clear: bytes,
    key_type: str | KeyType,
    scheme: str | None = None,
    *,
    lmk: VariantLmk = TEST_LMK,
    check_key_parity: bool = True,
) -> str:
    """Clear key → hex under the LMK, with its scheme tag (none for single length).
    Scheme defaults by length: 8 → Z, 16 → U, 24 → T."""
    chosen = _scheme(scheme, len(clear), DEFAULT_LMK_SCHEMES)
    if check_key_parity:
        check_parity(clear)
    return _tag(chosen) + to_hex(_encrypt_blocks(lmk_variant_key(lmk, key_type), bytes(clear), chosen))


def decrypt_key_under_lmk(
    encrypted: str,
    key_type: str | KeyType,
    *,
    lmk: VariantLmk = TEST_LMK,
    check_key_parity: bool = True,
    parity_error_code: str = "10",
) -> bytes:
    """Hex key under the LMK (scheme tag optional for Z/X/Y) → clear key. A clear DES key
    without odd parity raises KeyParityError with `parity_error_code` (10 or 11)."""
    scheme, cipher = split_key(encrypted)
    clear = _decrypt_blocks(lmk_variant_key(lmk, key_type), cipher, scheme)
    if check_key_parity:
        check_parity(clear, code=parity_error_code)
    return clear


# ----------------------------------------------------------------------------- under a ZMK/TMK


def _kek(kek: bytes) -> bytes:
    if len(kek) == 8:
        return bytes(kek) * 2
    if len(kek) in (16, 24):
        return bytes(kek)
    raise LmkError("key-encrypting key must be 8, 16 or 24 bytes", code="27")


def encrypt_key_under_kek(
    clear: bytes, kek: bytes, scheme: str | None = None, *, check_key_parity: bool = True
) -> str:
    """Clear key → hex under a clear ZMK/TMK (export). Scheme defaults: 8 → Z, 16 → X, 24 → Y;
    U/T select the variant method (see the module docstring)."""
    chosen = _scheme(scheme, len(clear), DEFAULT_KEK_SCHEMES)
    if check_key_parity:
        check_parity(clear)
    return _tag(chosen) + to_hex(_encrypt_blocks(_kek(kek), bytes(clear), chosen))


def decrypt_key_under_kek(
    encrypted: str,
    kek: bytes,
    *,
    check_key_parity: bool = True,
    parity_error_code: str = "10",
) -> bytes:
    """Hex key under a clear ZMK/TMK (scheme tag optional for Z/X/Y) → clear key (import)."""
    scheme, cipher = split_key(encrypted)
    clear = _decrypt_blocks(_kek(kek), cipher, scheme)
    if check_key_parity:
        check_parity(clear, code=parity_error_code)
    return clear
