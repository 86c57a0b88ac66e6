"""How long ``syncguard train`` takes, and how much memory it needs, as the fleet grows.

Usage::

    .venv/bin/python benchmarks/train_speed.py [--sizes 100 300 1000] [--days 90]
                                               [--trees 100] [--jobs 2] [--keep DIR]

For each fleet size a simulated fleet (the simulator mixes 1 h to 24 h sync intervals;
the table gives the mix) is written and ingested into a fresh home, outside the timing.
Then one child process runs the whole pipeline, :func:`training.pipeline.train`: read
the store, backtest (a fit on all but the last 14 days, scoring those 14 days), the
final :meth:`FleetModel.fit` on all history, the MLflow run and the registration, with
polars' allocator set as ``syncguard train`` sets it (:func:`training.allocator.tune_polars`).
The table shows

* ``fit s``: the final ``FleetModel.fit`` alone (from the pipeline's own timings);
* ``backtest s``: the backtest fit plus scoring the held-out window;
* ``train s``: the pipeline end to end, wall clock;
* ``cpu s``: CPU seconds the training process used (all its threads), and ``load``: the
  1-minute load average when it finished. The machine is shared: with a load above its
  two cores, wall time grows while CPU seconds stay comparable between runs;
* ``RSS main``: peak resident memory of the training process (``ru_maxrss``);
* ``RSS total``: peak of the training process plus any child processes,
  sampled from ``/proc`` every 0.2 s (forests now grow in threads of the training process
  itself, so the two agree unless a library starts workers of its own); below the table,
  the same peak per progress step of the pipeline.

A run whose total RSS passes ``--max-rss-gib`` (default 12) is stopped, so that a fleet
too large for this shared machine cannot push it into swapping or the OOM killer; the
table then says where (which phase, after how long) it stopped.

Each size runs once (the machine is shared and the largest size takes minutes); the
target is 1,000 connectors x 90 days in at most 5 minutes and under 4 GiB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET_S = 300.0
TARGET_BYTES = 4 * 2**30


def _prepare(home: Path, connectors: int, days: int, seed: int) -> dict:
    """Simulate and ingest a fleet into ``home`` (in a child: keeps the parent small)."""
    from detector.contract import read_inputs
    from detector.home import Home
    from detector.store import Store
    from training.simulator import describe_fleet, write_fleet

    h = Home(home).ensure()
    t0 = time.perf_counter()
    summary = write_fleet(home / "fleet", connectors, days, seed)
    with Store.open(h.store_path) as store:
        report = store.ingest(read_inputs([summary["syncs_path"]]), source="bench")
    intervals = Counter(c["interval_h"] for c in describe_fleet(connectors, seed))
    return {
        "syncs": report.accepted,
        "rejected": len(report.rejected),
        "intervals_h": dict(sorted(intervals.items())),
        "labels_path": summary["labels_path"],
        "prepare_s": time.perf_counter() - t0,
    }


def _rss(pid: int | str) -> int:
    """Resident bytes of a process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


class _Watch(threading.Thread):
    """Sample this process and its descendants; stop the run above a memory limit."""

    def __init__(self, limit: int):
        super().__init__(daemon=True)
        self.limit, self.peak, self.phase, self.t0 = limit, 0, "starting", time.perf_counter()
        self.phase_peaks: dict[str, int] = {}  # where in the pipeline the memory goes

    def run(self) -> None:
        me = os.getpid()
        while True:
            total = _rss(me) + sum(_rss(k) for k in _descendants(me))
            self.peak = max(self.peak, total)
            self.phase_peaks[self.phase] = max(self.phase_peaks.get(self.phase, 0), total)
            if total > self.limit:
                print(json.dumps({"aborted": True, "phase": self.phase, "peak": self.peak,
                                  "after_s": time.perf_counter() - self.t0}), flush=True)
                for kid in _descendants(me):  # our own forest workers, then ourselves
                    with contextlib.suppress(OSError):
                        os.kill(kid, 9)
                os._exit(3)
            time.sleep(0.2)


def _train(home: Path, labels_path: str, trees: int, jobs: int, limit: int) -> dict:
    """Run the pipeline once; report its timings and peak memory (in a child process)."""
    from training import allocator

    allocator.tune_polars()  # as `syncguard train` does, before polars is imported
    from training.pipeline import TrainConfig, train

    watch = _Watch(limit)
    watch.start()

    def step(name: str) -> None:
        watch.phase = name

    t0 = time.perf_counter()
    result = train(home, TrainConfig(n_estimators=trees, n_jobs=jobs), labels_path=labels_path,
                   progress=step)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    kib = 1024  # ru_maxrss is in KiB on Linux
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "load": os.getloadavg()[0],
        "timings": result.timings,
        "version": result.version,
        "rss_main": usage.ru_maxrss * kib,
        "rss_total": watch.peak,
        "phase_peaks": watch.phase_peaks,
        "metrics": {k: result.metrics.get(k) for k in ("episode_recall", "false_pauses_per_1000",
                                                       "calibration_ratio")},
    }


def _child(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)  # the home's embedded store
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env=env, cwd=REPO, check=False)
    last = proc.stdout.strip().splitlines()[-1:] or ["{}"]
    if proc.returncode == 3 and '"aborted"' in last[0]:
        return json.loads(last[0])
    if proc.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{proc.stderr[-4000:]}")
    return json.loads(last[0])


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    """Print the table; exit 1 if the largest fleet misses a target."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[100, 300, 1000])
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, help="Keep the homes under this directory.")
    ap.add_argument("--max-rss-gib", type=float, default=12.0,
                    help="Stop a run whose memory passes this (the machine is shared).")
    args = ap.parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="train-speed-"))
    rows = []
    for n in args.sizes:
        home = root / f"{n}x{args.days}"
        prep = _child("--_prepare", str(home), str(n), str(args.days), str(args.seed))
        print(f"{n} connectors: {prep['syncs']} syncs ingested in {prep['prepare_s']:.0f} s, "
              f"intervals (h: connectors) {prep['intervals_h']}", file=sys.stderr, flush=True)
        limit = str(int(args.max_rss_gib * 2**30))
        run = _child("--_train", str(home), prep["labels_path"], str(args.trees), str(args.jobs),
                     limit)
        rows.append((n, prep, run))
        if run.get("aborted"):
            print(f"{n} connectors: stopped in '{run['phase']}' after {run['after_s']:.0f} s, "
                  f"RSS {_gib(run['peak'])}", file=sys.stderr, flush=True)
            break
        t = run["timings"]
        print(f"{n} connectors: train {run['wall_s']:.0f} s, fit {t['final_fit_s']:.0f} s",
              file=sys.stderr, flush=True)
    head = (f"{'connectors':>10} {'syncs':>8} {'fit s':>7} {'backtest s':>10} {'train s':>8} "
            f"{'cpu s':>7} {'load':>5} {'RSS main':>10} {'RSS total':>10}")
    print(f"syncguard train, {args.days} days, {args.trees} trees, {args.jobs} jobs, one run "
          "per size")
    print(head)
    print("-" * len(head))
    for n, prep, run in rows:
        if run.get("aborted"):
            print(f"{n:>10} {prep['syncs']:>8}  stopped in '{run['phase']}' after "
                  f"{run['after_s']:.0f} s: RSS passed {_gib(run['peak'])}")
            continue
        t = run["timings"]
        print(f"{n:>10} {prep['syncs']:>8} {t['final_fit_s']:>7.1f} {t['backtest_s']:>10.1f} "
              f"{run['wall_s']:>8.1f} {run['cpu_s']:>7.0f} {run['load']:>5.1f} "
              f"{_gib(run['rss_main']):>10} {_gib(run['rss_total']):>10}")
    done = [(n, run) for n, _, run in rows if not run.get("aborted")]
    for stage in ("backtest", "final"):
        print(f"{stage} phases (s): " + "; ".join(
            f"{n}: " + ", ".join(f"{k.removeprefix(stage + '.').removesuffix('_s')} {v:.0f}"
                                 for k, v in run["timings"].items() if k.startswith(stage + "."))
            for n, run in done))
    for n, run in done:
        print(f"peak RSS by step (GiB), {n}: " + ", ".join(
            f"{phase} {peak / 2**30:.2f}" for phase, peak in run["phase_peaks"].items()))
    n, prep, run = rows[-1]
    if run.get("aborted"):
        ok = False
        verdict = f"stopped above {_gib(run['peak'])}"
    else:
        peak = max(run["rss_main"], run["rss_total"])
        ok = run["wall_s"] <= TARGET_S and peak < TARGET_BYTES
        verdict = f"{run['wall_s']:.0f} s, {_gib(peak)}"
    print(f"target: {n} x {args.days} train <= {TARGET_S:.0f} s and < 4 GiB -> {verdict}: "
          f"{'ok' if ok else 'MISSED'}")
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_prepare":
        _, _, home, n, days, seed = sys.argv
        print(json.dumps(_prepare(Path(home), int(n), int(days), int(seed))))
    elif len(sys.argv) > 1 and sys.argv[1] == "--_train":
        _, _, home, labels, trees, jobs, limit = sys.argv
        print(json.dumps(_train(Path(home), labels, int(trees), int(jobs), int(limit))))
    else:
        sys.exit(main())
