"""How long ``syncguard train`` takes, and how much memory it needs, as the fleet grows.

Usage::

    .venv/bin/python benchmarks/train_speed.py [--sizes 100 300 1000] [--days 90]
                                               [--trees 100] [--jobs 2] [--keep DIR]

For each fleet size a simulated fleet (the simulator mixes 1 h to 24 h sync intervals;
the table gives the mix) is written and ingested into a fresh home, outside the timing.
Then one child process runs the whole pipeline, :func:`training.pipeline.train`: read
the store, backtest (a fit on all but the last 14 days, scoring those 14 days), the
final :meth:`FleetModel.fit` on all history, the MLflow run and the registration. The
table shows

* ``fit s``: the final ``FleetModel.fit`` alone (from the pipeline's own timings);
* ``backtest s``: the backtest fit plus scoring the held-out window;
* ``train s``: the pipeline end to end, wall clock;
* ``RSS main``: peak resident memory of the training process (``ru_maxrss``);
* ``RSS worker``: peak of the largest forest-fitting worker process (joblib); the
  peak of the whole job is at most ``main + jobs x worker``.

Each size runs once (the machine is shared and the largest size takes minutes); the
target is 1,000 connectors x 90 days in at most 5 minutes and under 4 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
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


def _train(home: Path, labels_path: str, trees: int, jobs: int) -> dict:
    """Run the pipeline once; report its timings and peak memory (in a child process)."""
    from training.pipeline import TrainConfig, train

    t0 = time.perf_counter()
    result = train(home, TrainConfig(n_estimators=trees, n_jobs=jobs), labels_path=labels_path)
    wall = time.perf_counter() - t0
    try:  # wait for the forest workers, so their peak shows in RUSAGE_CHILDREN
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)
    except Exception:  # pragma: no cover - joblib internals moved
        pass
    kib = 1024  # ru_maxrss is in KiB on Linux
    return {
        "wall_s": wall,
        "timings": result.timings,
        "version": result.version,
        "rss_main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib,
        "rss_worker": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib,
        "metrics": {k: result.metrics.get(k) for k in ("episode_recall", "false_pauses_per_1000",
                                                       "calibration_ratio")},
    }


def _child(*args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)  # the home's embedded store
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env=env, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
    args = ap.parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="train-speed-"))
    rows = []
    for n in args.sizes:
        home = root / f"{n}x{args.days}"
        prep = _child("--_prepare", str(home), str(n), str(args.days), str(args.seed))
        print(f"{n} connectors: {prep['syncs']} syncs ingested in {prep['prepare_s']:.0f} s, "
              f"intervals (h: connectors) {prep['intervals_h']}", file=sys.stderr, flush=True)
        run = _child("--_train", str(home), prep["labels_path"], str(args.trees), str(args.jobs))
        rows.append((n, prep, run))
        t = run["timings"]
        print(f"{n} connectors: train {run['wall_s']:.0f} s, fit {t['final_fit_s']:.0f} s",
              file=sys.stderr, flush=True)
    head = (f"{'connectors':>10} {'syncs':>8} {'fit s':>7} {'backtest s':>10} {'train s':>8} "
            f"{'RSS main':>10} {'RSS worker':>10}")
    print(f"syncguard train, {args.days} days, {args.trees} trees, {args.jobs} jobs, one run "
          "per size")
    print(head)
    print("-" * len(head))
    for n, prep, run in rows:
        t = run["timings"]
        print(f"{n:>10} {prep['syncs']:>8} {t['final_fit_s']:>7.1f} {t['backtest_s']:>10.1f} "
              f"{run['wall_s']:>8.1f} {_gib(run['rss_main']):>10} {_gib(run['rss_worker']):>10}")
    print("final fit phases (s): " + "; ".join(
        f"{n}: " + ", ".join(f"{k.removeprefix('final.').removesuffix('_s')} {v:.0f}"
                             for k, v in run["timings"].items() if k.startswith("final."))
        for n, _, run in rows))
    n, prep, run = rows[-1]
    peak = run["rss_main"] + args.jobs * run["rss_worker"]
    ok = run["wall_s"] <= TARGET_S and peak < TARGET_BYTES
    print(f"target: {n} x {args.days} train <= {TARGET_S:.0f} s and < 4 GiB -> "
          f"{run['wall_s']:.0f} s, <= {_gib(peak)}: {'ok' if ok else 'MISSED'}")
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_prepare":
        _, _, home, n, days, seed = sys.argv
        print(json.dumps(_prepare(Path(home), int(n), int(days), int(seed))))
    elif len(sys.argv) > 1 and sys.argv[1] == "--_train":
        _, _, home, labels, trees, jobs = sys.argv
        print(json.dumps(_train(Path(home), labels, int(trees), int(jobs))))
    else:
        sys.exit(main())
