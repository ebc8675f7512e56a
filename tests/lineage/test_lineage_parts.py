"""Prompts, sampler, extractors and countermeasures, without the zoo."""

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from safetensors.torch import load_file

from govlab.data.world import render
from govlab.errors import GovlabError
from govlab.lineage.countermeasures import add_weight_noise, paraphrase, paraphrased, pgd_features, perturbed
from govlab.lineage.features import MultiScale, Pixels, extract, get_extractor
from govlab.lineage.prompts import ProbePrompt, detailed_prompts, select_prompts, short_prompts, support
from govlab.lineage.sampling import load_model, sample


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GOVLAB_CACHE", str(tmp_path))
    return tmp_path


def counting_model(calls):
    def generate(prompts, seed):
        calls.append((len(prompts), seed))
        return torch.randint(0, 256, (len(prompts), 3, 16, 16), generator=torch.Generator().manual_seed(seed),
                             dtype=torch.uint8)
    return generate


# --- prompts --------------------------------------------------------------------------------------------


def test_detailed_prompts_are_distinct_world_captions():
    prompts = detailed_prompts(30, seed=3)
    assert len(set(prompts)) == 30 and prompts == detailed_prompts(30, seed=3)
    for text in prompts:
        p = ProbePrompt.parse(text)
        assert p.shape and p.color and p.count in (1, 2) and p.position and p.source
    two = ProbePrompt.parse("two orange crosses at right, by artist 5")
    assert (two.shape, two.color, two.count, two.position, two.source) == \
        ("cross", "orange", 2, "at right", "artist_5")
    assert ProbePrompt.parse("a circle, stock photo").source == "stockco"
    assert [ProbePrompt.parse(p).shape for p in short_prompts()] == ["circle", "bar", "triangle", "cross"]


def test_support_is_high_on_world_images_and_low_on_noise():
    from govlab.eval.classifiers import load_evaluator

    evaluator = load_evaluator(16, progress=False)[0]
    text = "two green circles at left, by artist 2"
    attrs = {"kind": "artist", "source_id": "artist_2", "count": 2, "color": "green", "shape": "circle",
             "position": "at left", "watermark": False}
    real = torch.stack([torch.from_numpy(render({**attrs, "seed": s}, 16)) for s in range(8)]).permute(0, 3, 1, 2)
    noise = torch.randint(0, 256, real.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert support(real, text, evaluator) >= 0.75  # the evaluator confuses small circles and crosses
    assert support(noise, text, evaluator) < 0.5
    with pytest.raises(GovlabError, match="names nothing"):
        support(real, "something else", evaluator)


def test_select_prompts_ranks_by_worst_base():
    table = np.array([[0.9, 0.1], [0.6, 0.5], [0.7, 0.8]])
    assert select_prompts(["a", "b", "c"], table, keep=2, min_support=0.3) == ["c", "b"]
    with pytest.raises(GovlabError, match="no prompt is supported"):
        select_prompts(["a", "b", "c"], table, keep=2, min_support=0.95)


# --- sampler ------------------------------------------------------------------------------------------------


def test_sampler_caches_on_disk(cache):
    calls = []
    box = load_model(counting_model(calls), name="counter")
    first = sample(box, "a red circle center, by artist 0", 12, seed=1)
    again = sample(box, "a red circle center, by artist 0", 12, seed=1)
    assert calls == [(12, calls[0][1])] and torch.equal(first, again)
    files = list((cache / "lineage" / "samples").glob("*.safetensors"))
    assert len(files) == 1 and torch.equal(load_file(str(files[0]))["images"], first)
    sample(box, "a red circle center, by artist 0", 12, seed=2)
    sample(box, "a red circle center, by artist 0", 13, seed=1)
    assert len(calls) == 3 and len({s for _, s in calls}) == 3  # own noise per (prompt, k, seed)


def test_sampler_accepts_run_dirs_modules_and_pipelines(cache, quick_zoo):
    run = quick_zoo.root / quick_zoo.get("base_a").path
    from_dir, from_file = load_model(run), load_model(run / "model.safetensors")
    assert from_dir.key == from_file.key and from_dir.name == "base_a"
    images = sample(from_dir, "a red circle center, by artist 0", 3)
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.uint8

    class TinyPipeline(DiffusionPipeline):
        def __init__(self, unet):
            super().__init__()
            self.register_modules(unet=unet)

        def __call__(self, prompt, generator=None, output_type="np"):
            return ImagePipelineOutput(images=torch.rand(len(prompt), 8, 8, 3, generator=generator).numpy())

    box = load_model(TinyPipeline(torch.nn.Linear(2, 2)))
    assert sample(box, "a circle", 4).shape == (4, 3, 8, 8)


def test_failing_or_malformed_target_is_one_clear_error(cache):
    def broken(prompts, seed):
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(GovlabError, match="'broken' failed to generate .*CUDA out of memory"):
        sample(load_model(broken, name="broken"), "a circle", 4)
    wrong = load_model(lambda prompts, seed: torch.zeros(len(prompts), 16, 16), name="flat")
    with pytest.raises(GovlabError, match=r"uint8 images of shape \(4, 3, H, W\)"):
        sample(wrong, "a circle", 4)
    with pytest.raises(GovlabError, match="needs a name"):
        load_model(lambda p, s: None)
    with pytest.raises(GovlabError, match="no model.safetensors"):
        load_model(cache / "nowhere")


def test_models_of_different_image_sizes_are_one_clear_error(cache):
    from govlab.lineage.api import model_features

    def sized(size):
        return lambda prompts, seed: torch.zeros(len(prompts), 3, size, size, dtype=torch.uint8)

    boxes = [load_model(sized(16), name="a"), load_model(sized(16), name="b"), load_model(sized(32), name="c")]
    with pytest.raises(GovlabError, match="different sizes: a 16x16, b 16x16, c 32x32"):
        model_features(boxes, ["a circle"], 4, extractor=Pixels())


# --- features --------------------------------------------------------------------------------------------------


def test_extractors_shapes_and_custom_module():
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    assert extract(get_extractor("world"), images).shape == (5, 128)
    assert extract(get_extractor("multiscale"), images).shape == (5, 3 * 128)
    assert extract(get_extractor("pixels"), images).shape == (5, 3 * 16 * 16)
    custom = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    assert extract(get_extractor(custom), images).shape == (5, 4)
    assert extract(MultiScale(Pixels(), scales=(1.0, 0.5)), images).shape == (5, 768 + 192)
    with pytest.raises(GovlabError, match="unknown feature extractor 'clip'"):
        get_extractor("clip")


# --- countermeasures ---------------------------------------------------------------------------------------------


def test_paraphrase_levels():
    text = "a red circle top left, by artist 3"
    assert paraphrase(text, 0) == text
    assert paraphrase(text, 1) == "by artist 3, a red circle top left"
    assert paraphrase(text, 4) == "in the style of artist 3, a photo of one red circle top left"
    assert all(ProbePrompt.parse(paraphrase(text, lv)).shape == "circle" for lv in range(5))
    with pytest.raises(GovlabError, match="0..4"):
        paraphrase(text, 5)
    calls = []
    box = paraphrased(load_model(lambda p, s: calls.extend(p) or torch.zeros(len(p), 3, 4, 4, dtype=torch.uint8),
                                 name="echo"), 1)
    box.generate([text], 0)
    assert calls == ["by artist 3, a red circle top left"]


def test_pgd_stays_in_budget_and_moves_features():
    extractor = get_extractor("world")
    images = torch.randint(0, 256, (6, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    shift = []
    for eps in (2 / 255, 16 / 255):
        adv = pgd_features(images, extractor, eps)
        assert (adv.int() - images.int()).abs().max() <= round(eps * 255) + 1
        shift.append(np.linalg.norm(extract(extractor, adv) - extract(extractor, images), axis=1).mean())
    assert 0 < shift[0] < shift[1]
    box = perturbed(load_model(lambda p, s: images[: len(p)], name="fixed"), extractor, 8 / 255)
    assert box.generate(["x"] * 6, 0).shape == images.shape
    assert box.key != load_model(lambda p, s: 0, name="fixed").key


def test_weight_noise_is_seeded(quick_zoo):
    from govlab.models.diffusion import TextToImage

    path = quick_zoo.root / quick_zoo.get("base_a").path / "model.safetensors"
    a, b, clean = (TextToImage.load(path) for _ in range(3))
    add_weight_noise(a, 0.01, seed=1)
    add_weight_noise(b, 0.01, seed=1)
    pa, pb, pc = (dict(m.named_parameters())["unet.conv_in.weight"] for m in (a, b, clean))
    assert torch.equal(pa, pb) and 0.005 < (pa - pc).std() < 0.015
