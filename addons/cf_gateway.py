"""cf-gateway: a mitmproxy addon that turns a reverse-mode listener into a local proxy for
Cloudflare AI Gateway or Cloudflare's REST API (OpenAI chat, Anthropic Messages, OpenAI Responses).

    mitmdump -s addons/cf_gateway.py --mode reverse:http://127.0.0.1:0@127.0.0.1:3000 \\
        --set connection_strategy=lazy

The ``reverse:`` target is port 0, where nothing can listen: the addon aims every request
it admits upstream itself, so a request it did not handle (the addon failed to load, or a
hook failed) gets a 502 instead of going anywhere unrewritten. The modules live in
``addons/cfgw/``; see docs/development.md.
"""

import sys

# mitmproxy reloads this script when it changes; drop the cached cfgw modules so a reload
# (touch this file after editing a module) runs the code on disk.
for name in [n for n in sys.modules if n == "cfgw" or n.startswith("cfgw.")]:
    del sys.modules[name]

from cfgw.gateway import CfGateway  # noqa: E402

addons = [CfGateway()]
