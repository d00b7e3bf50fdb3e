"""The stream Recorder: relays every chunk unchanged, keeps a bounded copy, reads usage exactly."""

from __future__ import annotations

import itertools
import json
import time
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from cfgw.stream import MAX_EVENT, Recorder
from tests.flows import reverse_flow, sse_response


def event(obj: dict, name: str = "", newline: bytes = b"\n") -> bytes:
    lines = [f"event: {name}".encode()] if name else []
    return newline.join([*lines, b"data: " + json.dumps(obj).encode(), b""]) + newline


MESSAGES = b"".join(
    [
        event({"type": "message_start", "message": {"model": "claude-x", "usage": {"input_tokens": 25,
               "cache_read_input_tokens": 7, "output_tokens": 1}}}, "message_start"),
        event({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "usage \"model\""}},
              "content_block_delta", b"\r\n"),
        b": a comment\n\n",
        event({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 42}},
              "message_delta", b"\r\n"),
        event({"type": "message_stop"}, "message_stop"),
    ]
)  # fmt: skip
MESSAGES_USAGE = {"input": 25, "cached": 7, "output": 42}


def recorder(limit: int = 1 << 20) -> Recorder:
    f = reverse_flow()
    f.response = sse_response()
    return Recorder(f, limit)


def relay(r: Recorder, chunks: list[bytes]) -> bytes:
    out = b"".join(r(c) for c in chunks)
    assert r(b"") == b""
    return out


def test_chunks_are_relayed_unchanged_and_usage_is_read():
    r = recorder()
    assert relay(r, [MESSAGES]) == MESSAGES
    assert (r.usage, r.model) == (MESSAGES_USAGE, "claude-x")
    assert r.flow.response.raw_content == MESSAGES
    assert r.summary() == {"usage": MESSAGES_USAGE, "answer_model": "claude-x", "bytes": len(MESSAGES),
                           "truncated": False}  # fmt: skip


@settings(deadline=None)  # a loaded machine is no failure
@given(st.lists(st.integers(0, len(MESSAGES)), max_size=20))
def test_any_chunking_gives_the_same_usage_and_record(cuts):
    points = sorted({0, *cuts, len(MESSAGES)})
    r = recorder()
    relay(r, [MESSAGES[a:b] for a, b in itertools.pairwise(points)])
    assert (r.usage, r.model) == (MESSAGES_USAGE, "claude-x")
    assert r.summary() == {"usage": MESSAGES_USAGE, "answer_model": "claude-x", "bytes": len(MESSAGES),
                           "truncated": False}  # fmt: skip
    assert r.flow.response.raw_content == MESSAGES


def test_openai_chat_stream_usage_and_last_event_without_blank_line():
    body = (
        event(
            {"object": "chat.completion.chunk", "model": "gpt-4o", "choices": [{"delta": {}}], "usage": None}
        )
        + b"data: [DONE]\n\n"
        + b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}'
    )
    r = recorder()
    relay(r, [body])
    assert (r.usage, r.model) == ({"input": 3, "output": 4, "total": 7}, "gpt-4o")


def test_record_is_bounded_by_the_limit_and_usage_exact_past_it():
    filler = b"".join(event({"type": "response.output_text.delta", "delta": "x" * 50}) for _ in range(100))
    last = event({"type": "response.completed", "response": {"model": "gpt-5", "usage": {"input_tokens": 5,
                  "output_tokens": 100, "total_tokens": 105}}})  # fmt: skip
    r = recorder(limit=1000)
    relay(r, [filler[:700], filler[700:], last])
    assert r.flow.response.raw_content == filler[:1000]
    assert r.usage == {"input": 5, "output": 100, "total": 105} and r.model == "gpt-5"
    assert r.summary()["truncated"] and r.summary()["bytes"] == len(filler + last)


def test_a_stream_cut_short_counts_as_truncated():
    r = recorder()
    r(MESSAGES[:100])
    assert r.summary()["truncated"] and r.summary()["bytes"] == 100


def test_a_huge_event_without_a_blank_line_keeps_time_and_memory_bounded():
    r = recorder(limit=1 << 16)
    giant = b"data: " + b"x" * (4 << 20)
    tracemalloc.start()
    start = time.perf_counter()
    for i in range(0, len(giant), 1024):  # as a slow upstream sends it
        r(giant[i : i + 1024])
    r(b"\n\n" + event({"usage": {"output_tokens": 3}}))
    r(b"")
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 5
    assert peak < 4 * MAX_EVENT
    assert r.usage == {"output": 3}  # what follows is still read
    assert len(r.flow.response.raw_content) == 1 << 16


def test_an_event_nested_past_pythons_limit_is_relayed_and_not_read():
    f = reverse_flow()
    f.response = sse_response()
    recorder = Recorder(f, 1 << 20)
    deep = b"data: " + b"[" * 100_000 + b"]" * 100_000 + b', "usage": 1\n\n'
    assert recorder(deep) == deep and recorder(b"") == b""
    assert recorder.usage == {}
