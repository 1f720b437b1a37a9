"""Sans-I/O framing: length headers, TPDU, partial reads, limits — no sockets."""

import pytest

from switch.wire.framing import Frame, FrameBuffer, Framing, FramingError, frame, swap_tpdu


@pytest.mark.parametrize("header, encoded", [("binary2", b"\x00\x05"), ("ascii4", b"0005"), ("bcd2", b"\x00\x05")])
def test_length_header_encodings(header, encoded):
    f = Framing(length_header=header)
    assert frame(f, b"hello") == encoded + b"hello"


def test_bcd_length_is_decimal_digits():
    f = Framing(length_header="bcd2")
    assert f.encode_length(1234) == b"\x12\x34"
    assert f.decode_length(b"\x12\x34") == 1234


def test_frames_split_across_reads_are_reassembled():
    f = Framing()
    data = frame(f, b"first") + frame(f, b"second!")
    buf = FrameBuffer(f)
    out = []
    for byte in data:  # one byte at a time, the worst partial reads can do
        buf.receive_data(bytes([byte]))
        while (fr := buf.next_frame()) is not None:
            out.append(fr.payload)
    assert out == [b"first", b"second!"]
    assert buf.pending == 0


def test_two_frames_in_one_read():
    f = Framing(length_header="ascii4")
    buf = FrameBuffer(f)
    buf.receive_data(frame(f, b"abc") + frame(f, b"defg"))
    assert buf.next_frame() == Frame(b"abc")
    assert buf.next_frame() == Frame(b"defg")
    assert buf.next_frame() is None


def test_oversize_length_is_a_framing_error():
    buf = FrameBuffer(Framing(frame_size_max=100))
    buf.receive_data(b"\x00\x65" + b"x" * 101)
    with pytest.raises(FramingError, match="exceeds frame_size_max 100"):
        buf.next_frame()


def test_zero_length_and_non_decimal_headers_are_framing_errors():
    buf = FrameBuffer(Framing())
    buf.receive_data(b"\x00\x00")
    with pytest.raises(FramingError, match="zero-length"):
        buf.next_frame()
    buf = FrameBuffer(Framing(length_header="ascii4"))
    buf.receive_data(b"00x1abcd")
    with pytest.raises(FramingError, match="not decimal"):
        buf.next_frame()


def test_tpdu_is_split_off_and_swapped_in_the_reply():
    f = Framing(length_header="bcd2", tpdu=True)
    tpdu = bytes.fromhex("6000120034")
    wire = frame(f, b"0800", tpdu=tpdu)
    assert wire == b"\x00\x09" + tpdu + b"0800"
    buf = FrameBuffer(f)
    buf.receive_data(wire)
    fr = buf.next_frame()
    assert fr == Frame(payload=b"0800", tpdu=tpdu)
    assert swap_tpdu(fr.tpdu) == bytes.fromhex("6000340012")


def test_frame_refuses_to_build_oversize_frames():
    with pytest.raises(ValueError, match="exceeds frame_size_max"):
        frame(Framing(frame_size_max=4), b"12345")


def test_framing_settings_are_checked():
    with pytest.raises(ValueError, match="length_header"):
        Framing(length_header="binary4")
    with pytest.raises(ValueError, match="frame_size_max must be 1..9999"):
        Framing(length_header="ascii4", frame_size_max=10000)
