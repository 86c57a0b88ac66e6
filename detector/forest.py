"""Isolation forests for many connectors at once, kept as plain arrays.

Each group (a connector, or a connector kind for the pooled cold-start model) gets its
own isolation forest (Liu, Ting and Zhou, 2008) fitted on its baseline residuals, with
scikit-learn's ``IsolationForest`` algorithm: sub-samples of ``max_samples`` rows drawn
without replacement, at each node a feature drawn among those not constant in the node
and a threshold uniform between its minimum and maximum there, depth limited to
``ceil(log2(max_samples))``, leaf value ``depth + c(n)``. Rather than one scikit-learn
tree at a time (whose per-tree overhead dominated fitting a fleet), all trees of many
groups grow together, one level at a time, in vectorised numpy.

The trees are kept as flat numpy arrays, so a model file needs no pickle and scoring
needs no scikit-learn: every sample walks its own group's trees in one vectorised loop
over tree depth, for all connectors of a batch together.
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


#: A feature whose range in a node is at most this is constant there (scikit-learn's
#: ``FEATURE_THRESHOLD``): it cannot split the node.
_CONSTANT_RANGE = 1e-7
#: Feature draws per node before every feature of the remaining nodes is checked at once.
_DRAW_ROUNDS = 4
#: Per-node arrays of a fitted forest.
_NODE_ARRAYS = ("feature", "threshold", "left", "right", "value")
#: Sub-samples (trees x rows per tree) grown together; bounds the builder's memory.
_CHUNK_SAMPLES = 2_000_000


def _round_down(thr: np.ndarray) -> np.ndarray:
    """The largest float32 at most each float64 threshold.

    Inputs are float32, and for a float32 ``x``, ``x <= t`` exactly when ``x`` is at most
    the largest float32 not above ``t``: the splits are scikit-learn's float64 ones, in
    half the memory, and a split still splits (``lo <= t < hi`` stays true).
    """
    t32 = thr.astype(np.float32)
    return np.where(t32 > thr, np.nextafter(t32, np.float32(-np.inf)), t32)


def _segment_positions(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Positions ``starts[i] .. starts[i] + counts[i] - 1`` of every segment, concatenated."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shift = np.repeat(starts - np.cumsum(counts) + counts, counts)
    return shift + np.arange(total, dtype=np.int64)


def _ranges(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum and maximum of each consecutive segment of ``values`` (every count >= 1)."""
    starts = np.cumsum(counts) - counts
    return np.minimum.reduceat(values, starts, axis=0), np.maximum.reduceat(values, starts, axis=0)


def _draw_features(
    x: np.ndarray,
    samples: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    candidates: np.ndarray,
    n_candidates: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A split feature per node, uniform over the features not constant in the node.

    As scikit-learn's random splitter: a node whose features are all constant becomes a
    leaf (feature -1). Features are drawn at random for a few rounds (cheap: one column
    per node); the nodes still unresolved then check every column at once.

    Returns the feature, and its minimum and maximum over the node's samples.
    """
    n = len(starts)
    feature = np.full(n, -1, dtype=np.int64)
    lo = np.zeros(n, dtype=np.float32)
    hi = np.zeros(n, dtype=np.float32)
    todo = np.flatnonzero(n_candidates > 0)
    for _ in range(_DRAW_ROUNDS):
        if not len(todo):
            break
        pick = (rng.random(len(todo)) * n_candidates[todo]).astype(np.int64)
        f = candidates[todo, pick]
        pos = _segment_positions(starts[todo], counts[todo])
        values = x[samples[pos], np.repeat(f, counts[todo])]
        mn, mx = _ranges(values, counts[todo])
        ok = (mx.astype(np.float64) - mn) > _CONSTANT_RANGE
        done = todo[ok]
        feature[done], lo[done], hi[done] = f[ok], mn[ok], mx[ok]
        todo = todo[~ok]
    if len(todo):
        pos = _segment_positions(starts[todo], counts[todo])
        mn, mx = _ranges(x[samples[pos]], counts[todo])  # (nodes, width)
        usable = (mx.astype(np.float64) - mn) > _CONSTANT_RANGE
        n_usable = usable.sum(axis=1)
        has = n_usable > 0
        # The k-th usable column, k uniform: the first column where the running count passes k.
        k = (rng.random(len(todo)) * n_usable).astype(np.int64)
        f = np.argmax(np.cumsum(usable, axis=1) > k[:, None], axis=1)
        rows = np.arange(len(todo))
        done = todo[has]
        feature[done] = f[has]
        lo[done], hi[done] = mn[rows, f][has], mx[rows, f][has]
    return feature, lo, hi


def _subsamples(
    n_rows: np.ndarray, size: np.ndarray, n_estimators: int, rng: np.random.Generator
) -> np.ndarray:
    """Row indices (within each group) of every tree's sub-sample, group by group, tree by tree.

    Without replacement, as scikit-learn's ``IsolationForest`` (``bootstrap=False``).
    """
    out = []
    for n, m in zip(n_rows.tolist(), size.tolist(), strict=True):
        if m >= n:  # the whole history: order inside a tree does not matter
            out.append(np.tile(np.arange(n, dtype=np.int64), n_estimators))
        elif n * n_estimators <= 4 * _CHUNK_SAMPLES:
            keys = rng.random((n_estimators, n), dtype=np.float32)
            out.append(np.argpartition(keys, m - 1, axis=1)[:, :m].ravel())
        else:  # a large pooled group: one draw per tree keeps memory at the sample size
            out.append(
                np.concatenate([rng.choice(n, m, replace=False) for _ in range(n_estimators)])
            )
    return np.concatenate(out)


def _grow(
    groups: list[np.ndarray], n_estimators: int, max_samples: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Grow every tree of every group together, one tree level at a time.

    The sub-samples of all trees sit in one index array, each node's samples contiguous.
    A level draws a feature and a uniform threshold per node, splits every node's
    samples stably in place (left child first) and drops the samples of new leaves.
    Nodes are numbered level by level; ``roots`` holds each group's tree roots.
    """
    n_rows = np.array([len(g) for g in groups], dtype=np.int64)
    x = np.concatenate(groups).astype(np.float32, copy=False)
    row0 = np.cumsum(n_rows) - n_rows
    size = np.minimum(n_rows, max_samples)
    limit = np.ceil(np.log2(np.maximum(size, 2))).astype(np.int64)
    # Columns not constant over a group's whole history: the only ones a node can split on.
    width = x.shape[1]
    candidates = np.zeros((len(groups), max(width, 1)), dtype=np.int64)
    n_candidates = np.zeros(len(groups), dtype=np.int64)
    for g, part in enumerate(groups):
        cols = np.flatnonzero((part.max(axis=0) - part.min(axis=0)) > _CONSTANT_RANGE)
        candidates[g, : len(cols)], n_candidates[g] = cols, len(cols)

    tree_group = np.repeat(np.arange(len(groups)), n_estimators)
    samples = _subsamples(n_rows, size, n_estimators, rng) + np.repeat(
        row0, size * n_estimators
    )
    counts = size[tree_group]
    node_tree = np.arange(len(tree_group))
    feature, threshold, left, right, value = [], [], [], [], []
    next_id, depth = len(tree_group), 0
    while len(node_tree):
        g = tree_group[node_tree]
        starts = np.cumsum(counts) - counts
        split = (counts >= 2) & (depth < limit[g])
        f = np.full(len(node_tree), -1, dtype=np.int64)
        lo = np.zeros(len(node_tree), dtype=np.float32)
        hi = np.zeros(len(node_tree), dtype=np.float32)
        s = np.flatnonzero(split)
        f[s], lo[s], hi[s] = _draw_features(
            x, samples, starts[s], counts[s], candidates[g[s]], n_candidates[g[s]], rng
        )
        split = f >= 0
        s = np.flatnonzero(split)
        lo64, hi64 = lo[s].astype(np.float64), hi[s].astype(np.float64)
        thr = lo64 + rng.random(len(s)) * (hi64 - lo64)
        thr = _round_down(np.where(thr == hi64, lo64, thr))  # scikit-learn's guard

        node_thr = np.full(len(node_tree), -2.0, dtype=np.float32)
        node_thr[s] = thr
        kids = (next_id + 2 * np.arange(len(s))).astype(np.int32)
        node_left = np.full(len(node_tree), -1, dtype=np.int32)
        node_right = np.full(len(node_tree), -1, dtype=np.int32)
        node_left[s], node_right[s] = kids, kids + 1
        node_value = np.where(split, 0.0, depth + average_path_length(counts.astype(float)))
        feature.append(f)
        threshold.append(node_thr)
        left.append(node_left)
        right.append(node_right)
        value.append(node_value)
        next_id += 2 * len(s)

        # Keep the samples of split nodes only, then split each node's run stably.
        keep = np.repeat(split, counts)
        samples, counts, starts = samples[keep], counts[s], np.cumsum(counts[s]) - counts[s]
        node_of = np.repeat(np.arange(len(s)), counts)
        go_left = x[samples, f[s][node_of]] <= thr[node_of]
        n_left = np.add.reduceat(go_left, starts) if len(s) else np.zeros(0, dtype=np.int64)
        rank_left = np.cumsum(go_left) - go_left
        rank_right = np.arange(len(samples)) - rank_left
        before_left = (np.cumsum(n_left) - n_left)[node_of]
        pos = np.where(
            go_left,
            starts[node_of] + rank_left - before_left,
            starts[node_of] + n_left[node_of] + rank_right - (starts[node_of] - before_left),
        )
        ordered = np.empty_like(samples)
        ordered[pos] = samples
        samples = ordered
        counts = np.column_stack([n_left, counts - n_left]).ravel()
        node_tree = np.repeat(node_tree[s], 2)
        depth += 1
    return {
        "feature": np.concatenate(feature).astype(np.int32),
        "threshold": np.concatenate(threshold),
        "left": np.concatenate(left),
        "right": np.concatenate(right),
        "value": np.concatenate(value),
        "roots": np.arange(len(tree_group), dtype=np.int32).reshape(len(groups), n_estimators),
        "norm": average_path_length(size.astype(float)),
        "depth": limit + 1,
    }


class ArrayIsolationForest:
    """One isolation forest per group, grown and scored as numpy arrays.

    Parameters
    ----------
    n_estimators : int, default=100
        Trees per group.
    max_samples : int, default=256
        Sub-sample size per tree (capped at the group's history).
    random_state : int, default=0
        Seed of the random streams (one per chunk of groups).
    n_jobs : int, default=1
        Threads growing chunks of groups in parallel.

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
        """Fit one forest per entry of ``groups`` (each an ``(n_i, d)`` array, zero-padded).

        Groups are grown in chunks of about :data:`_CHUNK_SAMPLES` sub-sampled rows, each
        chunk with its own random stream spawned from ``random_state``.
        """
        if self.n_estimators < 1 or self.max_samples < 2:
            raise ValueError("n_estimators must be >= 1 and max_samples >= 2")
        if not groups:
            raise ValueError("fit needs at least one group")
        width = max((g.shape[1] for g in groups if g.ndim == 2), default=1)
        # A group with no usable history: a placeholder its callers never trust.
        groups = [
            np.asarray(g, dtype=np.float32) if len(g) >= 2 else np.zeros((2, width), np.float32)
            for g in groups
        ]
        per_group = np.minimum([len(g) for g in groups], self.max_samples) * self.n_estimators
        chunk_of = np.cumsum(per_group) // _CHUNK_SAMPLES
        bounds = np.flatnonzero(np.diff(chunk_of)) + 1
        chunks = np.split(np.arange(len(groups)), bounds)
        seeds = np.random.SeedSequence(self.random_state).spawn(len(chunks))
        jobs = [
            ([groups[i] for i in idx], np.random.default_rng(seed))
            for idx, seed in zip(chunks, seeds, strict=True)
        ]
        if self.n_jobs > 1 and len(jobs) > 1:
            # Threads, not processes: the chunks share the groups' arrays, and numpy's
            # gathers and reductions run outside the GIL for most of a chunk's time.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.n_jobs) as pool:
                parts = list(
                    pool.map(
                        lambda job: _grow(job[0], self.n_estimators, self.max_samples, job[1]),
                        jobs,
                    )
                )
        else:
            parts = [_grow(x, self.n_estimators, self.max_samples, rng) for x, rng in jobs]
        del jobs
        self.arrays_ = self._merge(parts)
        return self

    @staticmethod
    def _merge(parts: list[dict]) -> dict[str, np.ndarray]:
        """One forest from the chunks' arrays, filled in place and each chunk freed once
        copied: the merge holds the whole forest once, plus one chunk."""
        sizes = [len(p["feature"]) for p in parts]
        total = sum(sizes)
        out = {k: np.empty(total, dtype=parts[0][k].dtype) for k in _NODE_ARRAYS}
        roots, norm, depth = [], [], 0
        offset = 0
        while parts:
            p = parts.pop(0)
            end = offset + len(p["feature"])
            for k in _NODE_ARRAYS:
                out[k][offset:end] = p[k]
            for k in ("left", "right"):  # children numbered within the chunk; -1 for none
                kids = out[k][offset:end]
                kids[kids >= 0] += offset
            roots.append(p["roots"] + offset)
            norm.append(p["norm"])
            depth = max(depth, int(p["depth"].max()))
            offset = end
        return out | {
            "roots": np.concatenate(roots),
            "norm": np.concatenate(norm),
            "max_depth": np.array([depth]),
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
        nodes, roots, value = self._walk_arrays()
        x32 = np.asarray(x, dtype=np.float32)  # scikit-learn splits on float32 values
        flat = x32.ravel()
        start = (np.arange(len(x32), dtype=np.intp) * x32.shape[1])[:, None]
        node = roots[groups]
        for _ in range(int(a["max_depth"][0])):
            step = nodes[node]  # one gather per level: threshold, feature, right child
            # ``<=`` goes left as scikit-learn does (a NaN goes right, never left).
            node = step["right"] - (flat[start + step["feature"]] <= step["threshold"])
        path = value[node].mean(axis=1)
        return np.power(2.0, -path / a["norm"][groups])

    def _walk_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The trees laid out for scoring, built once per fitted forest.

        Each node's left child must directly precede its right one (trees grown level by
        level are laid out so; scikit-learn's depth-first trees are renumbered level by
        level here), and a node's threshold, feature and right child sit side by side in
        one record: a level of the walk is then one random read per (sample, tree) instead
        of five. A leaf's "right child" is itself and its threshold NaN (no value is
        ``<=`` NaN), so samples that reach a leaf early stay there without a branch. The
        splits are the fitted ones, so scores are bit for bit those of the stored arrays.

        Returns
        -------
        nodes : structured ndarray
            ``threshold`` (float64), ``feature`` and ``right`` (int32) per renumbered node.
        roots : ndarray of int32, shape (groups, trees)
        value : ndarray of float64
            Path length at each renumbered leaf (0 for inner nodes).
        """
        cached = getattr(self, "_walk", None)
        if cached is not None and cached[0] is self.arrays_:
            return cached[1]
        a = self.arrays_
        left, right, feature = a["left"], a["right"], a["feature"]
        threshold, value, roots = a["threshold"], a["value"], a["roots"]
        inner = feature >= 0
        position = np.arange(len(feature), dtype=np.int32)
        new_id = position
        if not np.array_equal(left[inner] + 1, right[inner]):  # scikit-learn's depth-first
            order, level = [roots.ravel()], roots.ravel()
            while len(level):
                parents = level[inner[level]]
                level = np.empty(2 * len(parents), dtype=np.int64)
                level[0::2], level[1::2] = left[parents], right[parents]
                order.append(level)
            old = np.concatenate(order)
            inner, feature, right = inner[old], feature[old], right[old]
            threshold, value = threshold[old], value[old]
            new_id = np.empty(len(old), dtype=np.int32)
            new_id[old] = position
            roots = new_id[roots]
        nodes = np.empty(len(feature), dtype=[("threshold", "f8"), ("feature", "i4"),
                                               ("right", "i4")])
        nodes["threshold"] = np.where(inner, threshold, np.nan)
        nodes["feature"] = np.where(inner, feature, 0)
        nodes["right"] = np.where(inner, new_id[np.maximum(right, 0)], position)
        walk = (nodes, roots.astype(np.int32), value)
        self._walk = (a, walk)
        return walk
