"""`eum cert`: the certification run (docs/certification.md).

The reference terminal (terminal_sim/cert_driver.py) goes through the whole case list against
a switch in certification mode and passes every case; the same terminal made faulty on purpose
fails exactly the cases of its faults, each with its reason; the journal it leaves holds no
full PAN, PIN block, MAC or track data. One run uses real processes (`eum hsm`, `eum cert
serve`, `eum cert drive`, `eum cert report`) with the shipped configuration; the others run
the switch in-process with a copy of the configuration whose response timeout is 1 s and hold
2 s, so that each takes seconds.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import LAUNCH, provision, start_switch
from fault_harness import free_port, listening
from hsm_mock.config import HsmConfig as ServiceConfig
from hsm_mock.service import HsmServer
from switch.authorize.hsm_client import HsmConfig
from switch.cert.cli import _ledger_reader, _posting_lookup
from switch.cert.docgen import DOC, generated_block, render
from switch.cert.journal import journal_entry, journal_path, read_session
from switch.cert.matrix import CertConfigError, load_cert
from switch.cert.provision import CertSetupError, start_certification
from switch.cert.report import FAILED, NOT_APPLICABLE, NOT_RUN, PASSED, Report, evaluate
from switch.clock import FixedClock
from switch.configdir import config_dir
from terminal_sim.cert_driver import CertDriver, DriveResult, security_for
from terminal_sim.client import TerminalClient
from terminal_sim.security import SECURED_MTIS
from terminal_sim.terminal import Terminal
from switch_process import COMMAND_TIMEOUT_S, EUM
from waiting import wait_until

ROOT = Path(__file__).resolve().parents[1]
TID = "VEND0001"
PROFILE = "dukpt-tdes"
FOUR_FAULTS = frozenset({"repeat-new-stan", "bad-mac", "early-reversal", "completion-without-de90"})


# ---------------------------------------------------------------------------- harness

def _short_config(where: Path) -> Path:
    """The whole configuration copied, with cert/matrix.toml's response timeout 1 s and hold 2 s
    (a run then waits 1 s for the timeout case instead of 5)."""
    target = where / "config"
    shutil.copytree(config_dir(), target)
    matrix = target / "cert" / "matrix.toml"
    text = matrix.read_text()
    short = text.replace("hold_ms = 8_000", "hold_ms = 2_000").replace("response_timeout_ms = 5_000",
                                                                           "response_timeout_ms = 1_000")
    assert "hold_ms = 2_000" in short and "response_timeout_ms = 1_000" in short
    matrix.write_text(short)
    return target


@dataclass
class Run:
    data_dir: Path
    result: DriveResult
    pin_blocks: list[str]  # what went out in DE52 and as MACs, captured at the client for the scan
    macs: list[str]


def _spy(client: TerminalClient, pin_blocks: list[str], macs: list[str]) -> None:
    secure = client.secure

    def spying(fields, **kw):
        secured, payload = secure(fields, **kw)
        if secured.get("52"):
            pin_blocks.append(secured["52"])
        if secured.get("t") in SECURED_MTIS:
            macs.append(payload[-8:].hex().upper())
        return secured, payload

    client.secure = spying


async def _certify(data_dir: Path, config, *, faults: frozenset[str] = frozenset(), profile: str = PROFILE) -> Run:
    """hsm_mock and the switch in-process, certification mode on, the driver through the list."""
    hsm = HsmServer(ServiceConfig(port=0))
    await hsm.start()
    pin_blocks: list[str] = []
    macs: list[str] = []
    try:
        async with start_switch(data_dir, clock=FixedClock(LAUNCH),
                                hsm=HsmConfig(endpoints=(("127.0.0.1", hsm.port),))) as env:
            (provisioned,) = await start_certification(env.core, env.server, config, {TID: profile})
            client = TerminalClient("127.0.0.1", env.port, env.dialect, response_timeout_ms=60_000,
                                    security=security_for(profile, provisioned["ksn"], {}))
            _spy(client, pin_blocks, macs)
            await client.connect()
            try:
                driver = CertDriver(client, Terminal(TID, config.merchant.mid), config, profile=profile, faults=faults)
                result = await driver.run()
            finally:
                await client.close()
    finally:
        await hsm.stop()
    return Run(data_dir, result, pin_blocks, macs)


def _report(run: Run, config) -> Report:
    marker, entries = read_session(journal_path(run.data_dir, TID))
    reader = _ledger_reader(run.data_dir)
    try:
        return evaluate(config, marker, entries, terminal=TID, ledger=_posting_lookup(reader))
    finally:
        reader.close()


def _outcomes(report: Report) -> dict[str, tuple[str, tuple[str, ...]]]:
    return {r.id: (r.status, r.reasons) for r in report.results}


@pytest.fixture(scope="module")
def short_config(tmp_path_factory) -> Path:
    return _short_config(tmp_path_factory.mktemp("config"))


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory, short_config) -> Run:
    return asyncio.run(_certify(tmp_path_factory.mktemp("faulty") / "var", load_cert(short_config / "cert"),
                                faults=FOUR_FAULTS))


def _kill(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=COMMAND_TIMEOUT_S)
        raise AssertionError(f"{proc.args[:3]} did not stop within {COMMAND_TIMEOUT_S} s of SIGTERM") from None


# ---------------------------------------------------------------------------- the reference terminal

def test_reference_terminal_passes_every_case_through_the_real_commands(tmp_path):
    """eum hsm, eum cert serve, eum cert drive and eum cert report as an operator and a vendor
    run them, with the shipped configuration (5 s timeout, 8 s hold)."""
    config = load_cert()
    hsm_port, switch_port = free_port(), free_port()
    with (tmp_path / "hsm.err").open("w") as hsm_err, (tmp_path / "serve.err").open("w") as serve_err:
        hsm = subprocess.Popen([*EUM, "hsm", "--listen", f"127.0.0.1:{hsm_port}"], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=hsm_err, stdin=subprocess.DEVNULL)
        serve = None
        try:
            wait_until(lambda: listening(hsm_port, hsm), what=f"eum hsm to listen on {hsm_port}")
            serve = subprocess.Popen([*EUM, "cert", "serve", "--data-dir", "var", "--listen", f"127.0.0.1:{switch_port}",
                                      "--hsm", f"127.0.0.1:{hsm_port}", "--terminal", TID],
                                     cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=serve_err, stdin=subprocess.DEVNULL)
            wait_until(lambda: listening(switch_port, serve), what=f"eum cert serve to listen on {switch_port}")
            (terminal,) = json.loads((tmp_path / "var" / "cert" / "terminals.json").read_text())
            assert terminal == {"tid": TID, "mid": "CERTSHOP01", "security": PROFILE, "ksn": "FFFF9876540000200000"}
            drive = subprocess.run([*EUM, "cert", "drive", "--switch", f"127.0.0.1:{switch_port}", "--terminal", TID,
                                    "--ksn", terminal["ksn"], "--state-dir", "terminals", "--json"],
                                   cwd=tmp_path, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
            assert drive.returncode == 0, drive.stderr
            sent = json.loads(drive.stdout)["sent"]
            assert {s["response_mac_ok"] for s in sent} == {True, None}  # every MAC'd answer verified at the terminal
            assert [(s["case"], s["mti"], s["rc"]) for s in sent][5:7] == [
                ("reversal-after-timeout", "0200", None), ("reversal-after-timeout", "0400", "00")]
            report = subprocess.run([*EUM, "cert", "report", "--data-dir", "var", "--terminal", TID, "--out", "r.md"],
                                    cwd=tmp_path, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
            html = subprocess.run([*EUM, "cert", "report", "--data-dir", "var", "--terminal", TID, "--out", "r.html"],
                                  cwd=tmp_path, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
            missing = subprocess.run([*EUM, "cert", "report", "--data-dir", "var", "--terminal", "NOBODY00"],
                                     cwd=tmp_path, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        finally:
            if serve is not None:
                assert _kill(serve) == 0, (tmp_path / "serve.err").read_text()[-2000:]
            _kill(hsm)
    assert report.returncode == 0, report.stdout + report.stderr
    lines = report.stdout.splitlines()
    assert [line.split()[:2] for line in lines[2:-1]] == [[case.id, PASSED] for case in config.cases]
    assert lines[-1] == "PASSED: 29 passed, 0 failed, 0 not run, 0 n/a"
    markdown = (tmp_path / "r.md").read_text().splitlines()
    assert markdown[0] == f"# Certification report: terminal {TID}"
    assert markdown[6:] == [f"| `{case.id}` | {case.title} | passed |  |" for case in config.cases]
    assert html.returncode == 0
    page = (tmp_path / "r.html").read_text()
    assert re.findall(r'<tr class="passed"><td><code>([a-z0-9-]+)</code>', page) == [c.id for c in config.cases]
    assert missing.returncode == 2 and "no journal for terminal NOBODY00" in missing.stderr


@pytest.mark.parametrize("profile", ["none", "mac", "dukpt-aes"])
def test_reference_terminal_passes_under_the_other_profiles(tmp_path, short_config, profile):
    """Cases for another profile are n/a (PINs need DUKPT, MACs a secured profile); the rest pass."""
    config = load_cert(short_config / "cert")
    run = asyncio.run(_certify(tmp_path / "var", config, profile=profile))
    needs = {"none": {"pin-right", "pin-wrong", "pin-blocked", "mac", "mac-bad"},
             "mac": {"pin-right", "pin-wrong", "pin-blocked"}, "dukpt-aes": set()}[profile]
    report = _report(run, config)
    assert _outcomes(report) == {
        case.id: (NOT_APPLICABLE, (f"for {', '.join(case.profiles)} terminals; this one is {profile}",))
        if case.id in needs else (PASSED, ()) for case in config.cases}
    assert report.passed is True and run.result.skipped == [c.id for c in config.cases if c.id in needs]


async def test_a_data_dir_holding_other_cards_is_refused(tmp_path):
    async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH)) as env:
        await provision(env)  # conftest's population: two cards issued before the matrix's
        with pytest.raises(CertSetupError) as refused:
            await start_certification(env.core, env.server, load_cert(), {TID: "none"})
        assert str(refused.value) == (
            "the next incheon card would be 941000******0039, not the matrix's 941000******0013 (approve): "
            "eum cert serve needs a data dir of its own (empty, or made by eum cert serve)")
        with pytest.raises(CertSetupError) as other_profile:
            await start_certification(env.core, env.server, load_cert(), {"T0000001": "none"})
        assert str(other_profile.value) == ("terminal T0000001 exists as none at NAMDONG01, not none at CERTSHOP01: "
                                            "certify it under another TID or in a data dir of its own")
        assert env.server.processor.cert is None  # nothing turned on


# ---------------------------------------------------------------------------- faulty terminals

def test_faulty_terminal_fails_each_fault_on_its_case_with_its_reason(faulty_run, short_config, tmp_path):
    config = load_cert(short_config / "cert")
    outcomes = _outcomes(_report(faulty_run, config))
    _, entries = read_session(journal_path(faulty_run.data_dir, TID))
    held = next(e for e in entries if e["held_ms"])
    reversal = next(e for e in entries if e["request"]["t"] == "0400")
    early_s = reversal["t"] - held["t"]
    assert 0.45 <= early_s < 1.0  # sent 0.5 s after its request, before the 1 s timeout
    expected_failures = {
        "reversal-after-timeout": (FAILED, (f"reversal sent {early_s:.1f} s after the request, before the 1 s timeout",)),
        "repeat": (FAILED, ("DE11 of the 0201 differs from its 0200", "answered 63, expected 00: KSN counter used before")),
        "mac": (FAILED, ("MAC did not verify", "answered 63, expected 00: MAC does not verify")),
        "completion": (FAILED, ("DE90 missing", "answered 30, expected 00: DE90 missing")),
    }
    assert outcomes == {case.id: expected_failures.get(case.id, (PASSED, ())) for case in config.cases}
    # eum cert report on the same journal and configuration: exit 1, the reasons in the HTML
    out = tmp_path / "faulty.html"
    proc = subprocess.run([*EUM, "cert", "report", "--data-dir", str(faulty_run.data_dir), "--terminal", TID,
                           "--out", str(out)], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                          env={**os.environ, "EUM_CONFIG_DIR": str(short_config)})
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines()[-1] == "FAILED: 25 passed, 4 failed, 0 not run, 0 n/a"
    assert ('<tr class="failed"><td><code>repeat</code></td><td>Repeat (0201)</td><td>failed</td>'
            "<td>DE11 of the 0201 differs from its 0200<br>answered 63, expected 00: KSN counter used before</td></tr>"
            ) in out.read_text()


def test_a_terminal_without_de12_fails_every_case_that_requires_it(tmp_path, short_config):
    config = load_cert(short_config / "cert")
    run = asyncio.run(_certify(tmp_path / "var", config, faults=frozenset({"no-de12"})))
    outcomes = _outcomes(_report(run, config))
    needs_de12 = {case.id for case in config.cases if "12" in case.fields}
    assert needs_de12 == {case.id for case in config.cases} - {"sign-on", "echo", "advice-0420"}
    assert outcomes == {case.id: (FAILED, ("DE12 missing",)) if case.id in needs_de12 else (PASSED, ())
                        for case in config.cases}


# ---------------------------------------------------------------------------- the journal

def test_journal_holds_no_full_pan_pin_block_mac_or_track_data(faulty_run, short_config):
    config = load_cert(short_config / "cert")
    cert = faulty_run.data_dir / "cert"
    assert sorted(p.name for p in cert.iterdir()) == [f"{TID}.jsonl", "terminals.json"]  # not CERTPROV's traffic
    text = (cert / f"{TID}.jsonl").read_text()
    assert len(faulty_run.pin_blocks) == 4 and len(faulty_run.macs) == 31  # what the scan looks for was sent
    for secret in [card.pan for card in config.cards.values()] + faulty_run.pin_blocks + faulty_run.macs:
        assert secret not in text and secret.lower() not in text
    marker, entries = read_session(cert / f"{TID}.jsonl")
    # no digit run of a PAN's length in any field but DE54 (balances) and DE90 (original data), digits by design
    values = [v for e in entries for f in (e["request"], e["response"] or {}) for k, v in f.items() if k not in ("54", "90")]
    assert [v for v in values if re.search(r"(?<!\d)\d{13,19}(?!\d)", v)] == []
    assert marker["profile"] == PROFILE and len(entries) == 35
    for entry in entries:
        for fields in (entry["request"], entry["response"] or {}):
            assert set(fields) & {"14", "35", "45", "52", "53", "64", "128"} == set()
            assert "2" not in fields or re.fullmatch(r"\d{6}\*{6}\d{4}", fields["2"])
    pin_entries = [e for e in entries if e["present"]["52"]]
    assert [(e["request"]["4"], e["response"]["39"]) for e in pin_entries] == [
        ("000000001000", "00"), ("000000002000", "55"), ("000000003000", "55"), ("000000003000", "75")]


def test_journal_entry_masks_the_pan_and_keeps_only_the_presence_of_secrets():
    fields = {"t": "0200", "p": "bitmap", "2": "9410000000000013", "4": "000000010000", "11": "000001",
              "14": "4912", "35": "9410000000000013=49121011234567890", "41": TID, "52": "0123456789ABCDEF",
              "53": "FFFF9876540000200001", "64": "FEDCBA9876543210", "wire": {"7": "x"}}
    line = {"peer": "127.0.0.1:5000", "note": "wrong PIN (1 of 3)", "rc": "55"}
    entry = journal_entry(fields, {"t": "0210", "2": "9410000000000013", "39": "55"}, line, arrived_s=1_700_000_000.25,
                          latency_ms=1.5, held_ms=0, profile="dukpt-tdes")
    assert entry == {
        "at": "2023-11-14T22:13:20.250Z", "t": 1_700_000_000.25, "latency_ms": 1.5, "held_ms": 0,
        "peer": "127.0.0.1:5000", "pan": "941000******0013",
        "request": {"t": "0200", "2": "941000******0013", "4": "000000010000", "11": "000001", "41": TID},
        "response": {"t": "0210", "2": "941000******0013", "39": "55"},
        "present": {"14": True, "35": True, "45": False, "52": True, "53": True, "64": True, "128": False},
        "mac_verified": True, "note": "wrong PIN (1 of 3)"}
    track_only = {k: v for k, v in fields.items() if k != "2"}
    assert journal_entry(track_only, None, {"error": "decode"}, arrived_s=0.0, latency_ms=0.0, held_ms=0,
                         profile="none")["pan"] == "941000******0013"


# ---------------------------------------------------------------------------- report, config, doc

def test_report_of_an_empty_session_says_not_run_and_na():
    config = load_cert()
    report = evaluate(config, {"session": "2019-07-20T03:00:00.000Z", "profile": "none"}, [], terminal=TID)
    outcomes = _outcomes(report)
    assert outcomes["sign-on"] == (NOT_RUN, ("no 0800 with DE70 001 in the journal",))
    assert outcomes["balance"] == (NOT_RUN, ("no 0200 with the approve card for no amount in the journal",))
    assert outcomes["decline-61"] == (NOT_RUN, ("no 0200 with the limit card for 2,000,000 in the journal",))
    assert outcomes["pin-right"] == (NOT_APPLICABLE, ("for dukpt-tdes, dukpt-aes terminals; this one is none",))
    assert outcomes["mac-bad"] == (NOT_APPLICABLE, ("for mac, dukpt-tdes, dukpt-aes terminals; this one is none",))
    assert report.counts() == {PASSED: 0, FAILED: 0, NOT_RUN: 24, NOT_APPLICABLE: 5}
    assert report.passed is False


def test_case_list_refuses_two_cases_the_report_could_not_tell_apart(tmp_path):
    where = shutil.copytree(config_dir() / "cert", tmp_path / "cert")
    cases = where / "cases.toml"
    cases.write_text(cases.read_text().replace("amount = 9_400", "amount = 10_000"))
    with pytest.raises(CertConfigError) as refused:
        load_cert(where)
    assert str(refused.value) == ("config/cert: two cases send the same message (MTI, processing code, card, amount): "
                                  "the report could not tell them apart")


def test_certification_doc_lists_the_matrix_cases_and_reasons_of_the_config():
    assert generated_block(DOC.read_text(encoding="utf-8")) == render(load_cert()), \
        "docs/certification.md is stale: python -m switch.cert.docgen"


def test_the_switch_imports_nothing_of_terminal_sim():
    for path in sorted((ROOT / "switch").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("terminal_sim", "hsm_mock") for n in names), path
