"""Writes through the mount (--mount-writes, issue 21) against boto3, same server, same run.

    python bench/bench_writes.py [--s3 weed|moto] [--size-mib 256] [--small 2000]
                                 [--rounds 3]

(a) `cp` of a SIZE MiB local file into the mount (close returns once S3 has
    it) against boto3's `upload_file` of the same file (its defaults: 8 MiB
    parts, 10 threads), alternating, ROUNDS times each; the median counts.
(b) SMALL files of 16 KiB written one after another through the mount
    (open, write, close: each close waits for its PUT) against a loop of
    boto3 `put_object` of the same bytes.

Each figure stands beside its baseline in a table with the ratio
(mount time / boto3 time: below 1 is faster than boto3). The bytes on S3
are checked (sha256) after each cp.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import Daemon, print_table  # noqa: E402

MIB = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def s3_sha256(s3, bucket: str, key: str) -> str:
    digest = hashlib.sha256()
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    while chunk := body.read(MIB):
        digest.update(chunk)
    return digest.hexdigest()


def main() -> None:
    parser = common.bench_parser(size_mib=256, small=2000, rounds=3)
    args = parser.parse_args()
    work, server = common.bench_server(args.s3, "s3pool-bench-writes-")
    daemon = None
    out = []
    try:
        s3 = common.bench_bucket(server)
        blob = work / "blob"
        with open(blob, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MIB))
        want = sha256_file(blob)
        mnt = work / "mnt"
        daemon = Daemon(server.endpoint, work / "home", mnt,
                        ["--bucket", "bench", "--mount-writes"])
        root = mnt / "bench"

        # (a) one large file
        cp_times, boto_times = [], []
        for i in range(args.rounds):
            started = time.perf_counter()
            s3.upload_file(str(blob), "bench", f"boto-{i}.bin")
            boto_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            subprocess.run(["cp", str(blob), str(root / f"cp-{i}.bin")], check=True)
            cp_times.append(time.perf_counter() - started)
            assert s3_sha256(s3, "bench", f"cp-{i}.bin") == want, "cp uploaded other bytes"
        cp_s, boto_s = statistics.median(cp_times), statistics.median(boto_times)
        mib = args.size_mib
        out.append(print_table(
            f"(a) {mib} MiB file, median of {args.rounds} ({args.s3})",
            ["what", "seconds", "MiB/s", "vs boto3 upload_file"],
            [["boto3 upload_file", f"{boto_s:.2f}", f"{mib / boto_s:.0f}", "1.00"],
             ["cp into the mount", f"{cp_s:.2f}", f"{mib / cp_s:.0f}",
              f"{cp_s / boto_s:.2f}"]]))
        print(f"rounds: cp {[round(t, 2) for t in cp_times]}, "
              f"boto3 {[round(t, 2) for t in boto_times]}", flush=True)

        # (b) many small files
        body = os.urandom(16 << 10)
        (root / "small").mkdir()
        started = time.perf_counter()
        for i in range(args.small):
            s3.put_object(Bucket="bench", Key=f"boto-small/f{i:05d}", Body=body)
        boto_small = time.perf_counter() - started
        started = time.perf_counter()
        for i in range(args.small):
            with open(root / "small" / f"f{i:05d}", "wb") as f:
                f.write(body)
        mount_small = time.perf_counter() - started
        n = args.small
        out.append(print_table(
            f"(b) {n} x 16 KiB written one after another ({args.s3})",
            ["what", "seconds", "files/s", "vs boto3 put_object loop"],
            [["boto3 put_object loop", f"{boto_small:.2f}", f"{n / boto_small:.0f}", "1.00"],
             ["open/write/close in the mount", f"{mount_small:.2f}",
              f"{n / mount_small:.0f}", f"{mount_small / boto_small:.2f}"]]))
        status = dict(line.split(" ", 1) for line in daemon.request("STATUS")[1])
        print(f"daemon: mount_uploads {status.get('mount_uploads')}, "
              f"mount_upload_failures {status.get('mount_upload_failures')}, "
              f"peak RSS {daemon.peak_rss() / MIB:.0f} MiB", flush=True)
    finally:
        if daemon is not None:
            daemon.stop()
        server.stop()


if __name__ == "__main__":
    main()
