"""The software HSM's command processor driven through every command tests/test_hsm_commands.py
sends it, and seeded mutations of each, printed line by line: run once on the compiled modules
and once with EUM_PURE_PYTHON=1, the two outputs must be identical (tests/test_compiled.py).
Not a test file itself.

    python tests/hsm_probe.py SEED MUTATIONS

The corpus is what the command tests send through their `run` helper (recorded while pytest
runs them in this process, so each command comes with the exact answer the test checks). What
is random on a real HSM (A0's keys, the random fill of PIN blocks) comes from a seeded
generator here, in the tests and in the replay alike. Each command is then answered again by a fresh `Hsm`,
and so are MUTATIONS variants of it: cut at a random byte, one byte replaced by a random one of
the characters that matter to the parsers (hex digits, key scheme tags, delimiters, a non-hex
letter), one byte appended. The first line says which build ran (`compiled N/M`); then one line
per command: its code, the body's digest, the error code, the response body and the audit event.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import secrets
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from hsm_mock import compiled as hsm_compiled  # noqa: E402
from hsm_mock.commands import Hsm  # noqa: E402
from switch import compiled  # noqa: E402
from switch.wire.payshield import Command  # noqa: E402

ALPHABET = b"0123456789ABCDEFGXYZU;%"


class Recorder:
    """A pytest plugin: wraps the command tests' `run(hsm, code, body)` to keep each command."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, bytes]] = []

    def pytest_collection_modifyitems(self, items: list[Any]) -> None:
        module = items[0].module
        original = module.run

        def recording(hsm: Hsm, code: str, body: str | bytes) -> str:
            raw = body.encode("latin-1") if isinstance(body, str) else body
            self.commands.append((code, raw))
            return original(hsm, code, body)

        module.run = recording
        # and the tests' HSMs draw A0's keys from the seeded generator too (seed_the_fills)
        module.Hsm = lambda *args, **kw: Hsm(*args, **{"random_bytes": lambda n: os.urandom(n), **kw})


def mutations(rng: random.Random, body: bytes, count: int) -> list[bytes]:
    out = []
    for n in range(count):
        kind = n % 3
        if kind == 0:
            out.append(body[: rng.randrange(len(body))] if body else b"")
        elif kind == 1 and body:
            at = rng.randrange(len(body))
            out.append(body[:at] + bytes([rng.choice(ALPHABET)]) + body[at + 1:])
        else:
            out.append(body + bytes([rng.choice(ALPHABET)]))
    return out


def answer(hsm: Hsm, code: str, body: bytes) -> str:
    try:
        error, response, audit = hsm.handle(Command(b"0000", code, body))
    except Exception as exc:  # noqa: BLE001 - a crash is an outcome to compare too
        return f"{code} {hashlib.sha256(body).hexdigest()[:16]} raised {type(exc).__name__}: {exc}"
    return f"{code} {hashlib.sha256(body).hexdigest()[:16]} {error} {response!r} {sorted(audit.items())!r}"


def seed_the_fills(seed: int) -> None:
    """PIN blocks' random fill (ISO-1/3/4, the tests' own blocks) from a seeded generator, so
    that both builds see and give the same bytes: pinblock.py draws them through these two."""
    rng = random.Random(seed)
    secrets.choice = rng.choice  # type: ignore[assignment]
    os.urandom = rng.randbytes  # type: ignore[assignment]


def main() -> None:
    seed, count = int(sys.argv[1]), int(sys.argv[2])
    seed_the_fills(seed)
    recorder = Recorder()
    with contextlib.redirect_stdout(sys.stderr):  # pytest's report is not part of the history
        done = pytest.main([str(HERE / "test_hsm_commands.py"), "-q", "-p", "no:cacheprovider"], plugins=[recorder])
    if done != 0:
        raise SystemExit(f"the command tests failed on this build ({done})")
    loaded = compiled.status(hsm_compiled.MODULES)
    lines = [f"compiled {sum(loaded.values())}/{len(loaded)}"]
    rng = random.Random(seed)
    hsm = Hsm(random_bytes=lambda n: os.urandom(n))  # A0's keys: from the seeded generator
    for code, body in recorder.commands:
        lines.append(answer(hsm, code, body))
        for variant in mutations(rng, body, count):
            lines.append(answer(hsm, code, variant))
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
