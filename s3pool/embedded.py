"""The embedded demo S3: moto's server on loopback, for a first run with no AWS.

When no S3 endpoint and no AWS credentials are configured, the daemon
starts ``moto.server`` as a child process on a free loopback port, points
its own boto3 client at it (never the environment of anything else) and
fills a small demo bucket, so that PULL works on the first try.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request

import boto3
import botocore.session

from .logs import private_opener

log = logging.getLogger(__name__)

DEMO_BUCKET = "s3pool-demo"
DEMO_OBJECTS = {
    "hello.txt": b"Hello from s3pool's embedded S3.\n",
    "data/numbers.csv": b"n,square\n" + b"".join(f"{i},{i * i}\n".encode() for i in range(1, 11)),
    "data/2026/11/events.jsonl": b'{"event": "start"}\n{"event": "stop"}\n',
    "docs/README.md": b"# demo\nThis bucket lives in moto's server, started by s3pool.\n",
}


def endpoint_configured() -> bool:
    """True if the standard AWS chain names an S3 endpoint or has credentials."""
    if os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3"):
        return True
    session = botocore.session.get_session()
    try:
        if session.get_scoped_config().get("endpoint_url"):
            return True
    except Exception:  # a broken profile: let boto3 report it later
        return True
    return session.get_credentials() is not None


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedS3:
    """A moto server child process, stopped by :meth:`stop`."""

    def __init__(self, log_path: str) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "ab", opener=private_opener)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        except Exception:
            self._log.close()
            raise
        try:
            self._wait_ready()
            self._seed()
        except Exception:
            self.stop()
            raise

    def credentials(self) -> dict[str, str]:
        return {"aws_access_key_id": "s3pool-demo", "aws_secret_access_key": "s3pool-demo"}

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    "the embedded S3 (moto.server) exited at start; is moto[server] installed? "
                    "(pip install 's3pool[demo]')"
                )
            try:
                urllib.request.urlopen(self.endpoint_url + "/moto-api/", timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the embedded S3 did not answer on {self.endpoint_url}")

    def _seed(self) -> None:
        client = boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name="us-east-1", **self.credentials()
        )
        client.create_bucket(Bucket=DEMO_BUCKET)
        for key, body in DEMO_OBJECTS.items():
            client.put_object(Bucket=DEMO_BUCKET, Key=key, Body=body, ContentType="text/plain")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
