"""pyfuse3 Operations: the cache as a read-only tree ``BUCKET/KEY``.

A thin adapter over :class:`s3pool.cache.Cache`: names and attributes come
from the bucket's listing index (no S3 request per file for ``ls -l``),
``open()`` goes through ``Cache.open`` (the PULL path: ETag check,
freshness window, single-flight download) and keeps a reader of the
version it opened; ``read()`` is a ``pread`` of the local file, which for
a cold object waits only until the bytes it needs have arrived.

Inode numbers are a hash of (bucket, path, kind): stable for as long as
the name exists, across refreshes and even across mounts, with no table
of every key in memory. Only inodes the kernel currently knows (lookup
count above zero) are kept.

Every error leaves through :data:`ERRNO_FOR`: pyfuse3 handles only
FUSEError, and anything else escaping an op would take the mount down.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from s3pool.cache import Cache, Entry, ListEntry, ListJob, Reader, check_bucket, visible_name
from s3pool.errors import (
    AccessDenied,
    BackendError,
    BadBucket,
    BadKey,
    KeyConflict,
    NoSpace,
    NoSuchBucket,
    NoSuchKey,
    S3PoolError,
    VersionChanged,
)
from s3pool.fs.nodes import ROOT, Node, inode_for, inodes_in
from s3pool.fs.prefetch import Prefetcher
from s3pool.fs.writes import MountWrites

log = logging.getLogger(__name__)

ERRNO_FOR: dict[type[Exception], int] = {
    NoSuchKey: errno.ENOENT,
    NoSuchBucket: errno.ENOENT,
    BadBucket: errno.ENOENT,
    BadKey: errno.ENOENT,
    KeyConflict: errno.EISDIR,
    AccessDenied: errno.EACCES,
    NoSpace: errno.ENOSPC,
    VersionChanged: errno.ESTALE,  # before BackendError, its base: the first match wins
    BackendError: errno.EIO,
}

ATTR_TIMEOUT = 10.0
# a directory just listed from S3 with at most this many subdirectories has
# them listed ahead once it is read (a walk reads them next)
LOOK_AHEAD_DIRS = 64
# a cold bucket's whole listing starts once no directory of it was listed for this long
WHOLE_LISTING_AFTER = 2.0
NEGATIVE_BUCKET_TTL = 30.0

_P = ParamSpec("_P")
_R = TypeVar("_R")


def guarded(op: Callable[_P, Awaitable[_R]]) -> Callable[_P, Coroutine[Any, Any, _R]]:
    """Let only FUSEError leave an operation: pyfuse3 handles nothing else,
    and any other exception escaping an op would take the mount down."""

    @functools.wraps(op)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await op(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except S3PoolError as exc:
            raise fuse_error(exc) from None
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("FUSE %s%r failed", op.__name__, args[1:3])  # after self
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def fuse_error(exc: Exception) -> pyfuse3.FUSEError:
    for kind, code in ERRNO_FOR.items():
        if isinstance(exc, kind):
            return pyfuse3.FUSEError(code)
    return pyfuse3.FUSEError(errno.EIO)


@dataclass
class OpenFile:
    reader: Reader  # the version opened: a cached file, or a download in flight
    inode: int
    bucket: str
    key: str
    etag: str
    direct: bool  # direct_io: bypasses the kernel's page cache and size


class DirHandle:
    def __init__(self, inode: int) -> None:
        self.inode = inode
        self.position = 0  # ordinal of the next entry
        self.after: tuple[str, bool] | None = None  # last entry returned
        # the listing, from after `after`
        self.entries: Generator[Entry, None, None] | None = None
        self.pending: Entry | None = None  # read from entries, not yet returned
        self.buckets: list[str] | None = None  # root only: snapshot of bucket names
        # the LIST bringing this directory up to date (listing_freshness), if it
        # was stale at opendir: entries are served as far as it has merged them
        self.job: ListJob | None = None
        # subdirectories served, while the directory was being listed (job)
        self.subdirs: set[str] | None = None

    def restart(self) -> None:
        self.position, self.after, self.entries, self.pending = 0, None, None, None


def _entry_of(found: ListEntry | None, name: str, key: str) -> Entry | None:
    """The entry *name* from what :meth:`Cache.discover` found for *key*: the
    key itself (a file), or a key under ``key/`` (a directory)."""
    if found is None:
        return None
    if found.key == key:
        return Entry(name, False, found.size, found.mtime, found.etag)
    return Entry(name, True)


def _mtime_of(meta: dict[str, Any]) -> float:
    try:
        return parsedate_to_datetime(meta["LastModified"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return time.time()


class S3PoolOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, cache: Cache, buckets: list[str],
                 spawn: Callable[..., None] | None = None) -> None:
        super().__init__()
        self.cache = cache
        self.spawn = spawn
        self.on_init: Callable[[], None] | None = None  # called once the kernel said hello
        self.pinned_buckets = set(buckets)
        self.nodes: dict[int, Node] = {ROOT: Node("", "", True, lookups=1)}
        self.files: dict[int, OpenFile] = {}
        self.dirs: dict[int, DirHandle] = {}
        self._next_fh = 1
        # inode -> the version whose pages and size the kernel holds
        self._kernel_etag: dict[int, str] = {}
        # inode -> a newer version waiting for the old version's readers to close
        self._pending_switch: dict[int, tuple[str, int, float]] = {}
        self._missing_buckets: dict[str, float] = {}
        # inodes whose size in the kernel may be wrong until an invalidation lands
        self._size_suspect: set[int] = set()
        self._known_buckets: set[str] = set()
        self._listing: set[str] = set()  # buckets whose first listing runs in the background
        # directories listed ahead (bucket, dir prefix), until they are opened
        self._ahead: set[tuple[str, str]] = set()
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.started = time.time()
        self.opens = 0
        self.reads = 0
        self.prefetcher = Prefetcher(cache, spawn)
        self.writes = MountWrites(self)  # --mount-writes (fs/writes.py)

    # --- helpers ---------------------------------------------------------

    def init(self) -> None:
        """The kernel's INIT request is being answered (pyfuse3, blocking)."""
        if self.on_init is not None:
            self.on_init()

    def drop_kernel_pages(self, inode: int) -> None:
        """The kernel's pages of *inode* are not kept at its next open."""
        self._kernel_etag.pop(inode, None)

    def new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def node(self, inode: int) -> Node:
        node = self.nodes.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def file_mode(self) -> int:
        """st_mode of every file (mount_writes and mount_umask decide it)."""
        if self.writes.enabled:
            return stat.S_IFREG | self.writes.mode_of(False)
        return stat.S_IFREG | 0o444

    def file_attrs(self, inode: int, size: int, mtime: float, entry_timeout: float,
                   mode: int) -> pyfuse3.EntryAttributes:
        """attrs() of a file, with what is the same for every file of a
        readdir call worked out once by the caller (file_mode, the entry
        timeout): a cold ls of 100,000 entries makes 100,000 of these."""
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.generation = 0
        attr.entry_timeout = entry_timeout
        attr.attr_timeout = ATTR_TIMEOUT
        attr.st_mode = mode
        attr.st_nlink = 1
        attr.st_size = size
        attr.st_uid = self.uid
        attr.st_gid = self.gid
        attr.st_blksize = 1 << 20
        attr.st_blocks = (size + 511) // 512
        ns = int(mtime * 1e9)
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = ns
        return attr

    def entry_timeout(self) -> float:
        """How long the kernel answers a name it was told without asking: no
        longer than a listing is served (listing_freshness)."""
        return min(ATTR_TIMEOUT, self.cache.listing_window())

    def attrs(self, inode: int, node: Node) -> pyfuse3.EntryAttributes:
        if not node.is_dir:
            return self.file_attrs(inode, node.size, node.mtime, self.entry_timeout(),
                                   self.file_mode())
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.generation = 0
        attr.entry_timeout = self.entry_timeout()
        attr.attr_timeout = ATTR_TIMEOUT
        attr.st_mode = stat.S_IFDIR | 0o555
        if self.writes.enabled:  # default_permissions: the kernel checks these
            attr.st_mode = stat.S_IFDIR | self.writes.mode_of(True)
        attr.st_nlink = 2
        attr.st_size = 0
        attr.st_uid = self.uid
        attr.st_gid = self.gid
        # the I/O size programs like cat and cp use: fewer, larger reads
        attr.st_blksize = 1 << 20
        attr.st_blocks = 0
        ns = int((node.mtime or self.started) * 1e9)
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = ns
        return attr

    def remember(self, node: Node, inode: int | None = None) -> int:
        """Register a node the kernel is about to learn; returns its inode."""
        if inode is None:
            inode = ROOT if not node.bucket else inode_for(node.bucket, node.path, node.is_dir)
        known = self.nodes.get(inode)
        if known is None:
            self.nodes[inode] = node
        else:
            known.size, known.mtime = node.size, node.mtime
            node = known
        node.lookups += 1
        return inode

    def _entry_node(self, bucket: str, dir_prefix: str, entry: Entry) -> Node:
        if entry.is_dir:
            return Node(bucket, dir_prefix + entry.name, True,
                        mtime=self.cache.last_listed(bucket, self.started))
        # the index has every version the cache installed (Cache.fetch and open add it)
        return Node(bucket, dir_prefix + entry.name, False, entry.size, entry.mtime)

    async def _bucket_exists(self, bucket: str) -> bool:
        try:
            check_bucket(bucket)
        except BadBucket:
            return False
        if (bucket in self._known_buckets or bucket in self.pinned_buckets
                or bucket in self.cache.buckets_in_use
                or self.cache.has_bucket_dir(bucket)):
            return True
        missing_since = self._missing_buckets.get(bucket)
        if missing_since is not None and time.monotonic() - missing_since < NEGATIVE_BUCKET_TTL:
            return False
        try:
            exists = await self.cache.bucket_exists(bucket)
        except S3PoolError as exc:
            log.warning("cannot tell whether bucket %s exists: %s", bucket, exc)
            raise fuse_error(exc) from None
        if exists:
            self._known_buckets.add(bucket)
        else:
            self._missing_buckets[bucket] = time.monotonic()
        return exists

    def _listing_or_start(self, bucket: str) -> bool:
        """True if the bucket's listing index is there; if not, make an empty
        one in the background (names are asked of S3 meanwhile), then list
        the bucket, after the directories being read. The mount never waits
        for a whole bucket to be listed, which for millions of keys takes
        minutes: each directory is listed when it is read (and again once it
        is older than listing_freshness)."""
        self.cache.use_bucket(bucket)
        if self.cache.has_listing(bucket):
            return True
        if bucket not in self._listing and self.spawn is not None:
            self._listing.add(bucket)
            self.spawn(self._index_in_background, bucket)
        return False

    async def _index_in_background(self, bucket: str) -> None:
        try:
            await self.cache.start_listing(bucket)
            # __list__ and GLOB want the whole listing: it comes once the
            # LISTs of the directories being read are through (a cold ls of a
            # huge directory should not share S3 and the CPU with it)
            await trio.sleep(WHOLE_LISTING_AFTER)
            await self.cache.listing_idle(bucket, quiet=WHOLE_LISTING_AFTER)
            if self.cache.never_listed(bucket):
                await self.cache.refresh(bucket)
        except S3PoolError as exc:
            log.warning("cannot list bucket %s: %s", bucket, exc)
        finally:
            self._listing.discard(bucket)

    async def _fresh_dir(self, node: Node) -> ListJob | None:
        """The LIST bringing the directory up to listing_freshness, or None if it is."""
        try:
            job: ListJob | None = await self.cache.fresh_dir(node.bucket, node.dir_prefix)
            return job
        except S3PoolError as exc:
            log.warning("cannot list s3://%s/%s: %s", node.bucket, node.dir_prefix, exc)
            raise fuse_error(exc) from None

    async def _fresh_name(self, parent: Node, name: str) -> bool:
        """A lookup in a directory listed longer ago than listing_freshness
        waits until that directory's LIST (readdir's, shared: one per prefix)
        has merged the name (a file, or a subdirectory of that name). A
        directory never listed is left alone: the name is asked of S3 (a
        HEAD), as a first open must not wait for the listing of a huge
        directory. When S3 cannot be asked the index in hand answers. True
        if the name was just listed from S3 (the index's answer is S3's)."""
        if not visible_name(name, at_root=not parent.path):
            return False
        try:
            job: ListJob | None = await self.cache.fresh_dir(
                parent.bucket, parent.dir_prefix, listed_only=True)
        except S3PoolError as exc:
            log.warning("cannot list s3://%s/%s: %s", parent.bucket, parent.dir_prefix, exc)
            return False
        if job is None:
            return False
        position = parent.dir_prefix + name + "/"  # after the key *name*: both merged
        while not job.covers(position):
            await job.changed()
        return job.error is None or not job.done

    async def _ensure_listing(self, bucket: str) -> None:
        try:
            await self.cache.ensure_listing(bucket)
        except S3PoolError as exc:
            log.warning("cannot list bucket %s: %s", bucket, exc)
            raise fuse_error(exc) from None
        self.cache.use_bucket(bucket)

    def bucket_names(self) -> list[str]:
        names = set(self.cache.buckets_on_disk()) | self.pinned_buckets | self._known_buckets
        names |= self.cache.buckets_in_use
        return sorted(n for n in names if visible_name(n, at_root=False))

    # --- lookups and attributes --------------------------------------------

    @guarded
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None
                     ) -> pyfuse3.EntryAttributes:
        parent = self.node(parent_inode)
        text = os.fsdecode(name)
        if text in (".", ".."):
            inode = parent_inode if text == "." else self._parent_inode(parent)
            attrs = await self.getattr(inode)
            self.nodes[inode].lookups += 1  # a lookup reply counts, whatever the name
            return attrs
        if not parent.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if parent_inode == ROOT:
            if not await self._bucket_exists(text):
                raise pyfuse3.FUSEError(errno.ENOENT)
            node = Node(text, "", True, mtime=self.cache.last_listed(text, self.started))
        else:
            listed = self._listing_or_start(parent.bucket)
            # just listed from S3: what the index lacks, S3 lacks (no HEAD)
            relisted = listed and await self._fresh_name(parent, text)
            entry = self.cache.dir_entry(parent.bucket, parent.dir_prefix, text) if listed \
                else None
            if entry is None and not relisted and visible_name(text, at_root=not parent.path):
                # written to S3 since the last listing, or the listing is not in yet
                # (then an S3 that cannot be asked is an error, EIO, not "no such name")
                entry = _entry_of(await self.cache.discover(
                    parent.bucket, parent.dir_prefix + text, quiet=listed),
                    text, parent.dir_prefix + text)
            if entry is None:  # a directory mkdir made (--mount-writes), or none
                entry = self.writes.local_entry(parent.bucket, parent.dir_prefix, text)
            if entry is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            node = self._entry_node(parent.bucket, parent.dir_prefix, entry)
        inode = self.remember(node)
        return self.attrs(inode, self.nodes[inode])

    def _parent_inode(self, node: Node) -> int:
        if not node.bucket:
            return ROOT
        if not node.path:
            return ROOT
        parent_path = node.path.rpartition("/")[0]
        return inode_for(node.bucket, parent_path, True)

    @guarded
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        node = self.node(inode)
        if not node.is_dir:
            info = self.cache.key_info(node.bucket, node.path)
            if info is not None:
                node.size, node.mtime = info[0], info[1]
        return self.attrs(inode, node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        try:
            self._forget(inode_list)
        except Exception:  # forget may not raise at all
            log.exception("FUSE forget failed")

    def _forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            node = self.nodes.get(inode)
            if node is None or inode == ROOT:
                continue
            node.lookups -= count
            if node.lookups <= 0:
                del self.nodes[inode]
                self._kernel_etag.pop(inode, None)

    @guarded
    async def statfs(self, ctx: Any = None) -> pyfuse3.StatvfsData:
        st = self.cache.disk_stats()
        data = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                      "f_ffree", "f_favail", "f_namemax"):
            setattr(data, field, getattr(st, field))
        return data

    # --- directories -----------------------------------------------------

    @guarded
    async def opendir(self, inode: int, ctx: Any = None) -> int:
        node = self.node(inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        handle = DirHandle(inode)
        if inode != ROOT:
            self._listing_or_start(node.bucket)
            handle.job = await self._fresh_dir(node)
            listed_ahead = (node.bucket, node.dir_prefix) in self._ahead
            if listed_ahead:
                self._ahead.discard((node.bucket, node.dir_prefix))
            if (handle.job is not None or listed_ahead) and self.spawn is not None:
                handle.subdirs = set()  # a walk down a tree just listed: look ahead
        fh = self.new_fh()
        self.dirs[fh] = handle
        return fh

    @guarded
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        handle = self.dirs.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        node = self.node(handle.inode)
        if handle.inode == ROOT:
            if handle.buckets is None or start_id == 0:
                handle.buckets = self.bucket_names()
            for position in range(start_id, len(handle.buckets)):
                bucket = handle.buckets[position]
                child = Node(bucket, "", True,
                             mtime=self.cache.last_listed(bucket, self.started))
                inode = inode_for(bucket, "", True)
                if not pyfuse3.readdir_reply(token, os.fsencode(bucket),
                                             self.attrs(inode, child), position + 1):
                    return
                self.remember(child, inode)
            return
        try:
            await self._readdir(handle, node, start_id, token)
        finally:
            # no statement stays open between calls: an open read would hold
            # off the writes of listings merged into the index meanwhile
            if handle.entries is not None:
                handle.entries.close()
                handle.entries = None
                handle.pending = None  # the next call's query starts after `after`

    async def _readdir(self, handle: DirHandle, node: Node, start_id: int, token: Any) -> None:
        if start_id == 0 or start_id != handle.position:
            handle.restart()
            if start_id:
                # the kernel went back to an older offset: walk forward to it
                for passed in self.cache.dir_entries(node.bucket, node.dir_prefix):
                    handle.position += 1
                    handle.after = (passed.name, passed.is_dir)
                    if handle.position == start_id:
                        break
        job = handle.job
        replied = 0
        bucket, dir_prefix = node.bucket, node.dir_prefix
        inode_of = inodes_in(bucket, dir_prefix)
        # one attributes object for every file of this call: readdir_reply
        # copies it into the reply; what differs is set for each file
        file_attrs = self.file_attrs(0, 0, 0.0, self.entry_timeout(), self.file_mode())
        while True:
            entry = handle.pending
            if entry is None:
                if handle.entries is None:
                    handle.entries = self.cache.dir_entries(
                        node.bucket, node.dir_prefix, handle.after)
                try:
                    entry = next(handle.entries)
                except StopIteration:
                    handle.entries = None
                    if job is None or job.done:
                        self._check_job(job, handle)
                        self._look_ahead(handle, node)
                        return
                    entry = None
            # a file is served once the LIST merged past "name/" too: a
            # directory of the same name (which it yields to) may come next
            if job is not None and not job.done and (entry is None or not job.covers(
                    dir_prefix + entry.name + "/")):
                # past what the LIST has merged: serve what this call has, or
                # wait for the next page (an empty reply would end the listing)
                if handle.entries is not None:
                    handle.entries.close()
                    handle.entries = None
                handle.pending = None
                if replied:
                    return
                await job.changed()
                continue
            assert entry is not None
            child = self._entry_node(bucket, dir_prefix, entry)
            inode = inode_of(entry.name, entry.is_dir)
            if entry.is_dir:
                attrs = self.attrs(inode, child)
            else:
                attrs = file_attrs
                attrs.st_ino = inode
                attrs.st_size = entry.size
                attrs.st_blocks = (entry.size + 511) // 512
                attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = int(entry.mtime * 1e9)
            if not pyfuse3.readdir_reply(token, entry.name.encode("utf-8", "surrogateescape"),
                                         attrs, handle.position + 1):
                handle.pending = entry  # did not fit: first in the next call
                return
            handle.pending = None
            replied += 1
            if entry.is_dir and handle.subdirs is not None:
                handle.subdirs.add(entry.name)
                if len(handle.subdirs) > LOOK_AHEAD_DIRS:
                    handle.subdirs = None  # too many to list them all at once
            self.remember(child, inode)
            handle.position += 1
            handle.after = (entry.name, entry.is_dir)

    def _look_ahead(self, handle: DirHandle, node: Node) -> None:
        """The whole directory was served from a LIST just made: its few
        subdirectories are listed now, ahead of find and ls -R which read
        them one after the other next (one page each, a few at a time)."""
        names, handle.subdirs = handle.subdirs, None
        failed = handle.job is not None and handle.job.error is not None
        if names and not failed and self.spawn is not None:
            prefixes = [node.dir_prefix + name + "/" for name in sorted(names)]
            if len(self._ahead) > LOOK_AHEAD_DIRS * 64:
                self._ahead.clear()  # never opened: forgotten
            self._ahead.update((node.bucket, prefix) for prefix in prefixes)
            self.spawn(self._list_ahead, node.bucket, prefixes)

    async def _list_ahead(self, bucket: str, dir_prefixes: list[str]) -> None:
        try:
            await self.cache.look_ahead(bucket, dir_prefixes)
        except S3PoolError as exc:
            log.info("cannot list ahead in s3://%s: %s", bucket, exc)

    @staticmethod
    def _check_job(job: ListJob | None, handle: DirHandle) -> None:
        """A LIST that failed before anything of the directory was served is
        the listing's error (EIO, ENOENT...), not an empty directory."""
        if job is not None and job.error is not None and handle.position == 0:
            if isinstance(job.error, S3PoolError):
                raise fuse_error(job.error)
            raise pyfuse3.FUSEError(errno.EIO)

    @guarded
    async def releasedir(self, fh: int) -> None:
        self.dirs.pop(fh, None)

    # --- files -----------------------------------------------------------

    @guarded
    async def open(self, inode: int, flags: int, ctx: Any = None) -> pyfuse3.FileInfo:
        node = self.node(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            return await self.writes.open_for_write(inode, node, flags, ctx)  # EROFS if off
        # before the open's own fetch: the files ahead download while this one does
        self.prefetcher.opened(node.bucket, node.path)
        try:
            reader = await self.cache.open(node.bucket, node.path)
        except S3PoolError as exc:
            log.warning("open s3://%s/%s failed: %s", node.bucket, node.path, exc)
            raise fuse_error(exc) from None
        except OSError as exc:
            log.warning("open s3://%s/%s failed: %s", node.bucket, node.path, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        self.opens += 1
        etag = reader.etag
        version = (etag, reader.size, _mtime_of(reader.meta))
        fh = self.new_fh()
        info = pyfuse3.FileInfo(fh=fh)
        # Handles that read through the page cache share the kernel's pages
        # and size of this inode, which belong to one version. A handle of
        # an older version keeps reading its own bytes: while one is open, a
        # newer version is served with direct_io and the kernel is switched
        # to it only when the last old reader closes.
        old_readers = any(f.inode == inode and not f.direct and f.etag != etag
                          for f in self.files.values())
        if old_readers:
            info.direct_io = True
            self._pending_switch[inode] = version
        elif inode in self._size_suspect:
            info.direct_io = True  # an invalidation is on its way
        elif version[1] != node.size:
            # the kernel clamps cached reads to the size it was told
            info.direct_io = True
            self._switch_kernel_to(inode, node, version)
        else:
            info.keep_cache = self._kernel_etag.get(inode) == etag
            self._kernel_etag[inode] = etag
        self.files[fh] = OpenFile(reader, inode, node.bucket, node.path, etag,
                                  bool(info.direct_io))
        return info

    def _switch_kernel_to(self, inode: int, node: Node, version: tuple[str, int, float]) -> None:
        """Show *version*'s size and time from now on and drop the kernel's old pages."""
        etag, size, mtime = version
        node.size, node.mtime = size, mtime
        self._kernel_etag.pop(inode, None)
        if self.spawn is not None:
            self._size_suspect.add(inode)
            self.spawn(self._invalidate, inode)

    @guarded
    async def read(self, fh: int, off: int, size: int) -> bytes:
        handle = self.files.get(fh)
        if handle is None:
            # the kernel only reads handles it opened: one we no longer hold was
            # ended by a stop while its reader was at work, an I/O error for it
            raise pyfuse3.FUSEError(errno.EIO)
        self.reads += 1
        try:
            return await handle.reader.read(off, size)
        except S3PoolError as exc:
            log.warning("read of s3://%s/%s failed: %s", handle.bucket, handle.key, exc)
            # the kernel's pages of this version may hold bytes that failed their
            # check: the next open must not keep them
            self._kernel_etag.pop(handle.inode, None)
            raise fuse_error(exc) from None
        except OSError as exc:
            log.warning("read of s3://%s/%s failed: %s", handle.bucket, handle.key, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    @guarded
    async def release(self, fh: int) -> None:
        if fh in self.writes.handles:
            return await self.writes.release(fh)
        handle = self.files.pop(fh, None)
        if handle is None:
            return
        handle.reader.close()
        # reading counts as using: a file read for hours is not least recently used
        self.cache.touch(handle.bucket, handle.key)
        inode = handle.inode
        pending = self._pending_switch.get(inode)
        if pending is not None and not any(
                f.inode == inode and not f.direct and f.etag != pending[0]
                for f in self.files.values()):
            del self._pending_switch[inode]
            node = self.nodes.get(inode)
            if node is not None:
                self._switch_kernel_to(inode, node, pending)

    @guarded
    async def flush(self, fh: int) -> None:
        # close() returns FLUSH's answer: a written file is uploaded there
        if fh in self.writes.handles:
            return await self.writes.flush(fh)
        if self.writes.enabled:
            return  # ENOSYS would stop the kernel sending FLUSH for any file
        # nothing to flush on a read-only view: ENOSYS makes the kernel stop
        # sending FLUSH at every close (one request less per file opened)
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @guarded
    async def fsync(self, fh: int, datasync: bool) -> None:
        if fh in self.writes.handles:
            await self.writes.fsync(fh)

    # --- everything that would write -------------------------------------

    # EROFS unless --mount-writes; with it, see fs/writes.py

    @guarded
    async def setattr(self, inode, attr, fields, fh, ctx):  # type: ignore[no-untyped-def]
        return await self.writes.setattr(inode, attr, fields, fh)

    @guarded
    async def write(self, fh, off, buf):  # type: ignore[no-untyped-def]
        if fh not in self.writes.handles:
            raise pyfuse3.FUSEError(errno.EBADF if self.writes.enabled else errno.EROFS)
        return await self.writes.write(fh, off, buf)

    @guarded
    async def create(self, parent_inode, name, mode, flags, ctx):  # type: ignore[no-untyped-def]
        return await self.writes.create(parent_inode, name, mode, flags, ctx)

    @guarded
    async def mknod(self, parent_inode, name, mode, rdev, ctx):  # type: ignore[no-untyped-def]
        self.writes.refuse()

    @guarded
    async def mkdir(self, parent_inode, name, mode, ctx):  # type: ignore[no-untyped-def]
        return await self.writes.mkdir(parent_inode, name, mode)

    @guarded
    async def unlink(self, parent_inode, name, ctx):  # type: ignore[no-untyped-def]
        await self.writes.unlink(parent_inode, name)

    @guarded
    async def rmdir(self, parent_inode, name, ctx):  # type: ignore[no-untyped-def]
        await self.writes.rmdir(parent_inode, name)

    @guarded
    async def symlink(self, parent_inode, name, target, ctx):  # type: ignore[no-untyped-def]
        self.writes.refuse()

    @guarded
    async def rename(self, parent_old, name_old, parent_new, name_new, flags, ctx):  # type: ignore[no-untyped-def]
        self.writes.refuse()

    @guarded
    async def link(self, inode, new_parent_inode, new_name, ctx):  # type: ignore[no-untyped-def]
        self.writes.refuse()

    async def setxattr(self, inode, name, value, ctx):  # type: ignore[no-untyped-def]
        raise pyfuse3.FUSEError(errno.EROFS)

    async def removexattr(self, inode, name, ctx):  # type: ignore[no-untyped-def]
        raise pyfuse3.FUSEError(errno.EROFS)

    async def _invalidate(self, inode: int) -> None:
        """Drop the kernel's attributes and pages of an inode (never from a handler)."""
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, inode, False)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOSYS):
                log.debug("invalidate_inode(%d) failed: %s", inode, exc)
        self._size_suspect.discard(inode)

    def status_lines(self) -> list[tuple[str, Any]]:
        return [("fuse_opens", self.opens), ("fuse_reads", self.reads),
                ("fuse_open_files", len(self.files)), ("fuse_known_inodes", len(self.nodes)),
                *self.prefetcher.status_lines(), *self.writes.status_lines()]
