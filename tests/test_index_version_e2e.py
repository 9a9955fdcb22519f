"""An index of a version this s3pool does not read is never served: the real
daemon lists the bucket again instead, through the socket and through the
mount (listing/index.py, PRAGMA user_version; issue 18)."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest

from helpers import user_version
from s3pool.listing.index import VERSION
from s3pool.store.layout import LAYOUT_VERSION

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]


def homedir_with_a_newer_index(home, bucket: str) -> str:
    """A HOMEDIR of the current layout whose index of *bucket* a newer s3pool
    wrote (another user_version): fresh, and naming a key S3 does not have."""
    index = home / "state" / "listings" / bucket / "index.db"
    index.parent.mkdir(parents=True)
    (home / "data" / bucket).mkdir(parents=True)
    (home / "state" / "layout").write_text(f"{LAYOUT_VERSION}\n")
    db = sqlite3.connect(index)
    db.executescript(f"""
        CREATE TABLE keys (key TEXT PRIMARY KEY, size INTEGER, mtime REAL, etag TEXT);
        CREATE TABLE info (name TEXT PRIMARY KEY, value);
        PRAGMA user_version = {VERSION + 1};""")
    db.execute("INSERT INTO keys VALUES ('ghost.txt', 5, 0, '\"g\"')")
    db.executemany("INSERT INTO info VALUES (?, ?)", [
        ("source", "s3"), ("listed_at", time.time()), ("refreshed_at", time.time()),
        ("count", 1)])
    db.commit()
    db.close()
    (home / "data" / bucket / "__list__").write_text("ghost.txt\n")
    return str(index)


def test_glob_lists_the_bucket_again_instead_of_reading_a_newer_index(
        start_daemon, s3, bucket, tmp_path):
    s3.put_object(Bucket=bucket, Key="real.txt", Body=b"real\n")
    home = tmp_path / "home"
    index = homedir_with_a_newer_index(home, bucket)
    daemon = start_daemon(home=home, args=["--bucket", bucket])
    assert daemon.ok("GLOB", bucket, "**") == ["real.txt"]
    assert user_version(index) == VERSION
    assert (home / "data" / bucket / "__list__").read_text() == "real.txt\n"
    assert "is not used" in daemon.log_text()
    assert daemon.stop() == 0, daemon.log_text()


def test_the_mount_lists_the_bucket_again_instead_of_reading_a_newer_index(
        start_daemon, s3, bucket, tmp_path):
    s3.put_object(Bucket=bucket, Key="real.txt", Body=b"real\n")
    s3.put_object(Bucket=bucket, Key="dir/inner.txt", Body=b"inner\n")
    home = tmp_path / "home"
    index = homedir_with_a_newer_index(home, bucket)
    daemon = start_daemon(mount=True, home=home, args=["--bucket", bucket])
    root = daemon.mountpoint / bucket
    assert sorted(os.listdir(root)) == ["dir", "real.txt"]
    assert not os.path.exists(root / "ghost.txt")
    assert (root / "dir" / "inner.txt").read_bytes() == b"inner\n"
    assert user_version(index) == VERSION
    assert daemon.stop() == 0, daemon.log_text()
