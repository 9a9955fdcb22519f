"""A hostile S3 endpoint for tests: raw HTTP/1.1 between s3pool and moto's server.

It reads each request itself (asyncio streams, keep-alive), forwards it to
moto's server (http.client, one connection per request) and then writes
the answer back byte by byte as it likes, mangled by ``mode``. Only GETs
of objects are mangled (not listings), except where a mode says so; keys
starting with ``honest/`` are never mangled, so an unrelated request can
be shown to get its answer while others are held up.

Modes (each what some proxy, tier or gateway in front of S3 might do):

- ``honest``: the answer as moto gave it (on a kept-alive connection);
- ``whole_200``: a ranged GET is answered ``200`` with the whole object
  (RFC 7233 lets a server ignore Range);
- ``other_range``: a ranged GET is answered ``206`` for another range
  (its Content-Range and bytes), one byte later;
- ``range_long``: ``206`` with the Content-Range asked but the bytes (and
  Content-Length) of a longer range;
- ``new_version``: a ranged GET pinned to a version (If-Match) is answered
  from a newer version: If-Match ignored, another ETag, other bytes (a
  version that changed between the first GET and a part's GET; a first GET,
  even of the first part only, is answered as it is);
- ``long_body``: the body is longer than its Content-Length;
- ``chunked``: ``Transfer-Encoding: chunked`` with the whole body (legal);
- ``chunked_empty``: chunked, with no data at all;
- ``no_length``: no Content-Length, the body ends when the connection closes
  (legal HTTP/1.1);
- ``cut_body``: half the body, then the connection is closed;
- ``super_length``: a Latin-1 superscript digit in Content-Length;
- ``super_status``: a Latin-1 superscript digit in the status code;
- ``year_9999``: ``Last-Modified`` in the year 9999 (GET and HEAD);
- ``etag_lf`` / ``etag_cr``: an ETag with a bare LF / CR inside its quotes,
  and an injected ``X-Injected`` header line after it;
- ``etag_ctl``: an ETag with a control character inside its quotes;
- ``garbage_after``: a kept-alive answer followed by a smuggled second
  answer (``200``, 5 bytes, another ETag);
- ``big_headers``: 100 KiB of extra headers;
- ``interim_1xx``: ``100 Continue`` and ``103 Early Hints`` before the answer;
- ``trickle_head``: the status line and headers at one byte per
  ``trickle_seconds``;
- ``trickle_body``: the headers at once, the body at one byte per
  ``trickle_seconds``;
- ``trickle_meta``: HEAD and LIST answers trickled like ``trickle_head``.

``heads`` keeps the head (request line and headers, raw bytes) of every
request received, to see what s3pool sent back (If-Match, If-None-Match).
"""

from __future__ import annotations

import asyncio
import http.client
import re
import threading
from urllib.parse import urlsplit

MODES = ("honest", "whole_200", "other_range", "range_long", "new_version", "long_body",
         "chunked", "chunked_empty", "no_length", "cut_body", "super_length", "super_status",
         "year_9999", "etag_lf", "etag_cr", "etag_ctl", "garbage_after", "big_headers",
         "interim_1xx", "trickle_head", "trickle_body", "trickle_meta")

_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length",
        b"proxy-connection", b"te", b"upgrade", b"trailer"}
_RANGE = re.compile(r"bytes=(\d+)-(\d+)$")
_CONTENT_RANGE = re.compile(rb"bytes (\d+)-(\d+)/(\d+)")
OTHER_ETAG = b'"0123456789abcdef0123456789abcdef"'
SMUGGLED = (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"smuggled\"\r\n"
            b"Last-Modified: Sun, 06 Dec 2026 12:00:00 GMT\r\n\r\nEVIL!")


class HostileS3:
    """The endpoint; ``start()`` runs it in a thread with its own event loop."""

    def __init__(self, upstream_port: int, mode: str = "honest",
                 trickle_seconds: float = 0.5) -> None:
        self.upstream_port = upstream_port
        self.mode = mode
        self.trickle_seconds = trickle_seconds
        self.heads: list[bytes] = []
        self.mangled = 0  # answers this endpoint changed
        self.lock = threading.Lock()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HostileS3:
        ready = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()

            async def main() -> None:
                self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0,
                                                          limit=1 << 20)
                self.port = self._server.sockets[0].getsockname()[1]
                ready.set()
                await self._server.serve_forever()

            try:
                loop.run_until_complete(main())
            except asyncio.CancelledError:
                pass
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def drop_connections(self) -> None:
        """Close every client connection (between modes: nothing kept alive carries over)."""
        loop = self._loop
        if loop is None:
            return

        def close_all() -> None:
            for writer in list(self._writers):
                writer.transport.abort()

        loop.call_soon_threadsafe(close_all)

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        def shut() -> None:
            server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            for task in asyncio.all_tasks(loop):
                task.cancel()

        loop.call_soon_threadsafe(shut)
        if self._thread is not None:
            self._thread.join(10)

    def sent_back(self, needle: bytes) -> int:
        """How many request heads received contain *needle*."""
        with self.lock:
            return sum(1 for head in self.heads if needle.lower() in head.lower())

    # --- one client connection ---------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        ConnectionError):
                    return
                with self.lock:
                    self.heads.append(head)
                method, target, headers = _parse_request(head)
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
                keep = await self._answer(writer, method, target, headers, body)
                if not keep:
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self._writers.discard(writer)
            try:
                writer.close()
            except Exception:  # noqa: BLE001 (the client went away)
                pass

    async def _answer(self, writer: asyncio.StreamWriter, method: str, target: str,
                      headers: dict[str, str], body: bytes) -> bool:
        """Forward, mangle, write; False when the connection must close."""
        path = urlsplit(target).path
        query = urlsplit(target).query
        parts = path.lstrip("/").split("/", 1)
        is_object = len(parts) == 2 and parts[1] != "" and not query
        honest_key = is_object and parts[1].startswith("honest/")
        mode = self.mode if not honest_key else "honest"
        asked = _RANGE.match(headers.get("range", ""))
        if mode == "new_version" and "if-match" not in headers:
            mode = "honest"  # a first GET: the version it names is the current one
        upstream_headers = dict(headers)
        if method == "GET" and is_object and asked:
            start, end = int(asked.group(1)), int(asked.group(2))
            if mode == "whole_200":
                upstream_headers.pop("range")
            elif mode == "other_range":
                upstream_headers["range"] = f"bytes={start + 1}-{end}" if end > start \
                    else f"bytes={max(0, start - 1)}-{end}"
            elif mode == "range_long":
                upstream_headers["range"] = f"bytes={max(0, start - 1000)}-{end + 1000}"
            elif mode == "new_version":
                upstream_headers.pop("if-match", None)
        try:
            status, reason, answer_headers, answer_body = await asyncio.get_running_loop() \
                .run_in_executor(None, self._forward, method, target, upstream_headers, body)
        except (ValueError, OSError, http.client.HTTPException):
            # e.g. a header s3pool sent that http.client refuses to forward (CR/LF)
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
            await writer.drain()
            return False
        object_get = method == "GET" and is_object and status in (200, 206)
        if not object_get and not (mode in ("trickle_meta", "year_9999")
                                   and (method == "HEAD" or (method == "GET" and query))):
            mode = "honest"
        if mode != "honest":
            with self.lock:
                self.mangled += 1
        head_lines = [f"HTTP/1.1 {status} {reason}".encode("latin-1")]
        extra: list[bytes] = []
        for name, value in answer_headers:
            lower = name.lower()
            if lower in _HOP:
                continue
            if lower == b"etag" and mode == "new_version" and asked:
                value = OTHER_ETAG
            elif lower == b"etag" and mode == "etag_lf":
                value = value[:-1] + b'\nX-Injected: lf"'
            elif lower == b"etag" and mode == "etag_cr":
                value = value[:-1] + b'\rX-Injected: cr"'
            elif lower == b"etag" and mode == "etag_ctl":
                value = value[:-1] + b'\x01"'
            elif lower == b"last-modified" and mode == "year_9999":
                value = b"Fri, 31 Dec 9999 23:59:59 GMT"
            elif lower == b"content-range" and mode == "range_long" and asked:
                found = _CONTENT_RANGE.match(value)
                assert found is not None, value  # the upstream's answer to a ranged GET
                total = found.group(3)
                value = f"bytes {asked.group(1)}-{asked.group(2)}/".encode() + total
            extra.append(name + b": " + value)
        head_lines += extra
        if mode == "new_version" and asked:
            answer_body = bytes(b ^ 0xFF for b in answer_body)
        if mode == "big_headers":
            head_lines += [f"x-amz-meta-pad{i}: ".encode() + b"p" * 1000 for i in range(100)]
        keep = True
        length = str(len(answer_body)).encode()
        if method == "HEAD":  # moto's Content-Length: the object's
            length = next((value for name, value in answer_headers
                           if name.lower() == b"content-length"), b"0")
        if mode in ("chunked", "chunked_empty"):
            head_lines.append(b"Transfer-Encoding: chunked")
        elif mode == "no_length":
            head_lines.append(b"Connection: close")
            keep = False
        elif mode == "long_body":
            cut = min(100, len(answer_body) // 2)
            head_lines.append(b"Content-Length: " + str(len(answer_body) - cut).encode())
        elif mode == "super_length":
            head_lines.append(b"Content-Length: " + length[:-1] + b"\xb9")
        else:
            head_lines.append(b"Content-Length: " + length)
        if mode == "super_status":
            code = str(status).encode()
            head_lines[0] = b"HTTP/1.1 " + code[:2] + b"\xb2 " + reason.encode("latin-1")
        wire_head = b"\r\n".join(head_lines) + b"\r\n\r\n"
        if mode == "interim_1xx":
            wire_head = (b"HTTP/1.1 100 Continue\r\n\r\n"
                         b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
                         + wire_head)
        if method == "HEAD":
            wire_body = b""
        elif mode == "chunked":
            wire_body = b"".join(b"%x\r\n" % len(answer_body[i:i + 65536])
                                 + answer_body[i:i + 65536] + b"\r\n"
                                 for i in range(0, len(answer_body), 65536)) + b"0\r\n\r\n"
        elif mode == "chunked_empty":
            wire_body = b"0\r\n\r\n"
        elif mode == "cut_body":
            wire_body = answer_body[:len(answer_body) // 2]
            keep = False
        else:
            wire_body = answer_body
        if mode == "garbage_after":
            wire_body += SMUGGLED
        if mode in ("trickle_head", "trickle_meta"):
            await self._trickle(writer, wire_head)
            writer.write(wire_body)
        elif mode == "trickle_body":
            writer.write(wire_head)
            await self._trickle(writer, wire_body)
        else:
            writer.write(wire_head + wire_body)
        await writer.drain()
        return keep

    async def _trickle(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        for i in range(len(data)):
            writer.write(data[i:i + 1])
            await writer.drain()
            await asyncio.sleep(self.trickle_seconds)

    def _forward(self, method: str, target: str, headers: dict[str, str], body: bytes
                 ) -> tuple[int, str, list[tuple[bytes, bytes]], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers.items():
                if name in ("connection", "keep-alive"):
                    continue
                conn.putheader(name, value)
            conn.putheader("Connection", "close")
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read() if method != "HEAD" else b""
            raw = [(name.encode("latin-1"), value.encode("latin-1"))
                   for name, value in resp.getheaders()]
            return resp.status, resp.reason, raw, data
        finally:
            conn.close()


def _parse_request(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, target, headers
