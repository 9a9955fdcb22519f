"""Opening a local file that a client named (PUSH), never anything but a
regular file, and for another local user with that user's own rights.

:func:`open_regular` looks the path up with O_PATH (no open of the file
itself: a FIFO's writer is not woken, a device's driver is not called),
checks the type on that descriptor, and only then opens the same inode for
reading through /proc/self/fd, which checks read permission like any open.

:func:`open_as` does that as another user: a short-lived helper process,
this file run by the daemon's Python (as root, so it can read its own
code), takes the user's uid, gid and groups (setgroups, setgid, setuid:
the process is single-threaded, unlike the daemon, where credentials are
per process), opens the path and hands the descriptor back over a
socketpair (SCM_RIGHTS). The kernel then decides what the user may reach,
with every rule it knows (ACLs, search permission, symlinks resolved as
the user, mount options), and the daemon never opens as root what the
user could not.

Only the standard library here: the helper runs with ``python -I -S``.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import subprocess
import sys

log = logging.getLogger(__name__)

HELPER_TIMEOUT = 30.0  # a path on a hung network filesystem must not hold a PUSH forever
NOGROUP = 65534


class NotRegularFile(Exception):
    """The path names something else than a regular file (FIFO, device, directory, socket)."""


def open_regular(path: str) -> int:
    """A read-only descriptor of the regular file at *path* (symlinks
    followed). Raises NotRegularFile, or OSError from the lookup or open."""
    lookup = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(lookup).st_mode):
            raise NotRegularFile(path)
        return os.open(f"/proc/self/fd/{lookup}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    finally:
        os.close(lookup)


def open_as(path: str, uid: int, groups: set[int] | frozenset[int], gid: int | None = None
            ) -> int:
    """:func:`open_regular` of *path* as user *uid* with *groups* (and
    primary group *gid*; default: the lowest of *groups*, or nogroup).
    Blocks up to HELPER_TIMEOUT: call it in a worker thread. Needs root."""
    if gid is None:
        gid = min(groups) if groups else NOGROUP
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours:
        try:
            helper = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__), str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, cwd="/", env={})
        finally:
            theirs.close()
        try:
            ours.settimeout(HELPER_TIMEOUT)
            groups_text = ",".join(str(g) for g in sorted(groups))
            ours.sendall(f"{uid} {gid} {groups_text}\n".encode() + os.fsencode(path))
            ours.shutdown(socket.SHUT_WR)
            message, fds, _flags, _address = socket.recv_fds(ours, 64, 1)
        except OSError as exc:  # socket.timeout included
            helper.kill()
            log.warning("the helper opening %r as uid %d did not answer: %s", path, uid, exc)
            raise OSError(errno.ETIMEDOUT,
                          "the helper opening the file did not answer") from exc
        finally:
            try:
                helper.wait(HELPER_TIMEOUT)
            except subprocess.TimeoutExpired:
                helper.kill()
                helper.wait()
    if message == b"O" and len(fds) == 1:
        return fds[0]
    for fd in fds:
        os.close(fd)
    if message == b"N":
        raise NotRegularFile(path)
    if message[:1] == b"E" and message[1:].isdigit():
        code = int(message[1:])
        raise OSError(code, os.strerror(code))
    log.warning("the helper opening %r as uid %d failed (exit %s)", path, uid, helper.returncode)
    raise OSError(errno.EIO, f"the helper opening the file failed (exit {helper.returncode})")


def _helper(channel_fd: int) -> int:
    """The helper's side of open_as: read the request, become the user, open, answer."""
    with socket.socket(fileno=channel_fd) as channel:
        request = b""
        while chunk := channel.recv(65536):
            request += chunk
        head, _, path = request.partition(b"\n")
        uid_text, gid_text, groups_text = head.decode().split(" ")
        os.setgroups([int(g) for g in groups_text.split(",") if g])
        os.setgid(int(gid_text))
        os.setuid(int(uid_text))  # last: it drops the right to change the others
        try:
            fd = open_regular(os.fsdecode(path))
        except NotRegularFile:
            channel.sendall(b"N")
        except OSError as exc:
            channel.sendall(b"E%d" % (exc.errno or errno.EIO))
        else:
            socket.send_fds(channel, [b"O"], [fd])
    return 0


if __name__ == "__main__":
    sys.exit(_helper(int(sys.argv[1])))
