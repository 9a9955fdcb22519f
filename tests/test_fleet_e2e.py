"""Many hosts, one bucket (issue 10), end to end: two daemons on one moto server.

- a published listing: one host lists and publishes, the other refreshes
  from it with no LIST reaching S3 (counted at the server), and both see
  the same keys; a missing, stale or damaged published listing falls back
  to a LIST;
- what s3pool needs behind a tier: ``ETag: ""`` is no validator, a body
  that fails its MD5 is fetched again, unquoted ETags still validate, and
  PUSH can go to its own endpoint.
"""

from __future__ import annotations

import gzip
import json
import os

import boto3
import pytest
from botocore.config import Config

from conftest import MotoServer
from fault_proxy import FaultProxy

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]

PUBLISHED = ".s3pool/listing.jsonl.gz"


@pytest.fixture
def proxy(moto_server):
    p = FaultProxy(moto_server.port)
    yield p
    p.stop()


def _plain_client(endpoint: str):
    """Objects with an ETag MD5 only (no x-amz-checksum): the ETag is what verifies."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(request_checksum_calculation="when_required"))


def _lists(moto_server, bucket: str) -> int:
    """ListObjectsV2 requests moto received for *bucket*."""
    with moto_server.app.lock:
        return sum(1 for r in moto_server.app.requests
                   if r["method"] == "GET" and r["path"].rstrip("/") == f"/{bucket}"
                   and "list-type=2" in r["query"])


def _fill(s3, bucket: str) -> set[str]:
    keys = {f"data/{d}/part-{i:03d}.csv" for d in ("a", "b") for i in range(30)}
    keys |= {"top.txt", "odd\tname with tab"}
    for key in sorted(keys):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    return keys


def test_second_host_refreshes_from_the_published_listing(start_daemon, moto_server, s3,
                                                          bucket, tmp_path):
    keys = _fill(s3, bucket)
    publisher = start_daemon(home=tmp_path / "a", args=["--publish-listing"])
    reader = start_daemon(home=tmp_path / "b", args=["--use-published-listing"], mount=True)

    publisher.ok("REFRESH", bucket)
    assert s3.head_object(Bucket=bucket, Key=PUBLISHED)["ContentLength"] > 0
    lists = _lists(moto_server, bucket)
    reader.ok("REFRESH", bucket)
    assert _lists(moto_server, bucket) == lists, "the reader's REFRESH sent a LIST to S3"

    assert set(publisher.ok("GLOB", bucket, "**")) == keys
    assert set(reader.ok("GLOB", bucket, "**")) == keys
    # s3pool's own object is in no listing, GLOB or mount
    assert set(reader.ok("GLOB", bucket, ".s3pool/*")) == set()
    for home in (publisher.home, reader.home):
        listed = (home / "data" / bucket / "__list__").read_text().splitlines()
        assert PUBLISHED not in listed and len(listed) == len(keys)
    root = os.listdir(reader.mountpoint / bucket)
    assert sorted(root) == ["data", "odd\tname with tab", "top.txt"]
    assert not os.path.exists(reader.mountpoint / bucket / ".s3pool")
    status = reader.status()
    assert status["listing_source"] == "published"
    assert status["published_listings_used"] == "1"

    # a key PUSHed on the reader shows there at once, on the publisher after it lists,
    # and stays on the reader across a refresh from a listing taken before the PUSH
    pushed = tmp_path / "pushed.bin"
    pushed.write_bytes(b"new")
    reader.ok("PUSH", bucket, "data/c/new.bin", str(pushed))
    reader.ok("REFRESH", bucket)  # 304: the published listing has not changed
    assert "data/c/new.bin" in reader.ok("GLOB", bucket, "data/c/*")
    assert reader.status()["published_listings_unchanged"] == "1"
    assert publisher.ok("GLOB", bucket, "data/c/*") == []
    # the same listing (taken before the PUSH) published again as other bytes: the
    # reader installs it and keeps the key it knows to be newer than that listing
    old = s3.get_object(Bucket=bucket, Key=PUBLISHED)
    s3.put_object(Bucket=bucket, Key=PUBLISHED, Metadata=old["Metadata"],
                  Body=gzip.compress(gzip.decompress(old["Body"].read()), compresslevel=1))
    reader.ok("REFRESH", bucket)
    assert reader.status()["published_listings_used"] == "2"
    assert "data/c/new.bin" in reader.ok("GLOB", bucket, "data/c/*")
    publisher.ok("REFRESH", bucket)
    lists = _lists(moto_server, bucket)
    reader.ok("REFRESH", bucket)
    assert _lists(moto_server, bucket) == lists
    assert set(reader.ok("GLOB", bucket, "**")) == set(publisher.ok("GLOB", bucket, "**")) \
        == keys | {"data/c/new.bin"}

    # a key deleted on S3 goes from both once the publisher has listed again
    s3.delete_object(Bucket=bucket, Key="top.txt")
    publisher.ok("REFRESH", bucket)
    reader.ok("REFRESH", bucket)
    assert "top.txt" not in reader.ok("GLOB", bucket, "*")
    assert _lists(moto_server, bucket) == lists + 1  # the publisher's one
    # the reader's conditional GETs of the published listing: 304 once, 200 otherwise
    published_path = f"/{bucket}/{PUBLISHED}"
    assert moto_server.app.count("GET", published_path, 304) == 1
    assert moto_server.app.count("GET", published_path, 200) == 4 + 1  # + the test's own


def test_missing_stale_or_damaged_published_listing_falls_back_to_list(
        start_daemon, moto_server, s3, bucket, tmp_path):
    keys = _fill(s3, bucket)
    reader = start_daemon(home=tmp_path / "b", args=["--use-published-listing"])

    lists = _lists(moto_server, bucket)  # missing: the reader lists for itself
    assert set(reader.ok("GLOB", bucket, "**")) == keys
    assert _lists(moto_server, bucket) == lists + 1

    publisher = start_daemon(home=tmp_path / "a", args=["--publish-listing"])
    publisher.ok("REFRESH", bucket)
    lists = _lists(moto_server, bucket)
    reader.ok("REFRESH", bucket)
    assert _lists(moto_server, bucket) == lists

    # stale: nothing newer was published (304) and it is older than the bound
    reader.ok("SET", "published_listing_max_age", "0")
    reader.ok("REFRESH", bucket)
    assert _lists(moto_server, bucket) == lists + 1
    # stale when fetched (its listed_at, header and metadata) on a fresh host
    fresh = start_daemon(home=tmp_path / "c",
                         args=["--use-published-listing", "--published-listing-max-age", "0"])
    fresh.ok("REFRESH", bucket)
    assert _lists(moto_server, bucket) == lists + 2
    assert set(fresh.ok("GLOB", bucket, "**")) == keys

    # damaged: a header that says more keys than it holds, then no gzip at all
    reader.ok("SET", "published_listing_max_age", "1h")
    header = {"format": "s3pool-listing", "version": 1, "bucket": bucket,
              "listed_at": 4e9, "count": 1000}
    body = json.dumps(header) + "\n" + json.dumps(["ghost", 1, 0.0, '"x"']) + "\n"
    s3.put_object(Bucket=bucket, Key=PUBLISHED, Body=gzip.compress(body.encode()))
    reader.ok("REFRESH", bucket)
    assert _lists(moto_server, bucket) == lists + 3
    s3.put_object(Bucket=bucket, Key=PUBLISHED, Body=b"not a listing")
    reader.ok("REFRESH", bucket)
    assert _lists(moto_server, bucket) == lists + 4
    assert set(reader.ok("GLOB", bucket, "**")) == keys
    assert reader.status()["published_listing_fallbacks"] == "4"


def test_publish_and_use_exclude_each_other(start_daemon, tmp_path):
    with pytest.raises(AssertionError, match="exclude each other"):
        start_daemon(home=tmp_path / "x", args=["--publish-listing", "--use-published-listing"])


def test_empty_etag_is_no_validator(start_daemon, proxy, moto_server, bucket):
    """A tier that sends ETag "" must not get If-None-Match "" (it answers 304 to
    anything): the changed object is downloaded again."""
    s3 = _plain_client(moto_server.endpoint)
    s3.put_object(Bucket=bucket, Key="k", Body=b"version one")
    proxy.blank_etag.add(f"/{bucket}/k")
    daemon = start_daemon(endpoint=proxy.endpoint, args=["--freshness-window", "0"])
    path = daemon.ok("PULL", bucket, "k")[0]
    assert open(path, "rb").read() == b"version one"
    s3.put_object(Bucket=bucket, Key="k", Body=b"version two")
    path = daemon.ok("PULL", bucket, "k")[0]
    assert open(path, "rb").read() == b"version two"
    assert [s for s in proxy.seen if s[1] == f"/{bucket}/k" and s[2] is not None] == []
    # a 304 to a GET that carried no validator says nothing: an error, not "fresh"
    s3.put_object(Bucket=bucket, Key="k", Body=b"version three")
    proxy.always_304.add(f"/{bucket}/k")
    status, lines = daemon.request("PULL", bucket, "k")
    assert status == "ERROR" and "304" in lines[0], (status, lines)


def test_unquoted_etag_still_validates(start_daemon, proxy, moto_server, bucket):
    s3 = _plain_client(moto_server.endpoint)
    s3.put_object(Bucket=bucket, Key="k", Body=b"same bytes")
    proxy.unquote_etag.add(f"/{bucket}/k")
    daemon = start_daemon(endpoint=proxy.endpoint, args=["--freshness-window", "0"])
    daemon.ok("PULL", bucket, "k")
    daemon.ok("PULL", bucket, "k")
    sent = [s[2] for s in proxy.seen if s[1] == f"/{bucket}/k" and s[2] is not None]
    assert len(sent) == 1 and sent[0].startswith('"') and sent[0].endswith('"')
    assert daemon.status()["revalidations"] == "1"


def test_md5_mismatch_is_fetched_again_not_installed(start_daemon, proxy, moto_server, bucket):
    s3 = _plain_client(moto_server.endpoint)
    data = os.urandom(200_000)
    s3.put_object(Bucket=bucket, Key="once", Body=data)
    s3.put_object(Bucket=bucket, Key="always", Body=data)
    proxy.corrupt[f"/{bucket}/once"] = 1000
    proxy.corrupt_times[f"/{bucket}/once"] = 1
    proxy.corrupt[f"/{bucket}/always"] = 1000
    daemon = start_daemon(endpoint=proxy.endpoint)

    path = daemon.ok("PULL", bucket, "once")[0]
    assert open(path, "rb").read() == data
    gets = [s for s in proxy.seen if s[:2] == ("GET", f"/{bucket}/once")]
    assert len(gets) == 2

    status, lines = daemon.request("PULL", bucket, "always")
    assert status == "ERROR" and "did not match" in lines[0]
    gets = [s for s in proxy.seen if s[:2] == ("GET", f"/{bucket}/always")]
    assert len(gets) == 3  # the first try and two more
    assert not (daemon.data / bucket / "always").exists()
    assert daemon.status()["digest_retries"] == "3"


def test_push_goes_to_the_push_endpoint(start_daemon, moto_server, bucket, tmp_path):
    """The read endpoint (a tier) never sees the PUSH; the origin gets it and the
    published listing."""
    tier = MotoServer()
    try:
        tier.client().create_bucket(Bucket=bucket)
        origin = moto_server.client()
        daemon = start_daemon(endpoint=tier.endpoint,
                              args=["--push-endpoint", moto_server.endpoint,
                                    "--publish-listing"])
        local = tmp_path / "up.bin"
        local.write_bytes(b"pushed bytes")
        daemon.ok("PUSH", bucket, "up.bin", str(local))
        assert (daemon.data / bucket / "up.bin").read_bytes() == b"pushed bytes"
        assert origin.get_object(Bucket=bucket, Key="up.bin")["Body"].read() == b"pushed bytes"
        daemon.ok("REFRESH", bucket)  # lists the tier, publishes to the origin
        origin.head_object(Bucket=bucket, Key=PUBLISHED)
        assert tier.app.count("PUT") == 1  # create_bucket, nothing from the daemon
        assert daemon.status()["push_endpoint"] == moto_server.endpoint
    finally:
        tier.stop()
