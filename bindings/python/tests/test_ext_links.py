"""put(..., links=[...]): relationship caching through the binding (daemon/relationships.c)."""
from __future__ import annotations

import pytest

from khala_cache import AsyncCache, _khala


def test_put_with_links_is_deleted_when_an_end_changes(cache):
    cache.put("user:E", b"e")
    cache.put("rel:E", b"[user:N]", type="entity_relationship", links=["user:E", b"user:N"])
    assert cache.get(b"rel:E") == b"[user:N]"
    cache.put(b"user:N", b"n")  # an end written: the relationship goes at every level
    assert cache.get(b"rel:E") is None
    cache.put("rel:E", b"r", links=(bytearray(b"user:E"),))
    assert cache.delete(b"user:E") is True
    assert cache.get(b"rel:E") is None


def test_put_without_links_keeps_them(cache):
    cache.put("rel:K", b"r", links=["user:K"])
    cache.put("rel:K", b"r2")  # no links given: still linked to user:K
    cache.invalidate("user:K")
    assert cache.get(b"rel:K") is None


def test_bad_links_are_refused(cache):
    with pytest.raises(TypeError):
        cache.put("rel", b"r", links=b"user:E")  # one key, not a list of keys
    with pytest.raises(TypeError):
        cache.put("rel", b"r", links=[12])
    with pytest.raises(_khala.InvalidKey):
        cache.put("rel", b"r", links=[b""])
    with pytest.raises(_khala.InvalidKey):
        cache.put("rel", b"r", links=["rel"])  # the item's own key
    with pytest.raises(ValueError):
        cache.put("rel", b"r", links=[b"k"] * 1025)
    assert cache.get(b"rel") is None  # nothing was written


def test_async_put_passes_links(khalad):
    import asyncio

    async def run():
        ac = AsyncCache(khalad.open())
        await ac.put("user:A", b"a")
        await ac.put("rel:A", b"r", links=["user:A"])
        assert await ac.get(b"rel:A") == b"r"
        await ac.put("user:A", b"a2")
        assert await ac.get(b"rel:A") is None
        ac.close()

    asyncio.run(run())
