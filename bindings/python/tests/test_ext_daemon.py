"""warm() and stats(): the calls that only khalad answers."""
from __future__ import annotations

import pytest

from khala_cache import _khala


def restart_with_empty_l1(khalad):
    """Restart khalad with another L1 size: a new, empty L1; the disk L2 keeps the items."""
    khalad.stop()
    khalad.sets.append("l1.max_memory_mb=24")
    khalad.start()


def test_warm_by_keys_prefix_and_type(khalad):
    c = khalad.open()
    for i in range(5):
        c.put(f"w:{i}", b"v", mode="through")
    c.put(b"e:1", b"x", type="embedding", mode="through")
    restart_with_empty_l1(khalad)
    assert c.get_l1(b"w:0") is None
    assert c.warm([b"w:0", "w:1", bytearray(b"nope")]) == 2
    assert c.get_l1(b"w:1") == b"v"
    assert c.get_l1(b"w:2") is None
    assert c.warm(prefix=b"w:") >= 3
    assert c.get_l1(b"w:4") == b"v"
    assert c.warm(type="embedding") == 1
    assert c.get_l1(b"e:1", with_meta=True).type == _khala.TYPES.index("embedding")
    assert c.warm([]) == 0


def test_warm_arguments(cache):
    with pytest.raises(TypeError):
        cache.warm()
    with pytest.raises(TypeError):
        cache.warm([b"a"], prefix=b"a")
    with pytest.raises(TypeError):
        cache.warm(12)
    with pytest.raises(_khala.InvalidKey):
        cache.warm([b"ok", b""])
    with pytest.raises(_khala.InvalidKey):
        cache.warm(prefix=b"")
    with pytest.raises(_khala.InvalidArgument):
        cache.warm(type="nope")


def test_warm_many_keys_in_batches(cache):
    keys = [f"many:{i}".encode() for i in range(2500)]
    for k in keys[:10]:
        cache.put(k, b"1")
    assert cache.warm(keys) == 10


def test_stats_has_own_counts_and_khalad_sections(cache):
    cache.put(b"s", b"1")
    before = cache.stats()
    cache.get(b"s")
    cache.get(b"absent")
    st = cache.stats()
    assert st["hits"] == before["hits"] + 1
    assert st["misses"] >= before["misses"] + 1
    d = st["daemon"]
    assert isinstance(d, dict)
    assert d["l1"]["items"] >= 1 and isinstance(d["l1"]["items"], int)
    assert d["l2"]["backend"] == "disk"
    assert d["khalad"]["requests"] > 0


def test_stats_with_khalad_down(khalad):
    c = khalad.open()
    c.put(b"x", b"1")
    c.get(b"x")
    khalad.stop()
    st = c.stats()
    assert st["daemon"] is None and st["hits"] >= 1
