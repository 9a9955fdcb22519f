"""A lean GET's body bytes are counted once on its S3Request: LeanBody counts
what it reads, and the WatchedBody the backend puts around it must not count
them again (twice, the request's byte count was doubled in STATUS and
download_stall_bytes took half the bytes it says to end a stall). Real
sockets: the scripted HTTP server of test_s3http_unit."""

from __future__ import annotations

import threading

import pytest

from s3pool.s3.backend import WatchedBody
from s3pool.s3.inflight import S3Requests
from test_s3http_unit import ScriptedServer, lean_for, ok

pytestmark = pytest.mark.unit


def test_lean_body_bytes_are_counted_once():
    body = b"y" * 300_000
    server = ScriptedServer(lambda line, n: (ok(body), False))
    try:
        _read_counted(lean_for(server), body)
    finally:
        server.stop()


def _read_counted(lean, body: bytes) -> None:
    registry = S3Requests(threading.Event(), timeout=60, stall_bytes=1 << 20)
    request = registry.begin("GetObject", "s3://bkt/k")
    status, resp = lean.get("bkt", "k", {}, request)
    assert status == 200
    watched = WatchedBody(resp["Body"], request, resp["ContentLength"])
    got = b""
    while True:
        data = watched.read1(65536)
        if not data:
            break
        got += data
    assert got == body
    assert request.bytes == len(body)
    request.end()
