"""Cache's basic methods against a real khalad: get, get_l1, put, delete, touch, invalidate,
close, pickling, the constants."""
from __future__ import annotations

import pickle

import pytest

from khala_cache import _khala


def test_constants():
    assert _khala.KEY_MAX == 250
    assert _khala.LEVEL_L1 == 1 and _khala.LEVEL_L2 == 2 and _khala.LEVEL_L3 == 3
    assert _khala.LEVEL_LOADER == 4 and _khala.LEVEL_STALE == 5
    assert _khala.TYPES[0] == "memory_entity" and len(_khala.TYPES) == 8
    assert _khala.TTL_MAX_SECONDS == 10 * 365 * 86400
    assert isinstance(_khala.__version__, str)


def test_put_then_get_reads_l1(cache):
    v = cache.put(b"k1", b"hello")
    assert isinstance(v, int) and v > 0
    assert cache.get(b"k1") == b"hello"
    assert cache.get_l1(b"k1") == b"hello"
    assert cache.stats()["hits"] >= 2


def test_keys_of_every_kind_name_the_same_item(cache):
    cache.put("ключ", b"unicode")
    assert cache.get("ключ".encode()) == b"unicode"
    assert cache.get(bytearray("ключ".encode())) == b"unicode"
    assert cache.get(memoryview("ключ".encode())) == b"unicode"


def test_values_of_every_buffer_kind(cache):
    cache.put(b"ba", bytearray(b"xyz"))
    cache.put(b"mv", memoryview(b"0123456789")[2:5])
    cache.put(b"empty", b"")
    assert cache.get(b"ba") == b"xyz"
    assert cache.get(b"mv") == b"234"
    assert cache.get(b"empty") == b""


def test_get_miss_returns_default(cache):
    assert cache.get(b"absent") is None
    assert cache.get(b"absent", 42) == 42
    assert cache.get(b"absent", default="d") == "d"
    assert cache.get_l1(b"absent", b"x") == b"x"


def test_large_value_takes_the_section_path(cache):
    big = bytes(range(256)) * 1024  # 256 KiB: above the stack buffer
    cache.put(b"big", big)
    assert cache.get(b"big") == big
    assert cache.get_l1(b"big") == big


def test_delete_says_whether_it_held_the_key(cache):
    cache.put(b"d", b"1")
    assert cache.delete(b"d") is True
    assert cache.delete(b"d") is False
    assert cache.get(b"d") is None


def test_touch(cache):
    assert cache.touch(b"nope") is False
    v1 = cache.put(b"t", b"1", ttl=100)
    assert cache.touch(b"t", ttl=200) is True
    e = cache.get(b"t", with_meta=True)
    assert e.version == v1  # same value, same version (cache.h, khala_cache_touch)
    assert 100_000 < e.ttl_left_ms <= 200_000
    assert cache.put(b"t", b"2", expected_version=v1) > v1  # a CAS from before the touch holds


def test_invalidate_by_key_prefix_and_type(cache):
    for i in range(5):
        cache.put(f"user:{i}", b"u")
    cache.put(b"other", b"o")
    cache.put(b"emb", b"e", type="embedding")
    assert cache.invalidate(b"user:0") == 1
    assert cache.invalidate(b"user:0") == 0
    assert cache.invalidate(prefix=b"user:") == 4
    assert cache.get(b"user:3") is None
    assert cache.invalidate(type="embedding") == 1
    assert cache.get(b"emb") is None
    assert cache.get(b"other") == b"o"
    with pytest.raises(TypeError):
        cache.invalidate()
    with pytest.raises(TypeError):
        cache.invalidate(b"a", prefix=b"b")


def test_types_by_name_id_and_enum_value(cache):
    class FakeEnum:
        value = "search_result"

    cache.put(b"a", b"1", type="agent_response")
    cache.put(b"b", b"2", type=2)
    cache.put(b"c", b"3", type=FakeEnum())
    assert cache.get(b"a", with_meta=True).type == _khala.TYPES.index("agent_response")
    assert cache.get(b"b", with_meta=True).type == _khala.TYPES.index("embedding")
    assert cache.get(b"c", with_meta=True).type == _khala.TYPES.index("search_result")
    with pytest.raises(_khala.InvalidArgument):
        cache.put(b"x", b"1", type="nope")
    with pytest.raises(_khala.InvalidArgument):
        cache.put(b"x", b"1", type=8)
    with pytest.raises(TypeError):
        cache.put(b"x", b"1", type=1.5)


def test_ttl_and_mode_arguments(cache):
    cache.put(b"m", b"1", ttl=0.0001, mode="through")  # rounded up to 1 ms: accepted
    cache.put(b"m", b"1", ttl=5, mode="behind")
    with pytest.raises(_khala.InvalidArgument):
        cache.put(b"m", b"1", ttl=0)
    with pytest.raises(_khala.InvalidArgument):
        cache.put(b"m", b"1", ttl=-3)
    with pytest.raises(_khala.InvalidArgument):
        cache.put(b"m", b"1", ttl=_khala.TTL_MAX_SECONDS + 1)
    with pytest.raises(_khala.InvalidArgument):
        cache.put(b"m", b"1", mode="sideways")
    with pytest.raises(TypeError):
        cache.put(b"m", b"1", ttl="5")


def test_context_manager_and_close(khalad):
    with khalad.open() as c:
        c.put(b"k", b"v")
        assert not c.closed
    assert c.closed
    with pytest.raises(ValueError):
        c.get(b"k")
    c.close()  # twice is fine


def test_default_constructor_uses_the_environment(khalad):
    c = _khala.Cache()
    assert c.name == khalad.name and c.socket == khalad.socket
    c.put(b"env", b"1")
    assert khalad.open().get(b"env") == b"1"


def test_pickle_reopens_the_same_cache(cache):
    cache.put(b"p", b"pickled")
    c2 = pickle.loads(pickle.dumps(cache))
    assert c2 is not cache
    assert (c2.name, c2.socket, c2.timeout_ms) == (cache.name, cache.socket, cache.timeout_ms)
    assert c2.get(b"p") == b"pickled"


def test_open_unknown_cache_raises(khalad):
    with pytest.raises(FileNotFoundError) as ei:
        _khala.Cache("no-such-cache-xyz", socket=khalad.socket)
    assert isinstance(ei.value, _khala.CacheNotFound) and isinstance(ei.value, _khala.KhalaError)
    assert ei.value.code == -2  # -ENOENT: no writer made it
    assert "no-such-cache-xyz" in str(ei.value)
    with pytest.raises(_khala.InvalidName):
        _khala.Cache("bad name!")


def test_argument_errors(cache):
    with pytest.raises(TypeError):
        cache.get()
    with pytest.raises(TypeError):
        cache.get(b"k", None, None)
    with pytest.raises(TypeError):
        cache.get(b"k", nope=1)
    with pytest.raises(TypeError):
        cache.get(b"k", 1, default=2)
    with pytest.raises(TypeError):
        cache.put(b"k")
    with pytest.raises(TypeError):
        cache.put(b"k", "a str is not a value")
    with pytest.raises(TypeError):
        cache.put(b"k", b"v", expected_version="1")
