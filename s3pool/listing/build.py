"""A whole listing of a bucket written to disk: ``__list__`` and a new index.

Both are built in ``tmp/`` (store/files.py) a page at a time from the
pages of a LIST (or of a published listing), then renamed into place, the
index first (under its lock: index.py), so a reader sees the old listing
or the new one, never a mix. Keys with a line break or a NUL are left out of
``__list__`` (and so of GLOB), named in the log. A listing that cannot be
written is :class:`ListingNotWritten` (:class:`NoSpace` on a full disk)
and the previous one stays. The empty index a directory LIST merges into
before the bucket's first whole listing is made here too.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from s3pool.errors import NoSpace, S3PoolError
from s3pool.listing import index
from s3pool.listing.index import IndexFault
from s3pool.listing.published import is_hidden
from s3pool.s3.answers import ListEntry
from s3pool.store.files import temp_path
from s3pool.store.layout import Layout, unfit_for_a_line

log = logging.getLogger(__name__)

# keys with a line break or a NUL named in the log per listing (then only counted)
LINE_BREAKS_LOGGED = 20


def write_listing(layout: Layout, bucket: str, pages: Iterable[list[ListEntry]],
                  info: dict[str, Any] | None = None,
                  extra: Iterable[tuple[ListEntry, float]] = (),
                  hidden: Callable[[str], bool] = is_hidden) -> int:
    """Blocking: write ``__list__`` and the index from listing pages.

    Both are built in tmp/ a page at a time and renamed into place,
    so readers see the old listing or the new one, never a mix. Keys for
    which *hidden* is true (s3pool's own ``.s3pool/`` objects) are left out.
    *info* goes into the index's info table; *extra* (entry, added_at)
    pairs go into the index only (keys added here that the pages may lack),
    which marks it ``list_complete`` 0. ``__list__`` holds each key once, in
    key order (GLOB answers in that order), whatever order the pages came
    in; returns how many keys there are.
    """
    count = 0
    broken = 0  # keys with a line break or a NUL, left out of __list__ (and of GLOB)
    last = ""  # the greatest key so far, while the pages came in key order
    in_order = True
    tmp_dir = layout.tmp_dir
    try:
        # __list__ is for other tools: the mode open() gives (the umask applies)
        with temp_path(tmp_dir, "list", bucket, mode=0o666) as tmp_list, \
                temp_path(tmp_dir, "index", bucket) as tmp_index:
            built = index.Builder(tmp_index)
            try:
                with open(tmp_list, "w", encoding="utf-8", errors="surrogateescape") as listing:
                    for page in pages:
                        if any(hidden(e.key) for e in page):
                            page = [e for e in page if not hidden(e.key)]
                        if any(unfit_for_a_line(e.key) for e in page):
                            broken += _log_line_breaks(bucket, page, broken)
                        listing.writelines(e.key + "\n" for e in page
                                           if not unfit_for_a_line(e.key))
                        built.add(page)
                        count += len(page)
                        if in_order and page:
                            in_order = in_sequence(last, page)
                            last = page[-1].key
                    if not in_order:
                        # SeaweedFS lists by path component ("a/x" before "a.txt"),
                        # a server may repeat a key: written again, in key order
                        # and each key once, from the index being built
                        listing.seek(0)
                        listing.truncate()
                        count = 0
                        for key in built.keys():
                            count += 1
                            if not unfit_for_a_line(key):
                                listing.write(key + "\n")
                    listing.flush()
                    os.fsync(listing.fileno())
                built.add_local((e, at) for e, at in extra if not hidden(e.key))
                built.set_info({"refreshed_at": time.time(), "count": count})
                if broken > LINE_BREAKS_LOGGED:
                    log.warning("s3://%s: %d keys in all hold a newline or carriage return (%d "
                                "named above)", bucket, broken, LINE_BREAKS_LOGGED)
                built.set_info(info or {})
            except BaseException:
                built.abandon()
                raise
            built.finish()
            os.makedirs(layout.bucket_dir(bucket), exist_ok=True)
            os.makedirs(layout.listing_dir(bucket), exist_ok=True)
            index.install(tmp_index, layout.index_path(bucket))  # no write into the old one runs
            os.rename(tmp_list, layout.list_path(bucket))
    except (OSError, IndexFault) as exc:
        raise not_written(bucket, exc) from exc
    return count


def remove_empty_index(layout: Layout, bucket: str) -> None:
    """Blocking: take away the index create_empty_index made (and its directory)."""
    index.remove(layout.index_path(bucket))


def create_empty_index(layout: Layout, bucket: str) -> None:
    """Blocking: an empty index for *bucket*, listed at time 0, unless a
    usable one appeared meanwhile (never put over one; an unusable one is
    replaced)."""
    try:
        index.create_empty(layout.index_path(bucket), layout.tmp_dir, bucket)
    except (OSError, IndexFault) as exc:
        raise not_written(bucket, exc) from exc


class ListingNotWritten(S3PoolError):
    """The new listing of a bucket could not be written; the previous one stands."""


def in_sequence(last: str, page: list[ListEntry]) -> bool:
    """Do the keys of *page* follow *last* (and each other) in key order,
    each once?"""
    keys = [e.key for e in page]
    return keys[0] > last and all(a < b for a, b in zip(keys, keys[1:], strict=False))


def not_written(bucket: str, exc: OSError | IndexFault) -> S3PoolError:
    """The error a REFRESH answers when its listing could not be written."""
    if isinstance(exc, OSError):
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        cause = exc.strerror or str(exc)
    else:
        full = exc.full
        cause = str(exc)
    if full:
        return NoSpace(f"no room on disk to write the listing of s3://{bucket} ({cause}); "
                       "the previous listing stays in use")
    return ListingNotWritten(f"cannot write the listing of s3://{bucket} ({cause}); the "
                             "previous listing stays in use")


def _log_line_breaks(bucket: str, page: list[ListEntry], logged: int) -> int:
    """Name in the log (once per listing) the keys of *page* that hold a line
    break or a NUL; return how many there are."""
    found = [e.key for e in page if unfit_for_a_line(e.key)]
    for key in found[:max(0, LINE_BREAKS_LOGGED - logged)]:
        log.warning("s3://%s: key %r holds a newline, carriage return or NUL: left out "
                    "of __list__, GLOB and the mount's directory listings (a PULL cannot "
                    "return its path)", bucket, key)
    return len(found)
