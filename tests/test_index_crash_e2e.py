"""Listing indexes are written without an fsync (listing/index.py): the crash
checkpoint covers them as it covers the objects. A write into an index in
place makes the checkpoint sync; after an unclean reboot a torn index is
taken away and listed again, a sound one is kept.

Real daemons (subprocesses) on moto's server; a reboot is faked with
S3POOL_BOOT_ID as in test_stream_e2e."""

from __future__ import annotations

import pytest

from conftest import list_requests, put_many, wait_until

pytestmark = pytest.mark.e2e

KEYS = [f"in/{i:04d}.csv" for i in range(400)]




def listed_then_killed(start_daemon, bucket, home, monkeypatch):
    put_many(bucket, [(key, b"x") for key in KEYS])
    monkeypatch.setenv("S3POOL_BOOT_ID", "boot-1")
    daemon = start_daemon(home=home, args=["--listing-freshness", "1h"])
    assert daemon.ok("GLOB", bucket, "in/*") == KEYS
    daemon.kill()  # SIGKILL: no last sync
    return home / "state" / "listings" / bucket / "index.db"


def test_an_unclean_reboot_takes_a_torn_index_away(
        start_daemon, s3, bucket, moto_server, monkeypatch, tmp_path):
    home = tmp_path / "home"
    index = listed_then_killed(start_daemon, bucket, home, monkeypatch)
    # what a crash can leave of pages written without an fsync
    assert index.stat().st_size > 3 * 4096
    with open(index, "r+b") as f:
        f.seek(4096)
        f.write(b"\xff" * 8192)
    s3.put_object(Bucket=bucket, Key="in/new.csv", Body=b"x")
    monkeypatch.setenv("S3POOL_BOOT_ID", "boot-2")
    rebooted = start_daemon(home=home, args=["--listing-freshness", "1h"])
    assert rebooted.ok("GLOB", bucket, "in/*") == KEYS + ["in/new.csv"]
    assert "may be torn" in rebooted.log_text()
    assert rebooted.stop() == 0


def test_a_sound_index_outlives_an_unclean_reboot(
        start_daemon, s3, bucket, moto_server, monkeypatch, tmp_path):
    home = tmp_path / "home"
    listed_then_killed(start_daemon, bucket, home, monkeypatch)
    before = len(list_requests(moto_server.app, bucket))
    monkeypatch.setenv("S3POOL_BOOT_ID", "boot-2")
    rebooted = start_daemon(home=home, args=["--listing-freshness", "1h"])
    assert rebooted.ok("GLOB", bucket, "in/*") == KEYS
    assert len(list_requests(moto_server.app, bucket)) == before  # served as it was
    assert "may be torn" not in rebooted.log_text()
    assert rebooted.stop() == 0


def test_a_directory_merged_into_the_index_is_synced_by_the_checkpoint(
        start_daemon, s3, bucket, moto_server):
    put_many(bucket, [(key, b"x") for key in KEYS[:10]])
    daemon = start_daemon(args=["--checkpoint-interval", "0.1", "--listing-freshness", "0"])
    wait_until(lambda: int(daemon.status()["checkpoints"]) >= 1, 30, "the first checkpoint")
    synced = int(daemon.status()["checkpoints"])
    # a GLOB with a literal prefix lists it again (listing_freshness 0) and
    # merges it into the index in place; nothing is installed in data/
    assert daemon.ok("GLOB", bucket, "in/*") == KEYS[:10]
    assert list_requests(moto_server.app, bucket)[-1]["prefix"] == "in/"
    wait_until(lambda: int(daemon.status()["checkpoints"]) > synced, 30,
               "a checkpoint after the merge")
    assert daemon.stop() == 0
