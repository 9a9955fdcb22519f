"""The cache: PULL, PUSH, GLOB and REFRESH over the local copy of S3.

The control socket and the FUSE view are thin adapters over this module;
both reach S3 through :meth:`Cache.fetch`, so a PULL and an ``open()`` of
the same key share one download, one freshness record and one lock.

This module holds policy only: freshness, single-flight, downloads,
pushes and listings. The files under ``data/``, their locks and access
records belong to the store (``store.py``); room for a download comes from
the evictor, handed in at construction.
"""

from __future__ import annotations

import contextvars
import errno
import logging
import os
import shutil
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Awaitable, Callable, Protocol

import trio

from .backend import Backend, ListEntry, ObjectResponse
from .errors import (
    BadKey, BackendError, DigestMismatch, KeyConflict, LocalFileError, NoSpace, NoSuchKey,
    S3PoolError,
)
from .layout import check_bucket, check_key, unlink_quietly
from .listing import Listings
from .settings import Settings
from .store import CachedObject, Store
from .transfer import Digest, Transfer, Transfers

log = logging.getLogger(__name__)

# objects this large are fetched as parallel ranged GETs of RANGE_PART bytes
RANGED_THRESHOLD = 64 << 20
RANGE_PART = 16 << 20
RANGE_CONCURRENCY = 4
# keys whose last ETag check is remembered (oldest forgotten first: a
# forgotten key only costs one conditional GET)
FRESHNESS_MEMORY = 1 << 20
MISSING_MEMORY = 1 << 16
# a download that fails its ETag MD5 or checksum is fetched again this many times
DIGEST_RETRIES = 2

# who asked for a download, for its log line ("PULL" or "the mount")
DOWNLOAD_SOURCE: contextvars.ContextVar[str] = contextvars.ContextVar("download_source",
                                                                      default="")


@dataclass
class Stats:
    """Counters shown by STATUS."""

    started: float = field(default_factory=time.time)
    pulls: int = 0
    hits: int = 0
    misses: int = 0
    revalidations: int = 0  # conditional GETs answered 304
    stale_served: int = 0  # copies served unchecked because S3 failed (stale_on_error)
    downloads: int = 0
    digest_retries: int = 0  # downloads fetched again after their bytes failed the check
    bytes_downloaded: int = 0
    pushes: int = 0
    bytes_uploaded: int = 0
    globs: int = 0
    refreshes: int = 0
    errors: int = 0


class Room(Protocol):
    """What makes room for a download (the evictor)."""

    def make_room(self, nbytes: int) -> Awaitable[None]: ...


class NoEviction:
    """Room for tests and tools that run without an evictor: nothing is evicted."""

    async def make_room(self, nbytes: int) -> None:
        return None


class Cache:
    """The one path from a request (socket or FUSE) to S3 and the disk."""

    def __init__(self, store: Store, backend: Backend, settings: Settings,
                 room: Room | None = None, listings: Listings | None = None,
                 push_backend: Backend | None = None) -> None:
        self.store = store
        self.layout = store.layout
        self.backend = backend
        # PUSH goes here (--push-endpoint): a read tier in front of S3 takes no writes
        self.push_backend = push_backend or backend
        self.settings = settings
        self.room = room or NoEviction()
        self.listings = listings or Listings(store.layout, backend)
        self.stats = Stats()
        self.download_limiter = trio.CapacityLimiter(settings.pull_concurrency)
        self.range_limiter = trio.CapacityLimiter(RANGE_CONCURRENCY)
        self.transfers = Transfers(settings, backend.stopping)  # downloads in flight
        # last ETag check (trio clock) per key, oldest first
        self._checked: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.buckets_in_use: set[str] = set()
        # names S3 said it does not have (discover), oldest first
        self._missing: OrderedDict[tuple[str, str], float] = OrderedDict()
        settings.on_change(self._setting_changed)

    def _setting_changed(self, name: str, value: Any) -> None:
        if name == "pull_concurrency":
            self.download_limiter.total_tokens = value
            self.backend.resize(value)

    def use_bucket(self, bucket: str) -> None:
        self.buckets_in_use.add(bucket)

    # --- locks and freshness ---------------------------------------------

    def key_lock(self, bucket: str, key: str) -> Any:
        return self.store.key_lock(bucket, key)

    def is_busy(self, bucket: str, key: str) -> bool:
        return self.store.is_busy(bucket, key)

    def _is_fresh(self, bucket: str, key: str) -> bool:
        return self._checked_within(bucket, key, self.settings.freshness_window)

    def _checked_within(self, bucket: str, key: str, seconds: float) -> bool:
        checked = self._checked.get((bucket, key))
        return checked is not None and trio.current_time() - checked < seconds

    def _mark_fresh(self, bucket: str, key: str) -> None:
        """O(1) whatever the number of keys: the dict stays in check order,
        so expired entries are dropped from its front."""
        now = trio.current_time()
        checked = self._checked
        ident = (bucket, key)
        checked[ident] = now
        checked.move_to_end(ident)
        horizon = now - max(self.settings.freshness_window, self.settings.stale_on_error)
        for _ in range(2):  # amortized: at most two expired entries per new one
            oldest = next(iter(checked.items()))
            if oldest[1] >= horizon and len(checked) <= FRESHNESS_MEMORY:
                break
            checked.popitem(last=False)

    def _forget_checked(self, bucket: str, key: str) -> None:
        self._checked.pop((bucket, key), None)

    def cached(self, bucket: str, key: str) -> CachedObject | None:
        """The complete cached copy of a key, or None (see Store.lookup)."""
        return self.store.lookup(bucket, key)

    # --- PULL ------------------------------------------------------------

    async def pull(self, bucket: str, key: str) -> str:
        """Absolute path of a current local copy of s3://bucket/key."""
        obj = await self.fetch(bucket, key)
        return obj.path

    async def pull_many(self, bucket: str, keys: list[str]) -> list[str]:
        """PULL several keys in parallel; paths in request order.

        Every key is attempted even if one fails; then the first failure in
        request order is raised, naming its key.
        """
        if len(keys) == 1:  # no nursery for the common case
            try:
                return [await self.pull(bucket, keys[0])]
            except S3PoolError as exc:
                raise type(exc)(f"{keys[0]}: {exc}") from exc
        results: list[str | BaseException | None] = [None] * len(keys)

        async def one(i: int, key: str) -> None:
            try:
                results[i] = await self.pull(bucket, key)
            except Exception as exc:  # reported below, after every key was tried
                results[i] = exc

        async with trio.open_nursery() as nursery:
            for i, key in enumerate(keys):
                nursery.start_soon(one, i, key)
        for key, result in zip(keys, results):
            if isinstance(result, S3PoolError):
                raise type(result)(f"{key}: {result}") from result
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if isinstance(r, str)]

    async def fetch(self, bucket: str, key: str, opener: Callable[[str], Any] | None = None
                    ) -> CachedObject:
        """Make the cached copy of a key current and return it.

        *opener*, if given, is called with the path while the key is still
        locked (the FUSE view opens its file descriptor there, so the handle
        holds exactly the version that was checked).
        """
        check_bucket(bucket)
        check_key(key)
        self.stats.pulls += 1
        DOWNLOAD_SOURCE.set("the mount" if opener is not None else "PULL")
        store = self.store
        if not store.is_locked(bucket, key) and self._is_fresh(bucket, key):
            # fast path: nobody is changing this key (no lock exists) and it
            # was checked within the window; no await happens in between
            self._check_conflict(bucket, key)
            obj = store.lookup(bucket, key)
            if obj is not None:
                self.stats.hits += 1
                store.record_access(bucket, key, obj.size)
                if opener is not None:
                    obj.handle = opener(obj.path)
                return obj
        async with store.key_lock(bucket, key):
            obj = await self._fetch_locked(bucket, key)
            store.record_access(bucket, key, obj.size)
            if opener is not None:
                obj.handle = opener(obj.path)
        # only now: a typo'd bucket never shows at the mount's root
        self.use_bucket(bucket)
        return obj

    def _check_conflict(self, bucket: str, key: str) -> None:
        if self.listings.has_children(bucket, key):
            raise KeyConflict(
                f"key {key!r} is shadowed by keys under {key + '/'!r}: "
                "on disk the directory wins"
            )
        # a parent segment that is a cached *file* is fine: the directory
        # wins and _install removes that file

    async def _fetch_locked(self, bucket: str, key: str) -> CachedObject:
        self._check_conflict(bucket, key)
        obj = self.cached(bucket, key)
        if obj is not None and self._is_fresh(bucket, key):
            self.stats.hits += 1
            return obj
        async with self.download_limiter:
            try:
                response = await self.backend.get_object(
                    bucket, key, if_none_match=obj.meta.get("ETag") if obj else None
                )
            except NoSuchKey:
                if obj is not None:
                    # deleted on S3: never serve it again
                    await self.store.remove(bucket, key)
                    self._forget_checked(bucket, key)
                raise
            except BackendError as exc:
                if obj is not None and self._checked_within(bucket, key,
                                                            self.settings.stale_on_error):
                    log.warning("S3 failed for s3://%s/%s (%s); serving the copy checked "
                                "%.0fs ago (stale_on_error)", bucket, key, exc,
                                trio.current_time() - self._checked[(bucket, key)])
                    self.stats.stale_served += 1
                    return obj
                raise
            if response is None:
                assert obj is not None
                self.stats.hits += 1
                self.stats.revalidations += 1
                self._mark_fresh(bucket, key)
                return obj
            self.stats.misses += 1
            obj = await self._download_checked(bucket, key, response)
        self._mark_fresh(bucket, key)
        return obj

    async def _download_checked(self, bucket: str, key: str, response: ObjectResponse
                                ) -> CachedObject:
        """Download; bytes that fail their ETag MD5 or checksum (a tier that
        served a damaged or half-synced object) are never installed: the key
        is fetched again, DIGEST_RETRIES times at most, then the PULL fails."""
        for attempt in range(DIGEST_RETRIES + 1):
            try:
                return await self._download(bucket, key, response)
            except DigestMismatch as exc:
                if attempt == DIGEST_RETRIES:
                    raise
                self.stats.digest_retries += 1
                log.warning("%s; fetching it again (%d of %d)", exc, attempt + 1, DIGEST_RETRIES)
                retry = await self.backend.get_object(bucket, key)
                assert retry is not None  # an unconditional GET is never 304
                response = retry
        raise AssertionError("unreachable")

    async def _download(self, bucket: str, key: str, response: ObjectResponse) -> CachedObject:
        size = response.content_length
        try:
            await self.room.make_room(size)
        except NoSpace:
            response.body.close()
            raise
        with self.store.reserve(size):
            obj = await self._download_reserved(bucket, key, response)
        await self._note_version(bucket, key, obj)
        return obj

    async def _note_version(self, bucket: str, key: str, obj: CachedObject) -> None:
        """Put the version just installed into the listing index, so GLOB and
        the mount show it (and its size) before the next listing has it."""
        if self.listings.knows_version(bucket, key, obj.etag, obj.size):
            return
        await self.listings.add_key(bucket, ListEntry(key, obj.size, _listing_time(obj.meta),
                                                      obj.etag))

    async def _download_reserved(self, bucket: str, key: str, response: ObjectResponse
                                 ) -> CachedObject:
        size = response.content_length
        started = time.perf_counter()
        transfer = self.transfers.begin(bucket, key, size, DOWNLOAD_SOURCE.get())
        fd, tmp_path = self.store.new_temp("dl.")
        try:
            try:
                digest = response.digest
                if size >= RANGED_THRESHOLD:
                    written = await self._download_ranged(bucket, key, response, fd, transfer,
                                                          digest)
                else:
                    written = await self.backend.read_body_at(response, fd, 0, size, bucket, key,
                                                              transfer, digest)
                if written != size:
                    raise BackendError(
                        f"short download of s3://{bucket}/{key}: {written} of {size} bytes"
                    )
                if digest is not None:
                    digest.check()  # a mismatch is never installed
                fetched = time.perf_counter()
                await trio.to_thread.run_sync(os.fsync, fd, limiter=self.store.disk_limiter)
                synced = time.perf_counter()
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise NoSpace(f"no space left in the cache for s3://{bucket}/{key}") from exc
                raise
            except NoSpace as exc:
                raise NoSpace(f"no space left in the cache for s3://{bucket}/{key}") from exc
            finally:
                os.close(fd)
                self.transfers.end(transfer)
            obj = await self.store.install(bucket, key, tmp_path, response.meta)
        finally:
            unlink_quietly(tmp_path)
        seconds = fetched - started
        log.info("downloaded s3://%s/%s (%s): %d bytes in %.2fs, %.1f MiB/s, %s; "
                 "fsync %.3fs, install %.3fs", bucket, key, transfer.source or "-", size,
                 seconds, size / (1 << 20) / max(seconds, 1e-6),
                 f"{digest.what} verified" if digest is not None else "length verified",
                 synced - fetched, time.perf_counter() - synced)
        self.stats.downloads += 1
        self.stats.bytes_downloaded += size
        return obj

    async def _download_ranged(self, bucket: str, key: str, response: ObjectResponse,
                               fd: int, transfer: Transfer, digest: Digest | None) -> int:
        """A large object: the first part from the open GET, the rest in
        parallel ranged GETs pinned to the same ETag (If-Match), so a version
        that changes mid-way fails the download instead of mixing.

        *digest* needs the bytes in order: the first part is hashed as it
        arrives, the others are read back from the file as soon as every part
        before them has landed, while later parts are still downloading."""
        size = response.content_length
        etag = response.meta.get("ETag") or ""
        os.ftruncate(fd, size)
        written = [await self.backend.read_body_at(response, fd, 0, RANGE_PART, bucket, key,
                                                   transfer, digest)]
        starts = range(RANGE_PART, size, RANGE_PART)
        landed = {start: trio.Event() for start in starts}

        async def hash_in_order() -> None:
            assert digest is not None
            for start in starts:
                await landed[start].wait()
                await trio.to_thread.run_sync(digest.update_from_file, fd, start,
                                              min(RANGE_PART, size - start),
                                              limiter=self.store.disk_limiter)

        async def part(start: int) -> None:
            length = min(RANGE_PART, size - start)
            async with self.range_limiter:
                got = await self.backend.get_range_into(bucket, key, etag, start, length, fd,
                                                        transfer)
            if got != length:
                transfer.fail(f"short range of s3://{bucket}/{key} at {start}")
                raise BackendError(f"short range of s3://{bucket}/{key} at {start}: "
                                   f"{got} of {length} bytes")
            written[0] += got
            landed[start].set()

        try:
            async with trio.open_nursery() as nursery:
                for start in starts:
                    nursery.start_soon(part, start)
                if digest is not None and written[0] == RANGE_PART:
                    nursery.start_soon(hash_in_order)
        except BaseExceptionGroup as group:
            # one clear error for the client, not a group of parts (a full disk first)
            raise _first_error(group) from None
        return written[0]

    # --- PUSH ------------------------------------------------------------

    async def push(self, bucket: str, key: str, local_path: str) -> str:
        """Upload a local file to s3://bucket/key; the cache then holds the new bytes."""
        check_bucket(bucket)
        check_key(key)
        if not os.path.isabs(local_path):
            raise LocalFileError(f"path {local_path!r} is not absolute")
        try:
            st = os.stat(local_path)
        except OSError as exc:
            raise LocalFileError(f"cannot read {local_path!r}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise LocalFileError(f"{local_path!r} is not a regular file")
        self.use_bucket(bucket)
        store = self.store
        async with store.key_lock(bucket, key):
            self._check_conflict(bucket, key)
            store.lookup(bucket, key)  # raises KeyConflict for a directory on disk
            # whatever happens next, the old cached bytes are not served again
            await store.remove(bucket, key)
            self._forget_checked(bucket, key)
            tmp_path = await self._copy_for_push(local_path, st.st_size)
            try:
                # upload the copy when there is one: what is uploaded is then
                # exactly what is installed, even if the caller rewrites its file
                await self.push_backend.upload_file(bucket, key, tmp_path or local_path)
                self.stats.pushes += 1
                self.stats.bytes_uploaded += st.st_size
                meta = await self.push_backend.head_object(bucket, key)
                if tmp_path and meta["ContentLength"] == os.path.getsize(tmp_path):
                    await store.install(bucket, key, tmp_path, meta)
                    self._mark_fresh(bucket, key)
                await self.listings.add_key(bucket, ListEntry(
                    key, meta["ContentLength"], _listing_time(meta), meta.get("ETag") or ""))
            finally:
                if tmp_path:
                    unlink_quietly(tmp_path)
        return self.layout.object_path(bucket, key)

    async def _copy_for_push(self, local_path: str, size: int) -> str | None:
        """A synced copy of *local_path* in tmp/, or None if the cache has no room."""
        try:
            await self.room.make_room(size)
        except NoSpace:
            log.info("%s (%d bytes) does not fit in the cache: uploading it uncached",
                     local_path, size)
            return None
        fd, tmp_path = self.store.new_temp("push.")
        os.close(fd)
        try:
            await trio.to_thread.run_sync(_copy_and_sync, local_path, tmp_path,
                                          limiter=self.store.disk_limiter)
        except OSError as exc:
            unlink_quietly(tmp_path)
            if exc.errno == errno.ENOSPC:
                log.info("no room to cache %s: uploading it uncached", local_path)
                return None
            raise LocalFileError(f"cannot read {local_path!r}: {exc.strerror}") from None
        return tmp_path

    # --- listings --------------------------------------------------------

    async def refresh(self, bucket: str) -> int:
        check_bucket(bucket)
        count = await self.listings.refresh(bucket)
        self.use_bucket(bucket)
        self.stats.refreshes += 1
        return count

    async def ensure_listing(self, bucket: str) -> None:
        if not self.listings.has_index(bucket):
            await self.refresh(bucket)

    async def discover(self, bucket: str, key: str) -> bool:
        """Ask S3 about one name the listing lacks (a key written since the
        last refresh): a HEAD, then a LIST of one key for a directory of that
        name. What exists goes into the listing index; what does not is
        remembered for the freshness window, so an ``ls`` storm of missing
        names costs S3 nothing. True if the index gained something."""
        check_bucket(bucket)
        if self.listings.hidden(key + "/"):
            return False  # s3pool's own .s3pool/ objects are never shown
        ident = (bucket, key)
        missing_since = self._missing.get(ident)
        window = self.settings.freshness_window
        if missing_since is not None and trio.current_time() - missing_since < window:
            return False
        try:
            check_key(key)
            try:
                meta = await self.backend.head_object(bucket, key)
            except NoSuchKey:
                meta = None
            if meta is not None:
                await self.listings.add_key(bucket, ListEntry(
                    key, meta["ContentLength"], _listing_time(meta), meta.get("ETag") or ""))
                return True
            # a directory: one key under it is enough for the index to show it
            under = await self.backend.first_keys(bucket, key + "/", 1)
        except BadKey:
            return False
        except S3PoolError as exc:  # S3 unreachable: the name is just not there now
            log.info("cannot ask S3 about s3://%s/%s: %s", bucket, key, exc)
            return False
        if under:
            await self.listings.add_key(bucket, under[0])
            return True
        self._missing[ident] = trio.current_time()
        self._missing.move_to_end(ident)
        while len(self._missing) > MISSING_MEMORY:
            self._missing.popitem(last=False)
        return False

    async def glob(self, bucket: str, pattern: str) -> list[str]:
        check_bucket(bucket)
        await self.ensure_listing(bucket)
        self.use_bucket(bucket)
        self.stats.globs += 1
        return await self.listings.glob(bucket, pattern)


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The error to report for a group of failed parts: ours first, then any
    other Exception; a group of cancellations stays a group."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for kind in (NoSpace, S3PoolError, Exception):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return group


def _listing_time(meta: dict[str, Any]) -> float:
    try:
        return parsedate_to_datetime(meta["LastModified"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return time.time()


def _copy_and_sync(src: str, dst: str) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())


__all__ = ["Cache", "CachedObject", "Stats", "BadKey"]
