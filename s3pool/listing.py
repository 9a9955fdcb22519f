"""Bucket listings: ``__list__`` for other tools and an index for us.

A REFRESH streams the bucket's listing page by page (never the whole
listing in memory) into two files built in ``tmp/``: the plain
``__list__`` (one key a line, as the original wrote it) and the index,
a SQLite table of (key, size, mtime, etag) ordered by key. The index is
renamed to ``state/listings/BUCKET/index.db`` (outside the key namespace:
no key can reach it or its journals), then ``__list__`` into the
BUCKETDIR, so a reader sees the old listing or the new one, never a mix.
GLOB, the FUSE view's lookups and readdir all query the index by key
range instead of scanning the listing.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Protocol

import trio

from .backend import Backend, ListEntry
from .errors import NoSpace, S3PoolError, ShuttingDown
from .globpattern import compile_glob
from .layout import META_SUFFIX, RESERVED_ROOT_NAMES, Layout, has_line_break
from .published import DEFAULT_KEY, HIDDEN_ROOT, is_hidden

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE keys (key TEXT PRIMARY KEY, size INTEGER, mtime REAL, etag TEXT) WITHOUT ROWID;
CREATE TABLE info (name TEXT PRIMARY KEY, value);
CREATE TABLE local_adds (key TEXT PRIMARY KEY, added_at REAL) WITHOUT ROWID;
"""
# keys put into the index here (add_key), with when: kept over a published
# listing taken before then
_LOCAL_ADDS = "CREATE TABLE IF NOT EXISTS local_adds (key TEXT PRIMARY KEY, added_at REAL) " \
    "WITHOUT ROWID"
# Sorts after every character a key can hold: the end of a prefix range.
_TOP = chr(0x10FFFF)
# has_children answers kept per bucket (all forgotten when it is full)
CHILDREN_MEMORY = 1 << 16
# keys a GLOB scan matches between two looks at the stopping flag
_STOP_CHECK_EVERY = 128
# keys with a line break named in the log per listing (then only counted)
LINE_BREAKS_LOGGED = 20


@dataclass(frozen=True)
class Entry:
    """A name inside a bucket directory of the FUSE view."""

    name: str
    is_dir: bool
    size: int = 0
    mtime: float = 0.0
    etag: str = ""


def same_etag(a: str | None, b: str | None) -> bool:
    """ETags from LIST and GET compare equal with or without their quotes."""
    return (a or "").strip('"') == (b or "").strip('"')


def prefix_upper(prefix: str) -> str:
    return prefix + _TOP


def visible_name(name: str, at_root: bool) -> bool:
    """Can *name* be shown as one path component of the FUSE view?"""
    if name in ("", ".", "..") or name.endswith(META_SUFFIX):
        return False
    if at_root and (name in RESERVED_ROOT_NAMES or name == HIDDEN_ROOT):
        return False
    return len(name.encode("utf-8", "surrogatepass")) <= 255


class FleetHooks(Protocol):
    """The published listing's part in a refresh (fleet.FleetListings)."""

    async def fetch(self, bucket: str) -> int | None: ...

    async def listed(self, bucket: str, listed_at: float) -> None: ...


class Listings:
    """Per-bucket listing files: refresh them, query them."""

    def __init__(self, layout: Layout, backend: Backend) -> None:
        self.layout = layout
        self.backend = backend
        # the published listing (fleet.py sets these): where it is, and what
        # fetches it instead of a LIST and publishes after one
        self.published_key = DEFAULT_KEY
        self.fleet: FleetHooks | None = None
        self._locks: dict[str, trio.Lock] = {}
        self._conns: dict[str, tuple[int, sqlite3.Connection]] = {}
        # has_children answers per bucket, for the index the connection has open
        # (an open and a PULL each ask; inserts clear it, a new index drops it)
        self._children: dict[str, dict[str, bool]] = {}
        self.last_refresh: dict[str, float] = {}
        # listings of a bucket started / finished: a caller that waited while
        # a listing which started after its request ran is served by that one
        self._started: dict[str, int] = {}
        self._finished: dict[str, int] = {}
        # PUSHes made while a listing of their bucket runs
        self._pushed_meanwhile: dict[str, list[ListEntry]] = {}
        self.disk_limiter = trio.CapacityLimiter(4)
        # GLOB scans have their own: long ones must not hold up index writes
        self.glob_limiter = trio.CapacityLimiter(4)
        # set at shutdown (it is the backend's): a GLOB scan in a worker
        # thread, which cannot be cancelled, gives up
        self.stopping: threading.Event = getattr(backend, "stopping", None) or threading.Event()

    # --- refresh ---------------------------------------------------------

    def has_index(self, bucket: str) -> bool:
        return os.path.exists(self.layout.index_path(bucket))

    async def refresh(self, bucket: str) -> int:
        """Re-list *bucket*; at most one listing of a bucket runs at a time.

        A caller that had to wait for a listing started after it asked gets
        that listing's result instead of starting another one.
        """
        lock = self._locks.setdefault(bucket, trio.Lock())
        # any listing that starts from now on reflects the bucket as it is now
        wanted = self._started.get(bucket, 0) + 1
        async with lock:
            if self._finished.get(bucket, 0) >= wanted:
                return self._count(bucket)
            self._started[bucket] = self._started.get(bucket, 0) + 1
            self._pushed_meanwhile[bucket] = []
            try:
                count, listed_at = await self._list(bucket)
            finally:
                pushed = self._pushed_meanwhile.pop(bucket, [])
            self._finished[bucket] = self._started[bucket]
            # a PUSH during the listing may be missing from it: put it back
            for entry in pushed:
                await self.add_key(bucket, entry)
            if listed_at is not None and self.fleet is not None:
                await self.fleet.listed(bucket, listed_at)
        self.last_refresh[bucket] = time.time()
        self._drop_conn(bucket)
        return count

    def hidden(self, key: str) -> bool:
        return is_hidden(key, self.published_key)

    async def _list(self, bucket: str) -> tuple[int, float | None]:
        """(keys, when the LIST started) after listing *bucket*; the time is
        None when the listing came from the published one."""
        if self.fleet is not None:
            count = await self.fleet.fetch(bucket)
            if count is not None:
                return count, None
        listed_at = time.time()
        count = await trio.to_thread.run_sync(self._build, bucket, listed_at,
                                              limiter=self.backend.limiter)
        log.info("refreshed s3://%s: %d keys", bucket, count)
        return count, listed_at

    def knows_version(self, bucket: str, key: str, etag: str, size: int) -> bool:
        """True unless the index lacks this version of *key* (no index: nothing to add)."""
        conn = self.conn(bucket)
        if conn is None:
            return True
        info = self.key_info(bucket, key)
        return info is not None and info[0] == size and same_etag(info[2], etag)

    async def add_key(self, bucket: str, entry: ListEntry) -> None:
        """Put a key we just uploaded or downloaded into the index, so GLOB and
        the FUSE view see it (and its size) before the next listing has it.

        The index then holds a key ``__list__`` lacks: it says so on disk
        (``list_complete`` 0), so this stays true across restarts."""
        if self.hidden(entry.key):
            return  # s3pool's own objects are no part of the listing
        if bucket in self._pushed_meanwhile:
            self._pushed_meanwhile[bucket].append(entry)
        path = self.layout.index_path(bucket)
        if not os.path.exists(path):
            return  # no listing yet: the first one will have the key

        def insert() -> None:
            db = sqlite3.connect(path)
            try:
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("INSERT OR REPLACE INTO keys VALUES (?, ?, ?, ?)", tuple(entry))
                db.execute("INSERT OR REPLACE INTO info VALUES ('list_complete', 0)")
                db.execute(_LOCAL_ADDS)
                db.execute("INSERT OR REPLACE INTO local_adds VALUES (?, ?)",
                           (entry.key, time.time()))
                db.commit()
            finally:
                db.close()

        try:
            await trio.to_thread.run_sync(insert, limiter=self.disk_limiter)
        except sqlite3.Error as exc:
            log.warning("could not add s3://%s/%s to the index: %s", bucket, entry.key, exc)
        finally:
            self._children.pop(bucket, None)  # the key may be a directory's first child

    async def remove_key(self, bucket: str, key: str) -> None:
        """Take a key we just deleted on S3 (rm in the mount) out of the index."""
        path = self.layout.index_path(bucket)
        if not os.path.exists(path):
            return

        def delete() -> None:
            db = sqlite3.connect(path)
            try:
                db.execute("DELETE FROM keys WHERE key = ?", (key,))
                db.execute(_LOCAL_ADDS)
                db.execute("DELETE FROM local_adds WHERE key = ?", (key,))
                db.commit()
            finally:
                db.close()

        try:
            await trio.to_thread.run_sync(delete, limiter=self.disk_limiter)
        except sqlite3.Error as exc:
            log.warning("could not remove s3://%s/%s from the index: %s", bucket, key, exc)
        finally:
            self._children.pop(bucket, None)

    def _build(self, bucket: str, listed_at: float) -> int:
        """Blocking: list the bucket into tmp/, then rename into place."""
        return write_listing(self.layout, bucket, self._pages(bucket),
                             info={"source": "s3", "listed_at": listed_at}, hidden=self.hidden)

    def _pages(self, bucket: str) -> Iterator[list[ListEntry]]:
        """The bucket's listing pages, given up at shutdown: a bucket of
        millions of keys lists for minutes in a thread nobody can cancel."""
        for page in self.backend.iter_listing(bucket):
            if self.stopping.is_set():
                raise ShuttingDown(f"the daemon is stopping: listing of s3://{bucket} abandoned")
            yield page

    # --- queries ---------------------------------------------------------

    def _open(self, bucket: str) -> sqlite3.Connection | None:
        path = self.layout.index_path(bucket)
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        except sqlite3.OperationalError:
            return None
        return conn

    def conn(self, bucket: str) -> sqlite3.Connection | None:
        """A cached read-only connection for quick lookups on the trio thread.

        Reopened when the index file was replaced (by us or by another
        process), so it never reads a listing older than the one on disk.
        """
        try:
            ino = os.stat(self.layout.index_path(bucket)).st_ino
        except (FileNotFoundError, NotADirectoryError):
            self._drop_conn(bucket)
            return None
        cached = self._conns.get(bucket)
        if cached and cached[0] == ino:
            return cached[1]
        self._drop_conn(bucket)
        conn = self._open(bucket)
        if conn is not None:
            self._conns[bucket] = (ino, conn)
        return conn

    def _drop_conn(self, bucket: str) -> None:
        self._children.pop(bucket, None)
        cached = self._conns.pop(bucket, None)
        if cached:
            cached[1].close()

    def close(self) -> None:
        for bucket in list(self._conns):
            self._drop_conn(bucket)

    def key_count(self, bucket: str) -> int:
        """Keys in the bucket's listing (as counted when it was written)."""
        return self._count(bucket)

    def _count(self, bucket: str) -> int:
        conn = self.conn(bucket)
        if conn is None:
            return 0
        row = conn.execute("SELECT value FROM info WHERE name = 'count'").fetchone()
        return int(row[0]) if row else 0

    def key_info(self, bucket: str, key: str) -> tuple[int, float, str] | None:
        """(size, mtime, etag) of *key* in the listing, or None."""
        conn = self.conn(bucket)
        if conn is None:
            return None
        row = conn.execute("SELECT size, mtime, etag FROM keys WHERE key = ?", (key,)).fetchone()
        return (int(row[0]), float(row[1]), row[2]) if row else None

    def has_children(self, bucket: str, key: str) -> bool:
        """True if some key lies under ``key/`` (then ``key`` is a directory)."""
        conn = self.conn(bucket)  # a replaced index drops the answers kept for the old one
        if conn is None:
            return False
        known = self._children.setdefault(bucket, {})
        found = known.get(key)
        if found is None:
            prefix = key + "/"
            found = conn.execute(
                "SELECT 1 FROM keys WHERE key >= ? AND key < ? LIMIT 1",
                (prefix, prefix_upper(prefix))
            ).fetchone() is not None
            if len(known) >= CHILDREN_MEMORY:
                known.clear()
            known[key] = found
        return found

    def lookup(self, bucket: str, dir_prefix: str, name: str) -> Entry | None:
        """The entry *name* in the directory *dir_prefix* ('' or ending in '/')."""
        if not visible_name(name, at_root=dir_prefix == ""):
            return None
        key = dir_prefix + name
        if self.has_children(bucket, key):
            return Entry(name, True)
        info = self.key_info(bucket, key)
        if info is None:
            return None
        return Entry(name, False, *info)

    def iter_children(self, bucket: str, dir_prefix: str,
                      after: tuple[str, bool] | None = None) -> Iterator[Entry]:
        """Entries of directory *dir_prefix* in key order, from after *after*.

        *after* is (name, is_dir) of the last entry already returned. Each
        subdirectory costs one range jump, not a walk over its keys.
        """
        conn = self.conn(bucket)
        if conn is None:
            return
        at_root = dir_prefix == ""
        hi = prefix_upper(dir_prefix)
        if after is None:
            lo, inclusive = dir_prefix, True
        elif after[1]:
            lo, inclusive = dir_prefix + after[0] + "0", True  # '0' follows '/'
        else:
            lo, inclusive = dir_prefix + after[0], False
        cut = len(dir_prefix)
        while True:
            # stepped lazily: a subdirectory ends the statement after one row,
            # a flat directory of 100,000 files is one statement
            op = ">=" if inclusive else ">"
            cursor = conn.execute(
                f"SELECT key, size, mtime, etag FROM keys WHERE key {op} ? AND key < ? "
                "ORDER BY key", (lo, hi),
            )
            row = cursor.fetchone()
            while row is not None:
                key, size, mtime, etag = row
                rest = key[cut:]
                slash = rest.find("/")
                if slash >= 0:
                    name = rest[:slash]
                    if visible_name(name, at_root) and not has_line_break(name):
                        yield Entry(name, True)
                    lo, inclusive = dir_prefix + name + "0", True  # '0' follows '/'
                    break
                following = cursor.fetchone()
                lo, inclusive = key, False
                # keys under "key/" sort right after "key" and the keys that
                # extend it with a character below '/': unless the next key
                # starts with "key", there are none
                if visible_name(rest, at_root) and not has_line_break(rest) and not (
                        following is not None and following[0].startswith(key)
                        and self.has_children(bucket, key)):
                    yield Entry(rest, False, int(size), float(mtime), etag)
                row = following
            else:
                return

    async def glob(self, bucket: str, pattern: str) -> list[str]:
        """Keys of the listing matching *pattern*, in key order.

        Compiling and scanning run in a worker thread (a pattern with many
        alternatives takes a while to compile; a scan of a big listing
        takes a while to match); the matcher is linear in the key, and the
        scan gives up when the daemon stops.
        """
        path = self.layout.index_path(bucket)
        list_path = self.layout.list_path(bucket)
        stopping = self.stopping

        def candidates(conn: sqlite3.Connection, prefix: str) -> Iterable[str]:
            row = conn.execute("SELECT value FROM info WHERE name = 'list_complete'").fetchone()
            list_complete = row is None or bool(row[0])
            if not prefix and list_complete:
                # the whole listing: reading __list__ beats walking the index
                with open(list_path, encoding="utf-8", errors="surrogateescape") as f:
                    for line in f:
                        yield line[:-1]
                return
            rows = conn.execute("SELECT key FROM keys WHERE key >= ? AND key < ? ORDER BY key",
                                (prefix, prefix_upper(prefix)))
            for (key,) in rows:
                yield key

        def scan() -> list[str]:
            compiled = compile_glob(pattern)
            found: list[str] = []
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                # the prefixes' key ranges are disjoint and in key order, so
                # the keys found come in key order, each once
                for prefix in compiled.prefixes:
                    matches = compiled.matcher_under(prefix)
                    for seen, key in enumerate(candidates(conn, prefix)):
                        if not seen % _STOP_CHECK_EVERY and stopping.is_set():
                            raise ShuttingDown("the daemon is stopping: GLOB abandoned")
                        if matches(key) and not has_line_break(key):
                            found.append(key)
            finally:
                conn.close()
            return found

        return await trio.to_thread.run_sync(scan, limiter=self.glob_limiter)


def write_listing(layout: Layout, bucket: str, pages: Iterable[list[ListEntry]],
                  info: dict[str, Any] | None = None,
                  extra: Iterable[tuple[ListEntry, float]] = (),
                  hidden: Callable[[str], bool] = is_hidden) -> int:
    """Blocking: write ``__list__`` and the index from listing pages.

    Both are built in tmp/ a page at a time and renamed into place,
    so readers see the old listing or the new one, never a mix. Keys for
    which *hidden* is true (s3pool's own ``.s3pool/`` objects) are left out.
    *info* goes into the index's info table; *extra* (entry, added_at)
    pairs go into the index only (keys added here that the pages may lack),
    which marks it ``list_complete`` 0.
    """
    # a bucket name may take 255 characters: only its start goes in a file name
    stamp = f"{bucket[:64]}.{os.getpid()}.{time.monotonic_ns()}"
    tmp_list = os.path.join(layout.tmp_dir, f"list.{stamp}")
    tmp_index = os.path.join(layout.tmp_dir, f"index.{stamp}")
    count = 0
    broken = 0  # keys with a line break, left out of __list__ (and of GLOB)
    try:
        db = sqlite3.connect(tmp_index)
        try:
            db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
            with open(tmp_list, "w", encoding="utf-8", errors="surrogateescape") as listing:
                for page in pages:
                    if any(hidden(e.key) for e in page):
                        page = [e for e in page if not hidden(e.key)]
                    if any(has_line_break(e.key) for e in page):
                        broken += _log_line_breaks(bucket, page, broken)
                    listing.writelines(e.key + "\n" for e in page if not has_line_break(e.key))
                    db.executemany(
                        "INSERT OR REPLACE INTO keys VALUES (?, ?, ?, ?)",
                        [(e.key, e.size, e.mtime, e.etag) for e in page],
                    )
                    count += len(page)
                listing.flush()
                os.fsync(listing.fileno())
            extra = [(e, at) for e, at in extra if not hidden(e.key)]
            if extra:
                db.executemany("INSERT OR REPLACE INTO keys VALUES (?, ?, ?, ?)",
                               [tuple(e) for e, _ in extra])
                db.executemany("INSERT OR REPLACE INTO local_adds VALUES (?, ?)",
                               [(e.key, at) for e, at in extra])
                db.execute("INSERT INTO info VALUES ('list_complete', 0)")
            db.execute("INSERT INTO info VALUES ('refreshed_at', ?)", (time.time(),))
            db.execute("INSERT INTO info VALUES ('count', ?)", (count,))
            if broken > LINE_BREAKS_LOGGED:
                log.warning("s3://%s: %d keys in all hold a newline or carriage return (%d "
                            "named above)", bucket, broken, LINE_BREAKS_LOGGED)
            for name, value in (info or {}).items():
                db.execute("INSERT OR REPLACE INTO info VALUES (?, ?)", (name, value))
            db.commit()
        finally:
            db.close()
        os.makedirs(layout.bucket_dir(bucket), exist_ok=True)
        os.makedirs(layout.listing_dir(bucket), exist_ok=True)
        with open(tmp_index, "rb") as f:
            os.fsync(f.fileno())
        os.rename(tmp_index, layout.index_path(bucket))
        os.rename(tmp_list, layout.list_path(bucket))
    except (OSError, sqlite3.Error) as exc:
        raise _not_written(bucket, exc) from exc
    finally:
        for path in (tmp_list, tmp_index):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    return count


class ListingNotWritten(S3PoolError):
    """The new listing of a bucket could not be written; the previous one stands."""


def _not_written(bucket: str, exc: OSError | sqlite3.Error) -> S3PoolError:
    """The error a REFRESH answers when its listing could not be written."""
    if isinstance(exc, OSError):
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        cause = exc.strerror or str(exc)
    else:
        full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL \
            or "disk is full" in str(exc)
        cause = str(exc)
    if full:
        return NoSpace(f"no room on disk to write the listing of s3://{bucket} ({cause}); "
                       "the previous listing stays in use")
    return ListingNotWritten(f"cannot write the listing of s3://{bucket} ({cause}); the "
                             "previous listing stays in use")


def _log_line_breaks(bucket: str, page: list[ListEntry], logged: int) -> int:
    """Name in the log (once per listing) the keys of *page* that hold a line
    break; return how many there are."""
    found = [e.key for e in page if has_line_break(e.key)]
    for key in found[:max(0, LINE_BREAKS_LOGGED - logged)]:
        log.warning("s3://%s: key %r holds a newline or carriage return: left out of "
                    "__list__, GLOB and the mount's directory listings (a PULL cannot "
                    "return its path; it opens by name on the mount)", bucket, key)
    return len(found)
