"""mitmweb's "LLM chat" view: OpenAI chat completions, Anthropic Messages, OpenAI Responses and
Workers AI traffic as a readable transcript, in any proxy mode.

    mitmweb -s addons/llm_view.py

The view is registered when the script loads; the code lives in ``addons/llmview/``.
"""

from __future__ import annotations

import sys

# A reload of this script must run the package's code on disk, not the modules cached by the last load.
for _name in [n for n in sys.modules if n == "llmview" or n.startswith("llmview.")]:
    del sys.modules[_name]

from mitmproxy import contentviews  # noqa: E402

from llmview.view import LLMView  # noqa: E402

contentviews.add(LLMView())  # replaces the view of the same name from an earlier load
