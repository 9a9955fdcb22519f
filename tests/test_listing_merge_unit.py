"""Unit tests of a directory listing merged into the index (index.merge_page)
and of listing_freshness following freshness_window. Real SQLite files; the
S3 side is the pages a LIST would return."""

from __future__ import annotations

import sqlite3

import pytest

from s3pool.listing.build import write_listing
from s3pool.listing.index import DIR_MARK, merge_page
from s3pool.s3.answers import ListEntry
from s3pool.settings import Settings
from s3pool.store.layout import Layout

pytestmark = pytest.mark.unit


def entry(key: str) -> ListEntry:
    return ListEntry(key, 1, 0.0, '"e"')


def index_with(tmp_path, keys: list[str]) -> sqlite3.Connection:
    layout = Layout.create(str(tmp_path / "home"))
    write_listing(layout, "b", [[entry(k) for k in sorted(keys)]], info={"listed_at": 1.0})
    return sqlite3.connect(layout.index_path("b"))


def rows(db: sqlite3.Connection) -> dict[str, int]:
    return dict(db.execute("SELECT key, size FROM keys ORDER BY key"))


def test_a_directory_page_adds_new_keys_and_drops_deleted_keys_and_subdirectories(tmp_path):
    db = index_with(tmp_path, ["d/a", "d/gone", "d/old/x", "d/old/y", "d/sub/k", "e/z"])
    db.execute("CREATE TABLE IF NOT EXISTS local_adds (key TEXT PRIMARY KEY, added_at REAL)")
    # S3 now: d/a, d/new, d/sub/..., d/fresh/... (a directory the index never saw)
    merge_page(db, "d/", False, None, None, [entry("d/a"), entry("d/new")],
                ["d/fresh/", "d/sub/"], keep_since=0.0)
    assert rows(db) == {"d/a": 1, "d/fresh/": DIR_MARK, "d/new": 1, "d/sub/k": 1, "e/z": 1}


def test_pages_only_touch_their_own_range(tmp_path):
    db = index_with(tmp_path, ["d/a", "d/b", "d/c", "d/m/x", "d/z"])
    db.execute("CREATE TABLE IF NOT EXISTS local_adds (key TEXT PRIMARY KEY, added_at REAL)")
    # first page: up to d/b (d/a is gone); the rest is the next page's business
    merge_page(db, "d/", False, None, "d/b", [entry("d/b")], [], keep_since=0.0)
    assert rows(db) == {"d/b": 1, "d/c": 1, "d/m/x": 1, "d/z": 1}
    # last page: after d/b to the end (d/c and d/m/ are gone)
    merge_page(db, "d/", False, "d/b", None, [entry("d/z")], [], keep_since=0.0)
    assert rows(db) == {"d/b": 1, "d/z": 1}


def test_a_deep_page_replaces_everything_under_the_prefix_but_keeps_recent_local_adds(
        tmp_path):
    db = index_with(tmp_path, ["p/1", "p/q/2", "p/q/3", "pz"])
    db.execute("CREATE TABLE IF NOT EXISTS local_adds (key TEXT PRIMARY KEY, added_at REAL)")
    db.execute("INSERT INTO keys VALUES ('p/pushed', 1, 0, '')")
    db.execute("INSERT INTO local_adds VALUES ('p/pushed', 100.0)")  # PUSHed while listing
    merge_page(db, "p/", True, None, None, [entry("p/q/3"), entry("p/r/4")], [],
                keep_since=50.0)
    assert rows(db) == {"p/pushed": 1, "p/q/3": 1, "p/r/4": 1, "pz": 1}


def test_listing_freshness_follows_freshness_window_until_set():
    settings = Settings()
    assert settings.listing_window == 120.0
    settings.set("freshness_window", "30")
    assert settings.listing_window == 30.0  # follows a later SET
    assert dict(settings.items())["listing_freshness"] == 30.0
    settings.set("listing_freshness", "5")
    settings.set("freshness_window", "60")
    assert settings.listing_window == 5.0  # set itself: no longer follows
    settings.set("listing_freshness", "0")
    assert settings.listing_window == 0.0
    settings.set("listing_freshness", "freshness_window")
    assert settings.listing_window == 60.0


def test_only_the_empty_index_counts_as_never_listed_and_a_written_one_is_dated(tmp_path):
    """A listing written without 'listed_at' (tools, tests, older versions) is
    dated by when it was written, and is never taken for the empty index that
    a NoSuchBucket may remove."""
    import time

    from s3pool.listing.build import create_empty_index
    from s3pool.listing.listings import Listings

    layout = Layout.create(str(tmp_path / "home"))
    write_listing(layout, "written", [[entry("k")]])
    create_empty_index(layout, "empty")
    listings = Listings(layout, backend=None)  # no S3 asked here
    try:
        assert not listings.never_listed("written")
        assert listings.listing_age("written") < 60
        assert abs(listings.listed_at("written", "", True) - time.time()) < 60
        assert listings.never_listed("empty")
        assert listings.listed_at("empty", "", False) == 0.0
        assert not listings.never_listed("absent") and listings.listing_age("absent") is None
    finally:
        listings.close()
