"""End to end: the real daemon as a subprocess, moto's S3 over HTTP, the
control socket spoken as the original clients speak it."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import MotoServer, put_many, raw_request, temp_leftovers, wait_until

pytestmark = pytest.mark.e2e


def put(s3, bucket, key, body: bytes):
    s3.put_object(Bucket=bucket, Key=key, Body=body)


def test_pull_returns_absolute_path_with_the_bytes_and_meta(daemon, s3, bucket):
    put(s3, bucket, "dir/hello.txt", b"hello world\n")
    [path] = daemon.ok("PULL", bucket, "dir/hello.txt")
    assert os.path.isabs(path)
    assert path == str(daemon.data / bucket / "dir" / "hello.txt")
    assert open(path, "rb").read() == b"hello world\n"
    meta = json.load(open(path + "__meta__"))
    assert meta["ContentLength"] == 12
    assert meta["ETag"].startswith('"') and meta["ETag"].endswith('"')
    assert set(meta) >= {"LastModified", "ETag", "ContentLength", "ContentType", "Metadata",
                         "AcceptRanges"}
    assert meta["LastModified"].endswith("GMT")


def test_reply_format_is_byte_exact(daemon, s3, bucket):
    put(s3, bucket, "k", b"x")
    reply = raw_request(daemon.port, json.dumps(["pull", bucket, "k"]).encode() + b"\n")
    assert reply == f"OK\n{daemon.data / bucket / 'k'}\n".encode()
    assert raw_request(daemon.port, json.dumps(["REFRESH", bucket]).encode() + b"\n") == b"OK\n\n"
    assert raw_request(daemon.port, json.dumps(["GLOB", bucket, "nomatch*"]).encode()) == b"OK\n"
    error = raw_request(daemon.port, b'["PULL", "' + bucket.encode() + b'", "missing"]\n')
    assert error.startswith(b"ERROR\n") and error.endswith(b"\n") and error.count(b"\n") == 2
    assert b"missing" in error


def test_multi_key_pull_keeps_request_order(daemon, s3, bucket):
    keys = [f"k{i:02d}" for i in range(12)]
    for key in keys:
        put(s3, bucket, key, key.encode())
    order = list(reversed(keys))
    paths = daemon.ok("PULL", bucket, *order)
    assert [os.path.basename(p) for p in paths] == order
    for key, path in zip(order, paths, strict=True):
        assert open(path, "rb").read() == key.encode()


def test_multi_key_pull_names_the_failed_key_and_still_caches_the_rest(daemon, s3, bucket):
    put(s3, bucket, "good1", b"1")
    put(s3, bucket, "good2", b"2")
    status, lines = daemon.request("PULL", bucket, "good1", "absent", "good2")
    assert status == "ERROR"
    assert "absent" in lines[0] and "good1" not in lines[0]
    assert (daemon.data / bucket / "good1").read_bytes() == b"1"
    assert (daemon.data / bucket / "good2").read_bytes() == b"2"


def test_cache_hit_makes_no_s3_request(daemon, s3, bucket, moto_server):
    put(s3, bucket, "hot", b"data" * 100)
    daemon.ok("PULL", bucket, "hot")
    before = len(moto_server.app.requests)
    for _ in range(5):
        daemon.ok("PULL", bucket, "hot")
    assert moto_server.app.gets(bucket, "hot") == 1
    assert len(moto_server.app.requests) == before
    status = daemon.status()
    assert int(status["hits"]) == 5 and int(status["downloads"]) == 1


def test_changed_object_is_seen_only_after_the_freshness_window(start_daemon, s3, bucket,
                                                                moto_server):
    daemon = start_daemon(args=["--freshness-window", "2"])
    put(s3, bucket, "obj", b"version one")
    [path] = daemon.ok("PULL", bucket, "obj")
    put(s3, bucket, "obj", b"version two, longer")
    daemon.ok("PULL", bucket, "obj")
    assert open(path, "rb").read() == b"version one"
    assert moto_server.app.gets(bucket, "obj") == 1
    time.sleep(2.2)
    daemon.ok("PULL", bucket, "obj")
    assert open(path, "rb").read() == b"version two, longer"
    # a first GET asks for the first part (here the whole object): a 206
    assert moto_server.app.gets(bucket, "obj", status=206) == 2
    # unchanged after another window: a conditional GET answered 304, no body
    time.sleep(2.2)
    daemon.ok("PULL", bucket, "obj")
    assert moto_server.app.gets(bucket, "obj", status=304) == 1
    assert moto_server.app.gets(bucket, "obj", status=206) == 2
    assert daemon.stop() == 0


def test_twenty_concurrent_pulls_download_once(daemon, s3, bucket, moto_server):
    put(s3, bucket, "big", os.urandom(4 << 20))
    moto_server.app.slow_paths[f"/{bucket}/big"] = 0.002  # keep the download open a while
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: daemon.request("PULL", bucket, "big"), range(20)))
    assert {status for status, _ in results} == {"OK"}
    assert len({tuple(lines) for _, lines in results}) == 1
    assert moto_server.app.gets(bucket, "big") == 1


def test_push_then_pull_returns_the_new_bytes(daemon, s3, bucket, tmp_path, moto_server):
    put(s3, bucket, "report.csv", b"old,bytes\n")
    [path] = daemon.ok("PULL", bucket, "report.csv")
    local = tmp_path / "new.csv"
    local.write_bytes(b"new,bytes,written,by,a,job\n")
    assert daemon.ok("PUSH", bucket, "report.csv", str(local)) == []
    downloads = moto_server.app.gets(bucket, "report.csv", status=206)
    assert s3.get_object(Bucket=bucket, Key="report.csv")["Body"].read() == local.read_bytes()
    [path2] = daemon.ok("PULL", bucket, "report.csv")
    assert path2 == path
    assert open(path2, "rb").read() == local.read_bytes()
    # the pushed copy is installed in the cache: no download needed
    assert moto_server.app.gets(bucket, "report.csv", status=206) == downloads
    assert moto_server.app.gets(bucket, "report.csv", status=200) == 1  # our own GET


def test_push_refuses_bad_local_paths(daemon, bucket, tmp_path):
    status, lines = daemon.request("PUSH", bucket, "k", "relative/file")
    assert status == "ERROR" and "absolute" in lines[0]
    status, lines = daemon.request("PUSH", bucket, "k", str(tmp_path / "missing"))
    assert status == "ERROR" and "missing" in lines[0]
    status, lines = daemon.request("PUSH", bucket, "k", str(tmp_path))
    assert status == "ERROR" and "regular" in lines[0]


def test_refresh_lists_more_than_one_page(daemon, s3, bucket, moto_server):
    keys = sorted(f"p/{i:05d}" for i in range(1500))
    put_many(bucket, ((key, b"") for key in keys))
    before = moto_server.app.count("GET", f"/{bucket}")
    daemon.ok("REFRESH", bucket)
    listed = moto_server.app.count("GET", f"/{bucket}") - before
    assert listed >= 2, "a 1,500-key bucket takes at least two list pages"
    lines = (daemon.data / bucket / "__list__").read_text().splitlines()
    assert lines == keys
    assert daemon.ok("GLOB", bucket, "p/0149?") == [f"p/0149{i}" for i in range(10)]


GLOB_KEYS = [
    "a.txt", "b.txt", "c.csv", "dir/a.txt", "dir/sub/b.txt", "dir/sub/deep/c.txt",
    "data-1.csv", "data-2.csv", "data-x.csv", "img/x.png", "img/y.jpg", "q?.txt",
]


@pytest.mark.parametrize("pattern, expected", [
    ("*.txt", ["a.txt", "b.txt", "q?.txt"]),
    ("?.txt", ["a.txt", "b.txt"]),
    ("dir/*", ["dir/a.txt"]),
    ("dir/**", ["dir/a.txt", "dir/sub/b.txt", "dir/sub/deep/c.txt"]),
    ("dir/**/*.txt", ["dir/a.txt", "dir/sub/b.txt", "dir/sub/deep/c.txt"]),
    ("**/c.*", ["c.csv", "dir/sub/deep/c.txt"]),
    ("data-[0-9].csv", ["data-1.csv", "data-2.csv"]),
    ("data-[!0-9].csv", ["data-x.csv"]),
    ("img/*.{png,jpg}", ["img/x.png", "img/y.jpg"]),
    ("{a,c}.*", ["a.txt", "c.csv"]),
    ("q\\?.txt", ["q?.txt"]),
    ("nothing*", []),
])
def test_glob_rules(daemon, s3, bucket, pattern, expected):
    for key in GLOB_KEYS:
        put(s3, bucket, key, b"")
    # no __list__ yet: GLOB runs REFRESH itself
    assert daemon.ok("GLOB", bucket, pattern) == expected


def test_status_and_set(daemon):
    status = daemon.status()
    for name in ("pulls", "hits", "misses", "bytes_downloaded", "pushes", "globs", "refreshes",
                 "errors", "uptime", "pull_concurrency", "freshness_window", "refresh_interval",
                 "high_water", "low_water", "max_cache_size", "verbose"):
        assert name in status, name
    assert status["pull_concurrency"] == "20"
    assert status["freshness_window"] == "120"
    daemon.ok("SET", "freshness_window", "7")
    daemon.ok("SET", "PULL_CONCURRENCY", "5")
    daemon.ok("SET", "max_cache_size", "1G")
    status = daemon.status()
    assert status["freshness_window"] == "7"
    assert status["pull_concurrency"] == "5"
    assert status["max_cache_size"] == str(1 << 30)
    for bad in (["SET", "nope", "1"], ["SET", "pull_concurrency", "zero"],
                ["SET", "low_water", "95"], ["SET", "high_water", "101"]):
        status, lines = daemon.request(*bad)
        assert status == "ERROR" and lines[0], bad


BAD_INPUTS = [
    (b"this is not json\n", "JSON"),
    (b'{"PULL": "x"}\n', "array"),
    (b"[]\n", "command"),
    (b'["PULL", "bucket", 7]\n', "string"),
    (b'["FROB", "x"]\n', "unknown command"),
    (b'["PULL", "bucket"]\n', "arguments"),
    (b'["PUSH", "b", "k"]\n', "arguments"),
    (b'["GLOB", "b"]\n', "arguments"),
    (b'["REFRESH"]\n', "arguments"),
    (b'["SET", "verbose"]\n', "arguments"),
    (b"\xff\xfe\n", "UTF-8"),
    (b"\n", "empty"),
    (b'["PULL", "bad bucket!", "k"]\n', "bucket"),
]


@pytest.mark.parametrize("data, words", BAD_INPUTS)
def test_bad_input_gets_an_error_line(daemon, data, words):
    reply = raw_request(daemon.port, data).decode()
    status, _, message = reply.partition("\n")
    assert status == "ERROR"
    assert words.lower() in message.lower()
    assert message.endswith("\n") and message.count("\n") == 1


def test_oversized_request_is_refused(daemon):
    reply = raw_request(daemon.port, b'["PULL", "b", "' + b"k" * (2 << 20) + b'"]\n')
    assert reply.startswith(b"ERROR\n") and b"longer than" in reply
    assert daemon.ok("STATUS")


def test_silent_client_times_out_without_blocking_others(daemon):
    import socket

    with socket.create_connection(("127.0.0.1", daemon.port)) as silent:
        started = time.monotonic()
        assert daemon.ok("STATUS")  # another client is served meanwhile
        silent.settimeout(15)
        reply = silent.recv(1000)  # the timeout above bounds the wait
        waited = time.monotonic() - started
    assert reply.startswith(b"ERROR\n") and b"within" in reply
    assert waited > 4  # not before its 5 s were up (a slow machine only waits longer)


@pytest.mark.parametrize("key", [
    "../x", "a/../../x", "/abs", "a//b", "x__meta__", "d/x__meta__/y", "__list__",
    "./a", "a/.", "a/", "", "a\nb", "a\x00b",
])
def test_bad_keys_are_refused_and_nothing_leaves_data(daemon, bucket, tmp_path, key):
    before = sorted(p.name for p in tmp_path.iterdir())
    status, lines = daemon.request("PULL", bucket, key)
    assert status == "ERROR" and lines[0]
    status, _ = daemon.request("PUSH", bucket, key, __file__)
    assert status == "ERROR"
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (daemon.data / "x").exists() and not (daemon.home / "x").exists()
    assert not list((daemon.data).glob(f"{bucket}/**/x"))


def test_directory_wins_over_a_shadowed_key(daemon, s3, bucket):
    put(s3, bucket, "a", b"file a")
    put(s3, bucket, "a/b", b"file a/b")
    daemon.ok("REFRESH", bucket)
    [path] = daemon.ok("PULL", bucket, "a/b")
    assert open(path, "rb").read() == b"file a/b"
    status, lines = daemon.request("PULL", bucket, "a")
    assert status == "ERROR" and "'a'" in lines[0] and "shadow" in lines[0]


def test_deleted_or_truncated_data_is_fetched_again(daemon, s3, bucket, moto_server):
    body = os.urandom(100_000)
    put(s3, bucket, "victim", body)
    [path] = daemon.ok("PULL", bucket, "victim")
    with open(path, "r+b") as f:
        f.truncate(10)
    [path] = daemon.ok("PULL", bucket, "victim")
    assert open(path, "rb").read() == body
    os.unlink(path)
    [path] = daemon.ok("PULL", bucket, "victim")
    assert open(path, "rb").read() == body
    assert moto_server.app.gets(bucket, "victim", status=206) == 3  # first-part GETs


def test_clean_restart_serves_the_cache_with_one_conditional_request(start_daemon, s3, bucket,
                                                                     moto_server):
    daemon = start_daemon()
    put(s3, bucket, "keep", b"kept across restarts")
    [path] = daemon.ok("PULL", bucket, "keep")
    assert daemon.stop() == 0
    daemon = start_daemon(port=daemon.port)
    assert daemon.ok("PULL", bucket, "keep") == [path]
    assert daemon.ok("PULL", bucket, "keep") == [path]
    assert moto_server.app.gets(bucket, "keep", status=206) == 1  # a first-part GET
    conditional = [r for r in moto_server.app.requests
                   if r["path"] == f"/{bucket}/keep" and r["status"] == 304]
    assert len(conditional) == 1 and conditional[0]["if_none_match"]
    assert daemon.stop() == 0


def pull_in_the_background(daemon, moto_server, bucket, key, delay):
    """Start a PULL that S3 answers slowly; return once bytes arrive in tmp/."""
    moto_server.app.slow_paths[f"/{bucket}/{key}"] = delay
    threading.Thread(target=lambda: daemon.request("PULL", bucket, key), daemon=True).start()
    tmp_dir = daemon.home / "tmp"
    deadline = time.monotonic() + 20

    def bytes_arrived() -> bool:  # in a download's file: not the checkpoint's record
        for name in temp_leftovers(daemon.home):
            try:
                if (tmp_dir / name).stat().st_size:
                    return True
            except FileNotFoundError:
                pass
        return False

    while not bytes_arrived():
        assert time.monotonic() < deadline, "the download never started"
        time.sleep(0.02)


def test_sigkill_mid_download_never_serves_a_partial_file(start_daemon, s3, bucket,
                                                          moto_server):
    body = os.urandom(3 << 20)
    put(s3, bucket, "slow", body)
    daemon = start_daemon()
    pull_in_the_background(daemon, moto_server, bucket, "slow", 0.05)
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait(10)
    assert not (daemon.data / bucket / "slow__meta__").exists()
    assert temp_leftovers(daemon.home)  # the partial download the kill left
    moto_server.app.slow_paths.clear()
    daemon = start_daemon(port=daemon.port)
    assert temp_leftovers(daemon.home) == []  # swept at start-up
    [path] = daemon.ok("PULL", bucket, "slow")
    assert open(path, "rb").read() == body
    assert daemon.stop() == 0


def test_second_instance_on_the_same_homedir_is_refused(daemon, tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "s3pool.cli.main", "-p", "0", "-D", str(daemon.home),
         "--embedded-s3", "no"], capture_output=True, text=True, timeout=30,
        env=dict(os.environ, AWS_ENDPOINT_URL=daemon.endpoint),
    )
    assert result.returncode == 3
    assert "another s3pool" in result.stderr
    assert daemon.ok("STATUS")


def test_requests_are_logged_with_status_and_milliseconds(daemon, bucket):
    daemon.request("PULL", bucket, "../bad")
    daemon.ok("STATUS")
    path = daemon.home / "log" / "requests.log"
    deadline = time.monotonic() + 5  # written within a second
    while time.monotonic() < deadline and not (path.exists() and "STATUS" in path.read_text()):
        time.sleep(0.1)
    log = path.read_text()
    assert f"PULL {bucket} ../bad -> ERROR" in log
    assert "STATUS -> OK" in log
    assert re.search(r"STATUS -> OK \d+\.\dms", log)


def test_client_command_line(daemon, s3, bucket, tmp_path):
    import subprocess
    import sys

    put(s3, bucket, "cli/one", b"1")
    env = dict(os.environ, S3POOL_PORT=str(daemon.port))

    def ctl(*args):
        return subprocess.run([sys.executable, "-m", "s3pool.cli.ctl", *args], capture_output=True,
                              text=True, env=env, timeout=60)

    pulled = ctl("pull", bucket, "cli/one")
    assert pulled.returncode == 0 and pulled.stdout.strip().endswith("cli/one")
    missing = ctl("pull", bucket, "cli/none")
    assert missing.returncode == 1 and "cli/none" in missing.stderr
    (tmp_path / "up").write_bytes(b"up")
    os.chdir(tmp_path)
    assert ctl("push", bucket, "cli/up", "up").returncode == 0
    assert ctl("glob", bucket, "cli/*").stdout.split() == ["cli/one", "cli/up"]
    assert "pulls" in ctl("status").stdout
    assert ctl("set", "verbose", "1").returncode == 0
    assert subprocess.run([sys.executable, "-m", "s3pool.cli.ctl", "-p", "1", "status"],
                          capture_output=True, timeout=30).returncode == 3


def test_listing_keeps_unusual_keys_exact(daemon, s3, bucket):
    keys = sorted(["with space.txt", "plus+sign", "ünï/ké y", "percent%20x", "amp&lt;",
                   "tab\there", "q?mark", "star*"])
    for key in keys:
        put(s3, bucket, key, key.encode())
    daemon.ok("REFRESH", bucket)
    listed = (daemon.data / bucket / "__list__").read_text(encoding="utf-8").splitlines()
    assert listed == sorted(keys, key=lambda k: k.encode())
    assert daemon.ok("GLOB", bucket, "plus+*") == ["plus+sign"]
    [path] = daemon.ok("PULL", bucket, "ünï/ké y")
    assert open(path, "rb").read() == "ünï/ké y".encode()


def test_large_push_goes_multipart_and_pulls_back(daemon, s3, bucket, tmp_path, moto_server):
    local = tmp_path / "large.bin"
    with open(local, "wb") as f:
        for _ in range(70):
            f.write(os.urandom(1 << 20))
    assert daemon.ok("PUSH", bucket, "big/large.bin", str(local)) == []
    multipart = [r for r in moto_server.app.requests
                 if r["method"] == "POST" and r["path"] == f"/{bucket}/big/large.bin"]
    assert multipart, "a 70 MiB push should use a multipart upload"
    head = s3.head_object(Bucket=bucket, Key="big/large.bin")
    assert head["ContentLength"] == 70 << 20 and "-" in head["ETag"]
    [path] = daemon.ok("PULL", bucket, "big/large.bin")
    with open(path, "rb") as ours, open(local, "rb") as theirs:
        assert ours.read() == theirs.read()


def test_pushed_keys_show_in_glob_before_the_next_refresh(daemon, s3, bucket, tmp_path):
    put(s3, bucket, "out/a.csv", b"a")
    assert daemon.ok("GLOB", bucket, "out/*") == ["out/a.csv"]  # listing made here
    local = tmp_path / "b.csv"
    local.write_bytes(b"b")
    daemon.ok("PUSH", bucket, "out/b.csv", str(local))
    daemon.ok("PUSH", bucket, "zz-new", str(local))
    assert daemon.ok("GLOB", bucket, "out/*") == ["out/a.csv", "out/b.csv"]
    assert daemon.ok("GLOB", bucket, "*") == ["zz-new"]
    assert daemon.ok("GLOB", bucket, "**") == ["out/a.csv", "out/b.csv", "zz-new"]
    daemon.ok("REFRESH", bucket)
    assert daemon.ok("GLOB", bucket, "**") == ["out/a.csv", "out/b.csv", "zz-new"]
    assert (daemon.data / bucket / "__list__").read_text().split() == [
        "out/a.csv", "out/b.csv", "zz-new"]


def test_stale_on_error_serves_the_checked_copy_while_s3_is_down(start_daemon):
    server = MotoServer()
    client = server.client()
    client.create_bucket(Bucket="flaky")
    client.put_object(Bucket="flaky", Key="k", Body=b"cached")
    daemon = start_daemon(endpoint=server.endpoint,
                          args=["--freshness-window", "0", "--stale-on-error", "600"])
    [path] = daemon.ok("PULL", "flaky", "k")
    server.stop()
    assert daemon.ok("PULL", "flaky", "k") == [path]  # S3 down: the checked copy
    status, lines = daemon.request("PULL", "flaky", "never-cached")
    assert status == "ERROR"
    assert int(daemon.status()["stale_served"]) == 1
    daemon.ok("SET", "stale_on_error", "0")
    status, lines = daemon.request("PULL", "flaky", "k")
    assert status == "ERROR" and "k" in lines[0]
    assert daemon.stop() == 0


def test_sigterm_does_not_wait_for_a_slow_download(start_daemon, s3, bucket, moto_server):
    put(s3, bucket, "crawl", os.urandom(2 << 20))
    daemon = start_daemon()
    # two seconds per 64 KiB: a minute for the whole body
    pull_in_the_background(daemon, moto_server, bucket, "crawl", 2.0)
    wait_until(lambda: moto_server.app.gets_in_flight >= 1, what="the slow GET to be sent")
    assert daemon.stop() == 0
    # the daemon was gone with most of the body still unsent: it did not wait for it
    assert moto_server.app.bytes_sent.get(f"/{bucket}/crawl", 0) < 1 << 20
    assert temp_leftovers(daemon.home) == []
    assert not (daemon.data / bucket / "crawl").exists()
    moto_server.app.slow_paths.clear()


def test_port_in_use_is_a_clear_startup_error(tmp_path, moto_server):
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "s3pool.cli.main", "-p", str(port), "-D", str(tmp_path / "h"),
             "--embedded-s3", "no"], capture_output=True, text=True, timeout=60,
            env=dict(os.environ, AWS_ENDPOINT_URL=moto_server.endpoint),
        )
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "h" / "s3pool.pid").exists()
