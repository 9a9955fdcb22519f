"""Requests that used to end in "internal error" replies get a clear ERROR (or work)."""

from __future__ import annotations

import pytest

from conftest import temp_leftovers

pytestmark = pytest.mark.e2e


def test_push_to_a_missing_bucket_is_a_clear_error(daemon, tmp_path):
    local = tmp_path / "f"
    local.write_bytes(b"x")
    status, lines = daemon.request("PUSH", "no-such-bucket-here", "k", str(local))
    assert status == "ERROR"
    message = " ".join(lines)
    assert "no such bucket" in message and "internal" not in message, message
    assert str(tmp_path) not in message and "/tmp/" not in message.replace(str(local), "")
    assert temp_leftovers(daemon.home) == []


def test_push_under_a_cached_file_makes_it_a_directory(daemon, s3, bucket, tmp_path):
    s3.put_object(Bucket=bucket, Key="hello.txt", Body=b"hello")
    daemon.ok("PULL", bucket, "hello.txt")
    local = tmp_path / "f"
    local.write_bytes(b"under it")
    daemon.ok("PUSH", bucket, "hello.txt/x", str(local))
    [path] = daemon.ok("PULL", bucket, "hello.txt/x")
    assert open(path, "rb").read() == b"under it"
    status, lines = daemon.request("PULL", bucket, "hello.txt")
    assert status == "ERROR" and "shadowed" in lines[0], lines
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log_text()


def test_pull_of_a_missing_bucket_leaves_no_trace(daemon):
    status, lines = daemon.request("PULL", "no-such-bucket-typo", "k")
    assert status == "ERROR" and "no such bucket" in lines[0], lines
    assert not (daemon.data / "no-such-bucket-typo").exists()
    assert "no-such-bucket-typo" not in daemon.status()["buckets_in_use"]


def test_a_client_that_resets_mid_request_is_no_internal_error(daemon):
    import socket
    import struct

    from conftest import wait_until

    def open_connections() -> int:  # handlers running, this STATUS's own included
        return int(daemon.status()["open_connections"])

    for partial in (b"", b'["STATUS"'):
        sock = socket.create_connection(("127.0.0.1", daemon.port))
        sock.sendall(partial)
        wait_until(lambda: open_connections() == 2, what="the daemon to take the connection")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # an RST, not a FIN
        # its handler has seen the reset and ended (having counted any error by then)
        wait_until(lambda: open_connections() == 1, what="the reset connection's handler to end")
    assert daemon.status()["errors"] == "0"
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log_text()
    assert "internal error" not in daemon.log_text()
