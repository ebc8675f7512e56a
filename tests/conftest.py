import os
from pathlib import Path

import pytest

from govlab.config import load_config

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"


def pytest_collection_modifyitems(items):
    """Under pytest-xdist ``--dist loadgroup``: the tests of one folder share a worker (and so
    their session fixtures); top-level test files spread freely."""
    for item in items:
        if item.path.is_relative_to(ROOT / "tests"):
            rel = item.path.relative_to(ROOT / "tests")
            if len(rel.parts) > 1:
                item.add_marker(pytest.mark.xdist_group(rel.parts[0]))


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
