"""The client as a user runs it: ``s3poolctl`` (and ``s3pool pull``) as a subprocess
against the real daemon (and, for the byte counts of the progress bar, against a
small fake daemon that lists downloads in STATUS), stderr on a pseudo-terminal
where the bar must show and on a pipe where it must not; the original's STATUS
names, SET refresh_interval in minutes, its start-up flags, and the Prometheus
endpoint."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request

import pytest

from conftest import ROOT, request, wait_until

pytestmark = pytest.mark.e2e

MIB = 1 << 20


def ctl_env(port: int) -> dict[str, str]:
    return dict(os.environ, S3POOL_PORT=str(port), PYTHONPATH=str(ROOT))


def run_ctl(port: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s3pool.cli.ctl", *args], capture_output=True,
                          text=True, env=ctl_env(port), timeout=timeout, cwd=str(ROOT))


def run_with_tty_stderr(argv: list[str], env: dict[str, str], timeout: float = 30,
                        columns: int = 100) -> tuple[int, str, str]:
    """Run *argv* with stderr on a pseudo-terminal (*columns* wide: 0 leaves the
    size unset, as a pty made by a program that never sets it), stdout on a pipe."""
    master, slave = os.openpty()
    if columns:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave,
                               stdin=subprocess.DEVNULL, env=env, cwd=str(ROOT))
    assert process.stdout is not None  # stdout=PIPE
    os.close(slave)
    terminal = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            terminal += chunk
        stdout = process.stdout.read().decode()
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
    return code, stdout, terminal.decode(errors="replace")


# --- progress ------------------------------------------------------------------

def test_progress_bar_on_a_terminal_during_a_slow_pull(daemon, s3, bucket, moto_server):
    s3.put_object(Bucket=bucket, Key="slow.bin", Body=os.urandom(2 * MIB))
    s3.put_object(Bucket=bucket, Key="fast.bin", Body=b"fast")
    # 32 chunks of 64 KiB at 0.06 s each: about 2 s
    moto_server.app.slow_paths[f"/{bucket}/slow.bin"] = 0.06
    code, stdout, terminal = run_with_tty_stderr(
        [sys.executable, "-m", "s3pool.cli.main", "pull", bucket, "fast.bin", "slow.bin"],
        ctl_env(daemon.port))
    assert code == 0, terminal
    assert stdout.splitlines() == [str(daemon.data / bucket / "fast.bin"),
                                   str(daemon.data / bucket / "slow.bin")]
    assert "\r" in terminal and "objects" in terminal, terminal
    assert re.search(r"\[[#.]+\]\s+\d+%\s+[0-2]/2 objects", terminal), terminal
    assert "2/2 objects" in terminal  # the closing summary
    assert all(len(line) < 100 for line in re.split(r"[\r\n]", terminal))


def test_progress_bar_on_a_terminal_without_a_size(daemon, s3, bucket, moto_server):
    # a pty nobody sized (TIOCGWINSZ says 0 columns): the bar takes a default width
    s3.put_object(Bucket=bucket, Key="slow.bin", Body=os.urandom(2 * MIB))
    moto_server.app.slow_paths[f"/{bucket}/slow.bin"] = 0.06
    code, stdout, terminal = run_with_tty_stderr(
        [sys.executable, "-m", "s3pool.cli.ctl", "pull", bucket, "slow.bin"],
        ctl_env(daemon.port), columns=0)
    assert code == 0, terminal
    assert stdout.strip() == str(daemon.data / bucket / "slow.bin")
    assert re.search(r"\[[#.]+\]\s+\d+%\s+[01]/1 objects", terminal), terminal
    shown = re.split(r"[\r\n]", terminal.replace("\x1b[K", ""))
    assert all(len(line) < 80 for line in shown), shown


def test_no_progress_when_stderr_is_not_a_terminal_and_glob_pulls_every_match(
        daemon, s3, bucket, moto_server):
    keys = [f"in/part-{i:02d}.csv" for i in range(12)]
    for key in reversed(keys):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    s3.put_object(Bucket=bucket, Key="in/readme.txt", Body=b"not a match")
    s3.put_object(Bucket=bucket, Key="out/part-00.csv", Body=b"not a match")
    moto_server.app.slow_paths[f"/{bucket}/in/part-05.csv"] = 1.5  # the pull takes > 1 s
    started = time.monotonic()
    result = run_ctl(daemon.port, "pull", bucket, "--glob", "in/*.csv", "--jobs", "3")
    assert time.monotonic() - started > 1.2
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # a script sees the paths and nothing else
    assert result.stdout.splitlines() == [str(daemon.data / bucket / key) for key in keys]
    for key in keys:
        assert (daemon.data / bucket / key).read_bytes() == key.encode()
    assert not (daemon.data / bucket / "in" / "readme.txt").exists()
    # no match: nothing on stdout, a message on stderr, a failure (as ls of nothing)
    none = run_ctl(daemon.port, "pull", bucket, "--glob", "nothing/*")
    assert none.returncode == 1 and none.stdout == "" and "no key" in none.stderr
    # a failed key fails the pull and is named; the rest is still cached
    bad = run_ctl(daemon.port, "pull", bucket, "in/part-00.csv", "in/absent", "in/part-01.csv")
    assert bad.returncode == 1 and bad.stdout == "" and "in/absent" in bad.stderr


class FakeDaemon:
    """Speaks the protocol: PULL takes *seconds*, STATUS lists the download growing."""

    def __init__(self, seconds: float = 2.0, total: int = 8 * MIB) -> None:
        self.seconds = seconds
        self.total = total
        self.pull_started: float | None = None
        self.status_polls = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            words = json.loads(data)
            if words[0] == "PULL":
                self.pull_started = time.monotonic()
                time.sleep(self.seconds)
                self.pull_started = None
                reply = "OK\n" + "".join(f"/cache/{words[1]}/{key}\n" for key in words[2:])
            elif words[0] == "STATUS":
                self.status_polls += 1
                lines = ["pulls 1"]
                started = self.pull_started
                if started is not None:
                    elapsed = time.monotonic() - started
                    done = min(self.total, int(self.total * elapsed / self.seconds))
                    lines.append(f"download s3://bkt/big file.bin {done} {self.total} "
                                 f"{elapsed:.1f}")
                    lines.append("download s3://bkt/not-ours 5 10 1.0")
                reply = "OK\n" + "".join(line + "\n" for line in lines)
            else:
                reply = "ERROR\nunexpected\n"
            conn.sendall(reply.encode())

    def close(self) -> None:
        self.listener.close()


def test_progress_bar_shows_bytes_and_rate_from_status_download_lines():
    fake = FakeDaemon(seconds=2.5)
    try:
        code, stdout, terminal = run_with_tty_stderr(
            [sys.executable, "-m", "s3pool.cli.ctl", "pull", "bkt", "big file.bin"],
            ctl_env(fake.port))
    finally:
        fake.close()
    assert code == 0, terminal
    assert stdout == "/cache/bkt/big file.bin\n"
    assert fake.status_polls >= 3  # polled a few times a second once the bar is up
    frames = [frame for frame in re.split(r"[\r\n]", terminal) if "objects" in frame]
    assert any(re.search(r"\d+\.\d MiB / 8\.0 MiB\s+\d+\.\d MiB/s", f) for f in frames), frames
    percents = [int(m.group(1)) for f in frames if (m := re.search(r"\]\s+(\d+)%", f))]
    assert percents and percents[0] >= 20 and percents == sorted(percents)  # after ~1 s
    assert "1/1 objects, 8.0 MiB downloaded" in terminal


def test_no_bar_when_the_pull_is_quick(daemon, s3, bucket):
    s3.put_object(Bucket=bucket, Key="quick", Body=b"q")
    code, stdout, terminal = run_with_tty_stderr(
        [sys.executable, "-m", "s3pool.cli.ctl", "pull", bucket, "quick"], ctl_env(daemon.port))
    assert code == 0 and stdout.strip() == str(daemon.data / bucket / "quick")
    assert terminal == ""


# --- status ---------------------------------------------------------------------

def test_status_table_json_and_watch(daemon, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x" * 3000)
    daemon.ok("PULL", bucket, "k")
    table = run_ctl(daemon.port, "status")
    assert table.returncode == 0, table.stderr
    rows = [row for row in table.stdout.splitlines() if row.strip()]
    assert len({re.match(r"^\S+\s+", row).end() for row in rows}) == 1, table.stdout
    values = {row.split()[0]: row.split(None, 1)[1] for row in rows}
    assert values["pulls"] == "1" and values["refresh_interval"] == "5 min"
    assert values["freshness_window"] == "120 s" and values["high_water"] == "90 %"
    assert values["bytes_downloaded"] == "2.9 KiB (3000 B)"
    as_json = json.loads(run_ctl(daemon.port, "status", "--json").stdout)
    assert as_json["pulls"] == 1 and as_json["cache_objects"] == 1
    assert as_json["refresh_interval"] == 5 and as_json["downloads_in_flight"] == []
    assert as_json["downloads"] == 1  # STATUS's counter, under its own name
    watch = subprocess.Popen([sys.executable, "-m", "s3pool.cli.ctl", "status", "--watch", "0.2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=ctl_env(daemon.port), cwd=str(ROOT))
    shown: list[str] = []

    def read() -> None:
        for line in watch.stdout:
            shown.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:  # three tables, one every 0.2 s
        wait_until(lambda: sum("cache_objects" in line for line in list(shown)) >= 3,
                   what="status --watch to show its table three times")
    finally:
        watch.send_signal(signal.SIGINT)
    reader.join(10)
    err = watch.stderr.read()
    assert watch.wait(10) == 0, err


# --- drop-in compatibility with the original s3pool --------------------------------

def test_status_answers_the_original_names(daemon, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    daemon.ok("PULL", bucket, "k")
    daemon.ok("PULL", bucket, "k")
    daemon.ok("GLOB", bucket, "*")
    status = daemon.status()
    assert status["count_pull"] == "2" and status["count_pull_hit"] == "1"
    assert status["count_glob"] == "1" and status["count_push"] == "0"
    assert int(status["count_refresh"]) >= 1
    assert status["revision"] == status["version"]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}", status["up_since"])
    assert status["is_master"] == "false"
    assert status["pull_concurrency"] == "20" and status["verbose"] == "2"
    assert status["pulls"] == "2"  # s3pool's own names stay


def test_status_ignores_extra_arguments_as_the_original(daemon):
    status, lines = daemon.request("STATUS", "x")
    assert status == "OK" and any(line.startswith("count_pull ") for line in lines), lines


def test_set_clamps_below_the_minimum_as_the_original(daemon):
    daemon.ok("SET", "verbose", "-5")  # the original: OK, verbose 0
    assert daemon.status()["verbose"] == "0"
    daemon.ok("SET", "verbose", "2")
    daemon.ok("SET", "pull_concurrency", "0")  # s3pool's minimum is 1 (the original's 5)
    assert daemon.status()["pull_concurrency"] == "1"
    daemon.ok("SET", "pull_concurrency", "-3")
    assert daemon.status()["pull_concurrency"] == "1"
    daemon.ok("SET", "pull_concurrency", "3")  # kept: the original raised it to 5
    assert daemon.status()["pull_concurrency"] == "3"
    for name, value in (("verbose", "loud"), ("pull_concurrency", "many")):
        status, lines = daemon.request("SET", name, value)  # not a number: ERROR in both
        assert status == "ERROR" and name in lines[0], lines


def test_the_original_counters_count_requests(daemon, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    daemon.ok("PULL", bucket, "k", "k")  # one request of two objects
    assert daemon.request("PULL", bucket)[0] == "ERROR"  # malformed: counted all the same
    assert daemon.request("PULL", bucket, "../k")[0] == "ERROR"
    assert daemon.request("PUSH", bucket, "p", "relative/path")[0] == "ERROR"
    assert daemon.request("PUSH", bucket)[0] == "ERROR"
    daemon.ok("REFRESH", bucket)
    assert daemon.request("REFRESH")[0] == "ERROR"
    status = daemon.status()
    assert status["count_pull"] == "3" and status["pulls"] == "2"
    assert status["count_push"] == "2" and status["pushes"] == "0"
    assert status["count_refresh"] == "2"
    # the list monitor's background refreshes count too (no request makes them)
    daemon.ok("SET", "refresh_interval", "1s")
    deadline = time.monotonic() + 30
    while int(daemon.status()["refreshes"]) < 2:  # the REFRESH request's, then the monitor's
        assert time.monotonic() < deadline, daemon.status()
        time.sleep(0.2)
    daemon.ok("SET", "refresh_interval", "0")
    status = daemon.status()
    assert int(status["refresh_rounds"]) >= 1
    assert int(status["count_refresh"]) >= 3, status
    assert status["count_pull"] == "3"  # STATUS and SET are not PULLs


def test_set_refresh_interval_is_minutes_as_in_the_original(daemon, s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    daemon.ok("GLOB", bucket, "*")  # the bucket is in use: the list monitor refreshes it
    assert daemon.status()["refresh_interval"] == "5"  # the default, 300 s, in minutes
    daemon.ok("SET", "refresh_interval", "1s")  # s3pool's suffixes work too
    assert daemon.status()["refresh_interval"] == "0.0167"
    # the positive control: at one second, rounds follow each other; how long
    # two took here is how long one second's worth of rounds takes to show
    started = time.monotonic()
    wait_until(lambda: int(daemon.status()["refresh_rounds"]) >= 2,
               what="two refresh rounds a second apart")
    two_rounds = time.monotonic() - started
    daemon.ok("SET", "refresh_interval", "1")  # one minute, not one second
    assert daemon.status()["refresh_interval"] == "1"
    rounds = daemon.status()["refresh_rounds"]  # a round under way counts already
    time.sleep(max(2.5, 2 * two_rounds))  # at one second, another round would be in
    assert daemon.status()["refresh_rounds"] == rounds
    daemon.ok("SET", "freshness_window", "2m")
    assert daemon.status()["freshness_window"] == "120"
    status, lines = daemon.request("SET", "refresh_interval", "soon")
    assert status == "ERROR" and "refresh_interval" in lines[0]


def test_refresh_interval_on_the_command_line_is_minutes_too(start_daemon):
    daemon = start_daemon(args=["--refresh-interval", "2", "--freshness-window", "1m"])
    status = daemon.status()
    assert status["refresh_interval"] == "2" and status["freshness_window"] == "60"
    assert daemon.stop() == 0


def test_the_original_start_up_flags_are_accepted(start_daemon, tmp_path):
    daemon = start_daemon(args=["-n", "-pidfile", "s3pool.custom.pid", "-c", "7",
                                "-daemonprep", "-M", "master-host"])
    pidfile = daemon.home / "s3pool.custom.pid"  # relative to HOMEDIR, as the original
    assert pidfile.read_text().strip() == str(daemon.process.pid)
    assert daemon.status()["pull_concurrency"] == "7"
    # -daemonprep: the original's detached child: its own session, and once it
    # is ready (a moment after STATUS first answers) no terminal
    assert os.getsid(daemon.process.pid) == daemon.process.pid
    deadline = time.monotonic() + 30
    while stdio_of(daemon.process.pid) != ["/dev/null"] * 3:
        assert time.monotonic() < deadline, stdio_of(daemon.process.pid)
        time.sleep(0.05)
    assert daemon.stop() == 0
    assert not pidfile.exists()
    assert "ignoring -M" in (daemon.home / "log" / "s3pool.log").read_text()


def stdio_of(pid: int) -> list[str]:
    return [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)]


def daemon_env(moto_server) -> dict[str, str]:
    from conftest import CREDENTIALS

    env = dict(os.environ, **CREDENTIALS, AWS_ENDPOINT_URL=moto_server.endpoint)
    env.pop("AWS_PROFILE", None)
    return env


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}") and \
            "zombie" not in open(f"/proc/{pid}/status").read():
        assert time.monotonic() < deadline, f"pid {pid} still runs"
        time.sleep(0.1)


@pytest.mark.parametrize("flags", [
    ["-p", "{port}", "-D", "{home}"],
    ["--p", "{port}", "--D", "{home}"],  # Go's flag package takes - and -- alike
    ["-p={port}", "-D={home}", "-n=false"],
])
def test_dash_d_returns_once_the_daemon_answers(tmp_path, moto_server, flags):
    from conftest import free_port

    port = free_port()
    home = tmp_path / "home"
    argv = [flag.format(port=port, home=home) for flag in flags]
    result = subprocess.run([sys.executable, "-m", "s3pool.cli.main", "-d", *argv,
                             "--embedded-s3", "no"], env=daemon_env(moto_server), cwd=str(ROOT),
                            capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    status, lines = request(port, "STATUS", timeout=5)  # at once: no waiting
    assert status == "OK"
    pid = int(dict(line.split(" ", 1) for line in lines)["pid"])
    try:
        assert f"running in the background (pid {pid})" in result.stderr
        assert os.getsid(pid) == pid and stdio_of(pid) == ["/dev/null"] * 3
        assert (home / "s3pool.pid").read_text().strip() == str(pid)
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_gone(pid)


def test_dash_d_reports_a_failed_start_and_its_exit_code(tmp_path, moto_server):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "s3pool.cli.main", "-d", "-p", str(port),
                                 "-D", str(tmp_path / "home"), "--embedded-s3", "no"],
                                env=daemon_env(moto_server), cwd=str(ROOT), capture_output=True,
                                text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 1 and "in use" in result.stderr, result.stderr


def test_go_flag_forms_of_the_original_and_its_child(tmp_path, moto_server):
    from conftest import free_port

    port = free_port()
    home = tmp_path / "home"
    # what the original's parent ran as its child, plus the forms its scripts used
    process = subprocess.Popen(
        [sys.executable, "-m", "s3pool.cli.main", "--daemonprep", f"--p={port}", "-D", str(home),
         "-n=true", "-c=7", "--pidfile", "go.pid", "--embedded-s3", "no"],
        env=daemon_env(moto_server), cwd=str(ROOT), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out = process.stdout.read().decode()  # EOF once it is ready and detached
        assert process.poll() is None, out
        assert f"running in the background (pid {process.pid})" in out
        status, lines = request(port, "STATUS", timeout=5)
        assert status == "OK"
        assert dict(line.split(" ", 1) for line in lines)["pull_concurrency"] == "7"
        assert (home / "go.pid").read_text().strip() == str(process.pid)
    finally:
        process.terminate()
        assert process.wait(30) == 0
        process.stdout.close()


@pytest.mark.parametrize("argv, expected", [
    (["--p", "9000", "--D", "/h"], ["-p", "9000", "-D", "/h"]),
    (["-p=9000", "-D=/h", "-n=true"], ["-p", "9000", "-D", "/h", "-n"]),
    (["-n=false", "-p", "1"], ["-p", "1"]),
    (["-n=F", "--daemonprep=1", "-pidfile=x.pid"], ["-daemonprep", "-pidfile", "x.pid"]),
    (["-D", "--p", "-p", "2"], ["-D", "--p", "-p", "2"]),  # a value is never rewritten
    (["--bucket", "-n=true", "--max-cache-size=1G"],
     ["--bucket", "-n=true", "--max-cache-size=1G"]),
])
def test_go_flag_forms_are_rewritten(argv, expected):
    from s3pool.cli.main import build_parser, go_flags

    assert go_flags(argv, build_parser()) == expected


# --- Prometheus -----------------------------------------------------------------

def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def metric(text: str, metric_name: str, **labels: str) -> float:
    """The value of one sample (prometheus_client sorts the labels)."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    key = metric_name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
                        if labels else "")
    assert key in samples, f"{key} not in the metrics:\n{text}"
    return samples[key]


def test_metrics_endpoint_has_the_status_counters_and_latencies(start_daemon, s3, bucket):
    from conftest import free_port

    port = free_port()
    daemon = start_daemon(args=["--metrics-port", str(port)])
    s3.put_object(Bucket=bucket, Key="m", Body=b"m" * 1000)
    daemon.ok("PULL", bucket, "m")
    daemon.ok("PULL", bucket, "m")
    daemon.request("PULL", bucket, "../bad")
    text = scrape(port)
    status = daemon.status()
    assert metric(text, "s3pool_pulls_total") == int(status["pulls"]) == 2
    assert metric(text, "s3pool_hits_total") == 1
    assert metric(text, "s3pool_bytes_downloaded_total") == 1000
    assert metric(text, "s3pool_cache_bytes") == 1000
    assert metric(text, "s3pool_cache_objects") == 1
    assert metric(text, "s3pool_downloads_in_progress") == 0
    assert metric(text, "s3pool_s3_errors_total") == 0
    assert metric(text, "s3pool_request_seconds_count", command="PULL", status="ok") == 2
    assert metric(text, "s3pool_request_seconds_count", command="PULL", status="error") == 1
    assert metric(text, "s3pool_s3_request_seconds_count", operation="GetObject") >= 1
    assert metric(text, "s3pool_setting", name="pull_concurrency") == 20
    assert "count_pull" not in text  # the original's names are not exported twice
    assert f"Prometheus metrics on http://127.0.0.1:{port}/metrics" in daemon.log_text()
    assert daemon.stop() == 0


def test_metrics_count_s3_errors_and_are_off_by_default(start_daemon, tmp_path):
    from conftest import free_port

    dead = free_port()  # nothing listens there: every S3 call fails to connect
    port = free_port()
    daemon = start_daemon(args=["--metrics-port", str(port)], home=tmp_path / "dead",
                          endpoint=f"http://127.0.0.1:{dead}")
    status, lines = daemon.request("PULL", "bkt", "k")
    assert status == "ERROR"
    assert int(daemon.status()["s3_errors"]) >= 1
    text = scrape(port)
    assert metric(text, "s3pool_s3_errors_total") >= 1
    assert metric(text, "s3pool_s3_failures_total", operation="GetObject",
                  code="EndpointConnectionError") >= 1
    assert daemon.stop() == 0
    with pytest.raises(OSError):
        scrape(port)  # gone with the daemon
    quiet = start_daemon(home=tmp_path / "quiet")
    assert "Prometheus" not in quiet.log_text()
    with pytest.raises(OSError):
        scrape(port)
    assert quiet.stop() == 0
