import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scipy.stats import spearmanr

from govlab.attribution import (dtrak_scores, half_subsets, lds, make_probe, per_source, prompt_probe, ranking,
                                retrain, tracin_scores)
from govlab.errors import GovlabError
from govlab.models.diffusion import to_float
from govlab.train import CHECKPOINT_DIR

GOVLAB = [str(Path(sys.executable).parent / "govlab")]
PROMPT = "a red circle center, by artist 2"


def _small(run, model, data, n=10):
    checkpoints = sorted((run / CHECKPOINT_DIR).glob("step_*.safetensors"))
    rows = list(range(0, len(data), len(data) // n))[:n]
    train = make_probe(to_float(data.images[rows]), model.tokenizer([data.records[i]["caption"] for i in rows]),
                       k=2, seed=0)
    test = prompt_probe(model, PROMPT, n_images=2, k=2, steps=2)
    return checkpoints, train, test


def test_run_keeps_weights_of_every_checkpoint(tiny_run):
    run, _, _ = tiny_run
    assert [p.name for p in sorted((run / CHECKPOINT_DIR).iterdir())] == ["step_000002.safetensors",
                                                                        "step_000004.safetensors"]


def test_tracin_scores_are_deterministic_and_leave_the_model_unchanged(tiny_run):
    run, model, data = tiny_run
    checkpoints, train, test = _small(run, model, data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = tracin_scores(model, checkpoints, 1e-3, train, test)
    b = tracin_scores(model, checkpoints, 1e-3, train, test)
    assert a.shape == (len(test), len(train)) and torch.equal(a, b) and a.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the per-batch trick covers Linear/Conv2d only; one backward per example covers every parameter
    full = tracin_scores(model, checkpoints, 1e-3, train, test, sample_wise=False)
    assert torch.corrcoef(torch.stack([a.flatten(), full.flatten()]))[0, 1] > 0.9
    with pytest.raises(GovlabError, match="at least one checkpoint"):
        tracin_scores(model, [], 1e-3, train, test)


def test_dtrak_scores_are_deterministic(tiny_run):
    run, model, data = tiny_run
    checkpoints, train, test = _small(run, model, data, n=6)
    a = dtrak_scores(model, checkpoints, train, test, proj_dim=4)
    b = dtrak_scores(model, checkpoints, train, test, proj_dim=4)
    assert a.shape == (len(test), len(train)) and torch.equal(a, b) and torch.isfinite(a).all()


def test_per_source_aggregation_against_hand_computation():
    records = [{"source_id": s} for s in ("b", "a", "b", "c", "b")]
    scores = [1.0, -2.0, 3.0, 0.5, 2.0]
    assert per_source(scores, records) == {"a": -2.0, "b": 6.0, "c": 0.5}
    assert per_source(torch.tensor(scores), records, reduce="mean") == {"a": -2.0, "b": 2.0, "c": 0.5}
    assert [r["source"] for r in ranking(per_source(scores, records))] == ["b", "c", "a"]
    with pytest.raises(GovlabError, match="4 scores for 5 training records"):
        per_source(scores[:4], records)
    with pytest.raises(GovlabError, match="unknown reduction 'max'"):
        per_source(scores, records, reduce="max")


def test_lds_on_a_constructed_case():
    scores = {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.0}
    subsets = [["a", "b"], ["a", "c"], ["b", "d"], ["c", "d"], ["a", "d"]]
    predicted = [5.0, 4.0, 2.0, 1.0, 3.0]
    assert lds(scores, subsets, [math.exp(p) for p in predicted]) == pytest.approx(1.0)
    assert lds(scores, subsets, [-p for p in predicted]) == pytest.approx(-1.0)
    actual = [0.3, 0.9, 0.1, 0.2, 0.4]  # ranks 3,5,1,2,4 against predicted ranks 5,4,2,1,3
    assert lds(scores, subsets, actual) == pytest.approx(spearmanr(predicted, actual).statistic)
    assert lds(scores, subsets, actual) == pytest.approx(1 - 6 * (4 + 1 + 1 + 1 + 1) / (5 * 24))
    assert math.isnan(lds(scores, subsets, [1.0] * 5))
    with pytest.raises(GovlabError, match="5 subsets but 4 measured outputs"):
        lds(scores, subsets, actual[:4])
    halves = half_subsets(["a", "b", "c", "d", "e"], 4, seed=1)
    assert halves == half_subsets(["e", "d", "c", "b", "a"], 4, seed=1)
    assert all(len(h) == 2 and set(h) <= set("abcde") for h in halves)


def test_retrain_is_cached_by_config_hash_and_sources(tiny_cfg, smoke_dataset, tmp_path, monkeypatch):
    from govlab.config import from_dict

    monkeypatch.setenv("GOVLAB_CACHE", str(tmp_path))
    cfg = from_dict({"train": {"steps": 2, "checkpoint_every": 2}}, base=tiny_cfg)
    keep = ["artist_0", "artist_1", "stockco"]
    out = retrain(cfg, smoke_dataset, keep)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert retrain(cfg, smoke_dataset, list(reversed(keep))) == out  # hit: same hash, nothing retrained
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    assert out.is_relative_to(tmp_path)
    assert retrain(cfg, smoke_dataset, keep[:2]) != out
    assert retrain(from_dict({"train": {"seed": 1}}, base=cfg), smoke_dataset, keep) != out
    with pytest.raises(GovlabError, match="unknown source 'artist_9'"):
        retrain(cfg, smoke_dataset, ["artist_9"])


def govlab(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(GOVLAB + list(args), capture_output=True, text=True, timeout=600, env=env)


def test_cli_attribute_tracin_json(tiny_run):
    run, _, _ = tiny_run
    proc = govlab("attribute", str(run), "--prompt", PROMPT, "--method", "tracin", "-n", "1", "--steps", "2",
                  "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["method"] == "tracin" and out["time_s"] > 0
    assert {r["source"] for r in out["sources"]} == {"artist_0", "artist_1", "artist_2", "artist_3", "artist_4",
                                                     "artist_5", "stockco", "webcrawl"}
    assert [r["score"] for r in out["sources"]] == sorted((r["score"] for r in out["sources"]), reverse=True)


@pytest.mark.parametrize("args, message", [
    (["--method", "shapley"], "unknown attribution method 'shapley'"),
    (["--method", "tracin", "--missing-run"], "not a govlab run directory"),
])
def test_cli_bad_input_is_one_clear_line(tiny_run, tmp_path, args, message):
    run, _, _ = tiny_run
    target = str(tmp_path / "nope") if "--missing-run" in args else str(run)
    args = [a for a in args if a != "--missing-run"]
    proc = govlab("attribute", target, "--prompt", PROMPT, *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def _grads(model, probe, fn):
    """Per-example gradients over every trained parameter (slot banks included), by hand: one
    backward per example of ``fn(model, x0, tokens, noise, t)`` on its draws; rows (n, #params)."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(len(probe)):
        k = probe.k
        args = (probe.x0[i:i + 1].expand(k, *probe.x0.shape[1:]), probe.tokens[i:i + 1].expand(k, -1),
                probe.noise[i], probe.timesteps[i])
        g = torch.autograd.grad(fn(model, *args), params, allow_unused=True)
        rows.append(torch.cat([(x if x is not None else torch.zeros_like(p)).flatten() for x, p in zip(g, params)]))
    return torch.stack(rows).double()


def _at_checkpoints(model, checkpoints, fn):
    from govlab.models.diffusion import TextToImage

    state, was_training = {k: v.clone() for k, v in model.state_dict().items()}, model.training
    model.eval()
    try:
        out = []
        for c in checkpoints:
            model.load_state_dict(TextToImage.load(c).state_dict())
            out.append(fn())
        return out
    finally:
        model.load_state_dict(state)
        model.train(was_training)


def test_tracin_equals_lr_times_summed_gradient_dot_products(tiny_run):
    run, model, data = tiny_run
    checkpoints, _, test = _small(run, model, data, n=4)
    # training rows of the prompt's artist (its slot acts on them and on the prompt) and of others
    rows = [i for i, r in enumerate(data.records) if r["source_id"] == "artist_2"][:2] + \
        [i for i, r in enumerate(data.records) if r["source_id"] not in ("artist_2",)][::60][:2]
    train = make_probe(to_float(data.images[rows]), model.tokenizer([data.records[i]["caption"] for i in rows]),
                       k=2, seed=0)
    lr = 1e-3
    got = tracin_scores(model, checkpoints, lr, train, test, sample_wise=False)

    def per_draw_losses(m, x0, tokens, noise, t):  # the training loss of each draw: TracIn's loss
        return m(x0, tokens, noise, t)

    slot_cols = []

    def by_hand():
        g_test = _grads(model, test, lambda m, *a: per_draw_losses(m, *a).mean())  # averaged over test draws
        g_train = _grads(model, train, lambda m, *a: per_draw_losses(m, *a).sum())  # summed over train draws
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        sizes = [p.numel() for p in model.parameters() if p.requires_grad]
        slot_cols.append(torch.cat([torch.full((s,), "slot" in n) for n, s in zip(names, sizes)]))
        return lr * g_test @ g_train.T, g_test, g_train

    parts = _at_checkpoints(model, checkpoints, by_hand)
    want = sum(p[0] for p in parts)
    assert got.shape == want.shape == (len(test), len(train))
    torch.testing.assert_close(got, want, rtol=2e-3, atol=1e-9 + 2e-3 * want.abs().max().item())
    assert slot_cols[0].any()  # the hand computation covers the slot banks' parameters too


def test_dtrak_equals_projected_gradients_and_the_kernel_solve(tiny_run):
    from dattri.func.projection import random_project

    run, model, data = tiny_run
    checkpoints, train, test = _small(run, model, data, n=10)
    proj_dim = 6  # below the 10 training rows: X^T X is invertible without damping
    got = dtrak_scores(model, checkpoints, train, test, proj_dim=proj_dim, seed=3)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def square(m, x0, tokens, noise, t):  # D-TRAK's output: mean squared predicted noise over the draws
        noisy = m.noise_scheduler.add_noise(x0, noise, t)
        return m.predict_noise(noisy, t, m.text(tokens)).pow(2).mean()

    def project(g, i):
        p = random_project(g.float(), len(g), proj_dim=proj_dim, proj_max_batch_size=32, proj_seed=3, device="cpu")
        return p(g.float(), ensemble_id=i).double()

    feats = _at_checkpoints(model, checkpoints, lambda: (_grads(model, train, square) / n_params ** 0.5,
                                                         _grads(model, test, square) / n_params ** 0.5))
    want = 0
    for i, (g_train, g_test) in enumerate(feats):
        x, x_test = project(g_train, i), project(g_test, i)
        want = want + x_test @ torch.linalg.solve(x.T @ x, x.T)
    want = want / len(checkpoints)
    assert got.shape == want.shape == (len(test), len(train))
    torch.testing.assert_close(got, want, rtol=5e-3, atol=5e-3 * want.abs().max().item())
    with pytest.raises(GovlabError, match="proj_dim=10 is not below the 10 training rows"):
        dtrak_scores(model, checkpoints, train, test, proj_dim=10)
