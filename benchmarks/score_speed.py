"""Scoring speed: batch syncs/s end to end, and one sync from a cold process.

Run: ``.venv/bin/python benchmarks/score_speed.py [--connectors 100] [--days 30]
[--score-days 7] [--runs 3] [--singles 5] [--profile] [--no-bytecode]``

A simulated fleet's history is stored, a model fitted on it is installed as the champion
and the last two days of history are scored once, so every connector has saved state
(set-up, not timed). Then, each run on a fresh copy of that home:

* **batch, in-process**: JSON Lines file in -> contract -> store -> champion load ->
  scoring in time order -> scores, pauses, state and audit written -> native events to a
  JSON Lines file and to stdout (``/dev/null``): what ``syncguard score FILE`` does,
  without the interpreter start;
* **batch, CLI**: the same through ``syncguard score FILE --events-file ...`` as a process,
  the end-to-end figure the target is about; its CPU seconds (user + system, all threads)
  beside it, and the same less the start-up a cold single sync costs (interpreter,
  imports, champion): the rate once the process runs;
* **batch, in-process, model in one thread**: each in-process run beside one with the
  model's shards of connectors off (``SCORE_JOBS = 1``), interleaved, for the effect of
  scoring a large chunk in threads (:meth:`FleetModel.score` ``n_jobs``);
* **single sync, cold process**: ``syncguard score ONE.jsonl`` for the next sync of one
  connector, each in a new interpreter; median of ``--singles`` runs.

The CLI processes read syncguard's modules as compiled bytecode, as an installed package
does (``pip install`` compiles it), because a development shell with
``PYTHONDONTWRITEBYTECODE=1`` has every process compile each of syncguard's ~50 modules
again (~0.1-0.2 s CPU): two untimed score runs (a batch and a single sync, on a throwaway
copy of the home) write the bytecode of every module they import into a cache in the
benchmark's temporary directory, which the timed processes read (``PYTHONPYCACHEPREFIX``;
the cache must hold every module, the libraries' too, as Python then looks for bytecode
there only). ``--no-bytecode`` times them compiling syncguard's modules instead.

The in-process runs hand the service the input as the CLI does (a generator: parsing runs
inside ``score_items``). The breakdown row times each stage of one more in-process run,
with the input read first so it can be timed apart (model scoring is timed inside the
service). ``--profile`` adds the top functions of that run.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detector.contract import parse_lines, read_inputs  # noqa: E402
from detector.events.sinks import JsonlFileSink, StdoutSink  # noqa: E402
from detector.home import Home  # noqa: E402
from detector.model import FleetModel  # noqa: E402
from detector.modelfile import model_digest, save_model_dir  # noqa: E402
from detector.scoring import SCORE_JOBS, load_scoring_model, score_items  # noqa: E402
from detector.store import Store  # noqa: E402
from training.simulator import simulate_fleet  # noqa: E402


def prepare(work: Path, connectors: int, days: int, score_days: int, trees: int,
            seed: int) -> tuple[Home, Path, list[Path], int]:
    """A home with history stored and a champion installed; the test window as a file."""
    records, _labels = simulate_fleet(connectors, days, seed)
    records.sort(key=lambda r: (r["started_at"], r["sync_id"]))
    last = datetime.fromisoformat(max(r["started_at"] for r in records))
    cut = (last - timedelta(days=score_days)).strftime("%Y-%m-%dT%H:%M:%SZ")
    history = [r for r in records if r["started_at"] < cut]
    test = [r for r in records if r["started_at"] >= cut]
    home = Home(work / "base").ensure()
    with Store.open(home.store_path) as store:
        store.ingest(parse_lines([json.dumps(r) for r in history]), source="history")
    model = FleetModel(n_estimators=trees, random_state=seed).fit(history)
    arrays, config = model.to_arrays()
    model_dir = save_model_dir(home.model_cache_dir / "1", arrays=arrays, config=config)
    (home.model_cache_dir / "champion.json").write_text(
        json.dumps({"version": 1, "digest": model_digest(model_dir), "path": "1"}))
    # Steady state: every connector has scored syncs and saved state (the last two days of
    # history scored once); a store's first run also builds each connector's starting
    # state from its history, measured separately on the unwarmed copy.
    shutil.copytree(home.root, work / "unwarmed")
    warm = [r for r in history if r["started_at"] >= (datetime.fromisoformat(cut)
            - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")]
    with Store.open(home.store_path) as store:
        score_items(home, store, parse_lines([json.dumps(r) for r in warm]), source="warm",
                    actor="bench")
    test_path = work / "test.jsonl"
    test_path.write_text("".join(json.dumps(r) + "\n" for r in test))
    # Single syncs: one connector's next syncs, in time order (each run scores the next).
    first = test[0]["connector_id"]
    singles = []
    for i, record in enumerate(r for r in test if r["connector_id"] == first):
        path = work / f"one-{i}.jsonl"
        path.write_text(json.dumps(record) + "\n")
        singles.append(path)
    return home, test_path, singles, len(test)


def fresh_copy(base: Home, dest: Path) -> Home:
    """A copy of the prepared home (scoring changes the store)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(base.root, dest)
    return Home(dest)


class _TimedModel:
    """The real model, with the time spent in ``score`` and ``initial_state`` added up."""

    def __init__(self, model: Any) -> None:
        self._model, self.seconds = model, 0.0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._model, name)
        if name not in ("score", "initial_state"):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


def batch_in_process(home: Home, test_path: Path, events_path: Path,
                     timed: dict[str, float] | None = None, jobs: int | None = None) -> float:
    """Seconds for one end-to-end batch run in this process (the model's threads:
    ``jobs``, or the service's default, ``SCORE_JOBS``)."""
    import detector.scoring as scoring

    real_loader, real_jobs = scoring.load_scoring_model, scoring.SCORE_JOBS
    scoring.SCORE_JOBS = real_jobs if jobs is None else jobs
    model_clock: list[_TimedModel] = []

    def loader(h: Home) -> Any:
        start = time.perf_counter()
        model, version = real_loader(h)
        if timed is not None:
            timed["load champion"] = time.perf_counter() - start
        wrapped = _TimedModel(model)
        model_clock.append(wrapped)
        return wrapped, version

    scoring.load_scoring_model = loader
    start = time.perf_counter()
    try:
        with Store.open(home.store_path) as store, open(os.devnull, "w") as null, \
                JsonlFileSink(events_path) as file_sink:
            stdout_sink = StdoutSink(stream=null)
            items = read_inputs([str(test_path)])
            if timed is not None:
                items = list(items)
            t_read = time.perf_counter()
            run = score_items(home, store, items, source=str(test_path), actor="bench",
                              sinks=[stdout_sink, file_sink])
            t_done = time.perf_counter()
            stdout_sink.close()
        end = time.perf_counter()
    finally:
        scoring.load_scoring_model, scoring.SCORE_JOBS = real_loader, real_jobs
    if timed is not None:
        timed["read + validate JSON Lines"] = t_read - start
        timed["FleetModel.score (+ starting state)"] = model_clock[0].seconds
        timed["store, claim, record, events, sinks (rest)"] = (
            t_done - t_read - model_clock[0].seconds - timed["load champion"]
            + (end - t_done))
        timed["decisions"] = run.decisions()  # type: ignore[assignment]
    return end - start


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _env(pycache: Path | None) -> dict[str, str]:
    """The CLI processes' environment: this checkout first, and the bytecode cache."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SYNCGUARD_HOME", None)
    if pycache is not None:
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def compile_bytecode(pycache: Path, home: Home, *args: str) -> None:
    """One untimed ``syncguard --home HOME ARGS`` that writes the bytecode of every module
    it imports into ``pycache`` (what installing the package does for syncguard's)."""
    env = _env(pycache)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-m", "detector.cli.main", "--home", str(home.root),
                    *args], capture_output=True, env=env, cwd=REPO, check=False)


def cli(home: Home, *args: str, cpu: list[float] | None = None,
        pycache: Path | None = None) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall seconds of ``syncguard --home HOME ARGS`` in a new interpreter (its CPU
    seconds appended to ``cpu`` when given; bytecode read from ``pycache`` when given)."""
    env = _env(pycache)
    cpu0 = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "detector.cli.main", "--home",
                           str(home.root), *args], capture_output=True, text=True, env=env,
                          cwd=REPO, check=False)
    seconds = time.perf_counter() - start
    if cpu is not None:
        cpu.append(_children_cpu() - cpu0)
    if done.returncode not in (0, 3):
        raise SystemExit(f"syncguard {' '.join(args)} failed ({done.returncode}): "
                         f"{done.stderr}")
    return seconds, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connectors", type=int, default=100)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--score-days", type=int, default=7)
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--singles", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-bytecode", action="store_true",
                        help="CLI processes compile syncguard's modules each time")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="syncguard-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        base, test_path, singles, n = prepare(work, args.connectors, args.days,
                                              args.score_days, args.trees, args.seed)
        print(f"fleet: {args.connectors} connectors x {args.days} days (seed {args.seed}), "
              f"model: {args.trees} trees; scoring the last {args.score_days} days: {n} syncs "
              f"(set-up {time.perf_counter() - t0:.0f} s, not timed)")
        load_scoring_model(base)  # warm the file cache for every run alike
        pycache = None if args.no_bytecode else work / "pycache"
        if pycache is not None:
            throwaway = fresh_copy(base, work / "bytecode")
            compile_bytecode(pycache, throwaway, "score", str(test_path), "--events-file",
                             str(work / "bytecode.jsonl"), "--no-stdout")
            compile_bytecode(pycache, throwaway, "score", str(singles[-1]))

        load_before = os.getloadavg()[0]
        in_proc, in_cpu, one_job, one_job_cpu = [], [], [], []
        for i in range(args.runs):
            # CPU seconds beside wall seconds: on a shared 2-core machine the wall time moves
            # with other people's load, the CPU time much less. Each run beside one with the
            # model in one thread (interleaved, so both see about the same load).
            for jobs, wall, cpu in ((None, in_proc, in_cpu), (1, one_job, one_job_cpu)):
                cpu0 = time.process_time()
                wall.append(batch_in_process(fresh_copy(base, work / f"b{i}"), test_path,
                                             work / f"events-{i}.jsonl", jobs=jobs))
                cpu.append(time.process_time() - cpu0)
        first_run = [batch_in_process(fresh_copy(Home(work / "unwarmed"), work / f"u{i}"),
                                      test_path, work / f"events-u{i}.jsonl")
                     for i in range(args.runs)]
        timed: dict[str, Any] = {}
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
        batch_in_process(fresh_copy(base, work / "breakdown"), test_path,
                         work / "events-b.jsonl", timed)
        if args.profile:
            profiler.disable()
        via_cli, cli_cpu = [], []
        for i in range(args.runs):
            home = fresh_copy(base, work / f"c{i}")
            seconds, _done = cli(home, "score", str(test_path), "--events-file",
                                 str(work / f"cli-events-{i}.jsonl"), "--no-stdout",
                                 cpu=cli_cpu, pycache=pycache)
            via_cli.append(seconds)
        home = fresh_copy(base, work / "single")
        single = [cli(home, "score", str(path), pycache=pycache)[0]
                  for path in singles[:args.singles]]

    med_in, med_first, med_cli, med_one = (statistics.median(x) for x in (
        in_proc, first_run, via_cli, single))
    med_cli_cpu = statistics.median(cli_cpu)
    running = (f"{(n - 1) / (med_cli - med_one):,.0f} syncs/s" if med_cli > med_one
               else "n/a")
    rows = [
        ("batch end to end, CLI process", f"{n / med_cli:,.0f} syncs/s", f"{med_cli:.2f} s",
         ">= 5,000 syncs/s"),
        ("  same, per CPU second (all threads)", f"{n / med_cli_cpu:,.0f} syncs/s",
         f"{med_cli_cpu:.2f} s CPU", "(less load-dependent)"),
        ("  same, less a cold single's start-up", running, f"{med_cli - med_one:.2f} s",
         "(rate once running)"),
        ("batch end to end, in-process", f"{n / med_in:,.0f} syncs/s", f"{med_in:.2f} s",
         "(no interpreter start)"),
        ("  same, per CPU second (all threads)",
         f"{n / statistics.median(in_cpu):,.0f} syncs/s",
         f"{statistics.median(in_cpu):.2f} s CPU", "(less load-dependent)"),
        (f"  same, model in 1 thread (not {SCORE_JOBS})",
         f"{n / statistics.median(one_job):,.0f} syncs/s",
         f"{statistics.median(one_job):.2f} s, {statistics.median(one_job_cpu):.2f} s CPU",
         "(interleaved A/B)"),
        ("  same, store's first scoring run", f"{n / med_first:,.0f} syncs/s",
         f"{med_first:.2f} s", "(starting state from history)"),
        (f"single sync, cold process (median of {len(single)})", f"{med_one:.2f} s",
         f"min {min(single):.2f} / max {max(single):.2f}", "<= 1.5 s"),
    ]
    print(f"\nmedian of {args.runs} runs, each on a fresh copy of the home; load average "
          f"{load_before:.1f} before the timed runs, {os.getloadavg()[0]:.1f} after; CLI "
          f"processes {'compile every module' if pycache is None else 'read compiled bytecode'}"
          "\n")
    print(f"{'measure':<44} {'result':>16}  {'time':>22}  target")
    for name, value, secs, target in rows:
        print(f"{name:<44} {value:>16}  {secs:>22}  {target}")
    decisions = timed.pop("decisions")
    print(f"\nbreakdown of one in-process batch run ({n} syncs; decisions {decisions}):")
    for stage, seconds in timed.items():
        print(f"  {stage:<46} {seconds:6.2f} s  {1e6 * seconds / n:7.1f} us/sync")
    if args.profile:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
        print("\nprofile (tottime) of the breakdown run:\n" + out.getvalue())


if __name__ == "__main__":
    main()
