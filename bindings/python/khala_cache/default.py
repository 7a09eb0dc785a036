"""The process's shared Cache: ``default_cache()``.

A worker usually talks to one khalad, named by its environment: $KHALA_CACHE_NAME (the cache's
name, default "khala") and $KHALA_SOCKET (khalad's socket, default the library's). Opening a
Cache attaches the L1 segment and claims a reader slot, so a process should share one rather
than open one per call site: ``default_cache()`` returns that shared one, opened on first use.

It is per process: after a fork the child's first call opens a new one (the parent's object
belongs to the parent; os.register_at_fork forgets it in the child). It follows the
environment: when $KHALA_CACHE_NAME or $KHALA_SOCKET changed since it was opened, or it was
closed, the next call opens a new one.
"""

from __future__ import annotations

import os
import threading

from . import _khala

__all__ = ["default_cache"]

_lock = threading.Lock()
_cache: _khala.Cache | None = None
_opened_for: tuple[str | None, str | None] | None = None


def _environment() -> tuple[str | None, str | None]:
    return os.environ.get("KHALA_CACHE_NAME"), os.environ.get("KHALA_SOCKET")


def default_cache() -> _khala.Cache:
    """The process's shared Cache for $KHALA_CACHE_NAME / $KHALA_SOCKET, opened on first use.

    Safe from any thread. Raises what ``Cache()`` raises (e.g. InvalidName) when it cannot open.
    """
    global _cache, _opened_for
    env = _environment()
    with _lock:
        if _cache is None or _cache.closed or _opened_for != env:
            _cache = _khala.Cache()
            _opened_for = env
        return _cache


def _forget_in_child() -> None:
    global _cache, _opened_for, _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    _cache = None
    _opened_for = None


os.register_at_fork(after_in_child=_forget_in_child)
