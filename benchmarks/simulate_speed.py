"""How long the fleet simulator takes: median of 3 runs per configuration.

Usage::

    .venv/bin/python benchmarks/simulate_speed.py [--runs 3] [--config 100x90 ...]

The target is 100 connectors x 90 days generated *and* written in under 10 s
on a 2-core machine. ``simulate`` is :func:`simulate_fleet` alone; ``write`` is
:func:`write_fleet` end to end (simulate, serialise, write both files).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.simulator import simulate_fleet, write_fleet  # noqa: E402

TARGET_S = 10.0


def _median_time(fn, runs: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    """Print a timing table; exit 1 if 100x90 misses the 10 s target."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--config", nargs="*", default=["10x30", "60x120", "100x90"],
                    help="NxDAYS fleets to time")
    args = ap.parse_args(argv)
    rows = []
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in args.config:
            n, days = (int(x) for x in cfg.split("x"))
            sim_s, (records, _) = _median_time(lambda n=n, d=days: simulate_fleet(n, d, 0),
                                               args.runs)
            out = Path(tmp) / cfg
            write_s, summary = _median_time(lambda n=n, d=days, o=out: write_fleet(o, n, d, 0),
                                            args.runs)
            size_mb = sum(p.stat().st_size for p in out.iterdir()) / 1e6
            rows.append((cfg, len(records), sim_s, write_s, len(records) / write_s, size_mb))
            if (n, days) == (100, 90) and write_s >= TARGET_S:
                ok = False
    head = f"{'fleet':>8} {'syncs':>8} {'simulate s':>11} {'sim+write s':>12} " \
           f"{'syncs/s':>9} {'MB':>7}"
    print(f"fleet simulator, median of {args.runs} runs")
    print(head)
    print("-" * len(head))
    for cfg, n_rec, sim_s, write_s, rate, mb in rows:
        print(f"{cfg:>8} {n_rec:>8} {sim_s:>11.2f} {write_s:>12.2f} {rate:>9.0f} {mb:>7.1f}")
    print(f"target: 100x90 simulate+write < {TARGET_S:.0f} s -> {'ok' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
