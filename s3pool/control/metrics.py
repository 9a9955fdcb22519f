"""Prometheus metrics: what STATUS says, plus latency histograms and S3 errors.

Off unless ``--metrics-port`` is given. The endpoint is served on the trio
loop, within limits like the control port's: at most ``connection_cap``
connections at once (a small share of the descriptor limit, so that idle
scrapers can never take the descriptors PULLs, downloads and the mount
need), a request must arrive within 5 s (0.5 s while the cap is reached),
one request per connection, accept errors such as EMFILE back off. HTTP is
read and written by h11; the body is prometheus_client's
``generate_latest`` over our registry, rendered in a worker thread from
the STATUS lines read on the trio thread, so the endpoint and STATUS read
the same counters the same way and never disagree. Request and S3
latencies are histograms observed as they happen (from the control server
and from the backend's botocore hooks; both are thread-safe in
prometheus_client).
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import h11
import trio
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from s3pool.client import parse_download
from s3pool.control.server import fd_limit
from s3pool.errors import StartupError
from s3pool.settings import SPEC_BY_NAME

log = logging.getLogger(__name__)

PREFIX = "s3pool_"
# STATUS lines that only ever grow: exported as counters (NAME_total)
COUNTERS = {
    "pulls": "objects asked for by PULL or open() on the mount",
    "hits": "objects served from the cache",
    "misses": "objects that had to be downloaded",
    "revalidations": "cached objects confirmed current by a conditional GET (304)",
    "stale_served": "cached copies served unchecked because S3 failed (stale_on_error)",
    "downloads": "objects downloaded from S3",
    "verified_md5": "downloads installed after their bytes matched the ETag's MD5",
    "verified_crc64nvme": "downloads installed after their bytes matched S3's CRC64NVME",
    "verified_crc32c": "downloads installed after their bytes matched S3's CRC32C",
    "verified_crc32": "downloads installed after their bytes matched S3's CRC32",
    "verified_sha": "downloads installed after their bytes matched S3's SHA-1 or SHA-256",
    "verified_length_only": "downloads installed checked by their length only (no checksum)",
    "verify_failures": "downloads refused: their bytes did not match S3's checksum or MD5",
    "bytes_downloaded": "bytes downloaded from S3",
    "pushes": "objects uploaded by PUSH",
    "bytes_uploaded": "bytes uploaded by PUSH",
    "globs": "GLOB requests",
    "refreshes": "bucket listings made",
    "errors": "control requests answered ERROR",
    "evictions": "cached objects evicted",
    "bytes_evicted": "bytes evicted from the cache",
    "refresh_rounds": "rounds of the list monitor",
    "refresh_failures": "listings the list monitor failed to make",
    "connections": "control connections accepted",
    "s3_errors": "S3 requests that failed (5xx, throttling, 403, no connection)",
    "fuse_opens": "files opened on the mount",
    "fuse_reads": "reads on the mount",
    "prefetches": "files of a directory read in order fetched ahead of their open",
    "prefetch_hits": "opens on the mount of a file a prefetch had fetched",
    # the shared cache tier (--shared-cache, download/tier.py)
    "shared_cache_hits": "objects read from the shared cache tier",
    "shared_cache_misses": "objects the shared cache tier did not have",
    "shared_cache_fallbacks": "objects read from the origin because the shared tier failed",
    "shared_cache_unverifiable": "objects read from the origin: no MD5 ETag or full checksum",
    "shared_cache_listing_checks": "versions taken from a fresh listing instead of a HEAD",
    "shared_cache_cold_skips": "objects fetched from the origin without asking the shared "
                               "tier: it had just missed every ask",
    "shared_cache_bytes_from_tier": "bytes installed from the shared cache tier",
    "shared_cache_bytes_from_origin": "bytes installed from the origin with the tier on",
    "shared_cache_uploads": "objects written to the shared cache tier",
    "shared_cache_uploads_kept": "uploads left out: the tier had that version already",
    "shared_cache_uploads_skipped": "uploads left out: queue full, evicted or replaced "
                                    "before their turn, or shutdown",
    "shared_cache_upload_failures": "uploads to the shared cache tier that failed",
}
GAUGE_HELP = {
    "cache_bytes": "bytes of the objects in the cache",
    "cache_objects": "objects in the cache",
    "disk_used_percent": "use of the filesystem holding HOMEDIR, percent",
    "downloads_in_progress": "downloads from S3 in flight",
    "uptime": "seconds since the daemon started",
}
# names the original s3pool used in STATUS: the same values again, not exported twice
LEGACY_NAMES = {"count_pull", "count_pull_hit", "count_push", "count_glob", "count_refresh",
                "up_since", "revision", "is_master", "master", "standby"}
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                   60, 120, 300)

# the endpoint's limits (see the module docstring)
MAX_CONNECTIONS = 16  # scrapers are one or two; never more than 1/16 of the descriptors
RECEIVE_TIMEOUT = 5.0
BUSY_RECEIVE_TIMEOUT = 0.5
SEND_TIMEOUT = 10.0
DRAIN_TIMEOUT = 1.0
DRAIN_LIMIT = 1 << 20
MAX_REQUEST_HEAD = 8192
ACCEPT_BACKOFF_MIN = 0.05
ACCEPT_BACKOFF_MAX = 1.0
LOG_INTERVAL = 10.0
METRICS_PATHS = (b"/metrics", b"/")


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


class StatusCollector:
    """A prometheus_client collector over the STATUS lines, read at scrape time."""

    def __init__(self) -> None:
        # the STATUS lines of the scrape being rendered (one at a time)
        self.lines: list[tuple[str, Any]] | None = None

    def collect(self) -> Iterator[Metric]:
        lines = self.lines
        if lines is None:
            return
        in_flight = done = total = 0
        for name, value in lines:
            if name == "download":  # one per download in flight (client.py's format)
                found = parse_download(str(value))
                if found is not None:
                    in_flight += 1
                    done += found.done
                    total += found.total
                continue
            if name in LEGACY_NAMES or name in SPEC_BY_NAME:
                continue
            number = _number(value)
            if number is None:
                continue
            if name in COUNTERS:
                yield CounterMetricFamily(PREFIX + name, COUNTERS[name], value=number)
            elif name == "uptime":
                yield GaugeMetricFamily(PREFIX + "uptime_seconds", GAUGE_HELP[name], value=number)
            elif name != "pid":
                yield GaugeMetricFamily(PREFIX + name, GAUGE_HELP.get(name, name.replace("_", " ")),
                                        value=number)
        yield GaugeMetricFamily(PREFIX + "download_bytes_done",
                                "bytes received so far by the downloads in flight", value=done)
        yield GaugeMetricFamily(PREFIX + "download_bytes_expected",
                                "total bytes of the downloads in flight", value=total)
        settings = {name: value for name, value in lines if name in SPEC_BY_NAME}
        setting = GaugeMetricFamily(PREFIX + "setting", "run-time settings, as STATUS shows them",
                                    labels=["name"])
        for name, value in settings.items():
            number = _number(value)
            if number is not None:
                setting.add_metric([name], number)
        yield setting


class Metrics:
    """The registry and the histograms; :meth:`serve` runs the HTTP endpoint."""

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: they only double the output
        self.registry = CollectorRegistry(auto_describe=False)
        self.status = StatusCollector()
        self.registry.register(self.status)
        self.request_seconds = Histogram(
            PREFIX + "request_seconds", "control requests by command and outcome",
            ["command", "status"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.s3_request_seconds = Histogram(
            PREFIX + "s3_request_seconds", "S3 API calls by operation (retries included)",
            ["operation"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.s3_failures = Counter(
            PREFIX + "s3_failures", "failed S3 calls by operation and error code",
            ["operation", "code"], registry=self.registry)

    def observe_request(self, command: str, seconds: float, ok: bool) -> None:
        self.request_seconds.labels(command or "-", "ok" if ok else "error").observe(seconds)

    def observe_s3(self, operation: str, seconds: float, error: str | None) -> None:
        self.s3_request_seconds.labels(operation).observe(seconds)
        if error is not None:
            self.s3_failures.labels(operation, error).inc()

    def render(self, lines: list[tuple[str, Any]], accept: str) -> tuple[bytes, str]:
        """The exposition body for *lines* (a worker thread, one at a time),
        in the format the scraper's Accept header asks for."""
        encoder, content_type = choose_encoder(accept)
        self.status.lines = lines
        try:
            return encoder(self.registry), content_type
        finally:
            self.status.lines = None

    async def serve(self, bind: str, port: int,
                    status_lines: Callable[[], Awaitable[list[tuple[str, Any]]]],
                    *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        server = MetricsServer(self, status_lines)
        await server.serve(bind, port, task_status=task_status)


class _Receiving:
    """A connection still reading its request: its deadline can be shortened."""

    __slots__ = ("accepted", "scope")

    def __init__(self, accepted: float, scope: trio.CancelScope) -> None:
        self.accepted = accepted
        self.scope = scope


class MetricsServer:
    """The HTTP endpoint on the trio loop: GET /metrics, one request per connection."""

    def __init__(self, metrics: Metrics,
                 status_lines: Callable[[], Awaitable[list[tuple[str, Any]]]],
                 descriptor_limit: int | None = None) -> None:
        self.metrics = metrics
        self.status_lines = status_lines
        self.connection_cap = max(1, min(MAX_CONNECTIONS, (descriptor_limit or fd_limit()) // 16))
        self.slots = trio.Semaphore(self.connection_cap)
        self.render_limiter = trio.CapacityLimiter(1)
        self.receiving: set[_Receiving] = set()
        self.scrapes = 0
        self._last_log = {"accept": float("-inf"), "cap": float("-inf")}

    async def serve(self, bind: str, port: int, *,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            listeners = await trio.open_tcp_listeners(port, host=bind)
        except OSError as exc:
            raise StartupError(f"metrics: cannot listen on {bind}:{port}: "
                               f"{exc.strerror or exc}") from None
        bound = listeners[0].socket.getsockname()[1]
        log.info("Prometheus metrics on http://%s:%d/metrics (at most %d connections)", bind,
                 bound, self.connection_cap)
        async with trio.open_nursery() as handlers:
            async with trio.open_nursery() as acceptors:
                for listener in listeners:
                    acceptors.start_soon(self._accept_loop, listener, handlers)
                task_status.started(bound)

    async def _accept_loop(self, listener: trio.SocketListener, handlers: trio.Nursery) -> None:
        backoff = ACCEPT_BACKOFF_MIN
        async with listener:
            while True:
                if self.slots.value == 0:
                    self._hurry()
                await self.slots.acquire()
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    self.slots.release()
                    self._log_now("accept", "accepting a metrics connection failed: %s (%s); "
                                  "retrying in %g s", errno.errorcode.get(exc.errno or 0, "?"),
                                  exc.strerror or exc, backoff)
                    await trio.sleep(backoff)
                    backoff = min(2 * backoff, ACCEPT_BACKOFF_MAX)
                    continue
                except BaseException:
                    self.slots.release()
                    raise
                backoff = ACCEPT_BACKOFF_MIN
                handlers.start_soon(self._run_handler, stream)

    def _hurry(self) -> None:
        """At the cap: connections still silent get BUSY_RECEIVE_TIMEOUT from
        their accept, so idle clients cannot hold every slot."""
        self._log_now("cap", "metrics endpoint at its cap of %d connections: idle ones get "
                      "%g s to send their request", self.connection_cap, BUSY_RECEIVE_TIMEOUT)
        for receiving in self.receiving:
            receiving.scope.deadline = min(receiving.scope.deadline,
                                           receiving.accepted + BUSY_RECEIVE_TIMEOUT)

    def _log_now(self, what: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_log[what] >= LOG_INTERVAL:
            self._last_log[what] = now
            log.warning(message, *args)

    async def _run_handler(self, stream: trio.SocketStream) -> None:
        try:
            await self.handle(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the scraper went away
        except Exception:  # a bug of ours: never take the endpoint down
            log.exception("unexpected error on a metrics connection")
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()
            self.slots.release()

    async def handle(self, stream: trio.SocketStream) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        try:
            request = await self._receive_request(stream, connection)
        except h11.RemoteProtocolError as exc:
            await self._send(stream, connection, exc.error_status_hint, b"bad request\n")
            await self._drain(stream)
            return
        if request is None:  # nothing (complete) within the deadline, or EOF
            return
        if request.method not in (b"GET", b"HEAD"):
            await self._send(stream, connection, 405, b"GET only\n", [(b"Allow", b"GET, HEAD")])
            return
        if request.target.split(b"?", 1)[0] not in METRICS_PATHS:
            await self._send(stream, connection, 404, b"see /metrics\n")
            return
        accept = b",".join(value for name, value in request.headers if name == b"accept")
        lines = await self.status_lines()
        body, content_type = await trio.to_thread.run_sync(
            self.metrics.render, lines, accept.decode("latin-1"), limiter=self.render_limiter)
        self.scrapes += 1
        await self._send(stream, connection, 200, body if request.method == b"GET" else b"",
                         [(b"Content-Type", content_type.encode())], length=len(body))

    async def _receive_request(self, stream: trio.SocketStream,
                               connection: h11.Connection) -> h11.Request | None:
        with trio.move_on_after(RECEIVE_TIMEOUT) as scope:
            receiving = _Receiving(trio.current_time(), scope)
            self.receiving.add(receiving)
            if self.slots.value == 0:  # accepted at the cap: hurried from the start
                scope.deadline = receiving.accepted + BUSY_RECEIVE_TIMEOUT
            try:
                while True:
                    event = connection.next_event()
                    if event is h11.NEED_DATA:
                        connection.receive_data(await stream.receive_some(MAX_REQUEST_HEAD))
                        continue
                    if isinstance(event, h11.Request):
                        return event
                    return None  # ConnectionClosed: the client left
            finally:
                self.receiving.discard(receiving)
        return None

    @staticmethod
    async def _drain(stream: trio.SocketStream) -> None:
        """Read what the client still sends (an oversized head): closing with
        unread input resets the connection, which can destroy the reply."""
        await stream.send_eof()
        with trio.move_on_after(DRAIN_TIMEOUT):
            drained = 0
            while drained < DRAIN_LIMIT and (chunk := await stream.receive_some(65536)):
                drained += len(chunk)

    @staticmethod
    async def _send(stream: trio.SocketStream, connection: h11.Connection, status: int,
                    body: bytes, headers: list[tuple[bytes, bytes]] | None = None,
                    length: int | None = None) -> None:
        headers = [*(headers or [(b"Content-Type", b"text/plain; charset=utf-8")]),
                   (b"Content-Length", str(len(body) if length is None else length).encode()),
                   (b"Connection", b"close")]
        with trio.move_on_after(SEND_TIMEOUT):
            data = connection.send(h11.Response(status_code=status, headers=headers))
            if body:
                data += connection.send(h11.Data(data=body))
            data += connection.send(h11.EndOfMessage())
            await stream.send_all(data)
