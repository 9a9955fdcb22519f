"""Run-time settings: one table feeds the command line, SET, STATUS and the man page.

Each setting has a name (as used by SET and STATUS), a command-line
option (the name with dashes), a parser and a check. Changing a setting
goes through :meth:`Settings.set`, which validates the new value against
the others (``low_water`` must stay below ``high_water``) and tells the
listeners (the limiter, the evictor, the refresher) so they act at once.

A name the original s3pool had keeps the original's meaning on the wire:
``refresh_interval`` is minutes in SET and STATUS (and so on the command
line too: a bare number means the same everywhere), while the daemon keeps
seconds inside. Durations also take a unit suffix (``30s``, ``5m``,
``2h``, ``1d``); a bare number is the setting's own unit.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from s3pool.errors import BadRequest

_SIZE_RE = re.compile(r"\s*(\d+)(?:\.(\d+))?\s*([kmgtp]?)(i?b?)\s*", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
# what a file offset can hold; more is a typo, not a cache
MAX_SIZE = (1 << 63) - 1
_SHOWN_CHARS = 40


def _shown(text: str) -> str:
    """*text* quoted for an error message, cut if it is long."""
    text = str(text)
    if len(text) <= _SHOWN_CHARS:
        return repr(text)
    return f"{text[:_SHOWN_CHARS]!r}... ({len(text)} characters)"


def parse_size(text: str) -> int:
    """'0', '1048576', '512M', '10GiB', '1.5g' -> bytes (binary units)."""
    match = _SIZE_RE.fullmatch(str(text))
    if not match:
        raise ValueError(f"not a size: {_shown(text)} (use bytes or a K/M/G/T suffix)")
    whole, fraction, unit, _ = match.groups()
    if len(whole.lstrip("0")) > 20:  # more digits than MAX_SIZE has: no int() of them
        raise ValueError(f"size {_shown(text)} is too large (at most {MAX_SIZE} bytes)")
    scale = _SIZE_UNITS[unit.lower()]
    # exact integer arithmetic: a float would turn 400 digits into infinity
    value = int(whole) * scale
    if fraction:
        fraction = fraction[:20]
        value += int(fraction) * scale // 10 ** len(fraction)
    if value > MAX_SIZE:
        raise ValueError(f"size {_shown(text)} is too large (at most {MAX_SIZE} bytes)")
    return value


_Number = TypeVar("_Number", int, float)


def _number(text: str, kind: Callable[[str], _Number], what: str) -> _Number:
    try:
        return kind(text)
    except (ValueError, TypeError, OverflowError):
        raise ValueError(f"not {what}: {_shown(text)}") from None


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
                   "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
                   "h": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400,
                   "days": 86400}
MAX_DURATION = 86400 * 365


def parse_duration(text: str, bare_unit: float = 1.0) -> float:
    """'30s', '5m', '2h', '1d' -> seconds; a bare number is *bare_unit* seconds each."""
    match = _DURATION_RE.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or (unit and unit not in _DURATION_UNITS):
        raise ValueError(f"not a duration: {_shown(text)} (use a number or 30s, 5m, 2h, 1d)")
    value = float(match.group(1)) * (_DURATION_UNITS[unit] if unit else bare_unit)
    if value > MAX_DURATION:
        raise ValueError(f"duration too long: {_shown(text)} (at most a year)")
    return value


def parse_positive_size(text: str) -> int:
    value = parse_size(text)
    if value < 1:
        raise ValueError(f"must be at least 1 byte: {_shown(text)}")
    return value


def parse_seconds(text: str) -> float:
    """A duration whose bare number is seconds (s3pool's own settings)."""
    return parse_duration(text, 1.0)


def parse_minutes(text: str) -> float:
    """A duration whose bare number is minutes (the original's refresh_interval); seconds."""
    return parse_duration(text, 60.0)


def seconds_to_minutes(seconds: float) -> float:
    return round(seconds / 60, 4)


def parse_percent(text: str) -> float:
    value = _number(text, float, "a percentage from 1 to 100")
    if not 1 <= value <= 100:
        raise ValueError(f"not a percentage from 1 to 100: {_shown(text)}")
    return value


def parse_concurrency(text: str) -> int:
    value = _number(text, int, "a concurrency from 1 to 1000")
    if not 1 <= value <= 1000:
        raise ValueError(f"not a concurrency from 1 to 1000: {_shown(text)}")
    return value


def parse_pull_concurrency(text: str) -> int:
    """As parse_concurrency, but a number below 1 is raised to 1, as the original
    s3pool raised one below its minimum (5) to 5 instead of refusing it."""
    value = _number(text, int, "a concurrency from 1 to 1000")
    return parse_concurrency(str(max(1, value)))


def parse_prefetch_files(text: str) -> int:
    value = _number(text, int, "a file count from 0 to 1000")
    if not 0 <= value <= 1000:
        raise ValueError(f"not a file count from 0 to 1000: {_shown(text)}")
    return value


MAX_READ_AHEAD = 256 << 20


def parse_read_ahead(text: str) -> int:
    value = parse_size(text)
    if value > MAX_READ_AHEAD:
        raise ValueError(f"read-ahead {_shown(text)} is more than 256M")
    return value


def parse_verbose(text: str) -> int:
    """0 to 3; a negative level is 0, as in the original s3pool."""
    value = max(0, _number(text, int, "a verbosity from 0 to 3"))
    if value > 3:
        raise ValueError(f"verbose is 0 (warnings) to 3 (debug): {_shown(text)}")
    return value


def parse_connections(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65536:
        raise ValueError(f"not a connection count from 1 to 65536: {text!r}")
    return value


FOLLOWS_FRESHNESS = "freshness_window"


def parse_listing_freshness(text: str) -> float | None:
    """Seconds, or None for "the freshness_window's value, whatever it is"."""
    if str(text).strip().lower() in (FOLLOWS_FRESHNESS, "default"):
        return None
    return parse_seconds(text)


def _listing_freshness_wire(value: float | None) -> Any:
    return FOLLOWS_FRESHNESS if value is None else value


class FileMode(int):
    """Permission bits that print in octal (0660), as chmod takes them."""

    def __str__(self) -> str:
        return f"0{self:03o}"

    __repr__ = __str__


def parse_mode(text: str) -> FileMode:
    """'0660', '660' or '0o660' -> permission bits."""
    digits = str(text).strip().lower().removeprefix("0o")
    if not digits or any(c not in "01234567" for c in digits):
        raise ValueError(f"not an octal file mode: {text!r} (such as 0660)")
    value = int(digits, 8)
    if value > 0o777:
        raise ValueError(f"file mode out of range (0000 to 0777): {text!r}")
    return FileMode(value)


_ON = {"1", "on", "yes", "true"}
_OFF = {"0", "off", "no", "false"}


def parse_switch(text: Any) -> bool:
    """on/off, yes/no, true/false, 1/0; a bare command-line flag is on."""
    if text is True or text is False:
        return text
    word = str(text).strip().lower()
    if word in _ON:
        return True
    if word in _OFF:
        return False
    raise ValueError(f"not on or off: {_shown(text)}")


def _switch_wire(value: bool) -> str:
    return "on" if value else "off"


MIN_PART_SIZE = 5 << 20  # S3's smallest part (but the last)
MAX_PART_SIZE = 5 << 30


def parse_part_size(text: str) -> int:
    value = parse_size(text)
    if not MIN_PART_SIZE <= value <= MAX_PART_SIZE:
        raise ValueError(f"part size {_shown(text)} is not from 5M to 5G (S3's limits)")
    return value


@dataclass(frozen=True)
class SettingSpec:
    name: str
    default: Any
    parse: Callable[[str], Any]
    help: str
    metavar: str
    unit: str = ""  # of the value on the wire (SET, STATUS) and the command line
    to_wire: Callable[[Any], Any] = lambda value: value  # the internal value as STATUS shows it
    fixed: bool = False  # set at start only (the mount's options): SET refuses it
    flag: bool = False  # on/off: the command-line option may stand alone (--mount-writes)

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    def show(self, value: Any) -> str:
        return format_value(self.to_wire(value))


SPECS: tuple[SettingSpec, ...] = (
    SettingSpec("pull_concurrency", 20, parse_pull_concurrency,
                "how many objects are downloaded from S3 at once: a PULL's or "
                "read-ahead's download holds its place until its last part is in, one "
                "an open() of the mount started until its first part is (below 1 is "
                "taken as 1)", "N"),
    SettingSpec("freshness_window", 120.0, parse_seconds,
                "seconds after an ETag check during which a cached object is served "
                "with no S3 request; 30s, 5m, 1h also work", "SECONDS", "s"),
    SettingSpec("listing_freshness", None, parse_listing_freshness,
                "seconds a directory's listing (the mount's ls, GLOB, pull --glob) is "
                "served before S3 is asked again: past it, that directory (or the "
                "pattern's prefix) is listed anew; 0 = list at every ls and GLOB; "
                "'freshness_window' (the default) follows freshness_window, also when "
                "that is SET later; 30s, 5m, 1h also work", "SECONDS", "s",
                _listing_freshness_wire),
    SettingSpec("stale_on_error", 0.0, parse_seconds,
                "if S3 cannot be reached, serve a cached copy checked within this many "
                "seconds instead of failing (0 = never serve unchecked data); 30s, 5m, 1h "
                "also work", "SECONDS", "s"),
    SettingSpec("refresh_interval", 300.0, parse_minutes,
                "MINUTES between background refreshes of the listings of the buckets in "
                "use, as in the original s3pool: a bare number is minutes here, in SET and "
                "in STATUS; 30s, 5m, 2h also work; 0 = off", "MINUTES", "min",
                seconds_to_minutes),
    SettingSpec("published_listing_max_age", 900.0, parse_seconds,
                "with --use-published-listing: a published listing taken longer ago than "
                "this is not used and the bucket is listed instead; 30s, 5m, 1h also work",
                "SECONDS", "s"),
    SettingSpec("high_water", 90.0, parse_percent,
                "disk use (percent of the filesystem holding HOMEDIR, or of "
                "--max-cache-size) that starts eviction", "PERCENT", "%"),
    SettingSpec("low_water", 75.0, parse_percent,
                "disk use eviction brings the cache down to", "PERCENT", "%"),
    SettingSpec("max_cache_size", 0, parse_size,
                "cap on the bytes the cache holds (K/M/G/T suffixes; 0 = no cap)", "BYTES", "B"),
    SettingSpec("max_connections", 256, parse_connections,
                "most control connections open at once (never more than half the "
                "descriptor limit, so the mount and downloads keep theirs); more wait "
                "in the kernel's queue", "N"),
    SettingSpec("socket_mode", FileMode(0o666), parse_mode,
                "permissions of the --socket file; who may PUSH and SET is decided per "
                "request from the peer's credentials, whatever the mode", "MODE"),
    SettingSpec("download_stall_timeout", 60.0, parse_seconds,
                "a download that takes longer than this many seconds to receive "
                "download_stall_bytes bytes fails and frees its slot; so does any S3 request "
                "(GET, HEAD, LIST) not answered within it or whose body stalls so "
                "(0 = never)", "SECONDS", "s"),
    SettingSpec("download_stall_bytes", 256 << 10, parse_positive_size,
                "see download_stall_timeout (K/M/G suffixes)", "BYTES", "B"),
    SettingSpec("download_part_size", 8 << 20, parse_positive_size,
                "objects are fetched in parts of this many bytes: part 0 from the GET "
                "that checks the ETag, the others as ranged GETs pinned to that ETag "
                "(K/M/G suffixes)", "BYTES", "B"),
    SettingSpec("download_part_concurrency", 8, parse_concurrency,
                "ranged GETs in flight at once for one object (a PULL fetches every part, "
                "a reader of the mount the parts it reads plus a read-ahead of up to this "
                "many)", "N"),
    SettingSpec("prefetch_files", 8, parse_prefetch_files,
                "when a program opens the files of a directory of the mount in listing "
                "order, fetch this many of the next files ahead in the background "
                "(objects up to download_part_size; random access fetches nothing "
                "ahead; 0 = off)", "N"),
    SettingSpec("fuse_read_ahead", 1 << 20, parse_read_ahead,
                "the kernel's read-ahead for files of the mount (its default, 128K, "
                "cuts a sequential read into 256 KiB requests; more means fewer, larger "
                "requests, up to the 1 MiB the kernel sends at once); needs root, "
                "0 leaves (or puts back) the kernel's (K/M suffixes)", "BYTES", "B"),
    SettingSpec("checkpoint_interval", 5.0, parse_seconds,
                "seconds between syncs of the cache filesystem (objects are installed "
                "without an fsync each; after a power loss, objects installed since the "
                "last sync are dropped and fetched again)", "SECONDS", "s"),
    SettingSpec("mount_writes", False, parse_switch,
                "let programs create new files in the mount (cp, shell >): each is "
                "staged in tmp/ and uploaded when it is closed, and close() fails (EIO) "
                "if the upload did; set at start only (the mount is read-only without "
                "it)", "on|off", to_wire=_switch_wire, fixed=True, flag=True),
    SettingSpec("mount_overwrite", False, parse_switch,
                "with mount_writes: an existing object may be replaced by a new upload "
                "of a whole file (open with O_TRUNC, as cp and > do); off: EPERM",
                "on|off", to_wire=_switch_wire, flag=True),
    SettingSpec("mount_delete", False, parse_switch,
                "with mount_writes: rm of a file in the mount deletes the object on S3; "
                "off: EPERM", "on|off", to_wire=_switch_wire, flag=True),
    SettingSpec("mount_umask", FileMode(0o022), parse_mode,
                "with mount_writes: permission bits taken away from the modes the mount "
                "shows (directories 0777, files 0666, before the writer's own umask); "
                "the kernel checks them (default_permissions)", "MODE"),
    SettingSpec("upload_part_size", 8 << 20, parse_part_size,
                "a file written in the mount that grows past this many bytes is uploaded "
                "in parts of this size (multipart) while it is still being written, so "
                "close() waits only for the last part (5M to 5G)", "BYTES", "B"),
    SettingSpec("verbose", 1, parse_verbose,
                "log level: 0 warnings, 1 info and requests, 2 and 3 debug", "LEVEL"),
)
SPEC_BY_NAME = {spec.name: spec for spec in SPECS}


class Settings:
    """The current values, with change listeners."""

    def __init__(self, **values: Any) -> None:
        self._values = {spec.name: spec.default for spec in SPECS}
        self._listeners: list[Callable[[str, Any], None]] = []
        for name, value in values.items():
            if value is not None:
                self._values[name] = value
        self._check(self._values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def items(self) -> list[tuple[str, Any]]:
        """(name, value) as STATUS shows them: in the wire's units (refresh_interval minutes);
        listing_freshness as the seconds in force."""
        return [(spec.name, self.listing_window if spec.name == "listing_freshness"
                 else spec.to_wire(self._values[spec.name])) for spec in SPECS]

    @property
    def listing_window(self) -> float:
        """Seconds a listing is served before S3 is asked again: listing_freshness,
        or while it was never set (or SET to 'freshness_window'), freshness_window's
        current value, so a later SET of freshness_window moves both."""
        value: float | None = self._values["listing_freshness"]
        window: float = self._values["freshness_window"] if value is None else value
        return window

    def on_change(self, listener: Callable[[str, Any], None]) -> None:
        self._listeners.append(listener)

    @staticmethod
    def _check(values: dict[str, Any]) -> None:
        if values["low_water"] >= values["high_water"]:
            raise BadRequest(
                f"low_water ({values['low_water']}) must be below "
                f"high_water ({values['high_water']})"
            )

    def set(self, name: str, text: str) -> Any:
        """Parse, check and apply one setting; raise BadRequest if it is wrong."""
        spec = SPEC_BY_NAME.get(name.lower())
        if spec is None:
            raise BadRequest(
                f"unknown setting {_shown(name)}; settable: {', '.join(SPEC_BY_NAME)}"
            )
        if spec.fixed:
            raise BadRequest(f"{spec.name} is set at start only (restart s3pool with "
                             f"{spec.option})")
        try:
            value = spec.parse(text)
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise BadRequest(f"bad value for {spec.name}: {exc}") from None
        candidate = dict(self._values, **{spec.name: value})
        self._check(candidate)
        self._values = candidate
        for listener in self._listeners:
            listener(spec.name, value)
        return value


def format_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
