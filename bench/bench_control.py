"""Control-socket benchmark: cached PULL, PULL miss, revalidation, GLOB.

    python bench/bench_control.py [--s3 weed|moto] [--n 2000]

Each figure stands beside a baseline measured in the same run against the
same S3 server: a direct boto3 GET of the same object for PULL, Python's
fnmatch over the same key list for GLOB.
"""

from __future__ import annotations

import fnmatch
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import Daemon, S3Server, print_table, summary, timed, workdir  # noqa: E402
from s3pool.listing.build import write_listing  # noqa: E402
from s3pool.s3.answers import ListEntry  # noqa: E402
from s3pool.store.layout import Layout  # noqa: E402

MIB = 1 << 20


def glob_keys(n: int) -> list[str]:
    keys = []
    for i in range(n):
        host = i % 50
        day = 1 + (i // 50) % 28
        keys.append(f"logs/2026/11/{day:02d}/host{host:02d}/part-{i:06d}."
                    f"{'json' if i % 10 == 0 else 'csv.gz'}")
    return sorted(keys)


def main() -> None:
    parser = common.bench_parser(n=2000, small=2000, glob_keys=100_000)
    args = parser.parse_args()
    out = []
    work = workdir("s3pool-bench-control-")
    server = S3Server(args.s3, work)
    daemon = None
    try:
        s3 = common.bench_bucket(server)
        s3.put_object(Bucket="bench", Key="small/1k", Body=os.urandom(1024))
        for i in range(60):
            s3.put_object(Bucket="bench", Key=f"miss/{i:03d}", Body=os.urandom(MIB))
        home = work / "home"
        daemon = Daemon(server.endpoint, home)

        # --- cached PULL vs direct GET -----------------------------------
        assert daemon.request("PULL", "bench", "small/1k")[0] == "OK"
        # sequential requests, in alternating blocks of 500 so that both
        # sides see the same drift of the machine
        pull_times, get_times = [], []
        for _ in range(max(1, args.n // 500)):
            pull_times += timed(lambda: daemon.request("PULL", "bench", "small/1k"), 500)
            get_times += timed(
                lambda: s3.get_object(Bucket="bench", Key="small/1k")["Body"].read(), 500)
        pull, get = summary(pull_times), summary(get_times)
        rows: list[list[Any]] = [
            ["PULL, cached 1 KiB key (fresh connection each)", f"{pull['p50_ms']:.3f}",
             f"{pull['p99_ms']:.3f}", f"{pull['per_s']:.0f}", "1.00"],
            ["baseline: boto3 get_object of the same key", f"{get['p50_ms']:.3f}",
             f"{get['p99_ms']:.3f}", f"{get['per_s']:.0f}",
             f"{get['p50_ms'] / pull['p50_ms']:.2f}"],
        ]
        out.append(print_table(
            f"Cached PULL, {args.n} sequential requests ({args.s3} S3 on loopback)",
            ["what", "p50 ms", "p99 ms", "req/s", "baseline p50 / PULL p50"], rows))

        # --- PULL miss vs direct GET of 1 MiB -----------------------------
        keys = iter(f"miss/{i:03d}" for i in range(60))
        miss = summary(timed(lambda: daemon.request("PULL", "bench", next(keys)), 30))
        keys2 = iter(f"miss/{i:03d}" for i in range(30, 60))
        get_miss = summary(timed(
            lambda: s3.get_object(Bucket="bench", Key=next(keys2))["Body"].read(), 30))
        out.append(print_table("PULL miss of a 1 MiB object (30 keys)",
                               ["what", "p50 ms", "p99 ms", "MiB/s"],
                               [["PULL miss (GET, rename, meta)", f"{miss['p50_ms']:.2f}",
                                 f"{miss['p99_ms']:.2f}", f"{miss['per_s']:.0f}"],
                                ["baseline: boto3 get_object, body read",
                                 f"{get_miss['p50_ms']:.2f}", f"{get_miss['p99_ms']:.2f}",
                                 f"{get_miss['per_s']:.0f}"]]))

        # --- cold 16 KiB objects, one after another (issue 11) -----------
        payload = os.urandom(16 << 10)
        for i in range(2 * args.small):
            s3.put_object(Bucket="bench", Key=f"cold16k/{i:05d}", Body=payload)
        pull_keys = iter(f"cold16k/{i:05d}" for i in range(args.small))
        cold_pull = timed(lambda: daemon.request("PULL", "bench", next(pull_keys)), args.small)
        get_keys = iter(f"cold16k/{i:05d}" for i in range(args.small, 2 * args.small))
        cold_get = timed(lambda: s3.get_object(Bucket="bench", Key=next(get_keys))["Body"]
                         .read(), args.small)
        cp, cg = summary(cold_pull), summary(cold_get)
        out.append(print_table(
            f"Cold 16 KiB objects, {args.small} one after another (PULL miss vs boto3 GET)",
            ["what", "p50 ms", "p99 ms", "objects/s", "PULL p50 / GET p50"],
            [["PULL miss (GET, checked, installed; no fsync)", f"{cp['p50_ms']:.2f}",
              f"{cp['p99_ms']:.2f}", f"{cp['per_s']:.0f}", f"{cp['p50_ms'] / cg['p50_ms']:.2f}"],
             ["baseline: boto3 get_object, body read", f"{cg['p50_ms']:.2f}",
              f"{cg['p99_ms']:.2f}", f"{cg['per_s']:.0f}", "1.00"]]))

        # --- how to check an ETag: conditional GET vs HEAD (+ GET) --------
        etag = s3.head_object(Bucket="bench", Key="miss/000")["ETag"]

        def conditional_hit():
            try:
                s3.get_object(Bucket="bench", Key="miss/000", IfNoneMatch=etag)
            except s3.exceptions.ClientError:
                pass

        def head_only():
            s3.head_object(Bucket="bench", Key="miss/000")

        def conditional_miss():
            s3.get_object(Bucket="bench", Key="miss/000", IfNoneMatch='"other"')["Body"].read()

        def head_then_get():
            s3.head_object(Bucket="bench", Key="miss/000")
            s3.get_object(Bucket="bench", Key="miss/000")["Body"].read()

        reps = 200
        c_hit, h_hit = summary(timed(conditional_hit, reps)), summary(timed(head_only, reps))
        c_miss, h_miss = summary(timed(conditional_miss, 30)), summary(timed(head_then_get, 30))
        daemon.request("SET", "freshness_window", "0")
        daemon.request("PULL", "bench", "miss/000")
        revalidate = summary(timed(lambda: daemon.request("PULL", "bench", "miss/000"), reps))
        daemon.request("SET", "freshness_window", "120")
        out.append(print_table(
            "ETag check: conditional GET (what s3pool does) vs HEAD then GET, 1 MiB object",
            ["case", "conditional GET p50 ms", "HEAD (+GET) p50 ms", "HEAD way / conditional"],
            [["unchanged (304 vs HEAD)", f"{c_hit['p50_ms']:.2f}", f"{h_hit['p50_ms']:.2f}",
              f"{h_hit['p50_ms'] / c_hit['p50_ms']:.2f}"],
             ["changed (200 vs HEAD+GET)", f"{c_miss['p50_ms']:.2f}", f"{h_miss['p50_ms']:.2f}",
              f"{h_miss['p50_ms'] / c_miss['p50_ms']:.2f}"],
             ["PULL outside the freshness window (one 304)", f"{revalidate['p50_ms']:.2f}", "-",
              "-"]]))

        # --- GLOB over a large listing -------------------------------------
        keys_list = glob_keys(args.glob_keys)
        layout = Layout(str(home))
        started = time.perf_counter()
        pages = ([ListEntry(k, 100, 1.7e9, '"e"') for k in keys_list[i:i + 1000]]
                 for i in range(0, len(keys_list), 1000))
        write_listing(layout, "globbench", pages)
        build = time.perf_counter() - started
        rows = []
        for pattern, fn_pattern in [
            ("logs/2026/11/07/host07/*", "logs/2026/11/07/host07/*"),
            ("logs/2026/11/0[1-3]/host1?/*.json", "logs/2026/11/0[1-3]/host1?/*.json"),
            ("**/*.json", "*.json"),
            ("logs/**/part-0000??.csv.gz", "logs/*/part-0000??.csv.gz"),
        ]:
            result = daemon.request("GLOB", "globbench", pattern)
            assert result[0] == "OK", result
            ours = summary(timed(lambda: daemon.request("GLOB", "globbench", pattern), 10))
            theirs = summary(timed(lambda: fnmatch.filter(keys_list, fn_pattern), 10))
            expected = fnmatch.filter(keys_list, fn_pattern)
            rows.append([f"`{pattern}`", len(result[1]), f"{ours['p50_ms']:.1f}",
                         f"{theirs['p50_ms']:.1f}", f"{theirs['p50_ms'] / ours['p50_ms']:.2f}",
                         "yes" if result[1] == expected else "NO"])
        out.append(print_table(
            f"GLOB over a {len(keys_list):,}-key listing (index built in {build:.2f} s)",
            ["pattern", "matches", "GLOB p50 ms (socket incl.)", "fnmatch.filter p50 ms",
             "fnmatch / GLOB", "same keys"], rows))
    finally:
        if daemon:
            daemon.stop()
        server.stop()
    Path(work / "tables.md").write_text("\n".join(out))
    print(f"(work dir {work})")


if __name__ == "__main__":
    main()
