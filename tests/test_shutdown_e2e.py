"""Stopping the daemon while downloads are in flight: exit 0, every request
answered, readers of the mount get EIO, nothing half-installed."""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import pytest

from conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]


def test_sigterm_during_a_mount_download_and_a_pull(start_daemon, s3, bucket, moto_server):
    s3.put_object(Bucket=bucket, Key="slow-read", Body=os.urandom(2 << 20))
    s3.put_object(Bucket=bucket, Key="slow-pull", Body=os.urandom(2 << 20))
    daemon = start_daemon(mount=True, args=["--bucket", bucket])
    for key in ("slow-read", "slow-pull"):
        moto_server.app.slow_paths[f"/{bucket}/{key}"] = 0.3  # a minute for the body
    try:
        reader = subprocess.Popen(["cat", str(daemon.mountpoint / bucket / "slow-read")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        replies = []
        puller = threading.Thread(
            target=lambda: replies.append(daemon.request("PULL", bucket, "slow-pull")))
        puller.start()
        # both bodies are on their way and cat's read waits in the daemon
        wait_until(lambda: moto_server.app.gets_in_flight >= 2
                   and all(moto_server.app.bytes_sent.get(f"/{bucket}/{key}", 0) > 0
                           for key in ("slow-read", "slow-pull"))
                   and int(daemon.status()["fuse_reads"]) >= 1,
                   20, "the downloads to be under way")
        code = daemon.stop(signal.SIGTERM)
        puller.join(10)
        reader_code = reader.wait(10)
    finally:
        moto_server.app.slow_paths.clear()
    log = daemon.log_text()
    assert code == 0, log
    assert "Traceback" not in log, log
    assert replies and replies[0][0] == "ERROR", replies
    assert "stopping" in " ".join(replies[0][1]), replies
    assert reader_code != 0
    assert b"Input/output error" in reader.stderr.read()
    assert not os.path.ismount(daemon.mountpoint)
    assert os.listdir(daemon.home / "tmp") == []
    assert not (daemon.data / bucket / "slow-read__meta__").exists()
