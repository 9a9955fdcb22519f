"""The kernel's read-ahead for the mount (setting fuse_read_ahead, issue 11).

The kernel's default (128 KiB) cuts a sequential read of the mount into
256 KiB FUSE requests; the daemon sets its mount's read-ahead so a cold
`cat` costs a quarter as many requests. Seen from both sides: sysfs holds
the value, and the daemon counts fewer, larger reads."""

from __future__ import annotations

import os
import subprocess

import pytest

from s3pool.fs.mount import mount_device

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]

MIB = 1 << 20


def _read_ahead_kb(mountpoint) -> int:
    device = mount_device(str(mountpoint))
    assert device is not None, f"{mountpoint} is not mounted"
    with open(f"/sys/class/bdi/{device}/read_ahead_kb") as f:
        return int(f.read())


def _status(daemon) -> dict[str, str]:
    status, lines = daemon.request("STATUS")
    assert status == "OK"
    return dict(line.split(" ", 1) for line in lines)


def test_a_cold_sequential_read_comes_in_large_requests(start_daemon, s3, bucket):
    body = os.urandom(16 * MIB)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=body)
    daemon = start_daemon(mount=True, args=["--bucket", bucket])
    assert _read_ahead_kb(daemon.mountpoint) == 1024  # the default: 1 MiB
    path = daemon.mountpoint / bucket / "big.bin"
    before = int(_status(daemon)["fuse_reads"])
    out = subprocess.run(["cat", str(path)], capture_output=True, check=True).stdout
    assert out == body
    reads = int(_status(daemon)["fuse_reads"]) - before
    # 16 MiB in requests of up to 1 MiB (the kernel's default makes 64 of 256 KiB)
    assert reads <= 24, reads


def test_read_ahead_follows_the_setting(start_daemon, bucket):
    daemon = start_daemon(mount=True, args=["--bucket", bucket, "--fuse-read-ahead", "4M"])
    assert _read_ahead_kb(daemon.mountpoint) == 4096
    assert daemon.request("SET", "fuse_read_ahead", "512K")[0] == "OK"
    assert _read_ahead_kb(daemon.mountpoint) == 512
    assert _status(daemon)["fuse_read_ahead"] == str(512 << 10)
    status, lines = daemon.request("SET", "fuse_read_ahead", "1G")
    assert status == "ERROR" and "256M" in lines[0]
    assert _read_ahead_kb(daemon.mountpoint) == 512
    assert daemon.request("SET", "fuse_read_ahead", "0")[0] == "OK"
    assert _read_ahead_kb(daemon.mountpoint) == 128  # the kernel's own, back


def test_zero_leaves_the_kernels_read_ahead(start_daemon, bucket):
    daemon = start_daemon(mount=True, args=["--bucket", bucket, "--fuse-read-ahead", "0"])
    assert _read_ahead_kb(daemon.mountpoint) == 128
