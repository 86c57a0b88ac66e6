"""The CLI: ingest, status, simulate and demo; exit codes and exact messages."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from conftest import make_record, make_records, run_syncguard, write_jsonl

from detector.cli.main import COMMANDS, cli
from detector.store import Store


def invoke(home: Path, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), *args], input=stdin,
                              catch_exceptions=False)


def test_ingest_all_accepted_exits_0_and_prints_a_summary(home: Path, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", make_records(2, 3))
    result = invoke(home, "ingest", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout == ("ingested 6 records: 6 accepted, 0 replayed, 0 conflicts, "
                             "0 rejected\n")
    assert result.stderr == ""
    again = invoke(home, "ingest", str(path))
    assert again.exit_code == 0
    assert again.stdout == "ingested 6 records: 0 accepted, 6 replayed, 0 conflicts, 0 rejected\n"


def test_ingest_rejects_exit_4_with_each_violation_on_stderr(home: Path,
                                                             tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [
        make_record(index=0),
        make_record(index=1, resources={"user": {"count": 1, "null_rates": {"email": 2}}}),
        '{"sync_id": "x", "connector_id": "okta-prod", "started_at": NaN}',
    ])
    result = invoke(home, "ingest", str(path))
    assert result.exit_code == 4
    assert result.stderr.splitlines() == [
        f"rejected: {path}: line 2 (sync_id 'okta-prod:1'): field "
        "'resources.user.null_rates.email': must be a number in [0, 1]",
        f"rejected: {path}: line 3 (sync_id 'x'): numbers must be finite (NaN is not JSON)",
    ]
    assert result.stdout == ("ingested 3 records: 1 accepted, 0 replayed, 0 conflicts, "
                             "2 rejected\n")


def test_ingest_rejects_lone_surrogates_by_field_in_a_real_process(home: Path,
                                                                  tmp_path: Path) -> None:
    """A JSON escape of half a UTF-16 pair ("\\ud800") cannot be stored as UTF-8: the line
    is rejected by field and rule, the others are stored (it was an internal error)."""
    path = write_jsonl(tmp_path / "in.jsonl", [
        make_record(index=0),
        make_record(index=1, note="\ud800"),
        make_record(index=2, resources={"user": {"count": 1, "null_rates": {"e\udc00": 0}}}),
        make_record(index=3, sync_id="okta-prod:\ud800"),
        make_record(index=4),
    ])
    result = run_syncguard("ingest", "--json", path, home=home)
    assert result.returncode == 4, result.stderr
    rule = "must be valid Unicode (\\u{} is a lone UTF-16 surrogate)"
    assert result.stderr.splitlines() == [
        f"rejected: {path}: line 2 (sync_id 'okta-prod:1'): field 'note': "
        + rule.format("d800"),
        f"rejected: {path}: line 3 (sync_id 'okta-prod:2'): field "
        "'resources.user.null_rates.e\\udc00': key " + rule.format("dc00"),
        f"rejected: {path}: line 4: field 'sync_id': " + rule.format("d800"),
    ]
    report = json.loads(result.stdout)
    assert (report["accepted"], report["rejected"]) == (2, 3)
    assert [r["connector_id"] for r in report["rejects"]] == ["okta-prod"] * 3
    with Store.open(home / "store.sqlite") as store:
        assert store.history()["sync_id"].to_list() == ["okta-prod:0", "okta-prod:4"]


def test_ingest_conflict_is_reported_and_exits_4(home: Path, tmp_path: Path) -> None:
    invoke(home, "ingest", str(write_jsonl(tmp_path / "a.jsonl", [make_record()])))
    changed = write_jsonl(tmp_path / "b.jsonl", [make_record(status="partial")])
    result = invoke(home, "ingest", str(changed))
    assert result.exit_code == 4
    assert result.stderr.startswith(f"conflict: {changed}: line 1 (sync_id 'okta-prod:0'): "
                                    "field 'sync_id': conflicts with the stored record "
                                    "(stored sha256 ")
    assert result.stderr.endswith("the first version stays\n")
    with Store.open(home / "store.sqlite") as store:
        assert store.history()["status"].to_list() == ["succeeded"]


def test_ingest_from_stdin_as_a_json_array(home: Path) -> None:
    result = invoke(home, "ingest", "-", stdin=json.dumps(make_records(1, 2)))
    assert result.exit_code == 0, result.output
    assert "2 accepted" in result.stdout


def test_ingest_json_output(home: Path, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [make_record(), "{}"])
    result = invoke(home, "ingest", "--json", str(path))
    assert result.exit_code == 4
    report = json.loads(result.stdout)
    assert {k: report[k] for k in ("accepted", "replayed", "conflicts", "rejected")} == {
        "accepted": 1, "replayed": 0, "conflicts": 0, "rejected": 1}
    assert report["rejects"][0]["field"] == "sync_id"


def test_ingest_missing_file_is_a_usage_error_and_stores_nothing(home: Path,
                                                                 tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "in.jsonl", [make_record()])
    result = invoke(home, "ingest", str(good), "nope.jsonl")
    assert result.exit_code == 2
    assert result.stderr == "error: cannot read 'nope.jsonl': no such file\n"
    with Store.open(home / "store.sqlite") as store:
        assert store.history().height == 0


def test_ingest_records_the_actor(home: Path, tmp_path: Path) -> None:
    invoke(home, "ingest", "--actor", "ci-bot", str(write_jsonl(tmp_path / "a.jsonl",
                                                                [make_record()])))
    with Store.open(home / "store.sqlite") as store:
        [entry] = store.audit_entries(action="ingest")
    assert (entry.actor, entry.subject, entry.details["accepted"]) == (
        "ci-bot", str(tmp_path / "a.jsonl"), 1)


def test_status_json_and_table(home: Path, tmp_path: Path) -> None:
    records = make_records(2, 3, kinds=("okta", "workday"))
    bad = '{"sync_id": "w", "connector_id": "workday-1", "status": 1}'
    invoke(home, "ingest", str(write_jsonl(tmp_path / "in.jsonl", [*records, bad])))
    result = invoke(home, "status", "--json")
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    # Scoring fields (last decision, open pause, freshness) are tested with scoring.
    assert [{k: r[k] for k in list(r)[:7]} for r in rows] == [
        {"connector_id": "okta-0", "connector_kind": "okta", "syncs": 3,
         "last_sync": "2025-03-03T02:00:00Z", "last_status": "succeeded", "rejects": 0,
         "conflicts": 0},
        {"connector_id": "workday-1", "connector_kind": "workday", "syncs": 3,
         "last_sync": "2025-03-03T02:00:00Z", "last_status": "succeeded", "rejects": 1,
         "conflicts": 0},
    ]
    assert [(r["last_decision"], r["open_pause"]) for r in rows] == [(None, None)] * 2
    table = invoke(home, "status").stdout.splitlines()
    assert table[0].split() == ["connector", "kind", "syncs", "last", "sync", "last",
                                "status", "last", "decision", "pause", "freshness", "rejects",
                                "conflicts"]
    assert table[2].split()[:5] == ["workday-1", "workday", "3", "2025-03-03T02:00:00Z",
                                    "succeeded"]
    # Synced in 2025, hourly: long overdue. Then rejects, conflicts.
    assert table[2].split()[-5] == "overdue" and table[2].split()[-2:] == ["1", "0"]


def test_status_on_an_empty_home_does_not_create_a_store(home: Path) -> None:
    result = invoke(home, "status")
    assert result.exit_code == 0
    assert result.stdout == "no syncs stored yet: run `syncguard ingest FILE` first\n"
    assert invoke(home, "status", "--json").stdout == "[]\n"
    assert not (home / "store.sqlite").exists()


def test_syncguard_error_becomes_one_line_and_its_exit_code(home: Path) -> None:
    home.mkdir()
    (home / "store.sqlite").write_bytes(b"not a database" * 200)
    result = invoke(home, "status")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot open the store ")
    assert len(result.stderr.splitlines()) == 1


def test_unexpected_exception_is_exit_1_without_traceback(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Store, "ingest", boom)
    result = invoke(home, "ingest", str(write_jsonl(tmp_path / "a.jsonl", [make_record()])))
    assert result.exit_code == 1
    assert result.stderr == ("error: internal error: RuntimeError: disk on fire "
                             "(set SYNCGUARD_DEBUG=1 for details)\n")


def test_every_command_has_help() -> None:
    for command in [None, *COMMANDS]:
        args = [command, "--help"] if command else ["--help"]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0
        assert "Usage:" in result.output
        found = cli if command is None else cli.get_command(click.Context(cli), command)
        assert found is not None and (command is None or found.name == command)
        help_text = found.help
        assert help_text and len(help_text.split()) >= 8, command


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.output == "syncguard, version 0.1.0\n"


def _fake_simulator(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Stand-in for training.simulator: same write_fleet contract, conftest records."""
    calls: list[tuple] = []

    def write_fleet(out_dir: Path, n_connectors: int, days: int, seed: int) -> dict:
        calls.append((out_dir, n_connectors, days, seed))
        out_dir.mkdir(parents=True, exist_ok=True)
        records = make_records(n_connectors, days, seed=seed)
        write_jsonl(out_dir / "syncs.jsonl", records)
        return {"syncs": len(records)}

    fake = types.ModuleType("training.simulator")
    fake.write_fleet = write_fleet  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "training.simulator", fake)
    # Once the real simulator is imported, `from training import simulator` reads the
    # package attribute, not sys.modules: patch both.
    import training

    monkeypatch.setattr(training, "simulator", fake, raising=False)
    return calls


def test_simulate_calls_the_simulator(home: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_simulator(monkeypatch)
    out = tmp_path / "fleet"
    result = invoke(home, "simulate", "--connectors", "2", "--days", "3", "--seed", "5",
                    "--out", str(out))
    assert result.exit_code == 0, result.output
    assert calls == [(out, 2, 3, 5)]
    assert result.stdout == f"wrote 6 syncs for 2 connectors to {out}\n"


def test_simulate_rejects_an_empty_fleet(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_simulator(monkeypatch)
    result = invoke(home, "simulate", "--connectors", "0")
    assert result.exit_code == 2
    assert result.stderr.endswith("error: --connectors and --days must be at least 1\n")


def test_demo_simulates_ingests_scores_and_shows_status(home: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from detector.cli import demo

    calls = _fake_simulator(monkeypatch)
    # Training is tested on a real fleet in test_cli_train.py; these records are too few.
    trained: list[dict] = []
    monkeypatch.setattr(demo, "train_step", lambda home, labels, **kw: trained.append(kw))
    result = invoke(home, "demo", "--connectors", "3", "--days", "10")
    assert result.exit_code == 0, result.output
    assert calls == [(home / "demo", 3, 10, 7)]
    assert trained == [{"days": 10, "actor": trained[0]["actor"], "trees": 30}]
    lines = result.stdout.splitlines()
    # 10 hourly syncs per connector: the first half is history, the second half is scored.
    assert lines[0] == "ingested 15 records: 15 accepted, 0 replayed, 0 conflicts, 0 rejected"
    # Nothing was trained here: scoring fails closed, every sync paused as unscorable.
    assert lines[1].startswith("scored 15 syncs with no model: 15 pause, 0 review, 0 proceed")
    assert f"events: 15 native events in {home / 'events' / 'demo-events.jsonl'}" in lines
    assert any(line.split()[:2] == ["method", "paused"] for line in lines)
    table = lines.index("the same syncs, all methods (0 fault episodes injected):")
    assert lines[table + 2].split()[:2] == ["syncguard", "15"]
    status = lines.index("open pauses (resume with `syncguard resume CONNECTOR --by WHO "
                         "--reason TEXT`):")
    # Freshness as of the end of the simulated window, not of today.
    assert all(" OPEN   ok (" in line for line in lines[status - 4:status - 1])
    # A second demo run replays: nothing is stored or decided twice.
    again = invoke(home, "demo", "--connectors", "3", "--days", "10").stdout.splitlines()
    assert again[0].startswith("ingested 15 records: 0 accepted, 15 replayed")
    assert again[1].startswith("scored 0 syncs with no model: 15 pause, 0 review, 0 proceed; "
                               "15 replayed")


def test_real_process_exit_codes_and_home_env(tmp_path: Path) -> None:
    home = tmp_path / "h"
    good = write_jsonl(tmp_path / "good.jsonl", [make_record()])
    bad = write_jsonl(tmp_path / "bad.jsonl", ['{"connector_id": "okta-prod"}'])
    ok = run_syncguard("ingest", good, home=home)
    assert (ok.returncode, ok.stderr) == (0, "")
    rejected = run_syncguard("ingest", bad, home=home)
    assert rejected.returncode == 4
    assert rejected.stderr == f"rejected: {bad}: line 1: field 'sync_id': is required\n"
    usage = run_syncguard("ingest", tmp_path / "missing.jsonl", home=home)
    assert usage.returncode == 2
    assert "Traceback" not in usage.stderr
    status = run_syncguard("status", "--json", home=home)
    assert [r["connector_id"] for r in json.loads(status.stdout)] == ["okta-prod"]


def test_real_simulator_output_meets_the_contract(tmp_path: Path) -> None:
    pytest.importorskip("training.simulator")
    home = tmp_path / "h"
    simulated = run_syncguard("simulate", "--connectors", "4", "--days", "3", "--seed", "1",
                              "--out", tmp_path / "fleet", home=home)
    assert simulated.returncode == 0, simulated.stderr
    ingested = run_syncguard("ingest", tmp_path / "fleet" / "syncs.jsonl", home=home)
    assert ingested.returncode == 0, ingested.stderr
    assert ingested.stdout.endswith("0 replayed, 0 conflicts, 0 rejected\n")


def test_status_calls_a_sync_that_started_after_now_fresh_not_negative() -> None:
    from detector.cli.status import _freshness_text

    row = {"interval_s": 3600.0, "overdue": False, "age_s": -9.0, "overdue_by_s": None}
    assert _freshness_text(row) == "ok (0.0 h ago)"
    assert _freshness_text({**row, "age_s": 5400.0}) == "ok (1.5 h ago)"
