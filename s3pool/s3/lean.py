"""GETs of objects and LIST pages without botocore's per-call machinery.

A boto3 ``get_object`` spends about 2 ms of CPU per call in Python
(parameter validation, endpoint rules, a dozen event hooks, response
parsing with dateutil, a second checksum of the body) on top of the
request itself: for a 16 KiB object on a nearby S3 that is half of the
time a miss costs. :class:`LeanGets` sends the same request on a
connection of its own small keep-alive pool:

- the URL is the one botocore itself builds for the bucket (taken once
  per bucket from a presigned URL of the client, so endpoint, addressing
  style and region rules stay botocore's), the key percent-encoded as
  botocore encodes it;
- the request is signed by botocore's own SigV4 signer with the
  client's current credentials (refreshed as botocore refreshes them);
- the HTTP/1.1 framing is the standard library's ``http.client`` (status
  line, headers, Content-Length, chunked and close-delimited bodies,
  ``100 Continue``; header values it is asked to send are checked for
  CR/LF); on top of it, what a cache must not believe is refused here: a
  Content-Length that is not ASCII digits or given twice differently, a
  body that ends before its length or has more bytes right behind it (a
  body longer than its Content-Length, or a second answer smuggled after
  it), an idle kept-alive connection with bytes waiting on it. Interim
  ``1xx`` answers are skipped. The headers are read into the dict shape
  boto3 returns (ContentLength None when the length is not given), the
  body is a :class:`LeanBody`.

Only the plain cases are answered here: 200, 206, 304, 404 and 412.
Anything else (an error, a redirect to another region, a connection that
failed before the headers, a key that cannot be encoded) goes back to the
boto3 call, which retries and translates errors as always. A bucket that
answered with something unusual (a redirect, 400, 403) is left to boto3
from then on. A connection goes back to the pool only when its body was
read to the end; a body closed early closes its connection.

A LIST page (:meth:`LeanGets.list_body`) is a GET of the bucket with the
ListObjectsV2 query, signed and framed the same way; only a 200 is
answered here, its body read whole (up to ``MAX_LIST_BODY``) for the
caller's parser, which hands anything but a listing back to boto3 too
(backend.py ``list_objects_v2``). A boto3 LIST costs about twice the CPU
(bench/RESULTS.md, Listings).

Each request is an :class:`~s3pool.s3.inflight.S3Request` (when the caller
gives one): its socket is attached to it, so the deadline watchdog can end
a trickling answer wherever it is.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import select
import socket
import ssl
import threading
from email.utils import parsedate_to_datetime
from typing import Any, cast
from urllib.parse import quote, urlsplit

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.httpsession import get_cert_path

from s3pool.errors import BackendError

log = logging.getLogger(__name__)

# response headers -> the boto3 response fields that s3pool reads
_FIELDS = (
    ("etag", "ETag"),
    ("content-type", "ContentType"),
    ("accept-ranges", "AcceptRanges"),
    ("content-range", "ContentRange"),
    ("x-amz-checksum-crc32", "ChecksumCRC32"),
    ("x-amz-checksum-crc32c", "ChecksumCRC32C"),
    ("x-amz-checksum-crc64nvme", "ChecksumCRC64NVME"),
    ("x-amz-checksum-sha1", "ChecksumSHA1"),
    ("x-amz-checksum-sha256", "ChecksumSHA256"),
    ("x-amz-checksum-type", "ChecksumType"),
    ("x-amz-server-side-encryption", "ServerSideEncryption"),
    ("x-amz-server-side-encryption-customer-algorithm", "SSECustomerAlgorithm"),
    ("x-amz-version-id", "VersionId"),
)
_META_PREFIX = "x-amz-meta-"
# statuses answered here; any other goes to boto3
NOT_MODIFIED, NOT_FOUND, PRECONDITION_FAILED = 304, 404, 412
RANGE_NOT_SATISFIABLE = 416  # a first part's GET of an empty object: asked again whole
_PLAIN = {200, 206, NOT_MODIFIED, NOT_FOUND, PRECONDITION_FAILED, RANGE_NOT_SATISFIABLE}
# statuses that say this bucket wants something botocore knows how to do
_LEAVE_BUCKET = {301, 307, 400, 403}
MAX_ERROR_BODY = 64 << 10  # bytes of an error document read (more: the connection is closed)
MAX_LIST_BODY = 16 << 20  # a LIST answer longer than this is boto3's to read
DRAIN = 64 << 10  # an unread rest up to this is read so the connection can be reused
MAX_INTERIM = 8  # interim (1xx) answers skipped before an answer, at most
RECV = 256 << 10  # bytes asked of one socket read of a body (as the own reader did)
_DIGITS = re.compile(r"[0-9]{1,19}")  # ASCII only: str.isdigit() takes "²" and "١"


class Fallback(Exception):
    """This GET is boto3's to make (the reason is in the message)."""


class TLSFailed(Fallback):
    """The endpoint's certificate does not pass our check: boto3 keeps the bucket."""


class BodyError(ConnectionError):
    """The connection ended or failed before the body's last byte, or the body
    did not end where its framing said."""


class BadAnswer(BackendError):
    """An answer whose framing cannot be believed (no boto3 retry: it would be
    told the same)."""


class _Response(http.client.HTTPResponse):
    """http.client's answer, skipping interim 1xx answers (it skips only 100)."""

    # the connection's socket, set by _exchange: http.client lets go of it at a
    # Connection: close, and bytes_behind still looks at it after the body
    s3pool_sock: Any = None

    def _read_status(self) -> tuple[str, int, str]:
        # a private method of http.client, absent from typeshed's stubs
        for _ in range(MAX_INTERIM):
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not 101 < status < 200:  # 100 is skipped by begin(); 101 is refused
                return version, status, reason
            http.client.parse_headers(self.fp)  # the interim answer's headers
        raise http.client.HTTPException("too many interim answers")


class _HTTPConnection(http.client.HTTPConnection):
    response_class = _Response


class _HTTPSConnection(http.client.HTTPSConnection):
    response_class = _Response


class _Pool:
    """Idle keep-alive connections to one origin."""

    def __init__(self, scheme: str, host: str, port: int, size: int,
                 context: ssl.SSLContext | None, connect_timeout: float,
                 read_timeout: float) -> None:
        self.host, self.port, self.size = host, port, size
        self.context = context if scheme == "https" else None
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.idle: list[http.client.HTTPConnection] = []
        self.lock = threading.Lock()

    def take(self) -> tuple[http.client.HTTPConnection, bool]:
        """A connected connection, and whether it was used before. An idle one
        with anything to read (the server closed it, or sent bytes nobody asked
        for) is dropped."""
        while True:
            with self.lock:
                conn = self.idle.pop() if self.idle else None
            if conn is None:
                break
            if conn.sock is not None and not _readable(conn.sock):
                return conn, True
            conn.close()
        if self.context is not None:
            conn = _HTTPSConnection(self.host, self.port, timeout=self.connect_timeout,
                                    context=self.context)
        else:
            conn = _HTTPConnection(self.host, self.port, timeout=self.connect_timeout)
        try:
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sock.settimeout(self.read_timeout)
        except BaseException:
            conn.close()
            raise
        return conn, False

    def give(self, conn: http.client.HTTPConnection) -> None:
        if conn.sock is not None:
            with self.lock:
                if len(self.idle) < self.size:
                    self.idle.append(conn)
                    return
        conn.close()


def _ended(request: Any) -> str:
    """Why the deadline watchdog ended *request*, if it did (for messages)."""
    why = getattr(request, "expired", None)
    return f" (S3 request ended: {why})" if why else ""


def _waiting(sock: Any) -> bool:
    """True if bytes (not just the peer's close) wait on *sock*, looked at without
    blocking or taking them."""
    if isinstance(sock, ssl.SSLSocket):
        return sock.pending() > 0  # TLS cannot peek further without decrypting
    if not _readable(sock):  # (a recv on a socket with a timeout waits, whatever flags)
        return False
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:
        return False


def _readable(sock: Any) -> bool:
    """True if a recv would not block (bytes waiting, or the peer closed)."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    try:
        ready, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(ready)


def bytes_behind(resp: http.client.HTTPResponse, sock: Any) -> bool:
    """True if bytes are already here after an answer's declared end (read
    without blocking: from the response's buffer, else the socket)."""
    fp = resp.fp
    if sock is None:
        return False
    if fp is None:
        return _waiting(sock)
    timeout = sock.gettimeout()
    try:
        sock.settimeout(0)
        return bool(fp.peek(1))
    except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
        return False
    except (OSError, ValueError):
        return False  # the connection broke: it is not reused, the body was whole
    finally:
        try:
            sock.settimeout(timeout)
        except OSError:
            pass


class LeanBody:
    """The body of a 200/206 answer.

    ``read1`` returns after one socket read at most (the download loop
    checks for stalls between reads). With a Content-Length, exactly that
    many bytes are handed out: fewer (the connection ended) or more (bytes
    right behind the last one) is a :class:`BodyError` instead of the last
    bytes. Without one (chunked, or up to the connection's close) the body
    is what http.client decodes. The connection goes back to the pool when
    the last byte was read, and is closed by an early close."""

    def __init__(self, conn: http.client.HTTPConnection, resp: _Response,
                 pool: _Pool, length: int | None, request: Any = None) -> None:
        self._conn: http.client.HTTPConnection | None = conn
        self._resp = resp
        self._pool = pool
        self._left = length  # None: until the body's own end
        self._request = request  # the S3Request that counts the bytes

    def read1(self, size: int = -1) -> bytes:
        return self._take(size, True)

    def read(self, size: int | None = None) -> bytes:
        return self._take(size, False)

    def _take(self, size: int | None, once: bool) -> bytes:
        """Up to *size* bytes of what is left (all if None or negative): one
        socket read if *once*, else as many as that takes."""
        if self._conn is None or self._left == 0:
            return b""
        want = -1 if size is None or size < 0 else size
        if once:
            return self._read1(want)
        parts: list[bytes] = []
        got = 0
        while self._conn is not None and self._left != 0:
            data = self._read1(want if want < 0 else want - got)
            if not data:
                break
            parts.append(data)
            got += len(data)
            if 0 <= want <= got:
                break
        return b"".join(parts)

    def _read1(self, want: int) -> bytes:
        conn = self._conn
        if conn is None or self._left == 0 or want == 0:
            return b""
        resp = self._resp
        left = self._left
        request = self._request
        if left is not None:
            want = left if want < 0 else min(want, left)
        try:
            data = resp.read1(min(want, RECV) if want > 0 else RECV)
            if left is not None:
                if not data:
                    raise BodyError(f"connection closed with {left} body bytes to come"
                                    + _ended(request))
                self._left = left = left - len(data)
                if left == 0 and bytes_behind(resp, resp.s3pool_sock):
                    raise BodyError("bytes behind the body's last byte: the answer is "
                                    "longer than its Content-Length")
            elif not data:
                self._left = 0  # the decoded body ended (chunked, or the close)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self._drop()
            if isinstance(exc, BodyError):
                raise
            raise BodyError(f"reading the body failed: {exc!r}{_ended(request)}"
                            ) from exc
        if request is not None:
            request.add(len(data))
        if self._left == 0:
            self._done()
        return data

    @property
    def declared(self) -> bool:
        """True if the answer gave its length (else the caller checks the count)."""
        return self._left is not None or self._conn is None

    def close(self) -> None:
        conn = self._conn
        if conn is None:
            return
        left = self._left
        if left is not None and left <= DRAIN:
            try:
                while self._conn is not None and self._left:
                    self._take(self._left, False)
                if self._conn is not None:
                    self._done()
                return
            except BodyError:
                return
        self._drop()

    def _done(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._resp.close()
            if self._resp.will_close:
                conn.close()
            else:
                self._pool.give(conn)
        self._end_request()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._resp.close()
            conn.close()
        self._end_request()

    def _end_request(self) -> None:
        request, self._request = self._request, None
        if request is not None:
            request.end()

    def __del__(self) -> None:
        if self._conn is not None:
            self._conn.close()


class LeanGets:
    """Signed GETs on keep-alive connections of our own, beside one boto3 client."""

    def __init__(self, client: Any, credentials: Any, pool_size: int,
                 connect_timeout: float, read_timeout: float) -> None:
        self.client = client
        self.credentials = credentials  # botocore Credentials (maybe refreshable)
        self.region = client.meta.region_name or "us-east-1"
        self.pool_size = pool_size
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        # what the client verifies TLS with: True, False, or a CA bundle (file or
        # directory) from AWS_CA_BUNDLE or ca_bundle in the AWS config
        endpoint = getattr(client, "_endpoint", None)
        self.verify = getattr(getattr(endpoint, "http_session", None), "_verify", True)
        self._context: ssl.SSLContext | None = None
        self._pools: dict[tuple[str, str, int], _Pool] = {}  # (scheme, host, port) ->
        self._prefixes: dict[str, tuple[str, str, str, _Pool] | None] = {}  # bucket ->
        self._lock = threading.Lock()

    @staticmethod
    def usable(client: Any) -> bool:
        """False where botocore does more than sign and send (proxies, S3
        accelerate or dual-stack endpoints, unsigned clients, client
        certificates)."""
        config = client.meta.config
        s3 = config.s3 or {}
        if config.proxies or any(os.environ.get(name) for name in (
                "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
            return False
        if s3.get("use_accelerate_endpoint") or s3.get("use_dualstack_endpoint") \
                or getattr(config, "use_dualstack_endpoint", False):
            return False
        if getattr(config, "client_cert", None):
            return False
        return config.signature_version in (None, "s3v4", "v4")

    def prepare(self, bucket: str) -> None:
        """Work out the bucket's URL now rather than at its first GET."""
        self._prefix(bucket)

    def _prefix(self, bucket: str) -> tuple[str, str, str, _Pool] | None:
        """(scheme://netloc, Host header, path prefix, connections) of the
        bucket's objects, as botocore builds their URLs."""
        with self._lock:
            if bucket in self._prefixes:
                return self._prefixes[bucket]
        found: tuple[str, str, str, _Pool] | None = None
        try:
            url = urlsplit(self.client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=60))
            if url.path.endswith("/k") and url.scheme in ("http", "https") and url.hostname:
                default = {"http": 80, "https": 443}[url.scheme]
                port = url.port or default
                # the Host botocore signs: the netloc without a default port
                host = url.netloc if url.port != default else url.netloc.rpartition(":")[0]
                found = (f"{url.scheme}://{url.netloc}", host, url.path[:-1],
                         self._pool_for(url.scheme, url.hostname, port))
        except Exception as exc:  # any trouble: boto3 keeps this bucket
            log.debug("no lean GETs for bucket %s: %s", bucket, exc)
            found = None
        with self._lock:
            self._prefixes[bucket] = found
        return found

    def _pool_for(self, scheme: str, host: str, port: int) -> _Pool:
        with self._lock:
            pool = self._pools.get((scheme, host, port))
            if pool is None:
                if scheme == "https" and self._context is None:
                    self._context = tls_context(self.verify)
                pool = self._pools[(scheme, host, port)] = _Pool(
                    scheme, host, port, self.pool_size, self._context,
                    self.connect_timeout, self.read_timeout)
            return pool

    def leave_bucket(self, bucket: str) -> None:
        with self._lock:
            self._prefixes[bucket] = None

    def get(self, bucket: str, key: str, headers: dict[str, str], request: Any = None
            ) -> tuple[int, dict[str, Any] | None]:
        """(status, boto3-shaped response with a LeanBody) for 200/206,
        (304 or 412, None), or (404, the error's Code and Message). Raises
        :class:`Fallback` for anything else, :class:`BadAnswer` for an answer
        that cannot be believed. *request* (an S3Request) is given the socket
        and the body's bytes, and is ended with the answer or its body."""
        try:
            status, result = self._get(bucket, key, headers, request)
        except BaseException:
            if request is not None:
                request.end()
            raise
        if request is not None and (result is None or "Body" not in result):
            request.end()
        return status, result

    def _get(self, bucket: str, key: str, headers: dict[str, str], request: Any
             ) -> tuple[int, dict[str, Any] | None]:
        try:
            path = quote(key.encode("utf-8"), safe="/~")
        except UnicodeEncodeError:
            raise Fallback("key not UTF-8") from None
        conn, resp, pool = self._send(bucket, path, {"x-amz-checksum-mode": "ENABLED",
                                                     **headers}, _PLAIN, request)
        status = resp.status
        if status in (NOT_MODIFIED, PRECONDITION_FAILED, RANGE_NOT_SATISFIABLE):
            _let_go(conn, resp, pool)
            return status, None
        if status == NOT_FOUND:  # NoSuchKey or NoSuchBucket: the code is in the body
            text = _error_text(conn, resp, pool)
            code = _xml_text(text, "Code") or "NoSuchKey"
            return status, {"Code": code, "Message": _xml_text(text, "Message")}
        answer = _fields(resp)
        try:
            length = _content_length(resp.headers, answer)
        except BadAnswer:
            conn.close()
            raise
        modified = answer.get("last-modified")
        if modified is None:
            conn.close()
            raise Fallback("no Last-Modified")
        result: dict[str, Any] = {"ContentLength": length}
        for header, name in _FIELDS:
            value = answer.get(header)
            if value is not None:
                result[name] = value
        try:
            result["LastModified"] = parsedate_to_datetime(modified)
        except (TypeError, ValueError, OverflowError):
            conn.close()
            raise Fallback(f"Last-Modified {modified!r}") from None
        result["Metadata"] = {name[len(_META_PREFIX):]: value
                              for name, value in answer.items()
                              if name.startswith(_META_PREFIX)}
        result["ResponseMetadata"] = {"HTTPStatusCode": status}
        if request is not None:
            request.answered(length)
        result["Body"] = LeanBody(conn, resp, pool, length, request)
        return status, result

    def list_body(self, bucket: str, query: dict[str, str], request: Any = None) -> bytes:
        """The body of a 200 answer to a GET of the bucket itself with *query*
        (a ListObjectsV2 page: list-type, prefix, delimiter, continuation-token...;
        the caller reads the XML). Raises :class:`Fallback` for any other
        answer (boto3 asks again, retries and translates errors),
        :class:`BadAnswer` for a body its framing does not match. *request*
        (an S3Request) is given the socket and the bytes, and ended."""
        try:
            # the query as SigV4 signs it: sorted, every byte but the unreserved encoded
            path = "?" + "&".join(f"{name}={quote(value.encode('utf-8'), safe='~')}"
                                  for name, value in sorted(query.items()))
        except UnicodeEncodeError:
            raise Fallback("prefix not UTF-8") from None
        try:
            conn, resp, pool = self._send(bucket, path, {}, {200}, request)
            try:
                length = _content_length(resp.headers)
                if length is not None and length > MAX_LIST_BODY:
                    raise Fallback(f"a LIST answer of {length} bytes")
                if length is None:  # chunked, or up to the close: http.client's framing
                    data = resp.read(MAX_LIST_BODY + 1)
                    if len(data) > MAX_LIST_BODY:
                        raise Fallback("a LIST answer too long")
                else:
                    data = _read_exactly(resp, length, request)
                if request is not None:
                    request.add(len(data))
                if length is not None and bytes_behind(resp, resp.s3pool_sock):
                    raise BadAnswer("bytes behind a LIST answer's last byte: it is longer "
                                    "than its Content-Length")
            except (OSError, http.client.HTTPException, ValueError, Fallback) as exc:
                conn.close()
                if request is not None and request.expired is not None:
                    # the deadline watchdog shut it: boto3 would wait as long again
                    raise BadAnswer(f"S3 request ended: {request.expired}") from None
                if isinstance(exc, Fallback):
                    raise
                raise Fallback(f"reading a LIST answer failed: {exc!r}") from None
            except BaseException:
                conn.close()
                raise
            resp.close()
            if resp.will_close:
                conn.close()
            else:
                pool.give(conn)
            return data
        finally:
            if request is not None:
                request.end()

    def _send(self, bucket: str, path: str, headers: dict[str, str], wanted: set[int],
              request: Any) -> tuple[http.client.HTTPConnection, _Response, _Pool]:
        """Sign and send a GET of *path* (percent-encoded, after the bucket's
        own path) in *bucket*, and read the answer's head: a status of
        *wanted* comes back with its connection, any other is read away and
        raises :class:`Fallback` (one that says the bucket wants what
        botocore does leaves the bucket to boto3)."""
        prefix = self._prefix(bucket)
        if prefix is None:
            raise Fallback(f"bucket {bucket} is left to boto3")
        origin, host, path_prefix, pool = prefix
        # a key goes after the bucket's path ("/bucket/" or "/"), a query after
        # the bucket itself ("/bucket" or "/"), as botocore writes them
        path = (path_prefix[:-1] or "/") + path if path.startswith("?") else path_prefix + path
        credentials = self.credentials.get_frozen_credentials()
        signed = AWSRequest("GET", origin + path, headers={"Host": host, **headers})
        S3SigV4Auth(credentials, "s3", self.region).add_auth(signed)
        fields = [*signed.headers.items(), ("Accept-Encoding", "identity"),
                  ("User-Agent", "s3pool")]
        try:
            conn, resp = self._exchange(pool, path, fields, request)
        except TLSFailed as exc:
            log.info("no TLS connection for lean requests in bucket %s (%s): boto3 makes "
                     "its GETs from now on, and its LISTs", bucket, exc)
            self.leave_bucket(bucket)
            raise
        status = resp.status
        if status not in wanted:
            _let_go(conn, resp, pool)
            if status in _LEAVE_BUCKET:
                log.info("S3 answered %d to a lean request in bucket %s: boto3 makes its "
                         "GETs from now on, and its LISTs", status, bucket)
                self.leave_bucket(bucket)
            raise Fallback(f"status {status}")
        return conn, resp, pool

    @staticmethod
    def _exchange(pool: _Pool, path: str, fields: list[tuple[str, str]], request: Any
                  ) -> tuple[http.client.HTTPConnection, _Response]:
        """Send the request and read the answer's head. A kept-alive connection
        the server closed meanwhile (nothing came back on it) is replaced by a
        new one once; any other failure is boto3's to retry."""
        while True:
            try:
                conn, reused = pool.take()
            except ssl.SSLCertVerificationError as exc:  # it will not pass the next time
                raise TLSFailed(f"TLS: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                raise Fallback(f"cannot connect: {exc}") from None
            if request is not None:
                request.attach(conn.sock)
            try:
                conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
                for name, value in fields:
                    conn.putheader(name, value)  # ValueError: CR/LF in a value
                conn.endheaders()
                sock = conn.sock  # http.client lets go of it at a Connection: close
                # the pool's connections are _HTTP(S)Connection: their response_class
                resp = cast(_Response, conn.getresponse())
                resp.s3pool_sock = sock
            except ValueError as exc:
                conn.close()
                raise BadAnswer(f"a header of the request is not a legal value: {exc}"
                                ) from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if request is not None and request.expired is not None:
                    raise BadAnswer(f"S3 request ended: {request.expired}") from None
                if reused and isinstance(exc, (http.client.RemoteDisconnected,
                                               ConnectionResetError, BrokenPipeError)):
                    continue
                raise Fallback(f"no answer: {exc!r}") from None
            return conn, resp


def _read_exactly(resp: http.client.HTTPResponse, length: int, request: Any) -> bytes:
    """The *length* bytes of a body, read so that http.client keeps the
    connection's buffer (bytes_behind looks at it after the last one);
    Fallback if the connection ends before."""
    parts: list[bytes] = []
    left = length
    while left:
        data = resp.read1(min(left, RECV))
        if not data:
            raise Fallback(f"a LIST answer cut at {length - left} of {length} bytes"
                           f"{_ended(request)}")
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def tls_context(verify: bool | str) -> ssl.SSLContext:
    """A TLS context that checks certificates as the boto3 client does."""
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    bundle = get_cert_path(verify)
    if os.path.isdir(bundle):
        return ssl.create_default_context(capath=bundle)
    return ssl.create_default_context(cafile=bundle)


def _fields(resp: http.client.HTTPResponse) -> dict[str, str]:
    """The answer's headers by lower-cased name (repeated ones joined by ", "),
    read once: a lookup in the email Message walks every header."""
    fields: dict[str, str] = {}
    for name, value in resp.headers.items():
        name = name.lower()
        fields[name] = f"{fields[name]}, {value}" if name in fields else value
    return fields


def _content_length(headers: Any, fields: dict[str, str] | None = None) -> int | None:
    """The answer's Content-Length: None when not given (or a chunked body);
    BadAnswer when it is not plain ASCII digits or is given twice differently."""
    if fields is not None and "content-length" not in fields:
        return None
    values = headers.get_all("content-length") or []
    if not values:
        return None
    if len(set(value.strip() for value in values)) != 1:
        raise BadAnswer(f"two different Content-Length headers: {values!r}")
    value = values[0].strip()
    if not _DIGITS.fullmatch(value):
        raise BadAnswer(f"Content-Length {value[:40]!r} is not a number")
    if "chunked" in (headers.get("transfer-encoding") or "").lower():
        # both: a smuggling attempt or a broken proxy; http.client would go by chunks
        raise BadAnswer("both Content-Length and Transfer-Encoding")
    return int(value)


def _let_go(conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
            pool: _Pool) -> None:
    """Read the rest of an answer not used (if short), and give its connection back."""
    _error_text(conn, resp, pool)


def _error_text(conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
                pool: _Pool) -> str:
    """The (short) body of an error answer; the connection is reused if it
    was read to its end, closed otherwise."""
    try:
        length = _content_length(resp.headers)
        if resp.status == NOT_MODIFIED:
            data = b""
        elif length is not None and length > MAX_ERROR_BODY:
            raise BadAnswer("error document too long")
        else:
            data = resp.read(MAX_ERROR_BODY + 1)
            if len(data) > MAX_ERROR_BODY or (length is not None and len(data) != length):
                raise BadAnswer("error document too long or cut short")
            if not resp.isclosed() and resp.read(1):
                raise BadAnswer("error document too long")
        resp.close()
        if resp.will_close:
            conn.close()
        else:
            pool.give(conn)
        return data.decode("utf-8", "replace")
    except (OSError, ValueError, http.client.HTTPException, BadAnswer):
        conn.close()
        return ""


def _xml_text(document: str, tag: str) -> str:
    """The text of the first <tag> of a small S3 error document ('' if none)."""
    start = document.find(f"<{tag}>")
    end = document.find(f"</{tag}>", start + 1)
    return document[start + len(tag) + 2:end].strip() if 0 <= start < end else ""
