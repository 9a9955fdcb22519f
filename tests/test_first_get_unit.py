"""Every GET body a download opens is read to its end (issue 22, last point).

The first GET of a miss asks for the whole object and its body is streamed
on while ranged GETs fetch the other parts: once they take over, the body
is closed with most of the object unsent, which an S3 server logs as
"connection reset by peer" (the demo S3's log fills with them on large
pulls). The fix: Backend.get_object(first_part=N) asks for bytes [0, N)
only and makes the answer stand for the whole object (size from
Content-Range, 416 of an empty object asked again whole), a Download
streams no further than its body's end, and the cache asks every first
GET for its first part only (first_part=download_part_size). The two
cache-level tests failed (one body cut each) before the cache asked so.

In-process over moto's server (real HTTP); GET bodies the client closed
before their end are counted on the server's side (conftest's
CountingApp.bodies_cut).
"""

from __future__ import annotations

import http.client
import os
from urllib.parse import urlsplit

import pytest
import trio

from conftest import wait_until
from s3pool.cache import SMALL_OBJECT, Cache
from s3pool.errors import BackendError
from s3pool.s3.answers import check_first_part
from s3pool.s3.backend import Backend
from s3pool.s3.progress import Transfer
from s3pool.settings import Settings
from s3pool.store.layout import Layout
from s3pool.store.objects import Store

pytestmark = pytest.mark.unit

PART = 1 << 20
ETAG = '"0123456789abcdef0123456789abcdef"'


def moto_backend(moto_server) -> Backend:
    return Backend(endpoint_url=moto_server.endpoint,
                   credentials={"aws_access_key_id": "testing",
                                "aws_secret_access_key": "testing"})


def bodies_cut(moto_server, bucket: str, key: str) -> int:
    """GET bodies of the key cut by the client, once every GET body has ended."""
    app = moto_server.app
    wait_until(lambda: app.gets_in_flight == 0, what="every GET body to end")
    return app.bodies_cut.get(f"/{bucket}/{key}", 0)


def test_the_count_sees_a_body_closed_midway(moto_server, s3, bucket):
    # the positive control: a client that reads 100 bytes of 12 MiB and hangs up
    s3.put_object(Bucket=bucket, Key="big", Body=os.urandom(12 * PART))
    url = urlsplit(s3.generate_presigned_url("get_object",
                                             Params={"Bucket": bucket, "Key": "big"}))
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request("GET", f"{url.path}?{url.query}")
    answer = conn.getresponse()
    assert answer.status == 200 and len(answer.read(100)) == 100
    answer.close()  # the socket goes with it
    conn.close()
    assert bodies_cut(moto_server, bucket, "big") == 1


async def test_a_first_part_get_stands_for_the_whole_object(moto_server, s3, bucket,
                                                            tmp_path):
    objects = {"empty": b"", "small": os.urandom(1000), "one-part": os.urandom(700 << 10),
               "exact": os.urandom(PART), "three-parts": os.urandom(3 * PART - 5)}
    backend = moto_backend(moto_server)
    for key, data in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        response = await backend.get_object(bucket, key, read_up_to=SMALL_OBJECT,
                                            first_part=PART)
        assert response is not None
        assert response.content_length == len(data), key  # the object's, not the range's
        assert response.digest is not None, key  # the whole object's (its ETag's MD5)
        if response.data is not None:  # small: read whole with the headers
            got = response.data
            assert response.body_length is None
        else:
            carried = response.body_length or len(data)
            assert carried == min(PART, len(data)), key
            fd = os.open(tmp_path / key, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                assert await backend.read_body_part(
                    response.body, fd, 0, carried, bucket, key,
                    Transfer(bucket, key, len(data), 0, 1)) == carried
                got = os.pread(fd, carried, 0)
            finally:
                response.body.close()
                os.close(fd)
        assert got == data[:PART], key
        # an empty object: a 416 (no byte 0), then asked whole; the others one GET
        assert moto_server.app.gets(bucket, key) == (2 if key == "empty" else 1), key
        assert bodies_cut(moto_server, bucket, key) == 0, key


async def test_a_part_answer_without_a_checksum_takes_the_heads(moto_server, s3, bucket):
    """S3 sends no x-amz-checksum with a ranged answer, even one that covers
    the whole object (moto does: they are taken out here, as S3 leaves them
    out). An object whose ETag is no MD5 (multipart, here of one part) is then
    checked by the full-object checksum of a HEAD of the same version, small
    or large; one with an MD5 ETag needs no HEAD."""
    def multipart_crc32(key: str, data: bytes) -> str:
        upload = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32",
                                            ChecksumType="FULL_OBJECT")["UploadId"]
        part = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1,
                              Body=data, ChecksumAlgorithm="CRC32")
        s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload, ChecksumType="FULL_OBJECT",
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"],
                                        "ChecksumCRC32": part["ChecksumCRC32"]}]})
        return s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")["ChecksumCRC32"]

    backend = moto_backend(moto_server)
    real_get = backend._get

    def as_s3_answers(bucket_: str, key: str, conditions: dict[str, str]) -> dict:
        resp = real_get(bucket_, key, conditions)
        if "Range" in conditions:
            for name in [n for n in resp if n.startswith("Checksum")]:
                del resp[name]
        return resp

    backend._get = as_s3_answers
    for key, size in (("small", 1000), ("within-a-part", 700 << 10), ("parts", 3 * PART)):
        data = os.urandom(size)
        crc32 = multipart_crc32(key, data)
        heads = moto_server.app.count("HEAD", f"/{bucket}/{key}")
        response = await backend.get_object(bucket, key, read_up_to=SMALL_OBJECT,
                                            first_part=PART)
        assert response is not None
        if response.data is None:
            response.body.close()
        assert response.digest is not None, key
        assert response.digest.what == "x-amz-checksum CRC32", key
        assert response.meta["ChecksumCRC32"] == crc32, key
        assert moto_server.app.count("HEAD", f"/{bucket}/{key}") == heads + 1, key
    s3.put_object(Bucket=bucket, Key="md5", Body=os.urandom(1000))
    response = await backend.get_object(bucket, "md5", read_up_to=SMALL_OBJECT,
                                        first_part=PART)
    assert response is not None and response.digest is not None
    assert response.digest.what == "ETag MD5"
    assert moto_server.app.count("HEAD", f"/{bucket}/md5") == 0


def answer(status=206, content_range="bytes 0-99/1000", length=100, etag=ETAG):
    return {"ResponseMetadata": {"HTTPStatusCode": status}, "ContentRange": content_range,
            "ContentLength": length, "ETag": etag, "Body": None}


def test_a_first_part_answer_is_made_the_whole_objects():
    resp = answer()
    assert check_first_part(resp, "b", "k", 100) == 100
    assert resp["ContentLength"] == 1000 and "ContentRange" not in resp
    # the range covers the object: a whole answer
    resp = answer(content_range="bytes 0-49/50", length=50)
    assert check_first_part(resp, "b", "k", 100) is None and resp["ContentLength"] == 50
    # a server that ignored the range: the whole object, a 200's rules
    resp = answer(status=200, content_range=None, length=1000)
    assert check_first_part(resp, "b", "k", 100) is None and resp["ContentLength"] == 1000


@pytest.mark.parametrize("resp", [
    answer(content_range="bytes 1-100/1000"),  # another range
    answer(content_range="bytes 0-98/1000", length=99),  # shorter than asked
    answer(content_range="bytes 0-199/1000", length=200),  # longer than asked
    answer(content_range="bytes 0-99/*"),
    answer(content_range=None),
    answer(length=1000),  # the whole object's length under a part's range
    answer(status=200),  # a 200 with a Content-Range
    answer(status=416, content_range="bytes */1000"),
    answer(etag='"a\rb"'),
])
def test_a_first_part_answer_that_is_not_the_range_asked_is_refused(resp):
    with pytest.raises(BackendError):
        check_first_part(resp, "b", "k", 100)


@pytest.fixture
def cache(tmp_path, moto_server):
    store = Store(Layout.create(str(tmp_path / "home")))
    yield Cache(store, moto_backend(moto_server),
                Settings(download_part_size=PART, download_part_concurrency=4))
    store.access.close()


async def test_a_pull_of_many_parts_reads_every_body_to_its_end(cache, moto_server, s3,
                                                                bucket):
    data = os.urandom(12 * PART)
    s3.put_object(Bucket=bucket, Key="big", Body=data)
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        path = await cache.pull(bucket, "big")
        nursery.cancel_scope.cancel()
    with open(path, "rb") as f:
        assert f.read() == data
    assert moto_server.app.gets(bucket, "big") >= 2  # ranged GETs took over
    assert bodies_cut(moto_server, bucket, "big") == 0


async def test_a_sequential_reader_reads_every_body_to_its_end(cache, moto_server, s3,
                                                               bucket):
    data = os.urandom(12 * PART)
    s3.put_object(Bucket=bucket, Key="big", Body=data)
    got = bytearray()
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        reader = await cache.open(bucket, "big")  # as the mount's open() and `cat`
        try:
            while chunk := await reader.read(len(got), 128 << 10):
                got += chunk
        finally:
            reader.close()
        nursery.cancel_scope.cancel()
    assert bytes(got) == data
    assert bodies_cut(moto_server, bucket, "big") == 0
