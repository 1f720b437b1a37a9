"""The `eum` command as separate processes: admin with and without a running switch,
`eum switch` on a pinned clock, `eum terminal` against it, and a graceful SIGTERM.

Every subprocess runs under a timeout; the switch process is stopped by its own PID only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from switch.ledger.audit import verify
from switch.ledger.store import locate

EUM_SCRIPT = Path(sys.executable).parent / "eum"
EUM = [str(EUM_SCRIPT)] if EUM_SCRIPT.exists() else [sys.executable, "-m", "switch.cli.main"]
COMMAND_TIMEOUT_S = 30
START_TIMEOUT_S = 20

pytestmark = pytest.mark.both_stores  # SQLite and PostgreSQL (tests/conftest.py); subprocesses inherit $EUM_STORE


def eum(*args: str, cwd: Path, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([*EUM, *args], cwd=cwd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if check_rc is not None:
        assert proc.returncode == check_rc, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def admin_json(data_dir: Path, *args: str, cwd: Path) -> dict:
    return json.loads(eum("admin", "--data-dir", str(data_dir), *args, "--json", cwd=cwd).stdout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, "eum switch exited while starting"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"eum switch did not listen on {port} within {START_TIMEOUT_S} s")


def setup_population(data_dir: Path, cwd: Path) -> dict:
    """Admin commands with no switch running: they open the data dir themselves."""
    merchant = admin_json(data_dir, "merchant", "add", "--mid", "NAMDONG01", "--name", "Namdong Cafe",
                          "--district", "namdong", "--annual-sales", "250000000", cwd=cwd)
    assert merchant == {"mid": "NAMDONG01", "name": "Namdong Cafe", "district": "namdong",
                        "annual_sales": 250_000_000, "category": "general", "online_mall": False}
    terminal = admin_json(data_dir, "terminal", "add", "--tid", "T0000001", "--mid", "NAMDONG01", cwd=cwd)
    assert terminal == {"tid": "T0000001", "mid": "NAMDONG01", "security": "none"}
    card = admin_json(data_dir, "card", "issue", "--program", "namdong", "--member", "M-CLI", cwd=cwd)
    assert set(card) >= {"pan", "expiry", "member"} and card["member"] == "M-CLI"
    assert len(card["pan"]) == 16 and card["pan"].isdigit()
    return card


@pytest.fixture
def switch_proc(tmp_path):
    """Starts `eum switch` on demand; whatever it started is stopped by PID at the end."""
    started: list[tuple[subprocess.Popen, list]] = []

    def start(data_dir: Path, port: int) -> subprocess.Popen:
        out = (tmp_path / f"switch-{len(started)}.out").open("w")
        err = (tmp_path / f"switch-{len(started)}.err").open("w")
        proc = subprocess.Popen([*EUM, "switch", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}",
                                 "--clock-start", "2019-07-20T12:00:00+09:00"],
                                cwd=tmp_path, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        proc.out_path, proc.err_path = Path(out.name), Path(err.name)  # type: ignore[attr-defined]
        started.append((proc, [out, err]))
        return proc

    yield start
    for proc, files in started:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=COMMAND_TIMEOUT_S)
        for f in files:
            f.close()


def test_admin_commands_work_without_a_switch_and_refuse_bad_charges(tmp_path):
    data_dir = tmp_path / "var"
    card = setup_population(data_dir, tmp_path)
    pan = card["pan"]

    low = eum("admin", "--data-dir", str(data_dir), "card", "charge", "--pan", pan, "--amount", "9999",
              cwd=tmp_path, check_rc=1)
    assert "below the minimum charge of 10,000 won" in low.stderr
    charged = admin_json(data_dir, "card", "charge", "--pan", pan, "--amount", "100000", cwd=tmp_path)
    assert (charged["charged"], charged["cash"], charged["cashback"]) == (100_000, 100_000, 0)
    assert charged["pan"] == pan[:6] + "******" + pan[-4:]
    high = eum("admin", "--data-dir", str(data_dir), "card", "charge", "--pan", pan, "--amount", "1900001",
               cwd=tmp_path, check_rc=1)
    assert "over the holding limit of 2,000,000 won" in high.stderr
    assert pan not in high.stderr and pan not in low.stderr

    bad = eum("admin", "--data-dir", str(data_dir), "merchant", "add", "--mid", "X1", "--name", "X",
              "--district", "gangnam", "--annual-sales", "1", cwd=tmp_path, check_rc=1)
    assert "--district must be one of" in bad.stderr
    unknown = eum("admin", "--data-dir", str(data_dir), "card", "charge", "--pan", "9410100000099999",
                  "--amount", "10000", cwd=tmp_path, check_rc=1)
    assert "not found" in unknown.stderr and "9410100000099999" not in unknown.stderr

    shown = admin_json(data_dir, "card", "show", "--pan", pan, cwd=tmp_path)
    assert (shown["pan"], shown["cash"], shown["cashback"], shown["status"]) == (
        pan[:6] + "******" + pan[-4:], 100_000, 0, "active")
    assert [p["kind"] for p in shown["postings"]] == ["charge"]
    text = eum("admin", "--data-dir", str(data_dir), "card", "show", "--pan", pan, cwd=tmp_path).stdout
    assert pan not in text

    verified = eum("admin", "--data-dir", str(data_dir), "verify", cwd=tmp_path)
    assert verified.stdout.startswith("ledger verified")
    assert json.loads(eum("admin", "--data-dir", str(data_dir), "verify", "--json", cwd=tmp_path).stdout)["ok"]


def test_switch_terminal_and_admin_processes_end_to_end(tmp_path, switch_proc):
    data_dir = tmp_path / "var"
    card = setup_population(data_dir, tmp_path)
    pan = card["pan"]
    admin_json(data_dir, "card", "charge", "--pan", pan, "--amount", "100000", cwd=tmp_path)
    port = free_port()
    proc = switch_proc(data_dir, port)
    wait_listening(port, proc)

    second = switch_proc(data_dir, free_port())  # the data dir is taken: a second switch refuses
    assert second.wait(timeout=COMMAND_TIMEOUT_S) == 2
    assert "another process holds" in second.err_path.read_text()

    term = ["--switch", f"127.0.0.1:{port}", "--tid", "T0000001", "--mid", "NAMDONG01",
            "--state-dir", str(tmp_path / "terminals")]

    def terminal(action: str, *args: str, rc: int = 0) -> subprocess.CompletedProcess:
        out = eum("terminal", action, *term, *args, cwd=tmp_path, check_rc=rc)
        assert pan not in out.stdout and pan not in out.stderr
        return out

    bought = json.loads(terminal("purchase", "--pan", pan, "--amount", "20000", "--json").stdout)
    assert (bought["t"], bought["39"], bought["2"]) == ("0210", "00", pan[:6] + "******" + pan[-4:])
    assert bought["54"] == "0002410C000000080000" + "0091410C000000001500"

    shown = terminal("balance", "--pan", pan).stdout
    assert "response 00 (approved)" in shown
    assert "balance  cash 80,000 KRW, cashback 1,500 KRW" in shown
    assert f"card     {pan[:6]}******{pan[-4:]}" in shown

    refunded = terminal("refund", "--pan", pan, "--amount", "5000", "--rrn", bought["37"]).stdout
    assert "response 00 (approved)" in refunded
    assert "balance  cash 85,000 KRW, cashback 1,125 KRW" in refunded
    reversed_ = terminal("reverse").stdout  # the terminal's last financial message: the refund
    assert "MTI 0410  response 00 (approved)" in reversed_
    assert "balance  cash 80,000 KRW, cashback 1,500 KRW" in reversed_

    # while the switch runs, admin goes through it: a fresh charge is spendable at once
    charged = admin_json(data_dir, "card", "charge", "--pan", pan, "--amount", "50000", cwd=tmp_path)
    assert charged["cash"] == 130_000
    big = terminal("purchase", "--pan", pan, "--amount", "131500").stdout
    assert "response 00 (approved)" in big
    # spends the 1,500 cashback and all 130,000 cash; earns 5,260 + 2,630 + 1,972 (7.5 %)
    assert "balance  cash 0 KRW, cashback 9,862 KRW" in big

    # the city's online mall takes e-commerce only: --entry-mode sends DE22 as a mall terminal does
    admin_json(data_dir, "merchant", "add", "--mid", "MALL01", "--name", "e-mall seller", "--district", "namdong",
               "--annual-sales", "250000000", "--online-mall", cwd=tmp_path)
    admin_json(data_dir, "terminal", "add", "--tid", "T0000009", "--mid", "MALL01", cwd=tmp_path)
    assert admin_json(data_dir, "card", "charge", "--pan", pan, "--amount", "20000", cwd=tmp_path)["cash"] == 20_000
    mall = ["--switch", f"127.0.0.1:{port}", "--tid", "T0000009", "--mid", "MALL01",
            "--state-dir", str(tmp_path / "terminals")]
    assert "response 00" in eum("terminal", "sign-on", *mall, cwd=tmp_path).stdout
    present = json.loads(eum("terminal", "purchase", *mall, "--pan", pan, "--amount", "10000", "--json",
                             cwd=tmp_path, check_rc=1).stdout)
    assert present["39"] == "58"  # card present (051, the default) at the mall
    online = json.loads(eum("terminal", "purchase", *mall, "--pan", pan, "--amount", "10000", "--entry-mode", "812",
                            "--json", cwd=tmp_path).stdout)
    assert online["39"] == "00"
    # cashback first (9,862), then 138 of the 20,000 cash; earns 7.5 % of 10,000 (750)
    assert online["54"] == "0002410C000000019862" + "0091410C000000000750"

    admin_json(data_dir, "card", "block", "--pan", pan, cwd=tmp_path)
    blocked = terminal("purchase", "--pan", pan, "--amount", "1000", rc=1).stdout
    assert "response 62 (card blocked)" in blocked
    admin_json(data_dir, "card", "unblock", "--pan", pan, cwd=tmp_path)
    assert "response 00 (approved)" in terminal("purchase", "--pan", pan, "--amount", "1000").stdout

    shown = admin_json(data_dir, "card", "show", "--pan", pan, cwd=tmp_path)
    # the 1,000 purchase spends the 750 cashback from the mall, then 250 cash; earns 75
    assert (shown["cash"], shown["cashback"]) == (19_862 - 250, 750 - 750 + 75)
    assert eum("admin", "--data-dir", str(data_dir), "verify", cwd=tmp_path).returncode == 0

    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=COMMAND_TIMEOUT_S) == 0
    assert not (data_dir / "switch.sock").exists()
    assert verify(locate(data_dir)).ok
    assert eum("admin", "--data-dir", str(data_dir), "verify", cwd=tmp_path).returncode == 0

    stdout_events = [json.loads(line) for line in proc.out_path.read_text().splitlines() if line.startswith("{")]
    file_events = [json.loads(line) for line in (data_dir / "logs" / "switch.jsonl").read_text().splitlines()]
    assert stdout_events and [e["event"] for e in stdout_events] == [e["event"] for e in file_events]
    assert {"switch_listening", "switch_stopping", "switch_stopped"} <= {e["event"] for e in file_events}
    everything = proc.out_path.read_text() + proc.err_path.read_text()
    assert pan not in everything
    after = admin_json(data_dir, "card", "show", "--pan", pan, cwd=tmp_path)
    assert (after["cash"], after["cashback"]) == (shown["cash"], shown["cashback"])
