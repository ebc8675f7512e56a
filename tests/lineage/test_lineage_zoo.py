"""The quick zoo end to end: recipes, decisions, bad inputs, CLI and bench."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from govlab.errors import GovlabError
from govlab.lineage.api import lineage, lineage_from_features, load_pool
from govlab.lineage.sampling import load_model
from govlab.studies.lineage import evaluate

GOVLAB = [str(Path(sys.executable).parent / "govlab")]
K = 100


def govlab(*args, cwd=None):
    return subprocess.run(GOVLAB + list(args), capture_output=True, text=True, cwd=cwd, timeout=600)


def test_zoo_has_the_recipes_it_promises(quick_zoo):
    roles = {m.name: m.role for m in quick_zoo.models}
    assert sum(r == "base" for r in roles.values()) >= 6 and roles["outsider"] == "outsider"
    assert {m.expected for m in quick_zoo.targets} == {"base_a", "base_b", "base_c", "base_d", "base_e", None}
    configs = {m.name: json.loads((quick_zoo.root / m.path / "recipe.json").read_text())["lineage"][0]
               for m in quick_zoo.models}
    assert configs["c_twice"]["parent"] == "base_c"
    seeds = {configs[b.name]["config"]["train"]["seed"] for b in quick_zoo.bases}
    assert len(seeds) == len(quick_zoo.bases)
    model = {n: configs[n]["config"]["model"] for n in ("base_a", "base_c", "base_d")}
    assert model["base_c"]["channels"] != model["base_a"]["channels"]
    assert model["base_d"]["text_layers"] != model["base_a"]["text_layers"]
    assert configs["base_e"]["config"]["world"] != configs["base_a"]["config"]["world"]
    assert configs["b_lora"]["lora_rank"] > 0 and len(configs["c_twice"]["rounds"]) == 2
    with safe_open(str(quick_zoo.root / quick_zoo.get("b_lora").path / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "lora" in k]  # merged into the weights


@pytest.fixture(scope="module")
def verdicts(quick_zoo, zoo_features):
    return {v.target: v for v in evaluate(quick_zoo, zoo_features)}


@pytest.fixture(scope="module")
def knn_verdicts(quick_zoo, zoo_features):
    return {v.target: v for v in evaluate(quick_zoo, zoo_features, method="knn")}


TARGETS = ["a_full_new", "b_lora", "c_twice", "d_low_lr", "e_same", "outsider", "outsider_ft"]
# Measured on the quick zoo (600-step bases, k=100, world encoder, the 5 selected prompts) on two
# CPU machines, on world version 1; on version 2 (the default) here: Gaussian 2/5 of the fine-tunes
# (b_lora, e_same), kNN 4/5 (all but c_twice), the outsiders NULL with both. The zoo's trainings carry a CPU's rounding into different models, so which fine-tunes
# fall on the NULL side of T = mu - 1.64 sigma (the pool's own distances) differs by machine:
# Gaussian 4/7 on both (wrong b_lora, c_twice, e_same; or c_twice, d_low_lr, e_same), kNN 6/7 and
# 5/7 (wrong c_twice; or c_twice, e_same), most of those misses by one prompt's vote. What held on
# both is tested strictly: no target is attributed to a base it was not tuned from (the outsiders
# are NULL); every fine-tune but c_twice is nearest its true base (mean distance over the prompts;
# at least 1.5x nearer than the next base on the second machine); c_twice is missed (strict xfail: a fix must turn it into a pass);
# accuracy on the fine-tunes alone stays at or above FLOORS, the lower of the two machines' figures
# (Gaussian 2/5 on both, kNN 4/5 and 3/5); the from-scratch models, which answering NULL always gets
# right, are counted apart and must all be NULL.
# c_twice's miss takes two forms: NULL, or (kNN, world version 2, one of two builds of the zoo on this
# machine: votes base_c, base_f, NULL, base_a, base_a) base_a, a base it was not tuned from. The
# method's one wrong attribution on the quick zoo; never its true base (strict xfail).
ALWAYS_MISSED = {"c_twice": "NULL, or base_a with kNN: two rounds on new data end as far from base_c as "
                            "from base_a (Gaussian 1.04 and 1.03, kNN 0.16 and 0.15 on one machine)"}
MAY_MISATTRIBUTE = {"c_twice": {"base_a"}}
FINETUNES = ["a_full_new", "b_lora", "c_twice", "d_low_lr", "e_same"]
FLOORS = {"gaussian": 2 / 5, "knn": 3 / 5}  # right base among the 5 fine-tunes


def _votes(v):
    return v.result.base, [x.vote for x in v.result.votes]


@pytest.mark.parametrize("method", ["gaussian", "knn"])
@pytest.mark.parametrize("target", TARGETS)
def test_quick_zoo_decision(verdicts, knn_verdicts, method, target, request):
    v = (verdicts if method == "gaussian" else knn_verdicts)[target]
    # NULL or the true base, never another (but the documented wrong attribution)
    assert v.result.base in {None, v.expected, *MAY_MISATTRIBUTE.get(target, ())}, _votes(v)
    if v.expected is None:
        return
    if target in ALWAYS_MISSED:  # the documented way it misses, checked before the xfail
        request.applymarker(pytest.mark.xfail(strict=True, raises=AssertionError, reason=ALWAYS_MISSED[target]))
        assert v.result.base == v.expected, _votes(v)
    mean = {b: np.mean([x.distances[b] for x in v.result.votes]) for b in v.result.votes[0].distances}
    assert min(mean, key=mean.get) == v.expected, mean


@pytest.mark.parametrize("method", ["gaussian", "knn"])
def test_quick_zoo_accuracy_stays_above_its_floor(quick_zoo, verdicts, knn_verdicts, method):
    by = verdicts if method == "gaussian" else knn_verdicts
    assert FINETUNES == [m.name for m in quick_zoo.targets if m.expected is not None]
    right = [by[t].result.base == by[t].expected for t in FINETUNES]  # the from-scratch pair left out
    assert sum(right) / len(right) >= FLOORS[method] - 1e-9, {t: _votes(by[t]) for t in FINETUNES}


def test_lineage_api_matches_precomputed_features(quick_zoo, zoo_prompts, verdicts):
    result = lineage(quick_zoo.root / "targets" / "d_low_lr", quick_zoo.pool_dir, zoo_prompts, k=K)
    assert result.to_dict() == verdicts["d_low_lr"].result.to_dict()


# Measured on world version 2's quick zoo (Gaussian): 5 of the 6 bases, each left out in turn, come out
# NULL; base_a does not (votes base_b, NULL, NULL, base_b, base_c: three of five prompts find it near
# a base). The floor is one below.
LEFT_OUT_NULL_FLOOR = 4 / 6


def test_base_left_out_of_the_pool_is_null(quick_zoo, zoo_features):
    """The paper's scenario 5: a base removed from the pool is a from-scratch model to the rest, for
    each base left out in turn."""
    pool = [m.name for m in quick_zoo.bases]
    results = {b: lineage_from_features(zoo_features, [p for p in pool if p != b], b) for b in pool}
    null = [b for b, r in results.items() if r.decision == "NULL"]
    assert len(null) / len(pool) >= LEFT_OUT_NULL_FLOOR - 1e-9, {b: [v.vote for v in r.votes]
                                                                for b, r in results.items()}


# --- bad inputs ------------------------------------------------------------------------------------------


def test_pool_with_two_bases_is_refused(quick_zoo, tmp_path):
    for name in ("base_a", "base_b"):
        shutil.copytree(quick_zoo.pool_dir / name, tmp_path / name)
    with pytest.raises(GovlabError, match="has 2 base model\\(s\\); the NULL z-test needs at least 3"):
        load_pool(tmp_path)


def test_small_k_and_failing_target_are_refused(quick_zoo):
    with pytest.raises(GovlabError, match="k=5 is smaller than the Isomap neighbourhood n_neighbors=10"):
        lineage(quick_zoo.root / "targets" / "b_lora", quick_zoo.pool_dir, ["a circle"], k=5)

    def broken(prompts, seed):
        raise ValueError("model server unreachable")

    with pytest.raises(GovlabError, match="'api' failed to generate .*unreachable"):
        lineage(load_model(broken, name="api"), quick_zoo.pool_dir, ["a red circle center, by artist 0"], k=20)


@pytest.mark.parametrize("args, message", [
    (["--k", "5"], "k=5 is smaller than the Isomap neighbourhood"),
    (["--method", "cosine"], "unknown --method 'cosine'"),
    (["--prompt-file", "/nonexistent"], "prompt file not found"),
])
def test_cli_bad_input_is_one_line(quick_zoo, args, message):
    proc = govlab("lineage", "--target", str(quick_zoo.root / "targets" / "b_lora"), "--pool",
                  str(quick_zoo.pool_dir), *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_cli_small_pool_is_one_line(quick_zoo, tmp_path):
    for name in ("base_a", "base_b"):
        shutil.copytree(quick_zoo.pool_dir / name, tmp_path / name)
    proc = govlab("lineage", "--target", str(quick_zoo.root / "targets" / "b_lora"), "--pool", str(tmp_path))
    assert proc.returncode == 2 and "needs at least 3" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# --- CLI and bench --------------------------------------------------------------------------------------------


def test_cli_lineage_json(quick_zoo, zoo_prompts, verdicts, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# selected test prompts\n" + "\n".join(zoo_prompts) + "\n")
    proc = govlab("lineage", "--target", str(quick_zoo.root / "targets" / "d_low_lr"), "--pool",
                  str(quick_zoo.pool_dir), "--prompt-file", str(prompts), "--k", str(K), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = verdicts["d_low_lr"].result
    assert out["decision"] == expected.decision and out["base"] == expected.base
    assert set(out["distances"]) == {m.name for m in quick_zoo.bases} and out["method"] == "gaussian"
    assert [v["prompt"] for v in out["votes"]] == zoo_prompts and isinstance(out["threshold"], float)
    assert isinstance(out["correlated_bases"], list) and out["k"] == K


def test_cli_zoo_build_reuses_finished_models(quick_zoo, tmp_path):
    out = tmp_path / "zoo"
    shutil.copytree(quick_zoo.root, out)
    (out / "zoo.json").unlink()
    proc = govlab("zoo", "build", str(out), "--quick", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["pool"] == str(out / "pool") and len(result["models"]) == len(quick_zoo.models)
    assert (out / "zoo.json").is_file()


def test_bench_lineage_quick_json(quick_zoo, zoo_prompts, verdicts, knn_verdicts):
    proc = govlab("bench", "lineage", "--quick", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["models"] == 8 and out["k"] == 100
    assert out["targets"] == len(quick_zoo.targets) and out["prompts"] == len(zoo_prompts)
    # the bench's accuracy and misses are those of the verdicts against each target's known truth
    targets = [m.name for m in quick_zoo.targets]
    for suffix, method, by in (("", "gaussian", verdicts), ("_knn", "knn", knn_verdicts)):
        right = {t: by[t].result.base == m.expected for t, m in zip(targets, quick_zoo.targets)}
        assert out[f"wrong{suffix}"] == [t for t in targets if not right[t]], suffix
        assert out[f"accuracy{suffix}"] == round(sum(right.values()) / len(targets), 4), suffix
        lo, hi = out[f"accuracy{suffix}_ci"]  # bootstrap over the targets: around the figure, inside [0, 1]
        assert 0 <= lo <= out[f"accuracy{suffix}"] <= hi <= 1 and (lo < hi or len(set(right.values())) == 1)
        assert "c_twice" in out[f"wrong{suffix}"]
        # fine-tunes and from-scratch models apart, each with its count, from the same known truth
        tuned = [t for t, m in zip(targets, quick_zoo.targets) if m.expected is not None]
        scratch = [t for t in targets if t not in tuned]
        assert out["n_finetunes"] == len(tuned) == 5 and out["n_scratch"] == len(scratch) == 2
        assert out[f"right_finetunes{suffix}"] == sum(right[t] for t in tuned)
        assert out[f"right_null{suffix}"] == sum(right[t] for t in scratch) == 2
        assert out[f"accuracy_finetunes{suffix}"] == round(sum(right[t] for t in tuned) / len(tuned), 4)
        assert out[f"accuracy_null{suffix}"] == 1.0
        assert out[f"accuracy_finetunes{suffix}"] >= round(FLOORS[method], 4), suffix
