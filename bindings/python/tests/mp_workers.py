"""Worker functions of the multi-process tests (test_mp_*.py, test_other_uid.py).

They live in a module of their own, not in a test file, so that a child started with the
`spawn` method imports only this (and khala_cache), not a test module. Each returns plain data
(bytes, ints, tuples) that pickles back to the parent; an exception in a worker reaches the
parent as the worker's exception (multiprocessing.Pool) or as a non-zero exit code.
"""

from __future__ import annotations

import os
import time
import traceback

from khala_cache import _khala


def put_value(name: str, socket: str, key: bytes, value: bytes) -> int:
    """Open the cache, put key (through khalad, which also fills L1), return the version."""
    with _khala.Cache(name, socket=socket) as c:
        return c.put(key, value)


def read_meta(name: str, socket: str, key: bytes) -> tuple | None:
    """Open the cache and read key with its metadata: (value, level, version) or None."""
    with _khala.Cache(name, socket=socket) as c:
        e = c.get(key, with_meta=True)
        return None if e is None else (e.value, e.level, e.version)


def use_cache(cache: _khala.Cache, key: bytes, value: bytes) -> tuple:
    """With a Cache handed over by the parent (inherited at fork, or pickled for spawn): put
    key, read it back with metadata, and read the parent's key b"parent". Returns
    (pid, value read, level, parent's value, parent's level)."""
    cache.put(key, value)
    e = cache.get(key, with_meta=True)
    p = cache.get(b"parent", with_meta=True)
    return (os.getpid(), e.value, e.level, p.value if p else None, p.level if p else None)


def stampede(name: str, socket: str, key: bytes, runs, barrier, loader_seconds: float) -> bytes:
    """One of the stampede's processes: get_or_load of key right after the barrier; the loader
    counts its runs in the shared runs (a multiprocessing.Value) and takes loader_seconds."""
    with _khala.Cache(name, socket=socket) as c:

        def loader(k: bytes) -> bytes:
            with runs.get_lock():
                runs.value += 1
            time.sleep(loader_seconds)
            return b"loaded:" + bytes(k)

        barrier.wait()
        return c.get_or_load(key, loader)


def run_forked(fn, *args) -> tuple[int, str]:
    """Run fn(*args) in a child made with os.fork (the gunicorn way); return the child's exit
    status and what fn returned (its repr) or the traceback of what it raised. The child ends
    with os._exit: no test teardown of the parent runs in it."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            out = repr(fn(*args))
        except BaseException:  # anything: the parent must hear about it
            out = traceback.format_exc()
            code = 1
        try:
            os.write(w, out.encode()[:60000])
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


def use_cache_reporting(cache: _khala.Cache, key: bytes, value: bytes, results) -> None:
    """use_cache in a multiprocessing.Process: its result, or the traceback of what it raised,
    goes to the results queue (a Process's target cannot return anything)."""
    try:
        results.put(("ok", use_cache(cache, key, value)))
    except BaseException:
        results.put(("error", traceback.format_exc()))


def stampede_reporting(name: str, socket: str, key: bytes, runs, barrier, loader_seconds: float,
                       results) -> None:
    """stampede in a multiprocessing.Process: what it got (or the traceback) goes to results."""
    try:
        results.put(stampede(name, socket, key, runs, barrier, loader_seconds))
    except BaseException:
        results.put(traceback.format_exc())
