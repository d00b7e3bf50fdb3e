"""The helpers the families share."""

from llmview import text


def test_values_inline():
    assert text.label("auto") == "auto"
    assert text.label(True) == "true"
    assert text.label({"effort": "low"}) == '{"effort": "low"}'
    assert text.label(None) == "?"
    assert text.label("x" * 300) == "x" * 200 + "… [100 more characters not shown]"


def test_clip():
    assert text.clip("short") == "short"
    assert text.clip("abcdef", 4) == "abcd… [2 more characters not shown]"


def test_short_url_abbreviates_data_urls():
    assert text.short_url("data:image/png;base64," + "A" * 5000) == "data:image/png;base64,… (5000 chars)"
    assert text.short_url("https://example.com/" + "a" * 200) == "https://example.com/" + "a" * 99 + "…"
    assert text.short_url("https://example.com/a.png") == "https://example.com/a.png"


def test_media_parts():
    assert (
        text.part({"type": "image_url", "image_url": {"url": "https://x/a.png"}})
        == "<image_url https://x/a.png>"
    )
    assert text.part({"type": "image_url", "image_url": "https://x/a.png"}) == "<image_url https://x/a.png>"
    assert (
        text.part({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}})
        == "<input_audio wav>"
    )
    assert text.part({"type": "file", "file": {"file_id": "file-1"}}) == "<file file-1>"
    assert (
        text.part({"type": "input_image", "file_id": "file-2", "detail": "high"})
        == "<input_image file-2 detail=high>"
    )
    assert text.part({"type": "refusal", "refusal": "no"}) == "refusal: no"
    assert text.part({"type": "mystery"}) == "<mystery>"


def test_content_text():
    assert text.content_text(None) == ""
    assert text.content_text("Hi") == "Hi"
    assert text.content_text([{"type": "text", "text": "a"}, "b"]) == "a\nb"


def test_usage_line():
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert text.usage_line(usage) == "usage: prompt 1 · completion 2 · total 3"
    assert text.usage_line({"input_tokens": 5}, "input", "output") == "usage: input 5 · output ? · total ?"
    assert text.usage_line(None) is None


def test_stream_line():
    assert text.stream_line(3, 0, "[DONE]", True) == "stream: 3 events, [DONE]"
    assert (
        text.stream_line(3, 1, "[DONE]", False)
        == "stream: 3 events (1 unparseable) (stream incomplete: no [DONE])"
    )


def test_lines_skip_none():
    assert text.lines(["a", None, "", "b"]) == "a\n\nb\n"
    assert text.size(100) == "100 bytes"
    assert text.size(3 << 20) == "3.0 MiB"
