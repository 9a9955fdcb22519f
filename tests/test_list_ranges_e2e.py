"""A long directory's LIST goes on in key ranges side by side (listing/ranges.py):
what ls, GLOB and a relisting merge show is the whole directory, exactly.

The real daemon (a subprocess) and its mount, moto's server over HTTP; the
LIST requests are counted at the server."""

from __future__ import annotations

import os

import pytest

from conftest import list_requests as lists, put_many, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]

NUMBERED = [f"big/k{i:06d}" for i in range(12_000)]
# a subdirectory where a range is cut, and names of another kind after the numbers
OTHERS = ["big/k004000/inside", "big/k007999/a/b", "big/zz-last", "big/zz-more"]




def names_of(keys: list[str]) -> list[str]:
    return sorted({key[len("big/"):].split("/")[0] for key in keys})


def test_a_long_directory_is_listed_in_ranges_and_merged_exactly(
        start_daemon, s3, bucket, moto_server):
    put_many(bucket, [(key, b"") for key in NUMBERED + OTHERS])
    daemon = start_daemon(mount=True, args=["--listing-freshness", "1h"])
    path = daemon.mountpoint / bucket / "big"
    assert sorted(os.listdir(path)) == names_of(NUMBERED + OTHERS)
    made = [q for q in lists(moto_server.app, bucket)
            if q.get("prefix") == "big/" and q.get("delimiter") == "/"]
    ranged = [q for q in made if "start-after" in q]
    assert ranged, made  # the LIST went on in ranges
    # 13 pages' worth: a few requests more (ranges cut at a whole page, one past the end)
    assert len(made) <= 13 + 6, len(made)
    assert sorted(os.listdir(path / "k004000")) == ["inside"]

    # behind its back, in several ranges: deleted, added, a directory gone
    gone = ["big/k005000", "big/k009001", "big/k011999", "big/k004000/inside"]
    for key in gone:
        s3.delete_object(Bucket=bucket, Key=key)
    s3.put_object(Bucket=bucket, Key="big/k010500x", Body=b"")
    now = [k for k in NUMBERED + OTHERS if k not in gone] + ["big/k010500x"]
    daemon.ok("SET", "listing_freshness", "1")
    wait_until(lambda: sorted(os.listdir(path)) == names_of(now), 60, "the merged changes")
    # GLOB lists the prefix again, deep (no delimiter), in ranges too
    daemon.ok("SET", "listing_freshness", "0")
    assert daemon.ok("GLOB", bucket, "big/**") == sorted(now)
    deep = [q for q in lists(moto_server.app, bucket)
            if q.get("prefix") == "big/" and "delimiter" not in q]
    assert any("start-after" in q for q in deep), deep
    assert "Traceback" not in daemon.log_text()
    assert daemon.stop() == 0


def test_a_file_and_a_directory_of_one_name_on_two_pages_show_once(
        start_daemon, s3, bucket, moto_server):
    """A page ends with the key big/x and the next begins with big/x/: ls
    shows x once, as the directory, even while the second page is slow."""
    keys = [f"big/f{i:04d}" for i in range(999)] + ["big/x", "big/x/inside"]
    put_many(bucket, [(key, b"") for key in keys])
    daemon = start_daemon(mount=True, args=["--listing-freshness", "1h"])
    moto_server.app.slow_paths[f"/{bucket}"] = 0.3  # per 64 KiB: about 1 s a page
    names = os.listdir(daemon.mountpoint / bucket / "big")
    assert sorted(names) == sorted([f"f{i:04d}" for i in range(999)] + ["x"]), \
        [n for n in names if n == "x"]
    assert os.path.isdir(daemon.mountpoint / bucket / "big" / "x")
    assert daemon.stop() == 0
