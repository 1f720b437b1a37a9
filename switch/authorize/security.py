"""Terminal security through the HSM: MACs, PIN verification, response MACs, provisioning.

The switch never holds a clear PIN or key. A secured terminal's BDK is stored encrypted
under the HSM's LMK; the HSM derives the DUKPT transaction keys from it and the KSN the
terminal sends in DE53. Profiles (docs/security.md):

  none        no PIN, no MAC (legacy and certification terminals; logged as such)
  mac         a static TAK: X9.19 MACs both ways (HSM commands M8, M6), no PIN
  dukpt-tdes  ANSI X9.24-1 TDES DUKPT: ISO-0 PIN blocks, X9.19 MACs (HSM commands G0, GW)
  dukpt-aes   ANSI X9.24-3 AES DUKPT: ISO-4 PIN blocks, AES-CMAC MACs (HSM commands Z0, Z2)

PINs are verified by Visa PVV: the PIN block is translated to the switch's ZPK (G0/Z0) and
verified there against the card's PVV (EC); card issuance turns a PIN into a PVV (BA, DG).
"""

from __future__ import annotations

from dataclasses import dataclass

from collections import OrderedDict

from switch.authorize.hsm_client import HsmPool, HsmReply, HsmUnavailable, Sent
from switch.domain import zero_padded

PROFILES = ("none", "mac", "dukpt-tdes", "dukpt-aes")
DUKPT = ("dukpt-tdes", "dukpt-aes")
SECURED = ("mac",) + DUKPT

# `--keys test` provisions terminals under the published test keys, so any third-party
# terminal or test tool can be certified: the X9.24-1 BDK 0123456789ABCDEFFEDCBA9876543210,
# the X9.24-3 AES BDK FEDCBA9876543210F1F1F1F1F1F1F1F1 and, for `mac`, the double-length test
# key 0123…3210 as TAK. The switch holds them only as Thales' public test LMK encrypts them
# (docs/hsm.md §3, proved by tests/test_hsm_commands.py): no clear key, no LMK, in this process.
TEST_KEYS_UNDER_TEST_LMK = {
    "dukpt-tdes": "U8E3D3E2FD5919657F05A1AA90D32A014",  # BDK, key type 009, KCV 08D7B4
    "dukpt-aes": "UC0106228334ECB2E12B49BA556660547",   # AES BDK, key type 009, KCV FF0BD7 (CMAC)
    "mac": "U7AD0BB2A32ADE115807C3572FC302BA5",         # TAK, key type 003, KCV 08D7B4
}
TEST_KSI = {"dukpt-tdes": "FFFF987654", "dukpt-aes": "12345678"}
BDK_KEY_TYPE = "009"
TAK_KEY_TYPE = "003"
PVKI = "1"
# ANSI X9.24-1 TDES KSN: the low 21 bits are the transaction counter
TDES_COUNTER_MASK = (1 << 21) - 1
MAC_SIZE = 8  # bytes of DE64


# Error codes by which the HSM says it could not do the work, not that the data is wrong:
# internal error, an injected fault, over capacity, command disabled (docs/hsm.md §4). A MAC or
# PIN it could not check is answered 91 with nothing stored, as when no HSM answers.
HSM_FAILURE_ERRORS = frozenset({"13", "17", "67", "68"})


class SecurityError(RuntimeError):
    """The HSM refused or failed a command; `error` is its 2-character code."""

    def __init__(self, command: str, error: str) -> None:
        super().__init__(f"HSM {command} answered error {error}")
        self.command = command
        self.error = error


@dataclass(frozen=True, slots=True)
class TerminalKeys:
    profile: str
    key: str          # BDK (DUKPT) or TAK (mac) under the LMK, with its scheme tag
    ksn_initial: str  # DUKPT only


def initial_ksn(profile: str, device: int) -> str:
    """TDES: KSI (10H) + 19-bit device id + 21-bit counter (0). AES: initial key ID = BDK
    ID (8H) + derivation ID (8H), then a 32-bit counter (0)."""
    if profile == "dukpt-tdes":
        return TEST_KSI[profile] + f"{(device % (1 << 19)) << 21:010X}"
    return TEST_KSI[profile] + f"{device:08X}" + "00000000"


def provision_test_keys(profile: str, device: int) -> TerminalKeys:
    """Keys under the public test keys, as the test LMK holds them: `--keys test` needs an
    HSM running the test LMK (the `eum hsm` default; docs/security.md)."""
    ksn = initial_ksn(profile, device) if profile in DUKPT else ""
    return TerminalKeys(profile=profile, key=TEST_KEYS_UNDER_TEST_LMK[profile], ksn_initial=ksn)


def ksn_parts(profile: str, ksn: str) -> tuple[str, int]:
    """(device part, transaction counter) of a KSN: TDES 21-bit counter, AES 32-bit."""
    if profile == "dukpt-tdes":
        value = int(ksn, 16)
        return f"{value & ~TDES_COUNTER_MASK:020X}", value & TDES_COUNTER_MASK
    return ksn[:16], int(ksn[16:], 16)


# The two parts the hot path asks for, without formatting the device part as ksn_parts does (a
# format spec is a format() call: docs/performance.md, "The HSM client's formatting (kept)").
def ksn_counter(profile: str, ksn: str) -> int:
    """ksn_parts(profile, ksn)[1]: the KSN's transaction counter."""
    if profile == "dukpt-tdes":
        return int(ksn, 16) & TDES_COUNTER_MASK
    return int(ksn[16:], 16)


def same_device(profile: str, ksn: str, other: str) -> bool:
    """ksn_parts(profile, ksn)[0] == ksn_parts(profile, other)[0]: both KSNs name one device."""
    if profile == "dukpt-tdes":
        return int(ksn, 16) & ~TDES_COUNTER_MASK == int(other, 16) & ~TDES_COUNTER_MASK
    return ksn[:16] == other[:16]


class KsnGuard:
    """Each DUKPT transaction counter is accepted once per terminal: a captured message
    cannot be replayed under a new STAN. Counters may arrive out of order (pipelined
    terminals), so the guard remembers the last `window` counters it accepted, above a floor:
    the highest counter accepted before this process started (persisted in ksn_max)."""

    def __init__(self, *, window: int = 4096) -> None:
        self.window = window
        self._used: dict[str, OrderedDict[int, None]] = {}
        self._floor: dict[str, int] = {}

    def claim(self, tid: str, counter: int, *, floor: int) -> bool:
        used = self._used.setdefault(tid, OrderedDict())
        low = self._floor.setdefault(tid, floor)
        if counter <= low or counter in used:
            return False
        used[counter] = None
        if len(used) > self.window:  # forget the oldest, and refuse everything at or below it
            oldest, _ = used.popitem(last=False)
            self._floor[tid] = max(low, oldest)
        return True

    def release(self, tid: str, counter: int) -> None:
        """A claimed counter whose message stored nothing (91, 96): its repeat may use it."""
        used = self._used.get(tid)
        if used is not None:
            used.pop(counter, None)


def _ok(reply: HsmReply, command: str, *, allow: tuple[str, ...] = ("00",)) -> HsmReply:
    if reply.error not in allow:
        raise SecurityError(command, reply.error)
    return reply


class Security:
    """The switch's side of terminal security; every method is one or two HSM calls."""

    def __init__(self, hsm: HsmPool, *, zpk: str, pvk: str, pin_verify: str = "gq") -> None:
        """pin_verify: how a TDES-DUKPT PIN is verified (HsmConfig.pin_verify): "gq" with the
        request's MAC in one command, "g0-ec" after it in two."""
        self.hsm = hsm
        self.zpk = zpk  # switch's ZPK under LMK: PIN blocks are verified under it
        self.pvk = pvk  # PVK pair under LMK
        self.pin_verify = pin_verify
        self._gq_disabled = False

    @staticmethod
    async def switch_keys(hsm: HsmPool) -> tuple[str, str]:
        """Generate a ZPK and a PVK pair under the LMK (A0), for a new ledger."""
        zpk = _ok(await hsm.call("A0", b"0001U"), "A0").body.decode()[:33]
        pvk = _ok(await hsm.call("A0", b"0002U"), "A0").body.decode()[:33]
        return zpk, pvk

    async def verify_mac(self, keys: TerminalKeys, ksn: str, message: bytes, mac: str) -> bool:
        return await self.mac_verified(self.send_verify_mac(keys, ksn, message, mac))

    def send_verify_mac(self, keys: TerminalKeys, ksn: str, message: bytes, mac: str) -> Sent:
        """The request MAC's check, its command queued now (HsmPool.send): `mac_verified` gives
        the verdict. TAK: M8 (mode 0, binary, 16H, ISO 9797-1 alg 3, padding 1); TDES DUKPT:
        GW mode 11; AES DUKPT: Z2 mode 1."""
        if keys.profile == "mac":
            body = b"00131" + TAK_KEY_TYPE.encode() + keys.key.encode() + f"{len(message):04X}".encode() + message \
                + mac.encode()
            return self.hsm.send("M8", body)
        if keys.profile == "dukpt-tdes":
            body = (b"11" + keys.key.encode() + b"A05" + ksn.encode() + mac.encode()
                    + zero_padded(len(message), 4).encode() + message)
            return self.hsm.send("GW", body)
        body = (b"101" + keys.key.encode() + ksn.encode() + mac.encode() + zero_padded(len(message), 4).encode() + message)
        return self.hsm.send("Z2", body)

    async def mac_verified(self, sent: Sent) -> bool:
        """True: the MAC verified; False: it did not (01); SecurityError for another error,
        HsmUnavailable when no HSM answered."""
        return _ok(await self.hsm.reply(sent), sent.code, allow=("00", "01")).error == "00"

    async def response_mac(self, keys: TerminalKeys, ksn: str, message: bytes) -> str:
        if keys.profile == "mac":
            body = b"00131" + TAK_KEY_TYPE.encode() + keys.key.encode() + f"{len(message):04X}".encode() + message
            return _ok(await self.hsm.call("M6", body), "M6").body.decode()[:16]
        if keys.profile == "dukpt-tdes":
            body = b"42" + keys.key.encode() + b"A05" + ksn.encode() + zero_padded(len(message), 4).encode() + message
            return _ok(await self.hsm.call("GW", body), "GW").body.decode()[:16]
        body = b"411" + keys.key.encode() + ksn.encode() + zero_padded(len(message), 4).encode() + message
        return _ok(await self.hsm.call("Z2", body), "Z2").body.decode()[:16]

    async def verify_pin(self, keys: TerminalKeys, ksn: str, pin_block: str, pan: str, pvv: str) -> bool:
        """Translate the terminal's block to the switch ZPK (G0/Z0), then verify by PVV (EC)."""
        account = _account(pan)
        if keys.profile == "dukpt-tdes":
            body = (keys.key.encode() + self.zpk.encode() + b"A05" + ksn.encode() + pin_block.encode()
                    + b"0101" + account.encode())
            reply = _ok(await self.hsm.call("G0", body), "G0")
        else:
            body = (keys.key.encode() + self.zpk.encode() + ksn.encode() + pin_block.encode() + b"01"
                    + f"{len(pan):02d}".encode() + pan.encode())
            reply = _ok(await self.hsm.call("Z0", body), "Z0")
        zpk_block = reply.body.decode()[2:18]
        body = self.zpk.encode() + self.pvk.encode() + zpk_block.encode() + b"01" + account.encode() + PVKI.encode() \
            + pvv.encode()
        return _ok(await self.hsm.call("EC", body), "EC", allow=("00", "01")).error == "00"

    @property
    def combined_pin_check(self) -> bool:
        """A TDES-DUKPT PIN is verified with the request's MAC in one GQ (else GW, G0, EC)."""
        return self.pin_verify == "gq" and not self._gq_disabled

    def gq_disabled(self) -> None:
        """The HSM answered GQ "command disabled" (68): verify as with g0-ec from now on."""
        self._gq_disabled = True

    def send_verify_pin_and_mac(self, keys: TerminalKeys, ksn: str, pin_block: str, pan: str, pvv: str,
                                message: bytes, mac: str) -> Sent:
        """TDES DUKPT: the PIN block against the card's PVV and the request's X9.19 MAC in one
        GQ (mode 1), queued now (HsmPool.send). `pin_and_mac_verified` gives (the PIN's code,
        the MAC's code), each "00" or "01", or the PIN's error (20, 24: a block that does not
        decode) beside the MAC's verdict; SecurityError when the HSM could check neither (its
        one error code: keys, input, capacity)."""
        body = (b"111" + keys.key.encode() + self.pvk.encode() + b"A05" + ksn.encode() + pin_block.encode()
                + b"01" + _account(pan).encode() + PVKI.encode() + pvv.encode() + mac.encode()
                + zero_padded(len(message), 4).encode() + message)
        return self.hsm.send("GQ", body)

    async def pin_and_mac_verified(self, sent: Sent) -> tuple[str, str]:
        reply = await self.hsm.reply(sent)
        mac_code = reply.body[:2].decode("ascii", "replace")
        if mac_code not in ("00", "01"):
            raise SecurityError("GQ", reply.error)
        return reply.error, mac_code

    # ------------------------------------------------------------------ production-style key sets

    async def form_kif_zmk(self, components: list[str]) -> tuple[str, str]:
        """The key-injection facility's ZMK, formed in the HSM from custodians' clear
        components (Z4): (ZMK under the LMK, KCV)."""
        body = b"000U" + str(len(components)).encode() + "".join(components).encode()
        reply = _ok(await self.hsm.call("Z4", body), "Z4").body.decode()
        return reply[:33], reply[33:39]

    async def generate_bdk(self, profile: str) -> tuple[str, str]:
        """A new BDK generated inside the HSM (A0; AES with our '#A'): (under the LMK, KCV)."""
        body = b"0009U" + (b"#A" if profile == "dukpt-aes" else b"")
        reply = _ok(await self.hsm.call("A0", body), "A0").body.decode()
        return reply[:33], reply[33:39]

    async def export_initial_key(self, profile: str, bdk: str, ksn: str, kif_zmk: str) -> tuple[str, str]:
        """The terminal's initial key, derived in the HSM from the BDK and its initial KSN, and
        exported under the KIF's ZMK (Z6): (initial key under the ZMK, KCV)."""
        ident = ksn if profile == "dukpt-tdes" else ksn[:16]
        body = (b"T" if profile == "dukpt-tdes" else b"A") + bdk.encode() + ident.encode() + kif_zmk.encode() + b"X"
        reply = _ok(await self.hsm.call("Z6", body), "Z6").body.decode()
        return reply[:33], reply[33:39]

    async def pvv_for(self, pin: str, pan: str) -> str:
        """Card issuance: the PIN goes under the LMK (BA) and becomes a PVV (DG); only the PVV
        is stored."""
        account = _account(pan)
        under_lmk = _ok(await self.hsm.call("BA", pin.encode() + account.encode()), "BA").body.decode()[:16]
        reply = _ok(await self.hsm.call("DG", self.pvk.encode() + under_lmk.encode() + account.encode()
                                        + PVKI.encode()), "DG")
        return reply.body.decode()[:4]


def _account(pan: str) -> str:
    """The 12 rightmost PAN digits excluding the check digit."""
    return pan[:-1][-12:].rjust(12, "0")


__all__ = ["HSM_FAILURE_ERRORS", "KsnGuard", "ksn_counter", "ksn_parts", "same_device", "Security", "SecurityError", "HsmUnavailable", "TerminalKeys", "provision_test_keys", "PROFILES",
           "SECURED", "DUKPT"]
