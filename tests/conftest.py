"""Shared fixtures: the stand-in gateway and real mitmdump processes with the addon."""

from __future__ import annotations

import pytest

from tests.harness import Proxy, start_proxy
from tests.standin_gateway import StandinGateway


@pytest.fixture(scope="session")
def gateway():
    """One stand-in Cloudflare AI Gateway for the whole session (tests clear() it)."""
    gw = StandinGateway()
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
def gw(gateway):
    """The stand-in, with its record of received requests cleared for this test."""
    gateway.clear()
    return gateway


@pytest.fixture(scope="module")
def proxy(gateway, tmp_path_factory):
    """A default proxy (pass-through) in front of the stand-in, shared by a module."""
    p = start_proxy(gateway.base_url, workdir=tmp_path_factory.mktemp("proxy"))
    yield p
    p.stop()


@pytest.fixture
def make_proxy(gateway, tmp_path):
    """Start extra proxies with their own options; all are stopped after the test."""
    started: list[Proxy] = []

    def make(options=None, upstream=None, **kwargs) -> Proxy:
        kwargs.setdefault("workdir", tmp_path / f"proxy{len(started)}")
        kwargs["workdir"].mkdir(exist_ok=True)
        p = start_proxy(upstream or gateway.base_url, options=options, **kwargs)
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()
