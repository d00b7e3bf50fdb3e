"""cfgw.decoding: exact round trips, and hostile bodies that must stay cheap for the event loop."""

import functools
import gzip
import importlib
import itertools
import random
import time
import tracemalloc
import zlib
from collections.abc import Callable

import brotli
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfgw import decoding
from cfgw.decoding import DecodeAborted, Limits, decode, stream_decoder

# --- fixtures ----------------------------------------------------------------------

ROOMY = Limits(max_output=64 << 20, max_seconds=30.0, max_total_seconds=30.0)
"""For exact round trips: no time limit that a loaded machine could trip."""
STRICT = Limits(max_output=32 << 20)
"""The defaults, as the proxy would use them."""


def _zstd_compress():
    for name in ("compression.zstd", "backports.zstd"):  # what mitmproxy 12 uses
        try:
            return importlib.import_module(name).compress
        except ImportError:
            pass
    return importlib.import_module("zstandard").ZstdCompressor().compress  # mitmproxy 11


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


ZSTD = _zstd_compress()
BROTLI_BOUNDED = hasattr(brotli.Decompressor(), "can_accept_more_data")  # brotli >= 1.2 (mitmproxy 12)
ENCODERS = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "deflate": zlib.compress,
    "deflate-raw": _raw_deflate,
    "zstd": ZSTD,
    **({"br": functools.partial(brotli.compress, quality=5)} if BROTLI_BOUNDED else {}),  # q11 is slow
}
MULTI_MEMBER = ["gzip", "x-gzip", "deflate", "deflate-raw", "zstd"]  # br has no members


def header(name: str) -> str:
    return "deflate" if name == "deflate-raw" else name


SHORT = b'{"id": "chatcmpl-1", "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}'
_rng = random.Random(7)
BIG = b'{"data": "' + _rng.randbytes(1 << 20).hex().encode() + b'", "pad": "' + b" " * (2 << 20) + b'"}'
"""3 MiB: spans many input slices, and its padding decodes in many full output pieces."""


def feed_all(coding: str, pieces, limits: Limits = ROOMY) -> bytes:
    d = stream_decoder(coding, limits)
    assert d is not None
    return b"".join(d.feed(p) for p in pieces)


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", SHORT, BIG], ids=["empty", "short", "3MiB"])
@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_round_trip(name, body):
    raw = ENCODERS[name](body)
    assert decode(raw, header(name), ROOMY) == body
    assert feed_all(header(name), chunks(raw, 16 << 10)) == body


@pytest.mark.parametrize("name", MULTI_MEMBER)
def test_concatenated_members_round_trip(name):
    parts = [SHORT, b"", BIG[:300_000], SHORT]
    raw = b"".join(ENCODERS[name](p) for p in parts)
    assert decode(raw, header(name), ROOMY) == b"".join(parts)
    assert feed_all(header(name), chunks(raw, 1000)) == b"".join(parts)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_split_at_every_byte_boundary(name):
    body = SHORT * 2 if name in MULTI_MEMBER else SHORT
    raw = ENCODERS[name](SHORT) * (2 if name in MULTI_MEMBER else 1)
    for i in range(len(raw) + 1):
        assert feed_all(header(name), [raw[:i], raw[i:]]) == body, i


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_byte_by_byte(name):
    raw = ENCODERS[name](SHORT)
    assert feed_all(header(name), chunks(raw, 1)) == SHORT


@pytest.mark.parametrize("name", MULTI_MEMBER)
def test_members_ending_on_output_piece_boundaries(name):
    """Members decoding to exact multiples of the 256 KiB piece must neither spin nor be dropped."""
    body = BIG[: 5 * (256 << 10)]
    raw = b"".join(ENCODERS[name](p) for p in chunks(body, 256 << 10))
    assert decode(raw, header(name), ROOMY) == body
    assert feed_all(header(name), chunks(raw, 7000)) == body


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(sorted(ENCODERS)),
    st.binary(max_size=3000),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=6),
)
def test_random_bodies_split_at_random_points(name, body, cuts):
    raw = ENCODERS[name](body)
    points = [0, *sorted(min(c, len(raw)) for c in cuts), len(raw)]
    assert feed_all(header(name), [raw[a:b] for a, b in itertools.pairwise(points)]) == body


@pytest.mark.parametrize("coding", [None, "", "identity", " IDENTITY ", "identity, identity"])
def test_identity_is_returned_as_is(coding):
    assert decode(SHORT, coding, STRICT) is SHORT
    assert stream_decoder(coding, STRICT) is None


@pytest.mark.parametrize("coding", ["compress", "bogus", "gzip, br", "gzip, gzip", "br;q=1"])
def test_unknown_or_stacked_codings_raise_value_error(coding):
    with pytest.raises(ValueError):
        decode(SHORT, coding, STRICT)
    with pytest.raises(ValueError):
        stream_decoder(coding, STRICT)


def test_gzip_label_on_a_zlib_body_decodes_as_mitmproxy_does():
    assert decode(zlib.compress(SHORT), "gzip", ROOMY) == SHORT


# --- damaged bodies ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_truncated_body_gives_what_it_holds(name):
    body = BIG[:1_000_000] + SHORT  # several zstd blocks and brotli meta-blocks
    raw = ENCODERS[name](body)
    seen = set()
    for cut in [*range(0, len(raw), len(raw) // 41), len(raw) - 1]:
        out = decode(raw[:cut], header(name), ROOMY)
        assert body.startswith(out), cut
        seen.add(len(out))
    assert len(seen) > 5  # output grows with the input, it is not all-or-nothing


@pytest.mark.parametrize(("name", "trailer"), [("gzip", 8), ("deflate", 4)])
def test_missing_checksum_trailer_still_gives_the_whole_body(name, trailer):
    assert decode(ENCODERS[name](SHORT)[:-trailer], name, ROOMY) == SHORT


@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "deflate", "zstd", "br"])
def test_body_that_is_not_compressed_is_read_as_is(coding):
    if coding == "br" and not BROTLI_BOUNDED:
        pytest.skip("br is refused with brotli < 1.2")
    assert decode(SHORT, coding, STRICT) is SHORT
    with pytest.raises(DecodeAborted, match="corrupt"):
        feed_all(coding, [SHORT], STRICT)


@pytest.mark.parametrize("name", MULTI_MEMBER)
def test_garbage_after_a_member_keeps_what_was_decoded(name):
    raw = ENCODERS[name](SHORT) + b"\xffgarbage"
    assert decode(raw, header(name), ROOMY) == SHORT


@pytest.mark.skipif(not BROTLI_BOUNDED, reason="br is refused with brotli < 1.2")
def test_br_garbage_after_the_end_loses_that_calls_output():
    """brotli fails the whole process() call that runs past the end: nothing decoded, read as is."""
    raw = brotli.compress(SHORT) + b"garbage"
    assert decode(raw, "br", ROOMY) is raw


def test_corrupt_stream_aborts_and_stays_aborted():
    d = stream_decoder("gzip", ROOMY)
    good = gzip.compress(SHORT)
    assert d.feed(good[:5]) == b""
    with pytest.raises(DecodeAborted, match="corrupt data"):
        d.feed(b"\xff" * 20)
    with pytest.raises(DecodeAborted, match="corrupt data"):
        d.feed(good[5:])


# --- limits ----------------------------------------------------------------------------


def _limits(**kw) -> Limits:
    return Limits(**{"max_output": 64 << 20, "max_seconds": 30.0, "max_total_seconds": 30.0, **kw})


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_output_limit_is_exact(name):
    body = bytes(range(256)) * 2000
    raw = ENCODERS[name](body)
    assert decode(raw, header(name), _limits(max_output=len(body))) == body
    with pytest.raises(DecodeAborted, match=f"more than {len(body) - 1} decoded bytes"):
        decode(raw, header(name), _limits(max_output=len(body) - 1))
    d = stream_decoder(header(name), _limits(max_output=len(body) - 1))
    with pytest.raises(DecodeAborted, match="decoded bytes"):
        for piece in chunks(raw, 100):
            d.feed(piece)
    assert d.produced == len(body)  # the piece that crossed the limit was the last


@pytest.mark.parametrize("name", MULTI_MEMBER)
def test_member_limit_is_exact(name):
    raw = ENCODERS[name](b"a") * 5
    assert decode(raw, header(name), _limits(max_members=5)) == b"aaaaa"
    with pytest.raises(DecodeAborted, match="more than 4 members"):
        decode(raw, header(name), _limits(max_members=4))


def test_input_limit_counts_the_whole_stream():
    raw = gzip.compress(SHORT)
    assert decode(raw, "gzip", _limits(max_input=len(raw))) == SHORT
    with pytest.raises(DecodeAborted, match=f"more than {len(raw) - 1} encoded bytes"):
        decode(raw, "gzip", _limits(max_input=len(raw) - 1))
    d = stream_decoder("gzip", _limits(max_input=len(raw) - 1))
    first = d.feed(raw[:10])
    with pytest.raises(DecodeAborted, match="encoded bytes"):
        d.feed(raw[10:])
    assert (first, d.consumed) == (b"", len(raw))


def test_call_time_limit_stops_after_the_first_step():
    """max_seconds=0: a one-step body still decodes (progress), a many-step one is given up."""
    zero = _limits(max_seconds=0.0)
    assert decode(gzip.compress(SHORT), "gzip", zero) == SHORT
    with pytest.raises(DecodeAborted, match="time budget"):
        decode(gzip.compress(BIG), "gzip", zero)


def test_total_time_limit_spans_the_stream():
    d = stream_decoder("gzip", _limits(max_total_seconds=0.0))
    assert d.feed(b"") == b""  # empty chunks cost nothing
    with pytest.raises(DecodeAborted, match="time budget"):
        d.feed(gzip.compress(SHORT))


def test_br_is_refused_when_brotli_cannot_bound_its_output(monkeypatch):
    class Brotli11Decompressor:  # brotli < 1.2: process() has no output limit
        def process(self, data):
            raise AssertionError("must not be used")

    monkeypatch.setattr(brotli, "Decompressor", Brotli11Decompressor)
    with pytest.raises(ValueError, match=r"brotli < 1\.2"):
        stream_decoder("br", STRICT)
    with pytest.raises(ValueError, match=r"brotli < 1\.2"):
        decode(brotli.compress(SHORT), "br", STRICT)


# --- hostile bodies ----------------------------------------------------------------------

EMPTY_MEMBER = {
    "gzip": zlib.compress(b"", 9, 31),
    "deflate": zlib.compress(b""),
    "deflate-raw": _raw_deflate(b""),
    "zstd": ZSTD(b""),
}


def repeated(unit: bytes, size: int) -> bytes:
    return unit * max(1, size // len(unit))


REPRODUCTIONS = {  # from the security review: seconds to minutes of event-loop time before
    "3 MiB of empty gzip members": (zlib.compress(b"", 9, 31) * 157286, "gzip"),
    "1 MiB of empty zstd frames": (repeated(EMPTY_MEMBER["zstd"], 1 << 20), "zstd"),
    "8 MiB of empty zstd frames": (repeated(EMPTY_MEMBER["zstd"], 8 << 20), "zstd"),
}


@pytest.mark.parametrize("case", REPRODUCTIONS)
def test_security_review_reproductions_stop_at_once(case):
    raw, coding = REPRODUCTIONS[case]
    start = time.perf_counter()
    with pytest.raises(DecodeAborted, match="more than 64 members"):
        decode(raw, coding, STRICT)
    assert time.perf_counter() - start < 0.5
    d = stream_decoder(coding, STRICT)
    start = time.perf_counter()
    with pytest.raises(DecodeAborted, match="more than 64 members"):
        d.feed(raw[: 16 << 10])
    assert time.perf_counter() - start < 0.5


def test_empty_members_cost_linear_time_even_without_the_member_cap():
    """Input goes in small slices, so each member copies little: no quadratic blow-up (was 7.5 s)."""
    raw, coding = REPRODUCTIONS["3 MiB of empty gzip members"]
    start = time.perf_counter()
    assert decode(raw, coding, _limits(max_members=1 << 30)) == b""
    assert time.perf_counter() - start < 3.0


_MIB = bytes(1 << 20)
_GIB_CRC32 = 0x5B64C2B0  # zlib.crc32(bytes(1 << 30)); computing it takes half a second


@functools.cache
def deflate_zeros(mib: int) -> bytes:
    """A raw deflate stream of ``mib`` MiB of zeros, built from one repeated MiB (~1 KiB each)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = c.compress(_MIB) + c.flush(zlib.Z_FULL_FLUSH)  # a full flush resets the state: the
    again = c.compress(_MIB) + c.flush(zlib.Z_FULL_FLUSH)  # next MiB compresses the same way
    return first + again * (mib - 1) + b"\x03\x00"  # an empty final block


def gzip_zeros(mib: int) -> bytes:
    crc = _GIB_CRC32 if mib == 1024 else zlib.crc32(bytes(mib << 20))
    size = (mib << 20) % (1 << 32)
    return (
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
        + deflate_zeros(mib)
        + crc.to_bytes(4, "little")
        + size.to_bytes(4, "little")
    )


def zlib_zeros(mib: int) -> bytes:
    adler = (((mib << 20) % 65521) << 16) | 1
    return b"\x78\xda" + deflate_zeros(mib) + adler.to_bytes(4, "big")


def zstd_zeros(blocks: int) -> bytes:
    """A zstd frame of RLE blocks: 4 bytes for each 128 KiB, the best ratio the format has."""
    rle = ((128 << 10) << 3) | (1 << 1)  # block size, type RLE
    head = b"\x28\xb5\x2f\xfd" + bytes([0x00, 13 << 3])  # magic, no content size, 8 MiB window
    return head + (rle.to_bytes(3, "little") + b"\0") * (blocks - 1) + (rle | 1).to_bytes(3, "little") + b"\0"


@functools.cache
def brotli_zeros() -> bytes:
    c = brotli.Compressor(quality=1, lgwin=24)
    return b"".join([*(c.process(_MIB) for _ in range(1024)), c.finish()])  # 1 GiB in ~190 KiB


def test_bomb_builders_make_what_they_claim():
    assert gzip.decompress(gzip_zeros(3)) == bytes(3 << 20)
    assert zlib.decompress(zlib_zeros(3)) == bytes(3 << 20)
    assert zlib.decompress(deflate_zeros(3), -zlib.MAX_WBITS) == bytes(3 << 20)
    assert decode(zstd_zeros(3), "zstd", ROOMY) == bytes(3 << 17)
    assert len(gzip_zeros(1024)) < (1100 << 10) and len(zstd_zeros(8192)) == 32774


BOMBS: dict[str, Callable[[], bytes]] = {  # each decodes to 1 GiB of zeros
    "gzip": lambda: gzip_zeros(1024),
    "deflate": lambda: zlib_zeros(1024),
    "deflate-raw": lambda: deflate_zeros(1024),
    "zstd": lambda: zstd_zeros(8192),
    **({"br": brotli_zeros} if BROTLI_BOUNDED else {}),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bombs_stop_early_with_bounded_memory(name):
    raw = BOMBS[name]()
    limits = Limits(max_output=4 << 20, max_seconds=30.0, max_total_seconds=30.0)  # only the size stops it
    tracemalloc.start()
    try:
        with pytest.raises(DecodeAborted, match="more than 4194304 decoded bytes"):
            decode(raw, header(name), limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20  # not the 1 GiB the body holds


MAGICS = [b"", b"\x1f\x8b\x08\x00", b"\x78\x9c", b"\x28\xb5\x2f\xfd", b"\x28\xb5\x2f\xfd\x00\x68"]
HEADERS = ["gzip", "x-gzip", "deflate", "br", "zstd"]


def _nested(body: bytes, layers: list[str]) -> tuple[bytes, str]:
    for name in layers:
        body = ENCODERS[name](body)
    return body, header(layers[-1])


def _bomb(name: str, cut: int, prefix: int) -> tuple[bytes, str]:
    raw = BOMBS[name]()
    unit = EMPTY_MEMBER.get(name, b"")
    return unit * prefix + raw[: max(1, cut)], header(name)


def _random(seed: int, size: int, magic: bytes, coding: str) -> tuple[bytes, str]:
    return magic + random.Random(seed).randbytes(size), coding


hostile_bodies = st.one_of(
    st.tuples(st.sampled_from(sorted(EMPTY_MEMBER)), st.integers(1, 8 << 20)).map(
        lambda t: (repeated(EMPTY_MEMBER[t[0]], t[1]), header(t[0]))
    ),
    st.builds(
        _nested,
        st.one_of(st.binary(max_size=2000), st.just(bytes(1 << 20))),
        st.lists(st.sampled_from(sorted(ENCODERS)), min_size=2, max_size=4),
    ),
    st.builds(_bomb, st.sampled_from(sorted(BOMBS)), st.integers(1, 1 << 21), st.integers(0, 100)),
    st.builds(
        lambda name, body, cut, junk: (ENCODERS[name](body)[:cut] + junk, header(name)),
        st.sampled_from(sorted(ENCODERS)),
        st.binary(max_size=5000),
        st.integers(0, 6000),
        st.binary(max_size=100),
    ),
    st.builds(
        _random,
        st.integers(0, 2**32),
        st.integers(0, 8 << 20),
        st.sampled_from(MAGICS),
        st.sampled_from(HEADERS),
    ),
    st.tuples(st.binary(max_size=4096), st.sampled_from(HEADERS)),
)


def _timed(fn, *args):
    """(result or the expected exception, seconds taken); anything else propagates."""
    start = time.perf_counter()
    try:
        result = fn(*args)
    except (DecodeAborted, ValueError) as e:
        result = e
    return result, time.perf_counter() - start


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_bodies, st.sampled_from([None, 1, 1000, 16 << 10, 1 << 20]))
def test_hostile_bodies_cost_little_time_and_memory(body, chunk_size):
    raw, coding = body
    limits = Limits(max_output=4 << 20)
    calls: list[float] = []
    produced = 0
    tracemalloc.start()
    try:
        if chunk_size is None:
            out, took = _timed(decode, raw, coding, limits)
            calls.append(took)
            if isinstance(out, bytes) and out is not raw:  # raw: not decodable, read as is
                produced = len(out)
        else:
            decoder, _ = _timed(stream_decoder, coding, limits)
            step = max(chunk_size, len(raw) // 2000 + 1)  # at most ~2000 calls
            for piece in chunks(raw, step) if isinstance(decoder, decoding.StreamDecoder) else []:
                out, took = _timed(decoder.feed, piece)
                calls.append(took)
                if not isinstance(out, bytes):
                    break
                produced += len(out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert max(calls, default=0) < 0.5
    assert sum(calls) < 1.0
    assert produced <= limits.max_output
    assert peak < 24 << 20
