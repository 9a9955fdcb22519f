"""The shared cache tier (--shared-cache, issue 20), end to end.

Real daemons as subprocesses, each with its own HOMEDIR; moto's server as
the origin (the session's) and a second server as the tier: moto, and for
the fleet, the corruption and the stopped-tier cases also the embedded
SeaweedFS (the demo's ``weed server``, s3pool.embedded.EmbeddedS3, with its
own credentials, which the daemons take from ``--shared-cache-profile``).
Requests are counted where they arrive (CountingApp), so "the origin saw
one GET of each object" is counted at the origin, not taken from s3pool's
word.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid

import pytest

from conftest import MotoServer, free_port_block, wait_until
from s3pool.download.tier import COLD_MISSES, tier_key
from s3pool.embedded import EmbeddedS3

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]

SMALL = 20  # small objects (read whole with the GET's headers)
BIG = "big/twelve.bin"  # 12 MiB: streamed in parts (download_part_size 8 MiB)
PUBLISHED = ".s3pool/listing.jsonl.gz"


class SeaweedTier:
    """The embedded SeaweedFS as the tier: its own fixed credentials, not the
    origin's, written to a profile the daemons name (--shared-cache-profile)."""

    def __init__(self, where, monkeypatch) -> None:
        self.server = EmbeddedS3(str(where / "tier-s3"), str(where / "tier-s3.log"),
                                 free_port_block())
        self.endpoint = self.server.endpoint_url
        credentials = self.server.credentials()
        profile = where / "tier-credentials"
        profile.write_text("[tier]\n" + "".join(f"{name} = {value}\n"
                                                for name, value in credentials.items()))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(profile))
        self.daemon_args = ["--shared-cache-profile", "tier"]

    def client(self):
        return self.server.client()

    def stop(self) -> None:
        self.server.stop()


# the tier engines of the parametrized tests (the others use moto's CountingApp)
ENGINES = pytest.mark.parametrize("tier", ["moto", "seaweedfs"], indirect=True)


@pytest.fixture
def tier(request, tmp_path, monkeypatch):
    engine = getattr(request, "param", "moto")
    server = SeaweedTier(tmp_path, monkeypatch) if engine == "seaweedfs" else MotoServer()
    yield server
    try:
        server.stop()
    except Exception:  # noqa: BLE001 (a test may have stopped it)
        pass


def _fill(s3, bucket: str) -> dict[str, bytes]:
    objects = {}
    for i in range(SMALL):
        objects[f"small/{i:02d}.bin"] = os.urandom(1000 + 997 * i)
    objects[BIG] = os.urandom(12 << 20)
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)  # one PUT: an MD5 ETag
    return objects


def _tier_args(tier: MotoServer | SeaweedTier, tier_bucket: str, *more: str) -> list[str]:
    return ["--shared-cache", f"s3://{tier_bucket}/fleet/",
            "--shared-cache-endpoint", tier.endpoint, *getattr(tier, "daemon_args", ()),
            *more]


def _user_metadata(head) -> dict[str, str]:
    """A tier object's user metadata, names in lower case (SeaweedFS answers
    them in Go's canonical case, S3pool-Etag: HTTP header names are not)."""
    return {name.lower(): value for name, value in head["Metadata"].items()}


def _new_tier_bucket(tier: MotoServer | SeaweedTier) -> str:
    name = f"tier-{uuid.uuid4().hex[:10]}"
    tier.client().create_bucket(Bucket=name)
    return name


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pull_all(daemon, bucket: str, objects: dict[str, bytes]) -> None:
    for key, body in objects.items():
        [path] = daemon.ok("PULL", bucket, key)
        with open(path, "rb") as f:
            assert _sha(f.read()) == _sha(body), f"{key}: wrong bytes from {daemon.home}"


def _origin_gets(moto_server, bucket: str, keys) -> int:
    return sum(moto_server.app.gets(bucket, key) for key in keys)


def _fetches(objects: dict[str, bytes]) -> int:
    """The GETs of one download of each of *objects*: one per part of
    download_part_size (8 MiB), the first GET asking for the first part only."""
    return sum(max(1, -(-len(body) // (8 << 20))) for body in objects.values())


def _first_host(start_daemon, s3, bucket: str, tier, tmp_path):
    """The objects put in *bucket*, a new tier bucket, the arguments that share
    it, and a first daemon started with them."""
    objects = _fill(s3, bucket)
    tier_bucket = _new_tier_bucket(tier)
    args = _tier_args(tier, tier_bucket)
    return objects, tier_bucket, args, start_daemon(home=tmp_path / "a", args=args)


def _seed(daemon, bucket: str, objects: dict[str, bytes]) -> None:
    """*daemon* pulls *objects* and has uploaded every one of them to the tier."""
    _pull_all(daemon, bucket, objects)
    _uploads_done(daemon, len(objects))


def _uploads_done(daemon, count: int) -> None:
    def done() -> bool:
        status = daemon.status()
        return int(status["shared_cache_uploads"]) + int(status["shared_cache_uploads_kept"]) \
            >= count and status["shared_cache_uploads_queued_bytes"] == "0"
    wait_until(done, 60, f"{count} uploads to the tier by {daemon.home}")


@ENGINES
def test_three_hosts_fetch_each_object_once_from_the_origin(start_daemon, moto_server, s3,
                                                            bucket, tier, tmp_path):
    objects, tier_bucket, args, first = _first_host(start_daemon, s3, bucket, tier, tmp_path)
    second = start_daemon(home=tmp_path / "b", args=args)
    third = start_daemon(home=tmp_path / "c", args=args, mount=True)

    _seed(first, bucket, objects)
    status = first.status()
    # asked until the tier had missed COLD_MISSES in a row; the rest maybe unasked
    assert int(status["shared_cache_misses"]) >= COLD_MISSES, status
    assert int(status["shared_cache_misses"]) + int(status["shared_cache_cold_skips"]) \
        == len(objects), status
    listed = tier.client().list_objects_v2(Bucket=tier_bucket, Prefix="fleet/")
    assert listed["KeyCount"] == len(objects)
    head = tier.client().head_object(Bucket=tier_bucket, Key=listed["Contents"][0]["Key"])
    assert {"s3pool-etag", "s3pool-size", "s3pool-bucket"} <= set(_user_metadata(head))

    # the third host reads a few through its mount first (streamed from the tier)
    for key in (BIG, "small/03.bin", "small/17.bin"):
        with open(third.mountpoint / bucket / key, "rb") as f:
            assert _sha(f.read()) == _sha(objects[key]), key
    _pull_all(second, bucket, objects)
    _pull_all(third, bucket, objects)

    assert _origin_gets(moto_server, bucket, objects) == _fetches(objects), \
        "the origin saw more than one download of some object"
    for daemon in (second, third):
        status = daemon.status()
        assert status["shared_cache_hits"] == str(len(objects)), status
        assert status["shared_cache_fallbacks"] == "0"
        assert status["shared_cache_bytes_from_origin"] == "0"
        assert int(status["shared_cache_bytes_from_tier"]) == sum(map(len, objects.values()))
    assert int(first.status()["shared_cache_bytes_from_origin"]) == \
        sum(map(len, objects.values()))

    # a key changed at the origin: fetched from it once more, never the old bytes
    changed = "small/05.bin"
    new_body = os.urandom(len(objects[changed]))  # same size: only the ETag tells
    s3.put_object(Bucket=bucket, Key=changed, Body=new_body)
    for daemon in (first, second, third):
        daemon.ok("SET", "freshness_window", "0")
    [path] = first.ok("PULL", bucket, changed)
    assert open(path, "rb").read() == new_body
    _uploads_done(first, len(objects) + 1)
    for daemon in (second, third):
        [path] = daemon.ok("PULL", bucket, changed)
        assert open(path, "rb").read() == new_body, "the tier served the old version"
    with open(third.mountpoint / bucket / changed, "rb") as f:
        assert f.read() == new_body
    assert moto_server.app.gets(bucket, changed) == 2
    assert _origin_gets(moto_server, bucket, objects) == _fetches(objects) + 1
    assert third.stop() == 0, third.log_text()


@ENGINES
def test_a_corrupted_tier_is_detected_and_the_origin_read(start_daemon, moto_server, s3,
                                                         bucket, tier, tmp_path):
    objects, tier_bucket, args, first = _first_host(start_daemon, s3, bucket, tier, tmp_path)
    _seed(first, bucket, objects)

    # behind s3pool's back: a flipped byte (same size, same metadata) in a small
    # object and in the big one; and one tier object replaced by another object's
    # bytes, its metadata forged to say it is the right version
    client = tier.client()
    by_etag = {}
    for item in client.list_objects_v2(Bucket=tier_bucket, Prefix="fleet/")["Contents"]:
        head = client.head_object(Bucket=tier_bucket, Key=item["Key"])
        meta = _user_metadata(head)
        by_etag[meta["s3pool-key"]] = (item["Key"], meta)

    def flip(key: str) -> None:
        name, meta = by_etag[key]
        body = bytearray(client.get_object(Bucket=tier_bucket, Key=name)["Body"].read())
        body[len(body) // 2] ^= 0x01
        client.put_object(Bucket=tier_bucket, Key=name, Body=bytes(body), Metadata=meta)

    flip("small/07.bin")
    flip(BIG)
    forged_name, forged_meta = by_etag["small/11.bin"]
    liar = os.urandom(len(objects["small/11.bin"]))
    client.put_object(Bucket=tier_bucket, Key=forged_name, Body=liar, Metadata=forged_meta)
    # the tier copy of another key, under its own name, with metadata claiming small/12
    name12, meta12 = by_etag["small/12.bin"]
    _, meta13 = by_etag["small/13.bin"]
    body13 = client.get_object(Bucket=tier_bucket, Key=by_etag["small/13.bin"][0])["Body"].read()
    client.put_object(Bucket=tier_bucket, Key=name12, Body=body13,
                      Metadata=dict(meta13, **{"s3pool-key": "small/12.bin"}))
    damaged = {"small/07.bin", BIG, "small/11.bin", "small/12.bin"}

    second = start_daemon(home=tmp_path / "b", args=args, mount=True)
    before = {key: moto_server.app.gets(bucket, key) for key in objects}
    # the mount first: a damaged small object opens with the origin's bytes
    with open(second.mountpoint / bucket / "small/07.bin", "rb") as f:
        assert f.read() == objects["small/07.bin"]
    _pull_all(second, bucket, objects)
    for key in objects:
        expected = _fetches({key: objects[key]}) if key in damaged else 0
        assert moto_server.app.gets(bucket, key) - before[key] == expected, key
    status = second.status()
    assert status["shared_cache_fallbacks"] == str(len(damaged)), status
    # the big one counts as a hit when it starts streaming, before its check fails
    assert status["shared_cache_hits"] == str(len(objects) - len(damaged) + 1), status
    assert status["verify_failures"] == "3", status  # flipped twice, forged once
    log = second.log_text()
    assert "shared cache:" in log and "fetching from the origin" in log
    assert second.stop() == 0, second.log_text()


@ENGINES
def test_a_tier_stopped_mid_run_leaves_every_pull_to_the_origin(start_daemon, moto_server, s3,
                                                                bucket, tier, tmp_path):
    objects, tier_bucket, args, first = _first_host(start_daemon, s3, bucket, tier, tmp_path)
    second = start_daemon(home=tmp_path / "b", args=args)
    _seed(first, bucket, objects)
    keys = list(objects)
    half = {key: objects[key] for key in keys[:SMALL // 2]}
    rest = {key: objects[key] for key in keys[SMALL // 2:]}
    _pull_all(second, bucket, half)
    assert second.status()["shared_cache_hits"] == str(len(half))
    tier.stop()
    _pull_all(second, bucket, rest)  # every one served, from the origin
    status = second.status()
    assert int(status["shared_cache_fallbacks"]) >= 1
    assert status["shared_cache_state"].startswith("skipped")  # backoff after 3 in a row
    assert int(status["shared_cache_fallbacks"]) <= 3, "the tier was asked during its backoff"
    assert int(status["shared_cache_bytes_from_origin"]) == sum(map(len, rest.values()))
    assert second.stop() == 0, second.log_text()


def test_a_published_listing_stands_as_the_freshness_check(start_daemon, moto_server, s3,
                                                          bucket, tier, tmp_path):
    objects = _fill(s3, bucket)
    tier_bucket = _new_tier_bucket(tier)
    publisher = start_daemon(home=tmp_path / "a",
                             args=_tier_args(tier, tier_bucket, "--publish-listing"))
    publisher.ok("REFRESH", bucket)
    _pull_all(publisher, bucket, objects)
    _uploads_done(publisher, len(objects))

    reader = start_daemon(home=tmp_path / "b",
                          args=_tier_args(tier, tier_bucket, "--use-published-listing"))
    reader.ok("REFRESH", bucket)
    assert reader.status()["published_listings_used"] == "1"
    paths = {f"/{bucket}/{key}" for key in objects}
    asked_before = sum(1 for r in moto_server.app.requests if r["path"] in paths)
    _pull_all(reader, bucket, objects)
    asked = sum(1 for r in moto_server.app.requests if r["path"] in paths) - asked_before
    assert asked == 0, "the origin was asked about objects the published listing covers"
    status = reader.status()
    assert status["shared_cache_listing_checks"] == str(len(objects))  # positive control
    assert status["shared_cache_hits"] == str(len(objects))

    # once the listing is older than the window, the origin is asked (a HEAD, no GET)
    reader.ok("SET", "freshness_window", "0")
    _pull_all(reader, bucket, {BIG: objects[BIG]})
    heads = [r for r in moto_server.app.requests if r["path"] == f"/{bucket}/{BIG}"]
    assert [r["method"] for r in heads][-1:] == ["HEAD"]
    assert reader.stop() == 0, reader.log_text()


def test_a_tier_that_trickles_is_given_up_and_the_origin_read(start_daemon, moto_server, s3,
                                                              bucket, tier, tmp_path):
    objects = _fill(s3, bucket)
    big = {BIG: objects[BIG]}
    tier_bucket = _new_tier_bucket(tier)
    args = _tier_args(tier, tier_bucket)
    first = start_daemon(home=tmp_path / "a", args=args)
    _seed(first, bucket, big)
    [item] = tier.client().list_objects_v2(Bucket=tier_bucket, Prefix="fleet/")["Contents"]
    # 16 KiB a second: far less than the tier's 1 MiB in 10 s
    tier.app.slow_paths[f"/{tier_bucket}/{item['Key']}"] = 4.0
    second = start_daemon(home=tmp_path / "b", args=args, mount=True)
    # a reader of the mount: the body the tier trickles goes on from the origin
    # where it broke, so the read gets every byte (no EIO)
    with open(second.mountpoint / bucket / BIG, "rb") as f:
        assert _sha(f.read()) == _sha(objects[BIG])
    _pull_all(second, bucket, big)  # installed: right bytes
    # the first host's download (a GET per part), the rest of the body's; a
    # ranged part the tier was also trickling may have gone to the origin too
    assert _fetches(big) + 1 <= moto_server.app.gets(bucket, BIG) <= _fetches(big) + 2
    assert tier.app.gets(tier_bucket, item["Key"]) >= 1  # the tier was asked (control)
    status = second.status()
    assert 1 <= int(status["shared_cache_fallbacks"]) <= 2, status
    assert int(status["shared_cache_bytes_from_tier"]) < len(objects[BIG]), status
    assert int(status["verify_failures"]) == 0, status
    assert "fetching from the origin" in second.log_text()
    assert second.stop() == 0, second.log_text()


def test_an_object_with_only_a_multipart_etag_is_never_read_from_the_tier(
        start_daemon, moto_server, bucket, tier, tmp_path):
    """No MD5 ETag and no full-object checksum: the tier's bytes could be checked
    by their length only, so the object is read from the origin by every host
    and never written to the tier (docs/fleet.md says why)."""
    import boto3
    from botocore.config import Config

    plain = boto3.client("s3", endpoint_url=moto_server.endpoint, region_name="us-east-1",
                         aws_access_key_id="testing", aws_secret_access_key="testing",
                         config=Config(request_checksum_calculation="when_required"))
    key = "multi/part.bin"
    body = os.urandom(11 << 20)
    upload = plain.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    for number, start in enumerate(range(0, len(body), 6 << 20), 1):
        etag = plain.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number,
                                 Body=body[start:start + (6 << 20)])["ETag"]
        parts.append({"ETag": etag, "PartNumber": number})
    plain.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                    MultipartUpload={"Parts": parts})
    head = plain.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-2")
    assert not any(name.startswith("Checksum") and name != "ChecksumType" for name in head)

    tier_bucket = _new_tier_bucket(tier)
    args = _tier_args(tier, tier_bucket)
    hosts = [start_daemon(home=tmp_path / name, args=args) for name in ("a", "b")]
    tier_gets = tier.app.count("GET")
    for host in hosts:
        _pull_all(host, bucket, {key: body})
        status = host.status()
        assert status["shared_cache_unverifiable"] == "1", status
        # an upload is queued before the PULL answers: none queued, none done
        assert status["shared_cache_uploads_queued_bytes"] == "0", status
        assert status["shared_cache_uploads"] == "0"
    # each host from the origin (a GET per part)
    assert moto_server.app.gets(bucket, key) == 2 * _fetches({key: body})
    assert tier.app.count("GET") == tier_gets  # the tier was not asked
    assert tier.client().list_objects_v2(Bucket=tier_bucket).get("KeyCount", 0) == 0


@pytest.mark.parametrize("url", ["http://tier/x", "s3://", "tier-bucket/prefix"])
def test_a_bad_shared_cache_url_is_a_clear_start_up_error(start_daemon, tmp_path, url):
    from conftest import Daemon
    daemon = Daemon(tmp_path / "home", "http://127.0.0.1:9", None, ["--shared-cache", url])
    daemon.start(wait=False)
    assert daemon.process.wait(30) == 2
    daemon.stderr.close()
    log = daemon.log_text()
    assert "--shared-cache wants s3://BUCKET/PREFIX" in log, log
    assert "Traceback" not in log


def _tier_puts(tier, tier_bucket: str) -> int:
    """Objects written to the tier: PUTs that arrived there (counted by the tier)."""
    with tier.app.lock:
        return sum(1 for r in tier.app.requests
                   if r["method"] == "PUT" and r["path"].startswith(f"/{tier_bucket}/fleet/"))


def test_no_upload_while_the_host_fetches_small_objects(start_daemon, moto_server, s3, bucket,
                                                        tier, tmp_path):
    """A small object is read whole by its GET (no download task runs): while
    such a GET is in flight the host is fetching, and an upload to the tier
    waits for it (four hosts missing an empty tier at once ran 1.4-1.9x
    slower than direct when uploads slipped in between small GETs)."""
    first, second = "small/first.bin", "small/second.bin"
    bodies = {first: os.urandom(5000), second: os.urandom(6000)}
    for key, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    tier_bucket = _new_tier_bucket(tier)
    host = start_daemon(home=tmp_path / "a", args=_tier_args(tier, tier_bucket))
    _pull_all(host, bucket, {first: bodies[first]})  # installed: its upload is queued
    gate = threading.Event()
    moto_server.app.held_paths[f"/{bucket}/{second}"] = gate
    pulled: list[list[str]] = []
    puller = threading.Thread(target=lambda: pulled.append(host.ok("PULL", bucket, second)))
    puller.start()
    try:
        wait_until(lambda: moto_server.app.held == 1, 60, "the origin's GET of the second")
        # the host is fetching: the first's upload must not start (the old code
        # wrote it within UPLOAD_DEFER_POLL + UPLOAD_QUIET, 0.7 s; 5 s given)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not _tier_puts(tier, tier_bucket):
            time.sleep(0.05)
        assert _tier_puts(tier, tier_bucket) == 0, "an upload ran beside the host's GET"
    finally:
        gate.set()
        moto_server.app.held_paths.pop(f"/{bucket}/{second}", None)
        puller.join(60)
    assert len(pulled) == 1 and open(pulled[0][0], "rb").read() == bodies[second]
    # positive control: once the host is idle both are written, once each
    wait_until(lambda: _tier_puts(tier, tier_bucket) == 2, 60, "both written to the tier")
    _uploads_done(host, 2)
    assert host.status()["shared_cache_uploads"] == "2"


def test_a_host_starting_on_an_empty_tier_asks_it_one_object_at_a_time(
        start_daemon, moto_server, s3, bucket, tier, tmp_path):
    """One PULL of many objects, an empty tier: the first miss asks the tier
    (after the origin's HEAD), the others wait for its answer instead of each
    sending a HEAD and an ask at once (the old code: one per object, up to
    pull_concurrency); it missed, so they GET the origin unasked while the
    tier is asked one object at a time. A second host, on the tier the first
    filled, PULLs them all at once too: every one from the tier."""
    count = 12
    objects = {f"start/{i:02d}.bin": os.urandom(3000 + i) for i in range(count)}
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    tier_bucket = _new_tier_bucket(tier)
    args = _tier_args(tier, tier_bucket)
    names = {f"/{tier_bucket}/{tier_key('fleet/', bucket, key, hashlib.md5(body).hexdigest())}"
             for key, body in objects.items()}
    gate = threading.Event()  # every ask of the tier waits for it
    for name in names:
        tier.app.held_paths[name] = gate

    def asks() -> int:
        with tier.app.lock:
            return sum(1 for r in tier.app.requests if r["method"] == "GET"
                       and r["path"] in names)

    def heads() -> int:
        with moto_server.app.lock:
            return sum(1 for r in moto_server.app.requests if r["method"] == "HEAD"
                       and r["path"].startswith(f"/{bucket}/start/"))

    first = start_daemon(home=tmp_path / "a", args=args)
    puller = threading.Thread(target=first.ok, args=("PULL", bucket, *objects))
    puller.start()
    try:
        wait_until(lambda: tier.app.held >= 1, 60, "the first ask of the tier")
        # the old code asked for every object at once: give it time to (2 s)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and asks() < 2:
            time.sleep(0.05)
        assert (asks(), heads()) == (1, 1), "more than one ask before the first was answered"
    finally:
        gate.set()
        puller.join(60)
    _pull_all(first, bucket, objects)  # every byte right (cached now)
    status = first.status()
    assert status["shared_cache_hits"] == "0", status
    assert int(status["shared_cache_misses"]) == asks() <= COLD_MISSES, status
    assert int(status["shared_cache_misses"]) + int(status["shared_cache_cold_skips"]) \
        == count, status
    assert heads() == asks()  # a HEAD of the origin only for an object asked of the tier
    assert _origin_gets(moto_server, bucket, objects) == count

    _uploads_done(first, count)
    second = start_daemon(home=tmp_path / "b", args=args)
    second.ok("PULL", bucket, *objects)
    status = second.status()
    assert status["shared_cache_hits"] == str(count), status
    assert status["shared_cache_cold_skips"] == "0", status
    assert _origin_gets(moto_server, bucket, objects) == count  # none more
    _pull_all(second, bucket, objects)


def _uploads_settled(daemon, count: int) -> dict[str, str]:
    """Every one of *count* uploads written, kept or skipped, none queued: STATUS."""
    def settled() -> bool:
        status = daemon.status()
        return sum(int(status[f"shared_cache_{name}"]) for name in (
            "uploads", "uploads_kept", "uploads_skipped", "upload_failures")) >= count \
            and status["shared_cache_uploads_queued_bytes"] == "0"
    wait_until(settled, 300, f"{count} uploads to the tier settled by {daemon.home}")
    return daemon.status()


def test_a_working_set_above_the_old_upload_bound_reaches_the_tier_whole(
        start_daemon, moto_server, s3, bucket, tier, tmp_path):
    """One PULL of 576 MiB (36 objects of 16 MiB): the host fetches the whole
    time, so every upload is still queued when the last object is installed.
    The old code skipped every upload past 512 MiB queued (UPLOAD_BYTES), so the
    tier lacked the last objects and every other host read them from the
    origin. A queued upload is a record now (its bytes stay in the cache file):
    all 36 reach the tier, and a second host reads every one from it."""
    count, size = 36, 16 << 20
    assert count * size > 512 << 20  # the old bound on queued bytes
    base = os.urandom(size)
    sums = {}
    for i in range(count):
        key = f"backlog/{i:02d}.bin"
        body = i.to_bytes(4, "big") + base[4:]  # an ETag of its own
        sums[key] = _sha(body)
        s3.put_object(Bucket=bucket, Key=key, Body=body)  # one PUT: an MD5 ETag
    del base, body
    tier_bucket = _new_tier_bucket(tier)
    args = _tier_args(tier, tier_bucket)
    first = start_daemon(home=tmp_path / "a", args=args)
    first.ok("PULL", bucket, *sums)
    status = _uploads_settled(first, count)
    assert (status["shared_cache_uploads"], status["shared_cache_uploads_skipped"],
            status["shared_cache_upload_failures"]) == (str(count), "0", "0"), status
    listed = tier.client().list_objects_v2(Bucket=tier_bucket, Prefix="fleet/")
    assert listed["KeyCount"] == count

    gets = _origin_gets(moto_server, bucket, sums)
    assert gets == count * 2  # the first host's: two parts of 8 MiB each
    second = start_daemon(home=tmp_path / "b", args=args)
    paths = second.ok("PULL", bucket, *sums)
    assert _origin_gets(moto_server, bucket, sums) == gets, "the second host read the origin"
    status = second.status()
    assert status["shared_cache_hits"] == str(count), status
    assert status["shared_cache_bytes_from_origin"] == "0", status
    assert int(status["shared_cache_bytes_from_tier"]) == count * size, status
    for key, path in zip(sums, paths, strict=True):
        with open(path, "rb") as f:
            assert _sha(f.read()) == sums[key], key
    assert second.stop() == 0, second.log_text()


def test_a_tier_missing_a_run_of_objects_is_still_asked_for_the_rest(
        start_daemon, moto_server, s3, bucket, tier, tmp_path):
    """The tier holds most of a working set but not a run of more than
    COLD_MISSES objects in its middle (another host's set was smaller, or the
    engine's expiry took some). A host PULLing the set one object after the
    other misses that run: the old code then paused the tier (COLD_SECONDS)
    and read the objects after the run from the origin, though the tier had
    them. Only a tier that has not served this host yet is paused that soon."""
    keys = [f"run/{i:02d}.bin" for i in range(40)]
    objects = {key: os.urandom(2000 + 31 * i) for i, key in enumerate(keys)}
    for key, body in objects.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    missing = set(keys[10:10 + COLD_MISSES + 4])
    held = {key: body for key, body in objects.items() if key not in missing}
    tier_bucket = _new_tier_bucket(tier)
    args = _tier_args(tier, tier_bucket)
    first = start_daemon(home=tmp_path / "a", args=args)
    _seed(first, bucket, held)

    second = start_daemon(home=tmp_path / "b", args=args)
    before = {key: moto_server.app.gets(bucket, key) for key in keys}
    _pull_all(second, bucket, objects)  # one PULL after the other, in key order
    read_from_origin = [key for key in keys if moto_server.app.gets(bucket, key) > before[key]]
    assert read_from_origin == [key for key in keys if key in missing]
    status = second.status()
    assert (status["shared_cache_hits"], status["shared_cache_misses"],
            status["shared_cache_cold_skips"]) == (str(len(held)), str(len(missing)), "0"), \
        status
