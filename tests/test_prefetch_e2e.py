"""Read-ahead of the next files of a directory read in order (issue 11, cold reads).

The real daemon with a real FUSE mount over moto's S3; CountingApp records
every GET the server received, so "fetched before it was opened" is seen
from the server's side, and the cache's data/ shows what was installed.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import time
from itertools import pairwise

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]

KIB = 1 << 10
FILES = 20


def _wait(predicate, seconds: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _put_files(s3, bucket: str, count: int = FILES, size: int = 16 * KIB,
               prefix: str = "dir/") -> dict[str, bytes]:
    bodies = {}
    for i in range(count):
        name = f"f{i:03d}"
        bodies[name] = os.urandom(size)
        s3.put_object(Bucket=bucket, Key=prefix + name, Body=bodies[name])
    return bodies


def _mounted(start_daemon, bucket: str, *args: str):
    """A daemon with the mount, and its view of dir/ (listed once)."""
    daemon = start_daemon(mount=True, args=["--bucket", bucket, *args])
    directory = daemon.mountpoint / bucket / "dir"
    os.listdir(directory)
    return daemon, directory


def _gets(moto_server, bucket: str, names) -> int:
    return sum(moto_server.app.gets(bucket, f"dir/{name}") for name in names)


def test_reading_a_directory_in_order_fetches_the_next_files_ahead(start_daemon, s3, bucket,
                                                                   moto_server):
    bodies = _put_files(s3, bucket)
    names = sorted(bodies)
    daemon = start_daemon(mount=True, args=["--bucket", bucket])  # the default: 8 ahead
    directory = daemon.mountpoint / bucket / "dir"
    assert sorted(os.listdir(directory)) == names
    # three files in order: the next eight are fetched without being opened
    for name in names[:3]:
        assert (directory / name).read_bytes() == bodies[name]
    ahead = names[3:11]
    _wait(lambda: all((daemon.data / bucket / "dir" / f"{n}__meta__").exists() for n in ahead),
          what="the next files to be fetched ahead")
    assert all(moto_server.app.gets(bucket, f"dir/{n}") == 1 for n in ahead)
    assert _gets(moto_server, bucket, names[11:]) == 0  # no further than the window
    for name in names[3:]:
        assert (directory / name).read_bytes() == bodies[name]
    # one GET per file, whoever made it: the opens found the prefetched copies
    assert all(moto_server.app.gets(bucket, f"dir/{n}") == 1 for n in names)
    status = daemon.status()
    # the window is topped up as the reader goes: (nearly) every later file came ahead
    assert int(status["prefetches"]) >= FILES - 3 - 2, status["prefetches"]
    assert status["prefetch_hits"] == status["prefetches"]
    # a read-ahead is nobody's PULL: the opens are the requests counted
    assert status["pulls"] == str(FILES), status["pulls"]
    assert daemon.stop() == 0, daemon.log_text()


def _shuffled_without_neighbours(names: list[str], seed: int) -> list[str]:
    """*names* shuffled so that no file is followed by the next one in order."""
    rng = random.Random(seed)
    while True:
        order = names[:]
        rng.shuffle(order)
        if all(names.index(b) != names.index(a) + 1 for a, b in pairwise(order)):
            return order


def test_random_order_fetches_nothing_ahead(start_daemon, s3, bucket, moto_server):
    bodies = _put_files(s3, bucket)
    control = sorted(_put_files(s3, bucket, count=5, prefix="control/"))
    daemon, directory = _mounted(start_daemon, bucket)
    for name in _shuffled_without_neighbours(sorted(bodies), seed=11):
        assert (directory / name).read_bytes() == bodies[name]
    assert daemon.status()["prefetches"] == "0"
    # the positive control: three files of another directory read in order send
    # its last two ahead; once those reached S3, a prefetch the shuffled opens
    # started before them would have too
    other = daemon.mountpoint / bucket / "control"
    assert sorted(os.listdir(other)) == control
    for name in control[:3]:
        (other / name).read_bytes()
    _wait(lambda: all(moto_server.app.gets(bucket, f"control/{n}") == 1 for n in control[3:]),
          what="the control directory's files to be fetched ahead")
    assert _gets(moto_server, bucket, bodies) == FILES
    assert daemon.status()["prefetches"] == "2"
    assert daemon.stop() == 0, daemon.log_text()


def test_prefetch_files_0_turns_it_off(start_daemon, s3, bucket, moto_server):
    bodies = _put_files(s3, bucket, count=12)
    names = sorted(bodies)
    daemon, directory = _mounted(start_daemon, bucket, "--prefetch-files", "0")
    for name in names[:6]:
        assert (directory / name).read_bytes() == bodies[name]
    assert _gets(moto_server, bucket, names) == 6
    assert daemon.status()["prefetches"] == "0"
    # turned on at run time, it starts with the next three files read in order
    daemon.ok("SET", "prefetch_files", "3")
    for name in names[6:9]:
        assert (directory / name).read_bytes() == bodies[name]
    _wait(lambda: all(moto_server.app.gets(bucket, f"dir/{n}") == 1 for n in names[9:12]),
          what="three prefetches once SET turned it on")
    assert daemon.status()["prefetch_files"] == "3"
    # those three and no more: none was started while it was off (the positive
    # control: a prefetch of the first six opens would have been counted before these)
    assert daemon.status()["prefetches"] == "3"
    assert _gets(moto_server, bucket, names) == 12
    assert daemon.stop() == 0, daemon.log_text()


def test_objects_larger_than_a_part_are_not_fetched_ahead(start_daemon, s3, bucket,
                                                          moto_server):
    small = _put_files(s3, bucket, count=4, size=16 * KIB)  # f000..f003
    large = {f"f{i:03d}": os.urandom(300 * KIB) for i in range(4, 8)}
    for name, body in large.items():
        s3.put_object(Bucket=bucket, Key=f"dir/{name}", Body=body)
    s3.put_object(Bucket=bucket, Key="dir/f008", Body=b"small again")
    daemon, directory = _mounted(start_daemon, bucket, "--download-part-size", "256K",
                                 "--prefetch-files", "8")
    for name in sorted(small)[:3]:
        assert (directory / name).read_bytes() == small[name]
    # f003 and f008 are fetched ahead side by side: either GET may be counted first
    _wait(lambda: moto_server.app.gets(bucket, "dir/f008") == 1,
          what="the small file past the large ones to be fetched ahead")
    _wait(lambda: moto_server.app.gets(bucket, "dir/f003") == 1,
          what="the small file before the large ones to be fetched ahead")
    # f008 comes after the large files: a prefetch of them would have been sent before it
    assert _gets(moto_server, bucket, large) == 0
    assert daemon.status()["prefetches"] == "2"
    for name, body in large.items():
        assert (directory / name).read_bytes() == body
    assert daemon.stop() == 0, daemon.log_text()


def test_a_key_deleted_after_the_listing_fails_its_prefetch_quietly(start_daemon, s3, bucket,
                                                                     moto_server):
    bodies = _put_files(s3, bucket, count=10)
    names = sorted(bodies)
    daemon, directory = _mounted(start_daemon, bucket, "--prefetch-files", "4")
    s3.delete_object(Bucket=bucket, Key="dir/f004")  # still in the daemon's listing
    for name in names[:3]:
        assert (directory / name).read_bytes() == bodies[name]
    _wait(lambda: moto_server.app.gets(bucket, "dir/f004", status=404) == 1,
          what="the prefetch of the deleted key")
    for name in names[3:]:
        if name == "f004":
            with pytest.raises(OSError) as caught:
                (directory / name).read_bytes()
            assert caught.value.errno == errno.ENOENT
        else:
            assert (directory / name).read_bytes() == bodies[name]
    assert daemon.process.poll() is None
    assert "Traceback" not in daemon.log_text()
    assert daemon.stop() == 0, daemon.log_text()


def test_sigterm_with_prefetches_in_flight_exits_0(start_daemon, s3, bucket, moto_server):
    bodies = _put_files(s3, bucket, count=10)
    names = sorted(bodies)
    daemon, directory = _mounted(start_daemon, bucket, "--prefetch-files", "4")
    for name in names[3:]:
        moto_server.app.slow_paths[f"/{bucket}/dir/{name}"] = 1.5
    try:
        for name in names[:3]:
            assert (directory / name).read_bytes() == bodies[name]
        _wait(lambda: moto_server.app.gets_in_flight >= 4, what="four slow prefetches")
        assert daemon.stop(signal.SIGTERM) == 0, daemon.log_text()
    finally:
        moto_server.app.slow_paths.clear()
    assert not os.path.ismount(daemon.mountpoint)
