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


@pytest.mark.parametrize("args, message", [(["-n", "0"], "-n must be >= 1"), (["--sample", "0"], "--sample must be >= 1"),
                                           (["--steps", "0"], "--steps must be >= 1"),
                                           (["--steps", "-1"], "--steps must be >= 1")])
def test_audit_bad_counts(smoke_run, args, message):
    proc = govlab("audit-memorization", str(smoke_run), *args)
    assert proc.returncode == 2 and message in proc.stderr


def test_guidance_gaps_vanish_without_a_caption_and_follow_the_sampler(smoke_run):
    from govlab.models.diffusion import TextToImage

    model = TextToImage.load(smoke_run / "model.safetensors")
    gaps = model.guidance_gaps(["", "a red circle top left, by artist 0"], steps=5)
    assert gaps.shape == (2, 5)
    assert torch.all(gaps[0] == 0) and torch.all(gaps[1] > 0)  # no caption: conditional == unconditional


def test_noise_magnitude_check_reports_every_step_and_the_planted_share(smoke_run, smoke_dataset):
    from govlab.memorization.audit import noise_magnitude_check
    from govlab.memorization.detectors import unique_images
    from govlab.models.diffusion import TextToImage

    model = TextToImage.load(smoke_run / "model.safetensors")
    captions = list(dict.fromkeys(r["caption"] for r in smoke_dataset.records))
    planted_caption = {r["caption"]: r["duplicate_group"] >= 0 for r in smoke_dataset.records}
    flags = [planted_caption[c] for c in captions]
    out = noise_magnitude_check(model, smoke_dataset, captions, seeds=2, steps=3, unconditional=16,
                                reproduced=flags)
    assert out["auc_noise_magnitude_reproduced"] == out["auc_noise_magnitude"]  # same labels, same AUC
    other = noise_magnitude_check(model, smoke_dataset, captions, seeds=1, steps=1, unconditional=1,
                                  reproduced=[not f for f in flags])
    assert other["auc_noise_magnitude_reproduced"] == pytest.approx(1 - out["auc_noise_magnitude"], abs=2e-4)
    assert len(out["auc_noise_magnitude_by_step"]) == 3
    assert all(0 <= a <= 1 for a in [out["auc_noise_magnitude"], *out["auc_noise_magnitude_by_step"]])
    uniq, image_of = unique_images(smoke_dataset.images)
    planted = {int(image_of[i]) for i, r in enumerate(smoke_dataset.records) if r["duplicate_group"] >= 0}
    assert out["planted_share_images"] == round(len(planted) / len(uniq), 4)
    assert out["unconditional_nearest_planted"] in [k / 16 for k in range(17)]
