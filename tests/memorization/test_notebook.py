"""notebooks/03_memorization.ipynb in quick mode (papermill, the venv's python3 kernel)."""

import json
from pathlib import Path

import papermill as pm
import pytest
import torch

from govlab.config import from_dict, read_yaml
from govlab.data.cache import run_dataset
from govlab.models.diffusion import TextToImage

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "03_memorization.ipynb"


def test_memorization_notebook_quick(tmp_path, artifacts):
    pm.execute_notebook(str(NOTEBOOK), str(artifacts / "executed_03_memorization.ipynb"), kernel_name="python3",
                        parameters={"QUICK": True, "RUN_DIR": str(tmp_path)}, progress_bar=False, cwd=str(tmp_path))
    results = json.loads((tmp_path / "memorization" / "experiment.json").read_text())
    assert set(results) == {"none", "attenuate", "regularize", "drop", "deduplicate"}
    for r in results.values():
        assert r["curves"]
        assert Path(r["run"], "memorization", "audit_grid.png").is_file()
        # the rates recomputed from the run's files: each audited caption's saved ratios against the
        # 1/3 criterion, planted by the world's ground truth for that training row
        run = Path(r["run"])
        items = json.loads((run / "memorization" / "audit.json").read_text())["items"]
        cfg = from_dict(read_yaml(run / "config.yaml"))
        data = run_dataset(cfg, progress=False)
        records = data.records
        planted = [records[it["row"]]["duplicate_group"] >= 0 for it in items]
        assert len(items) == 30 and 0 < sum(planted) < len(items)
        # the saved pixel ratios: the run's model regenerates the captions (n=1, one batch, seed 0), each
        # generation's l2 to its own training image(s) / to the nearest other image
        model = TextToImage.load(run / "model.safetensors")
        gens = model.generate([it["caption"] for it in items], seed=0, steps=cfg.eval.steps,
                              guidance=cfg.eval.guidance).flatten(1).double()
        train = data.images.flatten(1).double()
        for g, it in zip(gens, items):
            own_images = {data.images[i].numpy().tobytes() for i, rec in enumerate(records)
                          if rec["caption"] == it["caption"]}
            own = torch.tensor([x.numpy().tobytes() in own_images for x in data.images])
            d = (train - g).norm(dim=1)
            assert it["pixel_ratio"] == pytest.approx(float(d[own].min() / d[~own].min()), abs=1e-3), it
        for space, suffix in (("pixel", ""), ("feature", "_feature")):
            hit = [it[f"{space}_ratio"] < 1 / 3 for it in items]
            assert r[f"extraction_rate{suffix}"] == round(sum(hit) / len(hit), 4), space
            hit_planted = [h for h, p in zip(hit, planted) if p]
            assert r[f"extraction_rate_planted{suffix}"] == round(sum(hit_planted) / len(hit_planted), 4), space
