"""``s3poolctl``: the control protocol for shell users (no nc needed).

    s3poolctl [-H HOST] [-p PORT | -S SOCKET] pull BUCKET KEY [KEY ...]
    s3poolctl push BUCKET KEY FILE        (FILE may be relative here)
    s3poolctl glob BUCKET PATTERN
    s3poolctl refresh BUCKET
    s3poolctl status
    s3poolctl set NAME VALUE

Prints the OK payload on stdout; on ERROR prints the message on stderr
and exits 1; exits 2 on a bad command line, 3 if the daemon cannot be
reached. The port defaults to $S3POOL_PORT, else 9000. With ``--socket``
(or $S3POOL_SOCKET, when neither -H nor -p is given) it talks over the
daemon's Unix socket instead.
"""

from __future__ import annotations

import argparse
import os
import sys

from .client import Client, S3PoolClientError

ARITY = {"pull": (2, None), "push": (3, 3), "glob": (2, 2), "refresh": (1, 1),
         "status": (0, 0), "set": (2, 2)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3poolctl", description="Talk to a running s3pool daemon.",
        epilog="Exit status: 0 OK, 1 the daemon answered ERROR, 2 bad usage, "
               "3 the daemon could not be reached.",
    )
    parser.add_argument("-H", "--host",
                        help="daemon address (default $S3POOL_HOST or 127.0.0.1)")
    parser.add_argument("-p", "--port", type=int,
                        help="daemon port (default $S3POOL_PORT or 9000)")
    parser.add_argument("-S", "--socket", metavar="PATH",
                        help="talk over the daemon's Unix socket at PATH (s3pool --socket) "
                             "instead of TCP; the default is $S3POOL_SOCKET when set and "
                             "neither -H nor -p is given. Use it to PUSH your files and, as "
                             "an admin, to SET")
    parser.add_argument("command", choices=sorted(ARITY), help="what to ask")
    parser.add_argument("args", nargs="*", help="the command's arguments")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    least, most = ARITY[args.command]
    if len(args.args) < least or (most is not None and len(args.args) > most):
        parser.error(f"wrong number of arguments for {args.command}")
    words = list(args.args)
    if args.command == "push":
        words[2] = os.path.abspath(words[2])  # the daemon wants an absolute path
    socket_path = args.socket
    if socket_path is None and args.host is None and args.port is None:
        socket_path = os.environ.get("S3POOL_SOCKET") or None
    host = args.host or os.environ.get("S3POOL_HOST", "127.0.0.1")
    try:
        port = args.port if args.port is not None else int(os.environ.get("S3POOL_PORT", "9000"))
    except ValueError:
        parser.error(f"$S3POOL_PORT is not a port number: {os.environ['S3POOL_PORT']!r}")
    where = socket_path or f"{host}:{port}"
    try:
        lines = Client(host, port, socket_path=socket_path).request(args.command.upper(), *words)
    except S3PoolClientError as exc:
        print(f"s3poolctl: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"s3poolctl: cannot reach s3pool at {where}: {exc}", file=sys.stderr)
        return 3
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
