"""listing/ranges.py: a long LIST cut into ranges listed side by side and
handed on in key order. Whatever the guesses, the pages hold exactly what a
LIST one page after the other holds, each within the bounds it claims.

A fake LIST with S3's paging (StartAfter, continuation tokens, a delimiter's
common prefixes, 1,000 positions a page) over keys in memory; the daemon's
real LISTs over moto are in test_listing_freshness_e2e.py."""

from __future__ import annotations

import bisect
import math
import threading

import pytest

from s3pool.listing.ranges import RANGE_KEYS, NumberedKeys, StartAfterIgnored, ranged_pages
from s3pool.s3.answers import ListEntry

pytestmark = pytest.mark.unit

PAGE = 1000


class FakeList:
    """ListObjectsV2 over *keys* under *prefix* (with *delimiter* '/': common prefixes)."""

    def __init__(self, keys: list[str], prefix: str = "d/", delimiter: str | None = "/"):
        self.keys = sorted(keys)
        self.prefix, self.delimiter = prefix, delimiter
        self.requests = 0
        self.lock = threading.Lock()

    def positions(self, start_after: str) -> list[str]:
        """Every position after *start_after*, a common prefix once."""
        out: list[str] = []
        i = bisect.bisect_right(self.keys, start_after)
        while i < len(self.keys):
            key = self.keys[i]
            rest = key[len(self.prefix):]
            if self.delimiter and "/" in rest:
                sub = self.prefix + rest[:rest.index("/") + 1]
                if not out or out[-1] != sub:
                    out.append(sub)
                i = bisect.bisect_left(self.keys, sub[:-1] + "0")  # past the prefix
                continue
            out.append(key)
            i += 1
        return out

    def __call__(self, start_after, token):
        with self.lock:
            self.requests += 1
        after = token if token is not None else (start_after or "")
        got = self.positions(after)[:PAGE + 1]
        page, more = got[:PAGE], len(got) > PAGE
        entries = [ListEntry(p, 1, 0.0, '"e"') for p in page if not p.endswith("/")]
        subdirs = [p for p in page if p.endswith("/")]
        return entries, subdirs, (page[-1] if more else None)


def listed(fake: FakeList) -> tuple[list[str], int]:
    """The pages after the first, checked page by page; (positions, pages)."""
    entries, subdirs, token = fake(None, None)
    first = sorted([e.key for e in entries] + subdirs)
    assert token is not None
    numbering = NumberedKeys.of(first[0], first[-1], len(first))
    assert numbering is not None
    got = list(first)
    lo = first[-1]
    pages = list(ranged_pages(fake, lo, numbering))
    for i, (keys, dirs, hi) in enumerate(pages):
        positions = [e.key for e in keys] + dirs
        assert all(p > lo and (hi is None or p <= hi) for p in positions), (lo, hi)
        assert (hi is None) == (i == len(pages) - 1)
        got.extend(sorted(positions))
        lo = hi
    return got, len(pages)


def test_numbered_keys_come_whole_and_in_order():
    keys = [f"d/k{i:06d}" for i in range(30_000)]
    fake = FakeList(keys)
    got, _ = listed(fake)
    assert got == keys
    # four pages a range: a few requests more than 30 pages, not many
    assert fake.requests <= 30 + 30_000 // RANGE_KEYS + 2


@pytest.mark.parametrize("keys", [
    # a gap far past the ranges cut ahead: the cutting resumes from the keys found
    [f"d/k{i:06d}" for i in range(3000)] + [f"d/k{i:06d}" for i in range(900_000, 905_000)],
    # numbered, then names of another kind after them
    [f"d/part-{i:05d}.csv" for i in range(6000)] + [f"d/zz-{i}" for i in range(2500)],
    # subdirectories among the numbered names, one of them where a range is cut
    sorted([f"d/k{i:06d}" for i in range(12_000)]
           + [f"d/k{i:06d}/x" for i in (2500, 4999, 5000, 9001)]
           + [f"d/k004999/y{j}" for j in range(3000)]),
    # the numbering runs out of digits (the last range is open)
    [f"d/k{i:04d}" for i in range(10_000)] + ["d/k~tail"],
    # fewer keys than one range after the first page
    [f"d/k{i:06d}" for i in range(1500)],
    # numbers that grow unevenly
    [f"d/t{(i * i) // 7:09d}" for i in range(9000)],
], ids=["far-gap", "other-names-after", "subdirectories", "out-of-digits", "short",
        "uneven"])
def test_any_key_set_comes_whole_and_in_order(keys):
    fake = FakeList(keys)
    got, _ = listed(fake)
    assert got == fake.positions("")


def test_keys_deleted_between_ranges_leave_no_gap_claimed():
    """Every position is covered by exactly one page's (lo, hi]: the merge
    deletes by these bounds, so none may skip a stretch or overlap."""
    keys = [f"d/k{i:06d}" for i in range(0, 40_000, 3)]
    fake = FakeList(keys)
    entries, subdirs, _ = fake(None, None)
    first = [e.key for e in entries]
    numbering = NumberedKeys.of(first[0], first[-1], len(first))
    his = [first[-1]] + [hi for _, _, hi in ranged_pages(fake, first[-1], numbering)]
    assert his[-1] is None
    assert all(a < b for a, b in zip(his[:-2], his[1:-1], strict=True))


def test_no_numbering_no_ranges():
    assert NumberedKeys.of("d/alpha", "d/omega", 1000) is None
    assert NumberedKeys.of("d/k000100", "d/k000100", 1) is None
    assert NumberedKeys.of("d/a000100", "d/b000999", 1000) is None  # other text before
    # digits of other scripts are no numbering (their order is not ASCII's)
    assert NumberedKeys.of("d/k\u0660\u0661", "d/k\u0669\u0669", 1000) is None
    found = NumberedKeys.of("d/x-2026-01-01-000", "d/x-2026-01-01-999", 1000)
    assert found is not None and found.head == "d/x-2026-01-01-" and found.width == 3


def test_an_error_comes_where_its_range_would_have():
    keys = [f"d/k{i:06d}" for i in range(20_000)]
    fake = FakeList(keys)
    failing_from = "d/k009000"

    def fetch(start_after, token):
        if (start_after or token or "") >= failing_from:
            raise OSError("S3 went away")
        return fake(start_after, token)

    entries, _, _ = fetch(None, None)
    numbering = NumberedKeys.of(entries[0].key, entries[-1].key, len(entries))
    seen: list[str] = []
    with pytest.raises(OSError, match="went away"):
        for keys_, _, _ in ranged_pages(fetch, entries[-1].key, numbering):
            seen.extend(e.key for e in keys_)
    assert seen == keys[1000:len(seen) + 1000]  # in order up to the failure
    assert seen and seen[-1] < failing_from


def test_a_server_that_ignores_start_after_is_found_before_any_page():
    keys = [f"d/k{i:06d}" for i in range(20_000)]
    fake = FakeList(keys)

    def ignoring(start_after, token):
        return fake(None, token)  # StartAfter dropped, as some servers do

    entries, _, _ = ignoring(None, None)
    numbering = NumberedKeys.of(entries[0].key, entries[-1].key, len(entries))
    pages = ranged_pages(ignoring, entries[-1].key, numbering)
    with pytest.raises(StartAfterIgnored):
        next(pages)


@pytest.mark.parametrize("honours", [True, False], ids=["start-after", "start-after-ignored"])
async def test_a_directory_listed_in_ranges_or_not_is_whole_in_the_index(tmp_path, honours):
    """Listings over the in-memory S3: a directory of 12,000 numbered keys and
    a subdirectory, listed cold, then listed again after keys were deleted
    in several ranges; with a server that ignores StartAfter the LIST goes
    on one page after the other, and nothing is lost either way."""
    from fakes import FakeBackend
    from s3pool.listing.listings import Listings
    from s3pool.store.layout import Layout

    backend = FakeBackend(buckets=("bkt",))
    backend.honours_start_after = honours
    keys = [f"d/k{i:06d}" for i in range(12_000)] + ["d/k006000/x"]
    for key in keys:
        backend.put("bkt", key, b"")
    listings = Listings(Layout.create(str(tmp_path)), backend)

    def names() -> list[str]:
        return [e.name for e in listings.iter_children("bkt", "d/")]

    await listings.fresh("bkt", "d/", False, 60)
    want = sorted({key[2:].split("/")[0] for key in keys})
    assert names() == want
    for key in ("d/k001000", "d/k007777", "d/k011999"):
        backend.remove("bkt", key)
    asked = backend.calls["list_page"]
    await listings.fresh("bkt", "d/", False, 0)  # stale at once: listed again
    assert names() == [n for n in want if n not in ("k001000", "k007777", "k011999")]
    assert listings.listed_at("bkt", "d/", False) > 0  # recorded as listed whole
    if not honours:
        # the server was found out by the first LIST: no range is asked of it again
        assert backend.calls["list_page"] - asked == math.ceil(len(names()) / 1000)
        assert listings.start_after_ignored == {"bkt"}
    else:
        assert not listings.start_after_ignored
