"""SSE framing: arbitrary transport splits, LF / CRLF / CR line endings, and the WHATWG corner cases."""

from __future__ import annotations

import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_llmserve.load.sse import SSEFramer


def reference_events(stream: bytes) -> list[bytes]:
    """Straight from the WHATWG algorithm over the whole stream (no incremental state)."""
    text = stream.decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = re.split(r"\r\n|\r|\n", text)
    lines.pop()  # the last piece is not terminated: not a line
    out, data = [], None
    for line in lines:
        if line == "":
            if data is not None:
                out.append("\n".join(data).encode())
            data = None
            continue
        if line.startswith(":"):
            continue
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            data = (data or []) + [value]
    return out


def feed_in_pieces(stream: bytes, cuts: list[int]) -> list[bytes]:
    framer, out, prev = SSEFramer(), [], 0
    for c in sorted(set(cuts)) + [len(stream)]:
        out += framer.feed(stream[prev:c])
        prev = c
    return out


payload_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=40)
json_payload = st.dictionaries(st.text(max_size=5), st.one_of(st.text(max_size=20), st.integers()), max_size=3).map(
    lambda d: json.dumps(d, ensure_ascii=False))


@st.composite
def sse_streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    nl = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    mixed = draw(st.booleans())
    events = draw(st.lists(st.one_of(json_payload, payload_text), min_size=1, max_size=6))
    parts = ["\ufeff"] if draw(st.booleans()) else []
    for ev in events:
        end = (lambda: draw(st.sampled_from(["\n", "\r\n", "\r"]))) if mixed else (lambda: nl)
        if draw(st.booleans()):
            parts.append(": keep-alive" + end())
        space = " " if draw(st.booleans()) or ev.startswith(" ") else ""
        first = end()
        second = end()
        if first == "\r" and second.startswith("\n"):
            second = "\r"  # CR then LF would be one CRLF line end, not a blank line
        parts.append("data:" + space + ev + first + second)
    parts.append(draw(st.sampled_from(["", "data: unterminated", "data: half" + nl])))
    return "".join(parts).encode(), [e.encode() for e in events]


@settings(max_examples=300, deadline=None)
@given(sse_streams(), st.data())
def test_payloads_survive_any_transport_split_and_line_ending(case: tuple[bytes, list[bytes]], data: st.DataObject) -> None:
    stream, events = case
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    got = feed_in_pieces(stream, cuts)
    assert got == events
    assert got == reference_events(stream)


@settings(max_examples=100, deadline=None)
@given(sse_streams())
def test_byte_at_a_time_equals_one_shot(case: tuple[bytes, list[bytes]]) -> None:
    stream, events = case
    assert feed_in_pieces(stream, list(range(len(stream)))) == feed_in_pieces(stream, []) == events


def test_crlf_split_between_cr_and_lf_is_one_line_end() -> None:
    framer = SSEFramer()
    assert framer.feed(b"data: a\r") == []
    assert framer.feed(b"\ndata: b\r") == []  # CR|LF is one line end, not a blank line
    assert framer.feed(b"\n\r") == [b"a\nb"]  # the CR after the LF is the blank line
    assert framer.feed(b"\ndata: c\r\n\r\n") == [b"c"]


def test_multiline_data_joins_with_lf_and_one_leading_space_is_removed() -> None:
    assert SSEFramer().feed(b"data:  two spaces\ndata:x\n\n") == [b" two spaces\nx"]


def test_unicode_line_separators_inside_json_do_not_split_events() -> None:
    payload = json.dumps({"text": "a\u2028b\u2029c\x85d"}, ensure_ascii=False).encode()
    assert SSEFramer().feed(b"data: " + payload + b"\n\n") == [payload]


def test_whitespace_inside_payload_is_kept() -> None:
    assert feed_in_pieces(b'data: {"text": "  a  "}  \n\n', [7, 8, 20]) == [b'{"text": "  a  "}  ']


def test_fields_other_than_data_and_bare_data_field() -> None:
    framer = SSEFramer()
    assert framer.feed(b"event: x\nid: 3\nretry: 10\ndatabase: no\ndata\n\n") == [b""]
    assert framer.feed(b"event: only\n\n") == []  # no data line: nothing dispatched
