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
"""

from __future__ import annotations

import gzip
import io
import json
import os
import sqlite3
from typing import IO, Iterator

from .backend import ListEntry
from .errors import BackendError

FORMAT = "s3pool-listing"
VERSION = 1
HIDDEN_PREFIX = ".s3pool/"
HIDDEN_ROOT = ".s3pool"
DEFAULT_KEY = HIDDEN_PREFIX + "listing.jsonl.gz"
LISTED_AT_META = "s3pool-listed-at"
PAGE = 1000


def is_hidden(key: str, published_key: str = DEFAULT_KEY) -> bool:
    """Is *key* one of s3pool's own objects, never shown as part of the bucket?"""
    return key.startswith(HIDDEN_PREFIX) or key == published_key


def write_published(index_path: str, out_path: str, bucket: str, listed_at: float) -> int:
    """Blocking: write the gzip'ed listing of the index at *index_path* to *out_path*."""
    db = sqlite3.connect(f"file:{index_path}?mode=ro", uri=True)
    count = 0
    try:
        total = db.execute("SELECT count(*) FROM keys").fetchone()[0]
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
                for row in db.execute("SELECT key, size, mtime, etag FROM keys ORDER BY key"):
                    text.write(dumps(row) + "\n")
                    count += 1
                text.flush()
                text.detach()
            raw.flush()
            os.fsync(raw.fileno())
    finally:
        db.close()
    return count


class PublishedListing:
    """An open published listing file: its header, then its entries in pages."""

    def __init__(self, f: IO[bytes], url: str) -> None:
        self.url = url
        self._text = io.TextIOWrapper(gzip.GzipFile(fileobj=f, mode="rb"), encoding="utf-8",
                                      errors="surrogatepass", newline="\n")
        try:
            header = json.loads(self._text.readline())
        except (OSError, EOFError, ValueError) as exc:
            raise BackendError(f"published listing {url} is unreadable: {exc}") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise BackendError(f"{url} is not an s3pool published listing")
        if header.get("version") != VERSION:
            raise BackendError(f"published listing {url} has version {header.get('version')!r}, "
                               f"this s3pool reads version {VERSION}")
        try:
            self.bucket = str(header.get("bucket", ""))
            self.listed_at = float(header["listed_at"])
            self.count = int(header.get("count", 0))
        except (KeyError, TypeError, ValueError):
            raise BackendError(f"published listing {url} has a bad header") from None

    def pages(self) -> Iterator[list[ListEntry]]:
        """Pages of entries; a malformed line fails the whole listing (BackendError)."""
        page: list[ListEntry] = []
        seen = 0
        try:
            for line in self._text:
                key, size, mtime, etag = json.loads(line)
                if not isinstance(key, str) or not isinstance(etag, str):
                    raise ValueError("key and etag must be strings")
                page.append(ListEntry(key, int(size), float(mtime), etag))
                if len(page) >= PAGE:
                    seen += len(page)
                    yield page
                    page = []
        except (OSError, EOFError, ValueError, TypeError) as exc:
            raise BackendError(f"published listing {self.url} is damaged: {exc}") from None
        seen += len(page)
        if page:
            yield page
        if seen != self.count:
            raise BackendError(f"published listing {self.url} is cut short: {seen} of "
                               f"{self.count} keys")
