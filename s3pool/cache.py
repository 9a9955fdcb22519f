"""The cache: PULL, PUSH, GLOB and REFRESH over the local copy of S3.

The control socket and the FUSE view are thin adapters over this module;
both reach S3 through :meth:`Cache.fetch`, so a PULL and an ``open()`` of
the same key share one download, one freshness record and one lock.

A cached object is ``data/BUCKET/KEY`` plus ``KEY__meta__``. It is served
only if the meta file parses and the data file's size equals the meta's
ContentLength. Installing a new version: the old meta goes first, the
data file is renamed in (after fsync), the directory is synced, then the
new meta is renamed in. A crash at any point leaves at worst data without
meta, which is not served.
"""

from __future__ import annotations

import contextvars
import errno
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Callable

import trio

from .access import AccessIndex
from .backend import Backend, ListEntry, ObjectResponse
from .errors import (
    BadKey, BackendError, KeyConflict, LocalFileError, NoSpace, NoSuchKey,
    S3PoolError,
)
from .layout import META_SUFFIX, Layout, check_bucket, check_key, unlink_quietly
from .listing import Listings
from .settings import Settings
from .transfer import Digest, Transfer, Transfers

log = logging.getLogger(__name__)

# objects this large are fetched as parallel ranged GETs of RANGE_PART bytes
RANGED_THRESHOLD = 64 << 20
RANGE_PART = 16 << 20
RANGE_CONCURRENCY = 4

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
    bytes_downloaded: int = 0
    pushes: int = 0
    bytes_uploaded: int = 0
    globs: int = 0
    refreshes: int = 0
    errors: int = 0
    evictions: int = 0
    bytes_evicted: int = 0


@dataclass
class CachedObject:
    path: str
    meta: dict[str, Any]
    handle: Any = None  # what fetch()'s opener returned, if one was given

    @property
    def size(self) -> int:
        return int(self.meta["ContentLength"])


class _KeyLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = trio.Lock()
        self.users = 0


class Cache:
    """The one path from a request (socket or FUSE) to S3 and the disk."""

    def __init__(self, layout: Layout, backend: Backend, settings: Settings,
                 access: AccessIndex, listings: Listings | None = None) -> None:
        self.layout = layout
        self.backend = backend
        self.settings = settings
        self.access = access
        self.listings = listings or Listings(layout, backend)
        self.stats = Stats()
        self.download_limiter = trio.CapacityLimiter(settings.pull_concurrency)
        self.disk_limiter = trio.CapacityLimiter(8)
        self.range_limiter = trio.CapacityLimiter(RANGE_CONCURRENCY)
        self.transfers = Transfers(settings, backend.stopping)  # downloads in flight
        self._key_locks: dict[tuple[str, str], _KeyLock] = {}
        self._checked: dict[tuple[str, str], float] = {}  # last ETag check, monotonic
        # (bucket, key) -> (stat signature of data and meta files, parsed meta)
        self._meta_cache: dict[tuple[str, str], tuple[tuple[int, ...], dict[str, Any]]] = {}
        self.buckets_in_use: set[str] = set()
        # set by the evictor: called with the bytes a download is about to add
        self.make_room: Callable[[int], Any] | None = None
        self.on_bucket_used: Callable[[str], None] | None = None
        settings.on_change(self._setting_changed)

    def _setting_changed(self, name: str, value: Any) -> None:
        if name == "pull_concurrency":
            self.download_limiter.total_tokens = value

    def use_bucket(self, bucket: str) -> None:
        if bucket not in self.buckets_in_use:
            self.buckets_in_use.add(bucket)
            if self.on_bucket_used:
                self.on_bucket_used(bucket)

    # --- locks and freshness ---------------------------------------------

    def key_lock(self, bucket: str, key: str) -> "_LockedKey":
        return _LockedKey(self, (bucket, key))

    def is_busy(self, bucket: str, key: str) -> bool:
        """True while a download, push or open of the key holds its lock."""
        entry = self._key_locks.get((bucket, key))
        return entry is not None and entry.users > 0

    def _is_fresh(self, bucket: str, key: str) -> bool:
        return self._checked_within(bucket, key, self.settings.freshness_window)

    def _checked_within(self, bucket: str, key: str, seconds: float) -> bool:
        checked = self._checked.get((bucket, key))
        return checked is not None and trio.current_time() - checked < seconds

    def _mark_fresh(self, bucket: str, key: str) -> None:
        now = trio.current_time()
        self._checked[(bucket, key)] = now
        if len(self._checked) > 100_000:
            horizon = now - max(self.settings.freshness_window, self.settings.stale_on_error)
            self._checked = {k: t for k, t in self._checked.items() if t >= horizon}

    # --- reading what is on disk -----------------------------------------

    def cached(self, bucket: str, key: str) -> CachedObject | None:
        """The complete cached copy of a key, or None.

        Complete means: the meta parses and the data file is a regular file
        of exactly ContentLength bytes (a file truncated or deleted behind
        our back is not served).
        """
        path = self.layout.object_path(bucket, key)
        try:
            st = os.stat(path)
        except OSError:
            return None
        if stat.S_ISDIR(st.st_mode):
            raise KeyConflict(
                f"key {key!r} is shadowed by keys under {key + '/'!r}: on disk the directory wins"
            )
        if not stat.S_ISREG(st.st_mode):
            return None
        try:
            meta_st = os.stat(path + META_SUFFIX)
        except OSError:
            return None
        # the parsed meta is kept while both files are the ones it was read from
        signature = (st.st_ino, st.st_size, st.st_mtime_ns, meta_st.st_ino, meta_st.st_mtime_ns)
        known = self._meta_cache.get((bucket, key))
        if known is not None and known[0] == signature:
            meta = known[1]
        else:
            try:
                with open(path + META_SUFFIX, "rb") as f:
                    meta = json.loads(f.read())
                size = int(meta["ContentLength"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
            if st.st_size != size:
                return None
            if len(self._meta_cache) >= 50_000:
                self._meta_cache.clear()
            self._meta_cache[(bucket, key)] = (signature, meta)
        return CachedObject(path, meta)

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
        self.use_bucket(bucket)
        self.stats.pulls += 1
        DOWNLOAD_SOURCE.set("the mount" if opener is not None else "PULL")
        if (bucket, key) not in self._key_locks and self._is_fresh(bucket, key):
            # fast path: nobody is changing this key (no lock exists) and it
            # was checked within the window; no await happens in between
            self._check_conflict(bucket, key)
            obj = self.cached(bucket, key)
            if obj is not None:
                self.stats.hits += 1
                self.access.record(bucket, key, obj.size)
                if opener is not None:
                    obj.handle = opener(obj.path)
                return obj
        async with self.key_lock(bucket, key):
            obj = await self._fetch_locked(bucket, key)
            self.access.record(bucket, key, obj.size)
            if opener is not None:
                obj.handle = opener(obj.path)
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
                    await self._remove(bucket, key)
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
            obj = await self._download(bucket, key, response)
        self._mark_fresh(bucket, key)
        return obj

    async def _download(self, bucket: str, key: str, response: ObjectResponse) -> CachedObject:
        size = response.content_length
        if self.make_room is not None:
            try:
                await self.make_room(size)
            except NoSpace:
                response.body.close()
                raise
        started = time.perf_counter()
        transfer = self.transfers.begin(bucket, key, size, DOWNLOAD_SOURCE.get())
        fd, tmp_path = tempfile.mkstemp(prefix="dl.", dir=self.layout.tmp_dir)
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
                await trio.to_thread.run_sync(os.fsync, fd, limiter=self.disk_limiter)
                synced = time.perf_counter()
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise NoSpace(f"no space left in the cache for s3://{bucket}/{key}") from exc
                raise
            except NoSpace as exc:
                raise NoSpace(f"no space left in the cache for s3://{bucket}/{key}") from exc
            finally:
                os.close(fd)
                self.transfers.end(transfer)
            try:
                obj = await self._install(bucket, key, tmp_path, response.meta)
            except OSError as exc:  # the meta file's write
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise NoSpace(f"no space left in the cache for s3://{bucket}/{key}") from exc
                raise
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
                                              limiter=self.disk_limiter)

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
            # one error for the client: a full disk first, else the first part's
            errors = _leaves(group)
            if not all(isinstance(e, S3PoolError) for e in errors):
                raise
            raise next((e for e in errors if isinstance(e, NoSpace)), errors[0]) from group
        return written[0]

    async def _install(self, bucket: str, key: str, tmp_path: str, meta: dict[str, Any]
                       ) -> CachedObject:
        """Move a complete, synced temp file into data/ with its meta."""
        path = self.layout.object_path(bucket, key)
        meta_path = path + META_SUFFIX
        meta_bytes = json.dumps(meta, indent=4).encode() + b"\n"
        fd, tmp_meta = tempfile.mkstemp(prefix="meta.", dir=self.layout.tmp_dir)
        with os.fdopen(fd, "wb") as f:
            f.write(meta_bytes)
        try:
            shadowed = await trio.to_thread.run_sync(
                self._install_files, bucket, key, path, meta_path, tmp_path, tmp_meta,
                limiter=self.disk_limiter,
            )
        except OSError as exc:
            unlink_quietly(tmp_meta)
            if exc.errno == errno.ENOSPC:
                raise NoSpace(f"no space left in the cache for s3://{bucket}/{key}") from exc
            raise
        for dropped in shadowed:
            self.forget_cached(bucket, dropped)
        self._meta_cache.pop((bucket, key), None)
        return CachedObject(path, meta)

    def _install_files(self, bucket: str, key: str, path: str, meta_path: str,
                       tmp_path: str, tmp_meta: str) -> list[str]:
        """Blocking part of _install (worker thread); returns keys it displaced.

        The meta file is not fsync'ed: after a crash a missing or garbled meta
        only means the object is not cached. The data is synced before its
        rename and the directory after it, so a meta that survives a crash
        always describes the data beside it.
        """
        shadowed: list[str] = []
        for attempt in range(3):
            shadowed += self._make_parents(bucket, key)
            unlink_quietly(meta_path)  # the old version's meta goes first
            try:
                os.rename(tmp_path, path)
                break
            except FileNotFoundError:
                # the evictor removed an emptied parent directory meanwhile
                if attempt == 2:
                    raise
            except IsADirectoryError:
                raise KeyConflict(f"key {key!r} is shadowed by a directory of the same name")
        _fsync_dir(os.path.dirname(path))
        os.rename(tmp_meta, meta_path)
        return shadowed

    def _make_parents(self, bucket: str, key: str) -> list[str]:
        """Create the directories of *key*; a cached file in the way yields (dir wins)."""
        shadowed: list[str] = []
        current = self.layout.bucket_dir(bucket)
        os.makedirs(current, exist_ok=True)
        parts = key.split("/")[:-1]
        for i, part in enumerate(parts):
            current = os.path.join(current, part)
            try:
                os.mkdir(current)
            except FileExistsError:
                if not os.path.isdir(current):
                    shadowed_key = "/".join(parts[: i + 1])
                    log.info("s3://%s/%s: key becomes a directory, dropping the cached file",
                             bucket, shadowed_key)
                    unlink_quietly(current + META_SUFFIX)
                    unlink_quietly(current)
                    os.mkdir(current)
                    shadowed.append(shadowed_key)
            except FileNotFoundError:
                os.makedirs(current, exist_ok=True)
        return shadowed

    async def _remove(self, bucket: str, key: str) -> None:
        """Drop a cached object (meta first, then data). Caller holds its lock."""
        path = self.layout.object_path(bucket, key)
        unlink_quietly(path + META_SUFFIX)
        unlink_quietly(path)
        self.forget_cached(bucket, key)

    def forget_cached(self, bucket: str, key: str) -> None:
        """Drop what memory holds about a cached object that left the disk."""
        self._checked.pop((bucket, key), None)
        self._meta_cache.pop((bucket, key), None)
        self.access.forget(bucket, key)

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
        async with self.key_lock(bucket, key):
            self._check_conflict(bucket, key)
            self.cached(bucket, key)  # raises KeyConflict for a directory on disk
            # whatever happens next, the old cached bytes are not served again
            await self._remove(bucket, key)
            tmp_path = await self._copy_for_push(local_path, st.st_size)
            try:
                # upload the copy when there is one: what is uploaded is then
                # exactly what is installed, even if the caller rewrites its file
                await self.backend.upload_file(bucket, key, tmp_path or local_path)
                self.stats.pushes += 1
                self.stats.bytes_uploaded += st.st_size
                meta = await self.backend.head_object(bucket, key)
                if tmp_path and meta["ContentLength"] == os.path.getsize(tmp_path):
                    await self._install(bucket, key, tmp_path, meta)
                    self._mark_fresh(bucket, key)
                    self.access.record(bucket, key, meta["ContentLength"])
                await self.listings.add_key(bucket, ListEntry(
                    key, meta["ContentLength"], _listing_time(meta), meta.get("ETag") or ""))
            finally:
                if tmp_path:
                    unlink_quietly(tmp_path)
        return self.layout.object_path(bucket, key)

    async def _copy_for_push(self, local_path: str, size: int) -> str | None:
        """A synced copy of *local_path* in tmp/, or None if the cache has no room."""
        try:
            if self.make_room is not None:
                await self.make_room(size)
        except NoSpace:
            log.info("%s (%d bytes) does not fit in the cache: uploading it uncached",
                     local_path, size)
            return None
        fd, tmp_path = tempfile.mkstemp(prefix="push.", dir=self.layout.tmp_dir)
        os.close(fd)
        try:
            await trio.to_thread.run_sync(_copy_and_sync, local_path, tmp_path,
                                          limiter=self.disk_limiter)
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

    async def glob(self, bucket: str, pattern: str) -> list[str]:
        check_bucket(bucket)
        await self.ensure_listing(bucket)
        self.use_bucket(bucket)
        self.stats.globs += 1
        return await self.listings.glob(bucket, pattern)


class _LockedKey:
    """``async with cache.key_lock(b, k)``: the single-flight lock of one key."""

    def __init__(self, cache: Cache, ident: tuple[str, str]) -> None:
        self.cache = cache
        self.ident = ident

    async def __aenter__(self) -> None:
        entry = self.cache._key_locks.get(self.ident)
        if entry is None:
            entry = self.cache._key_locks[self.ident] = _KeyLock()
        entry.users += 1
        try:
            await entry.lock.acquire()
        except BaseException:
            self._release_user(entry)
            raise
        self.entry = entry

    async def __aexit__(self, *exc: object) -> None:
        self.entry.lock.release()
        self._release_user(self.entry)

    def _release_user(self, entry: _KeyLock) -> None:
        entry.users -= 1
        if entry.users == 0:
            self.cache._key_locks.pop(self.ident, None)


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return out


def _listing_time(meta: dict[str, Any]) -> float:
    try:
        return parsedate_to_datetime(meta["LastModified"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return time.time()


def _copy_and_sync(src: str, dst: str) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["Cache", "CachedObject", "Stats", "BadKey"]
