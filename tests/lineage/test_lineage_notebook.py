"""Notebook 06 runs in quick mode (papermill, the venv's python3 kernel) and shows its tables and curves."""

from pathlib import Path

import nbformat
import papermill as pm

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "06_lineage.ipynb"


def test_lineage_notebook_quick(quick_zoo, zoo_features, artifacts, tmp_path):
    out = artifacts / "executed_06_lineage.ipynb"
    pm.execute_notebook(str(NOTEBOOK), str(out), kernel_name="python3", parameters={"QUICK": True},
                        progress_bar=False, cwd=str(tmp_path))
    nb = nbformat.read(str(out), as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert "NULL threshold" in html and "ratio next/closest" in html
    assert len(images) >= 3  # pool heatmap, k ablation, countermeasure curves
