"""No key reaches a file s3pool keeps for itself, and an old HOMEDIR is moved,
not misread (issue 17, point 1).

The listing indexes used to live in the key namespace as
``data/BUCKET/__index__``: a key ``__index__-journal`` was SQLite's rollback
journal. They live under ``state/`` now, and ``state/layout`` says which
layout a HOMEDIR has. The daemon runs as root, the client as nobody.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time

import pytest

from helpers import reply_as_nobody
from s3pool.store.layout import LAYOUT_VERSION

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]

# SQLite's rollback-journal magic, then junk: what a hostile key may hold
JOURNAL_GARBAGE = bytes.fromhex("d9d505f920a163d7") + bytes(range(256)) * 16


def our_files_in(bucket_dir) -> list[str]:
    """Files at the top of a BUCKETDIR that are no cached object (no meta beside them)."""
    names = set(os.listdir(bucket_dir))
    return sorted(n for n in names
                  if not n.endswith("__meta__") and n + "__meta__" not in names
                  and not os.path.isdir(os.path.join(bucket_dir, n)))


def test_a_key_named_like_sqlites_journal_is_just_a_key(start_daemon, s3, bucket, public_dir):
    keys = {"a.txt": b"alpha\n", "dir/b.txt": b"beta\n", "dir/c.txt": b"gamma\n"}
    for key, body in keys.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    daemon = start_daemon(mount=True, args=["--bucket", bucket])
    root = daemon.mountpoint / bucket
    assert sorted(os.listdir(root)) == ["a.txt", "dir"]

    garbage = os.path.join(public_dir, "garbage")
    with open(garbage, "wb") as f:
        f.write(JOURNAL_GARBAGE)
    os.chmod(garbage, 0o644)
    for name in ("__index__-journal", "__index__-wal", "__index__"):
        assert reply_as_nobody(daemon.port, "PUSH", bucket, name, garbage) == ("OK", []), name
        status, lines = reply_as_nobody(daemon.port, "PULL", bucket, name)
        assert status == "OK", (name, lines)
        with open(lines[0], "rb") as f:
            assert f.read() == JOURNAL_GARBAGE
    pushed = ["__index__", "__index__-journal", "__index__-wal"]

    # the listing is intact: GLOB, PULL and the mount show the bucket as it is
    assert reply_as_nobody(daemon.port, "GLOB", bucket, "**") == ("OK", sorted([*keys, *pushed]))
    status, lines = reply_as_nobody(daemon.port, "PULL", bucket, "dir/b.txt")
    assert status == "OK", lines
    with open(lines[0], "rb") as f:
        assert f.read() == b"beta\n"
    assert sorted(os.listdir(root)) == sorted(["a.txt", "dir", *pushed])
    assert sorted(os.listdir(root / "dir")) == ["b.txt", "c.txt"]
    assert (root / "dir" / "c.txt").read_bytes() == b"gamma\n"
    assert (root / "__index__-journal").read_bytes() == JOURNAL_GARBAGE
    # a REFRESH afterwards builds a listing that holds the same
    assert daemon.ok("REFRESH", bucket) == []
    assert daemon.ok("GLOB", bucket, "**") == sorted([*keys, *pushed])
    assert sorted(os.listdir(root)) == sorted(["a.txt", "dir", *pushed])
    # nothing of s3pool's own sits in the BUCKETDIR but __list__
    assert our_files_in(daemon.data / bucket) == ["__list__"]
    assert daemon.stop() == 0, daemon.log_text()


# --- the previous layout ---------------------------------------------------

OLD_SCHEMA = """
CREATE TABLE keys (key TEXT PRIMARY KEY, size INTEGER, mtime REAL, etag TEXT) WITHOUT ROWID;
CREATE TABLE info (name TEXT PRIMARY KEY, value);
CREATE TABLE local_adds (key TEXT PRIMARY KEY, added_at REAL) WITHOUT ROWID;
"""


def write_old_layout(home, bucket: str, s3, objects: dict[str, bytes]) -> None:
    """A HOMEDIR as the previous release left it: data/BUCKET/__index__ beside
    __list__, objects with their metas, no state/layout."""
    bucket_dir = home / "data" / bucket
    entries = []
    for key, body in objects.items():
        head = s3.head_object(Bucket=bucket, Key=key)
        path = bucket_dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        meta = {"AcceptRanges": "bytes",
                "LastModified": head["LastModified"].strftime("%a, %d %b %Y %H:%M:%S GMT"),
                "ContentLength": len(body), "ETag": head["ETag"],
                "ContentType": head.get("ContentType", "binary/octet-stream"), "Metadata": {}}
        (bucket_dir / (key + "__meta__")).write_text(json.dumps(meta, indent=4) + "\n")
        entries.append((key, len(body), head["LastModified"].timestamp(), head["ETag"]))
    entries.sort()
    (bucket_dir / "__list__").write_text("".join(e[0] + "\n" for e in entries))
    db = sqlite3.connect(bucket_dir / "__index__")
    db.executescript(OLD_SCHEMA)
    db.executemany("INSERT INTO keys VALUES (?, ?, ?, ?)", entries)
    db.executemany("INSERT INTO info VALUES (?, ?)",
                   [("source", "s3"), ("listed_at", time.time()), ("count", len(entries)),
                    ("refreshed_at", time.time())])
    db.commit()
    db.close()
    (bucket_dir / "__index__-journal").write_bytes(b"")  # SQLite's leftover, empty
    (home / "state").mkdir(parents=True, exist_ok=True)


def test_a_homedir_of_the_previous_layout_is_moved_and_served_without_download(
        start_daemon, s3, bucket, moto_server, tmp_path):
    objects = {"one.txt": b"first object\n", "deep/two.bin": bytes(range(256)) * 40,
               "deep/er/three.txt": b"third\n"}
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    home = tmp_path / "oldhome"
    write_old_layout(home, bucket, s3, objects)
    before = len(moto_server.app.requests)

    daemon = start_daemon(mount=True, home=home, args=["--bucket", bucket])
    root = daemon.mountpoint / bucket
    # the old index was moved under state/, the BUCKETDIR keeps __list__ only
    assert our_files_in(home / "data" / bucket) == ["__list__"]
    assert (home / "state" / "layout").read_text().split()[0] == str(LAYOUT_VERSION)
    # served from the migrated listing and the cached objects: no LIST, no GET
    assert daemon.ok("GLOB", bucket, "**") == sorted(objects)
    assert sorted(os.listdir(root)) == ["deep", "one.txt"]
    assert os.stat(root / "deep" / "two.bin").st_size == len(objects["deep/two.bin"])
    for key, body in objects.items():
        [path] = daemon.ok("PULL", bucket, key)
        assert path == str(home / "data" / bucket / key)
        with open(path, "rb") as f:
            assert f.read() == body
    assert (root / "deep" / "er" / "three.txt").read_bytes() == b"third\n"
    for key in objects:
        # the ETag check is a conditional GET that S3 answers 304: no body (every
        # GET of the key, whatever else it would be, 200 or a first part's 206)
        assert moto_server.app.gets(bucket, key, status=304) >= 1, key
        assert moto_server.app.gets(bucket, key) == \
            moto_server.app.gets(bucket, key, status=304), key
    lists = [r for r in moto_server.app.requests[before:]
             if r["method"] == "GET" and r["path"] == f"/{bucket}" and "list-type" in r["query"]]
    assert lists == [], "the migrated listing was listed again"
    assert daemon.stop() == 0, daemon.log_text()

    # a second start finds the new layout and leaves it as it is
    again = start_daemon(home=home, args=["--bucket", bucket])
    assert again.ok("GLOB", bucket, "deep/**") == ["deep/er/three.txt", "deep/two.bin"]
    assert again.stop() == 0, again.log_text()


def test_a_homedir_of_a_newer_layout_is_refused(start_daemon, tmp_path):
    home = tmp_path / "newer"
    (home / "state").mkdir(parents=True)
    (home / "state" / "layout").write_text(f"{LAYOUT_VERSION + 1}\n")
    with pytest.raises(AssertionError, match="layout"):
        start_daemon(home=home)
