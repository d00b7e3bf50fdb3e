"""What the addon knows about one flow, typed, from its request headers to its summary.

The addon keeps a FlowInfo per live flow in memory; the few facts that mitmweb's view
and a replay need later (family, route, client path) are also saved on the flow's
metadata, which goes into flow files (so it holds nothing secret).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mitmproxy import http

from cfgw import routes

if TYPE_CHECKING:
    from cfgw.recorder import Recorder

META = "cf_gateway"


@dataclass(eq=False, slots=True)
class FlowInfo:
    family: str
    """'chat', 'messages', 'responses' or 'other': decides error shapes, usage and the view."""
    path: str
    """The client's path without the query (which may carry keys)."""
    local: str | None = None
    """Why the proxy answered itself ('health', 'invalid_proxy_key', ...); None when forwarded."""
    admitted: bool = False
    """Set by requestheaders: only admitted flows are forwarded."""
    destination: routes.Destination | None = None
    target: str | None = None
    """The upstream request target (path and query) an admitted flow gets."""
    upstream: str | None = None
    """Upstream URL without the query, set once the flow is aimed at the gateway."""
    model: str | None = None
    recorder: Recorder | None = None
    unmasked: bool = False
    """Secrets on the flow still in clear text (masked when the response starts or the flow fails)."""
    gateway_code: int | None = None
    """Cloudflare's own error code when the gateway (not the provider) answered with an error."""

    @classmethod
    def of(cls, flow: http.HTTPFlow) -> FlowInfo:
        """A new flow's facts; a replayed flow keeps the family and path saved when it first ran."""
        saved = flow.metadata.get(META)
        path = flow.request.path.partition("?")[0]
        if isinstance(saved, dict) and saved.get("family") in routes.FAMILY_NAMES:
            return cls(family=saved["family"], path=str(saved.get("path") or path))
        return cls(family=routes.family_of(path), path=path)

    def save(self, flow: http.HTTPFlow) -> None:
        flow.metadata[META] = {
            "family": self.family,
            "route": self.destination.route if self.destination else None,
            "path": self.path,
        }
