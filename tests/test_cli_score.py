"""``score``, ``resume``, ``label``, ``status`` and ``check-freshness`` through the CLI.

Exit codes, stdout/stderr split, OCSF output checked against the compiled 1.8.0 schema,
and the pause/resume/label round trips with their audit trail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import REPO, make_record, write_jsonl
from ocsf_check import OcsfValidator, compile_schema
from scoring_support import Fleet, ingest_history

from detector.cli.main import cli
from detector.cli.score import BLAS_THREADS_ENV
from detector.events.native import validate
from detector.frame import ACCEPTED_MEASURE
from detector.home import Home
from detector.scoring import MODEL_MAX_AGE_DAYS
from detector.store import Store

pytest_plugins = ["scoring_fixtures"]  # fleet, scoring_home

def _cli(home: Home, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home.root), *args], input=stdin,
                              catch_exceptions=False)


def _events(result: Result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def _audit(home: Home, action: str) -> list[tuple]:
    with Store.open(home.store_path) as store:
        return [(e.actor, e.subject, e.reason, e.details)
                for e in store.audit_entries(action=action)]


@pytest.fixture
def scored(scoring_home: Home, fleet: Fleet, tmp_path: Path) -> Result:
    """The test window scored through the CLI."""
    return _cli(scoring_home, "score", str(write_jsonl(tmp_path / "test.jsonl", fleet.test)))


@pytest.fixture
def paused(scoring_home: Home, scored: Result) -> tuple[Home, str]:
    """The home after scoring, and a connector with an open pause."""
    connector = next(e["connector_id"] for e in _events(scored) if e["decision"] == "pause")
    return scoring_home, connector


def _first_proceed(fleet: Fleet) -> dict:
    """A sync the model lets through, of a connector that never pauses in the window."""
    state, facts = fleet.model.initial_state(fleet.history)
    res = fleet.model.score(fleet.test, state=state, facts=facts).results
    calm = set(res["connector_id"]) - set(res.filter(res["decision"] != "proceed")
                                          ["connector_id"])
    return next(r for r in fleet.test if r["connector_id"] in sorted(calm))


def test_exit_0_when_every_sync_proceeds(scoring_home: Home, fleet: Fleet) -> None:
    record = _first_proceed(fleet)
    result = _cli(scoring_home, "score", "-", stdin=json.dumps(record) + "\n")
    assert result.exit_code == 0, result.stderr
    (event,) = _events(result)
    validate(event)
    assert event["decision"] == "proceed" and event["sync_id"] == record["sync_id"]
    assert "scored 1 syncs with model v1: 0 pause, 0 review, 1 proceed" in result.stderr


def test_a_model_whose_history_ended_over_a_month_before_is_named_on_stderr(
        scoring_home: Home, fleet: Fleet) -> None:
    record = _first_proceed(fleet)
    soon = _cli(scoring_home, "score", "-", stdin=json.dumps(record) + "\n")
    assert soon.exit_code == 0 and "warning" not in soon.stderr
    late = {**record, "sync_id": record["sync_id"] + "-late"}
    for key in ("started_at", "finished_at"):
        moved = datetime.fromisoformat(record[key].replace("Z", "+00:00")) + timedelta(days=45)
        late[key] = moved.strftime("%Y-%m-%dT%H:%M:%SZ")
    result = _cli(scoring_home, "score", "-", stdin=json.dumps(late) + "\n")
    (event,) = _events(result)  # still scored: the warning holds nothing back
    assert event["sync_id"] == late["sync_id"]
    end = fleet.model.history_end_
    late_start = datetime.fromisoformat(late["started_at"].replace("Z", "+00:00"))
    age = (late_start - end).total_seconds() / 86400
    assert age > MODEL_MAX_AGE_DAYS
    assert (f"warning: the model learned from history up to {end:%Y-%m-%d}, {age:.0f} days "
            "before the latest sync scored: retrain it (`syncguard train`)") in result.stderr


def test_exit_3_names_the_pauses_on_stderr(scored: Result, fleet: Fleet,
                                          scoring_home: Home) -> None:
    assert scored.exit_code == 3
    events = _events(scored)
    assert [e["sync_id"] for e in events] == [r["sync_id"] for r in fleet.test]
    with Store.open(scoring_home.store_path) as store:
        opened = [r[0] for r in store.conn.execute("SELECT connector_id FROM pauses")]
    assert opened and f"pauses opened: {', '.join(sorted(opened))}" in scored.stderr
    assert [s for _a, s, _r, _d in _audit(scoring_home, "pause")] == opened
    assert scored.stdout.count("\n") == len(fleet.test)  # nothing but events on stdout


def test_exit_4_on_rejected_input(scoring_home: Home, fleet: Fleet) -> None:
    bad = dict(fleet.test[0], started_at="yesterday")
    result = _cli(scoring_home, "score", stdin=json.dumps(bad) + "\n")
    assert result.exit_code == 4
    assert "rejected: -: line 1" in result.stderr and "started_at" in result.stderr
    (event,) = _events(result)
    assert event["event_type"] == "invalid_record" and event["decision"] == "pause"


def test_exit_2_on_usage_errors(scoring_home: Home, tmp_path: Path) -> None:
    result = _cli(scoring_home, "score", str(tmp_path / "missing.jsonl"))
    assert result.exit_code == 2 and "no such file" in result.stderr
    result = _cli(scoring_home, "score", "--format", "xml")
    assert result.exit_code == 2


def test_exit_1_when_the_store_cannot_be_opened(tmp_path: Path, fleet: Fleet) -> None:
    home = Home(tmp_path / "home").ensure()
    home.store_path.write_bytes(b"this is not a sqlite database" * 100)
    result = _cli(home, "score", stdin=fleet.lines(fleet.test[:1])[0] + "\n")
    assert result.exit_code == 1 and "error: cannot open the store" in result.stderr


def test_ocsf_format_validates_against_the_compiled_schema(scoring_home: Home, fleet: Fleet,
                                                           tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "test.jsonl", fleet.test)
    out_file = tmp_path / "findings.jsonl"
    result = _cli(scoring_home, "score", "--format", "ocsf", "--events-file", str(out_file),
                  str(path))
    findings = _events(result)
    assert result.exit_code == 3
    assert findings and len(findings) < len(fleet.test)  # proceed is not a finding
    validator = OcsfValidator(compile_schema())
    for finding in findings:
        assert validator.validate(finding, "detection_finding") == []
        assert finding["class_uid"] == 2004 and finding["finding_info"]["uid"]
        assert finding["finding_info"]["analytic"] and finding["remediation"]["desc"]
    assert [json.loads(x) for x in out_file.read_text().splitlines()] == findings
    assert f"events: {len(findings)} to {out_file}" in result.stderr


def test_resume_round_trip(paused: tuple[Home, str], fleet: Fleet) -> None:
    home, connector = paused
    status = json.loads(_cli(home, "status", "--json").stdout)
    row = next(r for r in status if r["connector_id"] == connector)
    assert row["open_pause"] and row["last_decision"] in ("pause", "review", "proceed")
    assert "open pauses" in _cli(home, "status").stdout

    result = _cli(home, "resume", connector, "--by", "ann", "--reason", "bulk re-org, expected",
                  "--false-positive")
    assert result.exit_code == 0, result.stderr
    assert f"resumed {connector}" in result.stdout and "false positive" in result.stdout
    with Store.open(home.store_path) as store:
        row = store.conn.execute(
            "SELECT closed_by, close_reason, false_positive FROM pauses WHERE connector_id = ?",
            (connector,)).fetchone()
        refs = store.conn.execute(
            "SELECT count(*) FROM scoring_state WHERE connector_id = ? "
            "AND ref_value IS NOT value", (connector,)).fetchone()
        facts = store.conn.execute("SELECT paused FROM connector_facts WHERE connector_id = ?",
                                   (connector,)).fetchone()
        accepted = store.conn.execute(
            "SELECT value FROM scoring_state WHERE connector_id = ? AND measure = ?",
            (connector, ACCEPTED_MEASURE)).fetchone()
    assert row == ("ann", "bulk re-org, expected", 1)
    assert refs == (0,) and facts == (0,)  # the accepted values are the new reference
    assert accepted == (1.0,)  # and the connector is judged as a paused one, unheld
    (entry,) = _audit(home, "resume")
    assert entry[:3] == ("ann", connector, "bulk re-org, expected")
    assert entry[3]["false_positive"] is True

    again = _cli(home, "resume", connector, "--by", "ann", "--reason", "again")
    assert again.exit_code == 2 and "has no open pause" in again.stderr
    unknown = _cli(home, "resume", "nope", "--by", "ann", "--reason", "x")
    assert unknown.exit_code == 2 and "is not a connector in the store" in unknown.stderr
    missing = _cli(home, "resume", connector, "--reason", "x")
    assert missing.exit_code == 2 and "--by" in missing.stderr


def test_pause_then_resume_lets_the_connector_through(scoring_home: Home,
                                                       fleet: Fleet) -> None:
    first = _first_proceed(fleet)
    own = [r for r in fleet.test if r["connector_id"] == first["connector_id"]][:4]
    failed = dict(own[1], status="failed", error_class="timeout")

    def score(record: dict) -> tuple[int, dict]:
        result = _cli(scoring_home, "score", stdin=json.dumps(record) + "\n")
        (event,) = _events(result)
        return result.exit_code, event

    assert score(own[0])[0] == 0
    code, event = score(failed)
    assert (code, event["decision"], event["rule_hits"][0]["rule"]) == (3, "pause", "sync_failed")
    code, event = score(own[2])  # judged, but the connector stays held until resumed
    assert (code, event["connector_paused"]) == (3, True)
    _cli(scoring_home, "resume", first["connector_id"], "--by", "ann", "--reason", "retried ok")
    code, event = score(own[3])
    assert (code, event["decision"], event["connector_paused"]) == (0, "proceed", False)


def test_label_round_trip(scoring_home: Home, fleet: Fleet) -> None:
    sync_id = fleet.history[3]["sync_id"]
    first = _cli(scoring_home, "label", sync_id, "fault", "--by", "bo", "--reason", "partial")
    assert first.exit_code == 0 and first.stdout == f"labelled {sync_id} fault\n"
    second = _cli(scoring_home, "label", sync_id, "normal", "--by", "cy", "--reason", "re-run")
    assert second.stdout == f"labelled {sync_id} normal (was fault)\n"
    with Store.open(scoring_home.store_path) as store:
        rows = store.conn.execute("SELECT sync_id, label, actor, reason FROM labels").fetchall()
    assert rows == [(sync_id, "normal", "cy", "re-run")]
    trail = _audit(scoring_home, "label")
    assert [(a, r, d["label"], d["previous"]) for a, _s, r, d in trail] == [
        ("bo", "partial", "fault", None), ("cy", "re-run", "normal", "fault")]
    bad = _cli(scoring_home, "label", "no-such-sync", "fault", "--by", "bo", "--reason", "x")
    assert bad.exit_code == 2 and "is not in the store" in bad.stderr
    wrong = _cli(scoring_home, "label", sync_id, "maybe", "--by", "bo", "--reason", "x")
    assert wrong.exit_code == 2


def test_check_freshness_emits_stale_events(tmp_path: Path) -> None:
    home = Home(tmp_path / "home").ensure()
    now = datetime.now(UTC)
    fresh = [make_record("okta-live", i, start=now - timedelta(hours=10 - i)) for i in range(10)]
    dead = [make_record("workday-dead", i, kind="workday",
                        start=now - timedelta(hours=40 - i)) for i in range(10)]
    ingest_history(home, fresh + dead)
    out_file = tmp_path / "stale.jsonl"
    result = _cli(home, "check-freshness", "--events-file", str(out_file))
    assert result.exit_code == 3, result.stderr
    (event,) = _events(result)
    validate(event)
    assert event["event_type"] == "connector_stale" and event["connector_id"] == "workday-dead"
    assert event["expected_interval_s"] == 3600 and event["overdue_by_s"] > 25 * 3600
    assert event["severity"] == "medium" and event["criticality"] == "standard"
    assert json.loads(out_file.read_text()) == event
    assert "checked 2 connectors: 1 overdue: workday-dead" in result.stderr
    assert [s for _a, s, _r, _d in _audit(home, "stale")] == ["workday-dead"]
    status = {r["connector_id"]: r for r in json.loads(_cli(home, "status", "--json").stdout)}
    assert status["workday-dead"]["freshness"]["overdue"] is True
    assert status["okta-live"]["freshness"]["overdue"] is False
    # The same quiet spell gives the same event id (one finding in SOAR).
    again = _events(_cli(home, "check-freshness"))
    assert again[0]["event_id"] == event["event_id"]


def test_check_freshness_exit_0_when_all_fresh(tmp_path: Path) -> None:
    home = Home(tmp_path / "home").ensure()
    now = datetime.now(UTC)
    ingest_history(home, [make_record("okta-live", i, start=now - timedelta(hours=5 - i))
                          for i in range(5)])
    result = _cli(home, "check-freshness")
    assert result.exit_code == 0 and result.stdout == ""



def test_score_imports_no_mlflow_sklearn_or_matplotlib(scoring_home: Home, fleet: Fleet,
                                                       tmp_path: Path) -> None:
    """The cold-start path: a `syncguard score` process loads none of the heavy libraries
    it does not need (the champion comes from the local cache, not from MLflow; ordinary
    records and events pass the short schema checks), nor the modules of other commands,
    collects garbage rarely, has numpy's OpenBLAS start a single thread, and ends without
    the interpreter's teardown."""
    path = write_jsonl(tmp_path / "one.jsonl", fleet.test[:1])
    probe = (
        "import os, runpy, sys\n"
        f"sys.argv = ['syncguard', '--home', {str(scoring_home.root)!r}, 'score', {str(path)!r}]\n"
        "quick = []\n"
        "def quick_exit(code):  # recorded, so the probe can look around after the run\n"
        "    quick.append(code)\n"
        "    raise SystemExit(code)\n"
        "os._exit = quick_exit\n"
        "try:\n"
        "    runpy.run_module('detector.cli.main', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print('QUICK', quick == [code], file=sys.stderr)\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules}\n"
        "               & {'mlflow', 'sklearn', 'matplotlib', 'statsmodels', 'training',\n"
        "                  'jsonschema'})\n"
        "heavy += sorted(m for m in sys.modules if m.startswith('detector.cli.')\n"
        "                and m[13:] not in ('main', 'score', 'options', 'sinks'))\n"
        "import gc, threadpoolctl\n"
        "blas = {i['num_threads'] for i in threadpoolctl.threadpool_info()\n"
        "        if i['internal_api'] == 'openblas'}\n"
        "print('BLAS', blas, file=sys.stderr)\n"
        "print('GC', gc.get_threshold()[0], file=sys.stderr)\n"
        "print('HEAVY', code, heavy, file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(BLAS_THREADS_ENV, None)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120, check=True)
    assert json.loads(done.stdout)["model_version"] == "1"  # it did score with the model
    assert done.stderr.strip().splitlines()[-1] in ("HEAVY 0 []", "HEAVY 3 []")
    # The program (python -m, as the console script) collects garbage rarely.
    from detector.cli.main import RARE_GC_THRESHOLD

    assert done.stderr.strip().splitlines()[-2] == f"GC {RARE_GC_THRESHOLD}"
    # numpy's (and scipy's) OpenBLAS started one thread, not one per core.
    assert done.stderr.strip().splitlines()[-3] == "BLAS {1}"
    # It ended without the interpreter's teardown, with the command's exit code.
    assert done.stderr.strip().splitlines()[-4] == "QUICK True"

