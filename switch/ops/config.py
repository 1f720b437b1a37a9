"""One frozen object holds every default of the switch; relationships are checked at load."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a type only: fairness imports asyncio, which config must not
    from switch.authorize.fairness import ProgramLimits


@dataclass(frozen=True, slots=True)
class SwitchConfig:
    host: str = "127.0.0.1"
    port: int = 8583
    data_dir: Path = field(default_factory=lambda: Path("var"))
    dialect: str = "default"
    # Connections (docs/architecture.md, "Connection limits"). At per_peer_max or connections_max
    # the oldest connection that never sent a valid frame is closed to admit the new one.
    connections_max: int = 2048
    per_peer_max: int = 256            # connections from one IP address (a NAT'd POS concentrator shares one)
    in_flight_max: int = 64            # requests in progress per connection before reads pause
    idle_timeout_s: float = 300.0      # a connection silent this long is closed
    frame_timeout_ms: float = 5000.0   # a frame must be complete this long after its first byte
    signon_timeout_s: float = 30.0     # a connection must send a valid frame (one with an MTI) within this
    write_buffer_max: int = 1 << 20    # bytes queued to a peer that does not read; then reads pause
    # before serving, the ledger's one writer loads cards for at most this long (HotState.warm): at
    # 7-14 µs a card on this project's VMs, every card of a ledger of up to 370,000-700,000, and a
    # start within 10 s at 1,000,000 (docs/performance.md, "A warm hot state on SQLite"); 0: none
    warm_s: float = 5.0
    batch_size_max: int = 512          # ledger units per group commit
    # how long a group may wait, after its first unit, for requests already decided whose
    # response is being MACed; 0: never (docs/performance.md, "A group waits only for who is coming")
    commit_interval_ms_max: float = 2.0
    # under load (requests arriving less than 1 ms apart), how long a group may keep waiting for
    # requests not yet received, while they keep coming; 0 (the default): never. Less CPU a
    # request at part load, more latency (docs/performance.md, "A group may linger while requests
    # keep coming (off by default)")
    commit_linger_ms: float = 0.0
    queue_size_max: int = 8192         # ledger units waiting for the writer
    shutdown_grace_s: float = 10.0
    # per card program (switch/authorize/fairness.py): slots in the engine, waiting room, longest wait
    program_in_flight_max: int = 64
    program_queue_max: int = 256
    program_wait_ms: float = 500.0
    # HOST:PORT of /metrics, /healthz, /readyz (switch/ops/metrics.py; docs/operations.md,
    # "Metrics and health"); "" serves none
    metrics: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError("port must be 0..65535 (0: any free port)")
        if self.connections_max < 1 or self.in_flight_max < 1:
            raise ValueError("connections_max and in_flight_max must be ≥ 1")
        if self.per_peer_max < 1:
            raise ValueError("per_peer_max (--per-peer-max) must be ≥ 1")
        if self.frame_timeout_ms <= 0:
            raise ValueError("frame_timeout_ms (--frame-timeout-ms) must be > 0")
        if self.signon_timeout_s <= 0:
            raise ValueError("signon_timeout_s (--signon-timeout-s) must be > 0")
        if self.batch_size_max > self.queue_size_max:
            raise ValueError("batch_size_max must not exceed queue_size_max")
        if self.commit_interval_ms_max < 0:
            raise ValueError("commit_interval_ms_max (--commit-interval-ms) must be ≥ 0")
        if self.commit_linger_ms < 0:
            raise ValueError("commit_linger_ms (--commit-linger-ms) must be ≥ 0")
        if self.warm_s < 0:
            raise ValueError("warm_s (--warm-s) must be ≥ 0")
        if self.idle_timeout_s <= 0:
            raise ValueError("idle_timeout_s must be > 0")
        if self.program_in_flight_max < 1:
            raise ValueError("program_in_flight_max (--program-in-flight-max) must be ≥ 1")
        if self.program_queue_max < 0:
            raise ValueError("program_queue_max (--program-queue-max) must be ≥ 0")
        if self.program_wait_ms <= 0:
            raise ValueError("program_wait_ms (--program-wait-ms) must be > 0")
        if self.metrics:
            self.metrics_address()  # raises ValueError on anything but HOST:PORT

    def metrics_address(self) -> tuple[str, int]:
        from switch.wire.transport import parse_hostport

        host, port = parse_hostport(self.metrics)
        if not 0 <= port < 65536:
            raise ValueError(f"--metrics {self.metrics!r}: port must be 0..65535")
        return host, port

    def program_limits(self) -> "ProgramLimits":
        from switch.authorize.fairness import ProgramLimits

        return ProgramLimits(in_flight_max=self.program_in_flight_max, queue_max=self.program_queue_max,
                             wait_ms=self.program_wait_ms)
