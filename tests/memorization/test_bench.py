import govlab.bench.memorization as bench_module
from govlab.bench import BENCHMARKS
from govlab.bench.memorization import bench_memorization
from govlab.config import load_config
from govlab.memorization.detectors import noise_magnitude


def pairwise_auc(scores, positive) -> float:
    """ROC AUC by its definition: P(score of a positive > score of a negative), ties count 1/2."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def test_bench_memorization_quick_on_smoke(monkeypatch):
    assert BENCHMARKS["memorization"] is bench_memorization
    seen = {}
    original = bench_module.caption_auc

    def spy(model, trainer, records, **kw):  # keeps the trained model to recompute the AUC from
        seen.update(model=model, records=records)
        return original(model, trainer, records, **kw)

    monkeypatch.setattr(bench_module, "caption_auc", spy)
    r = bench_memorization(quick=True, preset="smoke", every=10)
    assert r["overhead_ratio"] == round(r["monitored_step_s"] / r["plain_step_s"], 4) or \
        abs(r["overhead_ratio"] - r["monitored_step_s"] / r["plain_step_s"]) < 0.01
    assert r["training_unchanged"] is True  # the monitor alone does not change training
    assert r["every"] == 10 and r["steps_trained"] == 20
    # the smoke world plants duplicates: the AUC exists and is the detector's on the trained model,
    # one score per distinct caption, labelled by the world's ground truth, with the preset's settings
    assert r["auc"] is not None
    first = {}
    for rec in seen["records"]:
        first.setdefault(rec["caption"], rec)
    captions = list(first)
    planted = [first[c]["duplicate_group"] >= 0 for c in captions]
    assert 0 < sum(planted) < len(captions)
    m = load_config("smoke").memorization
    model = seen["model"]
    scores = noise_magnitude(model, model.tokenizer(captions), noises=m.noises, timesteps=m.timesteps,
                             seed=m.seed).tolist()
    assert abs(r["auc"] - pairwise_auc(scores, planted)) <= 1e-4, (r["auc"], pairwise_auc(scores, planted))
