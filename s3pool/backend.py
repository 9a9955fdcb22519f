"""The S3 backend: the only module that imports boto3.

Every blocking boto3 call runs in a worker thread through
``trio.to_thread.run_sync`` with the backend's own ``CapacityLimiter``.
botocore errors are translated here, once, into s3pool's domain errors.
Endpoint, region and credentials come from the standard AWS chain
(``AWS_ENDPOINT_URL``, profiles, environment); the daemon passes an
explicit endpoint only for its embedded demo S3.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any, Callable, Iterator, NamedTuple
from urllib.parse import unquote_plus
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import boto3
import boto3.exceptions
import botocore.exceptions
import trio
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.utils import parse_timestamp

from .errors import AccessDenied, BackendError, NoSuchBucket, NoSuchKey

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MULTIPART_THRESHOLD = 64 << 20


class ListEntry(NamedTuple):
    """One key of a bucket listing (a tuple: a million of them are made per refresh)."""

    key: str
    size: int
    mtime: float  # seconds since the epoch
    etag: str  # with its quotes, as S3 sends it


@dataclass
class ObjectResponse:
    """An open GET: the meta in `aws s3api get-object` shape and the body."""

    meta: dict[str, Any]
    body: Any  # botocore StreamingBody

    @property
    def content_length(self) -> int:
        return int(self.meta["ContentLength"])


def meta_from_response(resp: dict[str, Any]) -> dict[str, Any]:
    """The subset of a get/head_object response that `aws s3api` prints."""
    last_modified = resp.get("LastModified")
    return {
        "LastModified": (format_datetime(last_modified.astimezone(timezone.utc), usegmt=True)
                         if last_modified else None),
        "ETag": resp.get("ETag"),
        "ContentLength": int(resp.get("ContentLength", 0)),
        "ContentType": resp.get("ContentType", "binary/octet-stream"),
        "Metadata": dict(resp.get("Metadata") or {}),
        "AcceptRanges": resp.get("AcceptRanges", "bytes"),
    }


def _error_code(exc: botocore.exceptions.ClientError) -> tuple[str, int]:
    err = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(err.get("Code", "")), int(status or 0)


def translate(exc: Exception, bucket: str, key: str | None = None) -> Exception:
    """Map a botocore/boto3 exception to one of ours."""
    what = f"s3://{bucket}/{key}" if key is not None else f"s3://{bucket}"
    if isinstance(exc, botocore.exceptions.ClientError):
        code, status = _error_code(exc)
        if code == "NoSuchBucket":
            return NoSuchBucket(f"no such bucket: {bucket}")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            if key is None:
                return NoSuchBucket(f"no such bucket: {bucket}")
            return NoSuchKey(f"no such key: {what}")
        if code in ("AccessDenied", "403", "Forbidden") or status == 403:
            return AccessDenied(f"access denied: {what}")
        return BackendError(f"S3 error on {what}: {code or status} {exc}")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return BackendError(f"S3 unreachable for {what}: {exc}")
    return BackendError(f"S3 failure on {what}: {exc!r}")


class Backend:
    """Async wrapper around one boto3 S3 client."""

    def __init__(self, endpoint_url: str | None = None, max_threads: int = 32,
                 region: str | None = None, credentials: dict[str, str] | None = None) -> None:
        session = boto3.session.Session()
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") \
            or os.environ.get("AWS_ENDPOINT_URL")
        config = Config(
            max_pool_connections=max_threads,
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=5,
            read_timeout=30,
            s3={"addressing_style": "path"} if self.endpoint_url else {},
        )
        self.region = region or session.region_name or "us-east-1"
        self.client = session.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config,
            **(credentials or {}),
        )
        self.client.meta.events.register("before-parse.s3.ListObjectsV2", parse_listing_fast)
        self.limiter = trio.CapacityLimiter(max_threads)
        self.stopping = threading.Event()  # set at shutdown: worker threads give up
        self.transfer_config = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD,
            max_concurrency=4, use_threads=True,
        )

    def describe(self) -> str:
        return self.endpoint_url or f"AWS S3 ({self.region})"

    async def _run(self, fn: Callable[..., Any], *args: Any, bucket: str,
                   key: str | None = None) -> Any:
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise translate(exc, bucket, key) from exc
        except boto3.exceptions.Boto3Error as exc:
            # upload_file wraps S3's answer (NoSuchBucket, AccessDenied...) in
            # S3UploadFailedError: translate the answer it wraps
            wrapped = exc.__cause__ or exc.__context__
            if isinstance(wrapped, (botocore.exceptions.BotoCoreError,
                                    botocore.exceptions.ClientError)):
                raise translate(wrapped, bucket, key) from exc
            raise translate(exc, bucket, key) from exc

    # --- objects ---------------------------------------------------------

    async def get_object(self, bucket: str, key: str,
                         if_none_match: str | None = None) -> ObjectResponse | None:
        """Start a GET; None when S3 answers 304 (our copy is current)."""

        def call() -> ObjectResponse | None:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
            if if_none_match:
                kwargs["IfNoneMatch"] = if_none_match
            try:
                resp = self.client.get_object(**kwargs)
            except botocore.exceptions.ClientError as exc:
                code, status = _error_code(exc)
                if status == 304 or code == "304":
                    return None
                raise
            return ObjectResponse(meta_from_response(resp), resp["Body"])

        return await self._run(call, bucket=bucket, key=key)

    async def read_body_at(self, response: ObjectResponse, fd: int, offset: int, limit: int,
                           bucket: str, key: str) -> int:
        """Write up to *limit* bytes of the body at *offset* of *fd*; close the body."""

        def call() -> int:
            try:
                return _copy_into(response.body, fd, offset, limit, self.stopping)
            finally:
                response.body.close()

        return await self._run(call, bucket=bucket, key=key)

    async def get_range_into(self, bucket: str, key: str, etag: str, start: int, length: int,
                             fd: int) -> int:
        """GET bytes [start, start+length) of the version *etag* into *fd* at *start*."""

        def call() -> int:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key,
                                      "Range": f"bytes={start}-{start + length - 1}"}
            if etag:
                kwargs["IfMatch"] = etag
            body = self.client.get_object(**kwargs)["Body"]
            try:
                return _copy_into(body, fd, start, length, self.stopping)
            finally:
                body.close()

        return await self._run(call, bucket=bucket, key=key)

    async def head_object(self, bucket: str, key: str) -> dict[str, Any]:
        resp = await self._run(
            lambda: self.client.head_object(Bucket=bucket, Key=key), bucket=bucket, key=key
        )
        return meta_from_response(resp)

    async def upload_file(self, bucket: str, key: str, path: str) -> None:
        """Upload *path*; large files go multipart."""
        await self._run(
            lambda: self.client.upload_file(path, bucket, key, Config=self.transfer_config),
            bucket=bucket, key=key,
        )

    # --- buckets ---------------------------------------------------------

    async def bucket_exists(self, bucket: str) -> bool:
        try:
            await self._run(lambda: self.client.head_bucket(Bucket=bucket), bucket=bucket)
        except NoSuchBucket:
            return False
        return True

    def iter_listing(self, bucket: str) -> Iterator[list[ListEntry]]:
        """Blocking generator of listing pages (1,000 keys each); run it in a thread."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=bucket, PaginationConfig={"PageSize": 1000}):
                fast = page.get(FAST_ENTRIES)
                if fast is not None:
                    yield fast
                    continue
                yield [
                    ListEntry(
                        item["Key"], int(item.get("Size", 0)),
                        item["LastModified"].timestamp(), item.get("ETag", ""),
                    )
                    for item in page.get("Contents", ())
                ]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise translate(exc, bucket) from exc


def _copy_into(body: Any, fd: int, offset: int, limit: int, stopping: threading.Event) -> int:
    """Copy up to *limit* bytes of a streaming body to *fd* at *offset*.

    One reused buffer (readinto) instead of a new bytes object per chunk:
    at hundreds of MiB/s the allocations alone cost a third of the time.
    A worker thread cannot be cancelled, so it looks at *stopping* between
    chunks: a shutdown does not wait for a large download to finish.
    """
    buffer = bytearray(min(CHUNK, max(limit, 1)))
    view = memoryview(buffer)
    written = 0
    while written < limit:
        if stopping.is_set():
            raise BackendError("download abandoned: s3pool is shutting down")
        want = min(len(buffer), limit - written)
        got = body.readinto(view[:want])
        if not got:
            break
        os.pwrite(fd, view[:got], offset + written)
        written += got
    return written


FAST_ENTRIES = "S3PoolEntries"
_KEEP_FOR_BOTOCORE = ("IsTruncated", "NextContinuationToken", "KeyCount", "MaxKeys", "Name",
                      "Prefix", "EncodingType", "ContinuationToken", "StartAfter")


def parse_listing_fast(response_dict: dict[str, Any], customized_response_dict: dict[str, Any],
                       **_: Any) -> None:
    """botocore ``before-parse`` hook for ListObjectsV2.

    botocore's XML parser costs about 60 us a key, a minute for a
    million-key bucket. ElementTree's C parser reads the entries here; the
    body handed on to botocore keeps only the paging fields, so signing,
    retries, redirects and pagination stay botocore's. Anything unexpected
    leaves the response untouched for botocore to parse.
    """
    if response_dict.get("status_code") != 200:
        return
    try:
        root = ElementTree.fromstring(response_dict["body"])
    except (ElementTree.ParseError, TypeError, KeyError):
        return
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    encoded = root.findtext(f"{ns}EncodingType") == "url"
    entries = []
    key_tag, size_tag, time_tag, etag_tag = (f"{ns}Key", f"{ns}Size", f"{ns}LastModified",
                                             f"{ns}ETag")
    times: dict[str, float] = {}  # listings repeat timestamps a lot
    try:
        for item in root.iterfind(f"{ns}Contents"):
            key, size, stamp, etag = "", "0", "", ""
            for child in item:
                tag = child.tag
                if tag == key_tag:
                    key = child.text or ""
                elif tag == size_tag:
                    size = child.text or "0"
                elif tag == time_tag:
                    stamp = child.text or ""
                elif tag == etag_tag:
                    etag = child.text or ""
            mtime = times.get(stamp)
            if mtime is None:
                mtime = times[stamp] = _timestamp(stamp)
            entries.append(ListEntry(unquote_plus(key) if encoded else key, int(size), mtime,
                                     etag))
    except ValueError:
        return
    kept = "".join(
        f"<{name}>{escape(value)}</{name}>"
        for name in _KEEP_FOR_BOTOCORE
        if (value := root.findtext(f"{ns}{name}")) is not None
    )
    response_dict["body"] = f"<ListBucketResult>{kept}</ListBucketResult>".encode()
    customized_response_dict[FAST_ENTRIES] = entries


def _timestamp(text: str) -> float:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return parse_timestamp(text).timestamp()
