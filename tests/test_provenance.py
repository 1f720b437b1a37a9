"""The repository is self-contained: every source it cites is inside it.

- No file the repository holds cites the background notes that live outside it (the shared
  domain and reference notes), and none carries an absolute path of the machine it was
  written on (a home or work directory).
- Every `docs/<name>.md` cited from code, tests, config or docs exists, and a section cited
  with it exists in that document, in each of the forms the repository uses:
  `docs/domain.md, "Cashback"` (quoted heading, possibly shortened; the comma optional,
  as in `docs/domain.md ("Limits")`), `docs/domain.md, Limits`
  (unquoted, capitalised heading) and `docs/hsm.md §8` (numbered section).
- Benchmark results name their plots relative to the result file.

The files scanned are those git would commit (tracked, plus new files not ignored).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Built from parts so that this file does not match its own patterns.
SHARED_NOTES = re.compile(r"\b(?:DOMAIN|REFERENCE|DESIGN|STYLE)" + r"\.md\b|\.\./shared\b")
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:" + "work|root|home|Users" + r")/")

CITATION = re.compile(r"docs/([A-Za-z0-9_-]+)\.md")
# After a cited document: a numbered section, a quoted heading, or an unquoted capitalised one.
SECTION_NUMBER = re.compile(r"\s*§\s*(\d+)")
QUOTED_HEADING = re.compile(r'[,\s(]*"([A-Z0-9][^"]*)"')
UNQUOTED_HEADING = re.compile(r",\s*([A-Z][^,.;:()\"\[\]`]*)")
# A line break inside a comment or docstring, with the next line's comment marker.
LINE_BREAK = re.compile(r"\s*\n\s*(?:#+|//|\*)?\s*")
WALK_SKIPPED = {".git", "__pycache__", ".hypothesis", ".pytest_cache", "build", "var", "mutants",
                ".venv", "venv"}
DOMAIN_HEADINGS = ("The platform", "A day's traffic", "Cashback", "Merchant fees", "Limits",
                   "Worked examples", "Sources")


def repository_files() -> list[Path]:
    """Files git would commit: tracked ones and new ones that are not ignored."""
    try:
        listing = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, check=True, timeout=60,
        ).stdout.decode()
        names = sorted({name for name in listing.split("\0") if name})
        return [ROOT / name for name in names if (ROOT / name).is_file()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an sdist)
        return sorted(
            path for path in ROOT.rglob("*")
            if path.is_file()
            and not any(part in WALK_SKIPPED or part.endswith(".egg-info")
                        for part in path.relative_to(ROOT).parts[:-1])
        )


def text_of(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None  # binary (PNG plots)
    return data.decode("utf-8", errors="replace")


def texts() -> dict[str, str]:
    out = {}
    for path in repository_files():
        text = text_of(path)
        if text is not None:
            out[path.relative_to(ROOT).as_posix()] = text
    return out


def _normal(heading: str) -> str:
    heading = heading.replace("`", "").replace("**", "").strip().lower()
    return re.sub(r"^\d+(?:\.\d+)*\.?\s+", "", heading)


def headings_of(doc: str) -> tuple[list[str], set[str]]:
    """The document's headings (normalised) and its section numbers ("## 8. …" → "8"). A list
    item's bold label ("- **Reversal vs refund**: …", as in docs/architecture.md's choices)
    names a citable point too."""
    titles, numbers = [], set()
    for line in doc.splitlines():
        label = re.match(r"\s*[-*]\s+\*\*(.+?)\*\*", line)
        if label:
            titles.append(_normal(label.group(1)))
            continue
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            title = match.group(1)
            titles.append(_normal(title))
            number = re.match(r"(\d+)\.", title)
            if number:
                numbers.add(number.group(1))
    return titles, numbers


def _names_a_heading(cited: str, titles: list[str], *, shortened_either_way: bool) -> bool:
    cited = _normal(cited).rstrip()
    for title in titles:
        if title == cited or title.startswith(cited + " ") or title.startswith(cited + ":"):
            return True
        if shortened_either_way and cited.startswith(title + " "):
            return True
    return False


def citation_problems(relpath: str, text: str, docs_dir: Path) -> list[str]:
    problems = []
    for match in CITATION.finditer(text):
        name = match.group(1)
        line = text.count("\n", 0, match.start()) + 1
        where = f"{relpath}:{line}: docs/{name}.md"
        doc_path = docs_dir / f"{name}.md"
        if not doc_path.is_file():
            problems.append(f"{where} does not exist")
            continue
        titles, numbers = headings_of(doc_path.read_text(encoding="utf-8"))
        rest = text[match.end(): match.end() + 240]
        after = LINE_BREAK.sub(" ", rest)  # a quoted heading may wrap; an unquoted one may not
        if number := SECTION_NUMBER.match(after):
            if number.group(1) not in numbers:
                problems.append(f"{where} has no section §{number.group(1)}")
        elif quoted := QUOTED_HEADING.match(after):
            if not _names_a_heading(quoted.group(1), titles, shortened_either_way=False):
                problems.append(f'{where} has no heading "{quoted.group(1)}"')
        elif unquoted := UNQUOTED_HEADING.match(rest.split("\n", 1)[0]):
            if not _names_a_heading(unquoted.group(1), titles, shortened_either_way=True):
                problems.append(f"{where} has no heading {unquoted.group(1).strip()!r}")
    return problems


# ---------------------------------------------------------------------------------- tests


def test_scan_sees_the_repository() -> None:
    # Guards the scans below against passing because they read nothing.
    scanned = texts()
    for expected in ("switch/authorize/engine.py", "tests/conftest.py", "config/programs.toml", "docs/domain.md",
                     "docs/hsm.md", "tests/test_provenance.py"):
        assert expected in scanned, f"the scan did not reach {expected}"


def test_no_file_cites_notes_kept_outside_the_repository() -> None:
    hits = [
        f"{rel}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
        for rel, text in texts().items()
        for m in SHARED_NOTES.finditer(text)
    ]
    assert hits == [], (
        "cite the in-repo document and section instead (docs/domain.md for domain rules, "
        "docs/hsm.md / docs/security.md for crypto vectors): " + "; ".join(hits)
    )


def test_no_file_holds_an_absolute_path_of_this_machine() -> None:
    hits = [
        f"{rel}:{text.count(chr(10), 0, m.start()) + 1}"
        for rel, text in texts().items()
        for m in MACHINE_PATH.finditer(text)
    ]
    assert hits == [], "absolute paths of a machine (use a path relative to the repository): " + "; ".join(hits)


def test_every_cited_document_and_section_exists() -> None:
    problems = [p for rel, text in texts().items() for p in citation_problems(rel, text, ROOT / "docs")]
    assert problems == [], "broken citations: " + "; ".join(problems)


def test_citation_checker_rejects_a_missing_document_heading_or_section() -> None:
    # The checker itself, on the citation forms the repository uses (it must be able to fail).
    docs = ROOT / "docs"
    # "@" stands for the docs folder, so that these examples are not citations of this file.
    good = ('@domain.md, "Cashback" table; @domain.md, Limits. @hsm.md §8; @domain.md ("Limits");\n'
            '# (@domain.md, "Merchant\n# fees"); @domain.md, Worked examples, 1; @events.md, which')
    assert citation_problems("x.py", good.replace("@", "docs/"), docs) == []
    bad = ('@nowhere.md\n@domain.md, "Cashback rules"\n@domain.md, Fees\n'
           '@hsm.md §42\n@events.md, "How rows are marked"\n@domain.md "Fees"')
    assert citation_problems("x.py", bad.replace("@", "docs/"), docs) == [m.replace("@", "docs/") for m in (
        "x.py:1: @nowhere.md does not exist",
        'x.py:2: @domain.md has no heading "Cashback rules"',
        "x.py:3: @domain.md has no heading 'Fees'",
        "x.py:4: @hsm.md has no section §42",
        'x.py:5: @events.md has no heading "How rows are marked"',
        'x.py:6: @domain.md has no heading "Fees"',
    )]


def test_domain_doc_keeps_the_headings_tests_cite() -> None:
    text = (ROOT / "docs" / "domain.md").read_text(encoding="utf-8")
    level_two = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert level_two == list(DOMAIN_HEADINGS)


def test_hsm_doc_has_the_test_vector_section_the_tests_cite() -> None:
    text = (ROOT / "docs" / "hsm.md").read_text(encoding="utf-8")
    assert "\n## 8. Test vectors and their sources\n" in text
    section = text[text.index("## 8. Test vectors and their sources"):]
    # One value of each family, as the tests assert them.
    for value in ("6AC292FAA1315B4D858AB3A3D7D5933A", "1273671EA26AC29AFA4D1084127652A1", "041274EDCBA9876F",
                  "A1C72E74EA3FA9B6", "070A16B46B4D4144F79BDD9DD04A287C", "**561**", "**4021**", "**7710**"):
        assert value in section, f"docs/hsm.md §8 lacks {value}"


def test_bench_result_names_its_plots_relative_to_the_result_file(tmp_path: Path) -> None:
    from benchmarks.bench import write_plots

    table = [{"percentile": p, "latency_ms": ms} for p, ms in ((50, 1.0), (99, 5.0), (100, 12.0))]
    series = [{"t": t, "sent": 100, "responses": 99, "approved": 95, "p99_ms": 4.0} for t in range(3)]
    result = {"runs": {"e2e": {"percentiles": table, "series": series}}}
    names = write_plots(result, tmp_path, "2026-01-01-host-quick")
    assert names == ["2026-01-01-host-quick-latency.png", "2026-01-01-host-quick-throughput.png"]
    assert all((tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for name in names)
