"""A small Python client for the control socket.

    from s3pool.client import Client
    c = Client(port=9000)
    path = c.pull("bucket", "key")              # one path
    paths = c.pull("bucket", "k1", "k2")        # several: a list, in order
    c.push("bucket", "key", "/abs/file")
    keys = c.glob("bucket", "logs/**/*.gz")
    c = Client(socket_path="/run/s3pool/s3pool.sock")   # the Unix socket (--socket)

Every call opens a connection, sends one JSON line, reads the reply until
the server closes. An ERROR reply raises :class:`S3PoolClientError`.
"""

from __future__ import annotations

import json
import socket


class S3PoolClientError(Exception):
    """The daemon answered ERROR (the message is its one-line reason)."""


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
    """A client of one daemon: TCP to host:port, or the Unix socket at
    *socket_path* (``s3pool --socket``), where PUSH and SET are judged by
    the kernel's word on who you are."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9000, timeout: float | None = 600.0,
                 socket_path: str | None = None):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.socket_path = socket_path

    def request(self, *words: str) -> list[str]:
        """Send one request; return the OK payload's lines."""
        line = json.dumps(list(words)).encode() + b"\n"
        reply = exchange(self.host, self.port, line, self.timeout,
                         socket_path=self.socket_path).decode(
            "utf-8", "surrogateescape")
        status, _, payload = reply.partition("\n")
        if status == "ERROR":
            raise S3PoolClientError(payload.strip())
        if status != "OK":
            raise S3PoolClientError(f"unexpected reply from s3pool: {reply[:200]!r}")
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

    def status(self) -> dict[str, str]:
        return dict(line.split(" ", 1) for line in self.request("STATUS") if " " in line)

    def set(self, name: str, value: str) -> None:
        self.request("SET", name, str(value))
