import torch

from govlab.data.world import WorldConfig
from govlab.eval import eval_prompts, load_evaluator, score_images
from govlab.eval.classifiers import accuracy, world_tensors


def test_evaluator_accuracy_on_held_out_world():
    model, acc = load_evaluator(16, progress=False)
    # re-measure on a world it never saw (another seed than both training and reported test worlds)
    x, y = world_tensors(WorldConfig(seed=777, per_artist=40, n_stock=40, per_person=20, dup_groups=0))
    fresh = accuracy(model, x, y)
    for head, floor in {"source": 0.95, "shape": 0.85, "layout": 0.95, "watermark": 0.95, "identity": 0.95}.items():
        assert acc[head] >= floor and fresh[head] >= floor, (head, acc, fresh)


def test_scores_of_real_images_are_high_and_of_noise_are_low():
    from govlab.data.world import render

    probes = eval_prompts(["artist_0", "artist_3", "stockco", "webcrawl"], per_prompt=3)
    real = torch.stack([torch.from_numpy(render({**p, "watermark": p["kind"] == "stock",
                                                 "seed": i}, 16)) for i, p in enumerate(probes)])
    s = score_images(real.permute(0, 3, 1, 2), probes)
    assert s["style_acc"] > 0.9 and s["shape_acc"] > 0.75 and s["watermark_rate"] == 1.0
    assert s["identity_rate"] == 1.0 and s["watermark_rate_artist_prompts"] == 0.0
    assert s["watermark_rate_ci"] == [1.0, 1.0]  # every stock image stamped: no spread to resample
    lo, hi = s["shape_acc_ci"]
    assert lo <= s["shape_acc"] <= hi and (lo < hi or s["shape_acc"] in (0.0, 1.0))
    noise = torch.randint(0, 256, real.permute(0, 3, 1, 2).shape, generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
    assert score_images(noise, probes)["identity_rate"] < 0.5
