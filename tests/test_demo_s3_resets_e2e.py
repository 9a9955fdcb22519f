"""Issue 22, point 5's last part: "the demo S3's log fills with 'connection
reset by peer' lines on large pulls".

The first GET of a download asked for the whole object and its body was
closed mid-way once ranged GETs fetched the other parts: SeaweedFS, the
embedded demo S3, logged each such body as a connection reset by peer. The
first GET now asks for the first part only, so every body is read to its
end. Here the README's demo setup (no AWS configuration: the daemon starts
the embedded SeaweedFS, its log in HOMEDIR/log/embedded-s3.log) PULLs an
object of 24 parts; the log must not gain a line about a body the client
cut ("connection reset by peer", or "broken pipe" when the hang-up comes
between two writes). A raw GET that reads a few bytes and hangs up is
the positive control: its line is waited for, so the log is
known to show them, and its connection must be the only one named.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
from urllib.parse import urlsplit

import pytest

from conftest import free_port_block, wait_until
from test_embedded_e2e import DemoDaemon, s3_client

pytestmark = pytest.mark.e2e

MIB = 1 << 20
CUT = (b"connection reset by peer", b"broken pipe")
PEER = re.compile(rb"->127\.0\.0\.1:(\d+)")  # "write tcp SERVER->CLIENT: ..."
BUCKET = "s3pool-demo"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cut_lines(log) -> list[str]:
    return [line.decode(errors="replace") for line in log.read_bytes().splitlines()
            if any(marker in line for marker in CUT)]


def _cut_connections(log) -> set[int]:
    """The client ports of the GET bodies the demo S3 logged as cut."""
    found = (PEER.search(line.encode()) for line in _cut_lines(log))
    return {int(match.group(1)) for match in found if match is not None}


def test_a_large_pull_leaves_no_connection_reset_in_the_demo_s3s_log(tmp_path):
    daemon = DemoDaemon(tmp_path, free_port_block(),
                        args=["--download-part-size", "1M"]).start()
    log = daemon.home / "log" / "embedded-s3.log"
    try:
        client = s3_client(daemon.status())
        body = os.urandom(24 * MIB)  # 24 parts: ranged GETs take over after the first
        client.put_object(Bucket=BUCKET, Key="large.bin", Body=body)
        [path] = daemon.ok("PULL", BUCKET, "large.bin")
        with open(path, "rb") as f:
            assert _sha(f.read()) == _sha(body)
        assert int(daemon.status()["downloads"]) == 1

        # the positive control: a GET that reads 64 KiB of the object and
        # hangs up with the rest unsent, as a client closing a body does
        url = urlsplit(client.generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": "large.bin"}))
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        conn.request("GET", f"{url.path}?{url.query}")
        assert conn.sock is not None
        control = conn.sock.getsockname()[1]
        answer = conn.getresponse()
        assert answer.status == 200 and len(answer.read(64 << 10)) == 64 << 10
        answer.close()
        conn.close()
        wait_until(lambda: control in _cut_connections(log), 60,
                   "the control's cut body in the demo S3's log")
        # only the control's: the PULL's bodies were each read to their end
        assert _cut_connections(log) == {control}, _cut_lines(log)
    finally:
        daemon.stop()
