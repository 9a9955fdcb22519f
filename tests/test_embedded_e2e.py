"""The README's run command: with no S3 endpoint and no credentials the
daemon starts an embedded demo S3 and PULL works at once."""

import os
import signal
import subprocess
import sys
import time

import psutil

from conftest import ROOT, free_port, request


def test_no_endpoint_no_credentials_means_embedded_demo_s3(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(tmp_path)  # no ~/.aws either
    port = free_port()
    log = open(tmp_path / "stderr", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "s3pool.cli", "-p", str(port), "-D",
                             str(tmp_path / "home")], env=env, stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, cwd=str(ROOT))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if request(port, "STATUS", timeout=2)[0] == "OK":
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "stderr").read_text()
            assert time.monotonic() < deadline, (tmp_path / "stderr").read_text()
            time.sleep(0.1)
        status, [path] = request(port, "PULL", "s3pool-demo", "hello.txt")
        assert status == "OK"
        assert open(path).read().startswith("Hello from s3pool")
        assert request(port, "GLOB", "s3pool-demo", "data/**")[1] == [
            "data/2026/11/events.jsonl", "data/numbers.csv"]
        assert "EMBEDDED demo S3" in (tmp_path / "stderr").read_text()
        moto_children = [c for c in psutil.Process(proc.pid).children(recursive=True)
                         if "moto.server" in " ".join(c.cmdline())]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        log.close()
    # the embedded server went away with the daemon
    assert moto_children and not [c for c in moto_children if c.is_running()]
