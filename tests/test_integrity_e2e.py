"""Downloads end to end: never wrong bytes (full disk, corrupted bodies), never
a slot held by a trickling S3, and the progress STATUS shows.

The daemon runs as a subprocess against moto's server, through the fault
proxy of tests/fault_proxy.py where S3 must misbehave.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import threading
import time

import boto3
import pytest
from botocore.config import Config

from conftest import temp_leftovers, wait_until
from fault_proxy import FaultProxy

pytestmark = pytest.mark.e2e

KIB = 1 << 10
MIB = 1 << 20


@pytest.fixture
def proxy(moto_server):
    p = FaultProxy(moto_server.port)
    yield p
    p.stop()


@pytest.fixture
def tmpfs_home(tmp_path):
    """A 50 MB tmpfs as HOMEDIR: a cache disk that fills up."""
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=50m", "tmpfs", str(home)], check=True)
    yield home
    subprocess.run(["umount", "-l", str(home)], check=False)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha(path: str) -> str:
    with open(path, "rb") as f:
        return _sha(f.read())


def _leftovers(home) -> list[str]:
    return temp_leftovers(home)


def _plain_client(moto_server):
    """A client that sends no x-amz-checksum: its objects have only an ETag (MD5)."""
    return boto3.client("s3", endpoint_url=moto_server.endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(request_checksum_calculation="when_required"))


def test_full_cache_disk_never_serves_wrong_bytes(tmpfs_home, start_daemon, s3, bucket):
    """Issue 7.2: concurrent 4 MiB PULLs into a 50 MB cache disk; every OK reply names
    a file with the bytes put into S3, every other reply is a clear ERROR, and what
    is left cached after a restart is right too."""
    expected = {}
    for i in range(60):
        data = os.urandom(4 * MIB)
        s3.put_object(Bucket=bucket, Key=f"k{i:02d}", Body=data)
        expected[f"k{i:02d}"] = _sha(data)
    daemon = start_daemon(home=tmpfs_home)
    wrong: list[str] = []
    errors: list[str] = []
    oks = [0]
    lock = threading.Lock()

    def pull(key: str) -> None:
        status, lines = daemon.request("PULL", bucket, key, timeout=60)
        if status != "OK":
            with lock:
                errors.append(" ".join(lines))
            return
        try:
            digest = _file_sha(lines[0])
        except FileNotFoundError:
            return  # evicted between the reply and our open: nothing to judge
        with lock:
            oks[0] += 1
            if digest != expected[key]:
                wrong.append(key)

    for round_keys in (range(0, 20), range(20, 40), range(40, 60)):  # 80 PULLs of 20 keys each
        threads = [threading.Thread(target=pull, args=(f"k{round_keys[i % 20]:02d}",))
                   for i in range(80)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
    assert not wrong, f"{len(wrong)} of {oks[0]} OK replies had wrong bytes: {wrong}"
    assert oks[0] > 0, errors
    for message in errors:
        assert re.search(r"k\d\d: .*(no space|does not fit)", message), message

    def check_cache_and_pulls() -> None:
        for key, digest in expected.items():
            path = daemon.data / bucket / key
            if (daemon.data / bucket / (key + "__meta__")).exists() and path.exists():
                assert _file_sha(str(path)) == digest, f"cached {key} has wrong bytes"
        for key, digest in expected.items():
            status, lines = daemon.request("PULL", bucket, key)
            if status == "OK":
                assert _file_sha(lines[0]) == digest, f"PULL {key} served wrong bytes"
            else:
                assert re.search(r"no space|does not fit", lines[0]), lines

    check_cache_and_pulls()
    assert daemon.stop() == 0, daemon.log_text()
    daemon = start_daemon(home=tmpfs_home)
    check_cache_and_pulls()
    assert daemon.stop() == 0, daemon.log_text()


def _multipart_crc32(s3, bucket: str, key: str, data: bytes) -> None:
    """*data* uploaded in parts of 5 MiB with a full-object CRC32: its ETag is
    not an MD5 ("...-N"), the CRC32 covers every byte."""
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="CRC32",
                                        ChecksumType="FULL_OBJECT")
    parts = []
    for number, start in enumerate(range(0, len(data), 5 * MIB), 1):
        answer = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"],
                                PartNumber=number, Body=data[start:start + 5 * MIB],
                                ChecksumAlgorithm="CRC32")
        parts.append({"PartNumber": number, "ETag": answer["ETag"],
                      "ChecksumCRC32": answer["ChecksumCRC32"]})
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"],
                                 MultipartUpload={"Parts": parts}, ChecksumType="FULL_OBJECT")


def test_corrupted_body_is_refused_and_not_installed(proxy, moto_server, start_daemon, s3,
                                                    bucket):
    """Issue 7.2: bytes that do not match the ETag MD5 or the x-amz-checksum are
    an ERROR and are never installed; the next clean download is served.

    The first GET asks for the first part (download_part_size, 8 MiB) only:
    an object within it comes whole with its x-amz-checksum; a larger one's
    first answer carries no checksum (S3 sends none with a part), so a HEAD
    gives the full-object checksum (a CRC costs a quarter of an MD5's CPU), and
    an object without one is checked by its ETag's MD5."""
    md5_only = os.urandom(300 * KIB)
    _plain_client(moto_server).put_object(Bucket=bucket, Key="md5", Body=md5_only)
    with_crc = os.urandom(300 * KIB)
    s3.put_object(Bucket=bucket, Key="crc", Body=with_crc)  # boto3 sends a CRC32
    big = os.urandom(64 * MIB + 5 * KIB)  # a ranged download (parts of 8 MiB)
    _plain_client(moto_server).put_object(Bucket=bucket, Key="big", Body=big)
    big_crc = os.urandom(12 * MIB)  # single-part, with a CRC32 only a HEAD tells
    s3.put_object(Bucket=bucket, Key="bigcrc", Body=big_crc)
    multi = os.urandom(12 * MIB)  # two parts of 8 MiB, the second a ranged GET
    _multipart_crc32(s3, bucket, "multi", multi)
    proxy.corrupt[f"/{bucket}/md5"] = 1234
    proxy.corrupt[f"/{bucket}/crc"] = 0
    proxy.corrupt[f"/{bucket}/big"] = 40 * MIB + 7  # inside a ranged part
    proxy.corrupt[f"/{bucket}/multi"] = 10 * MIB + 3  # inside the ranged part
    proxy.corrupt[f"/{bucket}/bigcrc"] = 9 * MIB + 1
    daemon = start_daemon(endpoint=proxy.endpoint)

    for key, check in (("md5", "ETag MD5"), ("crc", "x-amz-checksum CRC32"),
                       ("big", "ETag MD5"), ("multi", "x-amz-checksum CRC32"),
                       ("bigcrc", "x-amz-checksum CRC32")):
        status, lines = daemon.request("PULL", bucket, key)
        assert status == "ERROR", f"{key}: corrupted bytes were served"
        assert lines == [f"{key}: download of s3://{bucket}/{key} did not match its {check}"]
        assert not (daemon.data / bucket / key).exists()
        assert not (daemon.data / bucket / (key + "__meta__")).exists()
    assert _leftovers(daemon.home) == []

    proxy.corrupt.clear()
    for key, data in (("md5", md5_only), ("crc", with_crc), ("big", big), ("multi", multi),
                      ("bigcrc", big_crc)):
        path = daemon.ok("PULL", bucket, key)[0]
        assert _file_sha(path) == _sha(data)
    log = daemon.log_text()
    assert f"downloaded s3://{bucket}/md5 (PULL): {len(md5_only)} bytes" in log
    assert "ETag MD5 verified" in log and "x-amz-checksum CRC32 verified" in log
    # the multipart object's full-object CRC32 (from the HEAD) was checked and kept
    assert int(daemon.status()["verified_crc32"]) == 3  # crc, multi and bigcrc
    meta = json.loads((daemon.data / bucket / "multi__meta__").read_text())
    assert meta["ChecksumCRC32"] == s3.head_object(
        Bucket=bucket, Key="multi", ChecksumMode="ENABLED")["ChecksumCRC32"]
    assert daemon.stop() == 0, daemon.log_text()


def test_trickling_download_fails_and_frees_its_slot(proxy, start_daemon, s3, bucket):
    """Issue 7.5: three PULLs trickled at ~10 KiB/s hold all three slots; they fail
    with an ERROR naming the stall after the stall timeout, an unrelated PULL gets a
    slot meanwhile, and nothing is left in tmp/ or installed."""
    slow = {f"slow{i}": os.urandom(1 * MIB) for i in range(3)}
    for key, data in slow.items():
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        proxy.trickle[f"/{bucket}/{key}"] = (1 * KIB, 0.1)
    fast = os.urandom(200 * KIB)
    s3.put_object(Bucket=bucket, Key="fast", Body=fast)
    daemon = start_daemon(endpoint=proxy.endpoint, args=[
        "--pull-concurrency", "3", "--download-stall-timeout", "1.5",
        "--download-stall-bytes", "64K"])
    replies: dict[str, tuple[str, list[str]]] = {}

    def pull(key: str) -> None:
        replies[key] = daemon.request("PULL", bucket, key, timeout=30)

    threads = [threading.Thread(target=pull, args=(key,)) for key in slow]
    for t in threads:
        t.start()
    # every slot is held by a trickle (each would take 100 s to end by itself)
    wait_until(lambda: proxy.trickling >= 3, what="the trickled GETs to start")
    # the stalls end them and free a slot: the PULL gets its turn well within its
    # timeout (a stall not seen would hold every slot for 100 s)
    status, lines = daemon.request("PULL", bucket, "fast", timeout=20)
    assert status == "OK", lines
    assert _file_sha(lines[0]) == _sha(fast)
    for t in threads:
        t.join(30)
    for key in slow:
        status, lines = replies[key]
        assert status == "ERROR"
        assert re.fullmatch(rf"{key}: download of s3://{bucket}/{key} stalled: .*", lines[0]), lines
    for key in slow:
        assert not (daemon.data / bucket / key).exists()
    assert _leftovers(daemon.home) == []
    assert "download " not in "\n".join(daemon.ok("STATUS"))
    assert daemon.stop() == 0, daemon.log_text()


def test_status_lists_downloads_in_flight(proxy, start_daemon, s3, bucket):
    """Issue 9.5: STATUS has one `download s3://B/K DONE TOTAL ELAPSED` line per
    download in flight, after the counters; a finished download is logged at INFO."""
    sizes = {"slowA": 600 * KIB, "slowB": 400 * KIB}  # 3.8 s and 2.5 s at 160 KiB/s
    for key, size in sizes.items():
        s3.put_object(Bucket=bucket, Key=key, Body=os.urandom(size))
        proxy.trickle[f"/{bucket}/{key}"] = (8 * KIB, 0.05)
    daemon = start_daemon(endpoint=proxy.endpoint, args=["-v", "1"])
    threads = [threading.Thread(target=daemon.request, args=("PULL", bucket, key))
               for key in sizes]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while True:
        lines = daemon.ok("STATUS")
        downloads = [line for line in lines if line.startswith("download ")]
        if len(downloads) == 2 and all(int(line.split()[2]) > 0 for line in downloads):
            break
        assert time.monotonic() < deadline, lines
        time.sleep(0.05)
    names = [line.split(" ", 1)[0] for line in lines]
    assert names.index("download") > names.index("downloads")  # after the counters
    seen = set()
    for line in downloads:
        match = re.fullmatch(rf"download s3://{bucket}/(slow[AB]) (\d+) (\d+) (\d+\.\d)", line)
        assert match, line
        key, done, total = match.group(1), int(match.group(2)), int(match.group(3))
        assert total == sizes[key] and 0 < done < total, line
        seen.add(key)
    assert seen == set(sizes)
    for t in threads:
        t.join(30)
    assert not [line for line in daemon.ok("STATUS") if line.startswith("download ")]
    log = "\n".join(open(os.path.join(daemon.home, "log", name)).read()
                    for name in os.listdir(daemon.home / "log") if name.endswith(".log"))
    for key, size in sizes.items():
        assert re.search(rf"INFO .*downloaded s3://{bucket}/{key} \(PULL\): {size} bytes in "
                         r"[\d.]+s, [\d.]+ MiB/s", log), log[-3000:]
    assert daemon.stop() == 0, daemon.log_text()
