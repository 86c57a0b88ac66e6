"""Security: secrets stay secret, no pickle is ever loaded, people's actions are audited,
and paths from configuration stay inside the home.

(A champion pointer or a symlink that leads out of the home is in ``test_faults``: the
model is refused and scoring fails closed.)
"""

from __future__ import annotations

import ast
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO, syncguard_cmd
from scoring_support import Fleet
from test_events_webhook import SECRET, Receiver, make_sink, store_path  # noqa: F401

from detector.cli.main import cli
from detector.errors import UsageError
from detector.events.webhook import AUTHORIZATION_ENV, SECRET_ENV
from detector.home import Home

pytest_plugins = ["scoring_fixtures"]  # fleet, scoring_home

TOKEN = "Splunk 5e1f-hec-token-NEVER-LOG"
PASSWORD = "url-pa55word-NEVER-LOG"


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
    env.pop("SYNCGUARD_HOME", None)
    return env


def _home_bytes(root: Path) -> bytes:
    """Every byte syncguard wrote under the home (store, WAL, events, models)."""
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_webhook_secrets_never_reach_output_store_or_events(
        scoring_home: Home, fleet: Fleet, receiver: Receiver, tmp_path: Path) -> None:
    """A receiver failing with 500 (errors are reported) and then refusing with 401 after
    a tampered secret: no secret, token or URL password in anything syncguard writes."""
    receiver.script = [500] * 50
    url = receiver.url.replace("127.0.0.1", f"ops:{PASSWORD}@127.0.0.1")
    events_file = scoring_home.root / "events.jsonl"
    stdin = "".join(line + "\n" for line in fleet.lines(fleet.test[:4]))
    runs = [subprocess.run(
        syncguard_cmd("score", "-", "--webhook", url, "--webhook-attempts", "2",
                      "--webhook-timeout", "0.5", "--events-file", events_file,
                      home=scoring_home.root),
        input=stdin, capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
        env=_env(**{SECRET_ENV: secret, AUTHORIZATION_ENV: TOKEN, "SYNCGUARD_DEBUG": ""}))
        for secret in (SECRET, SECRET + "-wrong")]
    assert all(r.returncode in (0, 3) for r in runs), runs[-1].stderr
    assert receiver.requests, runs[0].stderr
    assert all("HTTP 500" in r.stderr or "HTTP 401" in r.stderr for r in runs)
    written = "".join(r.stdout + r.stderr for r in runs).encode() + _home_bytes(
        scoring_home.root)
    for secret in (SECRET, TOKEN, PASSWORD):
        assert secret.encode() not in written, secret
    # The receiver did get the token (the secret signs, and is never sent at all).
    assert receiver.requests[0]["headers"]["Authorization"] == TOKEN
    assert {r["headers"]["Host"] for r in receiver.requests} == {f"127.0.0.1:{receiver.port}"}
    assert all(SECRET not in json.dumps(r["headers"]) for r in receiver.requests)


# ----------------------------------------------------------------------------- pickle

UNPICKLERS = ("pickle", "_pickle", "cloudpickle", "dill", "shelve", "marshal")
"""Modules whose import alone means something may unpickle."""
UNPICKLING_CALLS = ("joblib.load", "torch.load", "skops.io.load", "allow_pickle=True")


def _unpickling(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            found += [n for n in names if n.split(".")[0] in UNPICKLERS]
        elif isinstance(node, ast.Call):
            call = ast.unparse(node)
            found += [f"{bad} in {call}" for bad in UNPICKLING_CALLS if bad in call]
    return found


def test_no_source_imports_or_calls_an_unpickler() -> None:
    sources = sorted(p for d in ("detector", "training") for p in (REPO / d).rglob("*.py"))
    assert len(sources) > 30
    found = {str(p.relative_to(REPO)): f for p in sources if (f := _unpickling(p))}
    assert found == {}


def test_the_source_scan_would_catch_an_unpickler(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nimport numpy as np\nnp.load('m.npz', allow_pickle=True)\n")
    assert len(_unpickling(bad)) == 2


GUARD = """
import pickle, sys
def refuse(*args, **kwargs):
    raise SystemExit("PICKLE LOADED")
def hook(event, args):
    if event == "pickle.find_class":
        refuse()
sys.addaudithook(hook)
pickle.load = pickle.loads = refuse
pickle.Unpickler = refuse
from detector.cli.main import cli
cli()
"""


def test_scoring_loads_no_pickle_at_run_time(scoring_home: Home, fleet: Fleet) -> None:
    """The whole score command (champion load, store, events) under an audit hook that
    stops the process at the first unpickling of any object."""
    stdin = "".join(line + "\n" for line in fleet.lines(fleet.test[:30]))
    for args in (["score", "-"], ["status", "--json"]):
        done = subprocess.run([sys.executable, "-c", GUARD, "--home", str(scoring_home.root),
                               *args], input=stdin, capture_output=True, text=True, cwd=REPO,
                              timeout=120, check=False, env=_env())
        assert "PICKLE LOADED" not in done.stderr
        assert done.returncode in (0, 3), done.stderr
    assert len(done.stdout) > 0


def test_the_guard_would_catch_a_pickle(tmp_path: Path) -> None:
    """The guard above is not vacuous: loading a pickled numpy array trips it."""
    import pickle

    import numpy as np

    blob = tmp_path / "x.pkl"
    blob.write_bytes(pickle.dumps(np.arange(3)))
    code = GUARD.replace("from detector.cli.main import cli\ncli()",
                         f"import pickle as p; import io; p._Unpickler(io.BytesIO("
                         f"open({str(blob)!r}, 'rb').read())).load()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert "PICKLE LOADED" in done.stderr


# ----------------------------------------------------------------------------- audit


@pytest.fixture
def paused(scoring_home: Home, fleet: Fleet) -> tuple[Home, str, str]:
    """A home where one connector has an open pause (a rejected record) and one sync."""
    good, bad = fleet.test[0], dict(fleet.test[1], status="ok")
    stdin = json.dumps(good) + "\n" + json.dumps(bad) + "\n"
    result = CliRunner().invoke(cli, ["--home", str(scoring_home.root), "score"], input=stdin)
    assert result.exit_code == 4, result.stderr
    return scoring_home, bad["connector_id"], good["sync_id"]


def _audit(home: Home, action: str) -> list[tuple[str, str, str]]:
    with sqlite3.connect(home.store_path) as conn:
        return conn.execute("SELECT actor, subject, reason FROM audit_log WHERE action = ?",
                            (action,)).fetchall()


@pytest.mark.parametrize("who", [None, "", "   "])
@pytest.mark.parametrize("why", [None, "", "\t"])
@pytest.mark.parametrize("command", ["resume", "label"])
def test_resume_and_label_need_an_actor_and_a_reason(
        paused: tuple[Home, str, str], command: str, who: str | None,
        why: str | None) -> None:
    home, connector, sync_id = paused
    args = ["resume", connector] if command == "resume" else ["label", sync_id, "normal"]
    args += [] if who is None else ["--by", who]
    args += [] if why is None else ["--reason", why]
    result = CliRunner().invoke(cli, ["--home", str(home.root), *args])
    assert result.exit_code == UsageError.exit_code, result.output
    assert "Traceback" not in result.output
    assert _audit(home, command) == []


@pytest.mark.parametrize("command", ["resume", "label"])
def test_resume_and_label_land_in_the_audit_log(paused: tuple[Home, str, str],
                                                command: str) -> None:
    home, connector, sync_id = paused
    subject = connector if command == "resume" else sync_id
    args = ["resume", connector] if command == "resume" else ["label", sync_id, "fault"]
    result = CliRunner().invoke(cli, ["--home", str(home.root), *args, "--by", "ann",
                                      "--reason", "checked with the app owner"])
    assert result.exit_code == 0, result.output
    assert _audit(home, command) == [("ann", subject, "checked with the app owner")]
    with sqlite3.connect(home.store_path) as conn, pytest.raises(sqlite3.DatabaseError):
        conn.execute("DELETE FROM audit_log")  # append-only


# ----------------------------------------------------------------------------- paths


@pytest.mark.parametrize("relative", ["../outside", "/etc", "events/../../x", "a/../../b"])
def test_configured_paths_cannot_escape_the_home(tmp_path: Path, relative: str) -> None:
    home = Home(tmp_path / "home").ensure()
    with pytest.raises(UsageError, match="escapes the syncguard home"):
        home.inside(relative)
    assert home.inside("events/x.jsonl") == (tmp_path / "home" / "events" / "x.jsonl").resolve()


def test_a_symlink_inside_the_home_cannot_lead_out(tmp_path: Path) -> None:
    home = Home(tmp_path / "home").ensure()
    (tmp_path / "outside").mkdir()
    (home.root / "events").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(UsageError, match="escapes the syncguard home"):
        home.inside("events/x.jsonl")


def test_url_credentials_become_a_basic_header_and_never_a_host(
        receiver: Receiver, store_path: Path,  # noqa: F811 - the imported fixture
        monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.delenv(AUTHORIZATION_ENV, raising=False)
    url = receiver.url.replace("127.0.0.1", f"ops:{PASSWORD}@127.0.0.1")
    sink = make_sink(url, store_path)
    assert PASSWORD not in repr(sink) + sink.url
    sink.emit({"event_id": "e1", "decision": "pause"})
    assert sink.close().written == 1
    expected = "Basic " + base64.b64encode(f"ops:{PASSWORD}".encode()).decode()
    assert receiver.requests[0]["headers"]["Authorization"] == expected


def test_scratch_folders_of_dead_processes_are_swept(tmp_path: Path) -> None:
    home = Home(tmp_path / "home").ensure()
    base = home.root / ".scratch"
    base.mkdir()
    dead, alive = base / "train-999999999-abc", base / f"train-{os.getpid()}-xyz"
    dead.mkdir()
    alive.mkdir()
    with home.scratch("verify") as mine:
        assert mine.parent == base and mine.is_dir()
        assert not dead.exists() and alive.exists()
    assert not mine.exists()
