"""Splitting a recorded event stream."""

import time

import pytest

from llmview import sse


def test_parse_fields():
    body = b'\xef\xbb\xbf: comment\n\nevent: a\ndata: {"x": 1}\nid: 7\n\n'
    body += b"data:two\ndata\ndata: lines\r\n\r\nretry: 5\n\n"
    events, complete = sse.parse(body, 100)
    assert events == [sse.Event("a", '{"x": 1}'), sse.Event("", "two\n\nlines")]
    assert complete


def test_parse_keeps_a_last_event_without_its_blank_line():
    assert sse.parse(b"data: 1\n\ndata: 2", 100) == ([sse.Event("", "1"), sse.Event("", "2")], True)


def test_parse_reads_at_most_max_lines():
    assert sse.parse(b"data: 1\n\ndata: 2\n\ndata: 3\n\n", 4) == (
        [sse.Event("", "1"), sse.Event("", "2")],
        False,
    )
    assert sse.parse(b"data: 1\n\ndata: 2\n\n", 4) == ([sse.Event("", "1"), sse.Event("", "2")], True)


def test_objects_counts_done_and_junk():
    events = [
        sse.Event("a", '{"x": 1}'),
        sse.Event("", "[DONE]"),
        sse.Event("", "nope"),
        sse.Event("", "[1]"),
    ]
    assert sse.objects(events) == sse.Parsed([("a", {"x": 1})], 3, 2, True)


def test_objects_splits_data_lines_when_blank_lines_are_missing():
    parsed = sse.objects([sse.Event("", '{"a": 1}\n{"b": 2}\n[DONE]')])
    assert parsed == sse.Parsed([("", {"a": 1}), ("", {"b": 2})], 2, 0, True)


def test_looks_like_sse():
    assert sse.looks_like_sse(b"\n\nevent: x\n")
    assert sse.looks_like_sse(b": ping\n\n")
    assert not sse.looks_like_sse(b'{"data": 1}')


@pytest.mark.parametrize(
    "body", [b"\n" * (16 << 20), b":\n\n" * (5 << 20), b"data:x\n" * (2 << 20), b"data: " + b"x" * (16 << 20)]
)
def test_hostile_bodies_are_parsed_quickly(body):
    """A bound generous enough for a busy machine; reading every line of these takes many seconds."""
    started = time.perf_counter()
    events, _ = sse.parse(body, 60_000)
    sse.objects(events)
    assert time.perf_counter() - started < 3
