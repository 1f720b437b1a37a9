"""`eum fleet --switch H:P,H:P,…`: the terminals spread over several switches (terminal i on
switch i mod N), a terminal whose switch dies reconnects to the next one and signs on there,
and the report counts each switch's transactions (`by_switch`).

The switches here are real `eum switch` processes on free loopback ports, each on its own
SQLite ledger holding the same seeded population (one seeded data dir, copied), so what the
report attributes to a switch can be checked exactly against that switch's own ledger. Every
process is ended by its PID, every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from terminal_sim.fleet import FleetConfig, FleetConfigError, Population
from terminal_sim.fleet_cli import add_fleet_parser, config_from_args, parse_switches, run_fleet_cli

from waiting import wait_until

EUM_SCRIPT = Path(sys.executable).parent / "eum"
EUM = [str(EUM_SCRIPT)] if EUM_SCRIPT.exists() else [sys.executable, "-m", "switch.cli.main"]
COMMAND_TIMEOUT_S = 30
FLEET_TIMEOUT_S = 60  # duration, the drain (at most 3 response timeouts + 1 s) and interpreter start-up
POSTED = ("purchase", "refund", "reversal")  # the scenario kinds an approval of which is a posting
TIDS = ("T0000001", "T0000002", "T0000003", "T0000004")  # the seeded terminals, in population order


# ---------------------------------------------------------------------------- harness

def _env() -> dict[str, str]:
    # SQLite ledgers in the data dirs, whatever the shell or another test module exports.
    return {**os.environ, "EUM_STORE": ""}


def _eum(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*EUM, *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int, proc: subprocess.Popen) -> bool:
    assert proc.poll() is None, f"eum switch on {port} exited while starting (rc {proc.returncode})"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _seeded_pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    """One seeded data dir (4 merchants with one terminal each, 200 charged cards, security
    none) and a copy of it: two independent ledgers with the same population."""
    first, population = tmp_path / "a", tmp_path / "pop.json"
    seeded = _eum(tmp_path, "admin", "--data-dir", str(first), "seed", "--cards", "200", "--merchants", "4",
                  "--export", str(population))
    assert seeded.returncode == 0, seeded.stderr
    second = Path(shutil.copytree(first, tmp_path / "b"))
    return first, second, population


class _Switch:
    def __init__(self, proc: subprocess.Popen, port: int, data_dir: Path) -> None:
        self.proc, self.port, self.data_dir = proc, port, data_dir

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ledger(self) -> Path:
        return self.data_dir / "ledger.sqlite3"


@pytest.fixture
def switches(tmp_path: Path) -> Iterator[Callable[[Path], _Switch]]:
    """Starts `eum switch` on a data dir and a free port; at the end each one still running is
    stopped by its PID (SIGTERM, which it must survive with status 0)."""
    started: list[_Switch] = []

    def start(data_dir: Path) -> _Switch:
        port = _free_port()
        with (tmp_path / f"switch-{data_dir.name}.err").open("w") as err:
            proc = subprocess.Popen([*EUM, "switch", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"],
                                    cwd=tmp_path, env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err)
        switch = _Switch(proc, port, data_dir)
        started.append(switch)
        wait_until(lambda: _listening(port, proc), what=f"eum switch to listen on {port}")
        return switch

    yield start
    failures = []
    for switch in started:
        if switch.proc.poll() is not None:
            continue
        os.kill(switch.proc.pid, signal.SIGTERM)
        try:
            rc = switch.proc.wait(timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(switch.proc.pid, signal.SIGKILL)
            switch.proc.wait(timeout=COMMAND_TIMEOUT_S)
            rc = "killed after 30 s"
        if rc != 0:
            failures.append(f"eum switch on {switch.port} ended with {rc}")
    assert not failures, failures


def _fleet(tmp_path: Path, population: Path, servers: list[_Switch], *, duration_s: float) -> subprocess.Popen:
    """`eum fleet` over the switches: 4 terminals, 20 transactions/s in all at constant rate,
    the standard scenario; the report goes to <tmp_path>/report.json."""
    with (tmp_path / "fleet.out").open("w") as out, (tmp_path / "fleet.err").open("w") as err:
        return subprocess.Popen([*EUM, "fleet", "--switch", ",".join(s.name for s in servers),
                                 "--population", str(population), "--terminals", "4", "--rate", "20",
                                 "--duration", str(duration_s), "--arrivals", "constant",
                                 "--json", str(tmp_path / "report.json"), "--state-dir", str(tmp_path / "fleet"),
                                 "--no-progress"],
                                cwd=tmp_path, env={**_env(), "COLUMNS": "200"},  # the table unwrapped
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err)


def _finished(tmp_path: Path, fleet: subprocess.Popen) -> dict[str, Any]:
    """The fleet's exit (by itself, within FLEET_TIMEOUT_S) and its JSON report."""
    try:
        rc = fleet.wait(timeout=FLEET_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.kill(fleet.pid, signal.SIGKILL)
        fleet.wait(timeout=COMMAND_TIMEOUT_S)
        raise AssertionError(f"eum fleet did not end by itself within {FLEET_TIMEOUT_S} s") from None
    assert rc == 0, (rc, (tmp_path / "fleet.err").read_text()[-2000:])
    return json.loads((tmp_path / "report.json").read_text())


def _query(ledger: Path, sql: str, *args: object) -> list[tuple]:
    """Read-only, as tests/conftest.py's probes open a SQLite ledger (a switch may be writing)."""
    conn = sqlite3.connect(str(ledger), isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA query_only=ON")
        return [tuple(row) for row in conn.execute(sql, args).fetchall()]
    finally:
        conn.close()


def _postings(ledger: Path) -> dict[str, int]:
    """The fleet's postings in a ledger, by kind (the seed's own are not among them)."""
    rows = _query(ledger, "SELECT kind, COUNT(*) FROM postings WHERE kind IN (?, ?, ?) GROUP BY kind", *POSTED)
    return {kind: dict(rows).get(kind, 0) for kind in POSTED}


def _posting_tids(ledger: Path) -> dict[str, int]:
    rows = _query(ledger, "SELECT tid, COUNT(*) FROM postings WHERE kind IN (?, ?, ?) GROUP BY tid", *POSTED)
    return dict(rows)


def _approved(counts: dict[str, Any]) -> dict[str, int]:
    return {kind: counts["by_kind"][kind]["approved"] for kind in POSTED}


def _table_rows(path: Path) -> dict[str, str]:
    """The readable report's rows (measure → value) as `eum fleet` printed them."""
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = line.split("│")
        if len(cells) == 4:
            rows[cells[1].strip()] = cells[2].strip()
    return rows


def _verified(tmp_path: Path, data_dir: Path) -> dict:
    proc = _eum(tmp_path, "admin", "--data-dir", str(data_dir), "verify", "--json")
    assert proc.returncode == 0, (data_dir.name, proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


def _stop(switch: _Switch) -> None:
    os.kill(switch.proc.pid, signal.SIGTERM)
    assert switch.proc.wait(timeout=COMMAND_TIMEOUT_S) == 0


# ---------------------------------------------------------------------------- against real switches

def test_terminals_spread_over_two_switches_and_each_ledger_holds_exactly_what_the_report_gives_it(tmp_path,
                                                                                                  switches):
    first_dir, second_dir, population = _seeded_pair(tmp_path)
    first, second = switches(first_dir), switches(second_dir)
    report = _finished(tmp_path, _fleet(tmp_path, population, [first, second], duration_s=3.0))

    by_switch = report["by_switch"]
    assert list(by_switch) == [first.name, second.name]
    # A healthy run: nothing dropped, nothing to reconnect; two terminals signed on at each.
    assert report["connection_drops"] == report["reconnects"] == report["timeouts"] == 0
    assert report["reversals_sent"] == 0
    assert [by_switch[s]["connects"] for s in by_switch] == [2, 2]
    # Each transaction is counted at one switch: the per-switch counts add up to the totals.
    for key in ("sent", "responses", "approved", "timeouts"):
        assert sum(c[key] for c in by_switch.values()) == report[key], key
    for kind, counts in report["by_kind"].items():
        assert sum(c["by_kind"][kind]["sent"] for c in by_switch.values()) == counts["sent"], kind
    assert all(c["sent"] == c["responses"] > 0 for c in by_switch.values())
    # Terminals 0 and 2 (T0000001, T0000003) went to the first switch, 1 and 3 to the second;
    # each switch's ledger holds exactly the approvals the report attributes to it, by kind.
    assert set(_posting_tids(first.ledger)) == {TIDS[0], TIDS[2]}
    assert set(_posting_tids(second.ledger)) == {TIDS[1], TIDS[3]}
    assert _postings(first.ledger) == _approved(by_switch[first.name])
    assert _postings(second.ledger) == _approved(by_switch[second.name])
    assert _postings(first.ledger)["purchase"] > 0 and _postings(second.ledger)["purchase"] > 0
    # The readable table has a row per switch with the same counts.
    rows = _table_rows(tmp_path / "fleet.out")
    for name, c in by_switch.items():
        assert rows[f"switch {name}"] == (f"sent {c['sent']}  answered {c['responses']}  approved {c['approved']}  "
                                          f"sign-ons {c['connects']}")

    _stop(first)
    _stop(second)
    assert _verified(tmp_path, first_dir)["ok"] is True
    assert _verified(tmp_path, second_dir)["ok"] is True


def test_when_a_switch_is_killed_its_terminals_reconnect_to_the_next_and_keep_being_answered(tmp_path, switches):
    first_dir, second_dir, population = _seeded_pair(tmp_path)
    first, second = switches(first_dir), switches(second_dir)
    fleet = _fleet(tmp_path, population, [first, second], duration_s=4.0)
    try:
        # Traffic reaches the first switch (terminals 0 and 2), then it dies mid-run.
        wait_until(lambda: _postings(first.ledger)["purchase"] >= 4,
                   what="4 purchases posted on the first switch before it is killed")
        assert fleet.poll() is None, "the fleet ended before the first switch was killed"
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(timeout=COMMAND_TIMEOUT_S)
    finally:
        if fleet.poll() is None and first.proc.poll() is None:  # the wait failed: end the fleet too
            os.kill(fleet.pid, signal.SIGKILL)
            fleet.wait(timeout=COMMAND_TIMEOUT_S)
    report = _finished(tmp_path, fleet)

    by_switch = report["by_switch"]
    a, b = by_switch[first.name], by_switch[second.name]
    # The two terminals of the first switch each lost their connection once and signed on
    # again at the second, at the first try; the second switch's terminals saw nothing.
    assert report["connection_drops"] == report["reconnects"] == 2
    assert (a["connects"], b["connects"]) == (2, 4)
    assert b["timeouts"] == 0 and a["timeouts"] <= 2  # at most what was in flight when it died
    assert report["sent"] == report["responses"] + report["timeouts"]
    for key in ("sent", "responses", "approved", "timeouts"):
        assert a[key] + b[key] == report[key], key
    # After the kill, the second switch answered terminals 0 and 2 too: it holds their postings.
    tids_second = _posting_tids(second.ledger)
    assert tids_second.get(TIDS[0], 0) > 0 and tids_second.get(TIDS[2], 0) > 0
    assert set(_posting_tids(first.ledger)) == {TIDS[0], TIDS[2]}
    # The second switch's purchases and refunds are exactly those the report gives it. (Its
    # reversals can be fewer: a reversal of a purchase made on the first switch is answered
    # 00 there with nothing to undo.)
    second_postings, second_approved = _postings(second.ledger), _approved(b)
    assert second_postings["purchase"] == second_approved["purchase"] > 0
    assert second_postings["refund"] == second_approved["refund"]
    assert second_postings["reversal"] <= second_approved["reversal"]
    # The first switch may have committed what it could no longer answer: at most one
    # transaction per terminal in flight, each a timeout in the report.
    extra = sum(_postings(first.ledger).values()) - sum(_approved(a).values())
    assert 0 <= extra <= a["timeouts"]

    _stop(second)
    assert _verified(tmp_path, first_dir)["ok"] is True
    assert _verified(tmp_path, second_dir)["ok"] is True


# ---------------------------------------------------------------------------- parsing and config

def test_switch_lists_parse_and_a_malformed_entry_is_one_line_naming_switch_and_the_entry(tmp_path, capsys):
    assert parse_switches("127.0.0.1:8583") == (("127.0.0.1", 8583),)
    assert parse_switches("9001") == (("127.0.0.1", 9001),)  # a port alone, as before
    assert parse_switches("127.0.0.1:9001,127.0.0.2:9002, localhost:9003") == (
        ("127.0.0.1", 9001), ("127.0.0.2", 9002), ("localhost", 9003))
    cases = {
        "127.0.0.1:9001,127.0.0.1": "--switch: '127.0.0.1' is not HOST:PORT (in '127.0.0.1:9001,127.0.0.1')",
        "127.0.0.1:9001,h:x": "--switch: 'h:x' is not HOST:PORT (in '127.0.0.1:9001,h:x')",
        "127.0.0.1:9001,,127.0.0.1:9002": "--switch: an empty entry (in '127.0.0.1:9001,,127.0.0.1:9002')",
        "127.0.0.1:9001,": "--switch: an empty entry (in '127.0.0.1:9001,')",
        "127.0.0.1:9001,127.0.0.1:0": "--switch: '127.0.0.1:0': the port must be 1..65535 "
                                      "(in '127.0.0.1:9001,127.0.0.1:0')",
        "127.0.0.1:65536": "--switch: '127.0.0.1:65536': the port must be 1..65535 (in '127.0.0.1:65536')",
    }
    for text, message in cases.items():
        with pytest.raises(ValueError) as caught:
            parse_switches(text)
        assert str(caught.value) == message

    parser = argparse.ArgumentParser()
    add_fleet_parser(parser.add_subparsers(dest="command"), func=run_fleet_cli)
    population = tmp_path / "pop.json"
    population.write_text(json.dumps({"terminals": [{"tid": "T0000001", "mid": "M1"}, {"tid": "T0000002", "mid": "M2"}],
                                      "cards": [{"pan": "9410100000000011", "expiry": "3012", "pin": None}]}))
    args = parser.parse_args(["fleet", "--switch", "127.0.0.1:9001,h:x", "--population", str(population),
                              "--no-progress"])
    assert args.func(args) == 2
    assert capsys.readouterr().err == "eum fleet: --switch: 'h:x' is not HOST:PORT (in '127.0.0.1:9001,h:x')\n"
    args = parser.parse_args(["fleet", "--switch", "127.0.0.1:9001, 127.0.0.1:9002", "--population",
                              str(population), "--terminals", "2"])
    config = config_from_args(args)
    assert config.switches == (("127.0.0.1", 9001), ("127.0.0.1", 9002))
    assert (config.host, config.port) == ("127.0.0.1", 9001)
    assert config.switch_names == ("127.0.0.1:9001", "127.0.0.1:9002")


def test_config_keeps_host_and_port_and_checks_them_against_switches(tmp_path):
    population = Population.from_dict({"terminals": [{"tid": "T0000001", "mid": "M1"}],
                                       "cards": [{"pan": "9410100000000011", "expiry": "3012", "pin": None}]})
    kw = dict(population=population, terminals=1, state_dir=tmp_path / "fleet", progress=False)
    assert FleetConfig(**kw).switches == (("127.0.0.1", 8583),)
    assert FleetConfig(host="10.0.0.1", port=9000, **kw).switches == (("10.0.0.1", 9000),)
    both = FleetConfig(switches=[("10.0.0.1", 9000), ("10.0.0.2", 9001)], **kw)
    assert both.switches == (("10.0.0.1", 9000), ("10.0.0.2", 9001)) and (both.host, both.port) == ("10.0.0.1", 9000)
    assert FleetConfig(host="10.0.0.1", port=9000, switches=(("10.0.0.1", 9000), ("10.0.0.2", 9001)),
                       **kw).switches == both.switches
    with pytest.raises(FleetConfigError) as caught:
        FleetConfig(port=9999, switches=(("10.0.0.1", 9000), ("10.0.0.2", 9001)), **kw)
    assert str(caught.value) == ("host/port (10.0.0.1:9999) differ from the first of switches (10.0.0.1:9000): "
                                 "give one or the other")
    with pytest.raises(FleetConfigError) as caught:
        FleetConfig(switches=(("10.0.0.1", 9000), ("10.0.0.2", 0)), **kw)
    assert str(caught.value) == "port must be 1..65535 (10.0.0.2:0)"
    with pytest.raises(FleetConfigError) as caught:
        FleetConfig(port=70000, **kw)
    assert str(caught.value) == "port must be 1..65535"
