"""The optional compiled build (setup.py, mypyc; switch/compiled.py) against the pure Python,
the reference.

- Where the install found a C compiler, every listed module runs compiled: a build that
  silently fell back (a type error mypyc refused, say) fails here rather than going unnoticed.
- `EUM_PURE_PYTHON=1` loads every listed module from its `.py` file, in the process and in
  the processes it starts.
- Differential: tests/compiled_probe.py drives the decision core through 400 seeded random
  requests on each build, and each request and response through every shipped dialect's codec;
  the two printed histories (every Decision's repr: response, posting, entries, changes,
  balances, events; the bytes, fields, parsed request or error of each codec call) must be
  identical.
- The decision, rules and codec tests, which this run ran on one build, run again on the other;
  so do the software HSM's command, crypto, DUKPT and PIN block tests (its own group of
  compiled modules, hsm_mock/compiled.py), which check published test vectors, and the
  simulated terminal's request builder, security and key-register tests (terminal_sim/compiled.py).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from switch import compiled
from switch_process import provisioned, running_switch

ROOT = Path(__file__).resolve().parents[1]
RUNS_COMPILED = any(compiled.status().values())
ON_BOTH = ["tests/test_decide.py", "tests/test_decide_preauth.py", "tests/test_worked_examples.py",
           "tests/test_rules_properties.py", "tests/test_fees.py", "tests/test_fees_boundaries.py",
           "tests/test_cashback.py", "tests/test_config_validation.py", "tests/test_online_mall.py",
           "tests/test_codec.py", "tests/test_codec_compiled.py", "tests/test_dialect_settings.py",
           "tests/test_host_spec.py", "tests/test_framing.py", "tests/test_seen_keys.py", "tests/test_json_rendering.py",
           "tests/test_hsm_commands.py", "tests/test_hsm_crypto.py", "tests/test_hsm_gq.py",
           "tests/test_hsm_key_cache.py", "tests/test_hsm_lmk.py", "tests/test_pinblock_formats.py",
           "tests/test_crypto_contexts.py", "tests/test_des_c.py", "tests/test_terminal_security.py",
           "tests/test_future_keys.py", "tests/test_terminal_clock.py"]
# Every group of compiled modules (switch/compiled.py GROUP_PACKAGES): the switch's, the
# software HSM's, the simulated terminal's.
LISTINGS = {package: importlib.import_module(f"{package}.compiled") for package in compiled.GROUP_PACKAGES}
GROUPS = {package: listing.MODULES for package, listing in LISTINGS.items()}
STALE = {package: listing.BUILT_FROM for package, listing in LISTINGS.items()}
LISTED = tuple(name for modules in GROUPS.values() for name in modules)


def env(pure: bool) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    if pure:
        values[compiled.PURE_ENV] = "1"
    return values


def run(args: list[str], *, pure: bool, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], env=env(pure), capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout)


def test_where_a_compiler_is_found_every_listed_module_runs_compiled():
    if compiled.pure_wanted():
        pytest.skip("EUM_PURE_PYTHON is set for this run: the sources are wanted")
    if not compiled.compiler_found() or os.environ.get("EUM_BUILD_PURE"):
        pytest.skip("no C compiler (or EUM_BUILD_PURE): the install is pure Python by design")
    for group, modules in GROUPS.items():
        assert compiled.status(modules) == {name: True for name in modules}, (
            f"a C compiler is here but {group}'s listed modules do not all run compiled (no build, a "
            f"failed one, or sources changed since: stale={compiled.stale(modules, STALE[group])}): run "
            "`python3 -m pip install -e .` again and read its `eum-switch build:` lines")


def test_every_package_listing_compiled_modules_is_one_of_the_groups_and_lists_only_its_own():
    """A package's `compiled.py` with a MODULES list is a group setup.py must build: one left
    out of GROUP_PACKAGES would never be compiled, and nothing else would say so."""
    listing = sorted(path.parent.name for path in ROOT.glob("*/compiled.py") if "\nMODULES = (" in path.read_text())
    assert listing == sorted(compiled.GROUP_PACKAGES) == ["hsm_mock", "switch", "terminal_sim"]
    for package, modules in GROUPS.items():
        assert modules and all(name.startswith(package + ".") for name in modules), package
        assert STALE[package] == ROOT / package / "compiled-sources.txt"


def test_eum_pure_python_loads_every_listed_module_from_its_source():
    probe = ("import importlib, switch.compiled as c; "
             "print(sorted((n, importlib.import_module(n).__file__.rsplit('.', 1)[1]) "
             "for p in c.GROUP_PACKAGES for n in importlib.import_module(p + '.compiled').MODULES))")
    done = run(["-c", probe], pure=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == repr(sorted((name, "py") for name in LISTED))
    assert len(LISTED) == 20 and len(set(LISTED)) == 20


def test_the_compiled_and_the_pure_decisions_are_identical_over_a_random_history():
    if not RUNS_COMPILED:
        pytest.skip("no compiled build in this install: there is only the pure Python to run")
    pure = run(["tests/compiled_probe.py", "20261129", "400"], pure=True)
    built = run(["tests/compiled_probe.py", "20261129", "400"], pure=False)
    assert pure.returncode == 0, pure.stderr
    assert built.returncode == 0, built.stderr
    pure_lines, built_lines = pure.stdout.splitlines(), built.stdout.splitlines()
    assert pure_lines[0] == f"compiled 0/{len(compiled.MODULES)}"
    assert built_lines[0] == f"compiled {len(compiled.MODULES)}/{len(compiled.MODULES)}"
    assert len(pure_lines) == len(built_lines) == 1 + 400 * 5  # a decision and four dialects' wire lines each
    for p, b in zip(pure_lines[1:], built_lines[1:]):
        assert b == p
    # the history crosses what it is meant to: approvals of each kind, declines of several codes,
    # every dialect's codec, and its errors
    body = "\n".join(pure_lines[1:])
    for dialect in ("ascii4-mac128", "bcd-tpdu", "default", "iso93-text"):
        assert f"  {dialect} request" in body, dialect
    assert body.count("; cut: DecodeError(") == 400 * 3  # ascii4-mac128's requests do not encode at all:
    assert body.count("  ascii4-mac128 request: EncodeError('7', ") == 400  # its DE7 has 12 digits
    for kind in ("purchase", "refund", "reversal", "balance"):
        assert any(line.split(" ", 2)[1].rstrip(":") == kind and "rc=<Rc.APPROVED" in line for line in pure_lines[1:]), kind
    for code in ("UNKNOWN_CARD", "EXPIRED_CARD", "INSUFFICIENT_FUNDS", "INVALID_AMOUNT"):
        assert f"rc=<Rc.{code}" in body, code


def test_the_compiled_and_the_pure_hsm_answer_every_command_identically():
    """tests/hsm_probe.py: every command the HSM's command tests send, and six seeded mutations
    of each (cut, one byte replaced, one appended), answered by each build of the HSM's group."""
    if not any(compiled.status(GROUPS["hsm_mock"]).values()):
        pytest.skip("no compiled HSM modules in this install: there is only the pure Python to run")
    pure = run(["tests/hsm_probe.py", "20261201", "6"], pure=True)
    built = run(["tests/hsm_probe.py", "20261201", "6"], pure=False)
    assert pure.returncode == 0, pure.stderr[-3000:]
    assert built.returncode == 0, built.stderr[-3000:]
    pure_lines, built_lines = pure.stdout.splitlines(), built.stdout.splitlines()
    listed = len(GROUPS["hsm_mock"])
    assert (pure_lines[0], built_lines[0]) == (f"compiled 0/{listed}", f"compiled {listed}/{listed}")
    assert len(pure_lines) == len(built_lines) and len(pure_lines) > 1000
    for p, b in zip(pure_lines[1:], built_lines[1:]):
        assert b == p
    # the history crosses what it is meant to: every command family, answers and errors of
    # many kinds, and no command that crashed the processor
    answered = [line.split(" ", 3) for line in pure_lines[1:]]
    codes = {code for code, _, _, _ in answered}
    assert {"GW", "G0", "EC", "DC", "CA", "CC", "CW", "CY", "M6", "M8", "BU", "A0", "Z0", "Z2", "FA", "GC"} <= codes
    errors = {error for _, _, error, _ in answered}
    assert {"00", "01", "10", "11", "15", "23", "24", "26", "27", "28", "29", "68"} <= errors
    assert not [line for line in pure_lines if " raised " in line]


def test_the_decision_rules_and_hsm_tests_pass_on_the_other_build():
    if not RUNS_COMPILED:
        pytest.skip("no compiled build in this install: this run's tests ran the pure Python already")
    done = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", *ON_BOTH], pure=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:]
    assert " passed" in done.stdout.splitlines()[-1] and "failed" not in done.stdout.splitlines()[-1]


def test_a_group_is_stale_once_one_of_its_sources_differs_from_its_build_record(tmp_path):
    """Each group's record (switch/compiled-sources.txt, hsm_mock/compiled-sources.txt) holds
    its modules' digests; one changed source makes the whole group load its sources."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("x = 1\n")
    (package / "b.py").write_text("y = 2\n")
    record, modules = package / "compiled-sources.txt", ("pkg.a", "pkg.b")
    assert not compiled.stale(modules, record)  # no record: no build (or an installed wheel)
    record.write_text(compiled.source_digests(tmp_path, modules))
    assert record.read_text().splitlines()[0].split(" ")[0] == "pkg.a"
    assert not compiled.stale(modules, record)
    (package / "b.py").write_text("y = 3\n")
    assert compiled.stale(modules, record)
    (package / "b.py").unlink()
    assert compiled.stale(modules, record)  # a source gone: stale too


def test_one_shared_library_makes_every_package_stale_when_any_of_its_modules_changed(tmp_path):
    """setup.py builds the three packages' modules as one mypyc group and writes the digests of
    all of them into each package's record: a change in one package's module makes the others
    load their sources too (their compiled code would call the changed module's old build)."""
    for package, name in (("one", "a"), ("two", "b")):
        (tmp_path / package).mkdir()
        (tmp_path / package / f"{name}.py").write_text(f"{name} = 1\n")
    everything = ("one.a", "two.b")
    records = {"one": tmp_path / "one" / "compiled-sources.txt", "two": tmp_path / "two" / "compiled-sources.txt"}
    for record in records.values():
        record.write_text(compiled.source_digests(tmp_path, everything))
    assert not compiled.stale(("one.a",), records["one"]) and not compiled.stale(("two.b",), records["two"])
    (tmp_path / "two" / "b.py").write_text("b = 2\n")
    assert compiled.stale(("one.a",), records["one"])  # package one's modules are unchanged
    assert compiled.stale(("two.b",), records["two"])
    (tmp_path / "two" / "b.py").write_text("b = 1\n")
    assert not compiled.stale(("one.a",), records["one"])
    assert compiled.stale(("one.a", "one.new"), records["one"])  # listed since the build: stale


async def test_eum_switch_logs_which_build_it_runs(tmp_path, monkeypatch):
    """`switch_listening` carries `compiled`: `N/M` of the listed modules (docs/operations.md)."""
    data_dir, pure_dir = tmp_path / "var", tmp_path / "pure" / "var"  # one log file each
    await provisioned(data_dir)
    await provisioned(pure_dir)
    with running_switch(data_dir, tmp_path) as switch:
        [built] = switch.logged("the start line", event="switch_listening")
    monkeypatch.setenv(compiled.PURE_ENV, "1")
    with running_switch(pure_dir, tmp_path / "pure") as switch:
        [pure] = switch.logged("the start line", event="switch_listening")
    listed = len(compiled.MODULES)
    assert pure["compiled"] == f"0/{listed}"
    assert built["compiled"] == (f"{listed}/{listed}" if RUNS_COMPILED else f"0/{listed}")
