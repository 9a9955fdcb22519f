"""Cold reads through the mount stream while the object downloads (issue 11).

The daemon runs as a subprocess with a real FUSE mount over moto's S3; a
slow body (CountingApp.slow_paths) makes "before the download ends"
observable, the fault proxy cuts a GET mid-stream, and CountingApp counts
the body bytes S3 sent.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from fault_proxy import FaultProxy

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]

KIB = 1 << 10
MIB = 1 << 20
PART = 256 * KIB
SMALL_PARTS = ["--download-part-size", str(PART)]


def _wait(predicate, seconds: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_open_and_first_bytes_come_before_the_download_ends(start_daemon, s3, bucket,
                                                            moto_server):
    body = os.urandom(4 * MIB)
    s3.put_object(Bucket=bucket, Key="slow", Body=body)
    daemon = start_daemon(mount=True, args=["--bucket", bucket, *SMALL_PARTS])
    path = daemon.mountpoint / bucket / "slow"
    os.stat(path)
    moto_server.app.slow_paths[f"/{bucket}/slow"] = 0.2  # 64 KiB per 200 ms: 13 s whole
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            first = os.pread(fd, 4096, 0)
            # with at most half the body sent by S3 (the old open waited for all of it)
            sent = moto_server.app.bytes_sent.get(f"/{bucket}/slow", 0)
            assert first == body[:4096]
            assert sent <= len(body) // 2, sent
            assert daemon.status()["downloads_in_progress"] == "1"
        finally:
            os.close(fd)
        # the last reader closed with most of the object missing: the download stops
        _wait(lambda: moto_server.app.gets_in_flight == 0, what="the GETs to stop")
        _wait(lambda: os.listdir(daemon.home / "tmp") == [], what="tmp/ to empty")
    finally:
        moto_server.app.slow_paths.clear()
    assert not (daemon.data / bucket / "slow").exists()
    sent = moto_server.app.bytes_sent.get(f"/{bucket}/slow", 0)
    assert sent <= 2 * PART, sent  # head -c 1 costs at most two parts
    # opened again, read whole: the bytes of S3, installed in data/
    assert path.read_bytes() == body
    _wait(lambda: (daemon.data / bucket / "slow__meta__").exists(), what="the install")
    assert (daemon.data / bucket / "slow").read_bytes() == body
    assert daemon.stop() == 0, daemon.log_text()


def test_the_tail_of_a_cold_object_costs_one_ranged_get(start_daemon, s3, bucket, moto_server):
    body = os.urandom(4 * MIB)  # the footer lies in the last part
    s3.put_object(Bucket=bucket, Key="table.parquet", Body=body)
    daemon = start_daemon(mount=True, args=["--bucket", bucket, *SMALL_PARTS])
    path = daemon.mountpoint / bucket / "table.parquet"
    os.stat(path)
    moto_server.app.slow_paths[f"/{bucket}/table.parquet"] = 0.05
    try:
        tail = subprocess.run(["tail", "-c", "65536", str(path)], capture_output=True,
                              check=True, timeout=30).stdout
    finally:
        moto_server.app.slow_paths.clear()
    assert tail == body[-65536:]
    _wait(lambda: moto_server.app.gets_in_flight == 0, what="the GETs to stop")
    sent = moto_server.app.bytes_sent.get(f"/{bucket}/table.parquet", 0)
    # part 0 from the open's GET (it asks for part 0 only, read to its end:
    # no body cut, which S3 servers log as a connection reset) and the last
    # part, not the whole object
    assert sent <= 2 * PART + 128 * KIB, sent
    assert moto_server.app.gets(bucket, "table.parquet") == 2
    assert moto_server.app.bodies_cut.get(f"/{bucket}/table.parquet", 0) == 0
    assert daemon.stop() == 0, daemon.log_text()


def test_concurrent_readers_at_different_offsets_get_s3s_bytes(start_daemon, s3, bucket,
                                                               moto_server):
    body = os.urandom(6 * MIB + 777)
    s3.put_object(Bucket=bucket, Key="shared", Body=body)
    daemon = start_daemon(mount=True, args=["--bucket", bucket, *SMALL_PARTS])
    path = daemon.mountpoint / bucket / "shared"
    os.stat(path)
    moto_server.app.slow_paths[f"/{bucket}/shared"] = 0.005
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def read_from(start: int) -> None:
        try:
            with open(path, "rb", buffering=0) as f:
                f.seek(start)
                chunks = []
                while chunk := f.read(100_000):
                    chunks.append(chunk)
                results[start] = b"".join(chunks)
        except BaseException as exc:
            errors.append(exc)

    starts = [0, 1 * MIB + 3, 3 * MIB, 6 * MIB]
    try:
        threads = [threading.Thread(target=read_from, args=(s,)) for s in starts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        moto_server.app.slow_paths.clear()
    assert not errors, errors
    for start in starts:
        assert results[start] == body[start:], start
    _wait(lambda: (daemon.data / bucket / "shared__meta__").exists(), what="the install")
    assert (daemon.data / bucket / "shared").read_bytes() == body
    # one download for every reader: every byte sent once, by one GET per part
    # (the first GET asks for the first part only), no body cut short
    _wait(lambda: moto_server.app.gets_in_flight == 0, what="every GET body to end")
    assert moto_server.app.bytes_sent[f"/{bucket}/shared"] == len(body)
    assert moto_server.app.gets(bucket, "shared") == -(-len(body) // PART)
    assert moto_server.app.bodies_cut.get(f"/{bucket}/shared", 0) == 0
    assert daemon.stop() == 0, daemon.log_text()


def test_a_get_cut_mid_stream_gives_eio_never_short_data(start_daemon, s3, bucket,
                                                         moto_server):
    proxy = FaultProxy(moto_server.port)
    try:
        body = os.urandom(1 * MIB)
        s3.put_object(Bucket=bucket, Key="cut", Body=body)
        daemon = start_daemon(mount=True, args=["--bucket", bucket],
                              endpoint=proxy.endpoint)
        path = daemon.mountpoint / bucket / "cut"
        os.stat(path)
        proxy.cut[f"/{bucket}/cut"] = 300 * KIB
        fd = os.open(path, os.O_RDONLY)
        try:
            assert os.pread(fd, 64 * KIB, 0) == body[:64 * KIB]  # landed before the cut
            with pytest.raises(OSError) as raised:
                os.pread(fd, 64 * KIB, 512 * KIB)
            assert raised.value.errno == errno.EIO
        finally:
            os.close(fd)
        with pytest.raises(OSError) as raised:
            path.read_bytes()
        assert raised.value.errno == errno.EIO
        assert not (daemon.data / bucket / "cut__meta__").exists()
        _wait(lambda: os.listdir(daemon.home / "tmp") == [], what="tmp/ to empty")
        proxy.cut.clear()
        assert path.read_bytes() == body
        assert daemon.stop() == 0, daemon.log_text()
    finally:
        proxy.stop()


def test_a_version_changed_mid_stream_keeps_serving_the_one_opened(start_daemon, s3, bucket,
                                                                   moto_server):
    old = os.urandom(1 * MIB)
    s3.put_object(Bucket=bucket, Key="v", Body=old)
    daemon = start_daemon(mount=True, args=["--bucket", bucket, "--freshness-window", "0"])
    path = daemon.mountpoint / bucket / "v"
    os.stat(path)
    moto_server.app.slow_paths[f"/{bucket}/v"] = 0.02
    try:
        with open(path, "rb", buffering=0) as f:
            first = f.read(64 * KIB)
            new = os.urandom(1 * MIB)
            s3.put_object(Bucket=bucket, Key="v", Body=new)
            rest = f.read()
    finally:
        moto_server.app.slow_paths.clear()
    assert first + rest == old
    assert path.read_bytes() == new  # a new open checks again
    assert daemon.stop() == 0, daemon.log_text()


def test_empty_object_and_tail_of_a_small_cold_object(start_daemon, s3, bucket):
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    s3.put_object(Bucket=bucket, Key="log.txt", Body=b"".join(b"line %d\n" % i
                                                              for i in range(5000)))
    daemon = start_daemon(mount=True, args=["--bucket", bucket])
    mnt = daemon.mountpoint / bucket
    assert (mnt / "empty").read_bytes() == b""
    tail = subprocess.run(["tail", "-n", "2", str(mnt / "log.txt")], capture_output=True,
                          check=True, timeout=30).stdout
    assert tail == b"line 4998\nline 4999\n"
    _wait(lambda: (daemon.data / bucket / "empty__meta__").exists(), what="the install")
    assert (daemon.data / bucket / "empty").read_bytes() == b""
    assert daemon.stop() == 0, daemon.log_text()


def test_sigterm_and_eviction_while_streaming(start_daemon, s3, bucket, moto_server):
    body = os.urandom(2 * MIB)
    s3.put_object(Bucket=bucket, Key="streaming", Body=body)
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"filler{i}", Body=os.urandom(1 * MIB))
    daemon = start_daemon(mount=True, args=["--bucket", bucket, "--max-cache-size", "3M"])
    for i in range(3):
        daemon.ok("PULL", bucket, f"filler{i}")
    path = daemon.mountpoint / bucket / "streaming"
    os.stat(path)
    moto_server.app.slow_paths[f"/{bucket}/streaming"] = 0.3  # ten seconds for the body
    try:
        fd = os.open(path, os.O_RDONLY)
        assert os.pread(fd, 4096, 0) == body[:4096]
        # the download's room evicted the fillers; the streaming file is not in data/ yet
        _wait(lambda: not (daemon.data / bucket / "filler0").exists(), what="eviction")
        assert os.pread(fd, 4096, 0) == body[:4096]
        outcome: list[BaseException | bytes] = []

        def read_far() -> None:
            try:
                outcome.append(os.pread(fd, 4096, 2 * MIB - 4096))
            except OSError as exc:
                outcome.append(exc)

        reads = int(daemon.status()["fuse_reads"])
        reader = threading.Thread(target=read_far)
        reader.start()
        # the far read is in the daemon, waiting for its part
        _wait(lambda: int(daemon.status()["fuse_reads"]) > reads, what="the far read to arrive")
        code = daemon.stop(signal.SIGTERM)
        reader.join(10)
        try:
            os.close(fd)
        except OSError:
            pass  # the mount is gone
    finally:
        moto_server.app.slow_paths.clear()
    log = daemon.log_text()
    assert code == 0, log
    assert "Traceback" not in log, log
    assert len(outcome) == 1 and isinstance(outcome[0], OSError), outcome
    assert outcome[0].errno in (errno.EIO, errno.ENOTCONN), outcome
    assert os.listdir(daemon.home / "tmp") == []
    assert not (daemon.data / bucket / "streaming__meta__").exists()


def test_an_unclean_reboot_drops_what_was_installed_after_the_checkpoint(
        start_daemon, s3, bucket, moto_server, monkeypatch, tmp_path):
    s3.put_object(Bucket=bucket, Key="synced", Body=b"before the checkpoint")
    s3.put_object(Bucket=bucket, Key="unsynced", Body=b"after the checkpoint")
    home = tmp_path / "home"
    state = home / "state" / "checkpoint"
    monkeypatch.setenv("S3POOL_BOOT_ID", "boot-1")
    daemon = start_daemon(home=home, args=["--checkpoint-interval", "0.1"])
    daemon.ok("PULL", bucket, "synced")
    installed = time.time()
    _wait(lambda: state.exists() and json.loads(state.read_text())["time"] > installed,
          what="a checkpoint after the install")
    assert json.loads(state.read_text())["boot_id"] == "boot-1"
    daemon.ok("SET", "checkpoint_interval", "1h")
    time.sleep(1.5)  # file times are coarse: keep the moments apart
    checkpoint = time.time()
    time.sleep(1.5)
    daemon.ok("PULL", bucket, "unsynced")
    daemon.kill()  # SIGKILL: no final sync
    # the machine did not go down (same boot): nothing is dropped or fetched again
    state.write_text(json.dumps({"boot_id": "boot-1", "time": checkpoint}))
    again = start_daemon(home=home)
    for key in ("synced", "unsynced"):
        again.ok("PULL", bucket, key)
    # one download each (a first-part GET: 206), then 304s
    assert moto_server.app.gets(bucket, "synced", status=206) == 1
    assert moto_server.app.gets(bucket, "unsynced", status=206) == 1
    again.kill()
    # now a reboot since that checkpoint: what came after it is not served unchecked
    state.write_text(json.dumps({"boot_id": "boot-1", "time": checkpoint}))
    monkeypatch.setenv("S3POOL_BOOT_ID", "boot-2")
    rebooted = start_daemon(home=home)
    assert not (home / "data" / bucket / "unsynced").exists()
    assert (home / "data" / bucket / "synced").read_bytes() == b"before the checkpoint"
    rebooted.ok("PULL", bucket, "synced")
    path = rebooted.ok("PULL", bucket, "unsynced")[0]
    assert open(path, "rb").read() == b"after the checkpoint"
    assert moto_server.app.gets(bucket, "synced", status=206) == 1
    assert moto_server.app.gets(bucket, "unsynced", status=206) == 2
    # the new boot's first checkpoint: a sync as the checkpoint task starts, which
    # may come after the control socket answers the PULLs above
    _wait(lambda: json.loads(state.read_text())["boot_id"] == "boot-2",
          what="a checkpoint of the new boot")
    assert rebooted.stop() == 0, rebooted.log_text()


def test_a_pull_after_a_footer_read_fetches_part_0(start_daemon, s3, bucket):
    """A footer read first, then a PULL: the PULL gets every part, part 0 too
    (from the open GET's body, which asks for part 0 only and is read to its
    end; one that carries more, from a server that ignored the Range, is left
    unread and part 0 comes from a ranged GET). Before, a ranged GET of the
    footer's part had moved the scan for free parts past part 0 while the body
    still held it: the PULL never ended."""
    body = os.urandom(3 * MIB)
    s3.put_object(Bucket=bucket, Key="footer-first", Body=body)
    daemon = start_daemon(mount=True, args=["--bucket", bucket, "--download-part-size", "1M"])
    path = daemon.mountpoint / bucket / "footer-first"
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 64 * KIB, len(body) - 64 * KIB) == body[-64 * KIB:]
        status, lines = daemon.request("PULL", bucket, "footer-first", timeout=30)
        assert status == "OK", (status, lines)
        assert open(lines[0], "rb").read() == body
    finally:
        os.close(fd)
