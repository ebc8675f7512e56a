"""Model-independent distance math of the lineage test.

Per prompt, every model contributes ``k`` image embeddings. They are reduced
jointly with Isomap (the paper uses ``d = 10``) and every pair of models is
compared with a Jensen-Shannon-type divergence between the two sample sets.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from scipy.sparse import SparseEfficiencyWarning
from sklearn.manifold import Isomap
from threadpoolctl import threadpool_limits

from govlab.errors import GovlabError

METHODS = ("gaussian", "knn")
LN2 = float(np.log(2.0))


@dataclass(frozen=True)
class DistanceMatrix:
    """Symmetric pairwise distances (zero diagonal) and the method that made them.

    Unpacks like the pair ``names, matrix = pairwise_distances(...)``.
    """

    names: tuple[str, ...]
    matrix: np.ndarray
    method: str

    def __iter__(self) -> Iterator:
        return iter((self.names, self.matrix))


def isomap_embed(
    features: dict[str, np.ndarray], *, n_components: int = 10, n_neighbors: int = 10
) -> dict[str, np.ndarray]:
    """Fit one Isomap on all models' stacked ``(k, D)`` features; return each model's ``(k, d)`` part.

    A disconnected neighbourhood graph (usual when models differ a lot) is
    completed by scikit-learn, which links components through their closest
    points; its warnings about doing so are silenced. The fit runs single-threaded:
    at these sizes (about a thousand points) BLAS/OpenMP threads gain nothing and
    slow it down many times over on a busy machine.
    """
    arrays = {name: _as_samples(name, x) for name, x in features.items()}
    if len(arrays) < 2:
        raise GovlabError(f"Isomap needs features of at least 2 models, got {len(arrays)}")
    dims = {x.shape[1] for x in arrays.values()}
    if len(dims) > 1:
        shapes = ", ".join(f"{n}: {x.shape}" for n, x in arrays.items())
        raise GovlabError(f"feature dimensions differ between models ({shapes})")
    for name, x in arrays.items():
        if x.shape[0] < n_neighbors + 1:
            raise GovlabError(
                f"model {name!r} has k={x.shape[0]} samples, which is smaller than the Isomap "
                f"neighbourhood n_neighbors={n_neighbors} (need k >= {n_neighbors + 1})"
            )
    stacked = np.vstack(list(arrays.values()))
    if not 1 <= n_components < stacked.shape[0]:
        raise GovlabError(
            f"Isomap n_components={n_components} must be in [1, {stacked.shape[0] - 1}]"
        )
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.filterwarnings("ignore", message="The number of connected components")
        warnings.simplefilter("ignore", SparseEfficiencyWarning)
        embedded = Isomap(n_components=n_components, n_neighbors=n_neighbors).fit_transform(stacked)
    bounds = np.cumsum([0] + [x.shape[0] for x in arrays.values()])
    return {name: embedded[lo:hi] for name, lo, hi in zip(arrays, bounds[:-1], bounds[1:])}


def js_gaussian(a: np.ndarray, b: np.ndarray, *, ridge: float = 1e-6) -> float:
    """The paper's Gaussian closed form (its Eq. 6, Nielsen 2019, Cor. 10) for two sample sets.

    Each set is fitted with a Gaussian ``N(mu, S)`` (unbiased covariance plus
    ``ridge * trace(S)/d`` on the diagonal, so it stays finite when ``k <= d``).
    JS between Gaussians has no closed form; Eq. 6 is the *geometric*
    Jensen-Shannon divergence, i.e. the mean of ``KL(G || A)`` and ``KL(G || B)``
    where ``G`` is the normalised geometric mean of the two Gaussians (precision
    ``(P_a + P_b)/2``). It equals the Bhattacharyya distance

        1/8 dmu' S^-1 dmu + 1/2 ln(det S / sqrt(det S_a det S_b)),  S = (S_a + S_b)/2,

    in nats (for equal variances: ``dmu^2 / (8 sigma^2)``, the paper's Eq. 7).
    Eq. 6 prints ``log_2`` on its log term; the natural log is used here, which
    is what makes the formula this divergence (the term is 0 for equal variances).
    The value is the divergence itself (no square root), symmetric, 0 for equal
    fits and unbounded above, like the paper's distances (2.7-11 between bases).
    """
    x, y = _as_samples("a", a), _as_samples("b", b)
    if x.shape[1] != y.shape[1]:
        raise GovlabError(f"sample dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    means, covs, logdets = _gaussian_fits([x, y], ridge)
    return float(_bhattacharyya(means, covs, logdets, np.array([0]), np.array([1]))[0])


def js_knn(a: np.ndarray, b: np.ndarray, *, k: int = 5) -> float:
    """Bounded k-nearest-neighbour estimate of the Jensen-Shannon divergence, in ``[0, ln 2]``.

    With ``eta(x) = p_a / (p_a + p_b)``, ``JS = ln 2 + 1/2 E_a[ln eta] + 1/2 E_b[ln(1 - eta)]``.
    ``eta`` is estimated at each pooled sample from its ``k`` nearest other
    samples (class counts divided by the number of candidates of each class, which
    for the sample's own class excludes the sample; each count +1/2 so that
    ``eta`` is never 0 or 1). The estimate is clipped to ``[0, ln 2]``, the range of JS.
    """
    x, y = _as_samples("a", a), _as_samples("b", b)
    if x.shape[1] != y.shape[1]:
        raise GovlabError(f"sample dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    pooled = np.vstack([x, y])
    return _knn_js(_sq_dists(pooled), x.shape[0], k)


def pairwise_distances(
    embeddings: dict[str, np.ndarray], *, method: str = "gaussian", k: int = 5, ridge: float = 1e-6
) -> DistanceMatrix:
    """All pairwise ``js_gaussian`` (``method="gaussian"``) or ``js_knn`` (``"knn"``) distances.

    ``k`` is the neighbour count of ``knn``; ``ridge`` the covariance ridge of ``gaussian``.
    """
    if method not in METHODS:
        raise GovlabError(f"unknown distance method {method!r}; choose one of {', '.join(METHODS)}")
    names = tuple(embeddings)
    arrays = [_as_samples(n, embeddings[n]) for n in names]
    if len({x.shape[1] for x in arrays}) > 1:
        raise GovlabError("embedding dimensions differ between models")
    m = len(names)
    i, j = np.triu_indices(m, k=1)
    if method == "gaussian":
        values = _bhattacharyya(*_gaussian_fits(arrays, ridge), i, j)
    else:
        sq = _sq_dists(np.vstack(arrays))
        bounds = np.cumsum([0] + [x.shape[0] for x in arrays])
        blocks = [np.arange(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
        values = np.array([_knn_js_block(sq, blocks[p], blocks[q], k) for p, q in zip(i, j)])
    matrix = np.zeros((m, m))
    matrix[i, j] = matrix[j, i] = values
    return DistanceMatrix(names=names, matrix=matrix, method=method)


def _as_samples(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.ndim != 2 or x.shape[0] < 2:
        raise GovlabError(f"samples of {name!r} must be a (k, D) array with k >= 2, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise GovlabError(f"samples of {name!r} contain NaN or infinite values")
    return x


def _gaussian_fits(arrays: list[np.ndarray], ridge: float):
    """Means ``(m, d)``, ridged covariances ``(m, d, d)`` and their log-determinants ``(m,)``."""
    means = np.stack([x.mean(axis=0) for x in arrays])
    covs = np.stack([np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1]) for x in arrays])
    d = covs.shape[-1]
    scale = np.trace(covs, axis1=1, axis2=2) / d
    scale = np.where(scale > 0, scale, 1.0)
    covs = covs + (ridge * scale)[:, None, None] * np.eye(d)
    return means, covs, np.linalg.slogdet(covs)[1]


def _bhattacharyya(means, covs, logdets, i, j) -> np.ndarray:
    """Bhattacharyya distance between Gaussian fits ``i[n]`` and ``j[n]`` for every ``n``."""
    avg = (covs[i] + covs[j]) / 2
    dmu = means[i] - means[j]
    quad = np.einsum("nd,nd->n", dmu, np.linalg.solve(avg, dmu[..., None])[..., 0])
    value = quad / 8 + 0.5 * np.linalg.slogdet(avg)[1] - 0.25 * (logdets[i] + logdets[j])
    return np.maximum(value, 0.0)


def _sq_dists(x: np.ndarray) -> np.ndarray:
    sq = (x * x).sum(axis=1)
    return np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)


def _knn_js_block(sq: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray, k: int) -> float:
    idx = np.concatenate([rows_a, rows_b])
    return _knn_js(sq[np.ix_(idx, idx)], len(rows_a), k)


def _knn_js(sq: np.ndarray, n_a: int, k: int) -> float:
    """kNN JS estimate from the pooled squared-distance matrix; the first ``n_a`` rows are set a."""
    n = sq.shape[0]
    n_b = n - n_a
    if not 1 <= k <= n - 1:
        raise GovlabError(f"js_knn needs 1 <= k <= {n - 1} (pooled samples - 1), got k={k}")
    sq = sq.copy()
    np.fill_diagonal(sq, np.inf)
    neighbours = np.argpartition(sq, k - 1, axis=1)[:, :k]
    from_a = (neighbours < n_a).sum(axis=1)
    in_a = np.arange(n) < n_a  # a sample is not its own neighbour: its set offers one fewer
    rate_a = (from_a + 0.5) / (n_a - in_a)
    rate_b = (k - from_a + 0.5) / (n_b - ~in_a)
    eta = rate_a / (rate_a + rate_b)
    value = LN2 + 0.5 * np.log(eta[:n_a]).mean() + 0.5 * np.log1p(-eta[n_a:]).mean()
    return float(np.clip(value, 0.0, LN2))
