"""The first file opened through the mount after a start does not wait for
the whole bucket to be listed: names are asked of S3 (a HEAD) while the
listing runs in the background. For a bucket of millions of keys the
listing takes minutes; the original mount blocked every first lookup on it."""

import os
import time

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]

LIST_SECONDS = 6.0


def test_the_first_file_opened_does_not_wait_for_the_bucket_listing(start_daemon, s3, bucket,
                                                                     moto_server):
    s3.put_object(Bucket=bucket, Key="part-0001.bin", Body=b"payload")
    for i in range(20):
        s3.put_object(Bucket=bucket, Key=f"other/k{i:02d}", Body=b"x")
    for path in (f"/{bucket}", f"/{bucket}/"):  # every LIST of the bucket is slow
        moto_server.app.slow_paths[path] = LIST_SECONDS
    daemon = start_daemon(mount=True)
    started = time.monotonic()
    assert (daemon.mountpoint / bucket / "part-0001.bin").read_bytes() == b"payload"
    took = time.monotonic() - started
    assert took < LIST_SECONDS / 2, f"the open waited {took:.1f}s: for the listing"
    assert moto_server.app.gets(bucket, "part-0001.bin") == 1
    # the listing went on in the background: the directory shows every name
    assert sorted(os.listdir(daemon.mountpoint / bucket)) == ["other", "part-0001.bin"]
    assert len(os.listdir(daemon.mountpoint / bucket / "other")) == 20
    assert "Traceback" not in daemon.log_text()
    assert daemon.stop() == 0


def test_a_name_asked_of_an_s3_that_is_down_before_the_listing_is_eio(start_daemon, tmp_path):
    """No listing yet and S3 unreachable: the mount cannot tell whether the
    name exists, and says so (EIO), rather than "no such file"."""
    import errno

    import pytest
    from conftest import MotoServer

    server = MotoServer()
    server.client().create_bucket(Bucket="gone")
    server.client().put_object(Bucket="gone", Key="f.txt", Body=b"f")
    daemon = start_daemon(mount=True, endpoint=server.endpoint, args=["--bucket", "gone"])
    assert os.listdir(daemon.mountpoint) == ["gone"]  # named at start: no S3 request needed
    server.stop()
    with pytest.raises(OSError) as info:
        (daemon.mountpoint / "gone" / "f.txt").read_bytes()
    assert info.value.errno == errno.EIO, info.value
    assert daemon.process.poll() is None
    assert daemon.stop() == 0
