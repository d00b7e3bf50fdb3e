"""cf-gateway: a mitmproxy addon that turns a reverse-mode listener into a local proxy for
Cloudflare AI Gateway (OpenAI chat completions, Anthropic Messages, OpenAI Responses).

    mitmdump -s addons/cf_gateway.py --mode reverse:http://127.0.0.1:0@3000 \
        --set connection_strategy=lazy

The ``reverse:`` target is port 0, where nothing can ever listen: the addon sends every
request it admits to the gateway itself, so a request it did not handle (the addon
failed to load, was unloaded by a bad option, or hit a syntax error on reload) fails
with 502 instead of going anywhere unrewritten. Configuration comes from options
(``--set cf_...``), the environment and ``.env``; see README.md. The modules behind it
live in ``addons/cfgw/``.
"""

from __future__ import annotations

import sys

# mitmproxy reloads this script when it changes, but a plain import would keep the cfgw modules
# cached from the first load: drop them so every (re)load runs the code on disk.
for _name in [n for n in sys.modules if n == "cfgw" or n.startswith("cfgw.")]:
    del sys.modules[_name]

from cfgw import reloader  # noqa: E402

reloader.watch(__file__)  # first: even a load that fails below must see the fix of a module

from cfgw.gateway import CfGateway  # noqa: E402

addons = [CfGateway()]
