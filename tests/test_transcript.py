import pytest
from hypothesis import given
from hypothesis import strategies as st

from cfgw.family import Usage
from cfgw.transcript import (
    MAX_LABEL,
    MAX_TEXT,
    MAX_URL,
    args,
    clip,
    content_part,
    content_text,
    count,
    described,
    header,
    j,
    label,
    openai_usage_line,
    param_names,
    request_head,
    s,
    short_url,
)


def _deep(n: int) -> list:
    v: list = []
    for _ in range(n):
        v = [v]
    return v


# --- text helpers ------------------------------------------------------------------------


def test_j_is_compact_json_with_readable_non_ascii():
    assert j({"a": [1, None, True], "b": "é"}) == '{"a": [1, null, true], "b": "é"}'
    assert j("x") == '"x"'


def test_j_falls_back_to_repr_and_names_absurd_nesting():
    assert j({1, 2} - {2}) == "{1}"  # a set is not JSON: repr
    assert j(float("nan")) == "NaN"
    assert j(_deep(100_000)) == "<too deeply nested>"


def test_s_keeps_strings_and_encodes_the_rest():
    assert s("auto") == "auto"
    assert s(True) == "true"
    assert s({"type": "auto"}) == '{"type": "auto"}'
    assert s(None) == "null"


def test_short_url():
    assert short_url("data:image/png;base64," + "A" * 5000) == "data:image/png;base64,… (5000 chars)"
    assert short_url("https://x.test/a.png") == "https://x.test/a.png"
    long = "https://x.test/" + "a" * 200
    assert short_url(long) == long[: MAX_URL - 1] + "…"
    assert len(short_url(long)) == MAX_URL
    assert short_url(None) == "null"
    assert short_url({"url": 1}) == '{"url": 1}'


def test_clip():
    assert clip("abc", 3) == "abc"
    assert clip("abcdef", 3) == "abc… [3 more characters not shown]"
    assert clip("x" * MAX_TEXT) == "x" * MAX_TEXT
    assert clip("x" * (MAX_TEXT + 5)) == "x" * MAX_TEXT + "… [5 more characters not shown]"


def test_label_cuts_at_max_label_by_default_at_limit_or_never():
    assert label("gpt-4o") == "gpt-4o"
    assert label(7) == "7"
    assert label("x" * (MAX_LABEL + 1)) == "x" * MAX_LABEL + "… [1 more characters not shown]"
    assert label("abcdef", 4) == "abcd… [2 more characters not shown]"
    assert label(["ab", "cd"], 4) == '["ab… [8 more characters not shown]'  # of '["ab", "cd"]'
    assert label("x" * 1000, None) == "x" * 1000


def test_args_and_count():
    assert args('{"city": "Paris"}') == '{"city": "Paris"}'
    assert args({"city": "Paris"}) == '{"city": "Paris"}'
    assert args(None) == ""
    assert args("") == ""
    assert [count(v) for v in (0, 12, None, True, 1.5, "3")] == ["0", "12", "?", "?", "?", "?"]


# --- shared rendering pieces -------------------------------------------------------------


def test_header_lists_the_keys_present_in_order():
    obj = {"id": "msg_1", "model": "claude", "status": None}
    assert header(obj) == ["model: claude", "id: msg_1"]
    assert header(obj, ("model", "id", "status")) == ["model: claude", "id: msg_1"]
    assert header({"status": "completed", "model": 4}, ("model", "id", "status")) == [
        "model: 4",
        "status: completed",
    ]
    assert header({}) == []


def test_header_limit():
    obj = {"model": "m" * (MAX_LABEL + 2)}
    assert header(obj) == ["model: " + "m" * MAX_LABEL + "… [2 more characters not shown]"]
    assert header(obj, limit=None) == ["model: " + "m" * (MAX_LABEL + 2)]


def _media(typ, part):
    return f"<pic {part.get('src')}>" if typ == "pic" else None


TEXT_TYPES = frozenset({"text", "output_text"})


def test_content_part_text_refusal_and_audio():
    assert content_part("plain", TEXT_TYPES, _media) == "plain"
    assert content_part({"type": "text", "text": "hi"}, TEXT_TYPES, _media) == "hi"
    assert content_part({"type": "output_text", "text": ""}, TEXT_TYPES, _media) == ""
    assert content_part({"type": "input_text", "text": "hi"}, TEXT_TYPES, _media) == "<input_text>"
    assert content_part({"type": "refusal", "refusal": "no"}, TEXT_TYPES, _media) == "refusal: no"
    audio = {"type": "input_audio", "input_audio": {"format": "wav", "data": "AAAA"}}
    assert content_part(audio, TEXT_TYPES, _media) == "<input_audio format=wav>"
    assert content_part({"type": "input_audio"}, TEXT_TYPES, _media) == "<input_audio>"


def test_content_part_media_and_unknown_types():
    assert content_part({"type": "pic", "src": "a.png"}, TEXT_TYPES, _media) == "<pic a.png>"
    assert content_part({"type": "video"}, TEXT_TYPES, _media) == "<video>"
    assert content_part({"type": {"x": 1}}, TEXT_TYPES, _media) == '<{"x": 1}>'
    assert content_part({"text": "no type"}, TEXT_TYPES, _media) == "<part>"
    assert (
        content_part({"type": ["text"], "text": "x"}, TEXT_TYPES, _media) == '<["text"]>'
    )  # unhashable type
    assert content_part(42, TEXT_TYPES, _media) == "42"


def test_content_part_limit_cuts_labels_not_text():
    long = "t" * (MAX_LABEL + 3)
    cut = "t" * MAX_LABEL + "… [3 more characters not shown]"
    assert content_part({"type": long}, TEXT_TYPES, _media) == f"<{cut}>"
    assert content_part({"type": long}, TEXT_TYPES, _media, limit=None) == f"<{long}>"
    fmt = {"type": "input_audio", "input_audio": {"format": long}}
    assert content_part(fmt, TEXT_TYPES, _media) == f"<input_audio format={cut}>"
    assert content_part([long], TEXT_TYPES, _media, limit=10) == '["tttttttt… [197 more characters not shown]'
    assert content_part({"type": "text", "text": long}, TEXT_TYPES, _media) == long


def test_content_text():
    part = str.upper
    assert content_text(None, part) is None
    assert content_text("", part) == ""
    assert content_text("as is", part) == "as is"
    assert content_text(["a", "b"], part) == "A\nB"
    assert content_text([], part) == ""
    assert content_text({"k": 1}, part) == '{"k": 1}'
    assert content_text(3, part) == "3"


def test_param_names():
    assert param_names({"type": "object", "properties": {"city": {}, "unit": {}}}) == "city, unit"
    assert param_names({"properties": {}}) == ""
    assert param_names({"properties": ["city"]}) == ""
    assert param_names(None) == ""
    assert param_names({"properties": {"p" * (MAX_LABEL + 1): {}}}) == (
        "p" * MAX_LABEL + "… [1 more characters not shown]"
    )
    assert param_names({"properties": {"p" * (MAX_LABEL + 1): {}}}, limit=None) == "p" * (MAX_LABEL + 1)


def test_described_folds_white_space_and_cuts():
    assert (
        described("tool f()", "Get the weather\n  for a city.", 100)
        == "tool f() — Get the weather for a city."
    )
    assert described("tool f()", "abcdef", 3) == "tool f() — abc… [3 more characters not shown]"
    assert described("tool f()", "  \n ", 100) == "tool f()"
    assert described("tool f()", None, 100) == "tool f()"
    assert described("tool f()", ["not text"], 100) == "tool f()"


def _tool(t):
    return f"tool {t['name']}" if isinstance(t, dict) else f"tool {j(t)}"


def test_request_head_exact():
    obj = {
        "model": "gpt-4o",
        "messages": [],
        "temperature": 0.2,
        "stream": True,
        "tools": [{"name": "a"}, 7],
        "functions": [{"name": "b"}],
    }
    not_params = {"model", "messages", "tools", "functions"}
    assert request_head(obj, not_params, s, _tool) == [
        "model: gpt-4o",
        "params: temperature=0.2 · stream=true",
        "tools:",
        "  tool a",
        "  tool 7",
    ]
    assert request_head(obj, not_params, s, _tool, ("tools", "functions")) == [
        "model: gpt-4o",
        "params: temperature=0.2 · stream=true",
        "tools:",
        "  tool a",
        "  tool 7",
        "  tool b",
    ]


def test_request_head_omits_what_is_absent_and_limits_names():
    assert request_head({}, set(), s, _tool) == []
    assert request_head({"tools": [], "functions": "x"}, {"tools", "functions"}, s, _tool) == []
    assert request_head({"model": None, "n": 2}, {"model"}, lambda v: f"<{v}>", _tool) == ["params: n=<2>"]
    key = "k" * (MAX_LABEL + 1)
    obj = {"model": "m" * (MAX_LABEL + 1), key: 1}
    cut = "… [1 more characters not shown]"
    assert request_head(obj, {"model"}, s, _tool) == [
        "model: " + "m" * MAX_LABEL + cut,
        "params: " + "k" * MAX_LABEL + cut + "=1",
    ]
    assert request_head(obj, {"model"}, s, _tool, limit=None) == [
        "model: " + "m" * (MAX_LABEL + 1),
        "params: " + key + "=1",
    ]


def test_openai_usage_line():
    u = Usage(input_tokens=81, output_tokens=35, total_tokens=116, cached_tokens=64, reasoning_tokens=20)
    assert openai_usage_line(u, "input", "output") == (
        "usage: input 81 · output 35 · total 116 (cached 64, reasoning 20)"
    )
    assert openai_usage_line(Usage(input_tokens=12, output_tokens=34), "prompt", "completion") == (
        "usage: prompt 12 · completion 34 · total 46"
    )
    assert openai_usage_line(Usage(input_tokens=5, cached_tokens=4), "input", "output") == (
        "usage: input 5 · output ? · total 5 (cached 4)"
    )
    assert openai_usage_line(Usage(total_tokens=0, reasoning_tokens=0), "input", "output") == (
        "usage: input ? · output ? · total 0"
    )
    assert openai_usage_line(Usage(), "input", "output") == "usage: input ? · output ? · total ?"
    assert openai_usage_line(None, "input", "output") is None


# --- hostile input -----------------------------------------------------------------------

KEYS = ["model", "id", "type", "text", "refusal", "input_audio", "format", "properties", "tools", "x"]
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
    max_leaves=20,
)


@given(JSONISH)
def test_helpers_never_raise_on_arbitrary_json(v):
    obj = v if isinstance(v, dict) else {"model": v, "tools": [v], "x": v}
    for limit in (None, 5):
        assert isinstance(label(v, limit), str)
        assert isinstance(content_part(v, TEXT_TYPES, _media, limit), str)
        assert isinstance(param_names(v, limit), str)
        assert all(isinstance(line, str) for line in header(obj, ("model", "id", "x"), limit))
        assert all(isinstance(line, str) for line in request_head(obj, {"tools"}, s, j, limit=limit))
    text = content_text(v, lambda p: content_part(p, TEXT_TYPES, _media))
    assert text is None or isinstance(text, str)
    assert isinstance(described("tool", v, 5), str)
    assert isinstance(short_url(v), str)
    assert isinstance(args(v), str)


@pytest.mark.parametrize("limit", [None, MAX_LABEL])
def test_absurd_nesting_is_named_not_raised(limit):
    deep = _deep(100_000)
    assert label(deep, limit) == "<too deeply nested>"
    assert content_part(deep, TEXT_TYPES, _media, limit) == "<too deeply nested>"
    assert content_text({"k": deep}, str) == "<too deeply nested>"
    assert header({"model": deep}, limit=limit) == ["model: <too deeply nested>"]
    assert request_head({"p": deep}, set(), s, j, limit=limit) == ["params: p=<too deeply nested>"]
