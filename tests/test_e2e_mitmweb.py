"""mitmweb with the addon: a streamed tool-calling completion reads like a chat transcript.

Drives a real mitmweb through its own HTTP API (the one its UI uses), so what is
asserted here is what a person sees in the browser.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest

from cfgw import chatview
from tests.harness import ACCOUNT_ID, GATEWAY_ID, start_mitmweb, web_client

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture
def mitmweb(gateway, tmp_path):
    p, url = start_mitmweb(gateway.base_url, tmp_path)
    ui = web_client(url)
    yield p, ui
    ui.close()
    p.stop()


def test_streamed_tool_call_reads_like_a_transcript(mitmweb, gw):
    proxy, ui = mitmweb
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-ui-test-key-0123456789", max_retries=0)
    stream = client.chat.completions.create(
        model="openai/gpt-4o-mini",
        stream=True,
        stream_options={"include_usage": True},
        tools=TOOLS,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
        ],
    )
    arguments = "".join(
        call.function.arguments or ""
        for c in stream
        if c.choices and c.choices[0].delta.tool_calls
        for call in c.choices[0].delta.tool_calls[:1]
        if call.function is not None
    )
    assert arguments == '{"city": "Paris"}'
    assert gw.requests[0].path == f"/v1/{ACCOUNT_ID}/{GATEWAY_ID}/compat/chat/completions"
    assert proxy.wait_output("stream cache=MISS")

    (flow,) = [f for f in ui.get("/flows").json() if f["type"] == "http"]
    assert flow["comment"].startswith("openai/gpt-4o-mini · ")
    auth_values = [v for k, v in flow["request"]["headers"] if k.lower() == "authorization"]
    assert auth_values == ["Bearer ********6789"]  # the UI never shows the key

    if not chatview.register():
        pytest.skip("no contentview API on this mitmproxy (11): the view is a mitmproxy 12 feature")
    response = ui.get(f"/flows/{flow['id']}/response/content/auto.json").json()
    assert response["view_name"] == "LLM chat"
    text = response["text"]
    assert "[assistant]" in text
    assert '→ tool call call_standin0: get_weather({"city": "Paris"})' in text
    assert "finish_reason: tool_calls" in text
    assert "usage: prompt " in text and "[DONE]" in text

    request = ui.get(f"/flows/{flow['id']}/request/content/auto.json").json()
    assert request["view_name"] == "LLM chat"
    assert "tool get_weather(city) — Weather for a city" in request["text"]
    assert "[system]\nBe brief." in request["text"] and "[user]\nWeather in Paris?" in request["text"]
