"""Who is on the other end of a control connection, and what they may do.

The daemon often runs as root, and two commands need to know who asks:
PUSH reads a local file named by the client, and SET changes how the
daemon behaves (and what it logs). A :class:`Peer` is what the kernel tells
us about the client:

- On the Unix socket (``--socket``), SO_PEERCRED gives the uid and gid of
  the process that connected, SO_PEERGROUPS its supplementary groups. Both
  were fixed at connect(2) and stay true after the client closes.
- On TCP from this host, the uid is the owner of the client's socket in
  /proc/net/tcp{,6} (the row whose local address is the client's end).
  That row exists only while the client keeps its socket: a client that
  closes at once leaves an orphaned socket (uid 0, inode 0) or none at all.
  Such a peer is "unknown local" and gets no privilege, never root's.
- On TCP from another host there is no local uid; those clients are
  trusted as the bind address says (see the README's trust model), except
  for SET, which needs ``--allow-remote-admin``.

PUSH by a known local user opens the file with that user's rights (a
helper process that becomes the user, see ``upload/localfile.py``), and only a
regular file; whatever the user cannot reach gets one answer, the same
for a missing file, so PUSH tells nobody what exists where they cannot
look.
"""

from __future__ import annotations

import errno
import grp
import ipaddress
import os
import pwd
import socket
import stat
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from s3pool.errors import LocalFileError, PermissionDenied
from s3pool.upload.localfile import NotRegularFile, open_as

if TYPE_CHECKING:
    import trio

    # a connection's socket: the stdlib's, or trio's (SocketStream.socket)
    AnySocket = socket.socket | trio.socket.SocketType

# Linux's value; Python's socket module does not name it
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)


@dataclass(frozen=True)
class Peer:
    """The client of one connection, as far as the kernel tells us."""

    uid: int | None  # None: not known
    gids: frozenset[int]  # primary and supplementary groups (empty if unknown)
    local: bool  # on this host (or we cannot tell that it is not)
    source: str  # how we learned it, or why we could not

    @classmethod
    def unknown_local(cls, why: str) -> Peer:
        return cls(None, frozenset(), True, why)

    @classmethod
    def remote(cls, address: str) -> Peer:
        return cls(None, frozenset(), False, f"remote {address}")

    def describe(self) -> str:
        if not self.local:
            return f"client at {self.source.removeprefix('remote ')} (another host)"
        if self.uid is None:
            return f"unknown local client ({self.source})"
        return f"uid {self.uid} ({self.source})"


def unix_peer(sock: AnySocket) -> Peer:
    """The client of a Unix-domain connection, from SO_PEERCRED. May block
    briefly (group database) when SO_PEERGROUPS is unavailable."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError as exc:
        return Peer.unknown_local(f"SO_PEERCRED failed: {exc.strerror}")
    _pid, uid, gid = struct.unpack("3i", creds)
    if uid < 0:
        return Peer.unknown_local("SO_PEERCRED gave no uid")
    try:
        # as many groups as fit in the 1 KiB CPython allows; ERANGE beyond that
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
        groups = set(struct.unpack(f"{len(raw) // 4}I", raw[:len(raw) // 4 * 4]))
    except OSError:
        groups = groups_of(uid)
    return Peer(uid, frozenset(groups | {gid}), True, "SO_PEERCRED")


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


def is_local_address(host: str) -> bool:
    """Is *host* an address of this host? True unless the kernel says it is
    not (EADDRNOTAVAIL): any other failure counts as local, so that a
    lookup that fails (EMFILE, say) never makes a local client "remote"."""
    ip = ipaddress.ip_address(host.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        mapped = ip.ipv4_mapped
        ip, host = mapped, str(mapped)
    if ip.is_loopback:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((host, 0))
    except OSError as exc:
        return exc.errno != errno.EADDRNOTAVAIL
    return True


def tcp_peer(sock: AnySocket) -> Peer:
    """The client of a TCP connection. Blocks (reads /proc): call it in a thread."""
    try:
        peer_host, peer_port = sock.getpeername()[:2]
        our_host, our_port = sock.getsockname()[:2]
    except OSError as exc:
        return Peer.unknown_local(f"no peer address: {exc.strerror}")
    try:
        wanted = {(peer, ours) for peer in _forms(peer_host, peer_port)
                  for ours in _forms(our_host, our_port)}
    except ValueError:
        return Peer.unknown_local(f"unexpected peer address {peer_host!r}")
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if (fields[1], fields[2]) in wanted:
                        uid, inode = int(fields[7]), int(fields[9])
                        if inode == 0:  # no process holds it: orphaned or TIME_WAIT
                            return Peer.unknown_local(
                                "its socket was closed, /proc/net/tcp shows no owner")
                        return Peer(uid, frozenset(groups_of(uid)), True, "/proc/net/tcp")
        except FileNotFoundError:
            continue
        except (OSError, StopIteration, IndexError, ValueError) as exc:
            return Peer.unknown_local(f"cannot read {table}: {exc}")
    if is_local_address(peer_host):
        return Peer.unknown_local("its socket is not in /proc/net/tcp")
    return Peer.remote(peer_host)


@dataclass(frozen=True)
class AccessPolicy:
    """Who may SET (for what PUSH may read, see open_for_peer)."""

    daemon_uid: int
    admin_gid: int | None = None
    admin_group_name: str | None = None
    allow_remote_admin: bool = False

    def who_may_set(self) -> str:
        who = f"the daemon's user (uid {self.daemon_uid}), root"
        if self.admin_gid is not None:
            who += f", members of group {self.admin_group_name or self.admin_gid}"
        if self.allow_remote_admin:
            who += ", clients on other hosts"
        return who

    def check_admin(self, peer: Peer, command: str) -> None:
        """Raise PermissionDenied unless *peer* may change settings."""
        if not peer.local:
            if self.allow_remote_admin:
                return
            raise PermissionDenied(
                f"{command} refused for {peer.describe()}: start s3pool with "
                f"--allow-remote-admin to allow it")
        if peer.uid is None:
            raise PermissionDenied(
                f"{command} refused for an {peer.describe()}: keep the connection open until "
                f"the reply, or use the Unix socket (s3pool --socket)")
        if peer.uid in (0, self.daemon_uid):
            return
        if self.admin_gid is not None and self.admin_gid in peer.gids:
            return
        raise PermissionDenied(
            f"{command} refused for {peer.describe()}: only {self.who_may_set()} may "
            f"change settings")


def groups_of(uid: int) -> set[int]:
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return set()
    try:
        return set(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except OSError:
        return {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem}


def _allowed(st: os.stat_result, uid: int, groups: set[int] | frozenset[int],
             bits: tuple[int, int, int]) -> bool:
    owner_bit, group_bit, other_bit = bits
    if st.st_uid == uid:
        return bool(st.st_mode & owner_bit)
    if st.st_gid in groups:
        return bool(st.st_mode & group_bit)
    return bool(st.st_mode & other_bit)


def open_for_peer(path: str, uid: int, groups: set[int] | frozenset[int]) -> int:
    """A read-only descriptor of the regular file *path*, opened as user
    *uid* in *groups* would open it. Blocks (a helper process): call it in
    a worker thread.

    Everything the user cannot reach (missing, no search permission above
    it, no read permission, a symlink loop...) is one LocalFileError with
    one text, so that the answer says nothing about directories the user
    cannot search; a file the user can reach but that is not regular (a
    FIFO, a device) is never opened, and said so.
    """
    hidden = LocalFileError(f"cannot read {path!r}: no such file, or uid {uid} may not read it")
    try:
        if os.geteuid() == 0:
            return open_as(path, uid, groups)
        return _open_checked(path, uid, groups)
    except NotRegularFile:
        raise LocalFileError(f"{path!r} is not a regular file") from None
    except OSError:
        raise hidden from None


def _open_checked(path: str, uid: int, groups: set[int] | frozenset[int]) -> int:
    """open_for_peer for a daemon that is not root (it cannot become the
    user): what the daemon can open, checked against the user's rights on
    the real path, before its type is looked at."""
    lookup = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        st = os.fstat(lookup)
        actual = os.readlink(f"/proc/self/fd/{lookup}")
        try:
            check_readable_by(actual, uid, st, groups)
        except LocalFileError:
            raise PermissionError(errno.EACCES, "permission denied") from None
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(path)
        return os.open(f"/proc/self/fd/{lookup}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    finally:
        os.close(lookup)


def check_readable_by(real: str, uid: int, st: os.stat_result,
                      groups: set[int] | frozenset[int] | None = None) -> None:
    """Raise LocalFileError unless user *uid* (in *groups*; default: the
    user's groups in the group database) could open the file *st*, at the
    symlink-free path *real*, for reading."""
    if uid == 0:
        return
    if groups is None:
        groups = groups_of(uid)
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
