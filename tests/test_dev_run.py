"""``./dev.sh run ARGS`` as a new user runs it: ARGS add to or override the
defaults (``-p ${S3POOL_PORT:-9000} -D HOMEDIR -m /mnt/s3pool``, HOMEDIR
``~/.s3pool``, or ``/var/cache/s3pool`` as root), and a bad command line is
refused at once, before the venv is set up; and the daemon's warning when
HOMEDIR is a place other users cannot reach (PULL hands them paths there).

The daemon started through dev.sh runs in a private mount namespace with a
tmpfs on /var/cache, so its root default HOMEDIR touches nobody's real one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import CREDENTIALS, ROOT, Daemon, free_port, free_port_block, fuse_available, request
from test_install import linked_venv

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]


def wait_status(process: subprocess.Popen, port: int, log: Path) -> dict[str, str]:
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        try:
            status, lines = request(port, "STATUS", timeout=2)
            if status == "OK":
                return dict(line.split(" ", 1) for line in lines if " " in line)
        except OSError:
            pass
        time.sleep(0.1)


def test_run_arguments_add_to_the_defaults(tmp_path, moto_server):
    fuse_available()
    venv = linked_venv(tmp_path)
    port = free_port()
    mountpoint = tmp_path / "x"
    env = dict(os.environ, **CREDENTIALS, AWS_ENDPOINT_URL=moto_server.endpoint,
               S3POOL_VENV=str(venv), S3POOL_PORT=str(port), HOME=str(tmp_path))
    env.pop("AWS_PROFILE", None)
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount -t tmpfs -o size=16m tmpfs /var/cache && exec "$0" "$@"',
             "./dev.sh", "run", "--embedded-s3-port", str(free_port_block()),
             "-m", str(mountpoint)],
            cwd=ROOT, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        status = wait_status(process, port, log_path)  # S3POOL_PORT still counts
        assert status["mountpoint"] == str(mountpoint)  # -m overrides /mnt/s3pool
        expected_home = "/var/cache/s3pool" if os.geteuid() == 0 else f"{tmp_path}/.s3pool"
        assert status["homedir"] == expected_home  # the default -D stays
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(30) == 0, log_path.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_run_refuses_a_bad_command_line_before_setting_anything_up(tmp_path):
    venv = tmp_path / "no-venv-yet"  # setup would spend a minute building it
    env = dict(os.environ, S3POOL_VENV=str(venv), HOME=str(tmp_path))
    # its own process group: if it went on to set up, the pip under it is stopped too
    process = subprocess.Popen(["./dev.sh", "run", "--no-such-option"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 2, out + err
    assert "unrecognized arguments: --no-such-option" in err
    assert not venv.exists()


def test_a_homedir_other_users_cannot_reach_is_warned_about(tmp_path, moto_server):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    os.chmod(private, 0o700)
    hidden = Daemon(private / "home", moto_server.endpoint).start()
    try:
        assert hidden.status()["homedir_shared"] == "no"
        log = hidden.log_text()
        assert "other users cannot reach HOMEDIR" in log and str(private) in log, log
    finally:
        assert hidden.stop() == 0
    # a positive control: the same daemon in a directory every user may search
    # (pytest's own tmp directories are 0700)
    shared_dir = Path(tempfile.mkdtemp(prefix="s3pool-shared-", dir="/tmp"))
    try:
        os.chmod(shared_dir, 0o755)
        shared = Daemon(shared_dir / "home", moto_server.endpoint).start()
        try:
            assert shared.status()["homedir_shared"] == "yes"
            assert "other users cannot reach HOMEDIR" not in shared.log_text()
        finally:
            assert shared.stop() == 0
    finally:
        shutil.rmtree(shared_dir)


def test_the_command_line_parses_with_the_standard_library_alone():
    # what ./dev.sh run checks before the venv exists: no trio, no boto3 (-S: no site)
    from s3pool.cli import main as cli
    from s3pool.listing import published

    assert cli.DEFAULT_KEY == published.DEFAULT_KEY
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from s3pool.cli.main import "
            "check_command_line; check_command_line(['-p', '1', '-D', 'x']); "
            "assert 'trio' not in sys.modules and 'boto3' not in sys.modules")
    result = subprocess.run([sys.executable, "-S", "-c", code, str(ROOT)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
