"""The host interface document stays true to the code."""

from pathlib import Path

from terminal_sim.docgen import BEGIN, END, field_blocks, render
from switch.wire.codec import load_dialect
from switch.wire.messages import Rc

DOC = Path(__file__).resolve().parents[1] / "docs" / "host-interface.md"


def test_generated_examples_match_the_code():
    text = DOC.read_text(encoding="utf-8")
    committed = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert committed == render(), "docs/host-interface.md is stale: run python -m terminal_sim.docgen"


def test_generated_field_tables_match_the_code():
    text = DOC.read_text(encoding="utf-8")
    blocks = field_blocks()
    assert len(blocks) == 6  # the field dictionary and one table per pair group (0100 with 0120, 0400 with 0420)
    for (begin, end), rendered in blocks.items():
        assert (text.count(begin), text.count(end)) == (1, 1), f"{begin} must be in docs/host-interface.md once"
        committed = text[text.index(begin) : text.index(end) + len(end)]
        assert committed == rendered, "docs/host-interface.md is stale: run python -m terminal_sim.docgen"


def test_every_response_code_is_documented():
    text = DOC.read_text(encoding="utf-8")
    table = text[text.index("## 4. Response codes") : text.index("### Malformed frames")]
    for rc in Rc:
        assert f"\n| {rc.value} |" in table, f"response code {rc.value} missing from host-interface.md"


def test_every_response_code_has_the_terminals_action():
    text = DOC.read_text(encoding="utf-8")
    table = text[text.index("### Terminal action per response code") : text.index("## 5.")]
    for rc in Rc:
        assert f"\n| {rc.value} |" in table, f"no terminal action for response code {rc.value}"


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_de52_and_de53_have_the_one_format_the_default_dialect_gives_them():
    """§1 and docs/security.md once disagreed on DE52 (8 bytes fixed, or a length and 8 or 16):
    both now say what config/dialects/default.toml carries, and that DE53 is upper-case."""
    spec = load_dialect("default").spec
    shape = ("data_enc", "len_enc", "len_type", "max_len")
    assert [spec["52"][k] for k in shape] == ["b", "b", 1, 16]
    assert [spec["53"][k] for k in shape] == ["ascii", "ascii", 2, 48]
    host = _flat(DOC.read_text(encoding="utf-8"))
    encoding = host[host.index("### Default dialect encoding") : host.index("### Dialect settings")]
    assert "**DE52** (PIN block), a 1-byte binary length then 8 or 16 bytes" in encoding
    security = _flat((DOC.parent / "security.md").read_text(encoding="utf-8"))
    assert "**DE52**: the encrypted PIN block, binary with a 1-byte length: 8 bytes (TDES) or 16 (AES)." in security
    assert "in upper-case: lower-case hex is answered 30" in security
    section8 = host[host.index("### DE52 and DE53") : host.index("### Which responses carry a MAC")]
    assert "**Lower-case hex is answered 30**" in section8
