"""What one wake-up costs on this machine: a bare echo server's CPU per message, by rate.

    python benchmarks/wakeups.py [--rates 200,500,1000,2000] [--messages 1000]
                                 [--no-neighbours] [--out-dir DIR]

An echo server (uvloop, an asyncio Protocol that writes back what it reads, in a process of
its own) and one client connection sending 100-byte messages, one in flight: paced at each
rate (open loop, a timer between two messages: the server sleeps between them, as `eum
switch` does at part load), then back to back (closed loop: the next message leaves as soon
as the echo is read). CPU is each process's time on CPU (the server's from
/proc/PID/schedstat) over exactly `--messages` messages. The server does the same work for
every message at every rate, so what its CPU per message gains as the rate falls is the cost
of waking up for a message after sleeping: the machine's price for each wake-up, paid by
every per-message figure the bench measures at part load (`switch.cpu_us_per_auth` at 0.9 ×
capacity, `e2e_half`), which the switch's code can lower only by waking less often.

The run is repeated with busy neighbours (`nice -n 19` spinning processes, one per core, each
ending by itself after `NEIGHBOUR_S_MAX` whatever happens to this one), so that the cores
never go idle: if the cost stays, it is not the CPU's idle states (a VM's
halt and wake-up) but the wake-up itself (the scheduler's switch, caches and TLB refilled
after another process ran). `--no-neighbours` skips that half.

Writes <out-dir>/<date>-<host>-wakeups.json: per rate, server and client CPU µs per message
and the server's ratio to its closed-loop figure; docs/performance.md, "What a wake-up
costs", reads it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.scale import free_port  # noqa: E402

MESSAGE = b"x" * 100
NEIGHBOUR_S_MAX = 120.0  # a busy neighbour's bound on top of the run's own length
NEIGHBOUR_MARK = "eum-wakeups-neighbour"  # in each neighbour's command line (tests look for it)


def main_thread_cpu_s(pid: int) -> float:
    """The server's CPU time to the nanosecond: /proc/PID/schedstat's time on CPU of its main
    thread, the only one that serves (/proc/PID/stat, which benchmarks/bench.py's
    process_cpu_s reads for whole processes, counts in 10 ms ticks)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Echo, "127.0.0.1", port)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


def _run_loop(coro):
    from switch.wire.transport import run  # uvloop where installed, as `eum switch` runs

    return run(coro)


async def _measure(port: int, server_pid: int, rate: float | None, messages: int) -> dict[str, float]:
    """One connection, `messages` messages one at a time: paced at `rate` a second (None: back
    to back). CPU of the server and of this process over exactly those messages."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(20):  # warm the connection and both loops
            writer.write(MESSAGE)
            await reader.readexactly(len(MESSAGE))
        server0, client0, t0 = main_thread_cpu_s(server_pid), time.process_time(), time.perf_counter()
        for n in range(messages):
            if rate is not None:
                wait = t0 + n / rate - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
            writer.write(MESSAGE)
            await reader.readexactly(len(MESSAGE))
        elapsed = time.perf_counter() - t0
        server_s, client_s = main_thread_cpu_s(server_pid) - server0, time.process_time() - client0
    finally:
        writer.close()
    return {"messages": messages, "achieved_per_s": round(messages / elapsed, 1),
            "server_cpu_us_per_msg": round(server_s * 1e6 / messages, 1),
            "client_cpu_us_per_msg": round(client_s * 1e6 / messages, 1)}


def run_series(rates: list[float], messages: int) -> list[dict[str, float | None]]:
    """Every rate, then closed loop, against one echo server process started here."""
    port = free_port()
    server = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", str(port)],
                              stdout=subprocess.PIPE, text=True)
    try:
        if server.stdout is None or server.stdout.readline().strip() != "listening":
            raise RuntimeError(f"the echo server did not start (exit {server.poll()})")
        rows = []
        for rate in [*rates, None]:
            row = _run_loop(_measure(port, server.pid, rate, messages))
            rows.append({"rate_per_s": rate, **row})
        closed = rows[-1]["server_cpu_us_per_msg"]
        for row in rows:
            row["server_to_closed_loop"] = round(row["server_cpu_us_per_msg"] / closed, 2) if closed > 0 else None
        return rows
    finally:
        server.kill()
        server.wait()


def busy_neighbours(n: int, seconds: float) -> list[subprocess.Popen]:
    """n spinning processes at the lowest priority; each ends by itself after `seconds`."""
    spin = f"import time  # {NEIGHBOUR_MARK}\nend = time.monotonic() + {seconds!r}\nwhile time.monotonic() < end: pass"
    return [subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", spin]) for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="200,500,1000,2000", help="paced rates per second, comma-separated")
    parser.add_argument("--messages", type=int, default=1000, help="messages measured per rate")
    parser.add_argument("--no-neighbours", action="store_true", help="skip the run with busy neighbours")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the echo server process
    args = parser.parse_args(argv)
    if args.serve is not None:
        _run_loop(_serve(args.serve))
        return 0
    try:
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        parser.error(f"--rates: {args.rates!r} is not a comma-separated list of numbers")
    if not rates or min(rates) <= 0 or args.messages < 1:
        parser.error("--rates must be positive numbers and --messages at least 1")
    from benchmarks.bench import describe_machine

    result: dict = {"machine": describe_machine(), "messages_per_rate": args.messages,
                    "what": "CPU µs per 100-byte echo of a uvloop echo server and its client, one in flight, by "
                            "offered rate (null: closed loop) (benchmarks/wakeups.py)",
                    "idle_cores": run_series(rates, args.messages)}
    if not args.no_neighbours:
        paced_s = args.messages * sum(1 / r for r in rates)
        spinners = busy_neighbours(os.cpu_count() or 1, NEIGHBOUR_S_MAX + 2 * paced_s)
        try:
            time.sleep(0.3)
            result["busy_neighbours"] = run_series(rates, args.messages)
        finally:
            for p in spinners:
                p.kill()
                p.wait()
    for name in ("idle_cores", "busy_neighbours"):
        for row in result.get(name, ()):
            rate = "closed" if row["rate_per_s"] is None else f"{row['rate_per_s']:g}/s"
            print(f"{name:16} {rate:>8}: server {row['server_cpu_us_per_msg']:7.1f} µs/msg "
                  f"({row['server_to_closed_loop']}× closed loop), client {row['client_cpu_us_per_msg']:7.1f}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"{date.today().isoformat()}-{socket.gethostname()}-wakeups.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
