"""Files written in the mount: staged in tmp/, uploaded to S3, then cached.

A :class:`StagedUpload` is one new object being written (s3pool/fs/writes.py
feeds it the FUSE writes). Its bytes go to a file in tmp/ under the
store's rules: checked writes (a full disk is NoSpace, never a hole),
reserved against the cache's caps before they are written. A file that
grows past ``upload_part_size`` becomes a multipart upload while it is
still being written: each part is sent as soon as it is full, so the
commit (the close) waits only for the last part and S3's "complete".

Nothing of it is visible to anyone until :meth:`StagedUpload.commit`
returns: not on S3 (a PUT, or a multipart upload before its complete,
shows nothing), not in data/ (the staged file is installed, like PUSH
installs its copy, only with S3's answer: ETag and time), not in the
listing. After the commit the object is cached and fresh: a PULL or an
open right after costs no download.

A multipart upload left behind by a daemon that was killed would cost
storage on S3 forever. Before one is created, a record of it goes to
``state/uploads/`` (synced); the upload id is added once S3 has answered,
and the record is removed when the upload is completed or aborted.
:func:`abort_leftovers` (at start-up) aborts what the records name: the
upload id, or for a record that has none (killed between the request and
its answer) the uploads of that key that S3 started after the record was
written. Uploads that other programs started are never touched.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from typing import Any

import trio

from s3pool.errors import BackendError, NoSpace, S3PoolError
from s3pool.s3.answers import ListEntry, listing_time
from s3pool.s3.backend import ObjectExists
from s3pool.store.files import replace_file, write_all
from s3pool.store.layout import Layout, unlink_quietly
from s3pool.upload.context import UploadContext

log = logging.getLogger(__name__)

PARTS_IN_FLIGHT = 4  # per file: parts being sent at once (each read into memory)
ABORT_TIMEOUT = 30.0
# a record without an upload id covers the key's uploads initiated from this
# many seconds before it was written (clocks of S3 and this host differ a bit)
CLOCK_SLACK = 60.0


class NotSequential(S3PoolError):
    """A write that does not continue where the file ends (EINVAL)."""


class UploadFailed(S3PoolError):
    """The file could not be uploaded; nothing of it is on S3 (EIO)."""


class UploadRecords:
    """``state/uploads/ID.json``: the multipart uploads this daemon started."""

    def __init__(self, layout: Layout) -> None:
        self.dir = os.path.join(layout.state_dir, "uploads")
        self.tmp_dir = layout.tmp_dir

    def write(self, ident: str, record: dict[str, Any]) -> None:
        """Blocking: the record, synced, replacing any older one of *ident*."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        replace_file(self.tmp_dir, "record", os.path.join(self.dir, ident + ".json"),
                     json.dumps(record).encode())

    def remove(self, ident: str) -> None:
        unlink_quietly(os.path.join(self.dir, ident + ".json"))

    def all(self) -> list[tuple[str, dict[str, Any]]]:
        """Blocking: (ident, record) of every record; unreadable ones are dropped."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            path = os.path.join(self.dir, name)
            if not name.endswith(".json"):
                unlink_quietly(path)  # not a record (an older s3pool's torn ID.json.tmp)
                continue
            try:
                with open(path) as f:
                    record = json.load(f)
                found.append((name[:-5], {"bucket": str(record["bucket"]),
                                          "key": str(record["key"]),
                                          "started": float(record["started"]),
                                          "upload_id": record.get("upload_id")}))
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("dropping unreadable upload record %s", path)
                unlink_quietly(path)
        return found


async def abort_leftovers(ctx: UploadContext) -> int:
    """Abort the multipart uploads a killed daemon left (see the module
    docstring); returns how many were aborted. A record whose uploads cannot
    be listed or aborted now stays for the next start."""
    records = UploadRecords(ctx.store.layout)
    backend = ctx.backend
    aborted = 0
    for ident, record in await trio.to_thread.run_sync(records.all):
        bucket, key, upload_id = record["bucket"], record["key"], record["upload_id"]
        try:
            uploads = await backend.list_multipart_uploads(bucket, key)
            for found_key, found_id, initiated in uploads:
                if found_key != key:
                    continue
                if found_id == upload_id or (upload_id is None and initiated
                                             >= record["started"] - CLOCK_SLACK):
                    await backend.abort_multipart_upload(bucket, key, found_id)
                    aborted += 1
                    log.info("aborted the multipart upload of s3://%s/%s a stopped daemon "
                             "left (%s)", bucket, key, found_id)
        except S3PoolError as exc:
            log.warning("cannot abort the leftover upload of s3://%s/%s now (tried again "
                        "at the next start): %s", bucket, key, exc)
            continue
        records.remove(ident)
    return aborted


class StagedUpload:
    """One new object: sequential writes staged in tmp/, then one commit."""

    def __init__(self, ctx: UploadContext, bucket: str, key: str, part_size: int,
                 spawn: Any, only_new: bool = True) -> None:
        self.ctx = ctx
        # a new file may not replace an object someone else made meanwhile
        # (If-None-Match: *); a replace (--mount-overwrite) may
        self.only_new = only_new
        self.store = ctx.store
        self.backend = ctx.backend
        self.bucket = bucket
        self.key = key
        self.part_size = part_size
        self.spawn = spawn  # starts a background task (the mount's nursery)
        self.fd, self.path = self.store.new_temp("put", bucket)
        self.size = 0
        self.reserved = 0  # bytes counted in store.reserved for this file
        self.upload_id: str | None = None
        self.ident = uuid.uuid4().hex  # of its record in state/uploads/
        self.records = UploadRecords(ctx.store.layout)
        self.parts: dict[int, str] = {}  # part number -> ETag
        self.next_part = 1  # the next part to send
        self.in_flight = 0
        self._parts_changed = trio.Event()
        self._part_limiter = trio.CapacityLimiter(PARTS_IN_FLIGHT)
        self.error: BaseException | None = None  # the first failure: nothing is uploaded
        self.meta: dict[str, Any] = {}  # what S3 answered, once committed
        self.committed = False
        self.sealed = False  # the commit began: no more writes
        self._commit_lock = trio.Lock()  # writes and commits, one at a time
        self.closed = False  # staged file gone, reservation returned

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    # --- writing ----------------------------------------------------------

    async def write(self, offset: int, data: bytes) -> int:
        # one at a time, and never beside a commit reading the staged file
        async with self._commit_lock:
            return await self._write(offset, data)

    async def _write(self, offset: int, data: bytes) -> int:
        if self.closed or self.committed or self.sealed:
            raise UploadFailed(f"{self.url}: written after it was closed")
        if self.error is not None:
            raise UploadFailed(f"{self.url}: an earlier write failed")
        if offset != self.size:
            raise NotSequential(f"{self.url}: write at {offset}, the file ends at {self.size}")
        end = offset + len(data)
        try:
            await self._reserve(end)
            await trio.to_thread.run_sync(write_all, self.fd, memoryview(data), offset,
                                          limiter=self.store.disk_limiter)
        except BaseException as exc:
            self.error = exc
            raise
        self.size = end
        await self._send_full_parts()
        return len(data)

    async def _reserve(self, upto: int) -> None:
        """Count the staged bytes against the cache's caps before they are written."""
        if upto <= self.reserved:
            return
        cap = self.ctx.settings.max_cache_size
        if cap and upto > cap:
            raise NoSpace(f"{self.url}: {upto} bytes is more than max_cache_size ({cap})")
        grow = max(upto - self.reserved, min(self.part_size, 1 << 20))
        await self.ctx.room.make_room(grow)
        self.store.reserved += grow
        self.reserved += grow

    async def _send_full_parts(self) -> None:
        """Start a multipart upload once the file outgrows one part, and send
        each part as soon as it is full (the last one waits for the commit)."""
        ps = self.part_size
        if self.size <= ps:
            return
        if self.upload_id is None:
            await self._create_upload()
        while self.size >= self.next_part * ps:
            self._start_part(self.next_part, (self.next_part - 1) * ps, ps)
            self.next_part += 1

    async def _create_upload(self) -> None:
        record = {"bucket": self.bucket, "key": self.key, "started": time.time(),
                  "upload_id": None}
        await trio.to_thread.run_sync(self.records.write, self.ident, record)
        try:
            self.upload_id = await self.backend.create_multipart_upload(self.bucket, self.key)
        except BaseException as exc:
            self.error = exc
            raise
        record["upload_id"] = self.upload_id
        await trio.to_thread.run_sync(self.records.write, self.ident, record)

    def _start_part(self, number: int, offset: int, length: int) -> None:
        self.in_flight += 1
        self.spawn(self._send_part, number, offset, length)

    async def _send_part(self, number: int, offset: int, length: int) -> None:
        try:
            async with self._part_limiter:
                if self.error is None:
                    assert self.upload_id is not None
                    self.parts[number] = await self.backend.upload_part_from(
                        self.bucket, self.key, self.upload_id, number, self.path, offset, length)
        except BaseException as exc:
            if self.error is None:
                self.error = exc
            if not isinstance(exc, Exception):
                raise
            log.warning("%s: part %d failed: %s", self.url, number, exc)
        finally:
            self.in_flight -= 1
            self._parts_changed.set()
            self._parts_changed = trio.Event()

    async def _parts_sent(self) -> None:
        while self.in_flight:
            await self._parts_changed.wait()

    # --- the end ----------------------------------------------------------

    async def commit(self) -> dict[str, Any]:
        """Upload what was written (the tail part and S3's complete, or one PUT),
        then install it in the cache; returns its meta. On failure nothing is
        left on S3 and UploadFailed (or NoSpace) is raised. A second commit
        while one runs waits for it and shares its outcome."""
        async with self._commit_lock:
            if self.committed:
                return self.meta
            return await self._commit()

    async def _commit(self) -> dict[str, Any]:
        self.sealed = True
        if self.error is not None:
            await self.abort()
            raise UploadFailed(f"{self.url}: not uploaded, a write failed: {self.error}")
        try:
            answer = await self._upload()
        except BaseException as exc:
            self.error = exc
            with trio.CancelScope(shield=True):
                await self.abort()
            if isinstance(exc, ObjectExists):
                log.warning("%s not uploaded: %s", self.url, exc)
                raise
            if isinstance(exc, S3PoolError):
                log.warning("upload of %s (%d bytes) failed: %s", self.url, self.size, exc)
                raise UploadFailed(f"upload of {self.url} failed: {exc}") from exc
            raise
        self.committed = True
        meta = self.meta = {
            "LastModified": answer.get("LastModified"), "ETag": answer["ETag"],
            "ContentLength": self.size, "ContentType": "binary/octet-stream",
            "Metadata": {}, "AcceptRanges": "bytes"}
        with trio.CancelScope(shield=True):
            await self._install(meta)
        return meta

    async def _upload(self) -> dict[str, Any]:
        if self.upload_id is None:
            return await self.backend.put_object_from(self.bucket, self.key, self.path,
                                                      self.only_new)
        tail = self.size - (self.next_part - 1) * self.part_size
        if tail > 0:
            self._start_part(self.next_part, (self.next_part - 1) * self.part_size, tail)
            self.next_part += 1
        await self._parts_sent()
        if self.error is not None:
            raise self.error
        parts = sorted(self.parts.items())
        answer = await self.backend.complete_multipart_upload(
            self.bucket, self.key, self.upload_id, parts, self.only_new)
        await trio.to_thread.run_sync(self.records.remove, self.ident)
        return answer

    async def _install(self, meta: dict[str, Any]) -> None:
        """The uploaded bytes into data/ (as PUSH does), the key fresh and listed."""
        ctx, store, bucket, key = self.ctx, self.store, self.bucket, self.key
        os.close(self.fd)
        self.fd = -1
        try:
            async with store.key_lock(bucket, key):
                ctx.supersede(bucket, key)  # an old version's download is not installed
                await store.remove(bucket, key)
                ctx.forget(bucket, key)
                ctx.forget_missing(bucket, key)
                self._unreserve()
                try:
                    await store.install(bucket, key, self.path, meta)
                    self.path = ""  # renamed into data/: its name in tmp/ is no longer ours
                    ctx.mark_fresh(bucket, key)
                    ctx.installed()
                except (NoSpace, OSError, S3PoolError) as exc:
                    log.warning("%s is uploaded but could not be cached: %s", self.url, exc)
                await ctx.add_key(bucket, ListEntry(
                    key, self.size, listing_time(meta), meta["ETag"]))
            ctx.counters.pushes += 1
            ctx.counters.bytes_uploaded += self.size
        finally:
            self._close()

    async def abort(self) -> None:
        """Nothing of the file stays: parts sent are aborted on S3, the staged file goes."""
        if self.error is None:
            self.error = UploadFailed(f"{self.url}: aborted")
        try:
            with trio.move_on_after(ABORT_TIMEOUT):
                await self._parts_sent()  # a part still being sent would outlive the abort
            if self.upload_id is not None and not self.committed:
                try:
                    await self.backend.abort_multipart_upload(self.bucket, self.key,
                                                              self.upload_id)
                    await trio.to_thread.run_sync(self.records.remove, self.ident)
                except (S3PoolError, BackendError) as exc:
                    log.warning("cannot abort the upload of %s now (aborted at the next "
                                "start): %s", self.url, exc)
                self.upload_id = None
            elif not self.committed:
                await trio.to_thread.run_sync(self.records.remove, self.ident)
        finally:
            self._close()

    def _unreserve(self) -> None:
        self.store.reserved -= self.reserved
        self.reserved = 0

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.path:
            unlink_quietly(self.path)
        self._unreserve()
