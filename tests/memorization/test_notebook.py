"""notebooks/03_memorization.ipynb in quick mode (papermill, the venv's python3 kernel)."""

import json
from pathlib import Path

import papermill as pm

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "03_memorization.ipynb"


def test_memorization_notebook_quick(tmp_path, artifacts):
    pm.execute_notebook(str(NOTEBOOK), str(artifacts / "executed_03_memorization.ipynb"), kernel_name="python3",
                        parameters={"QUICK": True, "RUN_DIR": str(tmp_path)}, progress_bar=False, cwd=str(tmp_path))
    results = json.loads((tmp_path / "memorization" / "experiment.json").read_text())
    assert set(results) == {"none", "attenuate", "regularize", "drop", "deduplicate"}
    for r in results.values():
        assert 0 <= r["extraction_rate_planted"] <= 1 and r["curves"]
        assert Path(r["run"], "memorization", "audit_grid.png").is_file()
