"""cf-gateway: the modules behind addons/cf_gateway.py, one concern each."""
