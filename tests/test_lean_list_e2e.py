"""LIST pages on the lean path (s3/lean.py ``list_body``, backend
``list_objects_v2``): signed by botocore's signer, sent on s3pool's own
connections, read by s3pool's parser; anything unusual is asked again
through boto3.

A query S3 signs differently would not show as a failure (boto3 would
take over and the listing would still be right), so these tests count
the pages each path read (STATUS s3_lean_lists / s3_lean_list_fallbacks)
against a server that checks signatures (the embedded SeaweedFS), and
compare every page with boto3's for the same request."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import free_port_block
from s3pool.errors import BackendError
from s3pool.listing.listings import list_page
from s3pool.s3.backend import Backend
from test_embedded_e2e import DemoDaemon, s3_client
from test_lean_get_e2e import AWKWARD_KEYS

pytestmark = pytest.mark.e2e

BUCKET = "s3pool-demo"
# prefixes and StartAfter values with every kind of byte a query must encode
AWKWARD_DIRS = ["dir with space/", "a+b=c&d/", "pct%2F~x/", "été 中文/", "semi;colon,#/"]
MANY = 1050  # keys of one directory: two pages, the second asked with a token
# a directory SeaweedFS pages by path component: its first page ends with
# pct/ (after 999 files), its second holds pct%2F/ and pct.txt, which sort
# before pct/ in S3's byte order
ORDER_DIR = "order dir/"
ORDER_KEYS = [*(f"{ORDER_DIR}a{i:05d}" for i in range(999)),
              f"{ORDER_DIR}pct/x", f"{ORDER_DIR}pct%2F/y", f"{ORDER_DIR}pct.txt"]


def _pages(backend: Backend, prefix: str, delimiter: str | None,
           start_after: str | None = None) -> list[tuple[list, list[str]]]:
    """Every page of a LIST, token after token."""
    pages = []
    token = None
    while True:
        entries, subdirs, token = list_page(backend, BUCKET, prefix, delimiter, token,
                                            start_after=start_after)
        pages.append(([tuple(e) for e in entries], subdirs))
        if token is None:
            return pages


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Iterator[tuple[DemoDaemon, dict[str, str]]]:
    daemon = DemoDaemon(tmp_path_factory.mktemp("leanlist"), free_port_block()).start()
    try:
        status = daemon.status()
        s3 = s3_client(status)
        keys = [*AWKWARD_KEYS,
                *(f"{d}{name}" for d in AWKWARD_DIRS for name in ("x+1 y", "é", "sub/deep"))]
        keys += [f"many dir/k{i:05d}" for i in range(MANY)] + ORDER_KEYS
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda key: s3.put_object(Bucket=BUCKET, Key=key, Body=b"v"), keys))
        yield daemon, status
    finally:
        daemon.stop()


def _backends(status: dict[str, str]) -> tuple[Backend, Backend]:
    credentials = {"aws_access_key_id": status["embedded_s3_access_key_id"],
                   "aws_secret_access_key": status["embedded_s3_secret_access_key"]}
    lean = Backend(endpoint_url=status["embedded_s3_endpoint"], credentials=credentials)
    boto = Backend(endpoint_url=status["embedded_s3_endpoint"], credentials=credentials)
    boto.lean = None
    assert lean.lean is not None
    return lean, boto


def test_lean_pages_are_botos_on_a_server_that_checks_signatures(demo):
    _, status = demo
    lean, boto = _backends(status)
    cases = [(d, "/", None) for d in AWKWARD_DIRS]
    cases += [(d, None, None) for d in AWKWARD_DIRS]
    cases += [("", "/", None), ("", None, None), ("many dir/", "/", None),
              ("many dir/", "/", "many dir/k00999"), ("", None, "été"),
              ("a+b=c&d/", "/", "a+b=c&d/x+1 y")]
    for prefix, delimiter, start_after in cases:
        got = _pages(lean, prefix, delimiter, start_after)
        assert got == _pages(boto, prefix, delimiter, start_after), (prefix, delimiter)
        assert got[0][0] or got[0][1], (prefix, delimiter, start_after)
    # the long listings went on with tokens, on the lean path too
    assert len(_pages(lean, "many dir/", "/")) == 2
    assert len(_pages(lean, "", None)) >= 2
    assert lean.lean_list_fallbacks == 0 and boto.lean_lists == 0
    assert lean.lean_lists >= len(cases) + 3, lean.lean_lists


def test_the_daemon_lists_on_the_lean_path(demo):
    """GLOB of a literal prefix lists it again (listing_freshness 0): on the
    lean path, every page, the right names."""
    daemon, _ = demo
    daemon.ok("SET", "listing_freshness", "0")
    before = daemon.status()
    got = daemon.ok("GLOB", BUCKET, "a+b=c&d/*")
    assert sorted(got) == ["a+b=c&d/x+1 y", "a+b=c&d/é"], got
    assert len(daemon.ok("GLOB", BUCKET, "many dir/k0*")) == MANY
    after = daemon.status()
    assert int(after["s3_lean_lists"]) - int(before["s3_lean_lists"]) >= 3
    assert after["s3_lean_list_fallbacks"] == "0"


async def test_a_directory_sent_by_path_component_is_listed_whole(demo, tmp_path):
    """SeaweedFS sends pct/ at the end of one page, and pct%2F/ and pct.txt
    (before it in bytes) on the next: the listing neither ends as one that
    goes back nor drops pct%2F/'s keys from the index."""
    from s3pool.listing.listings import Listings
    from s3pool.store.layout import Layout

    _, status = demo
    lean, _ = _backends(status)
    pages = _pages(lean, ORDER_DIR, "/")
    assert [subdirs for _, subdirs in pages] == [[f"{ORDER_DIR}pct/"], [f"{ORDER_DIR}pct%2F/"]]
    assert [key for key, *_ in pages[1][0]] == [f"{ORDER_DIR}pct.txt"]
    listings = Listings(Layout.create(str(tmp_path)), lean)
    job = await listings.fresh(BUCKET, f"{ORDER_DIR}pct%2F/", False, 0)
    assert job is not None and job.error is None, job.error
    job = await listings.fresh(BUCKET, ORDER_DIR, False, 0)
    assert job is not None and job.error is None, job.error
    names = [e.name + "/" * e.is_dir for e in listings.iter_children(BUCKET, ORDER_DIR)]
    rests = [k[len(ORDER_DIR):] for k in ORDER_KEYS]
    assert names == sorted({r.partition("/")[0] + "/" * r.count("/") for r in rests})
    assert [e.name for e in listings.iter_children(BUCKET, f"{ORDER_DIR}pct%2F/")] == ["y"]


def test_the_whole_bucket_is_listed_on_the_lean_path(demo):
    """A refresh lists the whole bucket page by page on the lean path, and
    GLOB of every key answers from it: every key, in key order, though
    SeaweedFS sends them by path component (order dir/pct/x before
    order dir/pct%2F/y and order dir/pct.txt)."""
    daemon, status = demo
    before = daemon.status()
    daemon.ok("REFRESH", BUCKET)
    after = daemon.status()
    lean, _ = _backends(status)
    pages = _pages(lean, "", None)
    assert len(pages) >= 3
    assert int(after["s3_lean_lists"]) - int(before["s3_lean_lists"]) >= len(pages)
    assert after["s3_lean_list_fallbacks"] == "0"
    keys = [key for entries, _ in pages for key, *_ in entries]
    assert keys != sorted(keys)  # SeaweedFS's order
    daemon.ok("SET", "listing_freshness", "3600")
    assert daemon.ok("GLOB", BUCKET, "**") == sorted(keys)
    assert daemon.ok("GLOB", BUCKET, "*/**") == sorted(k for k in keys if "/" in k)


class _RawServer:
    """Answers every request on loopback with fixed raw bytes (framing a
    well-behaved server would never send), then closes the connection."""

    def __init__(self, answer: bytes, hold: threading.Event | None = None) -> None:
        self.answer = answer
        self.hold = hold  # set: the connection is held open after the answer until then
        self.asked = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.asked += 1
                conn.sendall(self.answer)
                if self.hold is not None:
                    self.hold.wait(60)

    def close(self) -> None:
        self.sock.close()


PAGE = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult '
        b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name>'
        b"<IsTruncated>false</IsTruncated><Contents><Key>a</Key>"
        b"<LastModified>2026-12-06T15:33:14.000Z</LastModified><ETag>&quot;x&quot;</ETag>"
        b"<Size>1</Size></Contents></ListBucketResult>")
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def _answer(body: bytes, length: int) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\n"
            + f"Content-Length: {length}\r\n\r\n".encode() + body)


@pytest.mark.parametrize("answer", [
    # a second answer smuggled right behind the page
    _answer(PAGE, len(PAGE)) + _answer(PAGE.replace(b"<Key>a", b"<Key>evil"), len(PAGE) + 3),
    # two different lengths
    (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Length: 5\r\n\r\n" % len(PAGE)) + PAGE,
], ids=["bytes-behind", "two-lengths"])
def test_a_page_whose_framing_lies_is_refused(answer):
    server = _RawServer(answer)
    try:
        backend = Backend(endpoint_url=server.url, credentials=KEYS)
        assert backend.lean is not None
        with pytest.raises(BackendError):
            list_page(backend, "bkt", "", "/", None)
        assert backend.lean_lists == 0
    finally:
        server.close()


def test_a_page_cut_short_is_asked_again_through_boto3():
    """A Content-Length longer than what came: not a listing of what did
    come; boto3 asks again (and fails the same way here, with retries)."""
    server = _RawServer(_answer(PAGE[:-40], len(PAGE)))
    try:
        backend = Backend(endpoint_url=server.url, credentials=KEYS)
        with pytest.raises(BackendError):
            list_page(backend, "bkt", "", "/", None)
        assert backend.lean_lists == 0 and backend.lean_list_fallbacks == 1
        assert server.asked > 2  # the lean request, then boto3's and its retries
    finally:
        server.close()


def test_a_plain_page_is_read_on_the_lean_path():
    """The positive control of the two tests above: the same server with an
    honest answer gives the page, on the lean path."""
    server = _RawServer(_answer(PAGE, len(PAGE)))
    try:
        backend = Backend(endpoint_url=server.url, credentials=KEYS)
        entries, subdirs, token = list_page(backend, "bkt", "", "/", None)
        assert [e.key for e in entries] == ["a"] and subdirs == [] and token is None
        assert backend.lean_lists == 1 and server.asked == 1
    finally:
        server.close()


def test_a_page_that_stalls_past_the_deadline_is_an_error_not_asked_again():
    """Headers and part of the body, then nothing: the deadline watchdog
    ends the request, and the listing fails with its reason at once (boto3
    would wait as long again)."""
    hold = threading.Event()
    server = _RawServer(_answer(PAGE[:100], len(PAGE)), hold)
    try:
        backend = Backend(endpoint_url=server.url, credentials=KEYS)
        backend.requests.set_deadline(1.0, 1 << 20)
        with pytest.raises(BackendError, match="S3 request ended"):
            list_page(backend, "bkt", "", "/", None)
        assert server.asked == 1 and backend.requests.expired == 1
        assert backend.lean_list_fallbacks == 0
    finally:
        hold.set()
        server.close()
