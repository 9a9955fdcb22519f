"""The client side without a daemon: argument errors, STATUS parsing and rendering,
the progress arithmetic, settings' units, and what the client says when the port
answers something else than s3pool or nothing at all."""

from __future__ import annotations

import http.server
import json
import re
import socket
import threading

import pytest

from s3pool.cli import ctl
from s3pool.cli.progress import PullProgress, human_bytes
from s3pool.client import Client, Download, NotS3Pool, parse_download
from s3pool.errors import BadRequest
from s3pool.settings import Settings, parse_minutes, parse_seconds

pytestmark = pytest.mark.unit


# --- command line -------------------------------------------------------------

def test_help_of_a_command_shows_its_arguments(capsys):
    with pytest.raises(SystemExit) as info:
        ctl.main(["pull", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "BUCKET" in out and "KEY" in out and "--glob" in out and "--jobs" in out
    with pytest.raises(SystemExit):
        ctl.main(["set", "--help"])
    out = capsys.readouterr().out
    assert "NAME" in out and "VALUE" in out and "minutes" in out


@pytest.mark.parametrize("argv, expected", [
    (["glob", "b"], "expected BUCKET PATTERN"),
    (["glob", "b", "p", "extra"], "expected BUCKET PATTERN"),
    (["push", "b", "k"], "expected BUCKET KEY FILE"),
    (["refresh"], "expected BUCKET"),
    (["status", "x"], "expected none"),
    (["set", "verbose"], "expected NAME VALUE"),
    (["pull", "b"], "BUCKET KEY [KEY ...] or BUCKET --glob PATTERN"),
    (["pull", "b", "k", "--glob", "*"], "not both"),
])
def test_a_wrong_argument_count_names_the_expected_arguments(argv, expected, capsys):
    try:
        code = ctl.main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert f"s3poolctl {argv[0]}" in err


def test_messages_say_s3pool_when_run_as_s3pool_pull(capsys):
    from s3pool.cli.main import main as s3pool_main

    with pytest.raises(SystemExit) as info:
        s3pool_main(["glob", "b"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "s3pool glob: error" in err and "s3poolctl" not in err
    assert s3pool_main(["status", "-p", str(_closed_port())]) == 3
    err = capsys.readouterr().err
    assert err.startswith("s3pool: cannot reach s3pool") and "s3poolctl" not in err


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cannot_reach_suggests_starting_the_daemon(capsys):
    port = _closed_port()
    assert ctl.main(["-p", str(port), "status"]) == 3
    err = capsys.readouterr().err
    assert f"cannot reach s3pool at 127.0.0.1:{port}" in err
    assert "is the daemon running" in err and f"s3pool -p {port} -D HOMEDIR" in err


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_a_port_that_answers_http_says_so_instead_of_dumping_html(capsys):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        assert ctl.main(["-p", str(port), "status"]) == 3
        err = capsys.readouterr().err
        assert f"127.0.0.1:{port} is not s3pool" in err and "HTTP server" in err
        assert "<" not in err and len(err.splitlines()) == 1, err
        with pytest.raises(NotS3Pool):
            Client(port=port).status()
    finally:
        server.shutdown()
        server.server_close()


def test_a_port_that_closes_without_a_word_is_not_s3pool(capsys):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def close_at_once():  # reads the request, answers nothing
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.close()

    thread = threading.Thread(target=close_at_once, daemon=True)
    thread.start()
    try:
        assert ctl.main(["-p", str(listener.getsockname()[1]), "refresh", "b"]) == 3
        assert "without answering" in capsys.readouterr().err
    finally:
        thread.join(5)
        listener.close()


# --- STATUS parsing and rendering --------------------------------------------

def test_download_lines_parse_with_spaces_in_keys():
    assert parse_download("s3://bkt/dir/with space.bin 1024 4096 1.5") == \
        Download("bkt", "dir/with space.bin", 1024, 4096, 1.5)
    assert parse_download("s3://bkt/k 1 2") is None
    assert parse_download("/local/path 1 2 3") is None
    assert parse_download("s3://bkt/k x 2 3") is None


STATUS = [
    ("version", "0.1.0"), ("uptime", "3723.5"), ("pulls", "12"), ("bytes_downloaded", "3145728"),
    ("cache_bytes", "512"), ("disk_used_percent", "41.5"), ("count_pull", "12"),
    ("revision", "0.1.0"), ("master", ""), ("up_since", "2026-01-01 10:00:00 +0000 UTC"),
    ("download", "s3://b/big file 1048576 4194304 2.0"), ("downloads", "7"),
    ("freshness_window", "120"), ("refresh_interval", "5"), ("high_water", "90"),
    ("max_cache_size", "0"),
]


def test_status_table_is_aligned_with_units():
    table = ctl.status_table(STATUS)
    lines = table.splitlines()
    rows = lines[:lines.index("")]
    columns = {re.match(r"^\S+\s+", row).end() for row in rows}
    assert len(columns) == 1, table  # every value starts in the same column
    text = {row.split()[0]: row.split(None, 1)[1] for row in rows}
    assert text["uptime"] == "1h 02m 03s"
    assert text["bytes_downloaded"] == "3.0 MiB (3145728 B)"
    assert text["cache_bytes"] == "512 B"
    assert text["disk_used_percent"] == "41.5 %"
    assert text["freshness_window"] == "120 s"
    assert text["refresh_interval"] == "5 min"
    assert text["high_water"] == "90 %"
    assert text["max_cache_size"] == "0 (no cap)"
    # the original's names repeat s3pool's own figures: not shown twice
    assert "count_pull" not in text and "revision" not in text and "master" not in text
    assert "downloads in flight (1):" in lines
    assert re.search(r"s3://b/big file\s+25%\s+1\.0 MiB / 4\.0 MiB\s+2\.0s\s+512\.0 KiB/s",
                     table), table


def test_status_table_of_the_original_daemon_keeps_its_names():
    table = ctl.status_table([("count_pull", "3"), ("refresh_interval", "15"),
                              ("up_since", "2019-10-14 19:51:18 -0700 PDT")])
    assert "count_pull" in table and "up_since" in table and "15 min" in table


def test_status_json_has_numbers_and_a_download_list():
    result = ctl.status_json(STATUS)
    assert json.loads(json.dumps(result)) == result
    assert result["pulls"] == 12 and result["disk_used_percent"] == 41.5
    assert result["version"] == "0.1.0" and result["master"] == ""
    assert result["downloads"] == 7  # the counter keeps its name; the list has its own
    assert result["downloads_in_flight"] == [{"bucket": "b", "key": "big file", "done": 1048576,
                                    "total": 4194304, "elapsed": 2.0}]


# --- progress arithmetic --------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_counts_objects_bytes_and_rate():
    clock = Clock()
    progress = PullProgress("b", ["k1", "k2", "k3", "k4"], clock=clock)
    mib = 1 << 20
    clock.now += 1
    progress.update([Download("b", "k1", 2 * mib, 8 * mib, 1.0),
                     Download("b", "k2", 0, 8 * mib, 0.1),
                     Download("other", "k1", 5 * mib, 9 * mib, 1.0),  # not ours
                     Download("b", "someone-else", 5 * mib, 9 * mib, 1.0)])
    assert progress.bytes_done == 2 * mib and progress.bytes_known == 16 * mib
    assert progress.fraction() == pytest.approx((0.25 + 0) / 4)
    clock.now += 1
    progress.update([Download("b", "k2", 4 * mib, 8 * mib, 1.1)])  # k1 finished
    progress.completed(1)
    assert progress.bytes_done == 12 * mib  # k1 whole + 4 MiB of k2
    assert progress.fraction() == pytest.approx((1 + 0.5) / 4)
    assert progress.rate() == pytest.approx(12 * mib / 2)
    line = progress.render(100)
    assert "1/4 objects" in line and "12.0 MiB / 16.0 MiB" in line and "6.0 MiB/s" in line
    assert line.startswith("[") and "38%" in line
    assert len(progress.render(40)) < 40  # never wraps a narrow terminal
    progress.completed(3)
    assert "4/4 objects" in progress.summary() and progress.fraction() == 1.0


def test_progress_does_not_go_back_when_a_download_ends_before_its_reply():
    """A poll between the end of a download (STATUS no longer lists it) and
    the PULL's reply (the object counted done) showed 0%: the bar went from
    88% back to 0 (CI saw [40, 52, 64, 76, 88, 0]). An ended download counts
    whole until its reply comes."""
    progress = PullProgress("b", ["k1", "k2"], clock=Clock())
    mib = 1 << 20
    progress.update([Download("b", "k1", 7 * mib, 8 * mib, 1.0)])
    assert progress.fraction() == pytest.approx(0.875 / 2)
    progress.update([])  # k1 ended; its reply is still on its way
    assert progress.fraction() == pytest.approx(1 / 2)
    progress.completed(1)  # the reply: k1 is not counted twice
    assert progress.fraction() == pytest.approx(1 / 2)
    progress.completed(1)  # k2, a cache hit never seen in flight
    assert progress.fraction() == 1.0 and "2/2 objects" in progress.render()


def test_progress_of_cache_hits_is_objects_only():
    progress = PullProgress("b", ["a", "b"], clock=Clock())
    progress.update([])
    progress.completed(2)
    assert "2/2 objects" in progress.render() and "100%" in progress.render()
    assert "B/s" not in progress.render() and "downloaded" not in progress.summary()
    assert human_bytes(0) == "0 B" and human_bytes(1536) == "1.5 KiB"


# --- settings: units on the wire and on the command line -------------------------

def test_refresh_interval_is_minutes_on_the_wire_and_seconds_inside():
    settings = Settings()
    assert settings.refresh_interval == 300  # seconds inside
    assert dict(settings.items())["refresh_interval"] == 5  # minutes in STATUS
    settings.set("refresh_interval", "2")  # the original's clients send minutes
    assert settings.refresh_interval == 120
    assert dict(settings.items())["refresh_interval"] == 2
    settings.set("REFRESH_INTERVAL", "30s")
    assert settings.refresh_interval == 30 and dict(settings.items())["refresh_interval"] == 0.5
    settings.set("refresh_interval", "2h")
    assert settings.refresh_interval == 7200
    for bad in ("-1", "soon", "5 parsecs", "nan", "1e9"):
        with pytest.raises(BadRequest):
            settings.set("refresh_interval", bad)


def test_own_durations_are_seconds_with_unit_suffixes():
    assert parse_seconds("90") == 90 and parse_seconds("5m") == 300
    assert parse_seconds("1.5h") == 5400 and parse_seconds("2d") == 172800
    assert parse_seconds(" 30 s ") == 30 and parse_seconds(".5") == 0.5
    assert parse_minutes("15") == 900 and parse_minutes("15s") == 15
    settings = Settings()
    settings.set("freshness_window", "2m")
    assert dict(settings.items())["freshness_window"] == 120
    for bad in ("", "5 weeks", "m", "-3s", "400d"):
        with pytest.raises(ValueError):
            parse_seconds(bad)
