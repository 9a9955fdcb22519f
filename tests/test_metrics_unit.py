"""The metrics endpoint on the trio loop (s3pool/control/metrics.py): HTTP answers,
and its connection cap with idle scrapers hurried out."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from s3pool.control import metrics
from s3pool.control.metrics import Metrics, MetricsServer

pytestmark = pytest.mark.unit


async def _status_lines():
    return [("pulls", 3), ("cache_bytes", 1000), ("pull_concurrency", 20)]


async def _exchange(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        reply = b""
        while chunk := await stream.receive_some(65536):
            reply += chunk
    return reply


async def _serving(nursery: trio.Nursery, descriptor_limit: int = 1024) -> tuple[MetricsServer,
                                                                                  int]:
    server = MetricsServer(Metrics(), _status_lines, descriptor_limit=descriptor_limit)
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    return server, port


async def test_answers_get_head_and_refuses_the_rest():
    async with trio.open_nursery() as nursery:
        server, port = await _serving(nursery)
        reply = await _exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"s3pool_pulls_total 3.0" in body and b"s3pool_cache_bytes 1000.0" in body
        assert b's3pool_setting{name="pull_concurrency"} 20.0' in body
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        assert length == len(body)
        # OpenMetrics when the scraper asks for it
        reply = await _exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: "
                                b"application/openmetrics-text; version=1.0.0\r\n\r\n")
        assert b"application/openmetrics-text" in reply and reply.endswith(b"# EOF\n")
        reply = await _exchange(port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"\r\n\r\n")
        assert (await _exchange(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n"
                                b"Content-Length: 0\r\n\r\n")).startswith(b"HTTP/1.1 405 ")
        assert (await _exchange(port, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
                ).startswith(b"HTTP/1.1 404 ")
        assert (await _exchange(port, b"\x16\x03\x01 not http\r\n\r\n")
                ).startswith(b"HTTP/1.1 400 ")
        assert (await _exchange(port, b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n")
                ).startswith(b"HTTP/1.1 4")
        assert await _exchange(port, b"") == b""  # connected and left: nothing to answer
        assert server.scrapes == 3
        await trio.testing.wait_all_tasks_blocked()
        # every slot given back, but the one the accept loop holds while it waits
        assert server.slots.value == server.connection_cap - 1
        nursery.cancel_scope.cancel()


async def test_idle_connections_are_capped_and_hurried_out_at_the_cap(monkeypatch):
    # idle connections would hold their slots "forever" unless hurried out at the cap
    monkeypatch.setattr(metrics, "RECEIVE_TIMEOUT", 3600)
    async with trio.open_nursery() as nursery:
        server, port = await _serving(nursery, descriptor_limit=64)
        assert server.connection_cap == 4  # 1/16 of the descriptors
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(4)]
        await trio.testing.wait_all_tasks_blocked()
        assert server.slots.value == 0 and len(server.receiving) == 4
        # a scraper queued behind them is answered once they are hurried out
        with trio.fail_after(60):
            reply = await _exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200 ")
        for stream in idle:  # each was closed by the server, with nothing sent
            with trio.fail_after(60):
                assert await stream.receive_some(100) == b""
            await stream.aclose()
        nursery.cancel_scope.cancel()
