"""The store: the one owner of the cached files under ``data/``.

A cached object is ``data/BUCKET/KEY`` plus ``KEY__meta__``. It is served
only if the meta parses and the data file is a regular file of exactly
ContentLength bytes (a file truncated or deleted behind our back is not
served). This module is the only code that looks such an object up,
installs one, or deletes one, and it holds what goes with them: the
per-key locks, the access records (``access.py``) and the bytes reserved
by downloads in progress.

Installing: the complete data file is renamed in after the old meta is
gone, then the new meta is renamed in. Removing: meta first, then data
(``_unlink_object``, the one place that deletes). A crash of the process
at any instant leaves at worst data without meta, which is never served.
Nothing is fsync'ed per object: against a power loss the checkpoint
(``checkpoint.py``) syncs the filesystem every few seconds, and after an
unclean reboot :meth:`Store.reconcile` drops what was installed since the
last sync (``suspect_after``).

Eviction asks :meth:`Store.evict` to remove victims; a victim whose lock
is held is skipped (``acquire_nowait``), so eviction never waits for a key
lock, and nobody waits for eviction while it holds one.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import trio

from s3pool.errors import KeyConflict, NoSpace
from s3pool.store.access import AccessIndex
from s3pool.store.files import new_temp, write_all
from s3pool.store.layout import LIST_NAME, META_SUFFIX, Layout

log = logging.getLogger(__name__)

# parsed metas kept in memory (LRU): a cached PULL then costs two stats
META_MEMORY = 65536
ACCESS_FLUSH_INTERVAL = 1.0


@dataclass
class Installed:
    """What an install did on disk (worker thread), for its bookkeeping."""

    shadowed: list[str]  # cached keys that gave way to the key's directories
    signature: tuple[int, ...] | None  # of the files written (see Store.lookup)


class HasMeta:
    """What an object's meta says, for anything that carries one (``self.meta``)."""

    meta: dict[str, Any]

    @property
    def size(self) -> int:
        return int(self.meta["ContentLength"])

    @property
    def etag(self) -> str:
        return self.meta.get("ETag") or ""


@dataclass
class CachedObject(HasMeta):
    path: str
    meta: dict[str, Any]


class _KeyLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = trio.Lock()
        self.users = 0


class KeyLocks:
    """Single-flight locks, one per (bucket, key), dropped when unused."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], _KeyLock] = {}

    def __contains__(self, ident: tuple[str, str]) -> bool:
        return ident in self._locks

    def held(self) -> int:
        """How many keys are locked or awaited right now."""
        return len(self._locks)

    def is_busy(self, ident: tuple[str, str]) -> bool:
        entry = self._locks.get(ident)
        return entry is not None and entry.users > 0

    def _enter(self, ident: tuple[str, str]) -> _KeyLock:
        entry = self._locks.get(ident)
        if entry is None:
            entry = self._locks[ident] = _KeyLock()
        entry.users += 1
        return entry

    def _leave(self, ident: tuple[str, str], entry: _KeyLock) -> None:
        entry.users -= 1
        if entry.users == 0:
            self._locks.pop(ident, None)

    def hold(self, ident: tuple[str, str]) -> _Held:
        return _Held(self, ident)

    def try_hold(self, ident: tuple[str, str]) -> _Held | None:
        """The lock of *ident* if nobody holds or awaits it (no waiting), else None."""
        if ident in self._locks:
            return None
        entry = self._enter(ident)
        try:
            entry.lock.acquire_nowait()
        except trio.WouldBlock:
            self._leave(ident, entry)
            return None
        held = _Held(self, ident)
        held.entry = entry
        return held


class _Held:
    """``async with locks.hold(ident)``; also the result of try_hold (then
    already acquired: release with :meth:`release`)."""

    def __init__(self, locks: KeyLocks, ident: tuple[str, str]) -> None:
        self.locks = locks
        self.ident = ident
        self.entry: _KeyLock | None = None

    async def __aenter__(self) -> None:
        entry = self.locks._enter(self.ident)
        try:
            await entry.lock.acquire()
        except BaseException:
            self.locks._leave(self.ident, entry)
            raise
        self.entry = entry

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        assert self.entry is not None
        self.entry.lock.release()
        self.locks._leave(self.ident, self.entry)
        self.entry = None


class Store:
    """data/BUCKET/KEY + meta, their locks and their access records."""

    def __init__(self, layout: Layout, access: AccessIndex | None = None) -> None:
        self.layout = layout
        self.access = access or AccessIndex(layout)
        self.locks = KeyLocks()
        self.disk_limiter = trio.CapacityLimiter(8)
        # (bucket, key) -> (stat signature of data and meta files, parsed meta)
        self._meta: OrderedDict[tuple[str, str], tuple[tuple[int, ...], dict[str, Any]]] = \
            OrderedDict()
        self.reserved = 0  # bytes that downloads in progress are about to add
        # set at start-up after an unclean reboot: objects installed after this
        # wall-clock time may be torn, and reconcile() drops them
        self.suspect_after: float | None = None
        self.dropped_unsynced = 0
        self.file_mode = 0o666 & ~_current_umask()

    # --- locks -----------------------------------------------------------

    def key_lock(self, bucket: str, key: str) -> _Held:
        return self.locks.hold((bucket, key))

    def is_busy(self, bucket: str, key: str) -> bool:
        """True while a download, push or open of the key holds its lock."""
        return self.locks.is_busy((bucket, key))

    def is_locked(self, bucket: str, key: str) -> bool:
        """True if any task holds or waits for the key's lock."""
        return (bucket, key) in self.locks

    # --- size accounting -------------------------------------------------

    @property
    def cache_bytes(self) -> int:
        """Bytes cached plus bytes that downloads in progress will add."""
        return self.access.total_bytes + self.reserved

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Count *nbytes* as used while a download of them runs."""
        self.reserved += nbytes
        try:
            yield
        finally:
            self.reserved -= nbytes

    # --- lookup ----------------------------------------------------------

    def lookup(self, bucket: str, key: str) -> CachedObject | None:
        """The complete cached copy of a key, or None (a stat or two; trio thread).

        Raises KeyConflict when a directory holds the key's place.
        """
        path = self.layout.object_path(bucket, key)
        try:
            st = os.stat(path)
        except OSError:  # missing, or a parent that is a file (ENOTDIR)
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
        signature = _signature(st, meta_st)
        ident = (bucket, key)
        known = self._meta.get(ident)
        if known is not None and known[0] == signature:
            self._meta.move_to_end(ident)
            return CachedObject(path, known[1])
        try:
            with open(path + META_SUFFIX, "rb") as f:
                meta = json.loads(f.read())
            size = int(meta["ContentLength"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if st.st_size != size:
            return None
        self._remember_meta(ident, signature, meta)
        return CachedObject(path, meta)

    def _remember_meta(self, ident: tuple[str, str], signature: tuple[int, ...],
                       meta: dict[str, Any]) -> None:
        self._meta[ident] = (signature, meta)
        self._meta.move_to_end(ident)
        if len(self._meta) > META_MEMORY:
            self._meta.popitem(last=False)

    # --- temp files ------------------------------------------------------

    def new_temp(self, who: str, hint: str = "") -> tuple[int, str]:
        """An open, empty, private file in tmp/ (fd, path) made by *who*
        (store/files.py's new_temp); the caller removes it."""
        return new_temp(self.layout.tmp_dir, who, hint)

    # --- install and remove (caller holds the key's lock) ----------------

    async def install(self, bucket: str, key: str, tmp_path: str | None,
                      meta: dict[str, Any], data: bytes | None = None) -> CachedObject:
        """Move a complete temp file into data/ with its meta; with *data* instead
        of a temp file, the bytes are written to one first (same worker thread)."""
        try:
            done = await trio.to_thread.run_sync(
                self.install_blocking, bucket, key, tmp_path, meta, data,
                limiter=self.disk_limiter,
            )
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(f"no space left in the cache for s3://{bucket}/{key}") from exc
            raise
        return self.installed(bucket, key, meta, done)

    def install_blocking(self, bucket: str, key: str, tmp_path: str | None,
                         meta: dict[str, Any], data: bytes | None = None) -> Installed:
        """The file work of :meth:`install`, for a worker thread that already
        runs (a small GET's); then call :meth:`installed` on the trio thread."""
        path = self.layout.object_path(bucket, key)
        return self._install_files(bucket, key, path, tmp_path, meta, data)

    def installed(self, bucket: str, key: str, meta: dict[str, Any], done: Installed
                  ) -> CachedObject:
        """The bookkeeping of an install (trio thread). The meta just written is
        remembered with its files' signature: the first lookup of the key (the
        open after a read-ahead) then reads no meta file."""
        path = self.layout.object_path(bucket, key)
        for dropped in done.shadowed:
            self._forget(bucket, dropped)
        self._meta.pop((bucket, key), None)
        if done.signature is not None:
            self._remember_meta((bucket, key), done.signature,
                                {**meta, "Metadata": dict(meta.get("Metadata") or {})})
        self.access.record(bucket, key, int(meta["ContentLength"]))
        return CachedObject(path, meta)

    def _install_files(self, bucket: str, key: str, path: str, tmp_path: str | None,
                       meta: dict[str, Any], data: bytes | None = None) -> Installed:
        """Blocking part of install (worker thread): the keys it displaced, and
        the signature of the files it wrote.

        Nothing is fsync'ed here (see the module docstring): the renames
        order data before meta for the process, the checkpoint covers the
        machine.
        """
        if tmp_path is None:
            fd, tmp_path = self.new_temp("dl", bucket)
            try:
                write_all(fd, memoryview(data or b""), 0)
            except BaseException:
                os.close(fd)
                _unlink(tmp_path)
                raise
            os.close(fd)
        os.chmod(tmp_path, self.file_mode)  # new_temp made it 0600
        fd, tmp_meta = self.new_temp("meta", bucket)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(meta, indent=4).encode() + b"\n")
            os.chmod(tmp_meta, self.file_mode)
            shadowed: list[str] = []
            for attempt in range(3):
                shadowed += self._make_parents(bucket, key)
                _unlink(path + META_SUFFIX)  # the old version's meta goes first
                try:
                    os.rename(tmp_path, path)
                    break
                except FileNotFoundError:
                    # the evictor removed an emptied parent directory meanwhile
                    if attempt == 2:
                        raise
                except IsADirectoryError:
                    raise KeyConflict(
                        f"key {key!r} is shadowed by a directory of the same name") from None
            os.rename(tmp_meta, path + META_SUFFIX)
        finally:
            _unlink(tmp_meta)
            if data is not None:
                _unlink(tmp_path)  # still there if a rename failed
        try:
            signature: tuple[int, ...] | None = _signature(os.stat(path),
                                                           os.stat(path + META_SUFFIX))
        except OSError:
            signature = None
        return Installed(shadowed, signature)

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
                    _unlink_object(current)
                    os.mkdir(current)
                    shadowed.append(shadowed_key)
            except FileNotFoundError:
                os.makedirs(current, exist_ok=True)
        return shadowed

    async def remove(self, bucket: str, key: str) -> None:
        """Drop a cached object (meta first, then data). Caller holds its lock."""
        path = self.layout.object_path(bucket, key)
        await trio.to_thread.run_sync(_unlink_object, path, limiter=self.disk_limiter)
        self._forget(bucket, key)

    def _forget(self, bucket: str, key: str) -> None:
        self._meta.pop((bucket, key), None)
        self.access.forget(bucket, key)

    # --- eviction --------------------------------------------------------

    async def evict(self, victims: list[tuple[str, str, int, float]]) -> tuple[int, int, int]:
        """Remove the victims (bucket, key, size, atime) that are free right now
        and not used since *atime*; returns (bytes freed, objects removed,
        victims taken: the others stay, in use).

        A victim whose key lock is held or awaited is skipped: eviction
        never waits for a key lock.
        """
        held: list[tuple[tuple[str, str, int, float], _Held]] = []
        for victim in victims:
            lock = self.locks.try_hold((victim[0], victim[1]))
            if lock is not None:
                held.append((victim, lock))
        try:
            # a victim used since it was chosen stays (its access is newer)
            chosen = [v for v, _ in held if not self._used_since(v[0], v[1], v[3])]
            paths = [self.layout.object_path(b, k) for b, k, _, _ in chosen]
            freed = await trio.to_thread.run_sync(
                _delete_objects, self.layout.data_dir, paths, limiter=self.disk_limiter)
            for bucket, key, _, _ in chosen:
                self._forget(bucket, key)
            # an object already gone (another pass took it) frees nothing
            return sum(freed), sum(1 for gone in freed if gone), len(chosen)
        finally:
            for _, lock in held:
                lock.release()

    def _used_since(self, bucket: str, key: str, atime: float) -> bool:
        pending = self.access.pending_atime(bucket, key)
        return pending is not None and pending > atime

    # --- access records --------------------------------------------------

    def record_access(self, bucket: str, key: str, size: int) -> None:
        self.access.record(bucket, key, size)

    def touch(self, bucket: str, key: str) -> None:
        self.access.touch(bucket, key)

    async def flush_access(self) -> None:
        await self.access.flush()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Background: write access records to disk about once a second."""
        task_status.started()
        while True:
            await trio.sleep(ACCESS_FLUSH_INTERVAL)
            try:
                await self.access.flush()
            except Exception:
                log.exception("writing access records failed; retrying")

    # --- start-up --------------------------------------------------------

    def reconcile(self) -> tuple[int, int]:
        """Blocking: make the access index agree with data/ after a restart or a crash."""
        counts = self.access.reconcile(self._walk(time.time()))
        if self.dropped_unsynced:
            log.warning("the machine went down since the last checkpoint: dropped %d objects "
                        "installed after it (they are fetched again when asked for)",
                        self.dropped_unsynced)
        return counts

    def _walk(self, started: float) -> Iterator[tuple[str, str, int, float]]:
        """Yield (bucket, key, size, atime) of every complete cached object.

        Half objects older than a minute are deleted on the way (data
        without meta: a crash between the two renames; meta without data);
        younger ones may be a download in progress and are left be.
        """
        data_dir = self.layout.data_dir
        for bucket in self.layout.buckets_on_disk():
            root = os.path.join(data_dir, bucket)
            stack = [("", root)]
            while stack:
                prefix, path = stack.pop()
                try:
                    entries = list(os.scandir(path))
                except OSError:
                    continue
                names = {e.name for e in entries}
                for entry in entries:
                    name = entry.name
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((prefix + name + "/", entry.path))
                        continue
                    if not prefix and name == LIST_NAME:
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    orphan_ok = st.st_mtime < started - 60
                    if name.endswith(META_SUFFIX):
                        if name[: -len(META_SUFFIX)] not in names and orphan_ok:
                            _remove_orphan(entry.path[: -len(META_SUFFIX)])
                        continue
                    if name + META_SUFFIX not in names:
                        if orphan_ok:
                            _remove_orphan(entry.path)
                        continue
                    if self.suspect_after is not None and self._installed_after(
                            entry.path, st, self.suspect_after):
                        _unlink_object(entry.path)
                        self.dropped_unsynced += 1
                        continue
                    yield bucket, prefix + name, st.st_size, max(st.st_atime, st.st_mtime)


    @staticmethod
    def _installed_after(path: str, st: os.stat_result, moment: float) -> bool:
        """True if the object at *path* was installed (renamed, meta written) after *moment*."""
        if st.st_ctime > moment:
            return True
        try:
            return os.stat(path + META_SUFFIX).st_mtime > moment
        except OSError:
            return True


def _unlink(path: str) -> int:
    """Remove a file if it is there; its size, or 0."""
    try:
        size = os.lstat(path).st_size
        os.unlink(path)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return 0
    return size


def _unlink_object(path: str) -> int:
    """The one way a cached object leaves data/: meta first, then data.

    Returns the data bytes freed (0 if there was no data file).
    """
    _unlink(path + META_SUFFIX)
    return _unlink(path)


def _remove_orphan(path: str) -> None:
    if _unlink_object(path):
        log.info("removed orphan %s", path)
    else:
        log.info("removed orphan %s%s", path, META_SUFFIX)


def _delete_objects(data_dir: str, paths: list[str]) -> list[int]:
    """Blocking: remove objects, then the directories that emptied."""
    freed = [_unlink_object(path) for path in paths]
    parents = {os.path.dirname(path) for path in paths}
    # drop directories the evictions emptied, deepest first, never a BUCKETDIR
    for parent in sorted(parents, key=len, reverse=True):
        while os.path.dirname(parent) != data_dir and parent.startswith(data_dir + os.sep):
            try:
                os.rmdir(parent)
            except OSError:
                break
            parent = os.path.dirname(parent)
    return freed


def _current_umask() -> int:
    # read it once at start-up, before any worker thread creates files
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _signature(st: os.stat_result, meta_st: os.stat_result) -> tuple[int, ...]:
    """What tells that an object's two files are still the ones a meta was read from."""
    return (st.st_ino, st.st_size, st.st_mtime_ns, meta_st.st_ino, meta_st.st_mtime_ns)


__all__ = ["Store", "CachedObject", "KeyLocks"]

