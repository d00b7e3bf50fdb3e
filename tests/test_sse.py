"""SSEParser/parse: WHATWG event-stream splitting, chunk-boundary independence and bounded memory."""

from __future__ import annotations

import itertools
import json
import re
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfgw.sse import MAX_EVENT, Event, SSEParser, is_event_stream, parse


def feed_all(chunks: list[bytes], max_event: int = MAX_EVENT) -> list[Event]:
    """Events from feeding the chunks one by one and closing the stream."""
    parser = SSEParser(max_event=max_event)
    events = [ev for chunk in chunks for ev in parser.feed(chunk)]
    return events + parser.close()


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """data split at the given offsets (taken modulo its length)."""
    bounds = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def reference(body: bytes) -> list[Event]:
    """The spec read literally on the whole decoded text (no size limits); close() semantics at the end."""
    text = body.decode("utf-8", "replace").removeprefix("\ufeff")
    events: list[Event] = []
    data: list[str] | None = None
    name = ""
    for line in [*re.split("\r\n|\r|\n", text), ""]:
        if not line:
            if data is not None:
                events.append(Event(name, "\n".join(data)))
            data, name = None, ""
            continue
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            data = [*(data or []), value]
        elif field == "event":
            name = value
    return events


# --- the rules, one by one -----------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_each_line_ending(eol):
    body = b"event: a" + eol + b"data: 1" + eol + eol + b"data: 2" + eol + b"data: 3" + eol + eol
    assert feed_all([body]) == [Event("a", "1"), Event("", "2\n3")]


def test_mixed_line_endings():
    body = b"data: 1\r\ndata: 2\rdata: 3\n\r\ndata: 4\r\r"
    assert feed_all([body]) == [Event("", "1\n2\n3"), Event("", "4")]


def test_cr_at_chunk_end_pairs_with_lf_in_the_next_chunk():
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    # the LF completes the CRLF: it is not a blank line, so "b" joins the same event
    assert parser.feed(b"\ndata: b\r\n\r") == [Event("", "a\nb")]
    assert parser.feed(b"\ndata: c\r\n\r\n") == [Event("", "c")]
    assert parser.close() == []


def test_cr_dispatches_without_waiting_for_the_next_chunk():
    parser = SSEParser()
    assert parser.feed(b"data: a\r\r") == [Event("", "a")]
    assert parser.feed(b"\rdata: b\n\n") == [Event("", "b")]  # a lone CR after CR CR is one more blank line


def test_leading_bom_is_ignored_even_when_split():
    assert feed_all([b"\xef\xbb\xbfdata: a\n\n"]) == [Event("", "a")]
    assert feed_all([b"\xef", b"\xbb", b"\xbf", b"data: a\n\n"]) == [Event("", "a")]
    # only one leading BOM: a second one is part of the first field name, "\ufeffdata"
    assert feed_all([b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n"]) == [Event("", "b")]
    # BOM bytes later in the stream are data
    assert feed_all([b"data: \xef\xbb\xbfx\n\n"]) == [Event("", "\ufeffx")]


def test_a_lone_bom_prefix_is_just_a_line():
    assert feed_all([b"\xef\xbb"]) == []
    assert feed_all([b"\xef", b"\xbbdata: a\n\ndata: b\n\n"]) == [Event("", "b")]


def test_comments_are_ignored():
    body = b": hello\ndata: a\n:data: not data\n\n: only a comment\n\n:\n\n"
    assert feed_all([body]) == [Event("", "a")]


def test_multi_line_data_joins_with_newline():
    assert feed_all([b"data: a\ndata:\ndata: b\ndata: \n\n"]) == [Event("", "a\n\nb\n")]


def test_data_without_colon_is_empty_data():
    assert feed_all([b"data\n\n"]) == [Event("", "")]
    assert feed_all([b"data\ndata\n\n"]) == [Event("", "\n")]
    assert feed_all([b"event\ndata\n\n"]) == [Event("", "")]


def test_only_one_leading_space_is_stripped():
    body = b"data:a\n\ndata:  b \n\ndata:c: d\n\nevent:e\ndata:\t f\n\n"
    assert feed_all([body]) == [Event("", "a"), Event("", " b "), Event("", "c: d"), Event("e", "\t f")]


def test_event_name_belongs_to_its_event_only():
    body = b"event: ping\ndata: 1\n\ndata: 2\n\nevent: lost\n\ndata: 3\n\nevent: a\nevent: b\ndata: 4\n\n"
    assert feed_all([body]) == [Event("ping", "1"), Event("", "2"), Event("", "3"), Event("b", "4")]


def test_events_without_data_lines_are_not_dispatched():
    assert feed_all([b"event: x\nid: 1\nretry: 5\n\n: c\n\n\n\n"]) == []


def test_id_retry_and_unknown_fields_are_ignored():
    body = b"id: 7\nretry: 100\ndatax: no\nDATA: no\n data: no\nfoo: bar\ndata: a\nid\n\n"
    assert feed_all([body]) == [Event("", "a")]


def test_utf8_decoding_with_replacement_across_chunks():
    assert feed_all([b"data: \xe2\x82", b"\xac \xff\n", b"\n"]) == [Event("", "€ \ufffd")]
    assert feed_all([b"event: \xc3\n", b"data: \xe2\x82\n\n"]) == [Event("\ufffd", "\ufffd")]


def test_close_returns_the_event_missing_its_blank_line():
    parser = SSEParser()
    assert parser.feed(b"data: a\n\nevent: e\ndata: b\n") == [Event("", "a")]
    assert parser.close() == [Event("e", "b")]
    assert feed_all([b"data: a\ndata: b"]) == [Event("", "a\nb")]
    assert feed_all([b"event: e\ndata"]) == [Event("e", "")]
    assert feed_all([b"data: a\n\n: trailing comment"]) == [Event("", "a")]
    assert feed_all([b"event: e\n"]) == []


def test_close_readies_the_parser_for_a_new_stream():
    parser = SSEParser()
    assert parser.feed(b"event: e\ndata: a") == []
    assert parser.close() == [Event("e", "a")]
    assert parser.close() == []
    assert parser.feed(b"\xef\xbb\xbfdata: b\n\n") == [Event("", "b")]


def test_empty_chunks_change_nothing():
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"") == []
    assert parser.feed(b"\n\n") == [Event("", "a")]


def test_openai_and_anthropic_streams_in_proxy_sized_chunks():
    chat = [{"choices": [{"delta": {"content": f"w{i} "}}], "usage": None} for i in range(300)]
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chat) + b"data: [DONE]\n\n"
    expected = [Event("", json.dumps(c)) for c in chat] + [Event("", "[DONE]")]
    assert feed_all(cut(body, list(range(0, len(body), 16 << 10)))) == expected

    kinds = ["message_start", "content_block_delta", "ping", "message_stop"]
    msgs = [(kinds[i % 4], {"type": kinds[i % 4], "index": i}) for i in range(300)]
    body = b"".join(f"event: {k}\r\ndata: {json.dumps(m)}\r\n\r\n".encode() for k, m in msgs)
    assert feed_all(cut(body, list(range(0, len(body), 1000)))) == [Event(k, json.dumps(m)) for k, m in msgs]


# --- limits ---------------------------------------------------------------------------


def test_over_long_lines_are_dropped_at_the_exact_limit():
    ok = b"data:" + b"x" * 11  # 16 bytes
    assert feed_all([ok + b"\n\n"], max_event=16) == [Event("", "x" * 11)]
    assert feed_all([ok + b"y\n\ndata: next\n\n"], max_event=16) == [Event("", "next")]


def test_over_long_comment_or_unknown_line_keeps_its_event():
    body = b"data: a\n: " + b"c" * 50 + b"\nid: " + b"9" * 50 + b"\ndata: b\n\n"
    assert feed_all([body], max_event=16) == [Event("", "a\nb")]


def test_over_long_data_line_drops_its_event_and_the_next_one_is_parsed():
    body = b"event: big\ndata: a\ndata: " + b"x" * 100 + b"\ndata: b\n\ndata: c\n\n"
    expected = [Event("", "c")]
    assert feed_all([body], max_event=16) == expected
    assert feed_all(cut(body, list(range(0, len(body), 7))), max_event=16) == expected


def test_over_long_event_line_drops_its_event():
    body = b"event: " + b"n" * 50 + b"\ndata: a\n\nevent: ok\ndata: b\n\n"
    assert feed_all([body], max_event=16) == [Event("ok", "b")]


def test_event_data_is_dropped_above_the_exact_limit():
    at_limit = b"data: aaaaaaa\ndata: bbbbbbbb\n\n"  # joined data: 7 + 1 + 8 = 16 bytes
    assert feed_all([at_limit], max_event=16) == [Event("", "aaaaaaa\nbbbbbbbb")]
    over = b"data: aaaaaaa\ndata: bbbbbbbbb\ndata: c\n\n"
    assert feed_all([over + b"data: next\n\n"], max_event=16) == [Event("", "next")]
    assert feed_all([b"data\n" * 17 + b"\n"], max_event=16) == [Event("", "\n" * 16)]
    assert feed_all([b"data\n" * 18 + b"\ndata: next\n\n"], max_event=16) == [Event("", "next")]


def test_over_long_unterminated_line_is_not_returned_by_close():
    assert feed_all([b"data: " + b"x" * 5, b"x" * 20], max_event=16) == []


HOSTILE = [
    (b"data:" + b"x" * 12 + b"\n\ndata: next\n\n", [Event("", "next")]),  # a 17-byte data line
    (b"data:" + b"x" * 11 + b"\r\ndata: next\n\n", [Event("", "x" * 11 + "\nnext")]),  # 16 bytes
    (b":" + b"x" * 20 + b"data: y\n\ndata: next\n\n", [Event("", "next")]),  # the tail looks like data
    (b"event: e\ndata: " + b"z" * 16 + b"\rdata: y\r\rdata: next\r\r", [Event("", "next")]),
    (b"data: aaaaaaa\ndata: bbbbbbbbb\n\nevent: e\ndata: ok", [Event("e", "ok")]),
]


@pytest.mark.parametrize(("body", "expected"), HOSTILE)
def test_limits_do_not_depend_on_where_chunks_end(body, expected):
    for i in range(len(body) + 1):
        for j in range(i, len(body) + 1):
            assert feed_all([body[:i], body[i:j], body[j:]], max_event=16) == expected, (i, j)
    assert feed_all([bytes([b]) for b in body], max_event=16) == expected


def test_parse_keeps_large_events_and_the_final_partial_one():
    big = "x" * (MAX_EVENT + 10)
    body = b"data: a\n\nevent: e\ndata: " + big.encode() + b"\n\ndata: last"
    assert parse(body) == [Event("", "a"), Event("e", big), Event("", "last")]


def test_parse_max_events():
    body = b"".join(b"data: %d\n\n" % i for i in range(5)) + b"data: 5"
    assert parse(body, max_events=2) == [Event("", "0"), Event("", "1")]
    assert parse(body, max_events=6) == [Event("", str(i)) for i in range(6)]
    assert parse(body, max_events=100) == [Event("", str(i)) for i in range(6)]
    assert parse(body, max_events=0) == []
    assert parse(b"") == []


def test_max_event_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        SSEParser(max_event=0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text/event-stream", True),
        ("Text/Event-Stream; charset=utf-8", True),
        (" text/event-stream ;x=y", True),
        ("text/event-streams", False),
        ("application/json", False),
        ("text/plain; text/event-stream", False),
        ("", False),
        (None, False),
    ],
)
def test_is_event_stream(value, expected):
    assert is_event_stream(value) is expected


# --- properties -----------------------------------------------------------------------

# Fragments that make the interesting cases likely: field names, colons, spaces, every line end,
# BOM bytes, a multi-byte character and invalid UTF-8.
FRAGMENT = st.one_of(
    st.sampled_from(
        (
            *(b"data", b"data:", b"data: ", b"event:", b"event: ", b":", b"id: 1", b"retry: 5", b"x", b" "),
            *(b"\xef\xbb\xbf", b"\xe2\x82\xac", b"\xe2\x82", b"\xff"),
            *(b"\n", b"\n", b"\n\n", b"\r", b"\r\n", b"\r\n\r\n"),
        )
    ),
    st.binary(max_size=12),
)
STREAM = st.lists(FRAGMENT, max_size=60).map(b"".join)
SPLITS = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@settings(max_examples=300, deadline=None)
@given(STREAM, SPLITS, st.sampled_from([1, 5, 12, 64, MAX_EVENT]))
def test_splitting_the_stream_anywhere_gives_the_same_events(body, points, max_event):
    assert feed_all(cut(body, points), max_event) == feed_all([body], max_event)


@settings(max_examples=300, deadline=None)
@given(STREAM, SPLITS)
def test_parser_matches_a_literal_reading_of_the_spec(body, points):
    expected = reference(body)
    assert parse(body) == expected
    assert feed_all(cut(body, points)) == expected


NAME = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=12)
DATA = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r"), max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(NAME, DATA), max_size=8),
    st.sampled_from(["\n", "\r\n", "\r"]),
    st.booleans(),
    st.booleans(),
    SPLITS,
)
def test_serialised_events_round_trip(pairs, eol, bom, comments, points):
    text = ""
    for name, data in pairs:
        text += f": keep-alive{eol}" if comments else ""
        text += f"event: {name}{eol}" + "".join(f"data: {line}{eol}" for line in data.split("\n")) + eol
    body = (b"\xef\xbb\xbf" if bom else b"") + text.encode()
    assert feed_all(cut(body, points)) == [Event(name, data) for name, data in pairs]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), SPLITS, st.sampled_from([1, 3, 8, 64]))
def test_random_bytes_never_raise_and_events_stay_within_the_limit(body, points, max_event):
    for ev in feed_all(cut(body, points), max_event):
        # a replacement character stands for at least one byte, so characters <= bytes
        assert len(ev.data) <= max_event
        assert len(ev.name) <= max_event


def _peak_while_feeding(body: bytes, chunk: int = 16 << 10) -> tuple[int, list[Event]]:
    """Peak traced memory of feeding body in proxy-sized chunks (body itself allocated before)."""
    tracemalloc.start()
    try:
        parser = SSEParser()
        events = []
        for start in range(0, len(body), chunk):
            events += parser.feed(body[start : start + chunk])
        events += parser.close()
        return tracemalloc.get_traced_memory()[1], events
    finally:
        tracemalloc.stop()


@settings(max_examples=4, deadline=None)
@given(st.binary(min_size=1, max_size=64).filter(lambda b: b"\r" not in b and b"\n" not in b))
def test_memory_stays_bounded_without_line_ends(unit):
    body = (b"data: " + unit * ((8 << 20) // len(unit)))[: 8 << 20]
    peak, events = _peak_while_feeding(body + b"\n\ndata: after\n\n")
    assert events == [Event("", "after")]
    assert peak < 3 << 20


def test_memory_stays_bounded_for_an_event_without_blank_line():
    line = b"data: " + b"x" * 1000 + b"\n"
    body = line * ((8 << 20) // len(line))
    peak, events = _peak_while_feeding(body + b"\ndata: after\n\n")
    assert events == [Event("", "after")]
    assert peak < 4 << 20
