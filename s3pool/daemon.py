"""The daemon: wires the cache, the control socket, the FUSE view and the
background tasks into one trio run, and takes them down in order.

Shutdown order on SIGINT/SIGTERM: the FUSE session is told to end (so the
mount goes away first and no reader is left hanging), then every task is
cancelled, then the access index is flushed and the pidfile removed.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import logging
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.exceptions
import trio

from s3pool import __version__
from s3pool.cache import Cache
from s3pool.control.peer import AccessPolicy
from s3pool.control.server import ControlServer
from s3pool.control.unixsocket import UnixSocket
from s3pool.embedded import DEFAULT_PORT as EMBEDDED_S3_PORT, DEMO_BUCKET, EmbeddedS3
from s3pool.errors import EXIT_MOUNT, EXIT_RUNNING, EXIT_USAGE, StartupError
from s3pool.listing.fleet import Fleet, FleetListings
from s3pool.listing.listings import Listings
from s3pool.listing.published import DEFAULT_KEY as DEFAULT_PUBLISHED_KEY
from s3pool.listing.refresher import Refresher
from s3pool.logs import RequestLog, apply_verbosity
from s3pool.s3.backend import Backend
from s3pool.settings import Settings
from s3pool.store.checkpoint import Checkpoint
from s3pool.store.evictor import Evictor
from s3pool.store.layout import Layout
from s3pool.store.migrate import migrate as migrate_layout
from s3pool.store.objects import Store

log = logging.getLogger(__name__)

# seconds that requests in flight get to end by themselves at shutdown
STOP_GRACE = 5.0


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
    metrics_port: int = 0  # 0: no Prometheus endpoint
    metrics_bind: str = "127.0.0.1"
    extra_pidfile: str | None = None  # the original's -pidfile PATH
    socket_path: str | None = None  # the Unix-domain control socket
    admin_group: str | None = None  # a group name or gid whose members may SET
    allow_remote_admin: bool = False  # clients on other hosts may SET
    publish_listing: bool = False  # upload each listing for the fleet
    use_published_listing: bool = False  # refresh from the published listing
    published_listing_key: str = DEFAULT_PUBLISHED_KEY
    push_endpoint: str | None = None  # PUSH here instead of the read endpoint
    # s3://BUCKET/PREFIX: the fleet's shared tier (download/tier.py)
    shared_cache: str | None = None
    shared_cache_endpoint: str | None = None
    shared_cache_profile: str | None = None


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


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force.

    Idle or slow clients each hold a descriptor; the connection cap is half
    of this limit, so the more there is, the more room for both."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if target == resource.RLIM_INFINITY:  # NOFILE cannot exceed fs.nr_open
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the descriptor limit from %d to %d: %s", soft, target, exc)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def _mode(path: str) -> int:
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0


def resolve_group(name: str) -> int:
    """A group name or number -> gid; an unknown name is a start-up error."""
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise StartupError(f"--admin-group {name}: no such group", EXIT_USAGE) from None


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


def unreachable_by_others(path: str) -> str | None:
    """The first directory on the way to *path* (itself included) that users
    other than its owner may not search, or None when every one lets them."""
    path = os.path.abspath(path)
    parts = [path]
    while parts[-1] != os.path.dirname(parts[-1]):
        parts.append(os.path.dirname(parts[-1]))
    for part in reversed(parts):
        try:
            mode = os.stat(part).st_mode
        except OSError:
            return part
        if not mode & 0o001:
            return part
    return None


def check_port_free(what: str, host: str, port: int) -> None:
    """Refuse to start when *port* cannot be bound (as the listener will bind it)."""
    if not port:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except OSError:
        return  # the listener reports a bad address itself
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            hint = ("; another s3pool or another program listens there: choose another port"
                    if exc.errno == errno.EADDRINUSE else "")
            where = "" if what == "control" else f"{what}: "
            raise StartupError(f"{where}cannot listen on {host}:{port}: "
                               f"{exc.strerror or exc}{hint}") from None


def make_backend(**kwargs: Any) -> Backend:
    """A Backend; an AWS configuration boto3 cannot use (AWS_PROFILE naming no
    profile, a broken config file) is a start-up error of one line."""
    try:
        return Backend(**kwargs)
    except botocore.exceptions.BotoCoreError as exc:
        hint = ""
        if isinstance(exc, botocore.exceptions.ProfileNotFound):
            hint = " (AWS_PROFILE names a profile that is not in ~/.aws/config or credentials)"
        raise StartupError(f"cannot set up the S3 client: {exc}{hint}") from None


def check_s3_setup(region: str, endpoints: list[str | None], need_credentials: bool
                   ) -> list[str]:
    """Blocking, quick: what stands in the way of S3 requests (empty: nothing seen)."""
    problems = []
    if need_credentials:
        try:
            found = boto3.session.Session().get_credentials()
        except Exception as exc:  # noqa: BLE001 - any failure here is the finding
            problems.append(f"AWS credentials cannot be loaded ({exc})")
        else:
            if found is None:
                problems.append("no AWS credentials found (environment, AWS_PROFILE, "
                                "~/.aws, instance role)")
    for url in endpoints:
        parts = urlsplit(url or f"https://s3.{region}.amazonaws.com")
        host = parts.hostname or ""
        try:
            socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
        except OSError as exc:
            problems.append(f"the endpoint's host {host} does not resolve "
                            f"({exc.strerror or exc})")
    return problems


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
        self.descriptor_limit = raise_descriptor_limit()
        self.layout = Layout.create(options.home)
        self.pidfile = PidFile(self.layout.pidfile)
        self.exit_stack.callback(self.pidfile.release)
        self.hidden_by = unreachable_by_others(self.layout.data_dir)
        if self.hidden_by is not None:
            log.warning("other users cannot reach HOMEDIR %s (%s is mode %04o: no search "
                        "permission for others): the paths PULL hands them cannot be opened. "
                        "Use a HOMEDIR every user can reach (as root: -D /var/cache/s3pool), "
                        "or chmod o+x the directories on the way", self.layout.home,
                        self.hidden_by, _mode(self.hidden_by))
        # before anything starts (the demo S3 takes seconds): is the port free?
        check_port_free("control", options.bind, options.port)
        if options.metrics_port:
            check_port_free("metrics", options.metrics_bind, options.metrics_port)
        if options.extra_pidfile:
            self._write_extra_pidfile(options.extra_pidfile)
        removed = self.layout.clear_tmp()
        if removed:
            log.info("removed %d leftover partial downloads from tmp/", removed)
        migrate_layout(self.layout)  # an older HOMEDIR is moved, never misread
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
        self.backend = make_backend(
            endpoint_url=self.embedded.endpoint_url if self.embedded else None,
            max_threads=Backend.threads_for(self.settings.pull_concurrency),
            credentials=credentials,
        )
        self.s3_check = "checking"  # what _check_s3 found (STATUS)
        if self.embedded:
            log.warning("S3 endpoint: EMBEDDED demo S3 at %s (SeaweedFS, data in %s; bucket %s). "
                        "Set AWS_ENDPOINT_URL or AWS credentials to use a real S3.",
                        self.backend.describe(), self.embedded.dir, DEMO_BUCKET)
            log.warning("embedded S3 for the aws CLI or boto3: %s", self.embedded.usage())
        else:
            log.info("S3 endpoint: %s", self.backend.describe())
        self.store = Store(self.layout)
        self.access = self.store.access
        self.exit_stack.callback(self.access.close)
        self.evictor = Evictor(self.store, self.settings)
        self.push_backend = self.backend
        if options.push_endpoint:
            self.push_backend = make_backend(endpoint_url=options.push_endpoint, max_threads=16,
                                             credentials=credentials)
            log.info("PUSH endpoint: %s", self.push_backend.describe())
        fleet = Fleet(publish=options.publish_listing,
                      use_published=options.use_published_listing,
                      key=options.published_listing_key,
                      max_age=lambda: self.settings.published_listing_max_age)
        listings = Listings(self.layout, self.backend)
        self.fleet = FleetListings(listings, fleet, self.push_backend)
        self.cache = Cache(self.store, self.backend, self.settings, room=self.evictor,
                           listings=listings, push_backend=self.push_backend)
        self.tier = None
        if options.shared_cache:
            from s3pool.download.tier import make_tier
            self.tier = make_tier(options.shared_cache, options.shared_cache_endpoint,
                                  options.shared_cache_profile, self.backend, make_backend)
            self.cache.tier = self.tier
            self.tier.busy = lambda: self.cache.downloads.running > 0  # uploads wait
            self.tier.store = self.store  # uploads are read from the cache's files
        self.checkpoint = Checkpoint(self.layout, self.settings)
        # after an unclean reboot, what was installed since the last sync is dropped
        self.store.suspect_after = self.checkpoint.suspect_after()
        if self.store.suspect_after is not None:
            # before anything is served (rare: only after an unclean reboot)
            self.store.reconcile()
            self.store.suspect_after = None
            # the listing indexes are written without an fsync too
            self.cache.listings.check_after_crash()
        self.cache.on_install = self.checkpoint.installed
        self.cache.listings.on_write = self.checkpoint.installed
        self.exit_stack.callback(self.cache.listings.close)
        for bucket in options.buckets:
            self.cache.use_bucket(bucket)
        self.refresher = Refresher(
            self.cache.refresh, self.cache.buckets_in_use, lambda: self.settings.refresh_interval
        )
        self.settings.on_change(self._setting_changed)
        self.request_log = RequestLog(os.path.join(self.layout.log_dir, "requests.log"))
        self.exit_stack.callback(self.request_log.flush)
        admin_gid = resolve_group(options.admin_group) if options.admin_group else None
        policy = AccessPolicy(daemon_uid=os.geteuid(), admin_gid=admin_gid,
                              admin_group_name=options.admin_group,
                              allow_remote_admin=options.allow_remote_admin)
        self.server = ControlServer(self.cache, self.status, self.request_log, policy,
                                    self.descriptor_limit)
        self.unix_socket: UnixSocket | None = None
        if options.socket_path:
            self.unix_socket = UnixSocket(options.socket_path, self.settings.socket_mode)
            self.exit_stack.callback(self.unix_socket.close)
        self.metrics: Any = None
        if options.metrics_port:
            try:
                from s3pool.control.metrics import Metrics  # prometheus_client only when asked for
            except ImportError as exc:
                raise StartupError(f"--metrics-port needs prometheus_client ({exc}); "
                                   "pip install prometheus_client") from None

            self.metrics = Metrics()
            self.server.observe = self.metrics.observe_request
            self.backend.observer = self.metrics.observe_s3
        self.fs: Any = None
        self.on_ready: Callable[[], None] | None = None  # called once it serves
        self.started = time.time()

    def _write_extra_pidfile(self, path: str) -> None:
        try:
            with open(path, "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as exc:
            raise StartupError(f"cannot write pidfile {path}: {exc.strerror}") from None

        def remove() -> None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

        self.exit_stack.callback(remove)

    def _setting_changed(self, name: str, value: Any) -> None:
        if name == "refresh_interval":
            self.refresher.wake()
        if name == "verbose":
            apply_verbosity(value)
        if name == "socket_mode" and self.unix_socket is not None:
            self.unix_socket.chmod(value)

    async def status(self) -> list[tuple[str, Any]]:
        """STATUS as of now: the access records written first, so the
        cache figures count every access so far."""
        await self.store.flush_access()
        return self.status_lines()

    async def _check_s3(self) -> None:
        """Once, at start, in the background: are there credentials, and does
        the endpoint's host resolve? The log and STATUS (s3_check) say what is
        wrong before the first PULL runs into it; the daemon serves anyway."""
        endpoints = {self.backend.describe(): self.backend.endpoint_url,
                     self.push_backend.describe(): self.push_backend.endpoint_url}
        problems = await trio.to_thread.run_sync(
            check_s3_setup, self.backend.region, list(endpoints.values()),
            self.embedded is None, abandon_on_cancel=True)
        self.s3_check = "; ".join(problems) or "ok"
        if problems:
            log.warning("S3 check: %s. Requests to S3 will fail until this is fixed (the "
                        "daemon keeps serving what is cached)", self.s3_check)
        else:
            log.info("S3 check: credentials found, endpoint resolves")

    async def _warm_up(self) -> None:
        """botocore sets itself up lazily on the first request (credentials,
        endpoint rules, the signer, a connection): do that for the buckets
        named at start before anyone waits for their first object."""
        if self.options.buckets:
            await trio.to_thread.run_sync(self.backend.warm_up, list(self.options.buckets),
                                          abandon_on_cancel=True)

    def status_lines(self) -> list[tuple[str, Any]]:
        stats = self.cache.stats
        usage = self.evictor.usage()
        lines: list[tuple[str, Any]] = [
            ("version", __version__),
            ("pid", os.getpid()),
            ("uptime", round(time.time() - self.started, 1)),
            ("homedir", self.layout.home),
            ("homedir_shared", "no" if self.hidden_by is not None else "yes"),
            ("endpoint", self.backend.describe()),
            ("s3_check", self.s3_check),
            ("push_endpoint", self.push_backend.describe()),
            *(self.tier.status_lines() if self.tier is not None else ()),  # shared_cache_*
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
                     "digest_retries", "bytes_downloaded",
                     "pushes", "bytes_uploaded", "globs", "refreshes", "errors"):
            lines.append((name, getattr(stats, name)))
        lines += self.cache.verifications.status_lines()  # verified_KIND, verify_failures
        lines += [
            ("evictions", self.evictor.evictions),
            ("bytes_evicted", self.evictor.bytes_evicted),
            ("cache_bytes", self.access.total_bytes),
            ("cache_objects", self.access.count),
            ("disk_used_percent", round(usage.disk_percent, 1)),
            ("buckets_in_use", ",".join(sorted(self.cache.buckets_in_use)) or "-"),
            ("downloads_in_progress", self.cache.downloads_in_flight()),
            ("refresh_rounds", self.refresher.rounds),
            ("refresh_failures", self.refresher.failures),
            # listing_requests N, then listing_age BUCKET SECONDS per bucket in use
            *self.cache.listings.status_lines(self.cache.buckets_in_use),
            *self.fleet.status_lines(),
            ("connections", self.server.connections),
            ("s3_errors", self.backend.errors),
            ("s3_lean_gets", self.backend.lean_gets),
            ("s3_lean_fallbacks", self.backend.lean_fallbacks),
            ("s3_lean_lists", self.backend.lean_lists),
            ("s3_lean_list_fallbacks", self.backend.lean_list_fallbacks),
            ("open_connections", self.server.open_connections),
            ("connection_cap", self.server.connection_cap),
            ("descriptor_limit", self.descriptor_limit),
        ]
        lines += self.checkpoint.status_lines()
        if self.fs is not None:
            lines += self.fs.status_lines()
        lines += self.cache.transfers.status_lines()  # download URL DONE TOTAL SECONDS
        lines += self.backend.requests.status_lines()  # s3_request OP URL BYTES SECONDS
        lines += self.original_status_lines()
        lines += self.settings.items()
        return lines

    def original_status_lines(self) -> list[tuple[str, Any]]:
        """The names the original s3pool's STATUS had, for its clients and scripts.

        Its pull_concurrency, refresh_interval (minutes) and verbose are
        settings here and follow. As there, count_pull and count_push count
        requests, whatever came of them (a malformed one too); count_refresh
        every REFRESH request and every listing s3pool began by itself (a
        GLOB's first, the background refreshes); count_pull_hit counts objects.
        """
        stats = self.cache.stats
        requests = self.server.requests
        up_since = time.localtime(self.started)
        return [
            ("count_glob", stats.globs),
            ("count_pull", requests["PULL"]),
            ("count_pull_hit", stats.hits),
            ("count_push", requests["PUSH"]),
            ("count_refresh", stats.refreshes_begun + self.server.malformed["REFRESH"]),
            ("is_master", "false"),
            ("master", ""),
            ("revision", __version__),
            ("standby", ""),
            ("up_since", time.strftime("%Y-%m-%d %H:%M:%S %z %Z", up_since)),
        ]

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
                    self.server.serve, self.options.bind, self.options.port,
                    self.unix_socket.sock if self.unix_socket else None,
                )
                for listener in listeners:
                    if listener.socket.family == socket.AF_UNIX:
                        assert self.unix_socket is not None
                        log.info("control socket listening on %s (mode %s)",
                                 self.unix_socket.path, self.settings.socket_mode)
                    else:
                        host, port = listener.socket.getsockname()[:2]
                        log.info("control socket listening on %s:%d", host, port)
                log.info("at most %d control connections at once (descriptor limit %d)",
                         self.server.connection_cap, self.descriptor_limit)
                nursery.start_soon(self._flush_request_log)
                nursery.start_soon(self._warm_up)
                nursery.start_soon(self._check_s3)
                await nursery.start(self.cache.run)  # downloads outlive their requests
                if self.tier is not None:
                    await nursery.start(self.tier.run)  # its uploads, in the background
                await nursery.start(self.store.run)
                if self.metrics is not None:
                    await nursery.start(self.metrics.serve, self.options.metrics_bind,
                                        self.options.metrics_port, self.status)
                await nursery.start(self.evictor.run)
                await nursery.start(self.checkpoint.run)
                await nursery.start(self.refresher.run)
                if self.mountpoint:
                    from s3pool.fs.mount import FuseMount

                    self.fs = FuseMount(self.cache, self.mountpoint, self.options.buckets,
                                        allow_other=self.options.allow_other)
                    await nursery.start(self.fs.run)
                log.info("s3pool %s ready (pid %d, HOMEDIR %s)", __version__, os.getpid(),
                         self.layout.home)
                if self.on_ready is not None:
                    self.on_ready()  # -daemonprep: let go of the terminal or pipe
                async for signum in signals:
                    log.info("received %s: shutting down", signal.Signals(signum).name)
                    break
                if self.fs is not None:
                    # files still being written in the mount are not uploaded, and
                    # their multipart uploads aborted while S3 can still be asked
                    await self.fs.abort_writes()
                await self._stop_in_flight()
                if self.fs is not None:
                    await self.fs.stop()
                nursery.cancel_scope.cancel()
        try:
            self.checkpoint.sync()  # a clean stop then a power loss drops nothing
        except OSError as exc:
            log.warning("final checkpoint sync failed: %s", exc)

    async def _stop_in_flight(self) -> None:
        """Let what is in flight end with an error its caller sees: downloads
        give up between chunks, so a PULL gets an ERROR saying the daemon is
        stopping and a reader of the mount gets EIO, before anything is torn
        down. Whatever has not ended after STOP_GRACE is cancelled."""
        self.backend.stopping.set()
        self.push_backend.stopping.set()  # its S3 requests end too (--push-endpoint)
        self.server.stopping = True
        self.cache.stop_downloads("download abandoned: s3pool is shutting down")
        if self.tier is not None:
            self.tier.stop()
        with trio.move_on_after(STOP_GRACE):
            while self.server.active or self.store.locks.held() \
                    or self.cache.busy():
                await trio.sleep(0.05)
