"""The S3 backend: with lean.py (its lean GETs), the only module that imports boto3.

Every blocking boto3 call runs in a worker thread through
``trio.to_thread.run_sync`` with the backend's own ``CapacityLimiter``.
botocore errors are translated here, once, into s3pool's domain errors.
Endpoint, region and credentials come from the standard AWS chain
(``AWS_ENDPOINT_URL``, profiles, environment); the daemon passes an
explicit endpoint only for its embedded demo S3.
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import boto3
import boto3.exceptions
import botocore.credentials
import botocore.exceptions
import trio
import urllib3.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.awsrequest import (
    AWSHTTPConnection,
    AWSHTTPConnectionPool,
    AWSHTTPSConnection,
    AWSHTTPSConnectionPool,
)
from botocore.config import Config

from s3pool.errors import AccessDenied, BackendError, NoSuchBucket, NoSuchKey, VersionChanged
from s3pool.s3.answers import (
    ETAG_FORM,
    LEGAL_VALUE,
    ListEntry,
    ObjectResponse,
    check_answer,
    check_etag,
    check_first_part,
    check_range,
    meta_from_response,
    status_of,
    validator,
)
from s3pool.s3.checksums import Digest, digest_for, full_object_checksums, leave_checks_to_s3pool
from s3pool.s3.inflight import DeadlineExceeded, S3Request, S3Requests
from s3pool.s3.lean import (
    NOT_FOUND,
    NOT_MODIFIED,
    PRECONDITION_FAILED,
    RANGE_NOT_SATISFIABLE,
    Fallback,
    LeanBody,
    LeanGets,
    bytes_behind,
)
from s3pool.s3.listpages import PAGE_KEYS, Onward, page_of
from s3pool.s3.listparse import install_listing_parser, read_page
from s3pool.s3.progress import Progress, Transfer
from s3pool.store.files import write_all

log = logging.getLogger(__name__)

T = TypeVar("T")

CHUNK = 1 << 20
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 30
MULTIPART_THRESHOLD = 64 << 20


# boto3 GetObject parameters -> their HTTP headers (the lean path)
_HEADER_OF = {"IfNoneMatch": "If-None-Match", "IfMatch": "If-Match", "Range": "Range"}


# ListObjectsV2 parameters -> their query names (the lean path)
_LIST_QUERY = {"Bucket": "", "Prefix": "prefix", "Delimiter": "delimiter", "MaxKeys": "max-keys",
               "ContinuationToken": "continuation-token", "StartAfter": "start-after"}
# operations whose requests have a deadline (uploads send for as long as they send)
_DEADLINED = {"GetObject", "HeadObject", "HeadBucket", "ListObjectsV2", "ListObjects"}


class WatchedBody:
    """A GET's body (lean or botocore's) that tells its S3Request how it goes:
    its bytes, when somebody reads it (time between reads is not a stall), its
    end. ``exactly(n)``: a body of unknown length that must be n bytes."""

    def __init__(self, body: Any, request: S3Request | None, length: Any = None) -> None:
        self._body = body
        self._request = request
        self._exact: int | None = None  # bytes the body must have (its length was not given)
        self._got = 0
        # botocore's body: its http.client answer, looked at behind the declared
        # end (LeanBody looks itself)
        raw = getattr(body, "_raw_stream", None)
        self._answer = None if isinstance(body, LeanBody) else getattr(raw, "_fp", None)
        # a LeanBody adds its bytes to the request itself: counted here too, they
        # were counted twice (download_stall_bytes halved)
        self._counts = not isinstance(body, LeanBody)
        self._length = length if isinstance(length, int) else None
        # one socket read at a time (urllib3's read() would close its answer at the
        # end, with whatever came behind it)
        self._read1 = getattr(body, "read1", None) or getattr(raw, "read1", None)

    def exactly(self, size: int) -> WatchedBody:
        self._exact = size
        return self

    def read1(self, size: int = -1) -> bytes:
        return self._read(size, True)

    def read(self, size: int | None = None) -> bytes:
        return self._read(size, False)

    def _read(self, size: int | None, once: bool) -> bytes:
        request = self._request
        exact = self._exact
        if exact is not None:
            size = exact - self._got if size is None or size < 0 else min(size,
                                                                          exact - self._got)
            if size == 0:
                self._check_end()
                return b""
        if request is not None:
            request.resume()
        data: bytes
        try:
            if self._read1 is None:
                data = self._body.read(size) if size is not None else self._body.read()
            elif once:
                data = self._read1(size if size is not None and size >= 0 else 1 << 20)
            else:
                data = self._read_all(size)
        except (OSError, urllib3.exceptions.HTTPError, botocore.exceptions.BotoCoreError,
                http.client.HTTPException) as exc:
            if request is not None and request.expired:
                raise DeadlineExceeded(f"S3 request ended: {request.expired}") from exc
            raise
        finally:
            if request is not None:
                request.pause()
        if request is not None:
            if self._counts:
                request.add(len(data))
            if request.expired:  # the watchdog shut the socket: what came is not all
                raise DeadlineExceeded(f"S3 request ended: {request.expired}")
        self._got += len(data)
        if exact is not None and self._got == exact:
            self._check_end()
        elif self._got == self._length and self._answer is not None and request is not None \
                and bytes_behind(self._answer, request.sock):
            self.close()
            raise BackendError("bytes behind the body's last byte: the answer is longer "
                               "than its Content-Length")
        return data

    def _read_all(self, size: int | None) -> bytes:
        """Up to *size* bytes (all if None or negative) in reads of one socket read."""
        assert self._read1 is not None
        parts: list[bytes] = []
        got = 0
        while size is None or size < 0 or got < size:
            data = self._read1(1 << 20 if size is None or size < 0 else size - got)
            if not data:
                break
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    def _check_end(self) -> None:
        """A body of unknown length must end right after its last expected byte."""
        if self._exact is None:
            return
        exact, self._exact = self._exact, None
        extra = self._body.read(1)
        if extra:
            self.close()
            raise BackendError(f"a body of no given length went on past the {exact} "
                               "bytes the object has")

    def close(self) -> None:
        if self._request is not None:
            self._request.resume()  # a short rest is drained to keep the connection: judged
        try:
            self._body.close()
        finally:
            request, self._request = self._request, None
            if request is not None:
                request.end()


def _name_call(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    """botocore hook: what a call is about, for STATUS (s3://bucket/key)."""
    bucket = params.get("Bucket", "")
    key = params.get("Key")
    context["s3pool_url"] = f"s3://{bucket}/{key}" if key is not None else f"s3://{bucket}"


class _Watched:
    """An urllib3 connection of botocore's that hands its socket to the S3Request
    the thread is making, so the deadline watchdog can end a stalled answer."""

    s3pool_requests: S3Requests | None = None

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        requests = self.s3pool_requests
        request = requests.current if requests is not None else None
        if request is not None:
            request.attach(getattr(self, "sock", None))
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


def _watch_connections(client: Any, requests: S3Requests) -> None:
    """Give the client's HTTP session connection classes that report their socket."""
    extra = {"s3pool_requests": requests}
    http_connection = type("WatchedHTTPConnection", (_Watched, AWSHTTPConnection), extra)
    https_connection = type("WatchedHTTPSConnection", (_Watched, AWSHTTPSConnection), extra)
    classes = {
        "http": type("WatchedHTTPPool", (AWSHTTPConnectionPool,),
                     {"ConnectionCls": http_connection}),
        "https": type("WatchedHTTPSPool", (AWSHTTPSConnectionPool,),
                      {"ConnectionCls": https_connection}),
    }
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    manager = getattr(session, "_manager", None)
    if session is None or manager is None or not hasattr(session, "_pool_classes_by_scheme"):
        log.warning("botocore's HTTP session is not as expected: boto3 requests have no "
                    "deadline beyond their socket timeouts")
        return
    session._pool_classes_by_scheme = classes
    manager.pool_classes_by_scheme = classes


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
        self._session = boto3.session.Session()
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") \
            or os.environ.get("AWS_ENDPOINT_URL")
        self.region = region or self._session.region_name or "us-east-1"
        self._credentials = credentials or {}
        self.errors = 0  # failed S3 calls (STATUS s3_errors)
        # (operation, seconds, error code or None) for each S3 call; set by the metrics
        self.observer: Callable[[str, float, str | None], None] | None = None
        self._errors_lock = threading.Lock()
        self.max_threads = max_threads
        self.lean_gets = 0  # GETs sent on the lean path (s3http)
        self.lean_fallbacks = 0  # ... and those it handed back to boto3
        self.lean_lists = 0  # LIST pages read on the lean path
        self.lean_list_fallbacks = 0  # ... and those it handed back to boto3
        self.stopping = threading.Event()  # set at shutdown: worker threads give up
        # every S3 request in flight (STATUS) and its deadline (set from the settings)
        self.requests = S3Requests(self.stopping)
        self.client = self._make_client(max_threads)
        self.lean = self._make_lean(max_threads)
        self.limiter = trio.CapacityLimiter(max_threads)
        self.transfer_config = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD,
            max_concurrency=4, use_threads=True,
        )
        self.conditional_writes = True  # If-None-Match: * on writes (off if S3 lacks it)

    def _make_client(self, pool_size: int) -> Any:
        config = Config(
            max_pool_connections=pool_size,
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            s3={"addressing_style": "path"} if self.endpoint_url else {},
        )
        client = self._session.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config,
            **self._credentials,
        )
        events = client.meta.events
        install_listing_parser(events)
        events.register("before-call.s3.GetObject", leave_checks_to_s3pool)
        events.register("before-parameter-build.s3", _name_call)
        events.register("before-call.s3", self._call_started)
        events.register("after-call.s3", self._call_answered)
        events.register("after-call-error.s3", self._call_failed)
        _watch_connections(client, self.requests)
        return client

    def _make_lean(self, pool_size: int) -> LeanGets | None:
        """GETs without botocore's per-call work, where nothing but signing is needed."""
        if os.environ.get("S3POOL_LEAN_GET", "1") == "0" or not LeanGets.usable(self.client):
            return None
        if self._credentials:
            credentials = botocore.credentials.Credentials(
                self._credentials["aws_access_key_id"], self._credentials["aws_secret_access_key"],
                self._credentials.get("aws_session_token"))
        else:
            credentials = self._session.get_credentials()
        if credentials is None:
            return None
        return LeanGets(self.client, credentials, pool_size, CONNECT_TIMEOUT, READ_TIMEOUT)

    def warm_up(self, buckets: list[str]) -> None:
        """Blocking: one HEAD of each bucket, and the lean path's URL for it, so
        the first GET someone waits for finds botocore set up and a connection
        open. Failures are for the real requests to report."""
        for bucket in buckets:
            if self.stopping.is_set():
                return
            try:
                self.client.head_bucket(Bucket=bucket)
                if self.lean is not None:
                    self.lean.prepare(bucket)
            except Exception as exc:  # noqa: BLE001 (nothing depends on the warm-up)
                log.debug("warming up for bucket %s: %s", bucket, exc)

    @staticmethod
    def threads_for(pull_concurrency: int) -> int:
        """Worker threads (and pooled connections) for that many downloads at once,
        with room beside them for HEADs, listings and ranged parts."""
        return max(64, 2 * pull_concurrency)

    def resize(self, pull_concurrency: int) -> None:
        """Let *pull_concurrency* downloads run at once: more threads, and a
        client with a larger connection pool (calls in flight finish on the old one)."""
        wanted = self.threads_for(pull_concurrency)
        if wanted > self.max_threads:
            self.client = self._make_client(wanted)
            self.lean = self._make_lean(wanted)
            log.info("S3 connection pool resized to %d", wanted)
        self.max_threads = max(wanted, self.max_threads)
        self.limiter.total_tokens = self.max_threads

    def describe(self) -> str:
        return self.endpoint_url or f"AWS S3 ({self.region})"

    # --- botocore hooks (worker threads): S3 errors and latency ----------

    def _call_started(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        context["s3pool_call"] = (model.name, time.perf_counter())
        # the S3 request in flight, from here (retries included) to its answer, or
        # for a GET to its body's end; uploads are shown but have no deadline
        request = self.requests.begin(model.name, context.get("s3pool_url", "s3://"),
                                      judged=model.name in _DEADLINED)
        context["s3pool_request"] = request
        self.requests.current = request

    def _call_answered(self, http_response: Any, context: dict[str, Any], **_: Any) -> None:
        status = getattr(http_response, "status_code", 0)
        # 304, 404 and 412 are answers (current, missing, changed), not failures
        failed = status >= 400 and status not in (404, 412)
        self._call_done(context, str(status) if failed else None, status)

    def _call_failed(self, exception: Exception, context: dict[str, Any], **_: Any) -> None:
        self._call_done(context, type(exception).__name__)

    def _call_done(self, context: dict[str, Any], error: str | None, status: int = 0) -> None:
        operation, started = context.pop("s3pool_call", ("unknown", time.perf_counter()))
        request = context.pop("s3pool_request", None)
        if request is not None:
            if operation == "GetObject" and 200 <= status < 300:
                request.answered(None)  # its body ends it (see _get)
            else:
                request.end()
                self.requests.current = None
        if error is not None:
            with self._errors_lock:
                self.errors += 1
        observer = self.observer
        if observer is not None:
            observer(operation, time.perf_counter() - started, error)

    async def _run(self, fn: Callable[..., T], *args: Any, bucket: str,
                   key: str | None = None) -> T:
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise translate(exc, bucket, key) from exc
        except (ValueError, OverflowError, http.client.HTTPException,
                urllib3.exceptions.HTTPError) as exc:
            # botocore's parsers and http.client on headers no S3 sends (a
            # Content-Length of "12¹", a date past 9999): an answer, not our bug
            what = f"s3://{bucket}/{key}" if key is not None else f"s3://{bucket}"
            raise BackendError(f"S3 sent an answer for {what} that cannot be read: "
                               f"{exc!r}") from exc
        except boto3.exceptions.Boto3Error as exc:
            # upload_file wraps S3's answer (NoSuchBucket, AccessDenied...) in
            # S3UploadFailedError: translate the answer it wraps
            wrapped = exc.__cause__ or exc.__context__
            if isinstance(wrapped, (botocore.exceptions.BotoCoreError,
                                    botocore.exceptions.ClientError)):
                raise translate(wrapped, bucket, key) from exc
            raise translate(exc, bucket, key) from exc

    # --- objects ---------------------------------------------------------

    async def get_object(self, bucket: str, key: str, if_none_match: str | None = None,
                         read_up_to: int = 0,
                         then: Callable[[ObjectResponse], Any] | None = None,
                         first_part: int = 0) -> ObjectResponse | None:
        """Start a GET; None when S3 answers 304 (our copy is current).

        A body of at most *read_up_to* bytes is read (and hashed) in the same
        worker thread and handed back as ``data``, and *then* (if given) is
        called with the response in that thread too: a small object costs
        one thread hop, like a plain boto3 GET.

        With *first_part* (at least *read_up_to*), the GET asks for bytes
        [0, first_part) only: the body of a larger object ends with its first
        part (``body_length``), so a download whose other parts come from
        ranged GETs never closes a body S3 is still sending (which S3 servers
        log as a connection reset by peer). The response stands for the whole
        object all the same: its meta has the size from Content-Range, and its
        digest is the whole object's (S3 sends no checksum with a range, even
        one that covers the object: a HEAD of the same version gives the
        full-object one when the ETag is not an MD5 to check by, and when the
        object is longer than its first part, where a CRC costs a quarter of an
        MD5's CPU; a HEAD that has none leaves the MD5). An empty
        object (416: it has no byte 0) is asked for whole."""

        condition = validator(if_none_match)
        if condition is not None and not (ETAG_FORM.fullmatch(condition)
                                          and LEGAL_VALUE.fullmatch(condition)):
            # a copy cached before ETags were checked: fetched again, never sent back
            log.warning("the cached ETag %r of s3://%s/%s is not a legal header value: "
                        "fetching the object again unconditionally", condition[:80],
                        bucket, key)
            condition = None

        def call(ranged: bool) -> ObjectResponse | None:
            conditions = {"IfNoneMatch": condition} if condition else {}
            if ranged:
                conditions["Range"] = f"bytes=0-{first_part - 1}"
            try:
                resp = self._get(bucket, key, conditions)
            except botocore.exceptions.ClientError as exc:
                code, status = _error_code(exc)
                if status == 304 or code == "304":
                    if condition is None:  # "not modified" since nothing: no answer
                        raise BackendError(f"S3 answered 304 to an unconditional GET of "
                                           f"s3://{bucket}/{key}") from None
                    return None
                if ranged and (status == 416 or code == "InvalidRange"):
                    return call(False)  # an empty object has no byte 0 to ask for
                raise
            try:
                body_length = None
                if ranged:
                    body_length = check_first_part(resp, bucket, key, first_part)
                else:
                    check_answer(resp, bucket, key)
                if resp.get("ContentLength") is None:
                    self._length_from_head(resp, bucket, key)
                digest = digest_for(resp, bucket, key)
                # S3 sends no checksum with a 206, even one of the whole object:
                # a HEAD gives the full-object one where there is no other check,
                # and where the body goes on past its first part and the other
                # check is the ETag's MD5 (four times a CRC's CPU per byte)
                if ranged and status_of(resp) == 206 and (
                        digest is None or (digest.kind == "md5" and body_length is not None)):
                    digest = self._digest_from_head(resp, bucket, key) or digest
            except BaseException:
                resp["Body"].close()
                raise
            response = ObjectResponse(meta_from_response(resp), resp["Body"], digest,
                                      body_length=body_length)
            if response.content_length <= read_up_to:
                read_small(response, bucket, key)
                if then is not None:
                    then(response)
            return response

        return await self._run(call, first_part > 0, bucket=bucket, key=key)

    def _digest_from_head(self, resp: dict[str, Any], bucket: str, key: str) -> Digest | None:
        """Worker thread: the whole object's digest for a GET that asked for its
        first part (S3 sends no x-amz-checksum with a range): a HEAD's
        full-object checksum, if it is of the same version; put in *resp*
        so the meta shows it as after a whole GET."""
        head = self.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        if validator(head.get("ETag")) != validator(resp.get("ETag")):
            return None  # another version meanwhile: the parts' If-Match will say so
        checksums = full_object_checksums(head)
        if not checksums:
            return None
        resp.update(checksums)
        return digest_for(resp, bucket, key)

    def _length_from_head(self, resp: dict[str, Any], bucket: str, key: str) -> None:
        """An answer without a Content-Length (chunked, or up to the close): a HEAD
        says how long the object is, and the body must be exactly that long."""
        head = self.client.head_object(Bucket=bucket, Key=key)
        size = head.get("ContentLength")
        if not isinstance(size, int) or size < 0 or \
                validator(head.get("ETag")) != validator(resp.get("ETag")):
            raise BackendError(f"S3 gave no length for s3://{bucket}/{key}, and its HEAD "
                               f"answered another version or none ({head.get('ETag')!r}, "
                               f"{size!r})")
        resp["ContentLength"] = size
        resp["Body"] = resp["Body"].exactly(size)

    def _get(self, bucket: str, key: str, conditions: dict[str, str]) -> dict[str, Any]:
        """A GET's response in boto3's shape (worker thread): on the lean path when
        it answers, else boto3's, with its Body a :class:`WatchedBody`. Errors are
        botocore's ClientError either way."""
        url = f"s3://{bucket}/{key}"
        for name, value in conditions.items():  # values S3 gave us, sent back
            if not LEGAL_VALUE.fullmatch(value):
                raise BackendError(f"not sending {name} {value!r} for {url}: not a legal "
                                   "header value")
        lean = self.lean
        if lean is not None:
            headers = {_HEADER_OF[name]: value for name, value in conditions.items()}
            started = time.perf_counter()
            request = self.requests.begin("GetObject", url)
            try:
                status, resp = lean.get(bucket, key, headers, request)
            except Fallback as exc:
                self._lean_answered("GetObject", started, exc)
                log.debug("GET s3://%s/%s through boto3: %s", bucket, key, exc)
            else:
                self._lean_answered("GetObject", started)
                if status in (NOT_MODIFIED, NOT_FOUND, PRECONDITION_FAILED,
                              RANGE_NOT_SATISFIABLE):
                    raise botocore.exceptions.ClientError(
                        {"Error": resp or {"Code": str(status), "Message": f"status {status}"},
                         "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")
                assert resp is not None
                resp["Body"] = WatchedBody(resp["Body"], request, resp.get("ContentLength"))
                return resp
        # ChecksumMode: S3 sends the object's x-amz-checksum-* (botocore asks for it
        # only when its response_checksum_validation is "when_supported")
        try:
            answer: dict[str, Any] = self.client.get_object(
                Bucket=bucket, Key=key, ChecksumMode="ENABLED", **conditions)
        finally:
            current = self.requests.current  # begun by _call_started, kept for the body
            self.requests.current = None
        answer["Body"] = WatchedBody(answer["Body"], current, answer.get("ContentLength"))
        return answer

    async def read_body_at(self, response: ObjectResponse, fd: int, offset: int, limit: int,
                           bucket: str, key: str, transfer: Transfer | None = None,
                           digest: Digest | None = None) -> int:
        """Write up to *limit* bytes of the body at *offset* of *fd*; close the body.

        *transfer* counts the bytes (and stops a stalled copy); *digest*, if
        given, hashes them as they arrive (they must come in order from 0).
        """

        def call() -> int:
            try:
                return _copy_into(response.body, fd, offset, limit,
                                  transfer or self._transfer(bucket, key, limit), digest)
            finally:
                response.body.close()

        return await self._run(call, bucket=bucket, key=key)

    async def read_body_part(self, body: Any, fd: int, offset: int, limit: int, bucket: str,
                             key: str, transfer: Transfer, digest: Digest | None = None,
                             on_progress: Callable[[int], None] | None = None) -> int:
        """Write the next *limit* bytes of an open body at *offset* of *fd*; the
        body stays open for the caller to read on or close. *on_progress* is
        told (from the worker thread) how many bytes have been written so far."""
        return await self._run(_copy_into, body, fd, offset, limit, transfer, digest,
                               on_progress, bucket=bucket, key=key)

    async def get_range_into(self, bucket: str, key: str, etag: str, start: int, length: int,
                             fd: int, transfer: Progress | None = None,
                             on_progress: Callable[[int], None] | None = None,
                             total: int | None = None) -> int:
        """GET bytes [start, start+length) of the version *etag* (of *total* bytes)
        into *fd* at *start*. The answer is checked before a byte of it is
        written (:func:`check_range`); another version is VersionChanged."""

        def call() -> int:
            if transfer is not None:
                transfer.check()
            body = self.open_range(bucket, key, etag, start, length, total)
            try:
                return _copy_into(body, fd, start, length,
                                  transfer or self._transfer(bucket, key, length), None,
                                  on_progress)
            finally:
                body.close()

        return await self._run(call, bucket=bucket, key=key)

    def open_range(self, bucket: str, key: str, etag: str, start: int, length: int,
                   total: int | None) -> Any:
        """Blocking (a worker thread): the open body of a GET of bytes
        [start, start+length) of the version *etag* (of *total* bytes), its
        answer checked (:func:`check_range`) before a byte of it is read; a body
        of no given length must bring exactly *length* bytes. A failed If-Match
        is VersionChanged; botocore's other errors are raised as they come (the
        async call that runs the worker thread translates them)."""
        kwargs: dict[str, Any] = {"Range": f"bytes={start}-{start + length - 1}"}
        if validator(etag):
            kwargs["IfMatch"] = validator(etag)
        try:
            resp = self._get(bucket, key, kwargs)
        except botocore.exceptions.ClientError as exc:
            code, status = _error_code(exc)
            if status == PRECONDITION_FAILED or code in ("PreconditionFailed", "412"):
                raise VersionChanged(f"s3://{bucket}/{key} changed on S3 while it was "
                                     f"read (If-Match {etag} failed)") from None
            raise
        body = resp["Body"]
        try:
            check_range(resp, bucket, key, etag, start, length, total)
            if resp.get("ContentLength") is None:
                body.exactly(length)
        except BaseException:
            body.close()
            raise
        return body

    async def open_object(self, bucket: str, key: str,
                          then: Callable[[dict[str, Any]], T]) -> T:
        """An unconditional GET of the whole object (the shared tier's), its
        answer checked (:func:`check_answer`); *then* is called with the response
        (boto3's shape, its Body a WatchedBody) in the same worker thread and
        its result returned. If *then* raises, the body is closed; otherwise
        it is *then*'s to read and close. Errors come translated (NoSuchKey,
        BackendError...)."""

        def call() -> T:
            resp = self._get(bucket, key, {})
            try:
                check_answer(resp, bucket, key)
                return then(resp)
            except BaseException:
                resp["Body"].close()
                raise

        result: T = await self._run(call, bucket=bucket, key=key)
        return result

    async def head_with_checksums(self, bucket: str, key: str) -> dict[str, Any]:
        """A HEAD that asks for the object's full-object checksums: its meta
        (`aws s3api` shape, any server-side encryption named, so digest_for
        knows an SSE-KMS ETag is no MD5), its ETag checked as a value that may
        be sent back in a header."""
        resp = await self._run(
            lambda: self.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED"),
            bucket=bucket, key=key)
        check_etag(resp.get("ETag"), f"s3://{bucket}/{key}")
        meta = meta_from_response(resp)
        for name in ("ServerSideEncryption", "SSECustomerAlgorithm"):
            if resp.get(name):
                meta[name] = resp[name]
        return meta

    def _transfer(self, bucket: str, key: str, total: int) -> Transfer:
        """A counter for a copy nobody watches: only the shutdown stops it."""
        return Transfer(bucket, key, total, 0, 1, self.stopping)

    async def head_object(self, bucket: str, key: str) -> dict[str, Any]:
        resp = await self._run(
            lambda: self.client.head_object(Bucket=bucket, Key=key), bucket=bucket, key=key
        )
        return meta_from_response(resp)

    def _lean_answered(self, operation: str, started: float,
                       fallback: Fallback | None = None) -> None:
        """Count a request of the lean path: answered there (and timed for
        the metrics), or handed back to boto3 (*fallback*)."""
        with self._errors_lock:
            if operation == "GetObject":
                if fallback is None:
                    self.lean_gets += 1
                else:
                    self.lean_fallbacks += 1
            elif fallback is None:
                self.lean_lists += 1
            else:
                self.lean_list_fallbacks += 1
        observer = self.observer
        if fallback is None and observer is not None:
            observer(operation, time.perf_counter() - started, None)

    def list_objects_v2(self, **params: Any) -> dict[str, Any]:
        """Blocking: one ListObjectsV2 page (boto3's parameters), in the shape
        boto3 returns it with the fast parser (FAST_ENTRIES, FAST_PREFIXES,
        IsTruncated, NextContinuationToken): on the lean path when it
        answers, else boto3's. Errors are botocore's either way."""
        lean = self.lean
        bucket = params["Bucket"]
        if lean is not None and set(params) <= set(_LIST_QUERY):
            query = {"list-type": "2", "encoding-type": "url"}
            query.update((_LIST_QUERY[name], str(value)) for name, value in params.items()
                         if name != "Bucket")
            started = time.perf_counter()
            url = f"s3://{bucket}/{params.get('Prefix', '')}"
            request = self.requests.begin("ListObjectsV2", url)
            try:
                page = read_page(lean.list_body(bucket, query, request))
                if page is None:
                    raise Fallback("not a listing the fast parser reads")
            except Fallback as exc:
                self._lean_answered("ListObjectsV2", started, exc)
                log.debug("LIST s3://%s through boto3: %s", bucket, exc)
            else:
                self._lean_answered("ListObjectsV2", started)
                return page
        return cast(dict[str, Any], self.client.list_objects_v2(**params))

    async def first_keys(self, bucket: str, prefix: str, limit: int) -> list[ListEntry]:
        """Up to *limit* keys starting with *prefix*, in key order (one LIST request)."""
        resp = await self._run(
            lambda: self.client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=limit),
            bucket=bucket,
        )
        return page_of(resp, f"s3://{bucket}/{prefix}", paging=False)[0]

    async def upload_file(self, bucket: str, key: str, path: str,
                          extra_args: dict[str, Any] | None = None) -> None:
        """Upload *path*; large files go multipart. *extra_args*: boto3's
        ExtraArgs (Metadata, ContentType)."""
        await self._run(
            lambda: self.client.upload_file(path, bucket, key, ExtraArgs=extra_args,
                                            Config=self.transfer_config),
            bucket=bucket, key=key,
        )

    # --- uploads of files written in the mount (s3pool/upload/staged.py) ---------

    async def put_object_from(self, bucket: str, key: str, path: str,
                              only_new: bool = False) -> dict[str, Any]:
        """One PUT of the file at *path*; S3's answer as {ETag, LastModified}.
        *only_new*: If-None-Match: * (ObjectExists if the key exists by now)."""
        def call() -> dict[str, Any]:
            with open(path, "rb") as body:
                answer: dict[str, Any] = self._conditional(
                    lambda **extra: self.client.put_object(Bucket=bucket, Key=key, Body=body,
                                                           **extra),
                    only_new, lambda: body.seek(0), bucket, key)
                return answer
        return _upload_answer(await self._run(call, bucket=bucket, key=key))

    def _conditional(self, call: Callable[..., Any], only_new: bool,
                     rewind: Callable[[], Any], bucket: str, key: str) -> Any:
        """Worker thread: *call* with If-None-Match: * when *only_new* and the
        server takes it; a server that does not (501 NotImplemented) is asked
        without it from then on (its writes are then last-writer-wins)."""
        if not (only_new and self.conditional_writes):
            return call()
        try:
            return call(IfNoneMatch="*")
        except botocore.exceptions.ClientError as exc:
            code, status = _error_code(exc)
            if code in ("PreconditionFailed", "ConditionalRequestConflict") \
                    or status in (409, 412):
                raise ObjectExists(f"s3://{bucket}/{key} was created meanwhile by "
                                   f"someone else: not replaced") from None
            if code != "NotImplemented" and status != 501:
                raise
        log.warning("the S3 server does not take If-None-Match on writes: files written "
                    "in the mount may replace an object made meanwhile")
        self.conditional_writes = False
        rewind()
        return call()

    async def create_multipart_upload(self, bucket: str, key: str) -> str:
        resp = await self._run(
            lambda: self.client.create_multipart_upload(Bucket=bucket, Key=key),
            bucket=bucket, key=key)
        return str(resp["UploadId"])

    async def upload_part_from(self, bucket: str, key: str, upload_id: str, number: int,
                               path: str, offset: int, length: int) -> str:
        """Upload bytes [offset, offset+length) of *path* as part *number*; its ETag."""
        def call() -> str:
            with open(path, "rb") as f:
                data = os.pread(f.fileno(), length, offset)
            if len(data) != length:
                raise BackendError(f"part {number} of s3://{bucket}/{key}: staged file "
                                   f"is short ({len(data)} of {length} bytes)")
            return str(self.client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id,
                                               PartNumber=number, Body=data)["ETag"])
        return await self._run(call, bucket=bucket, key=key)

    async def complete_multipart_upload(self, bucket: str, key: str, upload_id: str,
                                        parts: list[tuple[int, str]],
                                        only_new: bool = False) -> dict[str, Any]:
        upload = {"Parts": [{"PartNumber": n, "ETag": etag} for n, etag in parts]}
        resp = await self._run(
            lambda: self._conditional(
                lambda **extra: self.client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload=upload,
                    **extra),
                only_new, lambda: None, bucket, key),
            bucket=bucket, key=key)
        return _upload_answer(resp)

    async def abort_multipart_upload(self, bucket: str, key: str, upload_id: str) -> None:
        """Abort an upload; one S3 no longer knows (NoSuchUpload) is already gone."""
        def call() -> None:
            try:
                self.client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            except botocore.exceptions.ClientError as exc:
                if _error_code(exc)[0] not in ("NoSuchUpload", "404"):
                    raise
        await self._run(call, bucket=bucket, key=key)

    async def delete_object(self, bucket: str, key: str) -> None:
        await self._run(lambda: self.client.delete_object(Bucket=bucket, Key=key),
                        bucket=bucket, key=key)

    async def list_multipart_uploads(self, bucket: str, prefix: str
                                     ) -> list[tuple[str, str, float]]:
        """(key, upload id, initiated epoch seconds) of the uploads under *prefix*."""
        def call() -> list[tuple[str, str, float]]:
            found = []
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Uploads", ()):
                    initiated = item.get("Initiated")
                    found.append((item["Key"], item["UploadId"],
                                  initiated.timestamp() if initiated else 0.0))
            return found
        return await self._run(call, bucket=bucket)

    # --- buckets ---------------------------------------------------------

    async def bucket_exists(self, bucket: str) -> bool:
        try:
            await self._run(lambda: self.client.head_bucket(Bucket=bucket), bucket=bucket)
        except NoSuchBucket:
            return False
        return True

    def iter_listing(self, bucket: str) -> Iterator[list[ListEntry]]:
        """Blocking generator of the whole bucket's listing pages (1,000 keys
        each), on the lean path where it answers; run it in a thread. A page
        that cannot follow the ones before (listpages.py) ends it with an
        error."""
        where = f"s3://{bucket}"
        onward = Onward()
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Bucket": bucket, "MaxKeys": PAGE_KEYS}
            if token is not None:
                params["ContinuationToken"] = token
            try:
                resp = self.list_objects_v2(**params)
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                raise translate(exc, bucket) from exc
            entries, _, following = page_of(resp, where)
            why = onward.fault(entries, [])
            if why is None and following is not None and following == token:
                why = "the same continuation token again"
            if why is not None:
                raise BackendError(f"S3 answered a LIST of {where} with {why}: not believed")
            yield entries
            if following is None:
                return
            token = following


class ObjectExists(BackendError):
    """A write that was to make a new object found one there (If-None-Match: *)."""


def _upload_answer(resp: dict[str, Any]) -> dict[str, Any]:
    """ETag and LastModified (the answer's Date: S3 sends no Last-Modified on a PUT)."""
    headers = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    return {"ETag": resp.get("ETag") or "", "LastModified": headers.get("date")}


def read_small(response: ObjectResponse, bucket: str, key: str) -> None:
    """Read a small body whole (worker thread), hash it, close it."""
    size = response.content_length
    try:
        try:
            data = response.body.read()
        except (urllib3.exceptions.HTTPError, botocore.exceptions.BotoCoreError,
                OSError) as exc:
            raise BackendError(f"reading s3://{bucket}/{key} failed: {exc}") from exc
    finally:
        response.body.close()
    if len(data) != size:
        raise BackendError(f"short download of s3://{bucket}/{key}: {len(data)} of {size} bytes")
    if response.digest is not None:
        response.digest.update(data)
    response.data = data


def _copy_into(body: Any, fd: int, offset: int, limit: int, transfer: Progress,
               digest: Digest | None = None,
               on_progress: Callable[[int], None] | None = None) -> int:
    """Copy up to *limit* bytes of a streaming body to *fd* at *offset* (worker thread).

    Reads with ``read1`` (one socket read at most, bounded by the read
    timeout), so a trickling body returns to this loop often and
    ``transfer.check()`` can fail it: ``readinto`` of a 1 MiB buffer would
    wait for the whole MiB however slowly it came. Every write is checked
    (:func:`write_all`). Any failure is told to *transfer*, so the other
    parts of a ranged download stop at their next chunk.
    """
    # a LeanBody reads once per call; under botocore's body, urllib3's response does
    read1 = getattr(body, "read1", None) or getattr(getattr(body, "_raw_stream", None),
                                                    "read1", None)
    written = 0
    try:
        while written < limit:
            transfer.check()
            want = min(CHUNK, limit - written)
            try:
                chunk = read1(want) if read1 is not None else body.read(want)
            except (urllib3.exceptions.HTTPError, botocore.exceptions.BotoCoreError,
                    OSError) as exc:
                raise BackendError(f"reading {transfer.url} failed after {transfer.done} "
                                   f"bytes: {exc}") from exc
            if not chunk:
                break
            view = memoryview(chunk)
            if digest is not None:
                digest.update(view)
            write_all(fd, view, offset + written)
            written += len(chunk)
            transfer.add(len(chunk))
            if on_progress is not None:
                on_progress(written)
    except BaseException as exc:
        transfer.fail(str(exc) or repr(exc))
        raise
    return written


