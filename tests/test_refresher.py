"""Unit tests of the list monitor's loop, with trio's autojump clock."""

import random

import pytest
import trio

from s3pool.errors import BackendError, NoSuchBucket
from s3pool.listing.refresher import Refresher

pytestmark = pytest.mark.unit


class FakeListings:
    def __init__(self, fail: dict | None = None):
        self.calls: list[tuple[float, str]] = []
        self.fail = fail or {}

    async def refresh(self, bucket):
        self.calls.append((trio.current_time(), bucket))
        error = self.fail.get(bucket)
        if error:
            raise error


def make(interval, buckets, fake, jitter=0.1):
    box = {"interval": interval}
    refresher = Refresher(fake.refresh, buckets, lambda: box["interval"], jitter=jitter,
                          rng=random.Random(7))
    return refresher, box


async def test_rounds_follow_the_interval(autojump_clock):
    fake = FakeListings()
    refresher, _ = make(300, {"b1", "b2"}, fake, jitter=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(refresher.run)
        await trio.sleep(299)
        assert fake.calls == []
        await trio.sleep(2)
        assert [b for _, b in fake.calls] == ["b1", "b2"]
        await trio.sleep(300)
        assert [b for _, b in fake.calls] == ["b1", "b2", "b1", "b2"]
        nursery.cancel_scope.cancel()
    assert refresher.rounds == 2


async def test_jitter_stays_within_its_bounds(autojump_clock):
    fake = FakeListings()
    buckets = {f"b{i}" for i in range(20)}
    refresher, _ = make(100, buckets, fake, jitter=0.1)
    async with trio.open_nursery() as nursery:
        await nursery.start(refresher.run)
        await trio.sleep(100 + 20 * 10 + 1)
        nursery.cancel_scope.cancel()
    times = [t for t, _ in fake.calls[:20]]
    gaps = [b - a for a, b in zip([100.0] + times, times, strict=False)]
    assert all(0 <= gap <= 10 for gap in gaps), gaps
    assert len(set(round(g, 3) for g in gaps)) > 1, "jitter should vary"
    assert sorted(b for _, b in fake.calls[:20]) == sorted(buckets)


def test_jitter_is_capped():
    refresher, _ = make(3600, set(), FakeListings(), jitter=0.5)
    assert all(0 <= refresher.jitter_for(3600) <= 30 for _ in range(1000))


async def test_set_wakes_it_and_applies_the_new_interval(autojump_clock):
    fake = FakeListings()
    refresher, box = make(300, {"b"}, fake, jitter=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(refresher.run)
        await trio.sleep(10)
        box["interval"] = 20
        refresher.wake()
        await trio.sleep(11)
        assert [t for t, _ in fake.calls] == [20.0]
        box["interval"] = 0  # off
        refresher.wake()
        await trio.sleep(1000)
        assert len(fake.calls) == 1
        box["interval"] = 5
        refresher.wake()
        await trio.sleep(0.5)
        assert len(fake.calls) == 2  # overdue: runs at once
        nursery.cancel_scope.cancel()


async def test_failures_are_retried_and_vanished_buckets_dropped(autojump_clock):
    fake = FakeListings({"gone": NoSuchBucket("gone"), "flaky": BackendError("down")})
    buckets = {"gone", "flaky", "fine"}
    refresher, _ = make(60, buckets, fake, jitter=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(refresher.run)
        await trio.sleep(61)
        assert buckets == {"flaky", "fine"}
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    names = [b for _, b in fake.calls]
    assert names == ["fine", "flaky", "gone", "fine", "flaky"]
    assert refresher.failures == 2
