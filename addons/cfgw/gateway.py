"""The addon: options, and thin hooks that hand each reverse-mode flow to a small helper.

Fail closed: every hook that decides where a request goes catches its own
exceptions and answers the client itself, because mitmproxy would otherwise log
the exception and forward the request unmodified.
"""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values
from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy import mode_specs

from cfgw import auth, config, paths, summary, validate
from cfgw.metrics import Metrics
from cfgw.replies import error_response, json_response
from cfgw.streaming import Recorder, client_went_away, is_event_stream
from cfgw.usage import request_model

log = logging.getLogger("cf_gateway")

HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"


@dataclass(frozen=True)
class Settings:
    """Parsed options; rebuilt by `configure`, only read by hooks."""

    account_id: str
    gateway_id: str
    upstream: config.Upstream
    log_requests: bool
    log_format: str
    record_limit: int
    token: str | None = field(repr=False)
    keys: config.AccessKeys | None = field(repr=False)
    key_digests: tuple[bytes, ...] = field(repr=False)
    redact: bool
    metrics: bool

    @property
    def prefix(self) -> str:
        return paths.compat_prefix(self.account_id, self.gateway_id)

    @property
    def upstream_base(self) -> str:
        return f"{self.upstream.scheme}://{self.upstream.hostport}{self.prefix}"

    def describe(self) -> str:
        """The active mode for the startup log, never a secret."""
        modes = []
        if self.keys:
            n = len(self.keys.keys)
            modes.append(f"access keys: {n} key{'s' if n != 1 else ''} ({self.keys.source})")
        if self.token:
            modes.append("gateway token injected")
        return ", ".join(modes) or "pass-through (clients' headers forwarded as sent)"


def parse_settings(values: dict[str, str]) -> Settings:
    """Parse every option; raises OptionsError naming the first bad option and its env var."""
    parsed = {}
    for s in config.SETTINGS:
        try:
            parsed[s.option] = s.parse(values[s.option])
        except ValueError as e:
            raise exceptions.OptionsError(config.setting_error(s, str(e))) from None
    keys = parsed["cf_proxy_keys"]
    return Settings(
        account_id=parsed["cf_account_id"],
        gateway_id=parsed["cf_gateway_id"],
        upstream=parsed["cf_base_url"],
        log_requests=parsed["cf_log_requests"],
        log_format=parsed["cf_log_format"],
        record_limit=parsed["cf_record_limit"],
        token=parsed["cf_token"],
        keys=keys,
        key_digests=tuple(auth.digest(k) for k in keys.keys) if keys else (),
        redact=parsed["cf_redact"],
        metrics=parsed["cf_metrics"],
    )


def is_reverse(flow: http.HTTPFlow) -> bool:
    return isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode)


def recorder_of(flow: http.HTTPFlow) -> Recorder | None:
    stream = flow.response.stream if flow.response else None
    return stream if isinstance(stream, Recorder) else None


class CfGateway:
    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.metrics = Metrics()
        # Forwarded flows whose secrets are not masked yet: masked when the response starts, the
        # flow fails, or (for flows still open at shutdown, which -w saves too) in `done`.
        self.unmasked: weakref.WeakSet[http.HTTPFlow] = weakref.WeakSet()

    def load(self, loader) -> None:
        defaults = config.env_defaults(os.environ, dotenv_values(Path.cwd() / ".env"))
        for s in config.SETTINGS:
            loader.add_option(s.option, str, defaults[s.option], s.help)

    def configure(self, updated: set[str]) -> None:
        if not any(name in config.BY_OPTION for name in updated):
            return
        try:
            settings = parse_settings({s.option: getattr(ctx.options, s.option) for s in config.SETTINGS})
        except exceptions.OptionsError as e:
            if self.settings is not None:
                raise  # a bad change to a working proxy is refused; the old settings stay
            # Never configured (startup): one clear line; mitmproxy exits on errors logged
            # during startup, and until configured every request is answered 503, never forwarded.
            log.error(str(e))
            return
        if settings != self.settings:
            log.info(f"cf-gateway: requests go to {settings.upstream_base}/...; {settings.describe()}")
        self.settings = settings

    def running(self) -> None:
        modes = [mode_specs.ProxyMode.parse(m) for m in ctx.options.mode]
        if (
            any(isinstance(m, mode_specs.ReverseMode) for m in modes)
            and ctx.options.connection_strategy == "eager"
        ):
            log.warning(
                "cf-gateway: connection_strategy=eager: if the --mode reverse: target is unreachable, "
                "clients get an empty reply instead of a 502; run with --set connection_strategy=lazy"
            )

    # -- request: decide and rewrite --------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or not is_reverse(flow):
            return
        try:
            self.route(flow)
        except Exception:
            path = flow.request.path.partition("?")[0]  # the query may carry keys
            log.exception(
                f"cf-gateway: internal error on {flow.request.method} {path!r}; answered 500, not forwarded"
            )
            flow.response = error_response(
                500,
                "cf-gateway hit an internal error; the request was not forwarded.",
                "proxy_internal_error",
                type="server_error",
            )

    def route(self, flow: http.HTTPFlow) -> None:
        """Answer locally (health, metrics, auth and path errors) or rewrite towards the gateway."""
        self.answer_or_rewrite(flow)
        if flow.response is not None and flow.request.method == "HEAD":
            # mitmproxy sends a made-up response's body even to HEAD, which desyncs keep-alive clients.
            flow.response.raw_content = b""  # headers (with GET's content-length) only

    def answer_or_rewrite(self, flow: http.HTTPFlow) -> None:
        s = self.settings
        req = flow.request
        target = req.path
        path = target.partition("?")[0]
        meta = flow.metadata.setdefault(summary.META, {})
        meta["path"] = path
        if s is None:
            flow.response = error_response(
                503, "cf-gateway is not configured.", "proxy_not_configured", type="server_error"
            )
            return
        try:
            validate.check_request(req)
        except validate.BadRequest as e:
            meta["local"] = e.code
            flow.response = error_response(e.status, str(e), e.code)
            return
        if path == HEALTH_PATH and req.method in ("GET", "HEAD"):
            meta["local"] = "health"
            flow.response = json_response(200, {"status": "ok"})
            return
        if s.keys and not flow.is_replay:
            token = auth.bearer_token(req.headers.get("authorization"))
            if not auth.key_matches(token, s.key_digests):
                meta["local"] = "unauthorized"
                problem = "Missing" if "authorization" not in req.headers else "Invalid"
                flow.response = error_response(
                    401,
                    f"{problem} proxy key: send 'Authorization: Bearer <key>' "
                    "with one of this proxy's access keys.",
                    "invalid_proxy_key",
                    headers={"www-authenticate": 'Bearer realm="cf-gateway"'},
                )
                return
            del req.headers["authorization"]
        if path == METRICS_PATH and req.method in ("GET", "HEAD") and s.metrics:
            meta["local"] = "metrics"
            flow.response = http.Response.make(
                200, self.metrics.render(), {"content-type": self.metrics.content_type}
            )
            return
        if flow.is_replay == "request" and req.host == s.upstream.host and path.startswith(s.prefix):
            upstream_target = target  # a replay of a flow we already rewrote
        else:
            try:
                upstream_target = paths.map_target(target, s.prefix)
            except paths.UnsafePath as e:
                meta["local"] = "unsafe_path"
                flow.response = error_response(400, f"Refused request path: {e}.", "invalid_path")
                return
        self.rewrite(req, s, upstream_target)
        auth.inject_token(req, s.token)
        self.unmasked.add(flow)
        meta["upstream"] = f"{s.upstream.scheme}://{s.upstream.hostport}{upstream_target.partition('?')[0]}"
        # Only plain bodies: decoding a compressed one just to find the model would let a small
        # gzip bomb from any client take the proxy's memory (SDKs do not compress requests).
        model = (
            request_model(req.raw_content)
            if req.raw_content and "content-encoding" not in req.headers
            else None
        )
        if model:
            meta["model"] = model

    @staticmethod
    def rewrite(req: http.Request, s: Settings, upstream_target: str) -> None:
        req.scheme = s.upstream.scheme
        # Set host and port on the data directly, as mitmproxy's own layers do: their setters each
        # rebuild Host and :authority, which the two lines below set once and for all.
        req.data.host = s.upstream.host
        req.data.port = s.upstream.port
        req.path = upstream_target
        if req.is_http2 or req.is_http3:
            req.authority = s.upstream.hostport
        else:
            req.authority = ""  # origin-form request line, even if the client sent absolute-form
        req.host_header = s.upstream.hostport

    # -- response side: stream, record, summarise ---------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if not is_reverse(flow) or self.settings is None:
            return
        self.mask(flow)
        meta = flow.metadata.get(summary.META, {})
        resp = flow.response
        if "upstream" in meta and resp is not None and is_event_stream(resp.headers.get("content-type")):
            flow.response.stream = Recorder(self.settings.record_limit, resp.headers.get("content-encoding"))
            self.metrics.streams.inc()

    def response(self, flow: http.HTTPFlow) -> None:
        if not is_reverse(flow) or self.settings is None:
            return
        recorder = recorder_of(flow)
        if recorder is not None:
            recorder.finish()  # the stream ended completely (error() is for broken ones)
            self.metrics.streams.dec()
            self.keep_record(flow, recorder)
        self.finish(flow, recorder)

    def error(self, flow: http.HTTPFlow) -> None:
        if not is_reverse(flow) or self.settings is None:
            return
        self.mask(flow)
        recorder = recorder_of(flow)
        if recorder is not None:
            self.metrics.streams.dec()
            self.keep_record(flow, recorder)
        self.finish(flow, recorder)

    def done(self) -> None:
        """Shutdown: -w saves flows still waiting for an answer, so mask them first."""
        for flow in list(self.unmasked):
            self.mask(flow)

    def mask(self, flow: http.HTTPFlow) -> None:
        """Mask secret headers once the request has been sent (or never will be)."""
        self.unmasked.discard(flow)
        if self.settings is not None and self.settings.redact:
            auth.redact(flow.request.headers)

    def keep_record(self, flow: http.HTTPFlow, recorder: Recorder) -> None:
        """Put the recorded stream back on the flow (still encoded, so get_content() decodes it)."""
        assert flow.response is not None
        if self.settings and self.settings.record_limit == 0:
            return
        flow.response.raw_content = recorder.body()
        if recorder.dropped:
            note = f"stream record truncated at cf_record_limit: {recorder.dropped} bytes not kept"
            flow.comment = f"{flow.comment}\n{note}" if flow.comment else note
            log.info(f"cf-gateway: flow {flow.id} {note}")

    def finish(self, flow: http.HTTPFlow, recorder: Recorder | None) -> None:
        """The single per-flow log line, metrics and flow-list comment."""
        s = self.settings
        assert s is not None
        meta = flow.metadata.get(summary.META, {})
        if meta.get("local") in ("health", "metrics"):
            return
        record = summary.flow_record(flow, recorder)
        if s.metrics:
            self.metrics.observe(record)
        if flow.error:
            where = f"mid-stream after {recorder.delivered} bytes" if recorder else "before a response"
            client_left = client_went_away(flow)
            if "upstream" in meta and not client_left:
                log.warning(f"cf-gateway: flow {flow.id}: upstream failed {where}: {flow.error.msg}")
            elif not s.log_requests:  # otherwise the request line below says so
                what = "client went away" if client_left else "client request failed"
                log.info(f"cf-gateway: flow {flow.id}: {what} {where}: {flow.error.msg}")
        if s.log_requests:
            line = summary.format_json(record) if s.log_format == "json" else summary.format_text(record)
            log.info(line)
        if "upstream" in meta:
            comment = summary.flow_comment(record)
            flow.comment = f"{comment}\n{flow.comment}" if flow.comment else comment
