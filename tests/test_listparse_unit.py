"""LIST pages parsed once (s3/listparse.py): the fast parser runs before
botocore's check for an error inside a 200 answer, so a page's body is not
parsed twice, and that check still sees every answer that is not a listing
(an ``<Error>`` root, a body cut short) as it always did.

Against moto's server over HTTP, and a loopback server that answers every
request with one fixed 200 body."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import botocore.handlers
import pytest

from s3pool.errors import BackendError
from s3pool.listing.listings import list_page
from s3pool.s3.backend import Backend

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


@pytest.fixture
def fixed_server() -> Iterator[type[_Fixed]]:
    handler = type("Handler", (_Fixed,), {"asked": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


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
    assert fixed_server.asked > 1  # botocore retried it as a 500, as it always has
