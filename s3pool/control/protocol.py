"""The wire format of the control socket (compatible with the 2019 clients).

Request: one line, a JSON array of strings, ``\\n``-terminated (EOF also
ends it). Reply: ``OK\\n`` or ``ERROR\\n``, then the payload; the server
then closes. A listing payload puts ``\\n`` after each item; a command with
nothing to return sends a lone ``\\n``; an ERROR payload is one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from s3pool.errors import BadRequest

MAX_REQUEST_BYTES = 1 << 20
# an ERROR line naming a megabyte of input is cut (a key is at most 1 KiB)
MAX_ERROR_CHARS = 4096

# name -> (least, most) arguments after the command name (None: no limit)
ARITY: dict[str, tuple[int, int | None]] = {
    "PULL": (2, None),
    "PUSH": (3, 3),
    "GLOB": (2, 2),
    "REFRESH": (1, 1),
    "STATUS": (0, None),  # extra arguments are ignored, as by the original
    "SET": (2, 2),
}
USAGE = {
    "PULL": '["PULL", bucket, key, ...]',
    "PUSH": '["PUSH", bucket, key, abspath]',
    "GLOB": '["GLOB", bucket, pattern]',
    "REFRESH": '["REFRESH", bucket]',
    "STATUS": '["STATUS"]',
    "SET": '["SET", name, value]',
}


@dataclass(frozen=True)
class Request:
    command: str  # upper case
    args: list[str]


def parse_request(line: bytes) -> Request:
    """Parse and check one request line; raise BadRequest with a clear message."""
    if len(line) > MAX_REQUEST_BYTES:
        raise BadRequest(f"request longer than {MAX_REQUEST_BYTES} bytes")
    text = line.strip()
    if not text:
        raise BadRequest("empty request; expected a JSON array such as [\"STATUS\"]")
    try:
        value = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("request is not UTF-8") from None
    except ValueError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply; expected a flat array "
                         "of strings") from None
    if not isinstance(value, list):
        raise BadRequest(f"request must be a JSON array, got {type(value).__name__}")
    if not value:
        raise BadRequest("empty array: no command")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise BadRequest(f"item {i} of the request is {type(item).__name__}, not a string")
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as exc:
            # a JSON escape such as "\ud800": no file name or S3 key can hold it
            raise BadRequest(
                f"item {i} of the request holds a lone surrogate {item[exc.start]!r} at "
                f"offset {exc.start}: strings must be valid Unicode"
            ) from None
    command, args = value[0].upper(), value[1:]
    if command not in ARITY:
        raise BadRequest(f"unknown command {value[0]!r}; known: {', '.join(ARITY)}")
    least, most = ARITY[command]
    if len(args) < least or (most is not None and len(args) > most):
        error = BadRequest(f"wrong number of arguments for {command}: usage {USAGE[command]}")
        error.command = command  # type: ignore[attr-defined]  # counted as one all the same
        raise error
    return Request(command, args)


def format_list(items: list[str]) -> bytes:
    """OK and one item a line; no items is ``OK\n`` and nothing else."""
    return ("OK\n" + "".join(item + "\n" for item in items)).encode("utf-8", "surrogateescape")


def format_done() -> bytes:
    """OK for a command with nothing to return."""
    return b"OK\n\n"


def format_error(message: str) -> bytes:
    one_line = " ".join(str(message).split()) or "error"
    if len(one_line) > MAX_ERROR_CHARS:
        one_line = one_line[:MAX_ERROR_CHARS] + "..."
    return f"ERROR\n{one_line}\n".encode("utf-8", "replace")
