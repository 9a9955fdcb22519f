"""A directory listed from a server that sends names by path component, as
SeaweedFS does ("pct/" before "pct%2F/" and "pct.txt", where S3's byte order
puts it after them): a page boundary between such names must not make a
merge drop a subdirectory (and every key the index knows under it), must not
tell a streaming readdir the index is current past a name still to come,
and must not be taken for a listing that goes back.

The fake answers a directory's LIST from a fixed list of children in the
server's order, two a page, over the real Listings and index."""

from __future__ import annotations

import pytest

from fakes import FakeBackend
from s3pool.listing.listings import Listings
from s3pool.s3.answers import ListEntry
from s3pool.s3.listparse import FAST_ENTRIES, FAST_PREFIXES
from s3pool.store.layout import Layout

pytestmark = pytest.mark.unit

BASE = {"d/a", "d/q", "d/z", "d/pct/x", "d/pct%2F/y", "d/pct%2F/y2"}
# with pct.txt, the second page ("pct%2F/", "pct.txt") is all before the
# first's end ("pct/") in bytes; without, it goes on past it ("q")
FILE_SETS = {"page-back-in-bytes": BASE | {"d/pct.txt"}, "page-on-in-bytes": BASE}


def by_component(position: str) -> list[str]:
    """SeaweedFS's order of a directory's children: by name, a directory's
    name without its slash."""
    return position.split("/")


def children(files: set[str], prefix: str) -> list[str]:
    found = set()
    for key in files:
        rest = key[len(prefix):]
        found.add(prefix + rest.split("/")[0] + "/" if "/" in rest else key)
    return sorted(found, key=by_component)


def paged_by_component(backend: FakeBackend, files: set[str], per_page: int = 2):
    """*backend*'s LIST answer, with the directory d/ (of *files*) sent in
    component order."""
    answer = backend.client.list_objects_v2

    def list_objects_v2(**params):
        if params.get("Prefix") != "d/" or params.get("Delimiter") != "/":
            return answer(**params)
        order = children(files, "d/")
        start = int(params.get("ContinuationToken") or 0)
        page = order[start:start + per_page]
        more = start + per_page < len(order)
        return {FAST_ENTRIES: [ListEntry(p, 1, 1_700_000_000.0, '"e"') for p in page
                               if not p.endswith("/")],
                FAST_PREFIXES: [p for p in page if p.endswith("/")],
                "IsTruncated": more,
                "NextContinuationToken": str(start + per_page) if more else None}

    return list_objects_v2


@pytest.fixture(params=sorted(FILE_SETS))
def files(request) -> set[str]:
    return FILE_SETS[request.param]


@pytest.fixture
def listings(tmp_path, files):
    backend = FakeBackend(buckets=("bkt",))
    for key in files:
        backend.put("bkt", key, b"x")
    backend.client.list_objects_v2 = paged_by_component(backend, files)
    return Listings(Layout.create(str(tmp_path)), backend)


def names(listings: Listings, prefix: str) -> list[str]:
    return [e.name + ("/" if e.is_dir else "") for e in listings.iter_children("bkt", prefix)]


def test_the_fixture_is_in_component_order_and_cuts_between_such_names():
    order = children(FILE_SETS["page-back-in-bytes"], "d/")
    assert order == ["d/a", "d/pct/", "d/pct%2F/", "d/pct.txt", "d/q", "d/z"]
    assert order != sorted(order)  # S3's byte order differs
    # two a page: "pct/" ends the first page, "pct%2F/" and "pct.txt" (both
    # before it in bytes) make the second, which goes on by component only
    assert max(order[2:4]) < max(order[0:2])
    order = children(FILE_SETS["page-on-in-bytes"], "d/")
    assert order[1:3] == ["d/pct/", "d/pct%2F/"] and max(order[2:4]) > max(order[0:2])


async def test_a_directory_in_component_order_is_listed_whole(listings, files):
    job = await listings.fresh("bkt", "d/", False, 0)
    assert job is not None and job.error is None, job.error
    assert names(listings, "d/") == [p[2:] for p in sorted(children(files, "d/"))]


async def test_a_subdirectory_after_the_cut_keeps_its_keys(listings):
    """pct%2F/ was listed (its keys are in the index); the parent's pages
    come in component order, pct%2F/ on the page after pct/: it and its
    keys stay, and a readdir of it within the window still shows them."""
    assert (await listings.fresh("bkt", "d/pct%2F/", False, 0)).error is None
    assert names(listings, "d/pct%2F/") == ["y", "y2"]
    job = await listings.fresh("bkt", "d/", False, 0)
    assert job is not None and job.error is None, job.error
    assert names(listings, "d/pct%2F/") == ["y", "y2"]
    assert await listings.fresh("bkt", "d/pct%2F/", False, 60) is None  # still fresh


async def test_the_index_is_current_wherever_a_page_says_it_is(listings, files):
    """At each page merged, every name up to the position the listing
    says it covers (what a streaming readdir serves up to) is in the
    index: none is still to come on a later page."""
    truth = children(files, "d/")
    told: list[tuple[str | None, list[str]]] = []
    advanced = listings._advanced

    def recording(job, through):
        told.append((through, ["d/" + n for n in names(listings, "d/")]))
        advanced(job, through)

    listings._advanced = recording
    job = await listings.fresh("bkt", "d/", False, 0)
    assert job is not None and job.error is None, job.error
    assert len(told) == 3
    for through, indexed in told:
        due = [p for p in truth if through is None or p <= through]
        assert set(due) <= set(indexed), (through, due, indexed)


async def test_pages_that_go_on_in_one_order_then_the_other_are_not_believed(tmp_path):
    """A server may send S3's byte order or SeaweedFS's, not both: pages
    that go back in one and then in the other (x/ then x.y then x/ ...)
    would have the directory listed for ever. The listing ends with an
    error at the third page."""
    backend = FakeBackend(buckets=("bkt",))
    backend.put("bkt", "d/k", b"x")
    listings = Listings(Layout.create(str(tmp_path)), backend)
    assert (await listings.fresh("bkt", "d/", False, 0)).error is None
    pages = 0

    def see_saw(**params):
        nonlocal pages
        pages += 1
        if pages > 10:
            raise AssertionError("the listing went on for ever")
        odd = pages % 2
        return {FAST_ENTRIES: [] if odd else [ListEntry("d/x.y", 1, 1_700_000_000.0, '"e"')],
                FAST_PREFIXES: ["d/x/"] if odd else [],
                "IsTruncated": True, "NextContinuationToken": f"T{odd}"}

    backend.client.list_objects_v2 = see_saw
    job = await listings.fresh("bkt", "d/", False, 0)
    assert job is not None and job.error is not None
    assert "does not go on after" in str(job.error)
    assert pages == 3


def test_a_page_is_settled_up_to_its_greatest_name():
    from s3pool.listing.order import settle

    def e(key):
        return ListEntry(key, 1, 0.0, "")

    # S3's byte order: pct.txt < pct/; the page covers up to pct.txt, pct/ waits
    assert settle("d/a", "d/pct/", [e("d/pct.txt")], ["d/pct%2F/", "d/pct/"]) == (
        "d/pct.txt", ([e("d/pct.txt")], ["d/pct%2F/"]), ([], ["d/pct/"]))
    # SeaweedFS's: a page ending with pct/ covers up to "d/pct" only
    assert settle(None, "d/pct/", [e("d/a")], ["d/pct/"]) == (
        "d/pct", ([e("d/a")], []), ([], ["d/pct/"]))
    # nothing past lo: all of it waits; an empty page too
    assert settle("d/pct", "d/pct/", [], ["d/pct/"]) == (None, ([], []), ([], ["d/pct/"]))
    assert settle("d/a", "d/b", [], []) == (None, ([], []), ([], []))
    # a range's page claims less than its names reach: its claim holds
    assert settle("d/a", "d/m", [e("d/b")], []) == ("d/b", ([e("d/b")], []), ([], []))
    assert settle("d/a", "d/b", [e("d/b")], ["d/b/"])[0] == "d/b"


def test_a_whole_listing_in_component_order_is_written_in_key_order(tmp_path):
    """__list__ (what GLOB of a pattern without a literal prefix reads, in
    its order) holds each key once in key order, though SeaweedFS sent
    a/x before a.txt and a server repeated a key across pages."""
    from s3pool.listing.build import write_listing

    def e(key):
        return ListEntry(key, 1, 1_700_000_000.0, '"e"')

    layout = Layout.create(str(tmp_path))
    pages = [[e("a/x"), e("a/y")], [e("a.txt"), e("b")], [e("b"), e("c\nd"), e("e")]]
    assert write_listing(layout, "bkt", pages) == 6
    assert open(layout.list_path("bkt")).read() == "a.txt\na/x\na/y\nb\ne\n"
    in_order = [[e("a.txt"), e("a/x")], [e("b"), e("c\nd")]]
    assert write_listing(layout, "bkt", in_order) == 4
    assert open(layout.list_path("bkt")).read() == "a.txt\na/x\nb\n"
