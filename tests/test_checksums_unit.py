"""Unit tests of s3pool/s3/checksums.py: which check an answer allows, the CRCs
against their published check values, and the counts STATUS shows."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest

from s3pool.errors import DigestMismatch
from s3pool.s3.checksums import KINDS, Verifications, digest_for, full_object_checksums

pytestmark = pytest.mark.unit

# the standard check values: each CRC of b"123456789" (CRC-64/NVME, CRC-32C, CRC-32)
CHECK = {
    "ChecksumCRC64NVME": 0xAE8B14860A799888 .to_bytes(8, "big"),
    "ChecksumCRC32C": 0xE3069283 .to_bytes(4, "big"),
    "ChecksumCRC32": 0xCBF43926 .to_bytes(4, "big"),
    "ChecksumSHA1": hashlib.sha1(b"123456789").digest(),
    "ChecksumSHA256": hashlib.sha256(b"123456789").digest(),
}
NAME = {"ChecksumCRC64NVME": ("CRC64NVME", "crc64nvme"), "ChecksumCRC32C": ("CRC32C", "crc32c"),
        "ChecksumCRC32": ("CRC32", "crc32"), "ChecksumSHA1": ("SHA-1", "sha"),
        "ChecksumSHA256": ("SHA-256", "sha")}


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.mark.parametrize("field", list(CHECK))
@pytest.mark.parametrize("checksum_type", [None, "FULL_OBJECT"])
def test_each_checksum_verifies_its_check_value_in_any_pieces(field, checksum_type):
    response = {"ETag": '"0123456789abcdef0123456789abcdef-3"', field: _b64(CHECK[field])}
    if checksum_type:
        response["ChecksumType"] = checksum_type
    digest = digest_for(response, "b", "k")
    assert digest is not None
    assert (digest.what, digest.kind) == (f"x-amz-checksum {NAME[field][0]}", NAME[field][1])
    for piece in (b"1", b"2345", memoryview(b"6789")):
        digest.update(piece)
    digest.check()
    wrong = digest_for(response, "b", "k")
    wrong.update(b"123456780")
    with pytest.raises(DigestMismatch, match=rf"^download of s3://b/k did not match its "
                                             rf"x-amz-checksum {NAME[field][0]}$"):
        wrong.check()


def test_a_crc_over_a_file_read_back_in_pieces(tmp_path):
    """Ranged parts are hashed from the file in order once they landed: the
    CRC of the pieces is the CRC of the whole."""
    from awscrt import checksums

    data = os.urandom((3 << 20) + 17)
    path = tmp_path / "f"
    path.write_bytes(data)
    digest = digest_for({"ChecksumCRC64NVME": _b64(checksums.crc64nvme(data).to_bytes(8, "big")),
                         "ChecksumType": "FULL_OBJECT"}, "b", "k")
    fd = os.open(path, os.O_RDONLY)
    try:
        digest.update_from_file(fd, 0, 1 << 20)
        digest.update_from_file(fd, 1 << 20, len(data) - (1 << 20))
    finally:
        os.close(fd)
    digest.check()


@pytest.mark.parametrize("response", [
    # a checksum of part checksums: no check of the whole, and the multipart ETag none either
    {"ETag": '"0123456789abcdef0123456789abcdef-2"', "ChecksumCRC64NVME": "AAAAAAAAAAA=-2",
     "ChecksumType": "COMPOSITE"},
    {"ETag": '"0123456789abcdef0123456789abcdef-2"', "ChecksumCRC32C": "AAAAAA==",
     "ChecksumType": "COMPOSITE"},
    {"ETag": '"0123456789abcdef0123456789abcdef-2"', "ChecksumSHA256": "not base64!"},
])
def test_composite_or_unreadable_checksums_check_the_length_only(response):
    assert digest_for(response, "b", "k") is None


def test_a_composite_checksum_without_its_suffix_is_not_trusted_either():
    """A gateway that dropped the "-N": not a checksum of the bytes, whatever the
    ETag looks like; the single-part ETag's MD5 checks the object instead."""
    md5 = hashlib.md5(b"123456789").hexdigest()
    response = {"ETag": f'"{md5}"', "ChecksumType": "COMPOSITE",
                "ChecksumCRC32C": _b64(CHECK["ChecksumCRC32C"])}
    assert digest_for(response, "b", "k").kind == "md5"
    assert full_object_checksums(response) == {}


def test_full_object_checksums_kept_in_the_meta():
    assert full_object_checksums({"ChecksumCRC64NVME": "rosUhgp5mIg=",
                                  "ChecksumType": "FULL_OBJECT", "ETag": '"a-3"'}) == {
        "ChecksumCRC64NVME": "rosUhgp5mIg=", "ChecksumType": "FULL_OBJECT"}
    assert full_object_checksums({"ChecksumCRC32": "AAAAAA==-3", "ChecksumType": "COMPOSITE",
                                  "ETag": '"a-3"'}) == {}
    assert full_object_checksums({"ETag": '"a"'}) == {}


def test_verifications_count_installs_per_kind_and_mismatches():
    counts = Verifications()
    good = digest_for({"ChecksumCRC32": _b64(CHECK["ChecksumCRC32"])}, "b", "k")
    good.update(b"123456789")
    counts.check(good)
    counts.installed(good)
    counts.installed(None)
    bad = digest_for({"ChecksumCRC64NVME": _b64(CHECK["ChecksumCRC64NVME"])}, "b", "k")
    bad.update(b"12345678")
    with pytest.raises(DigestMismatch):
        counts.check(bad)
    lines = dict(counts.status_lines())
    assert [name for name, _ in counts.status_lines()] == [
        *(f"verified_{kind}" for kind in KINDS), "verify_failures"]
    assert lines["verified_crc32"] == 1 and lines["verified_length_only"] == 1
    assert lines["verify_failures"] == 1
    assert sum(lines[f"verified_{kind}"] for kind in KINDS) == 2


def _reader():
    from s3pool.download.download import Reader

    return Reader(None, -1, {})  # completes() touches neither the download nor the fd


def test_a_reader_completes_the_object_with_the_read_that_covers_its_last_gap():
    size = 10 << 20
    reader = _reader()
    assert [reader.completes(start, start + (1 << 20), size)
            for start in range(0, size, 1 << 20)] == [False] * 9 + [True]
    assert not reader.completes(0, 4096, size)  # read again: not a second time
    # the kernel's read-ahead sends the last read before the one ahead of it
    reader = _reader()
    assert not reader.completes(0, 4 << 20, size)
    assert not reader.completes(8 << 20, size, size)
    assert reader.completes(4 << 20, 8 << 20, size)
    # a footer first, then the rest in order: the read that fills the gap completes it
    reader = _reader()
    assert not reader.completes(size - 65536, size, size)
    assert not reader.completes(0, 1 << 20, size)
    assert reader.completes(1 << 20, size - 65536, size)


def test_readers_of_part_of_the_object_never_complete_it():
    size = 10 << 20
    footer = _reader()
    assert not footer.completes(size - 65536, size, size)
    header_and_footer = _reader()
    assert not header_and_footer.completes(0, 4096, size)
    assert not header_and_footer.completes(size - 65536, size, size)
    scattered = _reader()  # reads far ahead of its prefix: given up after 256
    for i in range(300):
        assert not scattered.completes(size - (i + 1) * 1024, size - i * 1024, size)
    assert not scattered.completes(0, size, size)
