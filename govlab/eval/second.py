"""A second, independent evaluator: hand-crafted image features and one scikit-learn logistic
regression per head, trained on another seeded world than the CNN's (with the same counterfactual
recipe), to check the CNN's verdicts on generated images against (``agreement``).

Features (``features``): the pixels; the absolute differences of neighbouring pixels at lags 1, 2 and
3 along rows, columns and both diagonals, averaged over the image (the textures are periodic: stripes
of period 4, dots of period 3, diagonals of period 4, gradients smooth); the same differences at lag 1
as maps (edges, outlines); a luminance histogram; the share of near-black and near-white pixels
(outlines); and the pixels of the watermark corner again. Nothing is learnt but the linear heads.

Stored as plain arrays (safetensors: scaler, coefficients, intercepts), never pickled; prediction is
a matrix product.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from govlab.data.cache import build_once, cache_dir
from govlab.data.world import WorldConfig, watermark_box
from govlab.eval.classifiers import counterfactual_training_records, heads_for, record_tensors
from govlab.io import atomic_path, sha256_json

TRAIN_SEED, PER_SOURCE, C = 30_000, 150, 0.05
FEATURES_VERSION = 1


def _diff(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """|pixel - pixel (dy, dx) further| over the pixels that have such a neighbour (dy >= 0)."""
    h, w = x.shape[2:]
    if dx >= 0:
        return np.abs(x[:, :, :h - dy, :w - dx] - x[:, :, dy:, dx:])
    return np.abs(x[:, :, :h - dy, -dx:] - x[:, :, dy:, :w + dx])


def features(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(n, d) float32 hand-crafted features of uint8 images (n, 3, H, W)."""
    x = torch.as_tensor(images).float().numpy() / 255.0
    n, _, h, w = x.shape
    parts = [x.reshape(n, -1)]
    for lag in (1, 2, 3):
        for dy, dx in ((0, lag), (lag, 0), (lag, lag), (lag, -lag)):
            d = _diff(x, dy, dx)
            parts.append(d.mean((2, 3)))  # per channel
            if lag == 1 and dy * dx == 0:
                parts.append(d.mean(1).reshape(n, -1))
    lum = x.mean(1).reshape(n, -1)
    parts.append(np.stack([np.histogram(v, bins=16, range=(0, 1))[0] / v.size for v in lum]))
    parts.append(np.stack([(x.max(1) < 0.12).mean((1, 2)), (x.min(1) > 0.9).mean((1, 2))], 1))
    x0, y0, x1, y1 = watermark_box(h)
    parts.append(x[:, :, y0:y1, x0:x1].reshape(n, -1))
    return np.concatenate(parts, 1).astype(np.float32)


class FeatureEvaluator:
    """Linear heads on ``features``; ``predict`` as ``Evaluator.predict`` (head -> class indices)."""

    def __init__(self, arrays: dict[str, np.ndarray], heads: dict[str, list[str]]):
        self.arrays, self.head_names = arrays, heads

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        f = (features(images) - self.arrays["mean"]) / self.arrays["scale"]
        return {k: torch.from_numpy(np.argmax(f @ self.arrays[f"coef.{k}"].T + self.arrays[f"intercept.{k}"], 1))
                for k in self.head_names}


def train_second(image_size: int = 16, *, progress: bool = True) -> tuple[FeatureEvaluator, dict]:
    """Fit the heads on a world seeded ``TRAIN_SEED`` (counterfactual, as the CNN's training) and report
    accuracy per head on the CNN's held-out world (seed 20000)."""
    heads = heads_for(2)
    cfg = WorldConfig(seed=TRAIN_SEED, image_size=image_size, per_artist=PER_SOURCE, n_stock=PER_SOURCE,
                      per_person=PER_SOURCE, dup_groups=0, dup_copies=0, version=2)
    x, ys = record_tensors(counterfactual_training_records(cfg, TRAIN_SEED), image_size, 2)
    scaler = StandardScaler().fit(features(x))
    f = scaler.transform(features(x))
    arrays = {"mean": scaler.mean_.astype(np.float32), "scale": scaler.scale_.astype(np.float32)}
    for k in tqdm(heads, desc="second evaluator", disable=not progress, leave=False):
        y = ys[k].numpy()
        clf = LogisticRegression(C=C, max_iter=200, tol=1e-3).fit(f, y)
        coef = np.zeros((len(heads[k]), f.shape[1]), np.float32)  # classes absent from training stay -inf
        intercept = np.full(len(heads[k]), -1e9, np.float32)
        if len(clf.classes_) == 2:  # sklearn's binary form: one row for the second class
            coef[clf.classes_[1]], intercept[clf.classes_[1]] = clf.coef_[0], clf.intercept_[0]
            intercept[clf.classes_[0]] = 0.0
        else:
            coef[clf.classes_], intercept[clf.classes_] = clf.coef_, clf.intercept_
        arrays[f"coef.{k}"], arrays[f"intercept.{k}"] = coef, intercept
    model = FeatureEvaluator(arrays, heads)
    test = WorldConfig(seed=20_000, image_size=image_size, per_artist=100, n_stock=100,
                       per_person=100, dup_groups=0, dup_copies=0, version=2)
    from govlab.eval.classifiers import world_tensors

    xt, yt = world_tensors(test)
    pred = model.predict(xt)
    return model, {k: round(float((pred[k] == yt[k]).float().mean()), 4) for k in heads}


def load_second(image_size: int = 16, *, progress: bool = True) -> tuple[FeatureEvaluator, dict]:
    """The cached second evaluator (world version 2; fitted on first use, well under a minute) and its
    held-out accuracy per head."""
    heads = heads_for(2)
    key = sha256_json({"world": 2, "features": FEATURES_VERSION, "seed": TRAIN_SEED, "n": PER_SOURCE, "C": C,
                       "size": image_size, "heads": heads})[:16]
    path = cache_dir("evaluators") / f"second-{key}.safetensors"

    def build():
        model, acc = train_second(image_size, progress=progress)
        with atomic_path(path) as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in model.arrays.items()}, str(tmp),
                      metadata={"accuracy": json.dumps(acc)})

    build_once(path, path.is_file, build)
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        acc = json.loads(f.metadata()["accuracy"])
    return FeatureEvaluator(load_file(str(path)), heads), acc

