"""CPU per GET of the lean path (s3pool/s3/lean.py) against a boto3 baseline, in one run.

Every GET of a small object (16 KiB by default) is made from one thread
and its CPU time measured with ``time.thread_time()`` around the call and
the read of the body, so the S3 server (moto, in its own process) costs
nothing here. Compared in the same run:

- ``boto3``: ``client.get_object`` and ``Body.read()`` (the baseline);
- ``lean (http.client)``: this tree's LeanGets (the standard library's
  framing plus s3pool's checks);
- ``lean (own parser)``: the LeanGets of an older tree (``--old-ref``, by
  default the last commit with the hand-written HTTP/1.1 reader), loaded
  from ``git show``.

    python bench/bench_lean_get.py [--gets 2000] [--size 16384] [--rounds 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.credentials import Credentials

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import S3Server, print_table  # noqa: E402
from s3pool.s3.lean import LeanGets  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OLD_REF = "6a10b86"  # s3http.py with its own HTTP/1.1 reading (before issue 16)


def old_lean_class(ref: str):
    source = subprocess.run(["git", "show", f"{ref}:s3pool/s3/lean.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "s3http_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("s3http_old", path)
    assert spec is not None and spec.loader is not None  # a .py file always has both
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LeanGets


def cpu_per_get(get, count: int) -> float:
    """Mean CPU (ms) per GET over *count* GETs, after 20 to warm up."""
    for _ in range(20):
        get()
    start = time.thread_time()
    for _ in range(count):
        get()
    return (time.thread_time() - start) / count * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gets", type=int, default=2000)
    parser.add_argument("--size", type=int, default=16 << 10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--old-ref", default=OLD_REF)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="s3pool-bench-lean-") as work:
        server = S3Server("moto", Path(work))
        try:
            run(server, args)
        finally:
            server.stop()


def run(server: S3Server, args: argparse.Namespace) -> None:
    client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench",
                          config=Config(s3={"addressing_style": "path"}))
    client.create_bucket(Bucket="bench")
    body = b"x" * args.size
    client.put_object(Bucket="bench", Key="obj", Body=body)
    credentials = Credentials("bench", "bench")
    new = LeanGets(client, credentials, 4, 5, 30)
    old = old_lean_class(args.old_ref)(client, credentials, 4, 5, 30)

    def boto3_get() -> None:
        assert client.get_object(Bucket="bench", Key="obj")["Body"].read() == body

    def lean_get(lean) -> None:
        status, resp = lean.get("bench", "obj", {})
        assert status == 200 and resp["Body"].read() == body

    results: dict[str, list[float]] = {"boto3": [], "lean (http.client)": [],
                                       f"lean (own parser, {args.old_ref})": []}
    for _ in range(args.rounds):  # interleaved: the machine's noise falls on all alike
        results["boto3"].append(cpu_per_get(boto3_get, args.gets))
        results["lean (http.client)"].append(cpu_per_get(lambda: lean_get(new), args.gets))
        results[f"lean (own parser, {args.old_ref})"].append(
            cpu_per_get(lambda: lean_get(old), args.gets))
    base = statistics.median(results["boto3"])
    rows = [[name, f"{statistics.median(values):.3f}", f"{min(values):.3f}",
             f"{statistics.median(values) / base:.2f}"] for name, values in results.items()]
    print_table(f"CPU per GET of a {args.size} B object, {args.gets} GETs x "
                      f"{args.rounds} rounds (thread CPU of the caller, moto in its own "
                      "process)", ["path", "median ms", "min ms", "vs boto3"], rows)


if __name__ == "__main__":
    main()
