"""The table of API families: one module each, one row here.

A fourth family (Gemini, Cloudflare's REST API) is one more module building a
``Family`` and one more entry below (plus its row in ``routes``).
"""

from __future__ import annotations

from cfgw import family_chat, family_messages, family_responses
from cfgw.family import Family

BY_NAME: dict[str, Family] = {
    f.name: f for f in (family_chat.CHAT, family_chat.OTHER, family_messages.FAMILY, family_responses.FAMILY)
}
