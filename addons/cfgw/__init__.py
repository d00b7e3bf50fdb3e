"""The modules behind addons/cf_gateway.py."""
