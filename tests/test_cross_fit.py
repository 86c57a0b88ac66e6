"""Cross-fitting in parts gives the held-out scores one pass over the whole fleet gave."""

from __future__ import annotations

import numpy as np
import polars as pl
import polars.testing
import pytest
from conftest import with_fleet_copy

import detector.families as families_module
import detector.groups as groups_module
import detector.history as history_module
import detector.model as model_module
from detector.baseline import SeasonalBaseline
from detector.forest import ArrayIsolationForest
from detector.habits import connector_intervals
from detector.model import FleetModel
from detector.parallel import in_threads
from training.simulator import simulate_fleet


def _one_pass_cross_fit(
    model: FleetModel,
    per_connector: pl.DataFrame,
    pooled: pl.DataFrame,
    ivals: pl.DataFrame,
    group_index: dict[str, int],
) -> dict[str, np.ndarray]:
    """The cross-fitting before it went in parts (commit af6d997), kept as the reference:
    both folds of every frame at once, the pooled rows as one frame of kinds and ``"*"``."""
    seq = (
        per_connector.select("row", "connector_id")
        .unique()
        .with_columns(pl.col("row").rank("ordinal").over("connector_id").alias("seq"))
    )
    halves = [
        per_connector.join(seq, on=["row", "connector_id"]).with_columns(
            (pl.col("seq") * 2 > pl.col("seq").max().over("connector_id")).alias("_b")
        ),
        pooled.with_columns((pl.col("connector_id").hash(7) % 2 == 1).alias("_b")),
    ]
    scores: dict[str, list[np.ndarray]] = {
        k: [] for k in ("forest", "family", "group", "row", "forest_paused", "family_paused")
    }
    z0 = [pl.lit(0.0).alias("z"), pl.lit(0.0).alias("z_tail")]
    for fold in (False, True):
        fc, fp = (h.filter(pl.col("_b") == fold).drop("_b", "seq", strict=False) for h in halves)
        sc, sp = (h.filter(pl.col("_b") != fold).drop("_b", "seq", strict=False) for h in halves)
        if fc.height == 0 and fp.height == 0:
            continue
        base = SeasonalBaseline(method=model.baseline_method).fit(fc, ivals) if fc.height else None
        pbase = SeasonalBaseline(key="connector_kind").fit(fp, ivals)

        def mats(rows, pooled_rows, paused, base=base, pbase=pbase):
            own = (
                base.residuals(rows, ivals, against_reference=pl.lit(True) if paused else None)
                if base
                else rows.head(0).with_columns(z0)
            )
            return model._group_matrices(
                own, pbase.residuals(pooled_rows, ivals, against_reference=pl.lit(True)),
                group_index,
            )

        fit_mats = mats(fc, fp, False)
        forest = ArrayIsolationForest(
            n_estimators=max(20, model.n_estimators // 2),
            max_samples=model.max_samples,
            random_state=model.random_state + 1000,
            n_jobs=model.n_jobs,
        ).fit([m for m, _, _ in fit_mats])
        for g, ((m, rows, f), (mp, _, fp_)) in enumerate(
            zip(mats(sc, sp, False), mats(sc, sp, True), strict=True)
        ):
            if len(m) == 0 or len(fit_mats[g][0]) == 0:
                continue
            gi = np.full(len(m), g)
            scores["forest"].append(forest.score_samples(m, gi))
            scores["family"].append(f)
            scores["forest_paused"].append(forest.score_samples(mp, gi))
            scores["family_paused"].append(fp_)
            scores["group"].append(gi)
            scores["row"].append(rows)
    n_fam = len(model.families_)
    return {
        k: np.concatenate(v) if v else np.zeros((0, n_fam) if "family" in k else 0)
        for k, v in scores.items()
    }


class _Compared(FleetModel):
    """Keeps the held-out scores of both implementations, computed on the same inputs."""

    def _cross_fit_scores(self, per_connector, features, ivals, group_index):
        # The one pass on string keys (fitting keeps the long frames' as categoricals).
        strings = tuple(map(history_module.as_strings, (per_connector, features)))
        self.inputs_ = (*strings, ivals, group_index)
        oos = super()._cross_fit_scores(per_connector, features, ivals, group_index)
        self.compared_ = (
            dict(oos),  # fitting the calibrators pops what it has used
            _one_pass_cross_fit(
                self, strings[0], with_fleet_copy(strings[1]), ivals, group_index
            ),
        )
        return oos


@pytest.fixture(scope="module")
def history() -> list[dict]:
    records, labels = simulate_fleet(8, 42, seed=21)
    normal = {lab["sync_id"] for lab in labels if lab["label"] == "normal"}
    return [r for r in records if r["sync_id"] in normal]


@pytest.mark.parametrize(
    ("chunk_rows", "min_history", "pooled_max", "n_jobs"),
    [
        (1_000_000, 30, 64, 1),  # one chunk of connectors, every connector with its own model
        (5_000, 30, 64, 1),  # a chunk per connector or two
        (5_000, 200, 64, 1),  # some connectors cold: their syncs scored by the pooled models only
        (5_000, 30, 1, 1),  # pooled models on a sample: one connector per kind, one for "*"
        (5_000, 200, 64, 2),  # parts fitted and scored two at a time in threads
    ],
)
def test_cross_fitting_in_parts_gives_the_one_pass_scores(
    history: list[dict],
    monkeypatch: pytest.MonkeyPatch,
    chunk_rows: int,
    min_history: int,
    pooled_max: int,
    n_jobs: int,
) -> None:
    monkeypatch.setattr(model_module, "_XFIT_CHUNK_ROWS", chunk_rows)
    model = _Compared(
        n_estimators=20, min_history=min_history, pooled_max_connectors=pooled_max, n_jobs=n_jobs
    ).fit(history)
    parts, one_pass = model.compared_
    assert model.groups_ and len(parts["group"]) > 0
    if min_history > 30:
        assert len(model.intervals_) > (model.intervals_["n_syncs"] >= min_history).sum() > 0
    sampled = model.inputs_[1]["_pool"].value_counts()
    assert (sampled.height > 1) == (pooled_max < len(model.intervals_))
    for key in model_module._OOS_KEYS:
        np.testing.assert_array_equal(parts[key], one_pass[key], err_msg=key)
    # The final forest, its inputs residuals a part at a time, is the one of whole frames.
    per_connector, features, ivals, group_index = model.inputs_
    whole = model._group_matrices(
        model.baseline_.residuals(per_connector, ivals),
        model.pooled_baseline_.residuals(
            with_fleet_copy(features), ivals, against_reference=pl.lit(True)
        ),
        group_index,
    )
    # The final baselines, fitted a part at a time, are those of the whole frames.
    for fitted, key, rows in (
        (model.baseline_, "connector_id", per_connector),
        (model.pooled_baseline_, "connector_kind", with_fleet_copy(features)),
    ):
        whole_fit = SeasonalBaseline(key=key).fit(rows, ivals)
        for table in ("series_", "profile_"):
            pl.testing.assert_frame_equal(
                getattr(fitted, table), getattr(whole_fit, table), check_column_order=False
            )
    forest = ArrayIsolationForest(n_estimators=20, random_state=model.random_state)
    forest.fit([m for m, _, _ in whole])
    for name, array in forest.arrays_.items():
        np.testing.assert_array_equal(model.forest_.arrays_[name], array, err_msg=name)
    for key in ("family", "family_paused"):
        dense = _dense(parts[key], len(parts["group"]), len(model.families_))
        np.testing.assert_array_equal(dense, one_pass[key], err_msg=key)
        expected = families_module.Families.of(one_pass[key])
        for field in ("rows", "cols", "values"):
            np.testing.assert_array_equal(getattr(parts[key], field), getattr(expected, field))
        # The combined statistic's family minimum, from the sparse entries in small blocks.
        monkeypatch.setattr(families_module, "_CAL_BLOCK_ROWS", 777)
        fn = lambda v, c: np.exp(-v) / (1.0 + c)  # noqa: E731
        p = np.ones_like(dense)
        p[dense > 0] = fn(dense[dense > 0], np.nonzero(dense > 0)[1])
        np.testing.assert_array_equal(parts[key].row_min(fn, len(dense)), p.min(axis=1))


@pytest.mark.parametrize("min_history, pooled_max", [(30, 64), (200, 1)])
def test_layouts_counted_per_connector_are_those_of_each_groups_rows(
    history: list[dict], min_history: int, pooled_max: int
) -> None:
    """The residual layouts, counted once per connector and measure, are those counted
    from each group's own rows: one pass's pooled rows for the kinds and "*" (sampled,
    with pooled_max 1), and connectors without a model of their own (min_history 200)."""
    model = _Compared(  # the layouts of this very history: none of it screened out
        n_estimators=20,
        min_history=min_history,
        pooled_max_connectors=pooled_max,
        screen_history=False,
    ).fit(history)
    per_connector, pooled, _, _ = model.inputs_
    syncs = history_module.history_frames(history)[0].join(
        pooled.select("connector_id", "_pool").unique(), on="connector_id"
    )

    def counted(rows: pl.DataFrame, syncs: pl.DataFrame, key: str) -> pl.DataFrame:
        n = syncs.filter(pl.col("status") != "failed").group_by(key).agg(pl.len().alias("n"))
        present = rows.group_by(key, "measure").agg(pl.col("row").n_unique().alias("k"))
        return (
            present.join(n, on=key)
            .filter(pl.col("k") >= groups_module._MIN_SERIES_SHARE * pl.col("n"))
            .sort(key, "measure")
            .with_columns(pl.int_range(pl.len()).over(key).alias("col"))
            .select(pl.col(key).alias("group"), "measure", "col")
        )

    if min_history > 30:
        assert per_connector["connector_id"].n_unique() < syncs["connector_id"].n_unique()
    expected = pl.concat(
        [
            counted(per_connector, syncs, "connector_id"),
            counted(with_fleet_copy(pooled), with_fleet_copy(syncs), "connector_kind"),
        ]
    )
    pl.testing.assert_frame_equal(model.columns_, expected)


def test_layouts_count_syncs_whatever_the_row_order(history: list[dict]) -> None:
    """Rows out of (row, measure) order, some of them three times: still syncs counted,
    not rows. A measure in 30 % of a connector's syncs stays out of its layout (its
    rows counted, 90 %, would put it in)."""
    syncs, features = history_module.history_frames(history)
    intervals = connector_intervals(syncs)
    sample = (
        groups_module.pooled_sample(intervals, 2)
        .rename({"pool": "_pool"})
        .join(intervals.select("connector_id", "connector_kind"), on="connector_id")
    )
    first = intervals["connector_id"][0]
    series = (pl.col("connector_id") == first) & (pl.col("measure") == "sync.duration_s")
    few = features.filter(series).pipe(lambda s: s.head(int(0.3 * s.height)))
    trimmed = pl.concat([features.filter(~series), few]).sort("row", "measure")
    in_order = groups_module.group_layouts(trimmed, syncs, intervals, sample)
    assert in_order.filter(pl.col("group") == first).height
    assert "sync.duration_s" not in in_order.filter(pl.col("group") == first)["measure"]
    thrice = pl.concat([trimmed, few, few]).sample(fraction=1.0, shuffle=True, seed=3)
    pl.testing.assert_frame_equal(
        groups_module.group_layouts(thrice, syncs, intervals, sample), in_order
    )


def _dense(fam, n_rows: int, n_cols: int) -> np.ndarray:
    """Sparse family maxima as the dense syncs x families matrix (0: no residual)."""
    out = np.zeros((n_rows, n_cols))
    out[fam.rows, fam.cols] = fam.values
    return out


def test_combined_statistic_in_blocks_of_entries_is_that_of_one_pass(
    history: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _Compared(n_estimators=20).fit(history)
    oos = model.compared_[0]
    monkeypatch.setattr(families_module, "_CAL_BLOCK_ROWS", 999)
    for mode in model_module._MODES:
        fam, grp = oos["family" + mode], oos["group"]
        dense = _dense(fam, len(grp), len(model.families_))
        in_blocks = model._combined_statistic(oos["forest" + mode], fam, grp, mode)
        monkeypatch.setattr(families_module, "_CAL_BLOCK_ROWS", len(fam.values) + 1)
        from_dense = model._combined_statistic(
            oos["forest" + mode], families_module.Families.of(dense), grp, mode
        )
        monkeypatch.setattr(families_module, "_CAL_BLOCK_ROWS", 999)
        np.testing.assert_array_equal(in_blocks, from_dense)


def test_calibrators_fitted_in_blocks_are_those_fitted_at_once(
    history: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    at_once = FleetModel(n_estimators=20).fit(history).to_arrays()
    monkeypatch.setattr(families_module, "_CAL_BLOCK_ROWS", 1_000)
    blocks = FleetModel(n_estimators=20).fit(history).to_arrays()
    calibrators = [name for name in at_once[0] if name.startswith("calibration/")]
    assert len(calibrators) >= 6
    for name in calibrators:
        np.testing.assert_array_equal(at_once[0][name], blocks[0][name], err_msg=name)


def test_pooled_sample_is_capped_per_group_nested_and_stable() -> None:
    kinds = ["okta"] * 5 + ["vault"] * 2 + ["slack"] * 4
    intervals = pl.DataFrame(
        {"connector_id": [f"{k}-{i}" for i, k in enumerate(kinds)], "connector_kind": kinds}
    )
    sample = groups_module.pooled_sample(intervals, 3).join(intervals, on="connector_id")
    per_kind = sample.filter(pl.col("pool") >= 1).group_by("connector_kind").len()
    assert dict(per_kind.iter_rows()) == {"okta": 3, "vault": 2, "slack": 3}
    assert (sample["pool"] == 2).sum() == 3  # the fleet's, within its kinds' (pool 2 >= 1)
    shuffled = groups_module.pooled_sample(intervals.sample(fraction=1.0, shuffle=True, seed=4), 3)
    pl.testing.assert_frame_equal(
        sample.select("connector_id", "pool").sort("connector_id"),
        shuffled.sort("connector_id"),
    )
    for n_max in (None, 11):  # no cap, or a cap the fleet does not pass: every connector
        assert (groups_module.pooled_sample(intervals, n_max)["pool"] == 2).all()


def test_cold_start_is_scored_by_sampled_pooled_models(history: list[dict]) -> None:
    model = FleetModel(n_estimators=20, pooled_max_connectors=1).fit(history)
    # Each pooled model ("*" too) learned a series from one connector's syncs at most.
    assert model.pooled_baseline_.series_["n"].max() <= model.intervals_["n_syncs"].max()
    last = history[-1]
    new = [
        {**last, "connector_id": "brand-new-1", "sync_id": "brand-new-1:1"},
        {**last, "connector_id": "brand-new-2", "sync_id": "brand-new-2:1",
         "connector_kind": "never-seen-kind"},
    ]
    results = model.score(new).results
    assert results["cold_start"].all()
    p = results["tail_probability"].to_numpy()
    assert np.isfinite(p).all() and ((p > 0) & (p <= 1)).all()


def test_heavy_items_run_one_at_a_time_and_results_keep_their_order() -> None:
    """Cross-fitting's pooled groups go one at a time beside the chunks of connectors
    (its peak of memory was two at once); results stay in the items' order, and an
    error in a thread is raised in the caller's."""
    import threading
    import time

    lock = threading.Lock()
    running = {"heavy": 0, "most_heavy": 0, "both": 0, "now": 0}
    heavy = [i % 3 != 1 for i in range(12)]

    def work(i: int) -> int:
        with lock:
            running["now"] += 1
            running["heavy"] += heavy[i]
            running["most_heavy"] = max(running["most_heavy"], running["heavy"])
            running["both"] = max(running["both"], running["now"])
        time.sleep(0.01 if heavy[i] else 0.002)
        with lock:
            running["now"] -= 1
            running["heavy"] -= heavy[i]
        return i * i

    assert in_threads(work, list(range(12)), 2, heavy) == [
        i * i for i in range(12)
    ]
    assert running["most_heavy"] == 1 and running["both"] == 2

    def fails(i: int) -> int:
        if i == 5:
            raise RuntimeError("part 5")
        return i

    with pytest.raises(RuntimeError, match="part 5"):
        in_threads(fails, list(range(12)), 2, heavy)
