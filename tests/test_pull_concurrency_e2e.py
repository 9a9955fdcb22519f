"""``pull_concurrency`` caps the objects PULL downloads at once, for the whole
of each download (every part), seen at the S3 server in the order GETs
arrive: with a cap of 1, every GET of one object (its first and each ranged
part) comes before any GET of the next, so the objects' GETs form one run
each; with room for more, their runs interleave. (Counting bodies in flight
at the server instead would count a body the daemon already closed until
the server's next write finds out.)"""

from __future__ import annotations

import os
import threading

import pytest

from conftest import MotoServer

pytestmark = pytest.mark.e2e

MIB = 1 << 20


class GetOrder:
    """WSGI middleware: the objects (paths) of GET requests in the order they arrive."""

    def __init__(self, app) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.paths: list[str] = []

    def __call__(self, environ, start_response):
        if environ["REQUEST_METHOD"] == "GET" and "list-type" not in environ.get(
                "QUERY_STRING", ""):
            with self.lock:
                self.paths.append(environ["PATH_INFO"])
        return self.app(environ, start_response)

    def runs(self) -> int:
        """How many runs of GETs of one object: 3 objects one after another make 3."""
        with self.lock:
            return sum(1 for i, path in enumerate(self.paths)
                       if i == 0 or path != self.paths[i - 1])


def test_pull_concurrency_caps_whole_downloads(start_daemon):
    server = MotoServer()
    try:
        order = GetOrder(server.app.app)
        server.app.app = order
        s3 = server.client()
        s3.create_bucket(Bucket="cap")
        keys = [f"big-{i}" for i in range(3)]
        for key in keys:
            s3.put_object(Bucket="cap", Key=key, Body=os.urandom(4 * MIB))
            # 64 KiB at a time, 10 ms each: each part takes a while
            server.app.slow_paths[f"/cap/{key}"] = 0.01
        # four parts an object, one ranged GET at a time: its GETs spread over its download
        daemon = start_daemon(endpoint=server.endpoint,
                              args=["-c", "1", "--download-part-size", "1M",
                                    "--download-part-concurrency", "1"])
        assert daemon.ok("PULL", "cap", *keys) == [str(daemon.data / "cap" / k) for k in keys]
        assert len(order.paths) >= 3 * 2, order.paths  # each came in parts: ranged GETs ran
        # one object at a time, from its first GET to its last
        assert order.runs() == 3, order.paths

        # a positive control: with room for three, the three overlap
        for key in keys:
            s3.put_object(Bucket="cap", Key=key, Body=os.urandom(4 * MIB))  # new versions
        daemon.ok("SET", "pull_concurrency", "3")
        daemon.ok("SET", "freshness_window", "0")
        order.paths.clear()
        daemon.ok("PULL", "cap", *keys)
        assert order.runs() > 3, order.paths
        assert daemon.stop() == 0
    finally:
        server.stop()
