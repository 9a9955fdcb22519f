"""Unit tests of the shared cache tier's addressing, metadata and backoff (tier.py).
The tier's behaviour with real daemons is in test_shared_tier_e2e.py."""

from __future__ import annotations

import threading

import pytest

from s3pool.download import tier as tiermod
from s3pool.download.tier import SharedTier, parse_tier_url, tier_key, tier_metadata
from s3pool.s3.inflight import S3Requests

pytestmark = pytest.mark.unit


class FakeBackend:
    def __init__(self) -> None:
        self.requests = S3Requests(threading.Event())
        self.endpoint_url = "http://tier.invalid"

    def describe(self) -> str:
        return self.endpoint_url


def test_parse_tier_url():
    assert parse_tier_url("s3://cache/fleet") == ("cache", "fleet/")
    assert parse_tier_url("s3://cache/a/b/") == ("cache", "a/b/")
    assert parse_tier_url("s3://cache") == ("cache", "")
    for bad in ("cache/fleet", "http://cache/x", "s3:///x", "s3://c/x?y=1"):
        with pytest.raises(ValueError):
            parse_tier_url(bad)


def test_tier_key_is_by_version_not_by_name():
    one = tier_key("p/", "b", "k", '"0123456789abcdef0123456789abcdef"')
    assert one.startswith("p/") and len(one) == 2 + 64
    assert one == tier_key("p/", "b", "k", "0123456789abcdef0123456789abcdef")  # quotes
    assert one != tier_key("p/", "b", "k", '"f123456789abcdef0123456789abcdef"')  # new version
    assert one != tier_key("p/", "b2", "k", '"0123456789abcdef0123456789abcdef"')
    assert one != tier_key("p/", "b", "k2", '"0123456789abcdef0123456789abcdef"')
    # no ambiguity between (b, "k\0x") and (b + "\0k", "x")-style splits of the fields
    assert tier_key("", "b", "k", "e") != tier_key("", "b", "k\0e", "")


def test_tier_metadata_carries_the_origin_version():
    meta = {"ETag": '"abc"', "ContentLength": 12, "ContentType": "text/plain; charset=utf-8",
            "LastModified": "Sun, 06 Dec 2026 15:00:00 GMT",
            "ChecksumCRC64NVME": "AAAAAAAAAAA=", "ChecksumType": "FULL_OBJECT"}
    out = tier_metadata("bkt", "dir/ké y", meta)
    assert out["s3pool-etag"] == "abc" and out["s3pool-size"] == "12"
    assert out["s3pool-bucket"] == "bkt" and out["s3pool-key"] == "dir/k%C3%A9%20y"
    assert out["s3pool-checksumcrc64nvme"] == "AAAAAAAAAAA="
    assert all(value.isascii() for value in out.values())
    assert "s3pool-key" not in tier_metadata("b", "x" * 1100, meta)  # too long for metadata


def test_backoff_after_failures_in_a_row(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(tiermod.time, "monotonic", lambda: now[0])
    shared = SharedTier(FakeBackend(), "cache", "p/", FakeBackend())
    for _ in range(tiermod.FAILURES_BEFORE_BACKOFF - 1):
        shared.failed("b", "k", "boom")
    assert shared.usable()
    shared._worked()  # an answer in between: the count starts again
    for _ in range(tiermod.FAILURES_BEFORE_BACKOFF - 1):
        shared.failed("b", "k", "boom")
    assert shared.usable()
    shared.failed("b", "k", "boom")
    assert not shared.usable()
    now[0] += tiermod.BACKOFF_FIRST + 1
    assert shared.usable()
    shared.failed("b", "k", "boom")  # still failing: skipped twice as long
    assert not shared.usable()
    now[0] += tiermod.BACKOFF_FIRST + 1
    assert not shared.usable()
    now[0] += tiermod.BACKOFF_FIRST
    assert shared.usable()
    assert shared.fallbacks == 2 * (tiermod.FAILURES_BEFORE_BACKOFF - 1) + 2
