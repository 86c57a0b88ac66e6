"""The detector on a real simulated fleet: fit, score in time order, explain, persist."""

from __future__ import annotations

import copy
import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import polars.testing
import pytest
from conftest import make_record, make_records, with_fleet_copy
from sklearn.ensemble import IsolationForest

from detector.baseline import SeasonalBaseline
from detector.calibration import TailCalibrator
from detector.errors import UsageError
from detector.events.native import event_id, validate
from detector.events.scored import scored_events
from detector.explain import reasons_frame
from detector.families import Families, family_weights, tail_families, tail_family_expr
from detector.features import build_features
from detector.forest import ArrayIsolationForest, average_path_length
from detector.frame import (
    ACCEPTED_MEASURE,
    MAX_UNCHANGED_RUN,
    REPEAT_MEASURES,
    RESOURCE_STATS,
    UNCHANGED_MEASURE,
    UNCHANGED_WITH_METRICS_MEASURE,
    UNEXPLAINED_STAT,
    in_sync_order,
    is_stat,
    measure_kind,
    measures_frame,
    to_struct_frame,
)
from detector.history import connector_parts, prepare
from detector.model import FleetModel, _review_only
from detector.modelfile import load_model_dir, save_model_dir
from detector.policy import Policy, load_policy
from detector.review import OUTLYING_Z, STORM_Z, review_only
from detector.rules import MAX_PARTIAL_RATE
from training.simulator import simulate_fleet

CUT = "2026-06-29"


@pytest.fixture(scope="module")
def fleet():
    records, labels = simulate_fleet(8, 42, seed=21)
    label = {lab["sync_id"]: lab["label"] for lab in labels}
    history = [r for r in records if r["started_at"] < CUT]
    test = [r for r in records if r["started_at"] >= CUT and label[r["sync_id"]] == "normal"]
    clean = [r for r in history if label[r["sync_id"]] == "normal"]
    model = FleetModel(n_estimators=30).fit(clean)
    state, facts = model.initial_state(history)
    return model, history, test, state, facts


def _last_normal(fleet, connector_prefix: str) -> dict:
    _, history, test, _, _ = fleet
    return next(r for r in test if r["connector_id"].startswith(connector_prefix))


def _score_one(fleet, record):
    model, _, _, state, facts = fleet
    return model.score([record], state=state, facts=facts)


def test_measure_kind_expression_matches_function():
    names = [
        "user.count",
        "user.removed",
        "user.null_rate.email",
        "api.errors",
        "api.latency_p95_ms",
        "metric.mfa",
        "sync.duration_s",
        "group.duplicates",
    ]
    record = {
        "sync_id": "a",
        "connector_id": "c",
        "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:01:00Z",
        "status": "succeeded",
        "resources": {
            "user": {"count": 3, "removed": 1, "null_rates": {"email": 0.1}},
            "group": {"count": 2, "duplicates": 0},
        },
        "api": {"errors": 0, "latency_p95_ms": 3.0},
        "metrics": {"mfa": 0.9},
    }
    frame = measures_frame(to_struct_frame([record]))
    kinds = dict(zip(frame["measure"], frame["kind"], strict=True))
    for name in names:
        if name in kinds:
            assert kinds[name] == measure_kind(name), name
    assert kinds["user.null_rate.email"] == "rate"
    assert kinds["user.removed"] == "events"


def _auc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """Probability that an anomaly scores above a normal point (ties count half)."""
    diff = anomalous[:, None] - normal[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_array_forest_isolates_anomalies_as_well_as_scikit_learn(seed):
    # Correlated body, a few wide and constant columns, discrete values: what residual
    # vectors look like. Anomalies are off the correlation or far out on one feature.
    rng = np.random.default_rng(seed)
    cov = np.array([[1.0, 0.8, 0.0], [0.8, 1.0, 0.0], [0.0, 0.0, 1.0]])
    body = rng.multivariate_normal(np.zeros(3), cov, size=1500)
    x = np.column_stack([body, np.round(rng.normal(size=1500)), np.zeros(1500)])
    normal = np.column_stack(
        [rng.multivariate_normal(np.zeros(3), cov, size=300), np.round(rng.normal(size=300)),
         np.zeros(300)]
    )
    anomalous = np.column_stack(
        [rng.normal(size=(300, 3)) * [2.0, 2.0, 1.0], np.round(rng.normal(size=300)),
         np.zeros(300)]
    )
    anomalous[:150, 0] = -anomalous[:150, 1]  # off the correlation, not far out
    anomalous[150:, 2] += rng.choice([-4.0, 4.0], size=150)
    probe = np.vstack([normal, anomalous])
    ours = ArrayIsolationForest(n_estimators=100, random_state=seed).fit([x])
    ref = IsolationForest(n_estimators=100, max_samples=256, random_state=seed).fit(x)
    s_ours = ours.score_samples(probe, np.zeros(len(probe), int))
    s_ref = -ref.score_samples(probe)
    auc_ours, auc_ref = _auc(s_ours[:300], s_ours[300:]), _auc(s_ref[:300], s_ref[300:])
    assert auc_ref > 0.75  # the task is neither trivial nor hopeless
    assert auc_ours >= auc_ref - 0.02, (auc_ours, auc_ref)
    # Same algorithm, so the same score scale: the average scores agree closely.
    assert abs(s_ours.mean() - s_ref.mean()) < 0.01
    assert np.corrcoef(s_ours, s_ref)[0, 1] > 0.95


def test_array_forest_trees_follow_the_isolation_forest_rules():
    rng = np.random.default_rng(0)
    small = rng.normal(size=(40, 2))  # fewer rows than max_samples: every tree sees all 40
    constant = np.column_stack([rng.normal(size=600), np.full(600, 3.0)])
    forest = ArrayIsolationForest(n_estimators=25, max_samples=64, random_state=1)
    a = forest.fit([small, constant, np.zeros((1, 2))]).arrays_
    assert a["roots"].shape == (3, 25)
    internal = a["feature"] >= 0
    assert np.all((a["left"] >= 0) == internal) and np.all((a["right"] >= 0) == internal)
    # A column constant in a group never splits it; leaves hold depth + c(n).
    roots = a["roots"][1]
    nodes, seen = list(roots), set()
    while nodes:
        n = nodes.pop()
        seen.add(n)
        if internal[n]:
            assert a["feature"][n] == 0
            nodes += [a["left"][n], a["right"][n]]
    leaves = np.array(sorted(n for n in seen if not internal[n]))
    ceiling = 6 + average_path_length(np.array([64.0]))[0]  # depth limit + c(sample)
    assert np.all(a["value"][leaves] >= 1.0) and np.all(a["value"][leaves] <= ceiling)
    np.testing.assert_allclose(a["norm"], average_path_length(np.array([40.0, 64.0, 2.0])))
    assert int(a["max_depth"][0]) == 7  # ceil(log2(64)) + 1
    # Every tree of the 40-row group puts each of its 40 rows in exactly one leaf.
    leaf = forest.score_samples(small, np.zeros(40, int))
    assert np.all((leaf > 0) & (leaf <= 1))


def test_array_forest_walk_follows_the_stored_trees_node_by_node():
    """The renumbered walk scores exactly what the stored arrays say, for several groups
    and for NaN inputs (which go right, as ``x <= threshold`` is false)."""
    rng = np.random.default_rng(5)
    forest = ArrayIsolationForest(n_estimators=15, random_state=2).fit(
        [rng.normal(size=(300, 4)), rng.normal(size=(50, 4)) * 4])
    a = forest.arrays_
    probe = rng.normal(size=(40, 4)) * 2
    probe[::3, 1] = np.nan
    groups = np.arange(40) % 2

    def path(x_row, node):  # the stored tree, one node at a time
        while a["feature"][node] >= 0:
            node = a["left"][node] if x_row[a["feature"][node]] <= a["threshold"][node] \
                else a["right"][node]
        return a["value"][node]

    expected = [2.0 ** (-np.mean([path(np.float32(x), r) for r in a["roots"][g]])
                        / a["norm"][g]) for x, g in zip(probe, groups, strict=True)]
    np.testing.assert_allclose(forest.score_samples(probe, groups), expected, rtol=1e-14)


def test_array_forest_scores_any_node_numbering_alike():
    """Model files from depth-first growers (scikit-learn) number nodes differently: the
    walk renumbers them and scores exactly the same."""
    rng = np.random.default_rng(8)
    forest = ArrayIsolationForest(n_estimators=12, random_state=1).fit(
        [rng.normal(size=(200, 3)), rng.normal(size=(90, 3))])
    a = forest.arrays_
    perm = rng.permutation(len(a["feature"]))  # new id of each old node
    inverse = np.argsort(perm)
    moved = dict(a)
    for key in ("feature", "threshold", "value"):
        moved[key] = a[key][inverse]
    for key in ("left", "right"):
        child = a[key][inverse]
        moved[key] = np.where(child >= 0, perm[np.maximum(child, 0)], -1)
    moved["roots"] = perm[a["roots"]]
    shuffled = ArrayIsolationForest.from_arrays(moved)
    probe = rng.normal(size=(60, 3)) * 2
    probe[::4, 0] = np.nan
    groups = np.arange(60) % 2
    assert np.array_equal(shuffled.score_samples(probe, groups),
                          forest.score_samples(probe, groups))


def test_calibrator_far_tail_within_factor_two():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(4), 3000)
    scores = rng.standard_t(df=5, size=groups.size) * (1 + groups)
    cal = TailCalibrator().fit(scores, groups, n_groups=4)
    fresh = rng.standard_t(df=5, size=(4, 200_000)) * (1 + np.arange(4))[:, None]
    for alpha in (1e-2, 1e-3):
        cut = cal.cutoff(np.full(4, alpha), np.arange(4))
        realised = (fresh > cut[:, None]).mean()
        assert 0.5 * alpha <= realised <= 2 * alpha, (alpha, realised)


def test_normal_sync_proceeds_with_score_and_cutoff(fleet):
    record = _last_normal(fleet, "okta")
    result = _score_one(fleet, record).results.row(0, named=True)
    assert result["decision"] == "proceed"
    assert result["score"] < result["cutoff"]
    assert 0.0 <= result["tail_probability"] <= 1.0


def test_partial_dataset_pauses_with_count_reason(fleet):
    record = copy.deepcopy(_last_normal(fleet, "okta"))
    user = record["resources"]["user"]
    lost = user["count"] // 2
    user["count"] -= lost
    user["removed"] = user.get("removed", 0) + lost
    out = _score_one(fleet, record)
    assert out.results["decision"][0] == "pause"
    metrics = out.reasons["metric"].to_list()
    assert metrics and any(m.startswith("user.") for m in metrics[:2]), metrics
    assert len(metrics) == len(set(metrics)), metrics  # each metric named once
    top = out.reasons.row(0, named=True)
    assert top["expected"] is not None and top["range_lo"] <= top["expected"] <= top["range_hi"]
    assert "expected" in top["description"]


def test_schema_drift_pauses_and_names_the_field(fleet):
    record = copy.deepcopy(_last_normal(fleet, "okta"))
    record["resources"]["user"]["null_rates"]["email"] = 0.97
    out = _score_one(fleet, record)
    assert out.results["decision"][0] == "pause"
    assert "user.null_rate.email" in out.reasons["metric"].to_list()


def test_a_count_its_own_churn_does_not_explain_pauses_and_says_so(fleet):
    """A retry loop that doubles some records on a connector that reports no duplicate
    count: the count rises with nothing added. The churn the connector itself reports
    does not explain the change, and the reasons say by how many records."""
    model, _, test, state, facts = fleet
    okta = [copy.deepcopy(r) for r in test if r["connector_id"].startswith("okta")][:4]
    for record in okta:
        del record["resources"]["user"]["duplicates"]
    user = okta[3]["resources"]["user"]
    extra = user["count"] // 10
    user["count"] += extra
    out = model.score(okta, state=state, facts=facts)
    assert out.results["decision"].to_list()[3] == "pause"
    reason = out.reasons.filter(pl.col("metric") == "user.unexplained").row(0, named=True)
    assert reason["sync_id"] == okta[3]["sync_id"] and reason["observed"] == extra
    assert out.reasons.filter(pl.col("metric") == "user.unexplained").height == 1


def test_duplicates_from_retry_loop_pause(fleet):
    record = copy.deepcopy(_last_normal(fleet, "okta"))
    user = record["resources"]["user"]
    user["duplicates"] = user["count"] // 5
    user["count"] += user["duplicates"]
    assert _score_one(fleet, record).results["decision"][0] == "pause"


@pytest.mark.parametrize(
    ("mutate", "rule"),
    [
        (lambda r: r.update(status="failed", error_class="timeout", resources={}), "sync_failed"),
        (lambda r: r.update(error_class="auth", status="failed"), "auth_failure"),
        (lambda r: r["resources"]["user"].update(count=0), "count_to_zero"),
        (lambda r: r["resources"]["user"]["null_rates"].update(email=1.0), "field_entirely_null"),
        (lambda r: r["resources"].pop("group"), "resource_missing"),
    ],
)
def test_rules_always_win(fleet, mutate, rule):
    record = copy.deepcopy(_last_normal(fleet, "okta"))
    mutate(record)
    out = _score_one(fleet, record)
    assert out.results["decision"][0] == "pause"
    assert rule in out.rule_hits["rule"].to_list()


def test_unknown_connector_is_scored_cold(fleet):
    record = copy.deepcopy(_last_normal(fleet, "okta"))
    record["connector_id"] = "okta-brand-new"
    record["sync_id"] = "okta-brand-new:1"
    result = _score_one(fleet, record).results.row(0, named=True)
    assert result["cold_start"] is True
    assert result["decision"] in ("proceed", "review", "pause")


def test_batch_equals_one_at_a_time(fleet):
    model, _, test, state, facts = fleet
    batch = test[:60]
    # A fault in the middle, so the paused mode is exercised too.
    batch = copy.deepcopy(batch)
    victim = next(i for i, r in enumerate(batch[10:], 10) if r["connector_id"].startswith("okta"))
    batch[victim]["resources"]["user"]["count"] //= 3
    whole = model.score(batch, state=state, facts=facts).results
    single = _scored_one_at_a_time(
        model, sorted(batch, key=lambda r: r["started_at"]), state, facts
    )
    joined = whole.join(single, on="sync_id", suffix="_single")
    assert joined.height == len(batch)
    assert (joined["decision"] == joined["decision_single"]).all()
    np.testing.assert_allclose(joined["score"], joined["score_single"], rtol=1e-9, atol=1e-9)
    assert (joined["connector_paused"] == joined["connector_paused_single"]).all()
    assert whole.filter(pl.col("decision") == "pause").height >= 1


def test_batch_equals_each_connector_scored_alone(fleet):
    """Connectors are judged independently: the second (paused-mode) pass re-scores only the
    connectors that got a new pause, so every frame of a mixed batch must equal what each
    connector's syncs give on their own, paused ones and untouched ones alike."""
    model, _, test, state, facts = fleet
    batch = copy.deepcopy(test[:120])
    hit = set()
    for record in batch[20:]:  # faults in two connectors, not the others
        if record["connector_id"].startswith(("okta", "slack")) and record["connector_id"] \
                not in hit and "user" in record["resources"]:
            record["resources"]["user"]["count"] //= 3
            hit.add(record["connector_id"])
    whole = model.score(batch, state=state, facts=facts)
    assert whole.results.filter(pl.col("decision") == "pause")["connector_id"].n_unique() >= 2
    assert whole.results["connector_id"].n_unique() > len(hit)
    parts = [(model.score([r for r in batch if r["connector_id"] == cid], state=state,
                          facts=facts), cid)
             for cid in whole.results["connector_id"].unique(maintain_order=True)]
    batch_ids = [r["sync_id"] for r in batch]
    for name, keys in (("results", ["sync_id"]), ("reasons", ["sync_id", "metric"]),
                       ("rule_hits", ["sync_id", "rule", "detail"]),
                       ("state", ["connector_id", "measure"]), ("facts", ["connector_id"])):
        # Keyed rows once: a connector alone also returns the others' untouched state, and
        # a reason can be listed twice (the events keep it once).
        got = getattr(whole, name).unique(keys, keep="first", maintain_order=True)
        alone = pl.concat([getattr(p, name).filter(pl.col(keys[0]).is_in(
            batch_ids if keys[0] == "sync_id" else [cid])) for p, cid in parts],
            how="diagonal_relaxed").select(got.columns)
        alone = alone.unique(keys, keep="first", maintain_order=True)
        pl.testing.assert_frame_equal(got.sort(keys), alone.sort(keys))


def test_resource_stats_are_told_apart_by_the_names_they_are_built_with():
    """Each resource stat's measure rows, and the derived unexplained counts, are found by
    ``is_stat`` exactly: the names the frame and the features build end as it expects,
    and no other measure (a null rate, an API figure, another stat) passes for one."""
    stats = (*RESOURCE_STATS, UNEXPLAINED_STAT)
    _, features = build_features(*prepare(make_records(2, 3, seed=1)))
    measures = features["measure"].unique()
    for stat in stats:
        found = features.filter(is_stat(stat))["measure"].unique().sort().to_list()
        # The fixture's groups report no duplicates.
        assert found == [f"group.{stat}", f"user.{stat}"][stat == "duplicates" :], stat
        last = measures.str.split(".").list.last()
        assert measures.filter(last == stat).sort().to_list() == found, stat
    others = features.filter(~pl.any_horizontal(is_stat(s) for s in stats))["measure"]
    expected = {"user.null_rate.email", "api.errors", "metric.mfa_enrolled_ratio"}
    assert expected | {UNCHANGED_MEASURE} <= set(others)
    typed = others.filter(others.str.starts_with("user.") | others.str.starts_with("group."))
    assert typed.str.contains(".null_rate.", literal=True).all()


def test_connector_parts_are_runs_of_whole_connectors_in_order():
    """A connector is never split; parts follow connector order and a new one opens once
    the syncs before a connector reach the next multiple of ``rows``."""
    ids = ["b"] * 5 + ["a"] * 3 + ["d"] * 9 + ["c"] * 2
    parts = connector_parts(pl.DataFrame({"connector_id": ids}), rows=6)
    assert parts["connector_id"].to_list() == ["a", "b", "c", "d"]
    assert parts["start"].to_list() == [0, 3, 8, 10]
    assert parts["part"].to_list() == [0, 0, 1, 1]
    assert connector_parts(pl.DataFrame({"connector_id": ids}), rows=3)["part"].to_list() == [
        0, 1, 2, 3
    ]


def test_features_do_not_depend_on_input_order(fleet):
    """References come from each series' previous sync in time, however the batch is
    ordered (the window relies on a stable sort by position within the connector)."""
    _, history, test, state, facts = fleet
    batch = test[:80]
    shuffled = [batch[i] for i in np.random.default_rng(4).permutation(len(batch))]
    frames = []
    for records in (batch, shuffled):
        syncs, measures = prepare(records)
        syncs, features = build_features(syncs, measures, state=state, connector_facts=facts)
        ids = syncs.select("row", "sync_id")
        frames.append(features.join(ids, on="row").drop("row").sort("sync_id", "measure"))
    pl.testing.assert_frame_equal(frames[0], frames[1])
    # Every reported measure has its previous sync's value (measures derived from the
    # sync as a whole, the repeat run and unexplained counts, have no reference).
    derived = (pl.col("measure") == UNCHANGED_MEASURE) | is_stat(UNEXPLAINED_STAT)
    reported = frames[0].filter(~derived)
    assert reported["reference"].null_count() < reported.height // 10


def test_measures_frame_is_the_same_unpivoted_at_once_or_kind_by_kind(fleet, monkeypatch):
    import detector.frame as frame

    _, history, _, _, _ = fleet
    wide = to_struct_frame(history[:400])
    assert wide["connector_kind"].n_unique() > 2
    at_once = measures_frame(wide)
    monkeypatch.setattr(frame, "_ONE_UNPIVOT_CELLS", 0)
    pl.testing.assert_frame_equal(measures_frame(wide), at_once)
    assert at_once["measure"].n_unique() > 20


def test_history_frames_in_parts_of_connectors_are_those_of_one_pass(fleet, monkeypatch):
    import detector.history as history_module

    _, history, _, _, _ = fleet
    # A store history frame: the record texts beside their columns, kinds interleaved.
    stored = pl.DataFrame(
        {
            "connector_id": [r["connector_id"] for r in history],
            "connector_kind": [r.get("connector_kind") for r in history],
            "record": [json.dumps(r) for r in history],
        }
    )
    by_connector = stored.sort("connector_id", maintain_order=True)  # as the store lists them
    assert by_connector["connector_kind"].n_unique() > 2
    monkeypatch.setattr(history_module, "HISTORY_CHUNK_SYNCS", stored.height // 5)
    # One pass over the syncs in sync order; the interleaved frame takes that one pass.
    one_pass = build_features(*prepare(in_sync_order(to_struct_frame(stored))))
    for frame, n_jobs in ((by_connector, 1), (by_connector, 2), (stored, 1)):
        got_frames = history_module.history_frames(frame, n_jobs)
        for got, want in zip(got_frames, one_pass, strict=True):
            pl.testing.assert_frame_equal(got, want)
    # Compact (as fitting keeps them): the features' string keys as categoricals, whose
    # strings are those of one pass.
    syncs, features = history_module.history_frames(by_connector, 2, compact=True)
    pl.testing.assert_frame_equal(syncs, one_pass[0])
    assert features.schema["measure"] == pl.Categorical
    assert features.estimated_size() < 0.8 * one_pass[1].estimated_size()
    pl.testing.assert_frame_equal(history_module.as_strings(features), one_pass[1])


def test_a_fitted_model_does_not_depend_on_the_order_of_its_history(fleet):
    """The same syncs in another order give the same model, bit for bit (row numbers
    pick the forests' samples; float sums round by order)."""
    _, history, _, _, _ = fleet
    shuffled = list(history)
    np.random.default_rng(3).shuffle(shuffled)
    a, config_a = FleetModel(n_estimators=10, n_jobs=2).fit(history).to_arrays()
    b, config_b = FleetModel(n_estimators=10).fit(shuffled).to_arrays()
    assert config_a == config_b
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_scored_events_are_the_frame_rows_and_their_stored_text(fleet):
    """Batch-built events: each dict is its frame row, its text parses back to it, its id
    is the documented UUIDv5, and every shape meets the native schema."""
    model, _, test, state, facts = fleet
    batch = copy.deepcopy(test[:60])
    victim = next(r for r in batch[10:] if "user" in r["resources"])
    victim["resources"]["user"]["count"] //= 3  # a pause with reasons
    batch[20]["status"] = "failed"  # a rule hit
    out = model.score(batch, state=state, facts=facts)
    events = scored_events(out.results, out.reasons, out.rule_hits,
                           scored_at="2026-07-01T00:00:00.000Z", model_version="7")
    assert events.events == events.frame.to_dicts()
    assert [json.loads(t) for t in events.texts] == events.events
    assert [list(e) for e in events.events] == [events.frame.columns] * len(batch)
    assert [e["event_id"] for e in events.events] == [
        event_id("sync_scored", e["connector_id"], e["sync_id"]) for e in events.events]
    assert any(e["reasons"] for e in events.events)
    assert any(e["rule_hits"] for e in events.events)
    for event in events.events:
        validate(event)


def test_equal_distances_rank_by_metric_name():
    resid = pl.DataFrame({
        "row": [0, 0, 0], "measure": ["b.count", "c.count", "a.count"], "z": [-4.0, 9.0, 9.0],
        "value": [1.0] * 3, "expected_raw": [2.0] * 3, "range_lo": [1.5] * 3,
        "range_hi": [2.5] * 3,
    })
    assert reasons_frame(resid)["metric"].to_list() == ["a.count", "c.count", "b.count"]


def test_reasons_read_small_values_to_four_significant_digits():
    resid = pl.DataFrame({
        "row": [0, 0], "measure": ["user.null_rate.email", "user.count"], "z": [5.5, -4.0],
        "value": [1e-5, 18_034.4], "expected_raw": [0.0, 18_911.0], "range_lo": [0.0, 18_800.0],
        "range_hi": [2.345678e-7, 19_022.0],
    })
    assert reasons_frame(resid)["description"].to_list() == [
        "user.null_rate.email is 0.00001 (expected 0.0, usual range 0.0 to 2.346e-7): "
        "5.5 scales above expected",
        "user.count is 18034 (expected 18911, usual range 18800 to 19022): 4.0 scales below "
        "expected",
    ]


def test_one_fault_one_pause_for_a_persistent_level_shift(fleet):
    model, _, test, state, facts = fleet
    okta = [copy.deepcopy(r) for r in test if r["connector_id"].startswith("okta")][:12]
    for record in okta[2:]:  # a level shift from the third sync on that nobody fixes
        record["resources"]["user"]["null_rates"]["manager"] = 0.6
    out = model.score(okta, state=state, facts=facts).results
    decisions = out["decision"].to_list()
    assert decisions[2] == "pause"
    assert decisions[4:].count("pause") <= 1
    assert out["connector_paused"].to_list()[3:] == [True] * (len(okta) - 3)


def _resumed(state: pl.DataFrame, facts: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The state and facts after ``syncguard resume`` (see store.state.accept_current): the
    latest values are the reference, the connector is marked accepted and no longer
    paused."""
    accepted = facts.select(
        "connector_id",
        pl.lit(ACCEPTED_MEASURE).alias("measure"),
        pl.lit(1.0).alias("value"),
        pl.lit(1.0).alias("ref_value"),
    )
    state = state.filter(pl.col("measure") != ACCEPTED_MEASURE)
    return (
        pl.concat([state.with_columns(pl.col("value").alias("ref_value")), accepted]),
        facts.with_columns(pl.lit(False).alias("state_paused")),
    )


def test_a_level_shift_a_person_resumed_does_not_pause_again(fleet):
    """A bulk change drops a third of the users for good: the first sync pauses; a person
    resumes it (the new level accepted); the syncs after it proceed, one at a time."""
    model, _, test, state, facts = fleet
    okta = [copy.deepcopy(r) for r in test if r["connector_id"].startswith("okta")][:10]
    for record in okta[2:]:
        record["resources"]["user"]["count"] = record["resources"]["user"]["count"] * 2 // 3
    decisions = []
    for record in okta:
        out = model.score([record], state=state, facts=facts)
        state, facts = out.state, out.facts
        decisions.append(out.results["decision"].item())
        if decisions[-1] == "pause":
            state, facts = _resumed(state, facts)
    assert decisions[2] == "pause"
    assert decisions[3:].count("pause") == 0


@pytest.mark.parametrize(
    "shift",
    [
        lambda r: r["resources"]["user"]["null_rates"].update(manager=0.6),
        lambda r: r["resources"]["user"]["null_rates"].update(email=1.0),
        lambda r: r["api"].update(latency_p50_ms=r["api"]["latency_p50_ms"] * 5),
    ],
    ids=["null-rate", "field-all-null", "latency"],
)
def test_any_shift_a_person_resumed_does_not_pause_again(fleet, shift):
    """Not counts alone: a null rate, a field gone all null, latency. After the resume the
    connector is judged as a paused one is (against the sync before as well as its level)
    but not held: its syncs proceed and say it is not paused."""
    model, _, test, state, facts = fleet
    okta = [copy.deepcopy(r) for r in test if r["connector_id"].startswith("okta")][:10]
    for record in okta[2:]:
        shift(record)
    decisions, held = [], []
    for record in okta:
        out = model.score([record], state=state, facts=facts)
        state, facts = out.state, out.facts
        decisions.append(out.results["decision"].item())
        held.append(out.results["connector_paused"].item())
        if decisions[-1] == "pause":
            state, facts = _resumed(state, facts)
    first = decisions.index("pause") if "pause" in decisions else None
    assert first in (2, 3)
    assert decisions[first + 1 :].count("pause") == 0
    assert held[first + 1 :] == [False] * (len(okta) - first - 1)


def test_a_resource_type_dropped_for_good_is_missing_once(fleet):
    """A connector stops reporting its groups for good. The first sync without them is a
    resource_missing pause; the later ones are not, whether the connector stays paused
    (judged against the sync before, as a batch) or a person resumes it (its reference
    then lacks the groups). Groups coming back and going again is missing again."""
    model, _, test, state, facts = fleet
    okta = [copy.deepcopy(r) for r in test if r["connector_id"].startswith("okta")][:10]
    for record in okta[2:8]:
        record["resources"].pop("group")
    missing = [okta[2]["sync_id"], okta[8 + 1]["sync_id"]]
    okta[9]["resources"].pop("group")

    out = model.score(okta, state=state, facts=facts)
    hits = out.rule_hits.filter(pl.col("rule") == "resource_missing")["sync_id"].to_list()
    assert hits == missing
    assert "sync.resource_types" not in model.columns_["measure"].to_list()

    paused = []
    for record in okta:
        one = model.score([record], state=state, facts=facts)
        state, facts = one.state, one.facts
        if one.results["decision"].item() == "pause":
            paused.append(record["sync_id"])
            state, facts = _resumed(state, facts)
    assert paused == missing


def test_a_lone_custom_metric_pauses_on_a_spike_and_once_on_a_level_shift():
    """A single series, as a public benchmark would feed one: daily seasonality, noise
    and a slow trend are normal; a spike and a later level shift are each paused once."""
    hours = np.arange(24 * 120)
    values = (
        50.0
        + 10.0 * np.sin(2 * np.pi * hours / 24)
        + np.random.default_rng(0).normal(0.0, 2.0, len(hours))
        + 0.002 * hours
    )
    spike, shift = 24 * 80 + 5, 24 * 100
    values[spike] += 30.0
    values[shift:] += 25.0
    # One connector reporting a steady resource and the series as a custom metric.
    records = [
        make_record("kpi", i, kind="custom", api=..., metrics={"value": float(v)},
                    resources={"item": {"count": 1000, "added": 0, "removed": 0}})
        for i, v in enumerate(values)
    ]
    history, test = records[: 24 * 60], records[24 * 60 :]
    model = FleetModel(n_estimators=30).fit(history)
    state, facts = model.initial_state(history)
    out = model.score(test, state=state, facts=facts).results
    paused = out.filter(pl.col("decision") != "proceed")["sync_id"].to_list()
    assert paused == [f"kpi:{spike}", f"kpi:{shift}"]
    # Judged while paused from the spike on: the shift stood out against the sync before.
    assert out["connector_paused"].to_list()[shift - 24 * 60]


def test_a_paused_connector_is_not_paused_again_by_a_performance_shift_that_persists(fleet):
    """After a pause, a measure judged against its learned level (here API requests and
    latency, dropped for good when a fault took data away) must not pause every later sync:
    while paused it must be off both its level and the sync just before. A second,
    different fault still pauses."""
    model, _, test, state, facts = fleet
    okta = [copy.deepcopy(r) for r in test if r["connector_id"].startswith("okta")][:14]
    okta[2]["resources"]["user"]["count"] //= 3  # the fault that opens the pause
    for record in okta[2:]:  # ... and a drop in API work that stays
        record["api"]["requests"] = max(1, record["api"]["requests"] // 4)
        record["api"]["latency_p50_ms"] /= 4
        record["api"]["latency_p95_ms"] /= 4
    okta[10]["resources"]["user"]["null_rates"]["manager"] = 0.9  # a second, different fault
    out = model.score(okta, state=state, facts=facts).results
    decisions = out["decision"].to_list()
    assert decisions[2] == "pause"
    assert decisions[10] == "pause"
    # Sync 3 brings the users back and sync 11 the managers: both may pause (the data
    # moving back is a change too); no other sync may.
    assert [d for i, d in enumerate(decisions) if i not in (2, 3, 10, 11)].count("pause") == 0


def _api_trouble(record: dict, failed_calls: int, latency_factor: float, extra_s: int) -> dict:
    """``record`` with ``failed_calls`` errors retried, p95 latency x3, p50 latency x
    ``latency_factor`` and the sync ``extra_s`` seconds longer; its data untouched."""
    record = copy.deepcopy(record)
    api = record["api"]
    for key in ("errors", "retries", "requests"):
        api[key] += failed_calls
    api["latency_p95_ms"] *= 3
    api["latency_p50_ms"] *= latency_factor
    finished = datetime.fromisoformat(record["finished_at"].replace("Z", "+00:00"))
    record["finished_at"] = (finished + timedelta(seconds=extra_s)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return record


@pytest.mark.parametrize(("connector", "failed_calls"), [("aws-iam", 10), ("github", 10)])
def test_retried_api_errors_with_data_in_line_are_a_review_an_unstable_api_a_pause(
    fleet, connector, failed_calls
):
    """A blip (some calls failed and were retried, the sync took longer, typical latency
    and every data figure as usual) breaches the cutoff but asks for a look: review, no
    hold. The same failures with the typical latency up eight-fold are an unstable API,
    and thirty failed calls where the connector never fails are a retry storm: pause.
    And a blip does not excuse lost data. (``failed_calls``: as many as keep the retries
    short of a storm on this connector while the sync breaches; both are asserted.)"""
    normal = _last_normal(fleet, connector)
    blip = _score_one(fleet, _api_trouble(normal, failed_calls, 1.0, 100))
    row = blip.results.row(0, named=True)
    assert row["score"] >= row["cutoff"]
    assert row["decision"] == "review" and row["severity"] == "low"
    assert blip.reasons.filter(pl.col("metric") == "api.retries")["distance"][0] < STORM_Z
    unstable = _score_one(fleet, _api_trouble(normal, failed_calls, 8.0, 100)).results
    assert unstable["decision"][0] == "pause"
    storm = _score_one(fleet, _api_trouble(normal, 30, 1.0, 100))
    assert storm.results["decision"][0] == "pause"
    assert storm.reasons.filter(pl.col("metric") == "api.retries")["distance"][0] >= STORM_Z
    lossy = _api_trouble(normal, failed_calls, 1.0, 100)
    first_type = next(iter(lossy["resources"].values()))
    first_type["removed"] = first_type.get("removed", 0) + first_type["count"] // 2
    first_type["count"] -= first_type["count"] // 2
    assert _score_one(fleet, lossy).results["decision"][0] == "pause"


def test_families_of_records_lost_weigh_more_in_a_syncs_smallest_tail_probability():
    families = ("user.count@1-", "count-", "user.count@2+", "grant.removed+", "removed-",
                "api.requests-", "null_rate+", "user.added+")
    weights = family_weights(families, 2.0)
    assert weights.tolist() == [2.0, 2.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0]
    # A custom metric named like a loss is a metric.
    assert family_weights(("metric.count-", "metric.removed+"), 2.0).tolist() == [1.0, 1.0]
    assert set(family_weights(families, 1.0)) == {1.0}


def test_review_only_when_nothing_but_transport_moved_short_of_an_unstable_api():
    moved = {  # sync -> measures that moved, with the sign of the move
        0: ["api.errors+", "sync.duration_s+"],  # a retried blip: review
        1: ["api.latency_p50_ms+", "sync.duration_s+"],  # only latency moved: review
        2: ["api.latency_p50_ms+", "api.errors+"],  # unstable API: pause
        3: ["api.errors+", "count-"],  # data moved too: pause
        4: ["user.null_rate.email+"],  # data only
        5: [],  # nothing moved: a breach can only be the forest's
        6: ["api.latency_p50_ms-", "api.retries+"],  # faster, with retries: review
        7: ["api.retries+", "api.requests+"],  # a retry storm (below): pause
    }
    rows = np.array([s for s, names in moved.items() for _ in names], dtype=np.int64)
    names = np.array([n for names in moved.values() for n in names])
    got = review_only(rows, names, len(moved), np.full(len(rows), OUTLYING_Z))
    assert got.tolist() == [True, True, False, False, False, False, True, True]
    z = np.where(rows == 7, STORM_Z, OUTLYING_Z)  # only sync 7's calls failed in a storm
    got = review_only(rows, names, len(moved), z)
    assert got.tolist() == [True, True, False, False, False, False, True, False]


def test_calibration_tells_reviews_apart_as_scoring_does(fleet):
    """The held-out syncs a cutoff is calibrated on are judged review-only from their
    residuals as scoring judges them (``z``, not the tail scale): otherwise breaches that
    scoring makes reviews count as pauses, and normal syncs pause below the budget."""
    model = fleet[0]
    group = model.groups_[0]
    moved = {  # sync -> (measure, z, z_tail): transport within its own tail, but >= 3 out
        0: [("api.errors", 4.0, 1.5), ("sync.duration_s", 5.0, 2.0)],  # review
        1: [("api.errors", 4.0, 1.5), ("user.count", -3.5, -1.2)],  # data moved: pause
        2: [("api.latency_p50_ms", 6.0, 2.5), ("api.errors", 4.0, 1.5)],  # unstable: pause
        3: [("api.latency_p50_ms", 2.0, 0.8), ("user.count", 0.5, 0.2)],  # nothing moved
        4: [("api.latency_p50_ms", -3.2, -1.3)],  # review
    }
    resid = pl.DataFrame(
        [
            {"row": row, "group": group, "measure": m, "z": z, "z_tail": zt}
            for row, residuals in moved.items()
            for m, z, zt in residuals
        ]
    ).with_columns(
        pl.col("row").cast(pl.UInt32),
        pl.lit(None, pl.Float64).alias("exposure"),
        pl.lit(None, pl.Float64).alias("current_size"),
    )
    width = int(model.columns_["col"].max()) + 1
    _, rows, _, fam = model._matrix(resid, width, "sparse")
    scored = dict(_review_only(resid).iter_rows())
    assert rows.tolist() == [0, 1, 2, 3, 4]
    assert fam.review.tolist() == [scored.get(r, False) for r in rows.tolist()]
    assert fam.review.tolist() == [True, False, False, False, True]


def _scored_one_at_a_time(model, records, state, facts) -> pl.DataFrame:
    """The results of scoring ``records`` one sync at a time, each from the state before."""
    results = []
    for record in records:
        out = model.score([record], state=state, facts=facts)
        state, facts = out.state, out.facts
        results.append(out.results)
    return pl.concat(results)


def _repeating(records: list[dict], first: int) -> list[dict]:
    """``records`` with every sync from ``first`` on returning the data of the sync before
    it (a stuck cache): the same resources, no churn; the API figures stay as they were."""
    out = [copy.deepcopy(r) for r in records]
    frozen = copy.deepcopy(out[first - 1]["resources"])
    for stats in frozen.values():
        stats.update({k: 0 for k in ("added", "removed", "modified") if k in stats})
    for record in out[first:]:
        record["resources"] = copy.deepcopy(frozen)
    return out


def test_a_frozen_snapshot_pauses_though_its_api_figures_look_normal(fleet):
    """A connector that keeps returning the same data: each sync alone looks like a quiet
    one, the run of exact repeats does not. Paused once, with the run as the reason; the
    same judged a sync at a time; the run ends when the data moves again."""
    model, _, test, state, facts = fleet
    okta = _repeating([r for r in test if r["connector_id"].startswith("okta")][:12], 3)
    okta[9:] = [copy.deepcopy(r) for r in test if r["connector_id"].startswith("okta")][9:12]
    whole = model.score(okta, state=state, facts=facts)
    decisions = whole.results["decision"].to_list()
    assert decisions[:3] == ["proceed"] * 3
    first = decisions.index("pause")
    assert 3 <= first <= 5, decisions
    reasons = whole.reasons.filter(pl.col("sync_id") == okta[first]["sync_id"])
    assert "sync.unchanged_syncs" in reasons["metric"].to_list()
    hits = whole.rule_hits.filter(pl.col("rule") == "repeated_snapshot")
    assert set(hits["sync_id"]) == {r["sync_id"] for r in okta[4:9]}  # two repeats on
    run = whole.reasons.filter(pl.col("metric") == "sync.unchanged_syncs")
    assert run["observed"].to_list() == sorted(run["observed"].to_list())  # 1, 2, 3 ...
    assert set(run["sync_id"]) <= {r["sync_id"] for r in okta[3:9]}
    single = _scored_one_at_a_time(model, okta, state, facts)
    np.testing.assert_allclose(single["score"], whole.results["score"], rtol=1e-9)


def test_a_frozen_snapshot_pauses_a_connector_already_paused(fleet):
    """While paused, a sync is judged against the one before; a run of repeats still grows
    with every sync, so a stale snapshot after an earlier fault is paused too."""
    model, _, test, state, facts = fleet
    okta = _repeating([r for r in test if r["connector_id"].startswith("okta")][:12], 5)
    okta[1]["resources"]["user"]["count"] //= 3  # the earlier fault: paused from here on
    out = model.score(okta, state=state, facts=facts).results
    decisions = out["decision"].to_list()
    assert decisions[1] == "pause"
    assert "pause" in decisions[5:8], decisions


def _app_gaining(connector_id: str, resource: str, size: int, joins: np.ndarray) -> list[dict]:
    """Hourly syncs of an app with one resource type that gains ``joins[i]`` records
    (reported added) at sync ``i`` and loses or changes none."""
    return [
        make_record(connector_id, i, kind=connector_id.split("-")[0], resources={resource: {
            "count": size + int(joins[: i + 1].sum()), "added": int(joins[i]), "removed": 0,
            "modified": 0}})
        for i in range(len(joins))
    ]


def _fitted_on_60_days_scoring_the_rest(records: list[dict]):
    """A model fitted on the first 60 days of hourly ``records`` scoring the rest."""
    history, test = records[: 24 * 60], records[24 * 60 :]
    model = FleetModel(n_estimators=30).fit(history)
    state, facts = model.initial_state(history)
    return model.score(test, state=state, facts=facts)


def test_a_connector_that_often_repeats_itself_is_not_paused_for_doing_so():
    """A small app whose syncs often return the same data (nobody joined, left or changed)
    has learned that runs of repeats are normal for it."""
    rng = np.random.default_rng(3)
    joins = (rng.random(24 * 75) < 0.3).astype(int)  # a change in about one sync in three
    out = _fitted_on_60_days_scoring_the_rest(_app_gaining("tiny-app", "user", 40, joins))
    runs = out.reasons.filter(pl.col("metric") == "sync.unchanged_syncs")
    assert out.results.filter(pl.col("decision") == "pause").height == 0
    assert runs.height == 0


def test_a_source_that_never_changes_is_not_paused_for_its_ever_longer_run():
    """Every sync repeats the one before (a static resource beside a custom metric): the
    run is counted up to MAX_UNCHANGED_RUN, so the test window, twice as long as history,
    holds nothing history did not; two batches carry the run as one does."""
    records = [
        make_record("static", i, kind="static", api=..., metrics={"value": 5.0 + i % 3},
                    resources={"item": {"count": 100, "added": 0, "removed": 0}})
        for i in range(24 * 90)
    ]
    history, test = records[: 24 * 30], records[24 * 30 :]
    model = FleetModel(n_estimators=30).fit(history)
    state, facts = model.initial_state(history)
    whole = model.score(test, state=state, facts=facts)
    assert whole.results.filter(pl.col("decision") != "proceed").height == 0
    first = model.score(test[:100], state=state, facts=facts)
    second = model.score(test[100:], state=first.state, facts=first.facts)
    run = second.state.filter(pl.col("measure") == UNCHANGED_MEASURE)["value"].to_list()
    assert run == [MAX_UNCHANGED_RUN]
    np.testing.assert_allclose(
        pl.concat([first.results, second.results])["score"], whole.results["score"], rtol=1e-9
    )


def _count_only_feed(n: int, seed: int = 5) -> list[dict]:
    """Hourly syncs of an export that reports one count and no churn, nulls or API figures,
    beside a metric that moves a little on every sync. The count stands still on half of
    them (nobody joined or left), so a repeated count alone is no news."""
    rng = np.random.default_rng(seed)
    counts = 300 + np.cumsum(rng.choice([-1, 0, 0, 1], n))
    ratios = np.round(0.85 + rng.normal(0.0, 0.005, n), 4)
    return [
        make_record("export-1", i, kind="export", api=..., resources={"account": {
            "count": int(counts[i])}}, metrics={"mfa_ratio": float(ratios[i])})
        for i in range(n)
    ]


def test_a_stale_export_repeats_its_metrics_too_and_is_paused():
    """A feed whose count often stands still repeats itself, by its resources alone, on
    about half its syncs; its metric seldom repeats. A stale snapshot returns both: two
    such syncs in a row are the repeated_snapshot rule, batch and one at a time alike. A
    sync whose count stood still while its metric moved extends the resources' run only."""
    records = _count_only_feed(24 * 70)
    history, test = records[: 24 * 60], records[24 * 60 :]
    for k in (100, 101):
        test[k]["resources"] = copy.deepcopy(test[99]["resources"])
        test[k]["metrics"] = dict(test[99]["metrics"])
    model = FleetModel(n_estimators=30).fit(history)
    state, facts = model.initial_state(history)
    whole = model.score(test, state=state, facts=facts)
    hits = whole.rule_hits.filter(pl.col("rule") == "repeated_snapshot")
    assert hits["sync_id"].to_list() == [test[101]["sync_id"]]
    decisions = whole.results["decision"].to_list()
    assert decisions[101] == "pause"
    assert "pause" not in decisions[:100], decisions.index("pause")
    before = model.score(test[:95], state=state, facts=facts)
    single = _scored_one_at_a_time(model, test[95:103], before.state, before.facts)
    np.testing.assert_allclose(single["score"], whole.results["score"][95:103], rtol=1e-9)
    still = next(i for i in range(1, 99) if test[i]["resources"] == test[i - 1]["resources"])
    runs = dict(model.score(test[: still + 1], state=state, facts=facts).state.filter(
        pl.col("measure").is_in(REPEAT_MEASURES)).select("measure", "value").iter_rows())
    assert runs == {UNCHANGED_MEASURE: 1.0, UNCHANGED_WITH_METRICS_MEASURE: 0.0}


def test_a_static_app_gaining_an_account_is_not_paused_for_ending_its_run_of_repeats():
    """An app whose accounts never changed in history gains one (reported added) twice in
    the test window: its run of repeated syncs restarts, shorter than any in history. A
    repeat is news when it happens, not when it stops: both syncs and the ones after them
    proceed, and the short run is no reason. A run of repeats still is (see the frozen
    snapshot tests)."""
    joins = np.zeros(24 * 70, dtype=int)
    joins[[24 * 62, 24 * 65 + 3]] = 1
    out = _fitted_on_60_days_scoring_the_rest(_app_gaining("static-app", "account", 50, joins))
    assert out.results.filter(pl.col("decision") != "proceed").height == 0
    assert UNCHANGED_MEASURE not in out.reasons["metric"].to_list()


def test_a_sync_soon_after_a_long_one_is_not_judged_for_its_freshness_a_late_one_is():
    """Freshness is the start less the previous finish: after a sync that ran 40 minutes
    instead of 2, the next one is 'fresher' than ever, which is nothing wrong with its data;
    a sync 50 minutes late still is a reason (sync.freshness is one-sided)."""
    rng = np.random.default_rng(4)
    records = [make_record("okta-prod", i, rng=rng) for i in range(24 * 62)]
    long_one, late_one = records[24 * 60 + 5], records[24 * 61 + 5]
    long_one["finished_at"] = _shifted(long_one["started_at"], 2400)
    late_one["started_at"] = _shifted(late_one["started_at"], 3000)
    late_one["finished_at"] = _shifted(late_one["started_at"], 150)
    out = _fitted_on_60_days_scoring_the_rest(records)
    after_long = records[24 * 60 + 6]["sync_id"]
    reasons = out.reasons.filter(pl.col("metric") == "sync.freshness")
    assert after_long not in reasons["sync_id"].to_list()
    assert out.results.filter(pl.col("sync_id") == after_long)["decision"].item() == "proceed"
    assert late_one["sync_id"] in reasons["sync_id"].to_list()


def test_the_first_good_sync_after_a_failed_one_is_not_judged_for_its_freshness():
    """An hourly connector fails one sync (the rule pauses it); the next one comes on time
    with data two hours old. Its staleness is the failure's: no freshness reason, and it
    proceeds. Two hours late with no failure between
    still is a reason (see above)."""
    rng = np.random.default_rng(5)
    records = [make_record("okta-prod", i, rng=rng) for i in range(24 * 62)]
    failed = records[24 * 60 + 5]
    failed.update(status="failed", error_class="timeout")
    failed.pop("resources", None)
    out = _fitted_on_60_days_scoring_the_rest(records)
    after = records[24 * 60 + 6]["sync_id"]
    decisions = dict(zip(out.results["sync_id"], out.results["decision"], strict=True))
    assert decisions[failed["sync_id"]] == "pause"
    assert decisions[after] == "proceed"
    assert after not in out.reasons.filter(pl.col("metric") == "sync.freshness")["sync_id"]


def _every_fourth_hour(records: list[dict]) -> list[dict]:
    """Every fourth of hourly ``records``, each with the churn of the hours since the one
    before (a schedule moved from hourly to every four hours)."""
    out = []
    for i in range(0, len(records), 4):
        record = copy.deepcopy(records[i])
        since = records[max(0, i - 3) : i + 1]
        for resource, stats in record["resources"].items():
            for key in ("added", "removed", "modified"):
                stats[key] = sum(r["resources"][resource][key] for r in since)
        out.append(record)
    return out


def test_a_schedule_moved_from_hourly_to_every_four_hours_is_overdue_once():
    """After training, an hourly connector moves to every four hours. The first sync on
    the new schedule is late (overdue, and its freshness a reason); the later ones are on
    time for it and proceed, whether the connector stays paused (a batch) or a person
    resumes it (one sync at a time, its values accepted)."""
    rng = np.random.default_rng(6)
    records = [make_record("okta-prod", i, rng=rng) for i in range(24 * 64)]
    history, moved = records[: 24 * 60], _every_fourth_hour(records[24 * 60 :])
    model = FleetModel(n_estimators=30).fit(history)
    state, facts = model.initial_state(history)
    out = model.score(moved, state=state, facts=facts)
    late = moved[1]["sync_id"]
    assert out.rule_hits.select("sync_id", "rule").rows() == [(late, "overdue_sync")]
    assert late in out.reasons.filter(pl.col("metric") == "sync.freshness")["sync_id"]
    assert out.results.filter(pl.col("decision") == "pause")["sync_id"].to_list() == [late]

    paused = []
    for record in moved:  # one at a time, each pause resumed (see state.accept_current)
        one = model.score([record], state=state, facts=facts)
        state, facts = one.state, one.facts
        if one.results["decision"].item() == "pause":
            paused.append(record["sync_id"])
            state, facts = _resumed(state, facts)
    assert paused == [late]


def _shifted(timestamp: str, seconds: float) -> str:
    moved = datetime.fromisoformat(timestamp.replace("Z", "+00:00")) + timedelta(seconds=seconds)
    return moved.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_paused_mode_judges_the_same_batch_or_one_sync_at_a_time(fleet):
    """Sync-level measures (the duration) carry their value in the state: a paused
    connector scored one sync at a time compares it with the sync before, as a batch does."""
    model, _, test, state, facts = fleet
    okta = [copy.deepcopy(r) for r in test if r["connector_id"].startswith("okta")][:8]
    okta[1]["resources"]["user"]["count"] //= 3
    okta[5]["finished_at"] = okta[6]["started_at"]  # a much longer sync while paused
    whole = model.score(okta, state=state, facts=facts)
    single = _scored_one_at_a_time(model, okta, state, facts)
    np.testing.assert_allclose(single["score"], whole.results["score"], rtol=1e-9)
    duration = whole.reasons.filter(
        (pl.col("sync_id") == okta[5]["sync_id"]) & (pl.col("metric") == "sync.duration_s")
    )
    assert duration.height == 1


def test_the_second_pass_judges_only_the_syncs_after_a_new_pause(fleet, monkeypatch):
    """The paused mode's second pass judges a connector's syncs after its first new pause
    only (the ones before are judged alike in both passes); a pause on a connector's last
    sync of the batch needs no second pass. The results stay those of one sync at a time
    (tests above)."""
    model, _, test, state, facts = fleet
    okta = [copy.deepcopy(r) for r in test if r["connector_id"].startswith("okta")][:8]
    okta[2]["resources"]["user"]["count"] //= 3
    judged = []
    real = FleetModel._score_pass

    def spy(self, *args):
        out = real(self, *args)
        judged.append(sorted(out["decided"]["sync_id"]))
        return out

    monkeypatch.setattr(FleetModel, "_score_pass", spy)
    out = model.score(okta, state=state, facts=facts).results
    assert out["decision"].to_list()[:3] == ["proceed", "proceed", "pause"]
    assert judged == [sorted(r["sync_id"] for r in okta), sorted(r["sync_id"] for r in okta[3:])]
    judged.clear()
    assert model.score(okta[:3], state=state, facts=facts).results["decision"][2] == "pause"
    assert len(judged) == 1


def _model_frames(model: FleetModel) -> dict[str, pl.DataFrame]:
    return {"intervals": model.intervals_, "columns": model.columns_,
            "expected_resources": model.expected_resources_,
            "baseline.series": model.baseline_.series_,
            "baseline.profile": model.baseline_.profile_,
            "pooled.series": model.pooled_baseline_.series_,
            "pooled.profile": model.pooled_baseline_.profile_,
            "baseline.hours": model.baseline_.hours_,
            "pooled.hours": model.pooled_baseline_.hours_}


def test_model_file_text_is_coded_and_uncoded_files_still_load(fleet):
    """Text columns are saved as distinct values and codes; a model file written before
    (whole fixed-width text columns) rebuilds the very same frames."""
    model = fleet[0]
    arrays, config = model.to_arrays()
    coded = [k.removesuffix("@codes") for k in arrays if k.endswith("@codes")]
    assert "baseline.profile/measure" in coded and "baseline.profile/connector_id" in coded
    for key in coded:
        distinct = arrays[f"{key}@distinct"]
        assert distinct.dtype.kind == "U" and len(np.unique(distinct)) == len(distinct)
        assert arrays[f"{key}@codes"].dtype.kind == "u"
    uncoded = {k: v for k, v in arrays.items() if "@" not in k}
    uncoded.update({key: arrays[f"{key}@distinct"][arrays[f"{key}@codes"]] for key in coded})
    assert not any(k.endswith("/measure") for k in arrays)  # no whole text column left
    new = _model_frames(FleetModel.from_arrays(arrays, config))
    old = _model_frames(FleetModel.from_arrays(uncoded, config))
    for name, frame in _model_frames(model).items():
        polars.testing.assert_frame_equal(new[name], old[name])
        # Missing values come back as the nulls they were, not as numpy's NaN.
        polars.testing.assert_frame_equal(new[name], frame)


def test_a_model_file_without_hour_offsets_scores_every_hour_at_its_block(fleet):
    """Files written before hour offsets have no ``*.hours`` frames: every hour of the
    week then sits at its block's expected value, as it did."""
    model, _, test, state, facts = fleet
    arrays, config = model.to_arrays()
    config = copy.deepcopy(config)
    for name in ("baseline.hours", "pooled.hours"):
        del config["frames"][name]
    older = FleetModel.from_arrays(
        {k: v for k, v in arrays.items() if not k.startswith(("baseline.hours", "pooled.hours"))},
        config,
    )
    assert older.baseline_.hours_.height == older.pooled_baseline_.hours_.height == 0
    # The same as the fitted model with its offsets taken away.
    bases = (model.baseline_, model.pooled_baseline_)
    kept = [base.hours_ for base in bases]
    try:
        for base in bases:
            base.hours_ = base.hours_.clear()
        blocks_only = model.score(test[:60], state=state, facts=facts).results
    finally:
        for base, hours in zip(bases, kept, strict=True):
            base.hours_ = hours
    pl.testing.assert_frame_equal(
        older.score(test[:60], state=state, facts=facts).results, blocks_only
    )


def test_model_round_trips_through_a_model_file(fleet, tmp_path):
    model, _, test, state, facts = fleet
    arrays, config = model.to_arrays()
    save_model_dir(tmp_path / "m", arrays=arrays, config=config)
    loaded = load_model_dir(tmp_path / "m")
    again = FleetModel.from_arrays(loaded.arrays, loaded.config)
    a = model.score(test[:40], state=state, facts=facts).results
    b = again.score(test[:40], state=state, facts=facts).results
    assert a["decision"].to_list() == b["decision"].to_list()
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-9)


def test_policy_matches_id_glob_kind(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(
        '[[connector]]\nid = "hr-main"\ncriticality = "leaver"\n'
        '[[connector]]\nglob = "vault-*"\ncriticality = "nhi"\n'
        '[[connector]]\nkind = "github"\ncriticality = "reporting"\n'
        "[criticality.standard]\nbudget_days = 60\n"
    )
    policy = load_policy(path)
    assert policy.criticality_of("hr-main", "workday") == "leaver"
    assert policy.criticality_of("vault-prod", "vault") == "nhi"
    assert policy.criticality_of("gh", "github") == "reporting"
    assert policy.criticality_of("okta-1", "okta") == "standard"
    assert policy.criticalities["standard"]["budget_days"] == 60
    alpha = Policy.alpha(np.array([1 / 30]), np.array([3600.0]))[0]
    assert alpha == pytest.approx(1 / 720)


def test_policy_errors_name_the_problem(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[[connector]]\nglob = "x*"\ncriticality = "vip"\n')
    with pytest.raises(UsageError, match="connector rule 1: criticality must be one of"):
        load_policy(path)


def test_fit_needs_history():
    with pytest.raises(ValueError, match="at least one sync"):
        FleetModel().fit([])
    with pytest.raises(RuntimeError, match="call fit first"):
        FleetModel().score([])


def test_calibrator_gives_each_family_its_own_tail():
    rng = np.random.default_rng(1)
    light = np.abs(rng.normal(size=20_000))  # a family whose extremes are rare
    heavy = np.abs(rng.standard_t(df=2, size=20_000))  # one whose extremes are common
    scores = np.concatenate([light, heavy])
    groups = np.repeat([0, 1], 20_000)
    own = TailCalibrator(pool_shape=False).fit(scores, groups, n_groups=2)
    p = own.tail_probability(np.array([6.0, 6.0]), np.array([0, 1]))
    assert p[0] < 1e-5 < 1e-2 < p[1]  # t(2): P(|T| > 6) is about 0.027
    assert own.shape_[1] > own.shape_[0] >= 0.0  # never a bounded tail


def test_a_small_family_shrinks_its_tail_towards_the_pooled_one():
    rng = np.random.default_rng(3)
    heavy = np.abs(rng.standard_t(df=2, size=40_000))  # a large family, heavy-tailed
    light = np.abs(rng.normal(size=600))  # a small one: 60 exceedances, light-tailed
    scores = np.concatenate([heavy, light])
    groups = np.repeat([0, 1], [40_000, 600])
    pooled = TailCalibrator(pool_shape=True).fit(scores, groups, n_groups=2)
    shrunk = TailCalibrator(pool_shape=False, min_tail=100).fit(scores, groups, n_groups=2)
    alone = TailCalibrator(pool_shape=False, min_tail=60).fit(scores, groups, n_groups=2)
    # 60 of 100 exceedances: 60 % of the way from the pooled shape to its own.
    assert alone.shape_[1] <= shrunk.shape_[1] <= pooled.shape_[1]
    expected = 0.6 * alone.shape_[1] + 0.4 * pooled.shape_[0]
    assert shrunk.shape_[1] == pytest.approx(expected, abs=0.05)
    # The GPD mean (scale / (1 - shape)) stays the family's own mean excess.
    y = shrunk.tail_probability(np.array([3.0]), np.array([1]))[0]
    assert 0.0 < y < 0.1


def test_tails_per_resource_type_and_size_only_with_data_enough():
    def rows(measure, n, connectors, size):
        return pl.DataFrame(
            {
                "connector_id": [f"c{i % connectors}" for i in range(n)],
                "measure": [measure] * n,
                "exposure": [float(size)] * n,
                "current_size": [float(size)] * n,
            }
        )

    features = pl.concat(
        [
            rows("user.count", 3000, 6, 50_000),  # plenty: user.count@4
            rows("grant.count", 3000, 2, 500),  # too few connectors for a grant tail
            rows("role.count", 500, 6, 500),  # too few rows on its own
            rows("api.requests", 3000, 6, 1),  # not a resource: no type or size tails
            rows("metric.mfa_ratio", 3000, 6, 1),  # a metric with data enough: its own tail
            rows("metric.sessions", 500, 6, 1),  # too few rows: the metrics' tail
        ]
    ).with_columns(pl.col("exposure").cast(pl.Float64))
    no_size = pl.col("measure").str.starts_with("api.") | pl.col("measure").str.starts_with(
        "metric."
    )
    features = features.with_columns(
        pl.when(no_size).then(None).otherwise(pl.col("exposure")).alias("exposure"),
        pl.when(no_size).then(None).otherwise(pl.col("current_size")).alias("current_size"),
    )
    families = set(tail_families(features))
    assert {"user.count@4+", "user.count@4-"} <= families
    assert {"count@2+", "count-", "api.requests+"} <= families  # 3,500 rows of size 500
    assert {"metric.mfa_ratio+", "metric.mfa_ratio-", "metric+", "metric-"} <= families
    assert not any(f.startswith(("grant.", "role.", "api.requests@", "metric.sessions"))
                   for f in families)
    z = pl.lit(-1.0)
    keyed = features.unique("measure").sort("measure").select(
        "measure", tail_family_expr(pl.col("measure"), z, sorted(families))
    )
    assert dict(keyed.iter_rows()) == {
        "api.requests": "api.requests-",
        "grant.count": "count@2-",
        "metric.mfa_ratio": "metric.mfa_ratio-",
        "metric.sessions": "metric-",
        "role.count": "count@2-",
        "user.count": "user.count@4-",
    }


def test_log10_tail_extrapolates_minus_log10_scores():
    rng = np.random.default_rng(2)
    minus_log10_p = -np.log10(rng.uniform(size=50_000))  # calibrated p-values
    cal = TailCalibrator(log10_tail=True).fit(minus_log10_p, np.zeros(50_000, int), n_groups=1)
    p = cal.tail_probability(np.array([2.0, 6.0, 12.0]), np.zeros(3, int))
    np.testing.assert_allclose(p, [1e-2, 1e-6, 1e-12], rtol=0.5)


def test_a_family_tail_is_never_lighter_than_the_residuals_gaussian_tail(fleet):
    """Families pooled over series that rarely see an event (duplicates, retries) have
    spiky held-out bodies whose fitted tails fall far faster than a Gaussian; a residual of
    3 scales in one of them must not become a one-in-a-billion sync."""
    model = fleet[0]
    n_fam = len(model.families_)
    raw = model.calibrators_["family"].tail_probability(np.full(n_fam, 3.0), np.arange(n_fam))
    assert raw.min() < 1e-4  # the spiky families this guards against exist in the fleet
    forest_s = np.full(n_fam, -1e9)  # nothing from the forest
    stat = model._combined_statistic(
        forest_s, Families.of(np.eye(n_fam) * 3.0), np.zeros(n_fam, int), ""
    )
    assert stat.max() <= -np.log10(0.5 * math.erfc(3.0 / math.sqrt(2.0))) + 1e-9
    assert stat.min() > 0.0


def test_connector_reporting_partial_data_pauses(fleet):
    record = copy.deepcopy(_last_normal(fleet, "okta"))
    record.update(status="partial", error_class="timeout")
    out = _score_one(fleet, record)
    assert out.results["decision"][0] == "pause"
    assert "partial_sync" in out.rule_hits["rule"].to_list()


def _learned_rare_event_rates(model: FleetModel, facts: pl.DataFrame, kind: str) -> pl.DataFrame:
    """``model._rare_event_rates`` of the connectors in ``facts`` (all of ``kind``), with
    their budgets at their learned intervals, as a scoring pass gives them."""
    connectors = facts.select("connector_id", pl.lit(kind).alias("connector_kind"))
    budgets = model._budgets(connectors.join(
        model.intervals_.select("connector_id", "interval_s"), on="connector_id", how="left"))
    return model._rare_event_rates(connectors, budgets)


def test_partial_now_and_then_beyond_the_budget_is_left_to_the_model_never_seen_is_a_rule():
    """An hourly connector that said ``partial`` on 3 of 1,440 syncs in history (0.2 %,
    under MAX_PARTIAL_RATE) would spend about 18 false pauses a year on the rule alone,
    where its budget allows one: its partial syncs are judged by the model. One that never
    said so has the rule."""
    rng = np.random.default_rng(5)
    said = {100, 700, 1300, 24 * 62, 24 * 66}
    records = [
        make_record(connector_id, i, kind="flaky", rng=rng,
                    **({"status": "partial", "error_class": "rate_limit"}
                       if i in said and (connector_id == "flaky-app" or i >= 24 * 60) else {}))
        for i in range(24 * 70) for connector_id in ("flaky-app", "steady-app")
    ]
    history = [r for r in records if int(r["sync_id"].split(":")[1]) < 24 * 60]
    test = [r for r in records if int(r["sync_id"].split(":")[1]) >= 24 * 60]
    model = FleetModel(n_estimators=30).fit(history)
    state, facts = model.initial_state(history)
    rates = _learned_rare_event_rates(model, facts, "flaky").sort("connector_id")
    assert rates["partial_rate"][0] == pytest.approx(3 / 1440, rel=0.3)
    assert rates["partial_rate"][0] < MAX_PARTIAL_RATE
    assert rates["alpha"][0] < rates["partial_rate"][0]
    out = model.score(test, state=state, facts=facts)
    hits = out.rule_hits.filter(pl.col("rule") == "partial_sync")["sync_id"].to_list()
    assert sorted(hits) == [f"steady-app:{i}" for i in sorted(said) if i >= 24 * 60]


def test_a_connector_that_says_partial_now_and_then_has_it_judged_by_the_model():
    """Partial on 1 sync in 60 of its history (above MAX_PARTIAL_RATE, below the share of
    syncs the rates' winsorising leaves out): its partial rate is learned, so the next
    partial is left to the model, not paused by the rule for connectors that never say so."""
    rng = np.random.default_rng(5)
    records = [
        make_record("flaky-app", i, kind="flaky", rng=rng,
                    **({"status": "partial", "error_class": "rate_limit"} if i % 60 == 30 else {}))
        for i in range(24 * 70)
    ]
    history, test = records[: 24 * 60], records[24 * 60 :]
    model = FleetModel(n_estimators=30).fit(history)
    state, facts = model.initial_state(history)
    rates = _learned_rare_event_rates(model, facts, "flaky")
    assert rates["partial_rate"][0] == pytest.approx(1 / 60, rel=0.25)
    assert rates["partial_rate"][0] >= MAX_PARTIAL_RATE
    out = model.score(test, state=state, facts=facts)
    partial = {r["sync_id"] for r in test if r["status"] == "partial"}
    assert len(partial) == 4
    assert "partial_sync" not in out.rule_hits["rule"].to_list()
    assert out.results.filter(pl.col("sync_id").is_in(list(partial)))["decision"].to_list() == [
        "proceed"] * 4


def test_a_metric_reported_on_a_handful_of_syncs_is_left_unjudged():
    """Four values in two months say nothing of a metric's spread: judged on them (and on
    fewer once screening drops the syncs they disagree on), any new value was a pause."""
    rng = np.random.default_rng(9)
    seen = {100: 0.11, 400: 0.25, 800: 0.46, 1200: 0.05, 1500: 0.95, 1560: 0.6, 1620: 0.24}
    records = []
    for i in range(24 * 70):
        record = make_record("sparse-app", i, kind="sparse", rng=rng)
        if i in seen:
            record["metrics"] = {**record["metrics"], "rare_ratio": seen[i]}
        records.append(record)
    history, test = records[: 24 * 60], records[24 * 60 :]
    model = FleetModel(n_estimators=30).fit(history)
    assert "metric.rare_ratio" not in model.baseline_.series_["measure"].to_list()
    assert "metric.mfa_enrolled_ratio" in model.baseline_.series_["measure"].to_list()
    state, facts = model.initial_state(history)
    out = model.score(test, state=state, facts=facts)
    assert "metric.rare_ratio" not in out.reasons["metric"].to_list()
    assert out.results.filter(pl.col("decision") == "pause").height == 0


def test_min_series_syncs_must_be_positive():
    with pytest.raises(ValueError, match="min_series_syncs"):
        SeasonalBaseline(min_series_syncs=0).fit(pl.DataFrame(), pl.DataFrame())


def _one_row_rule_hits(measure: str, kind: str, value: float, reference: float,
                       exposure: float, current_size: float, **tables) -> pl.DataFrame:
    """``rule_hits`` of one sync of connector ``c`` with one measure of resource ``user``."""
    features = pl.DataFrame(
        {
            "row": [0],
            "connector_id": ["c"],
            "measure": [measure],
            "resource": ["user"],
            "kind": [kind],
            "value": [value],
            "reference": [reference],
            "exposure": [exposure],
            "current_size": [current_size],
        }
    )
    return _sync_rule_hits(features, **tables)


def _sync_rule_hits(features: pl.DataFrame, **tables) -> pl.DataFrame:
    """``rule_hits`` of ``features`` (rows of sync 0 of connector ``c``), a succeeded sync
    on time."""
    from detector.rules import rule_hits

    syncs = pl.DataFrame(
        {"row": [0], "connector_id": ["c"], "status": ["succeeded"], "error_class": [None],
         "fresh_gap_s": [3600.0]},
        schema_overrides={"error_class": pl.String},
    )
    intervals = pl.DataFrame(schema={"connector_id": pl.String, "interval_s": pl.Float64})
    return rule_hits(syncs, features, intervals=intervals, **tables)


def test_all_null_on_a_rarely_populated_field_is_not_a_rule_hit():
    from detector.rules import MIN_POPULATED

    def hits(reference: float, size: float) -> list[str]:
        out = _one_row_rule_hits("user.null_rate.phone", "rate", 1.0, reference, size, size)
        return out["rule"].to_list()

    # 130 records, 96% null: about 5 expected to carry the field; chance blanks them often.
    assert "field_entirely_null" not in hits(0.96, 130.0)
    # 100 records, half populated: blanking all of them is not chance.
    assert "field_entirely_null" in hits(0.5, 100.0)
    assert MIN_POPULATED >= 14  # exp(-14) < 1e-6 per field and sync


@pytest.mark.parametrize(
    ("count", "reference", "largest", "hit"),
    [
        (16, 42, 0.10, True),  # 62 % lost where 10 % was the most: paused
        (16, 42, 0.45, False),  # teams leave in bursts this big here
        (26, 42, 0.00, False),  # 38 %: less than half, left to the model
        (0, 42, 0.00, False),  # none left: count_to_zero says it
        (1, 3, 0.00, True),  # two of three entitlements gone, where none ever went
        (1, 3, 0.50, False),  # ... where half went before
        (1, 2, 0.00, False),  # too few records to speak
    ],
)
def test_a_loss_beyond_the_connectors_history_is_a_rule_hit(count, reference, largest, hit):
    losses = pl.DataFrame({"connector_id": ["c"], "resource": ["user"], "largest_loss": [largest]})
    hits = _one_row_rule_hits(
        "user.count", "count", float(count), float(reference), float(reference), float(count),
        largest_losses=losses,
    )
    assert ("loss_beyond_history" in hits["rule"].to_list()) is hit
    if hit and count == 16:
        assert hits["detail"][0] == (
            "user fell from 42 to 16 records (62% lost); the most it lost in one sync in "
            "history was 10%"
        )


@pytest.mark.parametrize(
    ("count", "reference", "hit"),
    [
        (200, 271, True),  # two pages of 100 where there were three: cut short
        (10_000, 10_700, True),  # a result limit of 10,000
        (200, 210, False),  # 4.8 % lost: a small loss lands on a round number by chance
        (201, 271, False),  # not whole pages
        (200, 200, False),  # nothing lost
        (300, 200, False),  # a gain
        (0, 271, False),  # none left: count_to_zero says it
    ],
)
def test_a_loss_landing_on_whole_pages_is_a_truncated_listing(count, reference, hit):
    hits = _one_row_rule_hits(
        "user.count", "count", float(count), float(reference), float(reference), float(count)
    )
    assert ("truncated_listing" in hits["rule"].to_list()) is hit
    if hit and count == 200:
        assert hits.filter(pl.col("rule") == "truncated_listing")["detail"][0] == (
            "user fell from 271 to 200 records (26% lost), an exact multiple of 100: a "
            "listing cut short at a page or result limit"
        )


@pytest.mark.parametrize(
    ("sharp_loss_rate", "hit"),
    [
        (None, True),  # no history of the type (a cold connector): the rule speaks
        (0.002, True),  # 1 sync in 500 lost 5 %: by chance on whole pages 1 in 50,000
        (0.25, False),  # a count swinging over the day: 1 in 400, past its budget
    ],
)
def test_a_type_that_often_loses_much_has_its_whole_pages_judged_by_the_model(
    sharp_loss_rate, hit
):
    """A loss of 5 % or more lands on whole pages by chance about once in PAGE_MULTIPLE.
    Where the type loses that much on a quarter of its syncs, the rule would spend 250
    times the budget of an hourly connector (1.1e-4 a sync) on chance alone."""
    losses = pl.DataFrame(
        {"connector_id": ["c"], "resource": ["user"], "largest_loss": [0.1],
         "sharp_loss_rate": [sharp_loss_rate]},
        schema_overrides={"sharp_loss_rate": pl.Float64},
    )
    rates = pl.DataFrame({"connector_id": ["c"], "partial_rate": [0.0], "alpha": [1.1e-4],
                          "repeat_rate": [0.0], "metrics_repeat_rate": [0.0]})
    hits = _one_row_rule_hits("user.count", "count", 200.0, 240.0, 240.0, 200.0,
                              largest_losses=losses, rare_event_rates=rates)
    assert ("truncated_listing" in hits["rule"].to_list()) is hit


@pytest.mark.parametrize(
    ("users", "hit"),
    [
        (175, True),  # the users stayed: only the grants' listing came back short
        (171, True),  # 2.3 % of users gone: too few to explain a grant loss
        (161, False),  # a team of 14 left with its grants: the model judges that
        (100, True),  # both types cut at whole pages: both truncated
    ],
)
def test_a_truncated_listing_is_a_loss_of_its_own(users, hit):
    features = pl.DataFrame(
        {
            "row": [0, 0],
            "connector_id": ["c", "c"],
            "measure": ["user.count", "grant.count"],
            "resource": ["user", "grant"],
            "kind": ["count", "count"],
            "value": [float(users), 700.0],
            "reference": [175.0, 739.0],
            "exposure": [175.0, 739.0],
            "current_size": [float(users), 700.0],
        }
    )
    hits = _sync_rule_hits(features)
    truncated = hits.filter(pl.col("rule") == "truncated_listing")["detail"].to_list()
    assert any(d.startswith("grant fell from 739 to 700") for d in truncated) is hit


def test_a_fitted_model_knows_each_connectors_largest_loss_and_keeps_it_in_its_file(
    fleet, tmp_path
):
    model, history, test, state, facts = fleet
    losses = model.largest_losses_
    assert losses.height and losses["largest_loss"].is_between(0.0, 1.0).all()
    assert losses["sharp_loss_rate"].is_between(0.0, 1.0).all()
    okta = next(r for r in test if r["connector_id"].startswith("okta"))
    largest = losses.filter(
        (pl.col("connector_id") == okta["connector_id"]) & (pl.col("resource") == "user")
    )["largest_loss"][0]
    assert largest < 0.6  # room for a loss beyond it
    record = copy.deepcopy(okta)
    kept = max(1, int(record["resources"]["user"]["count"] * (1 - max(0.5, 1.6 * largest))))
    record["resources"]["user"]["count"] = kept
    arrays, config = model.to_arrays()
    save_model_dir(tmp_path / "m", arrays=arrays, config=config)
    loaded = load_model_dir(tmp_path / "m")
    again = FleetModel.from_arrays(loaded.arrays, loaded.config)
    assert "loss_beyond_history" in _score_one(fleet, record).rule_hits["rule"].to_list()
    out = again.score([record], state=state, facts=facts)
    assert "loss_beyond_history" in out.rule_hits["rule"].to_list()
    pl.testing.assert_frame_equal(again.largest_losses_, losses, check_column_order=False)
    # A file written before the share of sharp losses: it loads with none (rule as then).
    before_sharp = copy.deepcopy(config)
    del before_sharp["frames"]["largest_losses"]["sharp_loss_rate"]
    older = FleetModel.from_arrays(
        {k: v for k, v in arrays.items() if k != "largest_losses/sharp_loss_rate"},
        before_sharp,
    )
    assert older.largest_losses_["sharp_loss_rate"].null_count() == losses.height
    # A file written before the rule existed has no such table: it loads, the rule is silent.
    del config["frames"]["largest_losses"]
    older = FleetModel.from_arrays(
        {k: v for k, v in arrays.items() if not k.startswith("largest_losses/")}, config
    )
    out = older.score([record], state=state, facts=facts)
    assert "loss_beyond_history" not in out.rule_hits["rule"].to_list()


def test_each_sync_is_calibrated_in_its_own_mode_only(fleet, monkeypatch):
    """_tail_probability runs each mode's calibrators on that mode's syncs only: the same
    numbers as running both modes on every sync and keeping each sync's own."""
    model, _, test, state, facts = fleet
    paused_ids = sorted({r["connector_id"] for r in test})[:3]
    facts = facts.with_columns(pl.col("connector_id").is_in(paused_ids).alias("state_paused"))
    seen = []
    real = FleetModel._tail_probability

    def checked(self, x, fam, rows, groups, syncs):
        out = real(self, x, fam, rows, groups, syncs)
        paused = np.isin(rows, syncs.filter(pl.col("paused"))["row"].to_numpy())
        forest_s = self.forest_.score_samples(x, groups)
        both = [self.calibrators_["combined" + mode].tail_probability(
            self._combined_statistic(forest_s, fam, groups, mode), groups)
            for mode in ("", "_paused")]
        np.testing.assert_array_equal(out, np.where(paused, both[1], both[0]))
        seen.append((int(paused.sum()), int((~paused).sum())))
        return out

    monkeypatch.setattr(FleetModel, "_tail_probability", checked)
    model.score(test[:80], state=state, facts=facts)
    assert seen and all(p and n for p, n in seen[:1])  # both modes met in the first pass


def test_sparse_family_rows_are_the_dense_matrix_rows():
    """Scoring keeps the family maxima sparse: a block of syncs and its rows of one mode
    give the entries (rows renumbered from 0, order, dtypes) the dense matrix gives."""
    rng = np.random.default_rng(4)
    n, n_fam = 3000, 40
    cells = rng.integers(0, n * n_fam, 9000)
    values = np.where(rng.random(9000) < 0.1, 0.0, rng.exponential(size=9000))
    dense = np.zeros((n, n_fam))
    np.maximum.at(dense, (cells // n_fam, cells % n_fam), values)
    sparse = Families.maxima(cells // n_fam, cells % n_fam, values, n_fam)
    mine = rng.random(1024) < 0.7
    got, want = sparse[slice(1024, 2048)].where(mine), Families.of(dense[1024:2048][mine])
    assert len(want.rows) > 1000
    for name in ("rows", "cols", "values"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
        assert getattr(got, name).dtype == getattr(want, name).dtype


def test_array_forest_thresholds_are_the_float32_below_the_drawn_ones():
    """Thresholds are stored as float32: for float32 inputs ``x <= t`` is the same test
    as against the float64 draw when ``t`` is the largest float32 not above it."""
    from detector.forest import _round_down

    rng = np.random.default_rng(9)
    drawn = np.concatenate([rng.normal(size=5000) * 10.0 ** rng.integers(-6, 6, 5000),
                            np.float32([1.5, -2.0, 0.0]).astype(float)])
    t = _round_down(drawn)
    assert t.dtype == np.float32
    assert np.all(t.astype(float) <= drawn)
    assert np.all(np.nextafter(t, np.float32(np.inf)).astype(float) > drawn)
    forest = ArrayIsolationForest(n_estimators=5, random_state=0)
    a = forest.fit([rng.normal(size=(300, 3))]).arrays_
    assert a["threshold"].dtype == np.float32 and a["left"].dtype == np.int32


def test_baseline_fitted_in_chunks_of_series_is_the_one_pass_baseline(fleet, monkeypatch):
    """Chunks of whole key groups, a group larger than a chunk cut by measure: every
    series is fitted from its own rows, so the same tables as one pass."""
    import detector.baseline as baseline_module
    from detector.baseline import SeasonalBaseline
    from detector.habits import connector_intervals

    _, history, _, _, _ = fleet
    syncs, features = build_features(*prepare(history))
    ivals = connector_intervals(syncs).select("connector_id", "interval_s")
    for key, rows in (("connector_id", features), ("connector_kind", with_fleet_copy(features))):
        one_pass = SeasonalBaseline(key=key).fit(rows, ivals)
        # Smaller than any connector's rows: every key group is cut by measure.
        monkeypatch.setattr(baseline_module, "_CHUNK_ROWS", rows.height // 40)
        chunked = SeasonalBaseline(key=key).fit(rows, ivals)
        monkeypatch.undo()
        for table in ("series_", "profile_", "hours_"):
            pl.testing.assert_frame_equal(
                getattr(chunked, table), getattr(one_pass, table), check_column_order=False
            )


@pytest.mark.parametrize("chunk_share", [None, 40])
def test_fit_residuals_are_those_of_fit_then_residuals(fleet, monkeypatch, chunk_share):
    """``fit_residuals`` gives the z and z_tail the fitted baseline's residual pass gives,
    in the input's order: per connector with some syncs paused (judged against the sync
    before), pooled against the sync before; in one part or chunks cut by measure."""
    import detector.baseline as baseline_module
    from detector.baseline import SeasonalBaseline
    from detector.habits import connector_intervals

    _, history, _, _, _ = fleet
    syncs, features = build_features(*prepare(history))
    ivals = connector_intervals(syncs).select("connector_id", "interval_s")
    # Every third sync paused: those rows' level-like measures judge against the reference.
    features = features.with_columns((pl.col("row") % 3 == 0).alias("paused"))
    cases = (
        ("connector_id", features.reverse(), None),
        ("connector_kind", with_fleet_copy(features), pl.lit(True)),
    )
    for key, rows, against in cases:
        if chunk_share:
            monkeypatch.setattr(baseline_module, "_CHUNK_ROWS", rows.height // chunk_share)
        fitted = SeasonalBaseline(key=key)
        z, z_tail = fitted.fit_residuals(rows, ivals, against_reference=against)
        monkeypatch.undo()
        plain = SeasonalBaseline(key=key).fit(rows, ivals)
        for table in ("series_", "profile_"):
            pl.testing.assert_frame_equal(getattr(fitted, table), getattr(plain, table))
        expected = plain.residuals(rows, ivals, against_reference=against)
        assert expected["z"].to_numpy().tobytes() == z.tobytes()
        assert expected["z_tail"].to_numpy().tobytes() == z_tail.tobytes()
        again = rows.select(plain.judged_against_reference() & pl.col("paused"))
        assert again.to_series().sum() > 0 or key == "connector_kind"


def test_residuals_with_an_alternative_are_those_of_two_passes(fleet):
    """``alternative`` gives, beside ``z`` and ``z_tail`` judged as asked, the residuals
    judged the other way (``z_alt``, ``z_tail_alt``), byte for byte those of a separate
    pass: per connector (paused rows, and every row as paused) and pooled."""
    from detector.baseline import SeasonalBaseline
    from detector.habits import connector_intervals

    _, history, _, _, _ = fleet
    syncs, features = build_features(*prepare(history))
    ivals = connector_intervals(syncs).select("connector_id", "interval_s")
    features = features.with_columns((pl.col("row") % 3 == 0).alias("paused"))
    cases = (
        ("connector_id", features, None, pl.lit(True)),
        ("connector_id", features, pl.lit(True), pl.lit(False)),
        ("connector_kind", with_fleet_copy(features), pl.lit(True), pl.lit(False)),
    )
    for key, rows, asked, alternative in cases:
        base = SeasonalBaseline(key=key).fit(rows, ivals)
        both = base.residuals(rows, ivals, against_reference=asked, alternative=alternative)
        for names, against in ((("z", "z_tail"), asked), (("z_alt", "z_tail_alt"), alternative)):
            alone = base.residuals(rows, ivals, against_reference=against)
            for name, plain in zip(names, ("z", "z_tail"), strict=True):
                assert both[name].to_numpy().tobytes() == alone[plain].to_numpy().tobytes()
        # The two judgements differ somewhere, or the test would prove nothing.
        assert (both["z"] != both["z_alt"]).any()


def _half_hourly_metric(values: np.ndarray, connector: str = "kpi") -> list[dict]:
    """One connector reporting ``values`` as a custom metric every 30 minutes."""
    t0 = datetime(2026, 1, 5, tzinfo=UTC)
    return [
        make_record(connector, i, kind="custom", start=t0 + timedelta(minutes=30 * i),
                    api=..., metrics={"value": float(v)},
                    resources={"item": {"count": 1000, "added": 0, "removed": 0}})
        for i, v in enumerate(values)
    ]


def _metric_baseline(records: list[dict]):
    from detector.baseline import SeasonalBaseline
    from detector.habits import connector_intervals

    syncs, features = build_features(*prepare(records))
    ivals = connector_intervals(syncs).select("connector_id", "interval_s")
    base = SeasonalBaseline().fit(features, ivals)
    resid = base.residuals(features, ivals).filter(pl.col("measure") == "metric.value")
    return base, resid


def test_a_metric_that_swings_with_the_hour_of_the_day_is_judged_against_its_hour():
    """A four-hour block's median is far off an hour of a strong daily swing: the hours
    get offsets from their blocks, and normal syncs sit within a few scales of them."""
    hours = np.arange(2 * 24 * 42) / 2  # six weeks, every 30 minutes
    noise = np.random.default_rng(0).normal(0.0, 1.0, len(hours))
    values = 100.0 + 50.0 * np.sin(2 * np.pi * hours / 24) + noise
    base, resid = _metric_baseline(_half_hourly_metric(values))
    offsets = base.hours_.filter(pl.col("measure") == "metric.value")
    assert offsets.height == 168  # every hour of the week has syncs and its own offset
    # Expected: the swing at each sync's hour, to within about the noise.
    truth = 100.0 + 50.0 * np.sin(2 * np.pi * (np.floor(hours) + 0.25) / 24)
    assert np.median(np.abs(resid["expected_x"].to_numpy() - truth)) < 1.0
    assert np.quantile(np.abs(resid["z"].to_numpy()), 0.99) < 6.0
    # The scale is the noise's and the swing's within an hour (syncs on the hour and the
    # half hour differ by about 6), not the day's: half the values' 10-90% range is ~17.
    assert base.series_.filter(pl.col("measure") == "metric.value")["scale"][0] < 5.0


def test_an_hour_with_one_odd_sync_gets_no_offset():
    """Every four hours on the hour, but once a minute early, alone in its hour of the week,
    and odd: a fifth of the records gone (a sync left out of training before it), the
    metric 30 off. One sync is no swing within its block: neither the count nor the metric
    gets an offset there (counts get none at all: a resource's size does not swing within
    four hours), so next week's sync at that hour is judged against its block."""
    t0 = datetime(2026, 1, 5, tzinfo=UTC)
    n = 6 * 7 * 8  # eight weeks
    odd = 6 * 7 * 3 + 2  # a Wednesday, 08:00 sync
    records = [
        make_record("app", i, kind="custom", api=...,
                    start=t0 + timedelta(hours=4 * i, minutes=-1 if i == odd else 0),
                    metrics={"value": 100.0 + (30.0 if i == odd else 0.0) + (i % 3)},
                    resources={"item": {"count": 800 if i == odd else 1000 + (i % 3),
                                        "added": 0, "removed": 0}})
        for i in range(n)
    ]
    base, _ = _metric_baseline(records)
    assert base.hours_.filter(pl.col("measure") == "item.count").height == 0
    odd_hour = base.hours_.filter(
        (pl.col("measure") == "metric.value") & (pl.col("bucket") == 2 * 24 + 7)
    )
    assert odd_hour.height == 0


def test_a_metric_without_a_swing_within_its_blocks_keeps_its_blocks_exactly():
    """Noise alone gives no hour offsets: the profile and scale are the blocks' ones."""
    values = 100.0 + np.random.default_rng(1).normal(0.0, 1.0, 2 * 24 * 42)
    base, resid = _metric_baseline(_half_hourly_metric(values))
    assert base.hours_.filter(pl.col("measure") == "metric.value").height == 0
    blocks = base.profile_.filter(pl.col("measure") == "metric.value")
    assert blocks["bucket"].max() == 41  # profiles are per block of the week
    # Every sync is judged against its block's expected value.
    block_of_row = (
        resid.select(((pl.col("started_at").dt.weekday() - 1) * 6
                      + pl.col("started_at").dt.hour() // 4).alias("bucket"))["bucket"]
    )
    expected = dict(zip(blocks["bucket"].to_list(), blocks["expected"].to_list(), strict=True))
    assert resid["expected_x"].to_list() == [expected[b] for b in block_of_row.to_list()]


def test_explanations_state_a_large_custom_metric_in_its_own_units():
    """A level metric's expected value and range are not bounded like the exponentiated
    scales (a throughput of 100 was once explained as "expected 50.0")."""
    values = 1000.0 + np.random.default_rng(2).normal(0.0, 5.0, 2 * 24 * 30)
    base, resid = _metric_baseline(_half_hourly_metric(values))
    raw = base.expected_raw(resid)
    assert raw["expected_raw"].min() > 980.0
    assert (raw["range_lo"] < raw["expected_raw"]).all()
    assert (raw["expected_raw"] < raw["range_hi"]).all()


def _null_rate_baseline(null_records: np.ndarray, size: int = 326):
    """A connector syncing hourly a ``size``-record resource whose field ``role`` is null
    on ``null_records[i]`` records at sync ``i``: its baseline fitted on every sync but
    the last, and the residuals of ``role``'s null rate at every sync."""
    from detector.baseline import SeasonalBaseline
    from detector.habits import connector_intervals

    records = [
        make_record("slack-a", i, kind="slack", api=..., metrics=...,
                    resources={"grant": {"count": size, "added": 0, "removed": 0,
                                         "null_rates": {"role": float(k) / size}}})
        for i, k in enumerate(null_records)
    ]
    syncs, features = build_features(*prepare(records))
    ivals = connector_intervals(syncs).select("connector_id", "interval_s")
    history = features.filter(pl.col("row") < len(records) - 1)
    base = SeasonalBaseline().fit(history, ivals)
    resid = base.residuals(features, ivals).filter(pl.col("measure") == "grant.null_rate.role")
    return resid.sort("row")["z"].to_numpy()


def test_a_field_blanked_where_it_is_rarely_null_is_far_out_on_a_large_resource():
    """On 326 records a field is null on none or one of them; then on 313. The logit's
    Gaussian error at so few expected nulls is 1.4 logit units and called that 7 scales
    out, as ordinary as a field near 97 % null going all-null; as a count of null
    records it is beyond doubt, while the ones and twos of normal syncs stay near."""
    normal = np.random.default_rng(3).binomial(326, 0.002, 24 * 42)
    z = _null_rate_baseline(np.r_[normal, 313])
    assert z[-1] >= 20.0
    assert np.quantile(np.abs(z[:-1]), 0.99) < 3.5


def test_a_model_file_from_before_rare_null_counts_judges_null_rates_as_it_was_fitted(fleet):
    """Files written before ``min_logit_records`` were calibrated on logit residuals above
    100 records: they load with it at 0, and scoring is what it was; new files keep it."""
    model, _, test, state, facts = fleet
    arrays, config = model.to_arrays()
    assert FleetModel.from_arrays(arrays, config).baseline_.min_logit_records == 20.0
    older = FleetModel.from_arrays(
        arrays, {k: v for k, v in config.items() if k != "min_logit_records"}
    )
    assert older.baseline_.min_logit_records == older.pooled_baseline_.min_logit_records == 0
    bases = (model.baseline_, model.pooled_baseline_)
    try:
        for base in bases:
            base.min_logit_records = 0.0
        logit_only = model.score(test[:60], state=state, facts=facts).results
    finally:
        for base in bases:
            base.min_logit_records = 20.0
    pl.testing.assert_frame_equal(
        older.score(test[:60], state=state, facts=facts).results, logit_only
    )


def test_duplicates_where_history_had_none_are_a_rare_event(fleet):
    """A connector that never reported a duplicate of a resource type: one now is about a
    one-in-a-thousand sync, like a first ``partial`` status, not the one in twenty that
    the floor for churn (which is life) would make it. Where history had duplicates,
    their learned rate judges."""
    from detector.baseline import SeasonalBaseline
    from detector.habits import connector_intervals

    _, history, _, _, _ = fleet
    syncs, features = build_features(*prepare(history))
    ivals = connector_intervals(syncs).select("connector_id", "interval_s")
    baseline = SeasonalBaseline().fit(features, ivals)
    duplicates = features.filter(pl.col("measure").str.ends_with(".duplicates"))
    had = duplicates.group_by("connector_id", "measure").agg(
        (pl.col("value") > 0).any().alias("had_duplicates"))
    one = baseline.residuals(duplicates.with_columns(pl.lit(1.0).alias("value")), ivals)
    z = one.join(had, on=["connector_id", "measure"]).group_by("had_duplicates").agg(
        pl.col("z").min().alias("least"), pl.col("z").max().alias("most"))
    by_history = {row["had_duplicates"]: row for row in z.iter_rows(named=True)}
    assert by_history[False]["least"] > 3.0  # mid-p z of one event where ~1e-3 expected
    assert by_history[True]["most"] < by_history[False]["least"]


def test_a_model_knows_when_its_history_ended_and_its_file_keeps_it(fleet, tmp_path):
    """``history_end_`` is the start of the last sync fitted on; a model file keeps it, and
    files written before it load without one."""
    model, history, *_ = fleet
    starts = {datetime.fromisoformat(r["started_at"].replace("Z", "+00:00")) for r in history}
    assert model.history_end_ in starts
    assert model.history_end_ >= max(starts) - timedelta(days=1)
    arrays, config = model.to_arrays()
    loaded = load_model_dir(save_model_dir(tmp_path / "m", arrays=arrays, config=config))
    assert FleetModel.from_arrays(loaded.arrays, loaded.config).history_end_ == model.history_end_
    older = {k: v for k, v in config.items() if k != "history_end"}
    assert FleetModel.from_arrays(arrays, older).history_end_ is None
