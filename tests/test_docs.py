"""The host interface document stays true to the code."""

from pathlib import Path

from terminal_sim.docgen import BEGIN, END, render
from switch.wire.messages import Rc

DOC = Path(__file__).resolve().parents[1] / "docs" / "host-interface.md"


def test_generated_examples_match_the_code():
    text = DOC.read_text(encoding="utf-8")
    committed = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert committed == render(), "docs/host-interface.md is stale: run python -m terminal_sim.docgen"


def test_every_response_code_is_documented():
    text = DOC.read_text(encoding="utf-8")
    table = text[text.index("## 4. Response codes") : text.index("## 5.")]
    for rc in Rc:
        assert f"\n| {rc.value} |" in table, f"response code {rc.value} missing from host-interface.md"
