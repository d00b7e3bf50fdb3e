"""Secrets kept in memory for replays (cfgw.stash)."""

from __future__ import annotations

import gc

import pytest

from cfgw import auth
from cfgw.stash import Stash, Unrestorable
from tests.flows import reverse_flow

SECRET = "sk-test.0000000000000000000000000000abcd"
TOKEN = "cfut-token-0000000000000000000000000000wxyz"


def sent_flow(*headers):
    f = reverse_flow(headers=headers)
    return f


def masked(stash: Stash, f) -> dict:
    meta: dict = {}
    stash.keep(f, meta, auth.redact(f.request.headers))
    f.metadata["cf_gateway"] = meta
    return meta


def test_keep_then_restore_round_trip():
    stash = Stash()
    f = sent_flow(("authorization", f"Bearer {SECRET}"), ("cf-aig-authorization", f"Bearer {TOKEN}"))
    meta = masked(stash, f)
    assert f.request.headers["authorization"] == "Bearer ********abcd"
    assert SECRET not in repr(f.get_state()) and meta["secrets"] not in (SECRET, TOKEN)
    stash.restore(f, meta["secrets"], frozenset())
    assert f.request.headers["authorization"] == f"Bearer {SECRET}"
    assert f.request.headers["cf-aig-authorization"] == f"Bearer {TOKEN}"


def test_a_header_the_person_edited_is_sent_as_typed():
    stash = Stash()
    f = sent_flow(("authorization", f"Bearer {SECRET}"), ("x-api-key", SECRET))
    meta = masked(stash, f)
    f.request.headers["x-api-key"] = "sk-typed-by-hand"
    stash.restore(f, meta["secrets"], frozenset())
    assert f.request.headers["x-api-key"] == "sk-typed-by-hand"
    assert f.request.headers["authorization"] == f"Bearer {SECRET}"


def test_duplicate_shares_the_handle_until_the_original_is_gone():
    stash = Stash()
    f = sent_flow(("authorization", f"Bearer {SECRET}"))
    meta = masked(stash, f)
    dup = f.copy()
    stash.restore(dup, meta["secrets"], frozenset())
    assert dup.request.headers["authorization"] == f"Bearer {SECRET}"
    dup2 = f.copy()
    del f
    gc.collect()
    assert len(stash) == 0
    with pytest.raises(Unrestorable, match="authorization"):
        stash.restore(dup2, meta["secrets"], frozenset())
    assert dup2.request.headers["authorization"] == "Bearer ********abcd"  # unchanged: never sent


def test_unknown_handle_or_none_is_unrestorable_but_fresh_headers_are_fine():
    stash = Stash()
    f = sent_flow(("cf-aig-authorization", "Bearer ********wxyz"), ("authorization", "Bearer ********abcd"))
    with pytest.raises(Unrestorable):
        stash.restore(f, "no-such-handle", frozenset())
    with pytest.raises(Unrestorable):
        stash.restore(f, None, frozenset({b"cf-aig-authorization"}))
    g = sent_flow(("cf-aig-authorization", "Bearer ********wxyz"), ("x-api-key", "typed-by-hand"))
    stash.restore(g, None, frozenset({b"cf-aig-authorization"}))  # the proxy sets its own token
    assert "cf-aig-authorization" not in g.request.headers  # the mask is never sent
    assert g.request.headers["x-api-key"] == "typed-by-hand"


def test_two_secrets_with_the_same_mask_restore_in_order():
    stash = Stash()
    f = sent_flow(("x-api-key", "short-1"), ("x-api-key", "short-2"))
    meta = masked(stash, f)
    assert f.request.headers.get_all("x-api-key") == ["********", "********"]
    stash.restore(f, meta["secrets"], frozenset())
    assert f.request.headers.get_all("x-api-key") == ["short-1", "short-2"]


def test_requests_without_masks_are_left_alone():
    stash = Stash()
    f = sent_flow(("authorization", f"Bearer {SECRET}"))
    stash.restore(f, None, frozenset())
    assert f.request.headers["authorization"] == f"Bearer {SECRET}"


def test_bounded_under_10k_flows():
    stash = Stash(max_entries=1000)
    alive = []
    for i in range(10_000):
        f = sent_flow(("authorization", f"Bearer {SECRET}{i}"))
        masked(stash, f)
        if i % 2:
            alive.append(f)  # half stay alive (as in mitmweb's list), half are gone
    gc.collect()
    assert len(stash) <= 1000
    newest = alive[-1]
    stash.restore(newest, newest.metadata["cf_gateway"]["secrets"], frozenset())
    assert newest.request.headers["authorization"] == f"Bearer {SECRET}9999"
