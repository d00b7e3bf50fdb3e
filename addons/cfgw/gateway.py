"""The addon: thin mitmproxy hooks, each a guard and then one helper.

A request's way through:

| hook              | what happens                                                                 |
|-------------------|------------------------------------------------------------------------------|
| client_connected  | refuse connections over cf_max_connections                                   |
| requestheaders    | answer locally (admission.answer) or admit; access keys are checked and masked |
| request           | admitted flows only: replay from a recording, or rewrite and aim upstream    |
| responseheaders   | mask the secrets sent; relay an event stream live through a Recorder         |
| response / error  | reshape Cloudflare's errors; one record: log line, metrics, comment, file    |

Fail closed: the ``reverse:`` target is a port nothing listens on, and a flow is aimed
upstream only as the last step of ``request``, after everything else succeeded.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from pathlib import Path

from dotenv import dotenv_values
from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.net.http.url import hostport as url_hostport
from mitmproxy.proxy import mode_specs

from cfgw import admission, auth, config, families, logs, replay, summary
from cfgw.config import Settings
from cfgw.metrics import Metrics
from cfgw.stream import Recorder

log = logging.getLogger("cf_gateway")
request_log = logging.getLogger(logs.REQUESTS)
META = "cf_gateway"
DEFAULT_BODY_SIZE_LIMIT = "32m"
# where accept() errors are logged: asyncio's logger, or mitmproxy's for the loop it runs
ACCEPT_LOGGERS = (logging.getLogger("asyncio"), logging.getLogger("mitmproxy.master"))
MAX_JSON = 16 << 20  # answers larger than this are not parsed for usage


def is_reverse(flow: http.HTTPFlow) -> bool:
    return isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode)


class CfGateway:
    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.environ: dict[str, str | None] = {}
        self.metrics = Metrics()
        self.secret_filter = logs.SecretFilter()
        self.accept_errors = logs.AcceptErrors()
        self.file_handler: logging.Handler | None = None
        self.connections: set[str] = set()
        self.hinted: set[int] = set()
        self.in_flight: dict[str, http.HTTPFlow] = {}  # forwarded, their credentials not masked yet
        self.recording: replay.Recording | None = None
        self.replayer: replay.Replayer | None = None

    # -- options ------------------------------------------------------------------------

    def load(self, loader) -> None:
        raise_fd_limit()
        self.environ = {**dotenv_values(Path.cwd() / ".env"), **os.environ}
        problems = config.given_problems(loader.master.options.deferred)
        for problem in problems:
            log.error(problem)
        if problems:
            return  # no options: mitmproxy exits on the error, and nothing is forwarded meanwhile
        defaults = config.defaults(self.environ)
        for o in config.OPTIONS:
            loader.add_option(o.name, str, defaults[o.name], o.help)
        for name in config.unused_variables(self.environ):
            log.warning(f"cf-gateway: {name} is set but no option reads it (a typo, or a dropped setting?)")
        logs.add_filter(logging.getLogger().handlers, self.secret_filter)
        logs.add_filter(logs.legacy_relays(), logs.NOT_REQUEST_LINES)
        logs.add_filter(ACCEPT_LOGGERS, self.accept_errors)

    def configure(self, updated: set[str]) -> None:
        # mitmproxy's connection lines; the mitmproxy console has no termlog_verbosity
        chatter = "termlog_verbosity" in ctx.options and ctx.options.termlog_verbosity == "debug"
        logging.getLogger("mitmproxy.proxy.server").setLevel(logging.DEBUG if chatter else logging.WARNING)
        if "cf_account_id" in ctx.options and updated & {*config.BY_NAME, "mode", "listen_host"}:
            self.configure_settings()

    def configure_settings(self) -> None:
        values = {o.name: getattr(ctx.options, o.name) for o in config.OPTIONS}
        try:
            settings = config.parse_settings(values, self.environ)
            admission.check_listeners(settings, ctx.options.mode, ctx.options.listen_host)
            self.apply(settings)
        except ValueError as e:
            if self.settings is not None:
                raise exceptions.OptionsError(str(e)) from None
            log.error(str(e))  # at startup mitmproxy exits on it; until then every request gets 503
            return
        self.hide_literal_secrets()

    def hide_literal_secrets(self) -> None:
        """A secret typed into an option moves to the environment; the option shows its source."""
        for o in config.OPTIONS:
            value = getattr(ctx.options, o.name)  # the update below hid the ones after it already
            if o.secret and config.is_literal(value):
                log.warning(
                    f"cf-gateway: {o.name} was given literally: every local user can read it in the "
                    f"process list; use {o.env} in the environment or .env, or {o.name}=@/path/to/file"
                )
                self.environ[o.env] = os.environ[o.env] = value
                ctx.options.update(**{o.name: f"(from {o.env})"})

    def apply(self, s: Settings) -> None:
        """Put new settings in force: the secrets to mask, the files they name."""
        if ctx.options.body_size_limit is None:
            ctx.options.body_size_limit = DEFAULT_BODY_SIZE_LIMIT
        if not ctx.options.keep_host_header:  # else mitmproxy puts the reverse target in Host before
            ctx.options.keep_host_header = True  # the browser guard reads it; forward() sets the upstream's
        self.secret_filter.secrets = tuple(s.secrets())
        self.open_files(s, self.settings)
        if s != self.settings:
            log.info(s.describe())
        for warning in admission.warnings(s, ctx.options):
            log.warning(warning)
        self.settings = s

    def open_files(self, s: Settings, old: Settings | None) -> None:
        """Open only what changed (a recording opened again starts over), the new before the
        old is closed: a change refused with ValueError keeps the old."""
        if changed(s, old, "log_file"):
            self.set_log_file(s.log_file)
        if changed(s, old, "record"):
            self.set_recording(s.record)
        if changed(s, old, "replay", "replay_ignore"):
            self.replayer = replay.Replayer.load(s.replay, s.replay_ignore) if s.replay else None

    def set_log_file(self, path: str) -> None:
        handler = logs.file_handler(path, self.secret_filter) if path else None
        self.close_log_file()
        if handler:
            self.file_handler = handler
            request_log.addHandler(handler)

    def set_recording(self, path: str) -> None:
        recording = replay.Recording(path) if path else None
        self.close_recording()
        self.recording = recording

    def close_files(self) -> None:
        self.close_log_file()
        self.close_recording()

    def close_log_file(self) -> None:
        if self.file_handler:
            request_log.removeHandler(self.file_handler)
            self.file_handler.close()
            self.file_handler = None

    def close_recording(self) -> None:
        if self.recording:
            self.recording.close()
            self.recording = None

    def done(self) -> None:
        for flow in self.in_flight.values():  # before -w (mitmproxy's Save) writes unfinished flows
            auth.mask_headers(flow.request.headers)
        if self.replayer and self.settings:
            log.info(self.replayer.summary_line())
            self.write_report(self.settings.replay_report)
        self.close_files()
        logs.remove_filter(logging.getLogger().handlers, self.secret_filter)
        logs.remove_filter(logs.legacy_relays(), logs.NOT_REQUEST_LINES)
        logs.remove_filter(ACCEPT_LOGGERS, self.accept_errors)

    def write_report(self, path: str) -> None:
        if not (path and self.replayer):
            return
        try:
            Path(path).write_text(self.replayer.report())
        except OSError as e:
            log.error(f"cf-gateway: cannot write the replay report to {path}: {e.strerror}")

    # -- connections --------------------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        limit = self.settings.max_connections if self.settings else 1024
        if len(self.connections) >= limit:
            client.error = "too many open connections"
            self.metrics.refused_connections.inc()
            return
        self.connections.add(client.id)
        self.metrics.connections.set(len(self.connections))

    def client_disconnected(self, client: connection.Client) -> None:
        self.connections.discard(client.id)
        self.metrics.connections.set(len(self.connections))

    # -- requests -----------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not is_reverse(flow) or flow.response:
            return
        flow.metadata[META] = fresh_meta(flow)
        answer = admission.answer(flow, self.settings, self.metrics)
        if isinstance(answer, http.Response):
            flow.response = answer
        elif answer == admission.KILL:
            flow.kill()

    def request(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get(META, {})
        if not is_reverse(flow) or flow.response or not meta.get("admitted") or not self.settings:
            return
        try:
            self.forward(flow, self.settings, meta)
        except Exception:
            log.exception("cf-gateway: internal error; the request was not forwarded")
            flow.response = admission.local(flow, 500, "proxy_internal_error", "the proxy hit a bug")

    def forward(self, flow: http.HTTPFlow, s: Settings, meta: dict) -> None:
        """Replay from the recording, or rewrite the request and aim it upstream (the last step)."""
        families.fix_model(flow, s.api, meta)
        if self.replayer:
            flow.response = self.replayer.answer(flow, meta)
            return
        refused = admission.unrestorable(flow, s)
        if refused:
            flow.response = refused
            return
        headers = flow.request.headers
        auth.set_credentials(headers, s)
        headers["accept-encoding"] = "identity"  # usage is read from the answer's plain bytes
        path = s.prefix + meta["upstream"]
        meta["url"] = s.origin + path.partition("?")[0]
        self.in_flight[flow.id] = flow
        request = flow.request
        request.path = path
        request.scheme, request.host, request.port = s.address  # the last step: now it can leave
        # with keep_host_header an HTTP/1.0 request may have no Host for the setters to update
        request.host_header = url_hostport(request.scheme, request.host, request.port)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        meta = live_meta(flow)
        if meta is None or not flow.response or not self.settings:
            return
        auth.mask_headers(flow.request.headers)
        if flow.response.status_code == 101:  # no upgrade is ever relayed: nothing to pile up in memory
            flow.kill()
            return
        admission.allow_origin(flow, self.settings)
        if meta.get("url") and "text/event-stream" in flow.response.headers.get("content-type", ""):
            self.record_stream(flow, meta, self.settings.record_limit)

    def record_stream(self, flow: http.HTTPFlow, meta: dict, limit: int) -> None:
        """Relay the event stream live through a Recorder; a replayed one is read whole now."""
        assert flow.response
        meta["stream"] = True
        recorder = Recorder(flow, limit)
        if meta["url"].startswith("replay:"):
            recorder.read_whole(flow.response.raw_content or b"")
        flow.response.stream = recorder
        self.metrics.streams.inc()

    def response(self, flow: http.HTTPFlow) -> None:
        meta = live_meta(flow)
        if meta is None or not flow.response:
            return
        if meta.get("url") and not meta.get("stream"):
            self.read_answer(flow, meta)
        admission.allow_origin(flow, self.settings)  # again: local answers have no response head hook
        if flow.request.method == "HEAD":  # headers only: mitmproxy would send a body after them
            flow.response.raw_content = b""
        self.finish(flow, meta)

    def error(self, flow: http.HTTPFlow) -> None:
        meta = live_meta(flow)
        if meta is None:
            return
        auth.mask_headers(flow.request.headers)
        self.finish(flow, meta)

    def read_answer(self, flow: http.HTTPFlow, meta: dict) -> None:
        """Usage from a JSON answer; Cloudflare's own errors reshaped into the client's shape."""
        response = flow.response
        assert response
        body = response.get_content(strict=False) or b""
        if len(body) > MAX_JSON or "json" not in response.headers.get("content-type", ""):
            return
        if response.status_code >= 400:
            self.reshape_error(response, body, meta)
            return
        obj = families.parse_json(body)
        meta["usage"] = families.usage_of(obj)
        meta["answer_model"] = families.model_of(obj)

    def reshape_error(self, response: http.Response, body: bytes, meta: dict) -> None:
        """Cloudflare's own errors in the client's shape, with a hint logged once per code."""
        found = families.reshaped(meta["family"], response.status_code, body)
        if not found:
            return
        body, code, hint = found
        response.set_content(body)
        meta["gateway_code"] = code
        if hint and code not in self.hinted:
            self.hinted.add(code)
            log.warning(f"cf-gateway: Cloudflare error {code}: {hint}")

    def finish(self, flow: http.HTTPFlow, meta: dict) -> None:
        """One record per flow: the log line, metrics, the flow comment, the recording."""
        meta["done"] = True
        self.in_flight.pop(flow.id, None)
        auth.mask_headers(flow.request.headers)  # answered locally, a flow never had its response head
        self.end_stream(flow, meta)
        record = summary.record(flow, meta)
        if record["path"] in ("/healthz", "/metrics") and record["status"] == 200:
            return
        self.metrics.observe(record)
        flow.comment = summary.comment(record)
        self.write_line(record)
        if self.recording and meta.get("url"):
            self.recording.add(flow)

    def end_stream(self, flow: http.HTTPFlow, meta: dict) -> None:
        if flow.response and isinstance(flow.response.stream, Recorder):
            self.metrics.streams.dec()
            meta.update(flow.response.stream.summary())

    def write_line(self, record: dict) -> None:
        line = logs.request_line(record, self.settings.log_format if self.settings else "text")
        request_log.log(logging.INFO if record["outcome"] in ("ok", "local") else logging.WARNING, line)


def live_meta(flow: http.HTTPFlow) -> dict | None:
    """The addon's record of a flow it has not finished yet; a flow loaded from a file (-r) was
    finished before it was saved."""
    meta = flow.metadata.get(META)
    return None if meta is None or meta.get("done") else meta


def fresh_meta(flow: http.HTTPFlow) -> dict:
    """What the addon knows of a flow; a mitmweb replay keeps its client's target (its path is
    the upstream's now)."""
    meta: dict = {"start": time.time()}
    target = flow.metadata.get(META, {}).get("target")
    if flow.is_replay == "request" and target:
        meta["target"] = target
    return meta


def changed(new: Settings, old: Settings | None, *names: str) -> bool:
    return old is None or any(getattr(new, n) != getattr(old, n) for n in names)


def raise_fd_limit() -> None:
    """The soft file-descriptor limit up to the hard one, so connections run out after our bound."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, 1 << 16) if hard != resource.RLIM_INFINITY else 1 << 16
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
