"""The addon: thin mitmproxy hooks, each a guard and then one helper.

A request's way through: ``requestheaders`` decides, before the body is read,
whether the proxy answers it itself (bad request, health, access key, path) or
admits it; ``request`` forwards only admitted flows (route, rewrite, credentials);
``responseheaders`` masks secrets and starts recording an event stream; ``response``
and ``error`` give every flow one summary (log line, metrics, flow comment).

Fail closed: a flow is forwarded only when ``requestheaders`` admitted it and
``request`` rewrote it without an exception. Anything else (the addon not loaded,
not configured, or failing) leaves the flow aimed at the ``reverse:`` target,
which run.sh and the README point at a port nobody can listen on.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import sys
import weakref
from collections import OrderedDict
from pathlib import Path

from dotenv import dotenv_values
from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy import mode_specs

from cfgw import auth, chatview, config, logs, replies, routes, summary, usage, validate
from cfgw.config import Settings
from cfgw.families import BY_NAME
from cfgw.flowinfo import META, FlowInfo
from cfgw.headers import has_header, header, with_header
from cfgw.metrics import Metrics
from cfgw.recorder import Recorder
from cfgw.stash import Stash, Unrestorable

log = logging.getLogger("cf_gateway")
request_lines = logging.getLogger(logs.REQUEST_LINES)

HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
DEFAULT_BODY_SIZE_LIMIT = "32m"
ROUTES_IN_FORCE = {
    "auto": "/v1/messages -> anthropic, /v1/responses -> openai, the rest -> compat",
    "compat": "everything -> compat",
}
GATEWAY_HINTS = {
    2009: "the gateway requires authentication (all new gateways do): set CF_AIG_TOKEN to an AI Gateway "
    "token of this account, or check that the token has the AI Gateway Run permission",
    2001: "the gateway does not exist: check ACCOUNT_ID and GATEWAY_ID (or use GATEWAY_ID=default)",
    2019: "the compat endpoint does not serve this path: with cf_routes=compat, Anthropic Messages and "
    "OpenAI Responses clients need cf_routes=auto",
}


def is_reverse(flow: http.HTTPFlow) -> bool:
    return isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class CfGateway:
    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.startup_problem: str | None = None
        self.metrics = Metrics()
        self.flows: weakref.WeakKeyDictionary[http.HTTPFlow, FlowInfo] = weakref.WeakKeyDictionary()
        self.secret_filter = logs.SecretFilter()
        self.log_file: logs.SummaryFile | None = None
        self.secrets_env: dict[str, str | None] = {}
        self.literal_secrets: dict[str, str | None] = {}
        self.explained: set[int] = set()
        self.stash = Stash()  # replaced in load by the master's, which outlives a reload
        self.replayable = False
        self.sighup = False
        self.pending_lines: list[tuple[str, bool, logs.SummaryFile | None]] = []

    # -- options ---------------------------------------------------------------------

    def load(self, loader) -> None:
        self.secrets_env = {**dotenv_values(Path.cwd() / ".env"), **os.environ}
        # Secrets given literally are kept off the options (config.hide_literal_secrets); they must
        # outlive a reload of this script, so they live on the master, which a reload keeps.
        self.literal_secrets = vars(loader.master).setdefault("cf_gateway_literal_secrets", {})
        # Likewise the replay stash: an edit to a module must not make every earlier flow unreplayable.
        self.stash = Stash(entries=vars(loader.master).setdefault("cf_gateway_stash", OrderedDict()))
        # Only a master that keeps flows for a person (mitmweb, the console: a flow view) can replay
        # one; mitmdump drops each flow when it is done, so it keeps no secrets for replays.
        self.replayable = loader.master.addons.get("view") is not None
        defaults = config.option_defaults(os.environ, dotenv_values(Path.cwd() / ".env"))
        options = loader.master.options
        # On a reload mitmproxy replaces an option whose default or help changed (a new .env, an
        # edited help text) and resets its value: a --set PROXY_KEYS would be gone, and with it
        # access control. What was in force before the reload stays in force.
        before = {o.name: getattr(options, o.name) for o in config.OPTIONS if o.name in options}
        for o in config.OPTIONS:
            loader.add_option(o.name, str, defaults[o.name], o.spec.help)
        reset = {name: value for name, value in before.items() if getattr(options, name) != value}
        if reset:
            options.update(**reset)
        self.refuse_repeated_options(loader.master.options)
        logs.install(self.secret_filter)
        chatview.register()  # the LLM transcript view (mitmproxy 12; 11 has no such API and needs none)

    def refuse_repeated_options(self, options) -> None:
        """mitmproxy drops a script silently when one of its options is given twice (or without a
        value) with --set; take those values out of its hands and refuse to start, naming them."""
        for o in config.OPTIONS:
            values = getattr(options.deferred.get(o.name), "val", None)
            if values is not None and len(values) != 1:
                del options.deferred[o.name]
                what = "without a value" if not values else f"{len(values)} times"
                self.startup_problem = config.option_error(o, f"is given {what} with --set; give it once")
                log.error(self.startup_problem)

    def configure(self, updated: set[str]) -> None:
        if not any(name in config.BY_OPTION for name in updated) and not {"mode", "listen_host"} & updated:
            return
        values = {o.name: getattr(ctx.options, o.name) for o in config.OPTIONS}
        secrets = {**self.secrets_env, **self.literal_secrets}
        hidden = config.hide_literal_secrets(values, secrets)
        try:
            settings = config.parse_settings(values, secrets)
            self.check_open_door(settings)
        except ValueError as e:
            if self.settings is not None:
                raise exceptions.OptionsError(str(e)) from None  # refused; the old settings stay
            # Startup: one clear line; mitmproxy exits on errors logged during startup, and until
            # configured every request is answered 503, never forwarded.
            log.error(str(e))
            return
        if not self.startup_problem:
            self.literal_secrets.update({k: v for k, v in secrets.items() if k.startswith("--set ")})
            self.apply(settings)
            if hidden:
                ctx.options.update(**hidden)  # a secret typed in clear is shown as its source only

    def apply(self, settings: Settings) -> None:
        """Put new settings in force: defaults mitmproxy lacks, the secrets to mask, the log file."""
        self.write_lines()  # lines still waiting go out as the settings they were made under say
        if ctx.options.body_size_limit is None:
            ctx.options.body_size_limit = DEFAULT_BODY_SIZE_LIMIT
        self.secret_filter.set_secrets(
            [settings.token or "", *(settings.proxy_keys.keys if settings.proxy_keys else ())]
        )
        old_log_file = self.settings.log_file if self.settings else None
        if settings.log_file != old_log_file:
            if self.log_file:
                self.log_file.close()
            self.log_file = logs.SummaryFile(settings.log_file) if settings.log_file else None
            if logs.STDOUT in (settings.log_file, old_log_file):
                self.terminal_output(sys.stderr if settings.log_file == logs.STDOUT else sys.stdout)
            self.reopen_on_sighup(self.has_log_file())
        if settings != self.settings:
            gateway = settings.gateway_id + (
                " (Cloudflare's auto-created gateway)" if settings.gateway_id == "default" else ""
            )
            log.info(
                f"cf-gateway: requests go to {settings.base_url.origin}{settings.gateway_prefix}/... "
                f"(gateway {gateway}; routes: {ROUTES_IN_FORCE[settings.routes]}); {settings.describe()}"
            )
        self.settings = settings

    def check_open_door(self, s: Settings) -> None:
        """Refuse a token-injecting proxy without access keys on a non-loopback listener."""
        if not s.token or s.proxy_keys or s.open_proxy:
            return
        for spec in ctx.options.mode:
            mode = mode_specs.ProxyMode.parse(spec)
            host = mode.listen_host(ctx.options.listen_host)
            if isinstance(mode, mode_specs.ReverseMode) and not is_loopback(host or "0.0.0.0"):
                raise ValueError(
                    f"cf-gateway: refusing to inject the gateway token (CF_AIG_TOKEN) for anyone who can "
                    f"reach {host or '0.0.0.0'}: set access keys (PROXY_KEYS), listen on 127.0.0.1 "
                    "(HOST_ADDR=127.0.0.1 with run.sh), or set cf_open_proxy=on (env CF_OPEN_PROXY)"
                )

    def running(self) -> None:
        if ctx.options.stream_large_bodies:
            log.warning(
                "cf-gateway: stream_large_bodies is set: requests larger than it are streamed before the "
                "addon can rewrite them, and fail (502); unset it (event streams are relayed live anyway)"
            )
        modes = [mode_specs.ProxyMode.parse(m) for m in ctx.options.mode]
        if (
            any(isinstance(m, mode_specs.ReverseMode) for m in modes)
            and ctx.options.connection_strategy == "eager"
        ):
            log.warning(
                "cf-gateway: connection_strategy=eager: if the --mode reverse: target is unreachable, "
                "clients get an empty reply instead of a 502; run with --set connection_strategy=lazy"
            )
        self.reopen_on_sighup(self.has_log_file())

    @staticmethod
    def terminal_output(out) -> None:
        """cf_log_file=-: standard output carries the summary lines and nothing else, so mitmproxy's
        own terminal log and flow dump go to standard error (back to standard output when unset)."""
        termlog, dumper = ctx.master.addons.get("termlog"), ctx.master.addons.get("dumper")
        if termlog is not None:
            termlog.logger.file = out
        if dumper is not None:
            dumper.outfp = out

    def reopen_on_sighup(self, wanted: bool) -> None:
        """SIGHUP (logrotate's postrotate) reopens the summary file; only while there is one, so that
        otherwise SIGHUP keeps its default (the proxy ends with the terminal it runs in)."""
        if wanted == self.sighup:
            return
        try:
            loop = asyncio.get_running_loop()
            if wanted:
                loop.add_signal_handler(signal.SIGHUP, self.reopen_log_file)
            else:
                loop.remove_signal_handler(signal.SIGHUP)
        except (AttributeError, NotImplementedError, RuntimeError):  # Windows, or no event loop yet
            return
        self.sighup = wanted

    def has_log_file(self) -> bool:
        """A summary file of its own (not standard output): the one thing SIGHUP is for."""
        return self.log_file is not None and self.log_file.path != logs.STDOUT

    def reopen_log_file(self) -> None:
        if self.log_file:
            self.log_file.reopen()

    def done(self) -> None:
        """Shutdown: -w saves flows still waiting for an answer, so mask them first."""
        for flow, info in list(self.flows.items()):
            if info.unmasked:
                self.mask(flow, info)
        self.reopen_on_sighup(False)
        self.write_lines()
        if self.log_file:
            self.log_file.close()
        logs.uninstall(self.secret_filter)

    # -- request: answer locally, or admit; then forward ---------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or not is_reverse(flow):
            return
        info = self.flows[flow] = FlowInfo.of(flow)
        if flow.is_replay == "request" and not self.restore_secrets(flow, info):
            return
        self.answer_or_admit(flow, info)

    def restore_secrets(self, flow: http.HTTPFlow, info: FlowInfo) -> bool:
        """A replay gets the real secrets back over their masks; False if it was answered instead."""
        s = self.settings
        fresh = set()  # headers the proxy sets itself on the way out: their masks need no secret
        if s and s.token:
            fresh.add(b"cf-aig-authorization")
        if s and s.drop_client_keys:
            fresh |= {name.encode() for name in auth.CLIENT_KEY_HEADERS}
        try:
            self.stash.restore(flow, flow.metadata.get(META, {}).get("secrets"), frozenset(fresh))
        except Unrestorable as e:
            log.warning(
                f"cf-gateway: replay of flow {flow.id} not sent: its {logs.printable(str(e))} header is "
                "masked and this proxy does not hold the secret (flow loaded from a file, or its original "
                "is gone)"
            )
            self.answer(
                flow,
                info,
                "unrestorable_secret",
                400,
                f"This replay was not sent: its '{e}' header holds a mask (********), and cf-gateway "
                "no longer holds the secret behind it (the flow was loaded from a file, or its original "
                "flow is gone). Type the key into the header and replay again, or replay the original flow.",
            )
            return False
        return True

    def answer_or_admit(self, flow: http.HTTPFlow, info: FlowInfo) -> None:
        """Decide before the body is read: the proxy answers itself, or the flow may be forwarded."""
        s, req = self.settings, flow.request
        if s is None:
            self.answer(flow, info, "not_configured", 503, "cf-gateway is not configured.", "server_error")
            return
        try:
            validate.check_request(req)
        except validate.BadRequest as e:
            self.answer(flow, info, e.code, e.status, str(e))
            return
        if info.path == HEALTH_PATH and req.method in ("GET", "HEAD"):
            info.local = "health"
            flow.response = replies.json_response(200, {"status": "ok"}, head=req.method == "HEAD")
            return
        if s.proxy_keys and not flow.is_replay:
            if not auth.key_matches(auth.presented_key(req.headers), s.key_digests):
                sent_one = any(h in req.headers for h in auth.CLIENT_KEY_HEADERS)  # even if malformed
                problem = "Invalid" if sent_one else "Missing"
                self.answer(
                    flow,
                    info,
                    "invalid_proxy_key",
                    401,
                    f"{problem} proxy key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>' "
                    "with one of this proxy's access keys.",
                    "authentication_error",
                    headers={"www-authenticate": 'Bearer realm="cf-gateway"'},
                )
                return
        if info.path == METRICS_PATH and req.method in ("GET", "HEAD"):
            if not s.metrics:
                self.answer(flow, info, "not_found", 404, "Metrics are off (cf_metrics=off).")
                return
            info.local = "metrics"
            flow.response = replies.response(
                200,
                self.metrics.render(),
                {"content-type": self.metrics.content_type},
                head=req.method == "HEAD",
            )
            return
        try:
            info.destination, info.target = self.destination(flow, s)
        except routes.UnsafePath as e:
            self.answer(flow, info, "invalid_path", 400, f"Refused request path: {e}.")
            return
        info.admitted = True

    @staticmethod
    def destination(flow: http.HTTPFlow, s: Settings) -> tuple[routes.Destination, str]:
        req = flow.request
        if flow.is_replay == "request" and req.host == s.base_url.host:
            path = req.path.partition("?")[0]
            route = routes.route_of(path, s.gateway_prefix)
            if route is not None:  # a replay of a flow we already rewrote (and maybe edited)
                routes.check_target(req.path)
                return routes.Destination(route, path[len(s.gateway_prefix) :]), req.path
        return routes.map_target(req.path, s.gateway_prefix, s.routes)

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live or not is_reverse(flow):
            return
        info = self.flows.get(flow)
        try:
            if info is None or not info.admitted:
                raise RuntimeError("the request was not admitted by requestheaders")
            self.forward(flow, info)
        except Exception:
            log.exception(
                f"cf-gateway: internal error on {logs.printable(flow.request.method)} "
                f"{logs.printable(flow.request.path.partition('?')[0])}; answered 500, not forwarded"
            )
            info = self.flows[flow] = info or FlowInfo.of(flow)
            info.destination = info.upstream = None  # never counted (nor logged) as forwarded
            self.answer(
                flow,
                info,
                "proxy_internal_error",
                500,
                "cf-gateway hit an internal error; the request was not forwarded.",
                "server_error",
            )

    def forward(self, flow: http.HTTPFlow, info: FlowInfo) -> None:
        """Aim an admitted flow at the gateway with the right credentials; the last step is the
        one that changes where it goes, so a failure before it leaves the flow unforwardable."""
        s, req = self.settings, flow.request
        assert s is not None and info.destination is not None and info.target is not None
        # Only plain bodies: decoding a compressed one just to find the model would let a small
        # gzip bomb from any client take the proxy's memory (SDKs do not compress requests).
        body = req.raw_content
        found = usage.model_span(body) if body and not has_header(req.headers, b"content-encoding") else None
        if found is not None:
            info.model = usage.fix_model_spelling(req, found[0], info.destination.route, found)
        fields = auth.with_credentials(
            req.headers.fields,
            s.token,
            s.proxy_keys is not None,
            s.strip_client_gateway_headers,
            s.drop_client_keys,
        )
        h2 = req.is_http2 or req.is_http3
        hostport = s.base_url.hostport.encode()
        if not h2 or has_header(req.headers, b"host"):  # HTTP/2's Host is :authority; a Host is updated
            fields = with_header(fields, b"Host", hostport)
        target = info.target.encode()  # checked: printable ASCII only
        info.upstream = f"{s.base_url.origin}{info.target.partition('?')[0]}"
        info.save(flow)
        info.unmasked = True
        # The request's data is set directly, as mitmproxy's own layers do (its setters each
        # rebuild Host and :authority and re-encode), and last, with nothing left that can fail.
        req.headers.fields = fields
        req.data.scheme = s.base_url.scheme.encode()
        req.data.host = s.base_url.host
        req.data.port = s.base_url.port
        req.data.authority = hostport if h2 else b""  # HTTP/1: origin-form, even if sent absolute-form
        req.data.path = target

    def answer(
        self,
        flow: http.HTTPFlow,
        info: FlowInfo,
        code: str,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Every error the proxy answers itself, in the shape of the client's API family."""
        info.local = code
        if status >= 400 and has_header(flow.request.headers, b"expect"):
            del flow.request.headers["expect"]  # no "100 Continue": we do not want the body
        flow.response = replies.error_response(
            BY_NAME[info.family], status, message, code, type, headers, head=flow.request.method == "HEAD"
        )

    # -- response side: mask, stream, record, summarise -------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        info = self.flows.get(flow)
        if info is None or self.settings is None:
            self.mask_unaccounted(flow)
            return
        self.mask(flow, info)
        resp = flow.response
        if info.upstream and resp is not None and usage.is_event_stream(resp):
            info.recorder = Recorder(
                self.settings.record_limit, BY_NAME[info.family], header(resp.headers, b"content-encoding")
            )
            resp.stream = info.recorder.relay
            self.metrics.streams.inc()

    def response(self, flow: http.HTTPFlow) -> None:
        info = self.flows.get(flow)
        if info is None or self.settings is None:
            return
        resp = flow.response
        if info.recorder is not None:
            info.recorder.finish(complete=True)  # error() is for broken ones
        elif info.upstream and resp is not None and 100 <= resp.status_code < 200 and resp.status_code != 101:
            # mitmproxy's HTTP/1 client takes an interim answer (103 Early Hints) for the final one
            # and drops the real answer after it; a clear error beats a client waiting forever.
            flow.response = replies.error_response(
                BY_NAME[info.family],
                502,
                f"The gateway sent an interim {resp.status_code} response, which mitmproxy cannot pass "
                "on (it would be taken for the final answer); the request was sent, retry it.",
                "interim_response",
                "server_error",
                head=flow.request.method == "HEAD",
            )
        elif info.upstream and resp is not None:
            reshape = self.settings.gateway_errors == "reshape"
            info.gateway_code = usage.reshape_gateway_error(resp, BY_NAME[info.family], reshape)
        self.finish(flow, info)

    def error(self, flow: http.HTTPFlow) -> None:
        info = self.flows.get(flow)
        if info is None or self.settings is None:
            self.mask_unaccounted(flow)
            return
        self.mask(flow, info)
        self.finish(flow, info)

    def mask(self, flow: http.HTTPFlow, info: FlowInfo) -> None:
        """Mask secret headers once the request has been sent (or never will be); where flows can be
        replayed (mitmweb), a forwarded flow's secrets stay in memory (never on the flow) for that."""
        info.unmasked = False
        if self.settings is not None and self.settings.redact:
            found = auth.redact(flow.request.headers)
            meta = flow.metadata.get(META)
            if info.upstream and self.replayable and isinstance(meta, dict):
                self.stash.keep(flow, meta, found)

    def mask_unaccounted(self, flow: http.HTTPFlow) -> None:
        """Flows the addon never took on (mitmproxy refused their headers before requestheaders,
        or the addon is not configured) still get their secrets masked: masking is the default."""
        if is_reverse(flow) and (self.settings is None or self.settings.redact):
            auth.redact(flow.request.headers)

    def finish(self, flow: http.HTTPFlow, info: FlowInfo) -> None:
        """The single per-flow log line, metrics and flow-list comment."""
        s = self.settings
        assert s is not None
        if info.recorder is not None:
            info.recorder.finish(complete=False)  # no-op after response(); a broken stream: what arrived
            self.metrics.streams.dec()
            self.keep_record(flow, info.recorder)
        if info.local in ("health", "metrics"):
            return
        record = summary.flow_record(flow, info)
        if s.metrics:
            self.metrics.observe(record)
        if record.outcome not in ("ok", "local"):
            self.log_failure(flow, record, s.log_requests)
        if s.log_requests or self.log_file:
            line = summary.format_json(record) if s.log_format == "json" else summary.format_text(record)
            self.queue_line(line, s.log_requests, self.log_file)
        self.explain_gateway_error(record)
        if info.upstream:
            comment = summary.flow_comment(record)
            flow.comment = f"{comment}\n{flow.comment}" if flow.comment else comment

    def queue_line(self, line: str, terminal: bool, log_file: logs.SummaryFile | None) -> None:
        """Write the summary line once this hook has returned and mitmproxy has sent the answer on:
        logging it (the terminal, mitmweb's event log, the summary file) takes about 0.1 ms that
        the client need not wait for. The lines of one loop iteration go out together, in order;
        without an event loop (tools, unit tests) at once."""
        self.pending_lines.append((line, terminal, log_file))
        if len(self.pending_lines) > 1:
            return  # already scheduled
        try:
            asyncio.get_running_loop().call_soon(self.write_lines)
        except RuntimeError:
            self.write_lines()

    def write_lines(self) -> None:
        """The queued lines, in order; also run before the summary file changes and at shutdown."""
        lines, self.pending_lines = self.pending_lines, []
        for line, terminal, log_file in lines:
            if terminal:
                request_lines.info(line)
            if log_file:
                log_file.write(self.secret_filter.masked(line))

    @staticmethod
    def log_failure(flow: http.HTTPFlow, record: summary.FlowRecord, summary_line: bool) -> None:
        """Why a flow failed: a warning if the upstream failed, else only when no summary line says it."""
        where = f"mid-stream after {record.bytes} bytes" if record.stream else "before a response"
        if record.outcome == "upstream_failed":
            log.warning(
                f"cf-gateway: flow {flow.id}: upstream failed {where}: {logs.printable(str(record.error))}"
            )
        elif record.outcome in ("client_closed", "failed") and not summary_line:
            what = "client went away" if record.outcome == "client_closed" else "client request failed"
            log.info(f"cf-gateway: flow {flow.id}: {what} {where}: {logs.printable(str(record.error))}")

    def explain_gateway_error(self, record: summary.FlowRecord) -> None:
        """Say what to do about the gateway's own configuration errors, once per process per cause."""
        code = record.gateway_code
        hint = GATEWAY_HINTS.get(code) if code is not None else None
        if hint and code is not None and code not in self.explained:
            self.explained.add(code)
            log.warning(f"cf-gateway: the gateway answered {record.status}/{record.gateway_code}: {hint}")

    def keep_record(self, flow: http.HTTPFlow, recorder: Recorder) -> None:
        """Put the recorded stream back on the flow (still encoded, so get_content() decodes it)."""
        assert flow.response is not None
        if recorder.limit == 0:
            return
        flow.response.raw_content = recorder.body()
        if recorder.dropped:
            note = f"stream record truncated at cf_record_limit: {recorder.dropped} bytes not kept"
            flow.comment = f"{flow.comment}\n{note}" if flow.comment else note
            log.info(f"cf-gateway: flow {flow.id} {note}")
