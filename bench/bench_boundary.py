"""CPU per byte of cold reads, before and after a change, beside boto3 (issue 16's checks).

    python bench/bench_boundary.py --before REF|--before-dir DIR [--after REF] [--s3 weed|moto]
                                   [--size-mib 256] [--small 2000] [--rounds 2]

Each tree (``--before`` and ``--after``: git refs, exported with ``git
archive``; without ``--after``, this checkout as it is) runs the daemon as a subprocess with a fresh
HOMEDIR and a FUSE mount, against the same S3 server (SeaweedFS by
default). Measured per round and tree, as the daemon's CPU time (user +
system, from /proc/PID/stat) spent on:

- a cold PULL of a SIZE MiB object, and of SMALL x 16 KiB objects (one
  PULL request each, one after another);
- a cold ``cat`` through the mount of another SIZE MiB object, and reads of
  SMALL other 16 KiB files through the mount, one after another.

The baseline in the same run is boto3 in this process (its CPU, all threads):
``download_file`` of the big object and a ``get_object`` loop over the
small ones. Rounds alternate the trees so the machine's noise falls on both.
Needs root (FUSE).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CREDS, S3Server, bench_parser, print_table, workdir  # noqa: E402
from s3pool.client import exchange  # noqa: E402
from s3pool.embedded import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
SMALL = 16 << 10


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class TreeDaemon:
    """The daemon of one source tree (cwd and PYTHONPATH are the tree)."""

    def __init__(self, tree: Path, endpoint: str, home: Path, mountpoint: Path) -> None:
        self.port = free_port()
        self.mountpoint = mountpoint
        mountpoint.mkdir()
        env = dict(os.environ, **CREDS, AWS_ENDPOINT_URL=endpoint, PYTHONPATH=str(tree))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "s3pool.cli.main", "-p", str(self.port), "-D", str(home),
             "--embedded-s3", "no", "--bucket", "bench", "-m", str(mountpoint)],
            env=env, cwd=tree, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(home.parent / f"daemon-{self.port}.err", "ab"))
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.request("STATUS")[0] == "OK" and os.path.ismount(mountpoint):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"the daemon of {tree} did not start")
            time.sleep(0.05)

    def request(self, *words: str) -> tuple[str, list[str]]:
        reply = exchange("127.0.0.1", self.port, json.dumps(list(words)).encode() + b"\n",
                         120)
        status, _, payload = reply.decode().partition("\n")
        return status, payload.split("\n")[:-1]

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def measure_tree(tree: Path, server: S3Server, work: Path, size_mib: int, small: int
                 ) -> dict[str, float]:
    """Daemon CPU seconds per workload, all cold."""
    home = Path(tempfile.mkdtemp(dir=work))
    daemon = TreeDaemon(tree, server.endpoint, home / "home", home / "mnt")
    out: dict[str, float] = {}
    try:
        mount = daemon.mountpoint / "bench"
        os.listdir(mount)  # the listing is in before anything is measured
        for name in ("big-pull", "big-cat"):
            os.stat(mount / name)
        before = daemon.cpu()
        status, lines = daemon.request("PULL", "bench", "big-pull")
        assert status == "OK", (status, lines)
        out["PULL big"] = daemon.cpu() - before
        before = daemon.cpu()
        for i in range(small):
            status, lines = daemon.request("PULL", "bench", f"small-pull/{i:05d}")
            assert status == "OK", (status, lines)
        out["PULL small"] = daemon.cpu() - before
        before = daemon.cpu()
        subprocess.run(["cat", str(mount / "big-cat")], stdout=subprocess.DEVNULL, check=True)
        out["cat big"] = daemon.cpu() - before
        names = sorted(os.listdir(mount / "small-cat"))
        before = daemon.cpu()
        for name in names:
            with open(mount / "small-cat" / name, "rb") as f:
                assert len(f.read()) == SMALL
        out["cat small"] = daemon.cpu() - before
    finally:
        daemon.stop()
    return out


def measure_boto3(server: S3Server, work: Path, small: int) -> dict[str, float]:
    client = server.client()
    target = work / "boto3-download"
    started = time.process_time()
    client.download_file("bench", "big-pull", str(target))
    big = time.process_time() - started
    target.unlink()
    started = time.process_time()
    for i in range(small):
        client.get_object(Bucket="bench", Key=f"small-pull/{i:05d}")["Body"].read()
    return {"PULL big": big, "cat big": big, "PULL small": time.process_time() - started,
            "cat small": time.process_time() - started}


def export(ref: str, into: Path) -> Path:
    into.mkdir()
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    # --s3 (weed or moto) and the sizes (bench_parser); it lost --s3 with 2bf4dce
    parser = bench_parser(__doc__.split("\n")[0], size_mib=256, small=2000, rounds=2)
    parser.add_argument("--before", help="git ref of the tree before")
    parser.add_argument("--before-dir", help="or a directory holding that tree (e.g. HEAD "
                        "with the change under test reverted)")
    parser.add_argument("--after", help="git ref of the tree after (default: this checkout)")
    parser.add_argument("--after-dir", help="or a directory holding that tree")
    args = parser.parse_args()
    work = workdir("s3pool-bench-boundary-")
    before_tree = Path(args.before_dir) if args.before_dir else export(args.before,
                                                                        work / "before")
    after_tree = Path(args.after_dir) if args.after_dir else \
        export(args.after, work / "after") if args.after else ROOT
    server = S3Server(args.s3, work)
    try:
        client = server.client()
        client.create_bucket(Bucket="bench")
        big = os.urandom(args.size_mib * MIB)
        blob = os.urandom(SMALL)
        results: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}, "boto3": {}}
        for name in ("big-pull", "big-cat"):
            client.put_object(Bucket="bench", Key=name, Body=big)
        for prefix in ("small-pull", "small-cat"):
            for i in range(args.small):
                client.put_object(Bucket="bench", Key=f"{prefix}/{i:05d}", Body=blob)
        for round_ in range(args.rounds):
            # each daemon has a HOMEDIR of its own: every read is cold
            order = [("before", before_tree), ("after", after_tree)]
            for tree_name, tree in order if round_ % 2 == 0 else order[::-1]:
                got = measure_tree(tree, server, work, args.size_mib, args.small)
                for name, value in got.items():
                    results[tree_name].setdefault(name, []).append(value)
            for name, value in measure_boto3(server, work, args.small).items():
                results["boto3"].setdefault(name, []).append(value)
    finally:
        server.stop()
    rows = []
    for name, total in (("PULL big", args.size_mib * MIB), ("cat big", args.size_mib * MIB),
                        ("PULL small", args.small * SMALL), ("cat small", args.small * SMALL)):
        med = {tree: statistics.median(results[tree][name]) for tree in results}
        per_mib = {tree: med[tree] / (total / MIB) * 1000 for tree in med}
        rounds = {tree: ", ".join(f"{value / (total / MIB) * 1000:.2f}"
                                  for value in results[tree][name]) for tree in ("before", "after")}
        rows.append([name, f"{per_mib['boto3']:.2f}", f"{per_mib['before']:.2f}",
                     f"{per_mib['after']:.2f}", f"{med['after'] / med['before']:.3f}",
                     f"{med['after'] / med['boto3']:.2f}", rounds["before"], rounds["after"]])
    print_table(f"CPU ms per MiB, cold: {args.size_mib} MiB and {args.small} x 16 KiB, "
                f"{args.s3} S3, medians of {args.rounds} rounds (before = "
                f"{args.before or args.before_dir}, "
                f"after = {args.after or args.after_dir or 'this checkout'})",
                ["workload", "boto3", "before", "after", "after/before", "after/boto3",
                 "before, each round", "after, each round"], rows)


if __name__ == "__main__":
    main()
