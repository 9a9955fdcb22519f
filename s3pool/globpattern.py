"""GLOB patterns over S3 keys.

Rules (SPEC): ``*`` and ``?`` do not cross ``/``; ``**`` does (and
``**/`` also matches no directory at all, so ``a/**/b`` matches ``a/b``);
``[...]`` classes with ``!`` or ``^`` negation; ``{a,b}`` alternatives,
nested; a backslash escapes the next character.

A pattern is first expanded into its brace alternatives; each becomes a
regular expression plus the literal prefix before its first wildcard, so
the listing index only has to read the keys under that prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import BadRequest

MAX_ALTERNATIVES = 1024
MAX_PATTERN_LENGTH = 4096
_META = set("*?[{\\")


@dataclass(frozen=True)
class CompiledGlob:
    prefix: str
    regex: re.Pattern[str]

    def match(self, key: str) -> bool:
        return self.regex.fullmatch(key) is not None


def _find_closing_brace(pattern: str, start: int) -> int:
    depth = 0
    i = start
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _split_alternatives(body: str) -> list[str]:
    parts, depth, current, i = [], 0, [], 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            current.append(body[i:i + 2])
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    parts.append("".join(current))
    return parts


def expand_braces(pattern: str) -> list[str]:
    """``a{b,c{d,e}}f`` -> ``[abf, acdf, acef]``; unbalanced braces are literal."""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            # braces inside a class are literal
            end = _class_end(pattern, i)
            if end > 0:
                i = end + 1
                continue
        if c == "{":
            end = _find_closing_brace(pattern, i)
            if end < 0:
                break
            head, body, tail = pattern[:i], pattern[i + 1:end], pattern[end + 1:]
            alternatives = _split_alternatives(body)
            if len(alternatives) < 2:
                # "{x}" is just x
                alternatives = [body]
            out: list[str] = []
            for tail_expansion in expand_braces(tail):
                for alt in alternatives:
                    for alt_expansion in expand_braces(alt):
                        out.append(head + alt_expansion + tail_expansion)
                        if len(out) > MAX_ALTERNATIVES:
                            raise BadRequest(
                                f"glob pattern expands to more than {MAX_ALTERNATIVES} alternatives"
                            )
            return out
        i += 1
    return [pattern]


def _class_end(pattern: str, start: int) -> int:
    """Index of the ']' closing the class that opens at *start*, or -1."""
    i = start + 1
    if i < len(pattern) and pattern[i] in "!^":
        i += 1
    if i < len(pattern) and pattern[i] == "]":
        i += 1
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
            continue
        if pattern[i] == "]":
            return i
        i += 1
    return -1


def _translate(pattern: str) -> tuple[str, str]:
    """One brace-free pattern -> (literal prefix, regex source)."""
    out: list[str] = []
    prefix: list[str] = []
    literal_so_far = True
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            ch = pattern[i + 1] if i + 1 < n else "\\"
            out.append(re.escape(ch))
            if literal_so_far:
                prefix.append(ch)
            i += 2
            continue
        if c == "*":
            literal_so_far = False
            if i + 1 < n and pattern[i + 1] == "*":
                # '**/' may also match nothing at all
                if i + 2 < n and pattern[i + 2] == "/":
                    out.append("(?:.*/)?")
                    i += 3
                else:
                    out.append(".*")
                    i += 2
                    while i < n and pattern[i] == "*":
                        i += 1
                continue
            out.append("[^/]*")
            i += 1
            continue
        if c == "?":
            literal_so_far = False
            out.append("[^/]")
            i += 1
            continue
        if c == "[":
            end = _class_end(pattern, i)
            if end > 0:
                literal_so_far = False
                body = pattern[i + 1:end]
                negate = body[:1] in ("!", "^")
                if negate:
                    body = body[1:]
                items: list[str] = []
                j = 0
                while j < len(body):
                    if body[j] == "\\" and j + 1 < len(body):
                        items.append(re.escape(body[j + 1]))
                        j += 2
                    elif body[j] == "-" and 0 < j < len(body) - 1:
                        items.append("-")
                        j += 1
                    else:
                        items.append(re.escape(body[j]))
                        j += 1
                cls = "".join(items)
                out.append(f"[^/{cls}]" if negate else f"(?!/)[{cls}]")
                i = end + 1
                continue
        out.append(re.escape(c))
        if literal_so_far:
            prefix.append(c)
        i += 1
    return "".join(prefix), "".join(out)


def compile_glob(pattern: str) -> list[CompiledGlob]:
    """Compile *pattern* into one matcher per brace alternative."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise BadRequest(f"glob pattern longer than {MAX_PATTERN_LENGTH} characters")
    compiled = []
    for alternative in dict.fromkeys(expand_braces(pattern)):
        prefix, source = _translate(alternative)
        try:
            regex = re.compile(source, re.DOTALL)
        except re.error as exc:
            raise BadRequest(f"bad glob pattern {pattern!r}: {exc}") from exc
        compiled.append(CompiledGlob(prefix, regex))
    return compiled
