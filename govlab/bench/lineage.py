"""``govlab bench lineage``: seconds of the distance step (Isomap + JS) and accuracy on the quick zoo."""

from __future__ import annotations

from govlab.bench.train import interleaved
from govlab.eval.stats import mean_ci
from govlab.lineage.api import default_prompts, prompt_distances
from govlab.lineage.features import get_extractor
from govlab.lineage.zoo import cached_zoo
from govlab.studies.lineage import accuracy, evaluate, split_accuracy, zoo_boxes, zoo_features
from govlab.sweep import Sweep

K, MODELS = 100, 8
# Without --quick, accuracy at this k too: in this world the distances of fine-tunes to their bases
# still fall past k = 100 (the estimate's noise floor), while the bases stay apart (README).
K_MORE = 300


def _split(verdicts) -> dict:
    """``accuracy_finetunes``/``accuracy_null`` rounded, with their counts (right ones and group sizes)."""
    return {k: round(v, 4) if k.startswith("accuracy") else v for k, v in split_accuracy(verdicts).items()}


def bench_lineage(*, quick: bool = False, workers: int | None = None, address: str | None = None) -> dict:
    """Median seconds of Isomap + JS for 8 models x k=100 features of one prompt; zoo accuracy at
    k=100 and, without ``quick``, at k=300: over all targets (``accuracy``, with ``accuracy_ci``: a 95%
    bootstrap interval over the targets, wide with 7 of them), over the fine-tunes
    alone (``accuracy_finetunes``, right base among ``n_finetunes``) and over the from-scratch
    models alone (``accuracy_null``, NULL among ``n_scratch``).

    Samples and the zoo are cached, so only the first call pays for training and generation; the
    zoo's models train as sweeps (``govlab.sweep``: local Ray with ``workers`` CPUs, the cluster at
    ``address``, or serially).
    """
    zoo = cached_zoo(quick=True, sweep=Sweep(workers=workers, address=address))
    boxes = zoo_boxes(zoo)
    prompts = default_prompts([boxes[m.name] for m in zoo.bases])
    feats = zoo_features(zoo, prompts, k=K, extractor=get_extractor("world"))
    names = [m.name for m in zoo.models][:MODELS]
    one = {n: feats[prompts[0]][n] for n in names}
    med = interleaved({m: (lambda m=m: prompt_distances(one, method=m)) for m in ("gaussian", "knn")},
                      repeats=5 if quick else 20)
    verdicts = {m: evaluate(zoo, feats, method=m) for m in ("gaussian", "knn")}
    more = {}
    if not quick:
        feats_more = zoo_features(zoo, prompts, k=K_MORE, extractor=get_extractor("world"))
        for m, suffix in (("gaussian", ""), ("knn", "_knn")):
            v = evaluate(zoo, feats_more, method=m)
            more[f"accuracy{suffix}_k{K_MORE}"] = round(accuracy(v), 4)
            more[f"accuracy{suffix}_k{K_MORE}_ci"] = mean_ci([float(x.correct) for x in v])[1]
            more[f"wrong{suffix}_k{K_MORE}"] = [x.target for x in v if not x.correct]
            more.update({f"{k}{suffix}_k{K_MORE}": val for k, val in _split(v).items() if "accuracy" in k})
    split = {f"{k}{suffix}": val for m, suffix in (("gaussian", ""), ("knn", "_knn"))
             for k, val in _split(verdicts[m]).items() if suffix == "" or not k.startswith("n_")}
    return {"distance_s": round(med["gaussian"], 4), "distance_knn_s": round(med["knn"], 4),
            "models": len(names), "k": K, "feature_dim": int(one[names[0]].shape[1]),
            "accuracy": round(accuracy(verdicts["gaussian"]), 4),
            "accuracy_ci": mean_ci([float(v.correct) for v in verdicts["gaussian"]])[1],
            "accuracy_knn": round(accuracy(verdicts["knn"]), 4),
            "accuracy_knn_ci": mean_ci([float(v.correct) for v in verdicts["knn"]])[1],
            "targets": len(verdicts["gaussian"]), "prompts": len(prompts), **split,
            "wrong": [v.target for v in verdicts["gaussian"] if not v.correct],
            "wrong_knn": [v.target for v in verdicts["knn"] if not v.correct], **more, "quick": quick}
