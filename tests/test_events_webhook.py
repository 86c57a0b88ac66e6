"""Webhook sink against a real HTTP server on 127.0.0.1: signing, retries, outbox."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from event_samples import pause_event, proceed_event, review_event, stale_event

from detector.errors import UsageError
from detector.events.native import to_json
from detector.events.outbox import OUTBOX_MIGRATION_SQL, Outbox, OutboxFullError
from detector.events.webhook import (
    AUTHORIZATION_ENV,
    SECRET_ENV,
    RetryPolicy,
    Secret,
    WebhookSink,
    sign,
    verify,
)
from detector.store.db import connect

SECRET = "s3cr3t-hmac-key-DO-NOT-LOG-7f9a21"
# Time-outs far above a loaded machine's response time, so that only the tests about
# time-outs (which set their own) ever see one.
FAST = RetryPolicy(max_attempts=4, timeout_s=5.0, backoff_base_s=0.01, backoff_max_s=0.05)


class Receiver:
    """A webhook receiver that checks signatures and de-duplicates on Idempotency-Key.

    ``script`` holds one action per incoming request: a status code, or a dict with
    ``status``, ``headers``, ``reason``, ``sleep``. When empty, requests get 200.
    """

    def __init__(self, secret: str) -> None:
        self.secret = secret.encode()
        self.script: list[Any] = []
        self.requests: list[dict[str, Any]] = []
        self.accepted: list[bytes] = []  # de-duplicated, in arrival order
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ts = self.headers.get("X-Syncguard-Timestamp", "")
                expected = "sha256=" + hmac.new(
                    receiver.secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
                signed = hmac.compare_digest(
                    expected, self.headers.get("X-Syncguard-Signature", ""))
                key = self.headers.get("Idempotency-Key", "")
                with receiver._lock:
                    receiver.requests.append({
                        "body": body, "key": key, "signed": signed, "ts": ts,
                        "headers": dict(self.headers)})
                    action = receiver.script.pop(0) if receiver.script else 200
                action = {"status": action} if isinstance(action, int) else action
                if action.get("sleep"):
                    time.sleep(action["sleep"])  # longer than the client's timeout
                status = action.get("status", 200) if signed else 401
                if 200 <= status < 300:
                    with receiver._lock:
                        if key not in receiver._seen:
                            receiver._seen.add(key)
                            receiver.accepted.append(body)
                try:
                    self.send_response(status, action.get("reason"))
                    for name, value in action.get("headers", {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self.port = server.server_address[1]
        self.server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()
        self.server = None

    def accepted_ids(self) -> list[str]:
        return [json.loads(b)["event_id"] for b in self.accepted]


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "store.sqlite"
    conn = connect(path)
    conn.executescript(OUTBOX_MIGRATION_SQL)
    conn.close()
    return path


@pytest.fixture(autouse=True)
def secret_env(monkeypatch):
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.delenv(AUTHORIZATION_ENV, raising=False)


def make_sink(url: str, store_path, *, sleeps: list[float] | None = None,
              retry: RetryPolicy = FAST, max_rows: int = 100_000, **kwargs: Any) -> WebhookSink:
    outbox = Outbox(connect(store_path), max_rows=max_rows)
    record = sleeps.append if sleeps is not None else (lambda s: None)
    return WebhookSink(url, outbox, retry=retry, sleep=lambda s: (record(s), time.sleep(s)),
                       **kwargs)


def queued(store_path) -> int:
    with sqlite3.connect(store_path) as conn:
        return conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]


def test_delivers_signed_event_with_idempotency_key(receiver, store_path):
    event = pause_event()
    with make_sink(receiver.url, store_path) as sink:
        sink.emit(event)
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    body = to_json(event).encode()
    assert request["signed"] and request["body"] == body
    assert request["key"] == hashlib.sha256(body).hexdigest()
    assert request["headers"]["X-Syncguard-Event-Id"] == event["event_id"]
    assert request["headers"]["Content-Type"] == "application/json"
    assert abs(int(request["ts"]) - time.time()) < 5
    assert (sink.report.written, sink.report.queued, queued(store_path)) == (1, 0, 0)


def test_5xx_and_timeouts_are_retried_then_succeed(receiver, store_path, caplog):
    receiver.script = [500, {"sleep": 3.0}, 503, 200]
    sleeps: list[float] = []
    retry = RetryPolicy(max_attempts=5, timeout_s=1.5, backoff_base_s=0.01, backoff_max_s=0.05)
    with (caplog.at_level(logging.WARNING, "syncguard.events.webhook"),
          make_sink(receiver.url, store_path, sleeps=sleeps, retry=retry) as sink):
        sink.emit(pause_event())
    assert len(receiver.requests) == 4
    assert len({r["key"] for r in receiver.requests}) == 1  # same key on every retry
    assert receiver.accepted_ids() == [pause_event()["event_id"]]
    assert len(sleeps) == 3 and all(0.005 <= s <= 0.05 for s in sleeps)
    assert sleeps[1] >= sleeps[0] / 2  # exponential ceiling, jittered
    assert "HTTP 500" in caplog.text and "timed out" in caplog.text
    assert (sink.report.written, queued(store_path)) == (1, 0)


def test_retry_after_is_honoured_but_capped(receiver, store_path):
    receiver.script = [{"status": 429, "headers": {"Retry-After": "120"}}, 200]
    sleeps: list[float] = []
    with make_sink(receiver.url, store_path, sleeps=sleeps) as sink:
        sink.emit(pause_event())
    assert sleeps == [FAST.backoff_max_s]
    assert len(receiver.accepted) == 1


def test_other_4xx_are_not_retried_and_the_event_is_kept(receiver, store_path):
    receiver.script = [400]
    with make_sink(receiver.url, store_path) as sink:
        sink.emit(pause_event())
        sink.emit(review_event())  # queued behind it: order is kept, no attempt
    assert len(receiver.requests) == 1
    assert sink.report.queued == 2 == queued(store_path)
    assert "HTTP 400" in sink.report.errors[0] and "not retried" in sink.report.errors[0]
    # The next run (receiver fixed) delivers both, in order.
    with make_sink(receiver.url, store_path) as sink:
        pass
    assert receiver.accepted_ids() == [pause_event()["event_id"], review_event()["event_id"]]


def test_receiver_down_then_back_each_event_delivered_once_in_order(receiver, store_path):
    receiver.stop()
    first = [pause_event(sync_id=f"okta-prod:{i}") for i in range(3)]
    with make_sink(receiver.url, store_path) as sink:
        for event in first:
            sink.emit(event)
    assert sink.report.queued == 3 and sink.report.written == 0
    assert "connection refused" in sink.report.errors[0]
    assert len(sink.report.errors) == 1  # later events queued without more attempts

    receiver.start()  # same port
    later = stale_event()
    with make_sink(receiver.url, store_path) as sink:
        sink.emit(later)
    expected = [e["event_id"] for e in first] + [later["event_id"]]
    assert receiver.accepted_ids() == expected
    assert [json.loads(r["body"])["event_id"] for r in receiver.requests] == expected
    assert all(r["signed"] for r in receiver.requests)
    assert sink.report.written == 4 and queued(store_path) == 0

    with make_sink(receiver.url, store_path):  # a third run sends nothing again
        pass
    assert len(receiver.requests) == 4


CRASH_SCRIPT = """
import os, sys
sys.path.insert(0, sys.argv[3])
from event_samples import pause_event
from detector.events.outbox import Outbox
from detector.events.webhook import RetryPolicy, WebhookSink
from detector.store.db import connect

def die(self, item_id):
    os._exit(9)  # killed after the receiver's 2xx, before the delete

Outbox.remove = die
sink = WebhookSink(sys.argv[1], Outbox(connect(sys.argv[2])), retry=RetryPolicy(timeout_s=2))
sink.emit(pause_event())
"""


def test_crash_between_send_and_delete_resends_with_same_key(receiver, store_path):
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, receiver.url, str(store_path),
         str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 9, done.stderr
    assert len(receiver.requests) == 1 and queued(store_path) == 1

    # The dead process still "holds" the lease; this host sees it is gone and takes over.
    with make_sink(receiver.url, store_path):
        pass
    assert len(receiver.requests) == 2
    assert receiver.requests[0]["key"] == receiver.requests[1]["key"]
    assert receiver.accepted_ids() == [pause_event()["event_id"]]  # receiver de-duplicated
    assert queued(store_path) == 0


def test_full_outbox_raises_and_drops_nothing(receiver, store_path):
    receiver.stop()
    sink = make_sink(receiver.url, store_path, max_rows=2)
    sink.emit(pause_event(sync_id="a"))
    sink.emit(pause_event(sync_id="b"))
    with pytest.raises(OutboxFullError, match="outbox is full: 2 events.*Nothing was dropped"):
        sink.emit(pause_event(sync_id="c"))
    sink.close()
    assert queued(store_path) == 2


def test_same_event_twice_is_queued_once(receiver, store_path):
    receiver.stop()
    with make_sink(receiver.url, store_path) as sink:
        sink.emit(pause_event())
        sink.emit(pause_event())
    assert queued(store_path) == 1


def test_secret_never_appears_in_logs_errors_reprs_or_outbox(receiver, store_path, caplog):
    # A hostile receiver echoes the secret in its reason phrase: it must still not leak.
    receiver.script = [{"status": 500, "reason": f"bad {SECRET}"}] * 4 + [403]
    url = receiver.url + "?token=abc123"
    with caplog.at_level(logging.DEBUG):
        sink = make_sink(url, store_path)
        sink.emit(pause_event())
        report = sink.close()
        sink2 = make_sink(url, store_path)
        sink2.close()
    messages = [caplog.text, repr(sink), *report.errors, *sink2.report.errors,
                repr(Secret(SECRET, name="x")), str(Secret(SECRET))]
    with sqlite3.connect(store_path) as conn:
        messages += [str(row) for row in conn.execute("SELECT last_error, body FROM outbox")]
    for text in messages:
        assert SECRET not in text
        assert "abc123" not in text  # query strings are redacted from messages too
    assert SECRET not in str(vars(sink))  # held only inside a Secret, whose repr is redacted
    assert "***" in report.errors[0]
    with pytest.raises(UsageError) as info:
        WebhookSink("ftp://x/?k=abc123", Outbox(connect(store_path)), secret=SECRET)
    assert SECRET not in str(info.value) and "abc123" not in str(info.value)


def test_missing_secret_is_a_usage_error(store_path, monkeypatch):
    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(UsageError, match=f"{SECRET_ENV} is not set"):
        WebhookSink("https://soar.example/hook", Outbox(connect(store_path)))


def test_only_http_urls_are_accepted(store_path):
    with pytest.raises(UsageError, match="http:// or https://"):
        WebhookSink("file:///etc/passwd", Outbox(connect(store_path)))


def test_redirects_are_not_followed(receiver, store_path):
    receiver.script = [{"status": 307, "headers": {"Location": "http://127.0.0.1:9/x"}}]
    with make_sink(receiver.url, store_path) as sink:
        sink.emit(pause_event())
    assert len(receiver.requests) == 1 and sink.report.queued == 1
    assert "HTTP 307" in sink.report.errors[0]


def test_one_process_at_a_time_delivers_the_outbox(receiver, store_path):
    other = Outbox(connect(store_path))
    assert other.acquire("other-process", ttl_s=60)
    with make_sink(receiver.url, store_path) as sink:
        sink.emit(pause_event())
    assert receiver.requests == [] and sink.report.queued == 1
    other.release("other-process")
    with make_sink(receiver.url, store_path) as sink:
        pass
    assert receiver.accepted_ids() == [pause_event()["event_id"]]


def test_expired_lease_is_taken_over(receiver, store_path):
    other = Outbox(connect(store_path), clock=lambda: time.time() - 3600)
    assert other.acquire("crashed-process", ttl_s=60)  # expired an hour ago
    with make_sink(receiver.url, store_path) as sink:
        sink.emit(pause_event())
    assert len(receiver.accepted) == 1


def test_hec_ocsf_format_with_authorization(receiver, store_path, monkeypatch):
    monkeypatch.setenv(AUTHORIZATION_ENV, "Splunk 0000-hec-token")
    with make_sink(receiver.url, store_path, formatter="hec-ocsf") as sink:
        sink.emit(proceed_event())  # not a finding: skipped, never sent
        sink.emit(pause_event())
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    assert request["headers"]["Authorization"] == "Splunk 0000-hec-token"
    envelope = json.loads(request["body"])
    assert envelope["sourcetype"] == "ocsf:detection_finding"
    assert envelope["event"]["finding_info"]["uid"] == pause_event()["event_id"]
    assert (sink.report.written, sink.report.skipped) == (1, 1)


def test_sign_and_verify():
    secret = Secret(SECRET)
    body = b'{"a":1}'
    signature = sign(secret, "1700000000", body)
    assert signature == "sha256=" + hmac.new(
        SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert verify(secret, "1700000000", body, signature, now=1700000100)
    assert not verify(secret, "1700000000", body + b" ", signature, now=1700000100)
    assert not verify(secret, "1700000000", body, signature, now=1700009999)  # too old
    assert not verify(Secret("other"), "1700000000", body, signature, now=1700000100)


def test_outbox_needs_its_migration(tmp_path):
    from detector.errors import StoreError

    with pytest.raises(StoreError, match="migration 3"):
        Outbox(connect(tmp_path / "empty.sqlite"))


def test_outbox_migration_runs_through_the_store_migrator(tmp_path):
    from detector.store.migrations import MIGRATIONS, Migration, migrate

    mine = [m for m in MIGRATIONS if m.name == "outbox"]
    if mine:  # once appended to the store's list, it must be this exact SQL
        assert (mine[0].version, mine[0].sql) == (3, OUTBOX_MIGRATION_SQL)
        migrations = MIGRATIONS
    else:
        migrations = [*MIGRATIONS, Migration(len(MIGRATIONS) + 1, "outbox", OUTBOX_MIGRATION_SQL)]
    conn = connect(tmp_path / "store.sqlite")
    migrate(conn, migrations)
    outbox = Outbox(conn, max_rows=5)
    assert outbox.enqueue(b"{}", idempotency_key="k", event_id=None)
    assert [item.body for item in outbox.head()] == [b"{}"]
