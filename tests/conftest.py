"""Shared fixtures: a moto S3 server over real HTTP that counts the requests
it receives, and the real ``s3pool`` daemon started as a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import boto3
import pytest
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

from s3pool.client import exchange  # noqa: E402
from s3pool.embedded import INTERNAL_PORTS, port_is_free  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}

TIERS = ("unit", "e2e")
# fixtures that start the daemon as a subprocess: never in the unit tier
E2E_FIXTURES = {"start_daemon", "daemon"}


def pytest_collection_modifyitems(config, items):
    """Every test names exactly one tier (a module's ``pytestmark``): a new file
    that forgets is an error, not a test run in the wrong tier. A ``fuse`` test
    is ``e2e`` too, and a ``unit`` test starts no daemon."""
    wrong: dict = {}  # item -> what is wrong with it
    for item in items:
        marks = {mark.name for mark in item.iter_markers()}
        tiers = marks.intersection(TIERS)
        if len(tiers) != 1:
            wrong[item] = (f"{item.nodeid}: has {sorted(tiers) or 'no tier'}, wants exactly one "
                           "of unit, e2e (pytestmark = pytest.mark.unit at the top of the file)")
        elif "fuse" in marks and "e2e" not in tiers:
            wrong[item] = f"{item.nodeid}: a fuse test is e2e"
        elif "unit" in tiers and E2E_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            wrong[item] = f"{item.nodeid}: a unit test starts the daemon (mark it e2e)"
    if wrong and not hasattr(config, "workerinput"):
        raise pytest.UsageError("tests without a proper tier:\n  " + "\n  ".join(wrong.values()))
    # an xdist worker cannot stop the run with a message (its UsageError is an
    # INTERNALERROR that says nothing): each such test errors at its setup instead
    for item, message in wrong.items():
        item.stash[TIER_ERROR] = message
    # the end-to-end tests first (a stable sort: files keep their order): the
    # workers of ./dev.sh test then end on short unit tests, not on a long e2e one
    items.sort(key=lambda item: 0 if item.get_closest_marker("e2e") else 1)


TIER_ERROR = pytest.StashKey[str]()


def pytest_runtest_setup(item):
    message = item.stash.get(TIER_ERROR, None)
    if message is not None:
        pytest.fail(message, pytrace=False)


def wait_until(predicate, timeout: float = 30.0, what: str | None = None,
               interval: float = 0.02):
    """Poll ``predicate`` until it returns something true and return that;
    fail with ``what`` (or the predicate's name) after ``timeout`` seconds. The
    timeout is generous: a slow machine only makes the wait longer."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for "
                                 f"{what or getattr(predicate, '__name__', 'a condition')}; "
                                 f"last saw {result!r}")
        time.sleep(interval)


def finishes(fn, timeout: float = 60.0, what: str | None = None):
    """``fn()`` in a thread: its result, or what it raised, once it returns; a
    clear failure (the thread left behind) if it is still at work after the
    generous ``timeout``: a call that must not hang, with no wall-clock bound."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"{what or getattr(fn, '__name__', 'the call')} still had not "
                             f"returned after {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]



_GIVEN: set[int] = set()  # ports this process handed out (not yet bound, maybe)


def _worker_ports(width: int = 1) -> range:
    """The ports this test process picks from: below the kernel's ephemeral
    range (32768 and up), a slice of its own under pytest-xdist. A port the
    kernel hands out for port 0 may be taken by any outgoing connection
    between the check and the daemon's bind, and two workers picking at
    random from one range may pick the same port before either daemon binds
    it: CI saw both end in 'Address already in use'."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1))
    index = int(worker[2:]) % count if worker[:2] == "gw" and worker[2:].isdigit() else 0
    span = (32000 - 20000) // count
    low = 20000 + index * span
    return range(low, low + span - width + 1)


def _pick(width: int) -> int:
    """A port of this process's slice, free with the width - 1 ports after
    it, none of them handed out by this process before."""
    import random

    ports = _worker_ports(width)
    for _ in range(400):
        port = random.choice(ports)
        block = set(range(port, port + width))
        if block & _GIVEN:
            continue
        if all(port_is_free(p) for p in block):
            _GIVEN.update(block)
            return port
    if _GIVEN:  # handed out long ago and long bound or released: start over
        _GIVEN.clear()
        return _pick(width)
    raise AssertionError("no free port")


def free_port() -> int:
    """A TCP port free on loopback (see _worker_ports for where it comes from)."""
    return _pick(1)


def free_port_block() -> int:
    """A port that is free with the ports the embedded S3 uses after it
    (taken where free_port takes its ports, as a fixed port, 8333, is not)."""
    return _pick(len(INTERNAL_PORTS) + 1)


class CountingApp:
    """WSGI middleware: records (method, bucket, key, query, if-none-match, status)."""

    def __init__(self, app) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        # path -> seconds to sleep per 64 KiB of body: a slow S3 for one key
        self.slow_paths: dict[str, float] = {}
        # path -> an Event the GET bodies of that path wait for (set it to let them go)
        self.held_paths: dict[str, threading.Event] = {}
        self.held = 0  # GET bodies waiting on a held path right now
        self.gets_in_flight = 0
        self.max_gets_in_flight = 0  # the most GET bodies being sent at once
        self.bytes_sent: dict[str, int] = {}  # path -> GET body bytes handed to the socket
        # path -> GET bodies the client closed before their end (the S3 server's
        # "connection reset by peer")
        self.bodies_cut: dict[str, int] = {}

    def __call__(self, environ, start_response):
        record = {
            "method": environ["REQUEST_METHOD"],
            "path": environ.get("PATH_INFO", ""),
            "query": environ.get("QUERY_STRING", ""),
            "if_none_match": environ.get("HTTP_IF_NONE_MATCH"),
            "status": None,
        }

        def recording_start_response(status, headers, *args):
            record["status"] = int(status.split()[0])
            return start_response(status, headers, *args)

        with self.lock:
            self.requests.append(record)
        body = self.app(environ, recording_start_response)
        if record["method"] != "GET":
            return body
        delay = self.slow_paths.get(record["path"])
        gate = self.held_paths.get(record["path"])
        if gate is not None:
            body = self._held(body, gate)
        return self._counted(_slow_body(body, delay) if delay else body, record["path"])

    def _held(self, body, gate: threading.Event):
        with self.lock:
            self.held += 1
        try:
            gate.wait(120)
        finally:
            with self.lock:
                self.held -= 1
        yield from body

    def _counted(self, body, path: str):
        with self.lock:
            self.gets_in_flight += 1
            self.max_gets_in_flight = max(self.max_gets_in_flight, self.gets_in_flight)
        ended = False
        try:
            for part in body:
                with self.lock:
                    self.bytes_sent[path] = self.bytes_sent.get(path, 0) + len(part)
                yield part
            ended = True
        finally:
            with self.lock:
                self.gets_in_flight -= 1
                if not ended:  # the server closed it: the client went away mid-body
                    self.bodies_cut[path] = self.bodies_cut.get(path, 0) + 1

    def count(self, method: str | None = None, path: str | None = None,
              status: int | None = None) -> int:
        with self.lock:
            return sum(
                1 for r in self.requests
                if (method is None or r["method"] == method)
                and (path is None or r["path"] == path)
                and (status is None or r["status"] == status)
            )

    def gets(self, bucket: str, key: str, status: int | None = None) -> int:
        return self.count("GET", f"/{bucket}/{key}", status)


def _slow_body(body, delay: float):
    for part in body:
        for start in range(0, len(part), 65536):
            time.sleep(delay)
            yield part[start:start + 65536]


class MotoServer:
    """moto's S3 in server mode on a loopback port, in a thread of the test process."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.app = CountingApp(DomainDispatcherApplication(create_backend_app))
        self.server = make_server("127.0.0.1", self.port, self.app, threaded=True,
                                  request_handler=MotoRequestHandler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="session")
def moto_server():
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def public_dir():
    """A directory every user can reach (pytest's tmp_path is root's only):
    for files and sockets of the tests whose clients run as nobody."""
    import tempfile

    path = tempfile.mkdtemp(prefix="s3pool-public-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def small_home(tmp_path):
    """A HOMEDIR on a 16 MiB tmpfs of its own. Ask for it before start_daemon:
    fixtures are torn down in reverse, so the daemon is gone before the umount."""
    assert os.geteuid() == 0, "mounting a tmpfs needs root"
    home = tmp_path / "small-home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(home)],
                   check=True)
    try:
        yield home
    finally:
        if subprocess.run(["umount", str(home)]).returncode != 0:
            subprocess.run(["umount", "-l", str(home)], check=False)


@pytest.fixture
def s3(moto_server):
    return moto_server.client()


@pytest.fixture
def bucket(s3):
    name = f"b-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def list_requests(app, bucket: str) -> list[dict[str, str]]:
    """The LIST requests of *bucket* a :class:`MotoServer`'s app received, as query dicts."""
    from urllib.parse import parse_qs

    with app.lock:
        found = [r for r in app.requests
                 if r["method"] == "GET" and r["path"].rstrip("/") == f"/{bucket}"
                 and "list-type=2" in r["query"]]
    return [{k: v[0] for k, v in parse_qs(r["query"], keep_blank_values=True).items()}
            for r in found]


def temp_leftovers(home) -> list[str]:
    """What is in a daemon's tmp/, less the record its checkpoint may be
    writing at that instant (``checkpoint.PID.*``, renamed into state/ at
    once): a partial download or a half-built listing left there is a leak."""
    return sorted(name for name in os.listdir(Path(home) / "tmp")
                  if not name.startswith("checkpoint."))


def put_many(bucket: str, objects) -> None:
    """Put many objects into moto's S3 straight through its backend: the server
    runs in this process and answers with them as if each had come by HTTP,
    without the seconds a few thousand PUTs take. *objects*: (key, body) pairs."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    for key, body in objects:
        backend.put_object(bucket, key, body)


def raw_request(port: int, data: bytes, timeout: float = 30.0) -> bytes:
    """Send bytes to the control socket (then EOF), read until the server closes."""
    return exchange("127.0.0.1", port, data, timeout, shut_write=True)


def request(port: int, *words: str, timeout: float = 60.0) -> tuple[str, list[str]]:
    """One protocol request; returns (status, payload lines)."""
    reply = raw_request(port, json.dumps(list(words)).encode() + b"\n", timeout=timeout)
    text = reply.decode()
    status, _, payload = text.partition("\n")
    if payload in ("", "\n"):  # nothing to return
        return status, []
    lines = payload.split("\n")
    if lines[-1] == "":
        lines = lines[:-1]
    return status, lines


def fuse_available() -> None:
    """FUSE tests fail (never skip) when the machine cannot mount."""
    if not os.path.exists("/dev/fuse"):
        pytest.fail("/dev/fuse is missing: FUSE tests need it (CI installs fuse3)")
    if shutil.which("fusermount3") is None:
        pytest.fail("fusermount3 is missing: apt-get install fuse3")


class Daemon:
    """The real s3pool command as a subprocess."""

    def __init__(self, home: Path, endpoint: str, mountpoint: Path | None = None,
                 extra_args: list[str] | None = None, port: int | None = None,
                 preexec_fn=None) -> None:
        self.home = home
        self.preexec_fn = preexec_fn  # runs in the child before exec (e.g. setrlimit)
        self.endpoint = endpoint
        self.mountpoint = mountpoint
        self.extra_args = extra_args or []
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def data(self) -> Path:
        return self.home / "data"

    def start(self, wait: bool = True) -> Daemon:
        env = dict(os.environ, **CREDENTIALS, AWS_ENDPOINT_URL=self.endpoint)
        env.pop("AWS_PROFILE", None)
        args = [sys.executable, "-m", "s3pool.cli.main", "-p", str(self.port), "-D", str(self.home),
                "--embedded-s3", "no", "-v", "2", *self.extra_args]
        if self.mountpoint is not None:
            args += ["-m", str(self.mountpoint)]
        self.stderr_path = self.home.parent / f"daemon-{self.port}.stderr"
        self.stderr = open(self.stderr_path, "ab")
        self.process = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL,
                                        stdout=self.stderr, stderr=self.stderr, cwd=str(ROOT),
                                        preexec_fn=self.preexec_fn)
        if wait:
            self.wait_ready()
        return self

    def log_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.process is not None, "wait_ready before start"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"s3pool exited with {self.process.returncode}:\n{self.log_text()}"
                )
            try:
                status, _ = request(self.port, "STATUS", timeout=2)
                if status == "OK" and (self.mountpoint is None
                                       or os.path.ismount(self.mountpoint)):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"s3pool did not become ready:\n{self.log_text()}")

    def request(self, *words: str, timeout: float = 60.0) -> tuple[str, list[str]]:
        return request(self.port, *words, timeout=timeout)

    def ok(self, *words: str) -> list[str]:
        status, lines = self.request(*words)
        assert status == "OK", f"{words} -> {status} {lines}"
        return lines

    def status(self) -> dict[str, str]:
        return dict(line.split(" ", 1) for line in self.ok("STATUS"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            self.stderr.close()

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self.mountpoint is not None and (os.path.ismount(self.mountpoint)
                                            or _stale_mount(self.mountpoint)):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False)


def _stale_mount(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == 107  # ENOTCONN
    return False


@pytest.fixture
def start_daemon(tmp_path, moto_server):
    """Factory: start_daemon(mount=False, args=[...], home=None, endpoint=None,
    preexec_fn=None)."""
    started: list[Daemon] = []

    def start(mount: bool = False, args: list[str] | None = None, home: Path | None = None,
              endpoint: str | None = None, port: int | None = None,
              preexec_fn=None) -> Daemon:
        if mount:
            fuse_available()
        mountpoint = tmp_path / f"mnt{len(started)}" if mount else None
        daemon = Daemon(home or tmp_path / "home", endpoint or moto_server.endpoint,
                        mountpoint, args, port, preexec_fn)
        started.append(daemon)
        return daemon.start()

    yield start
    for daemon in started:
        daemon.kill()


@pytest.fixture
def daemon(start_daemon):
    d = start_daemon()
    yield d
    assert d.stop() == 0, d.log_text()
