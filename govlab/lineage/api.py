"""The lineage test end to end: prompts -> k samples per model -> features -> Isomap + JS -> z-test vote."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from torch import nn

from govlab.errors import GovlabError
from govlab.eval.classifiers import load_evaluator
from govlab.lineage.decision import DEFAULT_TAU, LineageResult, correlated_bases, decide
from govlab.lineage.distance import METHODS, isomap_embed, pairwise_distances
from govlab.lineage.features import extract, get_extractor
from govlab.lineage.prompts import detailed_prompts, select_prompts, support
from govlab.lineage.sampling import BlackBox, load_model, sample, sample_all

N_NEIGHBORS = 10
N_COMPONENTS = 10

Features = dict[str, dict[str, np.ndarray]]  # prompt -> model name -> (k, D)


def load_pool(pool) -> list[BlackBox]:
    """Base models from a directory (each child a run dir or ``.safetensors``) or a list of models."""
    if isinstance(pool, (str, Path)):
        root = Path(pool)
        if not root.is_dir():
            raise GovlabError(f"{root}: pool directory not found")
        items = sorted(p for p in root.iterdir()
                       if (p / "model.safetensors").is_file() or p.suffix == ".safetensors")
        boxes = [load_model(p) for p in items]
        where = str(root)
    else:
        boxes = [load_model(m) for m in pool]
        where = "the pool"
    if len(boxes) < 3:
        raise GovlabError(f"{where} has {len(boxes)} base model(s); the NULL z-test needs at least 3")
    names = [b.name for b in boxes]
    if len(set(names)) != len(names):
        raise GovlabError(f"base model names in {where} are not unique: {names}")
    return boxes


def model_features(boxes: list[BlackBox], prompts: list[str], k: int, *, extractor: nn.Module,
                   seed: int = 0) -> Features:
    """Features of ``k`` samples per (prompt, model); every model's images must have one size."""
    sample_all(boxes, prompts, k, seed=seed)
    images = {p: {b.name: sample(b, p, k, seed=seed) for b in boxes} for p in prompts}
    sizes = {n: tuple(x.shape[-2:]) for n, x in images[prompts[0]].items()}
    if len(set(sizes.values())) > 1:
        raise GovlabError("models generate images of different sizes: "
                          + ", ".join(f"{n} {h}x{w}" for n, (h, w) in sizes.items()))
    return {p: {n: extract(extractor, x) for n, x in by_model.items()} for p, by_model in images.items()}


def lineage_from_features(features: Features, pool: list[str], target: str, *, method: str = "gaussian",
                          tau: float = DEFAULT_TAU, n_neighbors: int = N_NEIGHBORS,
                          n_components: int = N_COMPONENTS) -> LineageResult:
    """Decide ``target``'s lineage against the ``pool`` bases from precomputed features.

    Per prompt one Isomap is fitted on the union of the pool's and the target's embeddings.
    """
    if target in pool:
        pool = [b for b in pool if b != target]
    per_prompt = []
    for prompt, by_model in features.items():
        names, matrix = prompt_distances({n: by_model[n] for n in [*pool, target]}, method=method,
                                         n_neighbors=n_neighbors, n_components=n_components)
        per_prompt.append((prompt, dict(zip(names[:-1], matrix[-1, :-1])), matrix[:-1, :-1], names[:-1]))
    return decide(per_prompt, tau=tau, method=method)


def prompt_distances(features: dict[str, np.ndarray], *, method: str = "gaussian",
                     n_neighbors: int = N_NEIGHBORS, n_components: int = N_COMPONENTS):
    """Pairwise distances of the models of one prompt: joint Isomap, then JS."""
    embedded = isomap_embed(features, n_components=n_components, n_neighbors=n_neighbors)
    return pairwise_distances(embedded, method=method)


def default_prompts(pool: list[BlackBox], *, n: int = 5, candidates: int = 24, per_prompt: int = 8,
                    min_support: float = 0.15, seed: int = 0) -> list[str]:
    """The selection step: ``n`` detailed prompts best supported by every base (worst-case support).

    The default floor ``min_support`` is about the chance level of the checks (0.15): small, briefly
    trained bases (the quick zoo's best reach 0.25-0.31) must still yield prompts; raise it for
    trained pools.
    """
    return select_prompts(*support_table(pool, detailed_prompts(candidates, seed=seed),
                                         per_prompt=per_prompt, seed=seed), keep=n, min_support=min_support)


def support_table(pool: list[BlackBox], prompts: list[str], *, per_prompt: int = 8,
                  seed: int = 0) -> tuple[list[str], np.ndarray]:
    """``(prompts, support[p, m])`` measured on ``per_prompt`` generations of every base."""
    sample_all(pool, prompts, per_prompt, seed=seed)
    evaluator = None
    table = np.zeros((len(prompts), len(pool)))
    for j, box in enumerate(pool):
        for i, p in enumerate(prompts):
            images = sample(box, p, per_prompt, seed=seed)
            evaluator = evaluator or load_evaluator(images.shape[-1], progress=False)[0]
            table[i, j] = support(images, p, evaluator)
    return prompts, table


def sample_features(target, pool, prompts: list[str] | None = None, *, k: int = 100,
                    extractor: str | nn.Module = "world", seed: int = 0,
                    n_neighbors: int = N_NEIGHBORS) -> tuple[Features, list[str], str]:
    """Sample and featurize target and pool: ``(features, pool names, target name)`` (``probe``: its
    former name).

    ``prompts`` default to the selection step's detailed prompts for this pool.
    """
    if k < n_neighbors + 1:
        raise GovlabError(f"k={k} is smaller than the Isomap neighbourhood n_neighbors={n_neighbors} "
                          f"(need k >= {n_neighbors + 1})")
    bases = load_pool(pool)
    box = load_model(target)
    if box.name in {b.name for b in bases}:
        box = BlackBox(f"target:{box.name}", box.key, box.generate)
    prompts = list(prompts) if prompts is not None else default_prompts(bases, seed=seed)
    if not prompts:
        raise GovlabError("no prompts given")
    size = sample(bases[0], prompts[0], k, seed=seed).shape[-1]  # the world encoder of the models' image size
    feats = model_features([*bases, box], prompts, k, extractor=get_extractor(extractor, image_size=size), seed=seed)
    return feats, [b.name for b in bases], box.name


probe = sample_features  # the former name ("probe" is attribution's word: govlab.attribution.probe)


def lineage(target, pool, prompts: list[str] | None = None, *, k: int = 100,
            extractor: str | nn.Module = "world", method: str = "gaussian", tau: float = DEFAULT_TAU,
            seed: int = 0, n_neighbors: int = N_NEIGHBORS) -> LineageResult:
    """Was ``target`` fine-tuned from a model of ``pool``? (models as accepted by ``load_model``)"""
    if method not in METHODS:
        raise GovlabError(f"unknown distance method {method!r}; choose one of {', '.join(METHODS)}")
    feats, bases, name = sample_features(target, pool, prompts, k=k, extractor=extractor, seed=seed,
                                         n_neighbors=n_neighbors)
    return lineage_from_features(feats, bases, name, method=method, tau=tau, n_neighbors=n_neighbors)


def correlated_pairs(features: Features, pool: list[str], *, method: str = "gaussian",
                     tau: float = DEFAULT_TAU, n_neighbors: int = N_NEIGHBORS) -> list[tuple[str, str]] | None:
    """Pool hygiene: base pairs under the pool's own NULL threshold in a majority of prompts; None
    when the pool is too small for the check to flag any pair (over n pairs no distance lies more
    than sqrt(n - 1) population standard deviations from their mean, e.g. 1.41 for 3 bases)."""
    pairs = len(pool) * (len(pool) - 1) // 2
    if math.sqrt(max(pairs - 1, 0)) <= abs(tau):
        return None
    counts: dict[tuple[str, str], int] = {}
    for by_model in features.values():
        names, matrix = prompt_distances({n: by_model[n] for n in pool}, method=method, n_neighbors=n_neighbors)
        for pair in correlated_bases(matrix, names, tau=tau):
            counts[pair] = counts.get(pair, 0) + 1
    return sorted(pair for pair, c in counts.items() if 2 * c > len(features))
