"""Environment errors (issue 14 item 5): each one, met by a real `eum` process, is one line on
stderr, exit status 2 and no traceback: a port in use, a data dir that is a file or cannot be
written, a read-only ledger (which reports and verify still read), an HSM or MQTT broker that
does not answer, a bad --clock-start, a switch refusing `eum terminal`, a broken pipe, a read
command pointed at a data dir with no ledger (nothing is made there), and `eum terminal
purchase` without --amount (a usage error).

Every process is bounded in time and stopped by its own PID. As root, file modes bind a
child only once it has dropped CAP_DAC_OVERRIDE (`unprivileged`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

from conftest import LAUNCH
from waiting import wait_until

EUM_SCRIPT = Path(sys.executable).parent / "eum"
EUM = [str(EUM_SCRIPT)] if EUM_SCRIPT.exists() else [sys.executable, "-m", "switch.cli.main"]
COMMAND_TIMEOUT_S = 30
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE = 24, 1  # <linux/prctl.h>, <linux/capability.h>


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _drop_dac_override() -> None:
    """In the child before exec: root without CAP_DAC_OVERRIDE is held to file modes."""
    if os.geteuid() == 0 and ctypes.CDLL(None, use_errno=True).prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, 0, 0, 0):
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run(*args: str, cwd: Path, preexec: Callable[[], None] | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*EUM, *args], cwd=cwd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                          preexec_fn=preexec, env=env, stdin=subprocess.DEVNULL)


def one_line(proc: subprocess.CompletedProcess) -> str:
    """The process failed on its environment: exit 2, exactly one line on stderr, no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def ledger(cwd: Path, name: str = "var") -> Path:
    """A data dir with a ledger in it (one merchant), made as an operator makes one."""
    done = run("admin", "--data-dir", name, "merchant", "add", "--mid", "NAMDONG01", "--name", "Namdong Cafe",
               "--district", "namdong", "--annual-sales", "250000000", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return cwd / name


@pytest.fixture
def unprivileged(tmp_path: Path) -> Iterator[Callable[[], None]]:
    """The preexec_fn that makes file modes bind the child; skips where they cannot be made to
    (root without CAP_SETPCAP). Modes changed by the test are restored at the end."""
    probe = tmp_path / "probe"
    probe.write_text("")
    probe.chmod(0o444)
    try:
        tried = subprocess.run([sys.executable, "-c", f"open({str(probe)!r}, 'a')"], capture_output=True,
                               timeout=COMMAND_TIMEOUT_S, preexec_fn=_drop_dac_override)
    except subprocess.SubprocessError:
        pytest.skip("cannot drop CAP_DAC_OVERRIDE for a child (root without CAP_SETPCAP)")
    if tried.returncode == 0:
        pytest.skip("file modes do not bind this process's children")
    yield _drop_dac_override
    for path in sorted(tmp_path.rglob("*"), reverse=True):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_a_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run("switch", "--data-dir", "var", "--listen", f"127.0.0.1:{port}", cwd=tmp_path)
    assert one_line(done) == (f"eum: cannot listen: error while attempting to bind on address ('127.0.0.1', {port}): "
                              "address already in use")


def test_a_data_dir_that_is_a_file(tmp_path):
    (tmp_path / "notes").write_text("not a data dir")
    for command in (("switch", "--data-dir", "notes", "--listen", f"127.0.0.1:{free_port()}"),
                    ("admin", "--data-dir", "notes", "merchant", "add", "--mid", "M1", "--name", "M",
                     "--district", "namdong", "--annual-sales", "1"),
                    ("admin", "--data-dir", "notes", "verify"),
                    ("report", "daily", "--date", "2019-07-20", "--data-dir", "notes")):
        assert one_line(run(*command, cwd=tmp_path)) == "eum: --data-dir notes is a file, not a directory", command
    assert one_line(run("switch", "--data-dir", "notes/var", "--listen", f"127.0.0.1:{free_port()}",
                        cwd=tmp_path)) == "eum: --data-dir notes/var cannot be made: Not a directory"


def test_a_data_dir_that_cannot_be_written(tmp_path, unprivileged):
    (tmp_path / "locked").mkdir()
    ledger(tmp_path / "locked", "var")
    (tmp_path / "locked" / "var").chmod(0o555)
    (tmp_path / "locked").chmod(0o555)
    listen = ("--listen", f"127.0.0.1:{free_port()}")
    assert one_line(run("switch", "--data-dir", "locked/new", *listen, cwd=tmp_path, preexec=unprivileged)) == \
        "eum: --data-dir locked/new cannot be made: Permission denied"
    assert one_line(run("switch", "--data-dir", "locked/var", *listen, cwd=tmp_path, preexec=unprivileged)) == \
        "eum: --data-dir locked/var is not writable"
    assert one_line(run("admin", "--data-dir", "locked/var", "card", "issue", "--program", "namdong", cwd=tmp_path,
                        preexec=unprivileged)) == "eum: --data-dir locked/var is not writable"
    assert not (tmp_path / "locked" / "new").exists()


def test_a_read_only_ledger_is_read_by_reports_and_verify_and_refused_to_writers(tmp_path, unprivileged):
    data_dir = ledger(tmp_path)
    (data_dir / "ledger.sqlite3").chmod(0o444)
    refusal = ("eum: the ledger at var/ledger.sqlite3 is read-only: reports and verify read it, changes and the "
               "switch need it writable")
    assert one_line(run("admin", "--data-dir", "var", "merchant", "add", "--mid", "M2", "--name", "M",
                        "--district", "namdong", "--annual-sales", "1", cwd=tmp_path, preexec=unprivileged)) == refusal
    assert one_line(run("switch", "--data-dir", "var", "--listen", f"127.0.0.1:{free_port()}", cwd=tmp_path,
                        preexec=unprivileged)) == refusal

    (tmp_path / "archive").mkdir()  # the same ledger, alone in a read-only directory
    shutil.copy2(data_dir / "ledger.sqlite3", tmp_path / "archive" / "ledger.sqlite3")
    (tmp_path / "archive").chmod(0o555)
    for where in ("var", "archive"):
        verified = run("admin", "--data-dir", where, "verify", "--json", cwd=tmp_path, preexec=unprivileged)
        assert (verified.returncode, json.loads(verified.stdout)["ok"], verified.stderr) == (0, True, "")
        report = run("report", "daily", "--date", "2019-07-20", "--csv", "--table", "merchants", "--data-dir", where,
                     cwd=tmp_path, preexec=unprivileged)
        assert (report.returncode, report.stdout.splitlines()[1:], report.stderr) == (0, [], "")
        listed = run("admin", "--data-dir", where, "merchant", "list", "--json", cwd=tmp_path, preexec=unprivileged)
        assert (listed.returncode, json.loads(listed.stdout)["mid"]) == (0, "NAMDONG01")
    assert sorted(p.name for p in (tmp_path / "archive").iterdir()) == ["ledger.sqlite3"]


def test_a_read_command_on_a_data_dir_with_no_ledger_makes_nothing(tmp_path):
    for command in (("admin", "--data-dir", "vra", "verify"),
                    ("admin", "--data-dir", "vra", "card", "show", "--pan", "9410100000000011"),
                    ("admin", "--data-dir", "vra", "card", "list"),
                    ("admin", "merchant", "show", "--mid", "NAMDONG01", "--data-dir", "vra"),
                    ("admin", "--data-dir", "vra", "card", "block", "--pan", "9410100000000011"),
                    ("admin", "--data-dir", "vra", "holds", "expire"),
                    ("report", "--data-dir", "vra", "month", "--month", "2019-07"),
                    ("events", "status", "--data-dir", "vra")):
        assert one_line(run(*command, cwd=tmp_path)) == "eum: no ledger at vra", command
    assert not (tmp_path / "vra").exists()


def test_a_postgresql_database_with_no_ledger(tmp_path, pg_dsn):
    """A fresh database no switch or eum admin has opened: reads say there is no ledger there."""
    env = {**os.environ, "EUM_STORE": pg_dsn}
    done = run("admin", "--data-dir", "var", "card", "list", cwd=tmp_path, env=env)
    assert one_line(done) == f"eum: no ledger at {pg_dsn} (the database has no eum schema)"
    assert not (tmp_path / "var").exists()


def test_a_bad_clock_start_names_the_flag_and_the_value(tmp_path):
    done = run("switch", "--data-dir", "var", "--listen", f"127.0.0.1:{free_port()}", "--clock-start", "yesterday",
               cwd=tmp_path)
    assert one_line(done) == ("eum: --clock-start 'yesterday' is not an ISO 8601 instant with its UTC offset, "
                              "e.g. 2019-07-20T12:00:00+09:00")
    assert not (tmp_path / "var").exists()
    naive = run("admin", "--data-dir", "var", "--clock-start", "2019-07-20T12:00:00", "card", "issue",
                "--program", "namdong", cwd=tmp_path)
    assert one_line(naive) == ("eum: --clock-start '2019-07-20T12:00:00' is not an ISO 8601 instant with its UTC "
                               "offset, e.g. 2019-07-20T12:00:00+09:00")


def test_a_negative_warm_budget_names_the_flag(tmp_path):
    done = run("switch", "--data-dir", "var", "--listen", f"127.0.0.1:{free_port()}", "--warm-s", "-1", cwd=tmp_path)
    assert one_line(done) == "eum: warm_s (--warm-s) must be ≥ 0"
    assert not (tmp_path / "var").exists()


def test_a_negative_linger_names_the_flag(tmp_path):
    done = run("switch", "--data-dir", "var", "--listen", f"127.0.0.1:{free_port()}", "--commit-linger-ms", "-1",
               cwd=tmp_path)
    assert one_line(done) == "eum: commit_linger_ms (--commit-linger-ms) must be ≥ 0"
    assert not (tmp_path / "var").exists()


def hsm_keys_made(tmp_path: Path, port: int) -> None:
    """The switch's keys, generated once by a real `eum hsm` on `port`, which is stopped after."""
    hsm = subprocess.Popen([*EUM, "hsm", "--listen", f"127.0.0.1:{port}"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        def answers() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                return False
        wait_until(answers, what=f"eum hsm to listen on {port}")
        issued = run("admin", "--data-dir", "var", "--hsm", f"127.0.0.1:{port}", "card", "issue", "--program",
                     "namdong", "--pin", "1234", cwd=tmp_path)
        assert issued.returncode == 0, issued.stderr
    finally:
        os.kill(hsm.pid, signal.SIGTERM)
        hsm.wait(timeout=COMMAND_TIMEOUT_S)


@contextlib.contextmanager
def serving(tmp_path: Path, *flags: str) -> Iterator[Path]:
    """`eum switch --data-dir var` with `flags`, its stderr in switch.err, until it logs
    switch_listening; yields its log file; stopped by SIGTERM after the block, exit 0."""
    with (tmp_path / "switch.err").open("w") as err:
        switch = subprocess.Popen([*EUM, "switch", "--data-dir", "var", "--listen", f"127.0.0.1:{free_port()}",
                                   *flags], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err,
                                  stdin=subprocess.DEVNULL)
    try:
        log = tmp_path / "var" / "logs" / "switch.jsonl"
        wait_until(lambda: log.exists() and '"switch_listening"' in log.read_text(), what="switch_listening")
        yield log
    finally:
        os.kill(switch.pid, signal.SIGTERM)
        assert switch.wait(timeout=COMMAND_TIMEOUT_S) == 0


def test_an_hsm_that_does_not_answer(tmp_path):
    """Its first start with --hsm has the HSM make the switch's keys: without one it cannot
    start. Later starts serve anyway (91 for what needs the HSM) and say so: an hsm_down log
    line and one line on stderr."""
    hsm_port = free_port()
    first = run("switch", "--data-dir", "var", "--listen", f"127.0.0.1:{free_port()}", "--hsm",
                f"127.0.0.1:{hsm_port}", cwd=tmp_path)
    assert one_line(first) == (f"eum: the HSM does not answer (--hsm 127.0.0.1:{hsm_port}): no HSM answered A0 "
                               "(tried: none healthy)")
    hsm_keys_made(tmp_path, hsm_port)  # the HSM is gone again after this
    with serving(tmp_path, "--hsm", f"127.0.0.1:{hsm_port}", "--clock-start", LAUNCH.isoformat()) as log:
        down = [json.loads(line) for line in log.read_text().splitlines() if '"hsm_down"' in line]
        assert [(e["hsm"], e["reason"]) for e in down] == [(f"127.0.0.1:{hsm_port}", "no answer at start")]
        assert (tmp_path / "switch.err").read_text() == (
            f"eum switch: no HSM answers at 127.0.0.1:{hsm_port}: serving anyway; what needs the HSM (PINs, MACs) "
            "is answered 91 until one does\n")


def test_an_mqtt_broker_that_does_not_answer(tmp_path):
    """The consumer cannot begin without its broker: one line. The switch serves anyway (the
    outbox keeps the events until the broker answers) and says so once."""
    broker = free_port()
    done = run("events", "subscribe", "--mqtt", f"mqtt://127.0.0.1:{broker}", cwd=tmp_path)
    assert one_line(done) == f"eum events: the MQTT broker at 127.0.0.1:{broker} does not answer (connection refused)"

    with serving(tmp_path, "--mqtt", f"mqtt://127.0.0.1:{broker}"):
        assert (tmp_path / "switch.err").read_text() == (
            f"eum switch: the MQTT broker at 127.0.0.1:{broker} does not answer (connection refused): serving "
            "anyway; events wait in the outbox until it does\n")


def test_eum_terminal_with_no_switch_listening(tmp_path):
    port = free_port()
    done = run("terminal", "echo", "--switch", f"127.0.0.1:{port}", "--tid", "T0000001", "--mid", "NAMDONG01",
               "--state-dir", "terminals", cwd=tmp_path)
    assert one_line(done) == f"eum terminal: ConnectionRefusedError: no switch listening at 127.0.0.1:{port}"


def test_eum_terminal_purchase_without_an_amount_is_a_usage_error(tmp_path):
    done = run("terminal", "purchase", "--switch", f"127.0.0.1:{free_port()}", "--tid", "T0000001", "--mid",
               "NAMDONG01", "--pan", "9410100000000011", "--state-dir", "terminals", cwd=tmp_path)
    assert one_line(done) == "eum terminal: error: purchase needs --amount (won)"
    assert not (tmp_path / "terminals").exists()  # nothing sent, no STAN spent


def test_a_broken_pipe(tmp_path):
    """`eum admin card list | head -0`: the reader of stdout is gone before the first write."""
    ledger(tmp_path)
    proc = subprocess.Popen([*EUM, "admin", "--data-dir", "var", "merchant", "list", "--json"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    proc.stdout.close()
    try:
        err = proc.communicate(timeout=COMMAND_TIMEOUT_S)[1]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    assert "Traceback" not in err and proc.returncode == 2, (proc.returncode, err)
    assert err == "eum: standard output was closed before everything was written (broken pipe)\n"
