"""The daemon: wires the cache, the control socket, the FUSE view and the
background tasks into one trio run, and takes them down in order.

Shutdown order on SIGINT/SIGTERM: the FUSE session is told to end (so the
mount goes away first and no reader is left hanging), then every task is
cancelled, then the access index is flushed and the pidfile removed.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import trio

from . import __version__
from .access import AccessIndex
from .backend import Backend
from .cache import Cache
from .control.server import ControlServer
from .embedded import DEFAULT_PORT as EMBEDDED_S3_PORT, DEMO_BUCKET, EmbeddedS3
from .errors import EXIT_MOUNT, EXIT_RUNNING, StartupError
from .evictor import Evictor
from .layout import Layout
from .logs import RequestLog, apply_verbosity
from .refresher import Refresher
from .settings import Settings

log = logging.getLogger(__name__)

@dataclass
class Options:
    port: int
    home: str
    bind: str = "127.0.0.1"
    mountpoint: str | None = None
    buckets: list[str] = field(default_factory=list)
    embedded_s3: str = "auto"  # auto | yes | no
    embedded_s3_port: int = EMBEDDED_S3_PORT
    settings: dict[str, Any] = field(default_factory=dict)
    allow_other: bool = False


class PidFile:
    """An flock'ed pidfile: a second daemon on the same HOMEDIR is refused."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise StartupError(
                f"another s3pool (pid {other}) is running on this HOMEDIR ({path})", EXIT_RUNNING
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)


def prepare_mountpoint(path: str) -> str:
    """Create the mount point if missing; it must be an empty directory."""
    path = os.path.abspath(path)
    try:
        os.statvfs(path)  # goes to the filesystem: a dead FUSE mount answers ENOTCONN
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            # a previous daemon died with the mount up: clear the dead mount
            log.warning("clearing a stale FUSE mount at %s", path)
            subprocess.run(["fusermount3", "-u", "-z", path], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elif exc.errno != errno.ENOENT:
            raise StartupError(f"mount point {path}: {exc.strerror}", EXIT_MOUNT) from None
    os.makedirs(path, exist_ok=True)
    if not os.path.isdir(path):
        raise StartupError(f"mount point {path} is not a directory", EXIT_MOUNT)
    if os.path.ismount(path):
        raise StartupError(f"mount point {path} already has something mounted on it", EXIT_MOUNT)
    if os.listdir(path):
        raise StartupError(f"mount point {path} is not empty", EXIT_MOUNT)
    if not os.path.exists("/dev/fuse"):
        raise StartupError("/dev/fuse is missing: FUSE is not available here", EXIT_MOUNT)
    return path


class Daemon:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.exit_stack = ExitStack()
        try:
            self._setup(options)
        except BaseException:
            self.exit_stack.close()  # undo what was set up: pidfile, embedded S3
            raise

    def _setup(self, options: Options) -> None:
        self.layout = Layout.create(options.home)
        self.pidfile = PidFile(self.layout.pidfile)
        self.exit_stack.callback(self.pidfile.release)
        removed = self.layout.clear_tmp()
        if removed:
            log.info("removed %d leftover partial downloads from tmp/", removed)
        self.mountpoint = prepare_mountpoint(options.mountpoint) if options.mountpoint else None
        self.settings = Settings(**options.settings)
        self.embedded: EmbeddedS3 | None = None
        credentials = None
        if options.embedded_s3 == "yes":
            log.info("starting the embedded S3 (SeaweedFS) for a demo setup")
            self.embedded = EmbeddedS3(os.path.join(self.layout.home, "s3"),
                                       os.path.join(self.layout.log_dir, "embedded-s3.log"),
                                       options.embedded_s3_port)
            self.exit_stack.callback(self.embedded.stop)
            credentials = self.embedded.credentials()
            if DEMO_BUCKET not in options.buckets:
                options.buckets.append(DEMO_BUCKET)  # shown at the mount's root
        self.backend = Backend(
            endpoint_url=self.embedded.endpoint_url if self.embedded else None,
            max_threads=max(64, 2 * self.settings.pull_concurrency),
            credentials=credentials,
        )
        if self.embedded:
            log.warning("S3 endpoint: EMBEDDED demo S3 at %s (SeaweedFS, data in %s; bucket %s). "
                        "Set AWS_ENDPOINT_URL or AWS credentials to use a real S3.",
                        self.backend.describe(), self.embedded.dir, DEMO_BUCKET)
            log.warning("embedded S3 for the aws CLI or boto3: %s", self.embedded.usage())
        else:
            log.info("S3 endpoint: %s", self.backend.describe())
        self.access = AccessIndex(self.layout)
        self.exit_stack.callback(self.access.close)
        self.cache = Cache(self.layout, self.backend, self.settings, self.access)
        self.exit_stack.callback(self.cache.listings.close)
        for bucket in options.buckets:
            self.cache.use_bucket(bucket)
        self.evictor = Evictor(self.cache)
        self.refresher = Refresher(
            self.cache.refresh, self.cache.buckets_in_use, lambda: self.settings.refresh_interval
        )
        self.settings.on_change(self._setting_changed)
        self.request_log = RequestLog(os.path.join(self.layout.log_dir, "requests.log"))
        self.exit_stack.callback(self.request_log.flush)
        self.server = ControlServer(self.cache, self.status_lines, self.request_log)
        self.fs: Any = None
        self.started = time.time()

    def _setting_changed(self, name: str, value: Any) -> None:
        if name == "refresh_interval":
            self.refresher.wake()
        if name == "verbose":
            apply_verbosity(value)

    def status_lines(self) -> list[tuple[str, Any]]:
        stats = self.cache.stats
        self.access.flush()
        usage = self.evictor.usage()
        lines: list[tuple[str, Any]] = [
            ("version", __version__),
            ("pid", os.getpid()),
            ("uptime", round(time.time() - self.started, 1)),
            ("homedir", self.layout.home),
            ("endpoint", self.backend.describe()),
            ("mountpoint", self.mountpoint or "-"),
        ]
        if self.embedded is not None:
            credentials = self.embedded.credentials()
            lines += [
                ("embedded_s3_endpoint", self.embedded.endpoint_url),
                ("embedded_s3_access_key_id", credentials["aws_access_key_id"]),
                ("embedded_s3_secret_access_key", credentials["aws_secret_access_key"]),
            ]
        for name in ("pulls", "hits", "misses", "revalidations", "stale_served", "downloads",
                     "bytes_downloaded",
                     "pushes", "bytes_uploaded", "globs", "refreshes", "errors", "evictions",
                     "bytes_evicted"):
            lines.append((name, getattr(stats, name)))
        lines += [
            ("cache_bytes", self.access.total_bytes),
            ("cache_objects", self.access.count),
            ("disk_used_percent", round(usage.disk_percent, 1)),
            ("buckets_in_use", ",".join(sorted(self.cache.buckets_in_use)) or "-"),
            ("downloads_in_progress", self.cache.download_limiter.borrowed_tokens),
            ("refresh_rounds", self.refresher.rounds),
            ("refresh_failures", self.refresher.failures),
            ("connections", self.server.connections),
        ]
        if self.fs is not None:
            lines += self.fs.status_lines()
        lines += self.settings.items()
        return lines

    async def _flush_request_log(self) -> None:
        while True:
            await trio.sleep(1)
            self.request_log.flush()

    def close(self) -> None:
        self.exit_stack.close()

    async def run(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(
                    self.server.serve, self.options.bind, self.options.port
                )
                for listener in listeners:
                    host, port = listener.socket.getsockname()[:2]
                    log.info("control socket listening on %s:%d", host, port)
                nursery.start_soon(self._flush_request_log)
                await nursery.start(self.evictor.run)
                await nursery.start(self.refresher.run)
                if self.mountpoint:
                    from .fs.mount import FuseMount

                    self.fs = FuseMount(self.cache, self.mountpoint, self.options.buckets,
                                        allow_other=self.options.allow_other)
                    await nursery.start(self.fs.run)
                log.info("s3pool %s ready (pid %d, HOMEDIR %s)", __version__, os.getpid(),
                         self.layout.home)
                async for signum in signals:
                    log.info("received %s: shutting down", signal.Signals(signum).name)
                    break
                self.backend.stopping.set()
                if self.fs is not None:
                    await self.fs.stop()
                nursery.cancel_scope.cancel()
