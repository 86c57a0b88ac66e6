"""Several `syncguard ingest` processes on one store: nothing lost, nothing doubled, and
never "database is locked"."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from conftest import REPO, make_records, syncguard_cmd, write_jsonl

from detector.store import Store

N_PROCS = 4
PER_FILE = 3000
STEP = 1500  # file k holds records [k*STEP, k*STEP + PER_FILE): neighbours overlap by half
SUMMARY = re.compile(r"ingested (\d+) records: (\d+) accepted, (\d+) replayed, "
                     r"(\d+) conflicts, (\d+) rejected")


def test_four_processes_ingesting_overlapping_files(tmp_path: Path) -> None:
    records = make_records(n_connectors=10, n_syncs=(STEP * (N_PROCS - 1) + PER_FILE) // 10)
    distinct = STEP * (N_PROCS - 1) + PER_FILE
    assert len(records) == distinct
    files = []
    for k in range(N_PROCS):
        part = records[k * STEP: k * STEP + PER_FILE]
        bad = f'{{"sync_id": "bad-{k}", "connector_id": "okta-0", "status": "weird"}}'
        files.append(write_jsonl(tmp_path / f"part{k}.jsonl", [*part, bad]))
    # Every process also reads the first file, so all four contend for the same rows.
    home = tmp_path / "home"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SYNCGUARD_HOME", None)
    procs = [subprocess.Popen(syncguard_cmd("ingest", "--actor", f"p{k}", files[k], files[0],
                                            home=home),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=REPO)
             for k in range(N_PROCS)]
    outputs = [proc.communicate(timeout=300) for proc in procs]

    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert "locked" not in err and "busy" not in err, err
        assert "Traceback" not in err, err
        assert proc.returncode == 4, (out, err)  # each file holds one rejected record
    counts = [tuple(map(int, SUMMARY.search(out).groups())) for out, _ in outputs]
    total, accepted, replayed, conflicts, rejected = map(sum, zip(*counts, strict=True))
    read = N_PROCS * (PER_FILE + 1) + N_PROCS * (PER_FILE + 1)
    assert total == read
    assert accepted == distinct  # each record stored by exactly one process
    assert replayed == 2 * N_PROCS * PER_FILE - distinct
    assert conflicts == 0
    # "bad-0" is in the shared file: read (and rejected) by every process.
    assert rejected == 2 * N_PROCS

    with Store.open(home / "store.sqlite") as store:
        ids = [r[0] for r in store.conn.execute("SELECT sync_id FROM syncs")]
        assert len(ids) == len(set(ids)) == distinct
        assert set(ids) == {r["sync_id"] for r in records}
        assert store.conn.execute("SELECT count(*) FROM rejects").fetchone()[0] == 2 * N_PROCS
        audited = store.audit_entries(action="ingest")
        assert sum(e.details["accepted"] for e in audited) == distinct
        assert {e.actor for e in audited} == {f"p{k}" for k in range(N_PROCS)}
