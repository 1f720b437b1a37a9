"""`eum cert drive`: terminal_sim as the reference terminal of a certification run.

It reads the matrix and the case list the switch provisions from (config/cert/*.toml,
switch/cert/matrix.py) and sends every case that applies to its security profile, in order,
on one connection, as docs/certification.md tells a vendor to: the quoted RRNs and original
data elements taken from the answers it got, the timeout card's purchase reversed when its
answer does not come within the response timeout. Answers are matched to requests by DE11
and MTI, so the held answer that arrives late is set aside, as a terminal must.

`--fault NAME` makes it deliberately wrong, to show that `eum cert report` names each fault
on its case (tests/test_cert.py):
    repeat-new-stan           the repeat case's 0201 carries a new STAN
    no-de12                   no financial message carries DE12 (local time)
    bad-mac                   the `mac` case goes out with a MAC that does not verify
    early-reversal            the timeout card's purchase is reversed 0.5 s after it was sent
    completion-without-de90   the completion leaves out DE90

The terminal's DUKPT counter and STAN are kept in `<state-dir>/<TID>.cert.json`, written
before each message goes out, so a KSN is never used twice across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from switch.cert.matrix import Case, CertConfig, load_cert
from switch.wire.codec import Dialect, load_dialect
from switch.wire.framing import frame
from switch.wire.messages import RESPONSE_MTI
from switch.wire.transport import parse_hostport

from .client import DEFAULT_TPDU, TerminalClient
from .security import DUKPT_PROFILES, PROFILE_MAC, PROFILE_NONE, PROFILES, SECURED_MTIS, TakSecurity, TerminalSecurity, \
    mac_field
from .terminal import Terminal

FAULTS = ("repeat-new-stan", "no-de12", "bad-mac", "early-reversal", "completion-without-de90")
EARLY_REVERSAL_S = 0.5
WRONG_PINS = ("0000", "1111")
FINANCIAL_MTIS = ("0100", "0120", "0200", "0220")


@dataclass
class Sent:
    """One message the driver sent and what came back (no PAN, PIN or MAC)."""

    case: str
    mti: str
    stan: str
    rc: str | None  # None: no answer within the response timeout
    response_mac_ok: bool | None = None


@dataclass
class DriveResult:
    sent: list[Sent] = field(default_factory=list)
    late: list[dict[str, str]] = field(default_factory=list)  # answers that came after their timeout (MTI, DE11, DE39)
    skipped: list[str] = field(default_factory=list)  # cases for another security profile


class CertDriver:
    def __init__(self, client: TerminalClient, terminal: Terminal, config: CertConfig, *, profile: str,
                 faults: frozenset[str] = frozenset(), save: Callable[[], None] = lambda: None) -> None:
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}: choose among {', '.join(FAULTS)}")
        self.client = client
        self.terminal = terminal
        self.config = config
        self.profile = profile
        self.faults = faults
        self.save = save
        self.timeout_s = config.timeout.response_timeout_ms / 1000
        self.requests: dict[str, dict[str, str]] = {}  # case id → the fields it sent (before security)
        self.answers: dict[str, dict[str, str]] = {}  # case id → its answer
        self.result = DriveResult()

    async def run(self) -> DriveResult:
        for case in self.config.cases:
            if not case.applies_to(self.profile):
                self.result.skipped.append(case.id)
                continue
            await self._case(case)
        return self.result

    # ------------------------------------------------------------------ cases

    async def _case(self, case: Case) -> None:
        rules = set(case.rules)
        if case.mti == "0800":
            await self._send(case, self.terminal.network(case.network_code))
        elif "repeat" in rules:
            await self._repeat(case)
        elif "reversal-after-timeout" in rules:
            await self._timeout(case)
        elif "reverses-purchase" in rules:
            purchase = self._build(case, mti="0200")
            await self._send(case, purchase)
            await self._send(case, self.terminal.reversal(purchase, advice=case.mti == "0420"))
        elif "after-sign-off" in rules:
            await self._send(case, self.terminal.sign_off())
            await self._send(case, self._build(case))
            await self._send(case, self.terminal.sign_on())
        else:
            for _ in range(case.sends):
                await self._send(case, self._build(case), pin=self._pin(case),
                                 corrupt_mac="bad-mac" in rules or ("bad-mac" in self.faults and case.id == "mac"))

    async def _repeat(self, case: Case) -> None:
        original = self._build(case, mti=case.mti[:3] + "0")
        secured = await self._send(case, original)
        repeat = Terminal.repeat(secured)  # same DE7, DE11, content; DUKPT: the original's KSN
        if "repeat-new-stan" in self.faults:
            self.terminal.stan = self.terminal.stan % 999_999 + 1  # a fresh STAN, as a faulty terminal stamps one
            repeat["11"] = f"{self.terminal.stan:06d}"
        await self._send(case, repeat)

    async def _timeout(self, case: Case) -> None:
        original = self._build(case)
        wait_s = EARLY_REVERSAL_S if "early-reversal" in self.faults else self.timeout_s
        answer = await self._send(case, original, wait_s=wait_s, want_answer=True)
        if answer is None:  # no answer in time: the terminal cannot know whether it landed, so it reverses
            await self._send(case, self.terminal.reversal(original))

    def _build(self, case: Case, *, mti: str | None = None) -> dict[str, str]:
        card = self.config.card(case.card)
        if case.amount is None:
            fields = self.terminal.balance(card.pan, expiry=card.expiry, entry_mode=case.entry_mode)
        else:
            fields = self.terminal.purchase(card.pan, case.amount, expiry=card.expiry, entry_mode=case.entry_mode)
        fields["t"] = mti or case.mti
        fields["3"] = case.processing_code
        if case.rrn:
            fields["37"] = case.rrn
        rules = set(case.rules)
        if rules & {"quotes-purchase", "incremental", "completion"}:
            fields["37"] = self.answers.get(case.of, {}).get("37", "")
        if "completion" in rules:
            quoted = self.requests.get(case.of, {})
            fields["90"] = quoted.get("t", "0100") + quoted.get("11", "") + quoted.get("7", "") + "0" * 22
            if "completion-without-de90" in self.faults:
                del fields["90"]
        if "duplicate" in rules:
            fields["11"], fields["7"] = self.requests[case.of]["11"], self.requests[case.of]["7"]
        for no in case.omit:
            fields.pop(no, None)
        if "no-de12" in self.faults and fields["t"] in FINANCIAL_MTIS:
            fields.pop("12", None)
        return fields

    def _pin(self, case: Case) -> str | None:
        if case.pin is None:
            return None
        pin = self.config.card(case.card).pin
        return pin if case.pin == "right" else next(p for p in WRONG_PINS if p != pin)

    # ------------------------------------------------------------------ the wire

    async def _send(self, case: Case, fields: dict[str, str], *, pin: str | None = None, corrupt_mac: bool = False,
                    wait_s: float | None = None, want_answer: bool = False) -> Any:
        """Send one message; returns its secured fields (or, with want_answer, its answer)."""
        pan = fields.get("2")
        secured, payload = self.client.secure(fields, pin=pin, pan=pan if pin else None)
        if corrupt_mac:
            payload = payload[:-1] + bytes([payload[-1] ^ 0x01])  # the MAC's last byte
        self.save()  # the counter and STAN are on disk before the message is on the wire
        framing = self.client.dialect.framing
        await self.client.send_raw(frame(framing, payload, tpdu=DEFAULT_TPDU if framing.tpdu else b""))
        answer = await self._answer(secured, self.timeout_s if wait_s is None else wait_s)
        mac_ok = None
        if answer is not None and self.client.security is not None and secured.get("t") in SECURED_MTIS \
                and mac_field(answer) in answer:
            mac_ok = self.client.security.verify_response(self.client.last_response_payload, ksn=secured.get("53"))
        self.result.sent.append(Sent(case.id, secured["t"], secured.get("11", ""),
                                     None if answer is None else answer.get("39"), mac_ok))
        if secured["t"] not in ("0800", "0400", "0420") and case.id not in self.requests:
            self.requests[case.id] = fields
            if answer is not None:
                self.answers[case.id] = answer
        return answer if want_answer else secured

    async def _answer(self, secured: dict[str, str], wait_s: float) -> dict[str, str] | None:
        """The answer with this message's DE11 and response MTI; others (a held answer arriving
        after its timeout) are set aside. None: nothing within wait_s, or the connection closed."""
        expected = (RESPONSE_MTI.get(secured["t"]), secured.get("11"))

        async def matching() -> dict[str, str] | None:
            while True:
                answer = await self.client.receive()
                if answer is None or (answer.get("t"), answer.get("11")) == expected:
                    return answer
                self.result.late.append({k: answer.get(k, "") for k in ("t", "11", "39")})

        try:
            return await asyncio.wait_for(matching(), wait_s)
        except asyncio.TimeoutError:
            return None


def security_for(profile: str, ksn: str | None, state: dict[str, Any]) -> TerminalSecurity | TakSecurity | None:
    """The terminal's security: from its state file when it has one (the counter goes on),
    else from the initial KSN `eum cert serve` printed (test keys)."""
    if profile == PROFILE_NONE:
        return None
    if profile == PROFILE_MAC:
        return TakSecurity.for_test_keys()
    saved = state.get("security", {})
    if saved.get("profile") == profile and (not ksn or saved.get("initial_ksn") == ksn.upper()):
        return TerminalSecurity.from_state(saved)
    if not ksn:
        raise ValueError(f"a {profile} terminal needs --ksn: the initial KSN eum cert serve printed "
                         "(<data-dir>/cert/terminals.json)")
    return TerminalSecurity.for_test_keys(profile, ksn)


async def drive(host: str, port: int, tid: str, *, config: CertConfig, dialect: Dialect, profile: str,
                ksn: str | None = None, faults: frozenset[str] = frozenset(), state_path: Path | None = None,
                ) -> DriveResult:
    """Run the case list once against a switch in certification mode."""
    state = json.loads(state_path.read_text()) if state_path is not None and state_path.exists() else {}
    security = security_for(profile, ksn, state)
    terminal = Terminal(tid, config.merchant.mid, stan=int(state.get("stan", 0)))

    def save() -> None:
        if state_path is None:
            return
        state_path.parent.mkdir(parents=True, exist_ok=True)
        record: dict[str, Any] = {"stan": terminal.stan}
        if isinstance(security, TerminalSecurity):
            record["security"] = security.to_state()
        state_path.write_text(json.dumps(record))

    # the driver times each answer itself (CertDriver._answer): the client's own wait is only a backstop
    client = TerminalClient(host, port, dialect, response_timeout_ms=600_000, security=security)
    await client.connect()
    try:
        return await CertDriver(client, terminal, config, profile=profile, faults=faults, save=save).run()
    finally:
        save()
        await client.close()


# ---------------------------------------------------------------------------- command line

def register(sub: Any) -> None:
    """`eum cert drive` (entry point `eum.commands`, pyproject.toml), under the switch's `eum cert`.
    A switch without `eum cert` (an older tree run against this install's entry points, as
    benchmarks/ab.py does) simply gets no `drive`."""
    if "cert" not in getattr(sub, "choices", {}):
        return
    from switch.cert.cli import cert_commands

    dp = cert_commands(sub).add_parser("drive", help="terminal_sim through the whole case list (the reference "
                                                      "terminal); --fault makes it deliberately wrong")
    dp.add_argument("--switch", default="127.0.0.1:8583", help="HOST:PORT of eum cert serve")
    dp.add_argument("--terminal", required=True, metavar="TID", help="a TID eum cert serve certifies")
    dp.add_argument("--security", default="dukpt-tdes", choices=PROFILES,
                    help="the terminal's profile, as eum cert serve --security (default %(default)s)")
    dp.add_argument("--ksn", help="DUKPT: the initial KSN from <data-dir>/cert/terminals.json (first run only)")
    dp.add_argument("--state-dir", default="terminals",
                    help="keeps <TID>.cert.json: STAN and DUKPT counter, never a PAN (default terminals, relative "
                         "to the current directory)")
    dp.add_argument("--fault", action="append", default=[], choices=FAULTS, help="be wrong on purpose (repeatable)")
    dp.add_argument("--dialect", default="default")
    dp.add_argument("--json", action="store_true", help="print what was sent and answered as JSON")
    dp.set_defaults(func=run_drive)


def run_drive(args: argparse.Namespace) -> int:
    from switch.wire.transport import run

    host, port = parse_hostport(args.switch)
    if args.security in DUKPT_PROFILES and not args.ksn and \
            not (Path(args.state_dir) / f"{args.terminal}.cert.json").exists():
        print("eum cert drive: a DUKPT terminal needs --ksn the first time (<data-dir>/cert/terminals.json)",
              file=sys.stderr)
        return 2
    try:
        result = run(drive(host, port, args.terminal, config=load_cert(), dialect=load_dialect(args.dialect),
                           profile=args.security, ksn=args.ksn, faults=frozenset(args.fault),
                           state_path=Path(args.state_dir) / f"{args.terminal}.cert.json"))
    except OSError as exc:
        print(f"eum cert drive: cannot reach the switch at {args.switch}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        for sent in result.sent:
            print(f"{sent.case:24} {sent.mti} {sent.stan} -> {sent.rc or 'no answer'}")
        print(f"sent {len(result.sent)} messages; {len(result.late)} late answers set aside; "
              f"{len(result.skipped)} cases for other profiles skipped. Now: eum cert report --terminal {args.terminal}")
    return 0
