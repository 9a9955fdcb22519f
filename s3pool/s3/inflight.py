"""S3 requests in flight: what STATUS shows of them, and the deadline that ends a stalled one.

Every request the backend sends (GET, HEAD, LIST, on the lean path or
through boto3) is an :class:`S3Request` from its start to the last byte
of its body. A socket read is bounded by a timeout, but a server that
sends one byte a second never lets that timeout fire: the deadline here
is on progress instead, the same rule as ``download_stall_timeout`` /
``download_stall_bytes`` for a whole download. From the start until the
headers are in, the request must be answered within the stall timeout;
then its body must bring ``stall_bytes`` bytes (or the rest) within each
stall timeout while somebody reads it (a body nobody reads for a while
is not S3's stall). A watchdog thread looks a few times a second and ends
a request past its deadline by shutting its socket down, which wakes the
worker thread blocked in it; a request that gets a new socket after that
(a retry inside botocore) has it shut down at once. When the daemon
stops, every request in flight is ended the same way, so a stop never
waits for S3.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from s3pool.errors import BackendError

log = logging.getLogger(__name__)

WATCH_INTERVAL = 0.25  # seconds between the watchdog's looks


class DeadlineExceeded(BackendError):
    """A request the watchdog ended (its deadline passed, or the daemon stops)."""


class S3Request:
    """One S3 request in flight (its fields are written by one worker thread
    at a time and read by the watchdog and STATUS)."""

    __slots__ = ("registry", "operation", "url", "started", "bytes", "total", "sock",
                 "expired", "judged", "_mark", "_mark_bytes", "_paused_at", "_answered")

    def __init__(self, registry: S3Requests, operation: str, url: str,
                 judged: bool = True) -> None:
        self.registry = registry
        self.judged = judged  # False: shown, ended by the stop, but no deadline (uploads)
        self.operation = operation
        self.url = url
        self.started = time.monotonic()
        self.bytes = 0  # body bytes received
        self.total: int | None = None  # body bytes expected, once known
        self.sock: Any = None
        self.expired: str | None = None  # why the watchdog ended it
        self._mark = self.started  # when the current run of stall_bytes began
        self._mark_bytes = 0
        self._paused_at: float | None = None
        self._answered = False

    def attach(self, sock: Any) -> None:
        """The socket the request (now) uses: the watchdog may shut it down."""
        self.sock = sock
        if self.expired is not None or self.registry.stopping.is_set():
            _shut(sock)

    def answered(self, total: int | None) -> None:
        """The headers are in; the body (of *total* bytes, if known) is nobody's
        to read yet."""
        now = time.monotonic()
        self._answered = True
        self.total = total
        self._mark, self._mark_bytes = now, self.bytes
        self._paused_at = now

    def resume(self) -> None:
        """A read of the body begins: time counts again (an idle spell does not)."""
        paused = self._paused_at
        if paused is not None:
            self._mark += time.monotonic() - paused
            self._paused_at = None

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = time.monotonic()

    def add(self, count: int) -> None:
        self.bytes += count
        if self.bytes - self._mark_bytes >= self.registry.stall_bytes:
            self._mark, self._mark_bytes = time.monotonic(), self.bytes

    def check(self) -> None:
        """Raise if the request was ended (for code that is not in a socket call)."""
        if self.expired is not None:
            raise DeadlineExceeded(self.expired)

    def end(self) -> None:
        self.registry.end(self)

    def overdue(self, now: float, timeout: float, stall_bytes: int) -> str | None:
        """Why the request is past its deadline, or None."""
        if self._paused_at is not None:
            return None
        waited = now - self._mark
        if waited <= timeout:
            return None
        if not self._answered:
            return f"no answer in {waited:.1f}s"
        got = self.bytes - self._mark_bytes
        need = stall_bytes if self.total is None else min(stall_bytes,
                                                          self.total - self._mark_bytes)
        if got >= need:
            return None
        return (f"stalled: {got} bytes in {waited:.1f}s (download_stall_bytes {stall_bytes} "
                f"in download_stall_timeout {timeout:g}s), {self.bytes} bytes received")

    def status_value(self) -> str:
        return f"{self.operation} {self.url} {self.bytes} {time.monotonic() - self.started:.1f}"


class S3Requests:
    """The requests in flight, and the watchdog thread that enforces their deadline."""

    def __init__(self, stopping: threading.Event, timeout: float = 60.0,
                 stall_bytes: int = 256 << 10) -> None:
        self.stopping = stopping
        self.timeout = timeout  # 0: no deadline (the stop still ends requests)
        self.stall_bytes = max(1, stall_bytes)
        self.expired = 0  # requests ended by their deadline (or the stop)
        self._active: dict[int, S3Request] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._local = threading.local()

    def set_deadline(self, timeout: float, stall_bytes: int) -> None:
        self.timeout = float(timeout)
        self.stall_bytes = max(1, int(stall_bytes))

    def begin(self, operation: str, url: str, judged: bool = True) -> S3Request:
        request = S3Request(self, operation, url, judged)
        with self._cond:
            self._active[id(request)] = request
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="s3-deadline",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()
        return request

    def end(self, request: S3Request) -> None:
        with self._cond:
            self._active.pop(id(request), None)

    # the request the calling thread is making through boto3 (its connection
    # class attaches the socket it sends on)
    @property
    def current(self) -> S3Request | None:
        return getattr(self._local, "request", None)

    @current.setter
    def current(self, request: S3Request | None) -> None:
        self._local.request = request

    def __len__(self) -> int:
        return len(self._active)

    def status_lines(self) -> list[tuple[str, str]]:
        with self._cond:
            requests = sorted(self._active.values(), key=lambda r: r.started)
        return [("s3_request", r.status_value()) for r in requests]

    def _watch(self) -> None:
        while True:
            with self._cond:
                while not self._active:
                    self._cond.wait()
                requests = list(self._active.values())
            stopping = self.stopping.is_set()
            now = time.monotonic()
            for request in requests:
                if request.expired is not None:
                    continue
                why: str | None
                if stopping:
                    why = "s3pool is shutting down"
                elif self.timeout > 0 and request.judged:
                    why = request.overdue(now, self.timeout, self.stall_bytes)
                else:
                    why = None
                if why is not None:
                    request.expired = why
                    self.expired += 1
                    log.warning("%s %s ended: %s", request.operation, request.url, why)
                    if request.sock is not None:
                        _shut(request.sock)
            time.sleep(WATCH_INTERVAL)


def _shut(sock: Any) -> None:
    """Wake whoever is blocked on *sock* (a recv returns at once); the owner closes it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):
        pass
