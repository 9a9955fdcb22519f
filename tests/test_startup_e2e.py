"""What the daemon says at start about its S3 configuration and its ports,
run as a subprocess the way a user starts it:

- an AWS_PROFILE that does not exist: one line and exit 1, no traceback;
- an endpoint that does not resolve and no credentials: the daemon starts
  (the check runs once in the background) and says so in its log and STATUS;
- a control port already taken: refused before the embedded demo S3 starts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, free_port, free_port_block, request

pytestmark = pytest.mark.e2e


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(home), AWS_EC2_METADATA_DISABLED="true", **extra)
    return env


def s3pool(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s3pool.cli.main", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_a_missing_aws_profile_is_one_line_and_exit_1(tmp_path):
    env = clean_env(tmp_path, AWS_PROFILE="no-such-profile")
    result = s3pool("-p", str(free_port()), "-D", str(tmp_path / "home"), "--embedded-s3", "no",
                    env=env)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "no-such-profile" in errors[0], result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith(" ")]


def test_unreachable_endpoint_and_no_credentials_are_said_at_start(tmp_path):
    port = free_port()
    env = clean_env(tmp_path, AWS_ENDPOINT_URL="http://s3pool-test-host.invalid:9000")
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "s3pool.cli.main", "-p", str(port), "-D", str(tmp_path / "home"),
             "--embedded-s3", "no"], env=env, cwd=ROOT, stdout=log, stderr=log,
            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        check = "checking"
        while check == "checking":  # the daemon answers while it checks
            assert daemon.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            try:
                status, lines = request(port, "STATUS", timeout=2)
                check = dict(line.split(" ", 1) for line in lines)["s3_check"]
            except OSError:
                pass
            time.sleep(0.1)
        assert "no AWS credentials" in check and "s3pool-test-host.invalid" in check, check
        text = log_path.read_text()
        assert "ready" in text
        warning = [line for line in text.splitlines() if "WARNING" in line and "S3 check" in line]
        assert warning and "no AWS credentials" in warning[0], text
        assert "s3pool-test-host.invalid" in warning[0]
    finally:
        daemon.terminate()
        assert daemon.wait(30) == 0, log_path.read_text()


def test_a_good_configuration_checks_ok(start_daemon):
    daemon = start_daemon()
    deadline = time.monotonic() + 30
    while daemon.status()["s3_check"] == "checking":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert daemon.status()["s3_check"] == "ok"
    assert daemon.stop() == 0


def test_a_taken_control_port_is_refused_before_the_demo_s3_starts(tmp_path):
    embedded = free_port_block()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = s3pool("-p", str(port), "-D", str(tmp_path / "home"), "--embedded-s3", "yes",
                        "--embedded-s3-port", str(embedded), env=clean_env(tmp_path))
    assert result.returncode == 1, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "in use" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert "embedded S3" not in result.stderr  # never started
    assert not (tmp_path / "home" / "s3").exists()
