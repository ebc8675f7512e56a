"""notebooks/05_structural_vs_statistical.ipynb runs end to end in quick mode."""

from pathlib import Path

import nbformat
import papermill

ROOT = Path(__file__).resolve().parents[2]


def test_attribution_notebook_quick(tmp_path, monkeypatch, artifacts, compare_cache):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # the retrainings of the session's quick comparison (same config and sizes, made from scratch there)
    monkeypatch.setenv("GOVLAB_CACHE", str(compare_cache))
    out = artifacts / "05_structural_vs_statistical.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks/05_structural_vs_statistical.ipynb"), str(out),
                               kernel_name="python3", parameters={"QUICK": True}, cwd=str(tmp_path),
                               progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    text = "\n".join(o.get("text", "") or str(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "QUICK mode" in text and "LDS x100: structural" in text and "dtrak" in text
    for q in ("named", "unnamed", "images"):
        assert f"--- {q}" in text
    assert "name_baseline" in text and "lds_ci_low" in text
    assert any(p.name == "model.safetensors" for p in (compare_cache / "attribution/retrain").rglob("*"))
