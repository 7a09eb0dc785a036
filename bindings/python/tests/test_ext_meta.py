"""with_meta: the level, version, TTL and type of what answered."""
from __future__ import annotations


from khala_cache import _khala


def test_l1_hit_meta(cache):
    v = cache.put(b"k", b"val", type="embedding", ttl=30)
    for get in (cache.get, cache.get_l1):
        e = get(b"k", with_meta=True)
        assert isinstance(e, _khala.Entry) and isinstance(e, tuple)
        assert (e.value, e.level, e.version, e.type) == (b"val", _khala.LEVEL_L1, v, 2)
        assert 0 < e.ttl_left_ms <= 30_000
        assert e[0] == b"val" and len(e) == 5


def test_miss_default_is_returned_as_is_with_meta(cache):
    assert cache.get(b"nope", "dflt", with_meta=True) == "dflt"
    assert cache.get_l1(b"nope", with_meta=True) is None


def test_l2_answers_after_a_restart_that_empties_l1(khalad):
    c = khalad.open()
    v = c.put(b"persist", b"on disk", mode="through", ttl=600)
    assert c.get(b"persist", with_meta=True).level == _khala.LEVEL_L1
    khalad.stop()
    # Another L1 size: khalad makes a new segment (L1 empty); the disk L2 keeps the item.
    khalad.sets.append("l1.max_memory_mb=24")
    khalad.start()
    e = c.get(b"persist", with_meta=True)  # the handle follows the new segment
    assert e.value == b"on disk"
    assert e.level == _khala.LEVEL_L2
    assert e.version == v
    assert 0 < e.ttl_left_ms <= 600_000
    assert e.type == _khala.TYPES.index("memory_entity")
    # khalad promoted it: the next get is an L1 hit.
    assert c.get(b"persist", with_meta=True).level == _khala.LEVEL_L1
    assert c.get_l1(b"persist") == b"on disk"


def test_get_l1_never_asks_khalad(khalad):
    c = khalad.open()
    c.put(b"l2only", b"x", mode="through")
    khalad.stop()
    khalad.sets.append("l1.max_memory_mb=24")
    khalad.start()
    assert c.get_l1(b"l2only") is None  # in L2 only: get_l1 does not see it
    assert c.get(b"l2only") == b"x"
