"""Issue 19: the lookups that depend on a directory's listing are no older
than ``listing_freshness`` either. A name looked up (stat, open) in a
directory whose listing is stale is answered after that directory was
listed again (one delimiter LIST of its prefix, shared by every concurrent
asker, readdir's included), not from the stale listing until the next
``ls``.

Real daemon, moto over HTTP (its CountingApp counts the LIST requests), a
real FUSE mount. The bucket is listed with REFRESH, not by reading the
directory on the mount: the kernel has no entry of its names cached, so
every stat below reaches the daemon.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time

import pytest

from conftest import list_requests as lists, put_many

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]

NEW = [f"n{i:02d}" for i in range(16)]


def stat_or_errno(path: os.PathLike[str]) -> int | os.stat_result:
    try:
        return os.stat(path)
    except OSError as exc:
        return exc.errno or -1


def test_a_lookup_in_a_stale_directory_lists_it_again_once_for_all_askers(
        start_daemon, s3, bucket, moto_server):
    for name in ("gone", "kept"):
        s3.put_object(Bucket=bucket, Key=f"dir/{name}", Body=b"old")
    # the objects' freshness window is long: only the listing's may send a LIST
    daemon = start_daemon(mount=True, args=["--listing-freshness", "1h",
                                            "--freshness-window", "1h"])
    path = daemon.mountpoint / bucket / "dir"
    daemon.ok("REFRESH", bucket)
    assert stat_or_errno(path / "late") == errno.ENOENT  # S3 said so: remembered
    s3.put_object(Bucket=bucket, Key="dir/late", Body=b"late!")
    for name in NEW:
        s3.put_object(Bucket=bucket, Key=f"dir/{name}", Body=b"new")
    s3.delete_object(Bucket=bucket, Key="dir/gone")
    before = len(lists(moto_server.app, bucket))
    # within the window: answered from the listing, no LIST made
    assert stat_or_errno(path / "late") == errno.ENOENT
    assert len(lists(moto_server.app, bucket)) == before

    # a window the 19 lookups below surely start within, one LIST they overlap
    daemon.ok("SET", "listing_freshness", "5")
    moto_server.app.slow_paths[f"/{bucket}"] = 1.0  # every LIST is slow: the askers overlap
    time.sleep(5.5)  # the listing of dir/ is now older than the window
    names = ["gone", "kept", "late", *NEW]
    barrier = threading.Barrier(len(names))
    found: dict[str, int | os.stat_result] = {}

    def look(name: str) -> None:
        barrier.wait()
        found[name] = stat_or_errno(path / name)

    threads = [threading.Thread(target=look, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert found.pop("gone") == errno.ENOENT  # deleted on S3: gone without an ls
    assert all(isinstance(st, os.stat_result) for st in found.values()), found
    assert found["late"].st_size == 5
    made = lists(moto_server.app, bucket)[before:]
    # one LIST of the directory for 19 concurrent lookups (single flight); a
    # lookup of the deleted name after it ends may ask S3 about that one name
    assert [q for q in made if q.get("delimiter")] == made[:1], made
    assert (made[0]["prefix"], made[0]["delimiter"]) == ("dir/", "/"), made
    assert all(q["prefix"] == "dir/gone/" for q in made[1:]), made
    assert (path / "late").read_bytes() == b"late!"
    with pytest.raises(FileNotFoundError):
        open(path / "gone", "rb")
    assert "Traceback" not in daemon.log_text()
    assert daemon.stop() == 0


def test_a_cold_find_lists_each_directory_once_and_a_long_one_whole(
        start_daemon, s3, bucket, moto_server):
    """The subdirectories of a directory just listed are listed ahead (one
    page each) while find reads the tree: still one LIST per small directory,
    and a directory of more than one page is shown whole (its look ahead is
    not taken for its listing)."""
    tree = [f"t/d{i}/f{j}" for i in range(6) for j in range(3)] + ["t/top"]
    long_dir = [f"t/d9/k{j:04d}" for j in range(1001)]  # two LIST pages
    put_many(bucket, [(key, b"x") for key in tree + long_dir])
    daemon = start_daemon(mount=True, args=["--listing-freshness", "1h"])
    root = daemon.mountpoint / bucket
    found = subprocess.run(["find", str(root / "t")], capture_output=True, text=True,
                           check=True, timeout=120).stdout.split()
    files = sorted(os.path.relpath(p, root) for p in found if os.path.basename(p).startswith(
        ("f", "k", "top")))
    assert files == sorted(tree + long_dir)
    made = [q["prefix"] for q in lists(moto_server.app, bucket) if q.get("delimiter") == "/"]
    small = ["t/", *[f"t/d{i}/" for i in range(6)]]
    assert {p: made.count(p) for p in small} == dict.fromkeys(small, 1), made
    # the long one: at most its look ahead's page, then its own two pages
    assert made.count("t/d9/") in (2, 3), made
    assert "Traceback" not in daemon.log_text()
    assert daemon.stop() == 0
