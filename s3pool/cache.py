"""The cache: PULL, PUSH, GLOB and REFRESH over the local copy of S3.

The control socket and the FUSE view are thin adapters over this module;
a PULL (:meth:`Cache.fetch`) and an ``open()`` (:meth:`Cache.open`) reach
S3 through the same path (``_current``), so they share one download, one
freshness record and one lock. A miss starts a :class:`~s3pool.download.download.Download`
in the cache's nursery: ``open()`` returns once the GET's headers are in
and reads wait only for their bytes; a PULL waits for the install.

This module holds policy only: single-flight, downloads and listings,
with what is remembered of S3's answers in ``download/freshness.py`` and PUSH in
``upload/push.py``. The files under ``data/``, their locks and access records
belong to the store (``store/objects.py``); room for a download comes from the
evictor, handed in at construction.
"""

from __future__ import annotations

import contextvars
import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, overload

import trio

from s3pool.download.download import Download, DownloadDeps, Reader
from s3pool.download.freshness import Freshness
from s3pool.download.registry import Downloads
from s3pool.errors import (
    BackendError,
    BadKey,
    DigestMismatch,
    KeyConflict,
    LocalFileError,
    NoSpace,
    NoSuchKey,
    S3PoolError,
    VersionChanged,
)
from s3pool.listing.index import IndexFault
from s3pool.listing.listings import Entry, Listings, ListJob, visible_name
from s3pool.s3.answers import ListEntry, ObjectResponse, listing_time
from s3pool.s3.backend import Backend, ObjectExists
from s3pool.s3.checksums import Verifications
from s3pool.s3.progress import Transfers
from s3pool.settings import Settings
from s3pool.store.layout import check_bucket, check_key
from s3pool.store.objects import CachedObject, Installed, Store
from s3pool.upload.context import UploadContext
from s3pool.upload.push import push_file
from s3pool.upload.staged import NotSequential, StagedUpload, UploadFailed, abort_leftovers

log = logging.getLogger(__name__)

# bodies up to this size are read whole with the GET's headers (one thread hop)
SMALL_OBJECT = 256 << 10
# the source of a fetch that the mount's read-ahead started (not counted as a PULL)
PREFETCH = "read-ahead"
# a download that fails its ETag MD5 or checksum is fetched again this many times
DIGEST_RETRIES = 2
# set by a GLOB for the request's log line: how old the listing it answered from was
LISTING_NOTE: contextvars.ContextVar[str] = contextvars.ContextVar("listing_note", default="")



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
    refreshes_begun: int = 0  # refresh() calls, whatever came of them (count_refresh)
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
        self.verifications = Verifications()  # installs per kind of check (STATUS)
        self.transfers = Transfers(settings, backend.stopping)  # downloads in flight
        # downloads in flight, shared by every opener of the key until installed
        self.downloads = Downloads(settings.pull_concurrency, self.install_download)
        # all a Download may use of the rest of s3pool
        self._download_deps = DownloadDeps(store=store, backend=backend, settings=settings,
                                           registry=self.downloads,
                                           checks=self.verifications,
                                           transfers=self.transfers)
        self._set_deadline()  # of each S3 request
        self.freshness = Freshness(settings)  # last ETag check per key, names S3 lacks
        self.buckets_in_use: set[str] = set()
        self._nursery: trio.Nursery | None = None  # where downloads run (see run())
        self.on_install: Callable[[], None] | None = None  # the checkpoint's nudge
        self.tier: Any = None  # the shared cache tier (tier.SharedTier), --shared-cache
        # what PUSH and the mount's uploads are given of the cache (upload/context.py)
        self._uploads = UploadContext(
            store=store, backend=self.push_backend, settings=settings, room=self.room,
            counters=self.stats, add_key=self.listings.add_key, supersede=self.supersede,
            forget=self.freshness.forget, mark_fresh=self.freshness.mark,
            forget_missing=self._no_longer_missing, check_conflict=self.check_conflict,
            use_bucket=self.use_bucket, installed=self.checkpoint_needed)
        settings.on_change(self._setting_changed)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Background: the nursery downloads run in, so they outlive the open()
        or PULL that started them. Without it (tools, unit tests) a download
        runs inside the request that waits for it."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.listings.nursery = nursery  # directory LISTs outlive their readdir
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self.listings.nursery = None

    def _setting_changed(self, name: str, value: Any) -> None:
        if name in ("download_stall_timeout", "download_stall_bytes"):
            self._set_deadline()
        if name == "pull_concurrency":
            self.downloads.set_concurrency(value)
            self.backend.resize(value)

    def _set_deadline(self) -> None:
        requests = getattr(self.backend, "requests", None)  # fakes in unit tests have none
        if requests is not None:
            requests.set_deadline(self.settings.download_stall_timeout,
                                  self.settings.download_stall_bytes)

    def use_bucket(self, bucket: str) -> None:
        self.buckets_in_use.add(bucket)

    # --- locks and freshness ---------------------------------------------

    def is_busy(self, bucket: str, key: str) -> bool:
        return self.store.is_busy(bucket, key)

    def is_fresh(self, bucket: str, key: str) -> bool:
        """True if the key was checked with S3 within the freshness window."""
        return self.freshness.is_fresh(bucket, key)

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
        for key, result in zip(keys, results, strict=True):
            if isinstance(result, S3PoolError):
                raise type(result)(f"{key}: {result}") from result
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if isinstance(r, str)]

    async def fetch(self, bucket: str, key: str, source: str = "PULL") -> CachedObject:
        """Make the cached copy of a key current and return it (complete and
        installed; a download in flight for the key is waited for, not repeated).

        Bytes that fail their ETag MD5 or checksum (a tier that served a
        damaged or half-synced object) are never installed: the key is
        fetched again, DIGEST_RETRIES times at most, then the PULL fails."""
        changed = False
        for attempt in range(DIGEST_RETRIES + 1):
            try:
                got = await self._current(bucket, key, source)
                if isinstance(got, CachedObject):
                    return got
                return await self._wait_download(got)
            except DigestMismatch as exc:
                if attempt == DIGEST_RETRIES:
                    raise
                self._digest_failed(exc, attempt, bucket, key)
            except VersionChanged as exc:
                if changed:  # the new version once, not a chase of a key that keeps changing
                    raise
                changed = True
                self.freshness.forget(bucket, key)
                log.info("%s; fetching the new version", exc)
            except BackendError as exc:
                # a download from the shared tier that failed: from the origin, then
                if self.tier is None or attempt == DIGEST_RETRIES or \
                        not self.tier.download_failed(bucket, key, exc):
                    raise
        raise AssertionError("unreachable")

    def _digest_failed(self, exc: DigestMismatch, attempt: int, bucket: str, key: str) -> None:
        self.stats.digest_retries += 1
        if self.tier is not None:
            self.tier.download_failed(bucket, key, exc)  # the next try: the origin's bytes
        self.freshness.forget(bucket, key)  # the next try asks S3 again
        log.warning("%s; fetching it again (%d of %d)", exc, attempt + 1, DIGEST_RETRIES)

    async def open(self, bucket: str, key: str) -> Reader:
        """A reader of the current version of a key, for the mount.

        Returns as soon as the ETag check has answered: a cached copy is read
        from its file; a miss shares the download in flight, whose reads wait
        only for the bytes they need. The reader keeps the version it opened.
        """
        for attempt in range(DIGEST_RETRIES + 1):
            try:
                got = await self._current(bucket, key, "the mount", reader=True)
                break
            except DigestMismatch as exc:  # a small object, checked before open returns
                if attempt == DIGEST_RETRIES:
                    raise
                self._digest_failed(exc, attempt, bucket, key)
        if isinstance(got, Reader):
            return got
        if isinstance(got, CachedObject):
            return Reader(None, _open_readonly(got.path), got.meta)
        # no nursery to stream in (tools and unit tests): download, then read the file
        obj = await self._wait_download(got)
        return Reader(None, _open_readonly(obj.path), obj.meta)

    @overload
    async def _current(self, bucket: str, key: str, source: str,
                       reader: Literal[False] = False) -> CachedObject | Download: ...

    @overload
    async def _current(self, bucket: str, key: str, source: str,
                       reader: bool) -> CachedObject | Download | Reader: ...

    async def _current(self, bucket: str, key: str, source: str, reader: bool = False
                       ) -> CachedObject | Download | Reader:
        """The cached copy, or (under the key's lock) a reader of the download
        in flight, or a download this call started."""
        check_bucket(bucket)
        # a path opened on the mount may hold a line break, a PULL's reply may not
        check_key(key, line_break_ok=reader)
        if source != PREFETCH:  # a read-ahead is nobody's request
            self.stats.pulls += 1
        store = self.store
        if not store.is_locked(bucket, key) and self.is_fresh(bucket, key):
            # fast path: nobody is changing this key (no lock exists) and it
            # was checked within the window; no await happens in between
            self.check_conflict(bucket, key)
            obj = store.lookup(bucket, key)
            if obj is not None:
                self.stats.hits += 1
                store.record_access(bucket, key, obj.size)
                return obj
        result: CachedObject | Download | Reader
        async with store.key_lock(bucket, key):
            got = result = await self._fetch_locked(bucket, key, source, whole=not reader)
            if isinstance(got, CachedObject):
                store.record_access(bucket, key, got.size)
                if reader:  # opened under the lock: exactly the version checked
                    result = Reader(None, _open_readonly(got.path), got.meta)
            elif reader and self._nursery is not None:
                result = got.attach_reader()  # no await since the lookup: it is running
        # only now: a typo'd bucket never shows at the mount's root
        self.use_bucket(bucket)
        return result

    async def _wait_download(self, download: Download) -> CachedObject:
        if self._nursery is not None or download.running:
            return await download.wait_installed()
        download.want_everything()
        download.running = True  # other waiters wait for this run, they start none
        async with trio.open_nursery() as nursery:
            nursery.start_soon(download.run)  # it reports its errors to its waiters
        return await download.wait_installed()

    def check_conflict(self, bucket: str, key: str) -> None:
        if self.listings.has_children(bucket, key):
            raise KeyConflict(
                f"key {key!r} is shadowed by keys under {key + '/'!r}: "
                "on disk the directory wins"
            )
        # a parent segment that is a cached *file* is fine: the directory
        # wins and _install removes that file

    async def _fetch_locked(self, bucket: str, key: str, source: str, whole: bool = True
                            ) -> CachedObject | Download:
        """The cached copy or a download. A download for a PULL or a read-ahead
        (*whole*) keeps its pull_concurrency slot until it ends; one an open()
        of the mount started gives it back once its first part is in (it fetches
        only what its readers read, and may idle as long as they keep it open)."""
        self.check_conflict(bucket, key)
        download = self.downloads.get(bucket, key)
        if download is not None:
            return download  # its GET checked the ETag moments ago: share it
        obj = self.store.lookup(bucket, key)
        if obj is not None and self.is_fresh(bucket, key):
            self.stats.hits += 1
            return obj
        slot = object()  # a pull_concurrency slot (downloads.limiter), handed to the download
        await self.downloads.take_slot(slot)
        small = SmallInstall(self.store, bucket, key, self.settings.max_cache_size,
                             self.verifications)
        if self.tier is not None:  # its uploads wait while this host fetches
            self.tier.fetch_began()
        try:
            try:
                tiered = None
                if self.tier is not None:  # the shared tier's bytes, checked by the origin's word
                    tiered = await self.tier.lookup(
                        self.listings, self.settings.freshness_window, bucket, key, obj,
                        small, min(SMALL_OBJECT, self.settings.download_part_size))
                if tiered is not None and obj is not None and not isinstance(
                        tiered, ObjectResponse):  # the origin's check: our copy is current
                    self.stats.hits += 1
                    self.stats.revalidations += 1
                    self.freshness.mark(bucket, key)
                    return obj
                response = tiered if isinstance(tiered, ObjectResponse) else \
                    await self.backend.get_object(
                        bucket, key, if_none_match=obj.meta.get("ETag") if obj else None,
                        read_up_to=min(SMALL_OBJECT, self.settings.download_part_size),
                        then=small,
                        # the first part only: its body ends with it, never closed
                        # while S3 still sends (the other parts are ranged GETs)
                        first_part=self.settings.download_part_size,
                    )
            except NoSuchKey:
                if obj is not None:
                    # deleted on S3: never serve it again
                    await self.store.remove(bucket, key)
                    self.freshness.forget(bucket, key)
                raise
            except BackendError as exc:
                if obj is not None and self.freshness.checked_within(
                        bucket, key, self.settings.stale_on_error):
                    log.warning("S3 failed for s3://%s/%s (%s); serving the copy checked "
                                "%.0fs ago (stale_on_error)", bucket, key, exc,
                                self.freshness.age(bucket, key))
                    self.stats.stale_served += 1
                    return obj
                raise
            if response is None:
                assert obj is not None
                self.stats.hits += 1
                self.stats.revalidations += 1
                self.freshness.mark(bucket, key)
                return obj
            self.stats.misses += 1
            if response.data is not None:  # small: read whole and installed with the headers
                obj = await self._installed_small(bucket, key, response, small, source)
                self.freshness.mark(bucket, key)
                return obj
            download = await self._start_download(bucket, key, response, source)
            if whole and self._nursery is not None:
                self._nursery.start_soon(self.downloads.hold_slot, download, slot)
            else:
                download.take_slot(slot)
            slot = None
        finally:
            if self.tier is not None:  # a download it started counts as busy from now on
                self.tier.fetch_ended()
            if slot is not None:
                self.downloads.release_slot(slot)
        self.freshness.mark(bucket, key)
        return download

    async def _start_download(self, bucket: str, key: str, response: ObjectResponse,
                              source: str) -> Download:
        size = response.content_length
        try:
            await self.room.make_room(size)
            fd, tmp_path = self.store.new_temp("dl", bucket)
        except (NoSpace, OSError):
            response.body.close()
            raise
        transfer = self.transfers.begin(bucket, key, size, source)
        download = Download(self._download_deps, bucket, key, response, fd, tmp_path,
                            transfer, source)
        self.downloads.add(download)
        if self._nursery is not None:
            self._nursery.start_soon(download.run)
        # the mount shows this version's size from now on, while it streams
        await self._note_version(bucket, key, CachedObject("", response.meta))
        return download

    async def _installed_small(self, bucket: str, key: str, response: ObjectResponse,
                               small: SmallInstall, source: str) -> CachedObject:
        """A body read whole, checked and installed in the GET's own worker thread:
        the bookkeeping, then room for it (a small object may overshoot the
        mark by its size until the evictor catches up)."""
        if small.error is not None:
            raise small.error
        size = response.content_length
        obj = self.store.installed(bucket, key, response.meta, small.done)
        if self.tier is not None:  # under the key's lock: the file is this version
            self.tier.installed(bucket, key, obj, response)
        self.checkpoint_needed()
        digest = response.digest
        self.verifications.installed(digest)
        log.info("downloaded s3://%s/%s (%s): %d bytes, %s", bucket, key, source or "-", size,
                 f"{digest.what} verified" if digest is not None else "length verified")
        self.stats.downloads += 1
        self.stats.bytes_downloaded += size
        await self._note_version(bucket, key, obj)
        try:
            await self.room.make_room(0)
        except NoSpace:
            pass  # the evictor's own round reports it
        return obj

    def downloads_in_flight(self) -> int:
        return len(self.downloads)

    def busy(self) -> bool:
        """True while a download runs or a read waits for one (shutdown waits)."""
        return self.downloads.busy()

    def stop_downloads(self, reason: str) -> None:
        """Fail every download in flight (shutdown): its readers get EIO, its PULLs ERROR."""
        self.downloads.stop_all(reason)

    async def install_download(self, download: Download) -> CachedObject:
        """Move a complete, checked download into data/ (the registry's install
        hook, called by the download)."""
        bucket, key, size = download.bucket, download.key, download.size
        async with self.store.key_lock(bucket, key):
            if download.superseded:
                raise BackendError(f"s3://{bucket}/{key} was replaced while it downloaded")
            try:
                obj = await self.store.install(bucket, key, download.tmp_path, download.meta)
                if self.tier is not None:  # under the key's lock: the file is this version
                    self.tier.installed(bucket, key, obj, download.response)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise NoSpace(f"no space left in the cache for s3://{bucket}/{key}") from exc
                raise
            self.checkpoint_needed()
        installed = time.perf_counter()
        seconds = download.fetched_at - download.started
        digest = download.digest
        self.verifications.installed(digest)
        log.info("downloaded s3://%s/%s (%s): %d bytes in %.2fs, %.1f MiB/s, %s; "
                 "verify+install %.3fs", bucket, key, download.source or "-", size,
                 seconds, size / (1 << 20) / max(seconds, 1e-6),
                 f"{digest.what} verified" if digest is not None else "length verified",
                 installed - download.fetched_at)
        self.stats.downloads += 1
        self.stats.bytes_downloaded += size
        return obj

    def checkpoint_needed(self) -> None:
        """Something was installed unsynced; the checkpoint (if any) syncs it soon."""
        if self.on_install is not None:
            self.on_install()

    async def _note_version(self, bucket: str, key: str, obj: CachedObject) -> None:
        """Put the version just installed into the listing index, so GLOB and
        the mount show it (and its size) before the next listing has it."""
        if self.listings.knows_version(bucket, key, obj.etag, obj.size):
            return
        await self.listings.add_key(bucket, ListEntry(key, obj.size, listing_time(obj.meta),
                                                      obj.etag))

    # --- PUSH ------------------------------------------------------------

    async def push(self, bucket: str, key: str, local_path: str) -> str:
        """Upload a local file to s3://bucket/key; the cache then holds the new bytes."""
        return await push_file(self._uploads, bucket, key, local_path)

    def supersede(self, bucket: str, key: str) -> None:
        """The key is being replaced (caller holds its lock): a download in
        flight keeps its readers but is never installed, and the next opener
        starts afresh."""
        self.downloads.supersede(bucket, key)

    def _no_longer_missing(self, bucket: str, key: str) -> None:
        """S3 has the name now: forget that it lacked it (discover's memory)."""
        self.freshness.missing.pop((bucket, key), None)

    def staged_upload(self, bucket: str, key: str, part_size: int, spawn: Any,
                      only_new: bool = True) -> StagedUpload:
        """A new object written through the mount (upload/staged.py)."""
        return StagedUpload(self._uploads, bucket, key, part_size, spawn, only_new)

    async def abort_leftover_uploads(self) -> int:
        """Abort the multipart uploads a killed daemon left (upload/staged.py)."""
        return await abort_leftovers(self._uploads)

    async def delete(self, bucket: str, key: str) -> None:
        """Delete s3://bucket/key on S3 (the PUSH endpoint), then here: the cached
        copy, a download of it in flight, its freshness and its listing entry."""
        async with self.store.key_lock(bucket, key):
            self.supersede(bucket, key)
            await self.push_backend.delete_object(bucket, key)
            await self.store.remove(bucket, key)
            self.freshness.forget(bucket, key)
            self.freshness.note_missing(bucket, key)
            await self.listings.remove_key(bucket, key)

    # --- listings --------------------------------------------------------

    async def refresh(self, bucket: str) -> int:
        self.stats.refreshes_begun += 1
        check_bucket(bucket)
        count = await self.listings.refresh(bucket)
        self.use_bucket(bucket)
        self.stats.refreshes += 1
        return count

    async def ensure_listing(self, bucket: str) -> None:
        if not self.listings.has_index(bucket):
            await self.refresh(bucket)

    async def discover(self, bucket: str, key: str, quiet: bool = True) -> ListEntry | None:
        """Ask S3 about one name the listing lacks (a key written since the
        last refresh, or any name before the bucket's first listing is in):
        a HEAD, then a LIST of one key for a directory of that name. What
        exists goes into the listing index (when there is one) and is
        returned: the key itself, or for a directory the first key under it.
        What does not is remembered for the freshness window, so an ``ls``
        storm of missing names costs S3 nothing. When S3 cannot be asked,
        the name is not there for now (*quiet*), or the error is raised."""
        check_bucket(bucket)
        if self.listings.hidden(key + "/"):
            return None  # s3pool's own .s3pool/ objects are never shown
        if self.freshness.known_missing(bucket, key):
            return None
        try:
            check_key(key, line_break_ok=True)  # a name on the mount
            try:
                meta = await self.backend.head_object(bucket, key)
            except NoSuchKey:
                meta = None
            if meta is not None:
                found = ListEntry(key, meta["ContentLength"], listing_time(meta),
                                  meta.get("ETag") or "")
                await self.listings.add_key(bucket, found)
                return found
            # a directory: one key under it is enough for the index to show it
            under = await self.backend.first_keys(bucket, key + "/", 1)
        except BadKey:
            return None
        except S3PoolError as exc:  # S3 unreachable: the name is just not there now
            log.info("cannot ask S3 about s3://%s/%s: %s", bucket, key, exc)
            if not quiet:
                raise
            return None
        if under:
            await self.listings.add_key(bucket, under[0])
            return under[0]
        self.freshness.note_missing(bucket, key)
        return None

    async def glob(self, bucket: str, pattern: str) -> list[str]:
        """Keys matching *pattern*, from a listing no older than listing_freshness
        for the part of the bucket the pattern can match (listings.fresh_for_glob)."""
        check_bucket(bucket)
        compiled, age, listed = await self.listings.fresh_for_glob(
            bucket, pattern, self.settings.listing_window)
        self.use_bucket(bucket)
        self.stats.globs += 1
        if listed == "the whole bucket":  # a listing taken without a REFRESH (count_refresh)
            self.stats.refreshes_begun += 1
            self.stats.refreshes += 1
        found = await self.listings.glob(bucket, pattern, compiled)
        LISTING_NOTE.set(f"listing {age:.1f}s old, listed again: {listed}")
        log.debug("GLOB s3://%s %r: %d keys from a listing %.1fs old (listed again: %s)",
                  bucket, pattern, len(found), age, listed)
        return found

    async def fresh_dir(self, bucket: str, dir_prefix: str, listed_only: bool = False) -> Any:
        """None if the directory's entries in the index were listed within
        listing_freshness (with *listed_only*, or never: a lookup there asks
        S3 about its one name), else the LIST (a listings.ListJob) bringing
        them up to date, running in the background: readers serve what it
        has merged."""
        check_bucket(bucket)
        job = await self.listings.fresh(bucket, dir_prefix, False,
                                        self.settings.listing_window, listed_only)
        self.use_bucket(bucket)
        return job

    async def look_ahead(self, bucket: str, dir_prefixes: list[str]) -> int:
        """Start listing (one page each) the directories a walk reads next,
        those not listed within listing_freshness (listings.look_ahead)."""
        return await self.listings.look_ahead(bucket, dir_prefixes,
                                              self.settings.listing_window)

    # --- what the mount asks (fs/): names, attributes, S3 and disk state ----

    def has_listing(self, bucket: str) -> bool:
        return self.listings.has_index(bucket)

    def listing_window(self) -> float:
        """Seconds a directory's listing is served before S3 is asked again."""
        return self.settings.listing_window

    async def start_listing(self, bucket: str) -> None:
        """An (empty) listing index for *bucket*, filled as directories are listed."""
        await self.listings.ensure_index(bucket)

    async def listing_idle(self, bucket: str, quiet: float = 0.0) -> None:
        """Once no LIST of *bucket* ran for *quiet* seconds."""
        await self.listings.idle(bucket, quiet)

    def never_listed(self, bucket: str) -> bool:
        return self.listings.never_listed(bucket)

    def last_listed(self, bucket: str, default: float) -> float:
        """When *bucket* was last listed whole (its directories' time on the mount)."""
        return self.listings.last_refresh.get(bucket, default)

    def dir_entry(self, bucket: str, dir_prefix: str, name: str) -> Entry | None:
        return self.listings.lookup(bucket, dir_prefix, name)

    def dir_entries(self, bucket: str, dir_prefix: str,
                    after: tuple[str, bool] | None = None) -> Generator[Entry, None, None]:
        """The directory's entries from the listing index, in order, after *after*;
        ``close()`` ends the index's statement (readdir holds none between calls)."""
        yield from self.listings.iter_children(bucket, dir_prefix, after)

    def key_info(self, bucket: str, key: str) -> tuple[int, float, str] | None:
        """(size, mtime, ETag) of *key* in the listing index, or None."""
        return self.listings.key_info(bucket, key)

    def is_hidden(self, key: str) -> bool:
        """True for s3pool's own objects (.s3pool/), never shown nor written."""
        return self.listings.hidden(key)

    async def key_exists(self, bucket: str, key: str) -> bool:
        """True if s3://bucket/key is an object: the listing index has it, or,
        unless S3 said within the freshness window that it lacks the name, a HEAD."""
        if self.listings.key_info(bucket, key) is not None:
            return True
        if self.freshness.known_missing(bucket, key):
            return False  # the kernel's lookup just asked S3 (discover)
        try:
            await self.backend.head_object(bucket, key)
        except NoSuchKey:
            return False
        return True

    async def bucket_exists(self, bucket: str) -> bool:
        return await self.backend.bucket_exists(bucket)

    def buckets_on_disk(self) -> list[str]:
        return self.layout.buckets_on_disk()

    def has_bucket_dir(self, bucket: str) -> bool:
        return os.path.isdir(self.layout.bucket_dir(bucket))

    def disk_stats(self) -> os.statvfs_result:
        """statvfs of the filesystem the cached files are on."""
        return os.statvfs(self.layout.data_dir)

    def touch(self, bucket: str, key: str) -> None:
        """The key was used (a file read for hours is not least recently used)."""
        self.store.touch(bucket, key)

    def is_locked(self, bucket: str, key: str) -> bool:
        """True while someone opens, pulls, pushes or deletes the key."""
        return self.store.is_locked(bucket, key)

    def is_stopping(self) -> bool:
        return self.backend.stopping.is_set()


class SmallInstall:
    """Run in the worker thread of a small GET: check the body, install it."""

    def __init__(self, store: Store, bucket: str, key: str, max_cache_size: int,
                 verifications: Verifications) -> None:
        self.store = store
        self.verifications = verifications
        self.max_cache_size = max_cache_size
        self.bucket = bucket
        self.key = key
        self.done = Installed([], None)
        self.error: S3PoolError | None = None

    def __call__(self, response: ObjectResponse) -> None:
        bucket, key = self.bucket, self.key
        try:
            cap, size = self.max_cache_size, response.content_length
            if cap and size > cap:  # what the evictor's make_room would say
                raise NoSpace(f"object of {size} bytes is larger than max_cache_size ({cap})")
            if response.digest is not None:
                self.verifications.check(response.digest)  # a mismatch is never installed
            self.done = self.store.install_blocking(bucket, key, None, response.meta,
                                                        response.data)
        except S3PoolError as exc:
            self.error = exc
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self.error = NoSpace(f"no space left in the cache for s3://{bucket}/{key}")
            else:
                self.error = LocalFileError(f"cannot install s3://{bucket}/{key}: "
                                            f"{exc.strerror or exc}")


def _open_readonly(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except OSError:
        pass
    return fd


# the names the mount (fs/) uses of the layers below come through this facade
__all__ = ["Cache", "CachedObject", "Reader", "Stats", "BadKey", "Entry", "IndexFault",
           "ListEntry", "ListJob", "NotSequential", "ObjectExists", "PREFETCH", "StagedUpload",
           "UploadFailed", "check_bucket", "check_key", "visible_name"]
