"""A terminal's side of the host interface, sans I/O: it builds request field dicts.

STAN and transmission time come from the terminal; the pair with the TID is the switch's
idempotency key, so a repeat (0201/0401/0421) reuses them and a new transaction never does.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

from switch.domain import KST

REPEAT_MTI = {"0100": "0101", "0120": "0121", "0200": "0201", "0220": "0221", "0400": "0401", "0420": "0421"}


def _original_mti(mti: str) -> str:
    """DE90 names the original by its first MTI: a repeat (xxx1) is its original (xxx0)."""
    return mti[:3] + "0" if mti[3] == "1" else mti


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


# The last whole second formatted: (unix second, DE7, DE12, DE13). A fleet sends thousands of
# requests a second from one clock, so the three strftime calls run once a second, not per request.
_formatted: tuple[int, str, str, str] = (-1, "", "", "")


def clock_fields(t: datetime) -> tuple[str, str, str]:
    """DE7 (transmission date and time, UTC, MMDDhhmmss), DE12 (local time, hhmmss) and DE13
    (local date, MMDD) of the instant `t`, the local time being Korea's (KST: no daylight
    saving time). A naive `t` is read as the machine's local time, as datetime does."""
    global _formatted
    second = int(t.timestamp() // 1)
    known = _formatted  # read once: another thread may format another second meanwhile
    if second != known[0]:
        utc, local = t.astimezone(timezone.utc), t.astimezone(KST)
        known = (second, utc.strftime("%m%d%H%M%S"), local.strftime("%H%M%S"), local.strftime("%m%d"))
        _formatted = known
    return known[1], known[2], known[3]


class Terminal:
    def __init__(self, tid: str, mid: str, *, stan: int = 0, now: Callable[[], datetime] = _utc_now) -> None:
        if len(tid) != 8:
            raise ValueError("tid must be 8 characters (DE41)")
        self.tid = tid
        self.mid = mid.ljust(15)
        self.stan = stan
        self._now = now

    def _next_stan(self) -> str:
        """DE11: the next STAN, 000001 after 999999 (never 000000)."""
        self.stan = self.stan % 999_999 + 1
        return f"{self.stan:06d}"

    def _next(self) -> dict[str, str]:
        return {"7": clock_fields(self._now())[0], "11": self._next_stan(), "41": self.tid}

    def network(self, code: str) -> dict[str, str]:
        return {"t": "0800", **self._next(), "70": code}

    def sign_on(self) -> dict[str, str]:
        return self.network("001")

    def sign_off(self) -> dict[str, str]:
        return self.network("002")

    def echo(self) -> dict[str, str]:
        return self.network("301")

    def _financial(self, pcode: str, pan: str, amount: int, expiry: str | None, entry_mode: str) -> dict[str, str]:
        de7, de12, de13 = clock_fields(self._now())  # one instant: DE12/DE13 are DE7's, in Korea
        fields = {"t": "0200", "2": pan, "3": pcode, "4": f"{amount:012d}", "7": de7, "11": self._next_stan(),
                  "41": self.tid, "12": de12, "13": de13, "22": entry_mode, "42": self.mid, "49": "410"}
        if expiry:
            fields["14"] = expiry
        return fields

    def purchase(self, pan: str, amount: int, *, expiry: str | None = None, entry_mode: str = "051") -> dict[str, str]:
        return self._financial("000000", pan, amount, expiry, entry_mode)

    def refund(self, pan: str, amount: int, rrn: str, *, expiry: str | None = None,
               entry_mode: str = "051") -> dict[str, str]:
        fields = self._financial("200000", pan, amount, expiry, entry_mode)
        fields["37"] = rrn
        return fields

    def balance(self, pan: str, *, expiry: str | None = None, entry_mode: str = "051") -> dict[str, str]:
        fields = self._financial("310000", pan, 0, expiry, entry_mode)
        del fields["4"]
        return fields

    def preauth(self, pan: str, amount: int, *, rrn: str | None = None, advice: bool = False,
                expiry: str | None = None, entry_mode: str = "051") -> dict[str, str]:
        """0100 pre-authorization (0120: the advice of one), placing a hold; with `rrn`, an
        incremental authorization of the hold that RRN names."""
        fields = {**self._financial("000000", pan, amount, expiry, entry_mode), "t": "0120" if advice else "0100"}
        if rrn is not None:
            fields["37"] = rrn
        return fields

    def completion(self, preauth: dict[str, str], rrn: str, amount: int, *, expiry: str | None = None,
                   entry_mode: str = "051") -> dict[str, str]:
        """0220 completion of `preauth` (the 0100 as sent) for the final amount, quoting the
        RRN its 0110 returned (DE37) and its original data elements (DE90)."""
        fields = {**self._financial("000000", preauth["2"], amount, expiry, entry_mode), "t": "0220", "37": rrn}
        fields["90"] = _original_mti(preauth["t"]) + preauth["11"] + preauth["7"] + "0" * 22
        return fields

    def reversal(self, original: dict[str, str], *, replacement_amount: int | None = None,
                 advice: bool = False) -> dict[str, str]:
        """0400 (or 0420 advice) pointing at `original` through DE90."""
        de90 = _original_mti(original.get("t", "0200")) + original["11"] + original["7"] + "0" * 22
        fields: dict[str, str] = {"t": "0420" if advice else "0400",
                                  **{k: original[k] for k in ("2", "3", "4", "42", "49") if k in original},
                                  **self._next(), "90": de90}
        if "4" not in fields:
            fields["4"] = "0" * 12
        if replacement_amount is not None:
            fields["95"] = f"{replacement_amount:012d}" + "0" * 30
        return fields

    @staticmethod
    def repeat(fields: dict[str, str]) -> dict[str, str]:
        """The same message again as a repeat (0200→0201, 0400→0401, 0420→0421)."""
        return {**fields, "t": REPEAT_MTI[fields["t"]]}
