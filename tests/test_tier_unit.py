"""Unit tests of the shared cache tier's addressing, metadata and backoff (tier.py).
The tier's behaviour with real daemons is in test_shared_tier_e2e.py."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from s3pool.download import tier as tiermod
from s3pool.download.tier import (
    SharedTier,
    TierResponse,
    parse_tier_url,
    tier_key,
    tier_metadata,
)
from s3pool.errors import NoSuchKey
from s3pool.s3.answers import ObjectResponse
from s3pool.s3.checksums import digest_for
from s3pool.s3.inflight import S3Requests

pytestmark = pytest.mark.unit


class FakeBackend:
    def __init__(self) -> None:
        self.requests = S3Requests(threading.Event())
        self.endpoint_url = "http://tier.invalid"

    def describe(self) -> str:
        return self.endpoint_url


def test_parse_tier_url():
    assert parse_tier_url("s3://cache/fleet") == ("cache", "fleet/")
    assert parse_tier_url("s3://cache/a/b/") == ("cache", "a/b/")
    assert parse_tier_url("s3://cache") == ("cache", "")
    for bad in ("cache/fleet", "http://cache/x", "s3:///x", "s3://c/x?y=1"):
        with pytest.raises(ValueError):
            parse_tier_url(bad)


def test_tier_key_is_by_version_not_by_name():
    one = tier_key("p/", "b", "k", '"0123456789abcdef0123456789abcdef"')
    assert one.startswith("p/") and len(one) == 2 + 64
    assert one == tier_key("p/", "b", "k", "0123456789abcdef0123456789abcdef")  # quotes
    assert one != tier_key("p/", "b", "k", '"f123456789abcdef0123456789abcdef"')  # new version
    assert one != tier_key("p/", "b2", "k", '"0123456789abcdef0123456789abcdef"')
    assert one != tier_key("p/", "b", "k2", '"0123456789abcdef0123456789abcdef"')
    # no ambiguity between (b, "k\0x") and (b + "\0k", "x")-style splits of the fields
    assert tier_key("", "b", "k", "e") != tier_key("", "b", "k\0e", "")


def test_tier_metadata_carries_the_origin_version():
    meta = {"ETag": '"abc"', "ContentLength": 12, "ContentType": "text/plain; charset=utf-8",
            "LastModified": "Sun, 06 Dec 2026 15:00:00 GMT",
            "ChecksumCRC64NVME": "AAAAAAAAAAA=", "ChecksumType": "FULL_OBJECT"}
    out = tier_metadata("bkt", "dir/ké y", meta)
    assert out["s3pool-etag"] == "abc" and out["s3pool-size"] == "12"
    assert out["s3pool-bucket"] == "bkt" and out["s3pool-key"] == "dir/k%C3%A9%20y"
    assert out["s3pool-checksumcrc64nvme"] == "AAAAAAAAAAA="
    assert all(value.isascii() for value in out.values())
    assert "s3pool-key" not in tier_metadata("b", "x" * 1100, meta)  # too long for metadata


def test_backoff_after_failures_in_a_row(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(tiermod.time, "monotonic", lambda: now[0])
    shared = SharedTier(FakeBackend(), "cache", "p/", FakeBackend())
    for _ in range(tiermod.FAILURES_BEFORE_BACKOFF - 1):
        shared.failed("b", "k", "boom")
    assert shared.usable()
    shared._worked()  # an answer in between: the count starts again
    for _ in range(tiermod.FAILURES_BEFORE_BACKOFF - 1):
        shared.failed("b", "k", "boom")
    assert shared.usable()
    shared.failed("b", "k", "boom")
    assert not shared.usable()
    now[0] += tiermod.BACKOFF_FIRST + 1
    assert shared.usable()
    shared.failed("b", "k", "boom")  # still failing: skipped twice as long
    assert not shared.usable()
    now[0] += tiermod.BACKOFF_FIRST + 1
    assert not shared.usable()
    now[0] += tiermod.BACKOFF_FIRST
    assert shared.usable()
    assert shared.fallbacks == 2 * (tiermod.FAILURES_BEFORE_BACKOFF - 1) + 2


def _meta(data: bytes) -> dict:
    return {"ETag": f'"{hashlib.md5(data).hexdigest()}"', "ContentLength": len(data),
            "ContentType": "binary/octet-stream", "Metadata": {},
            "LastModified": "Sun, 06 Dec 2026 15:00:00 GMT"}


class CountingOrigin(FakeBackend):
    """The origin's HEAD (the version a tier key needs), counted."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        super().__init__()
        self.objects = objects
        self.heads = 0
        self.stopping = threading.Event()

    async def head_with_checksums(self, bucket: str, key: str) -> dict:
        self.heads += 1
        return _meta(self.objects[key])


class CountingTier(FakeBackend):
    """A tier holding what another host wrote (*stored*), its GETs counted."""

    def __init__(self) -> None:
        super().__init__()
        self.stored: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.asks = 0
        self.held: dict[str, trio.Event] = {}  # tier key -> its asks wait for this

    def write(self, key: str, data: bytes) -> None:  # as another host's upload would
        self.stored[tier_key("p/", "b", key, _meta(data)["ETag"])] = (
            data, tier_metadata("b", key, _meta(data)))

    async def open_object(self, bucket: str, name: str, then):
        self.asks += 1
        await trio.lowlevel.checkpoint()  # a request: other tasks run meanwhile
        if name in self.held:
            await self.held[name].wait()
        if name not in self.stored:
            raise NoSuchKey(name)
        data, meta = self.stored[name]
        return then({"Body": io.BytesIO(data), "Metadata": meta, "ContentLength": len(data),
                     "ETag": '"tier-etag"'})


class NoListing:
    def listing_age(self, bucket: str) -> None:
        return None

    def key_info(self, bucket: str, key: str) -> None:
        return None


class ColdFleet:
    """A tier with nothing in it, on a clock the test moves (``now``), and
    ``count`` objects at the origin (k00, k01, ...)."""

    def __init__(self, monkeypatch, count):  # duck-typed fakes, as the tests above
        self.now = [1000.0]
        monkeypatch.setattr(tiermod.time, "monotonic", lambda: self.now[0])
        self.keys = [f"k{i:02d}" for i in range(count)]
        self.objects = {key: os.urandom(100 + i) for i, key in enumerate(self.keys)}
        self.origin, self.tier = CountingOrigin(self.objects), CountingTier()
        self.shared = SharedTier(self.tier, "cache", "p/", self.origin)

    async def lookup(self, key: str) -> Any:
        return await self.shared.lookup(NoListing(), 120.0, "b", key, None, lambda r: None,
                                        1 << 20)

    async def go_cold(self) -> None:
        """The first COLD_MISSES objects, each a miss: the tier is paused."""
        for key in self.keys[:tiermod.COLD_MISSES]:
            assert await self.lookup(key) is None


async def test_a_tier_that_keeps_missing_is_not_asked_for_a_while(monkeypatch):
    """A fleet starting on an empty tier: after COLD_MISSES misses in a row a
    miss is the origin's GET alone (no HEAD, no ask of the tier) for
    COLD_SECONDS; then the tier is asked again, and a hit ends the pause."""
    cold = tiermod.COLD_MISSES
    fleet = ColdFleet(monkeypatch, cold + 4)
    await fleet.go_cold()
    now, keys, objects, lookup = fleet.now, fleet.keys, fleet.objects, fleet.lookup
    origin, tier, shared = fleet.origin, fleet.tier, fleet.shared
    assert (origin.heads, tier.asks, shared.misses, shared.cold_skips) == (cold, cold, cold, 0)
    # cold: the next miss goes to the origin's GET (the caller's) unasked
    assert await lookup(keys[cold]) is None
    assert (origin.heads, tier.asks, shared.cold_skips) == (cold, cold, 1)
    now[0] += tiermod.COLD_SECONDS / 2
    assert await lookup(keys[cold]) is None
    assert (origin.heads, tier.asks, shared.cold_skips) == (cold, cold, 2)

    # the pause over: asked again, and another host has written this one meanwhile
    now[0] += tiermod.COLD_SECONDS
    tier.write(keys[cold + 1], objects[keys[cold + 1]])
    response = await lookup(keys[cold + 1])
    assert isinstance(response, TierResponse) and response.data == objects[keys[cold + 1]]
    assert (origin.heads, tier.asks, shared.hits) == (cold + 1, cold + 1, 1)
    # a hit ends the pause: the misses after it are asked until COLD_MISSES again
    for key in keys[cold + 2:]:
        assert await lookup(key) is None
    assert (tier.asks, shared.misses, shared.cold_skips) == (cold + 3, cold + 2, 2)


class FreshListing:
    """A whole listing of the bucket, younger than the freshness window."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def listing_age(self, bucket: str) -> float:
        return 1.0

    def key_info(self, bucket: str, key: str) -> tuple[int, float, str]:
        data = self.objects[key]
        return len(data), 1_796_000_000.0, _meta(data)["ETag"]


async def test_a_paused_tier_leaves_a_cached_copy_to_the_listing(monkeypatch):
    """While the tier is paused, a cached copy is still checked by a fresh
    listing (CURRENT, no request at all), not sent to the origin's GET."""
    now = [1000.0]
    monkeypatch.setattr(tiermod.time, "monotonic", lambda: now[0])
    keys = [f"k{i:02d}" for i in range(tiermod.COLD_MISSES + 1)]
    objects = {key: os.urandom(100 + i) for i, key in enumerate(keys)}
    origin, tier = CountingOrigin(objects), CountingTier()
    shared = SharedTier(tier, "cache", "p/", origin)
    listing = FreshListing(objects)
    for key in keys[:-1]:
        assert await shared.lookup(listing, 120.0, "b", key, None, lambda r: None, 1 << 20) \
            is None
    assert shared.misses == tiermod.COLD_MISSES and origin.heads == 0  # the listing's ETags
    last = keys[-1]
    cached = SimpleNamespace(meta=_meta(objects[last]), size=len(objects[last]))
    assert await shared.lookup(listing, 120.0, "b", last, cached, lambda r: None, 1 << 20) \
        is tiermod.CURRENT
    assert (origin.heads, tier.asks, shared.cold_skips) == (0, tiermod.COLD_MISSES, 0)
    # positive control: the same key, not cached, is not asked of the paused tier
    assert await shared.lookup(listing, 120.0, "b", last, None, lambda r: None, 1 << 20) is None
    assert (tier.asks, shared.cold_skips) == (tiermod.COLD_MISSES, 1)


async def test_after_a_pause_one_ask_goes_alone(monkeypatch):
    """The pause over, the first miss asks the tier and the misses meanwhile
    skip it until that ask is answered: a pause ends with one request, not
    one per download in flight."""
    cold = tiermod.COLD_MISSES
    fleet = ColdFleet(monkeypatch, cold + 3)
    await fleet.go_cold()
    keys, lookup, tier, shared = fleet.keys, fleet.lookup, fleet.tier, fleet.shared
    fleet.now[0] += tiermod.COLD_SECONDS + 0.1
    gate = trio.Event()
    tier.held[tier_key("p/", "b", keys[cold], _meta(fleet.objects[keys[cold]])["ETag"])] = gate
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lookup, keys[cold])  # the ask after the pause: held
        await trio.testing.wait_all_tasks_blocked()
        assert tier.asks == cold + 1
        assert await lookup(keys[cold + 1]) is None  # skipped while it is in flight
        assert (tier.asks, shared.cold_skips) == (cold + 1, 1)
        gate.set()
    assert shared.misses == cold + 1  # it missed: paused again
    assert await lookup(keys[cold + 2]) is None
    assert (tier.asks, shared.cold_skips) == (cold + 1, 2)
    fleet.now[0] += tiermod.COLD_SECONDS + 0.1  # positive control: over again, asked again
    assert await lookup(keys[cold + 2]) is None
    assert tier.asks == cold + 2



@pytest.mark.parametrize("filled", [False, True])
async def test_at_the_start_the_misses_wait_for_the_first_ask(monkeypatch, filled):
    """Concurrent misses of a host that just started: one asks the tier, the
    others wait for its answer. A miss: one of them asks next, the others go
    to the origin unasked (one ask at a time); a hit (another host filled the tier): they all
    ask it."""
    fleet = ColdFleet(monkeypatch, 6)
    keys, tier, shared, origin = fleet.keys, fleet.tier, fleet.shared, fleet.origin
    if filled:
        for key in keys:
            tier.write(key, fleet.objects[key])
    gate = trio.Event()
    tier.held[tier_key("p/", "b", keys[0], _meta(fleet.objects[keys[0]])["ETag"])] = gate
    got: dict[str, Any] = {}

    async def one(key: str) -> None:
        got[key] = await fleet.lookup(key)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, keys[0])
        await trio.testing.wait_all_tasks_blocked()
        for key in keys[1:4]:
            nursery.start_soon(one, key)
        await trio.testing.wait_all_tasks_blocked()
        assert (tier.asks, origin.heads) == (1, 1)  # the others wait
        gate.set()
    if filled:
        assert all(isinstance(got[key], TierResponse) for key in keys[:4]), got
        assert (tier.asks, shared.hits, shared.cold_skips) == (4, 4, 0)
    else:
        assert all(got[key] is None for key in keys[:4]), got
        assert (tier.asks, shared.misses, shared.cold_skips) == (2, 2, 2)
        assert await fleet.lookup(keys[4]) is None  # the next miss asks (alone)
        assert (tier.asks, shared.misses) == (3, 3)


async def test_a_tier_missing_a_run_of_a_working_set_serves_the_rest(monkeypatch):
    """A tier that has served this host and then misses a run of objects (a
    run of more than COLD_MISSES, shorter than COLD_MISSES_SERVED) is not
    paused: every object it holds after the run is read from it (the old code
    paused it after COLD_MISSES and sent them to the origin). A tier that
    misses COLD_MISSES_SERVED in a row is paused all the same."""
    served = tiermod.COLD_MISSES_SERVED
    fleet = ColdFleet(monkeypatch, 40 + served + 1)
    keys, tier, shared = fleet.keys, fleet.tier, fleet.shared
    missing = set(keys[10:10 + tiermod.COLD_MISSES + 4])
    for key in keys[:40]:
        if key not in missing:
            tier.write(key, fleet.objects[key])
    for key in keys[:40]:
        got = await fleet.lookup(key)
        assert (got is None) if key in missing else isinstance(got, TierResponse), key
    assert (shared.hits, shared.misses, shared.cold_skips) == (40 - len(missing), len(missing),
                                                                0)
    # positive control: COLD_MISSES_SERVED misses in a row, and the next is not asked
    for key in keys[40:40 + served]:
        assert await fleet.lookup(key) is None
    assert (shared.misses, shared.cold_skips) == (len(missing) + served, 0)
    assert await fleet.lookup(keys[-1]) is None
    assert (tier.asks, shared.cold_skips) == (40 + served, 1)


class UploadTier(FakeBackend):
    """A tier taking uploads through boto3's calls (worker threads), keeping
    them by name; ``gate`` holds every upload until set, ``fail`` fails them;
    the uploads being sent at once are counted."""

    def __init__(self) -> None:
        super().__init__()
        self.stopping = threading.Event()
        self.transfer_config = None
        self.client = self  # head_object and upload_fileobj, as boto3's client
        self.stored: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.lock = threading.Lock()
        self.sending = 0
        self.most_sending = 0
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False
        self.attempts = 0

    def head_object(self, Bucket: str, Key: str) -> dict:
        data, meta = self.stored[Key]  # KeyError: missing (the upload goes on)
        return {"ContentLength": len(data), "Metadata": meta}

    def upload_fileobj(self, source, bucket: str, name: str, ExtraArgs: dict, Config) -> None:
        with self.lock:
            self.attempts += 1
            self.sending += 1
            self.most_sending = max(self.most_sending, self.sending)
        try:
            assert self.gate.wait(60)
            if self.fail:
                raise OSError("the tier is down")
            self.stored[name] = (source.read(), ExtraArgs["Metadata"])
        finally:
            with self.lock:
                self.sending -= 1


class Uploads:
    """A SharedTier over an UploadTier, with a real Store in *home* (objects
    installed as the cache installs them, then handed to installed())."""

    def __init__(self, home, monkeypatch) -> None:
        from s3pool.store.layout import Layout
        from s3pool.store.objects import Store

        monkeypatch.setattr(tiermod, "UPLOAD_QUIET", 0.01)
        monkeypatch.setattr(tiermod, "UPLOAD_DEFER_POLL", 0.01)
        self.store = Store(Layout.create(str(home)))
        self.tier = UploadTier()
        origin: Any = FakeBackend()
        self.shared = SharedTier(self.tier, "cache", "p/", origin)  # type: ignore[arg-type]
        self.shared.store = self.store

    async def install(self, key: str, data: bytes, tell: bool = True) -> None:
        meta = _meta(data)
        obj = await self.store.install("b", key, None, meta, data=data)
        if tell:  # as the cache does, under the key's lock (the MD5 ETag checked)
            response = ObjectResponse(meta, None, digest_for(meta, "b", key))
            assert response.digest is not None
            self.shared.installed("b", key, obj, response)

    def stored(self, key: str) -> bytes | None:
        for data, meta in self.tier.stored.values():
            if meta["s3pool-key"] == key:
                return data
        return None

    async def settled(self, count: int) -> None:
        """Every one of *count* uploads written, kept, skipped or failed."""
        shared = self.shared
        with trio.fail_after(60):
            while shared.uploads + shared.uploads_kept + shared.uploads_skipped \
                    + shared.upload_failures < count or shared._queued_bytes:
                await trio.sleep(0.01)


@pytest.mark.parametrize("bound", ["two fit", "one fits"])
async def test_queued_uploads_are_records_and_in_flight_bytes_are_bounded(
        tmp_path, monkeypatch, bound):
    """Far more bytes queued than UPLOAD_BYTES (the old bound on queued bytes,
    past which uploads were skipped): every one is written, oldest first, and
    at most UPLOAD_BYTES are being sent at once (one upload always may)."""
    up = Uploads(tmp_path / "home", monkeypatch)
    size = 4000
    monkeypatch.setattr(tiermod, "UPLOAD_BYTES", 2 * size if bound == "two fit" else size + 1)
    objects = {f"k{i:02d}": os.urandom(size) for i in range(30)}
    up.tier.gate.clear()  # the first two wait: the others queue behind them
    async with trio.open_nursery() as nursery:
        await nursery.start(up.shared.run)
        up.shared.fetch_began()  # the host fetches: no upload starts meanwhile
        for key, data in objects.items():
            await up.install(key, data)
        assert up.shared._queued_bytes == len(objects) * size > tiermod.UPLOAD_BYTES
        assert up.tier.attempts == 0
        up.shared.fetch_ended()
        with trio.fail_after(60):
            while up.tier.sending < (2 if bound == "two fit" else 1):
                await trio.sleep(0.01)
        await trio.sleep(0.5)  # the uploaders poll every 0.01 s: time for another to go
        assert up.tier.sending == (2 if bound == "two fit" else 1)  # "two fit": the control
        up.tier.gate.set()
        await up.settled(len(objects))
        nursery.cancel_scope.cancel()
    shared = up.shared
    assert (shared.uploads, shared.uploads_skipped, shared.upload_failures) == (30, 0, 0)
    assert all(up.stored(key) == data for key, data in objects.items())
    assert up.tier.most_sending == (2 if bound == "two fit" else 1)


async def test_an_upload_evicted_or_replaced_before_its_turn_is_skipped(tmp_path, monkeypatch):
    """A queued upload whose object left the cache, or holds another version
    now, is skipped at its turn (not an error); a newer version installed
    through the cache takes its older version's place in the queue."""
    up = Uploads(tmp_path / "home", monkeypatch)
    bodies = {key: os.urandom(3000 + i) for i, key in enumerate(["kept", "evicted", "newer",
                                                                  "behind", "other"])}
    async with trio.open_nursery() as nursery:
        await nursery.start(up.shared.run)
        up.shared.fetch_began()
        for key, data in bodies.items():
            await up.install(key, data)
        async with up.store.key_lock("b", "evicted"):
            await up.store.remove("b", "evicted")
        newer = os.urandom(3000)
        await up.install("newer", newer)  # through the cache: replaces its record
        behind = os.urandom(3003)
        await up.install("behind", behind, tell=False)  # a version the record is not
        up.shared.fetch_ended()
        await up.settled(len(bodies) + 1)
        nursery.cancel_scope.cancel()
    shared = up.shared
    # skipped: the evicted one, the older version of "newer", "behind"
    assert (shared.uploads, shared.uploads_skipped, shared.upload_failures) == (3, 3, 0)
    assert up.stored("kept") == bodies["kept"] and up.stored("other") == bodies["other"]
    assert up.stored("newer") == newer
    assert up.stored("evicted") is None and up.stored("behind") is None


async def test_shutdown_drops_the_queue(tmp_path, monkeypatch):
    up = Uploads(tmp_path / "home", monkeypatch)
    async with trio.open_nursery() as nursery:
        await nursery.start(up.shared.run)
        up.shared.fetch_began()  # busy until the end: nothing is sent
        for i in range(5):
            await up.install(f"k{i}", os.urandom(1000))
        assert up.shared._queued_bytes == 5000
        nursery.cancel_scope.cancel()
    shared = up.shared
    assert (shared.uploads_skipped, shared._queued_bytes, len(shared._queue)) == (5, 0, 0)
    assert up.tier.attempts == 0
    # after run(): nothing more is queued
    await up.install("late", os.urandom(1000))
    assert (shared.uploads_skipped, len(shared._queue)) == (5, 0)


async def test_uploads_that_keep_failing_wait_and_keep_the_queue(tmp_path, monkeypatch):
    """A tier that fails its uploads: after FAILURES_BEFORE_BACKOFF failures
    in a row the uploads wait BACKOFF_FIRST seconds (the rest stay queued,
    not failed one by one), and the lookups are not put in backoff."""
    now = [1000.0]
    monkeypatch.setattr(tiermod.time, "monotonic", lambda: now[0])
    up = Uploads(tmp_path / "home", monkeypatch)
    up.tier.fail = True
    objects = {f"k{i}": os.urandom(1000 + i) for i in range(8)}
    failures = tiermod.FAILURES_BEFORE_BACKOFF
    async with trio.open_nursery() as nursery:
        await nursery.start(up.shared.run)
        for key, data in objects.items():
            await up.install(key, data)
        with trio.fail_after(60):
            while up.shared.upload_failures < failures:
                await trio.sleep(0.01)
        await trio.sleep(0.5)  # the uploaders poll every 0.01 s meanwhile
        # (the other uploader's, sent before the pause began, may have failed too)
        failed = up.shared.upload_failures
        assert failures <= failed <= failures + tiermod.UPLOAD_CONCURRENCY - 1
        assert len(up.shared._queue) == len(objects) - failed
        assert up.shared.usable()  # reads from the tier go on
        # positive control: the pause over and the tier back, the rest is written
        up.tier.fail = False
        now[0] += tiermod.BACKOFF_FIRST + 1
        await up.settled(len(objects))
        nursery.cancel_scope.cancel()
    assert (up.shared.uploads, up.shared.upload_failures) == (len(objects) - failed, failed)
