"""The published listing: one host's bucket listing, stored in the bucket for the others.

A fleet of N hosts that each LIST a bucket every ``refresh_interval``
sends N full listings (a 100,000-key bucket is 100 LIST pages, about a
minute against moto). With ``--publish-listing`` one host lists as usual
and then uploads what it found as one object, by default
``.s3pool/listing.jsonl.gz``; hosts run with ``--use-published-listing``
fetch that object with a conditional GET instead of listing, and list
for themselves only when it is missing, unreadable or older than
``published_listing_max_age``.

The object is gzip'ed text: a JSON header line
``{"format": "s3pool-listing", "version": 1, "bucket": ..., "listed_at":
..., "count": ...}`` then one JSON array ``[key, size, mtime, etag]`` a
line, in key order (JSON, so a key may hold any character). ``listed_at``
is when the publisher's LIST *started* (seconds since the epoch): every
object written before then is in it. The same time travels as the
object's user metadata ``s3pool-listed-at``, so a stale copy is turned
down before its body is read.

Keys under ``.s3pool/`` are s3pool's own: they are left out of every
listing, GLOB and the mount. This module is the format; ``fleet.py``
fetches and publishes it as part of a refresh.

A published listing is read as untrusted input (anyone who may write the
bucket may write it): it is decompressed a line at a time, no line longer
than ``MAX_LINE`` bytes is read whole and no more entries than the
header's ``count`` (itself at most ``MAX_COUNT``), so a gzip bomb costs
neither memory nor time; every field is type- and range-checked (a key is
a string of 1 to 1,024 UTF-8 bytes, a size an integer from 0 to 2**53-1,
a time a finite number from 0 to ``MAX_TIME``, an ETag a string of at most
1,024 characters; no NaN, Infinity or nesting). Anything else makes the
whole listing a :class:`BackendError`, and the caller lists the bucket.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import zlib
from collections.abc import Iterator
from typing import IO, Any

from s3pool.errors import BackendError
from s3pool.listing import index
from s3pool.s3.answers import ListEntry
from s3pool.store.layout import MAX_KEY_BYTES

FORMAT = "s3pool-listing"
VERSION = 1
HIDDEN_PREFIX = ".s3pool/"
HIDDEN_ROOT = ".s3pool"
DEFAULT_KEY = HIDDEN_PREFIX + "listing.jsonl.gz"
LISTED_AT_META = "s3pool-listed-at"
PAGE = 1000
# Bounds of what a published listing may hold. A line holds a key of at most
# MAX_KEY_BYTES and an ETag of at most MAX_ETAG characters, each at most six
# bytes once JSON-escaped (\u0001), and two numbers.
MAX_ETAG = 1024
MAX_LINE = 16 << 10
MAX_COUNT = 1 << 40
MAX_SIZE = (1 << 53) - 1  # exact in a float, far above S3's largest object
MAX_TIME = 1e11  # seconds since the epoch: the year 5138


def is_hidden(key: str, published_key: str = DEFAULT_KEY) -> bool:
    """Is *key* one of s3pool's own objects, never shown as part of the bucket?"""
    return key.startswith(HIDDEN_PREFIX) or key == published_key


def write_published(index_path: str, out_path: str, bucket: str, listed_at: float) -> int:
    """Blocking: write the gzip'ed listing of the index at *index_path* to *out_path*
    (its keys; a directory a delimiter LIST showed, size -1, is no key)."""
    reader = index.read(index_path)
    count = 0
    try:
        total = reader.key_total()
        with open(out_path, "wb") as raw:
            # mtime=0: the same listing gives the same bytes (and ETag)
            with gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=6,
                               mtime=0) as out:
                text = io.TextIOWrapper(out, encoding="utf-8", errors="surrogatepass",
                                        newline="\n")
                header = {"format": FORMAT, "version": VERSION, "bucket": bucket,
                          "listed_at": listed_at, "count": total}
                text.write(json.dumps(header) + "\n")
                dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
                for row in reader.entries():
                    text.write(dumps(row) + "\n")
                    count += 1
                text.flush()
                text.detach()
            raw.flush()
            os.fsync(raw.fileno())
    finally:
        reader.close()
    return count


class PublishedListing:
    """An open published listing file: its header, then its entries in pages.

    Every fault of the file, whatever it is, raises :class:`BackendError`."""

    def __init__(self, f: IO[bytes], url: str) -> None:
        self.url = url
        self._gzip = gzip.GzipFile(fileobj=f, mode="rb")
        self._line = 0
        try:
            header = self._parse(self._readline())
        except BackendError:
            raise
        except _FAULTS as exc:
            raise BackendError(f"published listing {url} is unreadable: {_why(exc)}") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise BackendError(f"{url} is not an s3pool published listing")
        version = header.get("version")
        if type(version) is not int or version != VERSION:
            raise BackendError(f"published listing {url} has version {version!r}, "
                               f"this s3pool reads version {VERSION}")
        bucket, listed_at, count = (header.get("bucket", ""), header.get("listed_at"),
                                    header.get("count", 0))
        if type(bucket) is not str:
            raise self._bad("its header's bucket is not a string")
        if not _is_time(listed_at):
            raise self._bad(f"its header's listed_at {_show(listed_at)} is not a time from 0 "
                            f"to {MAX_TIME:g}")
        if type(count) is not int or not 0 <= count <= MAX_COUNT:
            raise self._bad(f"its header's count {_show(count)} is not an integer from 0 to "
                            f"{MAX_COUNT}")
        self.bucket: str = bucket
        self.listed_at = float(listed_at or 0)  # a number: _is_time said so
        self.count: int = count

    def _bad(self, why: str) -> BackendError:
        where = f"line {self._line}: " if self._line > 1 else ""
        return BackendError(f"published listing {self.url} is damaged: {where}{why}")

    def _readline(self) -> bytes:
        """The next line (b"" at the end), never more than MAX_LINE bytes read into memory."""
        line = self._gzip.readline(MAX_LINE + 1)
        if line:
            self._line += 1
            if len(line) > MAX_LINE:
                raise self._bad(f"a line is longer than {MAX_LINE} bytes")
        return line

    @staticmethod
    def _parse(line: bytes) -> Any:
        return json.loads(line.decode("utf-8", "surrogatepass"), parse_constant=_no_constant)

    def pages(self) -> Iterator[list[ListEntry]]:
        """Pages of entries; anything out of bounds fails the whole listing (BackendError)."""
        page: list[ListEntry] = []
        seen = 0
        try:
            while line := self._readline():
                if seen == self.count:
                    raise self._bad(f"it holds more entries than its header's count {self.count}")
                page.append(self._entry(self._parse(line)))
                seen += 1
                if len(page) >= PAGE:
                    yield page
                    page = []
        except BackendError:
            raise
        except _FAULTS as exc:
            raise self._bad(_why(exc)) from None
        if page:
            yield page
        if seen != self.count:
            raise BackendError(f"published listing {self.url} is cut short: {seen} of "
                               f"{self.count} keys")

    def _entry(self, value: Any) -> ListEntry:
        if type(value) is not list or len(value) != 4:
            raise self._bad("an entry is not a JSON array [key, size, mtime, etag]")
        key, size, mtime, etag = value
        if type(key) is not str or not key or \
                len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
            raise self._bad(f"key {_show(key)} is not a string of 1 to {MAX_KEY_BYTES} bytes")
        if type(size) is not int or not 0 <= size <= MAX_SIZE:
            raise self._bad(f"size {_show(size)} of {key!r} is not an integer from 0 to "
                            f"{MAX_SIZE}")
        if not _is_time(mtime):
            raise self._bad(f"mtime {_show(mtime)} of {key!r} is not a time from 0 to "
                            f"{MAX_TIME:g}")
        if type(etag) is not str or len(etag) > MAX_ETAG:
            raise self._bad(f"ETag {_show(etag)} of {key!r} is not a string of at most "
                            f"{MAX_ETAG} characters")
        return ListEntry(key, size, float(mtime), etag)


# what a damaged file or its JSON can raise (a deep nesting: RecursionError)
_FAULTS = (OSError, EOFError, zlib.error, ValueError, TypeError, OverflowError, RecursionError)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is no number of a published listing")


def _is_time(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and 0 <= value <= MAX_TIME


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _why(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "JSON nested too deep"
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
