"""Unit tests of the control socket's hardening: who the peer is (real
sockets, real /proc), who may SET, and the accept loop's cap and back-off
(fake listeners, trio's autojump clock)."""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import time
from itertools import pairwise
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from s3pool.control.peer import AccessPolicy, Peer, is_local_address, tcp_peer, unix_peer
from s3pool.control.server import ACCEPT_BACKOFF_MAX, BUSY_RECEIVE_TIMEOUT, ControlServer
from s3pool.errors import PermissionDenied
from s3pool.logs import LOG_FILE_MODE, RequestLog, setup_logging
from s3pool.settings import Settings, parse_mode

pytestmark = pytest.mark.unit

# --- the peer -----------------------------------------------------------------


def _connected_pair():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    listener.close()
    return client, accepted


def test_tcp_peer_of_an_open_local_client_is_its_uid():
    client, accepted = _connected_pair()
    with client, accepted:
        peer = tcp_peer(accepted)
    assert peer == Peer(os.geteuid(), peer.gids, True, "/proc/net/tcp")
    assert os.getegid() in peer.gids or not peer.gids


def test_tcp_peer_of_a_client_that_closed_early_is_unknown_never_root():
    client, accepted = _connected_pair()
    with accepted:
        client.sendall(b'["PUSH", "b", "k", "/etc/shadow"]\n')
        client.close()  # orphaned now: /proc/net/tcp shows uid 0, inode 0
        time.sleep(0.05)
        peer = tcp_peer(accepted)
    assert peer.uid is None and peer.local, peer
    assert "closed" in peer.describe() or "not in /proc/net/tcp" in peer.describe()


def test_unix_peer_comes_from_so_peercred():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        peer = unix_peer(ours)
    assert peer.uid == os.geteuid() and peer.local and peer.source == "SO_PEERCRED"
    assert os.getegid() in peer.gids


def test_locality_of_addresses():
    assert is_local_address("127.0.0.1")
    assert is_local_address("::ffff:127.0.0.2")
    assert is_local_address("::1")
    # TEST-NET-1 (RFC 5737): never assigned to this host, no packet is sent
    assert not is_local_address("192.0.2.1")


# --- who may SET ----------------------------------------------------------------

ROOT = Peer(0, frozenset({0}), True, "SO_PEERCRED")
DAEMON_USER = Peer(1000, frozenset({1000}), True, "/proc/net/tcp")
OTHER = Peer(1001, frozenset({1001, 50}), True, "SO_PEERCRED")
UNKNOWN = Peer.unknown_local("its socket was closed")
REMOTE = Peer.remote("10.1.2.3")


@pytest.mark.parametrize("policy, peer, allowed", [
    (AccessPolicy(1000), ROOT, True),
    (AccessPolicy(1000), DAEMON_USER, True),
    (AccessPolicy(1000), OTHER, False),
    (AccessPolicy(1000, admin_gid=50), OTHER, True),
    (AccessPolicy(1000, admin_gid=51), OTHER, False),
    (AccessPolicy(0), UNKNOWN, False),  # never taken for root
    (AccessPolicy(0, admin_gid=0), UNKNOWN, False),
    (AccessPolicy(1000), REMOTE, False),
    (AccessPolicy(1000, allow_remote_admin=True), REMOTE, True),
    (AccessPolicy(1000, allow_remote_admin=True), UNKNOWN, False),
])
def test_who_may_set(policy, peer, allowed):
    if allowed:
        policy.check_admin(peer, "SET")
    else:
        with pytest.raises(PermissionDenied, match="SET refused"):
            policy.check_admin(peer, "SET")


def test_socket_mode_setting_parses_and_prints_octal():
    assert parse_mode("0660") == 0o660 and parse_mode("600") == 0o600
    assert str(parse_mode("0o640")) == "0640"
    for bad in ("", "999", "01777", "rw-rw----"):
        with pytest.raises(ValueError):
            parse_mode(bad)
    settings = Settings()
    settings.set("socket_mode", "0600")
    assert str(settings.socket_mode) == "0600"


# --- the accept loop ------------------------------------------------------------


class FakeListener:
    """accept() hands out the server end of a new in-memory stream pair (at
    most *limit*, then waits forever), or raises the errors queued in
    *failures* first."""

    def __init__(self, failures: int = 0, limit: int = 1000) -> None:
        self.failures = failures
        self.limit = limit
        self.calls: list[float] = []
        self.clients: list[trio.abc.Stream] = []

    async def accept(self):
        self.calls.append(trio.current_time())
        await trio.sleep(0)
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        if len(self.clients) >= self.limit:
            await trio.sleep_forever()
        client, server = trio.testing.memory_stream_pair()
        self.clients.append(client)
        return server

    async def aclose(self) -> None:
        pass

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()


def _server(max_connections: int, descriptor_limit: int = 10_000) -> ControlServer:
    cache: Any = SimpleNamespace(settings=Settings(max_connections=max_connections),
                            stats=SimpleNamespace(errors=0))
    async def status():
        return [("pid", 1)]

    return ControlServer(cache, status, descriptor_limit=descriptor_limit)


async def _read_all(stream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def test_at_the_cap_no_more_are_accepted_and_idle_ones_are_hurried(autojump_clock):
    server = _server(max_connections=3)
    listener = FakeListener()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, [listener])
        await trio.sleep(0.1)
        assert len(listener.clients) == 3 and server.open_connections == 3
        await trio.sleep(BUSY_RECEIVE_TIMEOUT - 0.2)
        assert len(listener.clients) == 3  # not accept-and-drop: the kernel queues the rest
        replies = [await _read_all(client) for client in listener.clients[:3]]
        assert all(r.startswith(b"ERROR\n") and b"connection limit" in r for r in replies)
        assert trio.current_time() < 1  # not the 5 s allowed below the cap
        await trio.sleep(0.1)
        assert len(listener.clients) == 6
        # a client that sends its request is served
        await listener.clients[3].send_all(b'["STATUS"]\n')
        assert await _read_all(listener.clients[3]) == b"OK\npid 1\n"
        nursery.cancel_scope.cancel()


async def test_the_cap_is_at_most_half_the_descriptor_limit():
    assert _server(max_connections=256, descriptor_limit=256).connection_cap == 128
    assert _server(max_connections=100, descriptor_limit=1 << 20).connection_cap == 100


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_emfile_backs_off_instead_of_spinning(autojump_clock):
    server = _server(max_connections=10)
    listener = FakeListener(failures=1000)
    records = _Records()
    logger = logging.getLogger("s3pool.control.server")
    logger.addHandler(records)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve_listeners, [listener])
            await trio.sleep(20)
            nursery.cancel_scope.cancel()
    finally:
        logger.removeHandler(records)
    gaps = [b - a for a, b in pairwise(listener.calls)]
    assert len(listener.calls) < 30, "accept retried without backing off"
    assert max(gaps) == pytest.approx(ACCEPT_BACKOFF_MAX)
    warnings = [r for r in records.records if "EMFILE" in r.getMessage()]
    assert 1 <= len(warnings) <= 2, "logged at most every 10 s"
    assert all(r.exc_info is None for r in warnings), "no traceback per failed accept"


async def test_accepting_resumes_after_emfile(autojump_clock):
    server = _server(max_connections=10)
    listener = FakeListener(failures=3, limit=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, [listener])
        await trio.sleep(1)
        assert listener.clients, "never accepted after the errors stopped"
        await listener.clients[0].send_all(b'["STATUS"]\n')
        assert await _read_all(listener.clients[0]) == b"OK\npid 1\n"
        nursery.cancel_scope.cancel()


# --- log file modes -------------------------------------------------------------


def test_request_log_and_its_rotations_are_private(tmp_path, monkeypatch):
    monkeypatch.setattr("s3pool.logs.ROTATE_BYTES", 100)
    old_umask = os.umask(0)  # the modes must not depend on a friendly umask
    try:
        path = tmp_path / "requests.log"
        log = RequestLog(str(path))
        for _ in range(3):
            log.write("x" * 200)
            log.flush()
    finally:
        os.umask(old_umask)
    files = sorted(tmp_path.iterdir())
    assert len(files) >= 2
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == LOG_FILE_MODE, f


def test_daemon_log_and_its_rollover_are_private(tmp_path):
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    old_umask = os.umask(0)
    try:
        (tmp_path / "s3pool.log").write_text("older\n")
        os.chmod(tmp_path / "s3pool.log", 0o666)
        setup_logging(str(tmp_path), 1)
        assert stat.S_IMODE((tmp_path / "s3pool.log").stat().st_mode) == LOG_FILE_MODE
        handler = next(h for h in root.handlers if hasattr(h, "doRollover"))
        logging.getLogger("test").warning("before the rollover")
        handler.doRollover()
        logging.getLogger("test").warning("after the rollover")
        for name in ("s3pool.log", "s3pool.log.1"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == LOG_FILE_MODE, name
    finally:
        os.umask(old_umask)
        for handler in list(root.handlers):
            root.removeHandler(handler)
            if handler not in saved[0]:
                handler.close()
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
