"""The S3 request deadline (s3pool/s3/inflight.py) on real sockets: a request that
gets no answer, or whose body stalls, is ended by shutting its socket down;
one nobody reads is not judged; the stop ends every request at once."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from s3pool.s3.inflight import S3Requests

pytestmark = pytest.mark.unit


def _wait(predicate, what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _blocked_reader(sock: socket.socket, got: list) -> threading.Thread:
    """A worker thread blocked in recv() (as one reading an S3 answer is)."""

    def run() -> None:
        while True:
            data = sock.recv(65536)
            got.append(data)
            if not data:
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_request_without_an_answer_is_ended_and_its_reader_woken():
    registry = S3Requests(threading.Event(), timeout=0.3, stall_bytes=1000)
    ours, server = socket.socketpair()
    request = registry.begin("GetObject", "s3://b/k")
    request.attach(ours)
    assert [line for line in registry.status_lines()] == [
        ("s3_request", request.status_value())]
    got: list[bytes] = []
    reader = _blocked_reader(ours, got)
    server.send(b"H")  # a trickle: a byte now and then is no answer
    reader.join(20)
    assert not reader.is_alive()
    assert got[-1] == b"" and request.expired.startswith("no answer")
    assert registry.expired == 1
    request.end()
    assert registry.status_lines() == []
    server.close()
    ours.close()


def _two_answered(registry: S3Requests, first: str, second: str, length: int | None):
    """GETs of s3://b/FIRST and s3://b/SECOND, each on a socket pair, their
    headers in (a body of *length* to come): the requests and the pairs."""
    pairs = [socket.socketpair(), socket.socketpair()]
    requests = [registry.begin("GetObject", f"s3://b/{name}") for name in (first, second)]
    for request, (sock, _) in zip(requests, pairs, strict=True):
        request.attach(sock)
        request.answered(length)
    return requests, pairs


def test_a_stalled_body_is_ended_but_one_nobody_reads_is_not():
    registry = S3Requests(threading.Event(), timeout=0.3, stall_bytes=1000)
    # headers in; the body is nobody's yet (paused)
    (read, idle), pairs = _two_answered(registry, "read", "idle", 5000)
    (read_socket, read_server), (idle_socket, idle_server) = pairs
    read.resume()  # somebody reads this one: 10 bytes, then nothing
    read_server.send(b"x" * 10)
    read.add(10)
    got: list[bytes] = []
    reader = _blocked_reader(read_socket, got)
    reader.join(20)
    assert not reader.is_alive() and read.expired.startswith("stalled: 10 bytes")
    # the watchdog judged both in the passes that ended the read one
    assert idle.expired is None
    # once read, the idle one's clock runs from the read on (the idle spell is not a stall)
    idle.resume()
    _wait(lambda: idle.expired is not None, "the idle body to be judged once read")
    for sock in (read_socket, read_server, idle_socket, idle_server):
        sock.close()


def test_a_body_that_keeps_coming_is_not_ended():
    # a deadline well above the 50 ms between the fast one's bytes: a busy
    # machine that holds this thread up for a moment does not starve it
    registry = S3Requests(threading.Event(), timeout=1.0, stall_bytes=1000)
    (fast, slow), pairs = _two_answered(registry, "fast", "slow", None)
    (fast_socket, fast_server), (slow_socket, slow_server) = pairs
    for request in (fast, slow):
        request.resume()
    # the fast one gets its stall_bytes again and again; the slow one gets nothing
    while slow.expired is None:
        fast.add(1000)
        time.sleep(0.05)
    assert fast.expired is None
    for sock in (fast_socket, fast_server, slow_socket, slow_server):
        sock.close()


def test_the_stop_ends_every_request_even_without_a_deadline():
    stopping = threading.Event()
    registry = S3Requests(stopping, timeout=0, stall_bytes=1000)  # 0: no deadline
    upload_socket, upload_server = socket.socketpair()
    upload = registry.begin("PutObject", "s3://b/up", judged=False)
    upload.attach(upload_socket)
    got: list[bytes] = []
    reader = _blocked_reader(upload_socket, got)
    stopping.set()
    reader.join(20)
    assert not reader.is_alive() and upload.expired == "s3pool is shutting down"
    # a request begun after the stop has its socket shut as soon as it has one
    late_socket, late_server = socket.socketpair()
    late = registry.begin("GetObject", "s3://b/late")
    _wait(lambda: late.expired is not None, "the late request to be ended")
    late.attach(late_socket)
    assert late_socket.recv(10) == b""
    for sock in (upload_socket, upload_server, late_socket, late_server):
        sock.close()
