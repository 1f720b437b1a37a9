"""ISO 8583 codec: dialect files, bytes ↔ pyiso8583 dicts ↔ typed messages.

Pure module. A dialect is data (config/dialects/<name>.toml): framing plus the full field
spec in pyiso8583's format, so a terminal speaking another dialect needs a file, not code.

Two codecs, one behaviour. pyiso8583 is the reference. On the hot path each dialect is
compiled once into per-field tuples (`_Compiled`): a message the compiled codec reads or
writes without surprise gives exactly pyiso8583's dict or bytes (tests/test_codec_compiled.py
checks this on generated messages); anything else — a short field, a non-digit length, a
field outside the spec, an encoding the compiled codec does not know — is handed to
pyiso8583, so every error, its field and its message are pyiso8583's own. One exception:
where pyiso8583 raises KeyError for a field number the dialect does not define (129–192,
announced by bit 65, the tertiary bitmap), `reference_decode` raises DecodeError naming that
field, so the message is answered 30 like any other (docs/host-interface.md §4).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import iso8583
from iso8583.decoder import DecodeError
from iso8583.encoder import EncodeError

from switch.configdir import config_dir
from switch.wire.framing import Framing
from switch.wire.messages import (
    AUTHORIZATION_KINDS,
    ECHO_FIELDS,
    NETWORK_CODES,
    PROCESSING_KINDS,
    RESPONSE_MTI,
    Balances,
    FieldError,
    Kind,
    OriginalData,
    Rc,
    Request,
    Response,
    encode_balances,
    idempotency_digest,
)

_SPEC_KEYS = ("data_enc", "len_enc", "len_type", "max_len", "desc")


@dataclass(frozen=True)
class Dialect:
    name: str
    framing: Framing
    spec: dict[str, dict[str, Any]]
    compiled: "_Compiled | None" = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "compiled", _compile(self.spec))


class _Fallback(Exception):
    """The compiled codec met something it does not handle: pyiso8583 decides."""


# A field as the compiled codec sees it: (key, is_binary, len_type, len_is_binary, max_len).
_FieldPlan = tuple[str, bool, int, bool, int]


@dataclass(frozen=True, slots=True)
class _Compiled:
    header_len: int                 # fixed ASCII header before the MTI (0: none)
    mti_binary: bool
    mti_len: int
    fields: tuple[_FieldPlan | None, ...]   # index = field number 0..128; None: not in the spec


def _plan(key: str, f: dict[str, Any]) -> _FieldPlan | None:
    if f["data_enc"] not in ("ascii", "b") or f["len_enc"] not in ("ascii", "b"):
        return None
    if f["len_type"] not in (0, 1, 2, 3, 4) or set(f) - {*_SPEC_KEYS, "len_count"} or f.get("len_count", "bytes") != "bytes":
        return None
    return (key, f["data_enc"] == "b", f["len_type"], f["len_enc"] == "b", f["max_len"])


def _compile(spec: dict[str, dict[str, Any]]) -> _Compiled | None:
    """The dialect as tuples for the hot path, or None when any part of it needs pyiso8583
    (non-ASCII text encodings, BCD lengths, padding, a variable header or MTI)."""
    h, t, p, sec = spec["h"], spec["t"], spec["p"], spec["1"]
    if h["len_type"] != 0 or h["data_enc"] != "ascii" or t["len_type"] != 0 or t["data_enc"] not in ("ascii", "b"):
        return None
    if any(b["data_enc"] != "b" or b["len_type"] != 0 or b["max_len"] != 8 for b in (p, sec)):
        return None
    plans: list[_FieldPlan | None] = [None] * 129
    for no in range(2, 129):
        f = spec.get(str(no))
        if f is not None:
            plan = _plan(str(no), f)
            if plan is None:
                return None
            plans[no] = plan
    return _Compiled(header_len=h["max_len"], mti_binary=t["data_enc"] == "b", mti_len=t["max_len"],
                     fields=tuple(plans))


def dialects_dir() -> Path:
    return config_dir() / "dialects"


def load_dialect(name: str, *, directory: Path | None = None) -> Dialect:
    path = (directory or dialects_dir()) / f"{name}.toml"
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.toml"))
        raise ValueError(f"unknown dialect {name!r}; known: {', '.join(known)}")
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    framing = Framing(**data.get("framing", {}))
    spec: dict[str, dict[str, Any]] = {}
    for key, fspec in data.get("fields", {}).items():
        missing = [k for k in _SPEC_KEYS if k not in fspec]
        if missing:
            raise ValueError(f"dialect {name}: fields.{key} lacks {', '.join(missing)}")
        spec[key] = {k: fspec[k] for k in _SPEC_KEYS}
    for key in ("h", "t", "p", "1"):
        if key not in spec:
            raise ValueError(f"dialect {name}: fields.{key} is required")
    return Dialect(name=name, framing=framing, spec=spec)


# ---------------------------------------------------------------------------- decode

def decode_fields(payload: bytes, dialect: Dialect) -> dict[str, str]:
    """Bytes → fields as pyiso8583 gives them. A present-but-empty secondary bitmap is
    accepted (pyiso8583 does)."""
    if dialect.compiled is not None:
        try:
            return _fast_decode(payload, dialect.compiled)
        except _Fallback:
            pass
    return reference_decode(payload, dialect)


FIELD_NOT_IN_DIALECT = "Field is not in the dialect"

# What pyiso8583 reads for a field number the dialect does not define: a fixed field longer
# than any frame, so it always fails there, with the partial document, and is renamed below.
_ABSENT_FIELD = {"data_enc": "b", "len_enc": "b", "len_type": 0, "max_len": 1 << 30, "desc": "not in the dialect"}


class _ReferenceSpec(dict):
    """The dialect's spec as pyiso8583 reads it: a field number it lacks (129–192, behind a
    tertiary bitmap, i.e. bit 65 set) is `_ABSENT_FIELD` instead of pyiso8583's KeyError."""

    def __missing__(self, key: str) -> dict[str, Any]:
        return _ABSENT_FIELD


def reference_decode(payload: bytes, dialect: Dialect) -> dict[str, str]:
    """pyiso8583's decode, with one difference: a field the dialect does not define is a
    DecodeError naming it (FIELD_NOT_IN_DIALECT), where pyiso8583 raises KeyError, so such a
    message is answered 30 like any other undecodable field."""
    try:
        fields, _ = iso8583.decode(payload, _ReferenceSpec(dialect.spec))
    except DecodeError as exc:
        if exc.field in dialect.spec:
            raise
        doc_dec = {k: v for k, v in exc.doc_dec.items() if k != exc.field}
        raise DecodeError(FIELD_NOT_IN_DIALECT, exc.s, doc_dec, exc.doc_enc, exc.pos, exc.field) from None
    return fields


# _BYTE_FIELDS[i][b]: the field numbers that bitmap byte i (0..15) with value b marks present.
_BYTE_FIELDS = tuple(tuple(tuple(i * 8 + bit + 1 for bit in range(8) if b & (0x80 >> bit)) for b in range(256))
                     for i in range(16))


def _fast_decode(s: bytes, c: _Compiled) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = c.header_len
    try:
        if pos:
            out["h"] = s[:pos].decode("ascii")
        end = pos + c.mti_len
        out["t"] = s[pos:end].hex().upper() if c.mti_binary else s[pos:end].decode("ascii")
        if len(s) < end + 8:
            raise _Fallback
        bitmap = s[end : end + 8]
        out["p"] = bitmap.hex().upper()
        pos = end + 8
        if bitmap[0] & 0x80:
            secondary = s[pos : pos + 8]
            if len(secondary) != 8:
                raise _Fallback
            out["1"] = secondary.hex().upper()
            bitmap += secondary
            pos += 8
            if secondary[0] & 0x80:
                raise _Fallback  # a tertiary bitmap: pyiso8583 reads those
        plans = c.fields
        for no in [no for i, b in enumerate(bitmap) if b for no in _BYTE_FIELDS[i][b]]:
            if no != 1:
                plan = plans[no]
                if plan is None:
                    raise _Fallback
                key, binary, len_type, len_binary, max_len = plan
                if len_type:
                    raw_len = s[pos : pos + len_type]
                    if len(raw_len) != len_type:
                        raise _Fallback
                    if len_binary:
                        size = int.from_bytes(raw_len, "big")
                    elif raw_len.isdigit():
                        size = int(raw_len)
                    else:
                        raise _Fallback
                    if size > max_len:
                        raise _Fallback
                    pos += len_type
                else:
                    size = max_len
                value = s[pos : pos + size]
                if len(value) != size:
                    raise _Fallback
                out[key] = value.hex().upper() if binary else value.decode("ascii")
                pos += size
    except UnicodeDecodeError:
        raise _Fallback from None
    if pos != len(s):
        raise _Fallback
    return out


def partial_fields(exc: DecodeError) -> dict[str, str]:
    """What a failed decode did parse: enough, often, to address a format-error response.
    The field it failed on is left out (pyiso8583 holds it as "", or as what it read of a
    bitmap): only whole fields are echoed. Extra bytes after the last field blame that
    field, which was read whole: it stays."""
    if exc.msg.startswith(_EXTRA_DATA):
        return dict(exc.doc_dec)
    return {k: v for k, v in exc.doc_dec.items() if k != exc.field}


_EXTRA_DATA = "Extra data after last field"  # pyiso8583's message


def _digits(fields: dict[str, str], no: str, *, size: int | None = None, required: bool = True) -> str:
    value = fields.get(no)
    if value is None or value == "":
        if required:
            raise FieldError(no, "missing")
        return ""
    if not value.isdigit() or not value.isascii():
        raise FieldError(no, "not numeric")
    if size is not None and len(value) != size:
        raise FieldError(no, f"length {len(value)}, expected {size}")
    return value


def _text(fields: dict[str, str], no: str, *, required: bool = True) -> str:
    value = fields.get(no, "")
    if required and not value.strip():
        raise FieldError(no, "missing")
    return value


def _amount(fields: dict[str, str], no: str = "4") -> int:
    return int(_digits(fields, no, size=12))


def _pan_expiry(fields: dict[str, str]) -> tuple[str, str]:
    """PAN from DE2, else from track 2 (DE35); expiry from DE14, else from track 2."""
    track2 = fields.get("35", "")
    if "2" in fields:
        pan = _digits(fields, "2")
    elif track2:
        sep = "=" if "=" in track2 else "D"
        pan = track2.split(sep, 1)[0]
        if not pan.isdigit():
            raise FieldError("35", "PAN part not numeric")
    else:
        raise FieldError("2", "missing")
    if not 12 <= len(pan) <= 19:
        raise FieldError("2", "length out of range 12..19")
    if "14" in fields:
        expiry = _digits(fields, "14", size=4)
    elif track2:
        sep = "=" if "=" in track2 else "D"
        tail = track2.split(sep, 1)[1] if sep in track2 else ""
        expiry = tail[:4]
        if len(expiry) != 4 or not expiry.isdigit():
            raise FieldError("35", "expiry part not numeric")
    else:
        expiry = ""  # conditional: when sent, it must match the card
    return pan, expiry


def _transmission(fields: dict[str, str]) -> str:
    dt = _digits(fields, "7", size=10)
    month, day, hh, mm, ss = (int(dt[i : i + 2]) for i in range(0, 10, 2))
    if not (1 <= month <= 12 and 1 <= day <= 31 and hh < 24 and mm < 60 and ss < 60):
        raise FieldError("7", "not a valid MMDDhhmmss")
    return dt


def _ksn(fields: dict[str, str]) -> str:
    """DE53: the DUKPT key serial number in hex, 20 (TDES) or 24 (AES) characters."""
    ksn = fields.get("53", "")
    if ksn and (len(ksn) not in (20, 24) or any(c not in "0123456789ABCDEF" for c in ksn)):
        raise FieldError("53", "KSN must be 20 or 24 uppercase hex characters")
    return ksn


def _common(fields: dict[str, str]) -> dict[str, Any]:
    return {
        "terminal": _text(fields, "41"),
        "stan": _digits(fields, "11", size=6),
        "transmission_time": _transmission(fields),
    }


def _original(fields: dict[str, str]) -> OriginalData:
    """DE90: the original's MTI, STAN and transmission time (and 22 digits of acquirer and
    forwarder ids, zeros from a terminal)."""
    de90 = _digits(fields, "90", size=42)
    return OriginalData(mti=de90[:4], stan=de90[4:10], transmission_time=de90[10:20])


def parse_request(fields: dict[str, str]) -> Request:
    """Decoded fields → typed request. Raises FieldError naming the field at fault."""
    mti = fields.get("t", "")
    if mti not in RESPONSE_MTI:
        raise FieldError("0", f"MTI {mti!r} not supported", rc=Rc.INVALID_TRANSACTION)
    base = {"mti": mti, "digest": idempotency_digest(fields), "mac": fields.get("64", fields.get("128", ""))}
    if mti == "0800":
        code = _digits(fields, "70", size=3)
        if code not in NETWORK_CODES:
            raise FieldError("70", f"network code {code} not supported", rc=Rc.INVALID_TRANSACTION)
        return Request(kind=Kind.NETWORK, network_code=code, **_common(fields), **base)
    common = _common(fields)
    pcode = _digits(fields, "3", size=6)
    kind = (AUTHORIZATION_KINDS if mti.startswith("01") else PROCESSING_KINDS).get(pcode[:2])
    if mti.startswith("022"):
        if kind is not Kind.PURCHASE:
            raise FieldError("3", "a completion (0220) is processing code 00", rc=Rc.INVALID_TRANSACTION)
        kind = Kind.COMPLETION
    if kind is None:
        raise FieldError("3", f"processing code {pcode[:2]} not supported", rc=Rc.INVALID_TRANSACTION)
    pan, expiry = _pan_expiry(fields)
    currency = _digits(fields, "49", size=3)
    if currency != "410":
        raise FieldError("49", "currency is not KRW (410)", rc=Rc.INVALID_AMOUNT)
    amount = _amount(fields) if (kind is not Kind.BALANCE or "4" in fields) else 0
    extra: dict[str, Any] = {
        "processing_code": pcode,
        "pan": pan,
        "expiry": expiry,
        "amount": amount,
        "currency": currency,
        "merchant": _text(fields, "42"),
        "entry_mode": _digits(fields, "22", size=3, required=False),
        "local_time": _digits(fields, "12", size=6, required=False),
        "local_date": _digits(fields, "13", size=4, required=False),
        "pin_block": fields.get("52", ""),
        "ksn": _ksn(fields),
    }
    if kind is Kind.COMPLETION:  # quotes its pre-authorization: the RRN its 0110 returned, and DE90
        extra["rrn"] = _text(fields, "37")
        return Request(kind=kind, original=_original(fields), **common, **extra, **base)
    if mti[:2] in ("01", "02"):
        if kind is Kind.REFUND or (kind is Kind.PREAUTH and fields.get("37")):  # an incremental one: DE37
            extra["rrn"] = _text(fields, "37")
        return Request(kind=kind, **common, **extra, **base)
    if kind is Kind.BALANCE:
        raise FieldError("3", "a balance inquiry cannot be reversed", rc=Rc.INVALID_TRANSACTION)
    original = _original(fields)
    replacement = None
    if fields.get("95"):
        de95 = fields["95"]
        if len(de95) != 42 or not de95[:12].isdigit():
            raise FieldError("95", "replacement amount not numeric")
        replacement = int(de95[:12])
    return Request(kind=Kind.REVERSAL, original=original, replacement_amount=replacement,
                   **common, **extra, **base)


# ---------------------------------------------------------------------------- encode

def response_fields(resp: Response) -> dict[str, str]:
    out: dict[str, str] = {"t": resp.mti}
    for no in ECHO_FIELDS.get(resp.mti, ()):
        if no in resp.echo:
            out[no] = resp.echo[no]
    out["39"] = resp.rc.value
    if resp.rrn:
        out["37"] = resp.rrn
    if resp.auth_code:
        out["38"] = resp.auth_code
    if resp.balances is not None:
        out["54"] = encode_balances(resp.balances)
    return out


class DialectError(ValueError):
    """A dialect that cannot carry a response the switch sends: refused at start."""


# What the switch itself puts in a response (the echoed fields came in under the same spec):
# the most it ever sets, per field (docs/host-interface.md §2).
_SET_BY_SWITCH = {"37": "000000000001", "38": "000001",
                  "54": encode_balances(Balances(cash=2_000_000, cashback=2_000_000))}


def check_responses(dialect: Dialect) -> None:
    """Every response the switch can send fits the dialect: each response MTI with every
    response code, the RRN, authorization code and balances it sets, and a MAC (DE64, or
    DE128 with a secondary bitmap). Raises DialectError naming the field, in one line."""
    for mti in sorted(set(RESPONSE_MTI.values())):
        base = {"t": mti, "7": "0101000000", "11": "000001", "41": "T0000001"}
        samples = [{**base, "39": rc.value} for rc in Rc]
        samples.append({**base, "39": Rc.APPROVED.value, **_SET_BY_SWITCH})
        samples.append({**base, "39": Rc.APPROVED.value, "64": "0" * 16})
        samples.append({**base, "39": Rc.APPROVED.value, "95": "0" * 42, "128": "0" * 16})
        for fields in samples:
            try:
                encode_fields(fields, dialect)
            except EncodeError as exc:
                raise DialectError(f"dialect {dialect.name}: DE{exc.field} cannot carry the {mti} response "
                                   f"(DE{exc.field} = {fields.get(exc.field, '')!r}): {exc.msg}") from None


def encode_fields(fields: dict[str, str], dialect: Dialect) -> bytes:
    if dialect.compiled is not None:
        try:
            return _fast_encode(fields, dialect.compiled)
        except _Fallback:
            pass
    raw, _ = iso8583.encode(dict(fields), dialect.spec)
    return bytes(raw)


_ASCII_LENGTHS = {n: f"%0{n}d" for n in range(1, 5)}


def _fast_encode(doc: dict[str, str], c: _Compiled) -> bytes:
    numbered: list[int] = []
    for key in doc:
        if key.isdigit() and key.isascii():
            no = int(key)
            if not 2 <= no <= 128 or no == 65 or key != str(no):
                raise _Fallback  # "1" and "65" are pyiso8583's to drop; out-of-range is its error
            numbered.append(no)
        elif key not in ("t", "h", "p"):
            raise _Fallback
    numbered.sort()
    parts: list[bytes] = []
    try:
        header = doc.get("h", "")
        if len(header) != c.header_len:
            raise _Fallback
        mti = doc.get("t")
        if mti is None:
            raise _Fallback
        mti_raw = bytes.fromhex(mti) if c.mti_binary else mti.encode("ascii")
        if len(mti_raw) != c.mti_len or (c.mti_binary and " " in mti):
            raise _Fallback
        primary = secondary = 0
        plans = c.fields
        for no in numbered:
            plan = plans[no]
            if plan is None:
                raise _Fallback
            _key, binary, len_type, len_binary, max_len = plan
            value = doc[_key]
            if binary:
                if " " in value or len(value) % 2:
                    raise _Fallback
                data = bytes.fromhex(value)
            else:
                data = value.encode("ascii")
            size = len(data)
            if len_type:
                if size > max_len:
                    raise _Fallback
                if len_binary:
                    if size >= 1 << (8 * len_type):
                        raise _Fallback
                    parts.append(size.to_bytes(len_type, "big"))
                else:
                    length = _ASCII_LENGTHS[len_type] % size
                    if len(length) != len_type:
                        raise _Fallback
                    parts.append(length.encode())
            elif size != max_len:
                raise _Fallback
            parts.append(data)
            if no <= 64:
                primary |= 1 << (64 - no)
            else:
                secondary |= 1 << (128 - no)
        if secondary:
            primary |= 1 << 63
            bitmaps = primary.to_bytes(8, "big") + secondary.to_bytes(8, "big")
        else:
            bitmaps = primary.to_bytes(8, "big")
    except (ValueError, AttributeError, TypeError):  # non-hex, non-ASCII, not a str
        raise _Fallback from None
    return b"".join((header.encode("ascii"), mti_raw, bitmaps, *parts))


__all__ = [
    "DecodeError",
    "EncodeError",
    "Dialect",
    "load_dialect",
    "decode_fields",
    "parse_request",
    "response_fields",
    "encode_fields",
    "partial_fields",
    "reference_decode",
    "FIELD_NOT_IN_DIALECT",
]
