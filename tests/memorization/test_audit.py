import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from govlab.config import from_dict, read_yaml
from govlab.eval.classifiers import load_evaluator
from govlab.memorization.audit import audit

GOVLAB = [str(Path(sys.executable).parent / "govlab")]


def govlab(*args):
    return subprocess.run(GOVLAB + list(args), capture_output=True, text=True, timeout=600)


def pairwise_auc(scores, positive) -> float:
    """ROC AUC by its definition: P(score of a positive > score of a negative), ties count 1/2."""
    pos = [float(s) for s, p in zip(scores, positive) if p]
    neg = [float(s) for s, p in zip(scores, positive) if not p]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def own_next_ratio(gens, own_images, other_images) -> float:
    """Best over ``gens`` of (l2 to the nearest own image) / (l2 to the nearest other image)."""
    flat = gens.flatten(1)
    d_own = torch.cdist(flat, own_images.flatten(1)).min(1).values
    d_next = torch.cdist(flat, other_images.flatten(1)).min(1).values
    return float((d_own / d_next).min())


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
    assert result["extraction_rate_planted_ci"] == [1.0, 1.0] and result["extraction_rate_others_ci"] == [0.0, 0.0]
    lo, hi = result["extraction_rate_ci"]  # a mix of reproduced and not: a proper interval around the rate
    assert lo < result["extraction_rate"] < hi
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
    saved = json.loads((smoke_run / "memorization" / "audit.json").read_text())
    assert saved["extraction_rate"] == result["extraction_rate"] and len(saved["items"]) == 5
    # recompute from the run's files: the run's model regenerates the 5 sampled captions (seed 0, one
    # batch, 2 each) and each caption's generations are compared with its own and the other images
    from govlab.data.cache import run_dataset
    from govlab.models.diffusion import TextToImage

    cfg = from_dict(read_yaml(smoke_run / "config.yaml"))
    data = run_dataset(cfg, progress=False)
    items = saved["items"]
    assert all(data.records[it["row"]]["caption"] == it["caption"] for it in items)
    assert len({it["caption"] for it in items}) == 5
    model = TextToImage.load(smoke_run / "model.safetensors")
    gens = model.generate([it["caption"] for it in items for _ in range(2)], seed=0, steps=4,
                          guidance=cfg.eval.guidance)
    evaluator = load_evaluator(cfg.model.image_size, progress=False)[0]
    spaces = {"pixel": lambda x: x.double(), "feature": lambda x: evaluator.features(x).double()}
    for space, feats in spaces.items():
        with torch.no_grad():
            train, made = feats(data.images), feats(gens)
        flags = []
        for k, it in enumerate(items):
            own_images = {data.images[i].numpy().tobytes() for i, r in enumerate(data.records)
                          if r["caption"] == it["caption"]}
            own = torch.tensor([data.images[i].numpy().tobytes() in own_images for i in range(len(data))])
            ratio = own_next_ratio(made[2 * k:2 * k + 2], train[own], train[~own])
            assert it[f"{space}_ratio"] == pytest.approx(ratio, abs=1e-3), (space, it)
            flags.append(ratio < 1 / 3)
        suffix = "" if space == "pixel" else "_feature"
        assert result[f"extraction_rate{suffix}"] == round(sum(flags) / len(flags), 4), space
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
    # recomputed: the detector's scores (pure noise; each caption's own guided trajectory, mean of the
    # 2 seeds) against the planted labels, AUC by its definition
    from govlab.memorization.detectors import noise_magnitude

    first = noise_magnitude(model, model.tokenizer(captions), noises=2, timesteps=(800,), seed=0)
    assert out["auc_noise_magnitude"] == pytest.approx(pairwise_auc(first.tolist(), flags), abs=1e-4)
    gaps = (model.guidance_gaps(captions, seed=0, steps=3) + model.guidance_gaps(captions, seed=1, steps=3)) / 2
    want = [pairwise_auc(gaps[:, j].tolist(), flags) for j in range(3)]
    assert out["auc_noise_magnitude_by_step"] == pytest.approx(want, abs=1e-4)
    uniq, image_of = unique_images(smoke_dataset.images)
    planted = {int(image_of[i]) for i, r in enumerate(smoke_dataset.records) if r["duplicate_group"] >= 0}
    assert out["planted_share_images"] == round(len(planted) / len(uniq), 4)
    assert out["unconditional_nearest_planted"] in [k / 16 for k in range(17)]


def test_audit_reseals_a_sealed_run_and_refuses_a_changed_one(smoke_run, tmp_path):
    from typer.testing import CliRunner

    from govlab.cli import app
    from govlab.errors import GovlabError
    from govlab.studies.audit import audit_run

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    audit_run(run, sample=2, n=1, steps=2, progress=False)
    assert (run / "memorization" / "audit.json").is_file()
    assert CliRunner().invoke(app, ["verify", str(run)]).exit_code == 0
    audit_run(run, sample=2, n=1, steps=2, progress=False)  # auditing again is fine
    assert CliRunner().invoke(app, ["verify", str(run)]).exit_code == 0
    (run / "report.md").write_text("edited")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(GovlabError, match="changed: report.md.*not auditing it"):
        audit_run(run, sample=2, n=1, steps=2, progress=False)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
