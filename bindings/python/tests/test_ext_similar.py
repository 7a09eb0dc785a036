"""similar(): semantic look-ups (issue 12) through the extension, against a real khalad."""
from __future__ import annotations

import array
import math
import struct

import pytest

from khala_cache import _khala

DIM = 8


def axis(a: int, b: int = -1, eps: float = 0.0) -> array.array:
    v = array.array("f", [0.0] * DIM)
    v[a] = 1.0
    if b >= 0:
        v[b] += eps
    return v


def test_near_duplicates_hit_far_ones_miss_and_the_threshold_holds(cache):
    cache.put(b"near", axis(0, 1, 0.05).tobytes(), type="embedding", mode="through")
    cache.put(b"mid", axis(0, 1, 0.75).tobytes(), type="embedding", mode="through")
    cache.put(b"far", axis(5).tobytes(), type="embedding", mode="through")
    got = cache.similar(axis(0), k=10)  # khalad's threshold: 0.9
    assert [m[0] for m in got] == [b"near"]
    key, sim, entry = got[0]
    assert sim == pytest.approx(1 / math.sqrt(1 + 0.05**2), abs=1e-5)
    assert entry.value == axis(0, 1, 0.05).tobytes()
    assert entry.level in (_khala.LEVEL_L2, _khala.LEVEL_L3)
    assert entry.type == _khala.TYPES.index("embedding")
    assert entry.version > 0
    # Any form of the vector: bytes, a list of numbers, a buffer of float32.
    q = [1.0] + [0.0] * (DIM - 1)
    assert [m[0] for m in cache.similar(q, k=10, min_similarity=0.79)] == [b"near", b"mid"]
    assert [m[0] for m in cache.similar(struct.pack(f"<{DIM}f", *q), k=1)] == [b"near"]
    assert [m[0] for m in cache.similar(q, k=3, min_similarity=-1)] == [b"near", b"mid", b"far"]
    assert cache.similar(axis(7), min_similarity=0.5) == []


def test_deleted_items_never_come_back(cache):
    cache.put(b"gone", axis(2).tobytes(), type="embedding", mode="through")
    assert len(cache.similar(axis(2))) == 1
    cache.delete(b"gone")
    assert cache.similar(axis(2)) == []


def test_bad_queries_raise(cache):
    with pytest.raises(_khala.InvalidArgument, match="zero vector"):
        cache.similar([0.0] * DIM)
    with pytest.raises(_khala.InvalidArgument, match="NaN"):
        cache.similar([1.0, float("nan")])
    with pytest.raises(_khala.InvalidArgument, match="k is 0"):
        cache.similar(axis(0), k=0)
    with pytest.raises(_khala.InvalidArgument, match="-1..1"):
        cache.similar(axis(0), min_similarity=2)
    with pytest.raises(_khala.InvalidArgument, match="0 components"):
        cache.similar([])
    with pytest.raises(ValueError, match="whole number of float32"):
        cache.similar(b"abc")
    with pytest.raises(TypeError, match="'d' items"):
        cache.similar(array.array("d", [1.0, 0.0]))
    with pytest.raises(TypeError):
        cache.similar(12)
