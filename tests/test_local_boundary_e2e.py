"""The local boundary (issue 17): what a local user can do to the daemon
through its logs, the metrics port and PUSH. The daemon runs as root, the
attacking clients as nobody where it matters."""

from __future__ import annotations

import json
import os
import re
import socket

from test_security_e2e import as_nobody, public_dir, wait_for  # noqa: F401 (fixture)

FORGED = "\n2026-12-06 14:00:00,000 uid 0 PUSH /etc/shadow -> OK 1.0ms"
ESCAPE = "\x1b[31m"


def test_a_key_cannot_forge_a_request_log_line(daemon, s3, bucket):
    key = f"red{ESCAPE}key{FORGED}"
    status, lines = daemon.request("PULL", bucket, key)
    assert status == "ERROR"
    # a key S3 has, escape and all: it is served, and logged escaped
    s3.put_object(Bucket=bucket, Key=f"plain{ESCAPE}", Body=b"x")
    daemon.ok("PULL", bucket, f"plain{ESCAPE}")
    assert daemon.stop() == 0, daemon.log_text()
    text = (daemon.home / "log" / "requests.log").read_text()
    lines = text.splitlines()
    # one line per request (STATUS of the start-up wait, the two PULLs)
    mentions = [line for line in lines if "/etc/shadow" in line]
    assert len(mentions) == 1, text
    assert "\x1b" not in text and "\\x1b[31m" in mentions[0], mentions
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", line) for line in lines), text
    assert not any(line.startswith("2026-12-06 14:00:00,000") for line in lines)
    daemon_log = (daemon.home / "log" / "s3pool.log").read_text()
    assert "\x1b" not in daemon_log
