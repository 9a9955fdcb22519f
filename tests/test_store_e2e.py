"""End to end: what the store changed for users (hard caps, listing state on
disk, pull_concurrency that really raises parallel downloads)."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.e2e

MIB = 1 << 20


def cached_bytes(home) -> int:
    total = 0
    for root, _, files in os.walk(home / "data"):
        for name in files:
            if not name.endswith("__meta__") and not name.startswith("__"):
                total += os.path.getsize(os.path.join(root, name))
    return total


def test_the_size_cap_is_hard_for_back_to_back_pulls(start_daemon, s3, bucket):
    keys = [f"k{i}" for i in range(10)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=os.urandom(4 * MIB))
    daemon = start_daemon(args=["--max-cache-size", "20M"])
    for key in keys:
        [path] = daemon.ok("PULL", bucket, key)
        assert os.path.getsize(path) == 4 * MIB
        assert cached_bytes(daemon.home) <= 20 * MIB, key
    assert int(daemon.status()["cache_bytes"]) <= 20 * MIB
    assert daemon.stop() == 0


def test_a_pushed_key_stays_in_every_glob_after_a_restart(start_daemon, s3, bucket, tmp_path):
    s3.put_object(Bucket=bucket, Key="a1", Body=b"x")
    daemon = start_daemon()
    daemon.ok("REFRESH", bucket)
    local = tmp_path / "local"
    local.write_bytes(b"pushed")
    daemon.ok("PUSH", bucket, "b1", str(local))
    assert daemon.ok("GLOB", bucket, "*") == ["a1", "b1"]
    assert daemon.stop() == 0
    daemon = start_daemon(port=daemon.port)
    assert daemon.ok("GLOB", bucket, "b*") == ["b1"]
    assert daemon.ok("GLOB", bucket, "*") == ["a1", "b1"]
    assert daemon.stop() == 0


def test_a_pulled_key_appears_in_glob_before_the_next_refresh(start_daemon, s3, bucket):
    s3.put_object(Bucket=bucket, Key="old", Body=b"x")
    daemon = start_daemon()
    daemon.ok("REFRESH", bucket)
    s3.put_object(Bucket=bucket, Key="new", Body=b"written by another host")
    daemon.ok("PULL", bucket, "new")
    assert daemon.ok("GLOB", bucket, "*") == ["new", "old"]
    assert daemon.stop() == 0


def test_set_pull_concurrency_raises_the_downloads_s3_sees_at_once(start_daemon, s3, bucket,
                                                                   moto_server):
    keys = [f"slow{i:03d}" for i in range(100)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"z" * 1000)
        moto_server.app.slow_paths[f"/{bucket}/{key}"] = 1.5
    daemon = start_daemon()
    daemon.ok("SET", "pull_concurrency", "100")
    moto_server.app.max_gets_in_flight = 0
    paths = daemon.ok("PULL", bucket, *keys)  # one at a time, 150 s: past the reply timeout
    assert len(paths) == 100
    assert moto_server.app.max_gets_in_flight >= 90, moto_server.app.max_gets_in_flight
    assert daemon.stop() == 0
