"""cfgw.usage: request models, the compat model spelling, buffered-body usage, stream scanning and
the gateway's own errors. Family readers have their own tests (test_family_*), decoders theirs
(test_decoding); these test what usage.py itself adds: bounds, never raising, leaving bodies alone."""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import time
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.net import encoding
from mitmproxy.test import tutils

from cfgw import decoding, recorder, usage
from cfgw.family import Usage
from cfgw.family_chat import CHAT
from cfgw.family_messages import FAMILY as MESSAGES
from cfgw.family_responses import FAMILY as RESPONSES
from cfgw.usage import (
    MAX_PARSE,
    StreamScanner,
    body_usage,
    fix_model_spelling,
    gateway_error,
    parsed,
    request_model,
    reshape_gateway_error,
)

CHAT_USAGE = {
    "prompt_tokens": 81,
    "completion_tokens": 15,
    "total_tokens": 96,
    "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
CHAT_EXPECTED = Usage(81, 15, 96, cached_tokens=64, reasoning_tokens=0)
CHUNK = {"id": "chatcmpl-AbC123", "object": "chat.completion.chunk", "model": "gpt-4o-mini-2024-07-18"}


def chat_stream(include_usage: bool = True, n_deltas: int = 3, crlf: bool = False) -> bytes:
    """A realistic chat.completion.chunk stream; with include_usage every chunk has "usage": null."""
    extra = {"usage": None} if include_usage else {}
    out = [": OPENROUTER PROCESSING\n\n"]
    for i in range(n_deltas):
        delta = {"index": 0, "delta": {"content": f"word{i} "}, "finish_reason": None}
        out.append("data: " + json.dumps({**CHUNK, "choices": [delta], **extra}) + "\n\n")
    if include_usage:
        out.append("data: " + json.dumps({**CHUNK, "choices": [], "usage": CHAT_USAGE}) + "\n\n")
    out.append("data: [DONE]\n\n")
    text = "".join(out)
    return (text.replace("\n", "\r\n") if crlf else text).encode()


STREAM = chat_stream()


def br_decodes() -> bool:
    """brotli < 1.2 (mitmproxy 11's venv) cannot bound its output, so decoding refuses br."""
    try:
        decoding.stream_decoder("br", decoding.Limits(max_output=1))
    except ValueError:
        return False
    return True


def decodable(coding: str | None) -> bool:
    return coding != "br" or br_decodes()


# --- request_model ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"model": "gpt-4o", "messages": []}', "gpt-4o"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4o"}', "gpt-4o"),
        (
            b'  {\n  "model" :\t"workers-ai/@cf/meta/llama-3.1-8b-instruct"}',
            "workers-ai/@cf/meta/llama-3.1-8b-instruct",
        ),
        # nested "model" keys before the top-level one must not win
        (b'{"metadata": {"model": "nested"}, "model": "top"}', "top"),
        (b'{"messages": [{"role": "user", "content": "{\\"model\\": \\"x\\"}"}], "model": "top"}', "top"),
        (b'{"a\\"model": "fake", "model": "real"}', "real"),
        (b'{"mod\\u0065l": "escaped"}', "escaped"),
        (b'{"model": "caf\\u00e9"}', "caf\u00e9"),
        (b'{"model": "\xc3\xa9t\xc3\xa9"}', "\u00e9t\u00e9"),
        (b'{"model": 42}', None),
        (b'{"model": null, "messages": []}', None),
        (b'{"messages": []}', None),
        (b'["model", "gpt-4o"]', None),
        (b'"model"', None),
        (b"model=gpt-4o", None),
        (b"", None),
        (b"\xff\xfe", None),
        (b'{"metadata": {"model": "nested"}}', None),
    ],
)
def test_request_model(body, expected):
    assert request_model(body) == expected


def test_request_model_huge_bodies():
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * (2 << 20)}}
    messages = [{"role": "user", "content": [image]}]
    head = json.dumps({"model": "gpt-4o", "messages": messages}).encode()
    tail = json.dumps({"messages": messages, "model": "gpt-4o-mini", "stream": True}).encode()
    assert len(head) > MAX_PARSE
    assert request_model(head) == "gpt-4o"
    assert request_model(tail) == "gpt-4o-mini"
    assert request_model(json.dumps({"messages": messages}).encode()) is None
    assert request_model(b"{" + b" " * (2 << 20)) is None


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_request_model_never_raises(body):
    m = request_model(body)
    assert m is None or isinstance(m, str)


# --- fix_model_spelling ------------------------------------------------------------------


def post(body: bytes) -> http.Request:
    return tutils.treq(method=b"POST", path=b"/v1/messages", content=body)


def fixed(body: bytes, route: str = "anthropic") -> tuple[str | None, bytes]:
    """(model the addon logs, body the provider gets), as gateway.forward calls it."""
    req = post(body)
    model = request_model(body)
    if model is None:
        return None, req.raw_content or b""
    return fix_model_spelling(req, model, route), req.raw_content or b""


@pytest.mark.parametrize(
    ("body", "route", "model", "sent"),
    [
        (
            b'{"model": "anthropic/claude-sonnet-4-5", "max_tokens": 5}',
            "anthropic",
            "claude-sonnet-4-5",
            b'{"model": "claude-sonnet-4-5", "max_tokens": 5}',
        ),
        (  # the Python SDKs put the model after the messages; spacing is kept as sent
            b'{"input":[{"role":"user","content":"hi"}],"model"  :"openai/gpt-5","stream":true}',
            "openai",
            "gpt-5",
            b'{"input":[{"role":"user","content":"hi"}],"model"  :"gpt-5","stream":true}',
        ),
        # the other provider's prefix, or compat, is left to the gateway
        (b'{"model": "openai/gpt-5"}', "anthropic", "openai/gpt-5", b'{"model": "openai/gpt-5"}'),
        (b'{"model": "anthropic/claude"}', "compat", "anthropic/claude", b'{"model": "anthropic/claude"}'),
        (b'{"model": "anthropic/"}', "anthropic", "anthropic/", b'{"model": "anthropic/"}'),
        (b'{"model": "claude-4-5"}', "anthropic", "claude-4-5", b'{"model": "claude-4-5"}'),
    ],
)
def test_fix_model_spelling_drops_the_provider_prefix_only(body, route, model, sent):
    assert fixed(body, route) == (model, sent)


def test_fix_model_spelling_sets_content_length():
    req = post(b'{"model": "anthropic/claude-sonnet-4-5"}')
    assert fix_model_spelling(req, "anthropic/claude-sonnet-4-5", "anthropic") == "claude-sonnet-4-5"
    assert req.headers["content-length"] == str(len(b'{"model": "claude-sonnet-4-5"}'))


ADVERSARIAL = [
    # (body, model logged, body sent): whatever the bytes, the value changed is the one json.loads
    # calls the model, and when that value cannot be located exactly the body is left alone.
    (  # the same value nested too: only the root's changes
        b'{"model": "anthropic/x", "metadata": {"model": "anthropic/x"}}',
        "x",
        b'{"model": "x", "metadata": {"model": "anthropic/x"}}',
    ),
    (  # nested after the root's key, in a tool's parameters (Claude Code's Task tool has "model")
        b'{"model": "anthropic/x", "tools": [{"input_schema": {"properties": {"model": {}}}}]}',
        "x",
        b'{"model": "x", "tools": [{"input_schema": {"properties": {"model": {}}}}]}',
    ),
    (  # inside a string value the quotes are escaped: not a key
        b'{"messages": [{"content": "\\"model\\": \\"anthropic/x\\""}], "model": "anthropic/x"}',
        "x",
        b'{"messages": [{"content": "\\"model\\": \\"anthropic/x\\""}], "model": "x"}',
    ),
    (  # the root's value spelled with an escape, a nested literal one
        b'{"model": "anthropic\\/x", "metadata": {"model": "anthropic/x"}}',
        "x",
        b'{"model": "x", "metadata": {"model": "anthropic/x"}}',
    ),
    (  # duplicated keys: json.loads keeps the last one, so that one changes
        b'{"model": "anthropic/x", "model": "anthropic/y"}',
        "y",
        b'{"model": "anthropic/x", "model": "y"}',
    ),
    (b'{"model": "x", "model": "anthropic/x"}', "x", b'{"model": "x", "model": "x"}'),
    (b'{"model": "anthropic/x", "model": "x"}', "x", b'{"model": "anthropic/x", "model": "x"}'),
    (  # a later duplicate spelled with escapes is the model json.loads sees
        b'{"model": "anthropic/x", "mod\\u0065l": "anthropic/y"}',
        "y",
        b'{"model": "anthropic/x", "mod\\u0065l": "y"}',
    ),
    (  # the root's key spelled with an escape, a nested literal one: not located exactly, left alone
        b'{"mod\\u0065l": "anthropic/x", "metadata": {"model": "anthropic/x"}}',
        "anthropic/x",
        b'{"mod\\u0065l": "anthropic/x", "metadata": {"model": "anthropic/x"}}',
    ),
    (  # "model" at the end of a key after an escaped quote, and the root's key escaped: left alone
        b'{"mod\\u0065l": "anthropic/x", "a\\"model": "anthropic/x"}',
        "anthropic/x",
        b'{"mod\\u0065l": "anthropic/x", "a\\"model": "anthropic/x"}',
    ),
    (b'[{"model": "anthropic/x"}]', None, b'[{"model": "anthropic/x"}]'),  # not an object
    (b'{"model": ["anthropic/x"]}', None, b'{"model": ["anthropic/x"]}'),
]


@pytest.mark.parametrize(("body", "model", "sent"), ADVERSARIAL)
def test_fix_model_spelling_changes_what_json_loads_calls_the_model(body, model, sent):
    assert fixed(body) == (model, sent)
    top = json.loads(body).get("model") if isinstance(json.loads(body), dict) else None
    if sent != body:
        assert json.loads(sent) == {**json.loads(body), "model": model}
        assert top == "anthropic/" + model


IMAGE = json.dumps([{"role": "user", "content": [{"type": "image", "source": {"data": "A" * MAX_PARSE}}]}])


@pytest.mark.parametrize(
    ("text", "model", "sent"),
    [
        (  # model first (Claude Code): only the value is parsed
            '{"model": "anthropic/claude", "messages": IMAGE}',
            "claude",
            '{"model": "claude", "messages": IMAGE}',
        ),
        (  # model after the messages (the Python SDKs): proved top-level by what follows it
            '{"messages": IMAGE, "model": "anthropic/claude", "stream": true}',
            "claude",
            '{"messages": IMAGE, "model": "claude", "stream": true}',
        ),
        (
            '{"model": "anthropic/claude", "messages": IMAGE, "tools": [{"properties": {"model": {}}}]}',
            "claude",
            '{"model": "claude", "messages": IMAGE, "tools": [{"properties": {"model": {}}}]}',
        ),
        (  # the root's last key is escaped, past more than a bounded look: left alone, never wrong
            '{"model": "anthropic/claude", "messages": IMAGE, "mod\\u0065l": "anthropic/other"}',
            None,
            '{"model": "anthropic/claude", "messages": IMAGE, "mod\\u0065l": "anthropic/other"}',
        ),
        (  # too big for the exact slow path, and the root's key is escaped: left alone
            '{"mod\\u0065l": "anthropic/claude", "messages": IMAGE, "m": {"model": "anthropic/claude"}}',
            None,
            '{"mod\\u0065l": "anthropic/claude", "messages": IMAGE, "m": {"model": "anthropic/claude"}}',
        ),
    ],
)
def test_fix_model_spelling_of_big_bodies(text, model, sent):
    body = text.replace("IMAGE", IMAGE).encode()
    assert len(body) > MAX_PARSE
    assert fixed(body) == (model, sent.replace("IMAGE", IMAGE).encode())


@pytest.mark.parametrize(
    "body",
    [
        b"{" + b" " * (32 << 20) + b'"model":"anthropic/x"}',  # white space before the key
        b'{"a":[1],"model":"anthropic/x"' + b',"b":1' * 5_000_000 + b"}",  # millions of keys after it
        b'{"a":"' + b"\\u0064" * 5_000_000 + b'","model":"anthropic/x"}',  # escapes everywhere
        b'{"m":[' + b'{"model":"n"},' * 2_000_000 + b'1],"model":"anthropic/x"}',  # nested keys
        b'{"model":"anthropic/x","a":[' + b"1," * (2 << 20) + b'1],"mod\\u0065l":"z"}',  # a slow tail
    ],
)
def test_model_lookup_is_bounded_on_hostile_bodies(body):
    """On mitmproxy's event loop for every request: at most a bounded look (it took seconds)."""
    request = http.Request.make("POST", "http://x/v1/messages", body)
    started = time.perf_counter()
    found = usage.model_span(body)
    if found is not None:
        usage.fix_model_spelling(request, found[0], "anthropic", found)
    assert time.perf_counter() - started < 0.5
    assert found is None or found[0] == json.loads(body)["model"]


_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._", min_size=1, max_size=12)
_prefixed = st.sampled_from(["anthropic/", "openai/", ""]).flatmap(lambda p: _names.map(lambda n: p + n))
_keys = st.sampled_from(["model", "messages", "metadata", 'a"model', "input", "m"])
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | _prefixed,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def request_bodies(draw) -> bytes:
    """JSON objects whose keys and values collide with the model spelling: nested and duplicated
    "model" keys (duplicates spliced into the text), keys spelled with escapes, odd spacing."""
    pairs = draw(st.lists(st.tuples(_keys, _json_values), max_size=5))
    for _ in range(draw(st.integers(0, 2))):
        pairs.insert(draw(st.integers(0, len(pairs))), ("model", draw(_prefixed)))
    item_sep, key_sep = draw(st.sampled_from([(", ", ": "), (",", ":"), (" ,\n", " :\t")]))
    members = []
    for key, value in pairs:
        k = json.dumps(key)
        if key == "model" and draw(st.booleans()):
            k = '"mod\\u0065l"'  # the same key, spelled with an escape
        members.append(k + key_sep + json.dumps(value, separators=(item_sep, key_sep)))
    return ("{" + item_sep.join(members) + "}").encode()


@settings(max_examples=300, deadline=None)
@given(request_bodies())
def test_request_model_is_what_json_loads_sees(body):
    top = json.loads(body).get("model")
    assert request_model(body) == (top if isinstance(top, str) else None)


@settings(max_examples=300, deadline=None)
@given(request_bodies(), st.sampled_from(["anthropic", "openai", "compat"]))
def test_fix_model_spelling_changes_only_what_json_loads_calls_the_model(body, route):
    """Property: the body is either left alone, or changed exactly as json.loads sees it: its top-level
    model loses the route's provider prefix, and nothing else differs (one value's bytes replaced)."""
    before = json.loads(body)
    model, sent = fixed(body, route)
    if sent == body:
        assert model == request_model(body)
        return
    prefix = usage.PROVIDER_PREFIX[route]
    top = before["model"]
    assert top.startswith(prefix) and model == top[len(prefix) :]
    assert json.loads(sent) == {**before, "model": model}
    # one spot changed: taking the prefix out of the body at one place gives what was sent
    p = prefix.encode()
    spots = [i for i in range(len(body)) if body.startswith(p, i)]
    assert any(body[:i] + body[i + len(p) :] == sent for i in spots)


def test_fix_model_spelling_property_is_not_vacuous():
    """Bodies shaped like the generator's do get fixed (so the property above tests something)."""
    assert fixed(b'{"m": 1, "model": "openai/gpt-5"}', "openai") == ("gpt-5", b'{"m": 1, "model": "gpt-5"}')
    assert fixed(b'{"mod\\u0065l": "openai/a", "model": "openai/b"}', "openai") == (
        "b",
        b'{"mod\\u0065l": "openai/a", "model": "b"}',
    )


# --- parsed / body_usage ---------------------------------------------------------------


def test_parsed_small_bodies_are_parsed_whole():
    assert parsed(b'{"usage": {"prompt_tokens": 1}, "x": [1]}') == {"usage": {"prompt_tokens": 1}, "x": [1]}
    assert parsed(b"[1, 2]") == [1, 2]
    assert parsed(b"{not json") is None
    assert parsed(b"\xff\xfe") is None


def big_embeddings(usage_obj: dict | None = None, usage_first: bool = False) -> bytes:
    data = [{"object": "embedding", "index": i, "embedding": [0.0123456789] * 1536} for i in range(60)]
    doc: dict = {"object": "list", "data": data, "model": "text-embedding-3-small"}
    if usage_obj is not None:
        doc = {"usage": usage_obj, **doc} if usage_first else {**doc, "usage": usage_obj}
    body = json.dumps(doc).encode()
    assert len(body) > MAX_PARSE
    return body


def test_parsed_big_bodies_only_for_their_trailing_usage():
    """Every family puts usage last: a big body is not parsed whole, only its trailing usage object."""
    assert parsed(big_embeddings({"prompt_tokens": 9, "total_tokens": 9})) == {
        "usage": {"prompt_tokens": 9, "total_tokens": 9}
    }
    assert parsed(big_embeddings({"prompt_tokens": 9}, usage_first=True)) is None  # not near the end
    assert parsed(big_embeddings()) is None
    assert parsed(big_embeddings({"prompt_tokens": 9})[:-3]) is None  # cut inside the usage object
    assert parsed(b"{" + b" " * MAX_PARSE + b'"usage": [1, 2]}') is None  # usage that is not an object


def buffered(body: bytes, coding: str | None = None, ctype: str = "application/json") -> http.Response:
    headers = [(b"content-type", ctype.encode())]
    if coding:
        headers.append((b"content-encoding", coding.encode()))
    resp = tutils.tresp(headers=http.Headers(headers), content=b"")
    resp.raw_content = body
    return resp


COMPLETION = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "usage": CHAT_USAGE}).encode()


@pytest.mark.parametrize("coding", [None, "gzip", "deflate", "br", "zstd"])
def test_body_usage_reads_encoded_bodies_without_changing_them(coding):
    raw = encoding.encode(COMPLETION, coding) if coding else COMPLETION
    resp = buffered(raw, coding)
    before = resp.get_state()
    assert body_usage(CHAT, resp) == (CHAT_EXPECTED if decodable(coding) else None)
    assert resp.get_state() == before


def test_body_usage_of_a_big_body_finds_the_trailing_usage():
    resp = buffered(big_embeddings({"prompt_tokens": 9, "total_tokens": 9}))
    assert body_usage(CHAT, resp) == Usage(9, None, 9)


@pytest.mark.parametrize(
    ("raw", "coding", "ctype"),
    [
        (COMPLETION, None, "text/plain"),  # only JSON bodies are read
        (COMPLETION, None, "text/event-stream"),
        (b"", None, "application/json"),
        (COMPLETION, "x-custom", "application/json"),
        (gzip.compress(gzip.compress(COMPLETION)), "gzip, gzip", "application/json"),
        (b'{"pad": "' + b"x" * usage.USAGE_PARSE_LIMIT + b'", "usage": {"prompt_tokens": 1}}', None, "json"),
        (b"[" * 100_000 + b"]" * 100_000, None, "application/json"),
        (b'{"usage": {"prompt_tokens": "11", "completion_tokens": 1.5}}', None, "application/json"),
    ],
)
def test_body_usage_of_unusable_bodies_is_none(raw, coding, ctype):
    assert body_usage(CHAT, buffered(raw, coding, ctype)) is None


def test_body_usage_when_the_family_reader_raises():
    def boom(obj):
        raise RuntimeError("reader bug")

    family = dataclasses.replace(CHAT, usage_from_json=boom)
    assert body_usage(family, buffered(COMPLETION)) is None


# --- StreamScanner ---------------------------------------------------------------------


def scan(pieces, coding: str | None = None, family=CHAT, close: bool = True) -> StreamScanner:
    s = StreamScanner(family, coding)
    for p in pieces:
        s.feed(p)
    if close:
        s.close()
    return s


def test_scanner_plain_and_crlf():
    assert scan([STREAM]).usage == CHAT_EXPECTED
    assert scan([chat_stream(crlf=True)]).usage == CHAT_EXPECTED
    assert scan([chat_stream(include_usage=False)]).usage is None


def test_scanner_close_delivers_a_last_event_without_its_blank_line():
    body = STREAM.replace(b"\n\ndata: [DONE]\n\n", b"")
    assert body.endswith(b"}")
    assert scan([body], close=False).usage is None
    assert scan([body]).usage == CHAT_EXPECTED


def test_scanner_split_at_every_byte_boundary():
    for i in range(len(STREAM) + 1):
        assert scan([STREAM[:i], STREAM[i:]]).usage == CHAT_EXPECTED, i


def test_scanner_gzip_split_at_every_byte_boundary():
    data = gzip.compress(STREAM)
    for i in range(len(data) + 1):
        assert scan([data[:i], data[i:]], "gzip").usage == CHAT_EXPECTED, i


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_scanner_split_at_random_points(cuts):
    points = [0, *sorted(cuts), len(STREAM)]
    assert scan([STREAM[a:b] for a, b in itertools.pairwise(points)]).usage == CHAT_EXPECTED


def test_scanner_ignores_empty_chunks_mid_stream():
    pieces = [p for i in range(0, len(STREAM), 50) for p in (STREAM[i : i + 50], b"")]
    assert scan(pieces).usage == CHAT_EXPECTED


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "deflate", "br", "zstd"])
def test_scanner_compressed_streams_in_small_pieces(coding):
    data = encoding.encode(chat_stream(n_deltas=50), "gzip" if coding == "x-gzip" else coding)
    s = scan([data[i : i + 7] for i in range(0, len(data), 7)], coding)
    assert s.usage == (CHAT_EXPECTED if decodable(coding) else None)
    assert s.disabled is not decodable(coding)


def test_scanner_gzip_members_and_raw_deflate():
    half = len(STREAM) // 2
    assert scan([gzip.compress(STREAM[:half]) + gzip.compress(STREAM[half:])], "gzip").usage == CHAT_EXPECTED
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert scan([c.compress(STREAM) + c.flush()], "deflate").usage == CHAT_EXPECTED


@pytest.mark.parametrize("coding", [None, "", "identity", "IDENTITY "])
def test_scanner_identity_encodings(coding):
    assert scan([STREAM], coding).usage == CHAT_EXPECTED


@pytest.mark.parametrize("coding", ["compress", "gzip, br", "bogus"])
def test_scanner_unknown_encoding_disables(coding):
    s = scan([STREAM], coding)
    assert s.disabled and s.usage is None


def test_scanner_corrupt_stream_stops_for_good():
    s = scan([b"\x1f\x8b\x08\x00garbage", gzip.compress(STREAM)], "gzip")
    assert s.disabled and s.usage is None


def test_scanner_keeps_usage_seen_before_the_stream_broke():
    data = gzip.compress(STREAM)
    s = scan([data, b"\x00garbage after the member"], "gzip")
    assert s.usage == CHAT_EXPECTED


def test_scanner_stops_when_the_reader_raises():
    class Boom:
        usage = None

        def event(self, event):
            raise RuntimeError("reader bug")

    family = dataclasses.replace(CHAT, stream_usage=Boom)
    s = scan([STREAM], family=family)
    assert s.disabled and s.usage is None


def test_scanner_reads_the_family_it_was_given():
    anthropic = (
        b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":7,'
        b'"output_tokens":1}}}\n\nevent: message_delta\ndata: {"type":"message_delta","usage":'
        b'{"output_tokens":3}}\n\n'
    )
    assert scan([anthropic], family=MESSAGES).usage == Usage(7, 3, cache_in_input=False)
    assert scan([STREAM], family=MESSAGES).usage is None
    assert scan([STREAM], family=RESPONSES).usage is None


HOSTILE_STREAMS = {
    "3 MiB of empty gzip members": (zlib.compress(b"", 9, 31) * 157286, "gzip"),
    "gzip of 16 MiB of zeros": (gzip.compress(bytes(16 << 20), 9), "gzip"),
    "an endless line": (gzip.compress(b"data: " + b"x" * (16 << 20)), "gzip"),
}


@pytest.mark.parametrize("case", HOSTILE_STREAMS)
def test_scanner_hostile_streams_cost_little_and_give_no_usage(case):
    raw, coding = HOSTILE_STREAMS[case]
    s = StreamScanner(CHAT, coding)
    start = time.perf_counter()
    for i in range(0, len(raw), 16 << 10):
        s.feed(raw[i : i + (16 << 10)])
    s.close()
    assert time.perf_counter() - start < 2.5  # seconds; STREAM_LIMITS allows 2 s in all, per stream
    assert s.usage is None


@settings(max_examples=300)
@given(
    st.lists(st.binary(max_size=300), max_size=8),
    st.sampled_from([None, "gzip", "deflate", "br", "zstd"]),
    st.sampled_from([CHAT, MESSAGES, RESPONSES]),
)
def test_scanner_never_raises(chunks, coding, family):
    s = StreamScanner(family, coding)
    for c in chunks:
        s.feed(c)
    s.close()
    assert s.usage is None or isinstance(s.usage, Usage)


# --- the gateway's own errors -------------------------------------------------------------

GATEWAY_401 = {
    "success": False,
    "result": [],
    "messages": [],
    "error": [{"code": 2009, "message": "Unauthorized"}],
}
GATEWAY_400 = {
    "success": False,
    "result": [],
    "messages": [],
    "error": [{"code": 2008, "message": "Invalid provider"}],
    "name": "AiGatewayError",
    "httpCode": 400,
    "internalCode": 2008,
    "message": "Invalid provider",
    "description": "Invalid provider",
}
PROVIDER_ERROR = {"error": {"message": "Incorrect API key", "type": "invalid_request_error", "code": "x"}}


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (GATEWAY_401, (2009, "Unauthorized")),
        ({"error": [{"code": "2009", "message": 5}]}, (None, "Gateway error")),
        ({"error": [{"code": True}]}, (None, "Gateway error")),
        (PROVIDER_ERROR, None),
        ({"error": []}, None),
        ({"error": ["text"]}, None),
        ([GATEWAY_401], None),
        (None, None),
    ],
)
def test_gateway_error(obj, expected):
    assert gateway_error(obj) == expected


def error_response(status: int, obj: object, coding: str | None = None) -> http.Response:
    raw = json.dumps(obj).encode()
    resp = buffered(encoding.encode(raw, coding) if coding else raw, coding)
    resp.status_code = status
    resp.headers["cf-ray"] = "8f00-LHR"
    return resp


def test_reshape_gateway_error_in_the_openai_shape_keeps_everything_else():
    resp = error_response(400, GATEWAY_400)
    assert reshape_gateway_error(resp, CHAT, reshape=True) == 2008
    assert resp.status_code == 400 and resp.headers["cf-ray"] == "8f00-LHR"
    assert json.loads(resp.content or b"") == {
        "error": {
            "message": "Invalid provider (AI Gateway error 2008)",
            "type": "gateway_error",
            "param": None,
            "code": 2008,
        },
        **{k: v for k, v in GATEWAY_400.items() if k != "error"},
    }
    assert resp.headers["content-length"] == str(len(resp.raw_content or b""))


def test_reshape_gateway_error_in_the_anthropic_shape():
    resp = error_response(401, GATEWAY_401)
    assert reshape_gateway_error(resp, MESSAGES, reshape=True) == 2009
    assert json.loads(resp.content or b"") == {
        "type": "error",
        "error": {
            "type": "authentication_error",
            "message": "Unauthorized (AI Gateway error 2009)",
            "code": 2009,
        },
        "success": False,
        "result": [],
        "messages": [],
    }


def test_reshape_gateway_error_of_an_encoded_body_stays_encoded():
    resp = error_response(401, GATEWAY_401, "gzip")
    assert reshape_gateway_error(resp, RESPONSES, reshape=True) == 2009
    assert resp.headers["content-encoding"] == "gzip"
    assert json.loads(gzip.decompress(resp.raw_content or b""))["error"]["code"] == 2009


@pytest.mark.parametrize(
    ("status", "obj", "reshape", "code"),
    [
        (401, GATEWAY_401, False, 2009),  # cf_gateway_errors=raw: the code is still known
        (401, PROVIDER_ERROR, True, None),  # the provider's own error passes through
        (200, GATEWAY_401, True, None),  # not an error status
        (500, ["not", "an", "object"], True, None),
    ],
)
def test_reshape_gateway_error_leaves_other_bodies_alone(status, obj, reshape, code):
    resp = error_response(status, obj)
    before = resp.get_state()
    assert reshape_gateway_error(resp, CHAT, reshape) == code
    assert resp.get_state() == before


def test_reshape_gateway_error_of_hostile_bodies():
    bomb = zlib.compress(b"", 9, 31) * 157286
    resp = buffered(bomb, "gzip")
    resp.status_code = 502
    start = time.perf_counter()
    assert reshape_gateway_error(resp, CHAT, reshape=True) is None
    assert time.perf_counter() - start < 0.5  # seconds; was 7.5 s before decoding was bounded
    assert resp.raw_content == bomb


@pytest.mark.parametrize(("depth", "code"), [(500, 2009), (100_000, None)])
def test_reshape_gateway_error_of_deeply_nested_bodies_never_raises(depth, code):
    """Too deep for the json module: not read (and not raised into the response hook)."""
    raw = b'{"error": [{"code": 2009, "message": "m"}], "deep": ' + b"[" * depth + b"]" * depth + b"}"
    resp = buffered(raw)
    resp.status_code = 401
    assert reshape_gateway_error(resp, CHAT, reshape=True) == code
    if code is None:
        assert resp.raw_content == raw
    else:
        assert json.loads(resp.content or b"")["deep"] == json.loads(raw)["deep"]


# --- the usage of a recorded stream, read around its usage events only ------------------------


_EVENTS = {
    "chat": [
        b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}',
        b'data: {"choices":[{"delta":{"content":"the \\"usage\\": {x} is text"}}]}',
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}',
        b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":6,"total_tokens":10}}',
        b"data: [DONE]",
        b": ping",
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5',  # cut off: not JSON
        b'data: {"choices":[],"usage":{"prompt_tokens":1}}\ndata: {"choices":[],"usage":{"total_tokens":2}}',
        b'data: {"choices":[{"delta":{"content":"' + b"filler " * 900 + b'"}}],"usage":null}',
    ],
    "messages": [
        b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":25,'
        b'"output_tokens":1,"cache_read_input_tokens":10}}}',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"type":"text_delta",'
        b'"text":"message_delta in text"}}',
        b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":15}}',
        b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":17}}',
        b'event: ping\ndata: {"type":"ping"}',
    ],
    "responses": [
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"x"}',
        b'event: response.completed\ndata: {"type":"response.completed","response":{"usage":'
        b'{"input_tokens":9,"output_tokens":4,"total_tokens":13}}}',
        b'event: response.failed\ndata: {"type":"response.failed","response":{"usage":'
        b'{"input_tokens":1,"output_tokens":2,"total_tokens":3}}}',
        b'data: {"type":"response.completed","response":{"usage":{"input_tokens":7,"output_tokens":1}}}',
        b'event: response.completed\ndata: {"type":"response.completed","response":{"usage":null}}',
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"'
        + b"filler " * 900
        + b'"}',
    ],
}
_FAMILIES = {"chat": CHAT, "messages": MESSAGES, "responses": RESPONSES}


def _whole_scan(family, body: bytes, complete: bool):
    scanner = usage.StreamScanner(family)
    scanner.feed(body)
    if complete:
        scanner.close()
    return scanner.usage


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(_EVENTS)),
    st.data(),
    st.booleans(),
    st.booleans(),
)
def test_recorded_stream_usage_equals_a_whole_scan(name, data, cut_short, complete):
    """Reading only the events around the markers gives what parsing every event gives."""
    family = _FAMILIES[name]
    events = data.draw(st.lists(st.sampled_from(_EVENTS[name]), max_size=12))
    body = b"".join(e + b"\n\n" for e in events)
    if cut_short and body:
        body = body[: data.draw(st.integers(0, len(body)))]
    assert usage.recorded_stream_usage(family, body, complete) == _whole_scan(family, body, complete)


class _SearchSpy:
    """A family's usage_events pattern that remembers which bytes were searched."""

    def __init__(self, pattern):
        self.pattern, self.searched = pattern, 0

    def finditer(self, body, pos=0, endpos=None):
        endpos = len(body) if endpos is None else endpos
        self.searched += endpos - pos
        return self.pattern.finditer(body, pos, endpos)


@pytest.mark.parametrize("name", ["chat", "responses"])
def test_a_stream_whose_last_usage_wins_is_read_from_its_end(name, monkeypatch):
    """Chat and Responses: the usage event sits at the end, and only the bytes there are searched
    and parsed, not every delta (a 60 KB agent answer cost 50 µs searched from its start)."""
    delta, final = (_EVENTS[name][0], _EVENTS[name][2]) if name == "chat" else _EVENTS[name][:2]
    body = b"".join(e + b"\n\n" for e in [delta] * 1000 + [final, b"data: [DONE]"])
    spy = _SearchSpy(_FAMILIES[name].usage_events)
    family = dataclasses.replace(_FAMILIES[name], usage_events=spy)
    parsed = []
    monkeypatch.setattr(usage.sse, "parse", lambda b, parse=usage.sse.parse: parsed.append(b) or parse(b))
    expected = Usage(3, 5, 8) if name == "chat" else Usage(9, 4, 13)
    assert usage.recorded_stream_usage(family, body, True) == expected == _whole_scan(family, body, True)
    assert parsed == [final + b"\n\n"]
    assert len(body) > 60_000 and spy.searched < 2 * usage._FIRST_LOOK
    assert family.last_usage_wins and not MESSAGES.last_usage_wins  # Anthropic's usage adds up


def test_a_stream_of_usage_events_without_counts_is_read_in_linear_time():
    """Hostile upstream: every event looks like chat's usage event and none has a count. Looking
    back from the end finds one; then the stream is read once, in order, not looked back at again."""
    body = b'data: {"usage":{}}\n\n' * (recorder.LAZY_SCAN // 20)  # the most a recorded stream holds
    start = time.perf_counter()
    assert usage.recorded_stream_usage(CHAT, body + _EVENTS["chat"][2] + b"\n\n", True) == Usage(3, 5, 8)
    assert usage.recorded_stream_usage(CHAT, _EVENTS["chat"][2] + b"\n\n" + body, True) == Usage(3, 5, 8)
    assert usage.recorded_stream_usage(CHAT, body, True) is None
    assert time.perf_counter() - start < 3  # seconds; about 0.2 s here


def test_when_the_last_usage_event_has_none_the_stream_is_read_as_in_order():
    """Found by a fuzzer: a marker whose white space runs across a blank line, before a usage
    object split over two data lines. Reading back from the end, then in order, gives the 5."""
    body = b': x\n\ndata: {"usage"\ndata: :{"prompt_tokens":5}}\n: "usage"\n\n:{\ndata: {"usage":{}}\n\n'
    for complete in (True, False):
        assert usage.recorded_stream_usage(CHAT, body, complete) == Usage(input_tokens=5)
        assert _whole_scan(CHAT, body, complete) == Usage(input_tokens=5)


def test_recorded_stream_usage_with_cr_line_ends_reads_the_whole_stream():
    body = b"".join(e.replace(b"\n", b"\r\n") + b"\r\n\r\n" for e in _EVENTS["messages"][:3])
    assert usage.recorded_stream_usage(MESSAGES, body, True) == _whole_scan(MESSAGES, body, True)
    assert usage.recorded_stream_usage(MESSAGES, body, True) is not None


# --- usage read from the tail of a response body -------------------------------------------------

_usage_keys = st.sampled_from(["usage", "choices", "model", 'a"usage', "id", "u"])
_usage_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(["usage", '"usage": {}', "x\\"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_usage_keys, inner, max_size=3),
    max_leaves=8,
)
_usage_objects = st.fixed_dictionaries(
    {"prompt_tokens": st.integers(0, 10**6), "completion_tokens": st.integers(0, 10**6)}
)


@st.composite
def response_bodies(draw) -> bytes:
    """JSON objects whose keys and values collide with the usage key: nested and duplicated "usage"
    keys (duplicates spliced into the text), keys spelled with escapes, strings holding the key."""
    pairs = draw(st.lists(st.tuples(_usage_keys, _usage_values), max_size=5))
    for _ in range(draw(st.integers(0, 2))):
        pairs.insert(draw(st.integers(0, len(pairs))), ("usage", draw(_usage_objects | _usage_values)))
    item_sep, key_sep = draw(st.sampled_from([(", ", ": "), (",", ":"), (" ,\n", " :\t")]))
    members = []
    for key, value in pairs:
        k = json.dumps(key)
        if key == "usage" and draw(st.booleans()):
            k = draw(st.sampled_from(['"us\\u0061ge"', '"\\u0075sage"', '"usag\\u0065"']))
        members.append(k + key_sep + json.dumps(value, separators=(item_sep, key_sep)))
    lead = draw(st.sampled_from(["", " ", "\n"]))
    return (lead + "{" + item_sep.join(members) + "}" + draw(st.sampled_from(["", "\n"]))).encode()


@settings(max_examples=500, deadline=None)
@given(response_bodies())
def test_usage_body_is_what_json_loads_sees(body):
    whole = json.loads(body)
    got = usage.usage_body(body)
    if "usage" in whole:
        assert got == {"usage": whole["usage"]} or got == whole
        assert got["usage"] == whole["usage"]
    else:
        assert got == whole  # no usage key at the root: the body as parsed() gives it


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b'{"id":"x","usage":{"prompt_tokens":3},"system_fingerprint":"fp"}',
            {"usage": {"prompt_tokens": 3}},
        ),
        (b'{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2}}', {"usage": {"prompt_tokens": 2}}),
        (b'{"usage":{"prompt_tokens":1},"us\\u0061ge":{"prompt_tokens":2}}', {"usage": {"prompt_tokens": 2}}),
        (b'{"a":{"usage":{"prompt_tokens":1}}}', {"a": {"usage": {"prompt_tokens": 1}}}),  # nested: parsed
        (b'{"input_tokens": 12}', {"input_tokens": 12}),  # count_tokens: no usage key, parsed whole
        (b'[{"usage":{"prompt_tokens":1}}]', [{"usage": {"prompt_tokens": 1}}]),
        (b'{"a":[1],"usage":{"prompt_tokens":1}} trailing', None),  # not JSON: nothing, as json.loads
        (b'{"x": "\\"usage\\": {\\"prompt_tokens\\": 9}", "usage": null}', {"usage": None}),
    ],
)
def test_usage_body_examples(body, expected):
    assert usage.usage_body(body) == expected


def test_usage_body_does_not_parse_a_long_answer_whole(monkeypatch):
    """A 2 MB answer with its usage at the end: the text before the usage is never decoded."""
    body = json.dumps(
        {"choices": [{"message": {"content": "x" * 2_000_000}}], "usage": {"prompt_tokens": 5}}
    ).encode()
    monkeypatch.setattr(usage.json, "loads", None)  # a whole parse would fail loudly
    assert usage.usage_body(body) == {"usage": {"prompt_tokens": 5}}
