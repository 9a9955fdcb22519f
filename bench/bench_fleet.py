"""A fleet on paper: what N s3pool hosts cost the origin S3 in an hour.

    python bench/bench_fleet.py [--hosts 1,10,100,1000] [--objects 100000] ...

Simulates N hosts (1 to 1,000) reading M objects with a Zipf access
pattern while a share of the objects is rewritten (churn), and counts what
reaches the origin S3 in the second simulated hour (the first warms the
caches) in four set-ups:

- ``plain``: every host LISTs every bucket each refresh_interval and GETs
  what it reads (conditional GETs after the freshness window);
- ``published``: one host LISTs and publishes the listing
  (``--publish-listing``), the others fetch it (``--use-published-listing``);
- ``tier``: a mirror tier (SeaweedFS kept in step by ``rclone sync
  --checksum --fast-list`` every sync interval, README "A shared tier")
  answers every host; the origin sees one flat listing per sync and one
  GET of every object changed since the last sync;
- ``tier+published``: both; the published listing is PUT to the origin
  (``--push-endpoint``) and reaches the hosts through the next sync.

Each host is simulated read by read (its own cache, freshness record and
ETag checks against the object versions of the churn). Requests are
turned into origin busy time with the per-request costs measured in this
project's benches (COSTS below, with their sources) and into dollars with
S3 Standard's list prices. The published listing's size is measured by
building one for M keys with s3pool's own writer.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from s3pool.listing.build import write_listing  # noqa: E402
from s3pool.listing.published import write_published  # noqa: E402
from s3pool.s3.answers import ListEntry  # noqa: E402
from s3pool.store.layout import Layout  # noqa: E402

MIB = 1 << 20

# Origin busy time per request, seconds (what one request costs the S3 that answers it)
COSTS = {
    # issue 10: a full ListObjectsV2 of 100,000 keys against moto, 54.6 s for 100 pages
    "list_page": 54.6 / 100,
    # issue 10: a GET of the listing as one object took 7 ms for 171 KB and 15 ms for
    # 7.3 MB: a line through both, per request and per byte
    "get_published": 0.007 - 171e3 * (0.008 / (7.3e6 - 171e3)),
    "get_published_per_byte": 0.008 / (7.3e6 - 171e3),
    # bench/RESULTS.md "ETag check": a conditional GET answered 304, p50 1.06 ms (weed)
    "get_304": 0.00106,
    # bench/RESULTS.md "PULL miss": boto3 GET of 1 MiB, p50 2.40 ms at 408 MiB/s; taken as
    # 1.06 ms per request (the 304's cost) plus the bytes at 408 MiB/s
    "get_fixed": 0.00106,
    "get_per_byte": 1 / (408 * MIB),
    # a PUT of the published listing: not measured alone; taken as a GET of it
}
# S3 Standard list prices (us-east-1), dollars per request; transfer in-region is free
PRICE = {"list": 0.005 / 1000, "put": 0.005 / 1000, "get": 0.0004 / 1000}
MODES = ("plain", "published", "tier", "tier+published")


@dataclass
class Origin:
    """What reaches the origin S3 in the hour counted."""

    lists: int = 0  # ListObjectsV2 pages
    gets: int = 0  # GETs answered 200 (objects and the published listing)
    gets_304: int = 0
    puts: int = 0
    bytes_out: int = 0  # bytes the origin sent
    busy: float = 0.0  # seconds of origin work (COSTS)

    @property
    def dollars(self) -> float:
        return (self.lists * PRICE["list"] + self.puts * PRICE["put"]
                + (self.gets + self.gets_304) * PRICE["get"])


@dataclass
class Hosts:
    """What the hosts' reads asked of S3 in the hour counted (all hosts together)."""

    reads: int = 0
    hits: int = 0  # served with no S3 request (within the freshness window)
    gets: int = 0  # 200: a miss or a changed object
    gets_304: int = 0
    bytes_in: int = 0
    stale_reads: int = 0  # reads served a version older than the origin's


class Workload:
    def __init__(self, args: argparse.Namespace, rng: random.Random) -> None:
        self.args = args
        m = args.objects
        self.objects = m
        # Zipf: rank r has weight 1/r^s; ranks are shuffled onto keys
        weights = [1.0 / (r ** args.zipf) for r in range(1, m + 1)]
        total = sum(weights)
        self.cdf = list(itertools.accumulate(w / total for w in weights))
        self.key_of_rank = list(range(m))
        rng.shuffle(self.key_of_rank)
        # sizes: lognormal around the mean object size
        sigma = 1.0
        mu = math.log(args.object_size) - sigma * sigma / 2
        self.size = [max(1, int(rng.lognormvariate(mu, sigma))) for _ in range(m)]
        # churn: rewrites at uniform times over both hours, uniform over keys
        self.changes: dict[int, list[float]] = {}
        for _ in range(int(args.churn * m * 2)):
            self.changes.setdefault(rng.randrange(m), []).append(rng.uniform(0, 7200))
        for times in self.changes.values():
            times.sort()

    def pick(self, rng: random.Random) -> int:
        return self.key_of_rank[min(bisect.bisect_left(self.cdf, rng.random()),
                                    self.objects - 1)]

    def version(self, key: int, t: float) -> int:
        times = self.changes.get(key)
        return bisect.bisect_right(times, t) if times else 0


def simulate_hosts(work: Workload, n: int, args: argparse.Namespace, rng: random.Random,
                   tier_sync: float | None) -> Hosts:
    """Read by read, for n hosts; only the second hour is counted. With
    *tier_sync*, a host sees the version of the tier's last sync."""
    out = Hosts()
    window = args.freshness_window
    rate = args.reads_per_host / 3600
    for _ in range(n):
        cached: dict[int, int] = {}  # key -> version
        checked: dict[int, float] = {}
        t = rng.expovariate(rate)
        while t < 7200:
            key = work.pick(rng)
            counted = t >= 3600
            seen_at = t if tier_sync is None else math.floor(t / tier_sync) * tier_sync
            version = work.version(key, seen_at)  # what S3 (or the tier) holds now
            have = cached.get(key)
            if have is not None and t - checked[key] < window:
                served = have
                if counted:
                    out.hits += 1
            elif have is not None and have == version:
                served = have
                checked[key] = t
                if counted:
                    out.gets_304 += 1
            else:
                served = cached[key] = version
                checked[key] = t
                if counted:
                    out.gets += 1
                    out.bytes_in += work.size[key]
            if counted:
                out.reads += 1
                if served != work.version(key, t):
                    out.stale_reads += 1
            t += rng.expovariate(rate)
    return out


def tier_sync_cost(work: Workload, sync: float, pages: int) -> Origin:
    """The origin's side of a mirror tier in the second hour: one flat listing
    and one GET of each object changed since the previous sync, per sync."""
    origin = Origin()
    syncs = int(3600 / sync)
    origin.lists = syncs * pages
    for key, times in work.changes.items():
        # the syncs of hour two that find this key changed since the sync before
        for i in range(syncs):
            end = 3600 + (i + 1) * sync
            start = end - sync
            if bisect.bisect_right(times, end) > bisect.bisect_right(times, start):
                origin.gets += 1
                origin.bytes_out += work.size[key]
    return origin


def published_size(objects: int) -> int:
    """Bytes of the published listing of *objects* keys, built by s3pool's writer."""
    with tempfile.TemporaryDirectory() as tmp:
        layout = Layout.create(tmp)
        pages = ([ListEntry(f"data/{d:03d}/part-{i:06d}.parquet", 1000 + i, 1.7e9 + i,
                            f'"{(d * 1000 + i) * 2654435761 % (1 << 128):032x}"')
                  for i in range(1000)] for d in range(math.ceil(objects / 1000)))
        write_listing(layout, "bkt", pages)
        out = os.path.join(tmp, "pub.gz")
        write_published(layout.index_path("bkt"), out, "bkt", time.time())
        return os.path.getsize(out)


def published_cost(size: int) -> float:
    """Origin seconds for one GET (or PUT) of the published listing."""
    return COSTS["get_published"] + size * COSTS["get_published_per_byte"]


def origin_for(mode: str, n: int, hosts: Hosts, sync: Origin, args: argparse.Namespace,
               pages: int, pub_bytes: int) -> Origin:
    rounds = int(3600 / args.refresh_interval)
    o = Origin()
    if mode in ("plain", "published"):
        o.gets, o.gets_304, o.bytes_out = hosts.gets, hosts.gets_304, hosts.bytes_in
        o.busy = (hosts.gets * COSTS["get_fixed"] + hosts.bytes_in * COSTS["get_per_byte"]
                  + hosts.gets_304 * COSTS["get_304"])
        if mode == "plain":
            o.lists = n * rounds * pages
        else:
            o.lists = rounds * pages
            o.puts = rounds
            readers = (n - 1) * rounds
            o.gets += readers
            o.bytes_out += readers * pub_bytes
            o.busy += (rounds + readers) * published_cost(pub_bytes)
        o.busy += o.lists * COSTS["list_page"]
        return o
    # behind the tier: the origin sees only the sync (and the publisher's PUTs)
    o.lists, o.gets, o.bytes_out = sync.lists, sync.gets, sync.bytes_out
    o.busy = (sync.lists * COSTS["list_page"] + sync.gets * COSTS["get_fixed"]
              + sync.bytes_out * COSTS["get_per_byte"])
    if mode == "tier+published":
        o.puts = rounds
        changed = int(3600 / args.sync_interval)  # the sync copies each new one
        o.gets += changed
        o.bytes_out += changed * pub_bytes
        o.busy += (rounds + changed) * published_cost(pub_bytes)
    return o


def crossover(per_host: float, fixed: float, plain_per_host: float) -> str:
    """Smallest N at which fixed + N*per_host < N*plain_per_host."""
    saving = plain_per_host - per_host
    if saving <= 0:
        return "never"
    return str(max(1, math.floor(fixed / saving) + 1))


def human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", default="1,10,100,1000")
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--object-size", type=int, default=4 * MIB, help="mean bytes")
    parser.add_argument("--reads-per-host", type=float, default=600, help="per hour")
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--churn", type=float, default=0.05,
                        help="share of the objects rewritten per hour")
    parser.add_argument("--refresh-interval", type=float, default=300)
    parser.add_argument("--freshness-window", type=float, default=120)
    parser.add_argument("--sync-interval", type=float, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    counts = [int(x) for x in args.hosts.split(",")]

    started = time.perf_counter()
    rng = random.Random(args.seed)
    work = Workload(args, rng)
    pages = math.ceil(args.objects / 1000)
    pub_bytes = published_size(args.objects)
    sync = tier_sync_cost(work, args.sync_interval, pages)
    print(f"M={args.objects} objects (mean {args.object_size / MIB:.1f} MiB), Zipf s={args.zipf}, "
          f"{args.reads_per_host:g} reads/host/h, churn {args.churn:.0%}/h, refresh "
          f"{args.refresh_interval:g}s, freshness {args.freshness_window:g}s, tier sync "
          f"{args.sync_interval:g}s; published listing {pub_bytes / 1024:.0f} KiB; "
          f"{pages} LIST pages per listing\n")
    print("| hosts | set-up | LIST/h | GET/h | 304/h | PUT/h | GiB/h out | origin busy s/h "
          "| $/h | stale reads |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for n in counts:
        direct = simulate_hosts(work, n, args, random.Random(args.seed * 7919 + n), None)
        tiered = simulate_hosts(work, n, args, random.Random(args.seed * 7919 + n),
                                args.sync_interval)
        for mode in MODES:
            hosts = tiered if mode.startswith("tier") else direct
            o = origin_for(mode, n, hosts, sync, args, pages, pub_bytes)
            stale = f"{hosts.stale_reads / max(hosts.reads, 1):.2%}"
            print(f"| {n} | {mode} | {human(o.lists)} | {human(o.gets)} | {human(o.gets_304)} "
                  f"| {human(o.puts)} | {o.bytes_out / (1 << 30):.1f} | {o.busy:,.0f} "
                  f"| {o.dollars:.3f} | {stale} |")
            results.append((n, mode, o))
    # where each part pays off: cost(N) = fixed + N * per-host, fitted from the largest two N
    print()
    if len(counts) >= 2:
        a, b = sorted(counts)[-2:]
        line = {(n, mode): o for n, mode, o in results}
        metrics = {
            "origin busy time": lambda o: o.busy,
            "dollars": lambda o: o.dollars,
            "GET requests": lambda o: o.gets + o.gets_304,
            "bytes out": lambda o: o.bytes_out,
        }
        print("| pays off from N = | " + " | ".join(metrics) + " |")
        print("|---" * (len(metrics) + 1) + "|")
        for mode, against in (("published", "plain"), ("tier", "plain"),
                              ("tier+published", "published"),
                              ("tier+published", "plain")):
            cells = []
            for metric in metrics.values():
                def fit(m: str) -> tuple[float, float]:
                    slope = (metric(line[(b, m)]) - metric(line[(a, m)])) / (b - a)
                    return metric(line[(a, m)]) - slope * a, slope
                fixed, slope = fit(mode)
                base_fixed, base_slope = fit(against)
                cells.append(crossover(slope, fixed - base_fixed, base_slope))
            print(f"| {mode} vs {against} | " + " | ".join(cells) + " |")
    print(f"\n(simulated in {time.perf_counter() - started:.1f}s)")


if __name__ == "__main__":
    main()
