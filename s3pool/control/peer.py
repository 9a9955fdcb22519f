"""Who is on the other end of a control connection, and may they read a file.

The daemon often runs as root; PUSH reads a local file named by the
client. Without a check, any local user could PUSH /etc/shadow to a bucket
they can read. For a connection from this host, the client's uid is found
in /proc/net/tcp{,6} (the row whose local address is the client's end), and
PUSH is refused unless that uid could read the file itself: search
permission on every directory above it and read permission on the file,
by owner, group (with supplementary groups) or other bits. Connections
from other hosts have no local uid; they are trusted as the bind address
says (see the README's trust model).
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import socket
import stat

from ..errors import LocalFileError


def _proc_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    """An address as /proc/net/tcp{,6} prints it: 32-bit words in host order, hex."""
    packed = ip.packed
    words = [int.from_bytes(packed[i:i + 4], "little") for i in range(0, len(packed), 4)]
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def _forms(host: str, port: int) -> list[str]:
    ip = ipaddress.ip_address(host.split("%")[0])
    forms = [_proc_address(ip, port)]
    if ip.version == 6 and ip.ipv4_mapped:  # a v4 client of a dual-stack listener
        forms.append(_proc_address(ip.ipv4_mapped, port))
    return forms


def local_peer_uid(sock: socket.socket) -> int | None:
    """The uid owning the client end of *sock* if it is on this host, else None."""
    try:
        peer_host, peer_port = sock.getpeername()[:2]
        our_host, our_port = sock.getsockname()[:2]
        wanted = {(peer, ours) for peer in _forms(peer_host, peer_port)
                  for ours in _forms(our_host, our_port)}
    except (OSError, ValueError):
        return None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if (fields[1], fields[2]) in wanted:
                        return int(fields[7])
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    return None


def _groups_of(uid: int) -> set[int]:
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return set()
    try:
        return set(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except OSError:
        return {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem}


def _allowed(st: os.stat_result, uid: int, groups: set[int], bits: tuple[int, int, int]) -> bool:
    owner_bit, group_bit, other_bit = bits
    if st.st_uid == uid:
        return bool(st.st_mode & owner_bit)
    if st.st_gid in groups:
        return bool(st.st_mode & group_bit)
    return bool(st.st_mode & other_bit)


class OpenedForPeer:
    """``with OpenedForPeer(path, uid) as proxy_path``: the file opened by us,
    checked against what *uid* may read, named by a /proc/self/fd path.

    The checks look at the file actually opened (its inode, and the real
    path the kernel reports for the descriptor), so swapping a symlink or a
    directory between the check and the copy gains nothing.
    """

    def __init__(self, path: str, uid: int) -> None:
        self.path = path
        self.uid = uid
        self.fd = -1

    def __enter__(self) -> str:
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise LocalFileError(f"cannot read {self.path!r}: {exc.strerror}") from None
        try:
            st = os.fstat(self.fd)
            if not stat.S_ISREG(st.st_mode):
                raise LocalFileError(f"{self.path!r} is not a regular file")
            actual = os.readlink(f"/proc/self/fd/{self.fd}")
            check_readable_by(actual, self.uid, st)
        except BaseException:
            os.close(self.fd)
            raise
        return f"/proc/self/fd/{self.fd}"

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def check_readable_by(real: str, uid: int, st: os.stat_result) -> None:
    """Raise LocalFileError unless user *uid* could open the file *st*, at the
    symlink-free path *real*, for reading."""
    if uid == 0:
        return
    groups = _groups_of(uid)
    path = real
    parts = real.split(os.sep)
    # search permission on every directory above the file
    for i in range(1, len(parts)):
        directory = os.sep.join(parts[:i]) or os.sep
        try:
            dir_st = os.stat(directory)
        except OSError as exc:
            raise LocalFileError(f"cannot read {path!r}: {exc.strerror}") from None
        if not _allowed(dir_st, uid, groups, (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)):
            raise LocalFileError(f"cannot read {path!r}: permission denied for uid {uid}")
    if not _allowed(st, uid, groups, (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)):
        raise LocalFileError(f"cannot read {path!r}: permission denied for uid {uid}")
