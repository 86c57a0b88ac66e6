"""Build an expensive fixture once per test session, even with ``pytest -n 2``.

With pytest-xdist every worker runs module- and session-scoped fixtures for itself, so
two workers would both train the same models. :func:`build_once` lets the first worker
build into a directory shared by the session (keyed by xdist's run id) under a file
lock; the other one waits and reads the recorded facts. Without xdist it just builds.
What it returns must be JSON, and tests must not change what it built (copy it first).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

__all__ = ["build_once"]


def build_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Any]
) -> Any:
    """Run ``build(directory)`` once per session and return its (JSON) result."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run_id is None:  # not under xdist: nothing to share
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent / f"once-{run_id}" / name
    shared.mkdir(parents=True, exist_ok=True)
    facts = shared / "facts.json"
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if facts.exists():
            return json.loads(facts.read_text())
        result = build(shared / "data")
        facts.write_text(json.dumps(result))
        return result
