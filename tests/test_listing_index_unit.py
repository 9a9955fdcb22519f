"""Unit tests of the listing index's versions (listing/index.py): every index
written carries PRAGMA user_version; an index of the old schema (version 0,
before local_adds, dirs and versions) is read as it is and brought forward by
its first write; an index of any other version, or no index at all, is never
served, never written into, and replaced by the next listing. Real SQLite
files, a fake S3 (tests/fakes.py)."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest

from fakes import FakeBackend
from helpers import user_version
from s3pool.listing.build import create_empty_index, write_listing
from s3pool.listing.index import VERSION
from s3pool.listing.listings import Listings
from s3pool.s3.answers import ListEntry
from s3pool.store.layout import Layout

pytestmark = pytest.mark.unit

# what s3pool wrote before local_adds, dirs and PRAGMA user_version
OLD_SCHEMA = """
CREATE TABLE keys (key TEXT PRIMARY KEY, size INTEGER, mtime REAL, etag TEXT) WITHOUT ROWID;
CREATE TABLE info (name TEXT PRIMARY KEY, value);
"""
LISTED_AT = 1_700_000_000.0


def tables(path: str) -> set[str]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master "
                                               "WHERE type = 'table'")}
    finally:
        db.close()


def old_index(layout: Layout, bucket: str, keys: list[str]) -> str:
    """The listing of *bucket* as an older s3pool left it (version 0)."""
    os.makedirs(layout.listing_dir(bucket), exist_ok=True)
    os.makedirs(layout.bucket_dir(bucket), exist_ok=True)
    path = layout.index_path(bucket)
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.executemany("INSERT INTO keys VALUES (?, ?, ?, ?)",
                   [(k, 10 + i, 1.0, f'"e{i}"') for i, k in enumerate(sorted(keys))])
    db.executemany("INSERT INTO info VALUES (?, ?)", [
        ("source", "s3"), ("listed_at", LISTED_AT), ("count", len(keys)),
        ("refreshed_at", LISTED_AT)])
    db.commit()
    db.close()
    with open(layout.list_path(bucket), "w") as f:
        f.writelines(k + "\n" for k in sorted(keys))
    return path


def unusable_index(layout: Layout, bucket: str, kind: str) -> str:
    """An index file this s3pool must not read: of a newer version (the same
    tables, rows meaning who knows what), of version 0 without the columns
    of a listing index, or no SQLite file at all."""
    os.makedirs(layout.listing_dir(bucket), exist_ok=True)
    path = layout.index_path(bucket)
    if kind == "garbage":
        with open(path, "wb") as f:
            f.write(b"not a database, " * 512)
        return path
    db = sqlite3.connect(path)
    if kind == "newer":
        db.executescript(OLD_SCHEMA + f"PRAGMA user_version = {VERSION + 1};")
        db.execute("INSERT INTO keys VALUES ('ghost', 7, 1.0, '\"g\"')")
        db.execute("INSERT INTO info VALUES ('count', 1)")
    else:  # "foreign": version 0, other columns
        db.executescript("CREATE TABLE keys (name TEXT PRIMARY KEY, blob BLOB);"
                         "CREATE TABLE info (name TEXT PRIMARY KEY, value);")
        db.execute("INSERT INTO keys VALUES ('ghost', x'00')")
    db.commit()
    db.close()
    return path


def test_every_index_written_carries_the_schema_version(tmp_path):
    layout = Layout.create(str(tmp_path / "home"))
    write_listing(layout, "written", [[ListEntry("k", 1, 0.0, '"e"')]])
    create_empty_index(layout, "empty")
    assert user_version(layout.index_path("written")) == VERSION
    assert user_version(layout.index_path("empty")) == VERSION
    assert VERSION >= 1  # version 0 is "written before versions"
    assert os.listdir(layout.tmp_dir) == []


async def test_an_index_of_the_old_schema_is_read_then_brought_forward_by_its_first_write(
        tmp_path):
    layout = Layout.create(str(tmp_path / "home"))
    path = old_index(layout, "bkt", ["a", "d/b"])
    backend = FakeBackend(("bkt",))
    backend.put("bkt", "d/b", b"0123456789a")
    backend.put("bkt", "d/c", b"new")
    listings = Listings(layout, backend)
    try:
        # served as it is, without a LIST: the keys, the directories, its age
        assert listings.has_index("bkt") and not listings.never_listed("bkt")
        assert listings.key_info("bkt", "a") == (10, 1.0, '"e0"')
        assert [e.name for e in listings.iter_children("bkt", "")] == ["a", "d"]
        assert listings.listed_at("bkt", "d/", False) == LISTED_AT  # no dirs table yet
        assert await listings.glob("bkt", "**") == ["a", "d/b"]
        assert user_version(path) == 0 and "local_adds" not in tables(path)

        # the first write brings it to the current version in place
        await listings.add_key("bkt", ListEntry("pushed", 3, 2.0, '"p"'))
        assert user_version(path) == VERSION
        assert {"keys", "info", "local_adds", "dirs"} <= tables(path)
        assert listings.key_info("bkt", "pushed") == (3, 2.0, '"p"')
        assert listings.key_info("bkt", "a") == (10, 1.0, '"e0"')  # nothing lost

        # a directory's LIST merges into it and is dated in it
        job = await listings.fresh("bkt", "d/", False, 0.0)
        assert job is not None
        await job.wait()
        assert listings.key_info("bkt", "d/c") == (3, backend.objects[("bkt", "d/c")]
                                                   .last_modified.timestamp(),
                                                   backend.objects[("bkt", "d/c")].etag)
        assert listings.listed_at("bkt", "d/", False) >= job.started
        assert backend.calls["iter_listing"] == 0  # never listed whole
    finally:
        listings.close()


@pytest.mark.parametrize("kind", ["newer", "foreign", "garbage"])
async def test_an_index_of_an_unknown_version_is_never_served_and_is_replaced(tmp_path, kind):
    layout = Layout.create(str(tmp_path / "home"))
    path = unusable_index(layout, "bkt", kind)
    with open(path, "rb") as f:
        before = f.read()
    backend = FakeBackend(("bkt",))
    backend.put("bkt", "real", b"12345")
    listings = Listings(layout, backend)
    try:
        # not read: as if there were none
        assert not listings.has_index("bkt")
        assert listings.key_info("bkt", "ghost") is None
        assert listings.lookup("bkt", "", "ghost") is None
        assert list(listings.iter_children("bkt", "")) == []
        assert listings.listing_age("bkt") is None and listings.key_count("bkt") == 0
        assert not listings.never_listed("bkt")
        # not written into
        await listings.add_key("bkt", ListEntry("pushed", 3, 2.0, '"p"'))
        await listings.remove_key("bkt", "ghost")
        with open(path, "rb") as f:
            assert f.read() == before

        # the mount's first look puts the empty index in its place...
        await listings.ensure_index("bkt")
        assert listings.has_index("bkt") and listings.never_listed("bkt")
        assert user_version(path) == VERSION
        assert listings.key_info("bkt", "ghost") is None
        # ...and the whole listing replaces that
        assert await listings.refresh("bkt") == 1
        assert listings.key_info("bkt", "real") is not None
        assert await listings.glob("bkt", "**") == ["real"]
    finally:
        listings.close()
    assert os.listdir(layout.tmp_dir) == []


@pytest.mark.parametrize("kind", ["newer", "garbage"])
async def test_a_refresh_replaces_an_unusable_index(tmp_path, kind):
    layout = Layout.create(str(tmp_path / "home"))
    path = unusable_index(layout, "bkt", kind)
    backend = FakeBackend(("bkt",))
    backend.put("bkt", "real", b"12345")
    listings = Listings(layout, backend)
    try:
        assert await listings.refresh("bkt") == 1
        assert user_version(path) == VERSION
        assert listings.has_index("bkt") and listings.key_info("bkt", "ghost") is None
        assert [e.name for e in listings.iter_children("bkt", "")] == ["real"]
        assert time.time() - listings.listing_age("bkt") > 0
    finally:
        listings.close()
