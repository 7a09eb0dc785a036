#!/usr/bin/python3
"""Python binding benchmarks (issue 11): khala's L1 from Python against the references.

One run measures, round by round (cases alternate so that each sees the same load on a noisy
machine), the cost of one read from Python:

  khala_get        Cache.get of a 100-byte value, an L1 hit (copy into a new bytes)
  khala_get_l1     Cache.get_l1, the same hit on the path that never asks khalad
  khala_get_64k    Cache.get of a 64 KiB value (copy)
  khala_view_64k   Cache.view of the same value (zero copy; reads its first and last byte)
  async_get        await AsyncCache.get, an L1 hit, inside a coroutine
  redis_get        redis-py GET of a 100-byte value over a local Unix socket
  dict_subscript   d[k] on a dict of the same keys (the seed's own L1 design)
  dict_get         d.get(k), a method call like Cache.get
  seed_lru_get     the seed's L1: an OrderedDict, move_to_end under a threading.Lock
  lru_cache_hit    a functools.lru_cache-wrapped function, every call a hit

and get_or_load under contention: P processes ask for one absent key at once, the loader
costs --loader-ms; reported: how many times the loader ran (single-flight: 1 per round) and
the wall time until every process had the value.

Output: one line per case, `bench=python case=<name> ops_s=... ns_op=...` (median over
rounds), a `bench=python case=get_or_load_contention ...` line and a final
`bench=python-ratios ...` line with the issue's three ratios and a few more (each the median
over rounds of the per-round ratio). Lines starting with `#` are for
people. scripts/bench-python.sh starts the private khalad and redis-server this needs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import multiprocessing
import os
import random
import statistics
import sys
import threading
import time
from typing import Callable

import khala_cache
from khala_cache import _khala

try:
    import redis
except ImportError:  # Debian: python3-redis
    redis = None


def parse_args() -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--name", default=os.environ.get("KHALA_CACHE_NAME"),
                   help="cache name (default $KHALA_CACHE_NAME)")
    p.add_argument("--socket", default=os.environ.get("KHALA_SOCKET"),
                   help="khalad's socket (default $KHALA_SOCKET)")
    p.add_argument("--redis-unix", help="redis-server's Unix socket (no redis_get case if absent)")
    p.add_argument("--keys", type=int, default=1000, help="distinct keys read (default 1000)")
    p.add_argument("--value-size", type=int, default=100, help="small values' size (default 100)")
    p.add_argument("--big-size", type=int, default=65536, help="the view case's value size")
    p.add_argument("--seconds", type=float, default=0.3, help="time per case per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds (median reported)")
    p.add_argument("--procs", type=int, default=8, help="processes of the contention case")
    p.add_argument("--loader-ms", type=float, default=20.0, help="the contended loader's cost")
    p.add_argument("--contention-rounds", type=int, default=5, help="contention rounds")
    return p.parse_args()


def timed(body: Callable[[list], None], keys: list, seconds: float) -> float:
    """Nanoseconds per key of body(keys), repeated until seconds have passed."""
    body(keys[:1000])  # warm up
    n = 0
    start = time.perf_counter_ns()
    deadline = start + int(seconds * 1e9)
    now = start
    while now < deadline:
        body(keys)
        n += len(keys)
        now = time.perf_counter_ns()
    return (now - start) / n


def make_cases(args: argparse.Namespace, cache: _khala.Cache, seq: list, big_key: bytes,
               value: bytes) -> dict[str, tuple[Callable[[list], None], list]]:
    """Each case: a loop body over a key sequence, and the sequence it runs over."""
    cases: dict[str, tuple[Callable[[list], None], list]] = {}

    def khala_get(ks: list) -> None:
        get = cache.get
        for k in ks:
            get(k)

    def khala_get_l1(ks: list) -> None:
        get = cache.get_l1
        for k in ks:
            get(k)

    def khala_view(ks: list) -> None:
        view = cache.view
        for k in ks:
            with view(k) as mv:
                mv[0]
                mv[-1]

    big_seq = [big_key] * 1000
    cases["khala_get"] = (khala_get, seq)
    cases["khala_get_l1"] = (khala_get_l1, seq)
    cases["khala_get_64k"] = (khala_get, big_seq)
    cases["khala_view_64k"] = (khala_view, big_seq)

    acache = khala_cache.AsyncCache(cache)
    loop = asyncio.new_event_loop()

    async def async_loop(ks: list) -> None:
        get = acache.get
        for k in ks:
            await get(k)

    def async_get(ks: list) -> None:
        loop.run_until_complete(async_loop(ks))

    cases["async_get"] = (async_get, seq)

    if args.redis_unix and redis is not None:
        r = redis.Redis(unix_socket_path=args.redis_unix)
        r.flushdb()
        distinct = sorted(set(seq))
        for k in distinct:
            r.set(k, value)

        def redis_get(ks: list) -> None:
            get = r.get
            for k in ks:
                get(k)

        # A round trip costs tens of microseconds: a shorter sequence keeps the case's time.
        cases["redis_get"] = (redis_get, seq[:5000])

    d = {k: value for k in set(seq)}

    def dict_subscript(ks: list) -> None:
        for k in ks:
            d[k]

    def dict_get(ks: list) -> None:
        get = d.get
        for k in ks:
            get(k)

    cases["dict_subscript"] = (dict_subscript, seq)
    cases["dict_get"] = (dict_get, seq)

    seed = SeedL1()
    for k in set(seq):
        seed.put(k, value)

    def seed_lru_get(ks: list) -> None:
        get = seed.get
        for k in ks:
            get(k)

    cases["seed_lru_get"] = (seed_lru_get, seq)

    @functools.lru_cache(maxsize=None)
    def cached_lookup(k: bytes) -> bytes:
        return value

    for k in set(seq):
        cached_lookup(k)

    def lru_cache_hit(ks: list) -> None:
        for k in ks:
            cached_lookup(k)

    cases["lru_cache_hit"] = (lru_cache_hit, seq)
    return cases


class SeedL1:
    """The seed's in-process L1: an OrderedDict in LRU order, guarded by a threading.Lock."""

    def __init__(self, max_items: int = 1_000_000) -> None:
        self._items: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._max = max_items

    def get(self, key: bytes) -> bytes | None:
        """The value, moved to the most recently used end, or None."""
        with self._lock:
            v = self._items.get(key)
            if v is not None:
                self._items.move_to_end(key)
            return v

    def put(self, key: bytes, value: bytes) -> None:
        """Insert or replace, evicting the least recently used item when full."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            if len(self._items) > self._max:
                self._items.popitem(last=False)


def contender(name: str, sock: str, key: bytes, loader_ms: float, runs, barrier, out) -> None:
    """One process of the contention case: get_or_load of key after the barrier."""
    c = _khala.Cache(name, socket=sock)

    def loader(k: bytes) -> bytes:
        with runs.get_lock():
            runs.value += 1
        time.sleep(loader_ms / 1000)
        return b"loaded:" + k

    barrier.wait()
    t0 = time.perf_counter_ns()
    v = c.get_or_load(key, loader)
    out.put((time.perf_counter_ns() - t0, v == b"loaded:" + key))
    c.close()


def contention(args: argparse.Namespace) -> dict[str, float]:
    """get_or_load of one absent key by args.procs processes at once, several rounds."""
    ctx = multiprocessing.get_context("fork")
    loader_runs, walls, lat, wrong = [], [], [], 0
    for rnd in range(args.contention_rounds):
        key = f"bench:contended:{os.getpid()}:{rnd}:{random.getrandbits(32)}".encode()
        runs = ctx.Value("i", 0)
        barrier = ctx.Barrier(args.procs + 1)
        out = ctx.Queue()
        procs = [ctx.Process(target=contender, args=(args.name, args.socket, key,
                                                      args.loader_ms, runs, barrier, out))
                 for _ in range(args.procs)]
        for p in procs:
            p.start()
        barrier.wait()
        t0 = time.perf_counter_ns()
        results = [out.get(timeout=60) for _ in procs]
        walls.append((time.perf_counter_ns() - t0) / 1e6)
        for p in procs:
            p.join()
        loader_runs.append(runs.value)
        lat += [ns / 1e6 for ns, _ in results]
        wrong += sum(1 for _, ok in results if not ok)
    return {"loader_runs": max(loader_runs), "loader_runs_total": sum(loader_runs),
            "wall_ms": statistics.median(walls), "p50_ms": statistics.median(lat),
            "max_ms": max(lat), "wrong": wrong}


def main() -> int:
    """Set up the keys, run the rounds, print the lines."""
    args = parse_args()
    if not args.name or not args.socket:
        sys.exit("bench_python: --name and --socket (or $KHALA_CACHE_NAME, $KHALA_SOCKET) "
                 "must name a running khalad; scripts/bench-python.sh starts one")
    cache = _khala.Cache(args.name, socket=args.socket)
    value = bytes(random.getrandbits(8) for _ in range(args.value_size))
    keys = [f"bench:py:{i:08d}".encode() for i in range(args.keys)]
    for k in keys:
        cache.put(k, value)
    big_key = b"bench:py:big"
    cache.put(big_key, os.urandom(args.big_size))
    # Every timed read must be an L1 hit: check before timing anything.
    for k in keys + [big_key]:
        e = cache.get(k, with_meta=True)
        if e is None or e.level != _khala.LEVEL_L1:
            sys.exit(f"bench_python: {k!r} is not an L1 hit ({e!r}): is L1 too small?")
    rng = random.Random(1)
    seq = [keys[rng.randrange(len(keys))] for _ in range(100_000)]

    cases = make_cases(args, cache, seq, big_key, value)
    print(f"# python {sys.version.split()[0]} ({sys.executable}), khala_cache "
          f"{getattr(_khala, '__version__', '?')}, {args.keys} keys of {args.value_size} "
          f"bytes, {args.rounds} rounds of {args.seconds} s per case")
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for rnd in range(args.rounds):
        for name, (body, ks) in cases.items():
            samples[name].append(timed(body, ks, args.seconds))
        print(f"# round {rnd + 1}: " + " ".join(f"{n}={s[-1]:.0f}ns" for n, s in samples.items()))
    ns = {name: statistics.median(s) for name, s in samples.items()}
    for name, v in ns.items():
        print(f"bench=python case={name} ops_s={1e9 / v:.0f} ns_op={v:.1f}")

    c = contention(args)
    print(f"bench=python case=get_or_load_contention procs={args.procs} "
          f"loader_ms={args.loader_ms:g} rounds={args.contention_rounds} "
          f"loader_runs_max={c['loader_runs']} loader_runs_total={c['loader_runs_total']} "
          f"wall_ms={c['wall_ms']:.1f} p50_ms={c['p50_ms']:.1f} max_ms={c['max_ms']:.1f} "
          f"wrong_values={c['wrong']}")

    def ratio(a: str, b: str) -> float:
        """Median over the rounds of the per-round ratio a / b (of ns per op): both cases of a
        round ran under about the same load."""
        if a not in samples or b not in samples:
            return float("nan")
        return statistics.median(x / y for x, y in zip(samples[a], samples[b]))

    print(f"bench=python-ratios khala_over_redis={ratio('redis_get', 'khala_get'):.1f} "
          f"khala_vs_dict_subscript={ratio('khala_get', 'dict_subscript'):.2f} "
          f"khala_vs_dict_get={ratio('khala_get', 'dict_get'):.2f} "
          f"khala_vs_seed_lru={ratio('khala_get', 'seed_lru_get'):.2f} "
          f"khala_vs_lru_cache={ratio('khala_get', 'lru_cache_hit'):.2f} "
          f"async_vs_sync={ratio('async_get', 'khala_get'):.2f} "
          f"view_vs_copy_64k={ratio('khala_view_64k', 'khala_get_64k'):.2f}")
    cache.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
