"""notebooks/02_routing.ipynb runs end to end in quick mode and reports measured figures."""

import re
from pathlib import Path

import nbformat
import papermill

ROOT = Path(__file__).resolve().parents[2]


def test_routing_notebook_quick(tmp_path, monkeypatch, artifacts):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: one thread is fastest and sane on shared CPUs
    out = artifacts / "02_routing.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks/02_routing.ipynb"), str(out), kernel_name="python3",
                               parameters={"QUICK": True, "SEEDS": 2}, cwd=str(tmp_path), progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    text = "\n".join(o.get("text", "") or str(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    err = float(re.search(r"max relative error, routed vs per-sample reference: (\S+)", text).group(1))
    assert err <= 1e-5
    for line in ("(a) artist_0 style accuracy", "(c) unrouted zeroing", "watermark rate: routed",
                 "over 2 training seeds: ["):
        assert line in text
    assert "(b) retrained without artist" in text and "QUICK mode" in text
