"""The switch's cost in instructions per purchase, counted by valgrind: a figure that does
not move with the machine's load, so a lever of 1 % can be told from none.

    python benchmarks/instructions.py [--base REV ...] [--scenario plain|standard|terminal|hsm] [--messages 2000]
                                      [--functions K] [--de7-step-us 0] [--out-dir DIR]

core_bench.py's in-process plain path (security `none`, no HSM, 32 in flight, group commit,
uvloop as `eum switch` runs it) under `valgrind --tool=callgrind`: a warm-up pass of
`--messages` purchases puts every card in the hot state, the heap is frozen as `eum switch`
freezes it once started, the next pass's frames are built, and then that pass is counted
alone: callgrind dumps its counts at an `os.getppid()` just before the pass and again just
after it (`--dump-before=getppid`), so start-up, seeding, the load's own frames, shutdown and
the ledger's verification are outside the count. The figure is the counted pass's
instructions divided by its purchases, for the whole process (the event loop's thread, the
writer's, the log's), split by the shared object they ran in (libpython, SQLite, the
compiled modules, libc, …); `--functions K` lists the K C functions costing most.

What the count leaves out, so read it beside core_bench.py's CPU time, not instead of it:
- the kernel's work (system calls: the WAL's writes, fsync) and waits: instructions in user
  space only;
- the cost of an instruction: cache misses and branch mispredictions weigh nothing here, so
  a lever that saves memory traffic can save more time than its count says;
- the balances' fold (every quarter second of wall time, switch/ledger/sqlite.py): under
  valgrind, ≈ 50 times slower, it would run once per few dozen purchases instead of several
  hundred, so the counted runs fold only at start (`WriterConnection.fold_every_s` is set
  out of reach); benchmarks/fold_time.py measures the fold.
Python frames are not named: the interpreter's own functions are (`_PyEval_EvalFrameDefault`,
`_PyObject_Malloc`, …), and so are a compiled module's (`CPyDef_codec____fast_encode`).
Each purchase runs in a task of its own, as the server runs each frame (the load's
`asyncio.gather`: its task, semaphore and coroutine are in the count, ≈ the server's glue).
The group commit's groups are as large as natively (≈ 27 purchases against ≈ 28 here
without valgrind: the group waits for decided purchases, `expect`, not for the clock alone);
the figure of each run says (`units_per_group`).
The count repeats to within 0.25 % (the same tree read 1,033,415 to 1,034,194 instructions a
purchase in four runs; the event loop's turns and the group commit's groups follow the
threads' timing), so one run per tree tells a lever of 0.5 %, and trees may run side by side
(`--jobs`): the count does not depend on the machine's load.
With --base, each REV is checked out into a temporary git worktree (benchmarks/ab.py
`worktree`, compiled build included) and seeded with its own schema. Writes
<out-dir>/<date>-<host>-instructions.json.

`--scenario terminal`: no switch, the fleet's own security work a transaction (the figure
`fleet.cpu_us_per_tx` holds besides its sockets): 200 DUKPT-TDES terminals in turn, the next
KSN and its keys from the key registers, a PIN block on 1 in 4, the request MAC and the check
of a response MAC, as benchmarks/micro.py's `terminal.transaction_us` times it; every request
MAC is checked afterwards against the host's derivation (hsm_mock.dukpt). "a purchase" reads
"a transaction" there.

`--scenario hsm`: no switch, the HSM's own work an authorisation (the figure
`hsm.cpu_us_per_auth` holds besides its transport): the commands the switch sends for each
(GW verify, 1 in 4 G0 + EC, GW generate) answered by `Hsm.handle` with its key caches on,
built by benchmarks/micro.py's HSM_AUTH_SETUP (as `--hsm-auth-mix` times them); every answer
must be 00. "a purchase" reads "an authorisation" there.

`--scenario standard`: the bench's standard scenario instead of the plain path (the key
`switch.cpu_us_per_auth`): DUKPT-TDES terminals, a MAC on every purchase and a PIN on 1 in
4 (one GQ, the request MAC and the PIN, and one GW for the response MAC, through a real
`eum hsm` process of this tree: not counted, it runs outside valgrind). The ledger is seeded
by each tree with `--security dukpt-tdes --pin-cards 5000` against that HSM; every answer
must be 00 with a response MAC the terminal verifies. The switch's HSM timeouts are raised
to a minute and its health checks put off (a switch under valgrind runs ≈ 50 times slower,
so replies wait in its socket longer than the 300 ms a call is given natively).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.core_bench import DE7_STEP_HELP, DRIVE, RUN_UVLOOP, SETUP  # noqa: E402
from benchmarks.micro import HSM_AUTH_SETUP  # noqa: E402

# The counted pass of both scenarios, in the body of MEASURE's `async with` (after the warm-up):
# the heap frozen as `eum switch` freezes it once started, the pass's frames built (the load's
# own work, before the count starts), then the pass counted alone between two dumps.
COUNTED = r"""        try:  # as `eum switch` does once started, before it serves
            from switch.wire.transport import freeze_heap
            freeze_heap()
        except ImportError:
            pass
        batch = frames(counted, 0)  # the load's own work, before the count starts
        writer = core.engine.writer
        groups, units = writer.batches, writer.units
        os.getppid()  # callgrind dumps here (--dump-before=getppid): the count starts from zero
        answers = await drive(batch)
        os.getppid()  # and dumps again: the second dump is the counted pass alone
        groups, units = writer.batches - groups, writer.units - units
"""

# Runs inside the tree being measured (PYTHONPATH = that tree), under valgrind: core_bench.py's
# set-up and load (SETUP, DRIVE), then the warm-up, the counted pass between two dumps, the checks.
MEASURE = r"""
import asyncio, json, os, shutil, sys, tempfile
from pathlib import Path
counted, concurrency, template = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
from switch.clock import FixedClock
from switch.ops.runtime import open_core
from switch.authorize.server import Processor
from switch.wire.codec import encode_fields, load_dialect
from switch.wire.framing import Frame
from switch.ledger.audit import verify
from terminal_sim.terminal import Terminal
from datetime import datetime
import switch.ledger.sqlite as ledger_sqlite
if hasattr(ledger_sqlite, "WriterConnection"):  # the fold runs at start only (instructions.py)
    ledger_sqlite.WriterConnection.fold_every_s = 1e9

async def main():
""" + SETUP + DRIVE + r"""        await drive(frames(counted, 0))  # every card of the counted pass in the hot state
""" + COUNTED + r"""    logs.flush()
    from switch.wire.codec import decode_fields
    codes = sorted({decode_fields(a[2:], dialect)["39"] for a in answers})
    ok = verify(work / "var" / "ledger.sqlite3").ok
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"codes": codes, "verified": ok, "groups": groups, "units": units}))

""" + RUN_UVLOOP

# The standard scenario (--scenario standard): as MEASURE, with secured terminals and the HSM
# at the port given as the fourth argument. Each request is built, secured (KSN, PIN block on
# 1 in 4, MAC) and encoded before the count; each answer's MAC is checked after it.
MEASURE_STANDARD = r"""
import asyncio, json, os, shutil, sys, tempfile
from datetime import datetime, timedelta
from pathlib import Path
counted, concurrency, template, hsm_port = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
from switch.authorize.hsm_client import HsmConfig, parse_endpoints
from switch.authorize.server import Processor
from switch.clock import FixedClock
from switch.ledger.audit import verify
from switch.ops.runtime import open_core
from switch.wire.codec import decode_fields, encode_fields, load_dialect
from switch.wire.framing import Frame
from terminal_sim.security import TerminalSecurity
from terminal_sim.terminal import Terminal
import switch.ledger.sqlite as ledger_sqlite
if hasattr(ledger_sqlite, "WriterConnection"):  # the fold runs at start only (instructions.py)
    ledger_sqlite.WriterConnection.fold_every_s = 1e9

async def main():
    work = Path(tempfile.mkdtemp(prefix="eum-instr-std-"))
    shutil.copytree(template / "var", work / "var")
    population = json.loads((template / "pop.json").read_text())
    now = datetime.fromisoformat("2025-10-15T12:00:00+09:00")
    de7_step_us = int(os.environ.get("EUM_BENCH_DE7_STEP_US", "0"))
    sent = [now]
    dialect = load_dialect("default")
    from switch.ops import logs
    logs.configure(data_dir=work / "var", name="switch", stream=open(work / "stdout.log", "w"), json_output=True,
                   queued=True)
    hsm = HsmConfig(endpoints=parse_endpoints(f"127.0.0.1:{hsm_port}"), pin_verify="gq",
                    call_timeout_ms=60_000.0, connect_timeout_ms=60_000.0, health_interval_s=3600.0)
    async with open_core(work / "var", clock=FixedClock(now), hsm=hsm) as core:
        proc = Processor(core.engine, dialect)
        terminals = [(Terminal(t["tid"], t["mid"], now=lambda: sent[0]),
                      TerminalSecurity.for_test_keys(t["security"], t["ksn"])) for t in population["terminals"]]
        with_pin = [(c["pan"], c["pin"]) for c in population["cards"] if c.get("pin")]
        without = [(c["pan"], None) for c in population["cards"] if not c.get("pin")]
        cards = []  # a PIN on 1 in 4, as the standard scenario
        for i in range(min(len(with_pin), len(without) // 3)):
            cards += [with_pin[i], without[3 * i], without[3 * i + 1], without[3 * i + 2]]
        for t, _ in terminals:
            await proc.process(Frame(encode_fields(t.sign_on(), dialect)), "bench")
        built = [0]
        def frames(n, offset):
            out = []
            for i in range(n):
                sent[0] = now + timedelta(microseconds=de7_step_us * built[0])
                built[0] += 1
                t, sec = terminals[i % len(terminals)]
                pan, pin = cards[(offset + i) % len(cards)]
                fields = sec.protect(t.purchase(pan, 1_000), pin=pin, pan=pan)
                out.append((Frame(sec.sign(encode_fields(fields, dialect), ksn=fields["53"])), sec, fields["53"]))
            return out
        async def drive(batch):
            sem = asyncio.Semaphore(concurrency)
            async def one(item):
                async with sem:
                    return await proc.process(item[0], "bench")
            return await asyncio.gather(*(one(item) for item in batch))
        await drive(frames(counted, 0))  # every card of the counted pass in the hot state
""" + COUNTED + r"""        macs = sum(1 for a, (_, sec, ksn) in zip(answers, batch) if sec.verify_response(a[2:], ksn=ksn))
    logs.flush()
    codes = sorted({decode_fields(a[2:], dialect)["39"] for a in answers})
    ok = verify(work / "var" / "ledger.sqlite3").ok and macs == len(answers)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"codes": codes, "verified": ok, "groups": groups, "units": units, "macs_verified": macs}))

""" + RUN_UVLOOP
# --scenario terminal: the terminal side of one transaction of the standard scenario (the
# fleet's security work, as benchmarks/micro.py's `terminal.transaction_us` times it): 200
# DUKPT-TDES terminals under the test BDK in turn, each transaction the next KSN and its keys
# from the key registers, a PIN block on 1 in 4, the request MAC of a 140-byte message and
# the check of a response MAC (False here; its work the same). After the counted pass, every
# request's MAC is checked against the host's own derivation (hsm_mock.dukpt from the initial
# key, hsm_mock.crypto's X9.19 MAC): a count of terminals that sign wrongly is no figure.
MEASURE_TERMINAL = r"""
import json, os, sys
counted = int(sys.argv[1])
from hsm_mock import crypto, dukpt
from switch.authorize.security import initial_ksn
from terminal_sim.security import TerminalSecurity
signed = b"0200" + bytes(range(128)) + bytes(8)
terms = [TerminalSecurity.for_test_keys("dukpt-tdes", initial_ksn("dukpt-tdes", d)) for d in range(1, 201)]
def transact(i):
    t = terms[i % len(terms)]
    req = t.protect({"t": "0200", "2": "9410100000002345"}, pin="1234" if i % 4 == 0 else None,
                    pan="9410100000002345")
    out = t.sign(signed, ksn=req["53"])
    t.verify_response(out, ksn=req["53"])
    return t, req["53"], out
for i in range(2 * len(terms)):  # warm: every terminal's key registers loaded
    transact(i)
os.getppid()  # callgrind dumps here (--dump-before=getppid): the count starts from zero
done = [transact(i) for i in range(counted)]
os.getppid()  # and dumps again: the second dump is the counted pass alone
good = sum(1 for t, ksn, out in done
           if crypto.mac_iso9797_alg3(dukpt.tdes_mac_request_key(dukpt.tdes_derive_key(t._initial_key, ksn)),
                                      out[:-8]) == out[-8:])
print(json.dumps({"codes": ["00"], "verified": good == counted, "groups": 1, "units": counted, "macs_verified": good}))
"""
# --scenario hsm: the HSM's work per authorisation of the standard scenario, in process (no
# transport; benchmarks/micro.py's HSM_AUTH_SETUP: the commands the switch sends for each,
# `Hsm.handle` with its key caches on), one block of `counted` authorisations counted; every
# answer must be 00 (run() stops at any other).
MEASURE_HSM = HSM_AUTH_SETUP + r"""
import os
counted = rounds * block
part = auths[pos:pos + counted]
os.getppid()  # callgrind dumps here (--dump-before=getppid): the count starts from zero
answers = run(hsms["cache_on"] if "cache_on" in hsms else hsms["default"], part)
os.getppid()  # and dumps again: the second dump is the counted pass alone
print(json.dumps({"codes": ["00"], "verified": len(answers) == sum(len(c) for c in part), "groups": 1,
                  "units": counted}))
"""
STANDARD_PIN_CARDS = 5000  # of the 20,000 seeded: enough for a PIN on 1 in 4 of 20,000 purchases
STANDARD_PIN = "1234"

OBJECTS = (("python", re.compile(r"libpython|/python3[.\d]*$|^python")),
           ("sqlite", re.compile(r"sqlite")),
           ("compiled", re.compile(r"__mypyc|_hot_|/switch/.*\.so$|hsm_mock/.*\.so$")),
           ("libc", re.compile(r"libc[.-]|libm[.-]|ld-linux")),
           ("msgspec/orjson", re.compile(r"msgspec|orjson")),
           ("uvloop", re.compile(r"uvloop")))


def python_binary() -> str:
    """This interpreter, by the path it runs under (a virtual environment's finds its packages
    from that path; resolved, it would be the base interpreter without them). Not `python3`
    from PATH: pyenv's shims are shell scripts, which valgrind would count instead."""
    return sys.executable


def self_costs(path: Path) -> dict[tuple[str, str], int]:
    """Instructions by (shared object, function) from a callgrind output file: each function's
    self cost (a cost line after `calls=` is that call's inclusive cost, and is skipped).
    Names are given once, in ob=/cob= (objects) or fn=/cfn= (functions), then by (id) alone."""
    names: dict[str, dict[str, str]] = {"ob": {}, "fn": {}}
    costs: dict[tuple[str, str], int] = {}
    current = {"ob": "???", "fn": "???"}
    skip_next = False
    spec = re.compile(r"(c?)(ob|fn)=\((\d+)\)(?: (.*))?")
    with path.open() as f:
        for line in f:
            m = spec.match(line)
            if m:
                kind = m.group(2)
                if m.group(4) is not None:
                    names[kind][m.group(3)] = m.group(4).rstrip("\n")
                if not m.group(1):  # ob= / fn=: what the following cost lines belong to
                    current[kind] = names[kind].get(m.group(3), "???")
                continue
            if line.startswith("calls="):
                skip_next = True
                continue
            if line[:1].isdigit() or line[:1] in "+-*":
                if skip_next:
                    skip_next = False
                    continue
                parts = line.split()
                if len(parts) >= 2:
                    key = (current["ob"], current["fn"])
                    costs[key] = costs.get(key, 0) + int(parts[-1])
    return costs


def by_object(costs: dict[tuple[str, str], int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for (obj, _), cost in costs.items():
        out[obj] = out.get(obj, 0) + cost
    return out


def grouped(by_object: dict[str, int]) -> dict[str, int]:
    out = {name: 0 for name, _ in OBJECTS} | {"other": 0}
    for obj, cost in by_object.items():
        for name, pattern in OBJECTS:
            if pattern.search(obj):
                out[name] += cost
                break
        else:
            out["other"] += cost
    return out


def count(tree: Path, template: Path, counted: int, concurrency: int, out: Path, *, hsm_port: int | None = None,
          scenario: str = "plain") -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """One run of MEASURE under callgrind: the counted pass's instructions by group of shared
    objects, and by (object, function). callgrind writes a dump at each `os.getppid()` of
    MEASURE (`--dump-before=getppid`, a libc function nothing else here calls): `out`.1 is
    everything before the counted pass, `out`.2 the counted pass alone, `out` the rest."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    measure, argv = MEASURE, [str(counted), str(concurrency), str(template)]
    if scenario == "standard":
        measure, argv = MEASURE_STANDARD, argv + [str(hsm_port)]
    elif scenario == "terminal":
        measure = MEASURE_TERMINAL
    elif scenario == "hsm":  # rounds, block, terminals, warm (micro.py's HSM_AUTH_SETUP): one block counted
        measure, argv = MEASURE_HSM, ["1", str(counted), "32", "128"]
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-line=no",
           "--dump-before=getppid", python_binary(), "-c", measure, *argv]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=template, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"instructions: the run in {tree} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["codes"] != ["00"] or not result["verified"]:
        raise SystemExit(f"instructions: the run in {tree} was not all approved and verified: {result}")
    dumps = sorted(out.parent.glob(out.name + ".*"), key=lambda p: int(p.suffix[1:]))
    if len(dumps) != 2:
        raise SystemExit(f"instructions: expected two dumps (before and after the counted pass), found {len(dumps)}")
    costs = self_costs(dumps[1])
    split = grouped(by_object(costs))
    split["total"] = sum(split.values())
    if scenario in ("plain", "standard"):  # the terminals or the HSM alone commit nothing
        split["units_per_group"] = round(result["units"] / max(1, result["groups"]), 1)  # not instructions
    return split, costs


def start_hsm(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    """This tree's `eum hsm` (the test LMK), on a free port, for --scenario standard."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(tmp / "hsm.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "switch.cli", "hsm", "--listen", f"127.0.0.1:{port}"],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"instructions: the HSM did not listen on {port}: {(tmp / 'hsm.log').read_text()[-2000:]}")


def seed_standard(tree: Path, work: Path, hsm_port: int) -> None:
    """core_bench.py's ledger (20,000 cards, 64 terminals, the same clock), with DUKPT-TDES
    terminals and STANDARD_PIN_CARDS cards with a PIN (their PVVs from the HSM), as the bench
    seeds its standard scenario."""
    done = subprocess.run([sys.executable, "-m", "switch.cli", "admin", "--data-dir", str(work / "var"),
                           "--hsm", f"127.0.0.1:{hsm_port}", "--json", "--clock-start", "2025-10-15T12:00:00+09:00",
                           "seed", "--cards", "20000", "--merchants", "64", "--security", "dukpt-tdes",
                           "--pin-cards", str(STANDARD_PIN_CARDS), "--pin", STANDARD_PIN,
                           "--export", str(work / "pop.json"), "--export-cards", "20000"],
                          env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, cwd=work)
    if done.returncode != 0:
        raise SystemExit(f"instructions: seeding the standard scenario with {tree} failed:\n{done.stderr[-2000:]}")


def per_purchase(split: dict[str, float], purchases: int) -> dict[str, float]:
    """Instructions a purchase by group (the group commit's units per group as they were)."""
    return {key: value if key == "units_per_group" else round(value / purchases, 1) for key, value in split.items()}


def top_functions(costs: dict[tuple[str, str], int], purchases: int, k: int) -> list[dict[str, object]]:
    """The k (object, function) pairs of most instructions a purchase in the counted pass."""
    return [{"object": Path(obj).name, "function": fn, "per_purchase": round(cost / purchases, 1)}
            for (obj, fn), cost in sorted(costs.items(), key=lambda kv: -kv[1])[:k]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", action="append", default=[], help="git revision to compare with (repeatable)")
    ap.add_argument("--messages", type=int, default=2000, help="purchases in the counted pass (and in the warm-up)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--jobs", type=int, default=2, help="valgrind runs at a time (the counts do not depend on it)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per tree (to show how closely the count repeats)")
    ap.add_argument("--functions", type=int, default=0, help="also list the K C functions costing most a purchase")
    ap.add_argument("--de7-step-us", type=int, default=0, help=DE7_STEP_HELP)
    ap.add_argument("--scenario", choices=("plain", "standard", "terminal", "hsm"), default="plain",
                    help="plain: security none, no HSM; standard: DUKPT-TDES MACs, a PIN on 1 in 4, an HSM process; "
                         "terminal: the fleet's security work a transaction (no switch); hsm: the HSM's work an "
                         "authorisation (its commands handled in process, no transport)")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    os.environ["EUM_BENCH_DE7_STEP_US"] = str(args.de7_step_us)  # read by SETUP in the measured process
    if args.messages < 1 or args.messages > 20_000:
        raise SystemExit(f"--messages must be 1 to 20000 (the seeded cards), got {args.messages}")
    if shutil.which("valgrind") is None:
        raise SystemExit("instructions: valgrind is not installed (apt-get install valgrind)")
    from benchmarks.ab import built_summary, worktree
    from benchmarks.core_bench import seed_template
    n = args.messages
    print(f"this tree: {built_summary(ROOT)}", flush=True)  # a source edited since the build runs it pure
    hsm: subprocess.Popen[bytes] | None = None
    hsm_port = None
    with tempfile.TemporaryDirectory(prefix="eum-instr-") as tmp:
        trees = {rev: worktree(rev, Path(tmp), rev.replace("/", "_")) for rev in args.base}
        trees["this tree"] = ROOT
        try:
            if args.scenario == "standard":
                hsm, hsm_port = start_hsm(Path(tmp))
            templates = {}
            for i, (name, tree) in enumerate(trees.items()):  # each tree seeds with its own schema
                templates[name] = Path(tmp) / f"template{i}"
                templates[name].mkdir()
                if args.scenario in ("terminal", "hsm"):
                    continue  # no ledger: the terminals, or the HSM, alone
                if hsm_port is None:
                    seed_template(tree, templates[name])
                else:
                    seed_standard(tree, templates[name], hsm_port)
            jobs = [(name, r) for r in range(args.repeat) for name in trees]
            outs = {job: Path(tmp) / f"run{i}" / "callgrind.out" for i, job in enumerate(jobs)}
            for out in outs.values():
                out.parent.mkdir()
            with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                futures = {job: pool.submit(count, trees[job[0]], templates[job[0]], n, args.concurrency, outs[job],
                                            hsm_port=hsm_port, scenario=args.scenario)
                           for job in jobs}
                counts = {job: fut.result() for job, fut in futures.items()}
        finally:
            if hsm is not None:
                hsm.terminate()
                hsm.wait(timeout=30)
            for name, tree in trees.items():
                if tree != ROOT:
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    runs = {name: [per_purchase(counts[(name, r)][0], n) for r in range(args.repeat)] for name in trees}
    functions = ({name: top_functions(counts[(name, 0)][1], n, args.functions) for name in trees}
                 if args.functions else {})
    for name, top in functions.items():
        print(f"{name}: the {len(top)} functions costing most a purchase (first run)")
        for row in top:
            print(f"  {row['per_purchase']:>10,.1f}  {row['object']}  {row['function']}")
    for name, per in runs.items():
        for r, split in enumerate(per):
            print(f"{name} run {r + 1}: {split['total']:,.0f} instructions a purchase; "
                  + ", ".join(f"{k} {v:,.0f}" for k, v in split.items() if k not in ("total", "units_per_group"))
                  + (f" ({split['units_per_group']} purchases a group commit)" if "units_per_group" in split else ""),
                  flush=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    from benchmarks.bench import describe_machine, write_result
    what = {"terminal": "instructions per transaction of a fleet terminal's security work (no switch)",
            "hsm": "instructions per authorisation of the HSM's commands, handled in process (no transport)"
            }.get(args.scenario, f"instructions per warm {args.scenario} purchase, in process")
    result = {"what": f"{what}, every thread, user space (benchmarks/instructions.py, valgrind callgrind)",
              "machine": describe_machine(), "this_tree": head, "scenario": args.scenario, "messages": n,
              "concurrency": args.concurrency, "de7_step_us": args.de7_step_us,
              "runs": runs, "raw": {f"{name} run {r + 1}": v[0] for (name, r), v in counts.items()},
              "functions": functions}
    if args.base:
        base = runs[args.base[0]][0]["total"]
        result["ratio_to_first_base"] = {name: round(per[0]["total"] / base, 4) for name, per in runs.items()}
        print(json.dumps({"ratio_to_first_base": result["ratio_to_first_base"]}))
    write_result(result, args.out_dir, "instructions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
