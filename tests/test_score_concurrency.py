"""Four ``syncguard score`` processes at once on overlapping input: every sync scored once."""

from __future__ import annotations

import json
import os
import subprocess
from collections import defaultdict
from pathlib import Path

from conftest import REPO, syncguard_cmd, write_jsonl
from scoring_support import Fleet

from detector.home import Home
from detector.store import Store

pytest_plugins = ["scoring_fixtures"]  # fleet, scoring_home


def test_four_scorers_on_overlapping_input_score_each_sync_once(
        scoring_home: Home, fleet: Fleet, tmp_path: Path) -> None:
    n = len(fleet.test)
    # Prefixes of the test window: a process that scores a sync has stored every earlier
    # one of its input, so no sync can arrive after a later one of its connector was
    # scored (score rejects those; see test_bad_input).
    windows = [(0, n // 2), (0, 3 * n // 4), (0, n // 4), (0, n)]
    inputs = [write_jsonl(tmp_path / f"in-{i}.jsonl", fleet.test[a:b])
              for i, (a, b) in enumerate(windows)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SYNCGUARD_HOME", None)
    procs = [subprocess.Popen(syncguard_cmd("score", path, "--actor", f"p{i}",
                                            home=scoring_home.root),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=REPO)
             for i, path in enumerate(inputs)]
    outputs = [p.communicate(timeout=300) for p in procs]

    by_sync: dict[str, list[dict]] = defaultdict(list)
    codes = [proc.returncode for proc in procs]
    assert set(codes) <= {0, 3} and 3 in codes, codes  # pauses in the long windows
    for (out, err), (a, b) in zip(outputs, windows, strict=True):
        assert "locked" not in err and "error" not in err
        events = [json.loads(line) for line in out.splitlines()]
        assert [e["sync_id"] for e in events] == [r["sync_id"] for r in fleet.test[a:b]]
        for event in events:
            by_sync[event["sync_id"]].append(event)

    assert len(by_sync) == n
    for sync_id, events in by_sync.items():
        # One decision per sync: every process reports the same stored event ...
        assert len({(e["event_id"], e["decision"], e["scored_at"]) for e in events}) == 1
        # ... and at most one of them made it (another may have scored it as a
        # left-behind sync of the same connector, then all of them replay it).
        assert sum(not e["replay"] for e in events) <= 1, sync_id
    with Store.open(scoring_home.store_path) as store:
        rows = store.conn.execute("SELECT count(*), count(DISTINCT sync_id) FROM scores")
        assert rows.fetchone() == (n, n)
        audited = store.conn.execute(
            "SELECT count(*), count(DISTINCT subject) FROM audit_log WHERE action = 'score'")
        assert audited.fetchone() == (n, n)
        pauses = store.conn.execute(
            "SELECT connector_id, count(*) FROM pauses GROUP BY connector_id").fetchall()
    assert pauses and all(count == 1 for _c, count in pauses)
