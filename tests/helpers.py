"""What several end-to-end test files share: a client of the control socket
that runs as nobody (the standard library of the system python only), idle
connections held open against a port, and the PULL and mount-read loops that
show a daemon under such an attack still serving."""

from __future__ import annotations

import os
import resource
import selectors
import socket
import subprocess
import threading
import time
from pathlib import Path

NOBODY = 65534
NOGROUP = 65534
# nobody cannot run the venv's python (it lives under /root): the clients
# that run as nobody use the system python and only its standard library
SYSTEM_PYTHON = "/usr/bin/python3"

# one request to ADDRESS (a port, or a unix socket's path), the reply on stdout
CLIENT = r"""
import json, socket, sys
address, words = sys.argv[1], sys.argv[2:]
if address.startswith("/"):
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(address)
else:
    sock = socket.create_connection(("127.0.0.1", int(address)))
sock.sendall(json.dumps(words).encode() + b"\n")
sock.shutdown(socket.SHUT_WR)
reply = b""
while chunk := sock.recv(65536):
    reply += chunk
sys.stdout.write(reply.decode())
"""


def as_nobody(code: str, *args: str, groups: tuple[int, ...] = (), timeout: float = 60) -> str:
    """Run *code* with the system python as nobody; its stdout (it must exit 0)."""
    assert os.geteuid() == 0, "these tests run the daemon as root and clients as nobody"
    result = subprocess.run([SYSTEM_PYTHON, "-c", code, *args], user=NOBODY, group=NOGROUP,
                            extra_groups=list(groups), capture_output=True, text=True,
                            timeout=timeout, cwd="/")
    assert result.returncode == 0, result.stderr
    return result.stdout


def request_as_nobody(address: str | int, *words: str, groups: tuple[int, ...] = ()) -> str:
    """One request as nobody: the reply's text."""
    return as_nobody(CLIENT, str(address), *words, groups=groups)


def reply_as_nobody(address: str | int, *words: str) -> tuple[str, list[str]]:
    """One request as nobody: (status, payload lines)."""
    status, _, payload = request_as_nobody(address, *words).partition("\n")
    return status, [line for line in payload.split("\n") if line]


def user_version(path: str) -> int:
    """PRAGMA user_version of the SQLite file at *path*, opened read-only."""
    import sqlite3

    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def low_fd_limit() -> None:
    """preexec_fn of a daemon: 256 descriptors at most."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


class IdleConnections:
    """Keeps *count* connections open to a port, sending nothing, re-opening
    each one the server closes (the attack of issue 7, point 4)."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.stopping = threading.Event()
        self.opened = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, selector: selectors.DefaultSelector) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", self.port))
        selector.register(sock, selectors.EVENT_READ)
        self.opened += 1

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            for _ in range(self.count):
                self._open(selector)
            while not self.stopping.is_set():
                for key, _ in selector.select(0.1):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)  # only sockets are registered
                    try:
                        data = sock.recv(4096)
                    except OSError:
                        data = b""
                    if not data:  # the server closed it (or refused): open another
                        selector.unregister(sock)
                        sock.close()
                        self._open(selector)
            for key in list(selector.get_map().values()):
                assert isinstance(key.fileobj, socket.socket)
                key.fileobj.close()

    def __enter__(self) -> IdleConnections:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(10)


class Traffic:
    """Two threads that keep a daemon busy until stopped: cached PULLs of
    *keys* (each must answer its data/ path) and whole reads of them through
    the mount at *mounted* (each must give ``key * 100``). Counts what was
    done, the slowest PULL, and every failure."""

    def __init__(self, daemon, bucket: str, keys: list[str], mounted: Path,
                 pull_timeout: float = 10, pull_pause: float = 0.0) -> None:
        self.daemon, self.bucket, self.keys, self.mounted = daemon, bucket, keys, mounted
        self.pull_timeout = pull_timeout
        self.pull_pause = pull_pause
        self.failures: list[str] = []
        self.done = {"pulls": 0, "reads": 0}
        self.pull_seconds: list[float] = []
        self.stopping = threading.Event()
        self.workers = [threading.Thread(target=self._pull_loop),
                        threading.Thread(target=self._read_loop)]

    def _keys(self):
        i = 0
        while not self.stopping.is_set():
            yield self.keys[i % len(self.keys)]
            i += 1

    def _pull_loop(self) -> None:
        for key in self._keys():
            started = time.monotonic()
            try:
                status, lines = self.daemon.request("PULL", self.bucket, key,
                                                    timeout=self.pull_timeout)
            except OSError as exc:
                self.failures.append(f"PULL {key}: {exc!r}")
                continue
            self.pull_seconds.append(time.monotonic() - started)
            if status == "OK" and lines == [str(self.daemon.data / self.bucket / key)]:
                self.done["pulls"] += 1
            else:
                self.failures.append(f"PULL {key}: {status} {lines}")
            time.sleep(self.pull_pause)

    def _read_loop(self) -> None:
        for key in self._keys():
            try:
                with open(self.mounted / key, "rb") as f:
                    if f.read() == key.encode() * 100:
                        self.done["reads"] += 1
                    else:
                        self.failures.append(f"read {key}: wrong bytes")
            except OSError as exc:
                self.failures.append(f"read {key}: {exc!r}")
            time.sleep(0.02)

    def __enter__(self) -> Traffic:
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for worker in self.workers:
            worker.join(30)
