"""get_or_load: the Python loader under the C library's single-flight."""
from __future__ import annotations

import threading
import time

import pytest

from khala_cache import _khala


def test_loader_runs_on_a_miss_and_the_value_is_cached(cache):
    calls = []

    def loader(key):
        calls.append(key)
        return b"loaded:" + key

    assert cache.get_or_load(b"k", loader) == b"loaded:k"
    assert calls == [b"k"]
    assert cache.get_l1(b"k") == b"loaded:k"  # khalad cached it in L1
    assert cache.get_or_load(b"k", loader) == b"loaded:k"
    assert calls == [b"k"]  # a hit: the loader did not run again


def test_loader_gets_bytes_for_a_str_key(cache):
    seen = []
    cache.get_or_load("clé", lambda k: seen.append(k) or b"v")
    assert seen == ["clé".encode()]


def test_loader_meta_says_loader_then_l1(cache):
    e = cache.get_or_load(b"m", lambda k: b"v", type="search_result", ttl=60, with_meta=True)
    assert e.value == b"v" and e.level == _khala.LEVEL_LOADER and e.version > 0
    assert e.type == _khala.TYPES.index("search_result")
    e2 = cache.get_or_load(b"m", lambda k: b"other", with_meta=True)
    assert e2.level == _khala.LEVEL_L1 and e2.version == e.version
    assert 0 < e2.ttl_left_ms <= 60_000 and e2.type == _khala.TYPES.index("search_result")


def test_loader_returning_none_returns_none_and_caches_nothing(cache):
    assert cache.get_or_load(b"n", lambda k: None) is None
    assert cache.get(b"n") is None
    assert cache.get_or_load(b"n", lambda k: b"now") == b"now"


def test_loader_exception_propagates_and_caches_nothing(cache):
    class Boom(Exception):
        pass

    def loader(key):
        raise Boom("database down")

    with pytest.raises(Boom, match="database down"):
        cache.get_or_load(b"e", loader)
    assert cache.get(b"e") is None
    # khalad was told: the next caller leads a new load at once (no wait for a dead leader).
    assert cache.get_or_load(b"e", lambda k: b"fine") == b"fine"


def test_loader_returning_a_non_buffer_raises_type_error(cache):
    with pytest.raises(TypeError, match="bytes-like"):
        cache.get_or_load(b"t", lambda k: 12)
    assert cache.get_or_load(b"t", lambda k: bytearray(b"ba")) == b"ba"


def test_loader_value_of_any_size_is_loaded_once(cache):
    calls = []
    big = b"x" * (512 * 1024)  # far above any buffer of the extension

    def loader(key):
        calls.append(key)
        return big

    assert cache.get_or_load(b"big", loader) == big
    assert len(calls) == 1
    assert cache.get(b"big") == big


def test_loader_value_too_big_for_the_cache_is_returned_not_cached(cache):
    huge = b"h" * (3 * 1024 * 1024)  # above khalad's largest value (1 MiB by default)
    calls = []
    assert cache.get_or_load(b"huge", lambda k: calls.append(k) or huge) == huge
    assert calls == [b"huge"]
    assert cache.get(b"huge") is None


def test_loader_may_use_the_cache(cache):
    cache.put(b"dep", b"D")

    def loader(key):
        return cache.get(b"dep") + b"+" + key

    assert cache.get_or_load(b"outer", loader) == b"D+outer"


def test_single_flight_across_threads(cache):
    """Eight threads miss one key at once: one loader runs, all get its value."""
    calls = []
    release = threading.Event()
    started = threading.Event()
    results = [None] * 8

    def loader(key):
        calls.append(key)
        started.set()
        release.wait(10)
        return b"once"

    def worker(i):
        results[i] = cache.get_or_load(b"sf", loader)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    assert started.wait(10)
    release.set()
    for t in threads:
        t.join(20)
    assert results == [b"once"] * 8
    assert len(calls) == 1


def test_bad_arguments(cache):
    with pytest.raises(TypeError):
        cache.get_or_load(b"k", "not callable")
    with pytest.raises(TypeError):
        cache.get_or_load(b"k")
    with pytest.raises(_khala.InvalidArgument):
        cache.get_or_load(b"k", lambda k: b"", ttl=-1)
    with pytest.raises(_khala.InvalidKey):
        cache.get_or_load(b"", lambda k: b"")


def _wait_for(cond, what):
    for _ in range(1000):
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def test_leader_exception_makes_the_waiter_load(cache):
    """A leader whose Python loader raises: khalad is told, and the caller that was waiting
    on the key leads the next round with its own loader."""
    release = threading.Event()
    led = threading.Event()
    out = {}

    def failing(key):
        led.set()
        release.wait(10)
        raise RuntimeError("source failed")

    def leader():
        try:
            cache.get_or_load(b"x", failing)
        except RuntimeError as e:
            out["leader"] = e

    def waiter():
        out["waiter"] = cache.get_or_load(b"x", lambda k: out.setdefault("calls", []).append(k)
                                          or b"second")

    tl = threading.Thread(target=leader)
    tl.start()
    assert led.wait(10)
    waited = cache.stats()["daemon"]["khalad"]["loads_waited"]
    tw = threading.Thread(target=waiter)
    tw.start()
    _wait_for(lambda: cache.stats()["daemon"]["khalad"]["loads_waited"] > waited,
              "the second caller waits on the first one's load")
    release.set()
    tl.join(20)
    tw.join(20)
    assert isinstance(out["leader"], RuntimeError)
    assert out["waiter"] == b"second" and out["calls"] == [b"x"]
    assert cache.get(b"x") == b"second"
