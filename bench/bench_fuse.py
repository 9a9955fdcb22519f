"""FUSE benchmark: sequential reads through the mount, and walking a big tree.

    python bench/bench_fuse.py [--s3 weed|moto] [--size-mib 256] [--keys 10000]

Needs root (to drop the page cache) and /dev/fuse. Every figure stands
beside baselines measured in the same run: `cat` of the same file straight
from data/ (page cache dropped, and warm), and a boto3 download_file of the
object; for the tree, `find`/`ls -lR` of a local tree of the same shape.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Daemon, S3Server, drop_caches, print_table, workdir  # noqa: E402

MIB = 1 << 20


def cat_seconds(path: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def command_seconds(*cmd: str) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--s3", choices=("weed", "moto"), default="weed")
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--keys", type=int, default=10_000)
    args = parser.parse_args()
    size = args.size_mib * MIB
    work = workdir("s3pool-bench-fuse-")
    server = S3Server(args.s3, work)
    daemon = None
    out = []
    try:
        s3 = server.client()
        s3.create_bucket(Bucket="bench")
        blob = work / "blob"
        with open(blob, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MIB))
        s3.upload_file(str(blob), "bench", "big.bin")
        names = [f"tree/d{i % 100:02d}/s{(i // 100) % 10}/f{i:05d}" for i in range(args.keys)]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: s3.put_object(Bucket="bench", Key=k, Body=b"x"), names))
        mnt = work / "mnt"
        daemon = Daemon(server.endpoint, work / "home", mnt, ["--bucket", "bench"])
        via_mount = mnt / "bench" / "big.bin"
        in_data = work / "home" / "data" / "bench" / "big.bin"

        # (e) first, then its file deleted: both downloads write to memory the
        # VM has already handed out (a first touch of guest memory is slow here)
        target = work / "downloaded"
        started = time.perf_counter()
        s3.download_file("bench", "big.bin", str(target))  # (e)
        boto = time.perf_counter() - started
        target.unlink()
        first = cat_seconds(via_mount)  # (a) downloads
        # alternate the mount and the baseline so both see the same machine
        # state (this VM reclaims page cache on its own); medians of the trials
        colds, data_colds, warms, data_warms = [], [], [], []
        for _ in range(3):
            drop_caches()
            colds.append(cat_seconds(via_mount))  # (b)
            drop_caches()
            data_colds.append(cat_seconds(in_data))  # (d) cold
        cat_seconds(via_mount)
        for _ in range(5):
            warms.append(cat_seconds(via_mount))  # (c)
            data_warms.append(cat_seconds(in_data))  # (d) warm
        cold, data_cold = statistics.median(colds), statistics.median(data_colds)
        warm, data_warm = statistics.median(warms), statistics.median(data_warms)

        def rate(seconds: float) -> str:
            return f"{size / MIB / seconds:.0f}"

        rows = [
            ["(a) mount, first open (downloads)", rate(first), f"{boto / first:.2f} of (e)"],
            ["(b) mount, on disk, page cache dropped", rate(cold),
             f"{data_cold / cold:.2f} of (d cold)"],
            ["(c) mount, page cache warm", rate(warm), f"{data_warm / warm:.2f} of (d warm)"],
            ["(d cold) cat from data/, page cache dropped", rate(data_cold), "baseline"],
            ["(d warm) cat from data/, page cache warm", rate(data_warm), "baseline"],
            ["(e) boto3 download_file", rate(boto), "baseline"],
        ]
        out.append(print_table(f"Sequential read of a {args.size_mib} MiB object ({args.s3} S3; "
                               "medians of 3 cold and 5 warm trials)",
                               ["what", "MiB/s", "ratio"], rows))

        # --- walking a tree of many keys ---------------------------------
        local = work / "localtree"
        for name in names:
            path = local / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
        tree = mnt / "bench" / "tree"
        daemon.request("REFRESH", "bench")
        time.sleep(11)  # let the kernel's entry cache (10 s) expire: a cold walk
        find_cold = command_seconds("find", str(tree))
        find_warm = command_seconds("find", str(tree))
        time.sleep(11)
        ls_cold = command_seconds("ls", "-lR", str(tree))
        drop_caches()
        find_local = command_seconds("find", str(local))
        drop_caches()
        ls_local = command_seconds("ls", "-lR", str(local))
        count = len(subprocess.run(["find", str(tree), "-type", "f"], capture_output=True,
                                   text=True).stdout.split())
        assert count == len(names), count
        out.append(print_table(
            f"Walking {len(names):,} keys in 1,100 directories through the mount",
            ["what", "seconds", "baseline (local tree, page cache dropped)"],
            [["find, cold kernel caches", f"{find_cold:.2f}", f"{find_local:.2f}"],
             ["find, again (kernel entry cache warm)", f"{find_warm:.2f}", "-"],
             ["ls -lR, cold kernel caches", f"{ls_cold:.2f}", f"{ls_local:.2f}"]]))
    finally:
        if daemon:
            daemon.stop()
        server.stop()
    (work / "tables.md").write_text("\n".join(out))
    print(f"(work dir {work})")


if __name__ == "__main__":
    main()
