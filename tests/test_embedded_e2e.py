"""The README's run command: with no S3 endpoint and no credentials the
daemon starts an embedded demo S3 (SeaweedFS, kept in HOMEDIR/s3/) and
PULL works at once; what a user puts there survives a restart, on the
same port, and the embedded S3 never outlives the daemon."""

import os
import signal
import subprocess
import sys
import time

import boto3
import psutil
import pytest

from conftest import ROOT, free_port, free_port_block, request

pytestmark = pytest.mark.e2e


class DemoDaemon:
    """s3pool with no AWS configuration at all: the embedded S3 starts."""

    def __init__(self, tmp_path, s3_port: int, args: list[str] | None = None) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.env["HOME"] = str(tmp_path)  # no ~/.aws either
        self.home = tmp_path / "home"
        self.s3_port = s3_port
        self.stderr_path = tmp_path / "stderr"
        self.args = args or []

    def start(self) -> "DemoDaemon":
        self.port = free_port()
        self.log = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "s3pool.cli.main", "-p", str(self.port), "-D", str(self.home),
             "--embedded-s3-port", str(self.s3_port), *self.args],
            env=self.env, stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL,
            cwd=str(ROOT))
        deadline = time.monotonic() + 60
        while True:
            try:
                if request(self.port, "STATUS", timeout=2)[0] == "OK":
                    return self
            except OSError:
                pass
            assert self.proc.poll() is None, self.stderr_path.read_text()
            assert time.monotonic() < deadline, self.stderr_path.read_text()
            time.sleep(0.1)

    def ok(self, *words):
        status, lines = request(self.port, *words)
        assert status == "OK", (words, lines)
        return lines

    def status(self) -> dict[str, str]:
        return dict(line.split(" ", 1) for line in self.ok("STATUS"))

    def weed(self) -> psutil.Process:
        [weed] = [c for c in psutil.Process(self.proc.pid).children(recursive=True)
                  if os.path.basename(c.exe()) == "weed"]
        return weed

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(30) == 0, self.stderr_path.read_text()
        self.log.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.log.close()


def s3_client(status: dict[str, str]):
    return boto3.client("s3", endpoint_url=status["embedded_s3_endpoint"],
                        aws_access_key_id=status["embedded_s3_access_key_id"],
                        aws_secret_access_key=status["embedded_s3_secret_access_key"],
                        region_name="us-east-1")


def test_no_endpoint_no_credentials_means_embedded_demo_s3(tmp_path):
    daemon = DemoDaemon(tmp_path, free_port_block()).start()
    leftover = None
    try:
        [path] = daemon.ok("PULL", "s3pool-demo", "hello.txt")
        assert open(path).read().startswith("Hello from s3pool")
        assert daemon.ok("GLOB", "s3pool-demo", "data/**") == [
            "data/2026/11/events.jsonl", "data/numbers.csv"]
        status = daemon.status()
        endpoint = f"http://127.0.0.1:{daemon.s3_port}"
        assert status["embedded_s3_endpoint"] == endpoint
        # what start-up prints is enough to use the demo S3 with the aws CLI or boto3
        text = daemon.stderr_path.read_text()
        assert "EMBEDDED demo S3" in text
        assert (f"AWS_ENDPOINT_URL={endpoint} "
                f"AWS_ACCESS_KEY_ID={status['embedded_s3_access_key_id']} "
                f"AWS_SECRET_ACCESS_KEY={status['embedded_s3_secret_access_key']}") in text
        s3_client(status).put_object(Bucket="s3pool-demo", Key="mine/results.csv",
                                     Body=b"n,cube\n2,8\n")
        [mine] = daemon.ok("PULL", "s3pool-demo", "mine/results.csv")

        # kill -9: the embedded S3 goes down with the daemon
        weed = daemon.weed()
        cmdline, cwd = weed.cmdline(), weed.cwd()
        daemon.kill()
        weed.wait(10)  # raises TimeoutExpired if it outlived the daemon

        # a weed that survived anyway (say the daemon died between fork and
        # prctl): the next start finds it through HOMEDIR/s3/weed.pid, kills it
        leftover = subprocess.Popen(cmdline, cwd=cwd, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
        (daemon.home / "s3" / "weed.pid").write_text(f"{leftover.pid}\n")
        daemon.start()
        assert leftover.wait(20) is not None
        assert "leftover embedded S3" in daemon.stderr_path.read_text()

        # same endpoint, and what the user put there is still there
        again = daemon.status()
        assert again["embedded_s3_endpoint"] == endpoint
        keys = [o["Key"] for o in s3_client(again).list_objects_v2(
            Bucket="s3pool-demo")["Contents"]]
        assert "mine/results.csv" in keys and "hello.txt" in keys
        # nothing was "deleted on S3": the cached copy is checked and still served
        daemon.ok("SET", "freshness_window", "0")
        assert daemon.ok("PULL", "s3pool-demo", "mine/results.csv") == [mine]
        assert open(mine, "rb").read() == b"n,cube\n2,8\n"
        daemon.ok("REFRESH", "s3pool-demo")
        assert daemon.ok("GLOB", "s3pool-demo", "mine/*") == ["mine/results.csv"]
        weed = daemon.weed()
    finally:
        if daemon.proc.poll() is None:
            daemon.stop()
        if leftover is not None and leftover.poll() is None:
            leftover.kill()
            leftover.wait()
    # SIGTERM: the embedded server went away with the daemon, its log is plain text
    assert not weed.is_running()
    log_text = (daemon.home / "log" / "embedded-s3.log").read_bytes()
    assert log_text and b"\x1b[" not in log_text


def test_embedded_s3_port_in_use_is_a_clear_error(tmp_path):
    import socket

    port = free_port_block()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port + 3))
        holder.listen()
        daemon = DemoDaemon(tmp_path, port)
        log = open(daemon.stderr_path, "wb")
        proc = subprocess.run(
            [sys.executable, "-m", "s3pool.cli.main", "-p", str(free_port()), "-D",
             str(daemon.home), "--embedded-s3-port", str(port)],
            env=daemon.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=str(ROOT),
            timeout=60)
        log.close()
    text = daemon.stderr_path.read_text()
    assert proc.returncode == 1, text
    assert f"{port + 3} in use" in text and "--embedded-s3-port" in text
    assert "Traceback" not in text
