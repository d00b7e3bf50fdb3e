"""Agent-sized chat/completions request bodies: a coding agent's context, as a client sends it.

Why: an agent's requests carry 50 KB to 1 MB of context (system prompt, earlier turns,
tool calls and their results: source files, shell output, search hits) plus a dozen
tool definitions. Whatever the proxy does per request byte shows only on bodies like
these, not on a 60-byte prompt. The keys are in openai-python 1.x's order (``messages``
first, then ``model``, ``stream``, ``stream_options``, ``temperature``, ``tool_choice``,
``tools``), serialised as httpx does (compact, UTF-8 kept), so the model name sits
behind all the messages, which is the hard case for a proxy that wants it. Bodies are
deterministic (seeded) and exactly ``size`` bytes long.

    python bench/agentbody.py 200000 > body.json
"""

from __future__ import annotations

import json
import random
import sys

MODEL = "openai/gpt-4o-mini"

SYSTEM_PROMPT = (
    "You are a careful senior software engineer working in the user's repository through tools. "
    "Read before you write: open the files you are about to change, and search for every caller "
    "of a function before changing its signature. Keep changes minimal and in the style of the "
    "surrounding code. Run the tests that cover what you touched; if a test fails, read its output "
    "and fix the cause, never the assertion. Never print secrets such as API keys or tokens; the "
    "environment may hold them (OPENAI_API_KEY, CF_AIG_TOKEN). When a command needs network access "
    "or deletes files, say so and wait for confirmation. Answer in the user's language; use "
    "Markdown code blocks with the language named (```python), and quote file paths as `path`. "
)

TOOLS = [
    (
        "read_file",
        "Read a text file of the repository, optionally a line range.",
        {
            "path": ("string", "Path relative to the repository root."),
            "start_line": ("integer", "First line to return (1-based)."),
            "end_line": ("integer", "Last line to return (inclusive)."),
        },
    ),
    (
        "write_file",
        "Create or overwrite a file with the given content.",
        {
            "path": ("string", "Path relative to the repository root."),
            "content": ("string", "The complete new content of the file."),
        },
    ),
    (
        "apply_patch",
        "Apply a unified diff to the working tree; fails if a hunk does not apply.",
        {
            "patch": ("string", "A unified diff (---/+++ headers, @@ hunks)."),
        },
    ),
    (
        "run_shell",
        "Run a shell command in the repository root and return its output and exit status.",
        {
            "command": ("string", "The command line, run with bash -lc."),
            "timeout_s": ("integer", "Seconds before the command is killed (default 120)."),
        },
    ),
    (
        "search_code",
        "Search the repository for a regular expression (ripgrep syntax).",
        {
            "pattern": ("string", "The regular expression."),
            "glob": ("string", "Only files matching this glob, e.g. '*.py'."),
            "max_results": ("integer", "At most this many matches (default 50)."),
        },
    ),
    (
        "list_dir",
        "List a directory's entries with their sizes.",
        {
            "path": ("string", "Directory relative to the repository root."),
            "depth": ("integer", "How many levels to descend (default 1)."),
        },
    ),
    (
        "run_tests",
        "Run the test suite or some tests with pytest and return the summary.",
        {
            "selection": ("string", "pytest node ids or -k expression; empty for everything."),
        },
    ),
    (
        "git_diff",
        "Show the working tree's changes against HEAD.",
        {
            "paths": ("array", "Limit the diff to these paths."),
        },
    ),
    (
        "web_fetch",
        "Fetch a URL (documentation only) and return its text.",
        {
            "url": ("string", "An https:// URL."),
        },
    ),
    (
        "ask_user",
        "Ask the user a question and wait for the answer.",
        {
            "question": ("string", "One clear question."),
        },
    ),
    (
        "todo_update",
        "Replace the task list shown to the user.",
        {
            "items": ("array", "Tasks, each a short sentence, in order."),
        },
    ),
    (
        "finish",
        "Say that the task is done, with a summary of the changes.",
        {
            "summary": ("string", "What changed and why, for the commit message."),
        },
    ),
]

WORDS = (
    "request response header body stream token model usage gateway proxy client server cache "
    "config option parse value error status limit record event chunk buffer flow route path "
    "key secret mask log line metric counter label family account retry timeout"
).split()


def tool_definitions() -> list[dict]:
    out = []
    for name, description, params in TOOLS:
        props: dict[str, dict] = {}
        for pname, (ptype, pdesc) in params.items():
            props[pname] = {"type": ptype, "description": pdesc}
            if ptype == "array":
                props[pname]["items"] = {"type": "string"}
        required = [p for p in params if p not in ("start_line", "end_line", "timeout_s", "depth", "glob")]
        out.append(
            {
                "type": "function",
                "function": {
                    "name": name,
                    "description": description,
                    "parameters": {
                        "type": "object",
                        "properties": props,
                        "required": required,
                        "additionalProperties": False,
                    },
                    "strict": True,
                },
            }
        )
    return out


def python_file(rnd: random.Random, n: int) -> str:
    """A plausible source file: quotes, backslashes, tabs in strings, non-ASCII in comments."""
    w = rnd.choice
    lines = [f'"""{w(WORDS).title()} {w(WORDS)} handling for the {w(WORDS)} layer (module {n})."""', ""]
    lines += ["from __future__ import annotations", "", "import json", "import re", ""]
    for i in range(rnd.randint(4, 9)):
        a, b = w(WORDS), w(WORDS)
        lines += [
            f"def {a}_{b}_{i}(data: dict, limit: int = {rnd.randint(1, 4096)}) -> str | None:",
            f'    """Return the {a} of a {b}, or None — never raises (café, naïve, → ok)."""',
            f'    value = data.get("{a}", {{}}).get("{b}")',
            "    if not isinstance(value, str) or len(value) > limit:",
            "        return None",
            '    m = re.match(r"^(\\w+)\\s*=\\s*\\"([^\\"]*)\\"$", value)',
            f'    return m.group(2) if m else json.dumps({{"{a}": value, "tab": "\\t"}})',
            "",
        ]
    return "\n".join(lines) + "\n"


def shell_output(rnd: random.Random) -> str:
    rows = [f"tests/test_{rnd.choice(WORDS)}.py::test_{rnd.choice(WORDS)}_{i} PASSED" for i in range(30)]
    rows[rnd.randrange(len(rows))] = rows[0].replace("PASSED", "FAILED")
    tail = (
        "E   AssertionError: assert 'text/event-stream' == 'application/json'\n"
        "E     - application/json\nE     + text/event-stream\n"
        f"==== 1 failed, {len(rows) - 1} passed in {rnd.uniform(1, 9):.2f}s ====\n"
    )
    return "\n".join(rows) + "\n" + tail


def config_file(rnd: random.Random) -> str:
    """A JSON config as file text: once in the request it is an escaped string with "model" inside."""
    cfg = {
        "model": rnd.choice(["gpt-4o", "claude-sonnet-4-5", "openai/gpt-4.1-mini"]),
        "temperature": round(rnd.random(), 2),
        "providers": {"openai": {"base_url": "http://127.0.0.1:3000/v1", "model": "gpt-4o-mini"}},
        "stream": True,
        "retries": rnd.randint(0, 5),
    }
    return json.dumps(cfg, indent=2) + "\n"


def search_hits(rnd: random.Random) -> str:
    return "\n".join(
        f"addons/cfgw/{rnd.choice(WORDS)}.py:{rnd.randint(1, 600)}:    "
        f'{rnd.choice(WORDS)} = flow.{rnd.choice(WORDS)}.get("{rnd.choice(WORDS)}")'
        for _ in range(rnd.randint(10, 25))
    )


def turn(rnd: random.Random, i: int) -> list[dict]:
    """One round of the agent loop: a tool call and its result, sometimes with a user/assistant text."""
    kind = i % 4
    call_id = f"call_{rnd.getrandbits(64):016x}{i}"
    if kind == 0:
        name, args, result = "read_file", {"path": f"addons/cfgw/{rnd.choice(WORDS)}.py"}, python_file(rnd, i)
    elif kind == 1:
        name, args, result = "run_shell", {"command": "python -m pytest -q tests/ -x"}, shell_output(rnd)
    elif kind == 2:
        name, args, result = "read_file", {"path": "config/agent.json"}, config_file(rnd)
    else:
        name, args = "search_code", {"pattern": rf"def {rnd.choice(WORDS)}_\w+", "glob": "*.py"}
        result = search_hits(rnd)
    msgs: list[dict] = []
    if i % 5 == 0:
        msgs.append({"role": "user", "content": f"Now look at how the {rnd.choice(WORDS)} is handled."})
    msgs.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
            ],
        }
    )
    msgs.append({"role": "tool", "tool_call_id": call_id, "content": result})
    if i % 3 == 2:
        msgs.append(
            {
                "role": "assistant",
                "content": f"The `{rnd.choice(WORDS)}` path looks right; running the tests.",
            }
        )
    return msgs


def encode(obj: dict) -> bytes:
    """As httpx 0.28 encodes ``json=``: compact separators, non-ASCII kept as UTF-8."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def chat_request(size: int, model: str = MODEL, stream: bool = True, seed: int = 0) -> bytes:
    """A chat/completions body of exactly ``size`` bytes (at least about 10 KB: the tools alone are
    several KB), ending with a user message padded to the size."""
    rnd = random.Random(seed)
    messages: list[dict] = [{"role": "system", "content": SYSTEM_PROMPT * 3}]

    def body(last_user: str) -> bytes:
        obj: dict = {"messages": [*messages, {"role": "user", "content": last_user}], "model": model}
        if stream:
            obj["stream"] = True
            obj["stream_options"] = {"include_usage": True}
        obj.update(temperature=0.2, tool_choice="auto", tools=tool_definitions())
        return encode(obj)

    length = len(body(""))  # grows by each message's own encoding plus a comma
    i = 0
    while True:
        more = turn(rnd, i)
        extra = sum(len(encode(m)) + 1 for m in more)
        if length + extra > size:
            break
        messages.extend(more)
        length += extra
        i += 1
    filler = "Please continue with the next step and keep the tests green. "
    room = size - len(body(""))
    if room < 0:
        raise ValueError(f"{size} bytes is too small for the system prompt and the tools")
    out = body((filler * (room // len(filler) + 1))[:room])
    assert len(out) == size, (len(out), size)
    return out


if __name__ == "__main__":
    sys.stdout.buffer.write(chat_request(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000))
