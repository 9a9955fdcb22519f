"""What an answer from S3 is, and what it must be before a byte of it is used.

The listing entry and object response types the layers above see, the
meta kept of an object, and the checks of a GET's status, Content-Range,
Content-Length and ETag (a ranged answer, a first part that stands for the
whole object). The backend applies them to every answer, on both GET paths.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any, NamedTuple

from s3pool.errors import BackendError, VersionChanged
from s3pool.s3.checksums import Digest, full_object_checksums


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
    digest: Digest | None = None  # what the bytes must hash to, if S3 said
    data: bytes | None = None  # the whole body, already read and hashed (small objects)
    # bytes the body carries from the object's start, when fewer than all of them
    # (the first GET asked for the first part only); None: the whole object
    body_length: int | None = None

    @property
    def content_length(self) -> int:
        return int(self.meta["ContentLength"])


def meta_from_response(resp: dict[str, Any]) -> dict[str, Any]:
    """The subset of a get/head_object response that `aws s3api` prints."""
    last_modified = resp.get("LastModified")
    return {
        "LastModified": (format_datetime(last_modified.astimezone(UTC), usegmt=True)
                         if last_modified else None),
        "ETag": resp.get("ETag"),
        "ContentLength": int(resp.get("ContentLength", 0)),
        "ContentType": resp.get("ContentType", "binary/octet-stream"),
        "Metadata": dict(resp.get("Metadata") or {}),
        "AcceptRanges": resp.get("AcceptRanges", "bytes"),
        **full_object_checksums(resp),  # ChecksumCRC64NVME... as `aws s3api` prints them
    }


def listing_time(meta: dict[str, Any]) -> float:
    """The listing's time (epoch seconds) of an object from its meta's LastModified."""
    try:
        return parsedate_to_datetime(meta["LastModified"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return time.time()


def validator(etag: str | None) -> str | None:
    """The ETag as an HTTP validator (quoted), or None when it validates nothing.

    Tiers in front of S3 send ETags unquoted, or an empty ``""`` for an
    object they have not fetched yet; ``If-None-Match: ""`` would then be
    answered 304 for whatever the object now holds."""
    bare = (etag or "").strip().strip('"')
    return f'"{bare}"' if bare else None


# an HTTP field value (RFC 9110: visible ASCII, spaces and tabs inside; no CR, LF, NUL)
LEGAL_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?|")


# an ETag as S3 and the tiers in front of it send one: quoted or not, weak or not,
# visible ASCII without quotes inside (S3's own are 32 hex digits, maybe "-N")
ETAG_FORM = re.compile(r'(W/)?("[\x21\x23-\x7e]{0,1024}"|[\x21\x23-\x7e]{1,1024})')


def check_answer(resp: dict[str, Any], bucket: str, key: str) -> None:
    """What a GET of a whole object must be before a byte of it is used: a 200
    (no Content-Range), a length that is a number (or none: see
    ``_length_from_head``), an ETag that can be sent back as a header."""
    url = f"s3://{bucket}/{key}"
    status = status_of(resp)
    if status != 200 or resp.get("ContentRange"):
        raise BackendError(f"S3 answered {status} ({resp.get('ContentRange') or 'no range'}) "
                           f"to a GET of all of {url}")
    length = resp.get("ContentLength")
    if length is not None and (not isinstance(length, int) or length < 0):
        raise BackendError(f"S3 sent a Content-Length of {length!r} for {url}")
    check_etag(resp.get("ETag"), url)


def check_etag(etag: Any, url: str) -> None:
    """An ETag that is not a legal header value (or not shaped like one) would be
    sent back in If-Match and If-None-Match: such an object is not cached."""
    if etag is None:
        return
    if not isinstance(etag, str) or not ETAG_FORM.fullmatch(etag) \
            or not LEGAL_VALUE.fullmatch(etag):
        raise BackendError(f"S3 sent the ETag {str(etag)[:80]!r} for {url}: not a legal "
                           "header value, so the object cannot be cached (nothing of it "
                           "is served)")


def check_range(resp: dict[str, Any], bucket: str, key: str, etag: str, start: int,
                length: int, total: int | None) -> None:
    """A ranged GET's answer must be the range asked of the version pinned: a 206
    whose Content-Range is exactly ``bytes start-end/total`` and whose
    Content-Length is the range's, or a 200 when the range was the whole
    object; and the ETag pinned. Anything else is refused before a byte of it
    is written; another ETag is VersionChanged."""
    url = f"s3://{bucket}/{key}"
    end = start + length - 1
    status = status_of(resp)
    got_etag = resp.get("ETag")
    check_etag(got_etag, url)
    if validator(etag) is not None and validator(got_etag) != validator(etag):
        raise VersionChanged(f"{url} changed on S3 while it was read: ETag {got_etag} "
                             f"instead of {etag}")
    size = resp.get("ContentLength")
    if status == 206:
        content_range = resp.get("ContentRange") or ""
        expected = f"bytes {start}-{end}/"
        if not content_range.startswith(expected) or (
                total is not None and content_range != f"{expected}{total}"):
            raise BackendError(f"S3 answered bytes {start}-{end} of {url} with "
                               f"Content-Range {content_range[:80]!r}")
        if size is not None and size != length:  # None: chunked, counted as it comes
            raise BackendError(f"S3 answered bytes {start}-{end} of {url} with "
                               f"Content-Length {size!r}")
    elif status == 200:
        # RFC 9110 lets a server ignore Range: the whole object, used only when the
        # whole object is what was asked for
        if start != 0 or total is None or length != total or size not in (None, total):
            raise BackendError(f"S3 answered bytes {start}-{end} of {url} with the whole "
                               f"object ({size!r} bytes)")
    else:
        raise BackendError(f"S3 answered {status} to a GET of bytes {start}-{end} of {url}")


_FIRST_RANGE = re.compile(r"bytes 0-(\d{1,19})/(\d{1,19})")


def check_first_part(resp: dict[str, Any], bucket: str, key: str, first_part: int
                     ) -> int | None:
    """The answer to a GET of bytes [0, first_part) that stands for the whole
    object: a 206 for bytes 0-E of an object of T bytes, E = min(first_part, T)
    - 1, with a Content-Length of E + 1 (or none: then the body must be exactly
    that long), or a 200 with the whole object (a server may ignore Range:
    :func:`check_answer`'s rules). The response is made the whole object's
    (ContentLength T, no ContentRange). Returns how many bytes the body
    carries when fewer than T, else None."""
    status = status_of(resp)
    if status == 200 and not resp.get("ContentRange"):
        check_answer(resp, bucket, key)
        return None
    url = f"s3://{bucket}/{key}"
    content_range = resp.get("ContentRange") or ""
    match = _FIRST_RANGE.fullmatch(content_range)
    if status != 206 or match is None:
        raise BackendError(f"S3 answered {status} ({content_range[:80] or 'no range'}) to a "
                           f"GET of bytes 0-{first_part - 1} of {url}")
    end, total = int(match.group(1)), int(match.group(2))
    if end != min(first_part, total) - 1:
        raise BackendError(f"S3 answered bytes 0-{first_part - 1} of {url} with "
                           f"Content-Range {content_range[:80]!r}")
    length = resp.get("ContentLength")
    if length is not None and length != end + 1:
        raise BackendError(f"S3 answered bytes 0-{end} of {url} with Content-Length "
                           f"{length!r}")
    check_etag(resp.get("ETag"), url)
    if length is None:
        resp["Body"].exactly(end + 1)
    resp["ContentLength"] = total
    resp.pop("ContentRange", None)
    return end + 1 if end + 1 < total else None


def status_of(resp: dict[str, Any]) -> int:
    return int((resp.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 200)
