"""A long LIST in key ranges fetched side by side, handed on in key order.

S3 pages a LIST with continuation tokens, so one LIST of a prefix is one
request after another: 100 round trips for a directory of 100,000 keys,
however many the server could answer at once. A LIST with ``StartAfter``
begins anywhere, so once the first page is in, the rest of the prefix can
be cut into ranges listed side by side, if we know where to cut.

We guess. Keys of huge directories are mostly numbered (``part-00042``,
``k000123``, dates): the first pages tell how the number at the end of their
names grows per key (:class:`NumberedKeys`), and the ranges are cut every
:data:`RANGE_KEYS` keys at that pace. A guess only decides where requests
start, never what the listing holds: the ranges are contiguous and cover
everything after the first page, each one's pages are cut at its upper
bound, and the pages are handed on in key order, each with the bound it
covers up to (what the index merge deletes by). A wrong guess costs
requests: a range that is empty costs one, and where the keys lie far past
the guess, the next ranges are cut from the first key found there. Names
with no number to go by are listed one page after the other, as before.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from s3pool.errors import BackendError
from s3pool.s3.answers import ListEntry

# a LIST goes on in ranges only after this many pages one after the other
# (shorter ones cost no request more than before)
PAGES_FIRST = 4
# keys per range: four LIST pages
RANGE_KEYS = 4000
# ranges listed at once (a LIST each): two at first, one more per whole range
# seen; a range cut past the prefix's end costs one (empty) LIST
RANGES_AT_ONCE = 4

_DIGITS = re.compile(r"[0-9]+")

# one page: (keys, subdirectories, the position it covers up to; None: to the end)
Page = tuple[list[ListEntry], list[str], str | None]
# one LIST request of the prefix: (StartAfter, continuation token) -> (keys,
# subdirectories, the next page's token or None); it raises to give up
Fetch = Callable[[str | None, str | None], tuple[list[ListEntry], list[str], str | None]]


@dataclass(frozen=True)
class NumberedKeys:
    """Positions ``head + N`` (N zero-padded to ``width`` digits): where to
    cut, ``step`` numbers a range."""

    head: str
    width: int
    step: int

    @staticmethod
    def of(first: str, last: str, count: int) -> NumberedKeys | None:
        """The numbering of a page whose positions run from *first* to
        *last* (*count* of them), or None when they show none: the last
        run of digits in *last* that sits where *first* has as many digits
        after the same text, and grows between them."""
        if count < 2:
            return None
        for run in reversed(list(_DIGITS.finditer(last))):
            start, end = run.span()
            lo = first[start:end]
            if first[:start] != last[:start] or not _DIGITS.fullmatch(lo) or len(lo) != end - start:
                continue
            grown = int(run.group()) - int(lo)
            if grown <= 0:
                continue
            step = max(1, -(-grown * RANGE_KEYS // (count - 1)))
            return NumberedKeys(last[:start], end - start, step)
        return None

    def number(self, position: str) -> int | None:
        """The number of *position* if it has this numbering's head."""
        if not position.startswith(self.head):
            return None
        digits = position[len(self.head):len(self.head) + self.width]
        return int(digits) if len(digits) == self.width and _DIGITS.fullmatch(digits) else None

    def bound(self, number: int) -> str | None:
        """The position where the range before *number* ends; None when
        the number no longer fits the width (the rest is one range)."""
        text = str(number)
        return self.head + text.zfill(self.width) if len(text) <= self.width else None


@dataclass
class Range:
    """One range's pages, and what its LISTs showed past its end."""

    pages: list[Page]
    beyond: str | None  # the first position after the range (None: none seen)
    ended: bool  # S3 has nothing after the range: later ranges are empty


def page_end(entries: list[ListEntry], subdirs: list[str]) -> str | None:
    """The highest position of a page (None: an empty page): what it covers
    up to. Not its last entry's: SeaweedFS sends names by path component
    ("pct/" before "pct%2F/"), not in S3's byte order."""
    return max([e.key for e in entries] + subdirs, default=None)


class StartAfterIgnored(BackendError):
    """The S3 server answered a LIST with StartAfter from before that key."""


def list_range(fetch: Fetch, after: str, upper: str | None) -> Range:
    """Blocking: every page of the range (*after*, *upper*], each cut at
    *upper*; the last covers up to *upper* (None: the prefix's end).

    Each answer is checked: a page must begin after the position the
    request named (StartAfter, or the last page's end). A server that
    ignores StartAfter answers from the prefix's start, and a merge of that
    as the range would delete the range's keys from the index."""
    pages: list[Page] = []
    token: str | None = None
    begins = after
    while True:
        entries, subdirs, token = fetch(after if token is None else None, token)
        first = min([e.key for e in entries[:1]] + subdirs[:1], default=None)
        # a subdirectory holding *begins* may come again (its keys go on after it)
        if first is not None and first <= begins and not (
                first in subdirs[:1] and begins.startswith(first)):
            raise StartAfterIgnored(f"asked for the keys after {begins!r}, S3 answered from "
                                    f"{first!r}")
        beyond = None
        if upper is not None:
            beyond = min([e.key for e in entries if e.key > upper]
                         + [d for d in subdirs if d > upper], default=None)
        # a subdirectory holding *after* may come again: the range before has it
        entries = [e for e in entries if e.key > after and (upper is None or e.key <= upper)]
        subdirs = [d for d in subdirs if d > after and (upper is None or d <= upper)]
        if token is None or beyond is not None:
            pages.append((entries, subdirs, upper))
            return Range(pages, beyond, ended=beyond is None)
        last = page_end(entries, subdirs) or ""
        if last == upper:  # the range is whole: asking on would only show what follows
            pages.append((entries, subdirs, upper))
            return Range(pages, None, ended=False)
        pages.append((entries, subdirs, last))
        begins = last


def ranged_pages(fetch: Fetch, after: str, numbering: NumberedKeys) -> Iterator[Page]:
    """Blocking: the pages after position *after* (the last page's last),
    listed in ranges side by side, handed on in key order: two ranges at
    first, one more for each range that came back whole, up to
    RANGES_AT_ONCE.

    Ranges are cut ahead by *numbering*; a range that finds the keys
    resume far past its end makes the next ones start from there, and
    one that finds nothing after itself stops the cutting (ranges already
    started come back empty). An error is raised where its range's pages
    would have come; leaving early stops the ranges not begun. A server
    that ignores StartAfter is found by the first range: StartAfterIgnored
    comes before any page, and the caller goes on one page after the other
    (later, it would be a BackendError)."""
    pool = ThreadPoolExecutor(RANGES_AT_ONCE, thread_name_prefix="s3pool-list-range")
    ahead: deque[Future[Range]] = deque()
    lower = after
    seed = numbering.number(after)
    cut_done = seed is None

    whole = 0  # ranges that came back whole, with more after them

    def cut() -> None:
        nonlocal lower, seed, cut_done
        while len(ahead) < min(RANGES_AT_ONCE, 2 + whole) and not cut_done:
            assert seed is not None
            upper = numbering.bound(seed + numbering.step)
            if upper is not None and upper <= lower:
                upper = None  # the numbering no longer describes the keys
            ahead.append(pool.submit(list_range, fetch, lower, upper))
            if upper is None:
                cut_done = True
            else:
                lower, seed = upper, seed + numbering.step

    try:
        cut()
        covered: str | None = after
        while ahead:
            try:
                done = ahead.popleft().result()
            except StartAfterIgnored as exc:
                if covered != after:
                    raise BackendError(f"S3 honoured StartAfter, then did not: {exc}") from None
                raise
            yield from done.pages
            covered = done.pages[-1][2]
            if done.ended:
                cut_done = True  # what is in flight comes back empty
                continue
            whole += 1
            if done.beyond is not None and not cut_done:
                resumed = numbering.number(done.beyond)
                # keys resume past the ranges cut so far: cut on from there
                if resumed is None:
                    cut_done = True
                    ahead.append(pool.submit(list_range, fetch, lower, None))
                elif seed is not None and resumed > seed:
                    seed = resumed
            cut()
        if covered is not None:
            # a range found nothing after itself: neither is there after the last one
            yield [], [], None
    finally:
        for future in ahead:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
