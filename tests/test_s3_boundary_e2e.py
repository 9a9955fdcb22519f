"""The S3 boundary (issue 16): every byte served is S3's, every S3 request has a deadline.

The real daemon (subprocess, FUSE mount) talks to moto's server through
:class:`hostile_s3.HostileS3`, which mangles the answers by a mode chosen
per test. For each mode, three objects (1 KiB and 3 MiB single-part,
12 MiB multipart) are each read three ways (PULL; a mount read from the
start; a mount read of the last 64 KiB first), each from a key of its
own so every trial is cold. Every OK reply and every byte read is checked
against the object's sha256; an error must be a clean one (no "internal
error"), nothing may hang, STATUS must answer after every trial, and the
legal variants must be served right.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import request
from hostile_s3 import MODES, HostileS3

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]

KIB, MIB = 1 << 10, 1 << 20
DEADLINE = 3  # download_stall_timeout of these daemons, seconds
TRIAL_LIMIT = 60.0  # a trial that takes longer than this hangs
ACCESSES = ("pull", "read_start", "read_tail")
OBJECTS = ("small", "mid", "multi")
DAEMON_ARGS = ["--download-part-size", "4M", "--download-stall-timeout", str(DEADLINE)]

# what must be served right in each legal mode: object names (all accesses)
MUST_SERVE = {
    "honest": set(OBJECTS),
    "chunked": set(OBJECTS),
    "no_length": set(OBJECTS),
    "year_9999": set(OBJECTS),
    # the whole object wanted: a 200 to the Range is the object (the 12 MiB one
    # is fetched in 4 MiB parts, where a 200 must be refused)
    "whole_200": {"small", "mid"},
}
TRICKLES = ("trickle_head", "trickle_body")


@pytest.fixture(scope="module")
def objects(moto_server):
    """The bucket and its objects: name -> bytes, each under one key per access."""
    s3 = moto_server.client()
    bucket = f"hostile-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    data = {"small": os.urandom(KIB), "mid": os.urandom(3 * MIB),
            "multi": os.urandom(12 * MIB)}
    for access in ACCESSES:
        s3.put_object(Bucket=bucket, Key=f"{access}/small", Body=data["small"])
        s3.put_object(Bucket=bucket, Key=f"{access}/mid", Body=data["mid"])
        key = f"{access}/multi"
        upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        parts = []
        for number, start in enumerate(range(0, len(data["multi"]), 5 * MIB), 1):
            etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number,
                                  Body=data["multi"][start:start + 5 * MIB])["ETag"]
            parts.append({"ETag": etag, "PartNumber": number})
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                     MultipartUpload={"Parts": parts})
        assert s3.head_object(Bucket=bucket, Key=key)["ETag"].endswith('-3"')
    s3.put_object(Bucket=bucket, Key="honest/one", Body=b"honest bytes")
    return bucket, data


@pytest.fixture(scope="module")
def hostile(moto_server):
    server = HostileS3(moto_server.port).start()
    yield server
    server.stop()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Trial:
    """One access of one object; the outcome is 'ok' or an error text."""

    def __init__(self, daemon, bucket: str, name: str, access: str, data: bytes) -> None:
        self.daemon, self.bucket, self.name, self.access = daemon, bucket, name, access
        self.key = f"{access}/{name}"
        self.data = data
        self.outcome: str | None = None
        self.wrong: str | None = None  # a wrong byte served: the worst outcome
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            getattr(self, self.access)()
        except Exception as exc:  # noqa: BLE001 (the outcome is judged by the test)
            self.outcome = f"test error {exc!r}"

    def pull(self) -> None:
        status, lines = request(self.daemon.port, "PULL", self.bucket, self.key,
                                timeout=TRIAL_LIMIT)
        if status != "OK":
            self.outcome = f"{status} {lines}"
            return
        with open(lines[0], "rb") as f:
            got = f.read()
        if _sha(got) != _sha(self.data):
            self.wrong = f"PULL gave {len(got)} bytes, not the object's {len(self.data)}"
        self.outcome = "ok"

    def read_start(self) -> None:
        path = self.daemon.mountpoint / self.bucket / self.key
        got = bytearray()
        try:
            with open(path, "rb", buffering=0) as f:
                while True:
                    chunk = f.read(MIB)
                    if not chunk:
                        break
                    got += chunk
        except OSError as exc:
            self.outcome = f"errno {errno.errorcode.get(exc.errno or 0, exc.errno)}"
            if bytes(got) != self.data[:len(got)]:
                self.wrong = f"the {len(got)} bytes read before the error are not the object's"
            return
        if _sha(bytes(got)) != _sha(self.data):
            self.wrong = f"read {len(got)} bytes, not the object's {len(self.data)}"
        self.outcome = "ok"

    def read_tail(self) -> None:
        path = self.daemon.mountpoint / self.bucket / self.key
        start = max(0, len(self.data) - 64 * KIB)
        expected = self.data[start:]
        got = bytearray()
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                # a read the kernel cut in FUSE requests may come back short when a
                # later request fails: the next read then says why
                while len(got) < len(expected):
                    chunk = os.pread(fd, len(expected) - len(got), start + len(got))
                    if not chunk:
                        break
                    got += chunk
            finally:
                os.close(fd)
        except OSError as exc:
            self.outcome = f"errno {errno.errorcode.get(exc.errno or 0, exc.errno)}"
            if bytes(got) != expected[:len(got)]:
                self.wrong = f"the {len(got)} bytes read before the error are not the object's"
            return
        if _sha(bytes(got)) != _sha(expected):
            self.wrong = f"the last 64 KiB read were {len(got)} wrong bytes"
        self.outcome = "ok"


def _run_mode(mode: str, start_daemon, hostile: HostileS3, objects) -> list[Trial]:
    bucket, data = objects
    hostile.mode = "honest"  # the daemon's start-up and listing are not the test
    hostile.drop_connections()
    daemon = start_daemon(mount=True, args=["--bucket", bucket, *DAEMON_ARGS],
                          endpoint=hostile.endpoint)
    for access in ACCESSES:  # the listing is in: lookups need no S3
        assert sorted(os.listdir(daemon.mountpoint / bucket / access)) == sorted(OBJECTS)
    hostile.mode = mode
    trials = [Trial(daemon, bucket, name, access, data[name])
              for name in OBJECTS for access in ACCESSES]
    concurrent = mode in TRICKLES  # each waits out a deadline: wait for them at once
    for trial in trials:
        trial.thread.start()
        if not concurrent:
            _finish(trial, daemon, mode)
    for trial in trials:
        _finish(trial, daemon, mode)
    # what was installed is listed and stat'ed without an internal error (a year 9999
    # Last-Modified is kept in the meta and the listing)
    status, lines = request(daemon.port, "GLOB", bucket, "*", timeout=TRIAL_LIMIT)
    assert status == "OK", (mode, status, lines)
    for trial in trials:
        try:
            os.stat(daemon.mountpoint / bucket / trial.key)
        except OSError as exc:
            assert exc.errno in (errno.EIO, errno.ENOENT, errno.ESTALE), (mode, exc)

    def pull_again(trial: Trial) -> None:
        status, lines = request(daemon.port, "PULL", bucket, trial.key, timeout=TRIAL_LIMIT)
        assert "internal error" not in f"{status} {lines}".lower(), (mode, status, lines)

    # trickled PULLs each wait out the deadline: all at once, as the trials did
    with ThreadPoolExecutor(len(trials) if concurrent else 1) as pool:
        list(pool.map(pull_again, trials))
    if mode == "honest":  # the path under test is the one that answered
        lean_gets = int(daemon.status()["s3_lean_gets"])
        assert (lean_gets > 0) == (os.environ.get("S3POOL_LEAN_GET") != "0"), lean_gets
    hostile.mode = "honest"
    assert daemon.stop() == 0, daemon.log_text()[-3000:]
    return trials


def _finish(trial: Trial, daemon, mode: str) -> None:
    trial.thread.join(TRIAL_LIMIT + 10)
    what = f"{mode}: {trial.access} of {trial.name}"
    assert not trial.thread.is_alive(), f"{what} hangs"
    assert trial.wrong is None, f"{what}: WRONG BYTES: {trial.wrong}"
    assert trial.outcome is not None
    assert "internal error" not in trial.outcome.lower(), f"{what}: {trial.outcome}"
    assert not trial.outcome.startswith("test error"), f"{what}: {trial.outcome}"
    status, _ = request(daemon.port, "STATUS", timeout=10)
    assert status == "OK", f"{what}: STATUS answered {status}"
    if trial.name in MUST_SERVE.get(mode, ()):
        assert trial.outcome == "ok", f"{what} (legal) was not served: {trial.outcome}"


MATRIX = [mode for mode in MODES if mode != "trickle_meta"]


@pytest.fixture(params=["lean", "boto3"])
def http_path(request, monkeypatch):
    """Both of the daemon's GET paths: its own (s3http) and boto3's (S3POOL_LEAN_GET=0)."""
    if request.param == "boto3":
        monkeypatch.setenv("S3POOL_LEAN_GET", "0")
    return request.param


@pytest.mark.parametrize("mode", MATRIX)
def test_hostile_answers_never_serve_a_wrong_byte(mode, http_path, start_daemon, hostile,
                                                  objects):
    before = hostile.mangled
    trials = _run_mode(mode, start_daemon, hostile, objects)
    if mode != "honest":
        assert hostile.mangled > before, "the endpoint changed no answer: the test tests nothing"
    outcomes = {f"{t.access}/{t.name}": t.outcome for t in trials}
    if mode == "new_version":
        # a reader of the mount whose version changed under it: ESTALE (mountpoint-s3's)
        read_errors = [outcome for trial, outcome in zip(trials, outcomes.values(), strict=False)
                       if trial.access != "pull" and outcome != "ok"]
        assert read_errors and set(read_errors) == {"errno ESTALE"}, outcomes
    if mode in ("etag_lf", "etag_cr", "etag_ctl"):
        # the ETag is never sent back (If-Match, If-None-Match) with its injected line,
        # and the object is not served with it
        assert hostile.sent_back(b"x-injected") == 0
        assert all(outcome != "ok" for outcome in outcomes.values()), outcomes
    if mode in ("long_body", "chunked_empty", "cut_body", "new_version", "other_range",
                "range_long"):
        # what cannot be the object is never served as it (the sha check above),
        # and for these modes something had to be refused
        assert any(outcome != "ok" for outcome in outcomes.values()), outcomes


def _status_lines(daemon) -> list[str]:
    status, lines = request(daemon.port, "STATUS", timeout=10)
    assert status == "OK"
    return lines


def _wait_for(predicate, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_trickles_hold_no_slot_and_show_in_status(http_path, start_daemon, hostile, objects):
    """Trickled headers and a trickled small body each end at the deadline; meanwhile
    STATUS shows them in flight and an unrelated PULL is answered."""
    bucket, data = objects
    hostile.mode = "honest"
    hostile.drop_connections()
    daemon = start_daemon(args=["--pull-concurrency", "2", *DAEMON_ARGS],
                          endpoint=hostile.endpoint)
    results: dict[str, tuple[str, list[str]]] = {}

    def pull(key: str) -> None:
        results[key] = request(daemon.port, "PULL", bucket, key, timeout=TRIAL_LIMIT)

    hostile.mode = "trickle_head"
    first = threading.Thread(target=pull, args=("pull/small",))
    first.start()
    _wait_for(lambda: any(line.startswith("s3_request GetObject s3://" + bucket + "/pull/small")
                          for line in _status_lines(daemon)),
              "STATUS to show the trickled GET in flight")
    hostile.mode = "trickle_body"
    second = threading.Thread(target=pull, args=("read_start/small",))
    second.start()
    _wait_for(lambda: any("/read_start/small" in line and line.startswith("s3_request")
                          for line in _status_lines(daemon)),
              "STATUS to show the trickled body in flight")
    # both download slots are taken by trickles: an honest key still gets its answer
    status, lines = request(daemon.port, "PULL", bucket, "honest/one", timeout=TRIAL_LIMIT)
    assert status == "OK", (status, lines)
    with open(lines[0], "rb") as f:
        assert f.read() == b"honest bytes"
    for thread in (first, second):
        thread.join(TRIAL_LIMIT + 10)
        assert not thread.is_alive()
    for key in ("pull/small", "read_start/small"):
        status, lines = results[key]
        assert status.startswith("ERROR"), (key, status, lines)
        assert "internal error" not in status.lower()
    _wait_for(lambda: not any(line.startswith("s3_request") for line in _status_lines(daemon)),
              "STATUS to show no S3 request in flight")
    hostile.mode = "honest"
    assert daemon.stop() == 0


def test_sigterm_stops_the_daemon_whatever_s3_does(http_path, start_daemon, hostile, objects):
    bucket, _ = objects
    hostile.mode = "honest"
    hostile.drop_connections()
    # a deadline far away: only the stop can end these requests
    daemon = start_daemon(args=["--download-part-size", "4M", "--download-stall-timeout", "600"],
                          endpoint=hostile.endpoint)
    hostile.mode = "trickle_head"
    threads = [threading.Thread(target=request, args=(daemon.port, "PULL", bucket, key),
                                kwargs={"timeout": TRIAL_LIMIT}, daemon=True)
               for key in ("pull/small", "pull/mid")]
    for thread in threads:
        thread.start()
    _wait_for(lambda: sum(line.startswith("s3_request") for line in _status_lines(daemon)) >= 2,
              "both GETs in flight")
    daemon.process.send_signal(signal.SIGTERM)
    try:
        code = daemon.process.wait(20)  # STOP_GRACE is 5 s
    except Exception:
        raise AssertionError("SIGTERM did not stop the daemon while S3 trickled") from None
    finally:
        hostile.mode = "honest"
    assert code == 0, daemon.log_text()[-3000:]


def test_head_and_list_have_deadlines(start_daemon, hostile, objects):
    """A trickled LIST (GLOB, the mount's listing) and HEAD (a lookup the listing
    lacks) end at the deadline, and show in STATUS while they wait."""
    bucket, _ = objects
    hostile.mode = "trickle_meta"
    hostile.drop_connections()
    daemon = start_daemon(mount=True, args=DAEMON_ARGS, endpoint=hostile.endpoint)
    results: dict[str, object] = {}

    def glob() -> None:
        results["glob"] = request(daemon.port, "GLOB", bucket, "pull/*", timeout=TRIAL_LIMIT)

    def lookup() -> None:
        try:
            results["stat"] = os.stat(daemon.mountpoint / bucket / "nothing-here").st_size
        except OSError as exc:
            results["stat"] = exc.errno

    threads = [threading.Thread(target=glob, daemon=True),
               threading.Thread(target=lookup, daemon=True)]
    for thread in threads:
        thread.start()
    seen: set[str] = set()

    def both_seen() -> bool:
        seen.update(line.split()[1] for line in _status_lines(daemon)
                    if line.startswith("s3_request"))
        return "ListObjectsV2" in seen and any(name.startswith("Head") for name in seen)

    _wait_for(both_seen, "a LIST and a HEAD in flight in STATUS")
    for thread in threads:
        thread.join(TRIAL_LIMIT + 10)
        assert not thread.is_alive(), "a trickled LIST or HEAD hangs"
    status, lines = results["glob"]
    assert status.startswith("ERROR") and "internal error" not in status.lower(), status
    # S3 did not answer: the name is not there (ENOENT) or cannot be known (EIO)
    assert results["stat"] in (errno.ENOENT, errno.EIO), results["stat"]
    hostile.mode = "honest"
    assert daemon.stop() == 0
