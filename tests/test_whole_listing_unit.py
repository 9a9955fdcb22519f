"""The whole-bucket listing (Backend.iter_listing: a refresh, GLOB of a
pattern without a literal prefix) takes its pages on the lean path and
checks them as a directory's LIST does (s3/listpages.py): pages that go
back, repeat a token or come empty for ever end it with an error, and the
listing in use stays as it was.

A real Backend against a loopback server whose answer depends on the
request's continuation token."""

from __future__ import annotations

import http.server
import urllib.parse
from collections.abc import Callable, Iterator

import pytest

from s3pool.errors import BackendError
from s3pool.s3.backend import Backend
from s3pool.s3.listpages import EMPTY_PAGES_MAX
from test_listparse_unit import KEYS, NS, item, serving

pytestmark = pytest.mark.unit

# an answer: the request's continuation token (None: the first page) ->
# (keys, the next token or None)
Answer = Callable[[str | None], tuple[list[str], str | None]]


def _page(keys: list[str], token: str | None) -> bytes:
    more = (f"<IsTruncated>true</IsTruncated><NextContinuationToken>{token}"
            "</NextContinuationToken>") if token else "<IsTruncated>false</IsTruncated>"
    return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{NS}">'
            f"<Name>bkt</Name><Prefix></Prefix>{more}" + "".join(item(k) for k in keys)
            + "</ListBucketResult>").encode()


class _Pager(http.server.BaseHTTPRequestHandler):
    answer: Answer
    asked = 0

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).asked += 1
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        body = _page(*self.answer(query.get("continuation-token", [None])[0]))
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def pager() -> Iterator[type[_Pager]]:
    yield from serving(_Pager)


def _serve(pager: type[_Pager], answer: Answer) -> None:
    pager.answer = staticmethod(answer)


def _backend(pager: type[_Pager], lean: bool) -> Backend:
    backend = Backend(endpoint_url=pager.url, credentials=KEYS)  # type: ignore[attr-defined]
    if not lean:
        backend.lean = None
    return backend


def _next(token: str | None) -> str:
    """A new token after *token*: T1, T2, ..."""
    return f"T{int((token or 'T0')[1:]) + 1}"


def _stops_after(pages: int, answer: Answer) -> Answer:
    """*answer* for *pages* pages, then a last page: an old s3pool that
    believed it all ends too (with the wrong listing), not a hung test."""
    def bounded(token: str | None) -> tuple[list[str], str | None]:
        number = 0 if token is None else int(token.lstrip("T"))
        return answer(token) if number < pages else (["zzz"], None)
    return bounded


LEAN = pytest.mark.parametrize("lean", [True, False], ids=["lean", "boto3"])


@LEAN
def test_pages_in_either_order_are_read_whole(pager, lean):
    """The positive control: two sound pages in S3's order, then two in
    SeaweedFS's (d/pct/x before d/pct%2F/y and d/pct.txt), each read
    whole, on the lean path when it is on."""
    pages = {None: (["a", "d/pct/x"], "T1"), "T1": (["d/pct%2F/y", "d/pct.txt"], "T2"),
             "T2": (["e"], None)}
    _serve(pager, pages.__getitem__)
    backend = _backend(pager, lean)
    got = [[e.key for e in page] for page in backend.iter_listing("bkt")]
    assert got == [keys for keys, _ in pages.values()]
    assert backend.lean_lists == (3 if lean else 0)


@LEAN
def test_pages_that_go_back_end_the_listing_with_an_error(pager, lean):
    _serve(pager, _stops_after(20, lambda token: (["a", "b"], _next(token))))
    backend = _backend(pager, lean)
    with pytest.raises(BackendError, match="does not go on after 'b'"):
        list(backend.iter_listing("bkt"))
    assert pager.asked == 2


@LEAN
def test_a_token_given_twice_ends_the_listing_with_an_error(pager, lean):
    _serve(pager, _stops_after(20, lambda token: ([f"k{token}"], "T1")))
    backend = _backend(pager, lean)
    with pytest.raises(BackendError, match="continuation token"):
        list(backend.iter_listing("bkt"))
    assert pager.asked == 2


def test_empty_pages_for_ever_end_the_listing_with_an_error(pager):
    _serve(pager, _stops_after(EMPTY_PAGES_MAX + 20, lambda token: ([], _next(token))))
    backend = _backend(pager, True)
    with pytest.raises(BackendError, match="empty pages in a row"):
        list(backend.iter_listing("bkt"))
    assert pager.asked == EMPTY_PAGES_MAX + 1


async def test_a_refresh_that_goes_back_keeps_the_listing_in_use(pager, tmp_path):
    from s3pool.listing.listings import Listings
    from s3pool.store.layout import Layout

    _serve(pager, {None: (["a", "b"], "T1"), "T1": (["c"], None)}.__getitem__)
    layout = Layout.create(str(tmp_path))
    listings = Listings(layout, _backend(pager, True))
    assert await listings.refresh("bkt") == 3
    before = open(layout.list_path("bkt")).read()
    assert before == "a\nb\nc\n"
    _serve(pager, _stops_after(20, lambda token: (["a", "b"], _next(token))))
    with pytest.raises(BackendError, match="does not go on"):
        await listings.refresh("bkt")
    assert open(layout.list_path("bkt")).read() == before
    assert [e.name for e in listings.iter_children("bkt", "")] == ["a", "b", "c"]
