"""Unit tests of bucket listings: one listing at a time, atomic replacement,
pushed keys kept across a refresh (fake backends, real files)."""

import pytest
import trio

from s3pool.store.layout import Layout

pytestmark = pytest.mark.unit


async def test_listings_never_run_two_listings_of_one_bucket_at_once(tmp_path):
    import threading
    import time as time_module

    from s3pool.listing.listings import Listings
    from s3pool.s3.answers import ListEntry

    class SlowBackend:
        limiter = trio.CapacityLimiter(10)
        running = 0
        most = 0
        calls = 0
        lock = threading.Lock()

        def iter_listing(self, bucket):
            with self.lock:
                SlowBackend.running += 1
                SlowBackend.calls += 1
                SlowBackend.most = max(SlowBackend.most, SlowBackend.running)
            try:
                time_module.sleep(0.2)
                yield [ListEntry("k", 1, 0.0, '"e"')]
            finally:
                with self.lock:
                    SlowBackend.running -= 1

    listings = Listings(Layout.create(str(tmp_path)), SlowBackend())
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(listings.refresh, "bkt")
    assert SlowBackend.most == 1
    # the four that waited behind the first all asked before it finished: at
    # most one more listing serves them all
    assert SlowBackend.calls <= 2


async def test_glob_during_a_refresh_sees_the_old_listing_whole(tmp_path):
    import threading

    from s3pool.listing.build import write_listing
    from s3pool.listing.listings import Listings
    from s3pool.s3.answers import ListEntry

    layout = Layout.create(str(tmp_path))
    write_listing(layout, "bkt", [[ListEntry(f"old/{i:04d}", 1, 0.0, "") for i in range(2000)]])
    halfway = threading.Event()
    release = threading.Event()

    class PagedBackend:
        limiter = trio.CapacityLimiter(10)

        def iter_listing(self, bucket):
            yield [ListEntry(f"new/{i:04d}", 1, 0.0, "") for i in range(1000)]
            halfway.set()
            release.wait(10)
            yield [ListEntry(f"new/{i:04d}", 1, 0.0, "") for i in range(1000, 2000)]

    listings = Listings(layout, PagedBackend())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listings.refresh, "bkt")
        await trio.to_thread.run_sync(halfway.wait)
        during = await listings.glob("bkt", "**")
        release.set()
    after = await listings.glob("bkt", "**")
    assert during == [f"old/{i:04d}" for i in range(2000)]
    assert after == [f"new/{i:04d}" for i in range(2000)]


async def test_a_push_during_a_refresh_survives_the_new_listing(tmp_path):
    import threading

    from s3pool.listing.build import write_listing
    from s3pool.listing.listings import Listings
    from s3pool.s3.answers import ListEntry

    layout = Layout.create(str(tmp_path))
    write_listing(layout, "bkt", [[ListEntry("a", 1, 0.0, "")]])
    halfway = threading.Event()
    release = threading.Event()

    class PagedBackend:
        limiter = trio.CapacityLimiter(10)

        def iter_listing(self, bucket):
            yield [ListEntry("a", 1, 0.0, "")]
            halfway.set()
            release.wait(10)
            yield [ListEntry("c", 1, 0.0, "")]  # listed before "b" was uploaded

    listings = Listings(layout, PagedBackend())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listings.refresh, "bkt")
        await trio.to_thread.run_sync(halfway.wait)
        await listings.add_key("bkt", ListEntry("b", 5, 0.0, '"x"'))
        assert await listings.glob("bkt", "*") == ["a", "b"]
        release.set()
    assert await listings.glob("bkt", "*") == ["a", "b", "c"]
    assert listings.key_info("bkt", "b") == (5, 0.0, '"x"')


async def test_glob_with_alternatives_reads_each_range_once_in_key_order(tmp_path):
    from s3pool.listing.build import write_listing
    from s3pool.listing.globpattern import compile_glob
    from s3pool.listing.listings import Listings
    from s3pool.s3.answers import ListEntry

    keys = sorted({f"{top}/{mid}/{leaf}" for top in ("a", "ab", "b", "logs", "x")
                   for mid in ("1", "2", "10", "a b") for leaf in ("f.txt", "g.csv", "h")}
                  | {"a", "ab", "logs", "z.txt"})
    layout = Layout.create(str(tmp_path))
    write_listing(layout, "bkt", [[ListEntry(k, 1, 0.0, "") for k in keys]])

    class NoBackend:
        limiter = trio.CapacityLimiter(1)

    listings = Listings(layout, NoBackend())
    for pattern in ["{b,a}*/**", "{a,ab}/*/*.txt", "{logs/1*/*,logs/**,x/1/h}", "{x,a}/?/h",
                    "{*.txt,**/h}", "{logs,a}", "{b/1/*,a/1/*}"]:
        compiled = compile_glob(pattern)
        expected = [k for k in keys if compiled.match(k)]
        assert expected, pattern
        assert await listings.glob("bkt", pattern) == expected, pattern
    # a pushed key is only in the index: a whole-listing GLOB reads the index then
    await listings.add_key("bkt", ListEntry("zz/new.txt", 1, 0.0, ""))
    assert (await listings.glob("bkt", "{**/new.txt,z.*}")) == ["z.txt", "zz/new.txt"]


async def test_a_glob_scan_gives_up_when_the_daemon_stops(tmp_path):
    import threading

    from s3pool.errors import ShuttingDown
    from s3pool.listing.build import write_listing
    from s3pool.listing.listings import Listings
    from s3pool.s3.answers import ListEntry

    layout = Layout.create(str(tmp_path))
    write_listing(layout, "bkt", [[ListEntry(f"k/{i:05d}", 1, 0.0, "") for i in range(3000)]])

    class StoppingBackend:
        limiter = trio.CapacityLimiter(1)
        stopping = threading.Event()

    listings = Listings(layout, StoppingBackend())
    assert len(await listings.glob("bkt", "k/*")) == 3000
    StoppingBackend.stopping.set()
    with pytest.raises(ShuttingDown):
        await listings.glob("bkt", "**")


async def test_a_listing_gives_up_at_its_next_page_when_the_daemon_stops(tmp_path):
    """A bucket of millions of keys lists for minutes in a worker thread that
    cannot be cancelled: at shutdown (the backend's stopping flag) the
    listing stops at its next page instead of running to its end, and
    leaves nothing behind in tmp/."""
    import threading

    from s3pool.errors import ShuttingDown
    from s3pool.listing.listings import Listings
    from s3pool.s3.answers import ListEntry

    class EndlessBackend:
        limiter = trio.CapacityLimiter(10)
        stopping = threading.Event()
        pages = 0

        def iter_listing(self, bucket):
            while self.pages < 10_000:
                self.pages += 1
                if self.pages == 3:
                    self.stopping.set()  # SIGTERM while the third page is asked for
                yield [ListEntry(f"k{self.pages:06d}-{i:04d}", 1, 0.0, '"e"')
                       for i in range(1000)]

    backend = EndlessBackend()
    layout = Layout.create(str(tmp_path))
    listings = Listings(layout, backend)
    with pytest.raises(ShuttingDown, match="stopping"):
        await listings.refresh("bkt")
    assert backend.pages == 3  # not one page more was asked for
    assert not listings.has_index("bkt")
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_directory_answers_follow_inserts_and_new_listings(tmp_path):
    """has_children is asked at every open and PULL; its answers are kept,
    but a key added under a name, or a new listing, is seen at once."""
    from s3pool.listing.listings import Listings
    from s3pool.s3.answers import ListEntry

    class Backend:
        limiter = trio.CapacityLimiter(10)
        keys = ["a", "b/c"]

        def iter_listing(self, bucket):
            yield [ListEntry(k, 1, 0.0, '"e"') for k in self.keys]

    backend = Backend()
    listings = Listings(Layout.create(str(tmp_path)), backend)
    await listings.refresh("bkt")
    assert listings.has_children("bkt", "b") and not listings.has_children("bkt", "a")
    assert not listings.has_children("bkt", "a")  # asked again: the kept answer
    await listings.add_key("bkt", ListEntry("a/x", 1, 0.0, '"e"'))
    assert listings.has_children("bkt", "a")
    backend.keys = ["b", "d/e"]
    await listings.refresh("bkt")
    assert not listings.has_children("bkt", "a") and not listings.has_children("bkt", "b")
    assert listings.has_children("bkt", "d")
