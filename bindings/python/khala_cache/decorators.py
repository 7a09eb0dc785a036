"""``@cached``: memoize a function's results in the shared cache, like cachetools/aiocache.

    @cached(type=CacheableItem.SEARCH_RESULT, ttl=60)
    def search(query: str, limit: int = 10) -> list[dict]: ...

    @cached(key=lambda memory_id: f"memory:{memory_id}")
    async def load_memory(memory_id: str) -> dict: ...

A call builds the key (``key(*args, **kwargs)``, or keys.call_key: the function's qualified
name and its arguments as canonical JSON, the same in every process), then asks the cache with
``get_or_load``: an L1 hit returns at once; on a miss across every level, exactly one caller
among all processes runs the function (single-flight) and the others wait for its result. The
result is stored encoded by the codec (JsonCodec by default) and every caller, the one that ran
the function included, gets it decoded from those bytes. None is a result like any other (it
is cached as ``null``). An exception from the function propagates to its caller and nothing is
cached.

A sync function uses a ``Cache`` (default: ``default_cache()``); an async one an
``AsyncCache`` (default: one shared per process around ``default_cache()``; a ``Cache`` given
is wrapped in one), so its misses never block the event loop and its hits never leave it.
``fn.cache_key(*args, **kwargs)`` is the key of a call and ``fn.cache_invalidate(*args,
**kwargs)`` deletes it from every level (a coroutine for an async function); ``fn.__wrapped__``
is the function itself.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
from typing import Any, Callable, TypeVar

from . import _khala
from .async_cache import AsyncCache
from .codecs import Codec, JsonCodec
from .default import default_cache
from .enums import CacheableItem
from .keys import CallKey

__all__ = ["cached", "default_async_cache"]

F = TypeVar("F", bound=Callable[..., Any])

_async_lock = threading.Lock()
_async_default: AsyncCache | None = None


def default_async_cache() -> AsyncCache:
    """The process's shared AsyncCache around ``default_cache()``, made on first use."""
    global _async_default
    cache = default_cache()
    with _async_lock:
        if _async_default is None or _async_default.cache is not cache or _async_default.closed:
            _async_default = AsyncCache(cache)
        return _async_default


def _forget_in_child() -> None:
    global _async_default, _async_lock
    _async_lock = threading.Lock()
    _async_default = None


os.register_at_fork(after_in_child=_forget_in_child)


def cached(
    cache: _khala.Cache | AsyncCache | None = None,
    *,
    type: Any = CacheableItem.MEMORY_ENTITY,
    ttl: float | None = None,
    key: Callable[..., str] | None = None,
    codec: Codec | None = None,
) -> Callable[[F], F]:
    """Decorate a sync or async function so that its results are cached (module docstring).

    ``cache``: a Cache or AsyncCache, or None for the process's default. ``type``: the data
    type results are cached as (a CacheableItem, its value or its id). ``ttl``: seconds, None
    for the type's default. ``key``: called with the function's arguments, returns the key
    (str or bytes); None builds one from the function's name and arguments. ``codec``: how
    results become bytes, JsonCodec() by default (never pickle unless given PickleCodec).
    """
    the_codec: Codec = codec if codec is not None else JsonCodec()

    def decorate(fn: F) -> F:
        default_key = CallKey(fn) if key is None else None

        def key_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            return key(*args, **kwargs) if default_key is None else default_key(args, kwargs)

        def decode(raw: Any) -> Any:
            return None if raw is None else the_codec.decode(raw)

        if inspect.iscoroutinefunction(fn):
            wrapped_async: AsyncCache | None = None
            wrap_lock = threading.Lock()

            def async_cache() -> AsyncCache:
                nonlocal wrapped_async
                if isinstance(cache, AsyncCache):
                    return cache
                if cache is None:
                    return default_async_cache()
                with wrap_lock:
                    if wrapped_async is None or wrapped_async.closed:
                        wrapped_async = AsyncCache(cache)
                    return wrapped_async

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async def loader(_key: bytes) -> bytes:
                    return the_codec.encode(await fn(*args, **kwargs))

                raw = await async_cache().get_or_load(
                    key_of(args, kwargs), loader, type=type, ttl=ttl
                )
                return decode(raw)

            async def cache_invalidate(*args: Any, **kwargs: Any) -> bool:
                return await async_cache().delete(key_of(args, kwargs))

            wrapper: Any = async_wrapper
        else:

            def sync_cache() -> _khala.Cache:
                if cache is None:
                    return default_cache()
                if isinstance(cache, AsyncCache):
                    return cache.cache
                return cache

            @functools.wraps(fn)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                def loader(_key: bytes) -> bytes:
                    return the_codec.encode(fn(*args, **kwargs))

                raw = sync_cache().get_or_load(key_of(args, kwargs), loader, type=type, ttl=ttl)
                return decode(raw)

            def cache_invalidate(*args: Any, **kwargs: Any) -> bool:  # type: ignore[misc]
                return sync_cache().delete(key_of(args, kwargs))

            wrapper = sync_wrapper

        cache_invalidate.__doc__ = "Delete the cached result of this call from every level."

        def cache_key(*args: Any, **kwargs: Any) -> Any:
            """The cache key of this call."""
            return key_of(args, kwargs)

        wrapper.cache_invalidate = cache_invalidate
        wrapper.cache_key = cache_key
        wrapper.cache_codec = the_codec
        return wrapper  # type: ignore[no-any-return]

    return decorate
