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
from dataclasses import dataclass
from datetime import timezone
from email.utils import format_datetime
from typing import Any, Callable, Iterator

import boto3
import botocore.exceptions
import trio
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from .errors import AccessDenied, BackendError, NoSuchBucket, NoSuchKey

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MULTIPART_THRESHOLD = 64 << 20


@dataclass(frozen=True)
class ListEntry:
    """One key of a bucket listing."""

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
        self.limiter = trio.CapacityLimiter(max_threads)
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

    async def read_body_into(self, response: ObjectResponse, fileobj: Any,
                             bucket: str, key: str) -> int:
        """Copy the body of *response* into *fileobj*; return bytes written."""

        def call() -> int:
            written = 0
            try:
                for chunk in response.body.iter_chunks(CHUNK):
                    fileobj.write(chunk)
                    written += len(chunk)
            finally:
                response.body.close()
            return written

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
                yield [
                    ListEntry(
                        item["Key"], int(item.get("Size", 0)),
                        item["LastModified"].timestamp(), item.get("ETag", ""),
                    )
                    for item in page.get("Contents", ())
                ]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise translate(exc, bucket) from exc
