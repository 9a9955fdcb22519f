"""``./dev.sh install``: the commands on the PATH, the man pages where
man(1) looks, the systemd unit in place (not enabled), under PREFIX and
DESTDIR as ``make install`` does, so this test never writes to /usr/local.

dev.sh runs its setup first (apt packages, the venv); building a fresh venv
here would take minutes, so the test hands it one made of links to the
venv running the tests, already stamped as installed.
"""

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


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
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_install_puts_commands_man_pages_and_unit_under_prefix(tmp_path):
    venv = linked_venv(tmp_path)
    prefix = tmp_path / "prefix"
    dev_sh("install", S3POOL_VENV=str(venv), PREFIX=str(prefix))

    # a normal shell with PREFIX/bin on its PATH finds the command and its page
    path = f"{prefix}/bin:/usr/bin:/bin"
    for name in ("s3pool", "s3poolctl"):
        found = subprocess.run(["man", "-w", name], capture_output=True, text=True,
                               env={"PATH": path, "HOME": str(tmp_path)})
        assert found.returncode == 0, found.stderr
        assert found.stdout.strip() == f"{prefix}/share/man/man1/{name}.1"
        assert (prefix / "share/man/man1" / f"{name}.1").read_text() == \
            (ROOT / "man" / f"{name}.1").read_text()
    page = subprocess.run(["man", "s3pool"], capture_output=True, text=True,
                          env={"PATH": path, "HOME": str(tmp_path), "MANWIDTH": "80"})
    assert page.returncode == 0 and "HOMEDIR LAYOUT" in page.stdout
    ctl = subprocess.run(["s3poolctl", "--help"], capture_output=True, text=True,
                         env=dict(os.environ, PATH=path))
    assert ctl.returncode == 0 and "usage: s3poolctl" in ctl.stdout

    unit = (prefix / "lib/systemd/system/s3pool.service").read_text()
    assert f"ExecStart={prefix}/bin/s3pool -p " in unit
    assert not list(prefix.rglob("*.wants"))  # in place, not enabled

    dev_sh("uninstall", S3POOL_VENV=str(venv), PREFIX=str(prefix))
    assert not [p for p in prefix.rglob("*") if p.is_file() or p.is_symlink()]


def test_install_with_destdir_stages_the_default_prefix(tmp_path):
    venv = linked_venv(tmp_path)
    root = tmp_path / "root"
    out = dev_sh("install", S3POOL_VENV=str(venv), DESTDIR=str(root)).stdout
    assert f"{root}/usr/local/share/man/man1/s3pool.1" in out
    assert (root / "usr/local/share/man/man1/s3pool.1").is_file()
    assert os.readlink(root / "usr/local/bin/s3pool") == f"{venv}/bin/s3pool"
    unit = (root / "usr/local/lib/systemd/system/s3pool.service").read_text()
    assert "ExecStart=/usr/local/bin/s3pool -p " in unit
