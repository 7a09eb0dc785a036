#!/usr/bin/env python3
"""The seed's MemoryService (its section 6), running on khala-cache.

``MemoryService`` below is the seed's class as written, apart from the imports; ``Memory`` and
``InMemoryDb`` stand in for KHALA's entity and database client. As in the seed, the service's
``db_client`` is set by whoever builds it.

What happens underneath (docs/python.md, "CacheManager"): ``get(id, CacheLevel.L1)`` reads the
shared L1 only; ``get(id, CacheLevel.L2)`` asks khalad, which tries L2 and promotes a hit into
L1 itself, so the seed's "promote to L1" put rewrites what is already there; the puts after a
database load write through khalad, which stores the value in L1 and in the type's lower
levels (the second put writes the same bytes again). Every worker on the host then reads the
memory from L1. ``Memory`` round-trips through the default JsonCodec because it is registered
(``@register_dataclass``), never through pickle.

Run against a running khalad (the cache named by $KHALA_CACHE_NAME, khalad's socket by
$KHALA_SOCKET, else the defaults):

    PYTHONPATH=build/python /usr/bin/python3 bindings/python/examples/memory_service.py [ID]
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from typing import Optional

from khala_cache import CacheLevel, CacheManager, register_dataclass


@register_dataclass
@dataclasses.dataclass
class Memory:
    """A KHALA memory entity, as much of it as the example needs."""

    id: str
    content: str
    importance: float = 0.5


class InMemoryDb:
    """A stand-in for KHALA's database client: memories in a dict; counts its queries."""

    def __init__(self, memories: dict[str, Memory]) -> None:
        self.memories = dict(memories)
        self.queries = 0

    async def get_memory(self, memory_id: str) -> Optional[Memory]:
        """The memory ``memory_id``, or None; counts the query."""
        self.queries += 1
        await asyncio.sleep(0)  # a real client would await the database here
        return self.memories.get(memory_id)


# --- the seed's MemoryService, as written ---------------------------------------------------


# Example integration with memory service
class MemoryService:
    def __init__(self):
        self.cache_manager = CacheManager()

    async def get_memory(self, memory_id: str) -> Optional[Memory]:
        # Try L1 first
        memory = await self.cache_manager.get(memory_id, CacheLevel.L1)
        if memory:
            return memory

        # Try L2
        memory = await self.cache_manager.get(memory_id, CacheLevel.L2)
        if memory:
            # Promote to L1
            await self.cache_manager.put(memory_id, memory, CacheLevel.L1)
            return memory

        # Get from database and warm cache
        memory = await self.db_client.get_memory(memory_id)
        if memory:
            await self.cache_manager.put(memory_id, memory, CacheLevel.L1)
            await self.cache_manager.put(memory_id, memory, CacheLevel.L2)
        return memory


# --- running it -----------------------------------------------------------------------------


async def main(memory_id: str = "memory:example") -> int:
    """Look one memory up twice and say where each answer came from."""
    service = MemoryService()
    service.db_client = InMemoryDb({memory_id: Memory(memory_id, "the example's memory", 0.9)})
    manager = service.cache_manager
    try:
        before = await manager.get(memory_id, CacheLevel.L1, with_meta=True)
        print(f"L1 before: {'holds ' + repr(before.value) if before else 'empty'}")
        for attempt in (1, 2):
            queries = service.db_client.queries
            memory = await service.get_memory(memory_id)
            source = "the database" if service.db_client.queries > queries else "the cache"
            print(f"get_memory #{attempt}: {memory!r} from {source}")
        after = await manager.get(memory_id, CacheLevel.L1, with_meta=True)
        if after is None:
            print("L1 after: empty")
            return 1
        print(f"L1 after: version {after.version}, {after.ttl_left_ms} ms left, {after.type.name}")
    finally:
        await manager.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:2])))
