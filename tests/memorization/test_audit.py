import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from govlab.eval.classifiers import load_evaluator
from govlab.memorization.audit import audit

GOVLAB = [str(Path(sys.executable).parent / "govlab")]


def govlab(*args):
    return subprocess.run(GOVLAB + list(args), capture_output=True, text=True, timeout=600)


class Copier:
    """A 'model' that returns the training image of a caption (planted duplicates only), else noise."""

    def __init__(self, dataset, planted_only=True):
        self.by_caption = {r["caption"]: dataset.images[i] for i, r in enumerate(dataset.records)
                           if r["duplicate_group"] >= 0 or not planted_only}

    def generate(self, prompts, *, seed, steps, guidance):
        g = torch.Generator().manual_seed(seed)
        noise = torch.randint(0, 256, (len(prompts), 3, 16, 16), generator=g, dtype=torch.uint8)
        return torch.stack([self.by_caption.get(p, noise[i]) for i, p in enumerate(prompts)])


def test_audit_counts_exactly_the_reproduced_images(smoke_dataset):
    result, pairs = audit(Copier(smoke_dataset), smoke_dataset, n=2, evaluator=load_evaluator(16)[0],
                          progress=False)
    planted = {r["caption"] for r in smoke_dataset.records if r["duplicate_group"] >= 0}
    assert result["extraction_rate_planted"] == 1.0 and result["extraction_rate_others"] == 0.0
    assert result["extraction_rate_planted_feature"] == 1.0
    assert result["auc_planted"] == result["auc_planted_feature"] == 1.0  # copies: ratio 0, the rest far
    assert {it["caption"] for it in result["reproduced"]} == planted
    assert all(it["copies"] == 6 and it["pixel_ratio"] == 0 for it in result["reproduced"])
    assert pairs.shape == (2 * result["captions"], 3, 16, 16)
    assert torch.equal(pairs[0], pairs[1])  # most reproduced first: the image beside its copy


def test_audit_cli_writes_json_and_grid(smoke_run):
    proc = govlab("audit-memorization", str(smoke_run), "--sample", "5", "-n", "2", "--steps", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["captions"] == 5 and result["generations"] == 10
    assert 0 <= result["extraction_rate"] <= 1 and "extraction_rate_feature" in result
    saved = json.loads((smoke_run / "memorization" / "audit.json").read_text())
    assert saved["extraction_rate"] == result["extraction_rate"] and len(saved["items"]) == 5
    assert (smoke_run / "memorization" / "audit_grid.png").stat().st_size > 0


def test_audit_without_data_access_is_one_error(smoke_run, tmp_path):
    run = tmp_path / "moved"
    run.mkdir()
    cfg = yaml.safe_load((smoke_run / "config.yaml").read_text())
    cfg["data"] = str(tmp_path / "gone")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "model.safetensors").symlink_to(smoke_run / "model.safetensors")
    proc = govlab("audit-memorization", str(run))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "the audit needs the training data" in proc.stderr and str(tmp_path / "gone") in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [(["-n", "0"], "-n must be >= 1"), (["--sample", "0"], "--sample must be >= 1")])
def test_audit_bad_counts(smoke_run, args, message):
    proc = govlab("audit-memorization", str(smoke_run), *args)
    assert proc.returncode == 2 and message in proc.stderr
