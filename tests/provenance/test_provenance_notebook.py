"""notebooks/04_provenance_index.ipynb runs end to end in quick mode and shows its proofs."""

import re
from pathlib import Path

import nbformat
import papermill

ROOT = Path(__file__).resolve().parents[2]


def test_provenance_notebook_quick(tmp_path, monkeypatch, artifacts):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = artifacts / "04_provenance_index.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks/04_provenance_index.ipynb"), str(out), kernel_name="python3",
                               parameters={"QUICK": True, "RUN_DIR": str(tmp_path)}, cwd=str(tmp_path),
                               progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    text = "\n".join(o.get("text", "") or str(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "QUICK mode" in text
    proofs = re.findall(r"opt-out proof (\S+): max grad_norm_sq from step \d+ on = (\S+) .*zero influence: (\S+)", text)
    assert [p[0] for p in proofs] == ["artist_5", "artist_3"]
    assert all(float(v) == 0.0 and z == "True" for _, v, z in proofs)
    assert "verify after attestation: every artifact matches manifest.json" in text
    assert "artist_2 style accuracy: before" in text
    assert (tmp_path / "provenance" / "attestation.md").is_file()
