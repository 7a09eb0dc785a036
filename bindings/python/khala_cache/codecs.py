"""Codecs: objects to the bytes the cache holds, and back.

The cache stores bytes. A codec turns a Python object into bytes (``encode``) and bytes read
from the cache back into an object (``decode``). Three are provided:

- ``JsonCodec`` (the default everywhere): the standard library's json, UTF-8, compact.
- ``MsgpackCodec``: smaller and faster on numbers and bytes; needs the ``msgpack`` module
  (Debian: python3-msgpack). Constructing one without it raises ImportError saying so.
- ``PickleCodec``: any picklable object. Never a default, and only for a cache no untrusted
  process can write: unpickling runs code named by the bytes, so a value read from a shared
  cache must not be unpickled unless every writer is trusted as much as the reader itself.

Dataclasses round-trip through JsonCodec and MsgpackCodec without pickle by registration:
``@register_dataclass`` on the class (every codec of the process knows it), or per codec
``JsonCodec(types=[Memory])`` / ``codec.register(Memory)``. A registered ``Memory`` instance is
encoded as ``{"$type": "Memory", "$fields": {...}}`` and that object decodes back into
``Memory(**fields)``. Only registered classes are ever constructed, by name, with their fields
as keyword arguments: bytes from the cache can name a registered class, never an arbitrary
callable. A dataclass that is not registered is refused when encoded (TypeError naming it), and
an unknown ``$type`` when decoded (CodecError). Nested dataclasses work when each is
registered. Tuples come back as lists (JSON and msgpack have one sequence type).
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from typing import Any, Iterable, Protocol, runtime_checkable

__all__ = [
    "Codec",
    "CodecError",
    "JsonCodec",
    "MsgpackCodec",
    "PickleCodec",
    "register_dataclass",
]

# The keys of an encoded dataclass. "$" keeps them apart from ordinary field names.
_TYPE_TAG = "$type"
_FIELDS_TAG = "$fields"


class CodecError(ValueError):
    """Bytes that a codec cannot decode, or a decoded value naming an unregistered type."""


@runtime_checkable
class Codec(Protocol):
    """What a codec provides: ``encode(obj) -> bytes`` and ``decode(bytes) -> obj``."""

    def encode(self, obj: Any) -> bytes:
        """The bytes to store for ``obj``."""
        ...

    def decode(self, data: bytes) -> Any:
        """The object that ``data`` (bytes read from the cache) stands for."""
        ...


def _check_dataclass(cls: type) -> None:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass")


def _add(by_name: dict[str, type], names: dict[type, str], cls: type, name: str | None) -> None:
    _check_dataclass(cls)
    name = name or cls.__qualname__
    other = by_name.get(name)
    reloaded = other is not None and (other.__module__, other.__qualname__) == (
        cls.__module__,
        cls.__qualname__,
    )  # the same class defined again (a module reloaded): the new one replaces it
    if other is not None and other is not cls and not reloaded:
        raise ValueError(f"type name {name!r} is already registered for {other!r}")
    if reloaded:
        names.pop(other, None)
    by_name[name] = cls
    names[cls] = name


# The process-wide registry (register_dataclass): every codec consults it after its own.
_global_by_name: dict[str, type] = {}
_global_names: dict[type, str] = {}


def register_dataclass(cls: type | None = None, *, name: str | None = None) -> Any:
    """Register a dataclass with every JsonCodec and MsgpackCodec of the process.

    Use as ``@register_dataclass`` or ``@register_dataclass(name="Memory")`` on the class; the
    name (default: the class's qualified name) is what the encoded value holds, so it must be
    the same in every process that reads the value. Returns the class. Raises TypeError for a
    class that is not a dataclass, ValueError for a name already taken by another class.
    """

    def register(c: type) -> type:
        _add(_global_by_name, _global_names, c, name)
        return c

    return register if cls is None else register(cls)


class _DataclassRegistry:
    """Registered dataclasses by name, and the conversions both structured codecs share."""

    def __init__(self, types: Iterable[type] = ()) -> None:
        self._by_name: dict[str, type] = {}
        self._names: dict[type, str] = {}
        for cls in types:
            self.register(cls)

    def register(self, cls: type, name: str | None = None) -> type:
        """Register dataclass ``cls`` under ``name`` (default: its qualified name).

        Returns ``cls``, so that it can be used as a class decorator.
        Raises TypeError if ``cls`` is not a dataclass, ValueError if the name is taken by
        another class.
        """
        _add(self._by_name, self._names, cls, name)
        return cls

    @property
    def registered(self) -> dict[str, type]:
        """The classes this codec decodes, by name: its own, then the process-wide ones."""
        return {**_global_by_name, **self._by_name}

    def to_tagged(self, obj: Any) -> dict[str, Any]:
        """A registered dataclass instance as its tagged dict (one level: fields stay objects)."""
        cls = type(obj)
        name = self._names.get(cls) or _global_names.get(cls)
        if name is None:
            if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
                raise TypeError(
                    f"dataclass {cls.__qualname__} is not registered with this codec "
                    f"(@register_dataclass, or codec.register({cls.__qualname__}))"
                )
            raise TypeError(f"object of type {cls.__qualname__} cannot be encoded")
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}
        return {_TYPE_TAG: name, _FIELDS_TAG: fields}

    def from_tagged(self, d: dict[Any, Any]) -> Any:
        """The object a decoded mapping stands for: a registered dataclass, or ``d`` itself."""
        if len(d) != 2 or _TYPE_TAG not in d or _FIELDS_TAG not in d:
            return d
        name, fields = d[_TYPE_TAG], d[_FIELDS_TAG]
        cls = None
        if isinstance(name, str):
            cls = self._by_name.get(name) or _global_by_name.get(name)
        if cls is None:
            raise CodecError(f"the value names type {name!r}, which is not registered")
        if not isinstance(fields, dict):
            raise CodecError(f"the fields of a {name} are not a mapping")
        try:
            return cls(**fields)
        except TypeError as e:
            raise CodecError(f"cannot build a {name} from the cached fields: {e}") from e


class JsonCodec(_DataclassRegistry):
    """JSON (standard library), UTF-8; the default codec.

    Encodes what ``json`` encodes (dict with str keys, list, tuple as list, str, int, float,
    bool, None) and registered dataclasses. Decoding never runs code other than the
    constructors of registered dataclasses.
    """

    def __init__(self, types: Iterable[type] = ()) -> None:
        """A JSON codec; ``types`` are dataclasses to register (see ``register``)."""
        super().__init__(types)
        # Made once: json.dumps/loads with options build a new encoder/decoder on every call.
        self._encoder = json.JSONEncoder(
            default=self.to_tagged, separators=(",", ":"), ensure_ascii=False
        )
        self._decoder = json.JSONDecoder(object_hook=self.from_tagged)

    def encode(self, obj: Any) -> bytes:
        """``obj`` as compact UTF-8 JSON. Raises TypeError for what JSON cannot hold."""
        return self._encoder.encode(obj).encode("utf-8")

    def decode(self, data: bytes) -> Any:
        """The object ``data`` holds. Raises CodecError if ``data`` is not UTF-8 JSON."""
        try:
            text = str(data, "utf-8")
            return self._decoder.decode(text)
        except CodecError:
            raise
        except (UnicodeDecodeError, ValueError) as e:
            raise CodecError(f"not a JSON value: {e}") from e

    def __repr__(self) -> str:
        return f"JsonCodec(types={list(self._by_name.values())!r})"


def _import_msgpack() -> Any:
    try:
        import msgpack  # type: ignore[import-not-found]
    except ImportError as e:
        raise ImportError(
            "MsgpackCodec needs the msgpack module, which this interpreter cannot import "
            "(Debian: apt-get install python3-msgpack); JsonCodec needs nothing"
        ) from e
    return msgpack


class MsgpackCodec(_DataclassRegistry):
    """msgpack (the ``msgpack`` module, when importable): compact, keeps bytes as bytes.

    Constructing one raises ImportError when ``msgpack`` cannot be imported. Registered
    dataclasses are encoded as with JsonCodec. Decoding never runs code other than the
    constructors of registered dataclasses (no ext types are decoded).
    """

    def __init__(self, types: Iterable[type] = ()) -> None:
        """A msgpack codec; ``types`` are dataclasses to register (see ``register``)."""
        self._msgpack = _import_msgpack()
        super().__init__(types)

    def encode(self, obj: Any) -> bytes:
        """``obj`` as msgpack. Raises TypeError for what msgpack cannot hold."""
        return self._msgpack.packb(obj, default=self.to_tagged, use_bin_type=True)

    def decode(self, data: bytes) -> Any:
        """The object ``data`` holds. Raises CodecError if ``data`` is not one msgpack value."""
        try:
            return self._msgpack.unpackb(
                bytes(data), raw=False, object_hook=self.from_tagged, strict_map_key=False
            )
        except CodecError:
            raise
        except Exception as e:  # msgpack raises several unrelated types for bad input
            raise CodecError(f"not a msgpack value: {e}") from e

    def __repr__(self) -> str:
        return f"MsgpackCodec(types={list(self._by_name.values())!r})"


class PickleCodec:
    """pickle: any picklable object. Explicit opt-in only; never a default.

    Unpickling runs code: the bytes name callables (``__reduce__``) that ``decode`` calls. A
    value read from a shared cache comes from whichever process wrote it, so with this codec
    any process that can write to the cache (or to its L2: Redis, the disk store) can run code
    in every reader. Use it only when all writers are trusted as much as the reader, and
    prefer JsonCodec or MsgpackCodec with registered dataclasses.
    """

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        """A pickle codec writing pickle protocol ``protocol``."""
        self.protocol = protocol

    def encode(self, obj: Any) -> bytes:
        """``obj`` pickled."""
        return pickle.dumps(obj, protocol=self.protocol)

    def decode(self, data: bytes) -> Any:
        """``data`` unpickled: runs whatever code the bytes name (see the class docstring)."""
        return pickle.loads(data)

    def __repr__(self) -> str:
        return f"PickleCodec(protocol={self.protocol})"
