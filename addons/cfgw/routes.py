"""Which family a request speaks, and where upstream it goes; unsafe paths are refused.

Client paths work with and without a leading ``/v1``; the query is kept byte for byte.

Upstream paths are under /v1/{account}/{gateway} (gateway) or /client/v4/accounts/{account} (rest).

| client path              | family    | cf_api=gateway                | cf_api=rest                    |
|--------------------------|-----------|-------------------------------|--------------------------------|
| /v1/messages[/...]       | messages  | /anthropic/v1/messages[/...]  | /ai/v1/messages (only)         |
| /v1/responses[/...]      | responses | /openai/responses[/...]       | /ai/v1/responses (only)        |
| /v1/chat/completions     | chat      | /compat/chat/completions      | /ai/v1/chat/completions        |
| /ai/run, /v1/ai/run      | run       | /compat/ai/run                | /ai/run                        |
| anything else            | other     | /compat/<path>                | refused: not in the REST API   |

The upstream path must stay under its prefix for anyone who decodes or normalises it
later, so every form that could step outside is refused rather than normalised: dot
segments, encoded dots, slashes, backslashes and percents, backslashes, empty segments,
and control, space or non-ASCII characters.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# A request target is printable ASCII without spaces.
UNPRINTABLE_RE = re.compile(r"[^\x21-\x7e]")
# In the path: a backslash, an empty or dot segment, a malformed escape, or an escape of a byte
# that changes the path's structure once decoded ('%', '.', '/', '\\') or is a control or non-ASCII.
UNSAFE_PATH_RE = re.compile(
    r"\\|//|/\.|%(?![0-9A-Fa-f]{2})|%(?:[01][0-9A-Fa-f]|2[5EeFf]|5[Cc]|7[Ff]|[89A-Fa-f][0-9A-Fa-f])"
)

GATEWAY_ROUTES = (  # (client path under /v1, family, upstream path under the prefix)
    ("/messages", "messages", "/anthropic/v1/messages"),
    ("/responses", "responses", "/openai/responses"),
    ("/chat/completions", "chat", "/compat/chat/completions"),
)
REST_ROUTES = {  # client path under /v1 -> upstream path under the prefix
    "/messages": "/ai/v1/messages",
    "/responses": "/ai/v1/responses",
    "/chat/completions": "/ai/v1/chat/completions",
    "/ai/run": "/ai/run",
}


class Refused(ValueError):
    """A request the proxy answers itself: (status, code, message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


class Route(NamedTuple):
    family: str
    upstream: str  # path under the prefix, with the query


def family_of(path: str) -> str:
    """The family a client path speaks (it decides the error shape), whatever its route."""
    sub = without_v1(without_v1(path.partition("?")[0]))  # a doubled /v1 is still that family's
    for client, family, _ in GATEWAY_ROUTES:
        if sub == client or sub.startswith(client + "/"):
            return family
    return "run" if sub == "/ai/run" else "other"


def without_v1(path: str) -> str:
    return path[3:] if path == "/v1" or path.startswith("/v1/") else path


def route(target: str, api: str) -> Route:
    """Family and upstream path for a client request target, else Refused."""
    path, sep, query = target.partition("?")
    check_path(target)
    sub = without_v1(path)
    if sub == "/v1" or sub.startswith("/v1/"):
        raise Refused(
            404, "doubled_v1", f"the path {path} has /v1 twice: drop /v1 from the client's base URL"
        )
    upstream = rest_path(sub) if api == "rest" else gateway_path(sub)
    return Route(family_of(path), upstream + sep + query)


def rest_path(sub: str) -> str:
    if sub not in REST_ROUTES:
        raise Refused(
            404, "unsupported_path",
            f"Cloudflare's REST API has no {sub} (it serves /v1/chat/completions, /v1/responses, "
            "/v1/messages and /ai/run); with cf_api=gateway the proxy serves it through AI Gateway",
        )  # fmt: skip
    return REST_ROUTES[sub]


def gateway_path(sub: str) -> str:
    for client, _, upstream in GATEWAY_ROUTES:
        if sub == client or sub.startswith(client + "/"):
            return upstream + sub[len(client) :]
    return "/compat" + sub


def check_path(target: str) -> None:
    """Raise Refused(400) unless the target is a plain, safe origin-form path."""
    unsafe = UNPRINTABLE_RE.search(target) or UNSAFE_PATH_RE.search(target.partition("?")[0])
    if not target.startswith("/") or unsafe:
        where = f": {unsafe.group()!r}" if unsafe else ""
        raise Refused(400, "invalid_path", f"the request target could leave its route{where}")
