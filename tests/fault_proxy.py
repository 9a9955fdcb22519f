"""A fault-injecting HTTP proxy on loopback, between the daemon and moto's server.

It forwards every request as it came (headers, body, signature) and
passes the response back, except for the paths it was told to spoil:

- ``trickle[path] = (bytes_per_step, seconds_per_step)`` sends that
  response body a few bytes at a time (a slow, not silent, S3);
- ``cut[path] = nbytes`` sends that many bytes of a GET's body, then
  drops the connection (a GET that fails mid-stream);
- ``corrupt[path] = offset`` flips the byte at that offset of the object
  in whichever response (whole or ranged) carries it; with
  ``corrupt_times[path] = n`` only the next n GETs are spoiled;
- ``blank_etag`` paths are served with ``ETag: ""`` and a GET carrying
  ``If-None-Match: ""`` is answered 304 (a tier's remote mount before it
  has fetched the object);
- ``unquote_etag`` paths are served with their ETag unquoted;
- ``always_304`` paths answer every GET 304, asked or not;
- ``fail_status[path] = (status, n)`` answers the next n GETs of that path
  with that status and an S3 error document (an S3 having a bad moment);
  the methods so failed are ``fail_methods`` (GET unless told: add PUT and
  POST to fail uploads).
- ``spoil_checksum`` paths are served with every ``x-amz-checksum-*`` value
  (but ``-type``) replaced by another of the same length: the bytes are
  right, the checksum S3 claims for them is not.

``seen`` records (method, path, If-None-Match) of every request.

Each response is sent with ``Connection: close``; botocore reconnects.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te",
               "upgrade", "trailer"}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/")


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.trickle: dict[str, tuple[int, float]] = {}
        self.corrupt: dict[str, int] = {}
        self.corrupt_times: dict[str, int] = {}
        self.blank_etag: set[str] = set()
        self.unquote_etag: set[str] = set()
        self.always_304: set[str] = set()
        self.seen: list[tuple[str, str, str | None]] = []
        self.cut: dict[str, int] = {}
        self.fail_status: dict[str, tuple[int, int]] = {}
        self.fail_methods: set[str] = {"GET"}
        self.spoil_checksum: set[str] = set()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.trickling = 0  # response bodies being trickled right now
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in _HOP_BY_HOP}
                path = self.path.split("?", 1)[0]
                if_none_match = self.headers.get("If-None-Match")
                with proxy.lock:
                    proxy.seen.append((self.command, path, if_none_match))
                if self.command in proxy.fail_methods and proxy._fail_once_more(path):
                    document = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>"
                                b"InternalError</Code><Message>injected</Message></Error>")
                    self.send_response(proxy.fail_status[path][0])
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(document)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(document)
                    self.close_connection = True
                    return
                if path in proxy.blank_etag and if_none_match == '""' \
                        or self.command == "GET" and path in proxy.always_304:
                    self.send_response(304)
                    self.send_header("ETag", '""')
                    self.send_header("Content-Length", "0")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port,
                                                      timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    if self.command == "GET" and path in proxy.corrupt \
                            and proxy._spoil_once_more(path):
                        data = _flip(data, proxy.corrupt[path],
                                     response.getheader("Content-Range"))
                    self.send_response(response.status, response.reason)
                    for name, value in response.getheaders():
                        if name.lower() == "etag" and path in proxy.blank_etag:
                            value = '""'
                        elif name.lower() == "etag" and path in proxy.unquote_etag:
                            value = value.strip('"')
                        elif name.lower().startswith("x-amz-checksum-") \
                                and name.lower() != "x-amz-checksum-type" \
                                and path in proxy.spoil_checksum:
                            value = _other_checksum(value)
                        if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    if self.command == "HEAD":
                        return
                    trickle = proxy.trickle.get(path) if self.command == "GET" else None
                    cut = proxy.cut.get(path) if self.command == "GET" else None
                    if cut is not None:
                        self.wfile.write(data[:cut])
                        self.wfile.flush()
                    elif trickle is None:
                        self.wfile.write(data)
                    else:
                        self._trickle(data, *trickle)
                finally:
                    upstream.close()

            def _trickle(self, data: bytes, step: int, pause: float) -> None:
                with proxy.lock:
                    proxy.trickling += 1
                try:
                    for start in range(0, len(data), step):
                        if proxy.stopping.is_set():
                            return
                        self.wfile.write(data[start:start + step])
                        self.wfile.flush()
                        time.sleep(pause)
                except OSError:
                    pass  # the daemon gave up on us: what the test wants
                finally:
                    with proxy.lock:
                        proxy.trickling -= 1

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _fail_once_more(self, path: str) -> bool:
        with self.lock:
            status, left = self.fail_status.get(path, (0, 0))
            if left <= 0:
                return False
            self.fail_status[path] = (status, left - 1)
            return True

    def _spoil_once_more(self, path: str) -> bool:
        with self.lock:
            left = self.corrupt_times.get(path)
            if left is None:
                return True
            if left <= 0:
                return False
            self.corrupt_times[path] = left - 1
            return True

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def _flip(data: bytes, offset: int, content_range: str | None) -> bytes:
    start = 0
    if content_range:
        match = _CONTENT_RANGE.match(content_range)
        if match:
            start = int(match.group(1))
    index = offset - start
    if not 0 <= index < len(data):
        return data
    spoiled = bytearray(data)
    spoiled[index] ^= 0xFF
    return bytes(spoiled)


def _other_checksum(value: str) -> str:
    """A checksum value of the same length and form that is not *value*: its
    first base64 character changed (a "-N" suffix is kept)."""
    first = "B" if value[:1] != "B" else "C"
    return first + value[1:]
