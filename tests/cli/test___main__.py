"""flatness.cli.__main__: ``python -m flatness.cli`` is the same program as the ``flatness`` command."""

from __future__ import annotations

import os
import subprocess
import sys

from flatness.version import __version__


def _run(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "flatness.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )


def test_python_dash_m_runs_the_commands(tmp_path):
    version = _run("--version")
    assert version.returncode == 0 and version.stdout.startswith(f"flatness {__version__} (torch ")
    missing = _run("probe", str(tmp_path / "missing.pt"))
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip().splitlines() == [f"Error: checkpoint not found: {tmp_path / 'missing.pt'}"]
