"""Unit tests of the one API for files in HOMEDIR/tmp/ (store/files.py): made
with O_EXCL and a private mode, named for who made them, removed on failure,
swept at start-up; and no other module makes files there on its own."""

from __future__ import annotations

import ast
import os
import pathlib
import stat

import pytest

from s3pool.errors import BackendError
from s3pool.listing.build import ListingNotWritten, write_listing
from s3pool.s3.answers import ListEntry
from s3pool.store.files import new_temp, replace_file, sweep_temp, temp_path, unlink_quietly
from s3pool.store.layout import Layout

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parent.parent / "s3pool"


def test_a_temp_file_is_new_private_and_says_who_made_it(tmp_path):
    old = os.umask(0o022)
    try:
        fd, path = new_temp(str(tmp_path), "dl", "my-bucket")
    finally:
        os.umask(old)
    try:
        assert os.write(fd, b"abc") == 3
        assert os.pread(fd, 3, 0) == b"abc"
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)
    name = os.path.basename(path)
    assert os.path.dirname(path) == str(tmp_path)
    assert name.startswith("dl.my-bucket.") and f".{os.getpid()}." in name
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    fd2, path2 = new_temp(str(tmp_path), "dl", "my-bucket")
    os.close(fd2)
    assert path2 != path  # never the same file twice


def test_a_temp_file_name_stays_in_the_directory(tmp_path):
    fd, path = new_temp(str(tmp_path), "list", "../../etc/" + "x" * 300)
    os.close(fd)
    assert os.path.dirname(path) == str(tmp_path)
    assert len(os.path.basename(path)) < 120
    for who in ("", "DL", "dl.", "a/b", "x" * 40):
        with pytest.raises(ValueError):
            new_temp(str(tmp_path), who)


def test_a_temp_file_never_follows_or_reuses_what_is_there(tmp_path, monkeypatch):
    import secrets

    target = tmp_path / "target"
    target.write_bytes(b"keep")
    tokens = iter(["aaaaaaaaaaaa", "aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(tokens))
    taken = tmp_path / f"put.{os.getpid()}.aaaaaaaaaaaa"
    os.symlink(target, taken)  # a name already there, a link someone left
    fd, path = new_temp(str(tmp_path), "put")
    os.close(fd)
    assert path == str(tmp_path / f"put.{os.getpid()}.bbbbbbbbbbbb")
    assert target.read_bytes() == b"keep"


def test_temp_path_removes_the_file_whatever_happens(tmp_path):
    with pytest.raises(RuntimeError):
        with temp_path(str(tmp_path), "index", "b") as path:
            assert os.path.exists(path)
            raise RuntimeError("the writer failed")
    assert os.listdir(tmp_path) == []
    with temp_path(str(tmp_path), "index", "b") as path:
        os.rename(path, tmp_path / "installed")  # renamed out of tmp/: nothing to remove
    assert os.listdir(tmp_path) == ["installed"]
    assert unlink_quietly(str(tmp_path / "installed"))
    assert not unlink_quietly(str(tmp_path / "none"))


def test_replace_file_puts_the_whole_file_in_place_or_leaves_the_old_one(tmp_path):
    tmp_dir, state = tmp_path / "tmp", tmp_path / "state"
    tmp_dir.mkdir()
    state.mkdir()
    replace_file(str(tmp_dir), "layout", str(state / "layout"), b"2\n")
    replace_file(str(tmp_dir), "layout", str(state / "layout"), b"3\n")
    assert (state / "layout").read_bytes() == b"3\n"
    assert os.listdir(tmp_dir) == []
    (state / "taken").mkdir()  # the rename fails: the temp file goes, nothing else changes
    (state / "taken" / "x").write_bytes(b"")
    with pytest.raises(OSError):
        replace_file(str(tmp_dir), "layout", str(state / "taken"), b"4\n")
    assert os.listdir(tmp_dir) == [] and os.listdir(state / "taken") == ["x"]


def test_the_sweep_removes_everything_left_in_tmp(tmp_path):
    fd, _ = new_temp(str(tmp_path), "dl")
    os.close(fd)
    (tmp_path / "index.b.1.2").write_bytes(b"")
    (tmp_path / "somedir").mkdir()
    (tmp_path / "somedir" / "f").write_bytes(b"")
    assert sweep_temp(str(tmp_path)) == 3
    assert os.listdir(tmp_path) == []


def test_a_listing_that_fails_half_way_leaves_nothing_in_tmp_and_the_old_listing_stands(
        tmp_path):
    layout = Layout.create(str(tmp_path / "home"))
    write_listing(layout, "b", [[ListEntry("old", 1, 0.0, "")]])

    def pages():
        yield [ListEntry("new1", 1, 0.0, "")]
        raise BackendError("the LIST broke off")

    with pytest.raises(BackendError):
        write_listing(layout, "b", pages())
    assert os.listdir(layout.tmp_dir) == []
    with open(layout.list_path("b")) as f:
        assert f.read() == "old\n"
    os.rmdir(layout.tmp_dir)  # nowhere to make the temp files: a clear error
    with pytest.raises(ListingNotWritten, match="cannot write the listing of s3://b"):
        write_listing(layout, "b", [[ListEntry("x", 1, 0.0, "")]])
    with open(layout.list_path("b")) as f:
        assert f.read() == "old\n"


def _tmp_makers(path: pathlib.Path) -> list[str]:
    """Places in *path* that make a file in tmp/ without store/files.py."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) \
                else [node.module or ""]
            if "tempfile" in names:
                found.append(f"{path.name}:{node.lineno} imports tempfile")
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "os.path.join" and \
                any("tmp_dir" in ast.unparse(arg) for arg in node.args):
            found.append(f"{path.name}:{node.lineno} builds a name in tmp/")
    return found


def test_no_module_makes_files_in_tmp_on_its_own():
    found = [place for path in sorted(ROOT.rglob("*.py"))
             if path != ROOT / "store" / "files.py" for place in _tmp_makers(path)]
    assert found == []
