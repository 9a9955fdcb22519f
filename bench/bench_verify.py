"""What checking downloads costs: cold PULLs with verification on and off.

    python bench/bench_verify.py [--s3 weed|moto] [--rounds 2] [--baseline-tree DIR]

Every PULL is a miss (each round starts a daemon on an empty HOMEDIR), of
64 MiB objects (ranged download: parallel parts, then one hashing pass over
the assembled file), 8 MiB objects (one GET, hashed as the bytes arrive)
and 16 KiB objects. "off" is the same code with S3POOL_BENCH_NO_VERIFY=1
(length still checked, no hash). Wall time per PULL and the daemon's CPU
time (user + system, from psutil) per PULL are both shown: on a shared
machine the CPU time is the steadier measure of the hashing cost. Modes
alternate (off, on, off, on, ...) so drifts of the machine hit both. With
--baseline-tree pointing at a checkout of the code before verification (e.g. `git worktree add` or
`git archive` of the parent commit), that code is timed too, to show the
whole change (read1 reads, checked writes, progress counting, hashing).
The objects are uploaded twice: with boto3's default CRC32 checksum, and
without (so only the ETag MD5 can check them), when the S3 keeps checksums.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import boto3  # noqa: E402
import psutil  # noqa: E402
from botocore.config import Config  # noqa: E402

from common import CREDS, Daemon, S3Server, print_table, workdir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
SIZES = ((64 * MIB, 4), (8 * MIB, 8), (16 << 10, 100))  # (object size, objects per round)


def label(size: int) -> str:
    return f"{size // MIB} MiB" if size >= MIB else f"{size >> 10} KiB"


def hash_speed(fn, data: bytes) -> float:
    started = time.perf_counter()
    fn(data)
    return len(data) / MIB / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--s3", choices=("weed", "moto"), default="weed")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per mode")
    parser.add_argument("--baseline-tree", help="a checkout of the code before verification")
    args = parser.parse_args()
    work = workdir("s3pool-bench-verify-")
    os.chdir(work)  # the daemon imports s3pool from PYTHONPATH, not from the cwd
    server = S3Server(args.s3, work)
    out = []
    try:
        s3 = server.client()
        plain = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                             aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                             aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"],
                             config=Config(request_checksum_calculation="when_required",
                                           s3={"addressing_style": "path"}))
        s3.create_bucket(Bucket="bench")
        keys: dict[tuple[str, int], list[str]] = {}
        for flavour, client in (("crc", s3), ("md5", plain)):
            for size, count in SIZES:
                body = os.urandom(size)
                names = keys[(flavour, size)] = []
                for i in range(count):
                    name = f"{flavour}/{label(size).replace(' ', '')}/{i:03d}"
                    client.put_object(Bucket="bench", Key=name,
                                      Body=body[:-8] + i.to_bytes(8, "big"))
                    names.append(name)
        has_crc = "ChecksumCRC32" in s3.get_object(
            Bucket="bench", Key=keys[("crc", 16 << 10)][0], ChecksumMode="ENABLED")
        flavours = ("crc", "md5") if has_crc else ("md5",)

        modes = ["off", "on"] + (["before"] if args.baseline_tree else [])
        # (mode, flavour, size) -> seconds of each PULL
        times: dict[tuple[str, str, int], list[float]] = {}
        cpu: dict[tuple[str, str, int], list[float]] = {}  # daemon CPU seconds per group
        verified: dict[str, set[str]] = {}
        for round_no in range(args.rounds):
            for mode in modes:
                tree = args.baseline_tree if mode == "before" else str(ROOT)
                os.environ["PYTHONPATH"] = tree
                if mode == "off":
                    os.environ["S3POOL_BENCH_NO_VERIFY"] = "1"
                else:
                    os.environ.pop("S3POOL_BENCH_NO_VERIFY", None)
                home = work / f"home-{mode}-{round_no}"
                daemon = Daemon(server.endpoint, home)
                process = psutil.Process(daemon.process.pid)
                try:
                    for flavour in flavours:
                        for size, _ in SIZES:
                            cpu_before = sum(process.cpu_times()[:2])
                            for name in keys[(flavour, size)]:
                                started = time.perf_counter()
                                status, lines = daemon.request("PULL", "bench", name)
                                elapsed = time.perf_counter() - started
                                assert status == "OK", lines
                                times.setdefault((mode, flavour, size), []).append(elapsed)
                            cpu.setdefault((mode, flavour, size), []).append(
                                sum(process.cpu_times()[:2]) - cpu_before)
                finally:
                    daemon.stop()
                log_text = (home / "log" / "s3pool.log").read_text(errors="replace")
                for what in ("x-amz-checksum CRC32 verified", "ETag MD5 verified",
                             "length verified"):
                    if what in log_text:
                        verified.setdefault(mode, set()).add(what)
                shutil.rmtree(home, ignore_errors=True)
        os.environ.pop("S3POOL_BENCH_NO_VERIFY", None)

        rows = []
        for flavour in flavours:
            for size, count in SIZES:
                off = statistics.median(times[("off", flavour, size)])
                on = statistics.median(times[("on", flavour, size)])
                cpu_off = sum(cpu[("off", flavour, size)]) / (count * args.rounds)
                cpu_on = sum(cpu[("on", flavour, size)]) / (count * args.rounds)
                row = [f"{label(size)} ({'CRC32' if flavour == 'crc' else 'ETag MD5'})",
                       count * args.rounds, f"{off * 1000:.2f}", f"{on * 1000:.2f}",
                       f"{on / off:.2f}", f"{cpu_off * 1000:.2f}", f"{cpu_on * 1000:.2f}",
                       f"{cpu_on / cpu_off:.2f}"]
                if args.baseline_tree:
                    before = statistics.median(times[("before", flavour, size)])
                    row += [f"{before * 1000:.2f}", f"{on / before:.2f}"]
                rows.append(row)
        header = ["object (validator)", "PULLs per mode", "off p50 ms", "on p50 ms",
                  "on / off", "off CPU ms/PULL", "on CPU ms/PULL", "CPU on / off"]
        if args.baseline_tree:
            header += ["before p50 ms", "on / before"]
        out.append(print_table(f"Cold PULL with and without verification ({args.s3} S3 on "
                               f"loopback, medians over {args.rounds} rounds)", header, rows))
        print("validators seen in the logs:",
              {mode: sorted(found) for mode, found in verified.items()}, flush=True)

        data = os.urandom(64 * MIB)

        def md5(d: bytes) -> bytes:
            return hashlib.md5(d).digest()

        def sha256(d: bytes) -> bytes:
            return hashlib.sha256(d).digest()

        out.append(print_table("Hashing speed on this machine, one thread (64 MiB buffer)",
                               ["hash", "MiB/s"],
                               [["CRC32 (zlib)", f"{hash_speed(zlib.crc32, data):.0f}"],
                                ["MD5", f"{hash_speed(md5, data):.0f}"],
                                ["SHA-256", f"{hash_speed(sha256, data):.0f}"]]))
    finally:
        server.stop()
    (work / "results.md").write_text("\n".join(out))
    print(f"results in {work / 'results.md'}")


if __name__ == "__main__":
    main()
