"""Unit tests of the download mechanism: checked writes, the stall deadline and
the choice of verification (s3pool/s3/progress.py, s3pool/s3/checksums.py,
backend._copy_into)."""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import time
import zlib

import pytest

from s3pool.errors import BackendError, NoSpace
from s3pool.s3 import checksums as checksums_module
from s3pool.s3.backend import _copy_into
from s3pool.s3.checksums import digest_for
from s3pool.s3.progress import Transfer
from s3pool.store.files import write_all

pytestmark = pytest.mark.unit


class FakeBody:
    """A body that hands out *step* bytes a call, sleeping *pause* before each."""

    def __init__(self, data: bytes, step: int, pause: float = 0.0) -> None:
        self.data = data
        self.step = step
        self.pause = pause
        self.offset = 0

    def read(self, amount: int) -> bytes:
        time.sleep(self.pause)
        chunk = self.data[self.offset:self.offset + min(amount, self.step)]
        self.offset += len(chunk)
        return chunk


def _transfer(total: int, timeout: float = 0, stall_bytes: int = 1) -> Transfer:
    return Transfer("b", "k", total, timeout, stall_bytes)


def test_short_writes_are_completed(tmp_path, monkeypatch):
    real_pwrite = os.pwrite
    calls = []

    def short_pwrite(fd, data, offset):
        calls.append(offset)
        return real_pwrite(fd, bytes(data[:1000]), offset)  # a nearly full disk

    data = os.urandom(200_000)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        monkeypatch.setattr(os, "pwrite", short_pwrite)
        written = _copy_into(FakeBody(data, 65536), fd, 0, len(data), _transfer(len(data)))
        monkeypatch.undo()
        assert written == len(data)
        assert len(calls) >= len(data) // 1000  # every chunk took many writes
        assert os.pread(fd, len(data) + 1, 0) == data
    finally:
        os.close(fd)


def test_full_disk_is_nospace_not_a_short_file(tmp_path, monkeypatch):
    real_pwrite = os.pwrite
    state = {"room": 100_000}

    def filling_pwrite(fd, data, offset):
        if state["room"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        part = bytes(data[:state["room"]])
        state["room"] -= len(part)
        return real_pwrite(fd, part, offset)

    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        monkeypatch.setattr(os, "pwrite", filling_pwrite)
        progress = _transfer(300_000)
        with pytest.raises(NoSpace):
            _copy_into(FakeBody(os.urandom(300_000), 65536), fd, 0, 300_000, progress)
        with pytest.raises(BackendError, match="no space"):
            progress.check()  # the other parts of a ranged download stop too
    finally:
        os.close(fd)


def test_write_all_refuses_a_write_that_makes_no_progress(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: 0)
    with pytest.raises(NoSpace):
        write_all(-1, memoryview(b"abc"), 0)


def test_trickle_stalls_within_the_timeout(tmp_path):
    data = os.urandom(1 << 20)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        progress = _transfer(len(data), timeout=0.3, stall_bytes=64 << 10)
        with pytest.raises(BackendError, match=r"download of s3://b/k stalled: \d+ bytes"):
            _copy_into(FakeBody(data, 200, pause=0.01), fd, 0, len(data), progress)
        # ended within the timeout: at 200 bytes in 10 ms, 64 KiB would take 3.3 s
        assert 0 < progress.done < 64 << 10
    finally:
        os.close(fd)


def test_steady_slow_download_is_not_a_stall(tmp_path):
    data = os.urandom(100_000)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        # 10 KiB every 20 ms: each 16 KiB run arrives well within 0.3 s
        progress = _transfer(len(data), timeout=0.3, stall_bytes=16 << 10)
        assert _copy_into(FakeBody(data, 10_000, pause=0.02), fd, 0, len(data),
                          progress) == len(data)
        assert progress.done == len(data)
        assert progress.status_value().startswith(f"s3://b/k {len(data)} {len(data)} ")
    finally:
        os.close(fd)


def test_the_tail_shorter_than_stall_bytes_is_judged_by_what_is_left():
    now = [0.0]
    progress = Transfer("b", "k", 100, 0.05, 1 << 20, clock=lambda: now[0])
    short = Transfer("b", "k", 100, 0.05, 1 << 20, clock=lambda: now[0])
    progress.add(100)
    short.add(99)
    now[0] += 0.1  # past the stall timeout
    progress.check()  # all 100 bytes came: no stall even though < stall_bytes
    with pytest.raises(BackendError, match="stalled"):  # the positive control: one short
        short.check()


def _crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


@pytest.mark.parametrize("etag", ['"{md5}"', "{md5}"])
def test_single_part_etag_md5_with_or_without_quotes(etag):
    data = b"hello world"
    md5 = hashlib.md5(data).hexdigest()
    digest = digest_for({"ETag": etag.format(md5=md5)}, "b", "k")
    assert digest is not None and digest.what == "ETag MD5"
    digest.update(data)
    digest.check()
    wrong = digest_for({"ETag": etag.format(md5=md5)}, "b", "k")
    wrong.update(b"hello worle")
    with pytest.raises(BackendError, match=r"^download of s3://b/k did not match its ETag MD5$"):
        wrong.check()


@pytest.mark.parametrize("response", [
    {"ETag": ""}, {"ETag": '""'}, {},
    {"ETag": '"d41d8cd98f00b204e9800998ecf8427e-3"'},  # multipart
    {"ETag": '"d41d8cd98f00b204e9800998ecf8427e"', "ServerSideEncryption": "aws:kms"},
    {"ETag": '"d41d8cd98f00b204e9800998ecf8427e"', "SSECustomerAlgorithm": "AES256"},
    {"ETag": '"abc"'},
    {"ChecksumCRC32": "AAAAAA==-4", "ChecksumType": "COMPOSITE"},
])
def test_no_usable_validator_means_length_only(response):
    assert digest_for(response, "b", "k") is None


def test_checksum_preferred_over_etag_and_composite_skipped():
    data = os.urandom(5000)
    etag = f'"{hashlib.md5(data).hexdigest()}"'
    digest = digest_for({"ETag": etag, "ChecksumSHA256": base64.b64encode(
        hashlib.sha256(data).digest()).decode(), "ChecksumCRC32": _crc32_b64(data)}, "b", "k")
    assert digest.what == "x-amz-checksum CRC32"
    digest.update(data[:100])
    digest.update(data[100:])
    digest.check()
    composite = digest_for({"ETag": etag, "ChecksumCRC32": "AAAAAA==-2",
                            "ChecksumType": "COMPOSITE"}, "b", "k")
    assert composite.what == "ETag MD5"


def test_digest_of_a_file_assembled_out_of_order(tmp_path):
    data = os.urandom(3 << 20)
    path = tmp_path / "f"
    path.write_bytes(data)
    digest = digest_for({"ChecksumCRC32": _crc32_b64(data)}, "b", "k")
    fd = os.open(path, os.O_RDONLY)
    try:
        digest.update_from_file(fd, 0, 1 << 20)  # in pieces, as ranged parts land
        digest.update_from_file(fd, 1 << 20, len(data) - (1 << 20))
    finally:
        os.close(fd)
    digest.check()


def test_bench_switch_turns_verification_off(monkeypatch):
    monkeypatch.setattr(checksums_module, "VERIFY", False)
    assert digest_for({"ETag": '"d41d8cd98f00b204e9800998ecf8427e"'}, "b", "k") is None
