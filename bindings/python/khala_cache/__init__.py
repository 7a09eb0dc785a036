"""khala_cache: Python binding of khala-cache.

Minimal package (the extension's own): re-exports khala_cache._khala. The full package
(CacheableItem, AsyncCache, codecs, CacheManager...) replaces this file.
"""
from khala_cache._khala import *  # noqa: F401,F403
from khala_cache._khala import __version__  # noqa: F401
