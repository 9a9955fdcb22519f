"""Keys listed from S3 that hold a newline or a carriage return (issue 17, point 2).

GLOB answers one key a line and ``__list__`` holds one key a line: such a key
would read as two. They are left out of both and out of the mount's
directory listings, logged once per listing, and reachable by name where a
name can carry them: a path opened on the mount. A PULL of one answers
ERROR (its reply gives one path a line).

PUSH refuses such keys and moto's HTTP front refuses a newline in a path, so
the test writes them into moto's backend directly (the server runs in this
process); a carriage return goes through HTTP.
"""

from __future__ import annotations

import os

import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

from conftest import raw_request

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]

INJECTED = "OK\nnl\nINJECTED-KEY\n"


def put_direct(bucket: str, key: str, body: bytes) -> None:
    s3_backends[DEFAULT_ACCOUNT_ID]["global"].put_object(bucket, key, body)


def test_keys_with_newlines_from_s3_forge_no_glob_line(start_daemon, s3, bucket, tmp_path):
    s3.put_object(Bucket=bucket, Key="OK", Body=b"ok")
    s3.put_object(Bucket=bucket, Key="plain/a.txt", Body=b"a")
    s3.put_object(Bucket=bucket, Key="cr\rkey", Body=b"carriage return")
    put_direct(bucket, INJECTED, b"forged")
    put_direct(bucket, "plain/new\nline/x", b"forged too")
    clean = ["OK", "plain/a.txt"]
    daemon = start_daemon(mount=True, args=["--bucket", bucket])
    root = daemon.mountpoint / bucket

    # the whole listing (read from __list__) and prefixes (read from the index)
    reply = raw_request(daemon.port, f'["GLOB", "{bucket}", "**"]\n'.encode())
    assert reply == b"OK\nOK\nplain/a.txt\n"
    assert daemon.ok("GLOB", bucket, "OK*") == ["OK"]
    assert daemon.ok("GLOB", bucket, "*") == ["OK"]
    assert daemon.ok("GLOB", bucket, "plain/**") == ["plain/a.txt"]
    assert daemon.ok("GLOB", bucket, "{OK,cr}**") == ["OK"]
    assert (daemon.data / bucket / "__list__").read_bytes() == b"OK\nplain/a.txt\n"
    # after a PUSH the index answers the whole listing too
    pushed = tmp_path / "pushed"
    pushed.write_bytes(b"pushed")
    assert daemon.ok("PUSH", bucket, "pushed", str(pushed)) == []
    assert daemon.ok("GLOB", bucket, "**") == [*clean, "pushed"]

    # the mount lists none of them
    assert sorted(os.listdir(root)) == ["OK", "plain", "pushed"]
    assert sorted(os.listdir(root / "plain")) == ["a.txt"]
    # a path carries the name: open by name works
    assert (root / "cr\rkey").read_bytes() == b"carriage return"
    # a PULL reply cannot (one path a line): a clear ERROR
    status, lines = daemon.request("PULL", bucket, "cr\rkey")
    assert status == "ERROR" and "one path a line" in lines[0], lines
    assert len(lines) == 1

    # logged once per key per listing, not per request
    for _ in range(3):
        daemon.ok("GLOB", bucket, "**")
    log_text = daemon.log_text()
    assert log_text.count("INJECTED-KEY") == 1, log_text
    assert daemon.ok("REFRESH", bucket) == []
    assert daemon.ok("GLOB", bucket, "**") == [*clean, "pushed"]
    assert daemon.log_text().count("INJECTED-KEY") == 2
    assert daemon.stop() == 0, daemon.log_text()


def test_keys_with_a_nul_are_left_out_of_glob_and_the_mount(start_daemon, s3, bucket):
    """A key holding a NUL (S3 lists it URL-encoded, %00): a C client
    reading a GLOB line would take "plain/a" from "plain/a<NUL>b", another
    key; the kernel would cut a file name there. Left out of GLOB,
    ``__list__`` and the mount's listings, and a PULL of it is refused."""
    s3.put_object(Bucket=bucket, Key="plain/a", Body=b"the real a")
    put_direct(bucket, "plain/a\x00b", b"not a")
    put_direct(bucket, "nul\x00dir/x", b"not a")
    daemon = start_daemon(mount=True, args=["--bucket", bucket])
    root = daemon.mountpoint / bucket
    assert daemon.ok("GLOB", bucket, "**") == ["plain/a"]
    assert daemon.ok("GLOB", bucket, "plain/**") == ["plain/a"]
    assert (daemon.data / bucket / "__list__").read_bytes() == b"plain/a\n"
    assert sorted(os.listdir(root)) == ["plain"]
    assert sorted(os.listdir(root / "plain")) == ["a"]
    assert (root / "plain" / "a").read_bytes() == b"the real a"
    status, lines = daemon.request("PULL", bucket, "plain/a\x00b")
    assert status == "ERROR" and "NUL" in lines[0], lines
    assert "NUL" in daemon.log_text()
    assert daemon.stop() == 0, daemon.log_text()
