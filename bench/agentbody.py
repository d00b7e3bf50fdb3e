"""Agent-sized chat/completions bodies: a coding agent's context, as its SDK sends it.

Why: an agent's requests carry 50 KB to 1 MB of context (a system prompt, tool calls and
their results: source files, test output, search hits) and a dozen tool definitions.
Whatever a proxy does per request byte shows only on bodies like these. Keys come in
openai-python 1.x's order (``messages`` first, ``model`` after them), encoded as httpx does
(compact, UTF-8 kept), so the model name sits behind all the messages. Seeded: the same
bytes on every run, exactly ``size`` bytes long.
"""

from __future__ import annotations

import json
import random

MODEL = "openai/gpt-4o-mini"
SYSTEM = (
    "You are a careful senior engineer working in the user's repository through tools. Read before "
    "you write; search for every caller before changing a signature; run the tests you touched and "
    "fix causes, never assertions. Never print secrets (OPENAI_API_KEY, CF_AIG_TOKEN). Quote paths "
    "as `path` and name the language of code blocks (```python). "
)
TOOLS = {
    "read_file": "path start_line end_line",
    "write_file": "path content",
    "apply_patch": "patch",
    "run_shell": "command timeout_s",
    "search_code": "pattern glob max_results",
    "list_dir": "path depth",
    "run_tests": "selection",
    "git_diff": "paths",
    "web_fetch": "url",
    "ask_user": "question",
    "todo_update": "items",
    "finish": "summary",
}
WORDS = (
    "request response header body stream token model usage gateway proxy client server cache config "
    "option parse value error status limit record event chunk buffer flow route path key secret"
).split()


def tools() -> list[dict]:
    out = []
    for name, params in TOOLS.items():
        props = {
            p: {"type": "string", "description": f"The {p.replace('_', ' ')} for {name}."}
            for p in params.split()
        }
        schema = {
            "type": "object",
            "properties": props,
            "required": list(props),
            "additionalProperties": False,
        }
        function = {
            "name": name,
            "description": f"{name.replace('_', ' ').capitalize()}.",
            "parameters": schema,
        }
        out.append({"type": "function", "function": {**function, "strict": True}})
    return out


def source_file(rnd: random.Random, n: int) -> str:
    """Source text with quotes, backslashes, tabs and non-ASCII: what makes JSON escaping work."""
    lines = [f'"""The {rnd.choice(WORDS)} layer, module {n}."""', "", "import json", "import re", ""]
    for i in range(rnd.randint(4, 9)):
        a, b = rnd.choice(WORDS), rnd.choice(WORDS)
        lines += [
            f"def {a}_{b}_{i}(data: dict, limit: int = {rnd.randint(1, 4096)}) -> str | None:",
            f'    """Return the {a} of a {b}, or None — never raises (café, naïve, → ok)."""',
            f'    value = data.get("{a}", {{}}).get("{b}")',
            '    m = re.match(r"^(\\w+)\\s*=\\s*\\"([^\\"]*)\\"$", value or "")',
            f'    return m.group(2) if m else json.dumps({{"{a}": value, "tab": "\\t"}})',
            "",
        ]
    return "\n".join(lines)


def tool_result(rnd: random.Random, i: int) -> tuple[str, dict, str]:
    """(tool name, its arguments, its output) for turn i of the agent loop."""
    if i % 3 == 0:
        return "read_file", {"path": f"src/{rnd.choice(WORDS)}.py"}, source_file(rnd, i)
    if i % 3 == 1:
        rows = [f"tests/test_{rnd.choice(WORDS)}.py::test_{rnd.choice(WORDS)}_{j} PASSED" for j in range(30)]
        rows.append("E   AssertionError: assert 'text/event-stream' == 'application/json'")
        return "run_shell", {"command": "python -m pytest -q -x"}, "\n".join(rows)
    hits = [
        f'src/{rnd.choice(WORDS)}.py:{rnd.randint(1, 600)}: x = flow.get("{rnd.choice(WORDS)}")'
        for _ in range(20)
    ]
    return "search_code", {"pattern": rf"def {rnd.choice(WORDS)}_\w+", "glob": "*.py"}, "\n".join(hits)


def turn(rnd: random.Random, i: int) -> list[dict]:
    """One round of the agent loop: a tool call and its result, now and then a line of text."""
    name, args, result = tool_result(rnd, i)
    call = {"id": f"call_{rnd.getrandbits(64):016x}", "type": "function"}
    call["function"] = {"name": name, "arguments": json.dumps(args)}
    msgs: list[dict] = [{"role": "assistant", "content": None, "tool_calls": [call]}]
    msgs.append({"role": "tool", "tool_call_id": call["id"], "content": result})
    if i % 4 == 3:
        msgs.append({"role": "assistant", "content": f"The `{rnd.choice(WORDS)}` path looks right; testing."})
    return msgs


def encode(obj: dict) -> bytes:
    """As httpx encodes ``json=``: compact separators, non-ASCII kept as UTF-8."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def chat_request(size: int, seed: int = 0) -> bytes:
    """A streaming chat/completions body of exactly ``size`` bytes (at least ~5 KB)."""
    rnd = random.Random(seed)
    messages: list[dict] = [{"role": "system", "content": SYSTEM * 3}]

    def body(last: str) -> bytes:
        obj = {"messages": [*messages, {"role": "user", "content": last}], "model": MODEL, "stream": True}
        obj.update(stream_options={"include_usage": True}, temperature=0.2, tool_choice="auto", tools=tools())
        return encode(obj)

    length, i = len(body("")), 0
    while True:
        more = turn(rnd, i)
        extra = sum(len(encode(m)) + 1 for m in more)  # each message plus its comma
        if length + extra > size:
            break
        messages.extend(more)
        length, i = length + extra, i + 1
    room = size - len(body(""))
    if room < 0:
        raise ValueError(f"{size} bytes is too small for the system prompt and the tools")
    filler = "Please continue with the next step and keep the tests green. "
    out = body((filler * (room // len(filler) + 1))[:room])
    assert len(out) == size, (len(out), size)
    return out
