"""``s3pool``: the daemon's command line.

``s3pool -p PORT -D HOMEDIR [-m MOUNTPOINT] [options]`` runs the daemon in
the foreground; with ``-d`` it returns once the daemon answers, leaving it in
the background, as the original s3pool did. The original's flags also parse
the way Go's flag package took them (``--p 9000``, ``-p=9000``, ``-n=true``).
``s3pool pull|push|glob|refresh|status|set ...`` is the client (the same as
``s3poolctl``). The option list here is also what the man page prints (see
``s3pool.cli.manpage``), so the two cannot drift.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
from typing import Any, TypeVar

from s3pool import __version__
from s3pool.settings import SPECS

# published.DEFAULT_KEY, spelled out so the command line parses with the
# standard library alone (./dev.sh checks it before the venv exists)
DEFAULT_KEY = ".s3pool/listing.jsonl.gz"

log = logging.getLogger(__name__)

EXIT_CODES = (
    (0, "clean shutdown (SIGINT or SIGTERM)"),
    (1, "a fatal error at run time (see the log)"),
    (2, "bad command line"),
    (3, "another s3pool is already running on this HOMEDIR"),
    (4, "the mount point cannot be used, or FUSE is unavailable"),
)


def embedded_port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535 - 7:
        raise ValueError(f"not a port from 1 to 65528: {text!r}")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3pool",
        description="Keep a cache of S3 objects on local disk and serve them as paths over a "
                    "JSON control socket and as files under a read-through FUSE mount.",
        epilog="Client commands: s3pool pull|push|glob|refresh|status|set ... (see s3poolctl "
               "--help). S3 endpoint, region and credentials come from the standard AWS chain "
               "(AWS_ENDPOINT_URL, AWS_PROFILE, AWS_ACCESS_KEY_ID, ...).",
    )
    parser.add_argument("-p", "--port", type=int, required=True,
                        help="TCP port of the control socket (0 picks a free one)")
    parser.add_argument("-D", "--homedir", required=True, metavar="HOMEDIR",
                        help="directory holding log/, tmp/, data/ and state/ (created if missing)")
    parser.add_argument("-m", "--mountpoint", metavar="DIR",
                        help="mount the FUSE view here, read-only unless --mount-writes (an "
                             "empty directory; created if missing; an empty DIR means no mount)")
    parser.add_argument("-b", "--bind", default="127.0.0.1", metavar="ADDRESS",
                        help="address the control socket listens on (default 127.0.0.1; the "
                             "socket has no authentication, so bind wider only on a trusted "
                             "network)")
    parser.add_argument("--bucket", action="append", default=[], metavar="BUCKET",
                        help="show BUCKET at the mount's root and keep its listing fresh; "
                             "one HEAD of it at start sets the S3 client up (repeatable)")
    parser.add_argument("--embedded-s3", choices=("auto", "yes", "no"), default="auto",
                        help="run a local demo S3 (SeaweedFS, data kept in HOMEDIR/s3/) instead "
                             "of a real one: 'auto' does so only when no S3 endpoint and no AWS "
                             "credentials are configured")
    parser.add_argument("--embedded-s3-port", type=embedded_port, default=8333, metavar="PORT",
                        help="loopback port of the embedded S3's endpoint, the same at every "
                             "start; it also uses the 7 ports after it (default 8333)")
    parser.add_argument("--allow-other", action="store_true",
                        help="let users other than the one running s3pool read the mount (and "
                             "with --mount-writes write in it, as --mount-umask allows)")
    parser.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                        help="serve Prometheus metrics over HTTP on this port (default 0 = off)")
    parser.add_argument("--metrics-bind", default="127.0.0.1", metavar="ADDRESS",
                        help="address the metrics endpoint listens on (default 127.0.0.1)")
    parser.add_argument("--socket", metavar="PATH", dest="socket_path",
                        help="also serve the control protocol on a Unix-domain socket at PATH "
                             "(permissions from --socket-mode; replaced if stale, removed at "
                             "exit). The kernel tells s3pool who the client is there, so local "
                             "users should PUSH and SET through it")
    parser.add_argument("--admin-group", metavar="GROUP",
                        help="members of GROUP (a name or gid) may SET, besides the daemon's "
                             "own user and root")
    for switch, text in (
            ("--allow-remote-admin",
             "let clients on other hosts SET (they have no local uid to check)"),
            ("--publish-listing",
             "after each REFRESH, upload the listing (compressed, with the time it was "
             "taken) to --published-listing-key in the bucket, for hosts run with "
             "--use-published-listing"),
            ("--use-published-listing",
             "REFRESH (and the background refresher) fetch the published listing with a "
             "conditional GET instead of listing the bucket; they list when it is missing "
             "or older than published_listing_max_age")):
        parser.add_argument(switch, action="store_true", help=text)
    parser.add_argument("--published-listing-key", default=DEFAULT_KEY, metavar="KEY",
                        help=f"key of the published listing in each bucket (default "
                             f"{DEFAULT_KEY}; keys under .s3pool/ are never shown)")
    parser.add_argument("--push-endpoint", metavar="URL",
                        help="send PUSH (and the published listing) to this S3 endpoint "
                             "instead of AWS_ENDPOINT_URL: for a read tier in front of S3, "
                             "which must not take writes")
    parser.add_argument("--shared-cache", metavar="s3://BUCKET/PREFIX",
                        help="a shared cache tier for a fleet: a bucket on an S3-compatible "
                             "engine read before the origin (objects addressed by origin "
                             "bucket, key and ETag; bytes checked against the origin's MD5 "
                             "ETag or full-object checksum, so an object with neither is "
                             "always read from the origin) and written in the background "
                             "with what was fetched from the origin. Which version is "
                             "current is still the origin's word. A tier that errs, times "
                             "out or sends other metadata or bytes: that object comes from "
                             "the origin, with one log line; after 3 failures in a row the "
                             "tier is skipped for 30 s (doubling, up to 10 min); after 8 "
                             "misses in a row (64 once it has served this host) it is not "
                             "asked for 2 s (the origin's GET alone). STATUS: "
                             "shared_cache_*. See docs/fleet.md")
    parser.add_argument("--shared-cache-endpoint", metavar="URL",
                        help="the shared cache tier's S3 endpoint (default: the origin's)")
    parser.add_argument("--shared-cache-profile", metavar="NAME",
                        help="AWS profile with the shared cache tier's credentials "
                             "(default: the standard AWS chain)")
    for spec in SPECS:
        names = [*SHORT_OPTIONS.get(spec.name, ()), spec.option]
        default = spec.show(spec.default) + (f" {spec.unit}" if spec.unit else "")
        # --mount-writes alone: on
        flag: dict[str, Any] = {"nargs": "?", "const": True} if spec.flag else {}
        parser.add_argument(*names, dest=spec.name, metavar=spec.metavar, default=None,
                            type=spec.parse, **flag,
                            help=f"{spec.help} (default {default})".replace("%", "%%"))
    add_original_flags(parser)
    parser.add_argument("--version", action="version", version=f"s3pool {__version__}")
    return parser


# -v is ours; -c is the original s3pool's flag for the pull concurrency
SHORT_OPTIONS = {"verbose": ("-v",), "pull_concurrency": ("-c",)}
# start-up flags of the original s3pool that mean nothing here: accepted, warned about
IGNORED_FLAGS = {"-s": "an internal flag of the original s3pool",
                 "-M": "the original's master host for GLOB"}
# the original's flags as Go's flag package parsed them: -name and --name alike,
# a value after the flag or after "=", a boolean as -n, -n=true or -n=false
GO_FLAGS = {"p": "-p", "D": "-D", "n": "-n", "daemonprep": "-daemonprep",
            "pidfile": "-pidfile", "c": "-c", "s": "-s", "M": "-M"}
GO_BOOLEANS = {"n", "daemonprep", "s"}
GO_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
GO_FALSE = {"0", "f", "F", "false", "FALSE", "False"}
_GO_FLAG = re.compile(r"--?([A-Za-z]+)(?:=(.*))?", re.S)
# what the detached daemon prints last on the pipe to the s3pool that started it
DETACHED = "s3pool: running in the background (pid {pid})"


def add_original_flags(parser: argparse.ArgumentParser) -> None:
    """The original s3pool's start-up flags, so its start scripts keep working."""
    parser.add_argument("-d", "--daemon", action="store_true",
                        help="as the original s3pool without -n: start the daemon in the "
                             "background (its own session, stdin, stdout and stderr on "
                             "/dev/null, the log in HOMEDIR/log) and return once it answers "
                             "on its control port, exit 0; a failed start prints its error "
                             "and returns its exit code. For old start scripts; not for "
                             "systemd units (Type=simple wants the foreground)")
    parser.add_argument("-n", dest="no_daemon", action="store_true",
                        help="stay in the foreground (the default; wins over -d, as the "
                             "original's -n did)")
    parser.add_argument("-pidfile", "--pidfile", metavar="PATH",
                        help="also write the daemon's pid to PATH (relative to HOMEDIR, as in "
                             "the original s3pool); removed at exit. The lock against a second "
                             "daemon stays HOMEDIR/s3pool.pid")
    parser.add_argument("-daemonprep", "--daemonprep", dest="daemonprep", action="store_true",
                        help="run as the original's detached child did: in a session of its "
                             "own, with stdin, stdout and stderr on /dev/null once it is "
                             "ready (what -d starts)")
    parser.add_argument("-s", dest="ignored_s", action="store_true",
                        help="ignored with a warning (an internal flag of the original)")
    parser.add_argument("-M", dest="ignored_M", metavar="HOST",
                        help="ignored with a warning (the original's master host for GLOB)")


CLIENT_COMMANDS = ("pull", "push", "glob", "refresh", "status", "set")


def go_flags(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """*argv* with the original's flags in Go's forms (``--p 9000``, ``-p=9000``,
    ``-n=true``, ``--daemonprep``) spelled as this parser takes them; the value of
    an option is never rewritten."""
    takes_value = {option for action in parser._actions if action.nargs != 0
                   for option in action.option_strings}
    out: list[str] = []
    rest = iter(argv)
    for arg in rest:
        if arg == "--":
            out += [arg, *rest]
            break
        match = _GO_FLAG.fullmatch(arg)
        if match and match.group(1) in GO_FLAGS:
            name, value = match.groups()
            flag = GO_FLAGS[name]
            if name in GO_BOOLEANS:
                if value is None or value in GO_TRUE:
                    out.append(flag)
                elif value not in GO_FALSE:
                    out.append(arg)  # not a Go boolean: argparse says what is wrong
                continue
            if value is not None:
                out += [flag, value]
                continue
            out.append(flag)
            arg = flag
        else:
            out.append(arg)
        if arg in takes_value:
            following = next(rest, None)
            if following is not None:
                out.append(following)
    return out


def parse_daemon_args(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    return parser.parse_args(go_flags(argv, parser))


def check_command_line(argv: list[str]) -> int:
    """Parse a daemon command line and nothing else (argparse exits 2 on an error,
    0 after --help): ./dev.sh run checks its arguments before it sets anything up."""
    parse_daemon_args(argv)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in CLIENT_COMMANDS:
        from s3pool.cli.ctl import main as ctl_main

        return ctl_main(argv, prog="s3pool")
    parser = build_parser()
    argv = go_flags(argv, parser)
    args = parser.parse_args(argv)
    if args.daemon and not args.no_daemon:
        return detach(argv)
    return run_daemon(args)


def detach(argv: list[str]) -> int:
    """The original's start: the daemon goes on in the background, in a session
    of its own, and this returns once it serves (exit 0), or with the exit code
    of a start that failed. What the daemon prints until it is ready shows here;
    then it lets go of the pipe (see release_stdio)."""
    child = subprocess.Popen([sys.executable, "-m", "s3pool.cli.main", *argv, "-daemonprep", "-n"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
    assert child.stdout is not None
    ready = DETACHED.format(pid=child.pid)
    try:
        with child.stdout:
            for line in child.stdout:
                sys.stderr.buffer.write(line)
                sys.stderr.flush()
                if line.decode(errors="replace").strip() == ready:
                    return 0
    except KeyboardInterrupt:
        print(f"s3pool: interrupted; the daemon (pid {child.pid}) goes on starting in the "
              "background", file=sys.stderr)
        return 130
    code = child.wait()  # it ended before it was ready
    return code or 1


def release_stdio() -> None:
    """The daemon is ready: say so, then put stdin, stdout and stderr on /dev/null,
    as the original's detached child did (the log goes on in HOMEDIR/log)."""
    try:
        print(DETACHED.format(pid=os.getpid()), file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass  # no stderr to tell (closed, or nobody reads it any more)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def run_daemon(args: argparse.Namespace) -> int:
    # imported here so `s3pool --help` and the client stay quick
    import trio

    from s3pool.daemon import Daemon, Options
    from s3pool.embedded import endpoint_configured
    from s3pool.errors import BadKey, StartupError
    from s3pool.logs import setup_logging
    from s3pool.store.layout import Layout, check_key

    if args.daemonprep:
        try:
            os.setsid()  # no terminal's signals reach it
        except OSError:
            pass  # already the leader of its session (started by detach)
    settings = {spec.name: getattr(args, spec.name) for spec in SPECS}
    verbose = settings["verbose"] if settings["verbose"] is not None else 1
    try:
        layout = Layout.create(args.homedir)
    except OSError as exc:
        print(f"s3pool: cannot use HOMEDIR {args.homedir}: {exc.strerror}", file=sys.stderr)
        return 1
    setup_logging(layout.log_dir, verbose)
    for flag, what in IGNORED_FLAGS.items():
        if getattr(args, "ignored_" + flag.lstrip("-"), None):
            log.warning("ignoring %s: %s, which s3pool does not need", flag, what)
    if args.publish_listing and args.use_published_listing:
        print("s3pool: --publish-listing and --use-published-listing exclude each other: "
              "the publisher lists the bucket itself", file=sys.stderr)
        return 2
    try:
        check_key(args.published_listing_key)
    except BadKey as exc:
        print(f"s3pool: --published-listing-key: {exc}", file=sys.stderr)
        return 2
    pidfile = args.pidfile and os.path.join(layout.home, args.pidfile)
    embedded = args.embedded_s3
    if embedded == "auto":
        embedded = "no" if endpoint_configured() else "yes"
    options = Options(
        port=args.port, home=args.homedir, bind=args.bind, mountpoint=args.mountpoint or None,
        buckets=args.bucket, embedded_s3=embedded, embedded_s3_port=args.embedded_s3_port,
        settings=settings,
        allow_other=args.allow_other, metrics_port=args.metrics_port,
        metrics_bind=args.metrics_bind, extra_pidfile=pidfile, socket_path=args.socket_path,
        admin_group=args.admin_group, allow_remote_admin=args.allow_remote_admin,
        publish_listing=args.publish_listing, use_published_listing=args.use_published_listing,
        published_listing_key=args.published_listing_key, push_endpoint=args.push_endpoint,
        shared_cache=args.shared_cache, shared_cache_endpoint=args.shared_cache_endpoint,
        shared_cache_profile=args.shared_cache_profile,
    )
    daemon = None
    try:
        daemon = Daemon(options)
        if args.daemonprep:
            daemon.on_ready = release_stdio
        trio.run(daemon.run)
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        startup = _find(exc, StartupError)  # trio wraps task errors in groups
        if startup is not None:
            log.error("%s", startup)
            return startup.code
        log.exception("fatal error: %s", exc)
        return 1
    finally:
        if daemon is not None:
            daemon.close()
    log.info("s3pool stopped")
    return 0


_Found = TypeVar("_Found", bound=BaseException)


def _find(exc: BaseException, kind: type[_Found]) -> _Found | None:
    """*exc* itself or the first *kind* inside (nested) exception groups."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None


if __name__ == "__main__":
    sys.exit(main())
