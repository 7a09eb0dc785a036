"""CacheableItem and CacheLevel: the seed's names and values, and the extension taking them."""

import pytest

import khala_cache
from khala_cache import CacheableItem, CacheLevel

SEED_TYPES = [
    ("MEMORY_ENTITY", "memory_entity"),
    ("SEARCH_RESULT", "search_result"),
    ("EMBEDDING_VECTOR", "embedding"),
    ("ENTITY_RELATIONSHIP", "entity_relationship"),
    ("AGENT_RESPONSE", "agent_response"),
    ("VERIFICATION_RESULT", "verification"),
    ("SEARCH_INDEX", "search_index"),
    ("CONSOLIDATION_STATE", "consolidation"),
]


def test_cacheable_item_is_the_seeds_enum():
    assert [(m.name, m.value) for m in CacheableItem] == SEED_TYPES
    assert CacheableItem("embedding") is CacheableItem.EMBEDDING_VECTOR


def test_cacheable_item_ids_are_the_wire_ids():
    # The extension's TYPES tuple is the library's type names by id.
    assert tuple(m.value for m in CacheableItem) == tuple(khala_cache.TYPES)
    for i, member in enumerate(CacheableItem):
        assert member.id == i
        assert CacheableItem.from_id(i) is member
    with pytest.raises(ValueError):
        CacheableItem.from_id(len(SEED_TYPES))
    for member in CacheableItem:
        assert CacheableItem.of(member) is member
        assert CacheableItem.of(member.value) is member
        assert CacheableItem.of(member.id) is member
    with pytest.raises(ValueError):
        CacheableItem.of("memory")


def test_cache_level_numbers_are_the_librarys():
    assert [(m.name, int(m)) for m in CacheLevel] == [("L1", 1), ("L2", 2), ("L3", 3)]
    assert CacheLevel.L1 == khala_cache.LEVEL_L1
    assert CacheLevel.L2 == khala_cache.LEVEL_L2
    assert CacheLevel.L3 == khala_cache.LEVEL_L3


@pytest.mark.parametrize("member", list(CacheableItem))
def test_extension_takes_members_values_and_ids_as_type(khalad, member):
    with khalad.open() as c:
        # Every form of the type tags the item with the same id.
        for i, form in enumerate((member, member.value, member.id)):
            key = f"enum:{member.value}:{i}"
            c.put(key, b"v", type=form)
            entry = c.get(key, with_meta=True)
            assert entry is not None, key
            assert entry.type == member.id  # Entry.type is the wire id
            assert CacheableItem.of(entry.type) is member


def test_extension_invalidates_a_type_given_as_a_member(khalad):
    with khalad.open() as c:
        c.put("t:search", b"s", type=CacheableItem.SEARCH_RESULT)
        c.put("t:agent", b"a", type=CacheableItem.AGENT_RESPONSE)
        assert c.invalidate(type=CacheableItem.SEARCH_RESULT) >= 1
        assert c.get("t:search") is None
        assert c.get("t:agent") == b"a"


def test_extension_refuses_what_is_not_a_type(khalad):
    with khalad.open() as c:
        with pytest.raises((ValueError, TypeError)):
            c.put("bad-type", b"v", type="memory")
        with pytest.raises((ValueError, TypeError)):
            c.put("bad-type", b"v", type=CacheLevel.L1 + 99)
