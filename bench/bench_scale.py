"""Scale benchmark: eviction over 100,000 cached objects, memory with a
1,000,000-key listing, PULL misses with up to 1,000,000 keys in the
freshness memory, cached PULLs while the access index is written, the
GLOB matcher over 100,000 keys.

    python bench/bench_scale.py [--objects 100000] [--keys 1000000] [--glob-keys 100000]
        [--only evict|memory|fresh|flush|glob]

Eviction: a cache of N small objects (files and meta made directly in
data/, access order recorded through s3pool's own access index) is brought
from 95 % to 75 % of its cap by the evictor, timed in process. Beside it,
the original's method on the same tree in the same run: one
`find data -type f -printf '%A+ %p\\n' | sort | head` per ten files
deleted (it is run a few times and the per-run time multiplied by the
number of runs the same eviction needs).

Memory: the real daemon REFRESHes a bucket of M keys from an S3 listing
endpoint on loopback (a minimal ListObjectsV2 server in this script: real
HTTP, real botocore parsing, pages of 1,000), then answers a GLOB and a
FUSE readdir on it; its peak RSS (VmHWM) is compared to the size of the
__list__ file it wrote.

GLOB matcher: the keys of bench_control.py's GLOB table, held in memory and
sorted as the index holds them; each pattern is matched over the keys under
its literal prefixes (what the index range query hands the matcher) by the
linear matcher GLOB uses now ("auto": `re` for patterns with one wildcard,
else the NFA), by the NFA alone, and by the backtracking regex GLOB used
before. Then one hostile key against patterns that make the regex backtrack.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse
from xml.sax.saxutils import escape

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import trio  # noqa: E402

from common import Daemon, free_port, print_table, workdir  # noqa: E402
from s3pool.cache import Cache  # noqa: E402
from s3pool.listing.globpattern import compile_glob, expand_braces, regex_source, tokenize  # noqa: E402
from s3pool.s3.answers import ObjectResponse  # noqa: E402
from s3pool.settings import Settings  # noqa: E402
from s3pool.store.evictor import Evictor, Usage  # noqa: E402
from s3pool.store.layout import Layout  # noqa: E402
from s3pool.store.objects import Store  # noqa: E402

OBJECT_SIZE = 1024


def bench_eviction(objects: int) -> str:
    work = workdir("s3pool-bench-evict-")
    layout = Layout.create(str(work / "home"))
    store = Store(layout)
    access = store.access
    print(f"making {objects:,} cached objects in {layout.data_dir} ...", flush=True)
    now = time.time()
    order = list(range(objects))
    random.Random(1).shuffle(order)
    body = b"x" * OBJECT_SIZE
    for i in range(objects):
        key = f"d{i % 100:02d}/e{(i // 100) % 100:02d}/obj{i:07d}"
        path = Path(layout.object_path("bkt", key))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        (path.parent / (path.name + "__meta__")).write_text(
            json.dumps({"ContentLength": OBJECT_SIZE, "ETag": '"e"'}))
        atime = now - 86400 + order[i]
        os.utime(path, (atime, atime))  # the original reads %A, the access time
        access.record("bkt", key, OBJECT_SIZE, when=atime)
    access.flush_blocking()
    total = objects * OBJECT_SIZE
    cap = int(total / 0.95)  # the cache stands at 95 % of its cap
    settings = Settings(max_cache_size=cap, high_water=90, low_water=75)
    evictor = Evictor(store, settings, grace=0)
    # a disk as full as the cache: the bench stands in for the statvfs figures
    evictor.usage = lambda: Usage(1 << 50, 0, store.cache_bytes)  # type: ignore[method-assign]
    oldest_before = {k for _, k, _, _ in trio.run(access.oldest, 10)}

    # the original's method, on the same tree before anything is evicted
    runs = 3
    find_cmd = (f"find {layout.data_dir} -type f -printf '%A+ %p\\n' | sort | head -10")
    started = time.perf_counter()
    for _ in range(runs):
        subprocess.run(find_cmd, shell=True, stdout=subprocess.DEVNULL, check=True)
    find_once = (time.perf_counter() - started) / runs

    started = time.perf_counter()
    chosen = trio.run(access.oldest, int(objects * 0.2))
    choose = time.perf_counter() - started
    assert len(chosen) == int(objects * 0.2)
    started = time.perf_counter()
    freed = trio.run(evictor.evict)
    ours = time.perf_counter() - started
    evicted = evictor.evictions
    assert all(not os.path.exists(layout.object_path("bkt", k)) for k in oldest_before)
    assert access.total_bytes <= cap * 0.75
    original = find_once * (evicted / 10)
    access.close()
    return print_table(
        f"Evicting from 95 % to 75 % of the cap, {objects:,} cached objects of 1 KiB",
        ["method", "seconds", "objects evicted", "original / ours"],
        [["s3pool evictor (access index, batches, meta then data)", f"{ours:.2f}", evicted,
          f"{original / ours:.0f}"],
         ["s3pool: choosing the victims alone (one ordered index read)", f"{choose:.3f}",
          len(chosen), "-"],
         ["original: find \\| sort \\| head per 10 deletions, one run", f"{find_once:.2f}",
          10, "-"],
         [f"original: the {evicted // 10:,} runs the same eviction needs (extrapolated)",
          f"{original:.0f}", evicted, "1"]]) + f"\n(freed {freed:,} bytes; work dir {work})\n"


class ListingHandler(BaseHTTPRequestHandler):
    """ListObjectsV2 over a synthetic, sorted key space (read-only, loopback)."""

    keys_total = 0

    def log_message(self, *args) -> None:
        pass

    @staticmethod
    def key(i: int) -> str:
        return f"data/{i // 10000:03d}/{(i // 100) % 100:02d}/object-{i:07d}.parquet"

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query)
        start = int(query.get("continuation-token", ["0"])[0])
        page = int(query.get("max-keys", ["1000"])[0])
        end = min(self.keys_total, start + page)
        parts = ['<?xml version="1.0" encoding="UTF-8"?>',
                 '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
                 f"<Name>million</Name><KeyCount>{end - start}</KeyCount>",
                 f"<MaxKeys>{page}</MaxKeys>",
                 f"<IsTruncated>{'true' if end < self.keys_total else 'false'}</IsTruncated>"]
        if end < self.keys_total:
            parts.append(f"<NextContinuationToken>{end}</NextContinuationToken>")
        for i in range(start, end):
            parts.append(f"<Contents><Key>{escape(self.key(i))}</Key>"
                         "<LastModified>2026-11-01T00:00:00.000Z</LastModified>"
                         f'<ETag>"{i:032x}"</ETag><Size>{i % 100000}</Size>'
                         "<StorageClass>STANDARD</StorageClass></Contents>")
        parts.append("</ListBucketResult>")
        data = "".join(parts).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def bench_memory(keys: int) -> str:
    work = workdir("s3pool-bench-memory-")
    ListingHandler.keys_total = keys
    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), ListingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    mnt = work / "mnt"
    daemon = Daemon(f"http://127.0.0.1:{port}", work / "home", mnt)
    try:
        idle = daemon.peak_rss()
        started = time.perf_counter()
        status, _ = daemon.request("REFRESH", "million")
        refresh_s = time.perf_counter() - started
        assert status == "OK"
        after_refresh = daemon.peak_rss()
        list_size = (work / "home" / "data" / "million" / "__list__").stat().st_size
        index_size = (work / "home" / "state" / "listings" / "million" / "index.db").stat().st_size
        started = time.perf_counter()
        middle = f"{keys // 2 // 10000:03d}"
        status, matches = daemon.request("GLOB", "million",
                                         f"data/{middle[:2]}?/*/object-*.parquet")
        glob_s = time.perf_counter() - started
        assert status == "OK", matches
        started = time.perf_counter()
        names = os.listdir(mnt / "million" / "data" / middle / "07")
        readdir_s = time.perf_counter() - started
        top = os.listdir(mnt / "million" / "data")
        after_queries = daemon.peak_rss()
    finally:
        daemon.stop()
        server.shutdown()
    mib = 1 << 20
    return print_table(
        f"Daemon memory with a {keys:,}-key listing (__list__ {list_size / mib:.1f} MiB, "
        f"index.db {index_size / mib:.1f} MiB)",
        ["moment", "peak RSS MiB", "peak RSS / __list__ size", "took"],
        [["started, nothing listed", f"{idle / mib:.0f}", f"{idle / list_size:.2f}", "-"],
         [f"after REFRESH of {keys:,} keys", f"{after_refresh / mib:.0f}",
          f"{after_refresh / list_size:.2f}", f"{refresh_s:.1f} s"],
         [f"after a GLOB ({len(matches):,} matches), readdir of {len(names)} and of "
          f"{len(top)} entries", f"{after_queries / mib:.0f}",
          f"{after_queries / list_size:.2f}",
          f"{glob_s * 1000:.0f} ms / {readdir_s * 1000:.0f} ms"]])


class MemoryBackend:
    """Objects served from memory with the calls the cache makes: a miss then
    costs s3pool's own work (freshness, locks, temp file, fsync, install)."""

    def __init__(self, size: int) -> None:
        self.body = b"m" * size
        self.meta = {"LastModified": "Wed, 25 Nov 2026 00:00:00 GMT", "ETag": '"e"',
                     "ContentLength": size, "ContentType": "binary/octet-stream",
                     "Metadata": {}, "AcceptRanges": "bytes"}

    async def get_object(self, bucket, key, if_none_match=None):
        import io
        return ObjectResponse(dict(self.meta), io.BytesIO(self.body))

    async def read_body_at(self, response, fd, offset, limit, bucket, key, transfer=None,
                           digest=None):
        data = response.body.read(limit)
        return os.pwrite(fd, data, offset)

    def resize(self, n: int) -> None:
        pass


def old_mark_fresh(checked: dict, key, now: float, horizon: float) -> dict:
    """The freshness bookkeeping before the store (the baseline)."""
    checked[key] = now
    if len(checked) > 100_000:
        checked = {k: t for k, t in checked.items() if t >= horizon}
    return checked


def bench_freshness(sizes: list[int], misses: int, rounds: int = 5) -> str:
    """PULL-miss cost with N keys already in the freshness memory.

    The sizes are measured in turns (rounds), so the machine's noise (fsync
    above all) falls on each alike; the median round is shown."""
    caches = []
    for known in sizes:
        store = Store(Layout.create(str(workdir("s3pool-bench-fresh-") / "home")))
        backend: Any = MemoryBackend(1024)  # Backend's methods Cache calls, in memory
        caches.append((known, store, Cache(store, backend, Settings(freshness_window=3600))))
    per_miss: dict[int, list[float]] = {known: [] for known in sizes}
    old_cost: dict[int, float] = {}

    async def run() -> None:
        now = trio.current_time()
        for known, _, cache in caches:  # checked within the window: none expires
            for i in range(known):
                cache.freshness.checked[("bkt", f"known{i}")] = now
        for rnd in range(rounds):
            for known, _, cache in caches:
                started = time.perf_counter()
                for i in range(misses):
                    await cache.pull("bkt", f"miss{rnd}-{i}")
                per_miss[known].append((time.perf_counter() - started) / misses)
        for known in sizes:  # the old bookkeeping alone, on a dict of the same size
            old = {("bkt", f"known{i}"): now for i in range(known)}
            count = max(3, min(misses, 3_000_000 // max(known, 1)))
            started = time.perf_counter()
            for i in range(count):
                old = old_mark_fresh(old, ("bkt", f"old{i}"), now, now - 3600)
            old_cost[known] = (time.perf_counter() - started) / count

    trio.run(run)
    for _, store, _ in caches:
        store.access.close()
    medians = {k: sorted(v)[len(v) // 2] for k, v in per_miss.items()}
    base = medians[sizes[0]]
    rows = [[f"{known:,}", f"{medians[known] * 1e6:.0f}", f"{medians[known] / base:.2f}",
             f"{old_cost[known] * 1e6:.0f}"] for known in sizes]
    return print_table(
        f"PULL miss (1 KiB, in-memory S3, fsync on) with N keys in the freshness memory, "
        f"median of {rounds} rounds of {misses} misses",
        ["keys checked", "us per miss", "ratio to the first row",
         "old freshness bookkeeping alone, us per miss"], rows)


def bench_flush_p99(pending: int, hits: int) -> str:
    """Cached-PULL latency while the access index writes a big batch."""
    work = workdir("s3pool-bench-flush-")
    store = Store(Layout.create(str(work / "home")))
    backend: Any = MemoryBackend(1024)  # Backend's methods Cache calls, in memory
    cache = Cache(store, backend, Settings(freshness_window=3600))

    async def run() -> list[list[str]]:
        await cache.pull("bkt", "hot")
        results = []
        for label in ("no flush", "flush in a worker thread (now)",
                      "flush on the trio thread (before)"):
            for i in range(pending):
                store.access.record("bkt", f"cold{i}", 1024)
            times = []
            async with trio.open_nursery() as nursery:
                if label.startswith("flush in"):
                    nursery.start_soon(store.access.flush)
                for i in range(hits):
                    started = time.perf_counter()
                    if label.startswith("flush on") and i == hits // 4:
                        store.access.flush_blocking()  # what record() did at 5,000 rows
                    await cache.pull("bkt", "hot")
                    times.append(time.perf_counter() - started)
                    await trio.sleep(0)
            await store.access.flush()
            times.sort()
            results.append([label, f"{times[len(times) // 2] * 1e6:.0f}",
                            f"{times[int(len(times) * 0.99)] * 1e6:.0f}",
                            f"{times[-1] * 1e3:.1f}"])
        return results

    rows = trio.run(run)
    store.access.close()
    return print_table(
        f"Cached PULL (in process) while {pending:,} access rows are written, {hits:,} PULLs",
        ["case", "p50 us", "p99 us", "max ms"], rows)


def _old_regex_glob(pattern: str) -> list[tuple[str, re.Pattern[str]]]:
    """GLOB before the linear matcher: one backtracking regex per alternative."""
    return [(prefix, re.compile(regex_source(tokens), re.DOTALL))
            for prefix, tokens in (tokenize(a) for a in dict.fromkeys(expand_braces(pattern)))]


def _under(keys: list[str], prefix: str) -> list[str]:
    return keys[bisect.bisect_left(keys, prefix):bisect.bisect_left(keys, prefix + chr(0x10FFFF))]


def _best_ms(fn, runs: int = 7) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2] * 1000


def _interleaved_ms(fns, runs: int = 15) -> list[float]:
    """p50 of each, run in turn so that a noisy neighbour hits all alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, spent in zip(fns, times, strict=True):
            started = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - started)
    return [sorted(spent)[runs // 2] * 1000 for spent in times]


def bench_glob_matcher(count: int) -> str:
    from bench_control import glob_keys

    keys = glob_keys(count)
    rows = []
    for pattern in ["logs/2026/11/07/host07/*", "logs/2026/11/0[1-3]/host1?/*.json",
                    "**/*.json", "logs/**/part-0000??.csv.gz", "logs/*/*/*/host0?/*.json",
                    "{logs/2026/11/01/*/*.json,logs/**/part-00001?.*}",
                    # the NFA's everyday cost: patterns re could backtrack on
                    "logs/**/host0?/*.json", "logs/2026/11/*/host*/*-0000*"]:
        found: dict[str, list[str]] = {}

        def run(engine: str) -> None:
            compiled = compile_glob(pattern, engine=engine)
            found[engine] = [k for prefix in compiled.prefixes
                             for test in [compiled.matcher_under(prefix)]
                             for k in _under(keys, prefix) if test(k)]

        def run_old() -> None:
            out: set[str] = set()
            for prefix, regex in _old_regex_glob(pattern):
                out.update(k for k in _under(keys, prefix) if regex.fullmatch(k))
            found["old"] = sorted(out)

        auto_ms, nfa_ms, old_ms = _interleaved_ms([lambda: run("auto"), lambda: run("nfa"),
                                                    run_old])
        assert found["auto"] == found["nfa"] == found["old"], pattern
        rows.append([f"`{pattern}`", compile_glob(pattern).engine,
                     len(_under(keys, compile_glob(pattern).prefixes[0])), len(found["old"]),
                     f"{auto_ms:.1f}", f"{nfa_ms:.1f}", f"{old_ms:.1f}",
                     f"{auto_ms / old_ms:.2f}"])
    hostile_key = "a" * 60
    for stars in (5, 6):
        pattern = "*a" * stars + "b"
        compiled = compile_glob(pattern)
        old = _old_regex_glob(pattern)[0][1]
        new_ms = _best_ms(lambda: compiled.match(hostile_key), 3)
        old_ms = _best_ms(lambda: old.fullmatch(hostile_key), 3)
        rows.append([f"hostile: `{pattern}` on one key of 60 `a`", compiled.engine, 1, 0,
                     f"{new_ms:.3f}", f"{new_ms:.3f}", f"{old_ms:.1f}",
                     f"{new_ms / old_ms:.5f}"])
    return print_table(
        f"GLOB matcher over a {len(keys):,}-key listing (in process, p50 of 15; the keys under "
        "the literal prefixes only, as the index range query yields them)",
        ["pattern", "engine chosen", "keys read", "matches", "now ms", "NFA only ms",
         "old regex ms", "now / old"], rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--glob-keys", type=int, default=100_000)
    parser.add_argument("--only", choices=("evict", "memory", "fresh", "flush", "glob"))
    args = parser.parse_args()
    out = []
    if args.only in (None, "fresh"):
        out.append(bench_freshness([1_000, 100_000, 1_000_000], 100))
    if args.only in (None, "flush"):
        out.append(bench_flush_p99(50_000, 2_000))
    if args.only in (None, "evict"):
        out.append(bench_eviction(args.objects))
    if args.only in (None, "memory"):
        out.append(bench_memory(args.keys))
    if args.only in (None, "glob"):
        out.append(bench_glob_matcher(args.glob_keys))
    Path(workdir("s3pool-bench-scale-", keep=True) / "tables.md").write_text("\n".join(out))


if __name__ == "__main__":
    main()
