"""@cached: sync and async, keys stable across processes, once under a stampede."""

import asyncio
import multiprocessing
import os
import subprocess
import sys
import threading
import time

import pytest

from khala_cache import AsyncCache, CacheableItem, JsonCodec, call_key, cached
from khala_cache.keys import KEY_MAX


def _count_call(path):
    with open(path, "a") as f:
        f.write("x")


def _calls(path):
    try:
        with open(path) as f:
            return len(f.read())
    except FileNotFoundError:
        return 0


@cached(type=CacheableItem.SEARCH_RESULT, ttl=60)
def search(counter_path, query, limit=10):
    """Module level, so that processes share it; counts its runs in a file."""
    _count_call(counter_path)
    time.sleep(0.3)  # a window for the others to pile up on the same key
    return {"query": query, "limit": limit, "hits": [query.upper()]}


def test_sync_function_caches_and_returns_the_decoded_value(khalad, tmp_path):
    counter = str(tmp_path / "calls")
    first = search(counter, "cats")
    assert first == {"query": "cats", "limit": 10, "hits": ["CATS"]}
    assert search(counter, "cats") == first
    assert search(counter, query="cats", limit=10) == first  # the same call, the same key
    assert _calls(counter) == 1
    assert search(counter, "dogs", 5)["limit"] == 5
    assert _calls(counter) == 2
    with khalad.open() as c:
        entry = c.get(search.cache_key(counter, "cats"), with_meta=True)
        assert CacheableItem.of(entry.type) is CacheableItem.SEARCH_RESULT
        assert JsonCodec().decode(entry.value) == first


def test_cache_invalidate_makes_the_next_call_run(khalad, tmp_path):
    counter = str(tmp_path / "calls")
    search(counter, "x")
    assert search.cache_invalidate(counter, "x") is True
    assert search.cache_invalidate(counter, "x") is False
    search(counter, "x")
    assert _calls(counter) == 2


def test_sync_function_runs_once_under_8_threads(khalad, tmp_path):
    counter = str(tmp_path / "calls")
    results = []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        results.append(search(counter, "stampede"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(r["hits"] == ["STAMPEDE"] for r in results)
    assert _calls(counter) == 1


def _process_worker(counter, barrier, queue):
    try:
        barrier.wait()
        queue.put(search(counter, "processes"))
    except BaseException as e:
        queue.put(repr(e))


def test_sync_function_runs_once_under_4_processes(khalad, tmp_path):
    counter = str(tmp_path / "calls")
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(counter, barrier, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    try:
        results = [queue.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
    assert all(r == {"query": "processes", "limit": 10, "hits": ["PROCESSES"]} for r in results)
    assert _calls(counter) == 1


def test_async_function_runs_once_under_8_coroutines(khalad):
    runs = []

    @cached(key=lambda memory_id: f"memory:{memory_id}")
    async def load(memory_id):
        runs.append(memory_id)
        await asyncio.sleep(0.3)
        return {"id": memory_id}

    async def scenario():
        return await asyncio.gather(*(load("m1") for _ in range(8)))

    assert asyncio.run(scenario()) == [{"id": "m1"}] * 8
    assert runs == ["m1"]
    assert load.cache_key("m1") == "memory:m1"
    with khalad.open() as c:
        assert c.get_l1("memory:m1") == b'{"id":"m1"}'

        async def again():
            assert await load("m1") == {"id": "m1"}
            assert await load.cache_invalidate("m1") is True
            assert await load("m1") == {"id": "m1"}

        asyncio.run(again())
    assert runs == ["m1", "m1"]


def test_async_function_with_a_given_cache_never_hops_on_hits(khalad):
    with khalad.open() as c, AsyncCache(c) as ac:

        @cached(ac, ttl=30)
        async def square(n):
            return n * n

        async def scenario():
            assert await square(12) == 144
            submits = ac.executor_submits
            for _ in range(50):
                assert await square(12) == 144
            return submits

        submits = asyncio.run(scenario())
        assert submits == 1 and ac.executor_submits == 1


def test_none_results_are_cached_and_exceptions_are_not(khalad):
    runs = []

    with khalad.open() as c:

        @cached(c)
        def maybe(x):
            runs.append(x)
            if x < 0:
                raise ValueError("negative")
            return None

        assert maybe(1) is None
        assert maybe(1) is None
        assert runs == [1]
        for _ in range(2):
            with pytest.raises(ValueError, match="negative"):
                maybe(-1)
        assert runs == [1, -1, -1]


def method_holder():
    class Repo:
        def __init__(self, tag):
            self.tag = tag

        @cached()
        def get(self, n):
            return f"{self.tag}:{n}"

    return Repo


def test_default_keys_are_bounded_distinct_and_leave_self_out(khalad):
    def f(a, b=2, *rest, **kw):
        return None

    assert call_key(f, (1,), {}) == call_key(f, (), {"a": 1, "b": 2})
    assert call_key(f, (1,), {}) != call_key(f, (1, 3), {})
    assert call_key(f, (1, 2, 3), {"z": 1, "y": 2}) == call_key(f, (1, 2, 3), {"y": 2, "z": 1})
    long1 = call_key(f, ("x" * 1000,), {})
    long2 = call_key(f, ("x" * 999 + "y",), {})
    assert len(long1.encode()) <= KEY_MAX and len(long2.encode()) <= KEY_MAX
    assert long1 != long2
    assert call_key(f, ("é" * 300,), {}).encode("utf-8")  # cut on a character boundary
    with pytest.raises(TypeError, match="key="):
        call_key(f, (object(),), {})
    with pytest.raises(TypeError):
        call_key(f, ({1: 2},), {})

    Repo = method_holder()
    assert Repo("a").get(1) == "a:1"
    assert Repo("b").get(1) == "a:1"  # self is not in the key: one result for every instance


def test_default_keys_are_the_same_in_every_process():
    code = (
        "from khala_cache import call_key\n"
        "def f(a, b): pass\n"
        "print(call_key(f, ('text', {'k': [1, 2.5, None, b'\\x00']}), {}))\n"
    )
    keys = set()
    for seed in ("1", "2", "random"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        )
        keys.add(out.stdout)
    assert len(keys) == 1
    assert keys.pop().startswith('fn:__main__.f:{"a":"text","b":{"k":[1,2.5,null,')
