"""One in-memory stand-in for s3pool/s3/backend.py's Backend, for the unit tier.

:class:`FakeBackend` answers the calls the cache, the downloads, the
listings, PUSH, the staged uploads and the FUSE ops make of a Backend, from
a dict of objects, with S3's semantics where s3pool depends on them: a
conditional GET of the current ETag is a 304 (``None``), a ranged GET of
another version is VersionChanged, a missing key NoSuchKey, a missing
bucket NoSuchBucket, a PUT with If-None-Match: * over an existing key
ObjectExists, an MD5 ETag (and so the same digest check as a real GET).

It runs on the trio thread (no worker threads: a test under
``trio.testing.MockClock`` sees every step), copying bodies in chunks of
:attr:`FakeBackend.chunk` bytes with a checkpoint between them.

What tests look at and steer:

- ``calls``: a Counter of calls per kind (the names in :data:`KINDS`);
  ``log``: ``(kind, bucket, key)`` of each call in order.
- ``fail(kind, exc, times=1, key=None)``: the next *times* calls of *kind*
  (of *key*, if given) raise *exc*.
- ``gate(kind, key=None)``: calls of *kind* wait until the returned
  :class:`Gate` is opened; ``gate.waiting`` counts those waiting now.
- ``delay(kind, seconds, key=None)``: calls of *kind* sleep first (trio's
  clock: MockClock jumps it).
- ``cut(bucket, key, after)``: bodies and ranges of the key fail with
  BackendError once byte *after* of the object is reached.
- ``hook``: an ``async def hook(kind, bucket, key, **info)`` called at the
  start of every call (and for ``"chunk"``, before each chunk of a body with
  ``offset=``): anything else a test needs.

Objects are seeded with :meth:`FakeBackend.put` (not counted) and read back
with :meth:`FakeBackend.data`.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import trio

from s3pool.errors import BackendError, NoSuchBucket, NoSuchKey, VersionChanged
from s3pool.s3.answers import ListEntry, ObjectResponse, meta_from_response, validator
from s3pool.s3.backend import ObjectExists
from s3pool.s3.checksums import Digest, digest_for
from s3pool.s3.listparse import FAST_ENTRIES, FAST_PREFIXES
from s3pool.s3.progress import Transfer
from s3pool.store.files import write_all

# every kind of call counted in FakeBackend.calls
KINDS = (
    "get_object",  # a whole-object GET (conditional or not); a 304 counts too
    "read_body",  # read_body_part / read_body_at: bytes of an open GET's body
    "get_range",  # get_range_into: one ranged GET
    "chunk",  # one chunk of a body or range copied into a file (hook only, not counted)
    "head_object",
    "first_keys",  # a LIST of one page under a prefix (discover)
    "list_page",  # one page of a LIST through client.list_objects_v2 (listings)
    "iter_listing",  # a whole-bucket listing (all its pages)
    "upload_file",  # PUSH
    "put_object",  # put_object_from (a file written in the mount)
    "create_multipart", "upload_part", "complete_multipart", "abort_multipart",
    "list_multipart_uploads",
    "delete_object",
    "bucket_exists",
)


@dataclass
class FakeObject:
    data: bytes
    etag: str  # quoted, as S3 sends it
    last_modified: datetime
    metadata: dict[str, str] = field(default_factory=dict)
    content_type: str = "binary/octet-stream"

    def response_dict(self) -> dict[str, Any]:
        """The object's headers in boto3's get/head_object shape."""
        return {"ETag": self.etag, "ContentLength": len(self.data),
                "LastModified": self.last_modified, "ContentType": self.content_type,
                "Metadata": dict(self.metadata), "AcceptRanges": "bytes"}


class Gate:
    """Calls wait here until :meth:`open`; ``waiting`` counts them (trio thread)."""

    def __init__(self) -> None:
        self._event = trio.Event()
        self.waiting = 0
        self.passed = 0

    def open(self) -> None:
        self._event.set()

    async def wait_for_waiters(self, count: int = 1) -> None:
        """Until *count* calls wait at the gate (an observable condition, no sleep)."""
        while self.waiting < count:
            await trio.sleep(0.001)

    async def __call__(self) -> None:
        self.waiting += 1
        try:
            await self._event.wait()
        finally:
            self.waiting -= 1
        self.passed += 1


class FakeBody:
    """An open GET's body: read/read1/close over the object's bytes from *start*."""

    def __init__(self, backend: FakeBackend, bucket: str, key: str, data: bytes,
                 start: int = 0) -> None:
        self.backend, self.bucket, self.key = backend, bucket, key
        self.data = data
        self.start = start  # offset in the object of data[0]
        self.pos = 0
        self.closed = False

    def read1(self, size: int = -1) -> bytes:
        if self.closed:
            raise ValueError("read of a closed body")
        end = len(self.data) if size is None or size < 0 else min(len(self.data),
                                                                    self.pos + size)
        cut = self.backend.cuts.get((self.bucket, self.key))
        if cut is not None and self.start + end > cut:
            end = max(self.pos, cut - self.start)
            if end == self.pos:
                raise BackendError(f"reading s3://{self.bucket}/{self.key} failed: "
                                   f"connection cut at byte {cut} (fake)")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def read(self, size: int | None = None) -> bytes:
        return self.read1(-1 if size is None else size)

    def close(self) -> None:
        self.closed = True


class _FakeClient:
    """The boto3 client surface listings use: list_objects_v2 (blocking; the
    fast parser's FAST_ENTRIES/FAST_PREFIXES shape)."""

    def __init__(self, backend: FakeBackend) -> None:
        self.backend = backend

    def list_objects_v2(self, Bucket: str, Prefix: str = "", MaxKeys: int = 1000,
                        Delimiter: str | None = None, ContinuationToken: str | None = None,
                        StartAfter: str | None = None, **_: Any) -> dict[str, Any]:
        self.backend._count_blocking("list_page", Bucket, Prefix)
        if not self.backend.honours_start_after:
            StartAfter = None  # as some S3-compatible servers do
        return self.backend._list(Bucket, Prefix, MaxKeys, Delimiter,
                                  ContinuationToken or StartAfter)


class FakeBackend:
    """In-memory S3 with the Backend's surface (see the module docstring)."""

    def __init__(self, buckets: tuple[str, ...] = ("bucket",)) -> None:
        self.buckets: set[str] = set(buckets)
        self.objects: dict[tuple[str, str], FakeObject] = {}
        self.calls: Counter[str] = Counter()
        self.log: list[tuple[str, str, str | None]] = []
        self.hook: Callable[..., Awaitable[None]] | None = None
        self.chunk = 64 << 10
        self.cuts: dict[tuple[str, str], int] = {}  # (bucket, key) -> byte the body stops at
        self._failures: list[list[Any]] = []  # [kind, key, exc, times left]
        self._gates: list[tuple[str, str | None, Gate]] = []
        self._delays: list[tuple[str, str | None, float]] = []
        self._uploads: dict[str, tuple[str, str, dict[int, bytes], float]] = {}
        self._upload_ids = itertools.count(1)
        self._clock = 1_700_000_000  # LastModified of the next write (whole seconds)
        self._lock = threading.RLock()  # counters bumped from listing worker threads
        # the Backend's attributes that others read
        self.stopping = threading.Event()
        self.limiter = trio.CapacityLimiter(8)
        self.client = _FakeClient(self)
        self.endpoint_url = "http://fake-s3.invalid"
        self.region = "us-east-1"
        self.errors = 0
        self.lean_gets = 0
        self.lean_fallbacks = 0
        self.lean_lists = 0
        self.lean_list_fallbacks = 0
        self.observer: Callable[[str, float, str | None], None] | None = None
        self.conditional_writes = True
        self.honours_start_after = True  # False: LISTs answer from the prefix's start
        self.max_threads = 8
        self.resized_to: int | None = None

    def list_objects_v2(self, **params: Any) -> dict[str, Any]:
        """One LIST page, as Backend.list_objects_v2 (through the fake client)."""
        return self.client.list_objects_v2(**params)

    # --- seeding and reading back (not counted) ----------------------------

    def put(self, bucket: str, key: str, data: bytes, metadata: dict[str, str] | None = None,
            content_type: str = "binary/octet-stream", etag: str | None = None) -> FakeObject:
        """Make (or replace) an object, as another writer of the bucket would."""
        self.buckets.add(bucket)
        self._clock += 1
        obj = FakeObject(data, etag if etag is not None else
                         f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"',
                         datetime.fromtimestamp(self._clock, UTC),
                         dict(metadata or {}), content_type)
        self.objects[(bucket, key)] = obj
        return obj

    def data(self, bucket: str, key: str) -> bytes | None:
        obj = self.objects.get((bucket, key))
        return None if obj is None else obj.data

    def remove(self, bucket: str, key: str) -> None:
        """Delete behind s3pool's back (not counted)."""
        self.objects.pop((bucket, key), None)

    def cut(self, bucket: str, key: str, after: int) -> None:
        """Bodies and ranges of the key fail once they reach byte *after*."""
        self.cuts[(bucket, key)] = after

    # --- steering ------------------------------------------------------------

    def fail(self, kind: str, exc: BaseException, times: int = 1, key: str | None = None
             ) -> None:
        assert kind in KINDS, kind
        self._failures.append([kind, key, exc, times])

    def gate(self, kind: str, key: str | None = None) -> Gate:
        assert kind in KINDS, kind
        gate = Gate()
        self._gates.append((kind, key, gate))
        return gate

    def delay(self, kind: str, seconds: float, key: str | None = None) -> None:
        assert kind in KINDS, kind
        self._delays.append((kind, key, seconds))

    def count(self, *kinds: str) -> int:
        return sum(self.calls[k] for k in kinds)

    async def _enter(self, kind: str, bucket: str, key: str | None, counted: bool = True,
                     **info: Any) -> None:
        if counted:
            self.calls[kind] += 1
            self.log.append((kind, bucket, key))
        if self.stopping.is_set():
            raise BackendError(f"the daemon is stopping: {kind} of s3://{bucket}/{key} "
                               "not sent (fake)")
        if self.hook is not None:
            await self.hook(kind, bucket, key, **info)
        for k, which, seconds in self._delays:
            if k == kind and which in (None, key):
                await trio.sleep(seconds)
        for k, which, gate in self._gates:
            if k == kind and which in (None, key):
                await gate()
        self._raise_failure(kind, key)

    def _raise_failure(self, kind: str, key: str | None) -> None:
        for failure in self._failures:
            k, which, exc, times = failure
            if k == kind and which in (None, key) and times > 0:
                failure[3] -= 1
                if failure[3] == 0:
                    self._failures.remove(failure)
                with self._lock:
                    self.errors += 1
                raise exc

    def _count_blocking(self, kind: str, bucket: str, key: str | None) -> None:
        """A call made from a worker thread: counted, failures injected, no hook."""
        with self._lock:
            self.calls[kind] += 1
            self.log.append((kind, bucket, key))
            self._raise_failure(kind, key)

    def _object(self, bucket: str, key: str) -> FakeObject:
        if bucket not in self.buckets:
            raise NoSuchBucket(f"no such bucket: {bucket}")
        obj = self.objects.get((bucket, key))
        if obj is None:
            raise NoSuchKey(f"no such key: s3://{bucket}/{key}")
        return obj

    # --- the Backend's surface ---------------------------------------------

    def describe(self) -> str:
        return "fake S3"

    def resize(self, pull_concurrency: int) -> None:
        self.resized_to = pull_concurrency

    def warm_up(self, buckets: list[str]) -> None:
        return None

    async def get_object(self, bucket: str, key: str, if_none_match: str | None = None,
                         read_up_to: int = 0,
                         then: Callable[[ObjectResponse], Any] | None = None,
                         first_part: int = 0) -> ObjectResponse | None:
        """*first_part*: the body ends after that many bytes (body_length), as
        the real one's GET of the first part only."""
        await self._enter("get_object", bucket, key)
        obj = self._object(bucket, key)
        condition = validator(if_none_match)
        if condition is not None and condition == validator(obj.etag):
            return None  # 304
        resp = obj.response_dict()
        partial = 0 < first_part < len(obj.data)
        response = ObjectResponse(meta_from_response(resp),
                                  FakeBody(self, bucket, key,
                                           obj.data[:first_part] if partial else obj.data),
                                  digest_for(resp, bucket, key),
                                  body_length=first_part if partial else None)
        if response.content_length <= read_up_to:
            cut = self.cuts.get((bucket, key))
            if cut is not None and cut < len(obj.data):
                raise BackendError(f"short download of s3://{bucket}/{key}: {cut} of "
                                   f"{len(obj.data)} bytes (fake cut)")
            response.data = obj.data
            response.body.close()
            if response.digest is not None:
                response.digest.update(obj.data)
            if then is not None:
                then(response)
        return response

    async def _copy(self, kind_key: tuple[str, str], body: FakeBody, fd: int, offset: int,
                    limit: int, transfer: Transfer | None, digest: Digest | None,
                    on_progress: Callable[[int], None] | None) -> int:
        bucket, key = kind_key
        written = 0
        try:
            while written < limit:
                if transfer is not None:
                    transfer.check()
                await self._enter("chunk", bucket, key, counted=False, offset=offset + written)
                chunk = body.read1(min(self.chunk, limit - written))
                if not chunk:
                    break
                if digest is not None:
                    digest.update(chunk)
                write_all(fd, memoryview(chunk), offset + written)
                written += len(chunk)
                if transfer is not None:
                    transfer.add(len(chunk))
                if on_progress is not None:
                    on_progress(written)
                await trio.lowlevel.checkpoint()
        except BaseException as exc:
            if transfer is not None:
                transfer.fail(str(exc) or repr(exc))
            raise
        return written

    async def read_body_part(self, body: Any, fd: int, offset: int, limit: int, bucket: str,
                             key: str, transfer: Transfer, digest: Digest | None = None,
                             on_progress: Callable[[int], None] | None = None) -> int:
        await self._enter("read_body", bucket, key, offset=offset)
        return await self._copy((bucket, key), body, fd, offset, limit, transfer, digest,
                                on_progress)

    async def read_body_at(self, response: ObjectResponse, fd: int, offset: int, limit: int,
                           bucket: str, key: str, transfer: Transfer | None = None,
                           digest: Digest | None = None) -> int:
        try:
            await self._enter("read_body", bucket, key, offset=offset)
            return await self._copy((bucket, key), response.body, fd, offset, limit, transfer,
                                    digest, None)
        finally:
            response.body.close()

    async def get_range_into(self, bucket: str, key: str, etag: str, start: int, length: int,
                             fd: int, transfer: Transfer | None = None,
                             on_progress: Callable[[int], None] | None = None,
                             total: int | None = None) -> int:
        await self._enter("get_range", bucket, key, offset=start)
        if transfer is not None:
            transfer.check()
        obj = self._object(bucket, key)
        if validator(etag) and validator(etag) != validator(obj.etag):
            raise VersionChanged(f"s3://{bucket}/{key} changed on S3 while it was read "
                                 f"(If-Match {etag} failed)")
        if total is not None and total != len(obj.data):
            raise BackendError(f"s3://{bucket}/{key}: the range answer says {len(obj.data)} "
                               f"bytes, not {total}")
        body = FakeBody(self, bucket, key, obj.data[start:start + length], start)
        try:
            return await self._copy((bucket, key), body, fd, start, length, transfer, None,
                                    on_progress)
        finally:
            body.close()

    async def head_object(self, bucket: str, key: str) -> dict[str, Any]:
        await self._enter("head_object", bucket, key)
        return meta_from_response(self._object(bucket, key).response_dict())

    def _entries(self, bucket: str, prefix: str) -> list[ListEntry]:
        return [ListEntry(k, len(o.data), o.last_modified.timestamp(), o.etag)
                for (b, k), o in sorted(self.objects.items()) if b == bucket
                and k.startswith(prefix)]

    async def first_keys(self, bucket: str, prefix: str, limit: int) -> list[ListEntry]:
        await self._enter("first_keys", bucket, prefix)
        if bucket not in self.buckets:
            raise NoSuchBucket(f"no such bucket: {bucket}")
        return self._entries(bucket, prefix)[:limit]

    def _list(self, bucket: str, prefix: str, max_keys: int, delimiter: str | None,
              continuation: str | None) -> dict[str, Any]:
        """One LIST page (blocking, like boto3's): keys after *continuation*."""
        if bucket not in self.buckets:
            raise NoSuchBucket(f"no such bucket: {bucket}")
        entries: list[ListEntry] = []
        prefixes: list[str] = []
        last = ""
        for entry in self._entries(bucket, prefix):
            if continuation and entry.key <= continuation:
                continue
            if len(entries) + len(prefixes) >= max_keys:
                return {FAST_ENTRIES: entries, FAST_PREFIXES: prefixes, "IsTruncated": True,
                        "NextContinuationToken": last}
            rest = entry.key[len(prefix):]
            if delimiter and delimiter in rest:
                sub = prefix + rest[:rest.index(delimiter) + len(delimiter)]
                if not prefixes or prefixes[-1] != sub:
                    prefixes.append(sub)
                last = sub + "\U0010ffff"  # past every key under it
                continue
            entries.append(entry)
            last = entry.key
        return {FAST_ENTRIES: entries, FAST_PREFIXES: prefixes, "IsTruncated": False}

    def list_page(self, bucket: str, prefix: str, delimiter: str | None,
                  continuation: str | None, max_keys: int = 1000
                  ) -> tuple[list[ListEntry], list[str], str | None]:
        """Blocking: (keys, subdirectories, next token) of one LIST page."""
        self._count_blocking("list_page", bucket, prefix)
        page = self._list(bucket, prefix, max_keys, delimiter, continuation)
        return (page[FAST_ENTRIES], page[FAST_PREFIXES],
                page.get("NextContinuationToken") if page["IsTruncated"] else None)

    def iter_listing(self, bucket: str) -> Iterator[list[ListEntry]]:
        """Blocking generator of listing pages of 1,000 keys (run in a thread)."""
        self._count_blocking("iter_listing", bucket, None)
        if bucket not in self.buckets:
            raise NoSuchBucket(f"no such bucket: {bucket}")
        entries = self._entries(bucket, "")
        for i in range(0, max(len(entries), 1), 1000):
            yield entries[i:i + 1000]

    def _written(self, bucket: str, key: str, data: bytes, etag: str | None = None,
                 metadata: dict[str, str] | None = None,
                 content_type: str = "binary/octet-stream") -> dict[str, Any]:
        obj = self.put(bucket, key, data, metadata, content_type, etag)
        return {"ETag": obj.etag, "LastModified": format_datetime(obj.last_modified,
                                                                  usegmt=True)}

    async def upload_file(self, bucket: str, key: str, path: str,
                          extra_args: dict[str, Any] | None = None) -> None:
        await self._enter("upload_file", bucket, key)
        if bucket not in self.buckets:
            raise NoSuchBucket(f"no such bucket: {bucket}")
        with open(path, "rb") as f:
            data = f.read()
        extra = extra_args or {}
        self._written(bucket, key, data, metadata=extra.get("Metadata"),
                      content_type=extra.get("ContentType", "binary/octet-stream"))

    async def put_object_from(self, bucket: str, key: str, path: str,
                              only_new: bool = False) -> dict[str, Any]:
        await self._enter("put_object", bucket, key)
        if bucket not in self.buckets:
            raise NoSuchBucket(f"no such bucket: {bucket}")
        if only_new and self.conditional_writes and (bucket, key) in self.objects:
            raise ObjectExists(f"s3://{bucket}/{key} was created meanwhile by someone else: "
                               "not replaced")
        with open(path, "rb") as f:
            data = f.read()
        return self._written(bucket, key, data)

    async def create_multipart_upload(self, bucket: str, key: str) -> str:
        await self._enter("create_multipart", bucket, key)
        if bucket not in self.buckets:
            raise NoSuchBucket(f"no such bucket: {bucket}")
        upload_id = f"upload-{next(self._upload_ids)}"
        self._uploads[upload_id] = (bucket, key, {}, float(self._clock))
        return upload_id

    async def upload_part_from(self, bucket: str, key: str, upload_id: str, number: int,
                               path: str, offset: int, length: int) -> str:
        await self._enter("upload_part", bucket, key, number=number)
        with open(path, "rb") as f:
            data = os.pread(f.fileno(), length, offset)
        if len(data) != length:
            raise BackendError(f"part {number} of s3://{bucket}/{key}: staged file is short "
                               f"({len(data)} of {length} bytes)")
        if upload_id not in self._uploads:
            raise BackendError(f"no such upload {upload_id} (fake)")
        self._uploads[upload_id][2][number] = data
        return f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'

    async def complete_multipart_upload(self, bucket: str, key: str, upload_id: str,
                                        parts: list[tuple[int, str]],
                                        only_new: bool = False) -> dict[str, Any]:
        await self._enter("complete_multipart", bucket, key)
        upload = self._uploads.get(upload_id)
        if upload is None:
            raise BackendError(f"no such upload {upload_id} (fake)")
        sent = upload[2]
        if [n for n, _ in parts] != sorted(sent):
            raise BackendError(f"parts {[n for n, _ in parts]} do not match those sent "
                               f"{sorted(sent)} (fake)")
        if only_new and self.conditional_writes and (bucket, key) in self.objects:
            raise ObjectExists(f"s3://{bucket}/{key} was created meanwhile by someone else: "
                               "not replaced")
        del self._uploads[upload_id]
        digests = b"".join(hashlib.md5(sent[n], usedforsecurity=False).digest()
                           for n, _ in parts)
        etag = f'"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(parts)}"'
        return self._written(bucket, key, b"".join(sent[n] for n, _ in parts), etag)

    async def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        await self._enter("abort_multipart", bucket, key)
        self._uploads.pop(upload_id, None)  # one S3 no longer knows is already gone

    def uploads_in_progress(self) -> list[str]:
        return sorted(self._uploads)

    def parts_of(self, upload_id: str) -> list[int]:
        """Numbers of the parts sent so far to a multipart upload in progress."""
        return sorted(self._uploads[upload_id][2])

    async def list_multipart_uploads(self, bucket: str, prefix: str
                                     ) -> list[tuple[str, str, float]]:
        await self._enter("list_multipart_uploads", bucket, prefix)
        return [(k, upload_id, started) for upload_id, (b, k, _, started)
                in sorted(self._uploads.items()) if b == bucket and k.startswith(prefix)]

    async def delete_object(self, bucket: str, key: str) -> None:
        await self._enter("delete_object", bucket, key)
        if bucket not in self.buckets:
            raise NoSuchBucket(f"no such bucket: {bucket}")
        self.objects.pop((bucket, key), None)  # S3 deletes a missing key quietly

    async def bucket_exists(self, bucket: str) -> bool:
        await self._enter("bucket_exists", bucket, None)
        return bucket in self.buckets
