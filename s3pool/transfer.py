"""Downloads in flight: progress, the stall deadline, checked writes and verification.

A :class:`Transfer` is the byte counter of one download. The worker
threads that copy a body to disk add to it after each chunk, and the same
counter drives three things: STATUS (one ``download`` line per transfer in
flight), the INFO line logged when a download finishes, and the stall
deadline (a download that takes longer than ``download_stall_timeout``
seconds to receive ``download_stall_bytes`` bytes fails, so a trickling S3
cannot hold a download slot forever). A worker thread cannot be
cancelled, so it calls :meth:`Transfer.check` between chunks and gives up
itself; every socket read is bounded by botocore's read timeout.

A :class:`Digest` checks the bytes of a download against what S3 says
they are: a full-object ``x-amz-checksum-*`` value when S3 sent one we can
compute (CRC32, SHA-1, SHA-256), else the MD5 of a single-part ETag.
Multipart ETags (``"...-N"``), the ETags of SSE-KMS and SSE-C objects and
composite checksums say nothing usable about the bytes: those downloads
are checked by length only. A mismatch is a
BackendError and the file is never installed.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import re
import threading
import time
import zlib
from typing import Any, Callable

from .errors import BackendError, DigestMismatch, NoSpace

log = logging.getLogger(__name__)

# benchmarks only: S3POOL_BENCH_NO_VERIFY=1 skips the content check (length is still checked)
VERIFY = os.environ.get("S3POOL_BENCH_NO_VERIFY", "") != "1"

_MD5_ETAG = re.compile(r"^[0-9a-fA-F]{32}$")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class Transfer:
    """The progress of one download; updated from worker threads."""

    def __init__(self, bucket: str, key: str, total: int, stall_timeout: float,
                 stall_bytes: int, stopping: threading.Event | None = None,
                 source: str = "") -> None:
        self.bucket = bucket
        self.key = key
        self.total = total
        self.source = source
        self.done = 0
        self.started = time.monotonic()
        self.stall_timeout = stall_timeout
        self.stall_bytes = max(1, stall_bytes)
        self.stopping = stopping
        self._lock = threading.Lock()
        # the stall clock: when the current run of stall_bytes bytes began
        self._run_started = self.started
        self._run_base = 0
        self._failed: str | None = None  # set when one part failed: the others stop too

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def add(self, count: int) -> None:
        with self._lock:
            self.done += count
            if self.done - self._run_base >= self.stall_bytes:
                self._run_started = time.monotonic()
                self._run_base = self.done

    def resume(self) -> None:
        """The download starts fetching again after an idle spell (nobody wanted
        more bytes): the stall clock starts now."""
        with self._lock:
            self._run_started = time.monotonic()
            self._run_base = self.done

    def check(self) -> None:
        """Raise if the download must stop: shutdown, a failed sibling part, a stall."""
        if self.stopping is not None and self.stopping.is_set():
            raise BackendError("download abandoned: s3pool is shutting down")
        if self._failed is not None:
            raise BackendError(self._failed)
        if self.stall_timeout <= 0:
            return
        with self._lock:
            waited = time.monotonic() - self._run_started
            if waited <= self.stall_timeout:
                return
            got = self.done - self._run_base
            need = min(self.stall_bytes, self.total - self._run_base)
        if got < need:
            raise BackendError(
                f"download of {self.url} stalled: {got} bytes in the last {waited:.1f}s "
                f"(download_stall_bytes {self.stall_bytes} in download_stall_timeout "
                f"{self.stall_timeout:g}s), {self.done} of {self.total} bytes done"
            )

    def fail(self, message: str) -> None:
        """One part failed: the other parts of the same download stop at their next chunk."""
        if self._failed is None:
            self._failed = message

    def status_value(self) -> str:
        return f"{self.url} {self.done} {self.total} {self.elapsed():.1f}"


class Transfers:
    """The downloads in flight, for STATUS; each one built with the current settings."""

    def __init__(self, settings: Any, stopping: threading.Event | None = None) -> None:
        self.settings = settings
        self.stopping = stopping
        self._active: dict[int, Transfer] = {}

    def begin(self, bucket: str, key: str, total: int, source: str = "") -> Transfer:
        transfer = Transfer(bucket, key, total, self.settings.download_stall_timeout,
                            self.settings.download_stall_bytes, self.stopping, source)
        self._active[id(transfer)] = transfer
        return transfer

    def end(self, transfer: Transfer) -> None:
        self._active.pop(id(transfer), None)

    def __len__(self) -> int:
        return len(self._active)

    def status_lines(self) -> list[tuple[str, str]]:
        return [("download", t.status_value())
                for t in sorted(self._active.values(), key=lambda t: t.started)]


def write_all(fd: int, data: memoryview, offset: int) -> None:
    """pwrite all of *data* at *offset*: a short write is retried, then it is an error.

    A full filesystem often shows first as a short write (part of a chunk
    fits); ignoring the count leaves a hole of zeros in the file.
    """
    while len(data):
        try:
            wrote = os.pwrite(fd, data, offset)
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise NoSpace(f"no space left in the cache: {exc.strerror}") from exc
            raise
        if wrote <= 0:
            raise NoSpace(f"write made no progress at offset {offset} (disk full?)")
        data = data[wrote:]
        offset += wrote


# --- verification ---------------------------------------------------------

class _Crc32:
    name = "crc32"

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: Any) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


# response field (boto3's name) -> algorithm name, hasher; cheapest first
_CHECKSUMS: tuple[tuple[str, str, Callable[[], Any]], ...] = (
    ("ChecksumCRC32", "CRC32", _Crc32),
    ("ChecksumSHA1", "SHA-1", hashlib.sha1),
    ("ChecksumSHA256", "SHA-256", hashlib.sha256),
)


class Digest:
    """A running hash of a download and the value S3 says it must have."""

    def __init__(self, what: str, hasher: Any, expected: bytes, url: str) -> None:
        self.what = what  # e.g. "ETag MD5", "x-amz-checksum CRC32"
        self.hasher = hasher
        self.expected = expected
        self.url = url

    def update(self, data: Any) -> None:
        self.hasher.update(data)

    def update_from_file(self, fd: int, offset: int, length: int) -> None:
        """Hash bytes [offset, offset+length) of *fd* (blocking: a worker thread)."""
        buffer = bytearray(min(1 << 20, max(length, 1)))
        view = memoryview(buffer)
        end = offset + length
        while offset < end:
            got = os.preadv(fd, [view[:min(len(buffer), end - offset)]], offset)
            if got <= 0:
                raise BackendError(f"download of {self.url}: file ended at {offset} of {end}")
            self.hasher.update(view[:got])
            offset += got

    def check(self) -> None:
        if self.hasher.digest() != self.expected:
            raise DigestMismatch(f"download of {self.url} did not match its {self.what}")


def digest_for(response: dict[str, Any], bucket: str, key: str) -> Digest | None:
    """The check a GET response allows (from boto3's response dict), or None."""
    if not VERIFY:
        return None
    url = f"s3://{bucket}/{key}"
    if str(response.get("ChecksumType") or "FULL_OBJECT").upper() == "FULL_OBJECT":
        for field, name, hasher in _CHECKSUMS:
            value = response.get(field)
            if not value or "-" in value:  # "...-N": a checksum of part checksums
                continue
            try:
                expected = base64.b64decode(value, validate=True)
            except ValueError:
                continue
            return Digest(f"x-amz-checksum {name}", hasher(), expected, url)
    if str(response.get("ServerSideEncryption") or "").startswith("aws:kms") \
            or response.get("SSECustomerAlgorithm"):
        return None  # the ETag of an SSE-KMS or SSE-C object is not the MD5 of its bytes
    etag = str(response.get("ETag") or "").strip().strip('"')
    if _MD5_ETAG.match(etag):
        return Digest("ETag MD5", hashlib.md5(usedforsecurity=False), bytes.fromhex(etag), url)
    return None
