"""ListObjectsV2 pages parsed without botocore's parser.

:func:`parse_listing_fast` is registered on botocore's ``before-parse`` of
ListObjectsV2: it reads the page's XML once and hands the entries on as
:class:`~s3pool.s3.answers.ListEntry` tuples under ``FAST_ENTRIES`` (and the
common prefixes under ``FAST_PREFIXES``); see bench/RESULTS.md, Listings.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from botocore.utils import parse_timestamp

from s3pool.s3.answers import ListEntry

FAST_ENTRIES = "S3PoolEntries"


FAST_PREFIXES = "S3PoolPrefixes"


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
    # a delimiter LIST's subdirectories (listing/listings.py's directory listings)
    customized_response_dict[FAST_PREFIXES] = [
        unquote_plus(text) if encoded else text
        for item in root.iterfind(f"{ns}CommonPrefixes")
        if (text := item.findtext(f"{ns}Prefix"))]
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
        return float(parse_timestamp(text).timestamp())
