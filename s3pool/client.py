"""A small Python client for the control socket.

    from s3pool.client import Client
    c = Client()                                # $S3POOL_HOST:$S3POOL_PORT, else 127.0.0.1:9000
    path = c.pull("bucket", "key")              # one path
    paths = c.pull("bucket", "k1", "k2")        # several: a list, in order
    c.push("bucket", "key", "/abs/file")
    keys = c.glob("bucket", "logs/**/*.gz")

Every call opens a connection, sends one JSON line, reads the reply until
the server closes. An ERROR reply raises :class:`S3PoolClientError`.
"""

from __future__ import annotations

import json
import os
import socket


class S3PoolClientError(Exception):
    """The daemon answered ERROR (the message is its one-line reason)."""


def exchange(host: str, port: int, data: bytes, timeout: float | None = 600.0,
             shut_write: bool = False) -> bytes:
    """Send *data* on a new connection and read the reply until the server closes."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


class Client:
    """The daemon at *host*:*port*; by default $S3POOL_HOST and $S3POOL_PORT (as
    s3poolctl reads them), else 127.0.0.1:9000."""

    def __init__(self, host: str | None = None, port: int | None = None,
                 timeout: float | None = 600.0):
        self.host = host or os.environ.get("S3POOL_HOST", "127.0.0.1")
        self.port = port or int(os.environ.get("S3POOL_PORT", "9000"))
        self.timeout = timeout

    def request(self, *words: str) -> list[str]:
        """Send one request; return the OK payload's lines."""
        line = json.dumps(list(words)).encode() + b"\n"
        reply = exchange(self.host, self.port, line, self.timeout).decode(
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
