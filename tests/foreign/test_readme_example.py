"""The README's example of governing your own diffusers loop runs as written."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import xarray as xr

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    section = text.split("## Governing your own diffusers loop", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section holds one python example"
    return blocks[0]


def test_readme_example_governs_a_tiny_pipeline(tmp_path):
    code = readme_example()
    (tmp_path / "example.py").write_text(code)
    r = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "out"
    history = json.loads((out / "memorization.json").read_text())["history"]
    assert history and all(0 <= v < float("inf") for h in history for v in h["scores"].values())
    with xr.open_dataset(out / "index.nc") as ix:
        assert ix.checkpoint.values.tolist() == [4]  # 16 images, batches of 4: one epoch
        seen = ix["samples_seen"].sum("source").values.tolist()
        assert seen == [16]
        norms = ix["grad_norm_sq"].sum("band").isel(checkpoint=0)
        steps = ix["steps_seen"].isel(checkpoint=0)
        assert ((norms > 0) == (steps > 0)).all()  # a source that trained has a gradient figure
