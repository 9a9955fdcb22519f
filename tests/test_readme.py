"""The README's examples run as written.

Every fenced ``sh`` or ``python`` block preceded by ``<!-- example -->`` is
run against a real daemon started as ``./dev.sh run`` starts it for a user (no AWS
configuration, so on the embedded demo S3; ``-D ~/.s3pool -m /mnt/s3pool``).
In an ``sh`` block, ``$ `` lines are commands, run by bash one after the
other in one working directory; the lines after a command are its expected
output (paths shown for HOME=/home/me) and are compared when shown.

Nothing in the examples is rewritten. What differs from a user's machine
comes only through what the examples themselves read: ``S3POOL_PORT`` (a
free port rather than 9000), ``HOME`` (a temporary directory), ``PATH``
(the venv's ``bin/`` first, as ``./dev.sh install`` would make it). The
mount point is the README's ``/mnt/s3pool``, inside a private mount
namespace (``unshare``, with a tmpfs on ``/mnt``) so the test touches
nobody's real ``/mnt``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, free_port, free_port_block, fuse_available, request

pytestmark = [pytest.mark.e2e, pytest.mark.fuse]

MARK = "<!-- example -->"


def examples() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    return re.findall(re.escape(MARK) + r"\n```(sh|python)\n(.*?)```", text, re.S)


def sh_steps(block: str) -> list[tuple[str, list[str]]]:
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            assert steps, f"output before any command in {block!r}"
            steps[-1][1].append(line)
    return steps


def test_readme_marks_its_examples():
    kinds = [kind for kind, _ in examples()]
    assert kinds.count("sh") >= 3 and kinds.count("python") >= 2, kinds
    # every shell block in "Using it" is an example: none is left unchecked
    text = (ROOT / "README.md").read_text()
    using = text[text.index("## Using it"):text.index("## The protocol")]
    assert using.count("```sh") == using.count(MARK + "\n```sh")


def test_readme_examples_run_verbatim(tmp_path):
    fuse_available()
    home = tmp_path / "me"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(home), S3POOL_PORT=str(port),
               PATH=f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin")
    log = open(tmp_path / "daemon.log", "wb")
    # the daemon as `./dev.sh run` starts it, in its own mount namespace
    daemon = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs -o size=1m tmpfs /mnt && exec "$0" "$@"',
         sys.executable, "-m", "s3pool.cli.main", "-p", str(port), "-D", f"{home}/.s3pool",
         "-m", "/mnt/s3pool", "--embedded-s3-port", str(free_port_block())],
        env=env, cwd=ROOT, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        wait_ready(daemon, port, tmp_path / "daemon.log")
        # setns() to a mount namespace moves to its root: --wd keeps the directory
        enter = ["nsenter", f"--mount=/proc/{daemon.pid}/ns/mnt", f"--wd={work}"]
        ran = 0
        for number, (kind, block) in enumerate(examples()):
            if kind == "python":
                script = tmp_path / f"example{number}.py"
                script.write_text(block)
                result = subprocess.run([*enter, sys.executable, str(script)], cwd=work,
                                        env=env, capture_output=True, text=True, timeout=60)
                assert result.returncode == 0, f"{block}\n{result.stderr}"
                assert result.stdout.strip(), block
                ran += 1
                continue
            for command, expected in sh_steps(block):
                result = subprocess.run([*enter, "bash", "-o", "pipefail", "-c", command],
                                        cwd=work, env=env, capture_output=True, text=True,
                                        timeout=60)
                assert result.returncode == 0, f"$ {command}\n{result.stdout}{result.stderr}"
                if expected:
                    shown = [line.replace("/home/me/", f"{home}/") for line in expected]
                    assert result.stdout.splitlines() == shown, f"$ {command}"
                ran += 1
        assert ran >= 12
        assert (work / "run1.csv").is_file()  # the examples ran where they were meant to
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            raise
        log.close()
    assert code == 0, (tmp_path / "daemon.log").read_text()


def wait_ready(daemon: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert daemon.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        try:
            mounted = " /mnt/s3pool fuse" in Path(f"/proc/{daemon.pid}/mounts").read_text()
            if mounted and request(port, "STATUS", timeout=2)[0] == "OK":
                return
        except OSError:
            pass
        time.sleep(0.1)
