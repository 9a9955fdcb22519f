"""The embedded demo S3 (SeaweedFS) against the other users of the host
(issue 17): nothing but signed S3 requests can write into it, and PUSH to
a bucket it lacks does not create one."""

from __future__ import annotations

import os
import socket
import ssl
import urllib.error
import urllib.request

import psutil
import pytest

from conftest import free_port_block, request
from helpers import request_as_nobody
from test_embedded_e2e import DemoDaemon, s3_client

pytestmark = pytest.mark.e2e

HELLO = b"Hello from s3pool's embedded S3.\n"
# HTTP/2's client preface and an empty SETTINGS frame: how a gRPC client starts
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"

def listening_ports(process: psutil.Process) -> list[int]:
    return sorted({c.laddr.port for c in process.net_connections("tcp")
                   if c.status == psutil.CONN_LISTEN})


def unsigned(method: str, url: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> str:
    """An unauthenticated HTTP request; what came back, for the failure message."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return f"{response.status} {response.read(200)!r}"
    except urllib.error.HTTPError as exc:
        return f"{exc.code}"
    except OSError as exc:
        return repr(exc)


def answers_h2(port: int, tls: bool) -> bool:
    """Does *port* answer a gRPC client's HTTP/2 preface with SETTINGS, in
    plain text or over TLS without a client certificate?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            sock: socket.socket = raw
            if tls:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                context.set_alpn_protocols(["h2"])
                sock = context.wrap_socket(raw)
            sock.sendall(H2_PREFACE)
            reply = sock.recv(9)
    except (OSError, ssl.SSLError):
        return False
    return len(reply) == 9 and reply[3] == 0x04  # a SETTINGS frame


def multipart(name: str, body: bytes) -> tuple[bytes, dict[str, str]]:
    boundary = "s3pool-forged-boundary"
    data = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{name}\"\r\nContent-Type: text/plain\r\n\r\n").encode() + body + \
        f"\r\n--{boundary}--\r\n".encode()
    return data, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_only_signed_s3_requests_write_into_the_demo_s3(tmp_path):
    daemon = DemoDaemon(tmp_path, free_port_block()).start()
    try:
        status = daemon.status()
        client = s3_client(status)
        ports = listening_ports(daemon.weed())
        assert daemon.s3_port in ports and len(ports) >= 4, ports
        forged = b"forged by another user\n"
        form, form_headers = multipart("hello.txt", forged)
        tried = {}
        grpc_open: list[int] = []
        for port in ports:
            base = f"http://127.0.0.1:{port}"
            for method, path, body, headers in (
                    ("PUT", "/s3pool-demo/hello.txt", forged, None),
                    ("PUT", "/buckets/s3pool-demo/hello.txt", forged, None),
                    ("POST", "/buckets/s3pool-demo/hello.txt", forged, None),
                    ("POST", "/buckets/s3pool-demo/", form, form_headers),
                    ("PUT", "/s3pool-demo/forged.txt", forged, None),
                    ("PUT", "/buckets/s3pool-demo/forged.txt", forged, None),
                    ("PUT", "/forged-bucket", b"", None),
                    ("DELETE", "/buckets/s3pool-demo/docs/README.md", None, None),
                    ("DELETE", "/s3pool-demo/docs/README.md", None, None),
                    ("GET", "/col/delete?collection=s3pool-demo", None, None),
                    ("GET", "/dir/assign", None, None)):
                tried[f"{method} {port}{path}"] = unsigned(method, base + path, body, headers)
            # a gRPC client without the demo's certificate gets nowhere
            if answers_h2(port, tls=False) or answers_h2(port, tls=True):
                grpc_open.append(port)
        # nothing changed: signed S3 sees the seeded objects, and only them
        assert client.get_object(Bucket="s3pool-demo", Key="hello.txt")["Body"].read() == HELLO, \
            tried
        keys = {o["Key"] for o in client.list_objects_v2(Bucket="s3pool-demo")["Contents"]}
        assert keys == {"hello.txt", "data/numbers.csv", "data/2026/11/events.jsonl",
                        "docs/README.md"}, tried
        assert [b["Name"] for b in client.list_buckets()["Buckets"]] == ["s3pool-demo"], tried
        assert not any(r.startswith(("200", "201", "204")) for r in tried.values()), tried
        # the requests reached live servers: S3 refused them as unsigned
        assert tried[f"PUT {daemon.s3_port}/s3pool-demo/hello.txt"] == "403", tried
        assert grpc_open == [], f"gRPC without the demo's client certificate on {grpc_open}"
        # signed S3 works: a write, and the daemon serves it
        client.put_object(Bucket="s3pool-demo", Key="signed.txt", Body=b"signed\n")
        [path] = daemon.ok("PULL", "s3pool-demo", "signed.txt")
        assert open(path, "rb").read() == b"signed\n"
        [path] = daemon.ok("PULL", "s3pool-demo", "hello.txt")
        assert open(path, "rb").read() == HELLO
    finally:
        daemon.stop()


def test_push_to_a_misspelled_bucket_creates_nothing(tmp_path, public_dir):
    """The demo S3, like some others, creates a bucket on upload: PUSH asks
    first whether the bucket exists."""
    daemon = DemoDaemon(tmp_path, free_port_block()).start()
    try:
        client = s3_client(daemon.status())
        path = os.path.join(public_dir, "results.csv")
        with open(path, "w") as f:
            f.write("n,cube\n2,8\n")
        status, lines = request(daemon.port, "PUSH", "s3pool-demoo", "results.csv", path)
        assert status == "ERROR" and lines == ["no such bucket: s3pool-demoo"], (status, lines)
        assert [b["Name"] for b in client.list_buckets()["Buckets"]] == ["s3pool-demo"]
        # the same again (the answer is not remembered as a yes), then the right bucket
        assert request(daemon.port, "PUSH", "s3pool-demoo", "results.csv", path)[0] == "ERROR"
        assert daemon.ok("PUSH", "s3pool-demo", "results.csv", path) == []
        assert client.get_object(Bucket="s3pool-demo", Key="results.csv")["Body"].read() == \
            b"n,cube\n2,8\n"
        # a bucket made after a refusal is found at the next PUSH
        client.create_bucket(Bucket="s3pool-demoo")
        assert daemon.ok("PUSH", "s3pool-demoo", "results.csv", path) == []
        # another user's PUSH gets the same answer
        reply = request_as_nobody(daemon.port, "PUSH", "s3pool-typo", "x", path)
        assert reply == "ERROR\nno such bucket: s3pool-typo\n", reply
        assert sorted(b["Name"] for b in client.list_buckets()["Buckets"]) == [
            "s3pool-demo", "s3pool-demoo"]
    finally:
        daemon.stop()
