"""Codec micro-benchmark, in process: one 0200 decode and one 0210 encode.

    python benchmarks/codec_bench.py [--dialect default]

The 0200 is the standard scenario's: a purchase with DE52 (PIN block), DE53 (KSN) and DE64
(MAC), 16 fields. The 0210 is an approval with balances (DE54), as the switch sends it.
Figures are the median, over `repeat` timeit runs, of the time per call in microseconds, for
the switch's codec (compiled dialect) and, in the same run, pyiso8583 on the same messages.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import iso8583  # noqa: E402

from switch.wire.codec import Dialect, decode_fields, encode_fields, load_dialect  # noqa: E402

PURCHASE_0200 = {
    "t": "0200", "2": "9410100000012345", "3": "000000", "4": "000000020000", "7": "0715031500", "11": "000123",
    "12": "121500", "13": "0715", "14": "3111", "22": "051", "41": "T0000001", "42": "EUM000000000001",
    "49": "410", "52": "0123456789ABCDEF", "53": "FFFF9876540000200001", "64": "0011223344556677",
}
APPROVAL_0210 = {
    "t": "0210", "2": "9410100000012345", "3": "000000", "4": "000000020000", "7": "0715031500", "11": "000123",
    "12": "121500", "13": "0715", "41": "T0000001", "42": "EUM000000000001", "49": "410", "37": "000000012345",
    "38": "123456", "39": "00", "54": "0002410C000000080000" + "0091410C000000001500",
}


def per_call_us(fn, *, number: int, repeat: int) -> float:
    """Median over `repeat` runs of `number` calls, in microseconds per call."""
    runs = timeit.Timer(fn).repeat(repeat=repeat, number=number)
    return statistics.median(runs) / number * 1e6


def codec_bench(dialect: Dialect | None = None, *, number: int = 2000, repeat: int = 7) -> dict[str, float]:
    dialect = dialect or load_dialect("default")
    payload = encode_fields(PURCHASE_0200, dialect)
    assert decode_fields(payload, dialect)["52"] == PURCHASE_0200["52"]  # the fixture is a real 0200
    decode_us = per_call_us(lambda: decode_fields(payload, dialect), number=number, repeat=repeat)
    encode_us = per_call_us(lambda: encode_fields(APPROVAL_0210, dialect), number=number, repeat=repeat)
    # pyiso8583 itself on the same messages, in the same run: what the compiled codec gained
    ref_decode_us = per_call_us(lambda: iso8583.decode(payload, dialect.spec), number=number, repeat=repeat)
    ref_encode_us = per_call_us(lambda: iso8583.encode(dict(APPROVAL_0210), dialect.spec), number=number,
                                repeat=repeat)
    return {"codec.decode_us": round(decode_us, 2), "codec.encode_us": round(encode_us, 2),
            "codec.decode_bytes": len(payload), "codec.pyiso8583_decode_us": round(ref_decode_us, 2),
            "codec.pyiso8583_encode_us": round(ref_encode_us, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dialect", default="default")
    ap.add_argument("--number", type=int, default=2000, help="calls per timeit run")
    ap.add_argument("--repeat", type=int, default=7, help="timeit runs")
    args = ap.parse_args(argv)
    print(json.dumps(codec_bench(load_dialect(args.dialect), number=args.number, repeat=args.repeat), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
