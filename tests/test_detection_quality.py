"""``benchmarks/detection_quality.py`` prints one summary row per seed and the calibration
of all seeds together, the counts adding up to the seeds' own."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def test_summary_rows_and_the_pooled_calibration_add_up() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "detection_quality.py"), "--connectors", "8",
         "--days", "40", "--train-days", "25", "--seeds", "1", "2", "--trees", "20"],
        capture_output=True, text=True, check=True, timeout=600,
    ).stdout
    rows = re.findall(r"^(\d+) \| .* \| (\d+) / ([\d.]+) \(([\d.]+)\) \|", out, re.MULTILINE)
    assert [seed for seed, *_ in rows] == ["1", "2"]
    pooled = re.search(
        r"^all seeds: (\d+) false pauses where the budget expects ([\d.]+): calibration "
        r"ratio ([\d.]+) \(p = ([\d.]+)\)$", out, re.MULTILINE)
    assert pooled, out
    assert int(pooled[1]) == sum(int(r[1]) for r in rows)
    # Each count is printed to 0.1 (rounded: off by 0.05 at most).
    assert abs(float(pooled[2]) - sum(float(r[2]) for r in rows)) <= 0.05 * (len(rows) + 1)
    for _, _, expected, p in rows:
        assert float(expected) > 0 and 0.0 <= float(p) <= 1.0
    # The seeds' calibration curves together: at m = 1 the budget's own expectation.
    curve = re.search(r"^all seeds, calibration curve \(.*?\): (.*)$", out, re.MULTILINE)
    assert curve, out
    points = re.findall(r"m=(\d+): (\d+) / ([\d.]+) \(", curve[1])
    assert [int(m) for m, _, _ in points] == [1, 3, 10, 30, 100]
    assert abs(float(points[0][2]) - float(pooled[2])) <= 0.1
    observed = [int(o) for _, o, _ in points]
    assert observed == sorted(observed)
