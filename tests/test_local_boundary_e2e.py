"""The local boundary (issue 17): what a local user can do to the daemon
through its logs, the metrics port and PUSH. The daemon runs as root, the
attacking clients as nobody where it matters."""

from __future__ import annotations

import ctypes
import os
import re
import struct
import subprocess
import time
import urllib.request

import psutil
import pytest

from conftest import wait_until
from helpers import CLIENT, IdleConnections, Traffic, as_nobody, low_fd_limit
from s3pool.embedded import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]

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


class PacedIdleConnections(IdleConnections):
    """IdleConnections opened a few milliseconds apart, so that a server with
    a short listen queue (5 for http.server) accepts every one of them."""

    def _open(self, selector) -> None:
        super()._open(selector)
        time.sleep(0.005)


def queued_at(port: int) -> int:
    """Server-side connections to local *port*: accepted or in its listen queue
    (a client's end is ESTABLISHED before the server's when the queue is full)."""
    return sum(1 for c in psutil.net_connections("tcp")
               if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)


def test_idle_metrics_connections_do_not_starve_pulls_the_mount_or_a_scraper(start_daemon, s3,
                                                                            bucket):
    """300 idle connections to --metrics-port under a descriptor limit of 256:
    PULLs and mount reads keep working, and a fresh scraper is answered."""
    keys = [f"f/{i}" for i in range(8)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode() * 100)
    metrics_port = free_port()
    daemon = start_daemon(mount=True, args=["--bucket", bucket, "--metrics-port",
                                            str(metrics_port)], preexec_fn=low_fd_limit)
    daemon.ok("PULL", bucket, *keys)
    with PacedIdleConnections(metrics_port, 300) as attack:
        # every idle connection is accepted or waits in the listen queue, or
        # the daemon has run out of descriptors trying
        server = psutil.Process(daemon.process.pid)
        wait_until(lambda: queued_at(metrics_port) >= 290 or server.num_fds() >= 240, 120,
                   "300 idle metrics connections")
        print("daemon descriptors", len(os.listdir(f"/proc/{daemon.process.pid}/fd")),
              "threads", len(os.listdir(f"/proc/{daemon.process.pid}/task")))
        with Traffic(daemon, bucket, keys, daemon.mountpoint / bucket, pull_timeout=20,
                     pull_pause=0.02) as traffic:
            # a fresh scraper, queued behind the idle ones, is answered
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                        timeout=60) as response:
                assert response.status == 200
                scraped = response.read().decode()
            # keep the load on until the workers have done some of each
            wait_until(lambda: traffic.done["pulls"] >= 20 and traffic.done["reads"] >= 20
                       or traffic.failures, 60, "PULLs and reads under the attack")
        opened = attack.opened
    failures = traffic.failures
    assert failures == [], f"{len(failures)} failures, first: {failures[:5]}"
    assert "s3pool_pulls_total" in scraped
    assert opened > 300, "the metrics server never closed an idle connection"
    assert daemon.stop() == 0, daemon.log_text()[-3000:]


class OpenWatch:
    """inotify IN_OPEN on one file: counts the opens of it (a FIFO's open
    shows up once it completes; O_PATH lookups are not opens)."""

    IN_OPEN = 0x20
    IN_NONBLOCK = 0o4000

    def __init__(self, path: str) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(self.IN_NONBLOCK)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        assert libc.inotify_add_watch(self.fd, path.encode(), self.IN_OPEN) >= 0
        self.opens = 0

    def count(self) -> int:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return self.opens
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                self.opens += bool(mask & self.IN_OPEN)
                offset += 16 + length

    def close(self) -> None:
        os.close(self.fd)


def push_as_nobody(port: int, bucket: str, key: str, path: str) -> str:
    return as_nobody(CLIENT, str(port), "PUSH", bucket, key, path)


def test_push_for_another_user_never_opens_what_that_user_cannot(daemon, s3, bucket,
                                                                public_dir):
    """As nobody: a root-only FIFO in a 0700 directory is never opened (its
    blocked writer stays blocked), and a missing path and an unreadable one
    there get the same answer."""
    private = os.path.join(public_dir, "private")
    os.mkdir(private, 0o700)
    fifo = os.path.join(private, "fifo")
    os.mkfifo(fifo, 0o600)
    secret = os.path.join(private, "secret")
    with open(secret, "w") as f:
        f.write("root only\n")
    os.chmod(secret, 0o644)  # readable, but behind a directory nobody cannot search
    watch = OpenWatch(fifo)
    writer = subprocess.Popen(["/bin/sh", "-c", 'echo from-the-writer > "$0"', fifo])
    try:
        reply = push_as_nobody(daemon.port, bucket, "stolen/fifo", fifo)
        assert reply.startswith("ERROR\n"), reply
        assert watch.count() == 0, "the daemon opened the FIFO for nobody"
        assert writer.poll() is None
        # positive control: an open of the FIFO is seen, and wakes the writer
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            assert writer.wait(10) == 0
            os.set_blocking(reader, True)
            assert os.read(reader, 100) == b"from-the-writer\n"
        finally:
            os.close(reader)
        assert watch.count() >= 1  # ours and the writer's (inotify may merge the two)
    finally:
        if writer.poll() is None:
            writer.kill()
        writer.wait()
        watch.close()

    answers = {}
    for name, path in {"missing": os.path.join(private, "missing"), "secret": secret,
                       "fifo": fifo, "missing-dir": os.path.join(private, "no", "such"),
                       "under-a-file": os.path.join(secret, "x")}.items():
        reply = push_as_nobody(daemon.port, bucket, f"stolen/{name}", path)
        assert reply.startswith("ERROR\n"), (name, reply)
        answers[name] = reply.replace(path, "PATH")
    assert len(set(answers.values())) == 1, answers
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="stolen/")

    # what nobody may read still goes up; a device nobody can open is refused
    # without being opened for reading, as nobody's own FIFO is
    readable = os.path.join(public_dir, "readable")
    with open(readable, "w") as f:
        f.write("anyone\n")
    os.chmod(readable, 0o644)
    link = os.path.join(public_dir, "link")
    os.symlink(readable, link)
    assert push_as_nobody(daemon.port, bucket, "ok", link) == "OK\n\n"
    assert s3.get_object(Bucket=bucket, Key="ok")["Body"].read() == b"anyone\n"
    reply = push_as_nobody(daemon.port, bucket, "dev", "/dev/zero")
    assert reply.startswith("ERROR\n") and "not a regular file" in reply, reply
    own_fifo = os.path.join(public_dir, "own-fifo")
    os.mkfifo(own_fifo, 0o666)
    watch = OpenWatch(own_fifo)
    try:
        reply = push_as_nobody(daemon.port, bucket, "fifo", own_fifo)
        assert reply.startswith("ERROR\n") and "not a regular file" in reply, reply
        assert watch.count() == 0
    finally:
        watch.close()
    # the daemon's own user: the same refusal of a FIFO, never an open
    status, lines = daemon.request("PUSH", bucket, "fifo", fifo)
    assert status == "ERROR" and "not a regular file" in lines[0], lines
