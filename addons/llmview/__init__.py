"""mitmweb's "LLM chat" content view: LLM API traffic as a readable transcript.

``view`` picks the API family of a body and bounds the work; ``chat``, ``messages``,
``responses`` and ``run`` render their family's requests, answers and event streams;
``text`` and ``sse`` are the helpers they share. Load it with ``-s addons/llm_view.py``.
"""
