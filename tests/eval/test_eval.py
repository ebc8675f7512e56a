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


def test_per_artist_intervals_separate_the_artist_from_the_others():
    """artist_5's prompts rendered in artist_0's style: artist_0's own accuracy is high, artist_5's
    near 0, and the interval of 'the others' of artist_0 (artist_3 right, artist_5 wrong) sits
    around one half, each interval around its figure."""
    from govlab.data.world import render

    probes = eval_prompts(["artist_0", "artist_3", "artist_5"], per_prompt=3)
    drawn = [{**p, "source_id": "artist_0"} if p["source_id"] == "artist_5" else p for p in probes]
    real = torch.stack([torch.from_numpy(render({**p, "watermark": False, "seed": i}, 16))
                        for i, p in enumerate(drawn)])
    s = score_images(real.permute(0, 3, 1, 2), probes)
    by, ci, others = s["style_acc_by_artist"], s["style_acc_by_artist_ci"], s["style_acc_others_ci_by_artist"]
    assert by["artist_0"] > 0.9 and by["artist_5"] < 0.1, by
    for a in by:
        assert ci[a][0] <= by[a] <= ci[a][1], (a, by[a], ci[a])
    lo, hi = others["artist_0"]  # artist_3 and artist_5's prompts: about half right
    assert lo < 0.5 < hi and hi - lo < 0.6, others
    lo, hi = others["artist_5"]  # artist_0 and artist_3's prompts: nearly all right
    assert lo > 0.75, others
    from govlab.studies.attenuate import effect

    e = effect(s, "artist_0")
    assert e["style_acc_source_ci"] == ci["artist_0"] and e["style_acc_others_ci"] == others["artist_0"]
    assert lo <= (by["artist_0"] + by["artist_3"]) / 2 <= hi  # the others of artist_5: the mean of the two
