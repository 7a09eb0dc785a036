"""CacheManager: the seed's facade, ``await get(key, level)`` / ``await put(key, value, level)``.

The seed wrote its MemoryService against a manager that held three caches and moved values
between them by hand: try L1, then L2 and promote into L1, else load and put into L1 and L2.
Here the levels are one system: khalad is the only writer of L1 and writes every level a type
is configured for; an L1 miss asked of khalad is answered from L2 or L3 and promoted into L1 by
khalad itself. The manager keeps the seed's shape over that, with these meanings:

- ``get(key, level=CacheLevel.L1)`` reads L1 only: never waits, never leaves the event loop.
- ``get(key, level=L2 | L3 | None)`` reads L1 and, on a miss, asks khalad, which tries its
  lower levels (all of them: khalad cannot be asked for one level only) and promotes a hit
  into L1. ``with_meta=True`` returns a ``CachedValue`` whose ``level`` says which level
  answered.
- ``put(key, value, level=...)`` writes through khalad, which stores the value in L1 and in
  every lower level the type is configured for, in the type's write mode. ``level`` is
  accepted for the seed's shape and does not change where the value goes; the seed's second
  put (``level=L2`` right after ``level=L1``) writes the same bytes again, which is harmless.
  New code should use ``get_or_load`` instead of get-then-put (single-flight across
  processes, one round trip).
- Values are objects, encoded by the manager's codec (JsonCodec by default).

``CacheManager()`` uses the process's ``default_cache()``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

from . import _khala
from .async_cache import AsyncCache
from .codecs import Codec, JsonCodec
from .default import default_cache
from .enums import CacheableItem, CacheLevel

__all__ = ["CacheManager", "CachedValue"]


class CachedValue(NamedTuple):
    """A decoded value and where it came from (``get(..., with_meta=True)``)."""

    value: Any
    """The decoded value."""
    level: int
    """The level that answered: CacheLevel.L1/L2/L3, or LEVEL_LOADER / LEVEL_STALE."""
    version: int
    """The item's version (compare-and-set)."""
    ttl_left_ms: int
    """Milliseconds until it expires; -1 = never."""
    type: CacheableItem
    """Its data type."""


class CacheManager:
    """The seed's async cache facade over khala-cache (see the module docstring).

    ``cache``: an AsyncCache or a Cache (wrapped in an AsyncCache), None for
    ``default_cache()``. ``codec``: how values become bytes, JsonCodec() by default. ``type``
    and ``ttl``: the defaults of ``put`` and ``get_or_load``.
    """

    def __init__(
        self,
        cache: AsyncCache | _khala.Cache | None = None,
        *,
        codec: Codec | None = None,
        type: Any = CacheableItem.MEMORY_ENTITY,
        ttl: float | None = None,
    ) -> None:
        if cache is None:
            cache = default_cache()
        self._owns_async = not isinstance(cache, AsyncCache)
        self._acache = cache if isinstance(cache, AsyncCache) else AsyncCache(cache)
        self.codec: Codec = codec if codec is not None else JsonCodec()
        self.type = type
        self.ttl = ttl

    @property
    def cache(self) -> AsyncCache:
        """The AsyncCache the manager uses."""
        return self._acache

    def _decode(self, entry: Any, with_meta: bool, default: Any) -> Any:
        if entry is None:
            return default
        value = self.codec.decode(entry.value)
        if not with_meta:
            return value
        level = CacheLevel(entry.level) if entry.level in (1, 2, 3) else entry.level
        return CachedValue(value, level, entry.version, entry.ttl_left_ms,
                           CacheableItem.of(entry.type))

    async def get(
        self,
        key: str | bytes,
        level: CacheLevel | None = None,
        *,
        default: Any = None,
        with_meta: bool = False,
    ) -> Any:
        """The decoded value of ``key``, or ``default`` when no level asked holds it.

        ``level=CacheLevel.L1``: L1 only (no wait). Any other level, or None: L1, then khalad
        and its lower levels (a hit there is promoted into L1). ``with_meta=True``: a
        CachedValue (value, level, version, ttl_left_ms, type) instead of the value.
        """
        if level == CacheLevel.L1:
            entry = self._acache.get_l1(key, with_meta=True)
        else:
            entry = await self._acache.get(key, with_meta=True)
        return self._decode(entry, with_meta, default)

    async def put(
        self,
        key: str | bytes,
        value: Any,
        level: CacheLevel | None = None,
        *,
        type: Any = None,
        ttl: float | None = None,
        links: Any = None,
    ) -> int:
        """Store ``value`` (encoded) under ``key`` through khalad; returns the new version.

        khalad writes L1 and every lower level ``type`` (default: the manager's) is configured
        for; ``level`` is accepted for the seed's shape and changes nothing (module docstring).
        ``links``: keys of the end entities a relationship item is linked to (a put, delete or
        invalidation of one of them deletes it at every level).
        """
        del level  # see the docstring: every configured level is written
        return await self._acache.put(
            key,
            self.codec.encode(value),
            type=self.type if type is None else type,
            ttl=self.ttl if ttl is None else ttl,
            links=links,
        )

    async def get_or_load(
        self,
        key: str | bytes,
        loader: Callable[[], Any],
        *,
        type: Any = None,
        ttl: float | None = None,
    ) -> Any:
        """The decoded value of ``key``; on a miss everywhere, ``loader()`` (sync or async)
        runs in exactly one process and its result is cached (None: nothing is cached).
        """

        load: Callable[[bytes], Any]
        if inspect.iscoroutinefunction(loader):

            async def load(_key: bytes) -> bytes | None:  # runs on the event loop
                result = await loader()
                return None if result is None else self.codec.encode(result)

        else:

            def load(_key: bytes) -> bytes | None:  # runs on the worker thread
                result = loader()
                return None if result is None else self.codec.encode(result)

        raw = await self._acache.get_or_load(
            key,
            load,
            type=self.type if type is None else type,
            ttl=self.ttl if ttl is None else ttl,
        )
        return None if raw is None else self.codec.decode(raw)

    async def delete(self, key: str | bytes) -> bool:
        """Delete ``key`` from every level; False when none held it."""
        return await self._acache.delete(key)

    async def invalidate(
        self, key: str | bytes | None = None, *, prefix: str | bytes | None = None,
        type: Any = None
    ) -> int:
        """Drop one key, every key with ``prefix``, or every key of ``type``, everywhere."""
        return await self._acache.invalidate(key, prefix=prefix, type=type)

    async def stats(self) -> dict[str, Any]:
        """This process's hits and misses and khalad's statistics (``Cache.stats``)."""
        return await self._acache.stats()

    async def close(self) -> None:
        """Stop the manager's worker threads (the Cache it was given stays open)."""
        if self._owns_async:
            await self._acache.aclose()

    async def __aenter__(self) -> "CacheManager":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
