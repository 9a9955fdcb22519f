"""Listing speed (issue 19, point 4).

1. Parsers of one ListObjectsV2 page (1,000 keys, S3's XML): botocore's
   rest-xml parser (what boto3's list_objects_v2 uses) against s3pool's
   parser hook (listparse.parse_listing_fast: lxml, XPath columns), the
   hook's earlier version on the stdlib's expat through ElementTree's C
   tree builder, pyexpat callbacks, and an element loop on each tree.
   Microseconds per key, ratio against botocore in the same run, and how
   much of the parse leaves the GIL to other threads: a second thread
   counts loop turns while the page is parsed 50 times; its turns per
   second against its turns alone (100 %: the parse never held it).
2. End to end on SeaweedFS (``weed mini`` on loopback) with KEYS keys under
   one prefix: boto3's list_objects_v2 paginator, s3pool's page loop
   (listing.list_page: botocore signs and sends, the hook parses), and the
   cold ``ls -1`` of that directory on s3pool's mount (fresh HOMEDIR: an
   empty index, the directory's delimiter LIST streamed into it), with the
   time to its first entry; then a warm ``ls`` within listing_freshness.

    python bench/bench_list.py [--keys 20000] [--runs 3] [--skip-e2e]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import xml.parsers.expat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from xml.etree import ElementTree

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import botocore.parsers  # noqa: E402
import botocore.session  # noqa: E402

from common import CountingRelay, Daemon, S3Server, print_table, workdir  # noqa: E402
from s3pool.s3.answers import ListEntry  # noqa: E402
from s3pool.s3.listparse import FAST_ENTRIES, parse_listing_fast  # noqa: E402

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
SMALL_DIR = 100  # keys of the directory whose LIST pages bench_page_cpu times


def page_xml(n: int = 1000, prefix: str = "flat/") -> bytes:
    items = "".join(
        f"<Contents><Key>{prefix}k{i:07d}</Key><LastModified>2026-12-06T15:00:00.000Z"
        f"</LastModified><ETag>&quot;0123456789abcdef0123456789abcdef&quot;</ETag>"
        f"<Size>{16384 + i}</Size><StorageClass>STANDARD</StorageClass></Contents>"
        for i in range(n))
    return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{NS}">'
            f"<Name>bench</Name><Prefix>{prefix}</Prefix><KeyCount>{n}</KeyCount>"
            f"<MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated>"
            f"<NextContinuationToken>tok</NextContinuationToken>{items}"
            f"</ListBucketResult>").encode()


def parse_botocore(body: bytes) -> Callable[[], int]:
    model = botocore.session.get_session().get_service_model("s3")
    shape = model.operation_model("ListObjectsV2").output_shape
    parser = botocore.parsers.create_parser("rest-xml")

    def run() -> int:
        parsed = parser.parse({"body": body, "headers": {}, "status_code": 200}, shape)
        return len(parsed["Contents"])
    return run


def parse_hook(body: bytes):
    def run() -> int:
        response = {"body": body, "headers": {}, "status_code": 200}
        custom: dict = {}
        parse_listing_fast(response, custom)
        return len(custom[FAST_ENTRIES])
    return run


def parse_elementtree_hook(body: bytes):
    """The hook before lxml (commit 53630e0): ElementTree, one loop over the items."""
    from s3pool.s3.listparse import _by_items

    def run() -> int:
        root = ElementTree.fromstring(body)
        return len(_by_items(root, f"{{{NS}}}", False))
    return run


def parse_expat_callbacks(body: bytes):
    """pyexpat with Python handlers: one call per element and text run."""
    def run() -> int:
        entries: list[ListEntry] = []
        state = {"tag": "", "key": "", "size": "0", "time": "", "etag": ""}
        text: list[str] = []

        def start(name: str, attrs) -> None:
            text.clear()

        def end(name: str) -> None:
            tag = name.rpartition("}")[2]
            if tag in ("Key", "Size", "LastModified", "ETag"):
                state[tag] = "".join(text)
            elif tag == "Contents":
                entries.append(ListEntry(state["Key"], int(state["Size"]), 0.0, state["ETag"]))

        parser = xml.parsers.expat.ParserCreate(namespace_separator="}")
        parser.buffer_text = True
        parser.StartElementHandler = start
        parser.EndElementHandler = end
        parser.CharacterDataHandler = text.append
        parser.Parse(body, True)
        return len(entries)
    return run


def parse_lxml(body: bytes):
    from lxml import etree

    return _tree_loop(body, etree.fromstring)


def parse_elementtree_loop(body: bytes):
    """The same loop as the lxml row, on the stdlib's ElementTree (expat)."""
    return _tree_loop(body, ElementTree.fromstring)


def _tree_loop(body: bytes, fromstring):
    key_tag, size_tag, etag_tag = f"{{{NS}}}Key", f"{{{NS}}}Size", f"{{{NS}}}ETag"

    def run() -> int:
        root = fromstring(body)
        entries = []
        for item in root.iterfind(f"{{{NS}}}Contents"):
            key, size, etag = "", "0", ""
            for child in item:
                tag = child.tag
                if tag == key_tag:
                    key = child.text
                elif tag == size_tag:
                    size = child.text
                elif tag == etag_tag:
                    etag = child.text
            entries.append(ListEntry(key, int(size), 0.0, etag))
        return len(entries)
    return run


def best_of(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def gil_left(fn, seconds: float = 0.5) -> float:
    """Share of a second thread's speed kept while *fn* runs over and over."""
    def turns(busy) -> float:
        stop = threading.Event()
        count = [0]

        def spin() -> None:
            while not stop.is_set():
                count[0] += 1

        spinner = threading.Thread(target=spin)
        started = time.perf_counter()
        spinner.start()
        try:
            while time.perf_counter() - started < seconds:
                busy()
        finally:
            stop.set()
            spinner.join()
        return count[0] / (time.perf_counter() - started)

    alone = turns(lambda: time.sleep(0.01))
    return turns(fn) / alone


def bench_parsers(runs: int) -> None:
    body = page_xml()
    candidates = [
        ("botocore rest-xml parser (boto3's list_objects_v2)", parse_botocore(body)),
        ("lxml + XPath columns (s3pool's hook)", parse_hook(body)),
        ("expat via ElementTree C builder (the hook before)", parse_elementtree_hook(body)),
        ("expat via pyexpat Python callbacks", parse_expat_callbacks(body)),
        ("expat via ElementTree, the loop of the lxml row", parse_elementtree_loop(body)),
        ("lxml.etree.fromstring + iterfind", parse_lxml(body)),
    ]
    rows = []
    base = None
    for name, fn in candidates:
        assert fn() == 1000, name
        seconds = best_of(fn, max(runs, 100))
        base = base or seconds
        rows.append([name, f"{seconds * 1e6 / 1000:.2f}", f"{1000 / seconds / 1e6:.2f}",
                     f"{base / seconds:.1f}x", f"{100 * gil_left(fn):.0f} %"])
    print_table("Parsing one ListObjectsV2 page of 1,000 keys (best of 100)",
                ["parser", "us/key", "M keys/s", "speed vs botocore",
                 "other thread's speed meanwhile"], rows)


def bench_e2e(keys: int, runs: int, latency_ms: float) -> None:
    from s3pool.listing.listings import list_page
    from s3pool.s3.backend import Backend

    root = workdir("s3pool-bench-list-")
    server = S3Server("weed", root)
    relay = CountingRelay(server.port, delay=latency_ms / 1000) if latency_ms else None
    endpoint = relay.endpoint if relay else server.endpoint
    try:
        client = server.client()
        client.create_bucket(Bucket="manykeys")
        started = time.perf_counter()
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda i: client.put_object(Bucket="manykeys", Key=f"flat/k{i:07d}",
                                                      Body=b""), range(keys)))
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(lambda i: client.put_object(Bucket="manykeys", Key=f"small/k{i:03d}",
                                                      Body=b""), range(SMALL_DIR)))
        print(f"put {keys} keys in {time.perf_counter() - started:.0f}s", file=sys.stderr)

        def boto3_list() -> int:
            plain = server.client(endpoint)
            count = 0
            for page in plain.get_paginator("list_objects_v2").paginate(
                    Bucket="manykeys", Prefix="flat/", Delimiter="/"):
                count += len(page.get("Contents", ()))
            return count

        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
        backend = Backend(endpoint)

        def s3pool_pages() -> int:
            count, token = 0, None
            while True:
                entries, _, token = list_page(backend, "manykeys", "flat/", "/", token)
                count += len(entries)
                if token is None:
                    return count

        bench_page_cpu(backend, runs)
        boto_times: list[float] = []
        ours: list[float] = []
        ls_times: list[float] = []
        first_times: list[float] = []
        warm_times: list[float] = []
        for _ in range(runs):
            for fn, out in ((boto3_list, boto_times), (s3pool_pages, ours)):
                t = time.perf_counter()
                assert fn() == keys
                out.append(time.perf_counter() - t)
            home = root / f"home{len(ls_times)}"
            mnt = root / f"mnt{len(ls_times)}"
            mnt.mkdir()
            daemon = Daemon(endpoint, home, mnt, ["--bucket", "manykeys"])
            try:
                t = time.perf_counter()
                with os.scandir(mnt / "manykeys" / "flat") as it:
                    next(it)
                    first_times.append(time.perf_counter() - t)
                    count = 1 + sum(1 for _ in it)
                ls_times.append(time.perf_counter() - t)
                assert count == keys, count
                t = time.perf_counter()
                subprocess.run(["ls", "-1", str(mnt / "manykeys" / "flat")], check=True,
                               stdout=subprocess.DEVNULL)
                warm_times.append(time.perf_counter() - t)
            finally:
                daemon.stop()
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False,
                               stderr=subprocess.DEVNULL)  # the daemon unmounted it already
        base = statistics.median(boto_times)
        rows = [
            ["boto3 list_objects_v2 paginator (baseline)", f"{base:.2f}", "1.00"],
            ["s3pool listing.list_page loop, one page after the other",
             f"{statistics.median(ours):.2f}",
             f"{statistics.median(ours) / base:.2f}"],
            ["s3pool mount: cold ls, first entry", f"{statistics.median(first_times):.2f}",
             f"{statistics.median(first_times) / base:.2f}"],
            ["s3pool mount: cold ls, all entries", f"{statistics.median(ls_times):.2f}",
             f"{statistics.median(ls_times) / base:.2f}"],
            ["s3pool mount: warm ls (within listing_freshness)",
             f"{statistics.median(warm_times):.2f}",
             f"{statistics.median(warm_times) / base:.2f}"],
        ]
        where = f", {latency_ms:g} ms added to each answer" if latency_ms else ""
        print_table(f"Listing {keys:,} keys of one directory on SeaweedFS{where} "
                    f"(median of {runs})",
                    ["what", "seconds", "ratio to boto3"], rows)
    finally:
        if relay is not None:
            relay.stop()
        server.stop()


def bench_page_cpu(backend, runs: int, pages: int = 300) -> None:
    """CPU of this thread per LIST page of a SMALL_DIR-key directory (what
    each directory of a find costs): through boto3 (botocore signs, sends
    and runs its hooks; s3pool's parser reads the page) and on the lean
    path (s3pool/s3/lean.py list_body and listparse.read_page)."""
    from s3pool.listing.listings import list_page

    lean = backend.lean
    results: dict[str, list[float]] = {"boto3": [], "lean": []}
    for _ in range(runs):
        for name, path in (("boto3", None), ("lean", lean)):
            backend.lean = path
            list_page(backend, "manykeys", "small/", "/", None)  # connections open
            started = time.thread_time()
            for _ in range(pages):
                entries, _, _ = list_page(backend, "manykeys", "small/", "/", None)
                assert len(entries) == SMALL_DIR
            results[name].append((time.thread_time() - started) / pages * 1e3)
    backend.lean = lean
    base = statistics.median(results["boto3"])
    print_table(f"CPU per LIST page of {SMALL_DIR} keys, one thread (median of {runs} x "
                f"{pages} pages)", ["path", "ms of CPU per page", "ratio to boto3"],
                [["boto3 list_objects_v2 with s3pool's parser hook (baseline)", f"{base:.2f}",
                  "1.00"],
                 ["lean path: list_body + read_page", f"{statistics.median(results['lean']):.2f}",
                  f"{statistics.median(results['lean']) / base:.2f}"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--skip-parsers", action="store_true")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="hold each answer of the S3 server back this long (a relay): "
                             "an S3 across a network, where LISTs in ranges gain most")
    args = parser.parse_args()
    if not args.skip_parsers:
        bench_parsers(args.runs)
    if not args.skip_e2e:
        bench_e2e(args.keys, args.runs, args.latency_ms)


if __name__ == "__main__":
    main()
