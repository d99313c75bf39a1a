"""Request headers as templates: the server's cache of validated prefixes decides exactly
what the ordinary decoding decides, for valid, malformed and adversarial headers."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_protocol import header_maps
from zps.errors import ProtocolError
from zps.protocol import (
    PROTOCOL_VERSION,
    Limits,
    Op,
    Request,
    RequestEncoder,
    TensorMeta,
    decode_request,
    encode_request,
)
from zps.protocol.templates import MAX_TEMPLATES, TemplateCache, prefix, split, suffix


def outcome(frames: list[Any], cache: TemplateCache | None = None) -> Any:
    """What decoding gives: the request, or the error's code and request id."""
    try:
        return decode_request(frames, templates=cache)
    except ProtocolError as exc:
        return ("error", exc.code, getattr(exc, "request_id", None))


def push(rid: int, watermark: int | None, client: str = "c1") -> list[Any]:
    value = np.arange(4, dtype=np.float32)
    return encode_request(Request(Op.PUSH, client, rid, (TensorMeta.of("w", value),),
                                  buffers=(value.data,), watermark=watermark))


def test_a_repeated_push_is_decoded_from_its_template() -> None:
    cache = TemplateCache()
    first = decode_request(push(10, 9), templates=cache)
    second = decode_request(push(11, 10), templates=cache)
    assert cache.hits == 1
    assert second == decode_request(push(11, 10))
    assert (second.request_id, second.watermark) == (11, 10)
    assert second.tensors == first.tensors and second.client_id == "c1"
    np.testing.assert_array_equal(second.arrays()["w"], np.arange(4, dtype=np.float32))


def test_a_hit_still_checks_the_id_the_watermark_and_the_frames() -> None:
    cache = TemplateCache()
    decode_request(push(10, 9), templates=cache)
    assert outcome(push(11, 12), cache) == outcome(push(11, 12))  # watermark above id
    assert outcome(push(11, 12), cache)[:2] == ("error", "bad_header")
    short = push(12, 11)
    short[1] = b"abc"
    assert outcome(short, cache) == outcome(short) == ("error", "bad_frames", 12)
    head = push(13, 1)[0]
    too_big = [head[:-8] + (2**63).to_bytes(8, "big"), push(13, 1)[1]]
    assert outcome(too_big, cache)[:2] == ("error", "bad_header")


def test_compact_headers_decode_the_ordinary_way() -> None:
    cache = TemplateCache()
    value = np.zeros(2, np.float32)
    frames = [msgpack.packb({"v": PROTOCOL_VERSION, "op": "push", "c": "c1", "r": 3, "w": 3,
                             "t": [["w", "float32", [2], 8]]}), value.data]
    for _ in range(3):
        assert decode_request(frames, templates=cache).request_id == 3
    assert cache.hits == 0


def test_fields_hidden_inside_a_nested_map_are_not_taken_for_the_ids() -> None:
    # A prefix that ends inside an options map: the trailing "w" and "r" are options, and
    # the top-level id is the one before them.
    body = msgpack.packb({"v": PROTOCOL_VERSION, "op": "stats", "c": "c1", "r": 7})
    head = bytes((body[0] + 1,)) + body[1:] + msgpack.packb("o")[:1] + b"o" + b"\x82"
    cache = TemplateCache()
    for rid in (7, 8, 9):
        frames = [head + suffix(rid, 1)]
        assert outcome(frames, cache) == outcome(frames)
    assert cache.hits == 0
    assert decode_request([head + suffix(9, 1)]).request_id == 7


def test_the_cache_is_bounded() -> None:
    cache = TemplateCache()
    for i in range(MAX_TEMPLATES + 5):
        decode_request(push(10, 9, client=f"c{i}"), templates=cache)
    assert len(cache._known) <= MAX_TEMPLATES


def test_a_client_packs_each_kind_of_request_once() -> None:
    encoder = RequestEncoder()
    value = np.ones(3, np.float32)
    make = lambda rid: Request(Op.PUSH, "c1", rid, (TensorMeta.of("w", value),),  # noqa: E731
                               buffers=(value.data,), watermark=rid - 1)
    for rid in (5, 6):
        assert encoder.frames(make(rid))[0] == encode_request(make(rid))[0]
    assert len(encoder._known) == 1
    assert split(encoder.frames(make(7))[0])[1:] == (6, 7)


ids = st.integers(min_value=0, max_value=2**64 - 1)


@settings(max_examples=400, deadline=None)
@given(header_maps, st.lists(st.binary(max_size=16), max_size=3), ids, ids,
       st.none() | ids, st.none() | ids)
def test_the_cache_decides_exactly_what_decoding_decides(
        fields: dict[str, Any], buffers: list[bytes], r1: int, r2: int, w1: int | None,
        w2: int | None) -> None:
    fields = {k: v for k, v in fields.items() if k not in ("r", "w")}
    if (w1 is None) != (w2 is None):
        w2 = None if w1 is None else w1
    try:
        head = prefix(fields, w1 is not None)
    except (ValueError, OverflowError, TypeError):
        return
    cache = TemplateCache()
    for rid, watermark in ((r1, w1), (r2, w2), (r1, w1)):
        frames = [head + suffix(rid, watermark), *buffers]
        assert outcome(frames, cache) == outcome(frames)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=6),
                       st.lists(st.integers(0, 3), max_size=2), min_size=1, max_size=3),
       st.sampled_from([Op.PUSH, Op.PUSH_PULL]),
       st.lists(st.tuples(st.integers(0, 2**63 + 5), st.integers(0, 2**63 + 5)),
                min_size=1, max_size=4),
       st.booleans())
def test_valid_requests_decode_alike_through_the_cache(
        shapes: dict[str, list[int]], op: Op, ids_seen: list[tuple[int, int]],
        wrong_size: bool) -> None:
    arrays = {n: np.zeros(s, np.float32) for n, s in shapes.items()}
    metas = tuple(TensorMeta.of(n, a) for n, a in arrays.items())
    buffers = [a.data for a in arrays.values()]
    if wrong_size:
        buffers[-1] = b"\x00" * (len(buffers[-1]) + 4)
    cache = TemplateCache()
    for rid, watermark in ids_seen:
        head = prefix({"v": PROTOCOL_VERSION, "op": op.value, "c": "c1",
                       "t": [[m.name, m.dtype, list(m.shape), m.nbytes] for m in metas]}, True)
        frames = [head + suffix(rid, watermark), *buffers]
        assert outcome(frames, cache) == outcome(frames)


def test_a_hit_must_end_as_its_template_did() -> None:
    # Learned with a watermark, sent without (the map then announces an entry too many),
    # and the other way round: decoded, and refused, the ordinary way.
    for rid, watermark, other in ((5, 3, None), (5, None, 2)):
        cache = TemplateCache()
        frames = push(rid, watermark) if watermark is not None else encode_request(
            Request(Op.PULL, "c1", rid, names=("w",)))
        decode_request(frames, templates=cache)
        changed = [split(frames[0])[0] + suffix(9, other), *frames[1:]]
        assert outcome(changed, cache) == outcome(changed)
        assert outcome(changed)[:2] == ("error", "bad_header")


def test_only_the_headers_a_client_packs_are_learned() -> None:
    # A top-level "w" earlier in the map and an options map whose one entry is the
    # trailing "w": the header decodes, but it is not what a client sends, so it is not
    # kept, and a variant decodes the ordinary way.
    def text(x: str) -> bytes:
        return bytes([0xA0 | len(x)]) + x.encode()
    body = (b"\x87" + text("v") + msgpack.packb(PROTOCOL_VERSION) + text("op") + text("push")
            + text("c") + text("c1") + text("t") + msgpack.packb([["w", "float32", [4], 16]])
            + text("w") + b"\xcf" + (3).to_bytes(8, "big") + text("o") + b"\x81")
    buffer = np.zeros(4, np.float32).data
    cache = TemplateCache()
    assert decode_request([body + suffix(5, 3), buffer], templates=cache).watermark == 3
    variant = [body + suffix(7, 0), buffer]
    assert outcome(variant, cache) == outcome(variant)
    assert decode_request(variant).options == {"w": 0} and cache.hits == 0


def test_requests_with_options_are_not_kept() -> None:
    value = np.zeros(2, np.float32)
    cache = TemplateCache()
    for rid in range(5, 9):
        decode_request(encode_request(Request(
            Op.PUSH, "c1", rid, (TensorMeta.of("w", value),), options={"loss": rid / 3},
            buffers=(value.data,), watermark=rid)), templates=cache)
    assert cache.hits == 0 and not cache._known


def test_a_failed_check_on_a_hit_is_reported_as_the_full_check_reports_it() -> None:
    limits = Limits(max_message_bytes=200)

    def both(frames: list[Any], cache: TemplateCache) -> tuple[Any, Any]:
        got = []
        for templates in (cache, None):
            try:
                got.append(decode_request(frames, limits, templates))
            except ProtocolError as exc:
                got.append((exc.code, getattr(exc, "request_id", None)))
        return got[0], got[1]

    cache = TemplateCache()
    decode_request(push(5, 4), limits, cache)
    big = b"\x00" * 300
    head = push(6, 5)[0]
    cases = [
        [head, big],  # too large, and the wrong size
        [*push(6, 5), big],  # too large, and a frame too many
        [head[:-8] + (2**63).to_bytes(8, "big"), big],  # a bad id too
        [split(head)[0] + suffix(2, 3), big],  # a watermark above the id too
    ]
    for frames in cases:
        cached, plain = both(frames, cache)
        assert cached == plain and plain[0] == "too_large"
    assert cache.hits == 0


def test_a_header_that_is_not_a_byte_buffer_is_not_taken_from_the_cache() -> None:
    client = next(c for c in ("c1", "c12", "c123", "c1234") if len(push(5, 4, c)[0]) % 4 == 0)
    cache = TemplateCache()
    decode_request(push(5, 4, client), templates=cache)
    frames = push(6, 5, client)
    wide = [np.frombuffer(frames[0], np.uint32), frames[1]]  # the same bytes, 4 an item
    assert outcome(wide, cache) == outcome(wide)
    assert cache.hits == 0
    assert decode_request(frames, templates=cache).request_id == 6 and cache.hits == 1
