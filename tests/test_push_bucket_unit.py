"""PUSH asks whether the bucket exists before uploading (s3pool/upload/push.py)."""

from __future__ import annotations

import pytest
import trio

from fakes import FakeBackend
from s3pool.errors import AccessDenied, NoSuchBucket
from s3pool.upload.push import BUCKET_CONFIRMED_FOR, check_bucket_exists

pytestmark = pytest.mark.unit


def heads(backend: FakeBackend) -> list[str]:
    """The buckets asked about (HeadBucket), in order."""
    return [bucket for kind, bucket, _ in backend.log if kind == "bucket_exists"]


async def test_a_yes_is_remembered_a_no_is_not(autojump_clock):
    backend = FakeBackend(buckets=("real",))
    await check_bucket_exists(backend, "real")
    await check_bucket_exists(backend, "real")
    assert heads(backend) == ["real"]
    for _ in range(2):
        with pytest.raises(NoSuchBucket, match="no such bucket: typo"):
            await check_bucket_exists(backend, "typo")
    assert heads(backend) == ["real", "typo", "typo"]
    backend.buckets.add("typo")  # made meanwhile: found at the next PUSH
    await check_bucket_exists(backend, "typo")
    await trio.sleep(BUCKET_CONFIRMED_FOR + 1)  # asked again after a while
    backend.buckets.discard("real")
    with pytest.raises(NoSuchBucket):
        await check_bucket_exists(backend, "real")


async def test_a_head_we_may_not_make_leaves_it_to_the_upload():
    backend = FakeBackend(buckets=())
    backend.fail("bucket_exists", AccessDenied("access denied: write-only"))
    await check_bucket_exists(backend, "write-only")
    assert heads(backend) == ["write-only"]
