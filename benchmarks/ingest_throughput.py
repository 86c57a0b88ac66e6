"""Ingest throughput: contract parsing/validation and store ingest, records per second.

Run: ``.venv/bin/python benchmarks/ingest_throughput.py [--connectors 100] [--days 90]``

Each figure is the median of ``--runs`` runs (default 5); store runs use a fresh SQLite
file each. The fleet comes from ``training.simulator.simulate_fleet``; if that is not
importable the conftest record generator is used instead and the table says so.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detector.contract import parse_lines, read_inputs, validate_record  # noqa: E402
from detector.store import Store  # noqa: E402


def load_fleet(connectors: int, days: int, seed: int) -> tuple[list[dict[str, Any]], str]:
    """Records of a simulated fleet, and where they came from."""
    try:
        from training.simulator import simulate_fleet
    except ImportError:
        spec = importlib.util.spec_from_file_location("conftest", REPO / "tests" / "conftest.py")
        assert spec is not None and spec.loader is not None
        conftest = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(conftest)
        # The fallback makes hourly syncs: days * 24 per connector.
        records = conftest.make_records(connectors, days * 24, seed=seed)
        return records, "FALLBACK tests/conftest.py generator (training.simulator missing)"
    records, _labels = simulate_fleet(connectors, days, seed)
    return records, "training.simulator.simulate_fleet"


def median_rate(n: int, runs: int, job: Callable[[int], None]) -> tuple[float, float]:
    """Median records/s over ``runs`` calls of ``job(run_index)``, and the median seconds."""
    seconds = []
    for run in range(runs):
        start = time.perf_counter()
        job(run)
        seconds.append(time.perf_counter() - start)
    mid = statistics.median(seconds)
    return n / mid, mid


def measure(records: list[dict[str, Any]], tmp: Path,
            runs: int) -> list[tuple[str, float, float]]:
    """Time each stage over ``records``; rows of (stage, records/s, median seconds)."""
    n = len(records)
    path = tmp / "syncs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    lines = path.read_bytes().splitlines(keepends=True)

    def parse(_: int) -> None:
        accepted = sum(hasattr(r, "content_hash") for r in parse_lines(lines))
        if accepted != n:
            raise SystemExit(f"benchmark input has {n - accepted} rejected records")

    stores = [tmp / f"store-{run}.sqlite" for run in range(runs)]

    def ingest(run: int, expect: str) -> None:
        with Store.open(stores[run]) as store:
            report = store.ingest(read_inputs([str(path)]), source="bench", actor="bench")
        if report.counts()[expect] != n:
            raise SystemExit(f"unexpected ingest outcome: {report.counts()}")

    stages: list[tuple[str, Callable[[int], None]]] = [
        ("validate_record (parsed dicts)", lambda _: [validate_record(r) for r in records]),
        ("parse_lines (JSON Lines bytes -> Accepted)", parse),
        ("read_inputs + Store.ingest, fresh store", lambda run: ingest(run, "accepted")),
        ("read_inputs + Store.ingest, all replays", lambda run: ingest(run, "replayed")),
    ]
    return [(name, *median_rate(n, runs, job)) for name, job in stages]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connectors", type=int, default=100)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)

    records, origin = load_fleet(args.connectors, args.days, args.seed)
    with tempfile.TemporaryDirectory(prefix="syncguard-bench-") as tmp:
        rows = measure(records, Path(tmp), args.runs)
    print(f"fleet: {args.connectors} connectors x {args.days} days, seed {args.seed}: "
          f"{len(records)} records (~{len(json.dumps(records[0]))} bytes each)")
    print(f"records from: {origin}")
    print(f"median of {args.runs} runs; store stages use a fresh store per run\n")
    print(f"{'stage':<46} {'records/s':>10} {'seconds':>8}")
    for name, rate, sec in rows:
        print(f"{name:<46} {rate:>10,.0f} {sec:>8.2f}")


if __name__ == "__main__":
    main()
