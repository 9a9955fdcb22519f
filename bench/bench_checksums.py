"""What checking a download costs per GiB, for each check s3pool makes, beside MD5.

    python bench/bench_checksums.py [--mib 512] [--rounds 5]

Hashes --mib MiB (a 64 MiB random buffer, again and again) in 1 MiB
pieces, the size of the chunks the download path hands to its digest,
through the very hashers s3pool/s3/checksums.py uses (awscrt's CRC64NVME and
CRC32C, zlib's CRC32, hashlib's SHA-1, SHA-256 and MD5), plus awscrt's
CRC32 for comparison. CPU time is the thread's own (time.thread_time), so
other work on a shared machine does not count; the median of --rounds
rounds is shown, the order of the hashes reversed every other round. The
ratio is MD5's CPU per GiB divided by the hash's (MD5, what a single-part
ETag costs, is the baseline measured in the same run).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import ssl
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from awscrt import checksums as crt  # noqa: E402

from s3pool.s3.checksums import CHECKSUMS, Crc  # noqa: E402

CHUNK = 1 << 20
BUFFER = 64 << 20


def hashers() -> dict[str, Callable[[], Any]]:
    """name -> a new hasher: s3pool's own (from CHECKSUMS), MD5, awscrt's CRC32."""
    found: dict[str, Callable[[], Any]] = {}
    for _, name, _, make in CHECKSUMS:
        found[f"{name} (s3pool)"] = make
    found["CRC32 (awscrt)"] = lambda: Crc(crt.crc32, 4)
    found["MD5 (ETag)"] = lambda: hashlib.md5(usedforsecurity=False)
    return found


def one_pass(make: Callable[[], Any], data: memoryview, total: int) -> float:
    """CPU seconds of this thread to hash *total* bytes in CHUNK pieces."""
    hasher = make()
    started = time.thread_time()
    done = 0
    while done < total:
        for offset in range(0, len(data), CHUNK):
            hasher.update(data[offset:offset + CHUNK])
        done += len(data)
    hasher.digest()
    return time.thread_time() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=512, help="MiB hashed per round and hash")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    data = memoryview(os.urandom(BUFFER))
    total = args.mib << 20
    makers = hashers()
    seconds: dict[str, list[float]] = {name: [] for name in makers}
    names = list(makers)
    for round_number in range(args.rounds):
        order = names if round_number % 2 == 0 else names[::-1]
        for name in order:
            seconds[name].append(one_pass(makers[name], data, total))
    gib = total / (1 << 30)
    md5 = statistics.median(seconds["MD5 (ETag)"]) / gib
    rows = []
    for name in names:
        per_gib = statistics.median(seconds[name]) / gib
        rows.append([name, f"{per_gib * 1000:.0f}", f"{(1 << 30) / per_gib / (1 << 20) / 1024:.2f}"
                     if per_gib else "-", f"{md5 / per_gib:.1f}"])
    header = ["hash", "CPU ms per GiB", "GiB/s (one core)", "MD5 CPU / this CPU"]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print(f"### CPU per GiB hashed in 1 MiB pieces ({args.mib} MiB a round, "
          f"median of {args.rounds} rounds)\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=False)) + " |")
    print(f"\nawscrt {version('awscrt')}, zlib {zlib.ZLIB_VERSION}, "
          f"OpenSSL {ssl.OPENSSL_VERSION.split()[1]}, Python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
