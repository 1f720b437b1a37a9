"""The hot path's compiled modules: which they are, which are loaded, and the way back to the
pure Python.

Where the install found a C compiler, `pip install -e .` compiles the modules named in
`MODULES` with mypyc (setup.py); without one it installs them as they are. Either way the
Python source is the reference: the compiled module is built from it, mypy-checked, and
tests/test_compiled.py runs the decision, rules and codec tests and a differential run against
the pure modules too. `EUM_PURE_PYTHON=1` in the environment makes every process (and the
processes it starts) import the `.py` files even where a build is present: the way to rule
the compiled code out when a result looks wrong (docs/performance.md, "The compiled hot
path").

Listed are modules that never await: the decision core and the rules, the codec and framing,
the payShield envelope and field readers (the switch's HSM client and the HSM parse with them),
the event builder, the seen-keys index and the hot state (whose cache misses read the store
synchronously). The async shell (engine, server, writer, HSM client) and the modules of
msgspec records with field defaults (switch/record.py, switch/wire/messages.py,
switch/ledger/records.py) stay Python (docs/performance.md says why).

The software HSM's command modules and the simulated terminal's per-transaction modules are
two more groups built the same way (hsm_mock/compiled.py and terminal_sim/compiled.py list them,
each package's __init__.py calls `choose` with its list): the functions here take a group's
modules and its record of sources, the switch's by default, so that switch/ never imports
hsm_mock or terminal_sim.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import shutil
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PURE_ENV = "EUM_PURE_PYTHON"
# Every package with a group of compiled modules, named here and nowhere else: each lists its
# group in its own `compiled.py` (`MODULES`, `BUILT_FROM`; this module for the switch); setup.py
# builds the three lists as one mypyc group, one shared library (`switch._hot`, so the HSM's and
# the terminal's calls into switch.wire are direct: docs/performance.md, "One compiled group for
# the three packages (kept)"); each is checked (tests/test_compiled.py) and recorded by the bench
# from this list. Names, not imports: switch/ imports neither of the others.
GROUP_PACKAGES = ("switch", "hsm_mock", "terminal_sim")
# Written by setup.py beside this file when it compiles: each listed module's source digest.
BUILT_FROM = Path(__file__).with_name("compiled-sources.txt")

MODULES = (
    "switch.domain",
    "switch.rules.fees",
    "switch.rules.cashback",
    "switch.rules.policy",
    "switch.authorize.decide",
    "switch.wire.codec",
    "switch.wire.framing",
    "switch.wire.payshield",
    "switch.ledger.events",
    "switch.authorize.seen",
    "switch.authorize.state",
)


def pure_wanted() -> bool:
    return os.environ.get(PURE_ENV, "") not in ("", "0")


def compiler_found() -> bool:
    """Whether the C compiler Python builds extensions with (or $CC) is on this machine."""
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    return bool(cc) and shutil.which(cc[0]) is not None


def source_digests(root: Path, modules: Sequence[str] = MODULES) -> str:
    """One line per listed module: its name and the sha256 of its source under `root`."""
    lines = []
    for name in modules:
        source = root.joinpath(*name.split(".")).with_suffix(".py")
        lines.append(f"{name} {hashlib.sha256(source.read_bytes()).hexdigest()}\n")
    return "".join(lines)


def stale(modules: Sequence[str] = MODULES, built_from: Path = BUILT_FROM) -> bool:
    """True when a module's source changed since the build (an editable checkout that was
    edited, or checked out at another revision, without `pip install -e .` again), and its
    group's sources are loaded instead. The build is one shared library for the three packages'
    listed modules (setup.py `ONE_GROUP`): they call one another directly, so a package's record
    holds every module of that library, and one stale module anywhere makes every package
    stale (each package's `choose` reads its own record and sees it). A listed module the
    record lacks is stale too. `built_from` lies in its package, one level below the root the
    module names start from."""
    try:
        built = built_from.read_text(encoding="utf-8")
    except OSError:
        return False  # no record: an installed wheel (sources not editable) or no build at all
    recorded = [line.split(" ", 1)[0] for line in built.splitlines() if line]
    if not set(modules) <= set(recorded):
        return True
    try:
        return built != source_digests(built_from.resolve().parents[1], recorded)
    except OSError:
        return True


def is_compiled(module: ModuleType) -> bool:
    """True when the module was loaded from an extension (a mypyc build), not its source."""
    return isinstance(getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader)


def status(modules: Sequence[str] = MODULES) -> dict[str, bool]:
    """Each listed module (imported now if it was not yet) and whether it runs compiled."""
    result = {}
    for name in modules:
        result[name] = is_compiled(importlib.import_module(name))
    return result


def summary(modules: Sequence[str] = MODULES) -> str:
    """`N/M`: N of the M listed modules run compiled, as `eum switch` logs it in
    `switch_listening` (docs/operations.md) and the bench records it (the HSM's group:
    `hsm_listening`; the bench records all three groups)."""
    loaded = status(modules)
    return f"{sum(loaded.values())}/{len(loaded)}"


class _SourceOnly(importlib.abc.MetaPathFinder):
    """Finds one group's modules' `.py` files, ahead of the extension beside them."""

    def __init__(self, modules: Sequence[str]) -> None:
        self.modules = frozenset(modules)

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules or not path:
            return None
        leaf = fullname.rpartition(".")[2] + ".py"
        for entry in path:
            source = Path(entry) / leaf
            if source.is_file():
                return importlib.util.spec_from_file_location(fullname, source)
        return None


def choose(modules: Sequence[str] = MODULES, built_from: Path = BUILT_FROM) -> None:
    """Called by switch/__init__.py (and by hsm_mock/__init__.py and terminal_sim/__init__.py
    for their groups): with EUM_PURE_PYTHON set, or a build older than its sources, the group's
    sources win."""
    wanted = frozenset(modules)
    if pure_wanted() or stale(modules, built_from):
        if not any(isinstance(f, _SourceOnly) and f.modules == wanted for f in sys.meta_path):
            sys.meta_path.insert(0, _SourceOnly(modules))
