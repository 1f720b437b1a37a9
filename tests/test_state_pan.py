"""No clear PAN at rest in a terminal's state directory (issue 14 item 6).

`eum terminal` and `eum fleet` keep STANs, DUKPT counters, the last transaction and owed
reversals in a state directory outside the switch's data dir; a reversal must be sent again
with its DE2, so the PAN is kept sealed (AES-256-GCM, terminal_sim/pan_vault.py), never in
clear. The scans below look for every PAN of the population as a digit run anywhere in any
file the directory holds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import stat
import subprocess
from pathlib import Path

from conftest import card_accounts, postings
from fault_harness import verify_cli
from switch_process import provisioned
from terminal_sim import cli as terminal_cli
from terminal_sim.fleet import STATE_DIR as FLEET_STATE_DIR
from terminal_sim.fleet import FleetConfig, Population, _StateStore, run_fleet
from terminal_sim.fleet_cli import add_fleet_parser
from terminal_sim.pan_vault import KEY_FILE, SEALED_PREFIX, PanVault
from terminal_sim.saf import SafQueue, on_disk, saf_path
from terminal_sim.scenario import AmountModel, Scenario
from test_saf import PAN, SwitchProc, _db, _message, _reversal, _reversal_postings
from test_saf import _eum_terminal as saf_eum_terminal

DIGIT_RUN = re.compile(r"\d{13,19}")


def _pans_at_rest(state_dir: Path, pans: set[str]) -> list[tuple[str, str]]:
    """(file, digit run) for every 13-19 digit run in any file under `state_dir` that is, or
    contains, a PAN of `pans`."""
    found = []
    for path in sorted(p for p in state_dir.rglob("*") if p.is_file()):
        text = path.read_bytes().decode("latin-1")
        for run in DIGIT_RUN.findall(text):
            if any(pan in run for pan in pans):
                found.append((path.name, run))
    return found


def _eum_terminal(cwd: Path, port: int, action: str, *args: str) -> subprocess.CompletedProcess:
    """`eum terminal` with its default --state-dir, run in `cwd`."""
    return saf_eum_terminal(cwd, port, action, *args, state_dir=False)


# ---------------------------------------------------------------------------- the defaults

def test_the_state_dirs_default_outside_the_switchs_data_dir():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    terminal_cli.add_terminal_parser(sub, lambda a: 0)
    add_fleet_parser(sub, lambda a: 0)
    assert parser.parse_args(["terminal", "echo", "--tid", "T1"]).state_dir == "terminals"
    assert parser.parse_args(["fleet", "--population", "p.json"]).state_dir == "terminals/fleet"
    assert FLEET_STATE_DIR == "terminals/fleet"
    assert FleetConfig.__dataclass_fields__["state_dir"].default == Path("terminals/fleet")


# ---------------------------------------------------------------------------- the vault

def test_a_sealed_pan_opens_to_itself_under_a_0600_key_and_holds_no_digit_run(tmp_path):
    vault = PanVault(tmp_path)
    sealed = vault.seal(PAN)
    assert sealed.startswith(SEALED_PREFIX) and DIGIT_RUN.search(sealed) is None
    assert vault.seal(PAN) != sealed  # a fresh nonce each time
    assert PanVault(tmp_path).open(sealed) == PAN  # the key is on disk, read by the next process
    key = tmp_path / KEY_FILE
    assert (stat.S_IMODE(key.stat().st_mode), len(key.read_bytes())) == (0o600, 32)
    assert vault.open(PAN) == PAN  # an older file's clear PAN is read as it is
    assert vault.seal(sealed) == sealed


def test_an_old_queue_file_with_a_clear_pan_is_rewritten_sealed_on_read(tmp_path):
    SafQueue(saf_path(tmp_path, "T0000001")).enqueue(_reversal(1))
    path = saf_path(tmp_path, "T0000001")
    doc = on_disk(path)
    assert doc["entries"][0]["fields"]["2"].startswith(SEALED_PREFIX)
    # as an older version wrote it: one JSON document (eum-saf/1) in <TID>.saf.json, the PAN in clear
    doc["entries"][0]["fields"]["2"] = PAN
    path.unlink()
    old = tmp_path / "T0000001.saf.json"
    old.write_text(json.dumps({**doc, "format": "eum-saf/1"}, indent=1))
    queue = SafQueue(path)
    assert [e.fields["2"] for e in queue.entries] == [PAN]
    assert _pans_at_rest(tmp_path, {PAN}) == []
    assert not old.exists()  # journalled, then removed
    assert on_disk(path)["entries"][0]["fields"]["2"].startswith(SEALED_PREFIX)
    assert len(path.read_text().splitlines()) == 1  # the journal starts as one snapshot line


def test_an_old_terminal_state_with_a_clear_last_pan_is_rewritten_sealed_on_read(tmp_path):
    args = argparse.Namespace(state_dir=str(tmp_path), tid="T0000001")
    (tmp_path / "T0000001.json").write_text(json.dumps({"stan": 3, "mid": "NAMDONG01",
                                                        "last": {"t": "0200", "2": PAN, "11": "000003"}}))
    state = terminal_cli._load_state(args)
    assert state["last"] == {"t": "0200", "2": PAN, "11": "000003"}
    assert _pans_at_rest(tmp_path, {PAN}) == []
    assert terminal_cli._load_state(args)["last"]["2"] == PAN


def test_the_fleets_wrong_pin_cards_are_kept_sealed_and_old_clear_ones_still_read(tmp_path):
    other = "9410100000000029"
    (tmp_path / "cards.json").write_text(json.dumps({"pin_wrong_last": [PAN]}))  # an older version's
    store = _StateStore(tmp_path)
    assert store.load_wrong_pins() == {PAN}
    store.save_wrong_pins({PAN, other})
    assert _pans_at_rest(tmp_path, {PAN, other}) == []
    assert _StateStore(tmp_path).load_wrong_pins() == {PAN, other}


# ---------------------------------------------------------------------------- against a switch

def test_eum_terminal_purchase_and_queued_reverse_leave_no_clear_pan_and_the_reversal_still_lands(tmp_path):
    data_dir = tmp_path / "var"
    cards = asyncio.run(provisioned(data_dir))
    pans = {c["pan"] for c in cards.values()}
    pan = cards["namdong"]["pan"]
    state_dir = tmp_path / "terminals"  # the default, relative to the cwd
    switch = SwitchProc(tmp_path, data_dir).start()
    try:
        bought = _eum_terminal(tmp_path, switch.port, "purchase", "--pan", pan, "--amount", "5000", "--json")
        assert bought.returncode == 0 and json.loads(bought.stdout)["39"] == "00", bought.stderr
        switch.kill()
        down = _eum_terminal(tmp_path, switch.port, "reverse")
        assert down.returncode == 2 and "1 message(s) stay queued" in down.stderr
        assert sorted(p.name for p in state_dir.iterdir()) == [KEY_FILE, "T0000001.json", "T0000001.saf.jsonl"]
        assert not (data_dir / "terminals").exists()
        assert _pans_at_rest(state_dir, pans) == []
        [queued] = on_disk(saf_path(state_dir, "T0000001"))["entries"]
        assert queued["fields"]["2"].startswith(SEALED_PREFIX)
        stan = queued["fields"]["11"]

        switch.start()
        signed = _eum_terminal(tmp_path, switch.port, "sign-on")
        assert signed.returncode == 0, signed.stderr
        assert "1 acknowledged, 0 refused, 0 still queued" in signed.stderr
        assert _message(data_dir, "T0000001", stan) == [("0400", "00")]
        [purchase] = postings(_db(data_dir), "purchase")
        assert (purchase["undone"], _reversal_postings(data_dir, purchase["id"])) == (5_000, 1)
        assert card_accounts(_db(data_dir), pan) == (100_000, 0)
        assert _pans_at_rest(state_dir, pans) == []
    finally:
        switch.stop()
    assert verify_cli(data_dir, tmp_path)["ok"] is True


async def test_a_short_fleet_run_leaves_no_clear_pan_in_its_state_dir(tmp_path):
    data_dir, state_dir = tmp_path / "var", tmp_path / "terminals" / "fleet"
    cards = await provisioned(data_dir)
    pans = {c["pan"] for c in cards.values()}
    population = Population.from_dict({"dialect": "default", "terminals": [{"tid": "T0000001", "mid": "NAMDONG01"}],
                                       "cards": [{"pan": c["pan"], "expiry": c["expiry"], "pin": None}
                                                 for c in cards.values()]})
    thousands = Scenario(name="thousands", amount=AmountModel(median_won=1_000, sigma=0.01, round_won=1_000,
                                                                amount_won_min=1_000, amount_won_max=1_000))
    switch = SwitchProc(tmp_path, data_dir).start()
    try:
        report = await run_fleet(FleetConfig(host="127.0.0.1", port=switch.port, population=population, terminals=1,
                                             rate_per_s=10.0, duration_s=1.0, arrivals="constant",
                                             scenario=thousands, progress=False, response_timeout_ms=2000.0,
                                             state_dir=state_dir))
    finally:
        switch.stop()
    assert report.sent >= 5 and report.responses == report.sent
    assert {"T0000001.json", "cards.json"} <= {p.name for p in state_dir.iterdir()}
    assert _pans_at_rest(state_dir, pans) == []
