"""Values at the edge of what a listing may hold: a key dated in the year
9999 (the latest a timestamp parses to; a gateway may send it) is listed,
looked up and read; a size below 0 or past what a file can have
(st_size is a signed 64-bit count) makes the page not believed
(s3/listpages.py page_of).

Over the real cache and ops with the in-memory S3 (tests/fakes.py), and a
real Backend against a loopback server that answers one fixed page."""

from __future__ import annotations

import pytest

from s3pool.errors import BackendError
from s3pool.listing.listings import list_page
from s3pool.s3.backend import Backend
from test_fs_ops_unit import Ctx, Mount, Token, backend, make_mount  # noqa: F401 (fixtures)
from test_listparse_unit import KEYS, NS, fixed_server, item  # noqa: F401 (a fixture)

pytestmark = pytest.mark.unit

YEAR_9999 = 253402300799  # 9999-12-31T23:59:59Z
SIZE_MAX = (1 << 63) - 1


async def test_a_key_dated_in_the_year_9999_is_listed_and_read(make_mount, backend):  # noqa: F811
    backend._clock = YEAR_9999 - 1  # the next write is dated then
    backend.put("bucket", "dir/future.txt", b"from the future")
    m: Mount = await make_mount()
    assert await m.listdir("bucket/dir") == ["a.txt", "b.bin", "future.txt", "sub"]
    attrs = await m.lookup("bucket/dir/future.txt")
    assert abs(attrs.st_mtime_ns - YEAR_9999 * 10**9) < 10**6
    assert attrs.st_size == len(b"from the future")
    token = Token()
    fh = await m.ops.opendir((await m.lookup("bucket/dir")).st_ino, Ctx())
    await m.ops.readdir(fh, 0, token)
    await m.ops.releasedir(fh)
    assert [name for name, _, _ in token.entries] == ["a.txt", "b.bin", "future.txt", "sub"]
    assert await m.read_file("bucket/dir/future.txt") == b"from the future"


def _page(size: int) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{NS}">'
            "<Name>bkt</Name><Prefix>d/</Prefix><IsTruncated>false</IsTruncated>"
            + item("d/a") + item("d/b", size=size) + "</ListBucketResult>").encode()


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "boto3"])
@pytest.mark.parametrize("size", [-1, 1 << 63, 10 ** 30])
def test_a_page_with_a_size_no_file_has_is_not_believed(fixed_server, size, lean):  # noqa: F811
    fixed_server.body = _page(size)
    s3 = Backend(endpoint_url=fixed_server.url, credentials=KEYS)
    if not lean:
        s3.lean = None
    with pytest.raises(BackendError, match="size"):
        list_page(s3, "bkt", "d/", "/", None)


def test_the_largest_size_a_file_can_have_is_believed(fixed_server):  # noqa: F811
    fixed_server.body = _page(SIZE_MAX)
    s3 = Backend(endpoint_url=fixed_server.url, credentials=KEYS)
    entries, _, _ = list_page(s3, "bkt", "d/", "/", None)
    assert [e.size for e in entries] == [1, SIZE_MAX]


async def test_a_name_with_a_nul_byte_is_not_shown(make_mount, backend):  # noqa: F811
    """A key may hold a NUL (sent URL-encoded, %00); no file name can: the
    kernel would cut the name there and show "a", a file that is not
    there (or another one). PULL refuses such a key as ever (BadKey)."""
    backend.put("bucket", "dir/a\x00b", b"x")
    backend.put("bucket", "dir/c\x00d/e", b"x")
    m: Mount = await make_mount()
    assert await m.listdir("bucket/dir") == ["a.txt", "b.bin", "sub"]
