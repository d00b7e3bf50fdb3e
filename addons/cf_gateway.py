"""cf-gateway: a mitmproxy addon that turns a reverse-mode listener into a proxy for
Cloudflare AI Gateway's OpenAI-compatible endpoint.

    mitmdump -s addons/cf_gateway.py --mode reverse:https://gateway.ai.cloudflare.com@3000 \
        --set connection_strategy=lazy

Configuration comes from options (``--set cf_...``), the environment and ``.env``;
see README.md. The modules behind it live in ``addons/cfgw/``.
"""

from cfgw import chatview
from cfgw.gateway import CfGateway


class ChatViewRegistration:
    """Adds the LLM chat content view on mitmproxy 12 (11 has no such API, and works without it)."""

    def load(self, loader) -> None:
        chatview.register()

    def done(self) -> None:
        chatview.unregister()


addons = [CfGateway(), ChatViewRegistration()]
