"""GETs of objects without botocore's per-call machinery.

A boto3 ``get_object`` spends about 2 ms of CPU per call in Python
(parameter validation, endpoint rules, a dozen event hooks, response
parsing with dateutil, a second checksum of the body) on top of the
request itself: for a 16 KiB object on a nearby S3 that is half of the
time a miss costs. :class:`LeanGets` sends the same request straight on a
urllib3 pool:

- the URL is the one botocore itself builds for the bucket (taken once
  per bucket from a presigned URL of the client, so endpoint, addressing
  style and region rules stay botocore's), the key percent-encoded as
  botocore encodes it;
- the request is signed by botocore's own SigV4 signer with the
  client's current credentials (refreshed as botocore refreshes them);
- the answer's headers are read into the dict shape boto3 returns, and
  the body is botocore's StreamingBody over the urllib3 response.

Only the plain cases are answered here: 200, 206, 304 and 404. Anything
else (an error, a redirect to another region, a connection that failed
before the headers, a key that cannot be encoded) goes back to the
boto3 call, which retries and translates errors as always. A bucket that
answered with something unusual (a redirect, 400, 403) is left to boto3
from then on.
"""

from __future__ import annotations

import logging
import os
import threading
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.httpsession import DEFAULT_CA_BUNDLE
from botocore.response import StreamingBody

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


class Fallback(Exception):
    """This GET is boto3's to make (the reason is in the message)."""


class LeanGets:
    """Signed GETs on a urllib3 pool, beside one boto3 client."""

    def __init__(self, client: Any, credentials: Any, pool_size: int,
                 connect_timeout: float, read_timeout: float) -> None:
        self.client = client
        self.credentials = credentials  # botocore Credentials (maybe refreshable)
        self.region = client.meta.region_name or "us-east-1"
        self.timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self.pool = urllib3.PoolManager(
            num_pools=16, maxsize=pool_size, block=False, retries=False,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("AWS_CA_BUNDLE") or DEFAULT_CA_BUNDLE)
        self._prefixes: dict[str, tuple[str, str] | None] = {}  # bucket -> (origin, path)
        self._lock = threading.Lock()

    @staticmethod
    def usable(client: Any) -> bool:
        """False where botocore does more than sign and send (proxies, S3
        accelerate or dual-stack endpoints, unsigned clients)."""
        config = client.meta.config
        s3 = config.s3 or {}
        if config.proxies or any(os.environ.get(name) for name in (
                "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
            return False
        if s3.get("use_accelerate_endpoint") or s3.get("use_dualstack_endpoint") \
                or getattr(config, "use_dualstack_endpoint", False):
            return False
        return config.signature_version in (None, "s3v4", "v4")

    def prepare(self, bucket: str) -> None:
        """Work out the bucket's URL now rather than at its first GET."""
        self._prefix(bucket)

    def _prefix(self, bucket: str) -> tuple[str, str] | None:
        """(scheme://host, path prefix) of the bucket's objects, as botocore builds them."""
        with self._lock:
            if bucket in self._prefixes:
                return self._prefixes[bucket]
        found: tuple[str, str] | None = None
        try:
            url = urlsplit(self.client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=60))
            if url.path.endswith("/k") and url.scheme in ("http", "https"):
                found = (f"{url.scheme}://{url.netloc}", url.path[:-1])
        except Exception as exc:  # any trouble: boto3 keeps this bucket
            log.debug("no lean GETs for bucket %s: %s", bucket, exc)
        with self._lock:
            self._prefixes[bucket] = found
        return found

    def leave_bucket(self, bucket: str) -> None:
        with self._lock:
            self._prefixes[bucket] = None

    def get(self, bucket: str, key: str, headers: dict[str, str]
            ) -> tuple[int, dict[str, Any] | None]:
        """(status, boto3-shaped response with a StreamingBody) for 200/206,
        (304, None), or (404, the error's Code and Message). Raises
        :class:`Fallback` for anything else."""
        prefix = self._prefix(bucket)
        if prefix is None:
            raise Fallback(f"bucket {bucket} is left to boto3")
        try:
            path = prefix[1] + quote(key.encode("utf-8"), safe="/~")
        except UnicodeEncodeError:
            raise Fallback("key not UTF-8") from None
        credentials = self.credentials.get_frozen_credentials()
        request = AWSRequest("GET", prefix[0] + path,
                             headers={"x-amz-checksum-mode": "ENABLED", **headers})
        S3SigV4Auth(credentials, "s3", self.region).add_auth(request)
        try:
            response = self.pool.urlopen(
                "GET", request.url, headers=dict(request.headers.items()), body=None,
                redirect=False, preload_content=False, decode_content=False,
                # the connection goes back to the pool when the body has been
                # read to its end (urllib3 does that), never while it streams
                release_conn=False, timeout=self.timeout)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Fallback(f"no answer: {exc}") from None
        status = response.status
        if status not in _PLAIN:
            _let_go(response)
            if status in _LEAVE_BUCKET:
                log.info("S3 answered %d to a lean GET in bucket %s: boto3 makes its GETs "
                         "from now on", status, bucket)
                self.leave_bucket(bucket)
            raise Fallback(f"status {status}")
        if status == NOT_MODIFIED:
            _let_go(response)
            return status, None
        if status == NOT_FOUND:  # NoSuchKey or NoSuchBucket: the code is in the body
            try:
                text = response.read(64 << 10).decode("utf-8", "replace")
            except (urllib3.exceptions.HTTPError, OSError):
                text = ""
            _let_go(response)
            code = _xml_text(text, "Code") or "NoSuchKey"
            return status, {"Code": code, "Message": _xml_text(text, "Message")}
        fields = response.headers
        length = fields.get("content-length")
        modified = fields.get("last-modified")
        if length is None or not length.isdigit() or modified is None:
            _let_go(response)
            raise Fallback("no Content-Length or Last-Modified")
        result: dict[str, Any] = {"ContentLength": int(length)}
        for header, name in _FIELDS:
            value = fields.get(header)
            if value is not None:
                result[name] = value
        try:
            result["LastModified"] = parsedate_to_datetime(modified)
        except (TypeError, ValueError):
            _let_go(response)
            raise Fallback(f"Last-Modified {modified!r}") from None
        result["Metadata"] = {name.lower()[len(_META_PREFIX):]: value
                              for name, value in fields.items()
                              if name.lower().startswith(_META_PREFIX)}
        result["Body"] = StreamingBody(response, int(length))
        return status, result

def _let_go(response: Any) -> None:
    """Read what is left of an answer not used, and give its connection back."""
    response.drain_conn()
    response.release_conn()


def _xml_text(document: str, tag: str) -> str:
    """The text of the first <tag> of a small S3 error document ('' if none)."""
    start = document.find(f"<{tag}>")
    end = document.find(f"</{tag}>", start + 1)
    return document[start + len(tag) + 2:end].strip() if 0 <= start < end else ""
