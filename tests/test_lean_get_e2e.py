"""The lean GET path (s3pool/s3/lean.py): object GETs signed by botocore's
signer and sent on keep-alive connections of its own, with boto3 taking over anything unusual.

A signature or URL that S3 rejects would not show as a failure (boto3
would take over and the PULL would still work), so these tests count the
GETs each path made (STATUS s3_lean_gets / s3_lean_fallbacks)."""

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import botocore.exceptions
import pytest

from conftest import free_port_block, request
from fault_proxy import FaultProxy
from s3pool.store.layout import META_SUFFIX
from test_embedded_e2e import DemoDaemon, s3_client

pytestmark = pytest.mark.e2e

AWKWARD_KEYS = [
    "plain/one.txt",
    "dir with space/a+b=c.txt",
    "unicode/été ü 中文.bin",
    "pct/100%real~x!'()*.txt",
    "punct/semi;colon,comma&amp$dollar@at#hash.txt",
    "deep/a/b/c/d/e/f/g.txt",
]


def test_signed_by_botocore_accepted_by_a_checking_s3(tmp_path):
    """The embedded SeaweedFS checks SigV4 signatures: every key, however
    awkward, is fetched on the lean path with nothing handed back."""
    daemon = DemoDaemon(tmp_path, free_port_block()).start()
    try:
        status = daemon.status()
        s3 = s3_client(status)
        # the server does check signatures: a wrong secret is refused
        forged = s3_client(dict(status, embedded_s3_secret_access_key="not-the-secret"))
        with pytest.raises(botocore.exceptions.ClientError):
            forged.get_object(Bucket="s3pool-demo", Key="hello.txt")
        bodies = {}
        for i, key in enumerate(AWKWARD_KEYS):
            bodies[key] = os.urandom(1000 + i) * (1 + i)
            s3.put_object(Bucket="s3pool-demo", Key=key, Body=bodies[key],
                          Metadata={"owner": f"user{i}"})
        before = daemon.status()
        for key in AWKWARD_KEYS:
            [path] = daemon.ok("PULL", "s3pool-demo", key)
            assert open(path, "rb").read() == bodies[key], key
            meta = json.loads(open(path + META_SUFFIX).read())
            assert meta["Metadata"] == {"owner": f"user{AWKWARD_KEYS.index(key)}"}
            assert meta["ContentLength"] == len(bodies[key])
            assert meta["ETag"].startswith('"')
        after = daemon.status()
        assert int(after["s3_lean_gets"]) - int(before["s3_lean_gets"]) == len(AWKWARD_KEYS)
        assert after["s3_lean_fallbacks"] == before["s3_lean_fallbacks"] == "0"
        # SeaweedFS sends a CRC32 of each object: checked as the bytes came
        log = (daemon.home / "log" / "s3pool.log").read_text()
        assert "verified" in log and "length verified" not in log.split("plain/one.txt")[1]
    finally:
        daemon.stop()


def test_a_body_being_read_keeps_its_connection(tmp_path):
    """SeaweedFS keeps connections alive (moto's test server closes each
    one): a connection goes back to the pool only once its body was read,
    so GETs beside a streaming download never land on its connection."""
    daemon = DemoDaemon(tmp_path, free_port_block(),
                        ["--download-part-size", "1M", "--download-part-concurrency", "4"]).start()
    try:
        s3 = s3_client(daemon.status())
        big = os.urandom(24 << 20)
        s3.put_object(Bucket="s3pool-demo", Key="big.bin", Body=big)
        smalls = {f"small/{i:02d}": os.urandom(5000 + i) for i in range(24)}
        for key, body in smalls.items():
            s3.put_object(Bucket="s3pool-demo", Key=key, Body=body)
        keys = ["big.bin", *smalls]
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda k: request(daemon.port, "PULL", "s3pool-demo", k), keys))
        for key, (status, lines) in zip(keys, replies, strict=True):
            assert status == "OK", (key, lines)
        [path] = replies[0][1]
        assert hashlib.sha256(open(path, "rb").read()).digest() == hashlib.sha256(big).digest()
        for key, (_, [path]) in zip(keys[1:], replies[1:], strict=True):
            assert open(path, "rb").read() == smalls[key]
        assert daemon.status()["s3_lean_fallbacks"] == "0"
    finally:
        daemon.stop()


def test_missing_key_and_bucket_answered_on_the_lean_path(daemon, s3, bucket):
    s3.put_object(Bucket=bucket, Key="here", Body=b"x")
    status, lines = daemon.request("PULL", bucket, "not-here")
    assert status == "ERROR" and "no such key" in lines[0].lower(), lines
    status, lines = daemon.request("PULL", "no-such-bucket-lean", "k")
    assert status == "ERROR" and "no such bucket" in lines[0], lines
    daemon.ok("PULL", bucket, "here")
    # a 304 is an answer too
    daemon.ok("SET", "freshness_window", "0")
    daemon.ok("PULL", bucket, "here")
    got = daemon.status()
    assert got["revalidations"] == "1"
    assert int(got["s3_lean_gets"]) >= 3 and got["s3_lean_fallbacks"] == "0"


@pytest.fixture
def proxy(moto_server):
    p = FaultProxy(moto_server.port)
    yield p
    p.stop()


def test_a_server_error_goes_back_to_boto3_which_retries(start_daemon, s3, bucket, proxy):
    s3.put_object(Bucket=bucket, Key="flaky", Body=b"flaky bytes")
    s3.put_object(Bucket=bucket, Key="down", Body=b"never")
    d = start_daemon(endpoint=proxy.endpoint)
    proxy.fail_status[f"/{bucket}/flaky"] = (500, 1)
    [path] = d.ok("PULL", bucket, "flaky")
    assert open(path, "rb").read() == b"flaky bytes"
    assert d.status()["s3_lean_fallbacks"] == "1"
    # an S3 that keeps failing: boto3's retries give up, a clear error
    proxy.fail_status[f"/{bucket}/down"] = (503, 50)
    status, lines = d.request("PULL", bucket, "down")
    assert status == "ERROR" and "down" in lines[0], lines
    assert "Traceback" not in d.log_text()
    # the bucket stays on the lean path: a 5xx says nothing about signing
    d.ok("PULL", bucket, "flaky")
    s3.put_object(Bucket=bucket, Key="later", Body=b"later")
    before = int(d.status()["s3_lean_gets"])
    d.ok("PULL", bucket, "later")
    assert int(d.status()["s3_lean_gets"]) == before + 1


def test_a_refused_request_leaves_the_bucket_to_boto3(start_daemon, s3, bucket, proxy):
    """403 (a signature S3 did not like, a policy botocore knows to handle)
    or a redirect: boto3 makes that bucket's GETs from then on."""
    for key in ("a", "b"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode() * 10)
    d = start_daemon(endpoint=proxy.endpoint)
    proxy.fail_status[f"/{bucket}/a"] = (403, 1)
    [path] = d.ok("PULL", bucket, "a")
    assert open(path, "rb").read() == b"a" * 10
    lean = int(d.status()["s3_lean_gets"])
    [path] = d.ok("PULL", bucket, "b")
    assert open(path, "rb").read() == b"b" * 10
    assert int(d.status()["s3_lean_gets"]) == lean  # b went through boto3
    assert "boto3 makes its GETs from now on" in d.log_text()


def test_the_lean_path_can_be_switched_off(start_daemon, s3, bucket, monkeypatch):
    monkeypatch.setenv("S3POOL_LEAN_GET", "0")
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    d = start_daemon()
    d.ok("PULL", bucket, "k")
    assert d.status()["s3_lean_gets"] == "0"


def test_buckets_named_at_start_are_warmed_up_before_the_first_request(start_daemon, s3, bucket,
                                                                       moto_server):
    """botocore sets up lazily; the daemon does it (a HEAD of each bucket
    named with --bucket) before anyone waits for a first object."""
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    before = moto_server.app.count("HEAD", f"/{bucket}")
    d = start_daemon(args=["--bucket", bucket, "--bucket", "no-such-bucket-warm"])
    deadline = time.monotonic() + 10
    while moto_server.app.count("HEAD", f"/{bucket}") == before:
        assert time.monotonic() < deadline, "no warm-up HEAD reached S3"
        time.sleep(0.05)
    d.ok("PULL", bucket, "k")  # a bucket that does not exist only costs its HEAD
    assert "Traceback" not in d.log_text()
