"""Record forwarded exchanges to a flow file, and answer requests from one with no upstream.

Recordings are mitmproxy flow files (``mitmproxy.io``), so mitmweb opens them. A
request matches a recording by family, method, route and its JSON body in canonical
form (key order and whitespace do not count), leaving out the body fields named in
``cf_replay_ignore`` (ids and options that change from run to run). Credentials and
other headers never take part. Identical requests are answered in recorded order.
"""

from __future__ import annotations

import collections
import json
import logging
from pathlib import Path

from mitmproxy import exceptions, http, io

from cfgw import admission, auth, families

log = logging.getLogger("cf_gateway")
META = "cf_gateway"


class Recording:
    """Forwarded flows, masked, appended to a flow file as each one ends."""

    def __init__(self, path: str) -> None:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "wb")
        except OSError as e:
            raise ValueError(
                f"cf-gateway: cf_record (env CF_RECORD) cannot open {path}: {e.strerror}"
            ) from None
        self.writer = io.FlowWriter(self.file)

    def add(self, flow: http.HTTPFlow) -> None:
        auth.mask_headers(flow.request.headers)
        self.writer.add(flow)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def canonical(body: bytes, ignore: frozenset[str]) -> str:
    """A request body as matching sees it: sorted keys, no whitespace, ignored fields left out."""
    obj = families.parse_json(body) if body else None
    if not isinstance(obj, dict):
        return body.decode("utf-8", "replace")
    return json.dumps(
        {k: v for k, v in obj.items() if k not in ignore}, sort_keys=True, separators=(",", ":")
    )


def fields(body: str) -> dict:
    obj = families.parse_json(body.encode())
    return obj if isinstance(obj, dict) else {}


def differing(a: dict, b: dict) -> list[str]:
    return sorted(f for f in {*a, *b} if a.get(f) != b.get(f))


def replayable(flow: http.HTTPFlow) -> bool:
    """A failed or cut exchange is never replayed as if whole."""
    meta = flow.metadata.get(META, {})
    return flow.response is not None and not flow.error and not meta.get("truncated") and "upstream" in meta


class Replayer:
    def __init__(self, flows: list[http.HTTPFlow], ignore: frozenset[str]) -> None:
        self.ignore = ignore
        self.recorded: dict[tuple, collections.deque[http.HTTPFlow]] = collections.defaultdict(
            collections.deque
        )
        whole = [f for f in flows if replayable(f)]
        self.skipped = len(flows) - len(whole)
        for f in whole:
            self.recorded[self.key(f, f.metadata[META])].append(f)
        self.total = sum(len(q) for q in self.recorded.values())
        self.used = 0
        self.unmatched: list[str] = []

    @classmethod
    def load(cls, path: str, ignore: frozenset[str]) -> Replayer:
        try:
            with open(path, "rb") as f:
                flows = [f for f in io.FlowReader(f).stream() if isinstance(f, http.HTTPFlow)]
        except (OSError, ValueError, exceptions.FlowReadException) as e:
            raise ValueError(f"cf-gateway: cf_replay (env CF_REPLAY) cannot read {path}: {e}") from None
        replayer = cls(flows, ignore)
        log.info(f"cf-gateway: replaying {replayer.total} recorded exchanges from {path}")
        return replayer

    def key(self, flow: http.HTTPFlow, meta: dict) -> tuple:
        body = canonical(flow.request.raw_content or b"", self.ignore)
        return meta["family"], flow.request.method, meta["upstream"], body

    def answer(self, flow: http.HTTPFlow, meta: dict) -> http.Response:
        key = self.key(flow, meta)
        queue = self.recorded.get(key)
        meta["url"] = "replay:" + meta["upstream"].partition("?")[0]
        if queue:
            self.used += 1
            recorded = queue.popleft().response
            assert recorded
            response = recorded.copy()
            response.headers.pop("transfer-encoding", None)
            response.headers["content-length"] = str(len(response.raw_content or b""))
            return response
        why = self.closest(key)
        self.unmatched.append(f"{flow.request.method} {meta['target'].partition('?')[0]}: {why}")
        log.warning(f"cf-gateway: no recording for {flow.request.method} {meta['target']}: {why}")
        meta.pop("url")
        return admission.local(flow, 404, "no_recording", f"no recording matches this request: {why}")

    def closest(self, key: tuple) -> str:
        """The nearest recorded request of the same route, and the body fields that differ."""
        same_route = [k for k, q in self.recorded.items() if k[:3] == key[:3] and q]
        if not same_route:
            return f"nothing (left) recorded for {key[1]} {key[2].partition('?')[0]}"
        mine = fields(key[3])
        differ = min((differing(mine, fields(k[3])) for k in same_route), key=len)
        return f"the closest recorded request differs in: {', '.join(differ) or 'the raw body'}"

    def report(self) -> str:
        unused = sum(len(q) for q in self.recorded.values())
        return json.dumps(
            {"recorded": self.total, "used": self.used, "unused": unused, "unmatched": len(self.unmatched),
             "unmatched_requests": self.unmatched, "skipped": self.skipped}, indent=2,
        )  # fmt: skip

    def summary_line(self) -> str:
        unused = sum(len(q) for q in self.recorded.values())
        return f"cf-gateway: replay: {self.used} used, {unused} unused, {len(self.unmatched)} unmatched"
