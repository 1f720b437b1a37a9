"""One frozen object holds every default of the software HSM; relationships are checked at load.

Sources, later ones winning: the defaults below, a TOML file (`--config`; keys of the
`[hsm]` table, or top-level keys), then command-line flags. Example:

    [hsm]
    listen = "127.0.0.1:1500"
    header_length = 4
    latency_ms = 2.0
    cps_max = 250               # licensed calls per second; 0 = unlimited
    disabled_commands = ["A0"]

    [hsm.command_latency_ms]    # per command, replaces latency_ms for that command
    A0 = 25.0

    [hsm.faults]
    hang = 0.01                 # share of commands never answered
    drop = 0.0                  # share of commands whose connection is closed
    error = "17:0.05"           # share of commands answered with this error code
    seed = 42                   # fixed seed: the same commands meet the same faults
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from hsm_mock.keycache import KEY_CACHE_SIZE_MAX
from switch.wire.transport import parse_hostport  # one HOST:PORT rule for every command

DEFAULT_PORT = 1500
AUDIT_FILE_NAME = "hsm-audit.jsonl"


@dataclass(frozen=True, slots=True)
class HsmConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    header_length: int = 4
    lmk_path: Path | None = None           # None: Thales' public test LMK (never production)
    lmk_check_convention: str = "thalessim"
    firmware: str = "1500-0023"
    # operations
    latency_ms: float = 0.0                # added to every command before it is answered
    command_latency_ms: tuple[tuple[str, float], ...] = ()  # per-command override
    cps_max: float = 0.0                   # token bucket rate, commands per second; 0 = unlimited
    cps_burst: int = 0                     # bucket size; 0 = max(1, cps_max)
    queue_size_max: int = 1024             # commands waiting for a token, then refused
    queue_timeout_ms: float = 2000.0       # a command that would wait longer is refused at once
    overload_error_code: str = "67"        # answer to a refused command (docs/hsm.md)
    disabled_commands: frozenset[str] = frozenset()
    # fault injection
    fault_hang_share: float = 0.0
    fault_drop_share: float = 0.0
    fault_error_code: str = "17"
    fault_error_share: float = 0.0
    fault_seed: int | None = None
    # limits
    connections_max: int = 64
    in_flight_max: int = 256               # commands in progress per connection before reads pause
    frame_size_max: int = 32_768
    idle_timeout_s: float = 600.0          # a silent connection is closed
    write_buffer_max: int = 1 << 20        # bytes queued to a peer that does not read; then reads pause
    shutdown_grace_s: float = 5.0
    key_cache_size_max: int = KEY_CACHE_SIZE_MAX  # entries per key cache, in memory only (docs/hsm.md §6); 0 = off
    log_dir: Path | None = None            # audit log file <log_dir>/hsm-audit.jsonl

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError("port must be 0..65535 (0: any free port)")
        if not 0 <= self.header_length <= 255:
            raise ValueError("header_length must be 0..255")
        if self.latency_ms < 0 or any(ms < 0 for _, ms in self.command_latency_ms):
            raise ValueError("latencies must be ≥ 0")
        if self.cps_max < 0 or self.cps_burst < 0:
            raise ValueError("cps_max and cps_burst must be ≥ 0")
        if self.queue_size_max < 0 or self.queue_timeout_ms < 0:
            raise ValueError("queue_size_max and queue_timeout_ms must be ≥ 0")
        shares = (self.fault_hang_share, self.fault_drop_share, self.fault_error_share)
        if any(not 0 <= s <= 1 for s in shares) or sum(shares) > 1:
            raise ValueError("fault shares must be 0..1 and add up to at most 1")
        for code in (self.fault_error_code, self.overload_error_code):
            if len(code) != 2 or not code.isascii() or not code.isalnum():
                raise ValueError("error codes are 2 characters")
        if self.connections_max < 1 or self.in_flight_max < 1:
            raise ValueError("connections_max and in_flight_max must be ≥ 1")
        if not 16 <= self.frame_size_max <= 65_535:
            raise ValueError("frame_size_max must fit the 2-byte length prefix")
        if self.key_cache_size_max < 0:
            raise ValueError("key_cache_size_max must be ≥ 0 (0: no key cache)")
        if self.idle_timeout_s <= 0 or self.shutdown_grace_s < 0:
            raise ValueError("idle_timeout_s must be > 0, shutdown_grace_s ≥ 0")

    @property
    def bucket_size(self) -> int:
        return self.cps_burst or max(1, int(self.cps_max))

    def latency_s(self, command: str) -> float:
        for code, ms in self.command_latency_ms:
            if code == command:
                return ms / 1000
        return self.latency_ms / 1000

    @property
    def audit_path(self) -> Path | None:
        return self.log_dir / AUDIT_FILE_NAME if self.log_dir is not None else None


def parse_fault_error(text: str) -> tuple[str, float]:
    """'CODE:SHARE', e.g. '17:0.05'."""
    code, sep, share = text.partition(":")
    if not sep:
        raise ValueError(f"{text!r} is not CODE:SHARE")
    return code, float(share)


def load_toml(path: str | Path) -> dict[str, Any]:
    """HsmConfig field values from a TOML file (the [hsm] table, or the top level)."""
    with Path(path).open("rb") as fh:
        doc = tomllib.load(fh)
    table = doc.get("hsm", doc)
    values: dict[str, Any] = {}
    known = {f.name for f in fields(HsmConfig)}
    for key, value in table.items():
        if key == "listen":
            values["host"], values["port"] = parse_hostport(value)
        elif key == "lmk":
            values["lmk_path"] = Path(value)
        elif key == "faults":
            values.update(_faults(value))
        elif key == "command_latency_ms":
            values[key] = tuple((str(k).upper(), float(v)) for k, v in value.items())
        elif key == "disabled_commands":
            values[key] = frozenset(str(c).upper() for c in value)
        elif key == "log_dir":
            values[key] = Path(value)
        elif key in known:
            values[key] = value
        else:
            raise ValueError(f"unknown HSM setting {key!r} in {path}")
    return values


def _faults(table: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key == "hang":
            out["fault_hang_share"] = float(value)
        elif key == "drop":
            out["fault_drop_share"] = float(value)
        elif key == "error":
            out["fault_error_code"], out["fault_error_share"] = parse_fault_error(str(value))
        elif key == "seed":
            out["fault_seed"] = int(value)
        else:
            raise ValueError(f"unknown fault setting {key!r}")
    return out


def build_config(*, toml_path: str | Path | None = None, **overrides: Any) -> HsmConfig:
    """Defaults, then the TOML file, then the overrides that are not None."""
    values: dict[str, Any] = load_toml(toml_path) if toml_path is not None else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return replace(HsmConfig(), **values)


__all__ = ["AUDIT_FILE_NAME", "HsmConfig", "build_config", "load_toml", "parse_fault_error", "parse_hostport"]
