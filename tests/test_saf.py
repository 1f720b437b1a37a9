"""Store-and-forward in the simulated terminal (terminal_sim/saf.py; docs/host-interface.md,
"Store-and-forward: the terminal's timeout, reversal and advice schedule").

- The queue on its own: write-ahead (on disk, fsync'd, before the call returns and before a
  try leaves), what each DE39 means, the schedule under an injected clock, a restart that
  reloads it, and a file that never holds a MAC, a PIN block or track data.
- End to end against real `eum switch` processes on 127.0.0.1, killed with SIGKILL (and
  frozen with SIGSTOP) by PID: reversals and advices queued, the switch killed with one
  landed but unanswered and one lost in flight, the terminal restarted, the switch
  restarted on the same data dir; every one lands exactly once, checked in the ledger. The
  same through `eum terminal` (reverse while the switch is down, sent after the next sign-on)
  and through a fleet whose switch dies mid-run (drained by the next run); and a DUKPT
  reversal whose answer was lost, repeated under its first KSN with a fresh MAC.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import LAUNCH, card_accounts, postings, query, start_switch
from fault_harness import EUM, free_port, switch_command, verify_cli, wait_listening
from hsm_mock.config import HsmConfig as HsmServiceConfig
from hsm_mock.service import HsmServer
from switch.authorize.hsm_client import HsmConfig
from switch.clock import FixedClock
from switch.ledger.audit import verify
from switch.ledger.store import locate
from switch.wire.codec import decode_fields, encode_fields, load_dialect
from switch.wire.framing import FrameBuffer, frame
from switch.wire.messages import Rc
from switch_process import provisioned
from terminal_sim.client import TerminalClient
from terminal_sim.fleet import FleetConfig, Population, run_fleet
from terminal_sim import saf
from terminal_sim.saf import (DE39_ACCEPTED, DE39_REFUSED, DE39_REPEAT, SAF_REPEAT_MTI, ClientLink, SafError,
                              SafQueue, SafSchedule, Verdict, adopt_pending_reversals, forward, on_disk, saf_path)
from terminal_sim.scenario import AmountModel, Scenario
from terminal_sim.security import TerminalSecurity
from terminal_sim.terminal import Terminal
from waiting import eventually, wait_until

DIALECT = load_dialect("default")
PAN = "9410100000000011"
COMMAND_TIMEOUT_S = 30
T0 = 1_750_000_000.0  # the injected clock's start (epoch seconds)


class Clock:
    def __init__(self, at: float = T0) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def _reversal(stan: int, *, advice: bool = False, **extra: str) -> dict[str, str]:
    """A reversal as Terminal.reversal builds it, pinned: STAN `stan`, DE7 0720030000."""
    original = {"t": "0200", "2": PAN, "3": "000000", "4": "000000001000", "7": "0720025959", "11": "000009",
                "42": "NAMDONG01      ", "49": "410"}
    term = Terminal("T0000001", "NAMDONG01", stan=stan - 1)
    fields = term.reversal(original, advice=advice)
    return {**fields, "7": "0720030000", **extra}


def _queue(tmp_path: Path, clock: Clock | None = None, **schedule: float) -> SafQueue:
    return SafQueue(saf_path(tmp_path, "T0000001"), schedule=SafSchedule(**schedule), clock=clock or Clock())


def _on_disk(tmp_path: Path) -> dict:
    return on_disk(saf_path(tmp_path, "T0000001"))


# ---------------------------------------------------------------------------- the queue

def test_only_reversals_and_advices_are_stored_and_each_has_its_repeat_mti(tmp_path):
    assert (SAF_REPEAT_MTI["0400"], SAF_REPEAT_MTI["0420"]) == ("0401", "0421")
    assert "0200" not in SAF_REPEAT_MTI and "0800" not in SAF_REPEAT_MTI
    q = _queue(tmp_path)
    with pytest.raises(ValueError, match="MTI '0200' is not stored and forwarded"):
        q.enqueue({**_reversal(1), "t": "0200"})
    assert not saf_path(tmp_path, "T0000001").exists()  # an empty queue writes nothing


def test_an_entry_is_on_disk_and_fsynced_file_and_directory_before_enqueue_returns(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    q = _queue(tmp_path)
    entry = q.enqueue(_reversal(1))
    path = saf_path(tmp_path, "T0000001")
    # first use: the PAN key (terminal_sim/pan_vault.py) and its directory, durable before what it seals;
    # then the new file, then the rename in its directory
    assert synced[0].startswith(str(tmp_path / ".pan.key.")) and synced[0].endswith(".tmp")
    assert synced[1:] == [str(tmp_path), str(path) + ".tmp", str(tmp_path)]
    doc = _on_disk(tmp_path)
    assert doc["next_seq"] == 2
    assert [(e["seq"], e["tries"], e["fields"]["t"], e["fields"]["11"]) for e in doc["entries"]] == \
        [(entry.seq, 0, "0400", "000001")]


def test_a_later_change_is_one_line_appended_and_a_try_is_fdatasynced_and_no_rename(tmp_path, monkeypatch):
    q = _queue(tmp_path)
    first = q.enqueue(_reversal(1))  # creates the journal: one snapshot line, written as above
    calls: list[tuple[str, str]] = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)

        def recording(fd: int, _name: str = name, _real=real) -> None:
            calls.append((_name, os.readlink(f"/proc/self/fd/{fd}")))
            _real(fd)

        monkeypatch.setattr(os, name, recording)
    monkeypatch.setattr(os, "replace", lambda *a: pytest.fail("a change must not rewrite the file"))
    path = saf_path(tmp_path, "T0000001")
    q.sending(first.seq, {**q.outgoing(first), "53": "FFFF9876543210E00001"})
    second = q.enqueue(_reversal(2))
    assert calls == [("fdatasync", str(path))] * 2  # a try and a queued message: durable before they leave
    # answers: written, not synced (a lost one costs a repeat the switch answers from its stored outcome)
    q.answered(first.seq, "00")
    q.answered(second.seq, "12")
    assert calls == [("fdatasync", str(path))] * 2
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["format"] == "eum-saf/2" and [e["seq"] for e in lines[0]["entries"]] == [1]
    assert [sorted(line) for line in lines[1:]] == [["next_seq", "put"], ["next_seq", "put"], ["done"], ["refused"]]
    assert (lines[1]["put"]["tries"], lines[1]["put"]["fields"]["53"], lines[2]["put"]["seq"], lines[3]["done"],
            lines[4]["refused"]["rc"]) == (1, "FFFF9876543210E00001", 2, 1, "12")
    doc = on_disk(path)
    assert (doc["next_seq"], doc["entries"], [r["entry"]["seq"] for r in doc["refused"]]) == (3, [], [2])
    again = _queue(tmp_path)
    assert (again.entries, [(r.entry.seq, r.rc) for r in again.refused]) == ((), [(2, "12")])


def test_after_changes_max_lines_the_next_change_rewrites_one_snapshot(tmp_path, monkeypatch):
    monkeypatch.setattr(saf, "CHANGES_MAX", 3)
    q = _queue(tmp_path)
    path = saf_path(tmp_path, "T0000001")
    for stan in range(1, 5):  # a snapshot, then three change lines
        q.enqueue(_reversal(stan))
    assert len(path.read_text().splitlines()) == 4
    q.answered(1, "00")  # an answer (not synced) is appended even past the bound: no rewrite without an fsync
    assert len(path.read_text().splitlines()) == 5
    q.enqueue(_reversal(5))  # the next synced change: the file is the queue again, in one line
    [line] = path.read_text().splitlines()
    assert [e["seq"] for e in json.loads(line)["entries"]] == [2, 3, 4, 5]
    q.answered(2, "00")
    assert len(path.read_text().splitlines()) == 2
    assert [e.seq for e in _queue(tmp_path).entries] == [3, 4, 5]


def test_a_last_line_cut_short_by_a_crash_is_ignored_and_the_next_change_rewrites_the_file(tmp_path):
    q = _queue(tmp_path)
    q.enqueue(_reversal(1))
    q.enqueue(_reversal(2))
    path = saf_path(tmp_path, "T0000001")
    whole = path.read_bytes()
    with open(path, "ab") as f:  # a change whose call never returned: its entry was never sent
        f.write(b'{"put":{"seq":3,"fields":{"t":"0400","11":"0000')
    reopened = _queue(tmp_path)
    assert [e.seq for e in reopened.entries] == [1, 2]
    assert on_disk(path)["next_seq"] == 3
    reopened.answered(1, "00")  # appending after the cut would damage the line: a new snapshot instead
    [line] = path.read_text().splitlines()
    assert [e["seq"] for e in json.loads(line)["entries"]] == [2] and path.read_bytes() != whole
    assert [e.seq for e in _queue(tmp_path).entries] == [2]


def test_a_failed_append_leaves_no_half_line_and_the_queue_as_it_was(tmp_path, monkeypatch):
    q = _queue(tmp_path)
    e = q.enqueue(_reversal(1))
    path = saf_path(tmp_path, "T0000001")
    before = path.read_bytes()
    real_write = os.write

    def disk_full(fd: int, data: bytes) -> int:
        real_write(fd, data[:20])  # part of the line reached the file, then the disk was full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(SafError, match=r"could not be written \(OSError: No space left on device\)"):
        q.answered(e.seq, "00")
    monkeypatch.setattr(os, "write", real_write)
    assert path.read_bytes() == before  # cut back
    assert [x.seq for x in q.entries] == [1]  # still owed
    assert q.answered(e.seq, "00") is Verdict.ACCEPTED
    assert q.entries == () and _queue(tmp_path).entries == ()


def test_an_older_versions_queue_file_is_journalled_on_open_and_removed(tmp_path):
    q = _queue(tmp_path)
    q.enqueue(_reversal(1))
    q.enqueue(_reversal(2))
    path = saf_path(tmp_path, "T0000001")
    doc = on_disk(path)
    path.unlink()
    old = tmp_path / "T0000001.saf.json"  # what an older version kept: one document, rewritten whole
    old.write_text(json.dumps({**doc, "format": "eum-saf/1"}, indent=1))
    assert on_disk(path)["entries"] == doc["entries"]  # read through, before anything is written
    reopened = _queue(tmp_path)
    assert [x.seq for x in reopened.entries] == [1, 2] and not old.exists()
    assert [json.loads(line)["format"] for line in path.read_text().splitlines()] == ["eum-saf/2"]
    reopened.answered(1, "00")
    assert [x.seq for x in _queue(tmp_path).entries] == [2]


async def test_each_try_is_on_disk_with_its_ksn_before_it_is_sent_and_its_mac_never_is(tmp_path):
    q = _queue(tmp_path)
    q.enqueue(_reversal(1))
    seen_at_send: list[dict] = []

    class Link:
        async def ready(self) -> bool:
            return True

        def secure(self, fields: dict[str, str]) -> dict[str, str]:
            return {**fields, "53": "FFFF9876543210E00007", "64": "A1B2C3D4E5F60718"}

        async def exchange(self, secured: dict[str, str]) -> dict[str, str] | None:
            seen_at_send.append(_on_disk(tmp_path)["entries"][0])
            return None if len(seen_at_send) == 1 else {"t": "0410", "11": secured["11"], "39": "00"}

    done = await forward(q, Link())
    assert (done.firsts, done.repeats, done.accepted, done.unacknowledged) == (1, 1, 1, 1)
    assert [(e["tries"], e["fields"]["t"], e["fields"]["53"], "64" in e["fields"]) for e in seen_at_send] == \
        [(1, "0400", "FFFF9876543210E00007", False), (2, "0400", "FFFF9876543210E00007", False)]
    assert _on_disk(tmp_path)["entries"] == []


def test_the_response_codes_are_split_into_accepted_refused_and_repeat_with_nothing_left_over():
    codes = {rc.value for rc in Rc}
    assert DE39_ACCEPTED == {"00"} and DE39_REPEAT == {"58", "91", "96"}
    assert DE39_REFUSED == {"12", "13", "14", "25", "30", "51", "54", "55", "57", "61", "62", "63", "75", "94"}
    assert DE39_ACCEPTED | DE39_REFUSED | DE39_REPEAT == codes
    assert not (DE39_ACCEPTED & DE39_REFUSED or DE39_ACCEPTED & DE39_REPEAT or DE39_REFUSED & DE39_REPEAT)


@pytest.mark.parametrize("rc, expected, queued, refused", [
    ("00", Verdict.ACCEPTED, 0, []),
    ("25", Verdict.REFUSED, 0, ["25"]),  # original not found (PAN differs): the same again gets 25
    ("30", Verdict.REFUSED, 0, ["30"]),
    ("12", Verdict.REFUSED, 0, ["12"]),
    ("63", Verdict.REFUSED, 0, ["63"]),
    ("94", Verdict.REFUSED, 0, ["94"]),
    ("91", Verdict.REPEAT, 1, []),  # nothing stored: the repeat is processed afresh
    ("96", Verdict.REPEAT, 1, []),
    ("58", Verdict.REPEAT, 1, []),  # not signed on: the next sign-on cures it
    ("X9", Verdict.REPEAT, 1, []),  # a code nobody defined never ends an owed reversal
    (None, Verdict.REPEAT, 1, []),  # no answer
])
def test_an_answer_acknowledges_only_with_a_final_response_code(tmp_path, rc, expected, queued, refused):
    q = _queue(tmp_path)
    e = q.enqueue(_reversal(1), sending=True)
    assert q.answered(e.seq, rc) is expected
    doc = _on_disk(tmp_path)
    assert len(doc["entries"]) == queued
    assert [r["rc"] for r in doc["refused"]] == refused
    if queued:
        assert doc["entries"][0]["last_rc"] == (None if rc is None else rc)


def test_the_schedule_repeats_at_once_after_a_timeout_later_after_a_91_and_caps_tries_per_connection(tmp_path):
    clock = Clock()
    q = _queue(tmp_path, clock, repeat_interval_s=5.0, tries_per_connection_max=3)
    a = q.enqueue(_reversal(1))
    b = q.enqueue(_reversal(2, advice=True))
    assert q.next_due().seq == a.seq and q.due_in() == 0.0
    q.sending(a.seq, q.outgoing(a))
    clock.at += 5.0  # its response timeout passes
    assert q.answered(a.seq, None) is Verdict.REPEAT
    assert q.next_due().seq == a.seq  # unanswered: repeated at once (the wait was the timeout)
    assert q.outgoing(q.next_due())["t"] == "0401"
    q.sending(a.seq, q.outgoing(q.entry(a.seq)))
    clock.at += 0.2
    assert q.answered(a.seq, "91") is Verdict.REPEAT  # answered at once: the next try 5 s after this one's send
    assert q.next_due().seq == b.seq  # the entry behind is not held up
    q.sending(b.seq, q.outgoing(b))
    assert q.answered(b.seq, "00") is Verdict.ACCEPTED
    assert q.next_due() is None and q.due_in() == pytest.approx(4.8)
    clock.at += 4.8
    assert q.next_due().seq == a.seq
    q.sending(a.seq, q.outgoing(q.entry(a.seq)))  # its third try on this connection
    assert q.answered(a.seq, None) is Verdict.REPEAT
    assert q.next_due() is None and q.due_in() is None  # tries_per_connection_max: wait for the next one
    q.connection_opened()
    assert q.next_due().seq == a.seq and q.due_in() == 0.0
    assert [(e.seq, e.tries, e.last_rc) for e in q.entries] == [(a.seq, 3, "91")]


def test_an_entry_is_never_dropped_for_age_or_tries_only_flagged_for_attention(tmp_path):
    clock = Clock()
    q = _queue(tmp_path, clock, attention_age_s=3600.0, attention_tries=6, tries_per_connection_max=10)
    old = q.enqueue(_reversal(1))
    tried = q.enqueue(_reversal(2))
    for _ in range(5):
        q.sending(tried.seq, q.outgoing(q.entry(tried.seq)))
        q.answered(tried.seq, None)
    assert q.attention() == []
    q.sending(tried.seq, q.outgoing(q.entry(tried.seq)))  # the sixth send
    q.answered(tried.seq, "96")
    assert [e.seq for e in q.attention()] == [tried.seq]
    clock.at += 3600.0
    assert [e.seq for e in q.attention()] == [old.seq, tried.seq]
    assert [e.seq for e in q.entries] == [old.seq, tried.seq] and q.next_due().seq == old.seq


def test_a_restarted_terminal_reloads_the_queue_in_order_and_repeats_only_what_was_sent(tmp_path):
    first = _queue(tmp_path)
    sent = first.enqueue(_reversal(1, **{"53": "FFFF9876543210E00003"}), sending=True)
    first.enqueue(_reversal(2, advice=True))
    first.enqueue(_reversal(3))
    again = _queue(tmp_path)  # a new process: the file is all it has
    assert [(e.seq, e.tries, e.stan) for e in again.entries] == [(1, 1, "000001"), (2, 0, "000002"), (3, 0, "000003")]
    assert [again.outgoing(e)["t"] for e in again.entries] == ["0401", "0420", "0400"]
    assert again.outgoing(again.entries[0]) == {**sent.fields, "t": "0401"}  # same STAN, DE7, KSN, content
    assert again.next_due().seq == 1  # a new start is a new connection: due at once, oldest first
    assert again.enqueue(_reversal(2, advice=True)).seq == 2 and len(again) == 3  # the same message is one entry
    assert again.enqueue(_reversal(4)).seq == 4


def test_the_queue_file_never_holds_a_mac_pin_block_or_track_data(tmp_path):
    secrets = {"35": PAN + "D3012201", "52": "0123456789ABCDEF", "64": "FEDCBA9876543210", "128": "1122334455667788"}
    q = _queue(tmp_path)
    e = q.enqueue(_reversal(1, **secrets))
    q.sending(e.seq, {**q.outgoing(e), "53": "FFFF9876543210E00001", **secrets})
    q.enqueue(_reversal(2, **secrets), sending=True)
    text = saf_path(tmp_path, "T0000001").read_text()
    for value in secrets.values():
        assert value not in text
    for entry in _on_disk(tmp_path)["entries"]:
        assert not {"35", "52", "64", "128"} & set(entry["fields"])
        assert entry["fields"]["2"].startswith("pan:v1:")  # kept for the repeat, sealed (test_state_pan.py)
    assert PAN not in text and [e.fields["2"] for e in _queue(tmp_path).entries] == [PAN, PAN]


def test_an_unreadable_queue_file_is_an_error_and_never_an_empty_queue(tmp_path):
    saf_path(tmp_path, "T0000001").write_text('{"format": "eum-saf/1", "entries": [')
    with pytest.raises(SafError, match="unreadable .*never delete it unread"):
        _queue(tmp_path)
    saf_path(tmp_path, "T0000001").write_text('{"format": "other", "entries": []}\n')
    with pytest.raises(SafError, match="is not an eum-saf/2 file"):
        _queue(tmp_path)
    # a change line in the middle that does not parse is damage, not a change cut short
    saf_path(tmp_path, "T0000001").write_text('{"format": "eum-saf/2", "next_seq": 1, "entries": []}\n{"put": \n'
                                              '{"done": 1}\n')
    with pytest.raises(SafError, match="unreadable .*never delete it unread"):
        _queue(tmp_path)


def test_a_fleet_state_files_pending_reversals_are_adopted_once(tmp_path):
    sent = {**_reversal(1), "53": "FFFF9876543210E00004"}
    state = {"stan": 9, "pending_reversals": [{"fields": sent, "sent": True}, {"fields": _reversal(2), "sent": False}]}
    q = _queue(tmp_path)
    assert adopt_pending_reversals(q, state) is True
    assert adopt_pending_reversals(q, state) is True  # a crash before the state file lost them: no duplicates
    assert [(e.stan, e.tries, q.outgoing(e)["t"], e.fields.get("53")) for e in _queue(tmp_path).entries] == \
        [("000001", 1, "0401", "FFFF9876543210E00004"), ("000002", 0, "0400", None)]
    assert adopt_pending_reversals(q, {"stan": 9}) is False


async def test_the_client_link_skips_a_late_answer_to_another_message_and_times_out_cleanly():
    """A scripted peer on 127.0.0.1: for STAN 000002 it first sends the late answer of STAN
    000001, then the right one; STAN 000003 is never answered; STAN 000004 closes the line."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = FrameBuffer(DIALECT.framing)
        while data := await reader.read(65536):
            buffer.receive_data(data)
            while (fr := buffer.next_frame()) is not None:
                stan = decode_fields(fr.payload, DIALECT)["11"]
                if stan == "000004":
                    writer.close()
                    return
                for answer_stan in {"000002": ("000001", "000002")}.get(stan, ()):
                    answer = {"t": "0410", "7": "0720030000", "11": answer_stan, "39": "00", "41": "T0000001"}
                    writer.write(frame(DIALECT.framing, encode_fields(answer, DIALECT)))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = await TerminalClient("127.0.0.1", port, DIALECT, response_timeout_ms=300).connect()
    try:
        link = ClientLink(client)
        answer = await link.request(_reversal(2))
        assert (answer["11"], answer["39"]) == ("000002", "00")
        assert await link.request(_reversal(3)) is None and await link.ready() is True
        assert await link.request(_reversal(4)) is None and await link.ready() is False
        assert link.sent["000002"]["11"] == "000002" and link.mac_ok["000002"] is None
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------------------- a real switch

class SwitchProc:
    """`eum switch` on a provisioned data dir and a fixed port, so a restart is where the
    terminal left it. Only this process is signalled, by its PID."""

    def __init__(self, tmp_path: Path, data_dir: Path) -> None:
        self.tmp_path, self.data_dir, self.port = tmp_path, data_dir, free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> "SwitchProc":
        self.starts += 1
        err = (self.tmp_path / f"switch-{self.starts}.err").open("w")
        self.proc = subprocess.Popen(switch_command(self.data_dir, self.port), cwd=self.tmp_path,
                                     env={**os.environ, "EUM_STORE": ""}, stdout=subprocess.DEVNULL,
                                     stderr=err, stdin=subprocess.DEVNULL)
        err.close()
        wait_listening(self.port, self.proc)
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None and self.proc.poll() is None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc.wait(timeout=COMMAND_TIMEOUT_S) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process would not see SIGTERM
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=COMMAND_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=COMMAND_TIMEOUT_S)
                raise


def _db(data_dir: Path) -> Path:
    return data_dir / "ledger.sqlite3"


def _message(data_dir: Path, tid: str, stan: str) -> list[tuple[str, str]]:
    """(MTI stored, DE39) of every stored message of the terminal with this STAN."""
    return query(_db(data_dir), "SELECT mti, rc FROM messages WHERE tid=? AND stan=? ORDER BY mti", tid, stan)


def _reversal_postings(data_dir: Path, original_id: int) -> int:
    return query(_db(data_dir), "SELECT COUNT(*) FROM postings WHERE kind='reversal' AND original_id=?",
                 original_id)[0][0]


async def _signed_on(port: int, tid: str = "T0000001", mid: str = "NAMDONG01", *,
                     stan: int = 0) -> tuple[TerminalClient, Terminal]:
    client = await TerminalClient("127.0.0.1", port, DIALECT, response_timeout_ms=2000).connect()
    term = Terminal(tid, mid, stan=stan)
    assert (await client.request(term.sign_on()))["39"] == "00"
    return client, term


async def test_queued_reversals_and_advices_survive_a_switch_kill_and_a_terminal_restart_landing_exactly_once(
        tmp_path):
    data_dir, state_dir = tmp_path / "var", tmp_path / "terminals"
    cards = await provisioned(data_dir)
    pan = cards["namdong"]["pan"]
    switch = SwitchProc(tmp_path, data_dir).start()
    try:
        client, term = await _signed_on(switch.port)
        bought = []
        for amount in (1_000, 2_000, 3_000, 4_000, 5_000, 6_000):
            purchase = term.purchase(pan, amount)
            assert (await client.request(purchase))["39"] == "00"
            bought.append(purchase)
        queue = SafQueue(saf_path(state_dir, "T0000001"), schedule=SafSchedule(repeat_interval_s=2.0))
        owed = [queue.enqueue(term.reversal(p, advice=i >= 3)) for i, p in enumerate(bought)]
        assert [e.mti for e in owed] == ["0400"] * 3 + ["0420"] * 3

        # 1: sent and acknowledged.
        link = ClientLink(client)
        first = queue.next_due()
        secured = link.secure(queue.outgoing(first))
        queue.sending(first.seq, secured)
        assert queue.answered(first.seq, (await link.exchange(secured))["39"]) is Verdict.ACCEPTED
        # 2: sent, processed and stored by the switch, but killed before the terminal read the answer.
        second = queue.next_due()
        queue.sending(second.seq, queue.outgoing(second))
        await client.send_raw(client.encode(queue.outgoing(second)))
        wait_until(lambda: _message(data_dir, "T0000001", second.stan), what="the switch to store the 2nd reversal")
        # 3: sent to a frozen switch: in its socket buffer when it dies, never read.
        switch.signal(signal.SIGSTOP)
        third = queue.next_due()
        queue.sending(third.seq, queue.outgoing(third))
        await client.send_raw(client.encode(queue.outgoing(third)))
        switch.kill()
        await client.close()

        # The terminal restarts too: a new queue object has only the file.
        queue = SafQueue(saf_path(state_dir, "T0000001"), schedule=SafSchedule(repeat_interval_s=2.0))
        assert [(e.seq, e.tries) for e in queue.entries] == [(2, 1), (3, 1), (4, 0), (5, 0), (6, 0)]
        assert [queue.outgoing(e)["t"] for e in queue.entries] == ["0401", "0401", "0420", "0420", "0420"]
        with pytest.raises(OSError):  # the switch is down: nothing can be sent, nothing is lost
            await TerminalClient("127.0.0.1", switch.port, DIALECT).connect()
        assert len(SafQueue(saf_path(state_dir, "T0000001")).entries) == 5

        switch.start()  # same data dir, same port
        client, _ = await _signed_on(switch.port, stan=term.stan)
        done = await forward(queue, ClientLink(client))
        await client.close()
        assert (done.firsts, done.repeats, done.accepted, done.refused, done.unacknowledged) == (3, 2, 5, 0, 0)
        assert [done.answers[e.seq]["t"] for e in owed[1:]] == ["0410", "0410", "0430", "0430", "0430"]
        assert on_disk(saf_path(state_dir, "T0000001"))["entries"] == []

        # Exactly once: one stored message per reversal key, one reversal posting per purchase,
        # every purchase undone in full, the card back where it started.
        assert [_message(data_dir, "T0000001", e.stan) for e in owed] == \
            [[("0400", "00")]] * 3 + [[("0420", "00")]] * 3  # the switch stores a repeat under its original's MTI
        purchases = [p for p in postings(_db(data_dir), "purchase") if p["tid"] == "T0000001"]
        assert [(p["amount"], p["undone"]) for p in purchases] == [(a, a) for a in (1_000, 2_000, 3_000, 4_000,
                                                                                    5_000, 6_000)]
        assert [_reversal_postings(data_dir, p["id"]) for p in purchases] == [1] * 6
        assert card_accounts(_db(data_dir), pan) == (100_000, 0)
        assert verify(locate(data_dir)).ok
    finally:
        switch.stop()
    assert verify_cli(data_dir, tmp_path)["ok"] is True
    # The restarted switch's canonical lines: the 2nd came back as a repeat and got its stored
    # answer (replayed); the 3rd, never read before the kill, was processed as the original.
    repeats = [(line["stan"], line.get("replayed", False)) for line in _switch_lines(data_dir)
               if line.get("mti") == "0401" and line.get("terminal") == "T0000001"]
    assert repeats == [(second.stan, True), (third.stan, False)]


def _switch_lines(data_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (data_dir / "logs" / "switch.jsonl").read_text().splitlines() if line]


def _eum_terminal(tmp_path: Path, port: int, action: str, *args: str,
                  state_dir: bool = True) -> subprocess.CompletedProcess:
    """`eum terminal` run in `tmp_path`; state_dir=False leaves --state-dir to its default."""
    where = ["--state-dir", str(tmp_path / "terminals")] if state_dir else []
    return subprocess.run([*EUM, "terminal", action, "--switch", f"127.0.0.1:{port}", "--tid", "T0000001",
                           "--mid", "NAMDONG01", *where, "--timeout-ms", "2000", *args], cwd=tmp_path,
                          env={**os.environ, "EUM_STORE": ""}, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S)


def test_eum_terminal_reverse_while_the_switch_is_down_is_queued_and_sent_after_the_next_sign_on(tmp_path):
    data_dir = tmp_path / "var"
    pan = asyncio.run(provisioned(data_dir))["namdong"]["pan"]
    switch = SwitchProc(tmp_path, data_dir).start()
    try:
        bought = _eum_terminal(tmp_path, switch.port, "purchase", "--pan", pan, "--amount", "5000", "--json")
        assert bought.returncode == 0 and json.loads(bought.stdout)["39"] == "00", bought.stderr
        switch.kill()

        down = _eum_terminal(tmp_path, switch.port, "reverse")
        assert down.returncode == 2
        assert "ConnectionRefusedError" in down.stderr and "1 message(s) stay queued" in down.stderr
        listed = _eum_terminal(tmp_path, switch.port, "saf", "--json")
        assert listed.returncode == 0 and pan not in listed.stdout
        shown = json.loads(listed.stdout)
        assert shown["refused"] == [] and [(q["mti"], q["tries"], q["card"], q["amount"], q["attention"])
                                           for q in shown["queued"]] == \
            [("0400", 0, pan[:6] + "******" + pan[-4:], 5_000, False)]
        stan = shown["queued"][0]["stan"]

        switch.start()
        signed = _eum_terminal(tmp_path, switch.port, "sign-on")
        assert signed.returncode == 0 and "MTI 0810  response 00" in signed.stdout
        assert "store-and-forward sent 1 new and 0 repeated; 1 acknowledged, 0 refused, 0 still queued" \
            in signed.stderr
        assert json.loads(_eum_terminal(tmp_path, switch.port, "saf", "--json").stdout)["queued"] == []
        assert _message(data_dir, "T0000001", stan) == [("0400", "00")]
        [purchase] = postings(_db(data_dir), "purchase")
        assert (purchase["amount"], purchase["undone"], _reversal_postings(data_dir, purchase["id"])) == \
            (5_000, 5_000, 1)
        assert card_accounts(_db(data_dir), pan) == (100_000, 0)
    finally:
        switch.stop()
    assert verify_cli(data_dir, tmp_path)["ok"] is True


async def test_a_fleet_whose_switch_dies_mid_run_drains_its_owed_reversals_exactly_once_on_the_next_run(tmp_path):
    data_dir, state_dir = tmp_path / "var", tmp_path / "fleet"
    cards = await provisioned(data_dir)
    population = Population.from_dict({"dialect": "default", "terminals": [{"tid": "T0000001", "mid": "NAMDONG01"}],
                                       "cards": [{"pan": c["pan"], "expiry": c["expiry"], "pin": None}
                                                 for c in cards.values()]})
    thousands = Scenario(name="thousands", amount=AmountModel(median_won=1_000, sigma=0.01, round_won=1_000,
                                                                amount_won_min=1_000, amount_won_max=1_000))
    switch = SwitchProc(tmp_path, data_dir).start()

    def config(duration_s: float, timeout_ms: float) -> FleetConfig:
        return FleetConfig(host="127.0.0.1", port=switch.port, population=population, terminals=1, rate_per_s=10.0,
                           duration_s=duration_s, arrivals="constant", scenario=thousands, progress=False,
                           response_timeout_ms=timeout_ms, state_dir=state_dir)

    def queued() -> list[dict]:
        path = saf_path(state_dir, "T0000001")
        return on_disk(path)["entries"] if path.exists() else []

    try:
        run = asyncio.ensure_future(run_fleet(config(4.0, 300.0)))  # a short timeout: reversals come soon
        await eventually(lambda: len(postings(_db(data_dir), "purchase")) >= 5, what="five purchases posted")
        switch.signal(signal.SIGSTOP)  # answers stop: the next purchase times out and is reversed
        await eventually(lambda: any(e["tries"] for e in queued()), what="a reversal on disk and sent")
        switch.kill()
        first = await run
        owed = queued()
        assert first.timeouts >= 1 and first.reversals_sent >= 1
        assert first.reversals_unanswered == len(owed) >= 1

        switch.start()
        second = await run_fleet(config(1.0, 2000.0))  # a long one: each repeat is answered the first time
        assert queued() == []
        assert second.reversals_unanswered == 0 and second.reversals_answered == len(owed)
        assert second.reversals_sent == sum(1 for e in owed if e["tries"] == 0)
        assert second.reversal_repeats_sent == sum(1 for e in owed if e["tries"]) >= 1  # sent before: 0401
        assert second.saf_refused == 0 and second.saf_attention == 0
        purchases = {p["stan"]: p for p in postings(_db(data_dir), "purchase")}
        for e in owed:
            assert _message(data_dir, "T0000001", e["fields"]["11"]) == [(e["fields"]["t"], "00")]
            original_stan = e["fields"]["90"][4:10]
            landed = purchases.get(original_stan)  # it may have reached the switch before it froze
            if landed is not None:
                assert (landed["undone"], _reversal_postings(data_dir, landed["id"])) == (landed["amount"], 1)
        reversed_ = [p for p in purchases.values() if p["undone"]]
        assert [(p["undone"], _reversal_postings(data_dir, p["id"])) for p in reversed_] == \
            [(p["amount"], 1) for p in reversed_]  # none reversed twice, none in part
        assert verify(locate(data_dir)).ok
    finally:
        switch.stop()


def _counter(ksn: str) -> int:
    """A TDES KSN's transaction counter: its 21 low bits (ANSI X9.24-1)."""
    return int(ksn, 16) & 0x1FFFFF


async def test_a_secured_reversal_is_repeated_under_a_new_ksn_with_a_fresh_mac_and_lands_once(tmp_path):
    """DUKPT-TDES against a switch that checks every MAC through hsm_mock: the 0400's answer
    is lost with the connection; the restarted terminal repeats it as 0401 under the next KSN
    (a stored message carries no PIN block, so nothing binds it to its first send's), MAC'd
    afresh, and gets the stored answer, MAC'd for the repeat's KSN."""
    hsm = HsmServer(HsmServiceConfig(port=0))
    await hsm.start()
    hsm_cfg = HsmConfig(endpoints=(("127.0.0.1", hsm.port),), call_timeout_ms=1000, health_interval_s=0.5)
    path = saf_path(tmp_path / "terminals", "T0000001")
    try:
        async with start_switch(tmp_path / "var", clock=FixedClock(LAUNCH), hsm=hsm_cfg) as env:
            await env.op("merchant-add", mid="NAMDONG01", name="Namdong Cafe", district="namdong",
                         annual_sales=250_000_000)
            added = await env.op("terminal-add", tid="T0000001", mid="NAMDONG01", security="dukpt-tdes", keys="test")
            card = await env.op("card-issue", program="namdong")
            await env.op("card-charge", pan=card["pan"], amount=100_000)
            security = TerminalSecurity.for_test_keys("dukpt-tdes", added["ksn"])
            client = await TerminalClient("127.0.0.1", env.port, DIALECT, security=security).connect()
            term = Terminal("T0000001", "NAMDONG01")
            assert (await client.request(term.sign_on()))["39"] == "00"
            purchase = term.purchase(card["pan"], 20_000)
            assert (await client.request(purchase))["39"] == "00" and client.last_response_mac_ok is True

            queue = SafQueue(path)
            e = queue.enqueue(term.reversal(purchase))
            secured = ClientLink(client).secure(queue.outgoing(e))
            queue.sending(e.seq, secured)
            _, payload = client.secure(secured)
            await client.send_raw(frame(DIALECT.framing, payload))
            db = env.data_dir / "ledger.sqlite3"
            await eventually(lambda: postings(db, "reversal"), what="the reversal posted")
            await client.close()  # its 0410 is never read
            queue.answered(e.seq, None)

            restarted = TerminalSecurity.from_state(security.to_state())  # the terminal's next power-on
            client = await TerminalClient("127.0.0.1", env.port, DIALECT, security=restarted).connect()
            assert (await client.request(term.sign_on()))["39"] == "00"
            link = ClientLink(client)
            done = await forward(SafQueue(path), link)
            await client.close()
            assert (done.firsts, done.repeats, done.accepted) == (0, 1, 1)
            repeat = link.sent[e.stan]
            assert (repeat["t"], done.answers[e.seq]["39"]) == ("0401", "00")
            assert repeat["53"][:-5] == secured["53"][:-5] and _counter(repeat["53"]) == _counter(secured["53"]) + 1
            assert link.mac_ok[e.stan] is True  # the stored 0410, MAC'd under the repeat's KSN
            assert [(p["undone"], _reversal_postings(env.data_dir, p["id"])) for p in postings(db, "purchase")] == \
                [(20_000, 1)]
            assert on_disk(path)["entries"] == []
            assert verify(env.core.db_path).ok
    finally:
        await hsm.stop()


async def test_a_reversal_lost_before_a_switch_restart_is_not_refused_by_the_ksn_floor(tmp_path):
    """The 0400 never reached the switch (its first try recorded, the line down); the terminal
    then bought with a higher KSN counter, and the switch restarted, keeping only its highest
    accepted counter as the floor (docs/host-interface.md, "KSN counters"). The queued repeat
    takes a new KSN above that floor: processed, 00, the purchase reversed once. Under its first
    send's KSN it would be 63, a final code, and the reversal filed as refused."""
    hsm = HsmServer(HsmServiceConfig(port=0))
    await hsm.start()
    hsm_cfg = HsmConfig(endpoints=(("127.0.0.1", hsm.port),), call_timeout_ms=1000, health_interval_s=0.5)
    path = saf_path(tmp_path / "terminals", "T0000001")
    data = tmp_path / "var"
    try:
        async with start_switch(data, clock=FixedClock(LAUNCH), hsm=hsm_cfg) as env:
            await env.op("merchant-add", mid="NAMDONG01", name="Namdong Cafe", district="namdong",
                         annual_sales=250_000_000)
            added = await env.op("terminal-add", tid="T0000001", mid="NAMDONG01", security="dukpt-tdes", keys="test")
            card = await env.op("card-issue", program="namdong")
            await env.op("card-charge", pan=card["pan"], amount=100_000)
            security = TerminalSecurity.for_test_keys("dukpt-tdes", added["ksn"])
            client = await TerminalClient("127.0.0.1", env.port, DIALECT, security=security).connect()
            term = Terminal("T0000001", "NAMDONG01")
            assert (await client.request(term.sign_on()))["39"] == "00"
            purchase = term.purchase(card["pan"], 20_000)
            assert (await client.request(purchase))["39"] == "00"
            queue = SafQueue(path)
            e = queue.enqueue(term.reversal(purchase))
            first = ClientLink(client).secure(queue.outgoing(e))
            queue.sending(e.seq, first)  # recorded as tried; it never left (the line was down)
            queue.answered(e.seq, None)
            assert (await client.request(term.purchase(card["pan"], 1_000)))["39"] == "00"  # a higher counter
            await client.close()
        async with start_switch(data, clock=FixedClock(LAUNCH), hsm=hsm_cfg) as env:
            client = await TerminalClient("127.0.0.1", env.port, DIALECT, security=security).connect()
            assert (await client.request(term.sign_on()))["39"] == "00"
            link = ClientLink(client)
            done = await forward(SafQueue(path), link)
            await client.close()
            assert (done.repeats, done.accepted, done.refused) == (1, 1, 0)
            assert _counter(link.sent[e.stan]["53"]) > _counter(first["53"]) + 1
            db = env.data_dir / "ledger.sqlite3"
            assert [p["undone"] for p in postings(db, "purchase")] == [20_000, 0]
            assert verify(env.core.db_path).ok
    finally:
        await hsm.stop()
