"""Every frame with a request MTI gets exactly one answer (docs/host-interface.md §4,
"Malformed frames"): 30 for a field that cannot be read, 12 for an MTI the switch does not
serve, with the request's fields that could be read and echoed; only a frame without a
request MTI closes its connection. Each is logged with the field and the reason.

End to end against one real `eum switch` process over TCP. The mutated frames come from a
terminal that is not provisioned (T0000099), so whatever a mutation turns them into, nothing
can be approved: the ledger must be exactly as before, and a good terminal served after.
"""

from __future__ import annotations

import asyncio

import iso8583
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import posting_count
from switch.authorize.server import encode_answer
from switch.wire.codec import FIELD_NOT_IN_DIALECT, encode_fields
from switch.wire.framing import frame
from switch.wire.messages import RESPONSE_MTI, Rc
from switch_process import DIALECT, Link, provisioned, running_switch, verify_cli
from terminal_sim.terminal import Terminal
from waiting import wait_until

STRANGER = "T0000099"  # not provisioned: every request it sends that decodes is declined 58
# docs/host-interface.md §4, "Malformed frames": what a 30 or 12 echoes, as far as it was read
ERROR_ECHO = ("2", "3", "4", "7", "11", "12", "13", "41", "42", "49", "70", "90")
CODES = {rc.value for rc in Rc}


def framed(payload: bytes) -> bytes:
    return frame(DIALECT.framing, payload)


def purchase(stan: int, *, tid: str = STRANGER, mid: str = "YEONSU01") -> dict[str, str]:
    return {"t": "0200", "2": "9410100000000011", "3": "000000", "4": "000000020000", "7": "0720030000",
            "11": f"{stan:06d}", "12": "120000", "13": "0720", "22": "051", "41": tid, "42": mid.ljust(15),
            "49": "410"}


def sign_on(stan: int, *, tid: str = STRANGER) -> dict[str, str]:
    return {"t": "0800", "7": "0720030000", "11": f"{stan:06d}", "41": tid, "70": "001"}


def without_bitmaps(answer: dict[str, str] | None) -> dict[str, str] | None:
    return None if answer is None else {k: v for k, v in answer.items() if k not in ("p", "1")}


def boundaries(fields: dict[str, str]) -> list[tuple[int, list[str]]]:
    """Every place a message can end between two whole fields, short of its end: (offset,
    the fields before it), from pyiso8583's own encoding of the message."""
    raw, enc = iso8583.encode(dict(fields), DIALECT.spec)
    order = ["t", "p", *(["1"] if "1" in enc else [])] + sorted((k for k in enc if k.isdigit() and k != "1"), key=int)
    out, pos = [], 0
    for i, key in enumerate(order):
        pos += len(enc[key]["len"]) + len(enc[key]["data"])
        out.append((pos, order[: i + 1]))
    assert pos == len(raw)
    return out[:-1]


def flipped(payload: bytes, bit: int) -> bytes:
    """The payload with bitmap bit `bit` (1–128) flipped: the primary bitmap follows the
    4-byte MTI, the secondary the primary."""
    at = 4 + (bit - 1) // 8
    return payload[:at] + bytes([payload[at] ^ (0x80 >> ((bit - 1) % 8))]) + payload[at + 1:]


def with_tertiary(fields: dict[str, str], bit: int) -> bytes:
    """The message with bit 1 (a secondary bitmap) and bit 65 (a tertiary bitmap) set, and in
    the tertiary bitmap bit `bit` (129–192), a field no dialect defines."""
    raw = encode_fields(fields, DIALECT)
    primary = bytes([raw[4] | 0x80]) + raw[5:12]
    tertiary = (1 << (192 - bit)).to_bytes(8, "big")
    return raw[:4] + primary + bytes([0x80]) + bytes(7) + tertiary + raw[12:]


def request_mti(payload: bytes) -> str | None:
    """The MTI the switch answers: four ASCII digits whose third (the function) is even."""
    mti = payload[:4]
    if len(mti) == 4 and mti.isascii() and mti.isdigit() and int(chr(mti[2])) % 2 == 0:
        return mti.decode()
    return None


def response_mti(mti: str) -> str:
    return RESPONSE_MTI.get(mti, mti[:2] + str(int(mti[2]) + 1) + "0")


class Session:
    """One connection, reopened after the switch closes it, and a marker after each frame:
    an echo whose answer must be the very next one, so a second answer to a frame is seen."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.link = Link(port)
        self.marker = Terminal(STRANGER, "YEONSU01", stan=900_000)

    def exchange(self, payload: bytes) -> dict[str, str] | None:
        """The one answer to the framed payload, or None if the switch closed the connection
        (then nothing else came, and a new connection is opened)."""
        self.link.send(framed(payload))
        answer = self.link.receive()
        if answer is None:
            self.link.close()
            self.link = Link(self.port)
            return None
        echo = self.marker.echo()
        self.link.send(framed(encode_fields(echo, DIALECT)))
        after = self.link.receive()
        assert after is not None and (after["t"], after["11"], after["39"]) == ("0810", echo["11"], "58"), after
        return answer

    def close(self) -> None:
        self.link.close()


@pytest.fixture(scope="module")
def switch(tmp_path_factory):
    root = tmp_path_factory.mktemp("answered")
    data_dir = root / "var"
    cards = asyncio.run(provisioned(data_dir))
    with running_switch(data_dir, root) as sw:
        sw.cards = cards
        sw.cwd = root
        yield sw


@pytest.fixture
def session(switch):
    s = Session(switch.port)
    yield s
    s.close()


def logged_line(switch, **match) -> dict:
    (line,) = wait_until(lambda: switch.events(**match), what=f"the switch's log line {match}")
    return line


# ---------------------------------------------------------------------------- the cases of issue 11, item 5

def test_a_0200_ending_where_its_de49_should_be_is_answered_30_without_it(switch, session):
    fields = purchase(101)
    cut = next(pos for pos, before in boundaries(fields) if before[-1] == "42")
    answer = session.exchange(encode_fields(fields, DIALECT)[:cut])  # an honest length header
    assert without_bitmaps(answer) == {"t": "0210", **{k: fields[k] for k in ERROR_ECHO if k in fields and k != "49"}, "39": "30"}
    line = logged_line(switch, event="message", stan="000101")
    assert (line["mti"], line["terminal"], line["rc"], line["error"], line["field"], line["reason"]) == (
        "0200", STRANGER, "30", "decode", "49", "Field data is 0 bytes, expecting 3")
    assert line["pan"] == "941010******0011"


def test_a_bit_for_de65_is_answered_30_naming_the_field_behind_it(switch, session):
    fields = purchase(102)
    answer = session.exchange(with_tertiary(fields, 131))
    assert without_bitmaps(answer) == {"t": "0210", **{k: fields[k] for k in ERROR_ECHO if k in fields}, "39": "30"}
    line = logged_line(switch, event="message", stan="000102")
    assert (line["rc"], line["error"], line["field"], line["reason"]) == ("30", "decode", "131", FIELD_NOT_IN_DIALECT)


def test_an_0800_with_an_undecodable_de70_is_answered_0810_30(switch, session):
    fields = sign_on(103)
    raw = encode_fields(fields, DIALECT)
    assert raw.endswith(b"001")
    answer = session.exchange(raw[:-3] + b"\xff\xfe\xfd")  # DE70 is n 3: three bytes that are not ASCII
    assert without_bitmaps(answer) == {"t": "0810", "7": "0720030000", "11": "000103", "41": STRANGER, "39": "30"}
    line = logged_line(switch, event="message", stan="000103")
    assert (line["mti"], line["rc"], line["error"], line["field"], line["reason"]) == (
        "0800", "30", "decode", "70", "Failed to decode field, invalid data")


def test_an_0800_with_a_non_numeric_de70_is_answered_0810_30(switch, session):
    answer = session.exchange(encode_fields({**sign_on(104), "70": "0x1"}, DIALECT))
    assert without_bitmaps(answer) == {"t": "0810", "7": "0720030000", "11": "000104", "41": STRANGER, "70": "0x1",
                                       "39": "30"}
    line = logged_line(switch, event="message", stan="000104")
    assert (line["rc"], line["error"], line["field"], line["reason"]) == ("30", "field", "70", "not numeric")


@pytest.mark.parametrize("mti, answer_mti", [("0500", "0510"), ("0300", "0310"), ("0720", "0730"), ("9600", "9610")])
def test_an_mti_the_switch_does_not_serve_is_answered_12_with_its_fields(switch, session, mti, answer_mti):
    stan = 200 + int(mti[1])
    fields = {"t": mti, "2": "9410100000000011", "4": "000000001000", "7": "0720030000", "11": f"{stan:06d}",
              "41": STRANGER}
    answer = session.exchange(encode_fields(fields, DIALECT))
    assert without_bitmaps(answer) == {"t": answer_mti, **{k: v for k, v in fields.items() if k != "t"}, "39": "12"}
    line = logged_line(switch, event="message", stan=f"{stan:06d}")
    assert (line["rc"], line["error"], line["field"], line["reason"]) == ("12", "field", "0", f"MTI {mti!r} not supported")


NOT_A_REQUEST = "not a request MTI: no response MTI to answer with"


@pytest.mark.parametrize("payload, error, reason", [
    (bytes(range(0xF0, 0x100)), "decode", "Failed to decode field, invalid data"),  # not even ASCII
    (b"02", "decode", "Field data is 2 bytes, expecting 4"),
    (b"HELO" + bytes(8), "mti", NOT_A_REQUEST),  # letters
    (encode_fields({**purchase(301), "t": "0210"}, DIALECT), "mti", NOT_A_REQUEST),  # a response
], ids=["not-ascii", "two-bytes", "letters", "a-response"])
def test_a_frame_without_a_request_mti_closes_only_its_connection(switch, session, payload, error, reason):
    peer = "%s:%d" % session.link.sock.getsockname()
    assert session.exchange(payload) is None
    dropped = wait_until(lambda: switch.events(event="message_dropped", peer=peer), what="the dropped frame's log line")
    assert [(e["error"], e["field"], e["reason"]) for e in dropped] == [(error, "t", reason)]
    assert without_bitmaps(session.exchange(encode_fields(sign_on(302), DIALECT))) == {
        "t": "0810", "7": "0720030000", "11": "000302", "41": STRANGER, "70": "001", "39": "58"}


def test_an_error_answer_leaves_out_the_echoed_fields_it_cannot_encode_never_the_mti_or_de39():
    out = {"t": "0210", "2": "9410100000000011", "4": "", "7": "07", "11": "000001", "39": "30"}
    payload, dropped = encode_answer(out, DIALECT)
    assert dropped == ["4", "7"]
    assert payload == encode_fields({"t": "0210", "2": "9410100000000011", "11": "000001", "39": "30"}, DIALECT)
    assert encode_answer({"t": "02100", "11": "000001", "39": "30"}, DIALECT) == (None, ["11"])


# ---------------------------------------------------------------------------- mutated frames

def _answered_once(session: Session, payload: bytes) -> None:
    """A frame with a request MTI: exactly one answer, with the response MTI and a decline
    code; any other frame: the connection closed, no answer."""
    mti = request_mti(payload)
    answer = session.exchange(payload)
    if mti is None:
        assert answer is None, (payload[:16], answer)
        return
    assert answer is not None, f"no answer to a frame with MTI {mti}: {payload.hex()}"
    assert answer["t"] == response_mti(mti) and answer["39"] in CODES - {"00"}, (payload.hex(), answer)


BASES = {"0200": purchase(400), "0800": sign_on(401)}


def mutations() -> list[tuple[str, bytes, dict | None]]:
    """(what, payload, the exact answer or None where only its MTI and code are checked)."""
    out: list[tuple[str, bytes, dict | None]] = []
    for name, fields in BASES.items():
        raw = encode_fields(fields, DIALECT)
        for cut, before in boundaries(fields):
            exact = {"t": response_mti(name), **{k: fields[k] for k in ERROR_ECHO if k in before}, "39": "30"}
            out.append((f"{name} cut after {before[-1]}", raw[:cut], exact))
        secondary = "1" in iso8583.encode(dict(fields), DIALECT.spec)[1]
        for bit in range(1, 129 if secondary else 65):
            out.append((f"{name} bit {bit} flipped", flipped(raw, bit), None))
    for bit in range(129, 193):
        out.append((f"0200 tertiary bit {bit}", with_tertiary(purchase(402), bit), None))
    return out


def test_every_mutated_frame_with_a_request_mti_is_answered_once_and_the_ledger_is_untouched(switch, session):
    db = switch.data_dir / "ledger.sqlite3"
    postings_before = posting_count(db)
    cases = mutations()
    assert len(cases) == 12 + 6 + 64 + 128 + 64  # cuts of the 0200 and 0800, bits of their bitmaps, tertiary bits
    for what, payload, exact in cases:
        if exact is None:
            _answered_once(session, payload)
        else:
            assert without_bitmaps(session.exchange(payload)) == exact, what

    good = Link(switch.port)
    term = Terminal("T0000001", "NAMDONG01", stan=5_000)
    for request in (term.sign_on(), term.purchase(switch.cards["namdong"]["pan"], 20_000)):
        good.send(framed(encode_fields(request, DIALECT)))
        answer = good.receive()
        assert (answer["t"], answer["11"], answer["39"]) == (response_mti(request["t"]), request["11"], "00")
    good.close()
    assert posting_count(db) == postings_before + 1  # the good purchase, nothing else
    audit = verify_cli(switch.data_dir, switch.cwd)
    assert audit["ok"] is True, audit


@settings(max_examples=200, deadline=None)
@given(base=st.sampled_from(sorted(BASES)), how=st.sampled_from(["truncate", "patch", "flip"]),
       pos=st.integers(0, 200), patch=st.binary(min_size=1, max_size=4), bits=st.sets(st.integers(1, 128), max_size=3))
def test_randomly_mutated_frames_are_answered_once_or_close_their_connection(switch, base, how, pos, patch, bits):
    raw = encode_fields(BASES[base], DIALECT)
    pos %= len(raw)
    if how == "truncate":
        payload = raw[: max(pos, 1)]
    elif how == "patch":
        payload = raw[:pos] + patch + raw[pos + len(patch):]
    else:
        payload = raw
        for bit in sorted(bits):
            if 4 + (bit - 1) // 8 < len(payload):
                payload = flipped(payload, bit)
    session = Session(switch.port)
    try:
        _answered_once(session, payload)
    finally:
        session.close()
