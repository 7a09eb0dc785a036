"""CacheManager (the seed's facade) and the seed's MemoryService example."""

import asyncio
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from khala_cache import (
    AsyncCache,
    CacheableItem,
    CacheLevel,
    CacheManager,
    CachedValue,
    DaemonUnavailable,
    JsonCodec,
    MsgpackCodec,
    default_cache,
)

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "memory_service.py"


def load_example():
    """Import examples/memory_service.py (not a package) as module memory_service_example."""
    spec = importlib.util.spec_from_file_location("memory_service_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_put_then_get_at_every_level(khalad):
    async def scenario():
        async with CacheManager() as cm:  # default_cache(): the fixture's khalad
            assert cm.cache.cache is default_cache()
            version = await cm.put("m:1", {"text": "hello"}, CacheLevel.L1)
            for level in (CacheLevel.L1, CacheLevel.L2, CacheLevel.L3, None):
                assert await cm.get("m:1", level) == {"text": "hello"}
            hit = await cm.get("m:1", CacheLevel.L1, with_meta=True)
            assert isinstance(hit, CachedValue)
            assert hit.level is CacheLevel.L1 and hit.version == version
            assert hit.type is CacheableItem.MEMORY_ENTITY
            assert await cm.get("absent", CacheLevel.L2, default="d") == "d"
            assert await cm.delete("m:1") is True
            assert await cm.get("m:1") is None

    asyncio.run(scenario())


def test_l1_reads_only_l1_and_lower_levels_say_who_answered(khalad):
    # consolidation lives on l2 (and l3) only: khalad keeps it off L1.
    async def scenario():
        async with CacheManager(type=CacheableItem.CONSOLIDATION_STATE) as cm:
            await cm.put("summary", ["a", "b"], CacheLevel.L2)
            assert await cm.get("summary", CacheLevel.L1) is None
            submits = cm.cache.executor_submits
            assert await cm.get("summary", CacheLevel.L1, default=0) == 0
            assert cm.cache.executor_submits == submits  # L1 reads never hop
            hit = await cm.get("summary", CacheLevel.L2, with_meta=True)
            assert hit.value == ["a", "b"]
            assert hit.level == CacheLevel.L2
            assert hit.type is CacheableItem.CONSOLIDATION_STATE

    asyncio.run(scenario())


def test_put_type_ttl_and_codec(khalad):
    async def scenario(codec):
        with khalad.open() as c:
            cm = CacheManager(c, codec=codec)
            await cm.put("e", [0.5, 0.25], type=CacheableItem.EMBEDDING_VECTOR, ttl=30)
            hit = await cm.get("e", with_meta=True)
            assert hit.value == [0.5, 0.25] and hit.type is CacheableItem.EMBEDDING_VECTOR
            assert 0 < hit.ttl_left_ms <= 30000
            assert c.get("e") == codec.encode([0.5, 0.25])
            await cm.close()
            assert not c.closed

    codecs = [JsonCodec()]
    try:
        codecs.append(MsgpackCodec())
    except ImportError:
        pass
    for codec in codecs:
        asyncio.run(scenario(codec))


def test_get_or_load_invalidate_and_stats(khalad):
    loads = []

    async def load_async():
        loads.append("async")
        return {"n": 1}

    def load_sync():
        loads.append("sync")
        return {"n": 2}

    async def scenario():
        async with CacheManager(AsyncCache(name=khalad.name, socket=khalad.socket)) as cm:
            assert await cm.get_or_load("a", load_async) == {"n": 1}
            assert await cm.get_or_load("a", load_async) == {"n": 1}
            assert await cm.get_or_load("s", load_sync) == {"n": 2}
            assert await cm.get_or_load("none", lambda: None) is None
            assert loads == ["async", "sync"]
            await cm.put("inv:1", 1)
            await cm.put("inv:2", 2)
            assert await cm.invalidate(prefix="inv:") == 2
            assert await cm.invalidate("a") == 1
            stats = await cm.stats()
            assert stats["hits"] >= 1 and stats["misses"] >= 1

    asyncio.run(scenario())


def test_l1_reads_work_and_puts_fail_clearly_while_khalad_is_down(khalad):
    async def scenario():
        async with CacheManager() as cm:
            await cm.put("kept", "yes")
            khalad.stop()
            assert await cm.get("kept", CacheLevel.L1) == "yes"
            with pytest.raises(DaemonUnavailable) as err:
                await cm.put("new", "no")
            assert err.value.code < 0 and err.value.message

    asyncio.run(scenario())


def test_memory_service_example(khalad):
    example = load_example()

    async def scenario():
        service = example.MemoryService()
        memory = example.Memory("memory:42", "the answer", 0.99)
        service.db_client = example.InMemoryDb({"memory:42": memory})
        assert await service.get_memory("memory:42") == memory  # a miss: the database
        assert service.db_client.queries == 1
        for _ in range(3):
            got = await service.get_memory("memory:42")  # L1 serves it
            assert got == memory and type(got) is example.Memory
        assert service.db_client.queries == 1
        assert await service.get_memory("memory:none") is None
        assert service.db_client.queries == 2
        await service.cache_manager.close()

    asyncio.run(scenario())

    # Another process reads the memory from L1 as JSON, without the example's classes.
    code = (
        "import json, khala_cache\n"
        "entry = khala_cache.Cache().get_l1('memory:42', with_meta=True)\n"
        "print(entry.level, json.loads(entry.value)['$fields']['content'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    assert out.stdout.split() == ["1", "the", "answer"]


def test_memory_service_example_runs_as_a_script(khalad):
    out = subprocess.run(
        [sys.executable, str(EXAMPLE), "memory:script"],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "L1 before: empty"
    assert "from the database" in lines[1] and "from the cache" in lines[2]
    assert lines[3].startswith("L1 after: version ")
