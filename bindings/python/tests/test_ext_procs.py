"""One Cache from many threads, and from children of os.fork() and multiprocessing."""
from __future__ import annotations

import multiprocessing
import os
import threading
import time

import pytest

from khala_cache import _khala


def test_many_threads_share_one_cache(cache):
    errors = []

    def worker(t):
        try:
            for i in range(200):
                key = f"t{t}:{i % 20}"
                cache.put(key, key.encode())
                got = cache.get(key)
                assert got == key.encode(), (key, got)
                assert cache.get_or_load(f"l{t}:{i % 7}", lambda k: k) == f"l{t}:{i % 7}".encode()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []


def test_close_while_other_threads_wait_on_khalad(khalad):
    """close() during calls that released the GIL: the handle is freed when they are back."""
    import signal

    c = khalad.open(timeout_ms=1500)
    c.put(b"x", b"1")
    khalad.stop(signal.SIGSTOP)
    try:
        results = []
        ts = [threading.Thread(target=lambda: results.append(c.get(b"absent", b"d")))
              for _ in range(3)]
        for t in ts:
            t.start()
        for _ in range(2000):  # until all three wait on khalad without the GIL
            if c._in_flight == 3:
                break
            time.sleep(0.005)
        assert c._in_flight == 3
        c.close()
        with pytest.raises(ValueError):
            c.get(b"x")  # closed for new calls at once
        assert c.closed
        for t in ts:
            t.join()
        assert results == [b"d"] * 3
    finally:
        khalad.stop(signal.SIGCONT)


def test_forked_child_reads_and_writes(cache):
    cache.put(b"parent", b"P")
    assert cache.get(b"parent") == b"P"  # the parent's thread holds a slot and a connection
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ok = cache.get(b"parent") == b"P"
            cache.put(b"child", b"C")
            ok = ok and cache.get(b"child") == b"C"
            ok = ok and cache.get_or_load(b"cl", lambda k: b"L") == b"L"
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert cache.get(b"child") == b"C"
    cache.put(b"after", b"A")  # the parent's connection is intact
    assert cache.get(b"cl") == b"L"


def _mp_child(cache, key, q):
    q.put(cache.get(key))
    cache.put(key + b":child", b"from " + multiprocessing.current_process().name.encode())


def test_multiprocessing_fork_and_spawn(cache):
    cache.put(b"mp", b"shared")
    for method in ("fork", "spawn"):
        ctx = multiprocessing.get_context(method)
        q = ctx.Queue()
        p = ctx.Process(target=_mp_child, args=(cache, b"mp", q), name=method)
        p.start()
        assert q.get(timeout=60) == b"shared"
        p.join(60)
        assert p.exitcode == 0
        assert cache.get(b"mp:child") == b"from " + method.encode()


def test_cache_subclass_and_weakref(cache):
    import weakref

    class Mine(_khala.Cache):
        pass

    m = Mine(cache.name, socket=cache.socket)
    r = weakref.ref(m)
    m.put(b"sub", b"1")
    assert cache.get(b"sub") == b"1"
    del m
    assert r() is None
