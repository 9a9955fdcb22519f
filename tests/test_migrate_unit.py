"""Unit tests of the HOMEDIR layout migration (migrate.py) on real files."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from s3pool.errors import StartupError
from s3pool.store.layout import LAYOUT_VERSION, Layout
from s3pool.store.migrate import layout_version, migrate

pytestmark = pytest.mark.unit

SCHEMA = """
CREATE TABLE keys (key TEXT PRIMARY KEY, size INTEGER, mtime REAL, etag TEXT) WITHOUT ROWID;
CREATE TABLE info (name TEXT PRIMARY KEY, value);
"""


def old_bucket(layout: Layout, bucket: str, keys=("a", "d/b")) -> None:
    """data/BUCKET as layout 1 left it: objects, metas, __list__, __index__."""
    bucket_dir = layout.data_dir + "/" + bucket
    for key in keys:
        path = f"{bucket_dir}/{key}"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(key)
        with open(path + "__meta__", "w") as f:
            json.dump({"ContentLength": len(key), "ETag": '"e"'}, f)
    with open(f"{bucket_dir}/__list__", "w") as f:
        f.writelines(k + "\n" for k in sorted(keys))
    db = sqlite3.connect(f"{bucket_dir}/__index__")
    db.executescript(SCHEMA)
    db.executemany("INSERT INTO keys VALUES (?, 1, 0, '\"e\"')", [(k,) for k in keys])
    db.commit()
    db.close()


def index_keys(path: str) -> list[str]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [k for (k,) in db.execute("SELECT key FROM keys ORDER BY key")]
    finally:
        db.close()


def test_a_fresh_homedir_gets_the_current_version(tmp_path):
    layout = Layout.create(str(tmp_path))
    assert layout_version(layout) == 1  # no state/layout yet
    assert migrate(layout) == 1
    assert layout_version(layout) == LAYOUT_VERSION
    assert migrate(layout) == LAYOUT_VERSION  # and stays so


def test_layout_1_indexes_move_objects_stay(tmp_path):
    layout = Layout.create(str(tmp_path))
    old_bucket(layout, "good")
    # SQLite's own leftover journal (no meta beside it) goes
    open(tmp_path / "data" / "good" / "__index__-journal", "wb").close()
    old_bucket(layout, "forged")
    # then a cached object took the journal's name (a key PUSHed in layout 1)
    (tmp_path / "data" / "forged" / "__index__-journal").write_text("__index__-journal")
    (tmp_path / "data" / "forged" / "__index__-journal__meta__").write_text("{}")
    old_bucket(layout, "broken")
    (tmp_path / "data" / "broken" / "__index__").write_bytes(b"not a database" * 100)

    migrate(layout)
    assert index_keys(layout.index_path("good")) == ["a", "d/b"]
    for bucket in ("good", "forged", "broken"):
        names = sorted(p.name for p in (tmp_path / "data" / bucket).iterdir())
        assert "__index__" not in names, bucket
    assert not (tmp_path / "data" / "good" / "__index__-journal").exists()
    # the index next to a cached object named like its journal may be forged: dropped,
    # and the object stays
    assert not (tmp_path / "state" / "listings" / "forged").exists()
    assert (tmp_path / "data" / "forged" / "__index__-journal").read_text() == \
        "__index__-journal"
    assert (tmp_path / "data" / "forged" / "__index__-journal__meta__").exists()
    assert not (tmp_path / "state" / "listings" / "broken").exists()
    # objects, metas and __list__ are where they were
    for bucket in ("good", "broken"):
        assert (tmp_path / "data" / bucket / "d" / "b").read_text() == "d/b"
        assert (tmp_path / "data" / bucket / "d" / "b__meta__").exists()
        assert (tmp_path / "data" / bucket / "__list__").read_text() == "a\nd/b\n"
    assert layout_version(layout) == LAYOUT_VERSION


@pytest.mark.parametrize("text", [f"{LAYOUT_VERSION + 1}\n", "two\n", "", "\xff"])
def test_a_newer_or_unreadable_layout_is_refused(tmp_path, text):
    layout = Layout.create(str(tmp_path))
    old_bucket(layout, "bkt")
    (tmp_path / "state" / "layout").write_bytes(text.encode("latin-1"))
    with pytest.raises(StartupError):
        migrate(layout)
    # nothing was touched
    assert (tmp_path / "data" / "bkt" / "__index__").exists()
