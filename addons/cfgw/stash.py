"""Secrets masked on a flow, kept in memory only, so that replaying the flow still works.

Masking writes ``Bearer ********cdef`` over a header once the request is sent; a replay
from mitmweb would send that mask. The real values are kept here instead, under a
random handle saved in the flow's metadata (the handle is worthless without this
process's memory), and put back when the flow, a duplicate of it, or an edited copy is
replayed. A header the person edited is theirs and is sent as typed. A mask that cannot
be restored (a flow loaded from a file, a duplicate whose original is gone) is never
sent upstream: the replay is answered with an error that says why.

Only a proxy with a flow list (mitmweb, the console) keeps entries: mitmdump is done with
each flow when it ends, so nothing could replay it (gateway.CfGateway.replayable). Bounded:
an entry goes when its flow is garbage (mitmweb deleted it), and the oldest go past MAX_ENTRIES.
"""

from __future__ import annotations

import itertools
import secrets
import weakref
from collections import OrderedDict

from mitmproxy import http

from cfgw import auth

MAX_ENTRIES = 10_000
HANDLE = "secrets"  # key of the handle in the flow's cf_gateway metadata


class Unrestorable(Exception):
    """A replayed request carries a mask this process cannot turn back into the secret."""


class Stash:
    def __init__(
        self,
        max_entries: int = MAX_ENTRIES,
        entries: OrderedDict[str, tuple[tuple[bytes, bytes, bytes], ...]] | None = None,
    ) -> None:
        self.max_entries = max_entries
        # Handles: a random prefix per Stash, then a serial number; unique without a random draw
        # (a system call) per flow, and as worthless outside this process as a random handle.
        self.prefix = secrets.token_hex(8) + "-"
        self.serial = itertools.count()
        self.entries = OrderedDict() if entries is None else entries
        """handle -> (lower-case name, masked value, real value) per secret header; may be shared."""

    def __len__(self) -> int:
        return len(self.entries)

    def keep(self, flow: http.HTTPFlow, meta: dict, found: tuple[auth.Secret, ...]) -> None:
        """Remember the secret headers ``auth.redact`` just masked on ``flow`` (``found``)."""
        if not found:
            return
        handle = f"{self.prefix}{next(self.serial)}"
        meta[HANDLE] = handle
        self.entries[handle] = found
        weakref.finalize(flow, self.entries.pop, handle, None)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)

    def restore(self, flow: http.HTTPFlow, handle: object, replaced: frozenset[bytes]) -> None:
        """Put the real values back over their masks on a replayed request.

        Headers named in ``replaced`` are set afresh by the proxy on the way out (its own
        gateway token) or removed (dropped client keys), so their masks are dropped here and
        need no secret. Raises Unrestorable for any other mask left over.
        """
        fields = flow.request.headers.fields
        if not any(name.lower() in auth.SECRET_NAMES and auth.is_masked(v) for name, v in fields):
            return
        kept = list(self.entries.get(handle, ())) if isinstance(handle, str) else []
        if kept:
            self.entries.move_to_end(handle)  # type: ignore[arg-type]
        out = []
        for name, value in fields:
            lower = name.lower()
            if lower in replaced and auth.is_masked(value):
                continue
            if lower in auth.SECRET_NAMES and auth.is_masked(value):
                match = next((i for i, (n, m, _) in enumerate(kept) if n == lower and m == value), None)
                if match is None:
                    raise Unrestorable(name.decode("latin-1"))
                value = kept.pop(match)[2]
            out.append((name, value))
        flow.request.headers.fields = tuple(out)
