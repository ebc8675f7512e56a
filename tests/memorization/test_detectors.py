import math

import pytest
import torch

from govlab.memorization.detectors import (detection_auc, distances, mem_ratio, noise_magnitude, own_ratio,
                                           pixel_features, regeneration_scores, unique_images)
from govlab.train import build_model


def test_unique_images_merges_pixel_identical_copies(smoke_dataset):
    uniq, inverse = unique_images(smoke_dataset.images)
    assert torch.equal(uniq[inverse], smoke_dataset.images)
    groups = {}
    for i, r in enumerate(smoke_dataset.records):
        if r["duplicate_group"] >= 0:
            groups.setdefault(r["duplicate_group"], set()).add(int(inverse[i]))
    assert groups and all(len(g) == 1 for g in groups.values())
    assert len(uniq) == len(smoke_dataset) - sum(1 for r in smoke_dataset.records if r["duplicate_group"] >= 0) + len(groups)


def test_mem_ratio_flags_copies_and_not_interpolations():
    g = torch.Generator().manual_seed(0)
    train = torch.rand(20, 3 * 16 * 16, generator=g)
    copy = train[3] + 0.01 * torch.randn(3 * 16 * 16, generator=g)
    blend = 0.5 * (train[3] + train[7])
    ratio, nearest = mem_ratio(torch.stack([copy, blend]), train)
    assert nearest[0] == 3 and ratio[0] < 1 / 3
    assert ratio[1] > 0.9  # halfway between two training images: not memorized
    own = own_ratio(torch.stack([copy, copy]), torch.tensor([3, 5]), train)
    assert own[0] == pytest.approx(ratio[0].item()) and own[1] > 1


def test_distances_are_normalised_by_sqrt_dimension():
    a, b = torch.zeros(1, 768), torch.ones(1, 768)
    assert distances(a, b).item() == pytest.approx(1.0)
    assert pixel_features(torch.full((1, 3, 16, 16), 255, dtype=torch.uint8)).max() == 1


def test_noise_magnitude_is_zero_for_the_null_caption_and_deterministic(smoke_cfg, smoke_dataset):
    model = build_model(smoke_cfg, smoke_dataset)
    tokens = model.tokenizer(["", smoke_dataset.records[0]["caption"], smoke_dataset.records[1]["caption"]])
    s1 = noise_magnitude(model, tokens, noises=2, timesteps=(800, 500), batch_size=2)
    s2 = noise_magnitude(model, tokens, noises=2, timesteps=(800, 500))
    assert s1.shape == (3,) and s1[0] < 1e-5 and (s1[1:] > 1e-3).all()
    assert torch.allclose(s1, s2, atol=1e-6) and model.training


def test_detection_auc():
    assert detection_auc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert detection_auc([0.1, 0.2, 0.9], [True, False, False]) == 0.0
    assert detection_auc([1, 2], [True, True]) is None
    assert not math.isnan(detection_auc([1, 1, 1], [True, False, False]))


class Copier:
    """Returns the training image of the first ``k`` captions, uniform noise for the rest."""

    def __init__(self, images: dict):
        self.images = images

    def generate(self, prompts, *, seed, steps, guidance):
        noise = torch.randint(0, 256, (len(prompts), 3, 16, 16), generator=torch.Generator().manual_seed(seed),
                              dtype=torch.uint8)
        return torch.stack([self.images.get(p, noise[i]) for i, p in enumerate(prompts)])


def test_regeneration_scores_separate_copies_from_novel_images(smoke_dataset):
    uniq, image_of = unique_images(smoke_dataset.images)
    rows = [0, 1, 2, 3]
    captions = [smoke_dataset.records[r]["caption"] for r in rows]
    model = Copier({captions[0]: smoke_dataset.images[0], captions[1]: smoke_dataset.images[1]})
    s = regeneration_scores(model, captions, image_of[rows], pixel_features(uniq), seeds=3, steps=1)
    assert (s[:2] > 0.999).all() and (s[2:] < 2 / 3).all()
