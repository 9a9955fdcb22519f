"""End to end through a real FUSE mount: the daemon as a subprocess with -m,
moto's S3 over HTTP, and plain os calls on the mount point."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time

import pytest

from conftest import MotoServer, finishes, put_many

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]


@pytest.fixture
def mounted(start_daemon, s3, bucket):
    for key, body in {
        "top.txt": b"top level\n",
        "dir/a.txt": b"A" * 1000,
        "dir/sub/b.bin": bytes(range(256)) * 64,
        "dir/sub/deep/c.txt": b"deep\n",
        "x__meta__": b"hidden: collides with our meta files",
    }.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    daemon = start_daemon(mount=True, args=["--bucket", bucket])
    yield daemon, daemon.mountpoint / bucket
    code = daemon.stop()
    assert code == 0, daemon.log_text()
    assert not os.path.ismount(daemon.mountpoint)


def test_listdir_and_stat_before_any_download(mounted, bucket, moto_server):
    daemon, root = mounted
    assert bucket in os.listdir(daemon.mountpoint)
    assert sorted(os.listdir(root)) == ["dir", "top.txt"]
    assert sorted(os.listdir(root / "dir")) == ["a.txt", "sub"]
    assert sorted(os.listdir(root / "dir" / "sub")) == ["b.bin", "deep"]
    st = os.stat(root / "dir" / "sub" / "b.bin")
    assert st.st_size == 256 * 64
    assert os.path.isdir(root / "dir" / "sub" / "deep")
    # sizes and times come from the listing: no object was fetched
    assert moto_server.app.gets(bucket, "dir/sub/b.bin") == 0
    assert abs(st.st_mtime - time.time()) < 3600
    assert not (daemon.data / bucket / "dir" / "sub" / "b.bin").exists()


def test_read_whole_files_and_ranges(mounted):
    daemon, root = mounted
    assert (root / "top.txt").read_bytes() == b"top level\n"
    data = bytes(range(256)) * 64
    with open(root / "dir" / "sub" / "b.bin", "rb") as f:
        f.seek(1000)
        assert f.read(300) == data[1000:1300]
        assert os.pread(f.fileno(), 10, len(data) - 5) == data[-5:]
    assert (root / "dir" / "sub" / "b.bin").read_bytes() == data


def test_second_open_of_unchanged_file_makes_no_s3_request(mounted, bucket, moto_server):
    daemon, root = mounted
    path = root / "dir" / "a.txt"
    assert path.read_bytes() == b"A" * 1000
    os.listdir(root / "dir")  # the bucket's first listing (built in the background) is in

    def not_lists() -> int:
        # LISTs are the listing's (the readdir's look ahead at dir/sub/ may
        # still be on its way), never an open's
        with moto_server.app.lock:
            return sum("list-type" not in r["query"] for r in moto_server.app.requests)

    before = not_lists()
    for _ in range(3):
        assert path.read_bytes() == b"A" * 1000
    assert not_lists() == before
    assert moto_server.app.gets(bucket, "dir/a.txt") == 1


def test_changed_object_seen_after_window_and_open_handle_keeps_old(start_daemon, s3, bucket,
                                                                   moto_server):
    s3.put_object(Bucket=bucket, Key="v.txt", Body=b"old version")
    daemon = start_daemon(mount=True, args=["--bucket", bucket, "--freshness-window", "1"])
    path = daemon.mountpoint / bucket / "v.txt"
    old_handle = open(path, "rb")
    assert old_handle.read(3) == b"old"
    s3.put_object(Bucket=bucket, Key="v.txt", Body=b"the new version, longer")
    time.sleep(1.3)
    assert path.read_bytes() == b"the new version, longer"
    # the handle opened before the change still reads the old bytes
    assert old_handle.read() == b" version"
    old_handle.close()
    # the old handle's reads must not leave the new version cut to the old size
    assert path.read_bytes() == b"the new version, longer"
    deadline = time.monotonic() + 5
    while os.stat(path).st_size != 23 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.stat(path).st_size == 23
    assert daemon.stop() == 0


def test_pull_and_open_share_one_download(mounted, bucket, moto_server):
    daemon, root = mounted
    [path] = daemon.ok("PULL", bucket, "dir/sub/deep/c.txt")
    assert (root / "dir" / "sub" / "deep" / "c.txt").read_bytes() == b"deep\n"
    assert open(path, "rb").read() == b"deep\n"
    assert moto_server.app.gets(bucket, "dir/sub/deep/c.txt") == 1
    # and the other way round
    assert (root / "top.txt").read_bytes() == b"top level\n"
    [path] = daemon.ok("PULL", bucket, "top.txt")
    assert moto_server.app.gets(bucket, "top.txt") == 1
    assert os.stat(path).st_size == os.stat(root / "top.txt").st_size


def test_writes_fail_with_erofs(mounted):
    daemon, root = mounted
    attempts = [
        lambda: open(root / "new.txt", "wb"),
        lambda: open(root / "top.txt", "r+b"),
        lambda: open(root / "top.txt", "ab"),
        lambda: os.mkdir(root / "newdir"),
        lambda: os.unlink(root / "top.txt"),
        lambda: os.rename(root / "top.txt", root / "moved.txt"),
        lambda: os.rmdir(root / "dir" / "sub" / "deep"),
        lambda: os.chmod(root / "top.txt", 0o777),
        lambda: os.symlink("top.txt", root / "link"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS, attempt


def test_missing_names_are_enoent_and_internal_files_hidden(mounted):
    daemon, root = mounted
    for missing in (root / "nope.txt", root / "dir" / "nope", daemon.mountpoint / "no-such-bkt"):
        with pytest.raises(FileNotFoundError):
            os.stat(missing)
    daemon.ok("PULL", root.name, "top.txt")
    # the mount lists the whole bucket in the background, once its directory
    # listings are through (listing_freshness, issue 19)
    deadline = time.monotonic() + 30
    while not (daemon.data / root.name / "__list__").exists():
        assert time.monotonic() < deadline, "no __list__ from the background listing"
        time.sleep(0.1)
    names = os.listdir(root)
    assert "__list__" not in names and "__index__" not in names
    assert not any(n.endswith("__meta__") for n in names)
    with pytest.raises(FileNotFoundError):
        os.stat(root / "__list__")
    with pytest.raises(FileNotFoundError):
        os.stat(root / "top.txt__meta__")


def test_statfs_reports_the_cache_filesystem(mounted):
    daemon, root = mounted
    ours = os.statvfs(daemon.mountpoint)
    cache = os.statvfs(daemon.data)
    assert ours.f_blocks == cache.f_blocks and ours.f_bsize == cache.f_bsize


def test_s3_down_gives_eio_and_the_mount_keeps_answering(start_daemon, tmp_path):
    server = MotoServer()
    client = server.client()
    client.create_bucket(Bucket="down")
    client.put_object(Bucket="down", Key="cached.txt", Body=b"cached")
    client.put_object(Bucket="down", Key="never.txt", Body=b"never read")
    daemon = start_daemon(mount=True, endpoint=server.endpoint,
                          args=["--bucket", "down", "--freshness-window", "0"])
    root = daemon.mountpoint / "down"
    assert (root / "cached.txt").read_bytes() == b"cached"
    # the listing is in (it is built in the background after the first lookup)
    assert sorted(os.listdir(root)) == ["cached.txt", "never.txt"]
    server.stop()
    with pytest.raises(OSError) as info:
        finishes((root / "never.txt").read_bytes, 60, "a read with S3 down")
    assert info.value.errno == errno.EIO
    # the mount is alive: listings and stat still answer
    assert sorted(os.listdir(root)) == ["cached.txt", "never.txt"]
    assert os.stat(root / "never.txt").st_size == len(b"never read")
    assert "never.txt" in daemon.log_text()
    assert daemon.stop() == 0
    assert not os.path.ismount(daemon.mountpoint)


def test_sigterm_unmounts_and_leaves_an_empty_directory(start_daemon, bucket, s3):
    s3.put_object(Bucket=bucket, Key="f", Body=b"f")
    daemon = start_daemon(mount=True, args=["--bucket", bucket])
    assert os.listdir(daemon.mountpoint) == [bucket]
    assert daemon.stop(signal.SIGTERM) == 0
    assert not os.path.ismount(daemon.mountpoint)
    assert os.listdir(daemon.mountpoint) == []


def test_refuses_a_non_empty_mount_point(tmp_path, moto_server):
    import sys

    mountpoint = tmp_path / "full"
    mountpoint.mkdir()
    (mountpoint / "something").write_text("x")
    result = subprocess.run(
        [sys.executable, "-m", "s3pool.cli.main", "-p", "0", "-D", str(tmp_path / "h"),
         "-m", str(mountpoint), "--embedded-s3", "no"],
        capture_output=True, text=True, timeout=30,
        env=dict(os.environ, AWS_ENDPOINT_URL=moto_server.endpoint),
    )
    assert result.returncode == 4
    assert "not empty" in result.stderr


def test_unknown_bucket_appears_on_first_lookup(start_daemon, s3):
    s3.create_bucket(Bucket="late-bucket")
    s3.put_object(Bucket="late-bucket", Key="k/v", Body=b"v")
    daemon = start_daemon(mount=True)
    assert os.listdir(daemon.mountpoint) == []
    assert os.listdir(daemon.mountpoint / "late-bucket") == ["k"]
    assert (daemon.mountpoint / "late-bucket" / "k" / "v").read_bytes() == b"v"
    assert "late-bucket" in os.listdir(daemon.mountpoint)
    assert daemon.stop() == 0


def test_inodes_are_stable_and_big_directories_stream(start_daemon, s3, bucket):
    keys = [f"big/{i:05d}.dat" for i in range(3000)] + ["big/zz/inner"]
    put_many(bucket, ((key, b"x") for key in keys))
    daemon = start_daemon(mount=True, args=["--bucket", bucket])
    big = daemon.mountpoint / bucket / "big"
    names = os.listdir(big)
    assert len(names) == 3001 and len(set(names)) == 3001
    first = os.stat(big / "01234.dat").st_ino
    daemon.ok("REFRESH", bucket)
    assert os.stat(big / "01234.dat").st_ino == first
    found = subprocess.run(["find", str(daemon.mountpoint / bucket)], capture_output=True,
                           text=True, timeout=120)
    assert found.returncode == 0
    assert len(found.stdout.splitlines()) == 1 + 1 + 3000 + 1 + 1
    assert daemon.stop() == 0


def test_restart_after_sigkill_clears_the_dead_mount(start_daemon, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    daemon = start_daemon(mount=True, args=["--bucket", bucket])
    mountpoint = daemon.mountpoint
    daemon.process.kill()
    daemon.process.wait(10)
    with pytest.raises(OSError) as info:
        os.listdir(mountpoint)
    assert info.value.errno == errno.ENOTCONN
    again = start_daemon(mount=False, args=["--bucket", bucket, "-m", str(mountpoint)],
                         port=daemon.port, home=daemon.home)
    deadline = time.monotonic() + 20
    while not os.path.ismount(mountpoint) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (mountpoint / bucket / "k").read_bytes() == b"v"
    assert again.stop() == 0
    assert not os.path.ismount(mountpoint)


def test_a_directory_of_100000_entries_streams(start_daemon, tmp_path):
    from s3pool.listing.build import write_listing
    from s3pool.s3.answers import ListEntry
    from s3pool.store.layout import Layout

    # the listing is what readdir serves: write a 100,000-key one directly
    home = tmp_path / "home"
    keys = [f"flat/{i:06d}.csv" for i in range(100_000)]
    pages = ([ListEntry(k, 10, 1.7e9, '"e"') for k in keys[i:i + 1000]]
             for i in range(0, len(keys), 1000))
    # dated now and within a long listing_freshness: served as it is (the bucket
    # is not on S3, and a stale directory would be listed again from there)
    info = {"source": "s3", "listed_at": time.time()}
    assert write_listing(Layout.create(str(home)), "synthetic", pages, info=info) == 100_000
    daemon = start_daemon(mount=True, home=home,
                          args=["--bucket", "synthetic", "--listing-freshness", "1h"])
    flat = daemon.mountpoint / "synthetic" / "flat"
    with os.scandir(flat) as entries:
        names = [entry.name for entry in entries]
    assert len(names) == 100_000 and len(set(names)) == 100_000
    assert sorted(names)[:2] == ["000000.csv", "000001.csv"]
    assert os.stat(flat / "099999.csv").st_size == 10
    assert daemon.stop() == 0


def test_a_pushed_key_appears_in_the_mount(mounted, bucket, tmp_path):
    daemon, root = mounted
    assert "fresh.txt" not in os.listdir(root)
    local = tmp_path / "fresh.txt"
    local.write_bytes(b"just pushed")
    daemon.ok("PUSH", bucket, "fresh.txt", str(local))
    assert "fresh.txt" in os.listdir(root)
    assert (root / "fresh.txt").read_bytes() == b"just pushed"



def test_a_key_written_after_the_listing_shows_on_lookup(start_daemon, s3, bucket,
                                                         moto_server):
    s3.put_object(Bucket=bucket, Key="listed", Body=b"x")
    daemon = start_daemon(mount=True, args=["--bucket", bucket])
    root = daemon.mountpoint / bucket
    assert os.listdir(root) == ["listed"]
    s3.put_object(Bucket=bucket, Key="late.txt", Body=b"written by another host")
    s3.put_object(Bucket=bucket, Key="newdir/inner", Body=b"y")
    assert (root / "late.txt").read_bytes() == b"written by another host"
    assert os.stat(root / "late.txt").st_size == len(b"written by another host")
    assert (root / "newdir").is_dir()
    assert sorted(os.listdir(root)) == ["late.txt", "listed", "newdir"]
    # a missing name is asked about once, then remembered
    heads = moto_server.app.count("HEAD", f"/{bucket}/nothing-here")
    for _ in range(5):
        assert not os.path.exists(root / "nothing-here")
    assert moto_server.app.count("HEAD", f"/{bucket}/nothing-here") == heads + 1
    assert daemon.stop() == 0
