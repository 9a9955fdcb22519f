"""Bucket listings: ``__list__`` for other tools and an index for us.

A REFRESH streams the bucket's listing page by page (never the whole
listing in memory) into two files built in ``tmp/``: the plain
``__list__`` (one key a line, as the original wrote it) and the index,
a SQLite table of (key, size, mtime, etag) ordered by key. The index is
renamed to ``state/listings/BUCKET/index.db`` (outside the key namespace:
no key can reach it or its journals), then ``__list__`` into the
BUCKETDIR, so a reader sees the old listing or the new one, never a mix.
GLOB, the FUSE view's lookups and readdir all query the index by key
range instead of scanning the listing. This module decides when to list
(whole, or a directory or prefix again) and what to ask; writing a whole
listing is build.py's, the index's schema, versions and SQL are index.py's.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, Protocol, TypeVar

import botocore.exceptions
import trio

from s3pool.errors import BackendError, BadBucket, NoSuchBucket, ShuttingDown
from s3pool.listing import index
from s3pool.listing.build import (
    create_empty_index,
    not_written,
    remove_empty_index,
    write_listing,
)
from s3pool.listing.globpattern import CompiledGlob, compile_glob
from s3pool.listing.index import (
    EMPTY_SOURCE,
    IndexFault,
    IndexReplaced,
    Merger,
    Reader,
    prefix_upper,
)
from s3pool.listing.order import Part, settle
from s3pool.listing.published import DEFAULT_KEY, HIDDEN_ROOT, is_hidden
from s3pool.listing.ranges import (
    PAGES_FIRST,
    NumberedKeys,
    Page,
    StartAfterIgnored,
    ranged_pages,
)
from s3pool.s3.answers import ListEntry
from s3pool.s3.backend import Backend, translate
from s3pool.s3.listpages import PAGE_KEYS, Onward, page_of
from s3pool.store.layout import META_SUFFIX, RESERVED_ROOT_NAMES, Layout, unfit_for_a_line

log = logging.getLogger(__name__)

# a GLOB with more literal prefixes than this, when stale, refreshes the whole listing
MAX_PREFIX_RELISTS = 16
# look-ahead LISTs at a time: 4 beat 2 (and 8) on a cold find once merges
# stopped fsyncing (bench/RESULTS.md, Listings)
LOOK_AHEAD_AT_ONCE = 4
# has_children answers kept per bucket (all forgotten when it is full)
CHILDREN_MEMORY = 1 << 16
# keys a GLOB scan matches between two looks at the stopping flag
_STOP_CHECK_EVERY = 128


class Entry(NamedTuple):
    """A name inside a bucket directory of the FUSE view (a tuple: a readdir
    of 100,000 entries makes 100,000 of them)."""

    name: str
    is_dir: bool
    size: int = 0
    mtime: float = 0.0
    etag: str = ""


def same_etag(a: str | None, b: str | None) -> bool:
    """ETags from LIST and GET compare equal with or without their quotes."""
    return (a or "").strip('"') == (b or "").strip('"')


def visible_name(name: str, at_root: bool) -> bool:
    """Can *name* be shown as one path component of the FUSE view? (A
    name with a NUL or a line break is left out of listings where they are
    read: unfit_for_a_line.)"""
    if name in ("", ".", "..") or name.endswith(META_SUFFIX):
        return False
    if at_root and (name in RESERVED_ROOT_NAMES or name == HIDDEN_ROOT):
        return False
    # at most 4 bytes a character: most names need no encoding to tell
    return len(name) <= 63 or len(name.encode("utf-8", "surrogatepass")) <= 255


class FleetHooks(Protocol):
    """The published listing's part in a refresh (fleet.FleetListings)."""

    async def fetch(self, bucket: str) -> int | None: ...

    async def listed(self, bucket: str, listed_at: float) -> None: ...


class ListJob:
    """One LIST of a prefix from S3, merged into the index page by page.

    Shared by everyone who wants that prefix listed (single-flight): a
    reader serves the index's entries up to :attr:`through` (merged
    already) while later pages arrive.
    """

    def __init__(self, bucket: str, prefix: str, deep: bool,
                 max_pages: int | None = None) -> None:
        self.bucket, self.prefix, self.deep = bucket, prefix, deep
        # a look ahead (Listings.look_ahead) stops after this many pages: a
        # directory longer than that is not recorded as listed
        self.max_pages = max_pages
        self.queued = False  # a look ahead waiting for its turn
        self.started = time.time()  # the listing reflects S3 as of (at least) now
        self.through: str | None = None  # the last position merged; None: nothing yet
        self.done = False
        self.error: BaseException | None = None
        self.pages = 0
        self._changed = trio.Event()

    def covers(self, position: str) -> bool:
        """True once the index is current up to *position* (a key, or a
        subdirectory's prefix) under this listing."""
        return self.done or (self.through is not None and position <= self.through)

    def advance(self, through: str | None) -> None:
        self.pages += 1
        self.through = prefix_upper(self.prefix) if through is None else through
        self._changed.set()
        self._changed = trio.Event()

    def finish(self, error: BaseException | None) -> None:
        self.error = error
        self.done = True
        self._changed.set()

    async def changed(self) -> None:
        """Wait for the next page or the end."""
        if not self.done:
            await self._changed.wait()

    async def wait(self) -> None:
        """Wait for the end; raise its error if it failed."""
        while not self.done:
            await self._changed.wait()
        if self.error is not None:
            raise self.error


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
        # the read-only index each bucket's name held when last asked (None: unusable)
        self._conns: dict[str, tuple[int, Reader | None]] = {}
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
        # LISTs of one prefix running now (bucket, prefix, deep) -> job
        self._jobs: dict[tuple[str, str, bool], ListJob] = {}
        # where jobs run, so that they outlive the readdir that started them
        # (the cache's nursery); without one a job runs in its caller
        self.nursery: trio.Nursery | None = None
        self.list_requests = 0  # LIST requests (pages) sent, for STATUS
        self._count_lock = threading.Lock()
        # buckets whose server answered a LIST with StartAfter from before that
        # key (ranges.py): listed one page after the other, not in ranges
        self.start_after_ignored: set[str] = set()
        # look aheads LIST this many directories at a time, in the order asked
        self.ahead_limiter = trio.CapacityLimiter(LOOK_AHEAD_AT_ONCE)
        self._last_job: dict[str, float] = {}  # bucket -> when its last LIST of a part began
        # told of every write into an index in place (not synced: the
        # daemon's crash checkpoint syncs it; index.py's docstring)
        self.on_write: Callable[[], None] = lambda: None

    # --- refresh ---------------------------------------------------------

    def check_after_crash(self) -> int:
        """Blocking, at start-up after an unclean reboot, before anything is
        served: take away every index that may be torn (written without an
        fsync since the last checkpoint); returns how many were."""
        try:
            buckets = sorted(os.listdir(self.layout.listings_dir))
        except FileNotFoundError:
            return 0
        torn = 0
        for bucket in buckets:
            try:
                path = self.layout.index_path(bucket)
            except BadBucket:
                continue  # not a bucket's directory
            torn += not index.sound_after_crash(path)
        return torn

    def has_index(self, bucket: str) -> bool:
        """True if the bucket has a listing index this s3pool can use (one of
        another version, or no index at all, is replaced by the next listing)."""
        return self.conn(bucket) is not None

    async def refresh(self, bucket: str, max_age: float | None = None) -> int:
        """Re-list *bucket*; at most one listing of a bucket runs at a time.

        A caller that had to wait for a listing started after it asked gets
        that listing's result instead of starting another one. With
        *max_age*, a published listing older than that is not enough: the
        bucket is listed.
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
                count, listed_at = await self._list(bucket, max_age)
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

    async def _list(self, bucket: str, max_age: float | None = None
                    ) -> tuple[int, float | None]:
        """(keys, when the LIST started) after listing *bucket*; the time is
        None when the listing came from the published one."""
        if self.fleet is not None:
            count = await self.fleet.fetch(bucket)
            if count is not None:
                age = self.listing_age(bucket)
                if max_age is None or (age is not None and age <= max_age):
                    return count, None
                log.info("the published listing of s3://%s is %.0fs old, more than "
                         "listing_freshness (%gs): listing the bucket", bucket, age, max_age)
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

        await self._change_index(bucket, index.add_key, path, tuple(entry), time.time(),
                                 failure=f"could not add s3://{bucket}/{entry.key} to the index")

    async def remove_key(self, bucket: str, key: str) -> None:
        """Take a key we just deleted on S3 (rm in the mount) out of the index."""
        path = self.layout.index_path(bucket)
        if not os.path.exists(path):
            return
        await self._change_index(bucket, index.remove_key, path, key,
                                 failure=f"could not remove s3://{bucket}/{key} from the index")

    async def _change_index(self, bucket: str, change: Callable[..., bool], *args: Any,
                            failure: str) -> None:
        """Run *change* (index.add_key or remove_key: one transaction under
        the index's lock, so a rename of a new index over it waits) in a
        worker thread. A failure is logged as *failure*: the next listing
        puts the index right."""
        try:
            await trio.to_thread.run_sync(change, *args, limiter=self.disk_limiter)
            self.on_write()
        except IndexFault as exc:
            log.warning("%s: %s", failure, exc)
        finally:
            self._children.pop(bucket, None)  # a key may be a directory's first child

    def _build(self, bucket: str, listed_at: float) -> int:
        """Blocking: list the bucket into tmp/, then rename into place."""
        return write_listing(self.layout, bucket, self._pages(bucket),
                             info={"source": "s3", "listed_at": listed_at}, hidden=self.hidden)

    def _pages(self, bucket: str) -> Iterator[list[ListEntry]]:
        """The bucket's listing pages, given up at shutdown: a bucket of
        millions of keys lists for minutes in a thread nobody can cancel."""
        for page in self.backend.iter_listing(bucket):
            self.list_requests += 1
            if self.stopping.is_set():
                raise ShuttingDown(f"the daemon is stopping: listing of s3://{bucket} abandoned")
            yield page

    # --- freshness: parts of the index listed again ------------------------

    def listing_age(self, bucket: str) -> float | None:
        """Seconds since the bucket's whole listing was taken (a published one:
        since its publisher took it); None without an index."""
        listed = self._info_time(bucket)
        return None if listed is None else max(0.0, time.time() - listed)

    def _info_time(self, bucket: str) -> float | None:
        conn = self.conn(bucket)
        if conn is None:
            return None
        try:
            # when its LIST began (a published one: its publisher's); else when it was written
            info = conn.info("listed_at", "refreshed_at")
            value = info.get("listed_at", info.get("refreshed_at"))
            return float(value) if value is not None else 0.0
        except (IndexFault, TypeError, ValueError):
            return 0.0

    def listed_at(self, bucket: str, prefix: str, deep: bool) -> float:
        """When the index last took from S3 the directory *prefix* (every key
        under it with *deep*): the whole listing, a LIST of that directory or
        a deep LIST of a prefix of it, whichever came last; 0 if never."""
        best = self._info_time(bucket) or 0.0
        conn = self.conn(bucket)
        if conn is None:
            return best
        try:
            return max(best, conn.listed_at(prefix, deep))
        except IndexFault:
            return best

    def never_listed(self, bucket: str) -> bool:
        """True while the index is the empty one ensure_index made (no whole listing yet)."""
        conn = self.conn(bucket)
        if conn is None:
            return False
        try:
            return conn.info("source").get("source") == EMPTY_SOURCE
        except IndexFault:
            return False

    async def idle(self, bucket: str, quiet: float = 0.0) -> None:
        """Wait until no LIST of a part of *bucket* runs (whatever came of
        them) and none started for *quiet* seconds."""
        while True:
            running = [job for (b, _, _), job in self._jobs.items() if b == bucket]
            if running:
                await running[0].changed()
                continue
            since = trio.current_time() - self._last_job.get(bucket, -quiet)
            if since >= quiet:
                return
            await trio.sleep(quiet - since)

    async def _forget_empty(self, bucket: str) -> None:
        """A bucket S3 does not have: a misspelt name leaves no empty index behind."""
        if self.never_listed(bucket):
            self._drop_conn(bucket)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(remove_empty_index, self.layout, bucket,
                                              limiter=self.disk_limiter)

    async def ensure_index(self, bucket: str) -> None:
        """An index to merge directory listings into: if the bucket has none
        yet, an empty one, listed at time 0 (so every part of it is stale)."""
        if self.has_index(bucket):
            return
        await trio.to_thread.run_sync(create_empty_index, self.layout, bucket,
                                      limiter=self.disk_limiter)

    async def fresh(self, bucket: str, prefix: str, deep: bool, window: float,
                    listed_only: bool = False) -> ListJob | None:
        """None if the index holds the directory *prefix* (with *deep*, every
        key under it) as listed within *window* seconds (with *listed_only*,
        also if it was never listed); otherwise the LIST that makes it so,
        started or joined (one per prefix at a time). It runs in the
        background when there is a nursery: wait on the job."""
        await self.ensure_index(bucket)
        ident = (bucket, prefix, deep)
        ahead = self._jobs.get(ident)
        if ahead is not None and ahead.max_pages is not None:
            if ahead.queued:  # not begun: listed now, whole, instead
                del self._jobs[ident]
                ahead.finish(None)
            # a look ahead's page is on its way: it may be all the directory has
            while not ahead.done:
                await ahead.changed()
        now = time.time()
        listed = self.listed_at(bucket, prefix, deep)
        if (window > 0 and now - listed <= window) or (listed_only and not listed):
            return None
        job = self._jobs.get(ident)
        if job is not None and job.started >= now - window and job.max_pages is None:
            return job  # started within the window: what it lists is fresh enough
        job = ListJob(bucket, prefix, deep)
        self._jobs[ident] = job
        self._last_job[bucket] = trio.current_time()
        if self.nursery is not None:
            self.nursery.start_soon(self._run_job, job)
        else:
            await self._run_job(job)
        return job

    async def look_ahead(self, bucket: str, dir_prefixes: Iterable[str], window: float) -> int:
        """Start a LIST of the first page of each directory of *dir_prefixes*
        that is not listed within *window* and not being listed, without
        waiting: the subdirectories of a directory just read, which a walk
        (find, ls -R) reads next, are listed ahead of it, in order,
        ahead_limiter's number at a time (a readdir of one not begun yet
        lists it at once). A directory of more than one page is not recorded
        as listed: its readdir lists it whole. Returns the LISTs started."""
        if window <= 0:
            return 0  # each readdir lists anyway
        await self.ensure_index(bucket)
        now = time.time()
        jobs: list[ListJob] = []
        for prefix in dir_prefixes:
            if (bucket, prefix, False) in self._jobs or (
                    now - self.listed_at(bucket, prefix, False) <= window):
                continue
            job = ListJob(bucket, prefix, False, max_pages=1)
            job.queued = True
            self._jobs[(bucket, prefix, False)] = job
            jobs.append(job)
        if self.nursery is None:
            await self._run_ahead(jobs, window)
        elif jobs:
            self.nursery.start_soon(self._run_ahead, jobs, window)
        return len(jobs)

    async def _run_ahead(self, jobs: list[ListJob], window: float) -> None:
        """Run look-ahead *jobs* in their order, ahead_limiter's number at a time."""
        async with trio.open_nursery() as nursery:
            for job in jobs:
                await self.ahead_limiter.acquire_on_behalf_of(job)
                nursery.start_soon(self._run_one_ahead, job, window)

    async def _run_one_ahead(self, job: ListJob, window: float) -> None:
        try:
            if job.done:
                return  # a readdir took it over before its turn
            job.queued = False
            if time.time() - self.listed_at(job.bucket, job.prefix, False) <= window:
                del self._jobs[(job.bucket, job.prefix, False)]  # listed meanwhile
                job.finish(None)
                return
            job.started = time.time()
            await self._run_job(job)
        finally:
            self.ahead_limiter.release_on_behalf_of(job)

    async def _run_job(self, job: ListJob) -> None:
        error: BaseException | None = None
        try:
            await trio.to_thread.run_sync(self._relist, job, trio.lowlevel.current_trio_token(),
                                          limiter=self.backend.limiter)
        except Exception as exc:  # noqa: BLE001 (told to every waiter)
            error = exc
            log.warning("listing s3://%s/%s%s failed: %s", job.bucket, job.prefix,
                        "**" if job.deep else "", exc)
            if isinstance(exc, NoSuchBucket):
                await self._forget_empty(job.bucket)
        finally:
            if self._jobs.get((job.bucket, job.prefix, job.deep)) is job:
                del self._jobs[(job.bucket, job.prefix, job.deep)]
            self._children.pop(job.bucket, None)
            job.finish(error)
        if error is None:
            log.info("listed s3://%s/%s%s again: %d page(s) in %.2fs", job.bucket, job.prefix,
                     "" if job.deep else " (one directory)", job.pages,
                     time.time() - job.started)

    def _advanced(self, job: ListJob, through: str | None) -> None:
        """A page of *job* is merged: has_children answers kept from before it may be wrong."""
        self._children.pop(job.bucket, None)
        job.advance(through)

    def _relist(self, job: ListJob, token: trio.lowlevel.TrioToken) -> None:
        """Blocking: LIST *job*'s prefix page by page, each merged into the
        index (new keys in, deleted keys out) and told to its readers.

        A whole listing may replace the index file meanwhile (a rename): the
        pages still to come go into the new file, but the prefix is not
        recorded as listed in it (its earlier pages went into the old one)."""
        merger = Merger(self.layout.index_path(job.bucket))
        try:
            lo: str | None = None
            held: Part = ([], [])  # past the last page's end
            pages = fetched_ahead(self._prefix_pages(job), more=lambda page: (
                page[2] is not None and (job.max_pages is None or job.max_pages > 1)))
            for entries, subdirs, hi in pages:
                last = hi is None
                entries = held[0] + [e for e in entries if not self.hidden(e.key)]
                subdirs = held[1] + [d for d in subdirs if not self.hidden(d)]
                held = ([], [])
                if not job.deep and hi is not None:
                    # a directory's page covers up to its greatest name, in
                    # either order S3 servers send (order.py); what lies past
                    # it goes with the next page
                    hi, (entries, subdirs), held = settle(lo, hi, entries, subdirs)
                    if hi is None:
                        continue
                merger.merge(job.prefix, job.deep, lo, hi, entries, subdirs, job.started - 1.0,
                             listed_at=job.started if last else None)
                self.on_write()
                token.run_sync_soon(self._advanced, job, hi)
                lo = hi
            if held[0] or held[1]:  # the LIST stopped early (max_pages): in, deleting nothing
                merger.merge(job.prefix, job.deep, lo, lo, *held, job.started - 1.0)
                self.on_write()
        except IndexFault as exc:
            raise not_written(job.bucket, exc) from exc
        finally:
            merger.close()

    def _prefix_pages(self, job: ListJob) -> Iterator[Page]:
        """The job's LIST page by page: (keys, subdirectories, the position
        it covers up to; None: to the end). After PAGES_FIRST pages of
        numbered names, the rest comes in ranges listed side by side
        (ranges.py)."""
        delimiter = None if job.deep else "/"

        def fetch(start_after: str | None, continuation: str | None
                  ) -> tuple[list[ListEntry], list[str], str | None]:
            if self.stopping.is_set():
                raise ShuttingDown(f"the daemon is stopping: listing of s3://{job.bucket}/"
                                   f"{job.prefix} abandoned")
            with self._count_lock:  # ranges ask from several threads
                self.list_requests += 1
            return list_page(self.backend, job.bucket, job.prefix, delimiter, continuation,
                             start_after=start_after)

        continuation: str | None = None
        pages = seen = 0
        first = ""
        onward = Onward()
        while True:
            entries, subdirs, continuation = fetch(None, continuation)
            pages += 1
            why = onward.fault(entries, subdirs)
            if why is not None:  # else a LIST for ever
                raise BackendError(f"S3 answered a LIST of s3://{job.bucket}/{job.prefix} with "
                                   f"{why}: not believed")
            if continuation is None:
                yield entries, subdirs, None
                return
            hi = onward.top  # the greatest position so far (an empty page: the last one's)
            yield entries, subdirs, hi
            if job.max_pages is not None and pages >= job.max_pages:
                return
            if pages == 1:
                first = min(entries[0].key if entries else hi, subdirs[0] if subdirs else hi)
            seen += len(entries) + len(subdirs)
            if pages == PAGES_FIRST and job.bucket not in self.start_after_ignored:
                numbering = NumberedKeys.of(first, hi, seen)
                if numbering is not None:
                    try:
                        yield from ranged_pages(fetch, hi, numbering)
                        return
                    except StartAfterIgnored as exc:  # before any page of the ranges
                        self.start_after_ignored.add(job.bucket)
                        log.info("listing s3://%s/%s one page after the other, and every "
                                 "LIST of the bucket from now on: %s", job.bucket, job.prefix,
                                 exc)

    def status_lines(self, buckets: Iterable[str]) -> list[tuple[str, Any]]:
        """STATUS: LIST requests sent, and each bucket's listing age (seconds
        since its whole listing was taken; parts listed since are younger)."""
        lines: list[tuple[str, Any]] = [("listing_requests", self.list_requests)]
        for bucket in sorted(buckets):
            age = self.listing_age(bucket)
            lines.append(("listing_age", f"{bucket} {'-' if age is None else round(age, 1)}"))
        return lines

    # --- queries ---------------------------------------------------------

    def conn(self, bucket: str) -> Reader | None:
        """A cached read-only index for quick lookups on the trio thread;
        None without a usable one.

        Reopened when the index file was replaced (by us or by another
        process), so it never reads a listing older than the one on disk.
        An unusable file is remembered as such until it is replaced.
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
        conn = index.open_reader(self.layout.index_path(bucket))
        self._conns[bucket] = (ino, conn)
        return conn

    def _drop_conn(self, bucket: str) -> None:
        self._children.pop(bucket, None)
        cached = self._conns.pop(bucket, None)
        if cached and cached[1] is not None:
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
        return conn.count()

    def key_info(self, bucket: str, key: str) -> tuple[int, float, str] | None:
        """(size, mtime, etag) of *key* in the listing, or None."""
        conn = self.conn(bucket)
        if conn is None:
            return None
        return conn.key_info(key)

    def has_children(self, bucket: str, key: str) -> bool:
        """True if some key lies under ``key/`` (then ``key`` is a directory)."""
        conn = self.conn(bucket)  # a replaced index drops the answers kept for the old one
        if conn is None:
            return False
        known = self._children.setdefault(bucket, {})
        found = known.get(key)
        if found is None:
            found = conn.has_under(key + "/")
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
        subdirectory costs one range jump, not a walk over its keys. An index
        replaced while the caller holds this iterator (a listing came) is
        read on in the new one, from where this one was.
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
        new = tuple.__new__  # an Entry made without its Python-level __new__ (half the cost)
        while True:
            # stepped lazily: a subdirectory ends the statement after one row,
            # a flat directory of 100,000 files is one statement
            rows = conn.rows(lo, inclusive, hi)
            try:
                row = next(rows, None)
            except IndexReplaced:
                conn = self._reopened(bucket, conn)
                if conn is None:
                    return
                continue
            while row is not None:
                key, size, mtime, etag = row
                rest = key[cut:]
                slash = rest.find("/")
                if slash >= 0:
                    name = rest[:slash]
                    if visible_name(name, at_root) and not unfit_for_a_line(name):
                        yield Entry(name, True)
                    lo, inclusive = dir_prefix + name + "0", True  # '0' follows '/'
                    break
                try:
                    following = next(rows, None)
                except IndexReplaced:  # on from the key before this one, in the new index
                    conn = self._reopened(bucket, conn)
                    if conn is None:
                        return
                    break
                lo, inclusive = key, False
                # keys under "key/" sort right after "key" and the keys that
                # extend it with a character below '/': unless the next key
                # starts with "key", there are none
                if visible_name(rest, at_root) and not unfit_for_a_line(rest) and not (
                        following is not None and following[0].startswith(key)
                        and self.has_children(bucket, key)):
                    yield new(Entry, (rest, False, size, mtime, etag))
                row = following
            else:
                return

    def _reopened(self, bucket: str, closed: Reader) -> Reader | None:
        """The index that replaced *closed* (closed under a reader of it)."""
        conn = self.conn(bucket)
        if conn is closed:
            raise IndexFault(f"the listing index of s3://{bucket} was closed")
        return conn

    async def fresh_for_glob(self, bucket: str, pattern: str, window: float
                             ) -> tuple[CompiledGlob, float, str]:
        """Make the part of the index *pattern* can match no older than
        *window* seconds: its literal prefixes listed again (a LIST of each,
        no delimiter) when stale, or, for a pattern without one, the whole
        bucket. Returns (the compiled pattern, the age in seconds of the
        oldest listing the answer comes from, what was listed)."""
        compiled = await trio.to_thread.run_sync(compile_glob, pattern,
                                                 limiter=self.glob_limiter)
        await self.ensure_index(bucket)
        prefixes = compiled.prefixes
        now = time.time()

        def stale(prefix: str) -> bool:
            return window <= 0 or now - self.listed_at(bucket, prefix, True) > window

        if "" in prefixes or len(prefixes) > MAX_PREFIX_RELISTS:
            done = "-"
            if stale(""):
                try:
                    await self.refresh(bucket, max_age=window)
                except NoSuchBucket:
                    await self._forget_empty(bucket)
                    raise
                done = "the whole bucket"
            return compiled, time.time() - self.listed_at(bucket, "", True), done
        relisted = [p for p in prefixes if stale(p)]
        jobs = [await self.fresh(bucket, p, True, window) for p in relisted]
        for job in jobs:
            if job is not None:
                await job.wait()
        age = max(time.time() - self.listed_at(bucket, p, True) for p in prefixes)
        done = ", ".join(repr(p) for p in relisted) if relisted else "-"
        return compiled, age, done

    async def glob(self, bucket: str, pattern: str,
                   compiled: CompiledGlob | None = None) -> list[str]:
        """Keys of the listing matching *pattern*, in key order.

        Compiling and scanning run in a worker thread (a pattern with many
        alternatives takes a while to compile; a scan of a big listing
        takes a while to match); the matcher is linear in the key, and the
        scan gives up when the daemon stops.
        """
        path = self.layout.index_path(bucket)
        list_path = self.layout.list_path(bucket)
        stopping = self.stopping

        def candidates(conn: Reader, prefix: str) -> Iterable[str]:
            if not prefix and conn.list_complete():
                # the whole listing: reading __list__ beats walking the index
                with open(list_path, encoding="utf-8", errors="surrogateescape") as f:
                    for line in f:
                        yield line[:-1]
                return
            yield from conn.keys_under(prefix)

        def scan() -> list[str]:
            nonlocal compiled
            if compiled is None:
                compiled = compile_glob(pattern)
            found: list[str] = []
            conn = index.read(path)
            try:
                # the prefixes' key ranges are disjoint and in key order, so
                # the keys found come in key order, each once
                for prefix in compiled.prefixes:
                    matches = compiled.matcher_under(prefix)
                    for seen, key in enumerate(candidates(conn, prefix)):
                        if not seen % _STOP_CHECK_EVERY and stopping.is_set():
                            raise ShuttingDown("the daemon is stopping: GLOB abandoned")
                        if matches(key) and not unfit_for_a_line(key):
                            found.append(key)
            finally:
                conn.close()
            return found

        return await trio.to_thread.run_sync(scan, limiter=self.glob_limiter)


_T = TypeVar("_T")
_NONE: Any = object()  # no item (fetched_ahead)


def fetched_ahead(items: Iterator[_T], more: Callable[[_T], bool] = lambda _: True
                  ) -> Iterator[_T]:
    """Blocking: *items*, the next one already being made in a thread of its
    own while the caller works on the last: a LIST page's round trip to S3
    overlaps the merge of the page before. The first item is made in the
    caller's thread, and the thread starts only if *more* says that item is
    not the last (most directories are one page: no thread for them). An
    error of *items* is raised where that item would have come; a caller
    that stops early stops the thread before it asks for another item."""
    first = next(items, _NONE)
    if first is _NONE:
        return
    if not more(first):
        yield first
        yield from items  # nothing: lets *items* finish in this thread
        return
    yield from _fetched_ahead(items, first)


def _fetched_ahead(items: Iterator[_T], first: _T) -> Iterator[_T]:
    handoff: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand(done: bool, item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put((done, item), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not hand(False, item):
                    return
        except BaseException as exc:  # noqa: BLE001 (raised in the caller's thread)
            hand(True, exc)
            return
        finally:
            # a caller that stopped early: *items* ends here, in this thread
            # (ranges in flight are waited for here, not where it is collected)
            close = getattr(items, "close", None)
            if close is not None:
                close()
        hand(True, None)

    thread = threading.Thread(target=produce, name="s3pool-list-ahead", daemon=True)
    thread.start()
    try:
        yield first
        while True:
            done, item = handoff.get()
            if not done:
                yield item
            elif item is None:
                return
            else:
                raise item
    finally:
        stop.set()
        thread.join()


def list_page(backend: Backend, bucket: str, prefix: str, delimiter: str | None,
              continuation: str | None, start_after: str | None = None
              ) -> tuple[list[ListEntry], list[str], str | None]:
    """Blocking: one LIST request of up to 1,000 entries under *prefix*:
    (keys, subdirectories (with *delimiter*), the next page's token or None).
    The entries come from s3pool's parser (lxml), not from botocore's,
    and the request goes on the backend's lean path where it answers.
    With *start_after* (and no token) it begins after that key."""
    params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": PAGE_KEYS}
    if delimiter:
        params["Delimiter"] = delimiter
    if continuation:
        params["ContinuationToken"] = continuation
    elif start_after:
        params["StartAfter"] = start_after
    try:
        resp = backend.list_objects_v2(**params)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise translate(exc, bucket) from exc
    entries, subdirs, token = page_of(resp, f"s3://{bucket}/{prefix}")
    why = page_fault(prefix, delimiter, entries, subdirs)
    if why is None and token is not None and token == continuation:
        why = "the same continuation token again"
    if why is not None:
        raise BackendError(f"S3 answered a LIST of s3://{bucket}/{prefix} with {why}: "
                           "not believed")
    return entries, subdirs, token


def page_fault(prefix: str, delimiter: str | None, entries: list[ListEntry],
               subdirs: list[str]) -> str | None:
    """What makes a LIST page of *prefix* impossible, or None: a key outside
    the prefix or, with *delimiter*, inside a subdirectory, or a
    subdirectory that is not one of the prefix would go into the index where
    no LIST of that part put it. (The order within a page is not checked:
    SeaweedFS sends "pct/" before "pct%2F/", by path component;
    listing/order.py says how far a page covers, s3/listpages.py checks
    that the pages go on.)"""
    cut = len(prefix)
    for entry in entries:
        key = entry.key
        if not key.startswith(prefix):
            return f"the key {key[:200]!r} outside the prefix"
        if delimiter and delimiter in key[cut:]:
            return f"the key {key[:200]!r} inside a subdirectory"
    for sub in subdirs:
        if not delimiter or not sub.startswith(prefix) or not sub.endswith(delimiter) \
                or len(sub) <= cut or delimiter in sub[cut:len(sub) - len(delimiter)]:
            return f"the subdirectory {sub[:200]!r}, not one of the prefix"
    return None
