"""The man pages are generated from the parsers: check the committed ones are current."""

import subprocess
import sys
from pathlib import Path

import pytest

from s3pool.cli.manpage import PAGES

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", sorted(PAGES))
def test_committed_man_page_matches_the_parser(name):
    committed = (ROOT / "man" / f"{name}.1").read_text()
    assert committed == PAGES[name](), (
        f"man/{name}.1 is stale: run python -m s3pool.cli.manpage {name} > man/{name}.1")


def test_every_option_of_help_is_in_the_man_page():
    help_text = subprocess.run([sys.executable, "-m", "s3pool.cli.main", "--help"],
                               capture_output=True, text=True, check=True).stdout
    page = (ROOT / "man" / "s3pool.1").read_text().replace("\\-", "-")
    for word in help_text.split():
        if word.startswith("--") and word.strip(",().") != "--help":
            assert word.strip(",().") in page, word


def test_man_page_renders():
    result = subprocess.run(["man", "-l", str(ROOT / "man" / "s3pool.1")], capture_output=True,
                            text=True, env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    for section in ("OPTIONS", "PROTOCOL", "COMMANDS", "HOMEDIR LAYOUT", "SECURITY",
                    "SIGNALS", "EXIT STATUS"):
        assert section in result.stdout


def test_man_finds_the_page_beside_the_installed_command():
    import os
    import shutil

    bin_dir = os.path.dirname(shutil.which("s3pool", path=os.path.dirname(sys.executable))
                              or sys.executable)
    result = subprocess.run(["man", "-w", "s3pool"], capture_output=True, text=True,
                            env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("s3pool.1")
