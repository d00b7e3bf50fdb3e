"""A reference for the benchmarks: mitmproxy streaming every response but buffering requests.

Why: cf-gateway reads each request body whole (for the model name, and to fix its spelling
on provider routes) and streams event-stream answers. Bare ``mitmdump --set
stream_large_bodies=1`` streams both ways, so the gap between the two holds mitmproxy's own
cost of buffering a request body as well as the addon's hooks. This script, loaded into a
bare mitmdump (``-s bench/stream_responses.py``), pays only the first: the difference between
it and cf-gateway is what the addon itself costs.
"""

from mitmproxy import http


def responseheaders(flow: http.HTTPFlow) -> None:
    if flow.response is not None:
        flow.response.stream = True
