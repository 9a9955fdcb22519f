"""Writing through the mount (--mount-writes, issue 21), end to end: the real
daemon as a subprocess with a FUSE mount, moto's S3 server over HTTP."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import wait_until
from fault_proxy import FaultProxy

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]

MiB = 1 << 20


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def s3_bytes(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def s3_has(s3, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except s3.exceptions.ClientError:
        return False
    return True


def staged_files(daemon) -> list[str]:
    """Files being written, staged in tmp/ (not the listings built there meanwhile)."""
    return [name for name in os.listdir(daemon.home / "tmp") if name.startswith("put.")]


def pending_uploads(s3, bucket: str) -> list[dict]:
    return s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


@pytest.fixture
def writable(start_daemon, s3, bucket):
    s3.put_object(Bucket=bucket, Key="old.txt", Body=b"old object")
    daemon = start_daemon(mount=True, args=["--bucket", bucket, "--mount-writes"])
    yield daemon, daemon.mountpoint / bucket
    assert daemon.stop() == 0, daemon.log_text()


def test_cp_small_large_empty_and_dd(writable, s3, bucket, moto_server, tmp_path):
    daemon, root = writable
    sources = {"small.bin": os.urandom(1024), "large.bin": os.urandom(20 * MiB),
               "empty.bin": b""}
    for name, data in sources.items():
        src = tmp_path / name
        src.write_bytes(data)
        subprocess.run(["cp", str(src), str(root / name)], check=True)
    wait_until(lambda: s3_has(s3, bucket, "empty.bin"), what="the empty file on S3")
    # dd in 1 MiB blocks, through a subdirectory made with mkdir
    os.mkdir(root / "dd")
    block = os.urandom(MiB)
    subprocess.run(["dd", "if=/dev/stdin", f"of={root / 'dd' / 'out.bin'}", "bs=1M",
                    "count=12", "iflag=fullblock", "status=none"],
                   input=block * 12, check=True)
    sources["dd/out.bin"] = block * 12
    for key, data in sources.items():
        assert sha256(s3_bytes(s3, bucket, key)) == sha256(data), key
    # the 20 MiB file went up in parts
    assert moto_server.app.count("POST", f"/{bucket}/large.bin") >= 2  # create + complete
    # the cache serves each at once: a PULL right after makes no GET
    gets_before = {key: moto_server.app.gets(bucket, key) for key in sources}
    for key, data in sources.items():
        path = daemon.ok("PULL", bucket, key)[0]
        with open(path, "rb") as f:
            assert sha256(f.read()) == sha256(data)
        assert (root / key).read_bytes() == data
    # (the GETs counted above are this test's own boto3 reads)
    assert {key: moto_server.app.gets(bucket, key) for key in sources} == gets_before
    status = daemon.status()
    assert status["mount_writes"] == "on"
    assert int(status["mount_uploads"]) == 4


def test_parts_go_up_while_the_file_is_written_and_nothing_shows_before_close(
        writable, s3, bucket, moto_server):
    daemon, root = writable
    key = "growing.bin"
    data = os.urandom(26 * MiB)
    fd = os.open(root / key, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    try:
        os.write(fd, data[:25 * MiB])
        # three 8 MiB parts are full: they are sent before the close
        wait_until(lambda: moto_server.app.count("PUT", f"/{bucket}/{key}") >= 3,
                 what="parts sent while the file is open")
        assert os.fstat(fd).st_size == 25 * MiB
        # nobody sees it yet: not S3, not PULL, not GLOB, not another lookup
        assert not s3_has(s3, bucket, key)
        status, lines = daemon.request("PULL", bucket, key)
        assert status != "OK"
        assert key not in daemon.ok("GLOB", bucket, "*.bin")
        assert key not in os.listdir(root)
        os.write(fd, data[25 * MiB:])
    finally:
        os.close(fd)
    assert sha256(s3_bytes(s3, bucket, key)) == sha256(data)
    assert daemon.ok("GLOB", bucket, "growing*")[0].endswith(key)
    assert not pending_uploads(s3, bucket)
    assert not staged_files(daemon)


def test_failing_upload_makes_cp_fail_and_leaves_nothing(start_daemon, s3, bucket,
                                                         moto_server, tmp_path):
    proxy = FaultProxy(moto_server.port)
    try:
        daemon = start_daemon(mount=True, endpoint=proxy.endpoint,
                              args=["--bucket", bucket, "--mount-writes"])
        root = daemon.mountpoint / bucket
        proxy.fail_methods = {"PUT", "POST"}
        small, large = tmp_path / "small", tmp_path / "large"
        small.write_bytes(b"x" * 1000)
        large.write_bytes(os.urandom(18 * MiB))
        for src, key, fail in ((small, "small-fail", f"/{bucket}/small-fail"),
                               (large, "large-fail", f"/{bucket}/large-fail")):
            proxy.fail_status[fail] = (500, 1000)
            done = subprocess.run(["cp", str(src), str(root / key)], capture_output=True)
            assert done.returncode != 0, done
            assert b"Input/output error" in done.stderr
            assert not s3_has(s3, bucket, key)
            proxy.fail_status[fail] = (500, 0)
        # a part that fails: the multipart upload is aborted, nothing is left
        assert not pending_uploads(s3, bucket)
        assert not staged_files(daemon)
        assert int(daemon.status()["mount_upload_failures"]) == 2
        # the next try works
        subprocess.run(["cp", str(small), str(root / "small-fail")], check=True)
        assert s3_bytes(s3, bucket, "small-fail") == small.read_bytes()
        assert daemon.stop() == 0
    finally:
        proxy.stop()


@pytest.mark.parametrize("size", [1000, 20 * MiB])
def test_an_object_made_meanwhile_elsewhere_is_not_replaced(writable, s3, bucket, size):
    """S3 is asked to write only if the key is still free (If-None-Match: *):
    a file created in the mount never clobbers an object another writer made
    while it was being written (the peers' last writer wins)."""
    daemon, root = writable
    key = f"raced-{size}.bin"
    fd = os.open(root / key, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    try:
        os.write(fd, os.urandom(size))
        s3.put_object(Bucket=bucket, Key=key, Body=b"the other writer's")
    finally:
        with pytest.raises(OSError) as info:
            os.close(fd)
    assert info.value.errno == errno.EEXIST
    assert s3_bytes(s3, bucket, key) == b"the other writer's"
    assert not pending_uploads(s3, bucket)
    assert not staged_files(daemon)
    assert not (daemon.data / bucket / key).exists()


def test_refusals(start_daemon, s3, bucket, tmp_path):
    s3.put_object(Bucket=bucket, Key="old.txt", Body=b"old object")
    daemon = start_daemon(mount=True, args=["--bucket", bucket, "--mount-writes"])
    root = daemon.mountpoint / bucket

    def errno_of(fn, *args) -> int | None:
        with pytest.raises(OSError) as info:
            fn(*args)
        return info.value.errno

    # an existing object: EPERM without --mount-overwrite
    assert errno_of(os.open, root / "old.txt", os.O_WRONLY | os.O_TRUNC) == errno.EPERM
    assert errno_of(os.open, root / "old.txt", os.O_WRONLY | os.O_APPEND) == errno.EPERM
    done = subprocess.run(["cp", "/etc/hostname", str(root / "old.txt")], capture_output=True)
    assert done.returncode != 0 and b"not permitted" in done.stderr
    # a non-sequential write: EINVAL, and the file is not uploaded
    fd = os.open(root / "random.bin", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"a" * 100)
    assert errno_of(os.pwrite, fd, b"b", 10) == errno.EINVAL
    assert errno_of(os.pwrite, fd, b"b", 1000) == errno.EINVAL
    os.write(fd, b"c")  # still sequential: fine
    os.close(fd)
    assert s3_bytes(s3, bucket, "random.bin") == b"a" * 100 + b"c"
    # rename, links, chmod, chown, rm
    assert errno_of(os.rename, root / "old.txt", root / "new.txt") == errno.EPERM
    assert errno_of(os.link, root / "old.txt", root / "hard.txt") == errno.EPERM
    assert errno_of(os.symlink, "old.txt", root / "sym.txt") == errno.EPERM
    assert errno_of(os.chmod, root / "old.txt", 0o600) == errno.EPERM
    assert errno_of(os.chown, root / "old.txt", 1, 1) == errno.EPERM
    assert errno_of(os.unlink, root / "old.txt") == errno.EPERM
    assert errno_of(os.mkdir, daemon.mountpoint / "newbucket") == errno.EPERM
    # a written file is written: once closed, it is an object like the others
    assert errno_of(os.open, root / "random.bin", os.O_WRONLY | os.O_TRUNC) == errno.EPERM
    assert s3_bytes(s3, bucket, "old.txt") == b"old object"
    # a name that would collide with the cache's own files
    assert errno_of(os.open, root / "x__meta__", os.O_CREAT | os.O_WRONLY) == errno.EINVAL
    assert daemon.stop() == 0


def test_overwrite_and_delete_options(start_daemon, s3, bucket, moto_server):
    s3.put_object(Bucket=bucket, Key="old.txt", Body=b"old object")
    daemon = start_daemon(mount=True, args=["--bucket", bucket, "--mount-writes",
                                            "--mount-overwrite", "--mount-delete"])
    root = daemon.mountpoint / bucket
    assert (root / "old.txt").read_bytes() == b"old object"
    # O_TRUNC replaces the whole object; without it: EPERM
    with pytest.raises(OSError) as info:
        os.open(root / "old.txt", os.O_WRONLY)
    assert info.value.errno == errno.EPERM
    with open(root / "old.txt", "wb") as f:
        f.write(b"the new version")
    assert s3_bytes(s3, bucket, "old.txt") == b"the new version"
    gets = moto_server.app.gets(bucket, "old.txt")
    assert (root / "old.txt").read_bytes() == b"the new version"
    assert moto_server.app.gets(bucket, "old.txt") == gets
    os.unlink(root / "old.txt")
    assert not s3_has(s3, bucket, "old.txt")
    assert not os.path.exists(root / "old.txt")
    status, _ = daemon.request("PULL", bucket, "old.txt")
    assert status != "OK"
    assert daemon.stop() == 0


def test_without_mount_writes_everything_is_erofs(start_daemon, s3, bucket):
    s3.put_object(Bucket=bucket, Key="old.txt", Body=b"old object")
    daemon = start_daemon(mount=True, args=["--bucket", bucket])
    root = daemon.mountpoint / bucket
    for fn, args in ((os.open, (root / "new.txt", os.O_CREAT | os.O_WRONLY)),
                     (os.open, (root / "old.txt", os.O_WRONLY)),
                     (os.mkdir, (root / "d",)), (os.unlink, (root / "old.txt",)),
                     (os.rename, (root / "old.txt", root / "x"))):
        with pytest.raises(OSError) as info:
            fn(*args)
        assert info.value.errno == errno.EROFS, fn
    assert daemon.status()["mount_writes"] == "off"
    status, lines = daemon.request("SET", "mount_writes", "on")
    assert status != "OK" and "start" in " ".join(lines)
    assert daemon.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_daemon_stopped_during_a_write_leaves_nothing(start_daemon, s3, bucket, sig,
                                                      moto_server):
    daemon = start_daemon(mount=True, args=["--bucket", bucket, "--mount-writes"])
    root = daemon.mountpoint / bucket
    key = f"cut-{sig.name}.bin"
    writer = subprocess.Popen(
        ["python3", "-c", "import sys,os\n"
         "fd=os.open(sys.argv[1], os.O_CREAT|os.O_WRONLY, 0o644)\n"
         "os.write(fd, os.urandom(20 << 20)); print('written', flush=True)\n"
         "sys.stdin.read()\n", str(root / key)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert writer.stdout.readline() == b"written\n"
        # two parts are on S3 as parts of an upload in progress
        wait_until(lambda: moto_server.app.count("PUT", f"/{bucket}/{key}") >= 2,
                 what="parts sent")
        assert len(pending_uploads(s3, bucket)) == 1
        if sig == signal.SIGKILL:
            daemon.kill()
        else:
            assert daemon.stop(sig) == 0
    finally:
        writer.kill()
        writer.wait()
    assert not s3_has(s3, bucket, key)
    home = daemon.home
    assert not list((home / "data").rglob("cut-*"))
    # restarted, the daemon aborts what a SIGKILL left (SIGTERM aborted it already)
    if sig == signal.SIGTERM:
        assert not pending_uploads(s3, bucket)
    if sig == signal.SIGTERM:
        assert not staged_files(daemon)
    again = start_daemon(mount=True, home=home, args=["--bucket", bucket, "--mount-writes"])
    assert not staged_files(again)  # a SIGKILL's staged file is gone with tmp/
    wait_until(lambda: not pending_uploads(s3, bucket), what="leftover upload aborted")
    assert not s3_has(s3, bucket, key)
    assert not list((home / "state" / "uploads").iterdir())
    assert again.stop() == 0


@pytest.fixture
def public_mountpoint(public_dir):
    """A mount point every user can reach (pytest's tmp_path is 0700 root's)."""
    return public_dir


def _as_nobody(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command], user="nobody", group="nogroup",
                          extra_groups=[], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("allow_other,umask,nobody_may", [
    (False, "0022", False),  # other users cannot even see the mount
    (True, "0022", False),   # they see it, but the directory is 0755 and root's
    (True, "0000", True),    # every local user writes what the daemon's credentials can
])
def test_writer_as_nobody(start_daemon, s3, bucket, public_mountpoint, tmp_path,
                          allow_other, umask, nobody_may):
    from conftest import Daemon, fuse_available

    fuse_available()
    mnt = os.path.join(public_mountpoint, "mnt")
    args = ["--bucket", bucket, "--mount-writes", "--mount-umask", umask]
    if allow_other:
        args.append("--allow-other")
    daemon = Daemon(tmp_path / "home", s3.meta.endpoint_url, Path(mnt), args)
    try:
        daemon.start()
        target = f"{mnt}/{bucket}/by-nobody.txt"
        done = _as_nobody(f"printf 'written by nobody' > {target}")
        if nobody_may:
            assert done.returncode == 0, done.stderr
            assert s3_bytes(s3, bucket, "by-nobody.txt") == b"written by nobody"
            # uploaded, it is an object like the others: read-only (no --mount-overwrite)
            assert os.stat(target).st_mode & 0o777 == 0o444
        else:
            assert done.returncode != 0
            assert "Permission denied" in done.stderr, done.stderr
            assert not s3_has(s3, bucket, "by-nobody.txt")
        # positive control: the daemon's own user (root) writes in the same mount
        with open(f"{mnt}/{bucket}/by-root.txt", "wb") as f:
            f.write(b"root")
        assert s3_bytes(s3, bucket, "by-root.txt") == b"root"
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_no_room_in_the_cache_is_enospc_and_nothing_is_uploaded(start_daemon, s3, bucket,
                                                                 tmp_path):
    daemon = start_daemon(mount=True, args=["--bucket", bucket, "--mount-writes",
                                            "--max-cache-size", "4M"])
    root = daemon.mountpoint / bucket
    big = tmp_path / "big"
    big.write_bytes(os.urandom(6 * MiB))
    copy_is_enospc(big, root / "too-big.bin", s3, bucket, daemon)
    assert int(daemon.status()["mount_upload_failures"]) == 1
    # what fits goes up (positive control), and the staged bytes were given back
    small = tmp_path / "small"
    small.write_bytes(os.urandom(MiB))
    subprocess.run(["cp", str(small), str(root / "fits.bin")], check=True)
    assert s3_bytes(s3, bucket, "fits.bin") == small.read_bytes()
    assert daemon.stop() == 0


def test_a_full_disk_is_enospc_and_nothing_is_uploaded(small_home, start_daemon, s3, bucket,
                                                       tmp_path):
    """HOMEDIR on a 16 MiB tmpfs, filled but for 3 MiB: a 6 MiB file cannot be staged."""
    daemon = start_daemon(mount=True, home=small_home, args=["--bucket", bucket,
                                                             "--mount-writes"])
    root = daemon.mountpoint / bucket
    filler = small_home / "filler"
    st = os.statvfs(small_home)
    with open(filler, "wb") as f:
        f.write(b"\0" * (st.f_bavail * st.f_frsize - 3 * MiB))
    src = tmp_path / "six"
    src.write_bytes(os.urandom(6 * MiB))
    copy_is_enospc(src, root / "six.bin", s3, bucket, daemon)
    # with room again, the same copy works (positive control)
    filler.unlink()
    subprocess.run(["cp", str(src), str(root / "six.bin")], check=True)
    assert s3_bytes(s3, bucket, "six.bin") == src.read_bytes()
    assert daemon.stop() == 0


def copy_is_enospc(src, target, s3, bucket: str, daemon) -> None:
    """cp of *src* to *target* in the mount fails with ENOSPC, and nothing of it
    reached S3 or stayed staged in tmp/."""
    done = subprocess.run(["cp", str(src), str(target)], capture_output=True)
    assert done.returncode != 0
    assert b"No space left on device" in done.stderr, done.stderr
    assert not s3_has(s3, bucket, target.name)
    assert not staged_files(daemon)  # removed before close() returned


def test_fsync_uploads_and_ends_the_file(writable, s3, bucket):
    daemon, root = writable
    fd = os.open(root / "synced.txt", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"first and last")
        assert not s3_has(s3, bucket, "synced.txt")  # positive control for the next line
        os.fsync(fd)
        assert s3_bytes(s3, bucket, "synced.txt") == b"first and last"
        with pytest.raises(OSError) as info:
            os.write(fd, b" more")
        assert info.value.errno == errno.EIO
    finally:
        os.close(fd)  # the upload is done: closing changes nothing
    assert s3_bytes(s3, bucket, "synced.txt") == b"first and last"
    assert (root / "synced.txt").read_bytes() == b"first and last"


def test_shell_redirection_and_mkdir(writable, s3, bucket):
    daemon, root = writable
    # the shell opens, dup2s and closes a first descriptor before echo writes
    subprocess.run(["sh", "-c", f"{{ echo one; echo two; }} > '{root}/shell.txt'"], check=True)
    assert s3_bytes(s3, bucket, "shell.txt") == b"one\ntwo\n"
    # a script whose commands are processes of their own: each one's exit closes its
    # copy of the descriptor; the upload waits for the shell that opened the file
    subprocess.run(["sh", "-c", f"{{ /bin/echo one; /bin/echo two; /bin/true; }} "
                                f"> '{root}/children.txt'"], check=True)
    assert s3_bytes(s3, bucket, "children.txt") == b"one\ntwo\n"
    subprocess.run(["sh", "-c", f": > '{root}/empty-by-shell.txt'"], check=True)
    wait_until(lambda: s3_has(s3, bucket, "empty-by-shell.txt"), what="the empty file")
    assert s3_bytes(s3, bucket, "empty-by-shell.txt") == b""
    # mkdir: a directory of this daemon's until a file is written in it
    os.makedirs(root / "made" / "deeper")
    assert os.path.isdir(root / "made" / "deeper")
    with pytest.raises(FileExistsError):
        os.mkdir(root / "made")
    os.mkdir(root / "made" / "unused")
    os.rmdir(root / "made" / "unused")
    assert not os.path.exists(root / "made" / "unused")
    (root / "made" / "deeper" / "f.txt").write_bytes(b"in a new directory")
    assert s3_bytes(s3, bucket, "made/deeper/f.txt") == b"in a new directory"
    assert "f.txt" in os.listdir(root / "made" / "deeper")
    assert not [k for k in (o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
                if k.endswith("/")]  # no directory marker objects
