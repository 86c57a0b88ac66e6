"""Hardening figures: records lost and duplicated under concurrency and SIGKILL.

Run: ``.venv/bin/python benchmarks/hardening.py [--processes 8] [--syncs 10000]
[--connectors 100] [--score-days 28] [--parts corpus,concurrency,kills,train]``

A simulated fleet's history is stored and a model fitted on it is installed as the
champion (``score_speed.prepare``, the same set-up as the speed benchmark). Then:

* **concurrency**: ``--processes`` real ``syncguard score`` processes start at once, each
  on about ``--syncs`` syncs. Inputs overlap by connector: process *i* gets every test
  sync of a window of half the connectors, shifted by *i*, so each connector's syncs
  reach several processes at once (and no process can see a sync after a later one of
  its connector was scored, which ``score`` would rightly reject).
* **SIGKILL**: ``syncguard ingest`` and ``syncguard score`` are killed with SIGKILL at a
  point mid-work (found by watching the store), then run again; the final state is
  compared with an uninterrupted run on a copy of the same home. ``syncguard train`` is
  killed during its final fit and rerun; its registered versions, champion and model
  digest are compared with an uninterrupted ``train``.
* **bad input**: every case of ``tests/test_bad_input.py`` through ``syncguard score``
  on a small fleet: valid syncs of each batch scored, each bad record kept.

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

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from score_speed import fresh_copy, prepare  # noqa: E402

from detector.home import Home  # noqa: E402
from detector.model_cache import load_champion  # noqa: E402

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
    loaded, _version = load_champion(Home(home))  # verifies every file against its hash
    return {"versions": sorted(r["version"] for r in rows),
            "champion": [r["version"] for r in rows if "champion" in r["aliases"]],
            "cached": pointer["version"], "arrays": loaded.arrays}


def same_fit(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    """Whether two fitted models hold the same tables, up to row order and float
    rounding: two uninterrupted ``train`` runs on the same store differ in both (grouped
    tables come out in hash order, so sums run in another order)."""
    if a.keys() != b.keys():
        return False
    tables: dict[str, list[str]] = {}
    for name in a:
        tables.setdefault(name.rpartition("/")[0], []).append(name)
    for columns in tables.values():
        if len({a[c].shape[:1] for c in columns}) > 1 or any(a[c].ndim != 1 for c in columns):
            if not all(np.allclose(a[c], b[c], equal_nan=True) if a[c].dtype.kind == "f"
                       else np.array_equal(a[c], b[c]) for c in columns):
                return False
            continue
        left, right = (pl.DataFrame({c: m[c] for c in columns}) for m in (a, b))
        keys = [c for c in columns if left[c].dtype not in (pl.Float32, pl.Float64)]
        left, right = left.sort(keys or columns), right.sort(keys or columns)
        for c in columns:
            x, y = left[c].to_numpy(), right[c].to_numpy()
            same = (np.allclose(x, y, rtol=1e-9, atol=1e-12, equal_nan=True)
                    if x.dtype.kind == "f" else np.array_equal(x, y))
            if not same:
                return False
    return True


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


def corpus_census(base: Path, test: list[dict[str, Any]], work: Path) -> tuple[int, Census]:
    """Every case of the bad-input corpus (``tests/test_bad_input.py``) through
    ``syncguard score`` on a copy of ``base``: the valid syncs of each batch must be
    scored, and each bad record either kept (``rejects`` / ``conflicts``) or, when the
    case is acceptable input, stored and scored."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_bad_input import CASES, make_parts, run_case

    parts = make_parts(test)
    expected = lost = duplicated = 0
    for i, case in enumerate(CASES):
        home = work / f"case-{i}"
        shutil.copytree(base, home)
        path, result = run_case(case, parts, home, work)
        if "Traceback" in result.stderr or result.exit_code not in (0, 3, 4):
            lost += 1  # a crash: count the batch's bad record as lost
        store = home / "store.sqlite"
        valid = [r["sync_id"] for r in parts.valid] if path.stat().st_size else []
        counted = census(store, valid)
        expected += len(valid) + 1
        lost += counted.lost
        duplicated += counted.duplicated
        if case.field is None:
            lost += bool(path.stat().st_size) and census(store, [parts.bad["sync_id"]]).lost
        else:
            table = "conflicts" if case.kind == "conflict" else "rejects"
            lost += _count(store, table) == 0
        shutil.rmtree(home)
    return len(CASES), Census(expected, 0, 0, lost, duplicated)


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
    parser.add_argument("--parts", default="corpus,concurrency,kills,train",
                        help="Comma-separated: corpus, concurrency, kills, train.")
    args = parser.parse_args()
    wanted = set(args.parts.split(","))
    command = "benchmarks/hardening.py"

    rows = []
    with tempfile.TemporaryDirectory(prefix="syncguard-hardening-") as tmp:
        work = Path(tmp)
        if wanted & {"corpus", "train"}:
            small, small_test, _s, _n = prepare(work / "small", 16, 21, 7, 20, args.seed)
        if "corpus" in wanted:
            cases, counted = corpus_census(small.root, _records(small_test), work / "corpus")
            rows.append(counted.row(f"bad-input corpus: {cases} cases, each in a batch with "
                                    "valid syncs", command))
        if "train" in wanted:
            rows.append(_train_row(small.root, work, command))
        if wanted & {"concurrency", "kills"}:
            t0 = time.perf_counter()
            base, test_path, _singles, n = prepare(
                work, args.connectors, args.history_days + args.score_days, args.score_days,
                args.trees, args.seed)
            print(f"set-up: {args.connectors} connectors, {n} test syncs, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
        if "concurrency" in wanted:
            rows.append(_concurrency_row(base, _records(test_path), work, args, command))
        if "kills" in wanted:
            rows.extend(_kill_rows(base, test_path, work, command))

    print("| run | syncs | lost | duplicated | differ from uninterrupted | command |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(row)


def _concurrency_row(base: Home, test: list[dict[str, Any]], work: Path,
                     args: argparse.Namespace, command: str) -> str:
    share = min(1.0, args.syncs / max(1, len(test)))
    inputs = overlapping_inputs(test, args.processes, work, share=share)
    sizes = [len(_records(p)) for p in inputs]
    ids = sorted({r["sync_id"] for p in inputs for r in _records(p)})
    home = fresh_copy(base, work / "concurrent").root
    t0 = time.perf_counter()
    results = run_scorers(home, inputs)
    wall = time.perf_counter() - t0
    errors = sum("locked" in err or "error" in err for _code, _out, err in results)
    counted = census(home / "store.sqlite", ids, outputs=[out for _c, out, _e in results])
    print(f"concurrency: {args.processes} processes x {min(sizes)}-{max(sizes)} syncs, "
          f"{len(ids)} distinct, {wall:.0f} s wall, exit codes "
          f"{sorted(Counter(c for c, _o, _e in results).items())}, "
          f"{errors} with errors", file=sys.stderr)
    for code, _out, err in results:
        if code not in (0, 3):
            print(f"  exit {code}: {err[-500:]}", file=sys.stderr)
    shutil.rmtree(home, ignore_errors=True)
    return counted.row(f"{args.processes} scorers x ~{sum(sizes) // len(sizes)} syncs, "
                       "overlapping", command)


def _kill_rows(base: Home, test_path: Path, work: Path, command: str) -> list[str]:
    reference_home = fresh_copy(base, work / "reference").root
    done = _finish(syncguard(reference_home, "score", test_path, "--no-stdout"))
    assert done.returncode in (0, 3), done.stderr
    reference = score_table(reference_home / "store.sqlite")
    ids = [r["sync_id"] for r in _records(test_path)]
    rows = []
    for phase in ("ingest", "scoring"):
        home = fresh_copy(base, work / f"kill-{phase}").root
        killed, counted = kill_score(home, test_path, ids, phase, reference)
        rows.append(counted.row(f"SIGKILL score during {phase} (killed: {killed}), rerun",
                                command))
    home = fresh_copy(base, work / "kill-ingest").root
    killed, counted = kill_ingest(home, test_path, ids)
    rows.append(counted.row(f"SIGKILL ingest (killed: {killed}), rerun", command))
    return rows


TRAIN_ARGS = ("--trees", "10", "--max-samples", "64", "--jobs", "1", "--holdout-days", "3",
              "--min-history", "10")


def _train_row(base: Path, work: Path, command: str) -> str:
    """SIGKILL ``train`` mid-fit and rerun, against an uninterrupted ``train``: the
    registered versions, the champion and the cached model's digest must be the same."""
    facts = []
    for name in ("train-clean", "train-killed"):
        home = work / name
        shutil.copytree(base, home)
        shutil.rmtree(home / "models")
        if name == "train-clean":
            done = _finish(syncguard(home, "train", *TRAIN_ARGS))
            assert done.returncode == 0, done.stderr
            facts.append(champion_facts(home))
        else:
            killed, after = kill_train(home, TRAIN_ARGS)
            facts.append(after)
    clean, rerun = facts
    extra = len(rerun["versions"]) - len(clean["versions"])
    return Census(1, 1, 1, lost=int(not rerun["champion"]), duplicated=max(0, extra),
                  differ=int(not same_fit(clean["arrays"], rerun["arrays"]))).row(
        f"SIGKILL train mid-fit (killed: {killed}), rerun: versions {rerun['versions']}, "
        f"champion {rerun['champion']}", command)


if __name__ == "__main__":
    main()
