"""Recording forwarded exchanges to a flow file, and answering requests from one."""

from __future__ import annotations

import json

import pytest
from mitmproxy import flow, io

from cfgw import replay
from cfgw.replay import Recording, Replayer
from tests import flows
from tests.flows import json_response, reverse_flow

IGNORE = frozenset({"user", "metadata"})
CHAT = ("chat", "/v1/chat/completions", "/compat/chat/completions")
MESSAGES = ("messages", "/v1/messages?beta=true", "/anthropic/v1/messages?beta=true")


def recorded(body: dict, answer: dict, route=CHAT, **meta) -> flow.Flow:
    family, target, upstream = route
    f = reverse_flow(target, body=body, headers={"authorization": "Bearer sk-provider-secret"})
    f.response = json_response(answer)
    f.metadata["cf_gateway"] = {"family": family, "target": target, "upstream": upstream, **meta}
    return f


def request(body: bytes | dict, route=CHAT, method: str = "POST") -> tuple:
    family, target, upstream = route
    return reverse_flow(target, body=body, method=method), {
        "family": family,
        "target": target,
        "upstream": upstream,
    }


def answer(replayer: Replayer, body: bytes | dict, route=CHAT) -> tuple:
    f, meta = request(body, route)
    response = replayer.answer(f, meta)
    return json.loads(response.content), response, meta


def test_recording_writes_masked_flows_that_mitmproxy_reads(tmp_path):
    path = tmp_path / "rec.flows"
    recording = Recording(str(path))
    f = recorded({"model": "m"}, {"id": "1"})
    f.request.headers["cf-aig-authorization"] = "Bearer aig-token-secret"
    recording.add(f)
    recording.close()
    with path.open("rb") as fp:
        (read,) = list(io.FlowReader(fp).stream())
    assert "secret" not in str(read.request.headers)
    assert read.request.headers["authorization"] == "Bearer ********cret"
    assert json.loads(read.response.content) == {"id": "1"}
    assert read.metadata["cf_gateway"]["upstream"] == "/compat/chat/completions"


def test_recording_that_cannot_open_names_the_option(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match=r"cf_record \(env CF_RECORD\) cannot open"):
        Recording(str(tmp_path / "a-file" / "flows.mitm"))


def test_a_recording_gets_its_folder(tmp_path):
    Recording(str(tmp_path / "recordings" / "agent.mitm")).close()
    assert (tmp_path / "recordings" / "agent.mitm").exists()


def test_match_ignores_key_order_whitespace_and_ignored_fields():
    replayer = Replayer([recorded({"model": "m", "messages": [1, 2], "user": "a"}, {"id": "1"})], IGNORE)
    body, response, meta = answer(replayer, b'{ "messages": [1,2],\n "user": "b", "model": "m" }')
    assert body == {"id": "1"} and response.headers["content-length"] == str(len(response.content))
    assert meta["url"] == "replay:/compat/chat/completions"


def test_identical_requests_are_answered_in_recorded_order():
    replayer = Replayer([recorded({"model": "m"}, {"id": str(i)}) for i in range(3)], IGNORE)
    ids = [answer(replayer, {"model": "m"})[0]["id"] for _ in range(3)]
    assert ids == ["0", "1", "2"]
    body, response, _ = answer(replayer, {"model": "m"})
    assert response.status_code == 404 and "nothing (left) recorded" in body["error"]["message"]


def test_truncated_failed_and_unanswered_flows_are_skipped():
    failed = recorded({"model": "m"}, {"id": "failed"})
    failed.error = flow.Error("Connection refused")
    unanswered = recorded({"model": "m"}, {"id": "none"})
    unanswered.response = None
    local = recorded({"model": "m"}, {"id": "local"})
    del local.metadata["cf_gateway"]["upstream"]
    flows_ = [recorded({"model": "m"}, {"id": "cut"}, truncated=True), failed, unanswered, local]
    replayer = Replayer(flows_, IGNORE)
    assert (replayer.skipped, replayer.total) == (4, 0)
    assert answer(replayer, {"model": "m"})[1].status_code == 404


def test_unmatched_gets_404_in_the_familys_shape_naming_the_differing_fields():
    replayer = Replayer(
        [recorded({"model": "m", "max_tokens": 5, "stream": True}, {"id": "1"}, MESSAGES)], IGNORE
    )
    body, response, meta = answer(
        replayer, {"model": "other", "max_tokens": 5, "stream": True, "user": "x"}, MESSAGES
    )
    assert response.status_code == 404 and body["type"] == "error"
    assert body["error"]["code"] == "no_recording"
    assert body["error"]["message"].endswith("the closest recorded request differs in: model")
    assert "url" not in meta


def test_another_route_or_method_does_not_match():
    replayer = Replayer([recorded({"model": "m"}, {"id": "1"})], IGNORE)
    assert answer(replayer, {"model": "m"}, MESSAGES)[1].status_code == 404
    f, meta = request({"model": "m"}, method="PUT")
    assert replayer.answer(f, meta).status_code == 404


def test_report_counts_everything():
    cut = recorded({"model": "m"}, {"id": "cut"}, truncated=True)
    replayer = Replayer([recorded({"model": "a"}, {}), recorded({"model": "b"}, {}), cut], IGNORE)
    answer(replayer, {"model": "a"})
    answer(replayer, {"model": "c"})
    report = json.loads(replayer.report())
    assert report == {
        "recorded": 2, "used": 1, "unused": 1, "unmatched": 1, "skipped": 1,
        "unmatched_requests": ["POST /v1/chat/completions: the closest recorded request differs in: model"],
    }  # fmt: skip
    assert replayer.summary_line() == "cf-gateway: replay: 1 used, 1 unused, 1 unmatched"


def test_a_file_that_is_not_a_recording_names_the_option(tmp_path):
    path = tmp_path / "junk.flows"
    path.write_bytes(b"this is not a flow file")
    with pytest.raises(ValueError, match=r"cf_replay \(env CF_REPLAY\) cannot read"):
        Replayer.load(str(path), IGNORE)


def test_canonical_body():
    assert (
        replay.canonical(b'{"b": 1, "a": {"d": 2, "c": 3}, "user": "x"}', IGNORE)
        == '{"a":{"c":3,"d":2},"b":1}'
    )
    assert replay.canonical(b"[1, 2]", IGNORE) == "[1, 2]"


def test_the_addon_records_then_replays_with_nothing_upstream(tmp_path):
    path, report = tmp_path / "rec.flows", tmp_path / "report.json"
    with flows.loaded(cf_record=str(path), env={"CF_AIG_TOKEN": "aig-token-secret"},
                      cf_token="(from CF_AIG_TOKEN)") as (_, gw):  # fmt: skip
        flows.send(gw, reverse_flow(body={"model": "m", "user": "a"}), json_response({"id": "recorded"}))
    assert b"aig-token-secret" not in path.read_bytes()
    with flows.loaded(cf_replay=str(path), cf_replay_report=str(report)) as (_, gw):
        f = reverse_flow(body={"user": "b", "model": "m"})
        flows.send(gw, f, json_response({"id": "from upstream"}))
        assert json.loads(f.response.content) == {"id": "recorded"}
        assert f.request.host == "127.0.0.1"  # never aimed upstream
    assert json.loads(report.read_text())["used"] == 1
