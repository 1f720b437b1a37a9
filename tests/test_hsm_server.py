"""The HSM over real TCP on loopback: framing, header and trailer echo, pipelining, many
clients, partial reads, bad lengths, latency, the calls-per-second cap, each fault, the audit
log, and `eum hsm` as a separate process.

The server runs in the test's event loop (HsmServer is what `eum hsm` runs); faults use a
fixed seed, and `FaultPlan` with the same seed predicts exactly which commands meet them.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import io
import json
import os
import signal
import subprocess
import struct
import sys
import termios
import time
from pathlib import Path

import pytest

from hsm_mock import compiled as hsm_compiled
from hsm_mock import crypto, lmk, pinblock
from hsm_mock.audit import AuditLog
from hsm_mock.cli import add_hsm_parser, config_from_args, run_hsm
from hsm_mock.config import HsmConfig, build_config
from hsm_mock.crypto import tdes_ecb_encrypt, to_hex
from hsm_mock.service import Fault, FaultPlan, HsmServer, TokenBucket
from switch.compiled import status as compiled_status
from waiting import eventually

ND = b"ND007B44AC1DDEE2A94B1500-0023"
CVK = "U9B4934384B19946B040CD702B4D58145"
TPK = "0406FBB23A5214DF"
ZPK = "BAB32D775A38E4AB"
BDK = "U8E3D3E2FD5919657F05A1AA90D32A014"
ZPK_G0 = "U9D961F6AF1D24B38AB37B320022FF57D"


def framed(payload: bytes) -> bytes:
    return len(payload).to_bytes(2, "big") + payload


def unread_bytes(sock) -> int:
    """Bytes the kernel holds for this socket that its owner has not read yet (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, payload: bytes) -> None:
        self.writer.write(framed(payload))

    async def recv(self, timeout: float = 2.0) -> bytes:
        async def read() -> bytes:
            n = int.from_bytes(await self.reader.readexactly(2), "big")
            return await self.reader.readexactly(n)

        return await asyncio.wait_for(read(), timeout)

    async def call(self, payload: bytes, timeout: float = 2.0) -> bytes:
        self.send(payload)
        await self.writer.drain()
        return await self.recv(timeout)

    async def closed_by_peer(self, timeout: float = 2.0) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), timeout) == b""
        except ConnectionError:
            return True

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def serve(**kw) -> HsmServer:
    return HsmServer(HsmConfig(port=0, **kw))


# ============================================================================ framing


async def test_header_is_echoed_and_trailer_too() -> None:
    async with serve() as hsm:
        c = await Client.connect(hsm.port)
        assert await c.call(b"HEADNC") == b"HEAD" + ND
        assert await c.call(b"\x00\xffZ9NC\x19my trailer") == b"\x00\xffZ9" + ND + b"\x19my trailer"
        assert await c.call(b"0001CW" + CVK.encode() + b"4123456789012345;8701101") == b"0001CX00561"
        await c.close()


async def test_other_header_length() -> None:
    async with serve(header_length=8) as hsm:
        c = await Client.connect(hsm.port)
        assert await c.call(b"ABCDEFGHNC") == b"ABCDEFGH" + ND
        await c.close()


async def test_fifty_pipelined_commands_are_matched_by_header() -> None:
    async with serve() as hsm:
        c = await Client.connect(hsm.port)
        expected = {}
        burst = b""
        for i in range(50):
            header = f"{i:04d}".encode()
            kind = i % 3
            if kind == 0:
                payload, answer = b"NC", ND
            elif kind == 1:
                data = f"echo {i}".encode()
                payload, answer = b"B2" + f"{len(data):04X}".encode() + data, b"B300" + data
            else:
                payload, answer = b"CW" + CVK.encode() + b"4123456789012345;8701101", b"CX00561"
            expected[header] = header + answer
            burst += framed(header + payload)
        c.writer.write(burst)  # back to back, one write
        await c.writer.drain()
        got = {}
        for _ in range(50):
            response = await c.recv()
            got[response[:4]] = response
        assert got == expected
        await c.close()


async def test_a_slow_command_does_not_hold_up_a_fast_one() -> None:
    async with serve(command_latency_ms=(("B2", 300.0),)) as hsm:
        c = await Client.connect(hsm.port)
        c.send(b"SLOWB20002hi")
        c.send(b"FASTNC")
        await c.writer.drain()
        assert await c.recv() == b"FAST" + ND
        assert await c.recv() == b"SLOWB300hi"
        await c.close()


async def test_many_clients_at_once() -> None:
    async with serve() as hsm:

        async def one(n: int) -> list[bytes]:
            c = await Client.connect(hsm.port)
            out = [await c.call(f"C{n:03d}".encode() + b"NC") for _ in range(10)]
            await c.close()
            return out

        results = await asyncio.gather(*(one(n) for n in range(25)))
        for n, answers in enumerate(results):
            assert answers == [f"C{n:03d}".encode() + ND] * 10


async def test_partial_reads_byte_by_byte() -> None:
    async with serve() as hsm:
        c = await Client.connect(hsm.port)
        (conn,) = await eventually(lambda: list(hsm._connections), what="the HSM to accept the connection")
        server_socket = conn.writer.get_extra_info("socket")
        data = framed(b"SLOWNC") + framed(b"0002B20003abc")
        for i in range(len(data)):  # each byte read by the HSM on its own before the next is sent
            c.writer.write(data[i : i + 1])
            await c.writer.drain()
            await eventually(lambda: unread_bytes(server_socket) == 0, what=f"the HSM to read byte {i + 1}")
        assert await c.recv() == b"SLOW" + ND
        assert await c.recv() == b"0002B300abc"
        await c.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x00",  # zero length
        b"\xff\xffNC",  # above frame_size_max
        framed(b"AB"),  # shorter than header + command code
    ],
)
async def test_unparseable_frames_close_the_connection(raw: bytes) -> None:
    async with serve(frame_size_max=4096) as hsm:
        c = await Client.connect(hsm.port)
        c.writer.write(raw)
        await c.writer.drain()
        assert await c.closed_by_peer()
        # The server is fine: a new connection is served.
        c2 = await Client.connect(hsm.port)
        assert await c2.call(b"HEADNC") == b"HEAD" + ND
        await c2.close()


async def test_parseable_frames_with_bad_fields_are_answered_15() -> None:
    async with serve() as hsm:
        c = await Client.connect(hsm.port)
        assert await c.call(b"0001NCX") == b"0001ND15"
        assert await c.call(b"0002CA" + TPK.encode() + ZPK.encode() + b"12AE7A708F877571A901015500") == b"0002CB15"
        assert await c.call(b"0003XX") == b"0003XY68"
        assert await c.call(b"0004NC") == b"0004" + ND  # the connection stays usable
        await c.close()


# ============================================================================ operations


async def test_latency_option() -> None:
    # every command waits 120 ms before its answer, but B2 (0 ms by command_latency_ms): sent
    # after NC on the same connection, B2 is answered first, and NC's audit line counts its wait
    audit = io.StringIO()
    async with HsmServer(HsmConfig(port=0, latency_ms=120.0, command_latency_ms=(("B2", 0.0),)),
                         audit=AuditLog(stream=audit)) as hsm:
        c = await Client.connect(hsm.port)
        c.send(b"0000NC")
        c.send(b"0001B20003abc")
        await c.writer.drain()
        assert [await c.recv(), await c.recv()] == [b"0001B300abc", b"0000" + ND]
        await c.close()
    records = [json.loads(line) for line in audit.getvalue().splitlines()]
    assert [(r["header"], r["command"], r["queue_ms"]) for r in records] == [("0001", "B2", 0.0), ("0000", "NC", 0.0)]


def test_token_bucket_reservations() -> None:
    bucket = TokenBucket(10.0, 2, now=100.0)
    assert [bucket.reserve(100.0) for _ in range(4)] == [0.0, 0.0, pytest.approx(0.1), pytest.approx(0.2)]
    assert bucket.reserve(100.5) == 0.0  # refilled: 0.5 s × 10/s − 2 reserved, capped at 2
    bucket.refund()
    assert bucket.tokens == pytest.approx(2.0)


async def test_cps_cap_queues_commands() -> None:
    audit = io.StringIO()
    async with HsmServer(HsmConfig(port=0, cps_max=10.0, cps_burst=1), audit=AuditLog(stream=audit)) as hsm:
        c = await Client.connect(hsm.port)
        for i in range(5):
            c.send(f"{i:04d}NC".encode())
        await c.writer.drain()
        answers = [await c.recv() for _ in range(5)]
        # 1 token at once, then one per 100 ms: answered in arrival order, none refused
        assert answers == [f"{i:04d}".encode() + ND for i in range(5)]
        assert hsm.counts["overload"] == 0
        await c.close()
    # the first had its token at once; each of the others waited for a token after the one
    # before it (the waits are the bucket's reservations: 100, 200, 300, 400 ms less the time
    # the frames took to arrive)
    waits = [json.loads(line)["queue_ms"] for line in audit.getvalue().splitlines()]
    assert waits[0] == 0.0 and 0 < waits[1] and all(a < b for a, b in zip(waits[1:], waits[2:])), waits


async def test_cps_cap_refuses_with_67_beyond_the_queue_bound_and_timeout() -> None:
    async with serve(cps_max=10.0, cps_burst=1, queue_size_max=2) as hsm:
        c = await Client.connect(hsm.port)
        for i in range(5):
            c.send(f"{i:04d}NC".encode())
        await c.writer.drain()
        answers = {r[:4]: r[4:] for r in [await c.recv() for _ in range(5)]}
        assert [answers[f"{i:04d}".encode()] for i in range(5)] == [ND, ND, ND, b"ND67", b"ND67"]
        assert hsm.counts["overload"] == 2
        await c.close()
    async with serve(cps_max=10.0, cps_burst=1, queue_timeout_ms=150.0) as hsm:
        c = await Client.connect(hsm.port)
        for i in range(3):
            c.send(f"{i:04d}NC".encode())
        await c.writer.drain()
        answers = {r[:4]: r[4:] for r in [await c.recv() for _ in range(3)]}
        assert [answers[f"{i:04d}".encode()] for i in range(3)] == [ND, ND, b"ND67"]  # 3rd would wait 200 ms
        await c.close()


def test_fault_plan_is_repeatable() -> None:
    plan1, plan2 = FaultPlan(hang=0.2, drop=0.1, error=0.3, seed=5), FaultPlan(hang=0.2, drop=0.1, error=0.3, seed=5)
    seq = [plan1.decide() for _ in range(200)]
    assert seq == [plan2.decide() for _ in range(200)]
    assert all(seq.count(f) > 0 for f in Fault)  # all four outcomes occur
    assert FaultPlan().decide() is Fault.NONE


async def test_fault_hang_leaves_exactly_the_predicted_commands_unanswered() -> None:
    plan = FaultPlan(hang=0.4, seed=7)
    predicted = [plan.decide() for _ in range(20)]
    async with serve(fault_hang_share=0.4, fault_seed=7) as hsm:
        c = await Client.connect(hsm.port)
        for i in range(20):
            c.send(f"{i:04d}NC".encode())
        await c.writer.drain()
        answered = set()
        with pytest.raises(TimeoutError):
            while True:
                answered.add((await c.recv(timeout=0.4))[:4])  # the client's timeout ends the wait
        assert answered == {f"{i:04d}".encode() for i, f in enumerate(predicted) if f is Fault.NONE}
        assert 0 < len(answered) < 20 and hsm.counts["hang"] == 20 - len(answered)
        await c.close()


async def test_fault_drop_closes_the_connection_at_the_predicted_commands() -> None:
    plan = FaultPlan(drop=0.3, seed=3)
    predicted = [i for i in range(12) if plan.decide() is Fault.DROP]
    async with serve(fault_drop_share=0.3, fault_seed=3) as hsm:
        dropped = []
        c = await Client.connect(hsm.port)
        for i in range(12):
            c.send(f"{i:04d}NC".encode())
            await c.writer.drain()
            try:
                assert await c.recv() == f"{i:04d}".encode() + ND
            except asyncio.IncompleteReadError:
                dropped.append(i)
                await c.close()
                c = await Client.connect(hsm.port)
        await c.close()
        assert dropped == predicted and predicted


async def test_fault_error_answers_the_predicted_share_with_the_code() -> None:
    plan = FaultPlan(error=0.25, seed=11)
    predicted = [plan.decide() for _ in range(40)]
    async with serve(fault_error_share=0.25, fault_error_code="17", fault_seed=11) as hsm:
        c = await Client.connect(hsm.port)
        for i in range(40):
            c.send(f"{i:04d}NC".encode())
        await c.writer.drain()
        answers = {r[:4]: r[4:] for r in [await c.recv() for _ in range(40)]}
        for i, fault in enumerate(predicted):
            assert answers[f"{i:04d}".encode()] == (b"ND17" if fault is Fault.ERROR else ND)
        assert hsm.counts["error"] == predicted.count(Fault.ERROR) > 0
        await c.close()


# ============================================================================ audit log


async def test_audit_log_has_one_line_per_command_and_no_secrets(tmp_path: Path) -> None:
    account, pan = "401234567890", "4012345678909"
    clear_tpk = lmk.decrypt_key_under_lmk(TPK, "002")
    block = to_hex(tdes_ecb_encrypt(clear_tpk, pinblock.encode_iso0("1234", account=account)))
    commands = [
        b"0001NC",
        b"0002CA" + (TPK + ZPK + "12" + block + "0101" + account).encode(),
        b"0003G0" + (BDK + ZPK_G0 + "605FFFF9876543210E000011B9C1845EB993A7A0101" + account).encode(),
        b"0004CW" + CVK.encode() + b"4123456789012345;8701101",
        b"0005BA" + b"1234" + account.encode(),
        b"0006CA" + (TPK + ZPK + "12" + block + "0102" + account).encode(),  # error 23
    ]
    config = HsmConfig(port=0, log_dir=tmp_path)
    server = HsmServer(config)
    async with server as hsm:
        c = await Client.connect(hsm.port)
        answers = [await c.call(cmd) for cmd in commands]
        await c.close()
    server.audit.close()
    assert [a[6:8] for a in answers] == [b"00", b"00", b"00", b"00", b"00", b"23"]
    text = (tmp_path / "hsm-audit.jsonl").read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["command"] for line in lines] == ["NC", "CA", "G0", "CW", "BA", "CA"]
    assert all(line["event"] == "hsm_command" and "ts" in line and line["latency_ms"] >= 0 for line in lines)
    assert lines[1]["kcv"] == {"source": "0035BB", "destination": "73936E"} and lines[1]["error"] == "00"
    assert lines[2]["kcv"]["bdk"] == "08D7B4" and lines[3]["kcv"] == {"cvk": "08D7B4"}
    assert lines[5]["error"] == "23" and lines[5]["response"] == "CB"
    secrets = [pan, account, "4123456789012345", "1234", block, "1B9C1845EB993A7A", answers[1][10:26].decode(),
               answers[4][8:].decode(), to_hex(clear_tpk), "0123456789ABCDEFFEDCBA9876543210",
               "FFFF9876543210E00001", "E98FFDA17099AF55"]  # fmt: skip
    for secret in secrets:
        assert secret not in text, "audit log leaks a secret"


def test_audit_scrubber_masks_pan_like_digits_and_drops_secret_keys(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "a.jsonl")
    audit.record(command="XX", header="4123456789012345", pin="1234", kcv={"zpk": "ABCDEF", "key": "0123456789ABCDEF"}, note="pan 4999988887777")
    audit.close()
    line = json.loads((tmp_path / "a.jsonl").read_text())
    assert line["header"] == "412345******2345" and "pin" not in line and line["kcv"] == {"zpk": "ABCDEF"}
    assert line["note"] == "pan 499998***7777"


# ============================================================================ CLI and process


def test_cli_flags_override_the_config_file(tmp_path: Path) -> None:
    toml = tmp_path / "hsm.toml"
    toml.write_text(
        '[hsm]\nlisten = "127.0.0.1:1600"\nlatency_ms = 5.0\ncps_max = 100\ndisabled_commands = ["a0"]\n'
        "[hsm.command_latency_ms]\nA0 = 25.0\n[hsm.faults]\nhang = 0.1\nerror = \"68:0.2\"\nseed = 9\n",
        encoding="utf-8",
    )
    parser = argparse.ArgumentParser(prog="eum")
    add_hsm_parser(parser.add_subparsers(dest="command"), run_hsm)
    args = parser.parse_args(["hsm", "--config", str(toml), "--latency-ms", "1", "--fault-drop", "0.05",
                              "--log-dir", str(tmp_path)])  # fmt: skip
    assert args.func is run_hsm
    config = config_from_args(args)
    assert (config.host, config.port, config.latency_ms, config.cps_max) == ("127.0.0.1", 1600, 1.0, 100)
    assert config.latency_s("A0") == 0.025 and config.latency_s("NC") == 0.001
    assert (config.fault_hang_share, config.fault_drop_share, config.fault_error_code) == (0.1, 0.05, "68")
    assert config.fault_seed == 9 and config.disabled_commands == frozenset({"A0"})
    assert config.audit_path == tmp_path / "hsm-audit.jsonl"
    with pytest.raises(ValueError):
        build_config(fault_hang_share=0.7, fault_drop_share=0.5)


def test_eum_hsm_runs_as_a_separate_process_and_answers_nc(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hsm_mock.cli", "--listen", "127.0.0.1:0", "--log-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        port = None
        deadline = time.monotonic() + 15
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            event = json.loads(line)
            if event.get("event") == "hsm_listening":
                port = event["port"]
        assert port, "eum hsm did not report its port"
        assert event["test_lmk"] is True and event["lmk_check_value"] == "7B44AC1DDEE2A94B"
        assert event["des"] == ("c" if crypto.DES_COMPILED else "py")  # the build this test process loaded too
        hsm_modules = compiled_status(hsm_compiled.MODULES)  # and its compiled command modules, N/M
        assert event["compiled"] == f"{sum(hsm_modules.values())}/{len(hsm_compiled.MODULES)}"

        async def nc() -> bytes:
            c = await Client.connect(port)
            answer = await c.call(b"PROCNC")
            await c.close()
            return answer

        assert asyncio.run(nc()) == b"PROC" + ND
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    assert proc.returncode == 0, proc.stderr.read()
    audit = [json.loads(line) for line in (tmp_path / "hsm-audit.jsonl").read_text().splitlines()]
    assert [(a["command"], a["error"]) for a in audit] == [("NC", "00")]
    # once listening, before its first command, it froze what start loaded (switch/wire/transport.py freeze_heap)
    later = [json.loads(line) for line in proc.stdout.read().splitlines() if line.startswith("{")]
    [settled] = [e for e in later if e.get("event") == "heap_settled"]
    assert settled["gc_threshold"] == [7000, 10, 10] and settled["frozen"] > 10_000
