"""The lean GET path's own HTTP/1.1 reading (s3pool/s3/lean.py), against a
scripted server on a real socket: keep-alive reuse, a kept-alive connection
the server closed, short and chunked bodies, answers that go to boto3, and
HTTPS checked with the CA bundle the boto3 client was given."""

import select
import socket
import threading

import boto3
import pytest
from botocore.config import Config
from botocore.credentials import Credentials

from s3pool.s3.lean import BadAnswer, BodyError, Fallback, LeanGets

pytestmark = pytest.mark.unit

OK_HEAD = ("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nETag: \"abc\"\r\n"
           "Last-Modified: Thu, 26 Nov 2026 03:00:00 GMT\r\nx-amz-meta-Owner: me\r\n{extra}\r\n")


class ScriptedServer:
    """Answers each request with the next answer of *script*: a function of
    the request line giving (bytes to send, close the connection after)."""

    def __init__(self, script):
        self.script = script
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    try:
                        chunk = conn.recv(65536)
                    except OSError:  # the client dropped the connection
                        return
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                line = head.split(b"\r\n")[0].decode()
                self.requests.append(head.decode())
                answer, close = self.script(line, len(self.requests))
                try:
                    conn.sendall(answer)
                except OSError:
                    return
                if close:
                    return

    def stop(self):
        self.sock.close()


def lean_for(server):
    client = boto3.client(
        "s3", endpoint_url=f"http://127.0.0.1:{server.port}", region_name="us-east-1",
        aws_access_key_id="k", aws_secret_access_key="s",
        config=Config(s3={"addressing_style": "path"}))
    return LeanGets(client, Credentials("k", "s"), 4, 2, 2)


def ok(body, extra=""):
    return OK_HEAD.format(n=len(body), extra=extra).encode() + body


@pytest.fixture
def serve():
    servers = []

    def start(script):
        server = ScriptedServer(script)
        servers.append(server)
        return server, lean_for(server)

    yield start
    for server in servers:
        server.stop()


def test_bodies_read_to_the_end_reuse_one_connection(serve):
    server, lean = serve(lambda line, n: (ok(b"x" * 5000 + str(n).encode()), False))
    for n in (1, 2, 3):
        status, resp = lean.get("bkt", "dir/a key+é", {"Range": "bytes=0-"})
        assert status == 200
        assert resp["Body"].read() == b"x" * 5000 + str(n).encode()
        assert resp["ETag"] == '"abc"' and resp["Metadata"] == {"owner": "me"}
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith("GET /bkt/dir/a%20key%2B%C3%A9 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}" in first
    assert "Authorization: AWS4-HMAC-SHA256" in first and "Range: bytes=0-" in first


def test_a_kept_alive_connection_the_server_closed_is_replaced(serve):
    # the server answers, then closes the connection without saying so
    server, lean = serve(lambda line, n: (ok(b"hello"), True))
    for _ in range(3):
        status, resp = lean.get("bkt", "k", {})
        assert resp["Body"].read() == b"hello"
    assert server.connections == 3


def test_connection_close_is_not_reused(serve):
    server, lean = serve(lambda line, n: (ok(b"hello", "Connection: close\r\n"), True))
    for _ in range(2):
        assert lean.get("bkt", "k", {})[1]["Body"].read() == b"hello"
    assert server.connections == 2


def _body_fails_then_a_new_connection(serve, first: bytes, close: bool, then: bytes) -> None:
    """The first answer is *first* (the server closes after it if *close*): the
    read of its body fails, and the next GET gets *then* on a new connection."""
    def script(line, n):
        if n == 1:
            return first, close
        return ok(then), False

    server, lean = serve(script)
    _, resp = lean.get("bkt", "k", {})
    with pytest.raises(BodyError):
        resp["Body"].read()
    assert lean.get("bkt", "k", {})[1]["Body"].read() == then
    assert server.connections == 2


def test_a_body_cut_short_fails_its_read_and_drops_the_connection(serve):
    _body_fails_then_a_new_connection(
        serve, OK_HEAD.format(n=100000, extra="").encode() + b"y" * 1000, True, b"fine")


def test_read1_streams_and_an_early_close_of_a_long_body_closes_the_connection(serve):
    big = bytes(range(256)) * 4096  # 1 MiB
    server, lean = serve(lambda line, n: (ok(big), False))
    _, resp = lean.get("bkt", "k", {})
    body = resp["Body"]
    got = body.read1(1000)
    assert 0 < len(got) <= 1000 and big.startswith(got)
    body.close()  # far from its end: not drained, the connection goes
    _, resp = lean.get("bkt", "k", {})
    parts = []
    while chunk := resp["Body"].read1(1 << 20):
        parts.append(chunk)
    assert b"".join(parts) == big
    assert server.connections == 2


def test_a_chunked_not_found_gives_its_code(serve):
    doc = (b"<?xml version='1.0'?><Error><Code>NoSuchBucket</Code>"
           b"<Message>no bucket</Message></Error>")
    half = len(doc) // 2
    answer = (b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"
              + b"%x\r\n" % half + doc[:half] + b"\r\n"
              + b"%x;ext=1\r\n" % (len(doc) - half) + doc[half:] + b"\r\n0\r\n\r\n")
    server, lean = serve(lambda line, n: (answer if n == 1 else ok(b"z"), False))
    assert lean.get("bkt", "k", {}) == (404, {"Code": "NoSuchBucket", "Message": "no bucket"})
    assert lean.get("bkt", "k", {})[1]["Body"].read() == b"z"
    assert server.connections == 1  # the 404 body was read: its connection kept


def test_not_modified_has_no_body(serve):
    server, lean = serve(lambda line, n: (
        b"HTTP/1.1 304 Not Modified\r\nETag: \"abc\"\r\n\r\n" if n == 1 else ok(b"q"), False))
    assert lean.get("bkt", "k", {"If-None-Match": '"abc"'}) == (304, None)
    assert lean.get("bkt", "k", {})[1]["Body"].read() == b"q"
    assert server.connections == 1


@pytest.mark.parametrize("answer, leaves", [
    (b"HTTP/1.1 500 Internal\r\nContent-Length: 5\r\n\r\noops!", False),
    (b"HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno", True),
    (b"HTTP/1.1 301 Moved\r\nContent-Length: 0\r\n\r\n", True),
    (b"SSH-2.0-OpenSSH\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", False),  # no Last-Modified
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20000 + b"\r\n", False),
])
def test_anything_unusual_goes_to_boto3(serve, answer, leaves):
    server, lean = serve(lambda line, n: (answer, False))
    with pytest.raises(Fallback):
        lean.get("bkt", "k", {})
    assert (lean._prefix("bkt") is None) == leaves


def test_a_server_that_hangs_up_goes_to_boto3(serve):
    server, lean = serve(lambda line, n: (b"", True))
    with pytest.raises(Fallback):
        lean.get("bkt", "k", {})


def _self_signed(tmp_path):
    """A certificate for 127.0.0.1 and its key (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TLSServer(ScriptedServer):
    def __init__(self, script, cert_path, key_path):
        import ssl

        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert_path, key_path)
        super().__init__(script)

    def _serve(self, conn):
        try:
            conn = self.context.wrap_socket(conn, server_side=True)
        except OSError:  # the client refused our certificate
            conn.close()
            return
        super()._serve(conn)


def tls_lean(server, verify):
    client = boto3.client(
        "s3", endpoint_url=f"https://127.0.0.1:{server.port}", region_name="us-east-1",
        aws_access_key_id="k", aws_secret_access_key="s", verify=verify,
        config=Config(s3={"addressing_style": "path"}))
    return LeanGets(client, Credentials("k", "s"), 4, 2, 2)


def test_https_with_the_clients_ca_bundle_keeps_its_connection(tmp_path):
    cert, key = _self_signed(tmp_path)
    server = TLSServer(lambda line, n: (ok(b"secret" * 5000), False), cert, key)
    try:
        lean = tls_lean(server, str(cert))  # the bundle boto3's client was given
        for _ in range(3):
            status, resp = lean.get("bkt", "k", {})
            assert status == 200 and resp["Body"].read() == b"secret" * 5000
        assert server.connections == 1
        assert f"Host: 127.0.0.1:{server.port}" in server.requests[0]
    finally:
        server.stop()


def test_a_certificate_that_fails_the_check_leaves_the_bucket_to_boto3(tmp_path):
    cert, key = _self_signed(tmp_path)
    server = TLSServer(lambda line, n: (ok(b"x"), False), cert, key)
    try:
        lean = tls_lean(server, True)  # the system's CAs: our self-signed one is not among them
        with pytest.raises(Fallback):
            lean.get("bkt", "k", {})
        assert lean._prefix("bkt") is None  # boto3 from now on, no retry of TLS per GET
        assert server.requests == []
    finally:
        server.stop()


# --- framing by http.client, and what a cache must not believe (issue 16) -----

LM = "Last-Modified: Thu, 26 Nov 2026 03:00:00 GMT\r\n"


def test_a_chunked_answer_is_read_whole_with_no_length(serve):
    body = bytes(range(256)) * 1000
    chunks = b"".join(b"%x\r\n" % len(body[i:i + 7000]) + body[i:i + 7000] + b"\r\n"
                      for i in range(0, len(body), 7000))
    answer = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: \"abc\"\r\n"
              + LM.encode() + b"\r\n" + chunks + b"0\r\n\r\n")
    server, lean = serve(lambda line, n: (answer if n == 1 else ok(b"next"), False))
    status, resp = lean.get("bkt", "k", {})
    assert status == 200 and resp["ContentLength"] is None  # the backend asks a HEAD
    assert resp["Body"].read() == body
    assert lean.get("bkt", "k", {})[1]["Body"].read() == b"next"
    assert server.connections == 1  # the chunked body was read to its end


@pytest.mark.parametrize("length", ["1\xb9", "\u0661\u0662", "12 34", "-5", "0x10"])
def test_a_content_length_that_is_not_ascii_digits_is_refused(serve, length):
    answer = (f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nETag: \"abc\"\r\n{LM}\r\n"
              .encode("utf-8" if length.startswith("\u0661") else "latin-1") + b"x" * 12)
    server, lean = serve(lambda line, n: (answer, False))
    with pytest.raises(BadAnswer):
        lean.get("bkt", "k", {})


def test_two_different_content_lengths_are_refused(serve):
    answer = (f"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n{LM}\r\n"
              .encode() + b"abcde")
    server, lean = serve(lambda line, n: (answer, False))
    with pytest.raises(BadAnswer):
        lean.get("bkt", "k", {})


def test_a_body_longer_than_its_content_length_fails_at_its_end(serve):
    # the first 5000 bytes are handed out; the read that would end the body fails
    body = b"y" * 10000
    answer = OK_HEAD.format(n=9000, extra="").encode() + body
    server, lean = serve(lambda line, n: (answer if n == 1 else ok(b"fine"), False))
    _, resp = lean.get("bkt", "k", {})
    assert resp["Body"].read1(5000) == b"y" * 5000
    with pytest.raises(BodyError, match="longer than its Content-Length"):
        while resp["Body"].read1(1 << 20):
            pass
    assert lean.get("bkt", "k", {})[1]["Body"].read() == b"fine"
    assert server.connections == 2  # that connection was dropped


def test_an_answer_smuggled_behind_a_kept_alive_one_is_never_taken(serve):
    smuggled = ok(b"EVIL!")
    # a whole answer, and a second one nobody asked for right behind it
    _body_fails_then_a_new_connection(serve, ok(b"first") + smuggled, False, b"second")


def test_garbage_arriving_on_an_idle_connection_drops_it():
    """Bytes that arrive on a kept-alive connection while it is idle (a late or
    smuggled answer) are never read as the next request's answer."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    garbage_now = threading.Event()
    accepted = []

    def serve_connection(conn, first):
        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += conn.recv(65536)
            conn.sendall(ok(b"first" if first else b"second"))
            if first:
                garbage_now.wait(10)
                conn.sendall(ok(b"EVIL!"))
                try:
                    conn.recv(65536)  # until the client lets go
                except OSError:  # it closed the connection with the garbage unread
                    pass

    def accept():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)
            threading.Thread(target=serve_connection, args=(conn, len(accepted) == 1),
                             daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        class Server:
            pass

        server = Server()
        server.port = port
        lean = lean_for(server)
        assert lean.get("bkt", "k", {})[1]["Body"].read() == b"first"
        [pool] = lean._pools.values()
        [idle] = pool.idle
        garbage_now.set()
        select.select([idle.sock], [], [], 10)  # the smuggled answer is there
        assert lean.get("bkt", "k", {})[1]["Body"].read() == b"second"
        assert len(accepted) == 2
    finally:
        listener.close()


def test_interim_answers_are_skipped(serve):
    answer = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
              + ok(b"after the hints"))
    server, lean = serve(lambda line, n: (answer, False))
    assert lean.get("bkt", "k", {})[1]["Body"].read() == b"after the hints"


def test_a_header_value_with_a_line_break_is_never_sent(serve):
    server, lean = serve(lambda line, n: (ok(b"x"), False))
    with pytest.raises(BadAnswer):
        lean.get("bkt", "k", {"If-Match": '"abc"\r\nX-Injected: 1'})
    assert server.requests == []
