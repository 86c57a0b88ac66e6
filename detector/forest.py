"""Isolation forests for many connectors at once, kept as plain arrays.

Each group (a connector, or a connector kind for the pooled cold-start model) gets its
own scikit-learn ``IsolationForest`` fitted on its baseline residuals. The fitted trees
are exported to flat numpy arrays, so a model file needs no pickle and scoring needs no
scikit-learn import: every sample walks its own group's trees in one vectorised loop over
tree depth, for all connectors of a batch together.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ArrayIsolationForest", "average_path_length"]


def average_path_length(n: np.ndarray | float) -> np.ndarray:
    """Expected path length of an unsuccessful search in a binary tree of ``n`` points."""
    n = np.asarray(n, dtype=float)
    out = np.zeros_like(n)
    big = n > 2
    out[n == 2] = 1.0
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


def _fit_group(x: np.ndarray, n_estimators: int, max_samples: int, seed: int) -> dict:
    from sklearn.ensemble import IsolationForest

    if len(x) < 2:  # a group with no usable history: a placeholder its callers never trust
        x = np.zeros((2, x.shape[1] if x.ndim == 2 else 1))
    forest = IsolationForest(
        n_estimators=n_estimators, max_samples=min(max_samples, len(x)), random_state=seed
    ).fit(x)
    feats, thrs, lefts, rights, values, roots = [], [], [], [], [], []
    offset = 0
    for tree, columns in zip(forest.estimators_, forest.estimators_features_, strict=True):
        t = tree.tree_
        depth = np.zeros(t.node_count, dtype=float)
        for node in range(t.node_count):  # parents come before children in sklearn trees
            for child in (t.children_left[node], t.children_right[node]):
                if child >= 0:
                    depth[child] = depth[node] + 1.0
        leaf = t.children_left < 0
        feats.append(np.where(leaf, -1, np.asarray(columns)[np.maximum(t.feature, 0)]))
        thrs.append(t.threshold)
        lefts.append(np.where(leaf, -1, t.children_left + offset))
        rights.append(np.where(leaf, -1, t.children_right + offset))
        values.append(np.where(leaf, depth + average_path_length(t.n_node_samples), 0.0))
        roots.append(offset)
        offset += t.node_count
    return {
        "feature": np.concatenate(feats).astype(np.int32),
        "threshold": np.concatenate(thrs).astype(np.float64),
        "left": np.concatenate(lefts).astype(np.int64),
        "right": np.concatenate(rights).astype(np.int64),
        "value": np.concatenate(values).astype(np.float64),
        "roots": np.asarray(roots, dtype=np.int64),
        "norm": float(average_path_length(np.array([forest.max_samples_]))[0]),
        "depth": int(np.ceil(np.log2(max(forest.max_samples_, 2)))) + 1,
    }


class ArrayIsolationForest:
    """One isolation forest per group, fitted with scikit-learn and scored from arrays.

    Parameters
    ----------
    n_estimators : int, default=100
        Trees per group.
    max_samples : int, default=256
        Sub-sample size per tree (capped at the group's history).
    random_state : int, default=0
        Seed; group ``g`` uses ``random_state + g``.
    n_jobs : int, default=1
        Processes used to fit groups in parallel.

    Attributes
    ----------
    arrays_ : dict of str to ndarray
        ``feature, threshold, left, right, value`` per node, ``roots`` (groups x trees),
        ``norm`` (per group), ``max_depth``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(300, 3))
    >>> forest = ArrayIsolationForest(n_estimators=50).fit([x])
    >>> s = forest.score_samples(np.array([[0.0, 0, 0], [8.0, 8, 8]]), np.array([0, 0]))
    >>> bool(s[1] > s[0])
    True
    """

    def __init__(
        self,
        *,
        n_estimators: int = 100,
        max_samples: int = 256,
        random_state: int = 0,
        n_jobs: int = 1,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, groups: list[np.ndarray]) -> ArrayIsolationForest:
        """Fit one forest per entry of ``groups`` (each an ``(n_i, d)`` array, zero-padded)."""
        if self.n_estimators < 1 or self.max_samples < 2:
            raise ValueError("n_estimators must be >= 1 and max_samples >= 2")
        if not groups:
            raise ValueError("fit needs at least one group")
        jobs = [
            (x, self.n_estimators, self.max_samples, self.random_state + i)
            for i, x in enumerate(groups)
        ]
        if self.n_jobs > 1 and len(jobs) > 1:
            from joblib import Parallel, delayed

            parts = Parallel(n_jobs=self.n_jobs)(delayed(_fit_group)(*job) for job in jobs)
        else:
            parts = [_fit_group(*job) for job in jobs]
        self.arrays_ = self._merge(parts)
        return self

    @staticmethod
    def _merge(parts: list[dict]) -> dict[str, np.ndarray]:
        offsets = np.cumsum([0] + [len(p["feature"]) for p in parts[:-1]])
        shift = lambda a, o: np.where(a >= 0, a + o, -1)  # noqa: E731
        return {
            "feature": np.concatenate([p["feature"] for p in parts]),
            "threshold": np.concatenate([p["threshold"] for p in parts]),
            "left": np.concatenate(
                [shift(p["left"], o) for p, o in zip(parts, offsets, strict=True)]
            ),
            "right": np.concatenate(
                [shift(p["right"], o) for p, o in zip(parts, offsets, strict=True)]
            ),
            "value": np.concatenate([p["value"] for p in parts]),
            "roots": np.stack([p["roots"] + o for p, o in zip(parts, offsets, strict=True)]),
            "norm": np.array([p["norm"] for p in parts]),
            "max_depth": np.array([max(p["depth"] for p in parts)]),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ArrayIsolationForest:
        """Rebuild a fitted forest from :attr:`arrays_` (as loaded from a model file)."""
        forest = cls(n_estimators=int(arrays["roots"].shape[1]))
        forest.arrays_ = arrays
        return forest

    def score_samples(self, x: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """Anomaly score in (0, 1] per row, higher is more anomalous (Liu et al.'s ``s``).

        ``x`` rows are zero-padded residual vectors; ``groups`` gives each row's forest.
        """
        if not hasattr(self, "arrays_"):
            raise RuntimeError("this ArrayIsolationForest is not fitted yet: call fit first")
        a = self.arrays_
        x32 = np.asarray(x, dtype=np.float32)  # scikit-learn splits on float32 values
        node = a["roots"][groups]
        rows = np.arange(len(x32))[:, None]
        for _ in range(int(a["max_depth"][0])):
            feature = a["feature"][node]
            leaf = feature < 0
            go_left = x32[rows, np.maximum(feature, 0)] <= a["threshold"][node]
            node = np.where(leaf, node, np.where(go_left, a["left"][node], a["right"][node]))
        path = a["value"][node].mean(axis=1)
        return np.power(2.0, -path / a["norm"][groups])
