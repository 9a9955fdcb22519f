"""Hardening of the control socket, end to end: the daemon runs as root, the
attacking clients as nobody (issue 7)."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess

import pytest

from conftest import wait_until
from helpers import IdleConnections, Traffic, as_nobody, low_fd_limit, request_as_nobody
from s3pool.client import Client, S3PoolClientError

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# sends a PUSH and closes at once: the client socket is orphaned while the
# daemon works on the request
EARLY_CLOSE = r"""
import json, socket, sys
port, bucket, path, tries = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
for i in range(tries):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(json.dumps(["PUSH", bucket, f"stolen/{i}", path]).encode() + b"\n")
    sock.close()
"""


def test_early_closed_push_of_a_root_only_file_is_never_uploaded(daemon, s3, bucket, public_dir):
    secret = os.path.join(public_dir, "secret")
    with open(secret, "w") as f:
        f.write("root only\n")
    os.chmod(secret, 0o600)
    tries = 1000
    as_nobody(EARLY_CLOSE, str(daemon.port), bucket, secret, str(tries), timeout=60)
    log_path = daemon.home / "log" / "requests.log"

    def pushes_logged() -> list[str]:
        if not log_path.exists():
            return []
        return [line for line in log_path.read_text().splitlines()
                if f"PUSH {bucket} stolen/" in line]

    # every request reached the daemon and was answered (the log is written within 1 s)
    wait_until(lambda: len(pushes_logged()) >= tries, 60, f"{tries} PUSH lines in requests.log")
    uploaded = s3.list_objects_v2(Bucket=bucket, Prefix="stolen/").get("KeyCount", 0)
    refused = [line for line in pushes_logged() if "-> ERROR" in line]
    assert uploaded == 0, f"{uploaded} of {tries} early-closed PUSHes were uploaded"
    assert len(refused) == tries
    assert daemon.ok("STATUS")


def test_push_over_the_unix_socket_checks_the_peer_from_so_peercred(start_daemon, s3, bucket,
                                                                    public_dir):
    sock = os.path.join(public_dir, "s3pool.sock")
    daemon = start_daemon(args=["--socket", sock])
    readable = os.path.join(public_dir, "readable")
    secret = os.path.join(public_dir, "secret")
    for path, mode in ((readable, 0o644), (secret, 0o600)):
        with open(path, "w") as f:
            f.write(path)
        os.chmod(path, mode)
    assert request_as_nobody(sock, "PUSH", bucket, "ok", readable) == "OK\n\n"
    reply = request_as_nobody(sock, "PUSH", bucket, "stolen", secret)
    # one answer for "not yours" and "missing" (issue 17)
    assert reply.startswith("ERROR\n") and "uid 65534 may not read it" in reply, reply
    assert s3.get_object(Bucket=bucket, Key="ok")["Body"].read() == readable.encode()
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="stolen")
    # root, over the Unix socket, is not restricted
    Client(socket_path=sock).push(bucket, "mine", secret)
    assert daemon.stop() == 0
    assert not os.path.exists(sock), "the socket file is removed at exit"


def test_set_is_refused_for_other_users_over_tcp_and_the_unix_socket(start_daemon, public_dir):
    sock = os.path.join(public_dir, "s3pool.sock")
    daemon = start_daemon(args=["--socket", sock, "--admin-group", "4242"])
    before = daemon.status()
    for address in (str(daemon.port), sock):
        for name, value in (("max_cache_size", "1"), ("verbose", "3")):
            reply = request_as_nobody(address, "SET", name, value)
            assert reply.startswith("ERROR\n"), (address, reply)
            assert "SET" in reply and "65534" in reply, reply
        # everyone may keep using STATUS (and PULL, GLOB)
        assert request_as_nobody(address, "STATUS").startswith("OK\n")
    after = daemon.status()
    assert (after["max_cache_size"], after["verbose"]) == (before["max_cache_size"],
                                                           before["verbose"])
    # a member of the admin group may SET over the Unix socket (groups from SO_PEERGROUPS)
    assert request_as_nobody(sock, "SET", "freshness_window", "7", groups=(4242,)) == "OK\n\n"
    assert daemon.status()["freshness_window"] == "7"
    # the daemon's own user (root here) may SET over both
    daemon.ok("SET", "freshness_window", "8")
    Client(socket_path=sock).set("freshness_window", "9")
    assert daemon.status()["freshness_window"] == "9"
    with pytest.raises(S3PoolClientError, match="unknown setting"):
        Client(socket_path=sock).set("no_such_setting", "1")


def test_a_stale_socket_file_is_replaced_and_a_live_one_refused(start_daemon, public_dir, tmp_path,
                                                              moto_server):
    sock = os.path.join(public_dir, "s3pool.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock)  # bound, never listening: what a killed daemon leaves behind
    stale.close()
    daemon = start_daemon(args=["--socket", sock])
    assert stat.S_ISSOCK(os.stat(sock).st_mode)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o666
    assert Client(socket_path=sock).status()["pid"] == str(daemon.process.pid)
    # the shell client: --socket, or $S3POOL_SOCKET when neither -H nor -p is given
    ctl = [daemon.process.args[0], "-m", "s3pool.cli.ctl"]
    env = dict(os.environ, S3POOL_SOCKET=sock, S3POOL_PORT="1")
    for args in (["--socket", sock, "status"], ["status"]):
        result = subprocess.run(ctl + args, capture_output=True, text=True, timeout=30, env=env,
                                cwd=ROOT)
        assert result.returncode == 0, result
        assert re.search(rf"^pid\s+{daemon.process.pid}$", result.stdout, re.M), result
    result = subprocess.run(ctl + ["-p", "1", "status"], capture_output=True, text=True,
                            timeout=30, env=env, cwd=ROOT)
    assert result.returncode == 3 and "127.0.0.1:1" in result.stderr, result
    # a second daemon (another HOMEDIR) must not steal a live socket
    result = subprocess.run(
        [daemon.process.args[0], "-m", "s3pool.cli.main", "-p", "0", "-D", str(tmp_path / "other"),
         "--embedded-s3", "no", "--socket", sock], capture_output=True, text=True, timeout=60,
        env=dict(os.environ, AWS_ENDPOINT_URL=moto_server.endpoint),
        cwd=ROOT)
    assert result.returncode == 1, result.stderr
    assert "in use" in result.stderr and "Traceback" not in result.stderr
    assert Client(socket_path=sock).status()["pid"] == str(daemon.process.pid)


def test_idle_connections_do_not_starve_the_mount_or_cached_pulls(start_daemon, s3, bucket):
    keys = [f"f/{i}" for i in range(8)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode() * 100)
    daemon = start_daemon(mount=True, args=["--bucket", bucket], preexec_fn=low_fd_limit)
    daemon.ok("PULL", bucket, *keys)  # all cached now
    with IdleConnections(daemon.port, 300) as attack:
        # the idle connections pile up: the server is at its cap
        wait_until(lambda: attack.opened >= 300 and (status := daemon.status())
                   and int(status["open_connections"]) >= int(status["connection_cap"]) - 1,
                   60, "the idle connections to fill the server's connection cap")
        # the mount and the cached PULLs go on beside them
        with Traffic(daemon, bucket, keys, daemon.mountpoint / bucket) as traffic:
            wait_until(lambda: traffic.failures or traffic.done["pulls"] >= 5
                       and traffic.done["reads"] >= 20, 60,
                       "5 cached PULLs and 20 reads through the mount")
        opened = attack.opened
    done, failures = traffic.done, traffic.failures
    slowest = max(traffic.pull_seconds, default=0.0)
    print(f"pulls {done['pulls']} reads {done['reads']} slowest PULL {slowest:.2f}s "
          f"idle connections opened {opened}")
    assert failures == [], f"{len(failures)} failures, first: {failures[:5]}"
    assert done["pulls"] >= 5 and done["reads"] >= 20, done
    assert slowest < 5, "a cached PULL waited as long as an idle client may"
    assert opened > 300, "the server never closed an idle connection"
    status = daemon.status()
    assert int(status["open_connections"]) <= int(status["connection_cap"]) <= 128
    assert daemon.stop() == 0, daemon.log_text()[-3000:]


def test_log_files_are_not_world_readable(start_daemon, tmp_path):
    home = tmp_path / "home"
    log_dir = home / "log"
    log_dir.mkdir(parents=True)
    for name in ("s3pool.log", "s3pool.log.1", "requests.log", "requests.log.2"):
        (log_dir / name).write_text("from an older version\n")
        os.chmod(log_dir / name, 0o644)
    daemon = start_daemon(home=home)
    daemon.ok("STATUS")
    wait_until(lambda: "STATUS" in (log_dir / "requests.log").read_text(), 5,
             "the request log to be written")
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in log_dir.iterdir()}
    assert {"s3pool.log", "requests.log"} <= set(modes)
    assert all(mode & 0o007 == 0 for mode in modes.values()), {k: oct(v) for k, v in
                                                              modes.items()}
    assert daemon.stop() == 0
