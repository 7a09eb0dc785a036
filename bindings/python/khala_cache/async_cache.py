"""AsyncCache: the Cache for asyncio code.

How it works. An L1 hit is answered by the C base class (``_khala.AsyncCore``) before any
Python of this module runs: ``get`` returns an already-finished awaitable, so awaiting it does
not yield to the event loop and no thread is involved. Everything that may wait for khalad (an
L1 miss, a load, put, delete, touch, invalidate, warm, stats) runs the blocking ``Cache`` call
on a worker thread of this object's own ThreadPoolExecutor (``loop.run_in_executor``), so the
event loop never waits for khalad.

Why a worker thread rather than khalad's socket driven by the event loop: the C library owns
the protocol (framing, retries, reconnecting after a khalad restart), the per-thread
connections and the single-flight of get_or_load across processes (leader election, waiting,
handing the loaded value to the waiters). Driving the socket from the loop would mean a second
implementation of all of it in Python, kept in step with the C one; a worker thread reuses it
as is, at the cost of one thread hop per miss (tens of microseconds, small next to the miss
itself, which goes to khalad and often to L2 or a loader). Hits, the path that matters for
speed, never hop.

Async loaders keep single-flight: ``get_or_load(key, loader)`` runs the C ``get_or_load`` on a
worker thread; when this process leads the load, the C library calls the loader on that
thread, and if the loader returns an awaitable (an ``async def`` loader) it is run on the event
loop (``asyncio.run_coroutine_threadsafe``) while the worker thread waits for its result. A
plain function loader runs on the worker thread itself. Each miss in flight holds one worker
thread while it waits, so ``max_workers`` bounds the misses in flight at once (more queue);
concurrent misses of one key in this process share one call, so a stampede on a hot key takes
one thread, not one per coroutine.

Fork: executor threads do not survive fork, so each AsyncCache forgets its executor in the
child (os.register_at_fork) and makes a new one on the child's first miss.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable

from . import _khala

__all__ = ["AsyncCache"]

DEFAULT_MAX_WORKERS = 16
"""Worker threads of an AsyncCache by default: the misses and writes in flight at once."""

_instances: "weakref.WeakSet[AsyncCache]" = weakref.WeakSet()


class _CountingExecutor(ThreadPoolExecutor):
    """A ThreadPoolExecutor that counts the calls handed to it (see AsyncCache.executor_submits)."""

    def __init__(self, on_submit: Callable[[], None], max_workers: int, name: str) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=name)
        self._on_submit = on_submit

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self._on_submit()
        return super().submit(fn, *args, **kwargs)


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _options(**kw: Any) -> dict[str, Any]:
    """The keyword arguments that were given (None means "the library's default")."""
    return {k: v for k, v in kw.items() if v is not None}


class AsyncCache(_khala.AsyncCore):
    """A Cache for asyncio: L1 hits without a thread hop; misses and writes off the event loop.

    ``AsyncCache(cache)`` wraps an open ``Cache`` (which it does not close);
    ``AsyncCache(name, socket=..., timeout_ms=...)`` opens its own as ``Cache(name, ...)`` does
    (closed by ``close``).
    ``max_workers`` is the size of its thread pool (misses and writes in flight at once).
    The methods mirror Cache's and are coroutines, except ``get_l1`` and ``close``.
    """

    def __init__(
        self,
        cache: _khala.Cache | str | None = None,
        *,
        name: str | None = None,
        socket: str | None = None,
        timeout_ms: int = 5000,
        max_workers: int = DEFAULT_MAX_WORKERS,
    ) -> None:
        if isinstance(cache, str):  # AsyncCache("name", ...), as Cache("name", ...)
            if name is not None:
                raise TypeError("the name is given twice")
            cache, name = None, cache
        if cache is not None and (name is not None or socket is not None):
            raise TypeError("give either a Cache or name/socket, not both")
        if max_workers < 1:
            raise ValueError(f"max_workers is {max_workers}, must be at least 1")
        owns_cache = cache is None
        if cache is None:
            cache = _khala.Cache(name=name, socket=socket, timeout_ms=timeout_ms)
        super().__init__(cache)
        self._owns_cache = owns_cache
        self._max_workers = max_workers
        self._executor: _CountingExecutor | None = None
        self._executor_lock = threading.Lock()
        self._submits = 0
        self._closed = False
        # Misses in flight, per event loop: {(op, key bytes): task} (see _coalesced).
        self._in_flight: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[tuple[str, bytes], asyncio.Task[Any]]
        ] = weakref.WeakKeyDictionary()
        _instances.add(self)

    # -- the worker threads ------------------------------------------------------------------

    @property
    def executor_submits(self) -> int:
        """How many calls this object has handed to its worker threads (0 while all were hits)."""
        return self._submits

    def _count_submit(self) -> None:
        with self._executor_lock:  # loops on several threads may share this object
            self._submits += 1

    def _get_executor(self) -> _CountingExecutor:
        if self._closed:
            raise RuntimeError("this AsyncCache is closed")
        with self._executor_lock:
            if self._executor is None:
                self._executor = _CountingExecutor(
                    self._count_submit, self._max_workers, f"khala-{self.cache.name}"
                )
            executor = self._executor
        return executor

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run the blocking ``fn(*args, **kwargs)`` on a worker thread and wait for it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._get_executor(), functools.partial(fn, *args, **kwargs)
        )

    def _forget_executor(self) -> None:
        """In a fork child: the executor's threads stayed in the parent."""
        self._executor = None
        self._executor_lock = threading.Lock()
        self._in_flight = weakref.WeakKeyDictionary()  # the parent's loops' tasks

    # -- the C base's miss paths ---------------------------------------------------------------

    async def _coalesced(self, op: str, key: Any, start: Callable[[], Awaitable[Any]]) -> Any:
        """Await ``start()``, shared with every concurrent call of ``op`` on the same key.

        Misses of one key at the same time in this process make one call to the worker
        threads: the others await its result (or its exception). Each caller awaits through
        ``asyncio.shield``, so cancelling one caller cancels neither the call nor the others.
        """
        loop = asyncio.get_running_loop()
        if isinstance(key, str):
            norm: bytes = key.encode("utf-8", "surrogatepass")
        elif isinstance(key, (bytes, bytearray, memoryview)):
            norm = bytes(key)
        else:
            return await start()  # not a key: let the call raise what it raises
        calls = self._in_flight.setdefault(loop, {})
        task = calls.get((op, norm))
        if task is None:
            task = loop.create_task(start())
            calls[(op, norm)] = task
            task.add_done_callback(lambda _t: calls.pop((op, norm), None))
        return await asyncio.shield(task)

    async def _get_miss(self, key: Any, default: Any, with_meta: bool) -> Any:
        """An L1 miss of ``get``: ask khalad from a worker thread (one call per key at once)."""
        entry = await self._coalesced(
            "get", key, lambda: self._run(self.cache.get, key, None, with_meta=True)
        )
        if entry is None:
            return default
        return entry if with_meta else entry.value

    async def _get_or_load_miss(
        self, key: Any, loader: Callable[[bytes], Any], type: Any, ttl: Any, with_meta: bool
    ) -> Any:
        """An L1 miss of ``get_or_load``: the C get_or_load on a worker thread.

        When this process leads the load, ``loader(key)`` is called on that worker thread; an
        awaitable it returns is run on this event loop and its result is the loaded value.
        Concurrent misses of one key in this process share one call (the first caller's
        loader, type and TTL), as callers in other processes share the leader's.
        """
        loop = asyncio.get_running_loop()

        def call_loader(k: bytes) -> Any:
            result = loader(k)
            if inspect.isawaitable(result):
                result = asyncio.run_coroutine_threadsafe(_await(result), loop).result()
            return result

        entry = await self._coalesced(
            "load",
            key,
            lambda: self._run(
                self.cache.get_or_load,
                key,
                call_loader,
                with_meta=True,
                **_options(type=type, ttl=ttl),
            ),
        )
        if entry is None or with_meta:
            return entry
        return entry.value

    # -- the rest of Cache's API, off the event loop ---------------------------------------

    def get_l1(self, key: Any, default: Any = None, *, with_meta: bool = False) -> Any:
        """L1 only, synchronously (never blocks): as ``Cache.get_l1``."""
        return self.cache.get_l1(key, default, with_meta=with_meta)

    async def put(
        self,
        key: Any,
        value: Any,
        *,
        type: Any = None,
        ttl: float | None = None,
        expected_version: int | None = None,
        mode: str | None = None,
        links: Any = None,
    ) -> int:
        """Write ``key`` through khalad (as ``Cache.put``); returns the new version."""
        kw = _options(
            type=type, ttl=ttl, expected_version=expected_version, mode=mode, links=links
        )
        return await self._run(self.cache.put, key, value, **kw)

    async def delete(self, key: Any) -> bool:
        """Delete ``key`` from every level (as ``Cache.delete``); False when none held it."""
        return await self._run(self.cache.delete, key)

    async def touch(self, key: Any, ttl: float | None = None) -> bool:
        """Give ``key`` a new TTL (as ``Cache.touch``); False when absent."""
        return await self._run(self.cache.touch, key, ttl)

    async def invalidate(
        self, key: Any = None, *, prefix: Any = None, type: Any = None
    ) -> int:
        """Drop a key, a prefix or a type from every level (as ``Cache.invalidate``)."""
        return await self._run(self.cache.invalidate, key, **_options(prefix=prefix, type=type))

    async def warm(self, keys: Any = None, *, prefix: Any = None, type: Any = None) -> int:
        """Promote keys into L1 (as ``Cache.warm``); returns how many were warmed."""
        return await self._run(self.cache.warm, keys, **_options(prefix=prefix, type=type))

    async def stats(self) -> dict[str, Any]:
        """Hits, misses and khalad's sections (as ``Cache.stats``)."""
        return await self._run(self.cache.stats)

    # -- closing -----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once ``close`` (or ``aclose``) ran."""
        return self._closed

    def close(self) -> None:
        """Wait for the calls in flight, stop the worker threads, close the Cache if owned.

        Blocks while calls are in flight: from a coroutine, use ``await aclose()``.
        """
        if self._closed:
            return
        self._closed = True
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        if self._owns_cache:
            self.cache.close()

    async def aclose(self) -> None:
        """``close`` without blocking the event loop."""
        await asyncio.to_thread(self.close)

    async def __aenter__(self) -> "AsyncCache":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __enter__(self) -> "AsyncCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<AsyncCache {self.cache.name!r} {state}, {self._max_workers} workers>"


def _forget_executors_in_child() -> None:
    for acache in list(_instances):
        acache._forget_executor()


os.register_at_fork(after_in_child=_forget_executors_in_child)
