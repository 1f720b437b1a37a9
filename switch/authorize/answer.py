"""Building the bytes of an answer: encode the response fields, and MAC them for a secured
terminal. Done before the commit (switch/authorize/engine.py), so an answer that cannot be
built is a decline with nothing stored, never an approval that cannot be sent.
"""

from __future__ import annotations

from switch.authorize.hsm_client import HsmUnavailable
from switch.authorize.security import Security, SecurityError, TerminalKeys
from switch.wire.codec import Dialect, EncodeError, encode_fields, mac_location, mac_span, splice_mac
from switch.wire.messages import Rc, mac_field

MAC_PLACEHOLDER = "0" * 16  # canonical hex: 8 zero bytes, or 16 "0" characters in a hex-form dialect


class AnswerFailed(Exception):
    """The answer cannot be built: `rc` is what the request gets instead (96 encoding,
    91 the HSM could not MAC it)."""

    def __init__(self, rc: Rc, note: str) -> None:
        super().__init__(note)
        self.rc = rc
        self.note = note


class Answerer:
    def __init__(self, dialect: Dialect, security: Security | None) -> None:
        self.dialect = dialect
        self.security = security

    def encode_unsigned(self, fields: dict[str, str]) -> bytes:
        """`encode` of an answer to a terminal without a MAC (`sign` None), in the caller's
        step: no coroutine to make and await (docs/performance.md, "Uncontended steps without a
        coroutine"). Raises AnswerFailed."""
        try:
            return encode_fields(fields, self.dialect)
        except (EncodeError, ValueError) as exc:
            raise AnswerFailed(Rc.SYSTEM_ERROR, f"response cannot be encoded: {exc}") from None

    async def encode(self, fields: dict[str, str], sign: tuple[TerminalKeys, str] | None) -> bytes:
        """The message bytes; for a secured terminal the MAC under the request's KSN, in the
        dialect's MAC field and form, over every byte before it (codec `mac_span`). Raises
        AnswerFailed."""
        if sign is None or self.security is None:
            return self.encode_unsigned(fields)
        payload = self.encode_unsigned({**fields, mac_field(fields): MAC_PLACEHOLDER})
        span = mac_span(payload, self.dialect)
        if span is None:  # check_responses refuses such a dialect at start; without that check, 96
            raise AnswerFailed(Rc.SYSTEM_ERROR, f"response MAC: {mac_location(self.dialect)} is not the last field")
        keys, ksn = sign
        try:
            mac = await self.security.response_mac(keys, ksn, span[0])
        except HsmUnavailable:
            raise AnswerFailed(Rc.HSM_UNAVAILABLE, "HSM unavailable for the response MAC") from None
        except SecurityError as exc:
            raise AnswerFailed(Rc.HSM_UNAVAILABLE, f"response MAC: HSM error {exc.error}") from None
        return splice_mac(payload, mac, self.dialect)

    async def encode_best_effort(self, fields: dict[str, str], sign: tuple[TerminalKeys, str] | None) -> bytes | None:
        """A decline nothing was stored for: MAC'd when the HSM can, else sent without a MAC
        (a decline moves no money); None when even that cannot be encoded."""
        try:
            return await self.encode(fields, sign)
        except AnswerFailed:
            pass
        try:
            return self.encode_unsigned(fields)
        except AnswerFailed:
            return None
