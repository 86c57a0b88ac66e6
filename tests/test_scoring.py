"""The scoring service on a real store and a real (small) fitted model.

Exactly-once decisions, replays, input order, time order across runs, fail closed, and a
crash mid-batch that a rerun finishes.
"""

from __future__ import annotations

import gc
import io
import json
import shutil

import numpy as np
import polars as pl
import pytest
from scoring_support import Fleet, ingest_history, install_champion

from detector.contract import parse_lines
from detector.events.native import validate
from detector.events.sinks import StdoutSink
from detector.home import Home
from detector.modelfile import ARRAYS_NAME
from detector.scoring import Scorer, load_scoring_model, score_items
from detector.store import Store

pytest_plugins = ["scoring_fixtures"]  # fleet, scoring_home

def _score(home: Home, lines: list[str], **kw):
    out = io.StringIO()
    with Store.open(home.store_path) as store:
        run = score_items(home, store, parse_lines(lines, source="t"), source="t",
                          actor="tester", sinks=[StdoutSink(stream=out)], **kw)
    return run, [json.loads(line) for line in out.getvalue().splitlines()]


def _table(home: Home, sql: str) -> list[tuple]:
    with Store.open(home.store_path) as store:
        return store.conn.execute(sql).fetchall()


def _batch_decisions(fleet: Fleet, records: list[dict]) -> dict[str, str]:
    state, facts = fleet.model.initial_state(fleet.history)
    result = fleet.model.score(records, state=state, facts=facts)
    return dict(zip(result.results["sync_id"], result.results["decision"], strict=True))


def _known(fleet: Fleet, decisions: dict[str, str]) -> dict[str, str]:
    """Decisions of connectors with a model of their own (not cold start).

    Scored by the pooled model, a cold-start connector's decisions can depend on how a
    window is cut into batches (seen with the model at commit 263982b: one sync 'review'
    in three batches, 'proceed' in one); only the others are compared across batchings.
    """
    intervals = fleet.model.intervals_
    known = set(intervals.filter(intervals["n_syncs"] >= fleet.model.min_history)
                ["connector_id"])
    return {s: d for s, d in decisions.items() if s.split(":", 1)[0] in known}


def test_batch_scores_every_sync_once_in_input_order(scoring_home: Home, fleet: Fleet) -> None:
    shuffled = fleet.test[::-1]  # input order is not time order
    run, events = _score(scoring_home, fleet.lines(shuffled))
    assert [e["sync_id"] for e in events] == [r["sync_id"] for r in shuffled]
    assert run.scored == len(shuffled) and run.replayed == 0
    for event in events:
        validate(event)
        assert event["model_version"] == "1" and not event["replay"]
    # The same decisions as the model scoring the whole window from the end of history.
    assert {e["sync_id"]: e["decision"] for e in events} == _batch_decisions(fleet, fleet.test)
    rows = _table(scoring_home, "SELECT count(*), count(DISTINCT sync_id) FROM scores")
    assert rows == [(len(shuffled), len(shuffled))]
    assert run.decisions()["pause"] > 0 and run.exit_code == 3


def test_one_sync_at_a_time_gives_the_batch_decisions(scoring_home: Home, fleet: Fleet) -> None:
    # One connector that pauses and stays paused, one scored cold (pooled model).
    window = [r for r in fleet.test if r["connector_id"] in ("entra-contoso-01",
                                                             "aws-iam-prod-01")]
    singles = {}
    for line in fleet.lines(window):  # each sync in its own run: state persisted between
        _run, events = _score(scoring_home, [line])
        singles[events[0]["sync_id"]] = events[0]["decision"]
    batch = _batch_decisions(fleet, window)
    assert "pause" in batch.values() and singles == batch


def test_rescoring_replays_the_stored_decision(scoring_home: Home, fleet: Fleet) -> None:
    lines = fleet.lines(fleet.test[:30])
    _run, first = _score(scoring_home, lines)
    audit_before = _table(scoring_home, "SELECT count(*) FROM audit_log WHERE action='score'")
    run, again = _score(scoring_home, lines + lines[:2])  # and a repeat within the input
    assert run.scored == 0 and run.replayed == 32
    assert all(e["replay"] for e in again)
    strip = [{k: v for k, v in e.items() if k != "replay"} for e in again]
    assert strip[:30] == [{k: v for k, v in e.items() if k != "replay"} for e in first]
    assert _table(scoring_home, "SELECT count(*) FROM scores") == [(30,)]
    assert _table(scoring_home,
                  "SELECT count(*) FROM audit_log WHERE action='score'") == audit_before


def test_repeat_within_one_input_is_one_decision(scoring_home: Home, fleet: Fleet) -> None:
    line = fleet.lines(fleet.test[:1])[0]
    run, events = _score(scoring_home, [line, line])
    assert [e["replay"] for e in events] == [False, True]
    assert events[0]["event_id"] == events[1]["event_id"] and run.scored == 1


def test_rejected_record_pauses_its_connector(scoring_home: Home, fleet: Fleet) -> None:
    bad = dict(fleet.test[0], status="exploded")
    nameless = {"sync_id": "x"}
    run, events = _score(scoring_home, [json.dumps(bad), json.dumps(nameless),
                                        fleet.lines(fleet.test[1:2])[0]])
    assert run.exit_code == 4 and len(run.ingest.rejected) == 2
    invalid = events[0]
    assert invalid["event_type"] == "invalid_record" and invalid["decision"] == "pause"
    assert invalid["connector_id"] == bad["connector_id"]
    assert invalid["violation"]["field"] == "status"
    assert len(events) == 2  # the record naming no connector has no connector to pause
    pauses = _table(scoring_home, "SELECT connector_id, reason, opened_sync_id FROM pauses")
    assert (bad["connector_id"], "invalid_record", bad["sync_id"]) in pauses


def test_conflict_exits_4_and_returns_the_first_version(scoring_home: Home,
                                                        fleet: Fleet) -> None:
    record = fleet.test[0]
    _score(scoring_home, fleet.lines([record]))
    changed = dict(record, finished_at=record["started_at"])
    run, events = _score(scoring_home, [json.dumps(changed)])
    assert run.exit_code == 4 and len(run.ingest.conflicts) == 1
    assert events[0]["sync_id"] == record["sync_id"] and events[0]["replay"]


def test_missing_model_fails_closed(tmp_path, fleet: Fleet) -> None:
    home = Home(tmp_path / "home").ensure()
    ingest_history(home, fleet.history)
    run, events = _score(home, fleet.lines(fleet.test[:5]))
    assert run.exit_code == 3 and run.unscorable and "no champion model" in run.unscorable
    for event in events:
        validate(event)
        assert event["decision"] == "pause" and event["model_version"] is None
        assert event["rule_hits"][0]["rule"] == "unscorable"
    reasons = _table(home, "SELECT reason FROM pauses")
    assert sorted(set(reasons)) == [("unscorable",)]
    # The decision is final: a working model later replays it, never a second decision.
    install_champion(home, fleet.model)
    run, again = _score(home, fleet.lines(fleet.test[:5]))
    assert run.scored == 0 and [e["decision"] for e in again] == ["pause"] * 5


def test_tampered_model_fails_closed_naming_the_file(scoring_home: Home,
                                                     fleet: Fleet) -> None:
    arrays = scoring_home.model_cache_dir / "1" / ARRAYS_NAME
    data = bytearray(arrays.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arrays.write_bytes(bytes(data))
    run, events = _score(scoring_home, fleet.lines(fleet.test[:3]))
    assert {e["decision"] for e in events} == {"pause"}
    assert str(arrays) in run.unscorable and "integrity check" in run.unscorable
    assert str(arrays) in events[0]["rule_hits"][0]["detail"]


def test_left_behind_syncs_are_scored_first_in_time_order(scoring_home: Home,
                                                          fleet: Fleet) -> None:
    cid = fleet.test[0]["connector_id"]
    own = [r for r in fleet.test if r["connector_id"] == cid]
    _score(scoring_home, fleet.lines(own[:3]))
    ingest_history(scoring_home, own[3:8])  # stored by a run that crashed before scoring
    _run, events = _score(scoring_home, fleet.lines(own[8:9]))
    scored = [r[0] for r in _table(
        scoring_home, f"SELECT sync_id FROM scores WHERE connector_id = '{cid}' "
        "ORDER BY started_ts")]
    assert scored == [r["sync_id"] for r in own[:9]]
    assert events[0]["sync_id"] == own[8]["sync_id"] and not events[0]["replay"]
    decided = dict(_table(scoring_home, "SELECT sync_id, decision FROM scores"))
    assert decided == {k: v for k, v in _batch_decisions(fleet, own[:9]).items()}


class _Crash(BaseException):
    """Stands for the process dying (not an error the service may catch)."""


class _CrashingModel:
    """The real model, dying on its ``crash_on``-th call."""

    def __init__(self, model, crash_on: int) -> None:
        self._model, self._left = model, crash_on

    def __getattr__(self, name):
        return getattr(self._model, name)

    def score(self, *args, **kwargs):
        self._left -= 1
        if self._left == 0:
            raise _Crash
        return self._model.score(*args, **kwargs)


def test_crash_mid_batch_loses_nothing_and_a_rerun_finishes(scoring_home: Home,
                                                            fleet: Fleet) -> None:
    ids = [r["sync_id"] for r in fleet.test]
    with Store.open(scoring_home.store_path) as store:
        store.ingest(parse_lines(fleet.lines()), source="t")
        model, version = load_scoring_model(scoring_home)
        scorer = Scorer(store, _CrashingModel(model, 3), version, actor="t", chunk_syncs=100)
        with pytest.raises(_Crash):
            scorer.score(ids)
    assert _table(scoring_home, "SELECT count(*) FROM scores") == [(200,)]  # 2 chunks
    run, events = _score(scoring_home, fleet.lines())
    assert run.scored == len(ids) - 200
    assert sum(e["replay"] for e in events) == 200
    assert _table(scoring_home, "SELECT count(*), count(DISTINCT sync_id) FROM scores") == [
        (len(ids), len(ids))]
    decided = {e["sync_id"]: e["decision"] for e in events}
    assert _known(fleet, decided) == _known(fleet, _batch_decisions(fleet, fleet.test))


class _GcWatch(StdoutSink):
    """A sink that notes whether the cyclic collector was on when events came out."""

    def __init__(self) -> None:
        super().__init__(stream=io.StringIO())
        self.enabled: list[bool] = []

    def emit_many(self, events) -> None:  # noqa: ANN001 - the Sink signature
        self.enabled.append(gc.isenabled())
        super().emit_many(events)


@pytest.mark.parametrize("enabled", [True, False])
def test_cyclic_gc_is_off_for_a_run_and_as_it_was_after(scoring_home: Home, fleet: Fleet,
                                                        enabled: bool) -> None:
    """score_items pauses the cyclic collector (its containers live to the run's end) and
    leaves it as it found it, also when the run fails."""
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        watch = _GcWatch()
        with Store.open(scoring_home.store_path) as store:
            run = score_items(scoring_home, store, parse_lines(fleet.lines(fleet.test[:30])),
                              source="t", actor="t", sinks=[watch])
            assert watch.enabled == [False] and run.scored == 30
            assert gc.isenabled() is enabled
            with pytest.raises(_Crash):
                score_items(scoring_home, store, _crashing(fleet.lines(fleet.test[30:40])),
                            source="t", actor="t")
            assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


def _crashing(lines: list[str]):
    yield from parse_lines(lines[:3])
    raise _Crash("input cut short")


def test_scoring_failure_fails_closed(scoring_home: Home, fleet: Fleet) -> None:
    class Broken(_CrashingModel):
        def score(self, *args, **kwargs):
            raise ValueError("boom")

    with Store.open(scoring_home.store_path) as store:
        store.ingest(parse_lines(fleet.lines(fleet.test[:4])), source="t")
        model, version = load_scoring_model(scoring_home)
        scorer = Scorer(store, Broken(model, 0), version, actor="t")
        events = scorer.score([r["sync_id"] for r in fleet.test[:4]])
    assert {e["decision"] for e in events.values()} == {"pause"}
    hit = next(iter(events.values()))["rule_hits"][0]
    assert hit == {"rule": "unscorable", "detail": "scoring failed: ValueError: boom"}


def test_state_saved_is_what_the_model_returned(scoring_home: Home, fleet: Fleet) -> None:
    _score(scoring_home, fleet.lines())
    state, facts = fleet.model.initial_state(fleet.history)
    result = fleet.model.score(fleet.test, state=state, facts=facts)
    from detector.store.state import load_state

    with Store.open(scoring_home.store_path) as store:
        saved_state, saved_facts = load_state(store.conn, result.facts["connector_id"])
    assert saved_state.equals(result.state.sort("connector_id", "measure"))
    assert saved_facts.equals(result.facts.sort("connector_id"))


def test_facts_frames_have_one_schema(fleet: Fleet) -> None:
    """The facts a model starts from and returns, and the store's empty ones, are
    FACTS_SCHEMA's columns and types in its order (the store saves and loads by it)."""
    from detector.features import FACTS_SCHEMA
    from detector.store.state import empty_facts

    state, facts = fleet.model.initial_state(fleet.history)
    result = fleet.model.score(fleet.test[:5], state=state, facts=facts)
    for frame in (facts, result.facts, empty_facts()):
        assert list(frame.schema.items()) == list(FACTS_SCHEMA.items())


def test_no_model_needed_without_records(tmp_path) -> None:
    home = Home(tmp_path / "home").ensure()
    run, events = _score(home, [json.dumps({"sync_id": "a", "connector_id": "c"})])
    assert run.exit_code == 4 and run.unscorable is None
    assert events[0]["event_type"] == "invalid_record"


def test_champion_loads_once_and_only_with_records(
        scoring_home: Home, fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    from detector import scoring

    loads: list[Home] = []

    def counted(home: Home):  # noqa: ANN202 - the real loader's result
        loads.append(home)
        return load_scoring_model(home)

    monkeypatch.setattr(scoring, "load_scoring_model", counted)
    _score(scoring_home, [json.dumps({"sync_id": "a", "connector_id": "c"})])
    assert loads == []  # nothing to score: no model read
    lines = [json.dumps({"sync_id": "b", "connector_id": "c"}), *fleet.lines(fleet.test[:4])]
    run, events = _score(scoring_home, lines)
    assert loads == [scoring_home]
    assert run.model_version == "1" and run.scored == 4 and len(events) == 5


def test_champion_loads_while_the_input_is_read(
        scoring_home: Home, fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    """The load starts in its own thread at the first accepted record, before the rest of
    the input is parsed; a failing load still fails the run closed, in the caller."""
    import threading

    from detector import scoring
    from detector.errors import ModelError

    read: list[int] = []
    seen: list[tuple[str, int]] = []

    def counted(lines):  # noqa: ANN001, ANN202 - lines passed through, counted
        for line in lines:
            read.append(1)
            yield line

    def loader(home: Home):  # noqa: ANN202 - the real loader's result
        seen.append((threading.current_thread().name, len(read)))
        return load_scoring_model(home)

    monkeypatch.setattr(scoring, "load_scoring_model", loader)
    lines = [json.dumps({"sync_id": "b", "connector_id": "c"}), *fleet.lines(fleet.test[:40])]
    with Store.open(scoring_home.store_path) as store:
        run = score_items(scoring_home, store, parse_lines(counted(lines), source="t"),
                          source="t", actor="tester")
    # Started from the first accepted record (the second line), not after all 41.
    assert seen == [("syncguard-champion", 2)]
    assert run.scored == 40 and run.model_version == "1"

    def broken(home: Home):  # noqa: ANN202, ARG001 - raises as a bad model file does
        raise ModelError("the champion is damaged")

    monkeypatch.setattr(scoring, "load_scoring_model", broken)
    run, events = _score(scoring_home, fleet.lines(fleet.test[40:45]))
    assert run.unscorable == "the champion is damaged"
    assert [e["decision"] for e in events] == ["pause"] * 5


def test_paused_later_syncs_say_so_and_one_pause_per_connector(scoring_home: Home,
                                                               fleet: Fleet) -> None:
    _run, events = _score(scoring_home, fleet.lines())
    frame = pl.DataFrame(events).select("connector_id", "decision", "connector_paused")
    paused = frame.filter(pl.col("decision") == "pause")["connector_id"].unique().to_list()
    opened = _table(scoring_home, "SELECT connector_id, count(*) FROM pauses "
                                  "GROUP BY connector_id")
    assert sorted(opened) == sorted((c, 1) for c in paused)
    # After its first pause, every later sync of that connector carries connector_paused.
    for cid in paused:
        flags = frame.filter(pl.col("connector_id") == cid)
        first = flags["decision"].to_list().index("pause")
        assert all(flags["connector_paused"].to_list()[first:])


def test_copy_of_home_scores_the_same(scoring_home: Home, fleet: Fleet, tmp_path) -> None:
    """Scoring depends on nothing outside the home (no MLflow, no global state)."""
    other = Home(tmp_path / "copy")
    shutil.copytree(scoring_home.root, other.root)
    _r1, a = _score(scoring_home, fleet.lines(fleet.test[:20]))
    _r2, b = _score(other, fleet.lines(fleet.test[:20]))
    assert [e["decision"] for e in a] == [e["decision"] for e in b]


def test_records_decoded_ahead_score_as_the_model_decoding_them(
        scoring_home: Home, fleet: Fleet, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch's new records, decoded in a thread while the store is written, are what
    the chunk scores from; the run is the same as with the model decoding them itself."""
    from detector import scoring

    monkeypatch.setattr(scoring, "_now", lambda: "2026-06-22T00:00:00.000Z")
    other = Home(tmp_path / "copy")
    shutil.copytree(scoring_home.root, other.root)
    real_take = scoring.DecodedAhead.take
    taken: list[bool] = []

    def take(self, records):  # noqa: ANN001, ANN202 - the real method, its result noted
        wide = real_take(self, records)
        taken.append(wide is not None)
        return wide

    monkeypatch.setattr(scoring.DecodedAhead, "take", take)
    run, ahead = _score(scoring_home, fleet.lines(fleet.test[::-1]))
    assert taken == [True] and run.scored == len(fleet.test)
    monkeypatch.setattr(scoring.DecodedAhead, "take", lambda self, records: None)
    _run, itself = _score(other, fleet.lines(fleet.test[::-1]))
    assert ahead == itself
    sql = "SELECT * FROM scores ORDER BY sync_id"
    assert _table(scoring_home, sql) == _table(other, sql)
    sql = "SELECT * FROM scoring_state ORDER BY connector_id, measure"
    assert _table(scoring_home, sql) == _table(other, sql)


def test_decoded_ahead_only_for_the_very_texts_in_order(fleet: Fleet) -> None:
    from detector.frame import to_struct_frame
    from detector.scoring import DecodedAhead

    items = list(parse_lines(fleet.lines(fleet.test[:30])))
    ids = [it.record["sync_id"] for it in items]
    texts = pl.Series([it.canonical for it in sorted(
        items, key=lambda it: (it.times[0].timestamp(), it.record["sync_id"]))])
    decoded = DecodedAhead(items, ids, limit=100)
    assert decoded.take(texts.reverse()) is None  # another order: the model decodes
    decoded = DecodedAhead(items, ids, limit=100)
    assert decoded.take(texts).equals(to_struct_frame(texts))
    assert decoded.take(texts) is None  # handed over once
    decoded = DecodedAhead(items, ids, limit=29)  # more than a chunk: not decoded ahead
    assert decoded.take(texts) is None
    decoded = DecodedAhead(items, ids[1:], limit=100)  # one sync stored before
    assert decoded.take(texts) is None


def _same_bits(a: pl.DataFrame, b: pl.DataFrame) -> bool:
    """Same schema and rows in the same order, floats bit for bit (NaN, -0.0 included)."""
    if a.schema != b.schema or a.height != b.height:
        return False
    for name in a.columns:
        x, y = a[name], b[name]
        if x.dtype.is_float():
            if not np.array_equal(x.to_numpy().view(np.int64), y.to_numpy().view(np.int64)):
                return False
        elif not x.equals(y, null_equal=True):
            return False
    return True


@pytest.mark.parametrize("n_jobs", [2, 3])
def test_sharded_scoring_is_the_one_pass_result(fleet: Fleet, n_jobs: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Shards of connectors scored in threads merge back into the one-pass result: input
    order (shuffled, not time order), the second pass after new pauses, reasons, rule
    hits, and the state of a connector with no sync in the batch passed on."""
    from detector import model as model_module
    from detector import parallel

    monkeypatch.setattr(parallel, "_SHARD_MIN_SYNCS", 2)
    calls: list[int] = []
    real = model_module.FleetModel._score_batch

    def counted(self, wide, state, facts):  # noqa: ANN001, ANN202 - the real method, counted
        calls.append(wide.height)
        return real(self, wide, state, facts)

    monkeypatch.setattr(model_module.FleetModel, "_score_batch", counted)
    left_out = fleet.test[0]["connector_id"]
    batch = [r for r in fleet.test[::-1] if r["connector_id"] != left_out]
    state, facts = fleet.model.initial_state(fleet.history)
    for st, fa in ((None, None), (state, facts)):
        one = fleet.model.score(batch, state=st, facts=fa)
        calls.clear()
        sharded = fleet.model.score(batch, state=st, facts=fa, n_jobs=n_jobs)
        assert len(calls) == n_jobs and sum(calls) == len(batch)
        for name in ("results", "reasons", "rule_hits", "state", "facts"):
            assert _same_bits(getattr(sharded, name), getattr(one, name)), name
    assert "pause" in one.results["decision"].to_list() and one.reasons.height
    assert left_out in sharded.facts["connector_id"].to_list()  # passed on from the state


def test_one_pass_below_the_shard_size(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small batch (a single sync from a cold process) is not split."""
    from detector import model as model_module
    from detector import parallel

    wide = model_module.to_struct_frame(fleet.test)
    assert parallel.connector_shards(wide, 2) is None  # 301 syncs < 1,000
    monkeypatch.setattr(parallel, "_SHARD_MIN_SYNCS", 2)
    assert parallel.connector_shards(wide, 1) is None
    one = wide.filter(pl.col("connector_id") == wide["connector_id"][0])
    assert parallel.connector_shards(one, 2) is None  # one connector
    shards = parallel.connector_shards(wide, 2)
    assert shards is not None and len(shards) == 2
    assert sorted(pl.concat(shards).to_list()) == sorted(set(wide["connector_id"]))


def test_sharded_service_run_is_the_one_thread_run(scoring_home: Home, fleet: Fleet, tmp_path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Events and every table the run writes are the same with the model's shards."""
    from detector import parallel, scoring

    monkeypatch.setattr(scoring, "_now", lambda: "2026-06-22T00:00:00.000Z")
    monkeypatch.setattr(parallel, "_SHARD_MIN_SYNCS", 2)
    other = Home(tmp_path / "copy")
    shutil.copytree(scoring_home.root, other.root)
    monkeypatch.setattr(scoring, "SCORE_JOBS", 2)
    _run, sharded = _score(scoring_home, fleet.lines(fleet.test[::-1]))
    monkeypatch.setattr(scoring, "SCORE_JOBS", 1)
    _run, one = _score(other, fleet.lines(fleet.test[::-1]))
    assert sharded == one and {e["decision"] for e in one} >= {"pause", "proceed"}
    for table, key in (("scores", "sync_id"), ("scoring_state", "connector_id, measure"),
                       ("connector_facts", "connector_id"), ("pauses", "connector_id")):
        sql = f"SELECT * FROM {table} ORDER BY {key}"
        assert _table(scoring_home, sql) == _table(other, sql), table


def test_crash_in_a_shard_loses_nothing_and_a_rerun_finishes(
        scoring_home: Home, fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process dying while one shard of a chunk is scored (the other shard done)
    commits nothing of that chunk; a rerun scores the rest, each sync once."""
    from detector import model as model_module
    from detector import parallel

    monkeypatch.setattr(parallel, "_SHARD_MIN_SYNCS", 2)
    real = model_module.FleetModel._score_batch
    left = [6]  # chunks 1-2 score 2 shards each, chunk 3 dies in its second shard

    def dying(self, wide, state, facts):  # noqa: ANN001, ANN202 - the real method, then death
        left[0] -= 1
        if left[0] == 0:
            raise _Crash
        return real(self, wide, state, facts)

    ids = [r["sync_id"] for r in fleet.test]
    with Store.open(scoring_home.store_path) as store:
        store.ingest(parse_lines(fleet.lines()), source="t")
        model, version = load_scoring_model(scoring_home)
        monkeypatch.setattr(model_module.FleetModel, "_score_batch", dying)
        scorer = Scorer(store, model, version, actor="t", chunk_syncs=100, n_jobs=2)
        with pytest.raises(_Crash):
            scorer.score(ids)
    assert left == [0]
    assert _table(scoring_home, "SELECT count(*) FROM scores") == [(200,)]  # 2 chunks
    monkeypatch.setattr(model_module.FleetModel, "_score_batch", real)
    run, events = _score(scoring_home, fleet.lines())
    assert run.scored == len(ids) - 200 and sum(e["replay"] for e in events) == 200
    assert _table(scoring_home, "SELECT count(*), count(DISTINCT sync_id) FROM scores") == [
        (len(ids), len(ids))]
    decided = {e["sync_id"]: e["decision"] for e in events}
    assert _known(fleet, decided) == _known(fleet, _batch_decisions(fleet, fleet.test))
