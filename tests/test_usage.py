import gzip
import itertools
import json
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfgw.usage import MAX_LINE, SSEUsageScanner, Usage, request_model, usage_from_json

# --- fixtures ----------------------------------------------------------------------

CHUNK = {
    "id": "chatcmpl-AbC123",
    "object": "chat.completion.chunk",
    "created": 1732600000,
    "model": "gpt-4o-mini-2024-07-18",
    "system_fingerprint": "fp_0ba0d124f1",
}
USAGE = {
    "prompt_tokens": 81,
    "completion_tokens": 15,
    "total_tokens": 96,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0},
}


def sse(include_usage=True, done=True, n_deltas=3, crlf=False):
    """A realistic OpenAI chat.completion.chunk stream; with include_usage every chunk has "usage": null."""
    extra = {"usage": None} if include_usage else {}

    def ev(obj):
        return "data: " + json.dumps(obj) + "\n\n"

    out = [": OPENROUTER PROCESSING\n\n"]
    out.append(
        ev(
            {
                **CHUNK,
                "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                ],
                **extra,
            }
        )
    )
    for i in range(n_deltas):
        out.append(
            ev(
                {
                    **CHUNK,
                    "choices": [{"index": 0, "delta": {"content": f"word{i} "}, "finish_reason": None}],
                    **extra,
                }
            )
        )
    out.append(ev({**CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], **extra}))
    if include_usage:
        out.append(ev({**CHUNK, "choices": [], "usage": USAGE}))
    if done:
        out.append("data: [DONE]\n\n")
    text = "".join(out)
    if crlf:
        text = text.replace("\n", "\r\n")
    return text.encode()


def scan(body, encoding=None, pieces=None, finish=True):
    s = SSEUsageScanner(encoding)
    if pieces is None:
        pieces = [body]
    for p in pieces:
        s.feed(p)
    if finish:
        s.close()
    return s


def state(s):
    return (s.usage, s.model, s.events, s.done, s.disabled)


EXPECTED = (Usage(81, 15, 96), "gpt-4o-mini-2024-07-18", 6, True, False)
BODY = sse()


# --- Usage / usage_from_json ---------------------------------------------------------


def test_usage_total_fallback():
    assert Usage(1, 2, 10).total == 10
    assert Usage(1, 2, None).total == 3
    assert Usage(5, None, None).total == 5
    assert Usage().total is None


def test_usage_from_chat_completion():
    body = json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "gpt-4o",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
            ],
            "usage": USAGE,
        }
    ).encode()
    assert usage_from_json(body) == Usage(81, 15, 96)


def test_usage_from_embeddings():
    body = json.dumps(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 8, "total_tokens": 8},
        }
    ).encode()
    u = usage_from_json(body)
    assert u == Usage(8, None, 8)
    assert u.total == 8


def test_usage_missing_total():
    u = usage_from_json(b'{"usage": {"prompt_tokens": 3, "completion_tokens": 4}}')
    assert u == Usage(3, 4, None)
    assert u.total == 7


def test_usage_responses_api_names():
    assert usage_from_json(b'{"usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}}') == Usage(
        3, 4, 7
    )


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"usage": null}',
        b'{"usage": {}}',
        b'{"usage": {"prompt_tokens": "12", "total_tokens": true}}',
        b'{"usage": {"prompt_tokens": -1}}',
        b'{"usage": {"prompt_tokens": 1.5}}',
        b'{"no": "usage"}',
        b'{"usage": {"prompt_tokens": 1',
        b"\xff\xfe\x00garbage",
    ],
)
def test_usage_from_json_junk(body):
    assert usage_from_json(body) is None


def test_usage_from_large_bodies():
    vec = [0.0123456789] * 1536
    data = [{"object": "embedding", "index": i, "embedding": vec} for i in range(60)]
    body = json.dumps(
        {"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": 9, "total_tokens": 9}}
    )
    body = body.encode()
    assert len(body) > 1 << 20
    assert usage_from_json(body) == Usage(9, None, 9)
    # mid-size (> 64 KiB, < 1 MiB): fast tail path and exact full parse agree
    mid = json.dumps({"object": "list", "data": data[:5], "usage": {"prompt_tokens": 2, "total_tokens": 2}})
    assert usage_from_json(mid.encode()) == Usage(2, None, 2)
    # usage not near the end of a mid-size body: falls back to a full parse
    mid = json.dumps({"usage": {"prompt_tokens": 2, "total_tokens": 2}, "data": data[:5]})
    assert usage_from_json(mid.encode()) == Usage(2, None, 2)
    # huge body without usage at the end: no full parse, just None
    huge = json.dumps({"usage": {"prompt_tokens": 2, "total_tokens": 2}, "data": data})
    assert usage_from_json(huge.encode()) is None


# --- request_model ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, expected",
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
    assert len(head) > 1 << 20
    assert request_model(head) == "gpt-4o"
    assert request_model(tail) == "gpt-4o-mini"
    assert request_model(json.dumps({"messages": messages}).encode()) is None
    assert request_model(b"{" + b" " * (2 << 20)) is None


# --- SSEUsageScanner ---------------------------------------------------------------


def test_sse_plain():
    assert state(scan(BODY)) == EXPECTED


def test_sse_crlf_and_no_final_newline():
    assert state(scan(sse(crlf=True))) == EXPECTED
    s = scan(BODY.rstrip(b"\n"))  # "data: [DONE]" without its newline, flushed by close()
    assert s.done
    s = scan(BODY.rstrip(b"\n"), finish=False)
    assert not s.done and s.usage == Usage(81, 15, 96)


def test_sse_without_usage_chunk():
    s = scan(sse(include_usage=False))
    assert state(s) == (None, "gpt-4o-mini-2024-07-18", 5, True, False)


def test_sse_usage_null_chunks_are_not_usage():
    s = scan(sse(include_usage=True, done=False)[: BODY.find(b'"usage": {')])
    assert s.usage is None and s.model == "gpt-4o-mini-2024-07-18" and not s.done


def test_sse_last_usage_wins():
    body = (
        b'data: {"usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}\n\n'
        b'data: {"usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}}\n\n'
    )
    assert scan(body).usage == Usage(5, 6, 11)


def test_sse_cut_short():
    cut = BODY[: len(BODY) // 2]
    s = scan(cut)
    assert s.usage is None and not s.done and not s.disabled
    assert s.model == "gpt-4o-mini-2024-07-18"


def _deflate_raw(data):
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def _encoders():
    enc = {
        "gzip": gzip.compress,
        "x-gzip": gzip.compress,
        "deflate": zlib.compress,
        "deflate-raw": _deflate_raw,
    }
    try:
        import brotli

        enc["br"] = brotli.compress
    except ImportError:  # pragma: no cover
        pass
    try:
        from backports import zstd

        enc["zstd"] = zstd.compress
    except ImportError:
        try:
            import zstandard

            enc["zstd"] = zstandard.ZstdCompressor().compress
        except ImportError:  # pragma: no cover
            pass
    return enc


ENCODERS = _encoders()


@pytest.mark.parametrize("name", sorted(ENCODERS))
@pytest.mark.parametrize("include_usage", [True, False])
def test_sse_compressed(name, include_usage):
    body = sse(include_usage=include_usage, n_deltas=50)
    header = "deflate" if name == "deflate-raw" else name
    data = ENCODERS[name](body)
    whole = state(scan(data, header))
    assert whole == state(scan(body))
    assert whole[0] == (Usage(81, 15, 96) if include_usage else None)
    # compressed bytes arriving in small pieces
    pieces = [data[i : i + 7] for i in range(0, len(data), 7)]
    assert state(scan(data, header, pieces)) == whole


def test_gzip_concatenated_members():
    half = len(BODY) // 2
    data = gzip.compress(BODY[:half]) + gzip.compress(BODY[half:])
    assert state(scan(data, "gzip")) == EXPECTED


def test_gzip_bomb_is_processed_in_bounded_pieces():
    body = b": " + b"x" * (8 << 20) + b"\n" + BODY  # a 8 MiB comment line is dropped
    assert state(scan(gzip.compress(body), "gzip")) == EXPECTED


@pytest.mark.parametrize("enc", ["compress", "gzip, br", "bogus"])
def test_unknown_encoding_disables(enc):
    s = scan(BODY, enc)
    assert s.disabled and s.usage is None and s.events == 0


@pytest.mark.parametrize("enc", [None, "", "identity", "IDENTITY "])
def test_identity_encodings(enc):
    assert state(scan(BODY, enc)) == EXPECTED


def test_corrupt_compressed_stream_disables():
    s = scan(b"\x1f\x8b\x08\x00garbage" + BODY, "gzip")
    assert s.disabled and s.usage is None


def test_split_at_every_byte_boundary():
    for i in range(len(BODY) + 1):
        assert state(scan(BODY, pieces=[BODY[:i], BODY[i:]])) == EXPECTED, i
    crlf = sse(crlf=True)
    for i in range(0, len(crlf) + 1, 3):
        assert state(scan(crlf, pieces=[crlf[:i], crlf[i:]])) == EXPECTED, i


def test_split_gzip_at_every_byte_boundary():
    data = gzip.compress(BODY)
    for i in range(len(data) + 1):
        assert state(scan(data, "gzip", [data[:i], data[i:]])) == EXPECTED, i


def test_empty_chunks_mid_stream_are_ignored():
    pieces = []
    for i in range(0, len(BODY), 50):
        pieces += [BODY[i : i + 50], b""]
    assert state(scan(BODY, pieces=pieces)) == EXPECTED


def test_byte_by_byte():
    assert state(scan(BODY, pieces=[BODY[i : i + 1] for i in range(len(BODY))])) == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(BODY)), max_size=12))
def test_split_at_random_points(cuts):
    points = [0, *sorted(cuts), len(BODY)]
    pieces = [BODY[a:b] for a, b in itertools.pairwise(points)]
    assert state(scan(BODY, pieces=pieces)) == EXPECTED


def test_huge_line_is_dropped_and_scanning_continues():
    huge = b'data: {"usage": {"prompt_tokens": 1, "total_tokens": 1}, "pad": "' + b"x" * MAX_LINE + b'"}\n\n'
    # in one piece, and trickled in 64 KiB pieces (partial-line bound)
    for pieces in ([huge + BODY], [huge[i : i + 65536] for i in range(0, len(huge), 65536)] + [BODY]):
        s = scan(None, pieces=pieces)
        assert state(s) == EXPECTED
    # a line longer than MAX_LINE never finishing: nothing buffered beyond the bound
    s = SSEUsageScanner()
    for _ in range(40):
        s.feed(b"x" * 65536)
    assert len(s._partial) <= MAX_LINE
    s.feed(b"\n" + BODY)
    assert state(s)[:4] == EXPECTED[:4]


@settings(max_examples=300)
@given(
    st.lists(st.binary(max_size=300), max_size=8), st.sampled_from([None, "gzip", "deflate", "br", "zstd"])
)
def test_fuzz_feed_never_raises(chunks, enc):
    s = SSEUsageScanner(enc)
    for c in chunks:
        s.feed(c)
    s.close()
    assert s.usage is None or isinstance(s.usage, Usage)
    assert s.model is None or isinstance(s.model, str)
    assert isinstance(s.events, int) and isinstance(s.done, bool)


@given(
    st.lists(
        st.sampled_from([b"data:", b" ", b"{", b"}", b'"usage"', b":", b"null", b"\n", b"\r", b"[DONE]"])
    )
)
def test_fuzz_sse_tokens(tokens):
    s = scan(b"".join(tokens))
    assert s.usage is None and s.model is None and not s.disabled


@given(st.binary(max_size=2000))
def test_fuzz_json_helpers(body):
    m = request_model(body)
    assert m is None or isinstance(m, str)
    u = usage_from_json(body)
    assert u is None or isinstance(u, Usage)
