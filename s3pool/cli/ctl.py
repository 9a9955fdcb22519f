"""``s3poolctl``: the control protocol for shell users (no nc needed).

    s3poolctl [-H HOST] [-p PORT | -S SOCKET] pull BUCKET KEY [KEY ...]
    s3poolctl pull BUCKET --glob PATTERN  (every match, in key order)
    s3poolctl push BUCKET KEY FILE        (FILE may be relative here)
    s3poolctl glob BUCKET PATTERN
    s3poolctl refresh BUCKET
    s3poolctl status [--json] [--watch [SECONDS]]
    s3poolctl set NAME VALUE

``s3poolctl CMD --help`` shows a command's arguments. Prints the OK payload
on stdout; on ERROR prints the message on stderr and exits 1; exits 2 on a
bad command line, 3 if s3pool cannot be reached (or something else answers
on its port). The port defaults to $S3POOL_PORT, else 9000; with ``--socket``
(or $S3POOL_SOCKET, when neither -H nor -p is given) it talks over the
daemon's Unix socket instead. ``s3pool pull
...`` is the same program, and then says ``s3pool:`` in its messages.

A pull of several keys goes out as a few requests in parallel (at most
``--jobs`` at once), so the progress bar can count the objects done; the
paths still come out in the order asked. The bar is drawn on stderr, only
when stderr is a terminal and the pull takes more than a second.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from s3pool.cli.progress import ProgressReporter, PullProgress, human_bytes, human_duration
from s3pool.client import Client, NotS3Pool, S3PoolClientError, parse_download
from s3pool.settings import SPECS

EPILOG = ("Exit status: 0 OK, 1 the daemon answered ERROR, 2 bad usage, "
          "3 the daemon could not be reached (or the port is not s3pool's).")
DEFAULT_JOBS = 8
WATCH_DEFAULT = 2.0


class CommandParser(argparse.ArgumentParser):
    """A sub-command's parser: a wrong argument count names the expected arguments."""

    expects = ""

    def error(self, message: str) -> NoReturn:
        if self.expects is not None and ("arguments are required" in message
                                          or "unrecognized arguments" in message):
            message = (f"wrong number of arguments: expected {self.expects or 'none'} "
                       f"({message}; see {self.prog} --help)")
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def connection_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """-H, -p and -S, before the command or after it (resolved in main)."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("-H", "--host", default=default,
                        help="daemon address (default $S3POOL_HOST or 127.0.0.1)")
    parser.add_argument("-p", "--port", type=int, default=default,
                        help="daemon port (default $S3POOL_PORT or 9000)")
    parser.add_argument("-S", "--socket", metavar="PATH", default=default,
                        help="talk over the daemon's Unix socket at PATH (s3pool --socket) "
                             "instead of TCP; the default is $S3POOL_SOCKET when set and "
                             "neither -H nor -p is given. Use it to PUSH your files and, as "
                             "an admin, to SET")


def build_parser(prog: str = "s3poolctl") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Talk to a running s3pool daemon.", epilog=EPILOG,
    )
    connection_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=CommandParser)
    shared = CommandParser(add_help=False)  # only lends its options (parents=)
    connection_options(shared, suppress=True)

    def command(name: str, expects: str, help: str, run: Callable[..., int]) -> CommandParser:
        sub = commands.add_parser(name, help=help, description=help, parents=[shared],
                                  epilog=EPILOG)
        sub.expects = expects
        sub.set_defaults(run=run, parser=sub)
        return sub

    pull = command("pull", "BUCKET KEY [KEY ...] or BUCKET --glob PATTERN",
                   "print the local path of each key, in the order given (downloading what "
                   "is not cached); with --glob, of every key matching PATTERN, in key order",
                   run_pull)
    pull.add_argument("bucket", metavar="BUCKET")
    pull.add_argument("keys", metavar="KEY", nargs="*", help="keys to pull")
    pull.add_argument("-g", "--glob", metavar="PATTERN",
                      help="pull every key of BUCKET matching PATTERN (GLOB's rules); "
                           "no match is an error (exit 1)")
    pull.add_argument("-j", "--jobs", type=int, default=DEFAULT_JOBS, metavar="N",
                      help=f"requests in flight at once for many keys (default {DEFAULT_JOBS}); "
                           "the daemon still downloads at most pull_concurrency objects at once")
    pull.add_argument("--no-progress", action="store_true",
                      help="no progress bar, even on a terminal")

    push = command("push", "BUCKET KEY FILE",
                   "upload FILE to KEY (a relative FILE is made absolute)", run_push)
    push.add_argument("bucket", metavar="BUCKET")
    push.add_argument("key", metavar="KEY")
    push.add_argument("file", metavar="FILE")

    glob = command("glob", "BUCKET PATTERN", "print the keys of BUCKET matching PATTERN, in "
                   "key order (* and ? stay within a /, ** crosses it, [...], {a,b})", run_glob)
    glob.add_argument("bucket", metavar="BUCKET")
    glob.add_argument("pattern", metavar="PATTERN")

    refresh = command("refresh", "BUCKET", "list BUCKET again from S3", run_refresh)
    refresh.add_argument("bucket", metavar="BUCKET")

    status = command("status", "", "print counters, settings and downloads in flight as an "
                     "aligned table", run_status)
    status.add_argument("--json", action="store_true",
                        help="print one JSON object instead (numbers as numbers; the "
                             "downloads in flight as a list named downloads_in_flight)")
    status.add_argument("-w", "--watch", type=float, nargs="?", const=WATCH_DEFAULT,
                        metavar="SECONDS",
                        help=f"print it again every SECONDS (default {WATCH_DEFAULT:g}) "
                             "until interrupted")

    names = ", ".join(spec.name for spec in SPECS if not spec.fixed)
    set_ = command("set", "NAME VALUE", f"change a setting (the daemon's user, root and its "
                   f"admin group only): {names}. refresh_interval is "
                   "minutes, as in the original s3pool; any duration also takes 30s, 5m, 2h",
                   run_set)
    set_.add_argument("name", metavar="NAME")
    set_.add_argument("value", metavar="VALUE", help="refresh_interval is minutes, as in the "
                      "original s3pool (or 30s, 5m, 2h); freshness_window and stale_on_error "
                      "seconds (or 5m ...); sizes take K/M/G/T")
    return parser


# --- commands -------------------------------------------------------------

def run_pull(client: Client, args: argparse.Namespace) -> int:
    if args.glob is not None and args.keys:
        raise UsageError("give KEYs or --glob PATTERN, not both")
    if args.glob is None and not args.keys:
        raise UsageError("wrong number of arguments: expected BUCKET KEY [KEY ...] or "
                         "BUCKET --glob PATTERN")
    if args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    keys = args.keys or client.glob(args.bucket, args.glob)
    if not keys:  # as ls of a name that is not there: say so and fail
        print(f"{args.prog}: no key of {args.bucket} matches {args.glob}", file=sys.stderr)
        return 1
    progress = PullProgress(args.bucket, keys)
    show = not args.no_progress and _is_terminal(sys.stderr)
    if show:
        poller = Client(client.host, client.port, timeout=5.0, socket_path=client.socket_path)
        with ProgressReporter(progress, poller.downloads, sys.stderr):
            paths, errors = pull_in_parallel(client, args.bucket, keys, args.jobs, progress)
    else:
        paths, errors = pull_in_parallel(client, args.bucket, keys, args.jobs, progress)
    if errors:
        for message in errors:
            print(f"{args.prog}: {message}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


def pull_in_parallel(client: Client, bucket: str, keys: list[str], jobs: int,
                     progress: PullProgress) -> tuple[list[str], list[str]]:
    """PULL *keys* as a few requests, *jobs* at once; the paths in key order and the errors."""
    # small requests count progress finely; big ones keep the connections few
    size = max(1, math.ceil(len(keys) / (jobs * 4)))
    chunks = [keys[i:i + size] for i in range(0, len(keys), size)]

    results: list[tuple[list[str], str | None]] = [([], None)] * len(chunks)
    failures: list[OSError] = []  # cannot reach the daemon: stop and say so
    pending = iter(enumerate(chunks))
    lock = threading.Lock()

    def worker() -> None:
        while not failures:
            with lock:
                index, chunk = next(pending, (-1, []))
            if index < 0:
                return
            try:
                results[index] = (client.request("PULL", bucket, *chunk), None)
                progress.completed(len(chunk))
            except S3PoolClientError as exc:
                results[index] = ([], str(exc))
            except OSError as exc:
                failures.append(exc)

    # daemon threads: an interrupted pull exits at once instead of waiting for its replies
    threads = [threading.Thread(target=worker, daemon=True)
               for _ in range(min(jobs, len(chunks)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    paths = [path for chunk_paths, _ in results for path in chunk_paths]
    errors = [error for _, error in results if error is not None]
    return paths, errors


def run_push(client: Client, args: argparse.Namespace) -> int:
    # the daemon wants an absolute path
    client.request("PUSH", args.bucket, args.key, os.path.abspath(args.file))
    return 0


def run_glob(client: Client, args: argparse.Namespace) -> int:
    for key in client.glob(args.bucket, args.pattern):
        print(key)
    return 0


def run_refresh(client: Client, args: argparse.Namespace) -> int:
    client.refresh(args.bucket)
    return 0


def run_set(client: Client, args: argparse.Namespace) -> int:
    client.set(args.name, args.value)
    return 0


def run_status(client: Client, args: argparse.Namespace) -> int:
    if args.watch is not None and not args.watch > 0:
        raise UsageError("--watch needs a positive number of seconds")
    clear = args.watch is not None and not args.json and _is_terminal(sys.stdout)
    while True:
        lines = client.status_lines()
        if args.json:
            print(json.dumps(status_json(lines)), flush=True)
        else:
            if clear:
                sys.stdout.write("\x1b[H\x1b[2J")
                print(f"s3pool at {client.host}:{client.port}, every {args.watch:g} s "
                      f"({time.strftime('%H:%M:%S')}; Ctrl-C to stop)\n")
            print(status_table(lines), flush=True)
        if args.watch is None:
            return 0
        time.sleep(args.watch)
        if not clear and not args.json:
            print()


# --- status rendering ------------------------------------------------------

# names of the original s3pool's STATUS: shown only when s3pool's own are absent
LEGACY_ALIASES = {"count_pull": "pulls", "count_pull_hit": "hits", "count_push": "pushes",
                  "count_glob": "globs", "count_refresh": "refreshes", "revision": "version",
                  "up_since": "uptime", "is_master": "version", "master": "version",
                  "standby": "version"}
SETTING_UNITS = {spec.name: spec.unit for spec in SPECS}


def unit_of(name: str) -> str:
    if name in SETTING_UNITS:
        return SETTING_UNITS[name]
    if name.startswith("bytes_") or name.endswith("_bytes"):
        return "B"
    if name.endswith("_percent"):
        return "%"
    if name == "uptime":
        return "s"
    return ""


def format_status_value(name: str, value: str) -> str:
    unit = unit_of(name)
    try:
        number = float(value)
    except ValueError:
        return value
    if unit == "B":
        exact = int(number)
        if name == "max_cache_size" and exact == 0:
            return "0 (no cap)"
        return human_bytes(exact) if exact < 1024 else f"{human_bytes(exact)} ({exact} B)"
    if name == "uptime":
        return human_duration(number)
    if unit:
        return f"{value} {unit}"
    return value


def status_table(lines: list[tuple[str, str]]) -> str:
    """An aligned 'name  value unit' table; downloads in flight listed after it."""
    names = {name for name, _ in lines}
    rows, downloads = [], []
    for name, value in lines:
        if name == "download":
            found = parse_download(value)
            if found is not None:
                downloads.append(found)
            continue
        if LEGACY_ALIASES.get(name) in names:
            continue  # the same figure under s3pool's own name
        rows.append((name, format_status_value(name, value)))
    width = max((len(name) for name, _ in rows), default=0)
    out = [f"{name.ljust(width)}  {value}" for name, value in rows]
    if downloads:
        out.append("")
        out.append(f"downloads in flight ({len(downloads)}):")
        urls = [f"s3://{d.bucket}/{d.key}" for d in downloads]
        url_width = max(len(url) for url in urls)
        for url, d in zip(urls, downloads, strict=True):
            percent = f"{100 * d.done / d.total:3.0f}%" if d.total else "  ?%"
            rate = human_bytes(d.done / d.elapsed) + "/s" if d.elapsed > 0 else "-"
            out.append(f"  {url.ljust(url_width)}  {percent}  {human_bytes(d.done)} / "
                       f"{human_bytes(d.total)}  {human_duration(d.elapsed)}  {rate}")
    return "\n".join(out)


def _typed(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def status_json(lines: list[tuple[str, str]]) -> dict[str, Any]:
    """STATUS as one object: numbers as numbers, the ``download`` lines as a list
    named ``downloads_in_flight`` (``downloads`` is STATUS's counter of downloads done)."""
    result: dict[str, Any] = {}
    downloads = []
    for name, value in lines:
        if name == "download":
            found = parse_download(value)
            if found is not None:
                downloads.append(found._asdict())
            continue
        result[name] = _typed(value)
    result["downloads_in_flight"] = downloads
    return result


# --- main -------------------------------------------------------------------

class UsageError(Exception):
    """A command line that parses but makes no sense (exit 2)."""


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def main(argv: list[str] | None = None, prog: str = "s3poolctl") -> int:
    parser = build_parser(prog)
    args, extra = parser.parse_known_args(argv)
    subparser = args.parser
    if extra:
        subparser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.prog = prog
    socket_path = args.socket
    if socket_path is None and args.host is None and args.port is None:
        socket_path = os.environ.get("S3POOL_SOCKET") or None
    args.host = args.host or os.environ.get("S3POOL_HOST", "127.0.0.1")
    if args.port is None:
        try:
            args.port = int(os.environ.get("S3POOL_PORT", "9000"))
        except ValueError:
            parser.error(f"$S3POOL_PORT is not a port number: {os.environ['S3POOL_PORT']!r}")
    where = socket_path or f"{args.host}:{args.port}"
    client = Client(args.host, args.port, timeout=None, socket_path=socket_path)
    try:
        code: int = args.run(client, args)
        return code
    except UsageError as exc:
        subparser.print_usage(sys.stderr)
        print(f"{subparser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except S3PoolClientError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except NotS3Pool as exc:
        print(f"{prog}: {exc}; is -p (or $S3POOL_PORT) s3pool's port?", file=sys.stderr)
        return 3
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        print(f"{prog}: cannot reach s3pool at {where}: {reason}\n"
              f"{prog}: is the daemon running? Start it with "
              f"'s3pool -p {args.port} -D HOMEDIR', or point -p (or $S3POOL_PORT) at its port",
              file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130 if args.command != "status" else 0


if __name__ == "__main__":
    sys.exit(main())
