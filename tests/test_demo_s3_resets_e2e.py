"""Issue 22, point 5's last part: "the demo S3's log fills with 'connection
reset by peer' lines on large pulls".

The first GET of a download asked for the whole object and its body was
closed mid-way once ranged GETs fetched the other parts: SeaweedFS, the
embedded demo S3, logged each such body as a connection reset by peer. The
first GET now asks for the first part only, so every body is read to its
end. Here the README's demo setup (no AWS configuration: the daemon starts
the embedded SeaweedFS, its log in HOMEDIR/log/embedded-s3.log) PULLs an
object of 24 parts; the log must not gain a line about a body the client
cut ("connection reset by peer", "broken pipe" when the hang-up comes
between two writes, or "context canceled" when it comes while the gateway
fetches a chunk). A raw GET that reads a few bytes and hangs up is the
positive control: its line is waited for, so the log is known to show
them, and every such line must be the control's (logged after it began).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
from datetime import datetime
from urllib.parse import urlsplit

import pytest

from conftest import free_port_block, wait_until
from test_embedded_e2e import DemoDaemon, s3_client

pytestmark = pytest.mark.e2e

MIB = 1 << 20
CUT = (b"connection reset by peer", b"broken pipe", b"context canceled")
GLOG_TIME = re.compile(rb"[IWEF](\d\d)(\d\d) (\d\d:\d\d:\d\d\.\d+) ")  # glog, local time
BUCKET = "s3pool-demo"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cut_lines(log) -> list[str]:
    return [line.decode(errors="replace") for line in log.read_bytes().splitlines()
            if any(marker in line for marker in CUT)]


def _cut_times(log) -> list[float]:
    """When the demo S3 logged each body it saw cut (epoch seconds)."""
    times = []
    for line in _cut_lines(log):
        match = GLOG_TIME.match(line.encode())
        assert match is not None, f"a log line without glog's time: {line}"
        month, day, clock = (group.decode() for group in match.groups())
        when = datetime.strptime(f"{datetime.now().year}-{month}-{day} {clock}",
                                 "%Y-%m-%d %H:%M:%S.%f")
        times.append(when.timestamp())
    return times


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

        time.sleep(1)  # a body the PULL cut is logged by now (the control shows it would be)
        # the positive control: a GET that reads 64 KiB of the object and
        # hangs up with the rest unsent, as a client closing a body does
        began = time.time()
        url = urlsplit(client.generate_presigned_url(
            "get_object", Params={"Bucket": BUCKET, "Key": "large.bin"}))
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        conn.request("GET", f"{url.path}?{url.query}")
        answer = conn.getresponse()
        assert answer.status == 200 and len(answer.read(64 << 10)) == 64 << 10
        answer.close()
        conn.close()
        wait_until(lambda: any(when >= began for when in _cut_times(log)), 60,
                   "the control's cut body in the demo S3's log")
        # only the control's: the PULL's bodies were each read to their end
        assert [when for when in _cut_times(log) if when < began] == [], _cut_lines(log)
    finally:
        daemon.stop()
