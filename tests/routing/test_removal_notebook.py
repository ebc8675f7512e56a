"""notebooks/07_removal.ipynb runs end to end in quick mode (tiny model) and shows the table and plot."""

import json
from pathlib import Path

import nbformat
import papermill

ROOT = Path(__file__).resolve().parents[2]


def test_removal_notebook_quick(tiny_cfg, tmp_path, monkeypatch, artifacts):
    """The tiny config's trainings are the cached ones tests/routing/test_removal.py made."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = artifacts / "07_removal.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks/07_removal.ipynb"), str(out), kernel_name="python3",
                               parameters={"QUICK": True, "PER_PROMPT": 1, "ESD_ITERATIONS": 2,
                                           "OVERRIDES": json.loads(json.dumps(tiny_cfg.to_dict()))},
                               cwd=str(tmp_path), progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    text = "\n".join(o.get("text", "") or str(o.get("data", {}).get("text/markdown", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "QUICK mode" in text and "(b) retrained without the artist (oracle)" in text
    assert "slot within the oracle on all five:" in text and "| confined |" in text
    assert (tmp_path / "removal.png").stat().st_size > 1000
