"""A LIST's answers, page after page, checked before anything believes them.

One answer is read into (keys, subdirectories, the next page's token) by
:func:`page_of`, whichever parser read it. :class:`Onward` checks the pages
of one LIST against each other: a server whose pages go back, repeat a
token or come empty for ever would have a LIST run for ever.

S3 sends a LIST in the byte order of its positions (keys, and with a
delimiter the subdirectories' prefixes, ``pct/``). SeaweedFS sends it by
path component: a directory's name is compared without its slash, so
``pct/`` comes before ``pct%2F/`` and ``pct.txt``, which S3 puts first
('%' and '.' sort before '/'). Both are sound, and a page boundary can
fall between such names, so a page must go on past the one before in
S3's order or, from the first page that does not, by path component for
the rest of the LIST: one switch at most, so no server can go back and
forth.
"""

from __future__ import annotations

from typing import Any

from s3pool.errors import BackendError
from s3pool.s3.answers import ListEntry
from s3pool.s3.listparse import FAST_ENTRIES, FAST_PREFIXES

# keys per LIST page
PAGE_KEYS = 1000
EMPTY_PAGES_MAX = 1000  # empty pages in a row a LIST may send (deleted versions), at most
SIZE_MAX = (1 << 63) - 1  # a file's size is a signed 64-bit count (st_size, off_t)


def page_of(resp: dict[str, Any], where: str, paging: bool = True
            ) -> tuple[list[ListEntry], list[str], str | None]:
    """A ListObjectsV2 answer: (keys, subdirectories, the next page's token
    or None), from s3pool's parser or, for an answer it left alone,
    botocore's. A size no file can have (below 0, past a signed 64-bit
    count: the mount could not show the directory) is an error, and so is
    a page that goes on without a token, unless *paging* is off (only this
    page is wanted). *where* (s3://bucket/prefix) names the LIST in errors."""
    entries = resp.get(FAST_ENTRIES)
    if entries is None:  # botocore parsed it (an answer the fast parser left alone)
        entries = [ListEntry(item["Key"], int(item.get("Size", 0)),
                             item["LastModified"].timestamp(), item.get("ETag", ""))
                   for item in resp.get("Contents", ())]
    subdirs = resp.get(FAST_PREFIXES)
    if subdirs is None:
        subdirs = [item["Prefix"] for item in resp.get("CommonPrefixes", ()) if item.get("Prefix")]
    token = resp.get("NextContinuationToken") if resp.get("IsTruncated") else None
    if paging and resp.get("IsTruncated") and not token:
        raise BackendError(f"S3 said the listing of {where} goes on but gave no continuation "
                           "token")
    if entries and not 0 <= min(e.size for e in entries) <= max(e.size for e in entries) \
            <= SIZE_MAX:
        odd = next(e for e in entries if not 0 <= e.size <= SIZE_MAX)
        raise BackendError(f"S3 answered a LIST of {where} with the key {odd.key[:200]!r} of "
                           f"size {str(odd.size)[:40]}, which no file can have: not believed")
    return entries, subdirs, token


def by_component(position: str) -> list[str]:
    """A position's place in SeaweedFS's order: path component by component."""
    return position.split("/")


class Onward:
    """Checks that each page of one LIST goes on past the one before."""

    def __init__(self) -> None:
        self.last: list[str] = []  # the last page's positions (not empty)...
        self.top = ""  # ... and the greatest of them in bytes: what the LIST reached
        self.in_bytes = True  # the pages may still come in S3's byte order
        self.in_components = True  # ...or by path component
        self.empty_run = 0  # empty pages in a row

    def fault(self, entries: list[ListEntry], subdirs: list[str]) -> str | None:
        """Why the page cannot follow the ones before, or None."""
        positions = [e.key for e in entries] + subdirs
        if not positions:
            self.empty_run += 1
            if self.empty_run > EMPTY_PAGES_MAX:
                return f"more than {EMPTY_PAGES_MAX} empty pages in a row"
            return None
        self.empty_run = 0
        top = max(positions)
        if self.last:
            # the path-component order (the dearer one) is only worked out
            # for a page that does not go on in bytes (only SeaweedFS's)
            self.in_bytes = self.in_bytes and top > self.top
            if not self.in_bytes:
                self.in_components = self.in_components and (
                    max(map(by_component, positions)) > max(map(by_component, self.last)))
            if not (self.in_bytes or self.in_components):
                return f"a page that does not go on after {self.top[:200]!r}"
        self.last, self.top = positions, top
        return None
