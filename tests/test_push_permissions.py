"""PUSH from another local user reads only what that user may read
(the daemon runs as root here, the client as nobody)."""

import os

import pytest

from helpers import request_as_nobody

pytestmark = pytest.mark.e2e


def make_file(path, text, mode):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def test_other_users_push_only_what_they_can_read(daemon, s3, bucket, public_dir):
    assert os.geteuid() == 0, "the daemon must run as root for this test"
    readable = make_file(os.path.join(public_dir, "readable.txt"), "anyone may read this", 0o644)
    secret = make_file(os.path.join(public_dir, "secret.txt"), "root only", 0o600)
    hidden_dir = os.path.join(public_dir, "private")
    os.mkdir(hidden_dir, 0o700)
    behind = make_file(os.path.join(hidden_dir, "world-readable-but-unreachable.txt"), "x",
                       0o644)
    link = os.path.join(public_dir, "link-to-secret")
    os.symlink(secret, link)

    assert request_as_nobody(daemon.port, "PUSH", bucket, "ok", readable) == "OK\n\n"
    assert s3.get_object(Bucket=bucket, Key="ok")["Body"].read() == b"anyone may read this"
    for path in (secret, behind, link, "/etc/shadow"):
        reply = request_as_nobody(daemon.port, "PUSH", bucket, "stolen", path)
        assert reply.startswith("ERROR\n"), (path, reply)
        assert "permission denied" in reply or "cannot read" in reply
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="stolen")
    # the daemon's own user is not restricted
    assert daemon.ok("PUSH", bucket, "mine", secret) == []
