"""Soak under mixed load: many concurrent clients of every kind, for a bounded time.

    python bench/bench_load.py [--seconds 60] [--clients 32] [--procs 4] [--no-mount]

Starts SeaweedFS on loopback and the real daemon (a FUSE mount, a small
cache cap so the evictor runs, a short freshness window so changed objects
are fetched again), then drives from --procs client processes, --clients
threads in all, a random mix of: cached PULLs, PULL misses of objects that
a writer changes on S3 now and then, multi-key PULLs, GLOBs (some hostile,
against long keys), STATUS, PUSH of small local files (read back with a
PULL), clients that close early, malformed requests and reads through the
mount; besides, waves of idle connections that send nothing. Everything
stops by itself at --seconds (each request has a 30 s timeout).

Prints two tables: per request kind (count, req/s, p50, p99, unexpected
errors, internal errors, failed checks) with a boto3 get_object baseline
taken during the same load; and the daemon's descriptors, RSS and threads
before the load, right after it and after 10 s idle, its exit code on
SIGTERM and whether its logs hold a traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Daemon, S3Server, percentile, print_table, workdir  # noqa: E402

KIB = 1 << 10
BUCKET = "load"
HOT = [f"hot/{i:03d}" for i in range(64)]
HOT_SIZE = 4 * KIB
COLD = [f"cold/{i:03d}" for i in range(200)]
COLD_SIZE = 256 * KIB
CACHE_CAP = "16M"  # cold objects hold 50 MiB: the evictor must run
# long keys for hostile GLOBs: one segment of 240 chars, and 4 segments of 200
LONG_FLAT = [f"{'a' * (200 + i % 40)}{'c' if i % 2 else 'ab'}{i:03d}" for i in range(150)]
LONG_DEEP = ["long/" + "/".join("a" * 199 + str(j) for j in range(4)) + f"/x{i:03d}"
             for i in range(150)]
REQUEST_TIMEOUT = 30.0

GLOBS = ["cold/*", "hot/0[0-3]?", "**/*7", "cold/1{2,5}?", "long/**/x0*"]
HOSTILE_GLOBS = ["*a*a*a*a*a*a*b", "**a**a**a**a**a**a**b", "long/**/*a*a*a*a*a*a*a*b",
                 "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*c", "{*a,*b}{*a,*b}{*a,*b}*z"]

# (request bytes, why it is bad); every one must get ERROR, never 'internal error'
MALFORMED: list[tuple[bytes, str]] = [
    (b"not json\n", "not JSON"),
    (b'{"PULL": 1}\n', "an object"),
    (b"[]\n", "empty array"),
    (b"\n", "empty line"),
    (b'["FROB"]\n', "unknown command"),
    (b'["PULL"]\n', "too few arguments"),
    (b'["PULL","load"]\n', "too few arguments"),
    (b'["STATUS","x"]\n', "too many arguments"),
    (b'["PULL","load",1]\n', "a number"),
    (b'["PULL","load","../etc/passwd"]\n', "'..' segment"),
    (b'["PULL","load","/abs"]\n', "leading slash"),
    (b'["PULL","Bad_Bucket!","k"]\n', "bad bucket name"),
    (b'["PULL","load","x\\u0000y"]\n', "NUL in key"),
    (b'["PULL","load","\\ud800"]\n', "lone surrogate"),
    (b'["PULL","load","' + b"k" * 2000 + b'"]\n', "key over 1024 bytes"),
    (b'["PULL","load","nosuch/key"]\n', "missing key"),
    (b'["PULL","nosuchbucket","k"]\n', "missing bucket"),
    (b'["GLOB","load","{a,{b,{c"]\n', "unbalanced braces"),
    (b'["GLOB","load","' + b"{a,b}" * 20 + b'"]\n', "2^20 alternatives"),
    (b'["GLOB","load","[z-a]"]\n', "reversed range"),
    (b'["PUSH","load","k","relative/path"]\n', "relative path"),
    (b'["PUSH","load","k","/nonexistent/file"]\n', "missing file"),
    (b'["PUSH","load","k","/etc"]\n', "a directory"),
    (b'["PUSH","load","k","/dev/null"]\n', "not a regular file"),
    (b'["SET","verbose","bogus"]\n', "bad value"),
    (b'["SET","nosuch","1"]\n', "unknown setting"),
    (b'\xff\xfe["STATUS"]\n', "not UTF-8"),
    (b"[" * 100_000 + b"\n", "nested 100k deep"),
]
OVERSIZED = b'["PULL","load","' + b"k" * (3 << 19) + b'"]\n'  # 1.5 MiB

# kind -> weight in the mix
MIX = {"pull_cached": 36, "pull_miss": 12, "pull_multi": 8, "glob": 7, "glob_hostile": 2,
       "status": 5, "push": 6, "early_close": 5, "malformed": 8, "fuse_read": 8}
LABELS = {
    "pull_cached": "PULL, cached 4 KiB key",
    "pull_miss": "PULL, 256 KiB key (miss, evicted or changed; path read back)",
    "pull_multi": "PULL, 6 keys (3 cached, 3 cold)",
    "glob": "GLOB, ordinary patterns",
    "glob_hostile": "GLOB, hostile patterns on 240-900 char keys",
    "status": "STATUS",
    "push": "PUSH of a 2 KiB file (then PULL, bytes compared)",
    "early_close": "client closes early (no reply read)",
    "malformed": "malformed request (ERROR expected)",
    "fuse_read": "read through the mount (hot or cold file)",
    "idle": "idle connection, sends nothing (ERROR expected)",
}


def hot_body(key: str) -> bytes:
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (HOT_SIZE // len(seed) + 1))[:HOT_SIZE]


def cold_body(key: str, version: int) -> bytes:
    head = f"{key} v{version:08d}\n".encode()
    return head + b"." * (COLD_SIZE - len(head))


def check_cold(key: str, data: bytes) -> str | None:
    if len(data) != COLD_SIZE:
        return f"{key}: {len(data)} bytes, expected {COLD_SIZE}"
    if not data.startswith(f"{key} v".encode()):
        return f"{key}: wrong content {data[:40]!r}"
    return None


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def request(port: int, *words: str) -> tuple[str, list[str]]:
    reply = exchange(port, json.dumps(list(words)).encode() + b"\n").decode("utf-8", "replace")
    status, newline, payload = reply.partition("\n")
    if not newline:
        return "NOREPLY", [reply[:200]]
    return status, payload.split("\n")[:-1]


class Outcome(Exception):
    """An unexpected reply (kind: 'error', 'internal' or 'check')."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def expect_ok(status: str, payload: list[str], what: str) -> list[str]:
    if status == "OK":
        return payload
    message = f"{what} -> {status} {' '.join(payload)[:300]}"
    raise Outcome("internal" if "internal error" in message else "error", message)


def one_request(kind: str, port: int, rng: random.Random, ctx: dict) -> None:
    """Carry out one request of *kind*; raise Outcome on anything unexpected."""
    if kind == "pull_cached":
        key = rng.choice(HOT)
        paths = expect_ok(*request(port, "PULL", BUCKET, key), f"PULL {key}")
        if len(paths) != 1 or not paths[0].endswith("/" + key):
            raise Outcome("check", f"PULL {key}: reply {paths!r}")
    elif kind == "pull_miss":
        key = rng.choice(COLD)
        paths = expect_ok(*request(port, "PULL", BUCKET, key), f"PULL {key}")
        try:
            with open(paths[0], "rb") as f:  # promptly, as README says
                problem = check_cold(key, f.read())
        except OSError as exc:
            problem = f"{key}: open of PULLed path failed: {exc}"
        if problem:
            raise Outcome("check", problem)
    elif kind == "pull_multi":
        keys = rng.sample(HOT, 3) + rng.sample(COLD, 3)
        rng.shuffle(keys)
        paths = expect_ok(*request(port, "PULL", BUCKET, *keys), "PULL 6 keys")
        if len(paths) != 6 or any(not p.endswith("/" + k)
                                  for p, k in zip(paths, keys, strict=True)):
            raise Outcome("check", f"PULL {keys}: reply {paths!r}")
    elif kind in ("glob", "glob_hostile"):
        pattern = rng.choice(GLOBS if kind == "glob" else HOSTILE_GLOBS)
        expect_ok(*request(port, "GLOB", BUCKET, pattern), f"GLOB {pattern}")
    elif kind == "status":
        lines = expect_ok(*request(port, "STATUS"), "STATUS")
        if not any(line.startswith("pid ") for line in lines):
            raise Outcome("check", f"STATUS without pid: {lines[:3]}")
    elif kind == "push":
        n = ctx["pushes"] = ctx["pushes"] + 1
        key = f"push/{ctx['name']}-{n % 16:02d}"
        body = f"{key} {n} {rng.random()}\n".encode() * (2 * KIB // 40)
        path = os.path.join(ctx["tmp"], f"{ctx['name']}-{n % 4}")  # this thread's own
        with open(path, "wb") as f:
            f.write(body)
        expect_ok(*request(port, "PUSH", BUCKET, key, path), f"PUSH {key}")
        ctx["after"] = (key, body)
    elif kind == "early_close":
        variant = rng.randrange(3)
        with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT) as sock:
            if variant == 0:  # a whole request, then gone before the reply
                sock.sendall(json.dumps(["PULL", BUCKET, rng.choice(COLD)]).encode() + b"\n")
            elif variant == 1:  # half a request
                sock.sendall(b'["PULL","load","ho')
            # variant 2: connect and close at once
            if rng.random() < 0.5:  # reset rather than FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                b"\x01\x00\x00\x00\x00\x00\x00\x00")
    elif kind == "malformed":
        if rng.random() < 0.01:
            data, why = OVERSIZED, "1.5 MiB request"
        else:
            data, why = rng.choice(MALFORMED)
        reply = exchange(port, data).decode("utf-8", "replace")
        if "internal error" in reply:
            raise Outcome("internal", f"{why}: {reply[:300]!r}")
        if not reply.startswith("ERROR\n") or reply.count("\n") != 2:
            raise Outcome("error", f"{why}: expected one ERROR line, got {reply[:300]!r}")
    elif kind == "fuse_read":
        if rng.random() < 0.5:
            key = rng.choice(HOT)
            with open(os.path.join(ctx["mount"], BUCKET, key), "rb") as f:
                data = f.read()
            if data != hot_body(key):
                raise Outcome("check", f"mount {key}: {len(data)} bytes, not the object")
        else:
            key = rng.choice(COLD)
            with open(os.path.join(ctx["mount"], BUCKET, key), "rb") as f:
                problem = check_cold(key, f.read())
            if problem:
                raise Outcome("check", "mount " + problem)
    else:
        raise AssertionError(kind)


def client_thread(name: str, port: int, mix: dict, deadline: float, mount: str | None,
                  tmp: str, results: dict) -> None:
    rng = random.Random(name)
    kinds, weights = list(mix), list(mix.values())
    ctx: dict[str, Any] = {"name": name, "pushes": 0, "tmp": tmp, "mount": mount,
                           "after": None}
    while time.monotonic() < deadline:
        kind = rng.choices(kinds, weights)[0]
        started = time.perf_counter()
        outcome = "ok"
        try:
            one_request(kind, port, rng, ctx)
        except Outcome as exc:
            outcome = exc.kind
            results["samples"].append(f"{kind}: {exc}")
        except Exception as exc:  # refused, reset, timeout: the daemon did not answer
            outcome = "error"
            results["samples"].append(f"{kind}: {exc!r}")
        elapsed = time.perf_counter() - started
        results["times"][kind].append(elapsed)
        if outcome != "ok":
            with results["lock"]:
                results[outcome][kind] += 1
        if ctx["after"]:  # read back what was just pushed
            key, body = ctx["after"]
            ctx["after"] = None
            try:
                paths = expect_ok(*request(port, "PULL", BUCKET, key), f"PULL {key} after PUSH")
                with open(paths[0], "rb") as f:
                    if f.read() != body:
                        raise Outcome("check", f"PULL {key} after PUSH: old bytes served")
            except Outcome as exc:
                with results["lock"]:
                    results[exc.kind]["push"] += 1
                results["samples"].append(f"push: {exc}")
            except Exception as exc:
                with results["lock"]:
                    results["error"]["push"] += 1
                results["samples"].append(f"push read-back: {exc!r}")


def client_process(index: int, threads: int, port: int, mix: dict, deadline: float,
                   mount: str | None, tmp: str, out: str) -> None:
    """One client process: *threads* client threads until *deadline* (a time.monotonic())."""
    results: dict[str, Any] = {"times": defaultdict(list), "error": defaultdict(int),
               "internal": defaultdict(int), "check": defaultdict(int), "samples": [],
               "lock": threading.Lock()}
    pool = [threading.Thread(target=client_thread, daemon=True,
                             args=(f"p{index}t{t}", port, mix, deadline, mount, tmp, results))
            for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(max(0.0, deadline - time.monotonic()) + 2 * REQUEST_TIMEOUT)
    results["hung_threads"] = sum(t.is_alive() for t in pool)
    results["samples"] = results["samples"][:50]
    del results["lock"]
    Path(out).write_text(json.dumps(results))
    os._exit(0)  # do not wait for hung threads


def idle_waves(port: int, deadline: float, waves: int, per_wave: int, results: dict) -> None:
    """Waves of connections that send nothing; the daemon must close them with an ERROR."""
    gap = max(0.0, (deadline - time.monotonic() - 8) / max(1, waves))
    for wave in range(waves):
        socks = []
        started = time.perf_counter()
        for _ in range(per_wave):
            s = socket.create_connection(("127.0.0.1", port), timeout=15)
            socks.append(s)
        for s in socks:
            try:
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                reply = data.decode("utf-8", "replace")
                results["times"]["idle"].append(time.perf_counter() - started)
                if "internal error" in reply:
                    results["internal"]["idle"] += 1
                    results["samples"].append(f"idle: {reply!r}")
                elif not reply.startswith("ERROR\nno complete request"):
                    results["error"]["idle"] += 1
                    results["samples"].append(f"idle: {reply[:200]!r}")
            except OSError as exc:
                results["times"]["idle"].append(time.perf_counter() - started)
                results["error"]["idle"] += 1
                results["samples"].append(f"idle: {exc!r}")
            finally:
                s.close()
        if wave < waves - 1:
            time.sleep(max(0.0, gap - (time.perf_counter() - started)))


def writer(s3, deadline: float, versions: dict, interval: float) -> None:
    """Change a random cold object on S3 every *interval* seconds."""
    rng = random.Random("writer")
    while time.monotonic() < deadline:
        key = rng.choice(COLD)
        versions[key] += 1
        s3.put_object(Bucket=BUCKET, Key=key, Body=cold_body(key, versions[key]))
        versions["_changes"] += 1
        time.sleep(interval)


def baseline(s3, deadline: float, times: list, pause: float) -> None:
    """boto3 get_object of a hot-sized object during the load, one request at a time."""
    while time.monotonic() < deadline:
        started = time.perf_counter()
        s3.get_object(Bucket=BUCKET, Key=HOT[0])["Body"].read()
        times.append(time.perf_counter() - started)
        time.sleep(pause)


def tcp_remote_ports() -> dict[str, int]:
    """socket inode -> remote port, from /proc/net/tcp and tcp6."""
    ports = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as f:
            next(f)
            for line in f:
                fields = line.split()
                ports[fields[9]] = int(fields[2].rsplit(":", 1)[1], 16)
    return ports


def proc_figures(pid: int, s3_port: int) -> dict:
    fds = os.listdir(f"/proc/{pid}/fd")
    remote = tcp_remote_ports()
    s3 = files = 0
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            s3 += remote.get(target[8:-1]) == s3_port
        elif target.startswith("/"):
            files += 1
    figures = {"fds": len(fds), "s3": s3, "files": files}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                figures[name] = int(value.split()[0]) // 1024  # MiB
            elif name == "Threads":
                figures[name] = int(value)
    return figures


def status_dict(daemon: Daemon) -> dict:
    status, lines = daemon.request("STATUS")
    assert status == "OK", lines
    return dict(line.split(" ", 1) for line in lines if " " in line)


def ms(values: list[float], pct: float) -> str:
    return f"{percentile(values, pct) * 1000:.2f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=32, help="client threads in all")
    parser.add_argument("--procs", type=int, default=4, help="client processes")
    parser.add_argument("--idle-waves", type=int, default=3)
    parser.add_argument("--idle-per-wave", type=int, default=30)
    parser.add_argument("--no-mount", action="store_true")
    args = parser.parse_args()
    mix = dict(MIX)
    if args.no_mount:
        del mix["fuse_read"]
    out = []
    work = workdir("s3pool-bench-load-")
    server = S3Server("weed", work)
    daemon = None
    mount = None if args.no_mount else work / "mnt"
    try:
        s3 = server.client()
        s3.create_bucket(Bucket=BUCKET)
        versions: defaultdict[str, int] = defaultdict(int)
        for key in HOT:
            s3.put_object(Bucket=BUCKET, Key=key, Body=hot_body(key))
        for key in COLD:
            s3.put_object(Bucket=BUCKET, Key=key, Body=cold_body(key, 0))
        for key in LONG_FLAT + LONG_DEEP:
            s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")
        home = work / "home"
        daemon = Daemon(server.endpoint, home, mount,
                        ["--max-cache-size", CACHE_CAP, "--freshness-window", "3",
                         "--bucket", BUCKET])
        pid = daemon.process.pid
        for key in HOT:
            assert daemon.request("PULL", BUCKET, key)[0] == "OK"
        assert daemon.request("GLOB", BUCKET, "*")[0] == "OK"
        # quiet figures before the load: cached PULL and boto3 GET, sequential
        quiet_pull, quiet_get = [], []
        for _ in range(200):
            started = time.perf_counter()
            daemon.request("PULL", BUCKET, HOT[1])
            quiet_pull.append(time.perf_counter() - started)
            started = time.perf_counter()
            s3.get_object(Bucket=BUCKET, Key=HOT[0])["Body"].read()
            quiet_get.append(time.perf_counter() - started)
        time.sleep(2)
        figures = {"before the load": proc_figures(pid, server.port)}
        before = status_dict(daemon)

        # --- the load ------------------------------------------------------
        loadavg = os.getloadavg()
        ctx = multiprocessing.get_context("fork")
        started_wall = time.monotonic()
        deadline = started_wall + args.seconds
        per_proc = [args.clients // args.procs + (i < args.clients % args.procs)
                    for i in range(args.procs)]
        procs = []
        for i, threads in enumerate(per_proc):
            tmp = work / f"client{i}"
            tmp.mkdir()
            p = ctx.Process(target=client_process,
                            args=(i, threads, daemon.port, mix, deadline,
                                  str(mount) if mount else None, str(tmp),
                                  str(work / f"client{i}.json")))
            p.start()
            procs.append(p)
        local: dict[str, Any] = {"times": defaultdict(list), "error": defaultdict(int),
                 "internal": defaultdict(int), "check": defaultdict(int), "samples": []}
        base_times: list[float] = []
        helpers = [
            threading.Thread(target=idle_waves, daemon=True,
                             args=(daemon.port, deadline, args.idle_waves, args.idle_per_wave,
                                   local)),
            threading.Thread(target=writer, daemon=True, args=(server.client(), deadline,
                                                               versions, 0.5)),
            threading.Thread(target=baseline, daemon=True, args=(server.client(), deadline,
                                                                 base_times, 0.05)),
        ]
        for t in helpers:
            t.start()
        hung = 0
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()) + 3 * REQUEST_TIMEOUT)
            if p.is_alive():
                hung += 1
                p.kill()
        for t in helpers:
            t.join(max(0.0, deadline - time.monotonic()) + 3 * REQUEST_TIMEOUT)
        wall = time.monotonic() - started_wall
        loadavg_after = os.getloadavg()
        figures["right after the load"] = proc_figures(pid, server.port)
        after = status_dict(daemon)

        # --- merge ----------------------------------------------------------
        merged = local
        for i in range(len(procs)):
            path = work / f"client{i}.json"
            if not path.exists():
                merged["samples"].append(f"client process {i} wrote no results (hung?)")
                continue
            part = json.loads(path.read_text())
            for kind, values in part["times"].items():
                merged["times"][kind] += values
            for field in ("error", "internal", "check"):
                for kind, n in part[field].items():
                    merged[field][kind] += n
            merged["samples"] += part["samples"]
            hung += part["hung_threads"]

        rows = []
        base_p50 = statistics.median(base_times) if base_times else float("nan")
        for kind in [*mix, "idle"]:
            times = merged["times"].get(kind, [])
            timed = kind != "early_close"
            p50 = statistics.median(times) if times else float("nan")
            rows.append([LABELS[kind], len(times), f"{len(times) / wall:.1f}",
                         ms(times, 50) if timed else "-", ms(times, 99) if timed else "-",
                         f"{p50 / base_p50:.2f}" if timed and times else "-",
                         merged["error"].get(kind, 0), merged["internal"].get(kind, 0),
                         merged["check"].get(kind, 0)])
        total = sum(len(v) for v in merged["times"].values())
        rows.append(["all requests", total, f"{total / wall:.1f}", "-", "-", "-",
                     sum(merged["error"].values()), sum(merged["internal"].values()),
                     sum(merged["check"].values())])
        rows.append(["baseline: boto3 get_object 4 KiB, during the load (1 thread, 50 ms apart)",
                     len(base_times), "-", ms(base_times, 50), ms(base_times, 99), "1.00",
                     "-", "-", "-"])
        rows.append(["quiet, before the load: PULL cached 4 KiB (sequential)", len(quiet_pull),
                     "-", ms(quiet_pull, 50), ms(quiet_pull, 99),
                     f"{statistics.median(quiet_pull) / statistics.median(quiet_get):.2f}"
                     " (of quiet GET)", "-", "-", "-"])
        rows.append(["quiet, before the load: boto3 get_object 4 KiB", len(quiet_get), "-",
                     ms(quiet_get, 50), ms(quiet_get, 99), "1.00 (of quiet GET)", "-", "-", "-"])
        out.append(print_table(
            f"Mixed load: {args.clients} client threads in {args.procs} processes for "
            f"{args.seconds:g} s (wall {wall:.1f} s), cache cap {CACHE_CAP}, "
            f"{versions['_changes']} objects changed on S3 meanwhile; "
            f"load average {loadavg[0]:.1f} before, {loadavg_after[0]:.1f} after",
            ["request kind", "count", "req/s", "p50 ms", "p99 ms", "p50 / baseline p50",
             "unexpected ERROR or no reply", "internal error", "failed checks"], rows))

        # --- idle, then SIGTERM ----------------------------------------------
        time.sleep(10)
        figures["after 10 s idle"] = proc_figures(pid, server.port)
        shutdown_started = time.perf_counter()
        daemon.process.send_signal(signal.SIGTERM)
        code: int | str
        try:
            code = daemon.process.wait(60)
        except subprocess.TimeoutExpired:
            code = "did not exit within 60 s"
            daemon.process.kill()
            daemon.process.wait()
        shutdown = time.perf_counter() - shutdown_started
        daemon = None
        logs = sorted((home / "log").glob("*")) + [work / "daemon.err"]
        text = "\n".join(p.read_text(errors="replace") for p in logs if p.is_file())
        tracebacks = text.count("Traceback")
        internal_logged = text.count("internal error")
        rows = [[phase, f["fds"], f["s3"], f["files"], f["VmRSS"], f["VmHWM"], f["Threads"]]
                for phase, f in figures.items()]
        out.append(print_table(
            "Daemon resources (fds from /proc/PID/fd; MiB)",
            ["when", "open fds", "of which TCP to S3", "of which files", "VmRSS MiB",
             "VmHWM MiB", "threads"], rows))
        counters = ["pulls", "hits", "misses", "revalidations", "downloads", "pushes", "globs",
                    "errors", "evictions", "cache_bytes", "connections", "s3_errors"]
        out.append(print_table(
            "Daemon counters (STATUS) and exit",
            ["what", "before the load", "after the load"],
            [[c, before.get(c, "-"), after.get(c, "-")] for c in counters]
            + [["exit code on SIGTERM", "-", f"{code} (after {shutdown:.2f} s)"],
               ["'Traceback' in log/ and stderr", "-", f"{tracebacks}"],
               ["'internal error' in logs", "-", f"{internal_logged}"],
               ["client threads or processes hung", "-", f"{hung}"]]))
        causes: dict[str, int] = defaultdict(int)
        for path in (home / "log").glob("requests.log*"):
            for line in path.read_text(errors="replace").splitlines():
                _, found, rest = line.partition(" -> ERROR internal ")
                if found:
                    request_summary = line.split(" ", 2)[2].partition(" -> ")[0]
                    causes[f"`{request_summary}` -> {rest.rsplit(' ', 1)[0][:150]}"] += 1
        if causes:
            out.append(print_table("Internal errors in requests.log, by request and cause",
                                   ["request -> logged status", "count"],
                                   sorted(map(list, causes.items()), key=lambda r: -r[1])))
        if merged["samples"]:
            print("first unexpected outcomes:")
            for line in merged["samples"][:30]:
                print("  ", line)
    except Exception:
        traceback.print_exc()
        raise
    finally:
        if daemon:
            daemon.process.kill()
            daemon.process.wait()
        if mount and os.path.ismount(mount):
            subprocess.run(["fusermount3", "-u", "-z", str(mount)], check=False)
        server.stop()
    Path(work / "tables.md").write_text("\n".join(out))
    print(f"(work dir {work})")


if __name__ == "__main__":
    main()
