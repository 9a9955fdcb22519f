"""The control socket: trio servers (TCP, and Unix-domain with ``--socket``),
one request per connection.

Each connection is handled by :meth:`ControlServer.handle`, which catches
and logs everything (an exception escaping a handler would take the whole
server down), answers bad input with an ERROR line, and logs every request
with its status and elapsed milliseconds.

PUSH and SET first find out who the client is (``peer.py``): SET is for
the daemon's own user, root and the admin group; PUSH by another local
user reads only what that user could read; a local client we cannot
identify gets neither.

The accept loop is ours rather than ``trio.serve_listeners`` so that open
connections are capped (``max_connections``, and never more than half the
descriptor limit: the FUSE mount, downloads and the databases need the
rest). At the cap it stops accepting until a connection ends (the kernel
queues the others), and connections that have not sent their request get
a short deadline, so idle clients cannot hold every slot. Accept errors
such as EMFILE back off, doubling up to a second, and are logged at most
every 10 seconds.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from s3pool.cache import LISTING_NOTE, Cache
from s3pool.control.peer import AccessPolicy, Peer, open_for_peer, tcp_peer, unix_peer
from s3pool.control.protocol import (
    MAX_REQUEST_BYTES,
    Request,
    format_done,
    format_error,
    format_list,
    parse_request,
)
from s3pool.errors import BadRequest, LocalFileError, PermissionDenied, S3PoolError, StartupError
from s3pool.logs import RequestLog
from s3pool.settings import format_value

log = logging.getLogger(__name__)

RECEIVE_TIMEOUT = 5.0
# at the connection cap, a connection that has not sent its request by then is closed
BUSY_RECEIVE_TIMEOUT = 0.5
SEND_TIMEOUT = 30.0
DRAIN_TIMEOUT = 2.0
DRAIN_LIMIT = 64 << 20
ACCEPT_BACKOFF_MIN = 0.05
ACCEPT_BACKOFF_MAX = 1.0
ACCEPT_ERROR_LOG_INTERVAL = 10.0
PRIVILEGED = ("PUSH", "SET")


def fd_limit() -> int:
    """The soft RLIMIT_NOFILE of this process."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


class _Receiving:
    """A connection still reading its request: its deadline can be shortened."""

    __slots__ = ("accepted", "scope", "hurried")

    def __init__(self, accepted: float, scope: trio.CancelScope) -> None:
        self.accepted = accepted
        self.scope = scope
        self.hurried = False


class ControlServer:
    def __init__(self, cache: Cache,
                 status_lines: Callable[[], Awaitable[list[tuple[str, Any]]]],
                 request_log: RequestLog | None = None, policy: AccessPolicy | None = None,
                 descriptor_limit: int | None = None) -> None:
        self.cache = cache
        self.status_lines = status_lines
        self.request_log = request_log or RequestLog(None)
        self.policy = policy or AccessPolicy(daemon_uid=os.geteuid())
        self.descriptor_limit = descriptor_limit or fd_limit()
        self.connections = 0  # accepted since start
        self.open_connections = 0  # handlers running
        self.active = 0  # requests being carried out right now (read and parsed)
        # requests per command, whatever came of them (even malformed): the
        # original s3pool's count_pull and count_push count these
        self.requests: Counter[str] = Counter()
        self.malformed: Counter[str] = Counter()  # of those, refused by parse_request
        self.stopping = False
        # (command, seconds, ok) after each request; set by the metrics
        self.observe: Callable[[str, float, bool], None] | None = None
        self._accepting = 0  # slots held by accept loops waiting in accept()
        self._receiving: set[_Receiving] = set()
        self._slot_freed: trio.Event | None = None
        self._peer_limiter: trio.CapacityLimiter | None = None
        self._last_accept_error_log = float("-inf")

    @property
    def connection_cap(self) -> int:
        configured: int = self.cache.settings.max_connections
        return max(1, min(configured, self.descriptor_limit // 2))

    async def serve(
        self, host: str, port: int, unix_socket: socket.socket | None = None, *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve TCP on host:port, and the listening Unix socket *unix_socket* if given."""
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        if unix_socket is not None:
            listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(unix_socket)))
        await self.serve_listeners(listeners, task_status=task_status)

    async def serve_listeners(self, listeners: list[Any], *,
                              task_status: trio.TaskStatus[list[Any]] = trio.TASK_STATUS_IGNORED
                              ) -> None:
        """Accept on every listener, within the connection cap, until cancelled."""
        self._slot_freed = trio.Event()
        self._peer_limiter = trio.CapacityLimiter(4)
        async with trio.open_nursery() as handlers:
            async with trio.open_nursery() as acceptors:
                for listener in listeners:
                    acceptors.start_soon(self._accept_loop, listener, handlers)
                task_status.started(listeners)

    async def _accept_loop(self, listener: Any, handlers: trio.Nursery) -> None:
        backoff = ACCEPT_BACKOFF_MIN
        async with listener:
            while True:
                await self._wait_for_slot()
                self._accepting += 1  # hold the slot while waiting in accept()
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    self._accepting -= 1
                    self._log_accept_error(exc, backoff)
                    await trio.sleep(backoff)
                    backoff = min(2 * backoff, ACCEPT_BACKOFF_MAX)
                    continue
                except BaseException:
                    self._accepting -= 1
                    raise
                self._accepting -= 1
                backoff = ACCEPT_BACKOFF_MIN
                self.open_connections += 1
                handlers.start_soon(self._run_handler, stream)

    async def _wait_for_slot(self) -> None:
        while self.open_connections + self._accepting >= self.connection_cap:
            self._hurry_idle_connections()
            assert self._slot_freed is not None
            # re-check now and then: SET max_connections may raise the cap
            with trio.move_on_after(1):
                await self._slot_freed.wait()

    def _hurry_idle_connections(self) -> None:
        for receiving in self._receiving:
            deadline = receiving.accepted + BUSY_RECEIVE_TIMEOUT
            if deadline < receiving.scope.deadline:
                receiving.scope.deadline = deadline
                receiving.hurried = True

    async def _run_handler(self, stream: trio.SocketStream) -> None:
        try:
            await self.handle(stream)
        finally:
            self.open_connections -= 1
            assert self._slot_freed is not None
            self._slot_freed.set()
            self._slot_freed = trio.Event()

    def _log_accept_error(self, exc: OSError, backoff: float) -> None:
        now = time.monotonic()
        if now - self._last_accept_error_log < ACCEPT_ERROR_LOG_INTERVAL:
            return
        self._last_accept_error_log = now
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        log.warning("accepting a control connection failed: %s (%s); retrying in %g s "
                    "(open connections %d, cap %d, descriptor limit %d)", name,
                    exc.strerror or exc, backoff, self.open_connections, self.connection_cap,
                    self.descriptor_limit)

    async def _peer(self, stream: trio.SocketStream) -> Peer:
        sock = stream.socket
        lookup = unix_peer if sock.family == socket.AF_UNIX else tcp_peer
        assert self._peer_limiter is not None
        try:
            return await trio.to_thread.run_sync(lookup, sock, limiter=self._peer_limiter)
        except Exception as exc:  # never let a failed lookup grant anything
            log.exception("finding the peer of a control connection failed")
            return Peer.unknown_local(f"lookup failed: {exc!r}")

    async def handle(self, stream: trio.SocketStream) -> None:
        started = time.perf_counter()
        self.connections += 1
        summary = command = "-"
        status = "ERROR"
        LISTING_NOTE.set("")  # a GLOB says here how old its listing was
        complete = [False]  # did we read the whole request?
        try:
            try:
                line = await self._receive_line(stream, complete)
                try:
                    request = parse_request(line)
                except BadRequest as exc:
                    named = getattr(exc, "command", None) or "-"
                    self.requests[named] += 1
                    self.malformed[named] += 1
                    raise
                self.requests[request.command] += 1
                summary = _summarize(request)
                command = request.command
                self.active += 1
                try:
                    if command in PRIVILEGED:
                        peer = await self._peer(stream)
                        summary = f"{summary} [{peer.describe()}]"
                        if command == "SET":
                            self.policy.check_admin(peer, "SET")
                            reply = await self.dispatch(request)
                        else:
                            reply = await self._push(request, peer)
                    else:
                        reply = await self.dispatch(request)
                finally:
                    self.active -= 1
                status = "OK"
                if LISTING_NOTE.get():
                    status = f"OK ({LISTING_NOTE.get()})"
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise  # the client went away (a reset): not a bug of ours, see below
            except S3PoolError as exc:
                self.cache.stats.errors += 1
                message = str(exc)
                if self.stopping:
                    message = f"s3pool is stopping, request not completed ({message})"
                reply = format_error(message)
                status = f"ERROR {message}"
            except trio.Cancelled:
                # shutdown cancelled the request: say so before the connection goes
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await stream.send_all(format_error(
                        "s3pool is stopping, request not completed"))
                status = "ERROR stopping"
                raise
            except Exception as exc:  # a bug of ours: answer, log, keep serving
                self.cache.stats.errors += 1
                log.exception("internal error handling %s", summary)
                reply = format_error(f"internal error: {exc!r}")
                status = f"ERROR internal {exc!r}"
            with trio.move_on_after(SEND_TIMEOUT):
                await stream.send_all(reply)
                if not complete[0]:
                    await self._drain(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            status = f"{status} (client gone: {exc.__class__.__name__})"
        except Exception:
            log.exception("unexpected error on a control connection")
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(1):
                    await stream.aclose()
            elapsed = (time.perf_counter() - started) * 1000
            self.request_log.write(f"{summary} -> {status} {elapsed:.1f}ms")
            if self.observe is not None:
                self.observe(command, elapsed / 1000, status.startswith("OK"))

    async def _push(self, request: Request, peer: Peer) -> bytes:
        """PUSH for a client of this host reads only what its user may read;
        a local client we cannot identify may not PUSH at all."""
        bucket, key, path = request.args
        if "\0" in path:  # no file has such a name; os.stat would raise ValueError
            raise LocalFileError(f"path {path!r} contains a NUL character")
        if not peer.local or peer.uid == os.geteuid():  # other hosts: trusted per bind
            return await self.dispatch(request)
        if peer.uid is None:
            raise PermissionDenied(
                f"PUSH refused for an {peer.describe()}: keep the connection open until the "
                "reply, or use the Unix socket (s3pool --socket, s3poolctl --socket)")
        if not os.path.isabs(path):
            raise LocalFileError(f"path {path!r} is not absolute")
        # opened as the user would (a helper process takes their identity):
        # the daemon never opens as root what the user could not
        assert self._peer_limiter is not None
        fd = await trio.to_thread.run_sync(open_for_peer, path, peer.uid, peer.gids,
                                           limiter=self._peer_limiter)
        try:
            await self.cache.push(bucket, key, f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return format_done()

    async def _drain(self, stream: trio.SocketStream) -> None:
        """Read what the client is still sending (an oversized request).

        Closing with unread input would reset the connection, which can
        destroy the reply before the client reads it.
        """
        await stream.send_eof()
        with trio.move_on_after(DRAIN_TIMEOUT):
            drained = 0
            while drained < DRAIN_LIMIT:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                drained += len(chunk)

    async def _receive_line(self, stream: trio.SocketStream, complete: list[bool]) -> bytes:
        """One request line: up to '\\n' or EOF, within the size cap and 5 s
        (BUSY_RECEIVE_TIMEOUT when the server is at its connection cap)."""
        buffer = bytearray()
        accepted = trio.current_time()
        with trio.move_on_after(RECEIVE_TIMEOUT) as scope:
            receiving = _Receiving(accepted, scope)
            self._receiving.add(receiving)
            try:
                await self._read_until_newline(stream, buffer, complete)
            finally:
                self._receiving.discard(receiving)
        if scope.cancelled_caught:
            # what the client sent is read: nothing to drain, and draining
            # would let an idle client hold its slot DRAIN_TIMEOUT longer
            complete[0] = True
            if receiving.hurried:
                raise BadRequest(f"no complete request within {BUSY_RECEIVE_TIMEOUT:g} s while "
                                 "the server is at its connection limit")
            raise BadRequest(f"no complete request within {RECEIVE_TIMEOUT:g} s")
        return bytes(buffer)

    @staticmethod
    async def _read_until_newline(stream: trio.SocketStream, buffer: bytearray,
                                  complete: list[bool]) -> None:
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                complete[0] = True
                return
            newline = chunk.find(b"\n")
            if newline >= 0:
                buffer += chunk[:newline]
                complete[0] = newline == len(chunk) - 1
                return
            buffer += chunk
            if len(buffer) > MAX_REQUEST_BYTES:
                return

    async def dispatch(self, request: Request) -> bytes:
        """Run a parsed request (PUSH and SET reach here only after the peer checks)."""
        cache = self.cache
        args = request.args
        command = request.command
        if command == "PULL":
            return format_list(await cache.pull_many(args[0], args[1:]))
        if command == "PUSH":
            await cache.push(args[0], args[1], args[2])
            return format_done()
        if command == "GLOB":
            return format_list(await cache.glob(args[0], args[1]))
        if command == "REFRESH":
            await cache.refresh(args[0])
            return format_done()
        if command == "STATUS":
            lines = await self.status_lines()
            return format_list([f"{name} {format_value(value)}" for name, value in lines])
        if command == "SET":
            cache.settings.set(args[0], args[1])
            return format_done()
        raise AssertionError(f"unhandled command {command}")  # parse_request checked it


def _summarize(request: Request) -> str:
    args = request.args
    shown = " ".join(args[:4]) + (f" ... (+{len(args) - 4})" if len(args) > 4 else "")
    return f"{request.command} {shown}".strip()
