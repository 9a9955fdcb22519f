"""What a download's bytes must hash to, and the count of objects checked each way.

S3 proves an object's bytes two ways. A full-object ``x-amz-checksum-*``
(sent when a GET asks with ``x-amz-checksum-mode: ENABLED``): CRC64NVME
(S3's default for objects written since late 2024, multipart ones too),
CRC32C, CRC32, SHA-1 or SHA-256, with ``x-amz-checksum-type: FULL_OBJECT``
or, for an object written in one PUT, no type (its checksum is of all of
its bytes). And the ETag, which is the MD5 of the bytes for a single-part
object that is not encrypted with SSE-KMS or SSE-C. A composite checksum
(type COMPOSITE, ``...-N``: a checksum of the parts' checksums) and a
multipart ETag say nothing checkable about the whole: such an object is
checked by its length only.

A :class:`Digest` is the running hash of one download. The bytes reach it
in order, wherever they came from (the first GET's body as it streams, the
ranged parts read back from the file once the bytes before them are in),
so a checksum taken from the first answer covers every byte however the
object was fetched. The CRCs are awscrt's (the AWS common runtime that
botocore itself uses for CRC32C and CRC64NVME, hardware-accelerated),
CRC32 zlib's (faster here than awscrt's), MD5 and SHA hashlib's: no CRC
is written here. Their cost per GiB beside MD5 is in bench/RESULTS.md
(bench/bench_checksums.py).

:class:`Verifications` counts the objects installed per kind of check
(STATUS ``verified_md5`` ... ``verified_length_only``) and the downloads
refused because their bytes did not match (``verify_failures``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import threading
import zlib
from collections.abc import Callable
from typing import Any

from awscrt import checksums as crt

from s3pool.errors import BackendError, DigestMismatch

# benchmarks only: S3POOL_BENCH_NO_VERIFY=1 skips the content check (length is still checked)
VERIFY = os.environ.get("S3POOL_BENCH_NO_VERIFY", "") != "1"

# the kinds STATUS counts, in its order
KINDS = ("md5", "crc64nvme", "crc32c", "crc32", "sha", "length_only")

_MD5_ETAG = re.compile(r"^[0-9a-fA-F]{32}$")


class Crc:
    """A running CRC of one of the functions that take the value so far."""

    def __init__(self, function: Callable[[Any, int], int], size: int) -> None:
        self.function = function
        self.size = size  # bytes of the digest
        self.value = 0

    def update(self, data: Any) -> None:
        self.value = self.function(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(self.size, "big")


# boto3's response field, the name in messages, STATUS kind, hasher; cheapest first
CHECKSUMS: tuple[tuple[str, str, str, Callable[[], Any]], ...] = (
    ("ChecksumCRC64NVME", "CRC64NVME", "crc64nvme", lambda: Crc(crt.crc64nvme, 8)),
    ("ChecksumCRC32C", "CRC32C", "crc32c", lambda: Crc(crt.crc32c, 4)),
    ("ChecksumCRC32", "CRC32", "crc32", lambda: Crc(zlib.crc32, 4)),
    ("ChecksumSHA1", "SHA-1", "sha", hashlib.sha1),
    ("ChecksumSHA256", "SHA-256", "sha", hashlib.sha256),
)
CHECKSUM_FIELDS = tuple(field for field, *_ in CHECKSUMS)


class Digest:
    """A running hash of a download and the value S3 says it must have."""

    def __init__(self, what: str, kind: str, hasher: Any, expected: bytes, url: str) -> None:
        self.what = what  # e.g. "ETag MD5", "x-amz-checksum CRC64NVME"
        self.kind = kind  # the STATUS kind: md5, crc64nvme, crc32c, crc32, sha
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


def full_object_checksums(response: dict[str, Any]) -> dict[str, str]:
    """The checksums of a GET or HEAD answer (boto3's shape) that cover every
    byte of the object, by boto3's field name, with ChecksumType if S3 gave one."""
    kind = str(response.get("ChecksumType") or "").upper()
    # COMPOSITE is a checksum of the parts' checksums (S3 adds "-N" to it; a value
    # that lost its suffix on the way would make a right object fail for ever)
    if kind not in ("", "FULL_OBJECT"):
        return {}
    found = {}
    for field in CHECKSUM_FIELDS:
        value = response.get(field)
        if isinstance(value, str) and value and "-" not in value:  # "...-N": composite
            found[field] = value
    if found and kind:
        found["ChecksumType"] = kind
    return found


def digest_for(response: dict[str, Any], bucket: str, key: str) -> Digest | None:
    """The check a GET response allows (from boto3's response dict), or None
    (length only): a full-object checksum first, else the ETag's MD5."""
    if not VERIFY:
        return None
    url = f"s3://{bucket}/{key}"
    checksums = full_object_checksums(response)
    for field, name, kind, hasher in CHECKSUMS:
        value = checksums.get(field)
        if value is None:
            continue
        try:
            expected = base64.b64decode(value, validate=True)
        except ValueError:
            continue
        return Digest(f"x-amz-checksum {name}", kind, hasher(), expected, url)
    if str(response.get("ServerSideEncryption") or "").startswith("aws:kms") \
            or response.get("SSECustomerAlgorithm"):
        return None  # the ETag of an SSE-KMS or SSE-C object is not the MD5 of its bytes
    etag = str(response.get("ETag") or "").strip().strip('"')
    if _MD5_ETAG.match(etag):
        return Digest("ETag MD5", "md5", hashlib.md5(usedforsecurity=False),
                      bytes.fromhex(etag), url)
    return None


def leave_checks_to_s3pool(context: dict[str, Any], **_: Any) -> None:
    """botocore ``before-call.s3.GetObject`` hook: botocore would check the
    x-amz-checksum of a GET asked with ChecksumMode too (a second pass over the
    bytes of a body read whole, and a FlexibleChecksumError that is not a
    :class:`DigestMismatch`); the request still asks for the checksum, the
    :class:`Digest` checks it, once."""
    checksum = context.get("checksum")
    if isinstance(checksum, dict):
        checksum.pop("response_algorithms", None)


class Verifications:
    """Objects installed per kind of check, and downloads refused by theirs
    (updated from the trio thread and from worker threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(KINDS, 0)
        self.failures = 0

    def installed(self, digest: Digest | None) -> None:
        """An object was installed, checked by *digest* (None: by its length only)."""
        with self._lock:
            self.counts[digest.kind if digest is not None else "length_only"] += 1

    def check(self, digest: Digest) -> None:
        """``digest.check()``, counting a mismatch."""
        try:
            digest.check()
        except DigestMismatch:
            with self._lock:
                self.failures += 1
            raise

    def status_lines(self) -> list[tuple[str, int]]:
        with self._lock:
            return [*((f"verified_{kind}", self.counts[kind]) for kind in KINDS),
                    ("verify_failures", self.failures)]
