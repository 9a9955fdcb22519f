"""A download in flight that readers can use before it ends.

A :class:`Download` is one version of one object on its way from S3 into
a file in ``tmp/``. The object is cut into parts of ``download_part_size``
bytes. Part 0 comes from the GET that checked the ETag (its body is
streamed on, part after part, while the next part is wanted and nobody
else fetches it, up to the body's end: the body of a GET of the first part
only, ``response.body_length``, ends with it, so it is never closed while
S3 still sends); other parts come from ranged GETs pinned to the ETag
(If-Match), so a version that changes on S3 mid-way fails the download
instead of mixing two versions.

What is fetched follows who waits:

- a PULL wants every part (all of them, ``download_part_concurrency`` at
  a time);
- a reader of the mount wants the parts its reads cover, at once and
  ahead of anything else, plus a read-ahead window after a sequential
  read that doubles with every sequential read up to the concurrency
  (a random read gets no read-ahead). ``head -c 1`` of a 1 GiB object so
  costs two parts, and the last 64 KiB of it (a Parquet footer) one
  ranged GET beside part 0.

Each part is written in order by one writer, so what has landed is a
per-part byte count (``progress``), updated by the worker threads after
each checked write; a read waits only until the bytes it needs are
there. When every part has landed and the digest (computed in worker
threads, in order) matches, the cache installs the file in ``data/`` by
rename: readers keep reading the same inode through their own descriptor.

A download uses the rest of s3pool only through what it is given
(:class:`DownloadDeps`: the store's room and disk limiter, the backend's
body reads and ranged GETs, two settings, the digest counters, the
transfers and the registry of downloads in flight), never the cache.

A download that fails wakes every waiter with the error (EIO for the
mount, an ERROR for a PULL); bytes that landed before the failure stay
readable. When the last reader leaves a download that no PULL waits for
and more than two parts are missing, it is stopped and its file dropped.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from s3pool.errors import BackendError, DigestMismatch, NoSpace, S3PoolError
from s3pool.s3.answers import ObjectResponse
from s3pool.s3.checksums import Digest
from s3pool.s3.progress import Transfer
from s3pool.store.layout import unlink_quietly
from s3pool.store.objects import CachedObject, HasMeta

log = logging.getLogger(__name__)

HASH_CHUNK = 4 << 20  # bytes hashed per worker-thread call
STREAM_DECIDE = 1.0  # seconds the open GET's body waits for the first read


class DownloadCancelled(BackendError):
    """The download was stopped: nobody reads it any more."""


class PartSource(Protocol):
    """What a download needs of the backend (s3.backend.Backend): the open GET's
    body read on, part after part, and ranged GETs pinned to the ETag."""

    async def read_body_part(self, body: Any, fd: int, offset: int, limit: int, bucket: str,
                             key: str, transfer: Transfer, digest: Digest | None = None,
                             on_progress: Callable[[int], None] | None = None) -> int: ...

    async def get_range_into(self, bucket: str, key: str, etag: str, start: int, length: int,
                             fd: int, transfer: Transfer | None = None,
                             on_progress: Callable[[int], None] | None = None,
                             total: int | None = None) -> int: ...


class DiskRoom(Protocol):
    """What a download needs of the store (store.objects.Store): its bytes counted
    as used while it runs, and the limiter of blocking disk work (hashing)."""

    disk_limiter: trio.CapacityLimiter

    def reserve(self, nbytes: int) -> AbstractContextManager[None]: ...


class PartSettings(Protocol):
    """The settings a download reads (download_part_concurrency at each use: SET
    changes it for downloads in flight too)."""

    download_part_size: int
    download_part_concurrency: int


class DigestChecks(Protocol):
    """The digest check and its counters (s3.checksums.Verifications)."""

    def check(self, digest: Digest) -> None: ...


class TransferBook(Protocol):
    """The transfers in flight shown by STATUS (s3.progress.Transfers)."""

    def end(self, transfer: Transfer) -> None: ...


class Registry(Protocol):
    """What a download tells the registry of downloads in flight
    (registry.Downloads), and the install it asks of it."""

    def run_started(self) -> None: ...

    def run_ended(self) -> None: ...

    def read_waits(self) -> None: ...

    def read_waited(self) -> None: ...

    def release_slot(self, owner: object) -> None: ...

    def ended(self, download: Download) -> None: ...

    async def install(self, download: Download) -> CachedObject: ...


@dataclass(frozen=True)
class DownloadDeps:
    """Everything a :class:`Download` uses of the rest of s3pool."""

    store: DiskRoom
    backend: PartSource
    settings: PartSettings
    registry: Registry
    checks: DigestChecks
    transfers: TransferBook


class Download:
    """One version of one object streaming into tmp/; shared by its openers."""

    def __init__(self, deps: DownloadDeps, bucket: str, key: str, response: ObjectResponse,
                 fd: int, tmp_path: str, transfer: Transfer, source: str) -> None:
        self.deps = deps
        self.bucket = bucket
        self.key = key
        self.response = response
        self.meta = response.meta
        self.size = response.content_length
        self.etag = response.meta.get("ETag") or ""
        self.fd = fd  # O_RDWR: written by the parts, read by readers (each has a dup)
        self.tmp_path = tmp_path
        self.transfer = transfer
        self.source = source
        self.digest: Digest | None = response.digest
        # a first GET of the first part only sets the part size (a SET since is
        # for the next download)
        self.body_end = response.body_length or self.size  # the body carries [0, body_end)
        part_size = max(1, response.body_length or int(deps.settings.download_part_size))
        self.part_size = part_size
        self.parts = max(1, -(-self.size // part_size))
        self.progress = [0] * self.parts  # bytes landed from each part's start
        self.claimed = bytearray(self.parts)  # 1: a writer owns the part
        self.claimed[0] = 1  # the open GET's body carries part 0
        self.wanted = bytearray(self.parts)  # 1: someone wants it fetched
        self.demanded: list[int] = []  # wanted by a waiting read: first in line
        self.want_all = False
        self.active_parts = 0  # ranged GETs in flight
        self.landed_bytes = 0  # parts complete, in bytes
        self.hashed_to = 0
        self.stream_done = False
        self.readers = 0
        self.pullers = 0
        self.error: BaseException | None = None
        self.result: CachedObject | None = None
        self.done = trio.Event()  # installed or failed
        self.started = time.perf_counter()
        self.fetched_at = 0.0
        self._changed = trio.Event()
        self._needs: dict[int, int] = {}  # part -> bytes of it a waiting read needs
        self._wake_pending = False
        self._token = trio.lowlevel.current_trio_token()
        self._nursery: trio.Nursery | None = None
        self._limiter_owner: object | None = None  # holds a download_limiter slot
        self._stream_part = 0  # the part the body stream is writing
        self._first_free = 0  # every part below it is claimed
        self._stream_go = trio.Event()  # the first read (or a PULL) came
        self._stream_abandoned = False  # ... and it was not for part 0
        self._horizon = 0  # parts below it may be wanted by read-ahead
        self.running = False  # run() has begun
        self.superseded = False  # a PUSH replaced the key: never install this one
        self.verified = False  # every byte matched the digest

    # --- what has landed ---------------------------------------------------

    def part_range(self, index: int) -> tuple[int, int]:
        start = index * self.part_size
        return start, min(self.size, start + self.part_size)

    def has(self, start: int, end: int) -> bool:
        """True if bytes [start, end) are in the file."""
        return self.result is not None or self._short_part(start, end) is None

    def _short_part(self, start: int, end: int) -> tuple[int, int] | None:
        """(part, bytes of it from its start that are needed) for the first part
        of [start, end) whose bytes are not all in the file; None if all are."""
        part_size = self.part_size
        index = start // part_size
        while start < end:
            part_start = index * part_size
            part_end = min(end, part_start + part_size)
            if self.progress[index] < part_end - part_start:
                return index, part_end - part_start
            start = part_end
            index += 1
        return None

    def _landed_from_thread(self, index: int, count: int) -> None:
        """Worker thread: *count* bytes of part *index* are now in the file.

        The trio thread is woken only when a waiting read now has its bytes
        (a read registers what it needs before it looks, see :meth:`read`):
        waking every waiter at every chunk cost a `cat` several times the CPU
        of the download itself when the reader was ahead of it."""
        self.progress[index] = count  # one int store: atomic under the GIL
        need = self._needs.get(index)
        if need is not None and count >= need and not self._wake_pending:
            self._wake_pending = True
            try:
                self._token.run_sync_soon(self._wake)
            except trio.RunFinishedError:
                pass

    def _wake(self) -> None:
        self._wake_pending = False
        self._needs.clear()  # the woken reads look again and say what they still need
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def _wait_change(self) -> None:
        await self._changed.wait()

    def _need(self, offset: int, end: int) -> None:
        """Say what a waiting read needs: the bytes of the first part of
        [offset, end) that are not all in the file yet."""
        short = self._short_part(offset, end)
        if short is not None:
            index, need = short
            known = self._needs.get(index)
            self._needs[index] = need if known is None else min(known, need)

    # --- readers ---------------------------------------------------------

    async def read(self, offset: int, size: int, reader: Reader) -> bytes:
        end = min(self.size, offset + size)
        if offset >= end:
            return b""
        # noted as the reads come (parts land out of order, the reads come in order)
        completes = reader.completes(offset, end, self.size)
        if isinstance(self.error, DigestMismatch):
            raise self.error  # bytes known to be wrong: none of them (the kernel retries)
        if not self.has(offset, end):
            self._want_for_read(offset, end, reader)
            self.deps.registry.read_waits()  # shutdown lets these answer first
            try:
                while True:
                    self._need(offset, end)  # before looking: no landing goes unseen
                    if self.has(offset, end):
                        break
                    if self.error is not None:
                        raise _as_read_error(self.error, self)
                    await self._wait_change()
            finally:
                self.deps.registry.read_waited()
        else:
            self._want_for_read(offset, end, reader)
        if completes and self.digest is not None:
            await self._until_checked()
        return os.pread(reader.fd, end - offset, offset)

    async def _until_checked(self) -> None:
        """The read that completes a reader's reading of every byte of the object
        is answered only once every byte matched S3's checksum (or MD5): a `cat`
        of a damaged object ends with EIO, not as if it were right. A reader of
        some of the object (a Parquet footer, a header) is not held back: the
        check needs every byte first."""
        if self.result is None:
            self.want_everything()
            self.deps.registry.read_waits()  # shutdown lets these answer first
            try:
                await self.done.wait()
            finally:
                self.deps.registry.read_waited()
        if self.result is None and not self.verified:
            raise _as_read_error(self.error or BackendError(
                f"download of s3://{self.bucket}/{self.key} ended unchecked"), self)

    def _want_for_read(self, offset: int, end: int, reader: Reader) -> None:
        if self.result is not None or self.error is not None:
            return
        part_size = self.part_size
        first, last = offset // part_size, (end - 1) // part_size
        if not self._stream_go.is_set():
            # the open GET's body carries part 0 only if part 0 is read first:
            # a first read elsewhere (a Parquet footer) closes it unread, when
            # it carries more than part 0 (a server that ignored the Range);
            # a body of part 0 alone is read to its end (never hung up on:
            # an S3 server logs that as a connection reset by peer)
            self._stream_abandoned = first != 0 and self.body_end > self.part_range(0)[1]
            self._stream_go.set()
        for index in range(first, last + 1):
            if not self.wanted[index]:
                self.wanted[index] = 1
                if not self.claimed[index]:
                    self.demanded.append(index)
        # read-ahead: one part from the second read in order on, doubled each
        # time reads in order enter a new part; none after a random read
        # (`head -c 1` so costs part 0 alone)
        if offset == reader.next_offset:
            if not reader.ahead:
                reader.ahead = 1 if offset else 0
            elif last > reader.last_part:
                reader.ahead = min(self.deps.settings.download_part_concurrency,
                                   reader.ahead * 2)
        else:
            reader.ahead = 0
        reader.next_offset = end
        reader.last_part = last
        horizon = min(self.parts, last + 1 + reader.ahead)
        newly_wanted = False
        for index in range(last + 1, horizon):
            if not self.wanted[index]:
                self.wanted[index] = 1
                newly_wanted = True
        # a part newly wanted below a horizon another read set (a footer read
        # first) is started too: nothing else would (its reads find it wanted)
        if self.demanded or newly_wanted or horizon > self._horizon:
            self._horizon = max(self._horizon, horizon)
            self._schedule()

    def attach_reader(self) -> Reader:
        self.readers += 1
        return Reader(self, os.dup(self.fd), self.meta)

    def detach_reader(self) -> None:
        self.readers -= 1
        if self.readers > 0 or self.pullers > 0 or self.done.is_set():
            return
        missing = self.size - self.landed_bytes
        if missing > 2 * self.part_size:
            log.info("stopping the download of s3://%s/%s: its last reader closed with "
                     "%d of %d bytes still to fetch", self.bucket, self.key, missing, self.size)
            self.fail(DownloadCancelled(f"download of s3://{self.bucket}/{self.key} stopped: "
                                        "nobody reads it"))
        else:
            self.want_everything()  # nearly there: finish and keep it

    # --- PULLs -----------------------------------------------------------

    def want_everything(self) -> None:
        if not self.want_all:
            self.want_all = True
            self._stream_go.set()
            self._schedule()

    async def wait_installed(self) -> CachedObject:
        """For a PULL: the installed object once every byte landed and was checked."""
        self.pullers += 1
        try:
            self.want_everything()
            await self.done.wait()
        finally:
            self.pullers -= 1
        if self.result is None:
            assert self.error is not None
            raise _as_read_error(self.error, self)
        return self.result

    # --- running ---------------------------------------------------------

    async def run(self) -> None:
        """The download's own task: the body stream, the parts, the digest, the install."""
        deps = self.deps
        self.running = True
        deps.registry.run_started()
        try:
            with deps.store.reserve(self.size):
                try:
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        if self.error is not None:
                            raise self.error
                        nursery.start_soon(self._stream_body)
                        nursery.start_soon(self._hash_rest)
                        self._schedule()
                        await self._until_all_landed()
                        nursery.cancel_scope.cancel()  # the hasher ends by itself
                except BaseExceptionGroup as group:
                    raise _first_error(group) from None
                finally:
                    self._nursery = None
                if self.error is not None:  # stopped (fail() cancelled the parts)
                    raise self.error
                self.fetched_at = time.perf_counter()
                if self.digest is not None:
                    await self._finish_hash()
                    deps.checks.check(self.digest)  # a mismatch is never installed
                    self.verified = True
                self.result = await deps.registry.install(self)
        except BaseException as exc:
            self.fail(exc if isinstance(exc, Exception) else
                      BackendError(f"download of s3://{self.bucket}/{self.key} was stopped"))
            if not isinstance(exc, Exception):
                raise
        finally:
            deps.registry.run_ended()
            self._release_slot()
            deps.transfers.end(self.transfer)
            self._wake()
            self.done.set()
            deps.registry.ended(self)
            os.close(self.fd)
            unlink_quietly(self.tmp_path)

    def fail(self, error: BaseException) -> None:
        if self.error is None and self.result is None:
            self.error = error
            self.transfer.fail(str(error) or repr(error))
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
            self.deps.registry.ended(self)  # a new opener starts afresh
            self._wake()

    def take_slot(self, owner: object) -> None:
        """The download_limiter slot the opener borrowed for this download."""
        self._limiter_owner = owner

    def _release_slot(self) -> None:
        if self._limiter_owner is not None:
            self.deps.registry.release_slot(self._limiter_owner)
            self._limiter_owner = None

    async def _until_all_landed(self) -> None:
        while self.landed_bytes < self.size:
            if self.error is not None:
                raise self.error
            await self._wait_change()
        if self.error is not None:
            raise self.error

    def _schedule(self) -> None:
        """Start ranged GETs for wanted parts: demanded ones at once, then read-ahead
        and PULLs in order, download_part_concurrency at a time."""
        nursery = self._nursery
        if nursery is None or self.error is not None:
            return
        while self.demanded:
            index = self.demanded.pop(0)
            if not self.claimed[index]:
                self._start_part(nursery, index)
        limit = self.deps.settings.download_part_concurrency
        if self.active_parts >= limit:
            return
        while self._first_free < self.parts and self.claimed[self._first_free]:
            self._first_free += 1
        for index in range(self._first_free, self.parts):
            if self.active_parts >= limit:
                break
            if not self.want_all and index >= self._horizon and not self.wanted[index]:
                break  # nothing wanted beyond the furthest read-ahead
            if not self.claimed[index] and (self.want_all or self.wanted[index]):
                if index == self._stream_next():
                    continue  # the open body is about to carry it
                self._start_part(nursery, index)

    def _stream_next(self) -> int:
        """The part the body stream would carry next, or -1 once it stopped
        (or its body ends before that part)."""
        nxt = self._stream_part + 1
        if self.stream_done or self.part_range(nxt)[1] > self.body_end:
            return -1
        return nxt

    def _start_part(self, nursery: trio.Nursery, index: int) -> None:
        self.claimed[index] = 1
        self.active_parts += 1
        if self.active_parts == 1:
            self.transfer.resume()  # an idle spell is not a stall
        nursery.start_soon(self._fetch_part, index)

    async def _fetch_part(self, index: int) -> None:
        start, end = self.part_range(index)
        try:
            # a download from the shared tier (tier.TierResponse) gets its parts there
            ranges = getattr(self.response, "get_range_into", None) or \
                self.deps.backend.get_range_into
            got = await ranges(
                self.bucket, self.key, self.etag, start, end - start, self.fd, self.transfer,
                on_progress=lambda count: self._landed_from_thread(index, count),
                total=self.size)
            if got != end - start:
                raise BackendError(f"short range of s3://{self.bucket}/{self.key} at {start}: "
                                   f"{got} of {end - start} bytes")
        finally:
            self.active_parts -= 1
        self._part_landed(index)

    def _part_landed(self, index: int) -> None:
        start, end = self.part_range(index)
        self.progress[index] = end - start
        self.landed_bytes += end - start
        self._wake()
        self._schedule()

    async def _stream_body(self) -> None:
        """Part 0 from the open GET, then on into the next parts while they are
        wanted and nobody else fetches them; then the body is closed."""
        backend = self.deps.backend
        body = self.response.body
        index = 0
        try:
            # an open that reads nothing for a while is taken as reading from
            # the start (S3 would drop a body left unread for long)
            with trio.move_on_after(STREAM_DECIDE):
                await self._stream_go.wait()
            self.transfer.resume()  # waiting for the first read is not a stall
            if self._stream_abandoned and not self.want_all:
                self.claimed[0] = 0  # a ranged GET fetches it if it is read later
                self._first_free = 0  # a _schedule() meanwhile went past it, claimed
                if self.wanted[0]:
                    self.demanded.append(0)
                return
            while True:
                start, end = self.part_range(index)
                got = await backend.read_body_part(
                    body, self.fd, start, end - start, self.bucket, self.key, self.transfer,
                    self.digest, on_progress=functools.partial(self._landed_from_thread, index))
                if got != end - start:
                    raise BackendError(f"short download of s3://{self.bucket}/{self.key}: "
                                       f"{start + got} of {self.size} bytes")
                self.hashed_to = end if self.digest is not None else 0
                self._release_slot()  # the object's first part is here
                nxt = index + 1
                if nxt >= self.parts or self.claimed[nxt] or not (
                        self.want_all or self.wanted[nxt]) or \
                        self.part_range(nxt)[1] > self.body_end:
                    self.stream_done = True
                    self._part_landed(index)
                    return
                self.claimed[nxt] = 1
                self._stream_part = nxt
                self._part_landed(index)
                index = nxt
        finally:
            self.stream_done = True
            body.close()  # no worker thread reads it now; closing a socket does not block
            self._wake()
            self._schedule()

    async def _hash_rest(self) -> None:
        """Hash, in order, what the body stream did not (read back from the file)."""
        if self.digest is None:
            return
        while not self.stream_done:
            await self._wait_change()
        await self._hash_landed()
        while self.hashed_to < self.size:
            await self._wait_change()
            await self._hash_landed()

    async def _hash_landed(self) -> None:
        assert self.digest is not None
        while self.hashed_to < self.size:
            end = self._landed_prefix(self.hashed_to)
            if end <= self.hashed_to:
                return
            end = min(end, self.hashed_to + HASH_CHUNK)
            await trio.to_thread.run_sync(self.digest.update_from_file, self.fd, self.hashed_to,
                                          end - self.hashed_to,
                                          limiter=self.deps.store.disk_limiter)
            self.hashed_to = end

    async def _finish_hash(self) -> None:
        await self._hash_landed()
        if self.hashed_to != self.size:
            raise BackendError(f"download of s3://{self.bucket}/{self.key}: hashed "
                               f"{self.hashed_to} of {self.size} bytes")

    def _landed_prefix(self, offset: int) -> int:
        """The end of the run of landed bytes that starts at *offset*."""
        index = offset // self.part_size
        while index < self.parts:
            start, end = self.part_range(index)
            reach = start + self.progress[index]
            if reach < end:
                return max(offset, reach)
            index += 1
        return self.size


class Reader(HasMeta):
    """One open of one version: reads wait for the download until it is installed."""

    def __init__(self, download: Download | None, fd: int, meta: dict[str, Any]) -> None:
        self.download = download
        self.fd = fd
        self.meta = meta
        self.next_offset = 0  # where a sequential read would start
        self.ahead = 0  # read-ahead parts
        self.last_part = 0  # the last part the previous read touched
        self.read_to = 0  # bytes [0, read_to) were all read through this reader
        self.reads_ahead: dict[int, int] | None = {}  # start -> end of reads past read_to
        self.closed = False

    async def read(self, offset: int, size: int) -> bytes:
        download = self.download
        if download is None or download.result is not None:
            return os.pread(self.fd, size, offset)
        return await download.read(offset, size, self)

    def completes(self, offset: int, end: int, size: int) -> bool:
        """Note the read of [offset, end); True if with it this reader has read
        every byte of an object of *size* bytes (the kernel's read-ahead may send
        reads a little out of order; a reader that jumps around gives up being
        tracked after a few hundred reads ahead of its prefix)."""
        ahead = self.reads_ahead
        if ahead is None or self.read_to >= size:
            return False
        if offset > self.read_to:
            if len(ahead) >= 256:
                self.reads_ahead = None
            else:
                ahead[offset] = max(end, ahead.get(offset, 0))
            return False
        self.read_to = max(self.read_to, end)
        while ahead:
            reachable = [start for start in ahead if start <= self.read_to]
            if not reachable:
                break
            for start in reachable:
                self.read_to = max(self.read_to, ahead.pop(start))
        return self.read_to >= size

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        os.close(self.fd)
        if self.download is not None:
            self.download.detach_reader()


def _as_read_error(error: BaseException, download: Download) -> S3PoolError:
    if isinstance(error, S3PoolError):
        return error
    if isinstance(error, OSError):
        return BackendError(f"download of s3://{download.bucket}/{download.key} failed: "
                            f"{error.strerror or error}")
    return BackendError(f"download of s3://{download.bucket}/{download.key} failed: {error!r}")


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The error to report for a group of failed parts: ours first (a full
    disk first of all), then any other Exception; cancellations stay a group."""
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

