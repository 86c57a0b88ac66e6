"""Faults around ``syncguard score``: SIGKILL, concurrent scorers, a long reader, MLflow
gone, a tampered model, a webhook that hangs, a full outbox.

Real processes, a real store file, real HTTP on 127.0.0.1. Lost and duplicated syncs are
counted from the store by :func:`hardening.census` (``benchmarks/hardening.py`` runs the
same functions at 8 x 10,000 syncs and prints the table).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO
from once import build_once
from test_events_webhook import SECRET, Receiver

sys.path.insert(0, str(REPO / "benchmarks"))

from hardening import (  # noqa: E402
    census,
    kill_ingest,
    kill_score,
    kill_train,
    overlapping_inputs,
    run_scorers,
    score_table,
    syncguard,
)
from score_speed import prepare  # noqa: E402

from detector.events.webhook import SECRET_ENV  # noqa: E402
from detector.model_cache import POINTER_NAME  # noqa: E402


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _build(work: Path) -> dict:
    base, test_path, _singles, n = prepare(work, 16, 21, 7, 20, 4)
    reference = work / "reference"
    shutil.copytree(base.root, reference)
    done = _run(reference, "score", test_path, "--no-stdout")
    assert done.returncode in (0, 3), done.stderr
    return {"base": str(base.root), "test": str(test_path), "n": n,
            "reference": score_table(reference / "store.sqlite")}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """16 connectors: 14 days of history stored, a champion installed, 7 days to score;
    and the uninterrupted run's decisions (the reference every kill run must match).
    Built once per session (tests copy the home before they change it)."""
    facts = build_once(tmp_path_factory, "faults", _build)
    test = Path(facts["test"])
    return {"base": Path(facts["base"]), "test": test, "n": facts["n"],
            "ids": [r["sync_id"] for r in _records(test)],
            "reference": {k: tuple(v) for k, v in facts["reference"].items()}}


def _copy(bench: dict, dest: Path) -> Path:
    shutil.copytree(bench["base"], dest)
    return dest


def _run(home: Path, *args: str | os.PathLike[str], env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    full.pop("SYNCGUARD_HOME", None)
    return subprocess.run(syncguard(home, *args), capture_output=True, text=True, env=full,
                          cwd=REPO, timeout=timeout, check=False)


# ----------------------------------------------------------------------------- kills


@pytest.mark.parametrize("phase", ["ingest", "scoring"])
def test_sigkill_score_then_rerun_matches_an_uninterrupted_run(
        bench: dict, tmp_path: Path, phase: str) -> None:
    home = _copy(bench, tmp_path / "home")
    killed, counted = kill_score(home, bench["test"], bench["ids"], phase, bench["reference"])
    assert killed, "the kill must land before the run finishes"
    assert (counted.lost, counted.duplicated, counted.differ) == (0, 0, 0), counted
    assert counted.scored == len(bench["ids"])


def test_sigkill_ingest_then_rerun_stores_each_record_once(bench: dict,
                                                           tmp_path: Path) -> None:
    home = _copy(bench, tmp_path / "home")
    killed, counted = kill_ingest(home, bench["test"], bench["ids"])
    assert killed
    assert (counted.lost, counted.duplicated, counted.stored) == (0, 0, len(bench["ids"]))
    rows = sqlite3.connect(home / "store.sqlite").execute(
        "SELECT count(*), count(DISTINCT sync_id) FROM syncs").fetchone()
    assert rows[0] == rows[1]


# ----------------------------------------------------------------------------- concurrency


def test_eight_scorers_on_overlapping_input_score_each_sync_once(bench: dict,
                                                                 tmp_path: Path) -> None:
    home = _copy(bench, tmp_path / "home")
    inputs = overlapping_inputs(_records(bench["test"]), 8, tmp_path)
    given = [[r["sync_id"] for r in _records(p)] for p in inputs]
    wanted = sorted({s for ids in given for s in ids})
    assert sum(map(len, given)) > 2 * len(wanted)  # every sync reaches several scorers
    results = run_scorers(home, inputs, timeout=600)
    for code, _out, err in results:
        assert code in (0, 3), err
        assert "locked" not in err and "error" not in err
    for ids, (_code, out, _err) in zip(given, results, strict=True):
        assert [json.loads(line)["sync_id"] for line in out.splitlines()] == ids
    counted = census(home / "store.sqlite", wanted, outputs=[out for _c, out, _e in results])
    assert (counted.lost, counted.duplicated) == (0, 0), counted
    assert counted.scored == len(wanted)


def test_a_long_reader_does_not_stop_scorers(bench: dict, tmp_path: Path) -> None:
    """A report holding a read transaction for the whole run (WAL: readers never block
    the writer); it keeps its snapshot, and sees the scores once it lets go."""
    home = _copy(bench, tmp_path / "home")
    reader = sqlite3.connect(home / "store.sqlite", isolation_level=None)
    reader.execute("BEGIN")
    before = reader.execute("SELECT count(*) FROM scores").fetchone()[0]
    half = len(bench["ids"]) // 2
    records = _records(bench["test"])
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("".join(json.dumps(r) + "\n" for r in records[:half]))
    second.write_text("".join(json.dumps(r) + "\n" for r in records))
    results = run_scorers(home, [first, second], timeout=600)
    assert [code for code, _o, _e in results] in ([3, 3], [0, 3], [3, 0], [0, 0])
    assert all("locked" not in err for _c, _o, err in results)
    assert reader.execute("SELECT count(*) FROM scores").fetchone()[0] == before
    reader.execute("COMMIT")
    after = reader.execute("SELECT count(*) FROM scores").fetchone()[0]
    reader.close()
    assert after == before + len(bench["ids"])
    counted = census(home / "store.sqlite", bench["ids"])
    assert (counted.lost, counted.duplicated) == (0, 0)


# ----------------------------------------------------------------------------- model


def test_mlflow_unreachable_scoring_uses_the_cached_champion(bench: dict,
                                                             tmp_path: Path) -> None:
    home = _copy(bench, tmp_path / "home")
    (home / "mlflow").write_text("not a directory: the embedded MLflow store is gone")
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_REGISTRY_URI":
           "http://127.0.0.1:9"}
    done = _run(home, "score", bench["test"], env=env)
    assert done.returncode in (0, 3), done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(events) == len(bench["ids"]) and {e["model_version"] for e in events} == {"1"}
    assert "unscorable" not in done.stderr
    assert score_table(home / "store.sqlite") == {
        s: bench["reference"][s] for s in score_table(home / "store.sqlite")}


def _tamper(home: Path) -> str:
    model_dir = home / "models" / "1"
    victim = max((p for p in model_dir.iterdir() if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    return victim.name


def _escape(home: Path) -> str:
    outside = home.parent / "elsewhere"
    shutil.copytree(home / "models" / "1", outside)
    pointer = home / "models" / POINTER_NAME
    record = json.loads(pointer.read_text())
    pointer.write_text(json.dumps({**record, "path": "../../elsewhere"}))
    return "points outside"


def _symlink(home: Path) -> str:
    outside = home.parent / "elsewhere"
    shutil.move(home / "models" / "1", outside)
    (home / "models" / "1").symlink_to(outside, target_is_directory=True)
    return "points outside"


@pytest.mark.parametrize("damage", [_tamper, _escape, _symlink],
                         ids=["flipped byte", "pointer escapes the home", "symlink out"])
def test_a_bad_model_fails_closed(bench: dict, tmp_path: Path, damage) -> None:
    home = _copy(bench, tmp_path / "home")
    named = damage(home)
    ids = bench["ids"][:20]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records(bench["test"])[:20]))
    done = _run(home, "score", path)
    assert done.returncode == 3, done.stderr  # pause: hold propagation
    assert "Traceback" not in done.stderr and "fail closed (unscorable)" in done.stderr
    assert named in done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["sync_id"] for e in events] == ids
    assert all(e["decision"] == "pause" and e["rule_hits"][0]["rule"] == "unscorable"
               for e in events)
    counted = census(home / "store.sqlite", ids)
    assert (counted.lost, counted.duplicated) == (0, 0)


# ----------------------------------------------------------------------------- webhook


class Hang:
    """A TCP listener on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                self.accepted.append(self.sock.accept()[0])
            except (TimeoutError, OSError):
                continue

    def close(self) -> None:
        self._stop.set()
        for conn in self.accepted:
            conn.close()
        self.sock.close()


def _outbox_rows(home: Path) -> int:
    with sqlite3.connect(home / "store.sqlite") as conn:
        return conn.execute("SELECT count(*) FROM outbox").fetchone()[0]


def test_webhook_that_hangs_times_out_queues_and_delivers_later(
        bench: dict, tmp_path: Path, receiver: Receiver) -> None:
    home = _copy(bench, tmp_path / "home")
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records(bench["test"])[:5]))
    hang = Hang()
    try:
        start = time.monotonic()
        done = _run(home, "score", path, "--webhook", hang.url, "--webhook-timeout", "0.3",
                    "--webhook-attempts", "2", env={SECRET_ENV: SECRET})
        took = time.monotonic() - start
    finally:
        hang.close()
    assert done.returncode in (0, 3), done.stderr
    assert took < 60 and "timed out" in done.stderr
    assert len(done.stdout.splitlines()) == 5  # decisions are not held up by the receiver
    assert _outbox_rows(home) == 5 and "5 wait in the outbox" in done.stderr
    again = _run(home, "score", path, "--webhook", receiver.url, env={SECRET_ENV: SECRET})
    assert again.returncode in (0, 3), again.stderr
    first = [json.loads(line)["event_id"] for line in done.stdout.splitlines()]
    assert receiver.accepted_ids()[:5] == first  # the queue first, in order, once
    assert _outbox_rows(home) == 0
    assert SECRET not in done.stderr + done.stdout + again.stderr + again.stdout


def test_full_outbox_stops_loudly_and_keeps_every_decision(
        bench: dict, tmp_path: Path, receiver: Receiver) -> None:
    home = _copy(bench, tmp_path / "home")
    records = _records(bench["test"])[:6]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    receiver.stop()  # down: everything queues
    done = _run(home, "score", path, "--webhook", receiver.url, "--webhook-attempts", "1",
                "--outbox-limit", "3", env={SECRET_ENV: SECRET})
    assert done.returncode == 1, done.stderr
    assert "error: the webhook outbox is full: 3 events" in done.stderr
    assert "Nothing was dropped" in done.stderr and "Traceback" not in done.stderr
    assert _outbox_rows(home) == 3
    assert len(done.stdout.splitlines()) == 6  # stdout had every decision first
    counted = census(home / "store.sqlite", [r["sync_id"] for r in records])
    assert (counted.lost, counted.duplicated) == (0, 0)  # every decision is stored
    # The receiver is back: the same command sends the queue, then the rest as replays.
    receiver.start()
    again = _run(home, "score", path, "--webhook", receiver.url, env={SECRET_ENV: SECRET})
    assert again.returncode in (0, 3), again.stderr
    assert _outbox_rows(home) == 0
    got = [json.loads(body) for body in receiver.accepted]
    assert {e["sync_id"] for e in got} == {r["sync_id"] for r in records}
    assert len({e["event_id"] for e in got}) == 6


TRAIN = ["--trees", "10", "--max-samples", "64", "--jobs", "1", "--holdout-days", "3",
         "--min-history", "10"]


def test_sigkill_train_then_rerun_leaves_one_verified_champion(bench: dict,
                                                               tmp_path: Path) -> None:
    """Killed during the backtest (its MLflow run open, nothing registered yet), then run
    again: one registered version, the champion alias and the local copy agree, and it
    scores. (``benchmarks/hardening.py`` also kills it in the final fit and compares the
    fitted tables with an uninterrupted run.)"""
    home = _copy(bench, tmp_path / "home")
    shutil.rmtree(home / "models")
    killed, facts = kill_train(home, TRAIN, marker="training: backtest", delay=0.2)
    assert killed
    assert facts["versions"] == [1] and facts["champion"] == [1] and facts["cached"] == 1
    assert not list((home / ".scratch").iterdir()), "the killed run's scratch is swept"
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records(bench["test"])[:10]))
    done = _run(home, "score", path)
    assert done.returncode in (0, 3), done.stderr
    assert {json.loads(line)["model_version"] for line in done.stdout.splitlines()} == {"1"}
