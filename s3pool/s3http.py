"""GETs of objects without botocore's per-call machinery.

A boto3 ``get_object`` spends about 2 ms of CPU per call in Python
(parameter validation, endpoint rules, a dozen event hooks, response
parsing with dateutil, a second checksum of the body) on top of the
request itself: for a 16 KiB object on a nearby S3 that is half of the
time a miss costs, and a general HTTP library (urllib3, with
``http.client`` parsing headers through the ``email`` package) another
0.7 ms. :class:`LeanGets` sends the same request on a connection of its
own small keep-alive pool and reads the answer itself:

- the URL is the one botocore itself builds for the bucket (taken once
  per bucket from a presigned URL of the client, so endpoint, addressing
  style and region rules stay botocore's), the key percent-encoded as
  botocore encodes it;
- the request is signed by botocore's own SigV4 signer with the
  client's current credentials (refreshed as botocore refreshes them);
- the answer is HTTP/1.1 read by :class:`_Connection`: a status line,
  headers, and a body of the Content-Length given (a body of unknown
  length is not answered here); the headers are read into the dict shape
  boto3 returns, the body is a :class:`LeanBody`.

Only the plain cases are answered here: 200, 206, 304 and 404. Anything
else (an error, a redirect to another region, a connection that failed
before the headers, a key that cannot be encoded) goes back to the
boto3 call, which retries and translates errors as always. A bucket that
answered with something unusual (a redirect, 400, 403) is left to boto3
from then on. A connection goes back to the pool only when its body was
read to the end; a body closed early closes its connection.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
from email.utils import parsedate_to_datetime
from typing import Any, Callable
from urllib.parse import quote, urlsplit

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.httpsession import get_cert_path

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
NOT_MODIFIED, NOT_FOUND = 304, 404
_PLAIN = {200, 206, NOT_MODIFIED, NOT_FOUND}
# statuses that say this bucket wants something botocore knows how to do
_LEAVE_BUCKET = {301, 307, 400, 403}
MAX_HEAD = 64 << 10  # bytes of status line and headers we read at most
MAX_ERROR_BODY = 64 << 10  # bytes of an error document read (more: the connection is closed)
RECV = 256 << 10  # bytes asked of one recv() of a body
DRAIN = 64 << 10  # an unread rest up to this is read so the connection can be reused


class Fallback(Exception):
    """This GET is boto3's to make (the reason is in the message)."""


class TLSFailed(Fallback):
    """The endpoint's certificate does not pass our check: boto3 keeps the bucket."""


class BodyError(ConnectionError):
    """The connection ended or failed before the body's last byte."""


class _Connection:
    """One keep-alive HTTP/1.1 connection (used by one thread at a time)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()  # bytes received and not used yet
        self.reusable = True

    def close(self) -> None:
        self.reusable = False
        try:
            self.sock.close()
        except OSError:
            pass

    def read_head(self) -> tuple[int, dict[str, str]]:
        """Status and headers (names lower-cased) of the next answer."""
        buf = self.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buf) > MAX_HEAD:
                raise Fallback("answer headers too long")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BodyError("connection closed before the answer")
            buf += chunk
        lines = buf[:end].decode("latin-1").split("\r\n")
        del buf[:end + 4]
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise Fallback(f"not an HTTP/1.x answer: {lines[0][:60]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                raise Fallback(f"bad header line {line[:60]!r}")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
            self.reusable = False
        elif headers.get("connection", "").lower() == "close":
            self.reusable = False
        return int(code), headers

    def recv_some(self, most: int) -> bytes:
        """At most *most* bytes of the body (one recv); BodyError at its end."""
        buf = self.buf
        if buf:
            chunk = bytes(buf[:most])
            del buf[:most]
            return chunk
        chunk = self.sock.recv(min(most, RECV))
        if not chunk:
            raise BodyError("connection closed in the middle of the body")
        return chunk

    def recv_exactly(self, count: int) -> bytes:
        out = bytearray(count)
        view = memoryview(out)
        have = min(len(self.buf), count)
        view[:have] = self.buf[:have]
        del self.buf[:have]
        while have < count:
            got = self.sock.recv_into(view[have:], count - have)
            if not got:
                raise BodyError(f"connection closed after {have} of {count} body bytes")
            have += got
        return bytes(out)


class _Pool:
    """Idle keep-alive connections to one origin."""

    def __init__(self, scheme: str, host: str, port: int, size: int,
                 context: ssl.SSLContext | None, connect_timeout: float,
                 read_timeout: float) -> None:
        self.host, self.port, self.size = host, port, size
        self.context = context if scheme == "https" else None
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self.idle: list[_Connection] = []
        self.lock = threading.Lock()

    def take(self) -> tuple[_Connection, bool]:
        """A connection, and whether it was used before."""
        with self.lock:
            if self.idle:
                return self.idle.pop(), True
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_hostname=self.host)
            sock.settimeout(self.read_timeout)
        except BaseException:
            sock.close()
            raise
        return _Connection(sock), False

    def give(self, conn: _Connection) -> None:
        if conn.reusable and not conn.buf:
            with self.lock:
                if len(self.idle) < self.size:
                    self.idle.append(conn)
                    return
        conn.close()


class LeanBody:
    """The body of a 200/206 answer: exactly its Content-Length bytes.

    ``read1`` returns after one socket read at most (the download loop
    checks for stalls between reads); the connection goes back to the
    pool when the last byte was read, and is closed by an early close."""

    def __init__(self, conn: _Connection, pool: _Pool, length: int) -> None:
        self._conn: _Connection | None = conn
        self._pool = pool
        self._left = length

    def read1(self, size: int = -1) -> bytes:
        return self._take(size, _Connection.recv_some)

    def read(self, size: int | None = None) -> bytes:
        return self._take(size, _Connection.recv_exactly)

    def _take(self, size: int | None, receive: Callable[[_Connection, int], bytes]) -> bytes:
        """Up to *size* bytes of what is left (all if None or negative), as
        *receive* reads them; the connection is given back after the last byte
        and dropped on a failure."""
        conn = self._conn
        if not self._left or conn is None:
            return b""
        want = self._left if size is None or size < 0 else min(size, self._left)
        try:
            data = receive(conn, want)
        except OSError:
            self._drop()
            raise
        self._left -= len(data)
        if not self._left:
            self._done()
        return data

    def close(self) -> None:
        conn = self._conn
        if conn is None:
            return
        if self._left <= DRAIN:
            try:
                conn.recv_exactly(self._left)
                self._left = 0
                self._done()
                return
            except OSError:
                pass
        self._drop()

    def _done(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.give(conn)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

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

    def get(self, bucket: str, key: str, headers: dict[str, str]
            ) -> tuple[int, dict[str, Any] | None]:
        """(status, boto3-shaped response with a LeanBody) for 200/206,
        (304, None), or (404, the error's Code and Message). Raises
        :class:`Fallback` for anything else."""
        prefix = self._prefix(bucket)
        if prefix is None:
            raise Fallback(f"bucket {bucket} is left to boto3")
        origin, host, path_prefix, pool = prefix
        try:
            path = path_prefix + quote(key.encode("utf-8"), safe="/~")
        except UnicodeEncodeError:
            raise Fallback("key not UTF-8") from None
        credentials = self.credentials.get_frozen_credentials()
        request = AWSRequest("GET", origin + path, headers={
            "Host": host, "x-amz-checksum-mode": "ENABLED", **headers})
        S3SigV4Auth(credentials, "s3", self.region).add_auth(request)
        lines = [f"GET {path} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in request.headers.items()]
        lines += ["Accept-Encoding: identity", "User-Agent: s3pool", "", ""]
        try:
            wire = "\r\n".join(lines).encode("latin-1")
        except UnicodeEncodeError:
            raise Fallback("a header is not Latin-1") from None
        try:
            conn, status, fields = self._exchange(pool, wire)
        except TLSFailed as exc:
            log.info("no TLS connection for lean GETs in bucket %s (%s): boto3 makes its "
                     "GETs from now on", bucket, exc)
            self.leave_bucket(bucket)
            raise
        if status not in _PLAIN:
            _let_go(conn, pool, fields, status)
            if status in _LEAVE_BUCKET:
                log.info("S3 answered %d to a lean GET in bucket %s: boto3 makes its GETs "
                         "from now on", status, bucket)
                self.leave_bucket(bucket)
            raise Fallback(f"status {status}")
        if status == NOT_MODIFIED:
            _let_go(conn, pool, fields, status)
            return status, None
        if status == NOT_FOUND:  # NoSuchKey or NoSuchBucket: the code is in the body
            text = _error_text(conn, pool, fields)
            code = _xml_text(text, "Code") or "NoSuchKey"
            return status, {"Code": code, "Message": _xml_text(text, "Message")}
        length = fields.get("content-length")
        modified = fields.get("last-modified")
        if (length is None or not length.isdigit() or modified is None
                or "transfer-encoding" in fields):
            conn.close()
            raise Fallback("no Content-Length or Last-Modified")
        result: dict[str, Any] = {"ContentLength": int(length)}
        for header, name in _FIELDS:
            value = fields.get(header)
            if value is not None:
                result[name] = value
        try:
            result["LastModified"] = parsedate_to_datetime(modified)
        except (TypeError, ValueError):
            conn.close()
            raise Fallback(f"Last-Modified {modified!r}") from None
        result["Metadata"] = {name[len(_META_PREFIX):]: value
                              for name, value in fields.items()
                              if name.startswith(_META_PREFIX)}
        result["Body"] = LeanBody(conn, pool, int(length))
        return status, result

    @staticmethod
    def _exchange(pool: _Pool, wire: bytes) -> tuple[_Connection, int, dict[str, str]]:
        """Send the request and read the answer's head. A kept-alive connection
        the server closed meanwhile (nothing came back on it) is replaced by a
        new one once; any other failure is boto3's to retry."""
        while True:
            try:
                conn, reused = pool.take()
            except ssl.SSLCertVerificationError as exc:  # it will not pass the next time
                raise TLSFailed(f"TLS: {exc}") from None
            except OSError as exc:
                raise Fallback(f"cannot connect: {exc}") from None
            try:
                conn.sock.sendall(wire)
                status, fields = conn.read_head()
            except Fallback:
                conn.close()
                raise
            except OSError as exc:
                conn.close()
                if reused and isinstance(exc, (BodyError, ConnectionResetError,
                                               BrokenPipeError)):
                    continue
                raise Fallback(f"no answer: {exc}") from None
            if 100 <= status < 200:
                conn.close()
                raise Fallback(f"status {status}")
            return conn, status, fields


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


def _let_go(conn: _Connection, pool: _Pool, fields: dict[str, str], status: int) -> None:
    """Read the rest of an answer not used (if short), and give its connection back."""
    if status == NOT_MODIFIED:  # never has a body
        pool.give(conn)
        return
    _error_text(conn, pool, fields)


def _error_text(conn: _Connection, pool: _Pool, fields: dict[str, str]) -> str:
    """The (short) body of an error answer; the connection is reused if it
    was read to its end, closed otherwise."""
    length = fields.get("content-length")
    try:
        if length is not None and length.isdigit() and "transfer-encoding" not in fields:
            if int(length) <= MAX_ERROR_BODY:
                data = conn.recv_exactly(int(length))
                pool.give(conn)
                return data.decode("utf-8", "replace")
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            data = _read_chunked(conn)
            if data is not None:
                pool.give(conn)
                return data.decode("utf-8", "replace")
    except (OSError, ValueError):
        pass
    conn.close()
    return ""


def _read_chunked(conn: _Connection) -> bytes | None:
    """A chunked body of at most MAX_ERROR_BODY bytes (None if longer)."""
    out = bytearray()
    while True:
        while b"\r\n" not in conn.buf:
            if len(conn.buf) > 1024:
                return None
            chunk = conn.sock.recv(65536)
            if not chunk:
                raise BodyError("connection closed in a chunked body")
            conn.buf += chunk
        line, _, _ = conn.buf.partition(b"\r\n")
        del conn.buf[:len(line) + 2]
        size = int(line.split(b";")[0].strip() or b"0", 16)
        if len(out) + size > MAX_ERROR_BODY:
            return None
        data = conn.recv_exactly(size + 2)  # the chunk and its CRLF
        out += data[:size]
        if size == 0:  # no trailers are sent by S3
            return bytes(out)


def _xml_text(document: str, tag: str) -> str:
    """The text of the first <tag> of a small S3 error document ('' if none)."""
    start = document.find(f"<{tag}>")
    end = document.find(f"</{tag}>", start + 1)
    return document[start + len(tag) + 2:end].strip() if 0 <= start < end else ""
