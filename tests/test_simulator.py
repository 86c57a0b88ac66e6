"""Tests for the fleet simulator (training/simulator).

The simulator is the yardstick for the detector, so these tests check both
the contract (schema, determinism, labels) and that normal life and the fault
classes look the way they are documented to look. Each realism check compares
against a threshold the simulator could plausibly miss.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections import defaultdict
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from training.simulator import (
    DEFAULT_START,
    FAULT_CLASSES,
    describe_fleet,
    simulate_fleet,
    write_fleet,
)

SCHEMA = Path(__file__).resolve().parents[1] / "detector" / "schemas" / "sync-record.schema.json"
RFC3339_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
HUMAN_KINDS = {"okta", "entra", "workday", "github", "salesforce", "slack"}

N_CONN, N_DAYS, SEED = 60, 120, 11


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 60-connector, 120-day fleet written to real files and read back."""
    out = tmp_path_factory.mktemp("fleet")
    summary = write_fleet(out, N_CONN, N_DAYS, SEED)
    records = _read_jsonl(out / "syncs.jsonl")
    labels = _read_jsonl(out / "labels.jsonl")
    meta = {c["connector_id"]: c for c in describe_fleet(N_CONN, SEED)}
    by_conn: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
    for rec, lab in zip(records, labels, strict=True):
        by_conn[rec["connector_id"]].append((rec, lab))
    return {"summary": summary, "records": records, "labels": labels, "meta": meta,
            "by_conn": by_conn}


def _local(rec: dict, tz: str) -> dt.datetime:
    return dt.datetime.fromisoformat(rec["started_at"]).astimezone(ZoneInfo(tz))


def _clean_pairs(fleet: dict):
    """(prev, cur, meta) for consecutive syncs that are both normal with resources."""
    for cid, rows in fleet["by_conn"].items():
        for (r0, l0), (r1, l1) in zip(rows, rows[1:], strict=False):
            if (l0["label"] == l1["label"] == "normal" and "resources" in r0
                    and "resources" in r1):
                yield r0, r1, fleet["meta"][cid]


def _episodes(fleet: dict, cls: str):
    """(rows before, rows in episode, rows after) for every episode of a class."""
    for rows in fleet["by_conn"].values():
        ids = [lab["episode"] for _, lab in rows]
        seen = set()
        for i, (_, lab) in enumerate(rows):
            if lab["class"] == cls and lab["episode"] not in seen:
                seen.add(lab["episode"])
                j = i
                while j < len(rows) and ids[j] == lab["episode"]:
                    j += 1
                yield rows[:i], rows[i:j], rows[j:]


# --- determinism ------------------------------------------------------------------

def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    sa = write_fleet(a, 8, 20, seed=3)
    write_fleet(b, 8, 20, seed=3)
    write_fleet(c, 8, 20, seed=4)
    for name in ("syncs.jsonl", "labels.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "syncs.jsonl").read_bytes() != (c / "syncs.jsonl").read_bytes()
    assert sa["syncs"] == len((a / "syncs.jsonl").read_text().splitlines())
    assert sa["start"] == "2026-06-01T00:00:00Z"


def test_default_start_is_fixed() -> None:
    records, _ = simulate_fleet(2, days=2, seed=0)
    first = min(dt.datetime.fromisoformat(r["started_at"]) for r in records)
    assert DEFAULT_START <= first < DEFAULT_START + dt.timedelta(days=1)


# --- contract -----------------------------------------------------------------

def _strict_format_checker() -> FormatChecker:
    checker = FormatChecker()
    if "date-time" not in checker.checkers:
        # jsonschema only checks date-time with an optional extra installed;
        # without it the format would pass silently, so check it here.
        @checker.checks("date-time", raises=ValueError)
        def _date_time(value: object) -> bool:
            if not isinstance(value, str):
                return True
            if not re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$",
                            value):
                raise ValueError(f"not RFC 3339: {value!r}")
            dt.datetime.fromisoformat(value)
            return True
    return checker


def test_records_validate_against_the_schema(fleet: dict) -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = Draft202012Validator(schema, format_checker=_strict_format_checker())
    records = fleet["records"]
    rng = np.random.default_rng(0)
    # Every fault sync plus a random sample of the rest keeps this fast.
    faulty = [i for i, lab in enumerate(fleet["labels"]) if lab["label"] != "normal"]
    sample = sorted(set(faulty) | set(rng.choice(len(records), 1500, replace=False).tolist()))
    errors = [(records[i]["sync_id"], e.message) for i in sample
              for e in validator.iter_errors(records[i])]
    assert errors == []
    # Rules the schema cannot express (checked by detector.contract): all records.
    ids = set()
    for rec in records:
        assert RFC3339_Z.match(rec["started_at"]) and RFC3339_Z.match(rec["finished_at"])
        assert rec["finished_at"] >= rec["started_at"]
        assert rec["status"] == "failed" or "resources" in rec
        assert rec["sync_id"] == f"{rec['connector_id']}:{rec['started_at']}"
        ids.add(rec["sync_id"])
    assert len(ids) == len(records)


def test_records_are_sorted_by_start(fleet: dict) -> None:
    starts = [r["started_at"] for r in fleet["records"]]
    assert starts == sorted(starts)


def test_validator_catches_a_broken_record(fleet: dict) -> None:
    # The schema check above must be able to fail.
    schema = json.loads(SCHEMA.read_text())
    validator = Draft202012Validator(schema, format_checker=_strict_format_checker())
    rec = json.loads(json.dumps(fleet["records"][0]))
    next(iter(rec["resources"].values()))["count"] = -1
    rec["started_at"] = "2026-06-01 00:00:00"
    assert len(list(validator.iter_errors(rec))) == 2


# --- labels -------------------------------------------------------------------

def test_labels_are_one_to_one_with_syncs(fleet: dict) -> None:
    records, labels = fleet["records"], fleet["labels"]
    assert [r["sync_id"] for r in records] == [lab["sync_id"] for lab in labels]
    for lab in labels:
        assert set(lab) == {"sync_id", "connector_id", "label", "class", "episode"}
        if lab["label"] == "normal":
            assert lab["class"] == "normal" and lab["episode"] is None
        elif lab["label"] == "ambiguous":
            assert lab["class"] == "access_review_cleanup"
            assert re.fullmatch(r"ar-\d{4}", lab["episode"])
        else:
            assert lab["label"] == "anomaly" and lab["class"] in FAULT_CLASSES
            assert re.fullmatch(r"ep-\d{4}", lab["episode"])


def test_every_fault_class_present_and_rate_near_configured(fleet: dict) -> None:
    episodes = fleet["summary"]["episodes"]
    assert set(FAULT_CLASSES) <= set(episodes)
    n_faults = sum(episodes[c] for c in FAULT_CLASSES)
    expected = 1.0 * N_CONN * (N_DAYS - 7) / 30  # default: 1 per connector per 30 days
    assert 0.9 * expected <= n_faults <= 1.05 * expected
    # Balanced mix: no class more than twice as common as another.
    counts = [episodes[c] for c in FAULT_CLASSES]
    assert max(counts) <= 2 * min(counts)
    amb_expected = 0.5 * (N_DAYS - 7) / 30 * sum(
        1 for m in fleet["meta"].values() if m["connector_kind"] not in ("workday", "vault"))
    assert 0.8 * amb_expected <= episodes["access_review_cleanup"] <= 1.05 * amb_expected


def test_episodes_are_contiguous_and_after_warmup(fleet: dict) -> None:
    warm = DEFAULT_START + dt.timedelta(days=7)
    for rows in fleet["by_conn"].values():
        ids = [lab["episode"] for _, lab in rows]
        for ep in {e for e in ids if e}:
            where = [i for i, e in enumerate(ids) if e == ep]
            assert where == list(range(where[0], where[-1] + 1)), ep
            assert len({rows[i][1]["class"] for i in where}) == 1
            assert dt.datetime.fromisoformat(rows[where[0]][0]["started_at"]) >= warm
            # The sync after an episode is normal: the data came back.
            if where[-1] + 1 < len(rows):
                assert rows[where[-1] + 1][1]["label"] == "normal"


def test_class_weights_and_rates_are_honoured() -> None:
    _, labels = simulate_fleet(6, 40, 1, class_weights={"auth_failure": 1.0, **{
        c: 0.0 for c in FAULT_CLASSES if c != "auth_failure"}}, ambiguous_rate=0.0)
    classes = {lab["class"] for lab in labels}
    assert classes == {"normal", "auth_failure"}
    _, labels = simulate_fleet(6, 40, 1, fault_rate=0.0, ambiguous_rate=0.0)
    assert {lab["label"] for lab in labels} == {"normal"}
    with pytest.raises(ValueError, match="unknown fault classes"):
        simulate_fleet(2, 10, 0, class_weights={"gremlins": 1.0})


def test_tiny_fleet_still_gets_a_mix_of_classes() -> None:
    _, labels = simulate_fleet(4, 90, 2)
    classes = {lab["class"] for lab in labels if lab["label"] == "anomaly"}
    assert len(classes) >= 8


# --- realism: normal life -----------------------------------------------------

def test_counts_follow_churn_between_consecutive_normal_syncs(fleet: dict) -> None:
    checked = 0
    for r0, r1, _ in _clean_pairs(fleet):
        for name, s in r1["resources"].items():
            p = r0["resources"][name]
            # Churn is a keyed diff: duplicate rows are in the count, not in the diff.
            assert (s["count"] - s.get("duplicates", 0)
                    == p["count"] - p.get("duplicates", 0) + s["added"] - s["removed"]), (
                r1["sync_id"], name)
            checked += 1
    assert checked > 50_000


def test_weekend_churn_per_record_is_lower_than_weekday(fleet: dict) -> None:
    week = defaultdict(list)
    for _, r1, meta in _clean_pairs(fleet):
        if meta["connector_kind"] not in HUMAN_KINDS or meta["interval_h"] > 6:
            continue
        prim = next(iter(r1["resources"].values()))
        if prim["count"] < 500:
            continue  # small apps are dominated by team bursts
        churn = (prim["added"] + prim["removed"]) / prim["count"]
        week[_local(r1, meta["tz"]).weekday() >= 5].append(churn)
    weekday, weekend = np.mean(week[False]), np.mean(week[True])
    assert weekend < 0.5 * weekday


def test_business_hour_latency_is_higher_than_night(fleet: dict) -> None:
    ratios = []
    per_conn: dict[str, dict[bool, list[float]]] = defaultdict(lambda: defaultdict(list))
    for _, r1, meta in _clean_pairs(fleet):
        if meta["interval_h"] > 4:
            continue
        local = _local(r1, meta["tz"])
        if local.weekday() >= 5:
            continue
        if 10 <= local.hour < 16:
            per_conn[meta["connector_id"]][True].append(r1["api"]["latency_p50_ms"])
        elif 0 <= local.hour < 5:
            per_conn[meta["connector_id"]][False].append(r1["api"]["latency_p50_ms"])
    for groups in per_conn.values():
        if groups[True] and groups[False]:
            ratios.append(np.median(groups[True]) / np.median(groups[False]))
    assert len(ratios) >= 10
    assert np.mean(np.array(ratios) > 1.0) >= 0.9
    assert math.exp(np.mean(np.log(ratios))) > 1.15


def test_requests_follow_pagination_and_grow_with_size(fleet: dict) -> None:
    sizes, reqs = [], []
    for _, r1, meta in _clean_pairs(fleet):
        pages = sum(max(math.ceil(s["count"] / meta["page_size"]), 1)
                    for s in r1["resources"].values())
        req = r1["api"]["requests"]
        assert pages <= req <= pages + 10 + 2 * r1["api"]["retries"], r1["sync_id"]
        sizes.append(sum(s["count"] for s in r1["resources"].values()))
        reqs.append(req)
    corr = np.corrcoef(np.log1p(sizes), np.log1p(reqs))[0, 1]
    assert corr > 0.8


def test_fleet_has_varied_sizes_cadences_and_big_directories(fleet: dict) -> None:
    metas = list(fleet["meta"].values())
    prim = [next(iter(m["sizes"].values())) for m in metas]
    assert min(prim) < 100 and max(prim) > 50_000
    assert sum(1 for m in metas if m["family"] == "directory"
               and next(iter(m["sizes"].values())) >= 50_000) >= 2
    assert len({m["interval_h"] for m in metas}) >= 5
    assert len({m["tz"] for m in metas}) >= 5
    assert len({m["connector_kind"] for m in metas}) == 9


def test_small_apps_have_team_bursts_labelled_normal(fleet: dict) -> None:
    bursts = 0
    for r0, r1, meta in _clean_pairs(fleet):
        if not meta["small_app"]:
            continue
        user, before = r1["resources"]["user"], r0["resources"]["user"]
        if before["count"] < 200:
            moved = max(user["added"], user["removed"])
            if moved >= 5 and moved >= 0.1 * before["count"]:
                bursts += 1
    assert bursts >= 5


def test_access_review_is_a_lasting_level_shift(fleet: dict) -> None:
    n = 0
    for before, during, after in _episodes(fleet, "access_review_cleanup"):
        rec = during[0][0]
        prev = before[-1][0]
        dropped = [t for t, s in rec["resources"].items()
                   if s["removed"] >= 0.08 * prev["resources"][t]["count"] > 0]
        assert len(dropped) == 1, rec["sync_id"]
        t = dropped[0]
        level = rec["resources"][t]["count"]
        later = [r for r, lab in after[:5] if lab["label"] == "normal" and "resources" in r]
        for r in later:
            # It stays down: no churn brings the removed access back.
            assert abs(r["resources"][t]["count"] - level) <= 0.05 * level + 20
        n += 1
    assert n > 0


# --- realism: fault signatures ----------------------------------------------------

def test_frozen_snapshot_replays_the_previous_sync(fleet: dict) -> None:
    n = 0
    for before, during, _ in _episodes(fleet, "frozen_snapshot"):
        src = before[-1][0]
        assert len(during) >= 3
        for rec, _ in during:
            assert rec["status"] == "succeeded"
            for name, s in rec["resources"].items():
                ref = src["resources"][name]
                assert s["count"] == ref["count"]
                assert s.get("null_rates") == ref.get("null_rates")
                assert s["added"] == s["removed"] == s.get("modified", 0) == 0
            assert rec["api"]["requests"] <= 3
        n += 1
    assert n > 0


def test_fault_classes_have_their_signatures(fleet: dict) -> None:
    def counts(rec: dict) -> dict[str, int]:
        return {t: s["count"] for t, s in rec["resources"].items()}

    for _, during, _ in _episodes(fleet, "auth_failure"):
        for rec, _ in during:
            assert rec["status"] == "failed" and rec["error_class"] == "auth"
            assert "resources" not in rec
    for _, during, _ in _episodes(fleet, "empty_success"):
        rec = during[0][0]
        assert rec["status"] == "succeeded" and 0 in counts(rec).values()
    for _, during, _ in _episodes(fleet, "partial_reported"):
        assert all(rec["status"] == "partial" for rec, _ in during)
    for before, during, _ in _episodes(fleet, "partial_silent"):
        rec, prev = during[0][0], before[-1][0]
        assert rec["status"] == "succeeded"
        assert any(c <= 0.85 * counts(prev)[t] for t, c in counts(rec).items())
    for before, during, _ in _episodes(fleet, "page_truncation"):
        rec, prev = during[0][0], before[-1][0]
        cid = rec["connector_id"]
        ps = fleet["meta"][cid]["page_size"]
        assert any(c % ps == 0 and c < counts(prev)[t] for t, c in counts(rec).items())
    for before, during, _ in _episodes(fleet, "subtle_partial"):
        rec, prev = during[0][0], before[-1][0]
        users = counts(prev)["user"]
        assert users >= 50_000
        assert 0.02 * users <= users - counts(rec)["user"] <= 0.11 * users
    for before, during, _ in _episodes(fleet, "schema_drift"):
        rec, prev = during[0][0], before[-1][0]
        jumps = [(t, f) for t, s in rec["resources"].items()
                 for f, v in s.get("null_rates", {}).items()
                 if v >= 0.9 and prev["resources"][t]["null_rates"][f] < 0.5]
        assert len(jumps) == 1
    for before, during, _ in _episodes(fleet, "retry_duplicates"):
        rec, prev = during[0][0], before[-1][0]
        assert rec["api"]["retries"] >= 5
        assert any(c >= 1.04 * counts(prev)[t] for t, c in counts(rec).items())
    for before, during, _ in _episodes(fleet, "api_instability"):
        rec, prev = during[0][0], before[-1][0]
        assert rec["api"]["latency_p50_ms"] >= 1.5 * prev["api"]["latency_p50_ms"]
        assert rec["api"]["errors"] >= 3
        assert counts(rec).keys() == counts(prev).keys()
    for before, during, _ in _episodes(fleet, "missing_entitlements"):
        rec, prev = during[0][0], before[-1][0]
        assert any(c <= 0.45 * counts(prev)[t] for t, c in counts(rec).items())
