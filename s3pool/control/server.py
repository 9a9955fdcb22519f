"""The control socket: a trio TCP server, one request per connection.

Each connection is handled by :meth:`ControlServer.handle`, which catches
and logs everything (an exception escaping a ``serve_tcp`` handler would
take the whole server down), answers bad input with an ERROR line, and
logs every request with its status and elapsed milliseconds.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

import trio

from ..cache import Cache
from ..errors import BadRequest, LocalFileError, S3PoolError, StartupError
from ..logs import RequestLog
from ..settings import format_value
from .peer import OpenedForPeer, local_peer_uid
from .protocol import MAX_REQUEST_BYTES, Request, format_done, format_error, format_list, parse_request

log = logging.getLogger(__name__)

RECEIVE_TIMEOUT = 5.0
SEND_TIMEOUT = 30.0
DRAIN_TIMEOUT = 2.0
DRAIN_LIMIT = 64 << 20


class ControlServer:
    def __init__(self, cache: Cache, status_lines: Callable[[], list[tuple[str, Any]]],
                 request_log: RequestLog | None = None) -> None:
        self.cache = cache
        self.status_lines = status_lines
        self.request_log = request_log or RequestLog(None)
        self.connections = 0

    async def serve(self, host: str, port: int, *,
                    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        task_status.started(listeners)
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, stream: trio.SocketStream) -> None:
        started = time.perf_counter()
        self.connections += 1
        summary = "-"
        status = "ERROR"
        complete = [False]  # did we read the whole request?
        try:
            try:
                line = await self._receive_line(stream, complete)
                request = parse_request(line)
                summary = _summarize(request)
                if request.command == "PUSH":
                    reply = await self._push(request, local_peer_uid(stream.socket))
                else:
                    reply = await self.dispatch(request)
                status = "OK"
            except S3PoolError as exc:
                self.cache.stats.errors += 1
                reply = format_error(str(exc))
                status = f"ERROR {exc}"
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

    async def _push(self, request: Request, uid: int | None) -> bytes:
        """PUSH for a client of this host reads only what its user may read."""
        bucket, key, path = request.args
        if "\0" in path:  # no file has such a name; os.stat would raise ValueError
            raise LocalFileError(f"path {path!r} contains a NUL character")
        if uid is None or uid == os.geteuid():
            return await self.dispatch(request)
        if not os.path.isabs(path):
            raise LocalFileError(f"path {path!r} is not absolute")
        with OpenedForPeer(path, uid) as proxy_path:
            await self.cache.push(bucket, key, proxy_path)
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
        """One request line: up to '\\n' or EOF, within the size cap and 5 s."""
        buffer = bytearray()
        with trio.move_on_after(RECEIVE_TIMEOUT) as scope:
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    complete[0] = True
                    break
                newline = chunk.find(b"\n")
                if newline >= 0:
                    buffer += chunk[:newline]
                    complete[0] = newline == len(chunk) - 1
                    break
                buffer += chunk
                if len(buffer) > MAX_REQUEST_BYTES:
                    break
        if scope.cancelled_caught:
            raise BadRequest(f"no complete request within {RECEIVE_TIMEOUT:g} s")
        return bytes(buffer)

    async def dispatch(self, request: Request) -> bytes:
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
            return format_list([f"{name} {format_value(value)}" for name, value in self.status_lines()])
        if command == "SET":
            cache.settings.set(args[0], args[1])
            return format_done()
        raise AssertionError(f"unhandled command {command}")  # parse_request checked it


def _summarize(request: Request) -> str:
    args = request.args
    shown = " ".join(args[:4]) + (f" ... (+{len(args) - 4})" if len(args) > 4 else "")
    return f"{request.command} {shown}".strip()
