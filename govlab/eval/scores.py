"""Score a model's generations against the world's ground truth with the evaluators."""

from __future__ import annotations

import numpy as np
import torch

from govlab.data.world import ARTISTS, COLORS, PERSONS, POSITIONS_1, SHAPES, STOCK, WORLD_VERSION, caption_for
from govlab.eval.classifiers import HEADS, load_evaluator
from govlab.eval.stats import mean_ci


def eval_prompts(sources: list[str], per_prompt: int, seed: int = 0) -> list[dict]:
    """The evaluation prompts, with their intended attributes: per artist x shape, stock photos,
    person photos (``probe_prompts``: its former name)."""
    rng = np.random.default_rng(seed)
    artists = [a.source_id for a in ARTISTS if a.source_id in sources]

    def attrs(kind, source, shape=None, identity=None):
        return {"kind": kind, "source_id": source, "shape": shape, "identity": identity, "count": 1,
                "color": list(COLORS)[rng.integers(len(COLORS))],
                "position": list(POSITIONS_1)[rng.integers(len(POSITIONS_1))]}

    out = [attrs("artist", a, s) for a in artists for s in SHAPES for _ in range(per_prompt)]
    if STOCK.source_id in sources:
        out += [attrs("stock", STOCK.source_id, s) for s in SHAPES for _ in range(per_prompt)]
    if "webcrawl" in sources:
        out += [attrs("identity", "webcrawl", identity=p) for p in PERSONS for _ in range(per_prompt)]
    for a in out:
        a["caption"] = caption_for(a)
    return out


probe_prompts = eval_prompts  # the former name ("probe" is attribution's word: govlab.attribution.probe)


def score_images(images: torch.Tensor, probes: list[dict], evaluator=None, *, version: int = WORLD_VERSION) -> dict:
    """Style, shape, watermark and identity rates of images generated for ``probes``."""
    evaluator = evaluator or load_evaluator(images.shape[-1], version=version)[0]
    pred = evaluator.predict(images)
    kind = np.array([p["kind"] for p in probes])
    src = np.array([HEADS["source"][i] for i in pred["source"]])
    shape = np.array([HEADS["shape"][i] for i in pred["shape"]])
    person = np.array([HEADS["identity"][i] for i in pred["identity"]])
    want_src = np.array([p["source_id"] for p in probes])
    want_shape = np.array([p["shape"] or "none" for p in probes])
    want_person = np.array([p["identity"] or "none" for p in probes])
    wm = pred["watermark"].numpy().astype(bool)
    art = kind == "artist"
    artists = sorted(set(want_src[art]))

    def mean(x):
        return round(float(np.mean(x)), 4) if len(x) else None

    hits = {"style_acc": src[art] == want_src[art],
            "shape_acc": shape[kind != "identity"] == want_shape[kind != "identity"],
            "watermark_rate": wm[kind == "stock"],
            "identity_rate": person[kind == "identity"] == want_person[kind == "identity"]}
    return {
        "n_images": len(probes),
        "style_acc": mean(src[art] == want_src[art]),
        "style_acc_by_artist": {a: mean(src[want_src == a] == a) for a in artists},
        "shape_acc": mean(shape[kind != "identity"] == want_shape[kind != "identity"]),
        "watermark_rate": mean(wm[kind == "stock"]),
        "watermark_rate_artist_prompts": mean(wm[art]),
        "identity_rate": mean(person[kind == "identity"] == want_person[kind == "identity"]),
        "identity_rate_artist_prompts": mean(person[art] != "none"),
        "chance_style": round(1 / max(1, len(set(want_src[art]))), 4),
        "chance_shape": round(1 / len(SHAPES), 4),
        **{f"{k}_ci": mean_ci(v)[1] for k, v in hits.items()},  # 95% bootstrap intervals over the images
        # per artist: the interval of its own prompts' style accuracy, and of the other artists' prompts'
        # (what a removal compares: the removed artist, and everyone else)
        "style_acc_by_artist_ci": {a: mean_ci(src[want_src == a] == a)[1] for a in artists},
        "style_acc_others_ci_by_artist": {a: mean_ci(src[art & (want_src != a)] == want_src[art & (want_src != a)])[1]
                                          for a in artists},
    }


def verdicts(images: torch.Tensor, evaluator=None) -> dict[str, np.ndarray]:
    """The evaluator's class name per head for each image (uint8, (n, 3, H, W)); ``evaluator``
    defaults to the cached CNN of the default world version (``load_evaluator``), and may be any
    object with ``predict`` and ``head_names`` (the second evaluator, ``govlab.eval.second``)."""
    evaluator = evaluator or load_evaluator(images.shape[-1], progress=False)[0]
    names = getattr(evaluator, "head_names", HEADS)
    return {k: np.array(names[k])[v.numpy()] for k, v in evaluator.predict(images).items()}


def style_shares(images: torch.Tensor, evaluator=None) -> dict[str, dict]:
    """For a set of generated images: each source's style share (the share of images whose source
    head names it) with its 95% bootstrap interval over the images, ``{source: {"share", "ci"}}``.
    E.g. the removed artist's share among generations from prompts naming no artist."""
    src = verdicts(images, evaluator)["source"]
    return {s: dict(zip(("share", "ci"), mean_ci(src == s))) for s in HEADS["source"]}


def shape_accuracy(images: torch.Tensor, shapes: list[str], evaluator=None) -> tuple[float | None, list | None]:
    """Share of images whose shape head names the prompted shape (``shapes``, one per image), and its
    95% bootstrap interval."""
    got = verdicts(images, evaluator)["shape"]
    return mean_ci(got == np.asarray(shapes))


def glyph_rate(images: torch.Tensor, evaluator=None) -> tuple[float | None, list | None]:
    """Share of images on which the watermark head sees the glyph, and its 95% bootstrap interval. On
    world version 2 the CNN reads the glyph itself (``watermark_counterfactual_acc`` in
    ``govlab bench evaluators``), not the stock look."""
    return mean_ci(verdicts(images, evaluator)["watermark"] == "yes")


def score_model(model, sources: list[str], *, per_prompt: int = 4, steps: int = 20,
                guidance: float = 3.0, seed: int = 0,
                version: int = WORLD_VERSION) -> tuple[dict, torch.Tensor, list[dict]]:
    """Generate for the evaluation prompts and score with the evaluator of world ``version`` (the
    run's ``world.version``); returns (scores, images, prompts)."""
    probes = eval_prompts(sources, per_prompt, seed)
    images = model.generate([p["caption"] for p in probes], seed=seed, steps=steps, guidance=guidance)
    return score_images(images, probes, version=version), images, probes
