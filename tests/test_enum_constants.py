"""The Enum members the hot path reads as module constants (switch/wire/messages.py): each
constant is its member, every kind has one, and the hot modules compare with the constants,
not with `Kind.X` (on Python 3.11 each such read runs EnumType's `__getattr__` hook)."""

from __future__ import annotations

import re
from pathlib import Path

from switch.wire import messages
from switch.wire.messages import Kind, Rc

ROOT = Path(__file__).resolve().parents[1]


def test_every_kind_has_its_constant_and_it_is_the_member():
    constants = {name: value for name, value in vars(messages).items() if name.startswith("KIND_")}
    assert constants == {f"KIND_{k.name}": k for k in Kind}
    assert all(constants[f"KIND_{k.name}"] is k for k in Kind)
    assert messages.RC_APPROVED is Rc.APPROVED


def test_the_purchase_path_reads_no_kind_attribute():
    """The functions every purchase runs: the request's parse, the prefetch, the decision's
    dispatch, the engine's entry and the server's gate (by name, so a new read shows here)."""
    spans = {
        "switch/wire/codec.py": ("def parse_request", "\ndef "),
        "switch/authorize/state.py": ("    def prefetch", "\n    def _load_undo_chain"),
        "switch/authorize/decide.py": ("    def dispatch", "\n    # ---"),
        "switch/authorize/engine.py": ("    async def handle", "\n    async def signed_on_elsewhere"),
        "switch/authorize/server.py": ("    def _gated_program", "\n    async def _route"),
    }
    found = {}
    for path, (start, end) in spans.items():
        text = (ROOT / path).read_text()
        body = text[text.index(start):]
        body = body[:body.index(end, len(start))]
        found[path] = re.findall(r"\bKind\.[A-Z]+", body)
    assert found == {path: [] for path in spans}
