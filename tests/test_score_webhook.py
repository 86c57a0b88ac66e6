"""``syncguard score --webhook`` against a real HTTP receiver on 127.0.0.1.

The receiver verifies every HMAC signature and de-duplicates on ``Idempotency-Key``, as
a SOAR endpoint should. 500s and a time-out are retried; while the receiver is down the
events wait in the store's outbox; when it is back, the next run delivers them first, in
order, and every event arrives exactly once.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner, Result
from scoring_support import Fleet
from test_events_webhook import SECRET, Receiver

from detector.cli.main import cli
from detector.events.outbox import Outbox
from detector.events.webhook import SECRET_ENV
from detector.home import Home

pytest_plugins = ["scoring_fixtures"]  # fleet, scoring_home


def _score(home: Home, fleet: Fleet, records: list[dict], url: str, *extra: str) -> Result:
    stdin = "".join(line + "\n" for line in fleet.lines(records))
    return CliRunner().invoke(
        cli, ["--home", str(home.root), "score", "--webhook", url, "--webhook-timeout", "2",
              *extra], input=stdin, catch_exceptions=False)


def _ids(result: Result) -> list[str]:
    return [json.loads(line)["event_id"] for line in result.stdout.splitlines()]


def _outbox(home: Home) -> int:
    outbox = Outbox.open(home.store_path)
    try:
        return outbox.count()
    finally:
        outbox.conn.close()


def test_webhook_retries_queues_and_delivers_each_event_once_in_order(
        scoring_home: Home, fleet: Fleet, receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    first, second, third = fleet.test[:6], fleet.test[6:12], fleet.test[12:16]

    # Up, but failing now and then: two 500s, then a reply slower than the time-out (a
    # time-out well above a loaded machine's reply time, so no other request times out).
    receiver.script = [500, 500, 200, {"sleep": 4.0, "status": 503}]
    run1 = _score(scoring_home, fleet, first, receiver.url)
    assert run1.exit_code in (0, 3), run1.stderr
    assert receiver.accepted_ids() == _ids(run1)
    assert len(receiver.requests) == len(first) + 3  # each failure retried once more
    assert all(r["signed"] for r in receiver.requests)
    assert f"events: {len(first)} to webhook {receiver.url}" in run1.stderr
    assert _outbox(scoring_home) == 0

    # Down: decisions still reach stdout at once; the events wait in the outbox.
    receiver.stop()
    run2 = _score(scoring_home, fleet, second, receiver.url, "--webhook-attempts", "2")
    assert len(_ids(run2)) == len(second)
    assert f"{len(second)} wait in the outbox for the next run" in run2.stderr
    assert "connection refused" in run2.stderr
    assert _outbox(scoring_home) == len(second)

    # Back: the outbox goes first, then this run's events; each exactly once, in order.
    receiver.start()
    run3 = _score(scoring_home, fleet, third, receiver.url)
    assert receiver.accepted_ids() == _ids(run1) + _ids(run2) + _ids(run3)
    assert len(receiver.requests) == len(first) + 3 + len(second) + len(third)
    assert all(r["signed"] for r in receiver.requests)
    assert _outbox(scoring_home) == 0
    assert SECRET not in run1.stderr + run2.stderr + run3.stderr


def test_webhook_needs_the_secret(scoring_home: Home, fleet: Fleet, receiver: Receiver,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    result = _score(scoring_home, fleet, fleet.test[:1], receiver.url)
    assert result.exit_code == 2 and SECRET_ENV in result.stderr
    assert receiver.requests == []
