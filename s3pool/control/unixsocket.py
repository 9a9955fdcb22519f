"""The control socket's Unix-domain twin (``--socket PATH``).

Same protocol as the TCP socket, but the kernel tells us who the client is
(SO_PEERCRED, see ``peer.py``), so a local user's PUSH and SET can be
judged even when the client closes early. The file is created with the
``socket_mode`` permissions from the start (bound under a temporary name,
chmod'ed, then renamed into place), a stale file left by a killed daemon
is replaced, a live one (another daemon answering on it) is refused, and
the file is removed at exit if it is still ours.
"""

from __future__ import annotations

import logging
import os
import socket
import stat

from s3pool.errors import StartupError

log = logging.getLogger(__name__)

# sun_path holds 108 bytes with the terminating NUL
MAX_PATH_BYTES = 107
BACKLOG = 4096  # the kernel caps it at net.core.somaxconn


class UnixSocket:
    """A bound, listening Unix-domain socket at *path* with permissions *mode*."""

    def __init__(self, path: str, mode: int) -> None:
        self.path = os.path.abspath(path)
        temporary = f"{self.path}.{os.getpid()}.tmp"
        if len(os.fsencode(temporary)) > MAX_PATH_BYTES:
            raise StartupError(f"socket path {self.path} is too long (a Unix socket path has at "
                               f"most {MAX_PATH_BYTES - 16} bytes here)")
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise StartupError(f"cannot create {directory} for the socket: {exc.strerror}"
                               ) from None
        self._clear_stale()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass
            # bound under another name and chmod'ed before it appears at
            # self.path, so it is never reachable with wider permissions
            self.sock.bind(temporary)
            os.chmod(temporary, mode)
            os.rename(temporary, self.path)
            st = os.stat(self.path)
            self._identity = (st.st_dev, st.st_ino)
            self.sock.listen(BACKLOG)
        except OSError as exc:
            self.sock.close()
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise StartupError(f"cannot listen on {self.path}: {exc.strerror or exc}") from None

    def _clear_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StartupError(f"cannot use socket path {self.path}: {exc.strerror}") from None
        if not stat.S_ISSOCK(st.st_mode):
            raise StartupError(f"{self.path} exists and is not a socket: remove it or choose "
                               "another --socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(2)
            try:
                probe.connect(self.path)
            except ConnectionRefusedError:
                pass  # nobody listens: a killed daemon's leftover
            except FileNotFoundError:
                return
            except OSError as exc:  # a timeout means a full queue: someone listens
                raise StartupError(f"socket {self.path} is in use or unusable: "
                                   f"{exc.strerror or exc}") from None
            else:
                raise StartupError(f"socket {self.path} is in use by another process "
                                   "(another s3pool?)")
        log.warning("replacing the stale socket file %s", self.path)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _is_ours(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def chmod(self, mode: int) -> None:
        """Apply a new socket_mode (SET socket_mode)."""
        if self._is_ours():
            os.chmod(self.path, mode)

    def close(self) -> None:
        """Remove the file (unless another daemon has replaced it) and close."""
        if self._is_ours():
            try:
                os.unlink(self.path)
            except OSError as exc:
                log.warning("cannot remove %s: %s", self.path, exc.strerror)
        self.sock.close()
