"""PUSH asks whether the bucket exists before uploading (s3pool/upload/push.py)."""

from __future__ import annotations

import pytest
import trio

from s3pool.errors import AccessDenied, NoSuchBucket
from s3pool.upload.push import BUCKET_CONFIRMED_FOR, check_bucket_exists

pytestmark = pytest.mark.unit


class FakeBackend:
    def __init__(self, buckets: set[str], denied: bool = False) -> None:
        self.buckets = buckets
        self.denied = denied
        self.heads: list[str] = []

    async def bucket_exists(self, bucket: str) -> bool:
        self.heads.append(bucket)
        if self.denied:
            raise AccessDenied(f"access denied: {bucket}")
        return bucket in self.buckets


async def test_a_yes_is_remembered_a_no_is_not(autojump_clock):
    backend = FakeBackend({"real"})
    await check_bucket_exists(backend, "real")
    await check_bucket_exists(backend, "real")
    assert backend.heads == ["real"]
    for _ in range(2):
        with pytest.raises(NoSuchBucket, match="no such bucket: typo"):
            await check_bucket_exists(backend, "typo")
    assert backend.heads == ["real", "typo", "typo"]
    backend.buckets.add("typo")  # made meanwhile: found at the next PUSH
    await check_bucket_exists(backend, "typo")
    await trio.sleep(BUCKET_CONFIRMED_FOR + 1)  # asked again after a while
    backend.buckets.discard("real")
    with pytest.raises(NoSuchBucket):
        await check_bucket_exists(backend, "real")


async def test_a_head_we_may_not_make_leaves_it_to_the_upload():
    backend = FakeBackend(set(), denied=True)
    await check_bucket_exists(backend, "write-only")
    assert backend.heads == ["write-only"]
