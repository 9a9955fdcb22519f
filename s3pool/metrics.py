"""Prometheus metrics: what STATUS says, plus latency histograms and S3 errors.

Off unless ``--metrics-port`` is given. prometheus_client's HTTP server runs
in its own thread; at each scrape it asks the trio thread for the STATUS
lines (``trio.from_thread.run_sync``), so the endpoint and STATUS read the
same counters the same way and never disagree. Request and S3 latencies
are histograms observed as they happen (from the control server and from
the backend's botocore hooks; both are thread-safe in prometheus_client).
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Iterator

import trio
from prometheus_client import (CollectorRegistry, Counter, Histogram, disable_created_metrics,
                               start_http_server)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .errors import StartupError
from .settings import SPEC_BY_NAME

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
        self.snapshot: Callable[[], list[tuple[str, Any]]] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.snapshot is None:
            return
        try:
            lines = self.snapshot()
        except trio.RunFinishedError:  # the daemon is stopping
            return
        in_flight = done = total = 0
        for name, value in lines:
            if name == "download":  # "s3://B/K DONE TOTAL ELAPSED" per download in flight
                parts = str(value).rsplit(" ", 3)
                if len(parts) == 4 and parts[1].isdigit() and parts[2].isdigit():
                    in_flight += 1
                    done += int(parts[1])
                    total += int(parts[2])
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

    async def serve(self, bind: str, port: int,
                    status_lines: Callable[[], Awaitable[list[tuple[str, Any]]]],
                    *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        token = trio.lowlevel.current_trio_token()
        self.status.snapshot = lambda: trio.from_thread.run(status_lines, trio_token=token)
        try:
            httpd, thread = start_http_server(port, bind, registry=self.registry)
        except OSError as exc:
            raise StartupError(f"metrics: cannot listen on {bind}:{port}: "
                               f"{exc.strerror or exc}") from None
        try:
            host, bound = httpd.server_address[:2]
            log.info("Prometheus metrics on http://%s:%d/metrics", bind, bound)
            task_status.started(bound)
            await trio.sleep_forever()
        finally:
            self.status.snapshot = None
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(httpd.shutdown)
            httpd.server_close()
            thread.join(1)
