"""The checks of S3's answers in s3pool/s3/backend.py (issue 16): a ranged answer is
the range asked of the version pinned, a whole answer a 200, an ETag sent back
a legal header value. Pure checks first, then against moto's server."""

from __future__ import annotations

import pytest

from s3pool.errors import BackendError, VersionChanged
from s3pool.s3.answers import check_answer, check_etag, check_range
from s3pool.s3.backend import Backend

pytestmark = pytest.mark.unit

ETAG = '"0123456789abcdef0123456789abcdef"'


def ranged(status=206, content_range="bytes 100-199/1000", length=100, etag=ETAG):
    return {"ResponseMetadata": {"HTTPStatusCode": status}, "ContentRange": content_range,
            "ContentLength": length, "ETag": etag}


def test_the_range_asked_passes():
    check_range(ranged(), "b", "k", ETAG, 100, 100, 1000)
    # unquoted by a tier: the same validator
    check_range(ranged(etag=ETAG.strip('"')), "b", "k", ETAG, 100, 100, 1000)
    # chunked (no Content-Length): counted as it comes
    check_range(ranged(length=None), "b", "k", ETAG, 100, 100, 1000)


@pytest.mark.parametrize("answer", [
    ranged(content_range="bytes 101-200/1000"),  # another range
    ranged(content_range="bytes 100-199/2000"),  # another object size
    ranged(content_range="bytes 100-199/*"),
    ranged(content_range=None),
    ranged(length=1100),  # the bytes of a longer range
    ranged(status=200, content_range=None, length=1000),  # the whole, not asked
    ranged(status=416),
])
def test_any_other_answer_to_a_range_is_refused(answer):
    with pytest.raises(BackendError) as raised:
        check_range(answer, "b", "k", ETAG, 100, 100, 1000)
    assert not isinstance(raised.value, VersionChanged)


def test_a_200_is_the_answer_when_the_whole_object_was_asked():
    whole = ranged(status=200, content_range=None, length=1000)
    check_range(whole, "b", "k", ETAG, 0, 1000, 1000)
    with pytest.raises(BackendError):  # ... of this length only
        check_range(ranged(status=200, content_range=None, length=999), "b", "k", ETAG,
                    0, 1000, 1000)


def test_another_etag_is_a_changed_version():
    with pytest.raises(VersionChanged):
        check_range(ranged(etag='"ffffffffffffffffffffffffffffffff"'), "b", "k", ETAG,
                    100, 100, 1000)


@pytest.mark.parametrize("etag", [
    '"abc\nX-Injected: 1"', '"abc\rX: y"', '"abc\x01"', '"abc', 'abc"', '"a"b"', '"é"',
    "x" * 2000,
])
def test_an_etag_that_is_no_legal_header_value_is_refused(etag):
    with pytest.raises(BackendError, match="not a legal header value"):
        check_etag(etag, "s3://b/k")


@pytest.mark.parametrize("etag", [ETAG, '"abc-12"', "abc", 'W/"abc"', '""'])
def test_etags_as_s3_and_tiers_send_them_pass(etag):
    check_etag(etag, "s3://b/k")


def test_a_whole_get_must_be_a_200_without_a_range():
    check_answer(ranged(status=200, content_range=None, length=5), "b", "k")
    with pytest.raises(BackendError):
        check_answer(ranged(), "b", "k")
    with pytest.raises(BackendError):
        check_answer(ranged(status=200, content_range=None, etag='"a\rb"'), "b", "k")


async def test_an_illegal_cached_etag_is_not_sent_back(moto_server, s3, bucket):
    """A copy cached before ETags were checked: its ETag is never sent as
    If-None-Match; the object is fetched again unconditionally."""
    s3.put_object(Bucket=bucket, Key="k", Body=b"fresh bytes")
    backend = Backend(endpoint_url=moto_server.endpoint,
                      credentials={"aws_access_key_id": "testing",
                                   "aws_secret_access_key": "testing"})
    before = len(moto_server.app.requests)
    response = await backend.get_object(bucket, "k", if_none_match='"abc\r\nX-Injected: 1"',
                                        read_up_to=1 << 20)
    assert response is not None and response.data == b"fresh bytes"
    sent = [r for r in moto_server.app.requests[before:] if r["method"] == "GET"]
    assert [r["if_none_match"] for r in sent] == [None]
    assert backend.lean_gets == 1  # on the lean path, which signs what it sends
