"""A small Python client for the control socket.

    from s3pool.client import Client
    c = Client()                                # $S3POOL_HOST:$S3POOL_PORT, else 127.0.0.1:9000
    path = c.pull("bucket", "key")              # one path
    paths = c.pull("bucket", "k1", "k2")        # several: a list, in order
    c.push("bucket", "key", "/abs/file")
    keys = c.glob("bucket", "logs/**/*.gz")
    c = Client(socket_path="/run/s3pool/s3pool.sock")   # the Unix socket (--socket)

Every call opens a connection, sends one JSON line, reads the reply until
the server closes. An ERROR reply raises :class:`S3PoolClientError`; a
port where something else than s3pool answers raises :class:`NotS3Pool`
(an ``OSError``, like a refused connection).
"""

from __future__ import annotations

import json
import os
import socket
from typing import NamedTuple


class S3PoolClientError(Exception):
    """The daemon answered ERROR (the message is its one-line reason)."""


class NotS3Pool(ConnectionError):
    """Something answered on the port, but not the s3pool protocol."""


class Download(NamedTuple):
    """One ``download s3://BUCKET/KEY DONE TOTAL ELAPSED`` line of STATUS.

    This module owns the line's format: the daemon writes it with
    :func:`format_download` (s3pool/s3/progress.py), every reader parses it
    with :func:`parse_download` (s3poolctl, its progress bar, the
    Prometheus exporter)."""

    bucket: str
    key: str
    done: int
    total: int
    elapsed: float


def format_download(bucket: str, key: str, done: int, total: int, elapsed: float) -> str:
    """The value of a ``download`` STATUS line (a key may hold spaces: the
    three numbers are the last three words)."""
    return f"s3://{bucket}/{key} {done} {total} {elapsed:.1f}"


def parse_download(value: str) -> Download | None:
    """The value of a ``download`` STATUS line, or None if it is not one (keys may hold spaces)."""
    parts = value.rsplit(" ", 3)
    if len(parts) != 4 or not parts[0].startswith("s3://"):
        return None
    bucket, slash, key = parts[0][5:].partition("/")
    try:
        return Download(bucket, key, int(parts[1]), int(parts[2]), float(parts[3]))
    except ValueError:
        return None


def _not_s3pool(reply: str, host: str, port: int) -> NotS3Pool:
    if not reply:
        return NotS3Pool(f"{host}:{port} closed the connection without answering "
                         "(not s3pool, or s3pool is stopping)")
    first = reply.split("\n", 1)[0].strip()
    if first.startswith("HTTP/"):
        what = f"an HTTP server answered {first[:60]!r}"
    elif "<html" in reply[:2000].lower() or "<!doctype" in reply[:2000].lower():
        what = "an HTTP server answered with a web page"
    else:
        shown = "".join(c if c.isprintable() else "?" for c in first)[:60]
        what = f"something else answered {shown!r}"
    return NotS3Pool(f"{host}:{port} is not s3pool: {what}")


def _connect(host: str, port: int, timeout: float | None,
             socket_path: str | None) -> socket.socket:
    if socket_path is None:
        return socket.create_connection((host, port), timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(socket_path)
    except BaseException:
        sock.close()
        raise
    return sock


def exchange(host: str, port: int, data: bytes, timeout: float | None = 600.0,
             shut_write: bool = False, socket_path: str | None = None) -> bytes:
    """Send *data* on a new connection (TCP, or the Unix socket at
    *socket_path*) and read the reply until the server closes."""
    with _connect(host, port, timeout, socket_path) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


class Client:
    """A client of one daemon: TCP to *host*:*port* (by default $S3POOL_HOST and
    $S3POOL_PORT, as s3poolctl reads them, else 127.0.0.1:9000), or the Unix
    socket at *socket_path* (``s3pool --socket``), where PUSH and SET are
    judged by the kernel's word on who you are."""

    def __init__(self, host: str | None = None, port: int | None = None,
                 timeout: float | None = 600.0, socket_path: str | None = None):
        self.host = host or os.environ.get("S3POOL_HOST", "127.0.0.1")
        self.port = port or int(os.environ.get("S3POOL_PORT", "9000"))
        self.timeout = timeout
        self.socket_path = socket_path

    def request(self, *words: str) -> list[str]:
        """Send one request; return the OK payload's lines."""
        line = json.dumps(list(words)).encode() + b"\n"
        reply = exchange(self.host, self.port, line, self.timeout,
                         socket_path=self.socket_path).decode(
            "utf-8", "surrogateescape")
        status, newline, payload = reply.partition("\n")
        if status == "ERROR" and newline:
            raise S3PoolClientError(payload.strip())
        if status != "OK" or not newline:
            raise _not_s3pool(reply, self.host, self.port)
        if payload in ("", "\n"):
            return []
        return payload.split("\n")[:-1] if payload.endswith("\n") else payload.split("\n")

    def pull(self, bucket: str, *keys: str) -> str | list[str]:
        paths = self.request("PULL", bucket, *keys)
        return paths[0] if len(keys) == 1 else paths

    def push(self, bucket: str, key: str, path: str) -> None:
        self.request("PUSH", bucket, key, path)

    def glob(self, bucket: str, pattern: str) -> list[str]:
        return self.request("GLOB", bucket, pattern)

    def refresh(self, bucket: str) -> None:
        self.request("REFRESH", bucket)

    def status_lines(self) -> list[tuple[str, str]]:
        """STATUS as (name, value) pairs, in order; ``download`` may come many times."""
        pairs = []
        for line in self.request("STATUS"):
            name, _, value = line.partition(" ")
            pairs.append((name, value))
        return pairs

    def status(self) -> dict[str, str]:
        return {name: value for name, value in self.status_lines() if name != "download"}

    def downloads(self) -> list[Download]:
        """The downloads in flight, from STATUS (empty if the daemon does not list them)."""
        found = (parse_download(value) for name, value in self.status_lines()
                 if name == "download")
        return [d for d in found if d is not None]

    def set(self, name: str, value: str) -> None:
        self.request("SET", name, str(value))
