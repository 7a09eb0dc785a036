"""AsyncCache: hits without a thread hop, misses and loads off the event loop, single-flight."""

import asyncio
import multiprocessing
import os
import signal
import threading

import pytest

from khala_cache import LEVEL_L1, LEVEL_LOADER, AsyncCache, DaemonUnavailable


def run(awaitable):
    """Await ``awaitable`` in a new event loop (a hit's finished awaitable is no coroutine)."""

    async def wait():
        return await awaitable

    return asyncio.run(wait())


def test_hits_never_hop_to_a_thread(khalad):
    with khalad.open() as c, AsyncCache(c) as ac:
        c.put("hot", b"value")

        async def hits():
            got = [await ac.get("hot") for _ in range(200)]
            meta = await ac.get("hot", with_meta=True)
            loaded = await ac.get_or_load("hot", lambda k: b"never")
            return got, meta, loaded

        got, meta, loaded = run(hits())
        assert got == [b"value"] * 200
        assert meta.value == b"value" and meta.level == LEVEL_L1
        assert loaded == b"value"
        assert ac.executor_submits == 0
        assert ac.get_l1("hot") == b"value"


def test_a_miss_goes_through_a_worker_thread(khalad):
    with khalad.open() as c, AsyncCache(c) as ac:

        async def miss():
            return await ac.get("absent"), await ac.get("absent", "dflt")

        assert run(miss()) == (None, "dflt")
        assert ac.executor_submits == 2


def test_writes_and_admin_calls_go_through_khalad(khalad):
    async def scenario(ac):
        v1 = await ac.put("k", b"one", ttl=60)
        v2 = await ac.put("k", b"two", expected_version=v1)
        assert v2 > v1
        assert await ac.get("k") == b"two"
        assert await ac.touch("k", 120) is True
        assert await ac.touch("nope") is False
        assert await ac.delete("k") is True
        assert await ac.delete("k") is False
        await ac.put("p:1", b"1")
        await ac.put("p:2", b"2")
        assert await ac.invalidate(prefix="p:") == 2
        assert await ac.get("p:1") is None
        stats = await ac.stats()
        assert stats["hits"] >= 1 and stats["daemon"] is not None

    with AsyncCache(name=khalad.name, socket=khalad.socket) as ac:
        run(scenario(ac))
        assert ac.executor_submits > 0
    assert ac.closed and ac.cache.closed  # it opened the Cache, so close closed it


def test_close_leaves_a_given_cache_open(khalad):
    with khalad.open() as c:

        async def scenario():
            async with AsyncCache(c) as ac:
                await ac.put("k", b"v")
            return ac

        ac = run(scenario())
        assert ac.closed and not c.closed
        assert c.get("k") == b"v"
        with pytest.raises(RuntimeError, match="closed"):
            run(ac.put("k", b"again"))


def test_async_loader_runs_once_for_8_concurrent_coroutines(khalad):
    calls = []

    async def loader(key):
        calls.append(key)
        assert threading.current_thread() is threading.main_thread()  # on the event loop
        await asyncio.sleep(0.3)  # a window for the other seven to wait on it
        return b"loaded:" + key

    async def stampede(ac):
        return await asyncio.gather(*(ac.get_or_load("sf", loader) for _ in range(8)))

    with khalad.open() as c, AsyncCache(c) as ac:
        results = run(stampede(ac))
        assert results == [b"loaded:sf"] * 8
        assert calls == [b"sf"]
        assert c.get_l1("sf") == b"loaded:sf"
        assert ac.executor_submits == 1  # the eight shared one call, so one thread


def test_concurrent_misses_of_one_key_share_one_call_and_survive_a_cancel(khalad):
    release = None

    async def slow_loader(key):
        await release.wait()
        return b"slow"

    async def scenario(ac):
        nonlocal release
        release = asyncio.Event()
        misses = await asyncio.gather(*(ac.get("nobody", i) for i in range(5)))
        assert misses == [0, 1, 2, 3, 4]  # one call, each caller's own default
        assert ac.executor_submits == 1
        first = asyncio.ensure_future(ac.get_or_load("slow", slow_loader))
        second = asyncio.ensure_future(ac.get_or_load("slow", slow_loader, with_meta=True))
        await asyncio.sleep(0)
        first.cancel()
        release.set()
        entry = await second
        assert first.cancelled()
        assert entry.value == b"slow" and entry.level == LEVEL_LOADER
        assert ac.executor_submits == 2
        return await ac.get("slow")  # a hit now

    with khalad.open() as c, AsyncCache(c) as ac:
        assert run(scenario(ac)) == b"slow"


def test_sync_loader_runs_on_a_worker_thread_and_meta_says_loader(khalad):
    threads = []

    def loader(key):
        threads.append(threading.current_thread())
        return bytearray(b"sync")

    with khalad.open() as c, AsyncCache(c) as ac:
        entry = run(ac.get_or_load("s", loader, with_meta=True, ttl=30))
        assert entry.value == b"sync"
        assert entry.level == LEVEL_LOADER
        assert threads and threads[0] is not threading.main_thread()
        assert c.get_l1("s") == b"sync"


def test_loader_none_caches_nothing_and_errors_propagate(khalad):
    async def nothing(key):
        return None

    async def boom(key):
        raise LookupError("db down")

    with khalad.open() as c, AsyncCache(c) as ac:
        assert run(ac.get_or_load("none", nothing)) is None
        assert c.get("none") is None
        with pytest.raises(LookupError, match="db down"):
            run(ac.get_or_load("boom", boom))
        assert c.get("boom") is None


def test_the_event_loop_keeps_running_while_a_miss_waits(khalad):
    """A ticker coroutine ticks while a miss waits on a stopped khalad."""
    with khalad.open(timeout_ms=60000) as c, AsyncCache(c) as ac:
        c.put("warm", b"w")  # connects this thread; the worker thread dials its own

        async def scenario():
            ticks = 0
            miss = asyncio.ensure_future(ac.get("cold"))
            os.kill(khalad.pid, signal.SIGSTOP)
            try:
                while ticks < 20:
                    await asyncio.sleep(0.01)
                    ticks += 1
                    # A hit answers at once even now: it never leaves this thread.
                    assert await ac.get("warm") == b"w"
                # Had the miss run on the loop, it could only have ended (khalad is stopped)
                # before the first tick.
                assert not miss.done()
            finally:
                os.kill(khalad.pid, signal.SIGCONT)
            return await miss

        assert run(scenario()) is None
        assert ac.executor_submits == 1


def _child_miss_and_put(acache, queue):
    async def child():
        await acache.put("from-child", b"c")
        return await acache.get("parent-miss"), await acache.get("from-child")

    try:
        queue.put(asyncio.run(child()))
    except BaseException as e:  # report, never hang the parent
        queue.put(repr(e))


def test_a_fork_child_gets_fresh_worker_threads(khalad):
    with khalad.open() as c, AsyncCache(c, max_workers=1) as ac:
        assert run(ac.get("parent-miss")) is None  # the parent's worker thread now exists
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        child = ctx.Process(target=_child_miss_and_put, args=(ac, queue))
        child.start()
        try:
            result = queue.get(timeout=60)  # without the reset, the child's miss never runs
        finally:
            child.join(10)
            if child.is_alive():
                child.kill()
                child.join()
        assert result == (None, b"c")
        assert child.exitcode == 0
        assert run(ac.get("from-child")) == b"c"


def test_reads_work_and_writes_fail_clearly_while_khalad_is_down(khalad):
    with khalad.open() as c, AsyncCache(c) as ac:
        c.put("kept", b"k")
        khalad.stop()

        async def scenario():
            assert await ac.get("kept") == b"k"
            with pytest.raises(DaemonUnavailable):
                await ac.put("new", b"n")

        run(scenario())


def test_constructor_arguments_are_checked(khalad):
    with khalad.open() as c:
        with pytest.raises(TypeError):
            AsyncCache(c, name="x")
        with pytest.raises(ValueError):
            AsyncCache(c, max_workers=0)
        with pytest.raises(TypeError):
            AsyncCache(khalad.name, name=khalad.name)
    with AsyncCache(khalad.name, socket=khalad.socket) as ac:  # a name first, as Cache takes
        assert ac.cache.name == khalad.name
        assert run(ac.put("named", b"n")) > 0
