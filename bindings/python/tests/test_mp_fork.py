"""Fork safety (issue 11): a Cache used in children made by multiprocessing's fork and spawn
start methods, and by gunicorn-style pre-forking (the parent opens the Cache, then forks
workers that serve reads and writes with it), while the parent keeps using its own.

Real processes against the private khalad of the `khalad` fixture (conftest.py).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle

import pytest

import mp_workers
from khala_cache import _khala

WORKERS = 4


@pytest.fixture
def parent_cache(khalad):
    """The parent's Cache, opened before any child exists, holding b"parent"."""
    c = khalad.open()
    c.put(b"parent", b"set before the fork")
    yield c
    c.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_children_use_the_parents_cache(khalad, parent_cache, method):
    """fork: the children inherit the open Cache; spawn: it is pickled (by name, socket and
    timeout) and reopened in the child. Either way each child writes through khalad and reads
    from L1, its own key and the parent's."""
    # Process, not Pool: a Pool pickles its tasks' arguments even with fork, and the point of
    # the fork case is the Cache object inherited as it is.
    ctx = multiprocessing.get_context(method)
    queue = ctx.Queue()
    procs = [ctx.Process(target=mp_workers.use_cache_reporting,
                         args=(parent_cache, f"{method}:{i}".encode(), f"v{i}".encode(), queue))
             for i in range(WORKERS)]
    for p in procs:
        p.start()
    reports = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    errors = [r for kind, r in reports if kind != "ok"]
    assert not errors, errors[0]
    # Sorted by the key's number (the value is f"v{i}"), since children finish in any order.
    results = sorted((r for _, r in reports), key=lambda r: r[1])
    pids = {r[0] for r in results}
    assert os.getpid() not in pids
    for i, (_, value, level, parent_value, parent_level) in enumerate(results):
        assert (value, level) == (f"v{i}".encode(), _khala.LEVEL_L1)
        assert (parent_value, parent_level) == (b"set before the fork", _khala.LEVEL_L1)
    # The parent's handle still works, and sees what the children wrote, from L1.
    for i in range(WORKERS):
        e = parent_cache.get(f"{method}:{i}".encode(), with_meta=True)
        assert (e.value, e.level) == (f"v{i}".encode(), _khala.LEVEL_L1)


def test_a_cache_pickles_by_name_socket_and_timeout(khalad):
    c = _khala.Cache(khalad.name, socket=khalad.socket, timeout_ms=1234)
    c.put(b"pickled", b"yes")
    c2 = pickle.loads(pickle.dumps(c))
    assert (c2.name, c2.socket) == (c.name, c.socket)
    assert c2.get(b"pickled") == b"yes"
    c2.close()
    c.close()


def prefork_worker(cache: _khala.Cache, n: int) -> int:
    """A pre-forked worker's life: serve reads of what the parent set, write its own keys,
    read them back from L1, delete one. Returns the number of requests served."""
    served = 0
    for round_ in range(50):
        e = cache.get(b"parent", with_meta=True)
        assert (e.value, e.level) == (b"set before the fork", _khala.LEVEL_L1), e
        key = f"prefork:{n}:{round_}".encode()
        cache.put(key, b"w%d" % n)
        e = cache.get(key, with_meta=True)
        assert (e.value, e.level) == (b"w%d" % n, _khala.LEVEL_L1), e
        served += 2
    assert cache.delete(f"prefork:{n}:0".encode()) is True
    assert cache.get(f"prefork:{n}:0".encode()) is None
    return served


def test_gunicorn_style_prefork_workers_serve_reads_and_writes(khalad, parent_cache):
    # gunicorn's arbiter forks its workers with os.fork after loading the app (--preload): the
    # Cache opened at import time is inherited by every worker. Fork them all first, then reap.
    r_fds, pids = [], []
    for n in range(WORKERS):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            code = 0
            try:
                out = str(prefork_worker(parent_cache, n))
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                out, code = f"{type(e).__name__}: {e}", 1
            os.write(w, out.encode())
            os._exit(code)
        os.close(w)
        r_fds.append(r)
        pids.append(pid)
    # The parent keeps serving while its workers run.
    parent_cache.put(b"parent:after-fork", b"still works")
    outs = []
    for r, pid in zip(r_fds, pids):
        with os.fdopen(r, "rb") as f:
            out = f.read().decode()
        _, status = os.waitpid(pid, 0)
        outs.append((os.waitstatus_to_exitcode(status), out))
    assert outs == [(0, "100")] * WORKERS, outs
    assert parent_cache.get(b"parent:after-fork") == b"still works"
    for n in range(WORKERS):
        e = parent_cache.get(f"prefork:{n}:49".encode(), with_meta=True)
        assert (e.value, e.level) == (b"w%d" % n, _khala.LEVEL_L1)
        assert parent_cache.get(f"prefork:{n}:0".encode()) is None


def test_a_worker_forked_with_os_fork_opens_its_own_cache(khalad):
    # The other pre-fork style (gunicorn without --preload): the worker opens its own.
    code, out = mp_workers.run_forked(mp_workers.put_value, khalad.name, khalad.socket,
                                      b"own", b"opened in the child")
    assert code == 0, out
    with khalad.open() as c:
        e = c.get(b"own", with_meta=True)
        assert (e.value, e.level) == (b"opened in the child", _khala.LEVEL_L1)
