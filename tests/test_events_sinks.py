"""HEC envelopes, payload formats, stdout and JSON Lines file sinks."""

from __future__ import annotations

import io
import json
import os
import threading

import pytest
from event_samples import pause_event, proceed_event, review_event, stale_event

from detector.errors import UsageError
from detector.events import hec
from detector.events.formats import make_formatter
from detector.events.native import to_json
from detector.events.sinks import JsonlFileSink, StdoutSink


def test_hec_envelope_around_native_event():
    event = pause_event()
    env = hec.hec_native(event, host="scorer-1")
    assert list(env) == ["time", "host", "source", "sourcetype", "event"]
    assert env["time"] == 1795183421.0  # the event's own time, not the send time
    assert (env["host"], env["source"], env["sourcetype"]) == (
        "scorer-1", "syncguard", "syncguard:event")
    assert env["event"] == event


def test_hec_envelope_around_ocsf_finding_with_index():
    fmt = make_formatter("hec-ocsf", host="h", index="security")
    env = fmt(stale_event())
    assert env["sourcetype"] == "ocsf:detection_finding"
    assert env["index"] == "security"
    assert env["event"]["class_uid"] == 2004
    assert env["time"] == env["event"]["time"] / 1000
    assert fmt(proceed_event()) is None


def test_formats_render_the_same_bytes_twice():
    for name in ("native", "ocsf", "hec", "hec-ocsf"):
        fmt = make_formatter(name, host="h")
        assert json.dumps(fmt(pause_event())) == json.dumps(fmt(pause_event()))
    with pytest.raises(UsageError, match="unknown event format 'xml'"):
        make_formatter("xml")


def test_stdout_sink_writes_json_lines_and_skips_proceed_in_ocsf():
    out = io.StringIO()
    with StdoutSink("ocsf", stream=out) as sink:
        sink.emit(pause_event())
        sink.emit(proceed_event())
        sink.emit(stale_event())
    lines = out.getvalue().splitlines()
    assert [json.loads(line)["class_uid"] for line in lines] == [2004, 2004]
    assert (sink.report.written, sink.report.skipped) == (2, 1)


def test_stdout_sink_defaults_to_sys_stdout(capsys):
    sink = StdoutSink()
    sink.emit(pause_event())
    sink.close()
    assert capsys.readouterr().out == to_json(pause_event()) + "\n"


def test_file_sink_appends_and_fsyncs_on_close(tmp_path, monkeypatch):
    path = tmp_path / "events" / "events.jsonl"
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    with JsonlFileSink(path) as sink:
        sink.emit(pause_event())
    assert len(synced) == 1
    with JsonlFileSink(path) as sink:  # a second run appends
        sink.emit(stale_event())
    lines = path.read_text().splitlines()
    assert [json.loads(x)["event_type"] for x in lines] == ["sync_scored", "connector_stale"]
    assert lines[0] == to_json(pause_event())
    sink.close()  # closing twice is harmless
    with pytest.raises(UsageError, match="already closed"):
        sink.emit(pause_event())


@pytest.mark.parametrize("fmt", ["native", "ocsf", "hec"])
def test_emit_many_writes_what_emitting_one_by_one_writes(tmp_path, fmt):
    events = [pause_event(), proceed_event(), stale_event(), review_event()]
    one, many = io.StringIO(), io.StringIO()
    with StdoutSink(fmt, stream=one) as a, StdoutSink(fmt, stream=many) as b:
        for event in events:
            a.emit(event)
        b.emit_many(events)
        b.emit_many([])
    assert many.getvalue() == one.getvalue() and one.getvalue()
    assert (b.report.written, b.report.skipped) == (a.report.written, a.report.skipped)
    with JsonlFileSink(tmp_path / "one.jsonl", fmt) as c, \
            JsonlFileSink(tmp_path / "many.jsonl", fmt) as d:
        for event in events:
            c.emit(event)
        d.emit_many(iter(events))
    assert (tmp_path / "many.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()
    assert d.report.written == c.report.written == len(one.getvalue().splitlines())


def _four_writers(path, write) -> None:
    """Four threads, each with a sink of its own on ``path``, all calling ``write(sink)``."""

    def writer() -> None:
        with JsonlFileSink(path) as sink:
            write(sink)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_emit_many_lines_never_interleave_with_other_writers(tmp_path):
    path = tmp_path / "events.jsonl"
    batch = [pause_event(sync_id=f"s{i}") for i in range(200)]

    _four_writers(path, lambda sink: [sink.emit_many(batch) for _ in range(5)])
    lines = path.read_text().splitlines()
    assert len(lines) == 4 * 5 * 200
    assert all(json.loads(line)["event_type"] == "sync_scored" for line in lines)
    # Each batch lands whole: the ids run s0..s199 in order, 20 times over.
    assert [json.loads(line)["sync_id"] for line in lines] == [e["sync_id"] for e in batch] * 20


def test_file_sink_lines_never_interleave(tmp_path):
    path = tmp_path / "events.jsonl"
    big = pause_event(reasons=[{"metric": "m" * 20000, "observed": 1, "expected": 2,
                                "expected_range": [1, 3], "distance": 0.0,
                                "description": "long"}])

    _four_writers(path, lambda sink: [sink.emit(big) for _ in range(25)])
    lines = path.read_text().splitlines()
    assert len(lines) == 100
    assert all(json.loads(line)["event_id"] == big["event_id"] for line in lines)


def test_file_sink_reports_unwritable_paths(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="cannot open event file"):
        JsonlFileSink(blocker / "events.jsonl")
