"""Unit tests of key validation and the HOMEDIR layout."""

import os

import pytest

from s3pool.errors import BadBucket, BadKey
from s3pool.store.layout import Layout, check_bucket, check_key

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("key", [
    "a", "a/b/c.txt", "with space", "ünïcödé/ключ", "a..b", ".hidden", "x__meta__y",
    "__init__.py", "dir/__list__", "__index__", "__index__-journal", "a" * 247, "d" * 255 + "/x",
])
def test_good_keys(key):
    assert check_key(key) == key


@pytest.mark.parametrize("key", [
    "", "/abs", "a//b", "a/", "../x", "a/../../x", "./a", "a/.", "..", ".",
    "x__meta__", "d/x__meta__/y", "__list__", "a\x00b", "a\nb", "a\rb",
    "a" * 256, "a" * 248, "d/" + "é" * 124, "b/" * 600, "\ud800", "a/\udc80b", "x\udfff",
])
def test_bad_keys(key):
    with pytest.raises(BadKey):
        check_key(key)


@pytest.mark.parametrize("bucket", ["", ".", "..", "a/b", "-x", "a..b", "x" * 300, "a b",
                                    "bkt\n", "bkt\ud800", "\u0661bkt"])
def test_bad_buckets(bucket):
    with pytest.raises(BadBucket):
        check_bucket(bucket)


def test_paths_stay_inside_the_bucket_dir(tmp_path):
    layout = Layout.create(str(tmp_path))
    for sub in ("log", "tmp", "data", "state"):
        assert (tmp_path / sub).is_dir()
    path = layout.object_path("bkt", "a/b")
    assert path == os.path.join(str(tmp_path), "data", "bkt", "a", "b")
    assert layout.meta_path("bkt", "a/b") == path + "__meta__"
    with pytest.raises(BadKey):
        layout.object_path("bkt", "../../etc/passwd")


def test_clear_tmp_removes_partials(tmp_path):
    layout = Layout.create(str(tmp_path))
    (tmp_path / "tmp" / "dl.123").write_bytes(b"partial")
    (tmp_path / "tmp" / "dir").mkdir()
    assert layout.clear_tmp() == 2
    assert os.listdir(tmp_path / "tmp") == []


def test_a_surrogate_key_is_refused_before_any_path_is_built(tmp_path):
    layout = Layout.create(str(tmp_path))
    with pytest.raises(BadKey, match="surrogate"):
        layout.object_path("bkt", "dir/\ud800")
