"""RFC 6455 conformance of the lean WebSocket transport: the Autobahn|Testsuite cases of
sections 1-7, ported to run against the real server over a raw socket.

Autobahn's fuzzing client cannot run here (Python 2 only), so its cases are written out:
the case numbers are in the test ids. Autobahn expects an echo server; ours answers JSON
commands, so "the message is echoed" becomes "the message is answered": a ``ping``
command (``{"type":"ping","id":N,"pad":...}``) of the size the case asks for gets its
``pong``, and a payload that is not a command gets the hub's ``error`` frame. Where
Autobahn accepts either a clean close or a dropped connection, these tests ask for what we
do: a close frame with the exact code, then the end of the TCP connection.

Not ported: 9 (performance: see bench/), 10 (auto-fragmentation: we never fragment),
12 and 13 (permessage-deflate: not offered), 7.1.6's timing variants (informational).
See docs/adr/0013-websocket-frame-parsing.md.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from defi_realtime.application.realtime import MAX_FRAME_BYTES
from defi_realtime.entrypoints.ws_transport import RealtimeWebSocketProtocol
from tests.e2e.conftest import LiveServer, start_server
from tests.e2e.raw_ws import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    RawWebSocket,
    close_payload,
    frame,
)

MAX_MESSAGE = 256 * 1024  # the module's server: WS_MAX_MESSAGE, small enough to send past


@pytest.fixture(scope="module")
def lean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("rfc6455") / "data"
    with start_server(data_dir, ws=RealtimeWebSocketProtocol, ws_max_message=MAX_MESSAGE) as live:
        yield live


@pytest.fixture
def ws(lean: LiveServer) -> Iterator[RawWebSocket]:
    with RawWebSocket(int(lean.base_url.rsplit(":", 1)[1])) as client:
        assert client.accepted, client.status_line
        yield client


def command(request_id: int, pad: bytes = b"", length: int | None = None) -> bytes:
    """A ``ping`` command carrying ``pad`` (raw bytes inside a JSON string), or padded with
    ``a`` to exactly ``length`` bytes."""
    # JSON strings cannot hold raw control characters, quotes or backslashes: escape those
    # (all ASCII, so the UTF-8 validity of everything else is unchanged).
    escaped = b"".join(
        f"\\u{byte:04x}".encode() if byte < 0x20 or byte in b'"\\' else bytes((byte,))
        for byte in pad
    )
    head = b'{"type":"ping","id":%d,"pad":"' % request_id + escaped
    if length is not None:
        head += b"a" * (length - len(head) - 2)
    return head + b'"}'


def expect_answer(ws: RawWebSocket, request_id: int) -> None:
    """The ``pong`` for command ``request_id``."""
    received = ws.expect(TEXT)
    answer = json.loads(received.payload)
    assert answer["type"] == "pong", answer
    assert answer["id"] == request_id, answer


def expect_error(ws: RawWebSocket, code: str) -> None:
    answer = json.loads(ws.expect(TEXT).payload)
    assert (answer["type"], answer["code"]) == ("error", code), answer


def still_open(ws: RawWebSocket) -> None:
    """The connection still works: a ping is answered (and nothing else was pending)."""
    ws.send_frame(PING, b"alive?")
    ws.expect(PONG, b"alive?")


def fragments(payload: bytes, size: int, opcode: int = TEXT) -> bytes:
    """``payload`` as one message in frames of ``size`` bytes."""
    parts = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
    return b"".join(
        frame(opcode if n == 0 else CONTINUATION, part, fin=n == len(parts) - 1)
        for n, part in enumerate(parts)
    )


# -- 1 framing --------------------------------------------------------------------------------

LENGTHS = [0, 125, 126, 127, 128, 65_535, 65_536]


@pytest.mark.parametrize("opcode", [TEXT, BINARY], ids=["1.1-text", "1.2-binary"])
@pytest.mark.parametrize("length", LENGTHS)
def test_1_messages_of_each_length_encoding_are_answered(
    ws: RawWebSocket, opcode: int, length: int
) -> None:
    if length == 0:
        ws.send_frame(opcode, b"")
        expect_error(ws, "invalid_json")
    else:
        ws.send_frame(opcode, command(1, length=length))
        expect_answer(ws, 1)
    still_open(ws)


@pytest.mark.parametrize("opcode", [TEXT, BINARY], ids=["1.1.8-text", "1.2.8-binary"])
def test_1_x_8_a_64k_message_written_in_997_byte_chops_is_answered(
    ws: RawWebSocket, opcode: int
) -> None:
    ws.send(frame(opcode, command(1, length=65_536)), chunk=997)
    expect_answer(ws, 1)


def test_a_frame_over_max_frame_bytes_is_answered_with_frame_too_large_not_closed(
    ws: RawWebSocket,
) -> None:
    ws.send_frame(TEXT, command(1, length=MAX_FRAME_BYTES + 1))
    expect_error(ws, "frame_too_large")
    ws.send_frame(TEXT, command(2))
    expect_answer(ws, 2)


def test_a_fragmented_message_over_max_frame_bytes_is_answered_with_frame_too_large(
    ws: RawWebSocket,
) -> None:
    ws.send(fragments(command(1, length=3 * MAX_FRAME_BYTES), 40_000))
    expect_error(ws, "frame_too_large")
    ws.send_frame(TEXT, command(2))
    expect_answer(ws, 2)


def test_a_message_over_ws_max_message_is_closed_with_1009(ws: RawWebSocket) -> None:
    ws.send_frame(TEXT, b"a" * (MAX_MESSAGE + 1))
    ws.expect_close(1009)


def test_a_frame_announcing_more_than_ws_max_message_is_closed_with_1009_at_once(
    ws: RawWebSocket,
) -> None:
    # Only the header: the server must not wait for (or buffer) the payload.
    ws.send(bytes((0x81, 0x80 | 127)) + (2**40).to_bytes(8, "big") + b"\x00" * 4)
    ws.expect_close(1009)


def test_fragments_adding_up_to_more_than_ws_max_message_are_closed_with_1009(
    ws: RawWebSocket,
) -> None:
    ws.send(frame(TEXT, b"a" * 60_000, fin=False))
    for _ in range(MAX_MESSAGE // 60_000):
        ws.send(frame(CONTINUATION, b"a" * 60_000, fin=False))
    ws.expect_close(1009)


def test_an_unmasked_client_frame_is_a_protocol_error(ws: RawWebSocket) -> None:
    ws.send_frame(TEXT, command(1), mask=False)
    ws.expect_close(1002)


# -- 2 pings and pongs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [b"", b"Hello, world!", bytes([0x00, 0xFF, 0xFE, 0xFD, 0xFC, 0xFB, 0x00, 0xFF]), b"*" * 125],
    ids=["2.1-empty", "2.2-text", "2.3-binary", "2.4-125-bytes"],
)
def test_2_a_ping_is_answered_with_a_pong_of_the_same_payload(
    ws: RawWebSocket, payload: bytes
) -> None:
    ws.send_frame(PING, payload)
    ws.expect(PONG, payload)


def test_2_5_a_ping_of_126_bytes_is_a_protocol_error(ws: RawWebSocket) -> None:
    ws.send_frame(PING, b"*" * 126)
    ws.expect_close(1002)


def test_2_6_a_ping_written_a_byte_at_a_time_is_answered(ws: RawWebSocket) -> None:
    ws.send(frame(PING, b"*" * 125), chunk=1)
    ws.expect(PONG, b"*" * 125)


@pytest.mark.parametrize("payload", [b"", b"unsolicited"], ids=["2.7-empty", "2.8-payload"])
def test_2_unsolicited_pongs_are_ignored(ws: RawWebSocket, payload: bytes) -> None:
    ws.send_frame(PONG, payload)
    ws.expect_silence()
    still_open(ws)


def test_2_9_an_unsolicited_pong_then_a_ping_gets_one_pong(ws: RawWebSocket) -> None:
    ws.send(frame(PONG, b"unsolicited") + frame(PING, b"ping"))
    ws.expect(PONG, b"ping")
    ws.expect_silence()


@pytest.mark.parametrize("chunk", [None, 1], ids=["2.10-together", "2.11-bytewise"])
def test_2_ten_pings_get_ten_pongs_in_order(ws: RawWebSocket, chunk: int | None) -> None:
    ws.send(b"".join(frame(PING, b"ping %d" % n) for n in range(10)), chunk=chunk)
    for n in range(10):
        ws.expect(PONG, b"ping %d" % n)


# -- 3 reserved bits --------------------------------------------------------------------------


def test_3_1_a_text_frame_with_rsv1_is_a_protocol_error(ws: RawWebSocket) -> None:
    ws.send_frame(TEXT, command(1), rsv=1)
    ws.expect_close(1002)


@pytest.mark.parametrize(
    ("chunk", "pause"),
    [(None, 0.0), (None, 0.05), (1, 0.0)],
    ids=["3.2-together", "3.3-framewise", "3.4-bytewise"],
)
def test_3_a_frame_with_reserved_bits_fails_after_the_valid_message_before_it(
    ws: RawWebSocket, chunk: int | None, pause: float
) -> None:
    frames = [frame(TEXT, command(1)), frame(TEXT, command(2), rsv=2), frame(PING)]
    for data in frames:
        ws.send(data, chunk=chunk)
        time.sleep(pause)
    expect_answer(ws, 1)
    ws.expect_close(1002)


@pytest.mark.parametrize(
    ("opcode", "rsv", "payload"),
    [(BINARY, 5, b"\x00\xff"), (PING, 6, b"ping"), (CLOSE, 7, close_payload(1000))],
    ids=["3.5-binary", "3.6-ping", "3.7-close"],
)
def test_3_reserved_bits_on_other_frames_are_a_protocol_error(
    ws: RawWebSocket, opcode: int, rsv: int, payload: bytes
) -> None:
    ws.send_frame(opcode, payload, rsv=rsv)
    ws.expect_close(1002)


# -- 4 opcodes --------------------------------------------------------------------------------

RESERVED_OPCODES = [3, 4, 5, 6, 7, 11, 12, 13, 14, 15]


@pytest.mark.parametrize(
    "opcode", RESERVED_OPCODES, ids=[f"4.{1 if o < 8 else 2}-opcode-{o}" for o in RESERVED_OPCODES]
)
@pytest.mark.parametrize("payload", [b"", b"reserved opcode payload"], ids=["empty", "payload"])
def test_4_a_reserved_opcode_is_a_protocol_error(
    ws: RawWebSocket, opcode: int, payload: bytes
) -> None:
    ws.send_frame(opcode, payload)
    ws.expect_close(1002)


@pytest.mark.parametrize("opcode", [5, 6, 7, 13, 14, 15])
def test_4_a_reserved_opcode_after_a_valid_message_fails_after_answering_it(
    ws: RawWebSocket, opcode: int
) -> None:
    ws.send(frame(TEXT, command(1)) + frame(opcode, b"payload") + frame(PING))
    expect_answer(ws, 1)
    ws.expect_close(1002)


# -- 5 fragmentation --------------------------------------------------------------------------


@pytest.mark.parametrize("opcode", [PING, PONG], ids=["5.1-ping", "5.2-pong"])
def test_5_a_fragmented_control_frame_is_a_protocol_error(ws: RawWebSocket, opcode: int) -> None:
    ws.send(frame(opcode, b"fragment1", fin=False) + frame(CONTINUATION, b"fragment2"))
    ws.expect_close(1002)


@pytest.mark.parametrize(
    ("chunk", "pause"),
    [(None, 0.0), (None, 0.05), (1, 0.0)],
    ids=["together", "framewise", "bytewise"],
)
@pytest.mark.parametrize("ping", [False, True], ids=["5.3-5.5", "5.6-5.8-ping-between"])
def test_5_a_message_in_two_fragments_is_answered(
    ws: RawWebSocket, ping: bool, chunk: int | None, pause: float
) -> None:
    message = command(1)
    frames = [frame(TEXT, message[:10], fin=False), frame(CONTINUATION, message[10:])]
    if ping:
        frames.insert(1, frame(PING, b"between"))
    for data in frames:
        ws.send(data, chunk=chunk)
        time.sleep(pause)
    if ping:
        ws.expect(PONG, b"between")
    expect_answer(ws, 1)


@pytest.mark.parametrize("fin", [True, False], ids=["5.9-5.11-fin", "5.12-5.14-not-fin"])
@pytest.mark.parametrize("chunk", [None, 1], ids=["together", "bytewise"])
def test_5_a_continuation_with_nothing_to_continue_is_a_protocol_error(
    ws: RawWebSocket, fin: bool, chunk: int | None
) -> None:
    ws.send(frame(CONTINUATION, b"non-continuation payload", fin=fin), chunk=chunk)
    ws.send(frame(TEXT, command(1)))
    ws.expect_close(1002)


def test_5_15_a_continuation_after_a_completed_message_is_a_protocol_error(
    ws: RawWebSocket,
) -> None:
    message = command(1)
    ws.send(
        frame(TEXT, message[:10], fin=False)
        + frame(CONTINUATION, message[10:])
        + frame(CONTINUATION, b"fragment3", fin=False)
        + frame(TEXT, b"fragment4")
    )
    expect_answer(ws, 1)
    ws.expect_close(1002)


@pytest.mark.parametrize("first_fin", [False, True], ids=["5.16", "5.17"])
def test_5_messages_starting_with_a_continuation_are_a_protocol_error(
    ws: RawWebSocket, first_fin: bool
) -> None:
    sequence = (
        frame(CONTINUATION, b"fragment1", fin=first_fin)
        + frame(TEXT, b"fragment2", fin=False)
        + frame(CONTINUATION, b"fragment3")
    )
    ws.send(sequence * 2)
    ws.expect_close(1002)


def test_5_18_a_new_message_before_the_last_one_ended_is_a_protocol_error(
    ws: RawWebSocket,
) -> None:
    ws.send(frame(TEXT, b"fragment1", fin=False) + frame(TEXT, b"fragment2"))
    ws.expect_close(1002)


@pytest.mark.parametrize("pause", [0.0, 0.05], ids=["5.19", "5.20-paused"])
def test_5_a_message_in_five_fragments_with_pings_between_is_answered(
    ws: RawWebSocket, pause: float
) -> None:
    message = command(1)
    parts = [message[i * 6 : (i + 1) * 6] for i in range(4)] + [message[24:]]
    for n, part in enumerate(parts):
        ws.send(frame(TEXT if n == 0 else CONTINUATION, part, fin=n == 4))
        if n in (1, 3):
            ws.send(frame(PING, b"ping %d" % n))
        time.sleep(pause)
    ws.expect(PONG, b"ping 1")
    ws.expect(PONG, b"ping 3")
    expect_answer(ws, 1)


# -- 6 UTF-8 handling -------------------------------------------------------------------------

KOSME = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"  # "κόσμε", with U+1F79
INVALID_AT_12 = KOSME + b"\xed\xa0\x80" + b"edited"  # a UTF-16 surrogate, encoded
OUT_OF_RANGE = b"\xf4\x90\x80\x80"  # 0x110000: beyond Unicode


def test_6_1_empty_fragments_make_an_empty_message(ws: RawWebSocket) -> None:
    ws.send(frame(TEXT, b"", fin=False) + frame(CONTINUATION, b"", fin=False) + frame(CONTINUATION))
    expect_error(ws, "invalid_json")  # an empty message, read as JSON
    message = command(1)
    ws.send(frame(TEXT, b"", fin=False) + frame(CONTINUATION, message, fin=False))
    ws.send(frame(CONTINUATION, b""))
    expect_answer(ws, 1)


PHRASE = "Hello-µ@ßöäüàá-UTF-8!!".encode()


@pytest.mark.parametrize("text", [PHRASE, KOSME], ids=["phrase", "kosme"])
def test_6_2_valid_utf8_split_anywhere_across_fragments_is_answered(
    ws: RawWebSocket, text: bytes
) -> None:
    message = command(1, text)
    ws.send_frame(TEXT, message)  # 6.2.1: one fragment
    expect_answer(ws, 1)
    for split in range(1, len(message)):  # 6.2.2: two fragments, split at every byte
        message = command(split, text)
        ws.send(frame(TEXT, message[:split], fin=False) + frame(CONTINUATION, message[split:]))
        expect_answer(ws, split)
    ws.send(fragments(command(0, text), 1))  # 6.2.3 / 6.2.4: one byte per frame
    expect_answer(ws, 0)


@pytest.mark.parametrize("size", [None, 1], ids=["6.3.1-whole", "6.3.2-bytewise"])
def test_6_3_invalid_utf8_is_closed_with_1007(ws: RawWebSocket, size: int | None) -> None:
    message = command(1, INVALID_AT_12)
    ws.send(frame(TEXT, message) if size is None else fragments(message, size))
    ws.expect_close(1007)


def test_6_3_invalid_utf8_split_at_every_byte_across_two_fragments_is_closed_with_1007(
    lean: LiveServer,
) -> None:
    port = int(lean.base_url.rsplit(":", 1)[1])
    message = command(1, INVALID_AT_12)
    for split in range(1, len(message)):
        with RawWebSocket(port) as ws:
            ws.send(frame(TEXT, message[:split], fin=False) + frame(CONTINUATION, message[split:]))
            ws.expect_close(1007)


# Autobahn 6.4: the first part is valid UTF-8, the second makes it invalid (0x110000, the
# first code point beyond Unicode), the third would complete the message.
FAIL_FAST = {
    "6.4.1-6.4.3": (KOSME, OUT_OF_RANGE),
    "6.4.2-6.4.4": (KOSME + OUT_OF_RANGE[:1], OUT_OF_RANGE[1:2]),
}


@pytest.mark.parametrize(("first", "second"), FAIL_FAST.values(), ids=list(FAIL_FAST))
def test_6_4_invalid_utf8_fails_fast_on_the_fragment_that_makes_it_invalid(
    ws: RawWebSocket, first: bytes, second: bytes
) -> None:
    ws.send(frame(TEXT, first, fin=False))
    ws.expect_silence(0.3)
    ws.send(frame(CONTINUATION, second, fin=False))
    ws.expect_close(1007)  # at once: the third fragment is never needed


@pytest.mark.parametrize(("first", "second"), FAIL_FAST.values(), ids=list(FAIL_FAST))
def test_6_4_invalid_utf8_fails_fast_within_a_frame_that_arrives_in_pieces(
    ws: RawWebSocket, first: bytes, second: bytes
) -> None:
    payload = first + second + b"edited"
    data = frame(TEXT, payload)
    head = len(data) - len(payload)
    ws.send(data[: head + len(first)])
    ws.expect_silence(0.3)
    ws.send(data[head + len(first) : head + len(first) + len(second)])
    ws.expect_close(1007)  # before the frame is complete


def test_binary_messages_are_not_utf8_checked_but_read_as_json(ws: RawWebSocket) -> None:
    ws.send_frame(BINARY, INVALID_AT_12)
    expect_error(ws, "invalid_json")
    still_open(ws)


# Markus Kuhn's UTF-8 decoder stress test, as Autobahn's cases 6.5 - 6.23 use it.
VALID_UTF8 = {
    "6.5-valid-sequences": [
        b"hello$world",
        b"hello\xc2\xa2world",
        b"hello\xe2\x82\xacworld",
        b"hello\xf0\xa4\xad\xa2world",
        KOSME,
    ],
    "6.6-valid-prefixes": [KOSME[:n] for n in (2, 5, 7, 9, 11)],
    "6.7-first-of-each-length": [b"\x00", b"\xc2\x80", b"\xe0\xa0\x80", b"\xf0\x90\x80\x80"],
    "6.9-last-of-each-length": [b"\x7f", b"\xdf\xbf", b"\xef\xbf\xbf", b"\xf4\x8f\xbf\xbf"],
    "6.11-boundaries": [b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xef\xbf\xbd", b"\xf4\x8f\xbf\xbf"],
    "6.22-non-characters": [b"\xef\xbf\xbe", b"\xef\xbf\xbf"]
    + [
        bytes((lead, second, 0xBF, last))
        for lead in (0xF0, 0xF1, 0xF2, 0xF3, 0xF4)
        for second in (0x8F, 0x9F, 0xAF, 0xBF)
        for last in (0xBE, 0xBF)
        if (lead != 0xF4 or second == 0x8F) and not (lead == 0xF0 and second == 0x8F)
    ],
    "6.23-specials": [bytes((0xEF, 0xBF, last)) for last in range(0xB9, 0xC0)],
}
_CONTINUATIONS = bytes(range(0x80, 0xBF))
_INCOMPLETE = [
    b"\xc0",
    b"\xe0\x80",
    b"\xf0\x80\x80",
    b"\xf8\x80\x80\x80",
    b"\xfc\x80\x80\x80\x80",
    b"\xdf",
    b"\xef\xbf",
    b"\xf7\xbf\xbf",
    b"\xfb\xbf\xbf\xbf",
    b"\xfd\xbf\xbf\xbf\xbf",
]
INVALID_UTF8 = {
    "6.6-invalid-prefix": [KOSME[:n] for n in (1, 3, 4, 6, 8, 10)],
    "6.8-five-and-six-byte-forms": [b"\xf8\x88\x80\x80\x80", b"\xfc\x84\x80\x80\x80\x80"],
    "6.10-beyond-u10ffff": [
        b"\xf7\xbf\xbf\xbf",
        b"\xfb\xbf\xbf\xbf\xbf",
        b"\xfd\xbf\xbf\xbf\xbf\xbf",
    ],
    "6.11-beyond-the-last-code-point": [OUT_OF_RANGE],
    "6.12-unexpected-continuation-bytes": [
        b"\x80",
        b"\xbf",
        b"\x80\xbf",
        b"\x80\xbf\x80",
        b"\x80\xbf\x80\xbf",
        b"\x80\xbf\x80\xbf\x80",
        b"\x80\xbf\x80\xbf\x80\xbf",
        _CONTINUATIONS,
    ],
    "6.13-lonely-start-bytes": [
        b"".join(bytes((byte, 0x20)) for byte in range(low, high))
        for low, high in ((0xC0, 0xDF), (0xE0, 0xEF), (0xF0, 0xF7), (0xF8, 0xFB), (0xFC, 0xFD))
    ],
    "6.14-last-continuation-missing": _INCOMPLETE,
    "6.15-concatenated-incomplete": [b"".join(_INCOMPLETE)],
    "6.16-impossible-bytes": [b"\xfe", b"\xff", b"\xfe\xfe\xff\xff"],
    "6.17-overlong-ascii": [
        b"\xc0\xaf",
        b"\xe0\x80\xaf",
        b"\xf0\x80\x80\xaf",
        b"\xf8\x80\x80\x80\xaf",
        b"\xfc\x80\x80\x80\x80\xaf",
    ],
    "6.18-maximum-overlong": [
        b"\xc1\xbf",
        b"\xe0\x9f\xbf",
        b"\xf0\x8f\xbf\xbf",
        b"\xf8\x87\xbf\xbf\xbf",
        b"\xfc\x83\xbf\xbf\xbf\xbf",
    ],
    "6.19-overlong-nul": [
        b"\xc0\x80",
        b"\xe0\x80\x80",
        b"\xf0\x80\x80\x80",
        b"\xf8\x80\x80\x80\x80",
        b"\xfc\x80\x80\x80\x80\x80",
    ],
    "6.20-single-surrogates": [
        b"\xed\xa0\x80",
        b"\xed\xad\xbf",
        b"\xed\xae\x80",
        b"\xed\xaf\xbf",
        b"\xed\xb0\x80",
        b"\xed\xbe\x80",
        b"\xed\xbf\xbf",
    ],
    "6.21-paired-surrogates": [
        high + low
        for high in (b"\xed\xa0\x80", b"\xed\xad\xbf", b"\xed\xae\x80", b"\xed\xaf\xbf")
        for low in (b"\xed\xb0\x80", b"\xed\xbf\xbf")
    ],
}


def _cases(table: dict[str, list[bytes]]) -> list[object]:
    return [
        pytest.param(sample, id=f"{group}-{n + 1}")
        for group, samples in table.items()
        for n, sample in enumerate(samples)
    ]


@pytest.mark.parametrize("size", [None, 1], ids=["whole", "bytewise"])
@pytest.mark.parametrize("sample", _cases(VALID_UTF8))
def test_6_valid_utf8_is_answered(ws: RawWebSocket, sample: bytes, size: int | None) -> None:
    message = command(1, sample)
    ws.send(frame(TEXT, message) if size is None else fragments(message, size))
    expect_answer(ws, 1)


@pytest.mark.parametrize("size", [None, 1], ids=["whole", "bytewise"])
@pytest.mark.parametrize("sample", _cases(INVALID_UTF8))
def test_6_invalid_utf8_is_closed_with_1007(
    ws: RawWebSocket, sample: bytes, size: int | None
) -> None:
    message = command(1, sample)
    ws.send(frame(TEXT, message) if size is None else fragments(message, size))
    ws.expect_close(1007)


def test_6_the_stress_samples_agree_with_pythons_decoder() -> None:
    """The tables above are what they claim to be (a wrong sample would test nothing)."""
    for sample in [s for samples in VALID_UTF8.values() for s in samples]:
        sample.decode()
    for sample in [s for samples in INVALID_UTF8.values() for s in samples]:
        with pytest.raises(UnicodeDecodeError):
            sample.decode()


# -- 7 close handling -------------------------------------------------------------------------


def test_7_1_1_a_message_then_a_close_is_answered_then_closed_with_1000(
    ws: RawWebSocket,
) -> None:
    ws.send(frame(TEXT, command(1)) + frame(CLOSE, close_payload(1000)))
    expect_answer(ws, 1)
    ws.expect_close(1000)


@pytest.mark.parametrize(
    "after",
    [frame(CLOSE, close_payload(1000)), frame(PING, b"ping"), frame(TEXT, command(2))],
    ids=["7.1.2-close-after-close", "7.1.3-ping-after-close", "7.1.4-text-after-close"],
)
def test_7_1_nothing_after_a_close_is_answered(ws: RawWebSocket, after: bytes) -> None:
    ws.send(frame(CLOSE, close_payload(1000)) + after)
    ws.expect_close(1000)


def test_7_1_5_a_close_in_the_middle_of_a_fragmented_message_is_a_normal_close(
    ws: RawWebSocket,
) -> None:
    ws.send(
        frame(TEXT, b"fragment1", fin=False)
        + frame(CLOSE, close_payload(1000))
        + frame(CONTINUATION, b"fragment2")
    )
    ws.expect_close(1000)


def test_7_1_6_a_large_message_a_message_a_close_and_a_ping_are_handled_in_order(
    ws: RawWebSocket,
) -> None:
    ws.send(
        frame(TEXT, command(1, length=256 * 1024 - 1))
        + frame(TEXT, command(2))
        + frame(CLOSE, close_payload(1000))
        + frame(PING)
    )
    expect_error(ws, "frame_too_large")
    expect_answer(ws, 2)
    ws.expect_close(1000)


@pytest.mark.parametrize(
    ("payload", "answer"),
    [
        (b"", 1000),
        (b"a", 1002),
        (close_payload(1000), 1000),
        (close_payload(1000, b"Hello World!"), 1000),
        (close_payload(1000, b"*" * 123), 1000),
        (close_payload(1000, b"*" * 124), 1002),
        (close_payload(1000, INVALID_AT_12), 1007),
    ],
    ids=[
        "7.3.1-empty",
        "7.3.2-one-byte",
        "7.3.3-code",
        "7.3.4-reason",
        "7.3.5-reason-123",
        "7.3.6-reason-124",
        "7.5.1-invalid-utf8-reason",
    ],
)
def test_7_3_close_payloads(ws: RawWebSocket, payload: bytes, answer: int) -> None:
    ws.send_frame(CLOSE, payload)
    ws.expect_close(answer)


VALID_CLOSE_CODES = [
    1000,
    1001,
    1002,
    1003,
    1007,
    1008,
    1009,
    1010,
    1011,
    1012,
    1013,
    1014,
    3000,
    3999,
    4000,
    4999,
]
INVALID_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


@pytest.mark.parametrize("code", VALID_CLOSE_CODES, ids=[f"7.7-{c}" for c in VALID_CLOSE_CODES])
def test_7_7_a_valid_close_code_is_echoed(ws: RawWebSocket, code: int) -> None:
    ws.send_frame(CLOSE, close_payload(code))
    ws.expect_close(code)


@pytest.mark.parametrize(
    "code",
    INVALID_CLOSE_CODES,
    ids=[f"{'7.13' if c >= 5000 else '7.9'}-{c}" for c in INVALID_CLOSE_CODES],
)
def test_7_9_an_invalid_close_code_is_a_protocol_error(ws: RawWebSocket, code: int) -> None:
    ws.send_frame(CLOSE, close_payload(code))
    ws.expect_close(1002)


# -- our own close codes ----------------------------------------------------------------------


def test_the_server_closes_with_1001_on_shutdown_and_completes_the_closing_handshake(
    tmp_path: Path,
) -> None:
    outcome: dict[str, object] = {}

    def answer_the_close(ws: RawWebSocket) -> None:
        try:
            closing = ws.expect(CLOSE)
            outcome["code"] = closing.close_code
            ws.send_frame(CLOSE, closing.payload[:2])
            ws.expect_eof()
            outcome["ended"] = True
        except Exception as error:  # reported by the assertion below
            outcome["error"] = error

    with start_server(tmp_path / "data", ws=RealtimeWebSocketProtocol) as live:
        ws = RawWebSocket(int(live.base_url.rsplit(":", 1)[1]), timeout=10)
        ws.send_frame(TEXT, command(1))
        expect_answer(ws, 1)
        client = threading.Thread(target=answer_the_close, args=(ws,))
        client.start()
        stopping = time.monotonic()
    # The answered close ends the connection at once: no waiting for CLOSE_TIMEOUT.
    assert time.monotonic() - stopping < 3.0
    client.join(10)
    ws.close()
    assert outcome == {"code": 1001, "ended": True}
