"""AsyncCore and ready(): an L1 hit is an already-finished awaitable; a miss goes to the
subclass's coroutines."""
from __future__ import annotations

import asyncio

import pytest

from khala_cache import _khala


class Core(_khala.AsyncCore):
    """The minimum a subclass defines: the miss paths (here, the blocking call in a thread)."""

    def __init__(self, cache):
        super().__init__(cache)
        self.misses = []

    async def _get_miss(self, key, default, with_meta):
        self.misses.append(key)
        return await asyncio.to_thread(self.cache.get, key, default, with_meta=with_meta)

    async def _get_or_load_miss(self, key, loader, type, ttl, with_meta):
        self.misses.append(key)
        return await asyncio.to_thread(self.cache.get_or_load, key, loader, type=type, ttl=ttl,
                                       with_meta=with_meta)


def test_ready_is_a_finished_awaitable():
    r = _khala.ready((1, 2))
    assert r.done() and r.result() == (1, 2)

    async def main():
        return await r, await _khala.ready(None)

    assert asyncio.run(main()) == ((1, 2), None)
    with pytest.raises(StopIteration) as ei:
        next(iter(_khala.ready(b"x").__await__()))
    assert ei.value.value == b"x"


def test_hit_is_ready_and_miss_calls_the_subclass(cache):
    cache.put(b"hit", b"H")
    core = Core(cache)
    assert core.cache is cache
    aw = core.get(b"hit")
    assert type(aw) is _khala.Ready  # no coroutine, no event loop involved
    assert aw.result() == b"H"

    async def main():
        e = await core.get(b"hit", with_meta=True)
        miss = await core.get(b"absent", b"dflt")
        loaded = await core.get_or_load(b"ld", lambda k: b"L" + k, ttl=5)
        again = core.get_or_load(b"ld", lambda k: b"never")
        assert type(again) is _khala.Ready
        return e, miss, loaded, await again

    e, miss, loaded, again = asyncio.run(main())
    assert e.level == _khala.LEVEL_L1 and e.value == b"H"
    assert miss == b"dflt" and loaded == b"Lld" and again == b"Lld"
    assert core.misses == [b"absent", b"ld"]


def test_bad_arguments_raise_at_once(cache):
    core = Core(cache)
    with pytest.raises(_khala.InvalidKey):
        core.get(b"")
    with pytest.raises(_khala.InvalidArgument):
        core.get_or_load(b"k", lambda k: b"", ttl=-1)
    with pytest.raises(TypeError):
        _khala.AsyncCore("not a cache")


def test_subclass_without_miss_methods_fails_clearly(cache):
    core = _khala.AsyncCore(cache)
    with pytest.raises(AttributeError, match="_get_miss"):
        core.get(b"absent")
