"""The read-ahead detector (s3pool/fs/prefetch.py) against a fake listing and cache.

What reaches S3 and the disk is tested end to end in test_prefetch_e2e.py;
here the decisions: which opens count as in order, when the window starts,
how it is topped up, and that the directory memory is bounded.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from s3pool.errors import NoSuchKey
from s3pool.fs import prefetch
from s3pool.fs.prefetch import Prefetcher
from s3pool.listing.listings import Entry
from s3pool.settings import Settings

pytestmark = pytest.mark.unit


class FakeListings:
    def __init__(self, keys: dict[str, int]) -> None:
        self.keys = dict(sorted(keys.items()))
        self.queries = 0

    def iter_children(self, bucket, dir_prefix, after=None):
        self.queries += 1
        for key, size in self.keys.items():
            if not key.startswith(dir_prefix):
                continue
            rest = key[len(dir_prefix):]
            if "/" in rest or (after is not None and rest <= after[0]):
                continue
            yield Entry(rest, False, size)


class FakeCache:
    """The Cache facade's methods the read-ahead uses."""

    def __init__(self, keys: dict[str, int], **settings) -> None:
        self.listings = FakeListings(keys)
        self.settings = Settings(**settings)
        self.stopping = threading.Event()
        self.locked: set[str] = set()
        self.cached: set[str] = set()
        self.missing: set[str] = set()
        self.fetched: list[str] = []

    def dir_entries(self, bucket, dir_prefix, after=None):
        return self.listings.iter_children(bucket, dir_prefix, after)

    def is_stopping(self):
        return self.stopping.is_set()

    def is_locked(self, bucket, key):
        return key in self.locked

    def is_fresh(self, bucket, key):
        return key in self.cached

    async def fetch(self, bucket, key, source="PULL"):
        if key in self.missing:
            raise NoSuchKey(key)
        self.fetched.append(key)
        self.cached.add(key)


def files(count: int, prefix: str = "d/", size: int = 100) -> dict[str, int]:
    return {f"{prefix}f{i:02d}": size for i in range(count)}


def make(keys: dict[str, int], **settings) -> tuple[Prefetcher, FakeCache, list]:
    cache = FakeCache(keys, **settings)
    spawned: list = []
    duck: Any = cache  # the facade's methods the read-ahead uses, nothing else
    prefetcher = Prefetcher(duck, lambda fn, *args: spawned.append((fn, args)))
    return prefetcher, cache, spawned


def keys_of(spawned: list) -> list[str]:
    return [args[1] for _, args in spawned]


async def run_all(spawned: list) -> None:
    while spawned:
        fn, args = spawned.pop(0)
        await fn(*args)


def test_three_files_in_order_start_the_window():
    p, _, spawned = make(files(20), prefetch_files=4)
    p.opened("b", "d/f00")
    p.opened("b", "d/f01")
    assert spawned == []
    p.opened("b", "d/f02")
    assert keys_of(spawned) == ["d/f03", "d/f04", "d/f05", "d/f06"]
    assert p.prefetches == 4


async def test_window_is_topped_up_and_opens_inside_it_count_as_in_order():
    p, cache, spawned = make(files(20), prefetch_files=4)
    for name in ("f00", "f01", "f02"):
        p.opened("b", f"d/{name}")
    await run_all(spawned)
    assert cache.fetched == ["d/f03", "d/f04", "d/f05", "d/f06"]
    p.opened("b", "d/f05")  # skipped two files, still inside the window
    assert keys_of(spawned) == ["d/f07", "d/f08", "d/f09"]
    assert p.hits == 1
    await run_all(spawned)
    p.opened("b", "d/f06")
    assert keys_of(spawned) == ["d/f10"]
    assert p.hits == 2


def test_an_open_out_of_order_resets_the_streak():
    p, _, spawned = make(files(30), prefetch_files=4)
    for name in ("f00", "f01", "f02"):
        p.opened("b", f"d/{name}")
    spawned.clear()
    p.in_flight.clear()
    p.opened("b", "d/f20")  # a jump: no window
    p.opened("b", "d/f21")
    assert spawned == []  # one step in order is not enough again
    p.opened("b", "d/f22")
    assert keys_of(spawned) == ["d/f23", "d/f24", "d/f25", "d/f26"]


def test_random_order_fetches_nothing():
    p, _, spawned = make(files(30), prefetch_files=8)
    for i in (7, 3, 19, 0, 25, 11, 2, 28, 14, 5):
        p.opened("b", f"d/f{i:02d}")
    assert spawned == [] and p.prefetches == 0


def test_at_most_prefetch_files_in_flight_for_the_whole_daemon():
    keys = {**files(20, "x/"), **files(20, "y/")}
    p, _, spawned = make(keys, prefetch_files=3)
    for prefix in ("x/", "y/"):
        for name in ("f00", "f01", "f02"):
            p.opened("b", prefix + name)
    assert keys_of(spawned) == ["x/f03", "x/f04", "x/f05"]  # y/ waits for room


def test_large_cached_and_locked_files_are_skipped():
    keys = files(10)
    keys["d/f04"] = 10 << 20  # over the 8 MiB part size
    p, cache, spawned = make(keys, prefetch_files=4)
    cache.cached.add("d/f05")
    cache.locked.add("d/f06")
    for name in ("f00", "f01", "f02"):
        p.opened("b", f"d/{name}")
    assert keys_of(spawned) == ["d/f03"]


def test_prefetch_files_0_is_off():
    p, _, spawned = make(files(10), prefetch_files=0)
    for i in range(6):
        p.opened("b", f"d/f{i:02d}")
    assert spawned == [] and p.directories == {}


async def test_a_failed_prefetch_is_swallowed_and_not_a_hit():
    p, cache, spawned = make(files(10), prefetch_files=2)
    cache.missing.add("d/f03")
    for name in ("f00", "f01", "f02"):
        p.opened("b", f"d/{name}")
    await run_all(spawned)  # raises nothing
    assert p.in_flight == {} and list(p.fetched) == [("b", "d/f04")]
    p.opened("b", "d/f03")
    assert p.hits == 0
    p.opened("b", "d/f04")
    assert p.hits == 1


def test_directories_are_remembered_in_a_bounded_lru(monkeypatch):
    monkeypatch.setattr(prefetch, "DIRECTORIES", 4)
    keys = {f"d{i}/f{j}": 1 for i in range(6) for j in range(3)}
    p, _, spawned = make(keys, prefetch_files=2)
    p.opened("b", "d0/f0")
    p.opened("b", "d0/f1")
    for i in range(1, 6):
        p.opened("b", f"d{i}/f0")
    assert len(p.directories) == 4
    assert ("b", "d0/") not in p.directories
    p.opened("b", "d0/f2")  # forgotten: starts over, no window
    assert spawned == []


def test_shutdown_starts_no_prefetch():
    p, cache, spawned = make(files(10), prefetch_files=4)
    cache.stopping.set()
    for name in ("f00", "f01", "f02"):
        p.opened("b", f"d/{name}")
    assert spawned == []


async def test_reading_in_order_queries_the_index_once_per_batch():
    p, cache, spawned = make(files(100), prefetch_files=8)
    for i in range(100):
        p.opened("b", f"d/f{i:02d}")
        await run_all(spawned)
    assert p.prefetches == 97 and p.hits == 97
    # one query per open to learn the next file until the window starts,
    # then one per 8 files or so
    assert cache.listings.queries <= 3 + 100 // 8 + 1, cache.listings.queries
