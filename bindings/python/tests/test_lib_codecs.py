"""Codecs: round trips, msgpack optional, pickle never a default and never run by the others."""

import asyncio
import dataclasses
import os
import pickle
import subprocess
import sys

import pytest

from khala_cache import (
    CacheManager,
    Codec,
    CodecError,
    JsonCodec,
    MsgpackCodec,
    PickleCodec,
    cached,
    register_dataclass,
)

try:
    import msgpack  # noqa: F401

    HAVE_MSGPACK = True
except ImportError:
    HAVE_MSGPACK = False

needs_msgpack = pytest.mark.skipif(not HAVE_MSGPACK, reason="python3-msgpack is not installed")

VALUES = [
    None,
    True,
    0,
    -(2**40),
    1.5,
    "",
    "héllo ✓",
    [1, "two", [3.0, None]],
    {"id": "m1", "tags": ["a", "b"], "nested": {"x": 1}},
]


@register_dataclass
@dataclasses.dataclass
class Point:
    x: int
    y: int


@register_dataclass(name="codec-test.Shape")
@dataclasses.dataclass
class Shape:
    name: str
    corners: list  # of Point
    origin: Point = dataclasses.field(default_factory=lambda: Point(0, 0))


@dataclasses.dataclass
class Unregistered:
    a: int


def structured_codecs():
    codecs = [JsonCodec()]
    if HAVE_MSGPACK:
        codecs.append(MsgpackCodec())
    return codecs


@pytest.mark.parametrize("codec", structured_codecs(), ids=repr)
@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_round_trip(codec, value):
    data = codec.encode(value)
    assert isinstance(data, bytes)
    assert codec.decode(data) == value
    assert codec.decode(bytearray(data)) == value  # any bytes-like, as the cache returns


@pytest.mark.parametrize("codec", structured_codecs(), ids=repr)
def test_registered_dataclasses_round_trip_nested(codec):
    shape = Shape("tri", [Point(0, 0), Point(1, 0), Point(0, 1)], origin=Point(5, 6))
    back = codec.decode(codec.encode(shape))
    assert back == shape
    assert type(back) is Shape and type(back.corners[1]) is Point and type(back.origin) is Point


@pytest.mark.parametrize("codec", structured_codecs(), ids=repr)
def test_unregistered_dataclass_is_refused_both_ways(codec):
    with pytest.raises(TypeError, match="Unregistered"):
        codec.encode(Unregistered(1))
    # A value naming a class nobody registered is refused, never looked up elsewhere.
    forged = JsonCodec().encode({"$type": "os.system", "$fields": {"command": "true"}})
    if isinstance(codec, MsgpackCodec):
        forged = codec.encode({"$type": "os.system", "$fields": {"command": "true"}})
    with pytest.raises(CodecError, match="not registered"):
        codec.decode(forged)


def test_per_codec_registration_stays_with_that_codec():
    own = JsonCodec(types=[Unregistered])
    assert own.decode(own.encode(Unregistered(7))) == Unregistered(7)
    with pytest.raises(TypeError):
        JsonCodec().encode(Unregistered(7))
    with pytest.raises(CodecError):
        JsonCodec().decode(own.encode(Unregistered(7)))


def test_registering_a_name_twice_or_a_non_dataclass_is_refused():
    @dataclasses.dataclass
    class Point:  # another class, the same qualified name as the registered one
        x: int

    with pytest.raises(ValueError, match="already registered"):
        register_dataclass(Point, name="Point")
    with pytest.raises(TypeError):
        JsonCodec().register(dict)


def test_a_class_defined_again_replaces_its_registration():
    # What importlib.reload does: the same module and qualified name, a new class object.
    namespace = {"dataclasses": dataclasses, "register_dataclass": register_dataclass}
    source = "@register_dataclass\n@dataclasses.dataclass\nclass Again:\n    v: int\n"
    exec(source, dict(namespace, __name__="reloaded_module"))
    second = dict(namespace, __name__="reloaded_module")
    exec(source, second)
    back = JsonCodec().decode(JsonCodec().encode(second["Again"](3)))
    assert type(back) is second["Again"]


def test_tuples_come_back_as_lists():
    codec = JsonCodec()
    assert codec.decode(codec.encode((1, (2, 3)))) == [1, [2, 3]]


def test_json_refuses_what_is_not_json():
    with pytest.raises(CodecError):
        JsonCodec().decode(b"\xff\xfe not utf-8")
    with pytest.raises(CodecError):
        JsonCodec().decode(b"{not json")
    with pytest.raises(TypeError):
        JsonCodec().encode({1, 2})


@needs_msgpack
def test_msgpack_keeps_bytes_and_refuses_garbage():
    codec = MsgpackCodec()
    assert codec.decode(codec.encode({"raw": b"\x00\xff"})) == {"raw": b"\x00\xff"}
    assert len(codec.encode(list(range(100)))) < len(JsonCodec().encode(list(range(100))))
    with pytest.raises(CodecError):
        codec.decode(b"\xc1")  # a byte msgpack never uses


def test_msgpack_missing_gives_a_clear_error():
    # A real interpreter in which msgpack cannot be imported.
    code = (
        "import sys; sys.modules['msgpack'] = None\n"
        "from khala_cache import MsgpackCodec, JsonCodec\n"
        "try:\n    MsgpackCodec()\nexcept ImportError as e:\n    print('ImportError:', e)\n"
        "print(JsonCodec().decode(JsonCodec().encode([1])))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    ).stdout
    assert "ImportError: MsgpackCodec needs the msgpack module" in out
    assert "python3-msgpack" in out
    assert out.strip().endswith("[1]")


def test_pickle_round_trips_when_chosen():
    codec = PickleCodec()
    value = {"set": {1, 2}, "tuple": (1, 2), "point": Unregistered(3)}
    assert codec.decode(codec.encode(value)) == value
    assert isinstance(codec, Codec) and isinstance(JsonCodec(), Codec)


class _RunsCode:
    """Unpickling this calls sentinel_create(path): code the bytes name runs at decode."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (_sentinel_create, (self.path,))


def _sentinel_create(path):
    with open(path, "w") as f:
        f.write("ran")
    return "ran"


def test_a_value_that_would_run_code_under_pickle_is_refused_by_the_defaults(tmp_path):
    sentinel = tmp_path / "ran"
    payload = pickle.dumps(_RunsCode(str(sentinel)))
    for codec in structured_codecs():
        with pytest.raises(CodecError):
            codec.decode(payload)
    assert not sentinel.exists()
    # The same bytes do run code under pickle: the reason it is opt-in only.
    assert PickleCodec().decode(payload) == "ran"
    assert sentinel.exists()


def test_pickle_is_never_a_default(khalad):
    with khalad.open() as c:
        manager = CacheManager(c)
        assert type(manager.codec) is JsonCodec

        @cached(c)
        def f():
            return 1

        assert type(f.cache_codec) is JsonCodec

        path = os.path.join(str(khalad.dir), "ran")
        # A pickle planted in the cache by another writer is refused by the manager's decode.
        c.put("planted", pickle.dumps(_RunsCode(path)))
        with pytest.raises(CodecError):
            asyncio.run(manager.get("planted"))
        asyncio.run(manager.close())
        assert not os.path.exists(path)
