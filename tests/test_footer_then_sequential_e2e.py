"""A mount reader that reads a file's footer first and then reads it from the
start in order gets every byte (the real daemon, moto's server, a FUSE mount).

Found with the checksum tests of issue 16.5: after the footer read, the
read-ahead of a later read in order marked the next part wanted without
starting it, when every part already started had landed, and the read of
that part then waited for ever. The kernel's own read-ahead is turned off
(POSIX_FADV_RANDOM) so that each read reaches the daemon when the test
makes it, and the test waits for the parts in flight to land (the download's
STATUS line) before the read in order that marks the next part wanted.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest

from conftest import fuse_available

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]

MIB = 1 << 20


def _done_bytes(daemon, url: str) -> int | None:
    for line in daemon.ok("STATUS"):
        if line.startswith(f"download {url} "):
            return int(line.split()[2])
    return None


def _wait_done(daemon, url: str, count: int) -> None:
    deadline = time.monotonic() + 30
    while (_done_bytes(daemon, url) or 0) < count:
        assert time.monotonic() < deadline, daemon.ok("STATUS")
        time.sleep(0.05)


def test_footer_first_then_the_file_in_order(start_daemon, s3, bucket):
    fuse_available()
    data = os.urandom(12 * MIB)
    s3.put_object(Bucket=bucket, Key="table.parquet", Body=data)
    daemon = start_daemon(mount=True, args=["--download-part-size", "4M"])
    url = f"s3://{bucket}/table.parquet"
    got: dict[str, bytes] = {}

    def read_rest(fd: int) -> None:
        got["rest"] = b"".join(os.pread(fd, MIB, offset) for offset in range(8192, 12 * MIB,
                                                                            MIB))

    fd = os.open(daemon.mountpoint / bucket / "table.parquet", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no read-ahead of the kernel's
        assert os.pread(fd, 65536, 12 * MIB - 65536) == data[-65536:]  # the last part
        assert os.pread(fd, 4096, 0) == data[:4096]  # the first part
        _wait_done(daemon, url, 8 * MIB)  # both landed: nothing in flight
        assert os.pread(fd, 4096, 4096) == data[4096:8192]  # in order: read-ahead wants part 1
        reader = threading.Thread(target=read_rest, args=(fd,), daemon=True)
        reader.start()
        reader.join(30)
        assert not reader.is_alive(), f"the read of the middle part hangs: " \
                                      f"{_done_bytes(daemon, url)} bytes landed"
    finally:
        if "rest" in got:
            os.close(fd)
    assert hashlib.sha256(got["rest"]).digest() == hashlib.sha256(data[8192:]).digest()
    assert daemon.stop() == 0, daemon.log_text()
