import json
import math
import time

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from govlab.errors import GovlabError
from govlab.lineage import (
    correlated_bases,
    decide,
    decide_prompt,
    isomap_embed,
    js_gaussian,
    js_knn,
    null_threshold,
    pairwise_distances,
)

LN2 = np.log(2.0)


def _rng(seed=0):
    return np.random.default_rng(seed)


# --- Gaussian closed form -------------------------------------------------------------


def test_gaussian_identical_sets_are_zero():
    a = _rng().normal(size=(100, 10))
    assert js_gaussian(a, a) == pytest.approx(0.0, abs=1e-9)
    assert js_gaussian(a, a + 1e-9) == pytest.approx(0.0, abs=1e-6)


def test_gaussian_equal_variance_matches_paper_eq7():
    rng = _rng(1)
    sigma, shift = 2.0, 3.0
    a = rng.normal(scale=sigma, size=(50_000, 1))
    b = rng.normal(loc=shift, scale=sigma, size=(50_000, 1))
    assert js_gaussian(a, b) == pytest.approx(shift**2 / (8 * sigma**2), rel=0.03)


def test_gaussian_matches_monte_carlo_bhattacharyya():
    rng = _rng(2)
    mean_a, cov_a = np.zeros(2), np.diag([1.0, 0.5])
    mean_b, cov_b = np.array([1.5, -0.5]), np.array([[2.0, 0.3], [0.3, 1.0]])
    draws = rng.multivariate_normal(mean_a, cov_a, size=200_000)
    half_log_ratio = 0.5 * (
        multivariate_normal(mean_b, cov_b).logpdf(draws) - multivariate_normal(mean_a, cov_a).logpdf(draws)
    )
    monte_carlo = -np.log(np.exp(half_log_ratio).mean())
    estimate = js_gaussian(
        rng.multivariate_normal(mean_a, cov_a, size=20_000),
        rng.multivariate_normal(mean_b, cov_b, size=20_000),
    )
    assert estimate == pytest.approx(monte_carlo, rel=0.05)


def test_gaussian_grows_with_shift_and_is_symmetric():
    rng = _rng(3)
    a, noise = rng.normal(size=(200, 5)), rng.normal(size=(200, 5))
    values = [js_gaussian(a, noise + s * np.eye(5)[0]) for s in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert np.all(np.diff(values) > 0)
    assert js_gaussian(noise, a) == pytest.approx(js_gaussian(a, noise))


def test_gaussian_is_finite_when_k_below_d():
    rng = _rng(4)
    value = js_gaussian(rng.normal(size=(5, 10)), rng.normal(size=(5, 10)))
    assert np.isfinite(value) and value > 0


# --- kNN estimator ----------------------------------------------------------------------


def test_knn_bounded_and_monotone_in_shift():
    rng = _rng(5)
    a, noise = rng.normal(size=(200, 5)), rng.normal(size=(150, 5))
    shifts = (0.0, 0.5, 1.5, 2.0, 3.0, 5.0, 50.0)
    values = np.array([js_knn(a, noise + s * np.eye(5)[0]) for s in shifts])
    assert np.all((values >= 0) & (values <= LN2))
    assert np.all(np.diff(values) >= 0)
    assert np.all(np.diff(values[2:-1]) > 0)
    assert values[0] < 0.05 and values[-1] > 0.5


def test_knn_rates_exclude_the_sample_itself():
    """Two sets far apart: every sample's k neighbours are of its own set, of which it sees
    n - 1 others; the estimate follows in closed form."""
    a, b = np.arange(8.0)[:, None], 1000 + np.arange(12.0)[:, None]
    k = 3
    eta_a = ((k + 0.5) / 7) / ((k + 0.5) / 7 + 0.5 / 12)  # p_a / (p_a + p_b) at a sample of a
    eta_b = (0.5 / 8) / (0.5 / 8 + (k + 0.5) / 11)
    expected = LN2 + 0.5 * np.log(eta_a) + 0.5 * np.log(1 - eta_b)
    assert js_knn(a, b, k=k) == pytest.approx(expected, rel=1e-12)


# --- Isomap and pairwise distances --------------------------------------------------------


def test_isomap_shapes_and_order():
    rng = _rng(6)
    features = {"x": rng.normal(size=(30, 12)), "y": rng.normal(size=(40, 12)) + 2, "z": rng.normal(size=(25, 12))}
    embedded = isomap_embed(features)
    assert list(embedded) == ["x", "y", "z"]
    assert [e.shape for e in embedded.values()] == [(30, 10), (40, 10), (25, 10)]
    assert isomap_embed(features, n_components=3)["y"].shape == (40, 3)


@pytest.mark.parametrize("method,single", [("gaussian", js_gaussian), ("knn", js_knn)])
def test_pairwise_matches_single_pairs(method, single):
    rng = _rng(7)
    embeddings = {f"m{i}": rng.normal(size=(40, 4)) + i for i in range(4)}
    result = pairwise_distances(embeddings, method=method)
    names, matrix = result
    assert result.method == method and names == ("m0", "m1", "m2", "m3")
    assert np.allclose(matrix, matrix.T) and np.all(np.diag(matrix) == 0)
    assert matrix[1, 3] == pytest.approx(single(embeddings["m1"], embeddings["m3"]))


def test_distance_step_is_fast():
    rng = _rng(8)
    features = {f"m{i}": rng.normal(size=(100, 64)) + rng.normal(scale=0.5, size=64) for i in range(8)}
    start = time.perf_counter()
    pairwise_distances(isomap_embed(features))
    assert time.perf_counter() - start < 2.0


# --- decision ------------------------------------------------------------------------------


def _pool(*upper):
    """Symmetric matrix from its upper triangle, row by row."""
    m = int((1 + np.sqrt(1 + 8 * len(upper))) / 2)
    matrix = np.zeros((m, m))
    matrix[np.triu_indices(m, k=1)] = upper
    return matrix + matrix.T


def test_null_threshold_is_z_test():
    threshold, mu, sigma = null_threshold(_pool(1.0, 2.0, 3.0))
    assert mu == pytest.approx(2.0) and sigma == pytest.approx(np.sqrt(2 / 3))
    assert threshold == pytest.approx(2.0 - 1.64 * np.sqrt(2 / 3))
    assert null_threshold(_pool(1.0, 2.0, 3.0), tau=0.0)[0] == pytest.approx(2.0)


def test_decide_prompt_threshold_boundary():
    pool, names = _pool(4.0, 5.0, 6.0), ["a", "b", "c"]
    threshold = null_threshold(pool)[0]
    vote = decide_prompt({"a": 7.0, "b": threshold - 0.01, "c": 9.0}, pool, names, prompt="sofa")
    assert vote.vote == "b" and vote.prompt == "sofa" and vote.threshold == pytest.approx(threshold)
    assert decide_prompt({"a": threshold, "b": 7.0, "c": 9.0}, pool, names).vote is None


def _prompt(distance, name, pool=_pool(4.0, 5.0, 6.0)):
    """A prompt whose target is close to ``name`` (``None``: far from all)."""
    distances = {n: 9.0 for n in "abc"}
    if name is not None:
        distances[name] = distance
    return (f"p-{name}-{distance}", distances, pool, ["a", "b", "c"])


def test_majority_vote_and_tie_rules():
    assert decide([_prompt(0.1, "a"), _prompt(0.1, "a"), _prompt(0, None)], method="gaussian").base == "a"
    null_wins = decide([_prompt(0.1, "a"), _prompt(0, None), _prompt(0, None)], method="gaussian")
    assert null_wins.decision == "NULL" and null_wins.base is None
    tie_with_null = decide([_prompt(0.1, "a"), _prompt(0, None)], method="gaussian")
    assert tie_with_null.decision == "fine-tuned" and tie_with_null.base == "a"
    base_tie = decide([_prompt(0.5, "a"), _prompt(0.1, "b")], method="knn")
    assert base_tie.base == "b" and base_tie.method == "knn"


def test_result_to_dict_is_json():
    pool = _pool(4.0, 5.0, 6.0).astype(np.float32)
    distances = {n: np.float32(v) for n, v in zip("abc", (0.2, 7.0, 8.0))}
    result = decide([("sofa", distances, pool, ["a", "b", "c"])], method="gaussian")
    data = json.loads(json.dumps(result.to_dict()))
    assert data["decision"] == "fine-tuned" and data["base"] == "a" and data["tau"] == -1.64
    assert data["votes"][0]["prompt"] == "sofa" and data["votes"][0]["vote"] == "a"


def test_correlated_bases_flags_close_pair():
    pool = _pool(5.0, 0.5, 5.2, 4.8, 5.1, 4.9)
    assert correlated_bases(pool, ["a", "b", "c", "d"]) == [("a", "c")]
    assert correlated_bases(_pool(5.0, 5.1, 4.9), ["a", "b", "c"]) == []


def _synthetic_prompt(seed, target, method, *, dim=16, k=60):
    """Five base clouds 3 apart; the target is a fine-tune of base 2 or an outsider."""
    rng = _rng(seed)
    centers = 3.0 * np.eye(dim)[:5]
    features = {f"base{i}": rng.normal(size=(k, dim)) + c for i, c in enumerate(centers)}
    offset = {"fine-tune": centers[2] + 0.3 * np.eye(dim)[10], "outsider": 5.0 * np.eye(dim)[6]}[target]
    features["target"] = rng.normal(size=(k, dim)) + offset
    names, matrix = pairwise_distances(isomap_embed(features), method=method)
    bases = list(names[:-1])
    return (f"prompt{seed}", dict(zip(bases, matrix[-1, :-1])), matrix[:-1, :-1], bases)


@pytest.mark.parametrize("method", ["gaussian", "knn"])
@pytest.mark.parametrize("target,expected", [("fine-tune", "base2"), ("outsider", None)])
def test_synthetic_lineage(method, target, expected):
    result = decide([_synthetic_prompt(seed, target, method) for seed in range(3)], method=method)
    assert result.base == expected
    assert result.decision == ("NULL" if expected is None else "fine-tuned")
    assert [v.vote for v in result.votes] == [expected] * 3


# --- bad inputs ------------------------------------------------------------------------------


def test_isomap_rejects_small_k():
    rng = _rng(9)
    with pytest.raises(GovlabError, match=r"k=8 .*n_neighbors=10"):
        isomap_embed({"a": rng.normal(size=(30, 4)), "b": rng.normal(size=(8, 4))})


def test_isomap_rejects_mismatched_dims():
    rng = _rng(10)
    with pytest.raises(GovlabError, match=r"\(20, 13\)"):
        isomap_embed({"a": rng.normal(size=(20, 12)), "b": rng.normal(size=(20, 13))})


def test_bad_samples_and_options_raise():
    rng = _rng(11)
    with pytest.raises(GovlabError, match=r"\(7,\)"):
        js_gaussian(rng.normal(size=7), rng.normal(size=(7, 1)))
    with pytest.raises(GovlabError, match="3 vs 4"):
        js_knn(rng.normal(size=(9, 3)), rng.normal(size=(9, 4)))
    with pytest.raises(GovlabError, match="k=30"):
        js_knn(rng.normal(size=(9, 3)), rng.normal(size=(9, 3)), k=30)
    with pytest.raises(GovlabError, match="'cosine'"):
        pairwise_distances({"a": rng.normal(size=(9, 3))}, method="cosine")
    with pytest.raises(GovlabError, match="NaN"):
        js_gaussian(np.full((5, 2), np.nan), rng.normal(size=(5, 2)))


def test_bad_decision_inputs_raise():
    with pytest.raises(GovlabError, match="at least 3 base models, got 2"):
        null_threshold(_pool(1.0))
    with pytest.raises(GovlabError, match="'z'"):
        decide_prompt({"a": 1.0, "b": 2.0, "z": 3.0}, _pool(4.0, 5.0, 6.0), ["a", "b", "c"])
    with pytest.raises(GovlabError, match="4 base names"):
        correlated_bases(_pool(4.0, 5.0, 6.0), ["a", "b", "c", "d"])
    with pytest.raises(GovlabError, match="at least one prompt"):
        decide([], method="gaussian")


def test_pool_hygiene_reports_none_where_the_pool_is_too_small_to_flag_a_pair():
    from govlab.lineage.api import correlated_pairs
    from govlab.lineage.decision import correlated_bases

    rng = np.random.default_rng(0)
    for _ in range(200):  # 3 bases, 3 distances: none lies 1.64 standard deviations below their mean
        d = rng.uniform(0.01, 1.0, 3)
        matrix = np.array([[0, d[0], d[1]], [d[0], 0, d[2]], [d[1], d[2], 0]])
        assert correlated_bases(matrix, ["a", "b", "c"]) == []
    assert correlated_pairs({}, ["a", "b", "c"]) is None
    four = np.array([[0, .01, 1, 1], [.01, 0, 1, 1], [1, 1, 0, 1], [1, 1, 1, 0]])  # 6 distances: can flag
    assert correlated_bases(four, list("abcd")) == [("a", "b")]


def test_split_accuracy_counts_finetunes_and_scratch_apart():
    from govlab.lineage.decision import LineageResult
    from govlab.studies.lineage import Verdict, split_accuracy

    def v(name, expected, base):
        return Verdict(name, expected, LineageResult(decision="fine-tuned" if base else "NULL", base=base, votes=[],
                                                     method="gaussian", tau=0.05))

    # answering NULL everywhere: every from-scratch model right, no fine-tune
    null = [v("a", "base_a", None), v("b", "base_b", None), v("o", None, None), v("p", None, None)]
    assert split_accuracy(null) == {"accuracy_finetunes": 0.0, "accuracy_null": 1.0, "n_finetunes": 2,
                                    "n_scratch": 2, "right_finetunes": 0, "right_null": 2}
    mixed = [v("a", "base_a", "base_a"), v("b", "base_b", "base_a"), v("c", "base_c", None), v("o", None, "base_c")]
    out = split_accuracy(mixed)
    assert (out["accuracy_finetunes"], out["right_finetunes"], out["n_finetunes"]) == (pytest.approx(1 / 3), 1, 3)
    assert (out["accuracy_null"], out["right_null"], out["n_scratch"]) == (0.0, 0, 1)
    assert math.isnan(split_accuracy([v("a", "base_a", "base_a")])["accuracy_null"])
