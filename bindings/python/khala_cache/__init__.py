"""khala_cache: the Python binding of khala-cache.

The C extension ``khala_cache._khala`` holds ``Cache`` (L1 reads at a few hundred nanoseconds,
everything else through khalad), ``Entry``, the exceptions and the constants; this package adds
the Python layers over it:

- ``CacheableItem``, ``CacheLevel``: the seed's names for data types and levels (enums.py).
- ``AsyncCache``: asyncio, L1 hits without a thread hop (async_cache.py).
- ``cached``: a decorator for sync and async functions (decorators.py, keys.py).
- ``CacheManager``: the seed's async facade (manager.py).
- ``Codec``, ``JsonCodec``, ``MsgpackCodec``, ``PickleCodec``: objects to bytes (codecs.py).
- ``default_cache()``: the process's shared Cache (default.py).

The user guide is docs/python.md; the extension's reference is docs/python-extension.md.
"""

from __future__ import annotations

from . import _khala
from ._khala import *  # noqa: F401,F403  (Cache, Entry, KhalaError and its subclasses, ...)
from .async_cache import AsyncCache
from .codecs import Codec, CodecError, JsonCodec, MsgpackCodec, PickleCodec, register_dataclass
from .decorators import cached, default_async_cache
from .default import default_cache
from .enums import CacheableItem, CacheLevel
from .keys import call_key
from .manager import CachedValue, CacheManager

__version__ = _khala.__version__

__all__ = sorted(
    {name for name in dir(_khala) if not name.startswith("_")}
    | {
        "AsyncCache",
        "CacheableItem",
        "CachedValue",
        "CacheLevel",
        "CacheManager",
        "Codec",
        "CodecError",
        "JsonCodec",
        "MsgpackCodec",
        "PickleCodec",
        "cached",
        "call_key",
        "default_async_cache",
        "default_cache",
        "register_dataclass",
    }
)
