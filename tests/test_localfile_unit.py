"""Opening the file a PUSH names (s3pool/upload/localfile.py, control/peer.py):
only regular files, another user's with that user's rights, one answer
for what the user cannot reach."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from s3pool.control import peer
from s3pool.errors import LocalFileError
from s3pool.upload.localfile import NotRegularFile, open_as, open_regular

pytestmark = pytest.mark.unit

NOBODY = 65534


@pytest.fixture
def tree():
    """In /tmp: pytest's tmp_path is under a directory only root may search."""
    tmp_path = Path(tempfile.mkdtemp(prefix="s3pool-localfile-", dir="/tmp"))
    os.chmod(tmp_path, 0o755)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "secret").write_text("root only")
    os.mkfifo(private / "fifo", 0o600)
    public = tmp_path / "public"
    public.mkdir(mode=0o755)
    (public / "readable").write_text("anyone")
    os.chmod(public / "readable", 0o644)
    os.mkfifo(public / "fifo", 0o666)
    yield tmp_path
    shutil.rmtree(tmp_path)


def test_open_regular_refuses_fifos_and_devices_without_opening_them(tree):
    fd = open_regular(str(tree / "public" / "readable"))
    try:
        assert os.read(fd, 100) == b"anyone"
    finally:
        os.close(fd)
    # an open of a FIFO with no writer would block (O_RDONLY) if it were tried
    for path in (tree / "public" / "fifo", "/dev/zero", tree / "public"):
        with pytest.raises(NotRegularFile):
            open_regular(str(path))
    with pytest.raises(FileNotFoundError):
        open_regular(str(tree / "missing"))


def test_open_as_another_user_has_that_users_rights(tree):
    assert os.geteuid() == 0, "the helper needs root to become another user"
    fd = open_as(str(tree / "public" / "readable"), NOBODY, {NOBODY})
    try:
        assert os.read(fd, 100) == b"anyone"
    finally:
        os.close(fd)
    for path in (tree / "private" / "secret", tree / "private" / "fifo"):
        with pytest.raises(PermissionError):
            open_as(str(path), NOBODY, {NOBODY})
    with pytest.raises(NotRegularFile):
        open_as(str(tree / "public" / "fifo"), NOBODY, {NOBODY})
    # the group opens what the group may read
    os.chown(tree / "private", 0, 4242)
    os.chmod(tree / "private", 0o750)
    os.chown(tree / "private" / "secret", 0, 4242)
    os.chmod(tree / "private" / "secret", 0o640)
    with pytest.raises(PermissionError):
        open_as(str(tree / "private" / "secret"), NOBODY, {NOBODY})
    os.close(open_as(str(tree / "private" / "secret"), NOBODY, {NOBODY, 4242}))


@pytest.mark.parametrize("as_root", [True, False], ids=["helper", "daemon-not-root"])
def test_one_answer_for_missing_and_not_yours(tree, monkeypatch, as_root):
    if not as_root:  # a daemon that cannot become the user checks the bits itself
        monkeypatch.setattr(peer.os, "geteuid", lambda: 1000)
    answers = set()
    for path in (tree / "private" / "secret", tree / "private" / "fifo",
                 tree / "private" / "missing", tree / "private" / "no" / "such",
                 tree / "public" / "readable" / "under-a-file"):
        with pytest.raises(LocalFileError) as caught:
            peer.open_for_peer(str(path), NOBODY, frozenset({NOBODY}))
        answers.add(str(caught.value).replace(str(path), "PATH"))
    assert answers == {"cannot read 'PATH': no such file, or uid 65534 may not read it"}
    with pytest.raises(LocalFileError, match="not a regular file"):
        peer.open_for_peer(str(tree / "public" / "fifo"), NOBODY, frozenset({NOBODY}))
    fd = peer.open_for_peer(str(tree / "public" / "readable"), NOBODY, frozenset({NOBODY}))
    os.close(fd)
