"""Several processes, one L1 (issue 11): what one process puts, another reads from the shared
L1; a loader runs once when 8 processes ask for the same absent key at once.

Real processes (multiprocessing, fork start method) against the private khalad of the
`khalad` fixture (conftest.py). Nothing is timed: the stampede's loader is slow (0.3 s) only
so that the 8 requests overlap it, and the assertion is on the count, not on a duration.
"""

from __future__ import annotations

import multiprocessing

import mp_workers
from khala_cache import _khala

STAMPEDE_PROCS = 8


def test_a_value_put_by_one_process_is_read_from_l1_by_another(khalad):
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        version = pool.apply(mp_workers.put_value,
                             (khalad.name, khalad.socket, b"mp:shared", b"from the writer"))
        assert version >= 1
        # Another process, which never put anything, reads it: from L1, with the writer's
        # version.
        got = pool.apply(mp_workers.read_meta, (khalad.name, khalad.socket, b"mp:shared"))
    assert got == (b"from the writer", _khala.LEVEL_L1, version)
    # And this process too (a third one).
    with khalad.open() as c:
        e = c.get(b"mp:shared", with_meta=True)
        assert (e.value, e.level, e.version) == (b"from the writer", _khala.LEVEL_L1, version)


def test_an_update_by_one_process_is_seen_by_the_others(khalad):
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        v1 = pool.apply(mp_workers.put_value, (khalad.name, khalad.socket, b"mp:upd", b"one"))
        assert pool.apply(mp_workers.read_meta, (khalad.name, khalad.socket, b"mp:upd"))[0] \
            == b"one"
        v2 = pool.apply(mp_workers.put_value, (khalad.name, khalad.socket, b"mp:upd", b"two"))
        got = pool.apply(mp_workers.read_meta, (khalad.name, khalad.socket, b"mp:upd"))
    assert v2 > v1
    assert got == (b"two", _khala.LEVEL_L1, v2)


def test_a_loader_runs_once_under_a_stampede_of_8_processes(khalad):
    ctx = multiprocessing.get_context("fork")
    runs = ctx.Value("i", 0)
    barrier = ctx.Barrier(STAMPEDE_PROCS)
    results = ctx.Queue()
    key = b"mp:stampede"
    # Processes, not a Pool: the counter and the barrier are shared by inheritance at fork.
    procs = [ctx.Process(target=mp_workers.stampede_reporting,
                         args=(khalad.name, khalad.socket, key, runs, barrier, 0.3, results))
             for _ in range(STAMPEDE_PROCS)]
    for p in procs:
        p.start()
    values = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert values == [b"loaded:" + key] * STAMPEDE_PROCS
    assert runs.value == 1, f"the loader ran {runs.value} times for {STAMPEDE_PROCS} processes"
    # The loaded value is cached: one more get_or_load does not run a loader.
    with khalad.open() as c:
        e = c.get(key, with_meta=True)
        assert e is not None and e.value == b"loaded:" + key
        assert c.get_or_load(key, lambda k: b"must not run") == b"loaded:" + key
