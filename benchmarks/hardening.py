"""Hardening figures: records lost and duplicated under concurrency and SIGKILL.

Run: ``.venv/bin/python benchmarks/hardening.py [--processes 8] [--syncs 10000]
[--connectors 100] [--score-days 28] [--skip-kills]``

A simulated fleet's history is stored and a model fitted on it is installed as the
champion (``score_speed.prepare``, the same set-up as the speed benchmark). Then:

* **concurrency**: ``--processes`` real ``syncguard score`` processes start at once, each
  on about ``--syncs`` syncs. Inputs overlap by connector: process *i* gets every test
  sync of a window of half the connectors, shifted by *i*, so each connector's syncs
  reach several processes at once (and no process can see a sync after a later one of
  its connector was scored, which ``score`` would rightly reject).
* **SIGKILL**: ``syncguard ingest`` and ``syncguard score`` are killed with SIGKILL at a
  point mid-work (found by watching the store), then run again; the final state is
  compared with an uninterrupted run on a copy of the same home.

Each row counts, from the store itself (:func:`census`): syncs expected, **lost**
(expected but not stored, or not scored), **duplicated** (more than one score row, score
audit row or fresh decision event for one sync), and for the kill runs decisions that
**differ** from the uninterrupted run. The tests run the same functions on a smaller
fleet (``tests/test_hardening.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from score_speed import fresh_copy, prepare  # noqa: E402

__all__ = ["Census", "census", "overlapping_inputs", "run_scorers", "kill_midway",
           "kill_ingest", "kill_score", "kill_train", "champion_facts", "score_table",
           "syncguard"]


def syncguard(home: Path, *args: str | os.PathLike[str]) -> list[str]:
    """argv of the real CLI in a fresh interpreter (what a pipeline runs)."""
    return [sys.executable, "-m", "detector.cli.main", "--home", str(home), *map(str, args)]


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SYNCGUARD_HOME", None)
    return env


@dataclass(frozen=True)
class Census:
    """What the store holds for the syncs a run was given."""

    expected: int
    stored: int
    scored: int
    lost: int
    duplicated: int
    differ: int = 0

    def row(self, name: str, command: str) -> str:
        return (f"| {name} | {self.expected} | {self.lost} | {self.duplicated} | "
                f"{self.differ} | `{command}` |")


def _query(store: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(store, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def score_table(store: Path) -> dict[str, tuple[str, float | None]]:
    """``sync_id -> (decision, score)`` of every scored sync."""
    return {sid: (decision, score) for sid, decision, score in
            _query(store, "SELECT sync_id, decision, score FROM scores")}


def census(store: Path, expected: Sequence[str], *, scored: bool = True,
           outputs: Sequence[str] = (),
           reference: dict[str, tuple[str, float | None]] | None = None) -> Census:
    """Count lost and duplicated syncs in the store at ``store``.

    Parameters
    ----------
    expected : sequence of str
        sync_ids that must be stored (and scored, unless ``scored`` is False) once each.
    outputs : sequence of str
        Standard outputs of scoring processes (native events): a sync with more than one
        event not marked ``replay`` was decided twice.
    reference : dict, optional
        :func:`score_table` of an uninterrupted run; syncs whose decision or score
        differ from it are counted in ``differ``.
    """
    want = set(expected)
    stored_ids = {r[0] for r in _query(store, "SELECT sync_id FROM syncs")}
    rows = Counter(r[0] for r in _query(store, "SELECT sync_id FROM scores"))
    audits = Counter(r[0] for r in _query(
        store, "SELECT subject FROM audit_log WHERE action = 'score'"))
    fresh: Counter[str] = Counter()
    for out in outputs:
        for line in out.splitlines():
            event = json.loads(line)
            if event.get("event_type") == "sync_scored" and not event.get("replay"):
                fresh[event["sync_id"]] += 1
    lost = want - stored_ids
    if scored:
        lost |= want - set(rows)
    duplicated = {s for s, n in rows.items() if n > 1} | {s for s, n in audits.items() if n > 1}
    duplicated |= {s for s, n in fresh.items() if n > 1}
    differ = 0
    if reference is not None:
        mine = score_table(store)
        differ = sum(1 for s in want if mine.get(s) != reference.get(s))
    return Census(len(want), len(want & stored_ids), len(want & set(rows)), len(lost),
                  len(duplicated), differ)


def overlapping_inputs(records: Sequence[dict[str, Any]], processes: int, out_dir: Path,
                       *, share: float = 0.5) -> list[Path]:
    """Write one JSON Lines input per process: every sync of a window of connectors.

    Process *i* gets the connectors ``[i * step, i * step + share * C)`` (cyclic), each
    with all of its syncs in time order, so the inputs overlap and a connector's syncs
    always reach a process whole.
    """
    by_connector: dict[str, list[dict[str, Any]]] = {}
    for record in sorted(records, key=lambda r: (r["started_at"], r["sync_id"])):
        by_connector.setdefault(record["connector_id"], []).append(record)
    connectors = sorted(by_connector)
    width = max(1, round(share * len(connectors)))
    step = max(1, len(connectors) // processes)
    paths = []
    for i in range(processes):
        chosen = {connectors[(i * step + k) % len(connectors)] for k in range(width)}
        mine = sorted((r for c in chosen for r in by_connector[c]),
                      key=lambda r: (r["started_at"], r["sync_id"]))
        path = out_dir / f"scorer-{i}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in mine))
        paths.append(path)
    return paths


def run_scorers(home: Path, inputs: Sequence[Path], *, timeout: float = 3600
                ) -> list[tuple[int, str, str]]:
    """Start one ``syncguard score INPUT`` per input at once; wait for all of them."""
    procs = [subprocess.Popen(syncguard(home, "score", path, "--actor", f"scorer-{i}"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env(), cwd=REPO)
             for i, path in enumerate(inputs)]
    outputs = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]


def _count(store: Path, table: str) -> int:
    try:
        return _query(store, f"SELECT count(*) FROM {table}")[0][0]
    except sqlite3.OperationalError:  # the store or its tables are not made yet
        return 0


def kill_midway(argv: Sequence[str], ready: Callable[[], bool], *,
                timeout: float = 600, marker: str | None = None) -> bool:
    """Run ``argv``; SIGKILL it as soon as ``ready()`` holds (and, with ``marker``, once
    that text has appeared on its stderr). True if it was killed before it finished on
    its own (the kill landed mid-work)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE if marker else subprocess.DEVNULL,
                            env=_env(), cwd=REPO, text=True)
    if marker is not None:
        seen = threading.Event()

        def watch() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                if marker in line:
                    seen.set()

        threading.Thread(target=watch, daemon=True).start()
        check = ready
        ready = lambda: seen.is_set() and check()  # noqa: E731 - a one-line predicate
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return proc.returncode == -signal.SIGKILL
            time.sleep(0.005)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _finish(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=_env(), cwd=REPO,
                          timeout=3600, check=False)


def kill_ingest(home: Path, path: Path, ids: Sequence[str]) -> tuple[bool, Census]:
    """SIGKILL ``syncguard ingest`` once a quarter of ``path`` is stored, then rerun."""
    store = home / "store.sqlite"
    before = _count(store, "syncs")
    killed = kill_midway(syncguard(home, "ingest", path),
                         lambda: _count(store, "syncs") - before >= len(ids) // 4)
    rerun = _finish(syncguard(home, "ingest", path))
    assert rerun.returncode == 0, rerun.stderr
    return killed, census(store, ids, scored=False)


def kill_score(home: Path, path: Path, ids: Sequence[str], phase: str,
               reference: dict[str, tuple[str, float | None]]) -> tuple[bool, Census]:
    """SIGKILL ``syncguard score`` in ``phase`` (``"ingest"``: records half stored;
    ``"scoring"``: all stored, none scored yet), then rerun and compare."""
    store = home / "store.sqlite"
    stored0, scored0 = _count(store, "syncs"), _count(store, "scores")
    if phase == "ingest":
        def ready() -> bool:
            return _count(store, "syncs") - stored0 >= len(ids) // 2
    else:
        def ready() -> bool:
            done = _count(store, "syncs") - stored0 >= len(ids)
            return done and _count(store, "scores") == scored0
    killed = kill_midway(syncguard(home, "score", path, "--no-stdout"), ready)
    rerun = _finish(syncguard(home, "score", path))
    assert rerun.returncode in (0, 3), rerun.stderr
    return killed, census(store, ids, reference=reference)


def champion_facts(home: Path) -> dict[str, Any]:
    """Registered versions, the champion alias, and the cached champion's version and
    digest: what a training run leaves behind."""
    done = _finish(syncguard(home, "models", "list", "--json"))
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    pointer = json.loads((home / "models" / "champion.json").read_text())
    return {"versions": sorted(r["version"] for r in rows),
            "champion": [r["version"] for r in rows if "champion" in r["aliases"]],
            "cached": pointer["version"], "digest": pointer["digest"]}


def kill_train(home: Path, args: Sequence[str], *, marker: str = "final model",
               delay: float = 0.5) -> tuple[bool, dict[str, Any]]:
    """SIGKILL ``syncguard train ARGS`` ``delay`` seconds into the step named ``marker``
    (the final fit: before anything is registered), then rerun it to the end."""
    seen: list[float] = []

    def ready() -> bool:
        seen.append(time.monotonic())
        return seen[-1] - seen[0] >= delay

    killed = kill_midway(syncguard(home, "train", *args), ready, marker=marker)
    done = _finish(syncguard(home, "train", *args))
    assert done.returncode == 0, done.stderr
    return killed, champion_facts(home)


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--syncs", type=int, default=10_000,
                        help="About this many syncs per scoring process.")
    parser.add_argument("--connectors", type=int, default=100)
    parser.add_argument("--score-days", type=int, default=28)
    parser.add_argument("--history-days", type=int, default=14)
    parser.add_argument("--trees", type=int, default=50)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--skip-kills", action="store_true")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="syncguard-hardening-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        base, test_path, _singles, n = prepare(
            work, args.connectors, args.history_days + args.score_days, args.score_days,
            args.trees, args.seed)
        test = _records(test_path)
        print(f"set-up: {args.connectors} connectors, {n} test syncs, "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
        share = min(1.0, args.syncs / max(1, n))
        inputs = overlapping_inputs(test, args.processes, work, share=share)
        sizes = [len(_records(p)) for p in inputs]
        ids = sorted({r["sync_id"] for p in inputs for r in _records(p)})

        home = fresh_copy(base, work / "concurrent").root
        t0 = time.perf_counter()
        results = run_scorers(home, inputs)
        wall = time.perf_counter() - t0
        bad = [(code, err[-500:]) for code, _out, err in results if code not in (0, 3)]
        errors = sum("locked" in err or "error" in err for _code, _out, err in results)
        counted = census(home / "store.sqlite", ids, outputs=[out for _c, out, _e in results])
        print(f"concurrency: {args.processes} processes x {min(sizes)}-{max(sizes)} syncs, "
              f"{len(ids)} distinct, {wall:.0f} s wall, exit codes "
              f"{sorted(Counter(c for c, _o, _e in results).items())}, "
              f"{errors} with errors", file=sys.stderr)
        for code, err in bad:
            print(f"  exit {code}: {err}", file=sys.stderr)
        rows.append(counted.row(
            f"{args.processes} scorers x ~{sum(sizes) // len(sizes)} syncs, overlapping",
            "benchmarks/hardening.py"))

        if not args.skip_kills:
            reference_home = fresh_copy(base, work / "reference").root
            done = _finish(syncguard(reference_home, "score", test_path, "--no-stdout"))
            assert done.returncode in (0, 3), done.stderr
            reference = score_table(reference_home / "store.sqlite")
            all_ids = [r["sync_id"] for r in test]
            for phase in ("ingest", "scoring"):
                home = fresh_copy(base, work / f"kill-{phase}").root
                killed, counted = kill_score(home, test_path, all_ids, phase, reference)
                rows.append(counted.row(f"SIGKILL score during {phase} (killed: {killed}), "
                                        "rerun", "benchmarks/hardening.py"))
            home = fresh_copy(base, work / "kill-ingest").root
            killed, counted = kill_ingest(home, test_path, all_ids)
            rows.append(counted.row(f"SIGKILL ingest (killed: {killed}), rerun",
                                    "benchmarks/hardening.py"))
        shutil.rmtree(work / "concurrent", ignore_errors=True)

    print("| run | syncs | lost | duplicated | differ from uninterrupted | command |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
