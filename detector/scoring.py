"""The scoring service: what ``syncguard score`` does, one step per function.

::

    records -> contract -> store (idempotent) -> champion model
            -> per chunk, in time order, inside one write transaction:
               claim unscored syncs -> load state -> FleetModel.score
               -> record scores, open pauses, save state, audit
            -> events (input order) -> sinks

Exactly once
    Each chunk takes the store's write lock (``BEGIN IMMEDIATE``) *before* it asks which
    syncs are unscored, and keeps it until their scores, pauses and the connectors' next
    state are committed. A scorer waiting on the lock then finds those syncs scored and
    returns the stored events, marked ``replay``; no sync gets a second decision, and no
    connector's state is read by one scorer while another is replacing it.

Time order
    Within a chunk the model judges each connector's syncs in time order. Before a
    connector's new syncs, its stored syncs that nobody scored yet (left by a crash, or
    ingested by another scorer still waiting for the lock) are scored first, so a
    connector's decisions do not depend on which process got there first. A connector
    never scored before starts from the state at the end of its stored history.

Fail closed
    No loadable champion, or a model that raises: every sync of the chunk is decided
    ``pause`` with the rule hit ``unscorable`` (recorded like any decision: a rerun
    replays it). A rejected record that names its connector gives an ``invalid_record``
    pause event and opens a pause for that connector.

A crash loses nothing: records are stored before scoring, each chunk commits whole, and
a rerun scores what is left.
"""

from __future__ import annotations

import gc
import json
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import polars as pl

from detector.contract import Accepted, Violation
from detector.errors import (
    EXIT_OK,
    EXIT_PAUSE,
    EXIT_REJECTED,
    ModelError,
    StoreError,
    SyncguardError,
)
from detector.events.native import format_timestamp, invalid_record, sync_scored
from detector.events.scored import ScoredEvents, scored_events
from detector.events.sinks import Sink, encode
from detector.frame import to_struct_frame
from detector.home import Home
from detector.store import IngestReport, Store, ledger, scores
from detector.store.state import FACTS_SCHEMA, load_state, save_state

if TYPE_CHECKING:  # the model module imports scipy: only load it when scoring
    from detector.model import FleetModel
    from detector.policy import Policy

__all__ = ["CHUNK_SYNCS", "MODEL_MAX_AGE_DAYS", "SCORE_JOBS", "ChampionAhead", "DecodedAhead",
           "ScoreRun", "Scorer", "load_scoring_model", "score_items", "UNSCORABLE"]

CHUNK_SYNCS = 20_000
"""Syncs per scoring transaction: big enough to amortise the model's fixed costs, small
enough that other writers wait for the lock at most a few seconds."""

SCORE_JOBS = max(1, min(4, os.cpu_count() or 1))
"""Threads the model scores a large chunk in, in shards of connectors (see
:meth:`FleetModel.score`); a chunk of a few syncs is scored in one thread whatever this is."""

MODEL_MAX_AGE_DAYS = 30
"""Days past the end of its history after which ``syncguard score`` asks for a new model:
on simulated fleets, syncs of connectors not paused breached a model's cutoffs at 0.65x
their budget in its first ten days, 0.87x in days 20-30 and 1.7-2.7x in days 40-60 (the
README's "Where the targets stand")."""

HISTORY_SYNCS = 50
"""Stored syncs per connector a never-scored connector's starting state is built from."""

UNSCORABLE = "unscorable"

_SCORE_VALUES = {
    "sync_id": pl.String, "connector_id": pl.String, "decision": pl.String,
    "severity": pl.String, "criticality": pl.String, "score": pl.Float64,
    "cutoff": pl.Float64, "tail_probability": pl.Float64, "connector_paused": pl.Boolean,
    "cold_start": pl.Boolean,
}
"""Event fields copied into their own ``scores`` columns."""


def _now() -> str:
    return format_timestamp(datetime.now(UTC))


def load_scoring_model(home: Home) -> tuple[FleetModel, str]:
    """The champion from the home's verified local cache, rebuilt for scoring.

    Raises
    ------
    ModelError
        No champion cached, or the cached copy fails its checks or cannot be rebuilt.
    """
    from detector.model import FleetModel
    from detector.model_cache import load_champion

    loaded, version = load_champion(home)
    try:
        model = FleetModel.from_arrays(loaded.arrays, loaded.config).prepare_to_score()
    except Exception as exc:  # a model file that verifies but is not a fleet model
        raise ModelError(f"the champion (version {version}) in {loaded.path} is not a usable "
                         f"fleet model: {type(exc).__name__}: {exc}") from exc
    return model, str(version)


@dataclass
class ScoreRun:
    """What one scoring run did.

    Attributes
    ----------
    events : list of dict
        Native events in input order: one ``sync_scored`` per input sync (a repeat, or a
        sync scored before, marked ``replay``), one ``invalid_record`` per rejected record
        that names its connector.
    ingest : IngestReport
        What the store made of the input.
    scored : int
        Decisions this run made (including syncs of the same connectors left unscored
        by earlier runs).
    replayed : int
        Events of this run that return an earlier decision.
    pauses_opened : list of str
        Connectors a pause was opened for.
    model_version : str or None
    unscorable : str or None
        Why syncs were decided ``pause`` / ``unscorable``, when they were.
    history_end : datetime or None
        When the model's history ended (``FleetModel.history_end_``), when known.
    latest_sync : datetime or None
        When the latest accepted sync of the input started.
    """

    events: list[dict[str, Any]] = field(default_factory=list)
    ingest: IngestReport = field(default_factory=lambda: IngestReport(source=""))
    scored: int = 0
    replayed: int = 0
    pauses_opened: list[str] = field(default_factory=list)
    model_version: str | None = None
    unscorable: str | None = None
    history_end: datetime | None = None
    latest_sync: datetime | None = None

    @property
    def model_age_days(self) -> float | None:
        """Days from the end of the model's history to the latest sync scored (None when
        either is unknown)."""
        if self.history_end is None or self.latest_sync is None:
            return None
        return (self.latest_sync - self.history_end).total_seconds() / 86400.0

    def decisions(self) -> dict[str, int]:
        """Events per decision."""
        out = {"pause": 0, "review": 0, "proceed": 0}
        for event in self.events:
            out[event["decision"]] += 1
        return out

    @property
    def held(self) -> bool:
        """True when any sync was paused or belongs to a connector with a pause open:
        propagation must wait for ``syncguard resume``."""
        return any(e["decision"] == "pause" or e.get("connector_paused") for e in self.events)

    @property
    def exit_code(self) -> int:
        """4 rejected or conflicting input, else 3 held, else 0."""
        if self.ingest.rejected or self.ingest.conflicts:
            return EXIT_REJECTED
        return EXIT_PAUSE if self.held else EXIT_OK

    def summary(self) -> str:
        """A short paragraph for people (stderr)."""
        d = self.decisions()
        model = f"model v{self.model_version}" if self.model_version else "no model"
        lines = [f"scored {self.scored} syncs with {model}: {d['pause']} pause, "
                 f"{d['review']} review, {d['proceed']} proceed; {self.replayed} replayed; "
                 f"{len(self.ingest.rejected)} rejected, {len(self.ingest.conflicts)} "
                 "conflicts"]
        if self.pauses_opened:
            lines.append(f"pauses opened: {', '.join(sorted(set(self.pauses_opened)))} "
                         "(resume with `syncguard resume CONNECTOR --by WHO --reason TEXT`)")
        if self.unscorable:
            lines.append(f"fail closed ({UNSCORABLE}): {self.unscorable}")
        age = self.model_age_days
        if age is not None and age > MODEL_MAX_AGE_DAYS:
            lines.append(
                f"warning: the model learned from history up to "
                f"{self.history_end:%Y-%m-%d}, {age:.0f} days before the latest sync "
                f"scored: retrain it (`syncguard train`), its cutoffs loosen as connectors "
                f"drift (more than {MODEL_MAX_AGE_DAYS} days)"
            )
        return "\n".join(lines)


class Scorer:
    """Scores stored syncs exactly once, chunk by chunk, in time order.

    Parameters
    ----------
    store : Store
        The open store.
    model : FleetModel or None
        None when no model could be loaded: every sync is decided pause/unscorable.
    model_version : str or None
    actor : str
        For the audit log.
    unscorable_reason : str, optional
        Why there is no model (the detail of the ``unscorable`` rule hit).
    chunk_syncs : int
        Syncs per transaction.
    decoded : DecodedAhead, optional
        Records decoded while the store was written; a chunk of exactly those records
        (same texts, same order) is scored from them instead of decoding its own.
    n_jobs : int, optional
        Threads the model scores a chunk in (``FleetModel.score``'s ``n_jobs``);
        :data:`SCORE_JOBS` when omitted.
    """

    def __init__(self, store: Store, model: FleetModel | None, model_version: str | None, *,
                 actor: str, unscorable_reason: str | None = None,
                 chunk_syncs: int = CHUNK_SYNCS, decoded: DecodedAhead | None = None,
                 n_jobs: int | None = None) -> None:
        self.store = store
        self.model = model
        self.model_version = model_version
        self.actor = actor
        self.unscorable = unscorable_reason if model is None else None
        self.chunk_syncs = chunk_syncs
        self.decoded = decoded
        self.n_jobs = SCORE_JOBS if n_jobs is None else n_jobs
        self.events: dict[str, dict[str, Any]] = {}
        self.pauses_opened: list[str] = []

    # ------------------------------------------------------------------ public

    def score(self, sync_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Score the unscored ones among ``sync_ids`` (and left-behind syncs of the same
        connectors); return the events of every sync this call decided, by sync_id."""
        todo = scores.start_times(self.store.conn, sync_ids).sort("started_ts", "sync_id")
        for start in range(0, todo.height, self.chunk_syncs):
            chunk = todo.slice(start, self.chunk_syncs)
            self._score_chunk(chunk["sync_id"].to_list(), float(chunk["started_ts"].max()),
                              set(chunk["connector_id"].unique().to_list()))
        return self.events

    # ------------------------------------------------------------------ one chunk

    def _score_chunk(self, sync_ids: list[str], until: float, connectors: set[str]) -> None:
        """Score a chunk of stored syncs (``connectors``: theirs; a stored sync's connector
        never changes, so it is taken from the pre-filter's rows, not read again)."""
        conn = self.store.conn
        with self.store.atomic():
            state, facts = load_state(conn, connectors)
            known = facts.filter(pl.col("state_last_start").is_not_null())
            since = dict(zip(known["connector_id"].to_list(),
                             (known["state_last_start"].dt.epoch("us") / 1e6).to_list(),
                             strict=True))
            todo = scores.pending(conn, sync_ids, since, until=until)
            if todo.height == 0:
                return
            now = _now()
            open_before = set(ledger.open_pauses(conn, todo["connector_id"].unique()))
            try:
                if self.model is None:
                    raise ModelError(self.unscorable or "no model")
                state, facts = self._with_new_connectors(conn, todo, state, facts, open_before)
                wide = None if self.decoded is None else self.decoded.take(todo["record"])
                records = todo.select("record") if wide is None else wide
                result = self.model.score(records, state=state, facts=facts,
                                          n_jobs=self.n_jobs)
                if result.results["sync_id"].to_list() != todo["sync_id"].to_list():
                    # Never record a second decision for a sync: fail closed instead.
                    raise ModelError(f"the model returned {result.results.height} results "
                                     f"for {todo.height} syncs")
                batch = scored_events(result.results, result.reasons, result.rule_hits,
                                      scored_at=now, model_version=self.model_version)
                unscorable = False
            except (StoreError, KeyboardInterrupt):
                raise
            except Exception as exc:  # fail closed: the model could not judge these syncs
                why = str(exc) if isinstance(exc, ModelError) else (
                    f"scoring failed: {type(exc).__name__}: {exc}")
                self.unscorable = self.unscorable or why
                batch = self._unscorable_events(todo, why, now)
                result, unscorable = None, True
            self._record(todo, batch, now, unscorable)
            self._open_pauses(batch, open_before, now)
            if result is not None:
                save_state(conn, result.state, result.facts, model_version=self.model_version,
                           now=now)
        self.events.update(zip(batch.frame["sync_id"], batch.events, strict=True))

    def _with_new_connectors(self, conn, todo: pl.DataFrame, state: pl.DataFrame,
                             facts: pl.DataFrame,
                             open_before: set[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Add the starting state of connectors never scored: the end of their history."""
        assert self.model is not None
        fresh = todo.filter(~pl.col("connector_id").is_in(facts["connector_id"].implode()))
        if fresh.height:
            first = fresh.group_by("connector_id").agg(pl.col("started_ts").min())
            history = scores.recent_history(conn, dict(first.iter_rows()),
                                            per_connector=HISTORY_SYNCS)
            if history.height:
                s0, f0 = self.model.initial_state(history)
                state = pl.concat([state, s0.select(state.columns).cast(state.schema)])
                facts = pl.concat([facts, f0.select(list(FACTS_SCHEMA)).cast(FACTS_SCHEMA)])
        # Paused is the ledger's word, for old and new connectors alike.
        return state, facts.with_columns(
            pl.col("connector_id").is_in(sorted(open_before)).alias("state_paused"))

    def _unscorable_events(self, todo: pl.DataFrame, why: str, now: str) -> ScoredEvents:
        """Fail closed: a pause with the rule hit ``unscorable`` for every sync."""
        policy = self.policy().table(
            todo.select("connector_id", pl.col("connector_kind").fill_null("unknown")).unique())
        crit = dict(zip(policy["connector_id"], policy["criticality"], strict=True))
        sev = dict(zip(policy["connector_id"], policy["severity"], strict=True))
        events = [
            sync_scored(sync_id=sid, connector_id=cid, connector_kind=kind, scored_at=now,
                        decision="pause", severity=sev[cid], criticality=crit[cid],
                        model_version=self.model_version,
                        rule_hits=[{"rule": UNSCORABLE, "detail": why}], connector_paused=True)
            for sid, cid, kind in todo.select("sync_id", "connector_id",
                                              "connector_kind").iter_rows()
        ]
        return ScoredEvents(pl.from_dicts(events, schema=_SCORE_VALUES), events,
                            [encode(e) for e in events])

    def policy(self) -> Policy:
        """The model's connector policy, or the built-in one when there is no model."""
        if self.model is not None:
            return self.model.policy_
        from detector.policy import load_policy

        return load_policy()

    def _record(self, todo: pl.DataFrame, batch: ScoredEvents, now: str,
                unscorable: bool) -> None:
        """Scores and their audit rows, in the chunk's transaction."""
        has_lists = batch.frame.with_row_index("i").filter(
            pl.col("decision") != "proceed")["i"]  # only pauses and reviews carry reasons
        flagged = [(e["sync_id"], encode(e["reasons"]), encode(e["rule_hits"]))
                   for e in (batch.events[i] for i in has_lists)]
        lists = pl.DataFrame(flagged, schema={"sync_id": pl.String, "reasons": pl.String,
                                              "rule_hits": pl.String}, orient="row")
        rows = (
            batch.frame.select(list(_SCORE_VALUES))
            .with_columns(pl.Series("event", batch.texts, dtype=pl.String))
            .join(lists, on="sync_id", how="left", maintain_order="left")
            .join(todo.select("sync_id", "started_ts"), on="sync_id", maintain_order="left")
            .with_columns(
                pl.col("reasons", "rule_hits").fill_null("[]"),
                pl.lit(now).alias("scored_at"),
                pl.lit(self.model_version, dtype=pl.String).alias("model_version"),
                pl.col("connector_paused", "cold_start").cast(pl.Int64),
                pl.lit(int(unscorable)).alias("unscorable"),
            )
        )
        scores.record(self.store.conn, rows)
        details = pl.struct(
            "connector_id", "severity", "score", "cutoff", "model_version",
            pl.col("unscorable").cast(pl.Boolean),
        ).struct.json_encode()
        scores.audit_rows(self.store.conn, rows.select(
            pl.lit(now).alias("at"), pl.lit(self.actor).alias("actor"),
            pl.lit("score").alias("action"), "sync_id", "decision", details.alias("details"),
        ).rows())

    def _open_pauses(self, batch: ScoredEvents, open_before: set[str], now: str) -> None:
        """One pause per connector: at its first paused sync, unless one is open."""
        first: dict[str, dict[str, Any]] = {}
        paused = batch.frame.with_row_index("i").filter(pl.col("decision") == "pause")["i"]
        for event in (batch.events[i] for i in paused):  # in time order
            cid = event["connector_id"]
            if cid not in open_before and cid not in first:
                first[cid] = event
        if first:
            opened = ledger.open_pause_many(
                self.store.conn,
                [(cid, e["sync_id"], *pause_reasons(e)) for cid, e in first.items()],
                at=now, actor=self.actor)
            self.pauses_opened.extend(opened)


def pause_reasons(event: dict[str, Any]) -> tuple[str, list[str]]:
    """The main reason of a pause and the list of every reason, rule hits first."""
    names = [h["rule"] for h in event.get("rule_hits", [])]
    names += [r["metric"] for r in event.get("reasons", [])]
    names = list(dict.fromkeys(names)) or ["model_score"]
    return names[0], names


class DecodedAhead:
    """A batch's new records decoded by polars in a thread, while the scorer loads the
    champion and claims the syncs.

    Those steps are Python and SQLite, and polars decodes JSON without holding the GIL,
    so on a second core the decode (the largest single step of a model's scoring input)
    costs no wall time. A batch's new syncs are normally exactly what the scorer's one
    chunk scores, in its order (start, then sync_id); :meth:`take` hands the frame over
    only when the chunk's record texts are these very texts in this order, so the model
    gets what decoding them itself gives. Otherwise (syncs left unscored by an earlier
    run, another scorer's, more syncs than one chunk) the model decodes as before.

    Parameters
    ----------
    items : sequence of Accepted or Violation
        The input, as ingested.
    new_ids : sequence of str
        The sync_ids the ingest stored for the first time.
    limit : int
        Most syncs worth decoding ahead (a scoring chunk).
    """

    def __init__(self, items: Sequence[Accepted | Violation], new_ids: Sequence[str], *,
                 limit: int) -> None:
        self._texts: pl.Series | None = None
        self._wide: pl.DataFrame | None = None
        self._thread: threading.Thread | None = None
        if not 0 < len(new_ids) <= limit:
            return
        new = set(new_ids)
        first: dict[str, Accepted] = {}
        for item in items:
            if isinstance(item, Accepted) and item.record["sync_id"] in new:
                first.setdefault(item.record["sync_id"], item)
        if any(it.times is None or not it.canonical for it in first.values()):
            return  # built by hand: no stored text to compare with
        # The order scores.pending reads them in: start (epoch seconds, as stored), sync_id.
        ordered = sorted((it.times[0].timestamp(), sid, it.canonical)  # type: ignore[index]
                         for sid, it in first.items())
        self._thread = threading.Thread(target=self._decode, args=([t for *_, t in ordered],),
                                        name="syncguard-decode", daemon=True)
        self._thread.start()

    def _decode(self, texts: list[str]) -> None:
        try:
            series = pl.Series("record", texts, dtype=pl.String)
            self._wide, self._texts = to_struct_frame(series), series
        except Exception:  # the model decodes them again, and says what is wrong
            self._wide = self._texts = None

    def take(self, records: pl.Series) -> pl.DataFrame | None:
        """The decoded frame if ``records`` are the decoded texts in order, else None
        (once: the frame is released either way)."""
        self.close()
        wide, texts = self._wide, self._texts
        self._wide = self._texts = None
        if wide is None or texts is None or not records.equals(texts):
            return None
        # A frame with a "resources" column is taken as decoded (see to_struct_frame).
        return wide if "resources" in wide.columns else None

    def close(self) -> None:
        """Wait for the decode to finish (no thread outlives the run)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None


class ChampionAhead:
    """The champion loaded in a thread from the input's first accepted record on, while
    the rest of the input is parsed and stored.

    Parsing is Python holding the GIL, but most of a champion load is not: reading and
    hashing the model file, inflating its arrays (zlib) and polars building its frames
    release the GIL, so on a second core the load (~0.4-1 s for a 300-connector model)
    mostly costs no wall time. It starts only once a record is accepted: an input with
    nothing to score reads no model, as before.

    Parameters
    ----------
    home : Home
        Where the champion is cached.
    """

    def __init__(self, home: Home) -> None:
        self._home = home
        self._thread: threading.Thread | None = None
        self._loaded: tuple[FleetModel, str] | None = None
        self._error: BaseException | None = None

    def start_on_first_record(self, items: Iterable[Accepted | Violation]
                              ) -> Iterator[Accepted | Violation]:
        """``items`` unchanged; the load starts when the first Accepted one passes."""
        for item in items:
            if self._thread is None and isinstance(item, Accepted):
                self._thread = threading.Thread(target=self._load, name="syncguard-champion",
                                                daemon=True)
                self._thread.start()
            yield item

    def _load(self) -> None:
        try:
            # Looked up at call time, so a caller's replacement of the loader is used.
            self._loaded = load_scoring_model(self._home)
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc

    def result(self) -> tuple[FleetModel, str]:
        """The loaded champion and its version, as :func:`load_scoring_model` gives them.

        Raises
        ------
        ModelError
            What the load raised (any exception is raised here, in the caller's thread).
        """
        if self._thread is None:  # no record passed (or items were not consumed)
            return load_scoring_model(self._home)
        self.close()
        if self._error is not None:
            raise self._error
        assert self._loaded is not None
        return self._loaded

    def close(self) -> None:
        """Wait for the load to finish (no thread outlives the run)."""
        if self._thread is not None and self._thread.is_alive():
            self._thread.join()


# ---------------------------------------------------------------------- the whole run


def _reject_pauses(store: Store, rejected: Iterable[Violation], policy: Policy, *,
                   actor: str) -> tuple[dict[int, dict[str, Any]], list[str]]:
    """``invalid_record`` events (by id of the violation) and the pauses they open."""
    now = _now()
    events: dict[int, dict[str, Any]] = {}
    pauses = []
    for violation in rejected:
        if not violation.connector_id:
            continue
        crit = policy.criticality_of(violation.connector_id, None)
        severity = policy.criticalities[crit]["severity"]
        events[id(violation)] = invalid_record(violation, scored_at=now, severity=severity,
                                               criticality=crit)
        pauses.append((violation.connector_id, violation.sync_id, "invalid_record",
                       [f"invalid_record: {violation.field}: {violation.rule}"]))
    opened = ledger.open_pause_many(store.conn, pauses, at=now, actor=actor) if pauses else []
    return events, opened


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block (as it was after).

    A batch allocates a few hundred thousand containers that live until its end (decoded
    records, rows, events), so the collector runs hundreds of times and walks the whole
    heap in each full collection: ~0.25 s of CPU for 12,000 syncs, in the thread that
    holds the GIL. Scoring makes next to no reference cycles (what it drops, reference
    counting frees), so pausing the collector for one run costs no memory to speak of.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def score_items(home: Home, store: Store, items: Iterable[Accepted | Violation], *,
                source: str, actor: str, sinks: Sequence[Sink] = (),
                chunk_syncs: int = CHUNK_SYNCS) -> ScoreRun:
    """Validate-and-store, score, record and emit: the whole of ``syncguard score``.

    Parameters
    ----------
    home : Home
        Where the champion model is cached.
    store : Store
        The open store of ``home``.
    items : iterable of Accepted or Violation
        Contract results in input order (:func:`detector.contract.read_inputs`).
    source : str
        Input label for the store and audit log.
    actor : str
        Who runs the scoring, for the audit log.
    sinks : sequence of Sink
        Each gets every event, in input order, one sink after the other (a webhook last
        keeps stdout fast when the receiver is slow).
    chunk_syncs : int
        Syncs per scoring transaction.

    Returns
    -------
    ScoreRun
    """
    with cyclic_gc_paused():
        return _score_items(home, store, items, source=source, actor=actor, sinks=sinks,
                            chunk_syncs=chunk_syncs)


def _score_items(home: Home, store: Store, items: Iterable[Accepted | Violation], *,
                 source: str, actor: str, sinks: Sequence[Sink],
                 chunk_syncs: int) -> ScoreRun:
    run = ScoreRun()
    champion = ChampionAhead(home)
    decoded: DecodedAhead | None = None
    try:
        items = list(champion.start_on_first_record(items))
        # One transaction around the ingest's batches (each a savepoint, audited as
        # before): every COMMIT writes each page it dirtied to the WAL, and every batch
        # touches most leaf pages of the syncs indexes; in one, those pages are written
        # once, not per batch.
        with store.atomic():
            run.ingest = store.ingest(items, source=source, actor=actor, in_time_order=True)
        items = [run.ingest.turned_away.get(id(it), it) for it in items]
        sync_ids = [it.record["sync_id"] for it in items if isinstance(it, Accepted)]

        decoded = DecodedAhead(items, run.ingest.accepted_ids, limit=chunk_syncs)
        model: FleetModel | None = None
        try:
            if sync_ids:
                model, run.model_version = champion.result()
        except SyncguardError as exc:
            run.unscorable = str(exc)
        scorer = Scorer(store, model, run.model_version, actor=actor,
                        unscorable_reason=run.unscorable, chunk_syncs=chunk_syncs,
                        decoded=decoded)
        fresh = scorer.score(sync_ids)
        run.history_end = getattr(model, "history_end_", None)
        run.latest_sync = max(
            (it.times[0] for it in items if isinstance(it, Accepted) and it.times), default=None
        )
    finally:
        champion.close()
        if decoded is not None:
            decoded.close()
    run.scored = len(fresh)
    run.unscorable = scorer.unscorable
    rejects, opened = _reject_pauses(store, run.ingest.rejected, scorer.policy(), actor=actor)
    run.pauses_opened = scorer.pauses_opened + opened
    run.events = _in_input_order(store, items, fresh, rejects)
    run.replayed = sum(1 for e in run.events if e.get("replay"))
    for sink in sinks:
        sink.emit_many(run.events)
    return run


def _in_input_order(store: Store, items: list[Accepted | Violation],
                    fresh: dict[str, dict[str, Any]],
                    rejects: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """One event per input item; a sync not decided by this run (or seen twice) replays."""
    wanted = [it.record["sync_id"] for it in items
              if isinstance(it, Accepted) and it.record["sync_id"] not in fresh]
    stored = scores.stored_events(store.conn, wanted) if wanted else {}
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for item in items:
        if isinstance(item, Violation):
            if id(item) in rejects:
                out.append(rejects[id(item)])
            continue
        sid = item.record["sync_id"]
        if sid in fresh and sid not in seen:
            out.append(fresh[sid])
        else:
            text = stored.get(sid)
            if text is None:
                event = fresh.get(sid)
                if event is None:
                    raise StoreError(f"sync_id {sid!r} is stored but has no score after "
                                     "scoring; rerun `syncguard score` to finish the job")
                text = encode(event)
            event = json.loads(text)
            event["replay"] = True
            out.append(event)
        seen.add(sid)
    return out
