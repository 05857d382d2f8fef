"""scripts/setup --if-needed (what scripts/run-local runs at every start):
nothing is installed while .venv is this checkout's and newer than
pyproject.toml; pip runs again when pyproject.toml changed or .venv is
another checkout's.  Run in a copy of the scripts with a stand-in .venv whose
pip and python record their calls, and stand-in apt-get/dpkg-query."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PYTHON = """#!/bin/sh
# stand-in .venv/bin/python: 'import albatross' finds the tree in $ALBATROSS_AT
echo "python $*" >>"$CALLS"
case "$*" in
*"import sys, albatross"*) [ "$3" = "$ALBATROSS_AT/src/albatross/__init__.py" ] ;;
esac
"""

RECORD = """#!/bin/sh
echo "$(basename "$0") $*" >>"$CALLS"
"""


def tree(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "setup", root / "scripts" / "setup")
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    venv = root / ".venv" / "bin"
    venv.mkdir(parents=True)
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (venv / "python").write_text(PYTHON)
    for p in (venv / "pip", stubs / "apt-get", stubs / "dpkg-query"):
        p.write_text(RECORD)
    for p in (venv / "python", venv / "pip", stubs / "apt-get", stubs / "dpkg-query"):
        p.chmod(0o755)
    env = {**os.environ, "CALLS": str(tmp_path / "calls"), "ALBATROSS_AT": str(root),
           "PATH": f"{stubs}:{os.environ['PATH']}"}
    return root, env


def setup(root: Path, env: dict[str, str], tmp_path: Path) -> list[str]:
    calls = tmp_path / "calls"
    calls.unlink(missing_ok=True)
    res = subprocess.run([str(root / "scripts" / "setup"), "--if-needed"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    return calls.read_text().splitlines() if calls.exists() else []


def pip_calls(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("pip ")]


def test_setup_if_needed_installs_once(tmp_path):
    root, env = tree(tmp_path)
    first = setup(root, env, tmp_path)
    assert "pip install -q -e .[test]" in pip_calls(first)
    assert (root / ".venv" / ".setup-done").exists()
    assert pip_calls(setup(root, env, tmp_path)) == []


def test_setup_if_needed_after_pyproject_change(tmp_path):
    root, env = tree(tmp_path)
    setup(root, env, tmp_path)
    # pyproject.toml edited after the last setup
    edited = (root / "pyproject.toml").stat().st_mtime
    os.utime(root / ".venv" / ".setup-done", (edited - 10, edited - 10))
    assert "pip install -q -e .[test]" in pip_calls(setup(root, env, tmp_path))
    assert pip_calls(setup(root, env, tmp_path)) == []


def test_setup_if_needed_for_another_checkouts_venv(tmp_path):
    root, env = tree(tmp_path)
    setup(root, env, tmp_path)
    env["ALBATROSS_AT"] = str(tmp_path / "elsewhere")
    assert "pip install -q -e .[test]" in pip_calls(setup(root, env, tmp_path))


def test_run_local_uses_if_needed():
    text = (REPO / "scripts" / "run-local").read_text()
    assert "scripts/setup --if-needed" in text
    assert [line for line in text.splitlines() if line.strip().startswith("scripts/setup")] == \
        ["scripts/setup --if-needed"]
