import os
from pathlib import Path

import pytest

from govlab.config import load_config

# Sweeps of retrainings run serially in each test worker (govlab.sweep); tests/sweep starts Ray itself.
os.environ.setdefault("GOVLAB_WORKERS", "1")

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def smoke_cfg():
    return load_config("smoke")


@pytest.fixture(scope="session")
def smoke_dataset(smoke_cfg):
    from govlab.data.cache import run_dataset

    return run_dataset(smoke_cfg, progress=False)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch, tmp_path_factory):
    """Keep Jupyter/IPython state out of $HOME."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("IPYTHONDIR", str(base / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(base / "jupyter-runtime"))
    os.environ.setdefault("TQDM_DISABLE", "1")
