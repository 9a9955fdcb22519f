"""The listing index is replaced by a rename (a whole listing: REFRESH, a
GLOB of the whole bucket) while other requests write into it (a PULL or PUSH
adds its key, a GLOB's LIST of its prefix merges page by page): SQLite's
rollback journal goes by the file's *name* (index.db-journal), its locks by
the *file*, so a journal of a write still going into the old file looked hot
to a writer of the new one, which "rolled it back" into the new file:
'database disk image is malformed' (seen in bench_boundary's 2,000 small PULLs
as an internal error). Real daemon, moto over HTTP, listing_freshness 0 (every
GLOB lists again): whole listings, prefix LISTs and key inserts all at once;
no request may fail and the index must stay sound."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import put_many

pytestmark = pytest.mark.e2e

SMALL = 64
KEYS = 1500  # two LIST pages under cold/
ROUNDS = 200
CLIENTS = 24


def test_index_replaced_while_written(start_daemon, s3, tmp_path):
    bucket = "replace"
    s3.create_bucket(Bucket=bucket)
    put_many(bucket, ((f"cold/{i:05d}", bytes([i % 251]) * SMALL) for i in range(KEYS)))
    daemon = start_daemon(args=["--listing-freshness", "0"])
    local = tmp_path / "push.bin"
    local.write_bytes(b"p" * SMALL)
    failures: list[tuple] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        kind = i % 6
        words: tuple[str, ...]
        if kind == 0:
            words = ("GLOB", bucket, "*")  # a whole listing, renamed into place
        elif kind in (1, 2):
            words = ("GLOB", bucket, "cold/*")  # a LIST of cold/, merged page by page
        elif kind == 3:
            words = ("PUSH", bucket, f"pushed/{i:05d}", str(local))  # add_key
        else:
            words = ("PULL", bucket, f"cold/{i % KEYS:05d}")  # add_key unless listed
        status, lines = daemon.request(*words)
        if status != "OK":
            with lock:
                failures.append((words, status, lines[:3]))

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(work, range(ROUNDS)))
    assert failures == [], failures[:5]
    assert len(daemon.ok("GLOB", bucket, "cold/*")) == KEYS
    index = daemon.home / "state" / "listings" / bucket / "index.db"
    db = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        db.close()
    log = daemon.log_text()
    for symptom in ("malformed", "disk I/O error", "readonly database", "database is locked",
                    "internal error"):
        assert symptom not in log, symptom
