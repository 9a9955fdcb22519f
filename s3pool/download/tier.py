"""The shared cache tier: a second S3 endpoint between a fleet's hosts and the origin.

``--shared-cache s3://BUCKET/PREFIX`` (with ``--shared-cache-endpoint URL``
and ``--shared-cache-profile NAME``, else the standard AWS chain) names a
bucket on any S3-compatible engine the site runs (SeaweedFS, MinIO, Ceph,
S3 itself). A host that misses an object asks the tier for it before the
origin; a host that fetched an object from the origin writes it to the
tier in the background, so the next host finds it there.

- **Addressed by content version.** An object's tier key is ``PREFIX`` +
  the SHA-256 (hex) of ``origin bucket NUL key NUL ETag``: a new version
  at the origin has another tier key, so the tier can never serve an old
  version under a new name. The origin's metadata travels beside the
  bytes as the tier object's user metadata (``s3pool-etag``,
  ``s3pool-size``, ``s3pool-content-type``, ``s3pool-last-modified``,
  ``s3pool-bucket``, ``s3pool-key``, and any full-object checksum as
  ``s3pool-checksumcrc64nvme``...).
- **Freshness stays the origin's.** Which version is current is asked of
  the origin (a HEAD after the freshness window, instead of the
  conditional GET), or read from a whole listing of the bucket (the
  published one, or the host's own) younger than the freshness window.
  Only the bytes come from the tier.
- **The tier is not trusted.** Its answer must carry the metadata of the
  version the origin named (ETag and size) and exactly that many bytes,
  and the bytes must hash to the origin's full-object checksum or its
  single-part ETag's MD5 (``checksums.Digest``, from the *origin's*
  answer, never the tier's). So an object is read from the tier only when
  the origin gives such a check: an object with a multipart ETag and no
  full-object checksum is always read from the origin (and never written
  to the tier), since a length is all that could be checked and a
  checksum the tier stored beside the bytes is the tier's word.
- **The tier never fails a PULL.** A tier that errs, times out, cannot be
  reached, answers with other metadata or with bytes that do not match
  sends that object to the origin, with one log line (``shared cache:
  ... fetching from the origin``). A ranged part that fails from the tier
  is fetched from the origin; a body that fails mid-way goes on from the
  origin where it broke (:class:`_OnFromOrigin`); bytes that fail the
  check fail that download, and the PULL fetches the object from the
  origin (a reader of the mount that read it all gets EIO at its last
  read, and the next open reads from the origin). After
  ``FAILURES_BEFORE_BACKOFF`` failures in a row the tier is skipped for
  ``BACKOFF_FIRST`` seconds, doubling up to ``BACKOFF_MAX``.
- **Writes are best effort.** A verified object fetched from the origin is
  queued for the tier as a record (bucket, key, ETag, size: its bytes stay
  in the cache file), at most ``UPLOAD_QUEUE`` of them, oldest first; a
  newer version of a queued key takes its place. ``UPLOAD_CONCURRENCY``
  background tasks write them from the installed cache file: at its turn a
  record's file is opened under the key's lock if the cache still holds
  that version (eviction cannot change it under the upload then). An upload
  is *skipped* (``uploads_skipped``) when the queue is full, when its key
  was evicted or replaced before its turn, or at shutdown (the queue is
  dropped). An upload waits while the host fetches anything (a download, a
  small object's GET, an ask of the tier) and until it has fetched nothing
  for ``UPLOAD_QUIET`` (up to ``UPLOAD_DEFER_MAX`` in all), so it does not
  slow the readers; while the tier is in backoff, or the uploads are (after
  ``FAILURES_BEFORE_BACKOFF`` failed uploads in a row: the queue is kept);
  and while the uploads being sent hold ``UPLOAD_BYTES`` (one always may
  go). A HEAD first, so a copy another host wrote is kept. Nobody waits
  for them.
- **A tier that keeps missing is paused.** After ``COLD_MISSES`` misses in
  a row (``COLD_MISSES_SERVED`` once the tier has served this host an
  object: a tier holding most of a working set may lack a run of it) a
  miss goes straight to the origin's (conditional) GET for
  ``COLD_SECONDS``: one request instead of the origin's HEAD, the tier's
  404 and the origin's GET. Until an ask hits (at the start, after a
  pause) one object at a time is asked; at the start the others wait for
  the first answer (see :meth:`SharedTier.lookup`).

Expiry is the engine's business (a lifecycle rule on the prefix; see
docs/fleet.md). STATUS shows ``shared_cache_*`` counters.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlsplit

import trio

from s3pool.errors import BackendError, DigestMismatch, NoSuchKey, S3PoolError
from s3pool.s3.answers import ObjectResponse, check_etag, validator
from s3pool.s3.backend import Backend, read_small
from s3pool.s3.checksums import CHECKSUM_FIELDS, Digest, digest_for
from s3pool.s3.progress import Transfer

if TYPE_CHECKING:
    from s3pool.store.objects import CachedObject, Store

log = logging.getLogger(__name__)

FAILURES_BEFORE_BACKOFF = 3  # tier failures in a row before it is skipped
BACKOFF_FIRST = 30.0  # seconds skipped the first time
BACKOFF_MAX = 600.0
UPLOAD_CONCURRENCY = 2  # uploads to the tier at once
UPLOAD_BYTES = 512 << 20  # bytes of the uploads being sent at once, at most (one always may)
UPLOAD_QUEUE = 50_000  # uploads waiting their turn, at most (~400 bytes a record: ~19 MiB)
UPLOAD_DEFER_MAX = 60.0  # seconds an upload waits for the host's downloads to end, at most
UPLOAD_DEFER_POLL = 0.2
UPLOAD_QUIET = 0.5  # ... and begins once the host has fetched nothing for this long
TIER_DEADLINE = 10.0  # seconds a tier request may go unanswered...
TIER_STALL_BYTES = 1 << 20  # ... or bring less than this many bytes of its body
BAD_VERSIONS = 10_000  # versions remembered as bad in the tier (for the origin)
COLD_MISSES = 8  # the tier missed this many asks in a row (no hit between)...
COLD_MISSES_SERVED = 64  # ... or this many, once it has served this host an object...
COLD_SECONDS = 2.0  # ... so misses go straight to the origin's GET this long (no HEAD, no ask)
META = "s3pool-"


class ListedVersions(Protocol):
    """What the tier reads of the listings (listing.listings.Listings): how old
    the bucket's whole listing is, and one key's entry in it."""

    def listing_age(self, bucket: str) -> float | None: ...

    def key_info(self, bucket: str, key: str) -> tuple[int, float, str] | None: ...


class TierCurrent:
    """The origin's check found the cached copy current (no bytes needed)."""


CURRENT = TierCurrent()


def parse_tier_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` -> (bucket, prefix ending in '/' or empty)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"--shared-cache wants s3://BUCKET/PREFIX, not {url!r}")
    prefix = parts.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return parts.netloc, prefix


def tier_key(prefix: str, bucket: str, key: str, etag: str) -> str:
    """The tier key of one version: PREFIX + sha256(bucket NUL key NUL bare ETag)."""
    bare = (etag or "").strip().strip('"')
    name = hashlib.sha256(f"{bucket}\0{key}\0{bare}".encode("utf-8", "surrogateescape"))
    return prefix + name.hexdigest()


def tier_metadata(bucket: str, key: str, meta: dict[str, Any]) -> dict[str, str]:
    """The origin's metadata, as the tier object's user metadata (ASCII)."""
    out = {
        META + "etag": str(meta.get("ETag") or "").strip().strip('"'),
        META + "size": str(int(meta["ContentLength"])),
        META + "content-type": quote(str(meta.get("ContentType") or ""), safe="/;=+-. "),
        META + "last-modified": str(meta.get("LastModified") or ""),
        META + "bucket": bucket,
    }
    quoted = quote(key, safe="/")
    if len(quoted) <= 1024:  # user metadata is 2 KiB at most in all
        out[META + "key"] = quoted
    for field in CHECKSUM_FIELDS + ("ChecksumType",):
        if meta.get(field):
            out[META + field.lower()] = str(meta[field])
    return out


@dataclass
class TierResponse(ObjectResponse):
    """A GET of the tier that stands for the origin's: the origin's meta and
    digest, the tier's body; ranged parts through :meth:`get_range_into`."""

    tier: SharedTier | None = None
    tier_key: str = ""
    tier_etag: str = ""
    ranged_bytes: int = 0  # bytes of ranged parts (from the tier or the origin)
    body_origin_bytes: int = 0  # bytes of the body read from the origin after a tier failure

    async def get_range_into(self, bucket: str, key: str, etag: str, start: int, length: int,
                             fd: int, transfer: Transfer | None = None,
                             on_progress: Callable[[int], None] | None = None,
                             total: int | None = None) -> int:
        """A part from the tier, pinned to the tier copy's ETag; from the origin
        (pinned to the origin's) if the tier fails it."""
        tier = self.tier
        assert tier is not None
        if tier.usable():
            try:
                got = await tier.backend.get_range_into(
                    tier.bucket, self.tier_key, self.tier_etag, start, length, fd,
                    _PartTransfer(transfer) if transfer is not None else None,
                    on_progress, total)
                if got == length:
                    tier.add_bytes(tier=got)
                    self.ranged_bytes += got
                    return got
                raise BackendError(f"short range from the tier: {got} of {length} bytes")
            except S3PoolError as exc:
                tier.failed(bucket, key, f"part at {start}: {exc}")
        got = await tier.origin.get_range_into(bucket, key, etag, start, length, fd, transfer,
                                               on_progress, total)
        tier.add_bytes(origin=got)
        self.ranged_bytes += got
        return got


class _PartTransfer:
    """The download's Transfer for one part from the tier: bytes and the stop
    are the download's, but a failure stays with the part (the origin's turn)."""

    def __init__(self, transfer: Transfer) -> None:
        self._transfer = transfer
        self.url = transfer.url

    @property
    def done(self) -> int:
        return self._transfer.done

    def add(self, count: int) -> None:
        self._transfer.add(count)

    def check(self) -> None:
        self._transfer.check()

    def fail(self, message: str) -> None:
        pass


class _OnFromOrigin:
    """The body of a GET of the tier that, if the tier fails it (an error, the
    deadline, an early end), goes on with the same bytes from the origin: a
    ranged GET from where it broke, pinned to the origin's ETag (worker
    threads; the download and its digest see one body, in order)."""

    def __init__(self, body: Any, response: TierResponse, tier: SharedTier, bucket: str,
                 key: str, etag: str, size: int) -> None:
        self._body = body
        self._response = response
        self._tier = tier
        self._bucket = bucket
        self._key = key
        self._etag = etag
        self._size = size
        self._pos = 0
        self._from_origin = False

    def read1(self, size: int = -1) -> bytes:
        return self._read(size, True)

    def read(self, size: int | None = None) -> bytes:
        return self._read(size, False)

    def _read(self, size: int | None, once: bool) -> bytes:
        data: bytes
        try:
            data = self._body.read1(size) if once else self._body.read(size)
            if not data and self._pos < self._size and size != 0:
                raise BackendError(f"the body ended after {self._pos} of {self._size} bytes")
        except Exception as exc:  # noqa: BLE001 (the tier's failure, whatever it is)
            if self._from_origin or self._tier.origin.stopping.is_set():
                raise
            self._switch(exc)
            data = self._body.read1(size) if once else self._body.read(size)
        self._pos += len(data)
        if self._from_origin:
            self._response.body_origin_bytes += len(data)
        return data

    def _switch(self, exc: BaseException) -> None:
        self._tier.failed(self._bucket, self._key, f"body at byte {self._pos}: {exc}")
        try:
            self._body.close()
        except Exception:  # noqa: BLE001 (a broken body)
            pass
        self._from_origin = True
        self._body = self._tier.origin.open_range(self._bucket, self._key, self._etag,
                                                  self._pos, self._size - self._pos,
                                                  self._size)

    def close(self) -> None:
        self._body.close()


class SharedTier:
    """One host's view of the shared cache tier (see the module's docstring)."""

    def __init__(self, backend: Backend, bucket: str, prefix: str, origin: Backend) -> None:
        self.backend = backend
        self.bucket = bucket
        self.prefix = prefix
        self.origin = origin
        self.hits = 0
        self.misses = 0
        self.fallbacks = 0
        self.unverifiable = 0  # objects the tier could not be trusted for (origin only)
        self.bytes_from_tier = 0
        self.bytes_from_origin = 0
        self.uploads = 0
        self.uploads_kept = 0  # the tier had the version already (another host wrote it)
        self.uploads_skipped = 0  # queue full, evicted or replaced first, shutdown
        self.upload_failures = 0
        self.listing_checks = 0  # versions taken from a fresh listing instead of a HEAD
        self.cold_skips = 0  # misses sent to the origin unasked: the tier had just missed
        self._misses_in_row = 0
        self._cold_until = 0.0
        self._warm = False  # a hit since the start or the last pause: every miss asks
        self._answered = trio.Event()  # the host's first ask of the tier has ended
        self._lookups = 0  # lookups in flight (uploads wait for them too)
        self._fetching = 0  # fetches in flight (the cache's, lookup to install or download)
        self._fetched_at = -UPLOAD_QUIET  # when the last one ended (time.monotonic)
        self._probing = False  # the one ask of a tier not known warm is in flight
        self._lock = threading.RLock()  # counters: bodies and parts fail in worker threads
        self._failures_in_row = 0
        self._skip_until = 0.0
        self._backoff = BACKOFF_FIRST
        self._bad: dict[tuple[str, str, str], None] = {}  # versions to read from the origin
        self._serving: dict[tuple[str, str], str] = {}  # downloads from the tier: ETag
        # uploads waiting their turn, oldest first: (bucket, key) -> (ETag, size)
        self._queue: OrderedDict[tuple[str, str], tuple[str, int]] = OrderedDict()
        self._queued_bytes = 0  # bytes of the uploads queued or being sent
        self._sending_bytes = 0  # ... being sent
        self._more = trio.Event()  # set when an upload is queued
        self.store: Store | None = None  # the cache's files, uploaded from (the daemon sets it)
        self._running = False  # run() is: uploads may be queued
        self._upload_failures_in_row = 0
        self._upload_pause_until = 0.0
        self._upload_backoff = BACKOFF_FIRST
        self.busy: Callable[[], bool] = lambda: False  # this host is downloading (the cache)
        backend.requests.set_deadline(TIER_DEADLINE, TIER_STALL_BYTES)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self.backend.describe()}"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Background: the UPLOAD_CONCURRENCY tasks writing queued uploads to
        the tier. Cancelled (shutdown), it drops the queue."""
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(UPLOAD_CONCURRENCY):
                    nursery.start_soon(self._uploader)
                self._running = True
                task_status.started()
        finally:
            self._running = False
            if self._queue:
                log.info("shared cache: %d uploads to the tier dropped (%d bytes): shutting "
                         "down", len(self._queue), self._queued_bytes)
            self.uploads_skipped += len(self._queue)
            self._queue.clear()
            self._queued_bytes = 0  # nothing is being sent: the uploaders have ended

    # --- health --------------------------------------------------------

    def usable(self) -> bool:
        return time.monotonic() >= self._skip_until

    def failed(self, bucket: str, key: str, why: str) -> None:
        """One failure of the tier for s3://bucket/key: one log line; a tier that
        keeps failing is skipped for a while (trio's thread or a worker's)."""
        with self._lock:
            self.fallbacks += 1
            self._failures_in_row += 1
            log.warning("shared cache: %s failed for s3://%s/%s (%s); fetching from the "
                        "origin", self.describe(), bucket, key, why)
            if self._failures_in_row >= FAILURES_BEFORE_BACKOFF and self.usable():
                self._skip_until = time.monotonic() + self._backoff
                log.warning("shared cache: %d failures in a row; not used for %.0fs",
                            self._failures_in_row, self._backoff)
                self._backoff = min(BACKOFF_MAX, self._backoff * 2)

    def _worked(self) -> None:
        self._failures_in_row = 0
        self._backoff = BACKOFF_FIRST

    def add_bytes(self, tier: int = 0, origin: int = 0) -> None:
        with self._lock:
            self.bytes_from_tier += tier
            self.bytes_from_origin += origin

    def _mark_bad(self, bucket: str, key: str, etag: str) -> None:
        if len(self._bad) >= BAD_VERSIONS:
            self._bad.pop(next(iter(self._bad)))
        self._bad[(bucket, key, validator(etag) or "")] = None

    # --- the host's own fetches ------------------------------------------

    def fetch_began(self) -> None:
        """The cache fetches an object (from the lookup to its install, or to the
        start of its download, which busy() sees): uploads wait."""
        self._fetching += 1

    def fetch_ended(self) -> None:
        self._fetching -= 1
        self._fetched_at = time.monotonic()

    def idle(self) -> bool:
        """Nothing fetched by this host for UPLOAD_QUIET seconds: uploads may run.
        (A small object is read whole by its GET, no download runs: busy() alone
        let uploads start between two small ones.)"""
        return not (self.busy() or self._lookups or self._fetching) and \
            time.monotonic() - self._fetched_at >= UPLOAD_QUIET

    # --- the origin's version ------------------------------------------

    async def origin_version(self, listings: ListedVersions, window: float, bucket: str,
                             key: str) -> dict[str, Any] | None:
        """The current version's meta (`aws s3api` shape), from a whole listing
        younger than the freshness window (*window* seconds), else a HEAD of
        the origin (asking for its checksums); None if the origin could not
        say (the caller's GET of the origin then reports what is wrong)."""
        age = listings.listing_age(bucket)
        if age is not None and age < window:
            info = listings.key_info(bucket, key)
            if info is not None and "-" not in info[2].strip('"') and _legal_etag(info[2]):
                size, mtime, etag = info
                self.listing_checks += 1
                return {"ETag": etag, "ContentLength": int(size),
                        "LastModified": format_datetime(
                            datetime.fromtimestamp(mtime, UTC), usegmt=True),
                        "ContentType": None, "Metadata": {}, "AcceptRanges": "bytes",
                        "FromListing": True}
        try:
            return await self.origin.head_with_checksums(bucket, key)  # ETags are sent back
        except S3PoolError as exc:
            log.debug("shared cache: HEAD of s3://%s/%s at the origin: %s", bucket, key, exc)
            return None

    # --- the miss path ---------------------------------------------------

    async def lookup(self, listings: ListedVersions, window: float, bucket: str, key: str,
                     obj: CachedObject | None, small: Callable[[ObjectResponse], None],
                     small_limit: int) -> TierResponse | TierCurrent | None:
        """Called by the cache, under the key's lock, where it would GET the
        origin: CURRENT if the cached copy *obj* is the origin's current
        version, a response streaming from the tier, or None (GET the origin).
        The version is the origin's, or a whole listing's (*listings*) younger
        than *window* seconds (freshness_window).

        While the tier is cold (it missed ``COLD_MISSES`` asks in a row, the
        last less than ``COLD_SECONDS`` ago: a fleet starting on an empty
        tier; ``COLD_MISSES_SERVED`` once it has served this host, so that a
        run of objects missing from a tier that holds the rest of a working
        set does not send the rest to the origin) it is not asked: None at
        once, so the cache's conditional GET
        of the origin is both the check and the fetch, one request where a
        miss costs three (the origin's HEAD, the tier's 404, the origin's
        GET). What comes from the origin is still written to the tier; the
        first ask after the pause that hits ends it. A cached copy is checked
        as always (a fresh listing may spare the origin that request).

        Until an ask hits (at the start, and after each pause) the tier is
        asked one object at a time: the misses meanwhile go to the origin
        unasked, except at the start, where they wait for the host's first
        ask to be answered (a hit and they all ask: a tier another host
        filled is used for every object; else the origin). So four hosts
        starting together on an empty tier do not each send
        pull_concurrency HEADs and 404s at once, and a pause ends with one
        request, not a burst."""
        probe = obj is None and not self._warm
        if probe and self._probing and not self._answered.is_set():
            await self._answered.wait()  # the first ask: does the tier have objects?
            probe = not self._warm
        if probe and (self._probing or time.monotonic() < self._cold_until):
            self.cold_skips += 1
            return None
        if probe:
            self._probing = True
        self._lookups += 1
        try:
            return await self._lookup(listings, window, bucket, key, obj, small, small_limit)
        finally:
            self._lookups -= 1
            if probe:
                self._probing = False
                self._answered.set()

    async def _lookup(self, listings: ListedVersions, window: float, bucket: str, key: str,
                      obj: CachedObject | None, small: Callable[[ObjectResponse], None],
                      small_limit: int) -> TierResponse | TierCurrent | None:
        meta = await self.origin_version(listings, window, bucket, key)
        if meta is None:
            return None
        etag = meta.get("ETag") or ""
        if obj is not None and validator(obj.meta.get("ETag")) == validator(etag) \
                and validator(etag) is not None and obj.size == meta["ContentLength"]:
            return CURRENT
        digest = digest_for(meta, bucket, key)
        if digest is None:  # a length is all that could be checked: the origin's bytes
            self.unverifiable += 1
            return None
        if (bucket, key, validator(etag) or "") in self._bad or not self.usable():
            return None
        name = tier_key(self.prefix, bucket, key, etag)
        try:
            response = await self._get(bucket, key, name, meta, digest, small, small_limit)
        except NoSuchKey:
            self.misses += 1
            self._worked()  # an answer
            self._misses_in_row += 1
            if self._misses_in_row >= (COLD_MISSES_SERVED if self.hits else COLD_MISSES):
                self._cold_until = time.monotonic() + COLD_SECONDS
                self._warm = False
            return None
        except S3PoolError as exc:
            self.failed(bucket, key, str(exc))
            return None
        if response.data is not None:
            error = getattr(small, "error", None)
            if isinstance(error, DigestMismatch):  # the tier's bytes are wrong: the origin's
                self._mark_bad(bucket, key, etag)
                small.error = None  # type: ignore[attr-defined]
                self.failed(bucket, key, str(error))
                return None
            self.add_bytes(tier=response.content_length)
        else:
            self._serving[(bucket, key)] = etag
        self.hits += 1
        self._misses_in_row = 0
        self._warm = True
        self._worked()
        return response

    async def _get(self, bucket: str, key: str, name: str, meta: dict[str, Any],
                   digest: Digest, small: Callable[[ObjectResponse], None], small_limit: int
                   ) -> TierResponse:
        tier = self.backend
        size = int(meta["ContentLength"])
        want = tier_metadata(bucket, key, meta)

        def then(resp: dict[str, Any]) -> TierResponse:
            """The tier's answer, checked (worker thread; the body is closed if this raises)."""
            body = resp["Body"]
            stored = {k.lower(): v for k, v in (resp.get("Metadata") or {}).items()}
            for field in (META + "etag", META + "size", META + "bucket", META + "key"):
                if field in want and stored.get(field) != want[field]:
                    raise BackendError(f"the tier copy's {field} is "
                                       f"{str(stored.get(field))[:80]!r}, the origin's "
                                       f"{want[field][:80]!r}")
            if resp.get("ContentLength") != size:
                raise BackendError(f"the tier copy has {resp.get('ContentLength')!r} "
                                   f"bytes, the origin's {size}")
            served = dict(meta)
            served.pop("FromListing", None)
            if not served.get("ContentType"):  # a listing says none: the tier's word
                served["ContentType"] = _unquote(stored.get(META + "content-type")) \
                    or "binary/octet-stream"
            response = TierResponse(served, body, digest, tier=self, tier_key=name,
                                    tier_etag=resp.get("ETag") or "")
            if size <= small_limit:
                read_small(response, self.bucket, name)  # hashed into the origin's digest
                small(response)  # checked and installed, or its error noted
            else:  # streamed: a body the tier breaks goes on from the origin
                response.body = _OnFromOrigin(body, response, self, bucket, key,
                                              meta.get("ETag") or "", size)
            return response

        return await tier.open_object(self.bucket, name, then)

    def download_failed(self, bucket: str, key: str, error: BaseException) -> bool:
        """A download from the tier failed (its body, or its bytes did not match):
        True if it was one (the caller fetches from the origin)."""
        etag = self._serving.pop((bucket, key), None)
        if etag is None:
            return False
        self._mark_bad(bucket, key, etag)
        self.failed(bucket, key, str(error))
        return True

    # --- after an install ----------------------------------------------------

    def installed(self, bucket: str, key: str, obj: CachedObject,
                  response: ObjectResponse) -> None:
        """Under the key's lock: *obj* was installed in the store from *response*
        (checked). From the tier: counted. From the origin and verified: queued
        for the tier (a record; the file is opened at its turn)."""
        if isinstance(response, TierResponse):
            if response.data is None:  # streamed: ranged parts counted as they came
                self._serving.pop((bucket, key), None)
                self.add_bytes(tier=max(0, int(obj.size) - response.ranged_bytes
                                        - response.body_origin_bytes),
                               origin=response.body_origin_bytes)
            log.info("shared cache: s3://%s/%s (%d bytes) came from the tier (%s)", bucket,
                     key, obj.size, response.tier_key)
            return
        size = int(obj.size)
        self.add_bytes(origin=size)
        if response.digest is None or not self.usable() or not self._running \
                or self.store is None:
            return  # unverifiable objects are never read from the tier: not written either
        ident = (bucket, key)
        replaced = self._queue.pop(ident, None)
        if replaced is not None:  # its older version, no longer in the cache
            self.uploads_skipped += 1
            self._queued_bytes -= replaced[1]
        elif len(self._queue) >= UPLOAD_QUEUE:
            self.uploads_skipped += 1
            log.debug("shared cache: not writing s3://%s/%s (%d uploads queued)", bucket, key,
                      len(self._queue))
            return
        self._queue[ident] = (obj.etag, size)
        self._queued_bytes += size
        self._more.set()

    async def _uploader(self) -> None:
        """One of UPLOAD_CONCURRENCY tasks: the queued uploads, oldest first."""
        stopping = self.backend.stopping
        while not stopping.is_set():
            if not self._queue:
                if self._more.is_set():
                    self._more = trio.Event()
                await self._more.wait()
                continue
            # never beside this host's own fetches: an upload competes with them
            # for the cores and the GIL (4 hosts missing at once ran 3x slower)
            # (nor beside its lookups: between two downloads none may be running)
            with trio.move_on_after(UPLOAD_DEFER_MAX):
                while not self.idle():
                    await trio.sleep(UPLOAD_DEFER_POLL)
            # nor while the tier or the uploads are in backoff, nor past
            # UPLOAD_BYTES being sent (after such a wait, the host may be busy)
            waited = False
            while self._queue and not stopping.is_set() and (
                    not self.usable() or time.monotonic() < self._upload_pause_until or (
                        self._sending_bytes and self._sending_bytes
                        + next(iter(self._queue.values()))[1] > UPLOAD_BYTES)):
                waited = True
                await trio.sleep(UPLOAD_DEFER_POLL)
            if waited or not self._queue or stopping.is_set():
                continue
            (bucket, key), (etag, size) = self._queue.popitem(last=False)
            self._sending_bytes += size
            try:
                await self._upload(bucket, key, etag, size)
            finally:
                self._sending_bytes -= size
                self._queued_bytes -= size

    def _upload_failed(self) -> None:
        """Uploads that keep failing wait (the queue is kept), BACKOFF_FIRST
        seconds the first time, doubling: a tier that is down is not sent the
        whole queue, one failure and log line each. Apart from the lookups'
        backoff: a tier may serve reads to hosts it takes no writes from."""
        self._upload_failures_in_row += 1
        if self._upload_failures_in_row >= FAILURES_BEFORE_BACKOFF and \
                time.monotonic() >= self._upload_pause_until:  # not one sent before it
            self._upload_pause_until = time.monotonic() + self._upload_backoff
            log.warning("shared cache: %d uploads failed in a row; none for %.0fs",
                        self._upload_failures_in_row, self._upload_backoff)
            self._upload_backoff = min(BACKOFF_MAX, self._upload_backoff * 2)

    async def _upload(self, bucket: str, key: str, etag: str, size: int) -> None:
        """Write the cached copy of s3://bucket/key to the tier if the cache
        still holds that version (*etag*, *size*); else it is skipped."""
        store = self.store
        assert store is not None
        fd = None
        async with store.key_lock(bucket, key):  # the file is that version while opened
            try:
                obj = store.lookup(bucket, key)
            except S3PoolError:  # a directory holds its place now
                obj = None
            if obj is not None and validator(obj.etag) == validator(etag) \
                    and obj.size == size:
                try:
                    fd = os.open(obj.path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    log.debug("shared cache: cannot open %s: %s", obj.path, exc)
        if fd is None or obj is None:
            self.uploads_skipped += 1
            log.debug("shared cache: not writing s3://%s/%s: evicted or replaced before "
                      "its turn", bucket, key)
            return
        meta = dict(obj.meta)
        name = tier_key(self.prefix, bucket, key, etag)
        want = tier_metadata(bucket, key, meta)
        tier = self.backend
        try:
            def call() -> bool:
                try:
                    head = tier.client.head_object(Bucket=self.bucket, Key=name)
                    stored = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
                    if head.get("ContentLength") == size and \
                            stored.get(META + "etag") == want[META + "etag"]:
                        return False  # another host wrote this version: one copy
                except Exception:  # noqa: BLE001 (missing, or the PUT will say)
                    pass
                with os.fdopen(own, "rb") as source:  # closes *own*
                    tier.client.upload_fileobj(
                        source, self.bucket, name,
                        ExtraArgs={"Metadata": want,
                                   "ContentType": meta.get("ContentType")
                                   or "binary/octet-stream"},
                        Config=tier.transfer_config)
                return True

            # the thread's own descriptor: a cancelled (abandoned) upload may still
            # read after *fd* is closed below
            own = os.dup(fd)
            wrote = await trio.to_thread.run_sync(call, abandon_on_cancel=True)
            if wrote:
                self.uploads += 1
                log.info("shared cache: wrote s3://%s/%s (%d bytes) as %s", bucket, key, size,
                         name)
            else:
                self.uploads_kept += 1
            self._upload_failures_in_row = 0
            self._upload_backoff = BACKOFF_FIRST
        except Exception as exc:  # noqa: BLE001 (best effort: one line)
            self.upload_failures += 1
            log.warning("shared cache: writing s3://%s/%s to %s failed: %s", bucket, key,
                        self.describe(), exc)
            self._upload_failed()
        finally:
            os.close(fd)

    def stop(self) -> None:
        self.backend.stopping.set()

    def status_lines(self) -> list[tuple[str, Any]]:
        return [
            ("shared_cache", self.describe()),
            ("shared_cache_state", "ok" if self.usable() else "skipped (backoff)"),
            ("shared_cache_hits", self.hits),
            ("shared_cache_misses", self.misses),
            ("shared_cache_fallbacks", self.fallbacks),
            ("shared_cache_unverifiable", self.unverifiable),
            ("shared_cache_listing_checks", self.listing_checks),
            ("shared_cache_cold_skips", self.cold_skips),
            ("shared_cache_bytes_from_tier", self.bytes_from_tier),
            ("shared_cache_bytes_from_origin", self.bytes_from_origin),
            ("shared_cache_uploads", self.uploads),
            ("shared_cache_uploads_kept", self.uploads_kept),
            ("shared_cache_uploads_skipped", self.uploads_skipped),
            ("shared_cache_upload_failures", self.upload_failures),
            ("shared_cache_uploads_queued_bytes", self._queued_bytes),
            # the tier's requests in flight: OP URL BYTES SECONDS
            *(("shared_cache_request", value) for _, value in self.backend.requests.status_lines()),
        ]


def _unquote(text: str | None) -> str:
    from urllib.parse import unquote
    return unquote(text or "")


def make_tier(url: str, endpoint: str | None, profile: str | None, origin: Backend,
              make_backend: Callable[..., Backend]) -> SharedTier:
    """The tier of ``--shared-cache URL`` (a StartupError names what is wrong):
    its endpoint (``--shared-cache-endpoint``, else the origin's), its
    credentials (``--shared-cache-profile``'s, else the standard AWS chain)."""
    import boto3
    import botocore.exceptions

    from s3pool.errors import EXIT_USAGE, StartupError

    try:
        bucket, prefix = parse_tier_url(url)
    except ValueError as exc:
        raise StartupError(str(exc), EXIT_USAGE) from None
    credentials = None
    region = None
    if profile:
        try:
            session = boto3.session.Session(profile_name=profile)
            found = session.get_credentials()
        except botocore.exceptions.BotoCoreError as exc:
            raise StartupError(f"--shared-cache-profile {profile}: {exc}", EXIT_USAGE) from None
        if found is None:
            raise StartupError(f"--shared-cache-profile {profile}: no credentials in it",
                               EXIT_USAGE)
        frozen = found.get_frozen_credentials()
        credentials = {"aws_access_key_id": frozen.access_key,
                       "aws_secret_access_key": frozen.secret_key}
        if frozen.token:
            credentials["aws_session_token"] = frozen.token
        region = session.region_name
    backend = make_backend(endpoint_url=endpoint or origin.endpoint_url, max_threads=32,
                           credentials=credentials, region=region)
    tier = SharedTier(backend, bucket, prefix, origin)
    log.info("shared cache: %s", tier.describe())
    return tier


def _legal_etag(etag: str) -> bool:
    """A listing's ETag that may be sent back as a header (a published listing
    is anyone's who may write the bucket); else the origin is asked."""
    try:
        check_etag(etag, "")
    except BackendError:
        return False
    return True
