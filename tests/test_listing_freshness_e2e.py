"""Listings as fresh as objects (issue 19): what ``ls`` on the mount, GLOB and
``pull --glob`` show is never older than ``listing_freshness``.

Real daemon, moto over HTTP (its CountingApp counts the LIST requests the
daemon sends), a real FUSE mount. Keys are put and deleted behind the
daemon's back with boto3. No timed asserts: "not before the window" is
checked with a window of an hour (no LIST request is made, the old names
show), "once it has passed" by setting a short window and waiting for the
condition.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from itertools import pairwise
from pathlib import Path

import pytest

from conftest import ROOT, list_requests as lists, put_many, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]

WAIT = 30.0  # generous: for conditions that must come true




def wait_for(condition, what: str, timeout: float = WAIT):
    return wait_until(condition, timeout, what, interval=0.2)


def run_ctl(port: int, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, S3POOL_PORT=str(port), S3POOL_HOST="127.0.0.1")
    env.pop("S3POOL_SOCKET", None)
    return subprocess.run([sys.executable, "-m", "s3pool.cli.ctl", "-p", str(port), *args],
                          capture_output=True, text=True, env=env, timeout=120, cwd=str(ROOT))


def test_ls_shows_keys_put_and_deleted_behind_its_back_once_the_window_passed(
        start_daemon, s3, bucket, moto_server):
    for name in ("a", "b"):
        s3.put_object(Bucket=bucket, Key=f"dir/{name}", Body=b"x")
    daemon = start_daemon(mount=True, args=["--listing-freshness", "1h"])
    path = daemon.mountpoint / bucket / "dir"
    assert sorted(os.listdir(path)) == ["a", "b"]
    # the mount lists the whole (cold) bucket in the background once its
    # directories are listed: let that be done before counting
    wait_for(lambda: (daemon.data / bucket / "__list__").exists(), "the whole listing")
    s3.put_object(Bucket=bucket, Key="dir/c", Body=b"x")
    s3.put_object(Bucket=bucket, Key="dir/sub/d", Body=b"x")
    s3.delete_object(Bucket=bucket, Key="dir/a")
    before = len(lists(moto_server.app, bucket))
    # within the window: the listing is served as it is, no LIST is made
    for _ in range(3):
        assert sorted(os.listdir(path)) == ["a", "b"]
    assert len(lists(moto_server.app, bucket)) == before
    daemon.ok("SET", "listing_freshness", "2")
    wait_for(lambda: sorted(os.listdir(path)) == ["b", "c", "sub"], "the new names in ls")
    assert sorted(os.listdir(path / "sub")) == ["d"]
    relists = lists(moto_server.app, bucket)[before:]
    assert relists and all(q.get("delimiter") == "/" for q in relists), relists
    assert {q["prefix"] for q in relists} <= {"dir/", "dir/sub/"}, relists
    status = daemon.status()
    assert int(status["listing_requests"]) >= len(relists)
    assert status["listing_freshness"] == "2"
    assert daemon.stop() == 0


def test_glob_and_pull_glob_see_new_and_deleted_keys_once_the_window_passed(
        start_daemon, s3, bucket, moto_server):
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"in/{i}.csv", Body=b"x")
    s3.put_object(Bucket=bucket, Key="other/z.csv", Body=b"x")
    daemon = start_daemon(args=["--listing-freshness", "1h"])
    assert daemon.ok("GLOB", bucket, "in/*.csv") == [f"in/{i}.csv" for i in range(3)]
    s3.put_object(Bucket=bucket, Key="in/9.csv", Body=b"x")
    s3.delete_object(Bucket=bucket, Key="in/0.csv")
    before = len(lists(moto_server.app, bucket))
    assert daemon.ok("GLOB", bucket, "in/*.csv") == [f"in/{i}.csv" for i in range(3)]
    assert len(lists(moto_server.app, bucket)) == before
    daemon.ok("SET", "listing_freshness", "2")
    wanted = ["in/1.csv", "in/2.csv", "in/9.csv"]
    wait_for(lambda: daemon.ok("GLOB", bucket, "in/*.csv") == wanted, "GLOB's new keys")
    # a pattern with a literal prefix lists that prefix only, without a delimiter
    relists = lists(moto_server.app, bucket)[before:]
    assert relists and all(q["prefix"] == "in/" and "delimiter" not in q
                           for q in relists), relists
    s3.put_object(Bucket=bucket, Key="in/10.csv", Body=b"x")
    result = wait_for(lambda: (r := run_ctl(daemon.port, "pull", bucket, "--glob", "in/*.csv"))
                      and r.returncode == 0 and len(r.stdout.split()) == 4 and r,
                      "pull --glob's new key")
    assert sorted(Path(p).name for p in result.stdout.split()) == [
        "1.csv", "10.csv", "2.csv", "9.csv"]
    assert daemon.stop() == 0
    # the request's log line says how old the listing was (and what was listed again)
    requests_log = (daemon.home / "log" / "requests.log").read_text()
    globs = [line for line in requests_log.splitlines() if f"GLOB {bucket} in/*.csv" in line]
    assert globs and all(" -> OK (listing " in line and "s old, listed again: " in line
                         for line in globs), globs
    assert any("listed again: 'in/'" in line for line in globs), globs


def test_a_glob_without_a_literal_prefix_refreshes_the_whole_listing_when_stale(
        start_daemon, s3, bucket, moto_server):
    s3.put_object(Bucket=bucket, Key="x/1.txt", Body=b"x")
    daemon = start_daemon(args=["--listing-freshness", "1h"])
    assert daemon.ok("GLOB", bucket, "**.txt") == ["x/1.txt"]
    s3.put_object(Bucket=bucket, Key="y/2.txt", Body=b"x")
    before = len(lists(moto_server.app, bucket))
    assert daemon.ok("GLOB", bucket, "**.txt") == ["x/1.txt"]
    assert len(lists(moto_server.app, bucket)) == before
    daemon.ok("SET", "listing_freshness", "2")
    wait_for(lambda: daemon.ok("GLOB", bucket, "**.txt") == ["x/1.txt", "y/2.txt"],
             "the whole listing refreshed")
    relists = lists(moto_server.app, bucket)[before:]
    assert relists and all(q.get("prefix", "") == "" for q in relists), relists
    assert daemon.stop() == 0


def test_listing_freshness_0_always_lists(start_daemon, s3, bucket, moto_server):
    s3.put_object(Bucket=bucket, Key="d/1", Body=b"x")
    daemon = start_daemon(mount=True, args=["--listing-freshness", "0"])
    path = daemon.mountpoint / bucket / "d"
    assert os.listdir(path) == ["1"]
    counts = [len(lists(moto_server.app, bucket))]
    for _ in range(3):
        os.listdir(path)
        counts.append(len(lists(moto_server.app, bucket)))
    assert all(b > a for a, b in pairwise(counts)), counts
    s3.put_object(Bucket=bucket, Key="d/2", Body=b"x")
    assert sorted(os.listdir(path)) == ["1", "2"]  # at once: no window to wait out
    assert daemon.ok("GLOB", bucket, "d/*") == ["d/1", "d/2"]
    n = len(lists(moto_server.app, bucket))
    daemon.ok("GLOB", bucket, "d/*")
    assert len(lists(moto_server.app, bucket)) > n
    assert daemon.stop() == 0


def test_twenty_concurrent_ls_of_a_stale_directory_make_one_list(
        start_daemon, s3, bucket, moto_server):
    for i in range(50):
        s3.put_object(Bucket=bucket, Key=f"many/{i:03d}", Body=b"x")
    daemon = start_daemon(mount=True, args=["--listing-freshness", "1h"])
    path = daemon.mountpoint / bucket / "many"
    assert len(os.listdir(path)) == 50
    s3.put_object(Bucket=bucket, Key="many/new", Body=b"x")
    # every LIST of the bucket is slow, so the 20 surely overlap
    moto_server.app.slow_paths[f"/{bucket}"] = 1.0
    daemon.ok("SET", "listing_freshness", "1")
    time.sleep(1.5)  # the listing is now older than the window
    before = len(lists(moto_server.app, bucket))
    barrier = threading.Barrier(20)
    results: list[list[str]] = []

    def ls() -> None:
        barrier.wait()
        results.append(os.listdir(path))

    threads = [threading.Thread(target=ls) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 20 and all(len(r) == 51 for r in results)
    made = [q for q in lists(moto_server.app, bucket)[before:] if q["prefix"] == "many/"]
    assert len(made) == 1, made
    assert daemon.stop() == 0


def test_the_newcomers_files_three_directories_deep(start_daemon, s3, bucket, moto_server):
    """Issue 19's report: 5 files uploaded behind the daemon, 3 directories deep."""
    s3.put_object(Bucket=bucket, Key="readme.txt", Body=b"x")
    daemon = start_daemon(mount=True, args=["--listing-freshness", "2"])
    root = daemon.mountpoint / bucket
    assert os.listdir(root) == ["readme.txt"]
    assert daemon.ok("GLOB", bucket, "user/smalls/*") == []
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"user/smalls/f{i}.bin", Body=b"%d" % i)
    wait_for(lambda: "user" in os.listdir(root), "the new directory in ls of the root")
    assert os.listdir(root / "user") == ["smalls"]
    assert len(os.listdir(root / "user" / "smalls")) == 5
    result = run_ctl(daemon.port, "pull", bucket, "--glob", "user/smalls/*")
    assert result.returncode == 0, result.stderr
    assert sorted(Path(p).name for p in result.stdout.split()) == [
        f"f{i}.bin" for i in range(5)]
    assert daemon.stop() == 0


def test_ls_of_a_large_cold_directory_streams(start_daemon, s3, bucket, moto_server):
    """The first entries come back while later pages of the LIST are still to come."""
    put_many(bucket, ((f"big/{i:05d}", b"") for i in range(5000)))
    daemon = start_daemon(mount=True)
    moto_server.app.slow_paths[f"/{bucket}"] = 0.3  # per 64 KiB: about 1 s a page
    with os.scandir(daemon.mountpoint / bucket / "big") as it:
        first = next(it)
        made = lists(moto_server.app, bucket)
        rest = [e.name for e in it]
    assert first.name == "00000"

    def pages(found: list[dict[str, str]]) -> list[dict[str, str]]:
        """The directory's LIST pages (the lookup of big/ made a LIST of one key)."""
        return [q for q in found if q.get("prefix") == "big/" and q.get("delimiter") == "/"]

    assert 1 <= len(pages(made)) < 5, made  # 5 pages in all: the first answer came before
    assert len(rest) == 4999
    # one LIST: its 5 pages, and past the first 4 two ranges at once, the
    # second empty (listing/ranges.py)
    assert len(pages(lists(moto_server.app, bucket))) in (5, 6)
    assert daemon.stop() == 0


def test_s3_down_glob_is_an_error_and_ls_shows_the_listing_in_hand(start_daemon):
    from conftest import MotoServer

    server = MotoServer()
    server.client().create_bucket(Bucket="gone")
    server.client().put_object(Bucket="gone", Key="d/f.txt", Body=b"f")
    daemon = start_daemon(mount=True, endpoint=server.endpoint,
                          args=["--listing-freshness", "0"])
    path = daemon.mountpoint / "gone" / "d"
    assert os.listdir(path) == ["f.txt"]
    assert daemon.ok("GLOB", "gone", "d/*") == ["d/f.txt"]
    server.stop()
    status, lines = daemon.request("GLOB", "gone", "d/*")
    assert status.startswith("ERROR") and "internal error" not in status, (status, lines)
    assert os.listdir(path) == ["f.txt"]  # the listing in hand; the failure is logged
    assert "listing s3://gone/d/ failed" in daemon.log_text()
    assert daemon.process.poll() is None
    assert daemon.stop() == 0


def test_a_glob_of_a_bucket_s3_lacks_is_an_error_and_leaves_no_index(daemon):
    for pattern in ("logs/*", "*"):  # a prefix LIST, the whole bucket's
        status, lines = daemon.request("GLOB", "no-such-bucket-19", pattern)
        assert status.startswith("ERROR") and "internal error" not in status, (status, lines)
        assert not (daemon.home / "state" / "listings" / "no-such-bucket-19").exists()
