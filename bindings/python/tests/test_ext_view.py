"""Cache.view: a zero-copy memoryview into L1 for one with block."""
from __future__ import annotations

import os
import struct
import threading

import pytest

from khala_cache import _khala


def test_view_reads_the_value_in_place(cache):
    cache.put(b"v", b"0123456789")
    with cache.view(b"v") as mv:
        assert isinstance(mv, memoryview)
        assert mv.readonly and mv.format == "B" and mv.nbytes == 10
        assert bytes(mv) == b"0123456789"
        assert mv[3] == ord("3") and bytes(mv[2:4]) == b"23"


def test_view_of_an_absent_key_is_none(cache):
    with cache.view(b"absent") as mv:
        assert mv is None


def test_view_cannot_be_written(cache):
    cache.put(b"ro", b"abc")
    with cache.view(b"ro") as mv:
        with pytest.raises(TypeError):
            mv[0] = 1


def test_view_used_after_the_block_raises_value_error(cache):
    cache.put(b"v", b"abc")
    with cache.view(b"v") as mv:
        pass
    with pytest.raises(ValueError):
        mv[0]
    with pytest.raises(ValueError):
        bytes(mv)
    cache.close()  # nothing is left open


def test_get_put_and_other_views_inside_a_view(cache):
    cache.put(b"a", b"A" * 10000)
    cache.put(b"b", b"B")
    with cache.view(b"a") as ma:
        assert cache.get(b"b") == b"B"  # inside this thread's section
        assert cache.get(b"a") == b"A" * 10000
        assert cache.get(b"b", with_meta=True).level == _khala.LEVEL_L1
        assert cache.get(b"missing") is None
        cache.put(b"c", b"C")
        with cache.view(b"b") as mb:  # nested: shares the section
            assert bytes(mb) == b"B"
        assert bytes(ma[:3]) == b"AAA"
    with pytest.raises(ValueError):
        mb[0]
    assert cache.get(b"c") == b"C"


def test_a_view_keeps_its_value_while_the_key_changes(cache):
    cache.put(b"k", b"old")
    with cache.view(b"k") as mv:
        cache.put(b"k", b"new")  # khalad replaces the item; ours stays until the section ends
        assert bytes(mv) == b"old"
        assert cache.get(b"k") == b"new"


def test_derived_exports_alive_at_exit_raise_buffer_error(cache):
    cache.put(b"d", b"derived")
    v = cache.view(b"d")
    mv = v.__enter__()
    piece = mv[1:4]  # a slice shares the view's buffer
    with pytest.raises(BufferError, match="still alive"):
        v.__exit__(None, None, None)
    with pytest.raises(ValueError):
        mv[0]  # the block's own memoryview is released
    assert bytes(piece) == b"eri"  # the section stays open: still valid
    with pytest.raises(BufferError, match="view"):
        cache.close()  # refused while the export lives
    del piece
    cache.get(b"d")  # this thread's next use ends the lingering section
    cache.close()
    assert cache.closed


def test_memoryview_of_the_view_alive_at_exit(cache):
    cache.put(b"d", b"xyz")
    v = cache.view(b"d")
    mv = v.__enter__()
    again = memoryview(mv)
    with pytest.raises(BufferError):
        v.__exit__(None, None, None)
    assert bytes(again) == b"xyz"
    again.release()  # released on the view's thread: the section ends now
    cache.close()


def test_export_of_the_memoryview_itself_at_exit(cache):
    """A consumer holding a buffer of mv itself (as numpy.frombuffer does; here
    struct.iter_unpack) makes mv.release() fail: the exit reports it, nothing crashes."""
    cache.put(b"d", b"abc")
    v = cache.view(b"d")
    mv = v.__enter__()
    it = struct.iter_unpack("B", mv)
    with pytest.raises(BufferError):
        v.__exit__(None, None, None)
    assert [x for (x,) in it] == [97, 98, 99]  # still valid: the section stayed open
    del it
    cache.get(b"d")  # this thread's next use ends the lingering section
    cache.close()


def test_numpy_reads_a_view_in_place(cache):
    np = pytest.importorskip("numpy")
    vec = np.arange(256, dtype=np.float32)
    cache.put(b"emb", vec.tobytes(), type="embedding")
    with cache.view(b"emb") as mv:
        arr = np.frombuffer(mv, dtype=np.float32)
        assert not arr.flags.writeable
        assert float(arr @ arr) == float(vec @ vec)
        del arr  # released inside the block: a clean exit


def test_numpy_array_alive_at_exit(cache):
    np = pytest.importorskip("numpy")
    cache.put(b"n", bytes(range(8)))
    v = cache.view(b"n")
    mv = v.__enter__()
    arr = np.frombuffer(mv, dtype=np.uint8)
    with pytest.raises(BufferError, match="still alive"):
        v.__exit__(None, None, None)
    assert arr.sum() == 28  # still valid: the section stayed open
    with pytest.raises(BufferError):
        cache.close()
    del arr
    cache.get(b"n")  # the next use releases mv (now free) and ends the section
    with pytest.raises(ValueError):
        mv[0]
    cache.close()


def test_view_exited_on_another_thread_is_refused(cache):
    cache.put(b"t", b"thread")
    v = cache.view(b"t")
    mv = v.__enter__()
    errors = []

    def other():
        try:
            v.__exit__(None, None, None)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], _khala.SectionMisuse)
    assert "thread" in str(errors[0])
    assert bytes(mv) == b"thread"  # still open
    v.__exit__(None, None, None)
    with pytest.raises(ValueError):
        mv[0]


def test_views_on_many_threads(cache):
    cache.put(b"m", b"many")
    barrier = threading.Barrier(4)
    out = []

    def worker():
        with cache.view(b"m") as mv:
            barrier.wait(10)  # all four sections open at once
            out.append(bytes(mv))

    ts = [threading.Thread(target=worker) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert out == [b"many"] * 4
    cache.close()


def test_view_entered_twice_is_refused(cache):
    cache.put(b"x", b"1")
    v = cache.view(b"x")
    with v:
        with pytest.raises(RuntimeError):
            v.__enter__()


def test_child_forked_inside_a_view(cache):
    cache.put(b"f", b"forked")
    cache.put(b"g", b"other")
    with cache.view(b"f") as mv:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ok = bytes(mv) == b"forked"
                ok = ok and cache.get(b"g") == b"other"
                cache.put(b"from-child", b"1")
                code = 0 if ok else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert bytes(mv) == b"forked"
    assert cache.get(b"from-child") == b"1"
    cache.close()
