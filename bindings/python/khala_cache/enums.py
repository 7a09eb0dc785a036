"""The seed's names for data types and cache levels.

``CacheableItem`` is the seed's enum, member for member: the same names and the same string
values. The values are also khalad's type names (include/khala/cache.h, KHALA_TYPE_LIST), so a
member, its value or its position (the wire id) can be given wherever the extension takes a
``type=``. ``CacheLevel`` numbers the levels as the library does (khala_level_t).
"""

from __future__ import annotations

import enum


class CacheableItem(enum.Enum):
    """A data type: selects khalad's TTLs, levels and write mode for an item.

    The order is the wire id (``CacheableItem.MEMORY_ENTITY`` is type 0): never reorder.
    """

    MEMORY_ENTITY = "memory_entity"
    SEARCH_RESULT = "search_result"
    EMBEDDING_VECTOR = "embedding"
    ENTITY_RELATIONSHIP = "entity_relationship"
    AGENT_RESPONSE = "agent_response"
    VERIFICATION_RESULT = "verification"
    SEARCH_INDEX = "search_index"
    CONSOLIDATION_STATE = "consolidation"

    @property
    def id(self) -> int:
        """The type's wire id (KHALA_TYPE_*): its position in the enum."""
        return _TYPE_IDS[self]

    @classmethod
    def of(cls, type: "CacheableItem | str | int") -> "CacheableItem":
        """The member for a type in any of its forms: a member, its value (the type's name) or
        its wire id (what ``Entry.type`` holds). Raises ValueError for anything else."""
        if isinstance(type, cls):
            return type
        if isinstance(type, int) and not isinstance(type, bool):
            return cls.from_id(type)
        return cls(type)

    @classmethod
    def from_id(cls, type_id: int) -> "CacheableItem":
        """The member whose wire id is ``type_id`` (what ``Entry.type`` holds)."""
        try:
            return _MEMBERS_BY_ID[type_id]
        except (IndexError, TypeError):
            last = len(_MEMBERS_BY_ID) - 1
            raise ValueError(f"{type_id!r} is not a type id (0..{last})") from None


_MEMBERS_BY_ID = tuple(CacheableItem)
_TYPE_IDS = {member: i for i, member in enumerate(_MEMBERS_BY_ID)}


class CacheLevel(enum.IntEnum):
    """A cache level, numbered as khala_level_t: L1 the shared memory, L2 and L3 behind khalad."""

    L1 = 1
    L2 = 2
    L3 = 3
