"""`govlab explore` from an installed wheel: the app ships inside the package (no source checkout).

The wheel is built offline from a copy of the sources and installed with ``--no-deps`` into a fresh
venv that reaches the test venv's packages through a path file (nothing is downloaded); the server
runs from a folder outside the repository, and the page must answer on loopback with the app's title
and template.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PY = f"python{sys.version_info.major}.{sys.version_info.minor}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=180, **kw)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv holding only the built govlab wheel; the other packages come from the test venv."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "govlab", src / "govlab", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", tmp / "dist", src])
    wheel = next((tmp / "dist").glob("govlab-*.whl"))
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    site = venv / "lib" / PY / "site-packages"
    # a path line (not addsitedir): the test venv's packages, without its editable govlab's finder
    (site / "test_venv_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index",
         "-q", wheel])
    return venv, wheel


def test_the_installed_wheel_serves_the_explorer(installed, tmp_path):
    from govlab.explore.synthetic import fixture_run

    venv, wheel = installed
    elsewhere = tmp_path / "elsewhere"  # not the repository: no apps/ folder within reach
    elsewhere.mkdir()
    found = run([venv / "bin" / "python", "-c", "import govlab.explore.app as a; print(a.__file__)"], cwd=elsewhere)
    assert Path(found.strip()).is_relative_to(venv), found  # the wheel's copy, not the checkout
    assert "govlab/explore/app.py" in run([sys.executable, "-m", "zipfile", "-l", wheel])
    run_dir = fixture_run(tmp_path / "run")
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    proc = subprocess.Popen([venv / "bin" / "govlab", "explore", run_dir, "--port", str(port)], cwd=elsewhere,
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        page, end = None, time.monotonic() + 120
        while page is None and time.monotonic() < end:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/explorer", timeout=30) as r:
                    page = (r.status, r.read().decode())
            except OSError:
                time.sleep(0.5)
        assert page is not None, (tmp_path / "serve.log").read_text()
        assert page[0] == 200 and "<title>govlab explorer</title>" in page[1]
        assert "bootstraptemplate" in page[1]  # the page is the app's template, built for this session
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
