"""The first file opened through the mount after a start does not wait for
the whole bucket to be listed: names are asked of S3 (a HEAD) while the
listing runs in the background. For a bucket of millions of keys the
listing takes minutes; the original mount blocked every first lookup on it."""

import os
import threading

import pytest

from conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]


def test_the_first_file_opened_does_not_wait_for_the_bucket_listing(start_daemon, s3, bucket,
                                                                     moto_server):
    s3.put_object(Bucket=bucket, Key="part-0001.bin", Body=b"payload")
    for i in range(20):
        s3.put_object(Bucket=bucket, Key=f"other/k{i:02d}", Body=b"x")
    listed = threading.Event()  # every LIST of the bucket waits until it is set
    for path in (f"/{bucket}", f"/{bucket}/"):
        moto_server.app.held_paths[path] = listed
    daemon = start_daemon(mount=True)
    read: dict[str, bytes] = {}
    reader = threading.Thread(target=lambda: read.update(
        body=(daemon.mountpoint / bucket / "part-0001.bin").read_bytes()), daemon=True)
    reader.start()
    try:
        # the file is read while the listing is held: the open did not wait for it
        wait_until(lambda: "body" in read, 60, "the first open to return while the "
                   "bucket's listing is held back (did the open wait for the listing?)")
        wait_until(lambda: moto_server.app.held >= 1, 30, "the bucket's LIST to reach S3")
    finally:
        listed.set()
    reader.join(30)
    assert read["body"] == b"payload"
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
