"""LIST pages parsed once (s3/listparse.py): the fast parser runs before
botocore's check for an error inside a 200 answer, so a page's body is not
parsed twice, and that check still sees every answer that is not a listing
(an ``<Error>`` root, a body cut short) as it always did.

Against moto's server over HTTP, and a loopback server that answers every
request with one fixed 200 body."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import botocore.handlers
import pytest

from s3pool.errors import BackendError
from s3pool.listing.listings import list_page
from s3pool.s3.backend import Backend
from s3pool.s3.listparse import FAST_ENTRIES, FAST_PREFIXES, parse_listing_fast

pytestmark = pytest.mark.unit

KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture
def seen_by_botocore(monkeypatch) -> list[int]:
    """The length of every body botocore's 200-error check parses."""
    sizes: list[int] = []
    check = botocore.handlers._looks_like_special_case_error

    def spy(status_code, body):
        sizes.append(len(body))
        return check(status_code, body)

    monkeypatch.setattr(botocore.handlers, "_looks_like_special_case_error", spy)
    return sizes


def test_a_page_is_parsed_once(s3, moto_server, seen_by_botocore):
    s3.create_bucket(Bucket="bkt")
    keys = [f"dir/k{i:05d}" for i in range(999)] + ["dir/sub/x", "top"]
    for key in keys:
        s3.put_object(Bucket="bkt", Key=key, Body=b"")
    backend = Backend(endpoint_url=moto_server.endpoint, credentials=KEYS)
    backend.lean = None  # botocore's path (the lean one never runs botocore's parser)
    seen_by_botocore.clear()  # the PUTs' answers
    entries, subdirs, token = list_page(backend, "bkt", "dir/", "/", None)
    assert [e.key for e in entries] == keys[:999]
    assert subdirs == ["dir/sub/"] and token is None
    assert seen_by_botocore, "botocore's check must still run"
    # the page's body is some 200 KB; what the check parses is the paging fields
    assert max(seen_by_botocore) < 1000, seen_by_botocore
    # a page that goes on: its token comes through the short body
    entries, _, token = list_page(backend, "bkt", "", None, None)
    assert len(entries) == 1000 and token


class _Fixed(http.server.BaseHTTPRequestHandler):
    body = b""
    asked = 0

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).asked += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


def serving(base: Any) -> Iterator[Any]:
    """A loopback HTTP server of a new subclass of *base* (so its class
    attributes are its own), handed on with its URL in ``url``."""
    handler = type("Handler", (base,), {"asked": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fixed_server() -> Iterator[type[_Fixed]]:
    yield from serving(_Fixed)


@pytest.mark.parametrize("body", [
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error.</Message></Error>",
    # cut short mid-page: no listing at all, not the keys it has so far
    b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult '
    b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name>'
    b"<IsTruncated>false</IsTruncated><Contents><Key>a</Key><Size>1</Size>",
], ids=["error-in-200", "cut-body"])
def test_a_200_that_is_not_a_listing_is_an_error(fixed_server, body):
    fixed_server.body = body
    backend = Backend(endpoint_url=fixed_server.url, credentials=KEYS)
    with pytest.raises(BackendError):
        list_page(backend, "bkt", "", "/", None)
    # the lean path left it to boto3, which retried it as a 500, as it always has
    assert backend.lean_list_fallbacks == 1 and backend.lean_lists == 0
    assert fixed_server.asked > 2


def botocore_entries(body: bytes) -> tuple[list[tuple], list[str]]:
    """What botocore's own parser makes of *body* (keys, sizes, times, ETags)."""
    import botocore.parsers
    import botocore.session

    model = botocore.session.get_session().get_service_model("s3")
    shape = model.operation_model("ListObjectsV2").output_shape
    parsed = botocore.parsers.create_parser("rest-xml").parse(
        {"body": body, "headers": {}, "status_code": 200}, shape)
    return ([(item["Key"], item.get("Size", 0), item["LastModified"].timestamp(),
              item.get("ETag", "")) for item in parsed.get("Contents", [])],
            [item["Prefix"] for item in parsed.get("CommonPrefixes", [])])


def fast(body: bytes) -> dict:
    custom: dict = {}
    parse_listing_fast({"status_code": 200, "body": body}, custom)
    return custom


NS = "http://s3.amazonaws.com/doc/2006-03-01/"


def page(contents: str, extra: str = "", head: str = "") -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>{head}<ListBucketResult xmlns="{NS}">'
            f"<Name>b</Name><IsTruncated>false</IsTruncated>{contents}{extra}"
            f"</ListBucketResult>").encode()


def item(key: str, size: int = 1, etag: str = "&quot;abc&quot;",
         stamp: str = "2026-12-06T15:33:14.000Z") -> str:
    return (f"<Contents><Key>{key}</Key><LastModified>{stamp}</LastModified>"
            f"<ETag>{etag}</ETag><Size>{size}</Size><StorageClass>STANDARD</StorageClass>"
            f"</Contents>")


def test_the_entries_are_botocores():
    keys = ["a &amp; b", "caf\u00e9/x", "sp ace", "1+1=2", "&lt;tag&gt;", "\u6f22\u5b57"]
    body = page("".join(item(k, size=i) for i, k in enumerate(keys)),
                "<CommonPrefixes><Prefix>dir/</Prefix></CommonPrefixes>")
    ours = fast(body)
    theirs, prefixes = botocore_entries(body)
    assert [tuple(e) for e in ours[FAST_ENTRIES]] == theirs
    assert ours[FAST_PREFIXES] == prefixes == ["dir/"]


def test_an_entry_missing_a_field_is_read_one_at_a_time():
    body = page(item("a") + "<Contents><Key>b</Key><LastModified>2026-12-06T15:33:14Z"
                "</LastModified><Size>7</Size></Contents>" + item("c", size=3))
    entries = fast(body)[FAST_ENTRIES]
    assert [(e.key, e.size, e.etag) for e in entries] == [
        ("a", 1, '"abc"'), ("b", 7, ""), ("c", 3, '"abc"')]


def test_url_encoded_keys_are_decoded():
    body = page(item("a%20b%2Bc") + "<EncodingType>url</EncodingType>",
                "<CommonPrefixes><Prefix>d%2F%C3%A9/</Prefix></CommonPrefixes>")
    custom = fast(body)
    assert [e.key for e in custom[FAST_ENTRIES]] == ["a b+c"]
    assert custom[FAST_PREFIXES] == ["d/\u00e9/"]


def test_a_page_with_a_dtd_is_left_to_botocore_and_no_entity_is_read(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("SECRET")
    head = f'<!DOCTYPE ListBucketResult [<!ENTITY e SYSTEM "file://{secret}">]>'
    body = page(item("&e;"), head=head)
    response = {"status_code": 200, "body": body}
    custom: dict = {}
    parse_listing_fast(response, custom)
    assert FAST_ENTRIES not in custom and response["body"] == body



def _page_of(keys: list[str], subdirs: Sequence[str] = (), token: str | None = None) -> bytes:
    more = (f"<IsTruncated>true</IsTruncated><NextContinuationToken>{token}"
            "</NextContinuationToken>") if token else "<IsTruncated>false</IsTruncated>"
    return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{NS}">'
            f"<Name>bkt</Name><Prefix>d/</Prefix>{more}"
            + "".join(item(key) for key in keys)
            + "".join(f"<CommonPrefixes><Prefix>{sub}</Prefix></CommonPrefixes>"
                      for sub in subdirs)
            + "</ListBucketResult>").encode()


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "boto3"])
@pytest.mark.parametrize("body,continuation,why", [
    (_page_of(["d/a", "e/x"]), None, "outside the prefix"),
    (_page_of(["d/a", "d/s/x"]), None, "inside a subdirectory"),
    (_page_of(["d/a"], ["e/"]), None, "not one of the prefix"),
    (_page_of(["d/a"], ["d/s"]), None, "not one of the prefix"),
    (_page_of(["d/a"], ["d/s/t/"]), None, "not one of the prefix"),
    (_page_of(["d/a"], token="T1"), "T1", "the same continuation token again"),
], ids=["outside", "in-subdir", "sub-outside", "sub-no-slash", "sub-nested", "same-token"])
def test_a_page_no_s3_could_send_is_not_believed(fixed_server, body, continuation, why, lean):
    """A merge believes a page covers every key from its first to its last:
    a page that cannot be a LIST of the prefix is an error, on either path,
    before anything of it reaches the index."""
    fixed_server.body = body
    backend = Backend(endpoint_url=fixed_server.url, credentials=KEYS)
    if not lean:
        backend.lean = None
    with pytest.raises(BackendError, match=why):
        list_page(backend, "bkt", "d/", "/", continuation)
    assert backend.lean_lists == (1 if lean else 0)


def test_a_sound_page_of_the_same_server_is_believed(fixed_server):
    """The positive control of the test above, in SeaweedFS's order (by path
    component: "d/s/" before "d/s%/", "d/s" before "d/s%"): a merge goes by
    a page's highest position, not by its order."""
    fixed_server.body = _page_of(["d/s", "d/s%", "d/b"], ["d/a/", "d/s/", "d/s%/"], token="T2")
    backend = Backend(endpoint_url=fixed_server.url, credentials=KEYS)
    entries, subdirs, token = list_page(backend, "bkt", "d/", "/", "T1")
    assert [e.key for e in entries] == ["d/s", "d/s%", "d/b"]
    assert subdirs == ["d/a/", "d/s/", "d/s%/"] and token == "T2"


async def test_a_listing_whose_pages_go_back_ends_with_an_error(tmp_path):
    """A server whose next page does not go on after the last (a token that
    leads back) would have a directory listed for ever: the LIST ends with
    an error at the first page that goes back, and the index keeps what it
    had."""
    from fakes import FakeBackend
    from s3pool.listing.listings import Listings
    from s3pool.store.layout import Layout

    backend = FakeBackend(buckets=("bkt",))
    for i in range(2500):
        backend.put("bkt", f"d/k{i:05d}", b"")
    listings = Listings(Layout.create(str(tmp_path)), backend)
    await listings.fresh("bkt", "d/", False, 60)
    sound = [e.name for e in listings.iter_children("bkt", "d/")]
    assert len(sound) == 2500
    pages = 0
    answer = backend.client.list_objects_v2

    def going_back(**params):
        nonlocal pages
        pages += 1
        if pages > 10:
            raise AssertionError("the listing went on for ever")
        params.pop("ContinuationToken", None)  # every page is the first again...
        page = answer(**params)
        return page | {"NextContinuationToken": f"T{pages}"}  # ...with a new token

    backend.client.list_objects_v2 = going_back
    job = await listings.fresh("bkt", "d/", False, 0)
    assert job is not None and isinstance(job.error, BackendError)
    assert "does not go on after" in str(job.error)
    assert pages == 2
    assert [e.name for e in listings.iter_children("bkt", "d/")] == sound


async def test_an_empty_page_in_the_middle_of_a_listing_loses_no_key(tmp_path):
    """S3 may answer a page with no key that goes on (past deleted versions):
    the pages after it go on from where the last key was, and the keys of
    the pages before it stay in the index."""
    from fakes import FakeBackend
    from s3pool.listing.listings import Listings
    from s3pool.s3.listparse import FAST_ENTRIES, FAST_PREFIXES
    from s3pool.store.layout import Layout

    backend = FakeBackend(buckets=("bkt",))
    for i in range(2500):
        backend.put("bkt", f"d/k{i:05d}", b"")
    answer = backend.client.list_objects_v2
    asked: list[str | None] = []

    def with_an_empty_page(**params):
        token = params.get("ContinuationToken")
        asked.append(token)
        if len(asked) == 2:  # the second page is an empty one, before the real second
            return {FAST_ENTRIES: [], FAST_PREFIXES: [], "IsTruncated": True,
                    "NextContinuationToken": f"E{token}"}
        if token is not None and token.startswith("E"):
            params["ContinuationToken"] = token[1:]
        return answer(**params)

    backend.client.list_objects_v2 = with_an_empty_page
    listings = Listings(Layout.create(str(tmp_path)), backend)
    job = await listings.fresh("bkt", "d/", False, 0)
    assert job is not None and job.error is None, job.error
    assert len(asked) == 4  # three pages and the empty one
    assert len([e.name for e in listings.iter_children("bkt", "d/")]) == 2500
    asked.clear()
    job = await listings.fresh("bkt", "d/", False, 0)  # again, over a full index
    assert job is not None and job.error is None
    assert len(asked) == 4
    assert len([e.name for e in listings.iter_children("bkt", "d/")]) == 2500


async def test_a_listing_of_empty_pages_for_ever_ends_with_an_error(tmp_path):
    from fakes import FakeBackend
    from s3pool.listing.listings import Listings
    from s3pool.s3.listpages import EMPTY_PAGES_MAX
    from s3pool.s3.listparse import FAST_ENTRIES, FAST_PREFIXES
    from s3pool.store.layout import Layout

    backend = FakeBackend(buckets=("bkt",))
    backend.put("bkt", "d/k", b"")
    pages = 0

    def empty_for_ever(**params):
        nonlocal pages
        pages += 1
        if pages > EMPTY_PAGES_MAX + 10:
            raise AssertionError("the listing went on for ever")
        return {FAST_ENTRIES: [], FAST_PREFIXES: [], "IsTruncated": True,
                "NextContinuationToken": f"T{pages}"}

    backend.client.list_objects_v2 = empty_for_ever
    listings = Listings(Layout.create(str(tmp_path)), backend)
    job = await listings.fresh("bkt", "d/", False, 0)
    assert job is not None and isinstance(job.error, BackendError), job.error
    assert pages == EMPTY_PAGES_MAX + 1
