"""Idle cost of the embedded demo S3: RSS and CPU over a quiet window.

    python bench/bench_embedded.py [--idle 30] [--settle 10]

Starts the real daemon with no AWS configuration (so on its embedded S3,
SeaweedFS `weed server` in HOMEDIR/s3/), PULLs the demo keys, lets it
settle, then samples the whole process tree with psutil: CPU seconds over
the idle window and RSS at its end (also split into anonymous and
file-backed pages: most of weed's RSS is its 150 MB binary mapped from the
page cache, which the kernel can drop and share). Then the same daemon is
restarted on the same HOMEDIR and measured again. For comparison: moto's
server (the previous demo engine, which kept nothing) and `weed mini` with
its defaults, each seeded with the demo objects and measured the same way.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from s3pool.client import Client  # noqa: E402
from s3pool.embedded import DEMO_OBJECTS, free_port, port_is_free  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def port_block() -> int:
    while True:
        port = free_port()
        if port + 8 < 65536 and all(port_is_free(port + i) for i in range(1, 8)):
            return port


def tree(pid: int) -> list[psutil.Process]:
    top = psutil.Process(pid)
    return [top, *top.children(recursive=True)]


def anon_file(proc: psutil.Process) -> tuple[int, int]:
    fields = {}
    with open(f"/proc/{proc.pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("RssAnon", "RssFile", "RssShmem"):
                fields[name] = int(value.split()[0]) * 1024
    return fields.get("RssAnon", 0), fields.get("RssFile", 0) + fields.get("RssShmem", 0)


def measure(pid: int, idle: float, rows: dict[str, str | None]) -> None:
    """One idle window over the tree of *pid*; a table row per {label: exe or None (all)}."""
    procs = tree(pid)
    before = {p.pid: sum(p.cpu_times()[:4]) for p in procs}
    time.sleep(idle)
    for label, only in rows.items():
        chosen = [p for p in procs if only is None or os.path.basename(p.exe()) == only]
        cpu = sum(sum(p.cpu_times()[:4]) - before[p.pid] for p in chosen)
        rss = sum(p.memory_info().rss for p in chosen)
        anon = sum(anon_file(p)[0] for p in chosen)
        print(f"| {label} | {len(chosen)} | {100 * cpu / idle:.2f} | {rss / 2**20:.0f} | "
              f"{anon / 2**20:.0f} | {(rss - anon) / 2**20:.0f} |", flush=True)


def run_daemon(home: Path, s3_port: int, log) -> tuple[subprocess.Popen, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = str(ROOT)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "s3pool.cli.main", "-p", str(port), "-D",
                             str(home / ".s3pool"), "--embedded-s3-port", str(s3_port)],
                            env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    client = Client(port=port, timeout=5)
    deadline = time.monotonic() + 120
    while True:
        try:
            client.status()
            break
        except OSError as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("daemon did not start") from exc
            time.sleep(0.2)
    client.pull("s3pool-demo", *DEMO_OBJECTS)
    return proc, port


def seed(endpoint: str) -> None:
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="bench", aws_secret_access_key="bench")
    deadline = time.monotonic() + 60
    while True:
        try:
            s3.create_bucket(Bucket="s3pool-demo")
            for key, body in DEMO_OBJECTS.items():
                s3.put_object(Bucket="s3pool-demo", Key=key, Body=body)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def seeded_and_measured(proc: subprocess.Popen, port: int, args, label: str) -> None:
    """An S3 server on *port*: given the demo objects, left to settle, measured
    over the idle window, then stopped."""
    try:
        seed(f"http://127.0.0.1:{port}")
        time.sleep(args.settle)
        measure(proc.pid, args.idle, {label: None})
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=10.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="s3pool-bench-embedded-"))
    log = open(work / "log", "ab")
    print(f"idle window {args.idle:.0f} s after {args.settle:.0f} s of settling\n")
    print("| what | processes | CPU % of one core | RSS MiB | anon MiB | file-backed MiB |")
    print("|---|---|---|---|---|---|")
    try:
        s3_port = port_block()
        for start in ("first start", "restart, same HOMEDIR"):
            proc, _ = run_daemon(work, s3_port, log)
            time.sleep(args.settle)
            measure(proc.pid, args.idle, {f"embedded S3 (weed server), {start}": "weed",
                                          f"daemon + embedded S3, {start}": None})
            stop(proc)

        port = free_port()
        moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                 str(port)], stdout=log, stderr=log)
        seeded_and_measured(moto, port, args, "moto.server (previous demo engine)")

        weed = shutil.which("weed", path=os.path.dirname(sys.executable)) or "weed"
        port = port_block()
        (work / "mini").mkdir()
        mini = subprocess.Popen(
            [weed, "-logtostderr=true", "mini", f"-dir={work / 'mini'}", "-ip=127.0.0.1",
             "-ip.bind=127.0.0.1",
             f"-s3.port={port}", f"-master.port={port + 1}", f"-volume.port={port + 2}",
             f"-filer.port={port + 3}", f"-admin.port={port + 4}", f"-webdav.port={port + 5}",
             f"-s3.port.iceberg={port + 6}", f"-s3.port.lance={port + 7}",
             "-master.telemetry=false"],
            stdout=log, stderr=log, cwd=work / "mini")
        seeded_and_measured(mini, port, args, "weed mini, defaults")
    finally:
        log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
