"""What each API family (OpenAI chat, Anthropic Messages, OpenAI Responses) gives the shared pipeline.

The pipeline (route, authenticate, forward, stream, account, render) is the same
for every family; only these few things differ. A new family is one module that
builds a ``Family``, its entry in ``families.BY_NAME`` and its row in ``routes.PROVIDER_ROUTES``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from cfgw.sse import Event


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one response; a field is None when the provider did not report it.

    ``input_tokens``/``output_tokens`` are OpenAI's prompt/completion tokens or the
    Responses/Anthropic input/output tokens, as the provider counts them (Anthropic's
    input excludes cache reads and writes, which have fields of their own).
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None  # OpenAI cached_tokens, Anthropic cache_read_input_tokens
    cache_creation_tokens: int | None = None  # Anthropic cache_creation_input_tokens
    reasoning_tokens: int | None = None
    cache_in_input: bool = True
    """OpenAI counts cached tokens inside the input; Anthropic reports cache reads and writes apart."""

    @property
    def total(self) -> int | None:
        """The reported total, else the sum of what is known (Anthropic reports no total)."""
        if self.total_tokens is not None:
            return self.total_tokens
        parts = [self.input_tokens, self.output_tokens]
        if not self.cache_in_input:
            parts += [self.cached_tokens, self.cache_creation_tokens]
        if all(p is None for p in parts):
            return None
        return sum(p or 0 for p in parts)


MAX_COUNT = 1 << 53
"""Counts above this are refused: no response holds that many tokens, and a metric is a float."""


def count(v: Any) -> int | None:
    """A token count is a non-negative int up to MAX_COUNT (bool and float are refused)."""
    return v if type(v) is int and 0 <= v <= MAX_COUNT else None


class StreamUsage(Protocol):
    """Reads usage from a family's server-sent events, one event at a time; never raises."""

    usage: Usage | None

    def event(self, event: Event) -> None: ...


def markers(names: Iterable[str]) -> re.Pattern[bytes]:
    """A pattern finding any of ``names`` (the event names that carry usage) in a recorded stream."""
    return re.compile(b"|".join(re.escape(name.encode()) for name in sorted(names)))


@dataclass(frozen=True)
class Family:
    """One API family: its name (a log field and a bounded metrics label) and what differs."""

    name: str
    """'chat', 'messages', 'responses' or 'other'."""
    error_body: Callable[[int, str, str | int | None, str], dict]
    """(status, message, code, openai_type) -> an error body in this family's own shape."""
    usage_from_json: Callable[[Any], Usage | None]
    """Usage from a parsed (non-streamed) response body; None when it has none. A body whose root
    has a ``usage`` key arrives as ``{"usage": value}`` only (usage.usage_body reads no more)."""
    stream_usage: Callable[[], StreamUsage]
    """A fresh reader of usage from this family's event stream."""
    render_request: Callable[[dict], str]
    """A parsed request body as a transcript for mitmweb."""
    render_response: Callable[[dict], str]
    """A parsed response body as a transcript."""
    render_stream: Callable[[Iterable[Event]], str]
    """A recorded event stream as the assembled reply."""
    looks_like_request: Callable[[Any], bool]
    """Whether a parsed body is this family's request (content-view sniffing without a flow)."""
    looks_like_response: Callable[[Any], bool]
    """Whether a parsed body is this family's response, or an event's data is one of its events."""
    usage_events: re.Pattern[bytes] | None = None
    """Bytes that every event able to carry usage contains: reading a recorded stream, only the
    events around them are parsed (a handful, instead of hundreds of deltas). None: every event."""
    last_usage_wins: bool = False
    """Whether a stream's usage is what its last usage event says (chat, Responses) rather than
    a sum over several (Anthropic's message_start and message_delta): then a recorded stream is
    read from its end, where that event is, instead of searched from its start."""
