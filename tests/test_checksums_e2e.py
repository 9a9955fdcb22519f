"""Full-object checksums end to end (issue 16.5): every object S3 gives a
full-object checksum for (CRC64NVME, CRC32C, CRC32, SHA-1, SHA-256), single-part
or multipart, is verified over all of its bytes before it is installed, before
a PULL answers and before a reader of the mount gets its last bytes; STATUS
counts the verified objects per kind.

moto's server (over real HTTP) returns checksums only for objects written
with one, so the objects here are written with each algorithm; the real
daemon runs as a subprocess, on the lean GET path and on boto3's
(S3POOL_LEAN_GET=0), with a FUSE mount. Corrupted answers come from the
fault proxy of tests/fault_proxy.py: a flipped byte (right length), or the
right bytes under a wrong checksum header.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import urllib.request

import boto3
import pytest
from botocore.config import Config

from conftest import free_port, fuse_available, temp_leftovers, wait_until
from fault_proxy import FaultProxy

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]

KIB = 1 << 10
MIB = 1 << 20
KINDS = ("md5", "crc64nvme", "crc32c", "crc32", "sha", "length_only")
# boto3's ChecksumAlgorithm -> the STATUS kind that counts it
ALGORITHMS = {"CRC64NVME": "crc64nvme", "CRC32C": "crc32c", "CRC32": "crc32",
              "SHA256": "sha", "SHA1": "sha"}
PART_SIZE = "4M"  # the daemon's download_part_size: 12 MiB comes in three ranged parts


@pytest.fixture(params=["lean", "boto3"])
def http_path(request, monkeypatch):
    """Both of the daemon's GET paths: its own lean GETs and boto3's."""
    monkeypatch.setenv("S3POOL_LEAN_GET", "1" if request.param == "lean" else "0")
    return request.param


@pytest.fixture
def proxy(moto_server):
    p = FaultProxy(moto_server.port)
    yield p
    p.stop()


def _plain_client(moto_server):
    """A client that sends no checksum: its objects have only an ETag."""
    return boto3.client("s3", endpoint_url=moto_server.endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(request_checksum_calculation="when_required",
                                      response_checksum_validation="when_required"))


def _multipart(s3, bucket: str, key: str, data: bytes, algorithm: str, checksum_type: str
               ) -> None:
    """Upload *data* in parts of 5 MiB with *algorithm*'s checksum of that type."""
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm=algorithm,
                                        ChecksumType=checksum_type)
    parts = []
    for number, start in enumerate(range(0, len(data), 5 * MIB), 1):
        answer = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"],
                                PartNumber=number, Body=data[start:start + 5 * MIB],
                                ChecksumAlgorithm=algorithm)
        parts.append({"PartNumber": number, "ETag": answer["ETag"],
                      **{name: value for name, value in answer.items()
                         if name.startswith("Checksum") and name != "ChecksumType"}})
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": parts}, ChecksumType=checksum_type)


def _write_objects(moto_server, s3, bucket: str) -> dict[str, tuple[bytes, str]]:
    """key -> (bytes, the kind that must verify it): 1 KiB and 3 MiB single-part
    objects with each algorithm and with none (ETag MD5), 12 MiB multipart
    objects with full-object CRCs, and one with a composite checksum (length only)."""
    objects: dict[str, tuple[bytes, str]] = {}
    for algorithm, kind in ALGORITHMS.items():
        for size_name, size in (("1k", KIB), ("3m", 3 * MIB)):
            key = f"{algorithm.lower()}/{size_name}"
            data = os.urandom(size)
            s3.put_object(Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm=algorithm)
            objects[key] = (data, kind)
    for algorithm in ("CRC64NVME", "CRC32C", "CRC32"):
        key = f"{algorithm.lower()}/12m-multipart"
        data = os.urandom(12 * MIB)
        _multipart(s3, bucket, key, data, algorithm, "FULL_OBJECT")
        objects[key] = (data, ALGORITHMS[algorithm])
    plain = _plain_client(moto_server)
    for size_name, size in (("1k", KIB), ("3m", 3 * MIB)):
        data = os.urandom(size)
        plain.put_object(Bucket=bucket, Key=f"md5/{size_name}", Body=data)
        objects[f"md5/{size_name}"] = (data, "md5")
    data = os.urandom(12 * MIB)
    _multipart(s3, bucket, "composite/12m-multipart", data, "SHA256", "COMPOSITE")
    objects["composite/12m-multipart"] = (data, "length_only")
    return objects


def _expected_counts(objects: dict[str, tuple[bytes, str]]) -> dict[str, int]:
    counts = dict.fromkeys(KINDS, 0)
    for _, kind in objects.values():
        counts[kind] += 1
    return counts


def _counts(daemon) -> dict[str, int]:
    status = daemon.status()
    return {kind: int(status[f"verified_{kind}"]) for kind in KINDS}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_objects_of_every_checksum_are_verified_and_counted(http_path, moto_server, s3,
                                                             start_daemon, tmp_path):
    """PULL and a cold read through the mount of objects written with each
    algorithm, single-part and multipart: the right bytes, each counted once as
    the kind that verified it; the meta keeps the checksum S3 gave."""
    fuse_available()
    pulled, mounted = (f"b-{http_path}-pull", f"b-{http_path}-mount")
    objects = {}
    for bucket in (pulled, mounted):
        s3.create_bucket(Bucket=bucket)
        objects[bucket] = _write_objects(moto_server, s3, bucket)
    metrics_port = free_port()
    daemon = start_daemon(mount=True, args=["--download-part-size", PART_SIZE,
                                            "--metrics-port", str(metrics_port)])
    assert _counts(daemon) == dict.fromkeys(KINDS, 0)

    for key, (data, _) in objects[pulled].items():
        [path] = daemon.ok("PULL", pulled, key)
        assert _sha(_read(path)) == _sha(data), key
    assert _counts(daemon) == _expected_counts(objects[pulled])

    for key, (data, _) in objects[mounted].items():
        assert _sha(_read(daemon.mountpoint / mounted / key)) == _sha(data), key
    expected = _expected_counts(objects[mounted])
    expected = {kind: 2 * count for kind, count in expected.items()}
    # a reader through the mount is served as the bytes land: the download it
    # read from is counted once it is installed, which may come just after
    wait_until(lambda: _counts(daemon) == expected, what=f"the counts {expected}")
    assert daemon.status()["verify_failures"] == "0"
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as answer:
        exported = dict(line.rsplit(" ", 1) for line in answer.read().decode().splitlines()
                        if line.startswith("s3pool_verif"))
    assert {name: float(value) for name, value in exported.items()} == {
        **{f"s3pool_verified_{kind}_total": float(count) for kind, count in expected.items()},
        "s3pool_verify_failures_total": 0.0}

    meta = json.loads(_read(daemon.data / pulled / "crc64nvme/12m-multipart__meta__"))
    assert meta["ChecksumType"] == "FULL_OBJECT"
    head = s3.head_object(Bucket=pulled, Key="crc64nvme/12m-multipart", ChecksumMode="ENABLED")
    assert meta["ChecksumCRC64NVME"] == head["ChecksumCRC64NVME"]
    meta = json.loads(_read(daemon.data / pulled / "crc32c/1k__meta__"))
    assert meta["ChecksumCRC32C"] == s3.head_object(
        Bucket=pulled, Key="crc32c/1k", ChecksumMode="ENABLED")["ChecksumCRC32C"]
    assert "ChecksumSHA256" not in json.loads(
        _read(daemon.data / pulled / "composite/12m-multipart__meta__"))  # not full-object
    log = daemon.log_text()
    for name in ("CRC64NVME", "CRC32C", "CRC32", "SHA-256", "SHA-1"):
        assert f"x-amz-checksum {name} verified" in log, name
    assert daemon.stop() == 0, daemon.log_text()

    # restarted: the objects and their metas (checksums in them) are served as
    # they are, revalidated by ETag (304), not downloaded or checked again
    def bodies(key: str) -> int:  # GETs of the key S3 answered with bytes (not a 304)
        return moto_server.app.gets(pulled, key) - moto_server.app.gets(pulled, key, status=304)

    full_gets = {key: bodies(key) for key in objects[pulled]}
    assert all(full_gets.values()), full_gets  # each was downloaded once
    again = start_daemon(home=daemon.home, args=["--download-part-size", PART_SIZE])
    for key, (data, _) in objects[pulled].items():
        [path] = again.ok("PULL", pulled, key)
        assert _sha(_read(path)) == _sha(data), key
        assert bodies(key) == full_gets[key], key
    assert again.status()["downloads"] == "0"
    assert _counts(again) == dict.fromkeys(KINDS, 0)
    assert json.loads(_read(again.data / pulled / "crc64nvme/12m-multipart__meta__")) \
        ["ChecksumCRC64NVME"] == head["ChecksumCRC64NVME"]
    assert again.stop() == 0, again.log_text()


# key -> how its answer is spoiled: ("flip", offset) or ("header", None)
SPOILED = {
    "crc64nvme/1k": ("flip", 100),
    "crc32c/3m": ("flip", 2 * MIB + 5),
    "sha256/3m": ("flip", 3 * MIB - 1),  # the very last byte
    "crc32/12m-multipart": ("flip", 9 * MIB + 3),  # inside a ranged part
    "crc64nvme/12m-multipart": ("flip", 7),  # inside the first GET's part
    "crc32c/12m-multipart": ("header", None),  # right bytes, wrong checksum
}
CHECK_NAME = {"crc64nvme": "CRC64NVME", "crc32c": "CRC32C", "crc32": "CRC32",
              "sha256": "SHA-256"}


def test_corrupted_answers_are_refused(http_path, moto_server, s3, proxy, start_daemon):
    """A flipped byte (length unchanged) or a wrong checksum header: the PULL is
    an ERROR naming the check, nothing is installed, a read through the mount
    fails with EIO (the object's last bytes wait for the check), each mismatch
    is counted; once S3 answers right again the same objects are served right,
    through the mount too (no page of the refused download is kept)."""
    fuse_available()
    bucket = f"b-{http_path}-spoiled"
    s3.create_bucket(Bucket=bucket)
    objects = _write_objects(moto_server, s3, bucket)
    for key, (how, offset) in SPOILED.items():
        if how == "flip":
            proxy.corrupt[f"/{bucket}/{key}"] = offset
        else:
            proxy.spoil_checksum.add(f"/{bucket}/{key}")
    daemon = start_daemon(mount=True, endpoint=proxy.endpoint,
                          # no directory read-ahead: only the files read are fetched
                          args=["--download-part-size", PART_SIZE, "--prefetch-files", "0"])

    wrong = []  # every key's defect, so one run shows them all
    for key in SPOILED:
        status, lines = daemon.request("PULL", bucket, key)
        algorithm = key.split("/")[0]
        expected = [f"{key}: download of s3://{bucket}/{key} did not match its "
                    f"x-amz-checksum {CHECK_NAME[algorithm]}"]
        installed = (daemon.data / bucket / key).exists() \
            or (daemon.data / bucket / f"{key}__meta__").exists()
        if (status, lines) != ("ERROR", expected) or installed:
            wrong.append((key, status, lines, "installed" if installed else "not installed"))
    assert wrong == [], "\n".join(map(str, wrong))
    assert temp_leftovers(daemon.home) == []
    status = daemon.status()
    # each PULL tries three times (two digest retries)
    assert int(status["verify_failures"]) == 3 * len(SPOILED)
    assert _counts(daemon) == dict.fromkeys(KINDS, 0)

    for key in SPOILED:
        try:
            data = _read(daemon.mountpoint / bucket / key)
        except OSError as exc:
            if exc.errno != errno.EIO:
                wrong.append((key, "mount", os.strerror(exc.errno or 0)))
        else:
            wrong.append((key, "mount read", "right" if data == objects[key][0]
                          else "WRONG", "bytes"))
        if (daemon.data / bucket / key).exists():
            wrong.append((key, "installed after the mount read"))
    assert wrong == [], "\n".join(map(str, wrong))
    # a footer first (its bytes are not the damaged ones), then the whole file:
    # the read that fills the gap fails
    key = "crc32/12m-multipart"
    with open(daemon.mountpoint / bucket / key, "rb") as f:
        f.seek(-65536, os.SEEK_END)
        assert f.read() == objects[key][0][-65536:]
        f.seek(0)
        with pytest.raises(OSError) as caught:
            f.read()
        assert caught.value.errno == errno.EIO
    assert int(daemon.status()["verify_failures"]) > 3 * len(SPOILED)
    assert _counts(daemon) == dict.fromkeys(KINDS, 0)

    proxy.corrupt.clear()
    proxy.spoil_checksum.clear()
    for key in SPOILED:
        assert _sha(_read(daemon.mountpoint / bucket / key)) == _sha(objects[key][0]), key
        [path] = daemon.ok("PULL", bucket, key)
        assert _sha(_read(path)) == _sha(objects[key][0]), key
    counts = _counts(daemon)
    assert sum(counts.values()) == len(SPOILED)
    assert counts["crc64nvme"] == 2 and counts["crc32c"] == 2
    assert daemon.stop() == 0, daemon.log_text()
