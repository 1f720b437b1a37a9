"""terminal_sim/client.py AnswerStream: the receiving half the fleet's links and the replay's
VAN lines share — frames split across reads, an undecodable frame skipped, an unframeable
stream closing the connection."""

from __future__ import annotations

from switch.wire.codec import encode_fields, load_dialect
from switch.wire.framing import frame
from terminal_sim.client import AnswerStream

DIALECT = load_dialect("default")
ECHO = {"t": "0810", "7": "1128120000", "11": "000007", "39": "00", "41": "T0000001", "70": "301"}


class Collected(AnswerStream):
    def __init__(self) -> None:
        super().__init__(DIALECT)
        self.answers: list[tuple[dict[str, str], bytes]] = []
        self.undecodables = 0

    def answered(self, fields, payload, at):
        assert at > 0
        self.answers.append((fields, payload))

    def undecodable(self):
        self.undecodables += 1


class Transport:
    closed = False

    def close(self):
        self.closed = True


def test_frames_split_across_reads_and_an_undecodable_one_between_them():
    stream, transport = Collected(), Transport()
    stream.connection_made(transport)
    first = encode_fields(ECHO, DIALECT)
    second = encode_fields({**ECHO, "11": "000008"}, DIALECT)
    data = frame(DIALECT.framing, first) + frame(DIALECT.framing, b"\x00garbage") + frame(DIALECT.framing, second)
    stream.data_received(data[:5])
    assert stream.answers == []
    stream.data_received(data[5:])
    assert [(f["11"], f["39"], p) for f, p in stream.answers] == [("000007", "00", first), ("000008", "00", second)]
    assert (stream.undecodables, transport.closed) == (1, False)


def test_an_unframeable_stream_closes_the_connection():
    stream, transport = Collected(), Transport()
    stream.connection_made(transport)
    stream.data_received(b"\xff\xff" + b"x" * 10)  # a length past frame_size_max
    assert (stream.answers, stream.undecodables, transport.closed) == ([], 0, True)
