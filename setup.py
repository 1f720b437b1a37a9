"""The optional compiled build of the hot path's pure modules (switch/compiled.py `MODULES`).

pyproject.toml holds the project's metadata; this file only adds the extension modules. With a
C compiler and mypyc (a build requirement, pyproject.toml [build-system]), `pip install -e .`
compiles the listed modules with mypyc; without a compiler, with EUM_BUILD_PURE=1, or when the
build fails, it installs the pure Python alone and says so. Nothing else changes: the `.py`
files stay the reference and EUM_PURE_PYTHON=1 selects them at run time (switch/compiled.py).
"""

from __future__ import annotations

import ast
import hashlib
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def listed_modules() -> list[str]:
    """MODULES from switch/compiled.py, read without importing the package."""
    tree = ast.parse((ROOT / "switch" / "compiled.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "MODULES" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise SystemExit("setup.py: switch/compiled.py has no MODULES")


def source_digests() -> str:
    """As switch/compiled.py `source_digests` writes them (one line per module: name, sha256)."""
    lines = []
    for name in listed_modules():
        digest = hashlib.sha256((ROOT / Path(*name.split("."))).with_suffix(".py").read_bytes()).hexdigest()
        lines.append(f"{name} {digest}\n")
    return "".join(lines)


def say(message: str) -> None:
    print(f"eum-switch build: {message}", file=sys.stderr)


def compiler_found() -> bool:
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    return bool(cc) and shutil.which(cc[0]) is not None


class OptionalBuildExt(build_ext):
    """build_ext that falls back to the pure modules when compiling fails: all or nothing,
    since the compiled modules import one shared library (a shim without it cannot load)."""

    def run(self) -> None:
        for old in (ROOT / "switch").rglob("*.so"):  # an earlier build's, maybe of a module no longer listed
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
        if self.extensions:  # what the build was made from: switch/compiled.py loads the sources once they differ
            (ROOT / "switch" / "compiled-sources.txt").write_text(source_digests(), encoding="utf-8")
            say(f"compiled with mypyc: {', '.join(listed_modules())}")

    def get_outputs(self) -> list[str]:
        return super().get_outputs() if self.extensions else []


def extensions() -> list:
    if os.environ.get("EUM_BUILD_PURE", "") not in ("", "0"):
        say("EUM_BUILD_PURE is set: pure Python only")
        return []
    if not compiler_found():
        say("no C compiler found: pure Python only")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        say("mypyc is not installed: pure Python only")
        return []
    paths = [str(Path(*name.split(".")).with_suffix(".py")) for name in listed_modules()]
    old = os.getcwd()
    os.chdir(ROOT)
    try:
        return mypycify(paths, opt_level="3", group_name="switch._hot")
    except (Exception, SystemExit) as exc:  # mypy found a type error, or mypyc a construct it cannot compile
        say(f"mypyc refused the modules ({type(exc).__name__}: {exc}); pure Python only")
        return []
    finally:
        os.chdir(old)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
