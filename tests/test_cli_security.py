"""Issue 3's 'done means', as separate processes: `eum hsm`, `eum switch --hsm`, `eum admin`
and `eum terminal --pin`. A DUKPT terminal's PIN purchase is approved only with the right
PIN and a valid MAC. Every process runs under a timeout and is stopped by its own PID."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from switch.ledger.audit import verify
from test_cli import EUM, admin_json, eum, free_port, wait_listening


@pytest.fixture
def processes(tmp_path):
    started: list[subprocess.Popen] = []

    def start(*args: str, port: int) -> subprocess.Popen:
        out = (tmp_path / f"proc-{len(started)}.out").open("w")
        proc = subprocess.Popen([*EUM, *args], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
        started.append(proc)
        wait_listening(port, proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@pytest.mark.parametrize("profile", ["dukpt-tdes", "dukpt-aes"])
def test_pin_purchase_through_hsm_and_switch_processes(tmp_path: Path, processes, profile):
    data = tmp_path / "var"
    hsm_port, switch_port = free_port(), free_port()
    hsm = processes("hsm", "--listen", f"127.0.0.1:{hsm_port}", "--log-dir", str(tmp_path / "hsm"), port=hsm_port)
    admin_json(data, "merchant", "add", "--mid", "NAMDONG01", "--name", "Namdong Cafe", "--district", "namdong",
               "--annual-sales", "250000000", cwd=tmp_path)
    term = admin_json(data, "terminal", "add", "--tid", "T0000007", "--mid", "NAMDONG01", "--security", profile,
                      "--keys", "test", cwd=tmp_path)
    card = admin_json(data, "--hsm", f"127.0.0.1:{hsm_port}", "card", "issue", "--program", "namdong",
                      "--pin", "1234", cwd=tmp_path)
    eum("admin", "--data-dir", str(data), "card", "charge", "--pan", card["pan"], "--amount", "50000", cwd=tmp_path)
    switch = processes("switch", "--data-dir", str(data), "--listen", f"127.0.0.1:{switch_port}",
                       "--clock-start", "2019-07-20T12:00:00+09:00", "--hsm", f"127.0.0.1:{hsm_port}",
                       port=switch_port)

    def buy(pin: str, *extra: str, rc: int) -> dict:
        proc = eum("terminal", "purchase", "--switch", f"127.0.0.1:{switch_port}", "--tid", "T0000007",
                   "--mid", "NAMDONG01", "--pan", card["pan"], "--amount", "20000", "--pin", pin,
                   "--state-dir", str(tmp_path / "terminals"), "--json", *extra, cwd=tmp_path, check_rc=rc)
        answer = json.loads(proc.stdout)
        # every field but the response MAC: 16 hex digits that change with the answer's time hold
        # any 4-digit PIN now and then (≈ 1 answer in 5,000), which is chance, not a leak
        shown = json.dumps({k: v for k, v in answer.items() if k != "64"})
        assert answer["64"] and pin not in shown and pin not in proc.stderr
        return answer

    first = buy("1234", "--security", profile, "--ksn", term["ksn"], rc=0)
    assert (first["39"], first["response_mac"]) == ("00", "ok")
    assert first["54"] == "0002410C000000030000" + "0091410C000000001500"
    wrong = buy("4321", rc=1)  # the state file remembers the profile and the KSN counter
    assert (wrong["39"], wrong["response_mac"]) == ("55", "ok")
    state = json.loads((tmp_path / "terminals" / "T0000007.json").read_text())
    assert state["security"]["ksn"].endswith("2" if profile == "dukpt-tdes" else "00000002")

    for proc in (switch, hsm):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    assert verify(data / "ledger.sqlite3").ok
    logs = (data / "logs" / "switch.jsonl").read_text() + (tmp_path / "hsm" / "hsm-audit.jsonl").read_text()
    assert card["pan"] not in logs
    assert '"rc": "55"' in logs and '"rc": "00"' in logs


def test_generated_keys_from_kif_ceremony_to_pin_purchase_as_processes(tmp_path: Path, processes):
    """Custodians form the KIF ZMK in the HSM, the HSM generates the group's BDK and exports
    the terminal's initial key under that ZMK, the KIF (terminal_sim) injects it: the BDK
    never appears outside the HSM, and the PIN purchase is approved."""
    data = tmp_path / "var"
    hsm_port, switch_port = free_port(), free_port()
    hsm = processes("hsm", "--listen", f"127.0.0.1:{hsm_port}", "--log-dir", str(tmp_path / "hsm"), port=hsm_port)
    hsm_arg = ["--hsm", f"127.0.0.1:{hsm_port}"]
    components = ["0123456789ABCDEFFEDCBA9876543210", "0101010101010101" * 2]
    kif = admin_json(data, *hsm_arg, "kif-zmk", "--component", components[0], "--component", components[1],
                     cwd=tmp_path)
    assert kif == {"kif_zmk_kcv": "08D7B4"}
    admin_json(data, "merchant", "add", "--mid", "NAMDONG01", "--name", "Namdong Cafe", "--district", "namdong",
               "--annual-sales", "250000000", cwd=tmp_path)
    term = admin_json(data, *hsm_arg, "terminal", "add", "--tid", "T0000005", "--mid", "NAMDONG01",
                      "--security", "dukpt-tdes", "--keys", "generated", "--group", "namdong", cwd=tmp_path)
    card = admin_json(data, *hsm_arg, "card", "issue", "--program", "namdong", "--pin", "1234", cwd=tmp_path)
    eum("admin", "--data-dir", str(data), "card", "charge", "--pan", card["pan"], "--amount", "30000", cwd=tmp_path)
    switch = processes("switch", "--data-dir", str(data), "--listen", f"127.0.0.1:{switch_port}", *hsm_arg,
                       "--clock-start", "2019-07-20T12:00:00+09:00", port=switch_port)
    proc = eum("terminal", "purchase", "--switch", f"127.0.0.1:{switch_port}", "--tid", "T0000005",
               "--mid", "NAMDONG01", "--pan", card["pan"], "--amount", "10000", "--pin", "1234",
               "--security", "dukpt-tdes", "--ksn", term["ksn"], "--keys", "generated",
               "--initial-key", term["initial_key_under_kif_zmk"], "--initial-key-kcv", term["initial_key_kcv"],
               "--zmk-component", components[0], "--zmk-component", components[1],
               "--state-dir", str(tmp_path / "terminals"), "--json", cwd=tmp_path)
    answer = json.loads(proc.stdout)
    assert (answer["39"], answer["response_mac"]) == ("00", "ok")
    state = (tmp_path / "terminals" / "T0000005.json").read_text()
    for proc in (switch, hsm):  # logs are flushed on a graceful stop
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    logs = (data / "logs" / "switch.jsonl").read_text() + (tmp_path / "hsm" / "hsm-audit.jsonl").read_text()
    for text in (state, logs):  # clear components are never stored or logged
        assert components[0] not in text and components[1] not in text
    assert '"kcv"' in logs  # the HSM audits key check values instead


def test_seed_provisions_secured_terminals_pin_cards_and_a_population_file(tmp_path: Path, processes):
    data = tmp_path / "var"
    hsm_port, switch_port = free_port(), free_port()
    processes("hsm", "--listen", f"127.0.0.1:{hsm_port}", port=hsm_port)
    result = admin_json(data, "--hsm", f"127.0.0.1:{hsm_port}", "seed", "--cards", "300", "--merchants", "4",
                        "--security", "dukpt-aes", "--pin-cards", "20", "--pin", "2580",
                        "--export", str(tmp_path / "population.json"), cwd=tmp_path)
    assert (result["cards"], result["terminals"], result["pin_cards"], result["security"]) == (300, 4, 20, "dukpt-aes")
    population = json.loads((tmp_path / "population.json").read_text())
    assert [t["tid"] for t in population["terminals"]] == ["T0000001", "T0000002", "T0000003", "T0000004"]
    assert [t["ksn"] for t in population["terminals"]][:2] == ["123456780000000100000000", "123456780000000200000000"]
    assert len(population["cards"]) == 300 and [c["pin"] for c in population["cards"]].count("2580") == 20
    processes("switch", "--data-dir", str(data), "--listen", f"127.0.0.1:{switch_port}",
              "--hsm", f"127.0.0.1:{hsm_port}", port=switch_port)
    term, card = population["terminals"][1], population["cards"][0]
    proc = eum("terminal", "purchase", "--switch", f"127.0.0.1:{switch_port}", "--tid", term["tid"], "--mid",
               term["mid"], "--pan", card["pan"], "--amount", "10000", "--pin", card["pin"], "--security",
               term["security"], "--ksn", term["ksn"], "--state-dir", str(tmp_path / "t"), "--json", cwd=tmp_path)
    assert (json.loads(proc.stdout)["39"], json.loads(proc.stdout)["response_mac"]) == ("00", "ok")
