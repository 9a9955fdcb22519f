"""Generate the roff man pages from the same parsers ``--help`` uses.

    python -m s3pool.cli.manpage s3pool    > man/s3pool.1
    python -m s3pool.cli.manpage s3poolctl > man/s3poolctl.1

A test checks that the committed pages equal this output, so the option
list in ``man s3pool`` cannot drift from ``s3pool --help``.
"""

from __future__ import annotations

import argparse
import sys

from s3pool import __version__
from s3pool.cli.ctl import build_parser as build_ctl_parser
from s3pool.cli.main import EXIT_CODES, build_parser
from s3pool.control.protocol import USAGE
from s3pool.settings import SPECS

DATE = "2026-11-25"


def esc(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = text.split("\n")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in lines)


def page_head(title: str, name: str, synopsis: list[str], description: str) -> list[str]:
    """A page's .TH line and its NAME, SYNOPSIS and DESCRIPTION sections."""
    return [f'.TH {title} 1 "{DATE}" "s3pool {__version__}" "User Commands"',
            ".SH NAME", name, ".SH SYNOPSIS", *synopsis, ".SH DESCRIPTION", description]


def option_entry(action: argparse.Action, metavar: str | None) -> list[str]:
    """An option's .TP entry: its names, *metavar* if any, its help."""
    names = ", ".join(f"\\fB{esc(name)}\\fR" for name in action.option_strings)
    if metavar:
        names += f" \\fI{esc(metavar)}\\fR"
    return [".TP", names, esc((action.help or "").replace("%%", "%"))]


def options_section(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        metavar = None
        if action.nargs != 0:
            metavar = str(action.metavar or (action.dest.upper() if not action.choices
                                             else "{" + ",".join(action.choices) + "}"))
        out += option_entry(action, metavar)
    return out


PROTOCOL = """\
The control socket speaks TCP on the bind address and port, and with --socket also on a
Unix-domain socket; both take the same requests. One request per connection: one
line holding a JSON array of strings, ended by a newline (or by EOF). The reply is a status line,
OK or ERROR, a newline, then the payload; the server then closes the connection. Command names
are case-insensitive. An OK payload that lists things puts a newline after each item; a command
with nothing to return sends a lone newline; an ERROR payload is one line naming what was wrong.
Bad input (malformed JSON, a non-array, non-string items, unknown commands, wrong argument counts,
requests over 1 MiB, a client that sends nothing for 5 seconds, keys that would leave the bucket
directory) gets an ERROR reply; it never stops the daemon. At most max_connections connections
are open at once (and never more than half the descriptor limit); the kernel queues the others,
and while the daemon is at that limit a connection that has not sent its request within 0.5
seconds is closed with an ERROR."""

COMMANDS = {
    "PULL": "Fetch one or more keys (in parallel, at most pull_concurrency downloads at once) and "
            "reply with the absolute path of each, one a line, in request order. A cached key is "
            "served without any S3 request within freshness_window seconds of its last ETag "
            "check; after that one conditional GET (If-None-Match) either confirms it (304, no "
            "body) or downloads the new version. Concurrent pulls of one key download once. If "
            "any key fails, the reply is ERROR naming that key; the others are still cached. A "
            "key shadowed by keys under KEY/ is refused: on disk the directory wins.",
    "PUSH": "Upload the file at the absolute path ABSPATH to KEY (multipart above 64 MiB). The "
            "uploaded bytes are installed in the cache, so the old version is never served "
            "again, and the key is added to the listing at once. Relative paths, missing files "
            "and non-regular files are errors. A client on this host running as another user "
            "may push only files that user could read; a local client the daemon cannot "
            "identify may not push (see SECURITY).",
    "GLOB": "Reply with the keys of the bucket's listing that match PATTERN, in key order. * and "
            "? do not cross /, ** does (**/ also matches no directory), [...] classes with ! or ^ "
            "negation, {a,b} alternatives, backslash escapes. A malformed pattern (an unclosed [ "
            "or {, a } without {, a trailing lone backslash, a reversed range) is an ERROR "
            "naming the problem. Matching takes time linear in the key, whatever the pattern. "
            "Only keys under the literal prefix "
            "of the pattern are read, from a listing no older than listing_freshness: when the "
            "listing of that prefix is older, the prefix is listed again first (one LIST "
            "request per 1,000 keys), and a pattern without a literal prefix (*, **/x) "
            "refreshes the whole bucket; the request's log line says how old the listing "
            "was. Keys "
            "S3 lists with a newline or carriage return in them would read as two lines: they "
            "are left out of GLOB, __list__ and the mount's directory listings (the log names "
            "each once per listing); a path opened on the mount still reaches them by name, a "
            "PULL of one is an ERROR (its reply gives one path a line).",
    "REFRESH": "List the bucket again into data/BUCKET/__list__ and its index, atomically. Two "
               "listings of one bucket never run at once. If the disk has no room for the new "
               "listing, the reply is an ERROR saying so and the previous listing stays in "
               "use.",
    "STATUS": "Counters and settings, one 'name value' a line: pulls, hits, misses, "
              "revalidations, downloads, bytes_downloaded, pushes, globs, refreshes, errors, "
              "s3_errors, evictions, cache_bytes, cache_objects, disk_used_percent, uptime, "
              "objects installed per check of their bytes (verified_md5, verified_crc64nvme, "
              "verified_crc32c, verified_crc32, verified_sha, verified_length_only) and "
              "downloads refused by theirs (verify_failures), and more; then one line per "
              "download in flight, 'download s3://BUCKET/KEY DONE "
              "TOTAL SECONDS' (bytes received, object size, seconds since it started), and "
              "one line per S3 request in flight, 's3_request OPERATION s3://BUCKET[/KEY] "
              "BYTES SECONDS' (GetObject, HeadObject, ListObjectsV2...: body bytes "
              "received, seconds since it was sent); the "
              "original s3pool's names, counting what it counted (count_pull and count_push "
              "every PULL and PUSH request, even a malformed one; count_refresh every REFRESH "
              "and every listing begun without one; count_pull_hit, count_glob, is_master, "
              "master, revision, standby, up_since); extra arguments are ignored, as by the "
              "original; with the embedded demo S3 also "
              "embedded_s3_endpoint, embedded_s3_access_key_id and "
              "embedded_s3_secret_access_key, what the aws CLI or boto3 needs to reach it; "
              "then every setting, in the units SET takes (refresh_interval in minutes).",
    "SET": "Change a setting at run time: " + ", ".join(spec.name for spec in SPECS
                                                        if not spec.fixed) + ". "
           "refresh_interval is minutes, as the original s3pool's clients send it; "
           "freshness_window and stale_on_error are seconds; any duration also takes a "
           "unit suffix (30s, 5m, 2h, 1d); max_cache_size takes K/M/G/T. As in the "
           "original, a verbose below 0 is 0 and a pull_concurrency below 1 is 1. "
           "The evictor and the list monitor act on a new value at once. Only the daemon's "
           "own user, root and members of --admin-group may SET (see SECURITY).",
}

WRITES = [
    ("Off by default",
     "Without --mount-writes the mount is read-only (EROFS). The setting is fixed at start "
     "and shown by STATUS (mount_writes on|off)."),
    ("New files, written in order",
     "cp, the shell's >, dd and open(O_CREAT|O_WRONLY) create a file; each write must "
     "continue where the file ends (else EINVAL). The bytes are staged in tmp/ with checked "
     "writes (a full disk is ENOSPC for the writer and nothing is uploaded) and counted "
     "against max_cache_size and the water marks while staged."),
    ("Uploaded at close",
     "close(2) (FUSE FLUSH) and fsync(2) upload the file and return once S3 has it, or EIO "
     "if the upload failed, so cp exits non-zero and nothing is on S3. A file larger than "
     "upload_part_size (8M) is sent as a multipart upload while it is written, a part as "
     "soon as it is full, so close waits only for the last part. The file ends at the "
     "close of the process that opened it (copies of the descriptor closed first by other "
     "processes, the commands of a script run as script > file, do not end it; when that "
     "cannot be told, the first close after a write does); later writes get EIO. A close "
     "before any write "
     "uploads nothing (the shell's > closes a first descriptor before the command writes); "
     "an empty file is uploaded when its last descriptor closes (a failure is only logged)."),
    ("Never half-visible",
     "Until the upload ended, other programs, PULL, GLOB and S3 do not see the file. Then "
     "it is cached, fresh, with S3's ETag: a PULL or open right after downloads nothing. "
     "A new file is uploaded with If-None-Match: *, so it never replaces an object another "
     "writer made meanwhile (close fails with EEXIST). STATUS counts mount_files_writing, "
     "mount_uploads and mount_upload_failures."),
    ("Refused",
     "An existing object: EPERM, unless --mount-overwrite lets an O_TRUNC open replace it "
     "with a whole new file. rename, link, symlink, mknod, chmod, chown: EPERM. unlink: "
     "EPERM unless --mount-delete (a DELETE on S3). mkdir makes a directory kept in memory "
     "until a file is written in it (S3 has no directories); rmdir removes such a one."),
    ("Stopped or killed during a write",
     "No object is left on S3 and nothing in data/. Multipart uploads are recorded in "
     "HOMEDIR/state/uploads/ before they start; SIGTERM aborts them, and the next start "
     "aborts those a SIGKILL left (only uploads this daemon recorded)."),
    ("Who may write",
     "The kernel checks (default_permissions) the modes the mount shows: directories 0777, "
     "objects 0444 (0666 with --mount-overwrite), less --mount-umask (default 022), all "
     "owned by the daemon's user. With --allow-other and --mount-umask 000 every local user "
     "can write whatever the daemon's S3 credentials can."),
]

SECURITY = [
    ("Who can reach the control socket",
     "TCP: anyone who can connect to the bind address and port; by default (127.0.0.1) every "
     "user of this host and no other host. The Unix socket (\\-\\-socket): whoever may "
     "write to the socket file (socket_mode, default 0666: every local user) and search its "
     "directory. The mode only decides who may connect; what a client may do is decided per "
     "request from who it is, whichever socket it uses."),
    ("What everyone may do",
     "PULL, GLOB, REFRESH and STATUS: fetch into the cache anything the daemon's S3 "
     "credentials can read, and learn its local path."),
    ("Who the client is",
     "On the Unix socket the kernel says so: SO_PEERCRED gives the client's uid and gid, "
     "SO_PEERGROUPS its supplementary groups, fixed when it connected. On TCP from this host "
     "the uid is the owner of the client's socket in /proc/net/tcp, and the groups are that "
     "user's in the group database. A TCP client whose socket is already closed when the "
     "daemon looks (orphaned: uid 0, inode 0, or gone), or that cannot be looked up, is an "
     "unknown local client and gets no privilege: it is never taken for root. A client on "
     "another host has no local uid."),
    ("Who may PUSH",
     "The daemon's own user and root: any file the daemon can read. Another local user: the "
     "file is opened with that user's identity (a short\\-lived helper process takes their "
     "uid, gid and groups and passes the descriptor back), so only what they could read "
     "themselves. Only regular files are opened: a FIFO or a device is refused without being "
     "opened. Whatever the user cannot reach (missing, no search permission on a directory "
     "above it, no read permission) gets one and the same ERROR, so PUSH tells nobody what "
     "exists where they cannot look. An unknown local "
     "client: nothing; the ERROR says to keep the connection open until the reply or to use "
     "the Unix socket. Clients on other hosts: any file the daemon can read, so bind wider "
     "than loopback only on a network whose hosts you trust. PUSH uploads only into a bucket "
     "that exists (a HEAD of the bucket first): some servers, the embedded demo S3 among "
     "them, would create a misspelled one."),
    ("Who may SET",
     "The daemon's own user, root, and members of \\-\\-admin\\-group; clients on other "
     "hosts only with \\-\\-allow\\-remote\\-admin; never an unknown local client. Other "
     "users get an ERROR naming their uid; PULL, GLOB and STATUS stay open to them."),
    ("Who can read what",
     "Data and meta files handed out by PULL follow the daemon's umask (0644 by default): any "
     "local user who can reach HOMEDIR can read every cached object, not only their own "
     "pulls. Log files are 0640 (the daemon's user and group): at verbose 3 they hold signed "
     "S3 request headers, and requests.log shows who asked for which key. Standard error goes "
     "wherever the service manager sends it (the journal under systemd)."),
    ("What keys and listings can reach",
     "A key, whoever PUSHes it or writes it to S3, names only a cached object: nothing of "
     "s3pool's own lives in a BUCKETDIR but __list__ and the meta files, which keys may not "
     "take (the listing indexes and their SQLite journals are under HOMEDIR/state/). Keys "
     "S3 lists with a newline or carriage return forge no GLOB line and no __list__ line: "
     "they are left out. A published listing (\\-\\-use\\-published\\-listing) can be "
     "written by anyone who may write the bucket: it is read with every line and field "
     "bounded and range\\-checked, and a bad one is turned down for a LIST."),
    ("What clients can write into the logs",
     "Keys, paths, error texts and peers come from clients and from S3. Every logged value "
     "has its control and other non\\-printable characters escaped (\\en, \\ex1b, "
     "\\eu2028, ...): one request is one line of requests.log, one record one line of "
     "s3pool.log (a traceback follows on indented lines), so no one can forge a line that "
     "reads like another request or send escapes to the terminal of whoever reads the log."),
    ("The metrics port",
     "With \\-\\-metrics\\-port, anyone who can connect to it (by default every local user) "
     "reads the counters, settings and latency histograms; no keys, paths or credentials. It "
     "is capped like the control port: at most 16 connections (never more than a sixteenth "
     "of the descriptor limit), a request within 5 s (half a second at the cap), one request "
     "per connection, so idle scrapers cannot starve PULLs, downloads or the mount."),
    ("The embedded demo S3",
     "It listens on 127.0.0.1 only, and only signed S3 requests change it: SeaweedFS' master "
     "and filer HTTP APIs are off, volume\\-server writes need a token its master signs, and "
     "its gRPC ports take only clients with a certificate of a CA made at each start by "
     "openssl (without openssl a warning says the gRPC ports are open); keys and "
     "certificates are in HOMEDIR/s3/ (0700). Its S3 credentials are fixed and printed: "
     "every local user can read, write and delete its objects through S3. A demo for one "
     "user's machine, not for a shared host."),
    ("Which socket to use",
     "Local jobs and shell users: the Unix socket (s3poolctl \\-\\-socket PATH, "
     "$S3POOL_SOCKET, or Client(socket_path=PATH) in Python), always for PUSH and SET. TCP: "
     "the 2019 clients, nc, and other hosts."),
    ("Known limits",
     "A program running as root that relays connections to the TCP port (a proxy, "
     "docker\\-proxy) makes its clients look like root there: have them use the Unix socket. "
     "With net.ipv4.ip_nonlocal_bind=1, clients on other hosts cannot be told from local "
     "ones and are treated as unknown local clients."),
]

LAYOUT = [
    ("log/", "s3pool.log, what the daemon did; requests.log, one line per control request "
             "with its status and milliseconds (written within a second; PUSH and SET lines "
             "name the client's uid); both rotated at 16 MiB, 5 kept; embedded\\-s3.log when "
             "the demo S3 runs. Log files are created 0640 and narrowed to that at start."),
    ("tmp/", "partial downloads and listings; emptied at start-up."),
    ("state/access.db", "SQLite: last access of every cached object, read by the evictor; "
                        "survives restarts."),
    ("state/checkpoint", "JSON: the boot id and the time of the last syncfs(2) of the "
                         "cache filesystem (every checkpoint_interval seconds when something "
                         "was installed, and at exit). Objects are installed without an "
                         "fsync each; after a reboot that followed no clean stop, objects "
                         "installed after that time are dropped at start\\-up and fetched "
                         "again when asked for. Listing indexes (state/listings/) are "
                         "written without an fsync too; after such a reboot each must pass "
                         "SQLite's quick_check, or it is removed and the bucket listed "
                         "again."),
    ("s3pool.pid", "pid of the running daemon, locked with flock(2)."),
    ("s3/", "only with the embedded demo S3: its objects (SeaweedFS volumes and filer "
            "metadata), kept across restarts; s3/weed.pid is its pid, so that a start after a "
            "crash kills a leftover; s3/security.toml and s3/tls/ its signing keys and "
            "certificates, made at each start (see SECURITY). Mode 0700."),
    ("data/BUCKET/KEY", "the object's bytes; / in keys are directory separators."),
    ("data/BUCKET/KEY__meta__", "JSON meta in the shape of aws s3api get\\-object: "
                                "LastModified, ETag (with its quotes), ContentLength, "
                                "ContentType, Metadata, AcceptRanges, and S3's full\\-object "
                                "checksum when it gave one (ChecksumCRC64NVME, ChecksumCRC32C, "
                                "ChecksumCRC32, ChecksumSHA1 or ChecksumSHA256, ChecksumType). "
                                "Data without a readable "
                                "meta file, or whose size differs from ContentLength, is not "
                                "served."),
    ("data/BUCKET/__list__", "every key of the bucket, one a line, written by REFRESH "
                             "(temporary file and rename)."),
    ("state/listings/BUCKET/index.db", "SQLite index of the same listing (key, size, mtime, "
                                       "ETag), used by GLOB and the FUSE view, and when each "
                                       "directory or GLOB prefix was last listed from S3 "
                                       "(listing_freshness). It carries its schema version "
                                       "(SQLite's user_version): an index of a version this "
                                       "s3pool does not read is never used, and the next "
                                       "listing replaces it. Nothing of "
                                       "s3pool's own but __list__ and the meta files lives in "
                                       "a BUCKETDIR, where a key can name any file."),
    ("state/uploads/ID.json", "a multipart upload of a file written in the mount "
                              "(\\-\\-mount\\-writes): bucket, key, upload id; removed when it "
                              "is completed or aborted, aborted at start\\-up if left."),
    ("state/layout", "the layout version of the HOMEDIR (2). A HOMEDIR of the previous layout "
                     "(no such file; the index was data/BUCKET/__index__) is moved at start\\-up "
                     "without losing what is cached; a newer one is refused."),
]


def s3pool_page() -> str:
    parser = build_parser()
    out = [
        *page_head(
            "S3POOL", "s3pool \\- a local\\-disk cache of S3 objects, served as paths and as files",
            ["\\fBs3pool\\fR \\fB\\-p\\fR \\fIPORT\\fR \\fB\\-D\\fR \\fIHOMEDIR\\fR "
             "[\\fB\\-m\\fR \\fIMOUNTPOINT\\fR] [\\fIoptions\\fR]",
             ".br",
             "\\fBs3pool\\fR \\fBpull\\fR|\\fBpush\\fR|\\fBglob\\fR|\\fBrefresh\\fR|\\fBstatus\\fR|"
             "\\fBset\\fR \\fIargs\\fR..."],
            esc(parser.description or "")),
        ".PP",
        "The daemon runs in the foreground (with \\fB\\-d\\fR in the background, see "
        "COMPATIBILITY) and logs to HOMEDIR/log/ and standard error. With "
        "\\fB\\-m\\fR it mounts a read\\-only view MOUNTPOINT/BUCKET/KEY: ls and stat show S3's "
        "sizes and times from the bucket listing before anything is downloaded; open(2) checks "
        "the ETag and downloads through the same path as PULL; reads come from the local file; "
        "an open handle keeps the version it opened. Writes fail with EROFS (unless "
        "\\fB\\-\\-mount\\-writes\\fR, see WRITING THROUGH THE MOUNT), missing keys with "
        "ENOENT, S3 failures with EIO.",
        ".PP",
        "Read\\-ahead of a directory: when a program opens the files of one directory of the "
        "mount in listing order (three in a row, each the next file after the one before), the "
        "next prefetch_files files (default 8) are fetched in the background as a PULL would, "
        "and kept topped up as it goes on, so its opens find them cached. Objects larger than "
        "download_part_size are not fetched ahead; an open out of order stops the read\\-ahead "
        "until the program reads in order again, so random access fetches nothing it did not "
        "ask for. A failed prefetch is only logged: the open does its own fetch. "
        "\\fB\\-\\-prefetch\\-files 0\\fR (or SET prefetch_files 0) turns it off. STATUS counts "
        "prefetches (fetches started) and prefetch_hits (opens that found one).",
        ".PP",
        "Given as the first word, \\fBpull\\fR, \\fBpush\\fR, \\fBglob\\fR, \\fBrefresh\\fR, "
        "\\fBstatus\\fR and \\fBset\\fR make s3pool act as the client, s3poolctl(1).",
        ".SH OPTIONS",
        *options_section(parser),
        ".SH PROTOCOL", esc(PROTOCOL),
        ".SH COMMANDS",
    ]
    for name, text in COMMANDS.items():
        out += [".TP", f"\\fB{esc(USAGE[name])}\\fR", esc(text)]
    out += [".SH HOMEDIR LAYOUT"]
    for path, text in LAYOUT:
        out += [".TP", f"\\fI{esc(path)}\\fR", text]
    out += [".SH SECURITY"]
    for title, text in SECURITY:
        out += [".TP", f"\\fB{title}\\fR", text]
    out += [".SH WRITING THROUGH THE MOUNT"]
    for title, text in WRITES:
        out += [".TP", f"\\fB{title}\\fR", esc(text)]
    out += [
        ".SH BACKGROUND TASKS",
        "The disk monitor deletes cached objects, least recently accessed first, when the "
        "filesystem holding HOMEDIR passes high_water percent or the cache passes high_water "
        "percent of max_cache_size, until low_water is reached. Objects being downloaded, "
        "pushed or opened (their key is locked), __list__ and the index files are never "
        "deleted; meta goes before data. The background pass also spares objects accessed in "
        "the last second; a download that needs room now does not (the caps are hard), it "
        "evicts the least recently used first. A download that cannot fit even after eviction "
        "fails with ERROR (ENOSPC on the mount). The list monitor refreshes the listings of the "
        "buckets in use every refresh_interval minutes (0 turns it off), one at a time with "
        "jitter.",
        ".PP",
        "How old a listing can be: what ls on the mount, GLOB and pull \\-\\-glob show is "
        "never older than listing_freshness seconds (default: freshness_window's value, and "
        "it follows a later SET of freshness_window until listing_freshness itself is set; "
        "\\fBs3poolctl set listing_freshness 10\\fR, or \\fB\\-\\-listing\\-freshness\\fR at "
        "start; 0 asks S3 at every ls and GLOB). Past it, a directory read on the mount is "
        "listed again with one delimiter LIST of its prefix (one request per 1,000 entries, "
        "once per window however often it is read; concurrent readers share one LIST) and "
        "its entries are served while later pages arrive (its subdirectories, up to 64, are "
        "then listed ahead, one page each, four at a time, for a find or ls \\-R reading them "
        "next; past its first 4 pages, a LIST of numbered names such as part\\-00042 goes "
        "on in key ranges of about 4,000 keys listed side by side, up to 4 at once, still "
        "served in order, unless the server ignores StartAfter); keys deleted on S3 "
        "disappear, new "
        "ones and new subdirectories appear. A GLOB lists its pattern's literal prefix again "
        "(or the whole bucket). A published listing counts with the age it says it has. A "
        "name looked up directly (stat, open) in a directory listed longer ago than the "
        "window waits for that directory's LIST (the one ls shares) to reach the name: a key "
        "deleted on S3 is ENOENT, a new one is found, without an ls. A name a fresh listing "
        "lacks is asked of S3 at once, and open(2) always checks the ETag. The kernel keeps "
        "a name it was told for at most 10 seconds (and at most listing_freshness): a name "
        "already looked up can be that much older. When S3 cannot be reached, ls shows the listing "
        "in hand (the failure is logged; a directory never listed is EIO) and GLOB answers "
        "ERROR. STATUS shows listing_requests (LIST requests "
        "sent) and one 'listing_age BUCKET SECONDS' line per bucket in use (the age of its "
        "whole listing; directories listed since are younger). Times of directory listings "
        "are kept in the index file, so they survive a restart.",
        ".SH METRICS",
        "With \\fB\\-\\-metrics\\-port\\fR \\fIPORT\\fR the daemon serves Prometheus metrics "
        "at http://127.0.0.1:PORT/metrics (\\fB\\-\\-metrics\\-bind\\fR to listen elsewhere): the "
        "STATUS counters as s3pool_NAME_total (pulls, hits, downloads, bytes_downloaded, "
        "s3_errors, ...), gauges s3pool_cache_bytes, s3pool_cache_objects, "
        "s3pool_disk_used_percent, s3pool_downloads_in_progress, the settings as "
        "s3pool_setting{name}, and histograms s3pool_request_seconds{command,status} (control "
        "requests) and s3pool_s3_request_seconds{operation} (S3 calls), with "
        "s3pool_s3_failures_total{operation,code}. The endpoint is served on the daemon's "
        "event loop, one request per connection, with the limits given in SECURITY.",
        ".SH COMPATIBILITY",
        "The original s3pool's clients work unchanged: same framing, order, paths and exit "
        "codes. s3pool stays in the foreground, as a service manager wants; the original "
        "forked into the background unless given \\fB\\-n\\fR, so a start script written "
        "for it adds \\fB\\-d\\fR: s3pool then returns once the daemon answers on its "
        "control port (exit 0), or with the exit code of a start that failed, after printing "
        "why; \\fB\\-n\\fR wins over \\fB\\-d\\fR. Its flags are also taken in the forms "
        "Go's flag package took (\\-\\-p 9000, \\-p=9000, \\-n=true, \\-\\-daemonprep): "
        "\\fB\\-pidfile\\fR \\fIPATH\\fR, \\fB\\-c\\fR \\fIN\\fR (pull concurrency; below 1 is 1), "
        "\\fB\\-daemonprep\\fR (what the original's detached child did); \\fB\\-s\\fR and "
        "\\fB\\-M\\fR \\fIHOST\\fR are ignored with a warning. The README's 'Differences from "
        "the original' lists what else differs on purpose (the bind address, SET's limits).",
        ".SH ENVIRONMENT",
        ".TP", "\\fBAWS_ENDPOINT_URL\\fR, \\fBAWS_ENDPOINT_URL_S3\\fR",
        "S3 endpoint (for MinIO, SeaweedFS, Ceph and other S3\\-compatible servers).",
        ".TP", "\\fBAWS_PROFILE\\fR, \\fBAWS_ACCESS_KEY_ID\\fR, \\fBAWS_SECRET_ACCESS_KEY\\fR, "
        "\\fBAWS_REGION\\fR",
        "Credentials and region, from the standard AWS chain. With none of these and no "
        "endpoint, \\fB\\-\\-embedded\\-s3 auto\\fR starts a local demo S3.",
        ".TP", "\\fBS3POOL_LEAN_GET\\fR",
        "0 sends every object GET and LIST through boto3. By default GETs and LIST pages "
        "are signed by botocore's SigV4 signer and sent on keep-alive connections of "
        "s3pool's own (framed by Python's http.client), and only what is not a plain answer "
        "(an error, a redirect, a failed connection, a LIST body s3pool's parser does not "
        "read) goes through boto3 (STATUS s3_lean_gets, s3_lean_fallbacks, s3_lean_lists, "
        "s3_lean_list_fallbacks). Either way every answer is checked before a "
        "byte of it is used (see download_stall_timeout for the deadline of each request).",
        ".SH SIGNALS",
        "SIGINT and SIGTERM unmount the FUSE view, finish the current replies, flush the access "
        "records and exit 0. A file still being written in the mount is not uploaded (its "
        "multipart upload is aborted).",
        ".SH EXIT STATUS",
    ]
    for code, text in EXIT_CODES:
        out += [".TP", f"\\fB{code}\\fR", esc(text)]
    out += [".SH SEE ALSO", "s3poolctl(1), fusermount3(1)"]
    return "\n".join(out) + "\n"


def s3poolctl_page() -> str:
    parser = build_ctl_parser()
    out = [
        *page_head(
            "S3POOLCTL", "s3poolctl \\- talk to a running s3pool daemon",
            ["\\fBs3poolctl\\fR [\\fB\\-H\\fR \\fIHOST\\fR] [\\fB\\-p\\fR \\fIPORT\\fR | "
             "\\fB\\-S\\fR \\fIPATH\\fR] \\fICOMMAND\\fR \\fIargs\\fR..."],
            esc(parser.description or "")),
        "It prints the OK payload on standard output and an ERROR message on standard error.",
        ".SH OPTIONS", *options_section(parser),
        ".SH COMMANDS",
        "Each command also takes \\fB\\-H\\fR and \\fB\\-p\\fR after its name; "
        "\\fBs3poolctl\\fR \\fICOMMAND\\fR \\fB\\-\\-help\\fR shows its arguments.",
    ]
    commands = next(action for action in parser._actions
                    if isinstance(action, argparse._SubParsersAction))
    for sub in commands.choices.values():
        usage = " ".join(sub.format_usage().split()[1:])  # without "usage:"
        usage = usage.replace(" [-h] [-H HOST] [-p PORT]", "")
        out += [".TP", f"\\fB{esc(usage)}\\fR", esc(sub.description or "")]
        own = [action for action in sub._actions if action.option_strings
               and not isinstance(action, argparse._HelpAction)
               and action.dest not in ("host", "port")]
        if own:
            out += [".RS"]
            for action in own:
                metavar = action.metavar if action.nargs != 0 else None
                out += option_entry(action, str(metavar) if metavar else None)
            out += [".RE"]
    out += [".SH PROGRESS",
            "A pull that takes more than a second draws a progress bar on standard error when "
            "that is a terminal: objects done of total, bytes and rate of the downloads in "
            "flight (read from STATUS every 0.3 s on a second connection). Standard output "
            "carries only the paths, and nothing else is printed when standard error is not "
            "a terminal."]
    out += [".SH EXIT STATUS", esc(parser.epilog or ""), ".SH SEE ALSO", "s3pool(1)"]
    return "\n".join(out) + "\n"


PAGES = {"s3pool": s3pool_page, "s3poolctl": s3poolctl_page}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in PAGES:
        print("usage: python -m s3pool.cli.manpage s3pool|s3poolctl", file=sys.stderr)
        return 2
    sys.stdout.write(PAGES[argv[0]]())
    return 0


if __name__ == "__main__":
    sys.exit(main())
