"""The optional compiled build of the hot path's pure modules (switch/compiled.py `MODULES`),
of the software HSM's command modules (hsm_mock/compiled.py `MODULES`), of the simulated
terminal's per-transaction modules (terminal_sim/compiled.py `MODULES`), and of hsm_mock/_des.c
(DES for keys used once: hsm_mock/crypto.py `DES_COMPILED`).

pyproject.toml holds the project's metadata; this file only adds the extension modules. With a
C compiler and mypyc (a build requirement, pyproject.toml [build-system]), `pip install -e .`
compiles the listed modules with mypyc, the three packages' lists as one group (one shared
library, `ONE_GROUP`: the HSM's and the terminal's compiled calls into switch.wire are then
direct); without a compiler, with EUM_BUILD_PURE=1, or when the build fails, it installs the
pure Python alone and says so. Nothing else changes: the `.py` files stay the reference and EUM_PURE_PYTHON=1 selects
them at run time (switch/compiled.py).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _load(name: str, path: Path):  # type: ignore[no-untyped-def]
    """A module file on its own (each imports only the standard library): a group's list of
    modules, where its digests go and (switch/compiled.py) the compiler check, without
    importing the packages."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compiled = _load("_eum_compiled", ROOT / "switch" / "compiled.py")
# Each package's list (switch/compiled.py GROUP_PACKAGES): its modules, the file recording the
# sources the build was made from.
GROUPS = tuple((listing.MODULES, listing.BUILT_FROM)
               for package in compiled.GROUP_PACKAGES
               for listing in [_load(f"_eum_{package}_compiled", ROOT / package / "compiled.py")])
ALL_MODULES = tuple(name for modules, _built_from in GROUPS for name in modules)
# The one mypyc group of every listed module: the shared library their shims import. One, not
# one a package: calls between groups are generic Python calls (≈ 1,200 instructions each; the
# HSM's parsers call switch.wire.payshield's reader ≈ 15 times an authorisation).
ONE_GROUP = "switch._hot"


def say(message: str) -> None:
    print(f"eum-switch build: {message}", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """build_ext that falls back to the pure modules when compiling fails: all or nothing,
    since the compiled modules import one shared library (a shim without it cannot load), and
    hsm_mock/_des.c goes with them (a compiler that fails on one is not trusted with the other)."""

    def run(self) -> None:
        for package in compiled.GROUP_PACKAGES:  # an earlier build's, maybe of a module no longer listed
            for old in (ROOT / package).rglob("*.so"):
                old.unlink()
        try:
            super().run()
        except Exception as exc:  # a compiler error: keep the install, without the extensions
            for ext in self.extensions:  # what was built before the failure, here and in place
                for built in (Path(self.get_ext_fullpath(ext.name)), ROOT / self.get_ext_filename(ext.name)):
                    built.unlink(missing_ok=True)
            self.extensions = []
            say(f"compiling failed ({type(exc).__name__}: {exc}); the pure-Python modules are used")
            return
        built = {ext.name for ext in self.extensions}
        if set(ALL_MODULES) <= built:  # what the library was built from, in each package's record
            record = compiled.source_digests(ROOT, ALL_MODULES)  # (switch/compiled.py `stale`)
            for modules, built_from in GROUPS:
                built_from.write_text(record, encoding="utf-8")
                say(f"compiled with mypyc: {', '.join(modules)}")  # loads the sources once they differ
        if any(ext.name == DES.name for ext in self.extensions):
            say("compiled hsm_mock/_des.c")

    def get_outputs(self) -> list[str]:
        return super().get_outputs() if self.extensions else []


# Plain C, no dependency but Python's headers: built wherever a compiler is found, with or
# without mypyc.
DES = Extension("hsm_mock._des", sources=["hsm_mock/_des.c"], extra_compile_args=["-O2"])


def extensions() -> list:
    if os.environ.get("EUM_BUILD_PURE", "") not in ("", "0"):
        say("EUM_BUILD_PURE is set: pure Python only")
        return []
    if not compiled.compiler_found():
        say("no C compiler found: pure Python only")
        return []
    return [*_mypyc_extensions(), DES]


def _mypyc_extensions() -> list:
    try:
        from mypyc.build import mypycify
    except ImportError:
        say("mypyc is not installed: the listed modules stay pure Python")
        return []
    extensions = []
    old = os.getcwd()
    os.chdir(ROOT)
    try:
        paths = [str(Path(*name.split(".")).with_suffix(".py")) for name in ALL_MODULES]
        try:
            extensions += mypycify(paths, opt_level="3", group_name=ONE_GROUP)
        except (Exception, SystemExit) as exc:  # mypy found a type error, or mypyc a construct it cannot compile
            say(f"mypyc refused the listed modules ({type(exc).__name__}: {exc}); they stay pure Python")
    finally:
        os.chdir(old)
    return extensions


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
