"""End to end: the disk monitor and the list monitor in the real daemon."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from conftest import temp_leftovers

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]

KIB = 1024


def present(daemon, bucket, keys):
    return {k for k in keys if (daemon.data / bucket / (k + "__meta__")).exists()}


def fill(s3, bucket, keys, size):
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=os.urandom(size))


def test_cap_evicts_least_recently_used_first(start_daemon, s3, bucket, moto_server):
    keys = [f"k{i}" for i in range(10)]
    fill(s3, bucket, keys, 10 * KIB)
    daemon = start_daemon(args=["--max-cache-size", str(100 * KIB), "--high-water", "90",
                                "--low-water", "50"])
    for key in keys[:8]:
        daemon.ok("PULL", bucket, key)
    time.sleep(1.2)
    daemon.ok("PULL", bucket, "k0", "k1")  # hits: now the most recently used
    time.sleep(1.2)
    daemon.ok("PULL", bucket, "k8")
    daemon.ok("PULL", bucket, "k9")  # 100 KiB > 90 % of the cap: evict to 50 %
    assert present(daemon, bucket, keys) == {"k0", "k1", "k7", "k8", "k9"}
    status = daemon.status()
    assert int(status["evictions"]) == 5
    assert int(status["cache_bytes"]) == 50 * KIB
    # an evicted key comes back on the next PULL
    [path] = daemon.ok("PULL", bucket, "k2")
    assert os.path.getsize(path) == 10 * KIB
    # two downloads, each one GET of the first part (the whole object): 206
    assert moto_server.app.gets(bucket, "k2", status=206) == 2
    assert daemon.stop() == 0


def test_access_order_survives_a_restart(start_daemon, s3, bucket):
    keys = ["a", "b", "c", "d"]
    fill(s3, bucket, keys, 10 * KIB)
    daemon = start_daemon()
    for key in keys:
        daemon.ok("PULL", bucket, key)
        time.sleep(0.05)
    daemon.ok("PULL", bucket, "a")  # a: most recent
    assert daemon.stop() == 0
    daemon = start_daemon(port=daemon.port)
    time.sleep(1.2)  # out of the eviction grace period
    # 40 KiB cached; a cap of 30 KiB (mark 27, low 22.5) sends the two oldest away
    daemon.ok("SET", "max_cache_size", str(30 * KIB))
    deadline = time.monotonic() + 10
    while present(daemon, bucket, keys) != {"a", "d"} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert present(daemon, bucket, keys) == {"a", "d"}
    assert daemon.stop() == 0


def test_object_larger_than_the_cap_fails_cleanly(start_daemon, s3, bucket):
    s3.put_object(Bucket=bucket, Key="huge", Body=os.urandom(200 * KIB))
    daemon = start_daemon(args=["--max-cache-size", str(100 * KIB)])
    status, lines = daemon.request("PULL", bucket, "huge")
    assert status == "ERROR" and "huge" in lines[0] and "max_cache_size" in lines[0]
    assert not (daemon.data / bucket / "huge").exists()
    assert temp_leftovers(daemon.home) == []
    assert daemon.stop() == 0


def test_download_in_progress_and_open_handles_survive_eviction(start_daemon, s3, bucket,
                                                               moto_server):
    import threading

    fill(s3, bucket, ["old1", "old2", "held"], 10 * KIB)
    s3.put_object(Bucket=bucket, Key="slow", Body=os.urandom(256 * KIB))
    daemon = start_daemon(mount=True, args=["--bucket", bucket])
    daemon.ok("PULL", bucket, "old1", "old2")
    held_path = daemon.mountpoint / bucket / "held"
    handle = open(held_path, "rb")
    held_bytes = handle.read(100)
    moto_server.app.slow_paths[f"/{bucket}/slow"] = 0.1
    result = {}
    puller = threading.Thread(target=lambda: result.update(r=daemon.request("PULL", bucket,
                                                                             "slow")))
    puller.start()
    time.sleep(1.2)
    daemon.ok("SET", "max_cache_size", "1")  # evict everything that may go
    deadline = time.monotonic() + 10
    while present(daemon, bucket, ["old1", "old2", "held"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert present(daemon, bucket, ["old1", "old2", "held"]) == set()
    # the evicted file still reads in full through the handle opened before
    handle.seek(0)
    assert handle.read(100) == held_bytes
    assert len(handle.read()) == 10 * KIB - 100
    handle.close()
    daemon.ok("SET", "max_cache_size", "0")
    puller.join(60)
    status, lines = result["r"]
    assert status == "OK", lines
    assert os.path.getsize(lines[0]) == 256 * KIB
    assert held_path.read_bytes()[:100] == held_bytes
    assert moto_server.app.gets(bucket, "held", status=206) == 2
    assert daemon.stop() == 0


def test_disk_high_water_on_a_small_filesystem(start_daemon, s3, bucket, tmp_path):
    home = tmp_path / "small"
    home.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(home)],
                             capture_output=True, text=True)
    assert mounted.returncode == 0, f"cannot mount a tmpfs for the test: {mounted.stderr}"
    try:
        keys = [f"f{i:02d}" for i in range(12)]
        fill(s3, bucket, keys, 512 * KIB)
        daemon = start_daemon(home=home, args=["--high-water", "60", "--low-water", "30"])
        for key in keys:
            daemon.ok("PULL", bucket, key)
            time.sleep(0.02)
        time.sleep(1.2)
        daemon.ok("PULL", bucket, "f00")  # make the oldest the newest
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            st = os.statvfs(home)
            used = 100 * (1 - st.f_bfree / st.f_blocks)
            if used <= 60:
                break
            daemon.ok("SET", "low_water", "30")  # a SET wakes the monitor
            time.sleep(0.1)
        assert used <= 60
        kept = present(daemon, bucket, keys)
        assert "f00" in kept and "f01" not in kept
        assert int(daemon.status()["evictions"]) >= 4
        assert daemon.stop() == 0
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def test_list_monitor_picks_up_changes_without_a_client_refresh(start_daemon, s3, bucket):
    s3.put_object(Bucket=bucket, Key="first", Body=b"1")
    daemon = start_daemon(args=["--refresh-interval", "1s"])  # a bare 1 is a minute
    assert daemon.ok("GLOB", bucket, "*") == ["first"]
    s3.put_object(Bucket=bucket, Key="second", Body=b"2")
    s3.delete_object(Bucket=bucket, Key="first")
    deadline = time.monotonic() + 15
    while daemon.ok("GLOB", bucket, "*") != ["second"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert daemon.ok("GLOB", bucket, "*") == ["second"]
    assert (daemon.data / bucket / "__list__").read_text() == "second\n"
    assert int(daemon.status()["refresh_rounds"]) >= 1
    assert daemon.stop() == 0


@pytest.mark.parametrize("interval", ["1s", "0.02"])  # 0.02 minutes: 1.2 s
def test_a_deleted_bucket_leaves_the_round(start_daemon, s3, interval):
    s3.create_bucket(Bucket="short-lived")
    s3.put_object(Bucket="short-lived", Key="x", Body=b"x")
    daemon = start_daemon(args=["--refresh-interval", interval])
    daemon.ok("GLOB", "short-lived", "*")
    s3.delete_object(Bucket="short-lived", Key="x")
    s3.delete_bucket(Bucket="short-lived")
    deadline = time.monotonic() + 15
    while "short-lived" in daemon.status()["buckets_in_use"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "short-lived" not in daemon.status()["buckets_in_use"]
    assert "no longer exists" in daemon.log_text()
    assert daemon.stop() == 0


def test_open_of_an_object_larger_than_the_cap_is_enospc(start_daemon, s3, bucket):
    import errno

    s3.put_object(Bucket=bucket, Key="huge", Body=os.urandom(200 * KIB))
    s3.put_object(Bucket=bucket, Key="small", Body=b"fits")
    daemon = start_daemon(mount=True, args=["--bucket", bucket,
                                            "--max-cache-size", str(100 * KIB)])
    root = daemon.mountpoint / bucket
    # the listing (built in tmp/) is in before tmp/ is looked at below
    assert sorted(os.listdir(root)) == ["huge", "small"]
    with pytest.raises(OSError) as info:
        (root / "huge").read_bytes()
    assert info.value.errno == errno.ENOSPC
    assert (root / "small").read_bytes() == b"fits"
    assert temp_leftovers(daemon.home) == []
    assert daemon.stop() == 0


def test_push_larger_than_the_cap_uploads_uncached(start_daemon, s3, bucket, tmp_path):
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(300 * KIB))
    daemon = start_daemon(args=["--max-cache-size", str(100 * KIB)])
    assert daemon.ok("PUSH", bucket, "big.bin", str(local)) == []
    assert s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read() == local.read_bytes()
    assert not (daemon.data / bucket / "big.bin").exists()
    assert temp_leftovers(daemon.home) == []
    assert daemon.stop() == 0
