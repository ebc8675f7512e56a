"""The Makefile's torch install where pip sees the CPU build, only PyTorch's CPU index, or only PyPI
(a fake pip that serves what each machine would, and records what it was asked for)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PIP = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/pip.log"
case "$*" in
  *torch==2.13.0+cpu*) case "$SERVES" in
      store) exit 0 ;;
      cpu-index) case "$*" in *download.pytorch.org/whl/cpu*) exit 0 ;; esac; exit 1 ;;
      *) echo "ERROR: No matching distribution found for torch==2.13.0+cpu" >&2; exit 1 ;;
    esac ;;
esac
exit 0
"""


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("serves, want", [
    ("store", ["torch==2.13.0+cpu"]),
    ("cpu-index", ["torch==2.13.0+cpu", "download.pytorch.org/whl/cpu"]),
    ("pypi", ["torch==2.13.0+cpu", "download.pytorch.org/whl/cpu", "torch==2.13.0"]),
    ("has-torch", []),
])
def test_torch_install_falls_back_to_pypi(tmp_path, serves, want):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "pip").write_text(PIP)
    # the venv's python: "import torch" works only where torch is already installed
    (venv / "bin" / "python").write_text(f"#!/bin/sh\nexit {0 if serves == 'has-torch' else 1}\n")
    for f in ("pip", "python"):
        (venv / "bin" / f).chmod(0o755)
    r = subprocess.run(["make", "-s", "install", f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "SERVES": serves})
    assert r.returncode == 0, r.stderr
    asked = (venv / "bin" / "pip.log").read_text().splitlines()
    torch_asks = [a for a in asked if "torch==" in a]
    assert len(torch_asks) == len(want), asked
    for ask, w in zip(torch_asks, want):
        assert w in ask
    if serves == "pypi":
        assert "+cpu" not in torch_asks[-1] and "--extra-index-url" not in torch_asks[-1]
        assert "installing torch==2.13.0 from PyPI" in r.stdout and "nvidia" in r.stdout
    assert asked[-1].startswith("install") and "-e .[dev]" in asked[-1]  # then the project itself
    assert (venv / ".govlab-installed").is_file()
