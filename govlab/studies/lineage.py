"""Experiments of the lineage notebook on a zoo: accuracy tables, k ablation, countermeasure curves."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch import nn

from govlab.lineage.api import Features, lineage_from_features, model_features
from govlab.lineage.decision import DEFAULT_TAU, LineageResult
from govlab.lineage.sampling import BlackBox, load_model
from govlab.lineage.zoo import Zoo


@dataclass(frozen=True)
class Verdict:
    """One target's lineage result against its known truth (``expected`` None: NULL)."""

    target: str
    expected: str | None
    result: LineageResult

    @property
    def correct(self) -> bool:
        return self.result.base == self.expected

    def distances(self) -> pd.DataFrame:
        """Per-prompt distances, one row per prompt, one column per base."""
        return pd.DataFrame([v.distances for v in self.result.votes])

    @property
    def threshold(self) -> float:
        return float(np.mean([v.threshold for v in self.result.votes]))

    @property
    def closest(self) -> tuple[str, float, float]:
        """``(closest base, its mean distance, next base's mean distance / it)`` (inf when it is 0)."""
        mean = self.distances().mean().sort_values()
        first, second = float(mean.iloc[0]), float(mean.iloc[1])
        return mean.index[0], first, second / first if first > 0 else float("inf")


def zoo_boxes(zoo: Zoo) -> dict[str, BlackBox]:
    return {m.name: load_model(zoo.root / m.path, name=m.name) for m in zoo.models}


def zoo_features(zoo: Zoo, prompts: list[str], *, k: int, extractor: nn.Module, seed: int = 0) -> Features:
    """Features of every zoo model for ``prompts``."""
    return model_features(list(zoo_boxes(zoo).values()), prompts, k, extractor=extractor, seed=seed)


def evaluate(zoo: Zoo, features: Features, *, method: str = "gaussian", tau: float = DEFAULT_TAU,
             k: int | None = None) -> list[Verdict]:
    """Lineage of every zoo target against the zoo's pool (optionally on the first ``k`` samples)."""
    if k is not None:
        features = {p: {n: x[:k] for n, x in by.items()} for p, by in features.items()}
    pool = [m.name for m in zoo.bases]
    return [Verdict(m.name, m.expected, lineage_from_features(features, pool, m.name, method=method, tau=tau))
            for m in zoo.targets]


def accuracy(verdicts: list[Verdict]) -> float:
    return float(np.mean([v.correct for v in verdicts]))


def split_accuracy(verdicts: list[Verdict]) -> dict:
    """Accuracy on the fine-tunes (right base named) and on the from-scratch models (NULL), apart:
    answering NULL always gets every from-scratch model right and no fine-tune.
    ``{"accuracy_finetunes", "accuracy_null", "n_finetunes", "n_scratch", "right_finetunes", "right_null"}``
    (an accuracy is NaN when its group is empty)."""
    tuned = [v.correct for v in verdicts if v.expected is not None]
    scratch = [v.correct for v in verdicts if v.expected is None]
    return {"accuracy_finetunes": float(np.mean(tuned)) if tuned else float("nan"),
            "accuracy_null": float(np.mean(scratch)) if scratch else float("nan"),
            "n_finetunes": len(tuned), "n_scratch": len(scratch),
            "right_finetunes": int(sum(tuned)), "right_null": int(sum(scratch))}


def distance_table(verdicts: list[Verdict]) -> pd.DataFrame:
    """The paper's Table 1/3 shape: mean +- std (over prompts) distance of each target to each base.

    Closing rows: NULL threshold, closest base, ratio of the next base's distance to the closest,
    decision and truth.
    """
    cols = {}
    for v in verdicts:
        d = v.distances()
        closest, _, ratio = v.closest
        cells = {b: f"{d[b].mean():.3f} ± {d[b].std(ddof=0):.3f}" for b in d.columns}
        cells.update({"NULL threshold": f"{v.threshold:.3f}", "closest": closest,
                      "ratio next/closest": f"{ratio:.2f}",
                      "decision": v.result.base or "NULL", "expected": v.expected or "NULL",
                      "correct": "yes" if v.correct else "NO"})
        cols[v.target] = cells
    return pd.DataFrame(cols)


def summary(verdicts: list[Verdict]) -> pd.DataFrame:
    """One row per target: truth, decision, votes, distance to the true base or closest, margin."""
    rows = []
    for v in verdicts:
        d = v.distances().mean()
        closest, dist, ratio = v.closest
        true = d.get(v.expected, np.nan) if v.expected else np.nan
        others = d.drop(v.expected) if v.expected else d
        rows.append({"target": v.target, "expected": v.expected or "NULL", "decision": v.result.base or "NULL",
                     "correct": v.correct, "votes": ", ".join(x.vote or "NULL" for x in v.result.votes),
                     "d_true_base": true, "d_next_base": float(others.min()), "threshold": v.threshold,
                     "closest": closest, "ratio_next": ratio})
    return pd.DataFrame(rows)


def k_ablation(zoo: Zoo, features: Features, ks: list[int], *, method: str = "gaussian") -> pd.DataFrame:
    """Distance to the true base and to the next base vs ``k`` (nested subsets of the samples)."""
    frames = []
    for k in ks:
        df = summary(evaluate(zoo, features, method=method, k=k))
        frames.append(df.assign(k=k))
    return pd.concat(frames, ignore_index=True)


def countermeasure_curve(pool_features: Features, pool: list[str], true_base: str,
                         targets: dict[float, BlackBox], *, k: int, extractor: nn.Module,
                         method: str = "gaussian", seed: int = 0) -> pd.DataFrame:
    """Distance of each countermeasure strength's target to ``true_base`` and the NULL threshold."""
    prompts = list(pool_features)
    rows = []
    for strength, box in targets.items():
        feats = model_features([box], prompts, k, extractor=extractor, seed=seed)
        merged = {p: {**{n: pool_features[p][n][:k] for n in pool}, **feats[p]} for p in prompts}
        result = lineage_from_features(merged, pool, box.name, method=method)
        d = pd.DataFrame([v.distances for v in result.votes]).mean()
        rows.append({"strength": strength, "d_true_base": float(d[true_base]),
                     "d_next_base": float(d.drop(true_base).min()),
                     "threshold": float(np.mean([v.threshold for v in result.votes])),
                     "decision": result.base or "NULL"})
    return pd.DataFrame(rows)


def plot_curve(df: pd.DataFrame, ax, *, xlabel: str, title: str) -> None:
    """Distance to the true base and to the next base vs strength, with the NULL threshold dashed."""
    ax.plot(df["strength"], df["d_true_base"], "o-", label="distance to true base")
    ax.plot(df["strength"], df["d_next_base"], "s:", label="distance to next base")
    ax.plot(df["strength"], df["threshold"], "k--", label="NULL threshold")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("JS distance")
    ax.set_title(title)
    ax.legend(fontsize=8)
