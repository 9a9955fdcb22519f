"""A full disk during REFRESH (issue 17, point 7): HOMEDIR on a small tmpfs.

A REFRESH that cannot write the new listing answers a clear ERROR (no
"internal error"), leaves nothing behind in tmp/, and the old listing stays
in use for GLOB and the mount; with room again the next REFRESH works.
"""

from __future__ import annotations

import os

import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

from conftest import temp_leftovers

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]

OLD_KEYS = [f"old/{i:03d}.txt" for i in range(20)]
# (new keys, room left): which file of the new listing finds the disk full
CASES = {
    # __list__ alone needs 1.8 MB: its first page fails to write
    "list": ([f"new/{i:05d}/" + "n" * 300 for i in range(6000)], 64 << 10,
             "No space left on device"),
    # __list__ (200 KB) fits, the index (SQLite, 1.4 MB) does not
    "index": ([f"new/{i:05d}" for i in range(20000)], 400 << 10, "database or disk is full"),
}


def fill(path, leave: int) -> None:
    """Fill the filesystem of *path* until *leave* bytes are free."""
    st = os.statvfs(path.parent)
    free = st.f_bavail * st.f_frsize
    with open(path, "wb") as f:
        block = b"\0" * (1 << 20)
        remaining = free - leave
        while remaining > 0:
            remaining -= f.write(block[:min(len(block), remaining)])


@pytest.mark.parametrize("case", sorted(CASES))
def test_refresh_on_a_full_disk_is_a_clear_error_and_the_old_listing_stays(
        small_home, start_daemon, s3, bucket, case):
    new_keys, room, cause = CASES[case]
    for key in OLD_KEYS:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    daemon = start_daemon(mount=True, home=small_home, args=["--bucket", bucket])
    root = daemon.mountpoint / bucket
    assert daemon.ok("GLOB", bucket, "**") == OLD_KEYS
    [cached] = daemon.ok("PULL", bucket, OLD_KEYS[0])
    old_list = (small_home / "data" / bucket / "__list__").read_bytes()

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    for key in new_keys:
        backend.put_object(bucket, key, b"x")
    fill(small_home / "filler", leave=room)

    status, lines = daemon.request("REFRESH", bucket)
    assert status == "ERROR", lines
    assert len(lines) == 1 and "internal error" not in lines[0], lines
    assert "no room" in lines[0] and bucket in lines[0] and cause in lines[0], lines
    # the old listing stays in use, nothing half-written is left
    assert (small_home / "data" / bucket / "__list__").read_bytes() == old_list
    assert daemon.ok("GLOB", bucket, "**") == OLD_KEYS
    assert sorted(os.listdir(root)) == ["old"]
    assert sorted(os.listdir(root / "old")) == [k.split("/")[1] for k in OLD_KEYS]
    assert daemon.ok("PULL", bucket, OLD_KEYS[0]) == [cached]
    assert temp_leftovers(small_home) == []
    # the glob of a prefix (the index) answers the old listing too
    assert daemon.ok("GLOB", bucket, "new/**") == []

    # with room again, the next REFRESH installs the new listing
    os.unlink(small_home / "filler")
    assert daemon.ok("REFRESH", bucket) == []
    assert len(daemon.ok("GLOB", bucket, "**")) == len(OLD_KEYS) + len(new_keys)
    assert sorted(os.listdir(root)) == ["new", "old"]
    assert daemon.stop() == 0, daemon.log_text()
