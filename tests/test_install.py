"""``./dev.sh install``: a self-contained install every user can run (its
own venv under PREFIX/lib/s3pool, the commands in PREFIX/bin), the man pages
where man(1) looks, the systemd unit in place (not enabled), under PREFIX and
DESTDIR as ``make install`` does, so this test never writes to /usr/local.

The install is real: a venv built and s3pool installed into it with pip
(from the package index pip is configured with), staged under DESTDIR, then
moved to PREFIX as a package manager would, and run there by ``nobody``.
PREFIX is in a directory every user may search (pytest's are 0700).

``linked_venv`` (for test_dev_run) hands ``./dev.sh run`` a venv made of
links to the one running the tests, already stamped as set up.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.e2e


def linked_venv(tmp_path: Path) -> Path:
    real_bin = Path(sys.executable).parent
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name in ("python", "s3pool", "s3poolctl", "weed"):
        (venv / "bin" / name).symlink_to(real_bin / name)
    stamp = venv / ".s3pool-installed"
    stamp.touch()
    newer = (ROOT / "pyproject.toml").stat().st_mtime + 1
    os.utime(stamp, (newer, newer))
    return venv


def dev_sh(*args: str, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(["./dev.sh", *args], cwd=ROOT, env=dict(os.environ, **env),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def as_nobody(argv: list[str], path: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/",
                          env={"PATH": path, "HOME": "/tmp", "LANG": "C.UTF-8",
                               "MANWIDTH": "80"},
                          user="nobody", group="nogroup", extra_groups=[])


def test_install_under_destdir_then_moved_to_prefix_runs_for_every_user():
    top = Path(tempfile.mkdtemp(prefix="s3pool-install-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        prefix = top / "prefix"  # where the files end up
        stage = top / "stage"  # DESTDIR: where install puts them
        out = dev_sh("install", DESTDIR=str(stage), PREFIX=str(prefix)).stdout
        staged = Path(f"{stage}{prefix}")
        assert f"{staged}/share/man/man1/s3pool.1" in out
        assert not prefix.exists()  # nothing outside DESTDIR
        for name in ("s3pool", "s3poolctl"):
            assert os.readlink(staged / "bin" / name) == f"{prefix}/lib/s3pool/venv/bin/{name}"
        venv_bin = staged / "lib/s3pool/venv/bin"
        for script in venv_bin.iterdir():  # DESTDIR is in no script's #! line
            if script.is_file() and not script.is_symlink():
                assert str(stage) not in script.read_bytes().decode(errors="replace"), script
        assert (venv_bin / "s3poolctl").read_text().startswith(
            f"#!{prefix}/lib/s3pool/venv/bin/python")
        unit = (staged / "lib/systemd/system/s3pool.service").read_text()
        assert f"ExecStart={prefix}/bin/s3pool -p " in unit
        assert not list(staged.rglob("*.wants"))  # in place, not enabled

        staged.rename(prefix)  # what a package manager does with DESTDIR's tree

        # nobody, with PREFIX/bin on the PATH, runs the commands and finds the pages
        path = f"{prefix}/bin:/usr/bin:/bin"
        ctl = as_nobody(["s3poolctl", "--help"], path)
        assert ctl.returncode == 0 and "usage: s3poolctl" in ctl.stdout, ctl.stderr
        version = as_nobody(["s3pool", "--version"], path)
        assert version.returncode == 0 and version.stdout.startswith("s3pool "), version.stderr
        # the installed code is a copy, not a link to this checkout
        where = as_nobody([f"{prefix}/lib/s3pool/venv/bin/python", "-c",
                           "import s3pool; print(s3pool.__file__)"], path)
        assert where.stdout.startswith(f"{prefix}/lib/s3pool/venv/"), where.stdout + where.stderr
        for name in ("s3pool", "s3poolctl"):
            found = as_nobody(["man", "-w", name], path)
            assert found.returncode == 0, found.stderr
            assert found.stdout.strip() == f"{prefix}/share/man/man1/{name}.1"
            assert (prefix / "share/man/man1" / f"{name}.1").read_text() == \
                (ROOT / "man" / f"{name}.1").read_text()
        page = as_nobody(["man", "s3pool"], path)
        assert page.returncode == 0 and "HOMEDIR LAYOUT" in page.stdout

        dev_sh("uninstall", PREFIX=str(prefix))
        assert not [p for p in prefix.rglob("*") if p.is_file() or p.is_symlink()]
    finally:
        shutil.rmtree(top, ignore_errors=True)
