"""ISO 8583 codec: dialect files, bytes ↔ pyiso8583 dicts ↔ typed messages.

Pure module. A dialect is data (config/dialects/<name>.toml): framing plus the full field
spec in pyiso8583's format, and settings for what a terminal family does differently from
the canonical fields (`to_canonical` / `from_canonical`, "translation" below), so a terminal
speaking another dialect needs a file, not code.

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

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import iso8583
from iso8583.decoder import DecodeError
from iso8583.encoder import EncodeError

from switch.configdir import config_dir
from switch.domain import mask_pan, zero_padded
from switch.wire.framing import Framing
from switch.wire.messages import (
    AUTHORIZATION_KINDS,
    ECHO_FIELDS,
    NETWORK_CODES,
    PROCESSING_KINDS,
    RESPONSE_MTI,
    DIGEST_SKIP,
    REPEAT_OF,
    Balances,
    FieldError,
    KIND_BALANCE,
    KIND_COMPLETION,
    KIND_NETWORK,
    KIND_PREAUTH,
    KIND_PURCHASE,
    KIND_REFUND,
    KIND_REVERSAL,
    OriginalData,
    Rc,
    Request,
    Response,
)

_SPEC_KEYS = ("data_enc", "len_enc", "len_type", "max_len", "desc")


# ---------------------------------------------------------------------------- dialect settings
#
# What a terminal family does differently from the fields the switch reads (the *canonical*
# fields: the default dialect's values, docs/host-interface.md §1 "Dialect settings"). The
# codec translates after decoding (`to_canonical`) and before encoding (`from_canonical`), so
# parse_request, the engine and the ledger never see a dialect. A dialect without settings
# tables is served exactly as pyiso8583 reads it: no translation at all.

@dataclass(frozen=True, slots=True)
class ResponseCodeLayout:
    """DE39 as the dialect carries it: the switch's 2-character codes, `pad` added on `side`
    up to `width` (3, left, "0": 00 → "000", 51 → "051")."""

    width: int = 2
    pad: str = ""
    side: str = "left"


@dataclass(frozen=True, slots=True)
class Pad:
    """A fixed text field whose short values are filled with `char` on `side`. `strip`: the
    host removes them before it compares the value (DE41 with the terminal, DE42 with its
    merchant); otherwise the value is compared as received."""

    char: str
    side: str
    strip: bool


@dataclass(frozen=True, slots=True)
class MacLayout:
    """Where the MAC is: `field` "" is DE128 when the message has a secondary bitmap, else
    DE64 (ISO 8583: the MAC is the last field). `form` "binary" is 8 bytes, "hex" 16 ASCII hex
    characters. `covers` "preceding": every byte of the message before the MAC's data."""

    field: str = ""
    form: str = "binary"
    covers: str = "preceding"


@dataclass(frozen=True, slots=True)
class KsnLayout:
    """Where the DUKPT KSN is and how: "hex" text (canonical: uppercase) or "binary" bytes."""

    field: str = "53"
    form: str = "hex"


@dataclass(frozen=True)
class DialectSettings:
    response_code: ResponseCodeLayout = ResponseCodeLayout()
    dates: dict[str, str] = field(default_factory=dict)   # DE7/DE12/DE13 → its layout, when not canonical
    pads: dict[str, Pad] = field(default_factory=dict)    # field number → its pad
    mac: MacLayout = MacLayout()
    ksn: KsnLayout = KsnLayout()


# The canonical layout of each date field (what parse_request reads), and the layouts a
# dialect may give it instead: the canonical one after a date (YYMMDD / YYYYMMDD) or a year.
CANONICAL_DATES = {"7": "MMDDhhmmss", "12": "hhmmss", "13": "MMDD"}
DATE_LAYOUTS = {
    "7": ("MMDDhhmmss", "YYMMDDhhmmss", "YYYYMMDDhhmmss"),
    "12": ("hhmmss", "YYMMDDhhmmss", "YYYYMMDDhhmmss"),
    "13": ("MMDD", "YYMMDD", "YYYYMMDD"),
}
# Canonical widths of the padded fields the switch compares: the terminal id as provisioned
# (8) and the merchant id as the ledger keeps it, right-padded with spaces to 15.
_CANONICAL_WIDTH = {"41": 8, "42": 15}
RC_WIDTH = 2  # the switch's own response codes (messages.Rc)
MAC_SIZE = {"binary": 8, "hex": 16}  # bytes of the MAC field's data, per form
# The side key: what to_canonical changed that from_canonical must give back as it came (a
# date's year, a DE13 the request did not carry), as "12:251231235959,13:" ("" = absent).
WIRE_KEY = "wire"


@dataclass(frozen=True, slots=True)
class _MacPlan:
    """How `mac_span` finds the MAC in an encoded message without decoding it."""

    bitmap_at: int | None   # offset of the primary bitmap (None: header or MTI of variable length)
    bitmap_text: str        # "" for binary bitmaps, else their text encoding (16 hex characters)
    field: int              # 0: DE128 with a secondary bitmap, else DE64
    size: int               # bytes of the MAC's data
    hex: bool


@dataclass(frozen=True)
class Dialect:
    name: str
    framing: Framing
    spec: dict[str, dict[str, Any]]
    compiled: "_Compiled | None" = field(default=None, init=False, repr=False, compare=False)
    settings: DialectSettings | None = None  # None: no settings tables, no translation
    mac_plan: _MacPlan = field(init=False, repr=False, compare=False)  # set by __post_init__

    def __post_init__(self) -> None:
        object.__setattr__(self, "compiled", _compile(self.spec))
        mac = self.settings.mac if self.settings is not None else MacLayout()
        object.__setattr__(self, "mac_plan", _mac_plan(self.spec, mac))


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
    unknown = sorted(set(data) - {"framing", "fields", *_SETTING_TABLES})
    if unknown:
        raise ValueError(f"dialect {name}: unknown table {unknown[0]!r}; known: framing, fields, "
                         f"{', '.join(_SETTING_TABLES)}")
    settings = None
    if any(table in data for table in _SETTING_TABLES):
        settings = _settings(data, spec, lambda setting, problem: ValueError(f"dialect {name}: {setting}: {problem}"))
    return Dialect(name=name, framing=framing, spec=spec, settings=settings)


_SETTING_TABLES = ("response_code", "dates", "pad", "mac", "ksn")


def _table(data: dict[str, Any], name: str, keys: tuple[str, ...], refuse) -> dict[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise refuse(name, "must be a table")
    extra = sorted(set(table) - set(keys))
    if extra:
        raise refuse(f"{name}.{extra[0]}", f"unknown setting; known: {', '.join(keys)}")
    return table


def _choice(value: Any, setting: str, allowed: tuple[str, ...], refuse) -> str:
    if value not in allowed:
        raise refuse(setting, f"must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
    return value


def _fixed_text(spec: dict[str, dict[str, Any]], no: str, setting: str, refuse) -> dict[str, Any]:
    f = spec.get(no)
    if f is None:
        raise refuse(setting, f"fields.{no} is not in the dialect")
    if f["len_type"] != 0 or f["data_enc"] == "b":
        raise refuse(setting, f"fields.{no} must be fixed-length text (len_type 0, data_enc not 'b')")
    return f


def _field_number(value: Any, setting: str, refuse) -> str:
    no = str(value)
    if not (no.isdigit() and no.isascii() and 2 <= int(no) <= 128 and no == str(int(no))):
        raise refuse(setting, f"must be a field number 2..128, got {value!r}")
    return no


def _settings(data: dict[str, Any], spec: dict[str, dict[str, Any]], refuse) -> DialectSettings:
    """The dialect's settings tables, each checked against its field specs. `refuse(setting,
    problem)` builds the one-line error naming the dialect and the setting."""
    rc = _table(data, "response_code", ("width", "pad", "side"), refuse)
    width = rc.get("width", RC_WIDTH)
    if not isinstance(width, int) or isinstance(width, bool) or not RC_WIDTH <= width <= 3:
        raise refuse("response_code.width", f"must be 2 or 3, got {width!r}")
    pad = rc.get("pad", "")
    if width > RC_WIDTH and (not isinstance(pad, str) or len(pad) != 1):
        raise refuse("response_code.pad", f"one character is required to widen the code to {width}")
    response_code = ResponseCodeLayout(width=width, pad=pad,
                                       side=_choice(rc.get("side", "left"), "response_code.side", ("left", "right"), refuse))
    dates = {}
    for no, layout in _table(data, "dates", tuple(DATE_LAYOUTS), refuse).items():
        setting = f"dates.{no}"
        _choice(layout, setting, DATE_LAYOUTS[no], refuse)
        if _fixed_text(spec, no, setting, refuse)["max_len"] != len(layout):
            raise refuse(setting, f"{layout} needs fields.{no} fixed at {len(layout)} characters, "
                                  f"not {spec[no]['max_len']}")
        if layout != CANONICAL_DATES[no]:
            dates[no] = layout
    pads = {}
    pad_tables = data.get("pad", {})
    if not isinstance(pad_tables, dict):
        raise refuse("pad", "must be a table of fields")
    for no in pad_tables:
        setting = f"pad.{no}"
        _field_number(no, setting, refuse)
        if no == "39":
            raise refuse(setting, "DE39 is padded by response_code")
        p = _table(pad_tables, no, ("char", "side", "strip"), lambda s, problem: refuse(f"pad.{s}", problem))
        char = p.get("char", " ")
        if not isinstance(char, str) or len(char) != 1:
            raise refuse(f"{setting}.char", f"must be one character, got {char!r}")
        strip = p.get("strip", False)
        if not isinstance(strip, bool):
            raise refuse(f"{setting}.strip", f"must be true or false, got {strip!r}")
        _fixed_text(spec, no, setting, refuse)
        pads[no] = Pad(char=char, side=_choice(p.get("side", "right"), f"{setting}.side", ("left", "right"), refuse),
                       strip=strip)
    m = _table(data, "mac", ("field", "form", "covers"), refuse)
    mac_field = m.get("field", "auto")
    mac = MacLayout(field="" if mac_field == "auto" else _field_number(mac_field, "mac.field", refuse),
                    form=_choice(m.get("form", "binary"), "mac.form", tuple(MAC_SIZE), refuse),
                    covers=_choice(m.get("covers", "preceding"), "mac.covers", ("preceding",), refuse))
    for no in (mac.field,) if mac.field else ("64", "128"):
        f = spec.get(no)
        binary = mac.form == "binary"
        if f is None or f["len_type"] != 0 or f["max_len"] != MAC_SIZE[mac.form] or (f["data_enc"] == "b") != binary:
            raise refuse("mac.form" if f is not None else "mac.field",
                         f"a {mac.form} MAC needs fields.{no} fixed at {MAC_SIZE[mac.form]} "
                         f"{'bytes, data_enc b' if binary else 'characters of text'}")
    if mac.field and (spec["h"]["len_type"] or spec["t"]["len_type"]):
        raise refuse("mac.field", "the MAC is found through the bitmap: fields.h and fields.t must be fixed-length")
    k = _table(data, "ksn", ("field", "form"), refuse)
    ksn = KsnLayout(field=_field_number(k.get("field", 53), "ksn.field", refuse),
                    form=_choice(k.get("form", "hex"), "ksn.form", ("hex", "binary"), refuse))
    f = spec.get(ksn.field)
    if f is None or (f["data_enc"] == "b") != (ksn.form == "binary"):
        raise refuse("ksn.form", f"a {ksn.form} KSN needs fields.{ksn.field} "
                                 f"{'with data_enc b' if ksn.form == 'binary' else 'as text'}")
    return DialectSettings(response_code=response_code, dates=dates, pads=pads, mac=mac, ksn=ksn)


def _mac_plan(spec: dict[str, dict[str, Any]], mac: MacLayout) -> _MacPlan:
    h, t, p = spec.get("h"), spec.get("t"), spec.get("p")
    fixed = h is not None and t is not None and p is not None and not h["len_type"] and not t["len_type"]
    return _MacPlan(bitmap_at=h["max_len"] + t["max_len"] if fixed and h is not None and t is not None else None,
                    bitmap_text="" if p is None or p["data_enc"] == "b" else p["data_enc"],
                    field=int(mac.field or 0), size=MAC_SIZE[mac.form], hex=mac.form == "hex")


# ---------------------------------------------------------------------------- decode

def decode_fields(payload: bytes, dialect: Dialect) -> dict[str, str]:
    """Bytes → canonical fields: as pyiso8583 gives them (`wire_decode`), then translated by
    the dialect's settings (`to_canonical`); a dialect without settings is not translated. A
    DecodeError carries the fields read so far as the wire has them."""
    if dialect.settings is None:  # the hot path of the shipped default dialects: one check more
        if dialect.compiled is not None:
            try:
                return _fast_decode(payload, dialect.compiled)
            except _Fallback:
                pass
        return reference_decode(payload, dialect)
    return to_canonical(wire_decode(payload, dialect), dialect)


def wire_decode(payload: bytes, dialect: Dialect) -> dict[str, str]:
    """Bytes → fields as pyiso8583 gives them, untranslated. A present-but-empty secondary
    bitmap is accepted (pyiso8583 does)."""
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
    # two ASCII digits each, so compared as text in the order of their numbers
    month, day, hh, mm, ss = dt[0:2], dt[2:4], dt[4:6], dt[6:8], dt[8:10]
    if not ("01" <= month <= "12" and "01" <= day <= "31" and hh < "24" and mm < "60" and ss < "60"):
        raise FieldError("7", "not a valid MMDDhhmmss")
    return dt


def _ksn(fields: dict[str, str]) -> str:
    """DE53: the DUKPT key serial number in hex, 20 (TDES) or 24 (AES) characters."""
    ksn = fields.get("53", "")
    if ksn and (len(ksn) not in (20, 24) or any(c not in "0123456789ABCDEF" for c in ksn)):
        raise FieldError("53", "KSN must be 20 or 24 uppercase hex characters")
    return ksn


def _original(fields: dict[str, str]) -> OriginalData:
    """DE90: the original's MTI, STAN and transmission time (and 22 digits of acquirer and
    forwarder ids, zeros from a terminal)."""
    de90 = _digits(fields, "90", size=42)
    return OriginalData(mti=de90[:4], stan=de90[4:10], transmission_time=de90[10:20])


# The canonical log line's `kind` of a request, by MTI, processing code and DE70: what an
# operator reads first (docs/host-interface.md §2 names each message).
_NETWORK_KINDS = {"001": "sign-on", "002": "sign-off", "301": "echo"}
_KIND_BY_CODE = {
    "01": {"00": "pre-auth", "31": "balance"},
    "02": {"00": "purchase", "20": "refund", "21": "charge", "31": "balance"},
}
# The request fields the canonical line names, by the line's key (a PAN only masked: below).
_LOG_FIELDS = {"3": "processing_code", "11": "stan", "41": "terminal", "42": "merchant"}


def kind_of(fields: dict[str, str]) -> str:
    """purchase, refund, charge, balance, reversal, reversal-advice, pre-auth, pre-auth-advice,
    incremental, completion, sign-on, sign-off, echo — or "other" for what the switch does
    not serve. Reads only the MTI, DE3, DE37 and DE70, as decoded (no validation)."""
    mti = REPEAT_OF.get(fields.get("t", ""), fields.get("t", ""))
    if mti == "0800":
        return _NETWORK_KINDS.get(fields.get("70", ""), "other")
    if mti in ("0400", "0420"):
        return "reversal" if mti == "0400" else "reversal-advice"
    if mti == "0220":
        return "completion"
    kind = _KIND_BY_CODE.get(mti[:2], {}).get(fields.get("3", "")[:2], "other") if mti in ("0100", "0120", "0200") \
        else "other"
    if kind == "pre-auth":
        if mti == "0120":
            return "pre-auth-advice"
        if fields.get("37"):
            return "incremental"
    return kind


def describe_request(line: dict[str, Any], fields: dict[str, str]) -> None:
    """The canonical line's view of a request (as much of it as was decoded): its MTI, kind,
    DE70, processing code, STAN, terminal, merchant, and its PAN masked at the source (the
    log's processor masks again). Compiled with this module (switch/authorize/server.py calls
    it for every message)."""
    line["mti"] = fields.get("t", "")
    line["kind"] = kind_of(fields)
    if "70" in fields:
        line["de70"] = fields["70"]
    for no, name in _LOG_FIELDS.items():
        if no in fields:
            line[name] = fields[no].strip()
    if "2" in fields:
        line["pan"] = mask_pan(fields["2"])


# A message's keys in the order its decode gave them → the keys its digest hashes, in text
# order: the decoder gives the keys of one shape of message (a purchase, a PIN purchase, a
# repeat, …) in one order, so a few sorts serve every message. At most DIGEST_ORDERS_MAX shapes
# are kept (the shipped messages have a few dozen; a peer inventing combinations of fields
# only finds later shapes sorted each time, with the same digest).
DIGEST_ORDERS_MAX = 512
_DIGEST_ORDERS: dict[tuple[str, ...], list[str]] = {}


def idempotency_digest(fields: dict[str, str]) -> str:
    """A message's content, for duplicate detection (docs/host-interface.md §6): BLAKE2b-128
    of its fields but DIGEST_SKIP's as `key=value`, in key order (as text: "11" before "2"),
    then `t=` its original MTI, joined by 0x1E. Stored with every message outcome: the text
    hashed must not change, or a repeat of a message stored before would be a duplicate (94).
    Compiled with this module: one loop in C, not a comprehension of f-strings; each part
    built in one piece (`key + "=" + value` is two concatenations); the keys' order sorted once
    per shape of message (`_DIGEST_ORDERS`)."""
    keys = tuple(fields)
    order = _DIGEST_ORDERS.get(keys)
    if order is None:  # a shape of message not seen yet: its hashed keys in text order, kept
        skip = DIGEST_SKIP
        order = [key for key in sorted(fields) if key not in skip]
        if len(_DIGEST_ORDERS) < DIGEST_ORDERS_MAX:
            _DIGEST_ORDERS[keys] = order
    parts: list[str] = []
    for key in order:
        parts.append(f"{key}={fields[key]}")
    mti = fields.get("t", "")
    parts.append("t=" + REPEAT_OF.get(mti, mti))
    return hashlib.blake2b("\x1e".join(parts).encode(), digest_size=16).hexdigest()


def parse_request(fields: dict[str, str]) -> Request:
    """Decoded fields → typed request. Raises FieldError naming the field at fault."""
    mti = fields.get("t", "")
    if mti not in RESPONSE_MTI:
        raise FieldError("0", f"MTI {mti!r} not supported", rc=Rc.INVALID_TRANSACTION)
    digest, mac = idempotency_digest(fields), fields.get("64", fields.get("128", ""))
    if mti == "0800":
        code = _digits(fields, "70", size=3)
        if code not in NETWORK_CODES:
            raise FieldError("70", f"network code {code} not supported", rc=Rc.INVALID_TRANSACTION)
        return Request(mti=mti, kind=KIND_NETWORK, network_code=code, terminal=_text(fields, "41"),
                       stan=_digits(fields, "11", size=6), transmission_time=_transmission(fields), mac=mac,
                       digest=digest)
    # a financial request: every field read in the order the checks blame them, then the
    # Request built with keywords (no dicts merged into **kwargs: docs/performance.md, "A
    # request built without merged dicts (kept)")
    terminal, stan, transmission = _text(fields, "41"), _digits(fields, "11", size=6), _transmission(fields)
    pcode = _digits(fields, "3", size=6)
    kind = (AUTHORIZATION_KINDS if mti.startswith("01") else PROCESSING_KINDS).get(pcode[:2])
    if mti.startswith("022"):
        if kind is not KIND_PURCHASE:
            raise FieldError("3", "a completion (0220) is processing code 00", rc=Rc.INVALID_TRANSACTION)
        kind = KIND_COMPLETION
    if kind is None:
        raise FieldError("3", f"processing code {pcode[:2]} not supported", rc=Rc.INVALID_TRANSACTION)
    pan, expiry = _pan_expiry(fields)
    currency = _digits(fields, "49", size=3)
    if currency != "410":
        raise FieldError("49", "currency is not KRW (410)", rc=Rc.INVALID_AMOUNT)
    amount = _amount(fields) if (kind is not KIND_BALANCE or "4" in fields) else 0
    merchant = _text(fields, "42")
    entry_mode = _digits(fields, "22", size=3, required=False)
    local_time = _digits(fields, "12", size=6, required=False)
    local_date = _digits(fields, "13", size=4, required=False)
    pin_block = fields.get("52", "")
    ksn = _ksn(fields)
    rrn = ""
    original: OriginalData | None = None
    replacement: int | None = None
    if kind is KIND_COMPLETION:  # quotes its pre-authorization: the RRN its 0110 returned, and DE90
        rrn = _text(fields, "37")
        original = _original(fields)
    elif mti[:2] in ("01", "02"):
        if kind is KIND_REFUND or (kind is KIND_PREAUTH and fields.get("37")):  # an incremental one: DE37
            rrn = _text(fields, "37")
    else:
        if kind is KIND_BALANCE:
            raise FieldError("3", "a balance inquiry cannot be reversed", rc=Rc.INVALID_TRANSACTION)
        original = _original(fields)
        if fields.get("95"):
            de95 = fields["95"]
            if len(de95) != 42 or not de95[:12].isdigit():
                raise FieldError("95", "replacement amount not numeric")
            replacement = int(de95[:12])
        kind = KIND_REVERSAL
    return Request(mti=mti, kind=kind, terminal=terminal, stan=stan, transmission_time=transmission,
                   processing_code=pcode, pan=pan, expiry=expiry, amount=amount, currency=currency,
                   local_time=local_time, local_date=local_date, entry_mode=entry_mode, rrn=rrn, merchant=merchant,
                   original=original, replacement_amount=replacement, pin_block=pin_block, ksn=ksn,
                   mac=mac, digest=digest)


# ---------------------------------------------------------------------------- encode

def encode_balances(b: Balances) -> str:
    """DE54: two 20-char entries: account type 00, amount type (02 cash, 91 cashback),
    currency 410, sign C/D, 12-digit amount (read by switch/wire/messages.py `decode_balances`).
    Here, compiled, not in the interpreted messages module: three Python calls an approval."""
    return _balance_entry("02", b.cash) + _balance_entry("91", b.cashback)


def _balance_entry(amount_type: str, won: int) -> str:
    sign = "C" if won >= 0 else "D"  # no format spec: a spec is a format() call (≈ 1,400 instructions)
    return "00" + amount_type + "410" + sign + zero_padded(abs(won), 12)


def response_fields(resp: Response) -> dict[str, str]:
    # each field read once: compiled, a Struct's field is read through the generic attribute
    # protocol (≈ 200 instructions a read; docs/performance.md, "Fields read once (kept)")
    mti, echo, rrn, auth_code, balances = resp.mti, resp.echo, resp.rrn, resp.auth_code, resp.balances
    out: dict[str, str] = {"t": mti}
    for no in ECHO_FIELDS.get(mti, ()):
        value = echo.get(no)
        if value is not None:
            out[no] = value
    wire = echo.get(WIRE_KEY)  # a dialect's dates as they came: echoed as they came
    if wire:
        out[WIRE_KEY] = wire
    out["39"] = resp.rc.value
    if rrn:
        out["37"] = rrn
    if auth_code:
        out["38"] = auth_code
    if balances is not None:
        out["54"] = encode_balances(balances)
    return out


class DialectError(ValueError):
    """A dialect that cannot carry a response the switch sends: refused at start."""


# What the switch itself puts in a response (the echoed fields came in under the same spec):
# the most it ever sets, per field (docs/host-interface.md §2).
_SET_BY_SWITCH = {"37": "000000000001", "38": "000001",
                  "54": encode_balances(Balances(cash=2_000_000, cashback=2_000_000))}


def check_responses(dialect: Dialect) -> None:
    """Every response the switch can send fits the dialect: each response MTI with every
    response code (as the dialect's settings pad it), the RRN, authorization code and balances
    it sets, and a MAC (DE64, or DE128 with a secondary bitmap, or the dialect's MAC field,
    which must then be the last field of every response). Raises DialectError naming the
    field, in one line."""
    for mti in sorted(set(RESPONSE_MTI.values())):
        base = _canonical_sample({"t": mti, "7": "0101000000", "11": "000001", "41": "T0000001"}, dialect)
        samples = [{**base, "39": rc.value} for rc in Rc]
        samples.append({**base, "39": Rc.APPROVED.value, **_SET_BY_SWITCH})
        samples.append({**base, "39": Rc.APPROVED.value, "64": "0" * 16})
        samples.append({**base, "39": Rc.APPROVED.value, "95": "0" * 42, "128": "0" * 16})
        for fields in samples:
            wire = from_canonical(fields, dialect) if dialect.settings is not None else fields
            try:
                wire_encode(wire, dialect)
            except EncodeError as exc:
                raise DialectError(f"dialect {dialect.name}: DE{exc.field} cannot carry the {mti} response "
                                   f"(DE{exc.field} = {wire.get(exc.field, '')!r}): {exc.msg}") from None
        mac = dialect.mac_plan.field
        later = [no for no in (*ECHO_FIELDS.get(mti, ()), *_SET_BY_SWITCH, "39") if mac and int(no) > mac]
        if later:
            raise DialectError(f"dialect {dialect.name}: DE{mac} cannot carry the MAC of the {mti} response "
                               f"(mac.field): DE{max(later, key=int)} would follow it, and the MAC is the last field")


def _canonical_sample(fields: dict[str, str], dialect: Dialect) -> dict[str, str]:
    """Canonical sample fields as a request in the dialect would give them: its date
    layouts carry a year (and a date) the canonical value lacks."""
    if dialect.settings is None:
        return fields
    wire = dict(fields)
    for no, layout in dialect.settings.dates.items():
        if no in wire:
            wire[no] = wire[no].rjust(len(layout), "0")
    return to_canonical(wire, dialect)


def encode_fields(fields: dict[str, str], dialect: Dialect) -> bytes:
    """Canonical fields → bytes: translated by the dialect's settings (`from_canonical`),
    then encoded (`wire_encode`). Raises EncodeError naming the field."""
    if dialect.settings is not None:
        fields = from_canonical(fields, dialect)
    if dialect.compiled is not None:  # wire_encode, inline: the shipped default dialects' hot path
        try:
            return _fast_encode(fields, dialect.compiled)
        except _Fallback:
            pass
    raw, _ = iso8583.encode(dict(fields), dialect.spec)
    return bytes(raw)


def wire_encode(fields: dict[str, str], dialect: Dialect) -> bytes:
    """Fields as the wire has them → bytes, exactly as pyiso8583 encodes them."""
    if dialect.compiled is not None:
        try:
            return _fast_encode(fields, dialect.compiled)
        except _Fallback:
            pass
    raw, _ = iso8583.encode(dict(fields), dialect.spec)
    return bytes(raw)


_ASCII_LENGTHS = {n: f"%0{n}d" for n in range(1, 5)}
# The ASCII length prefix of a field of 1–3 length digits (LVAR, LLVAR, LLLVAR) for each size it
# can carry, encoded once: a tuple index a field instead of a printf-style format and an encode
# (≈ 1,400 instructions compiled; docs/performance.md, "Length prefixes from a table (kept)").
# Four digits (LLLLVAR, 10,000 sizes) are formatted as before.
_ASCII_LENGTH_BYTES: tuple[tuple[bytes, ...], ...] = tuple(
    tuple(str(size).zfill(digits).encode() for size in range(10 ** digits)) if 1 <= digits <= 3 else ()
    for digits in range(5))
# The field keys the fast encoder takes, by number: "2".."128" written plainly, but "65" ("1" and
# "65" are pyiso8583's to drop; any other key is its error or its to check). A dict lookup, not
# an int() a field: ≈ 12 a message (docs/performance.md, "Four formattings fewer a purchase (kept)").
_FIELD_NUMBERS: dict[str, int] = {str(no): no for no in range(2, 129) if no != 65}


def _fast_encode(doc: dict[str, str], c: _Compiled) -> bytes:
    numbered: list[int] = []
    numbers = _FIELD_NUMBERS
    for key in doc:
        no = numbers.get(key)
        if no is not None:
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
                    prefixes = _ASCII_LENGTH_BYTES[len_type]
                    if size < len(prefixes):
                        parts.append(prefixes[size])
                    else:  # four length digits, or a size its digits cannot say
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


# ---------------------------------------------------------------------------- translation
#
# Pure functions of (fields, settings). Each leaves alone a value not in the shape it
# translates (a date of another length, a response code of another width): parse_request
# then blames that field, and an answer echoing it sends it back as it came.

def to_canonical(fields: dict[str, str], dialect: Dialect) -> dict[str, str]:
    """A request's fields as the dialect sends them → the canonical fields parse_request
    reads: response code unpadded, dates in their canonical layout (DE13 taken from a DE12
    that carries the date, when the request has no DE13), pads stripped where the host strips
    them, MAC and KSN in DE64 (or DE128) and DE53 as uppercase hex. What a response must echo
    as it came is kept under WIRE_KEY."""
    s = dialect.settings
    if s is None:
        return fields
    out = dict(fields)
    rc = s.response_code
    if rc.width != RC_WIDTH and "39" in out:
        out["39"] = _rc_unpadded(out["39"], rc)
    kept: list[str] = []
    for no, layout in s.dates.items():
        value = out.get(no)
        if value is None or len(value) != len(layout) or not (value.isdigit() and value.isascii()):
            continue
        out[no] = value[-len(CANONICAL_DATES[no]):]
        kept.append(f"{no}:{value}")
        if no == "12" and "13" not in out and "MMDD" in layout:
            out["13"] = value[-10:-6]
            kept.append("13:")  # not on the wire: not in the answer either
    for no, pad in s.pads.items():
        if pad.strip and no in out:
            value = out[no].lstrip(pad.char) if pad.side == "left" else out[no].rstrip(pad.char)
            out[no] = value.ljust(_CANONICAL_WIDTH.get(no, 0))
    mac, ksn = s.mac, s.ksn
    if mac.field not in ("", "64", "128") and mac.field in out and "64" not in out:
        out["64"] = out.pop(mac.field)
    if mac.form == "hex":
        for no in ("64", "128"):
            if no in out:
                out[no] = out[no].upper()
    if ksn.field != "53" and ksn.field in out and "53" not in out:
        out["53"] = out.pop(ksn.field)
    if ksn.form == "hex" and "53" in out:
        out["53"] = out["53"].upper()
    if kept:
        out[WIRE_KEY] = ",".join(kept)
    return out


def from_canonical(fields: dict[str, str], dialect: Dialect) -> dict[str, str]:
    """Canonical fields (a response, or a request a client builds) → the fields as the
    dialect carries them: the response code padded to its width, echoed dates as they came,
    pads applied to short values, the MAC (placed in DE64, or DE128) in the dialect's MAC
    field, the KSN in its KSN field. The inverse of to_canonical on what it translated, and
    the identity on values already as the dialect has them (the fields of a request that
    could not be decoded, echoed as read)."""
    s = dialect.settings
    if s is None:
        return fields
    out = dict(fields)
    kept = _kept(out.pop(WIRE_KEY, ""))
    rc = s.response_code
    if rc.width != RC_WIDTH and "39" in out:
        out["39"] = _rc_padded(out["39"], rc)
    for no in s.dates:
        if no in kept and no in out:
            if kept[no] == "":
                del out[no]
            elif kept[no].endswith(out[no]):
                out[no] = kept[no]
    if "13" in kept and kept["13"] == "" and "13" in out:
        del out["13"]
    for no, pad in s.pads.items():
        if no in out:
            value = out[no].rstrip(" ") if pad.strip and no in _CANONICAL_WIDTH else out[no]
            width = dialect.spec[no]["max_len"]
            out[no] = value.rjust(width, pad.char) if pad.side == "left" else value.ljust(width, pad.char)
    target = s.mac.field
    if target:
        for no in ("64", "128"):
            if no != target and no in out and target not in out:
                out[target] = out.pop(no)
    if s.ksn.field != "53" and "53" in out and s.ksn.field not in out:
        out[s.ksn.field] = out.pop("53")
    return out


def _kept(text: str) -> dict[str, str]:
    if not text:
        return {}
    return dict(entry.split(":", 1) for entry in text.split(",") if ":" in entry)


def _rc_padded(code: str, layout: ResponseCodeLayout) -> str:
    if len(code) != RC_WIDTH:
        return code  # not a code of the switch's: as it came
    fill = layout.pad * (layout.width - RC_WIDTH)
    return fill + code if layout.side == "left" else code + fill


def _rc_unpadded(code: str, layout: ResponseCodeLayout) -> str:
    fill = layout.pad * (layout.width - RC_WIDTH)
    if len(code) != layout.width:
        return code
    if layout.side == "left":
        return code[len(fill):] if code.startswith(fill) else code
    return code[:RC_WIDTH] if code.endswith(fill) else code


# ---------------------------------------------------------------------------- MAC on the wire

def mac_span(raw: bytes, dialect: Dialect) -> tuple[bytes, str] | None:
    """Where an encoded message's MAC is, by the dialect's [mac] setting: (the bytes it
    covers — every byte of the message before the MAC's data —, the MAC as canonical
    uppercase hex). None when the message's last field is not the dialect's MAC field (read
    from the bitmaps, without decoding the message) or the MAC is not in its form."""
    plan = dialect.mac_plan
    size = plan.size
    if len(raw) <= size:
        return None
    if plan.bitmap_at is not None:
        last, secondary = _last_field(raw, plan)
        if last != (plan.field or (128 if secondary else 64)):
            return None
    tail = raw[-size:]
    if not plan.hex:
        return raw[:-size], tail.hex().upper()
    if any(c not in _HEX_DIGITS for c in tail):
        return None
    return raw[:-size], tail.decode("ascii").upper()


_HEX_DIGITS = frozenset(b"0123456789ABCDEFabcdef")


def _last_field(raw: bytes, plan: _MacPlan) -> tuple[int, bool]:
    """(the highest field number the bitmaps mark present — 0 for none or unreadable —,
    whether a secondary bitmap is present)."""
    size = 16 if plan.bitmap_text else 8
    at = plan.bitmap_at
    assert at is not None, "called only for a bitmap at a fixed offset"

    def bitmap(i: int) -> int:
        chunk = raw[at + i * size : at + (i + 1) * size]
        if len(chunk) != size:
            raise ValueError("short bitmap")
        if plan.bitmap_text:
            chunk = bytes.fromhex(chunk.decode(plan.bitmap_text))
        return int.from_bytes(chunk, "big")

    try:
        bits = bitmap(0)
        secondary = bool(bits >> 63)
        width = 64
        if secondary:
            bits, width = (bits << 64) | bitmap(1), 128
    except (ValueError, UnicodeDecodeError):
        return 0, False
    if not bits:
        return 0, secondary
    return width - ((bits & -bits).bit_length() - 1), secondary


def splice_mac(payload: bytes, mac: str, dialect: Dialect) -> bytes:
    """An encoded message whose last field is the dialect's MAC field (holding a placeholder),
    with `mac` (hex) in its place, in the dialect's MAC form."""
    plan = dialect.mac_plan
    data = mac.upper().encode("ascii") if plan.hex else bytes.fromhex(mac)
    if len(data) != plan.size:
        raise ValueError(f"a MAC of {len(data)} bytes where the dialect carries {plan.size}")
    return payload[: -plan.size] + data


def mac_location(dialect: Dialect) -> str:
    """The dialect's MAC field, for a message naming it."""
    return f"DE{dialect.mac_plan.field}" if dialect.mac_plan.field else "DE64 (DE128 with a secondary bitmap)"


__all__ = [
    "DecodeError",
    "EncodeError",
    "Dialect",
    "DialectSettings",
    "load_dialect",
    "decode_fields",
    "wire_decode",
    "parse_request",
    "response_fields",
    "encode_fields",
    "wire_encode",
    "to_canonical",
    "from_canonical",
    "mac_span",
    "splice_mac",
    "mac_location",
    "partial_fields",
    "reference_decode",
    "FIELD_NOT_IN_DIALECT",
    "WIRE_KEY",
]
