"""Execute each foundation notebook in quick mode (papermill, the venv's python3 kernel)."""

from pathlib import Path

import papermill as pm
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.mark.parametrize("name", ["01_world_and_training.ipynb"])
def test_notebook_runs_in_quick_mode(name, tmp_path, artifacts):
    out = artifacts / f"executed_{name}"
    pm.execute_notebook(str(NOTEBOOKS / name), str(out), kernel_name="python3",
                        parameters={"QUICK": True, "RUN_DIR": str(tmp_path)}, progress_bar=False,
                        cwd=str(tmp_path))
    assert (tmp_path / "smoke" / "report.md").is_file()
