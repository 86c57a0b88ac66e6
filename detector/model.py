"""FleetModel: every connector's baseline, forest and calibration, plus pooled cold-start models.

Fitting (clean history: faults and unresolved pauses already left out)::

    records -> frames -> features -> seasonal baselines -> residuals z
            -> isolation forest per connector (and per kind, pooled)
            -> calibrators fitted on held-out scores (two-fold cross-fitting in time)

Calibration has two stages. Each *measure family* (counts falling, counts rising, null
rates, durations, errors, ...) gets its own tail for the largest residual of the family:
a retried burst of errors that doubles a sync's duration is common in normal life, a
count 20 scales below its baseline is not, and one pooled "largest residual" cannot tell
them apart. The most surprising of the family tails and the forest's tail probability
then give one statistic, calibrated per connector against held-out normal syncs.

Scoring a batch in time order (see :meth:`FleetModel.score`) runs the same chain, then
rules and the decision. A connector's first pause in a batch switches its later syncs to
"paused" mode (judged against the sync just before); nothing else depends on earlier
decisions, so two vectorised passes give exactly what one-at-a-time scoring gives; the
second pass re-scores only the syncs after a connector's first new pause (their
references and times still come from every sync before them).

``score`` is ``-log10(tail_probability)``, so it is comparable across connectors and
does not saturate; ``cutoff`` is ``-log10(alpha)`` where ``alpha`` is the per-sync
false-pause rate the connector's budget allows.

The pieces the model composes live in modules of their own: history -> frames by parts
(:mod:`detector.history`), tail families (:mod:`detector.families`), model groups and
their layouts (:mod:`detector.groups`), cross-fitting parts (:mod:`detector.crossfit`),
connectors' habits from history (:mod:`detector.habits`), the scatter of residuals into
matrices (:mod:`detector.matrices`), the state a batch leaves
(:mod:`detector.next_state`), threads (:mod:`detector.parallel`) and the frames of a
model file as arrays (:mod:`detector.frame_arrays`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
import polars as pl

from detector.baseline import SeasonalBaseline, empty_hours
from detector.calibration import TailCalibrator
from detector.crossfit import XfitPart, merged_baseline, stacked_matrices, xfit_parts
from detector.explain import REASON_Z, reasons_frame, with_reasons
from detector.families import (
    Families,
    family_index,
    family_weights,
    residual_sign,
    tail_families,
)
from detector.features import FACTS_SCHEMA, build_features
from detector.forest import ArrayIsolationForest
from detector.frame import UNMODELLED_MEASURES, to_struct_frame
from detector.frame_arrays import frame_from_arrays, frames_to_arrays
from detector.groups import group_layouts, pooled_group, pooled_sample
from detector.habits import (
    LARGEST_LOSSES_SCHEMA,
    connector_intervals,
    expected_resources,
    largest_losses,
    score_intervals,
)
from detector.history import DecodedHistory, history_frames, prepare
from detector.matrices import scatter_residuals
from detector.next_state import NEXT_STATE_COLUMNS, next_state
from detector.parallel import connector_shards, in_threads
from detector.policy import Policy, load_policy
from detector.review import OUTLYING_Z, review_only
from detector.rules import REPEAT_RATES, rule_hits
from detector.special import ufuncs as _ufuncs

__all__ = ["FleetModel", "ScoreResult"]

_MODES = ("", "_paused")  # scored against the learned level, or against the sync before
_STAGES = ("forest", "family", "combined")
_CALIBRATORS = tuple(stage + mode for mode in _MODES for stage in _STAGES)
_FAMILY_MIN_WIDTH = 0.05  # in scales: family bodies are often a spike of near-equal values
_FAMILY_MIN_TAIL = 100  # exceedances for a family tail fully its own
_XFIT_CHUNK_ROWS = 500_000  # feature rows of the connectors cross-fitted together
_SCORE_BLOCK_ROWS = 1024  # syncs per block of the forest walk and calibration when scoring
_OOS_KEYS = ("forest", "group", "row", "forest_paused")
# Screening rounds: a fit on history with its grossest faults left out judges the rest
# more sharply, and a second round finds about as many faults again as the first.
_SCREEN_ROUNDS = 2
# A connector whose held-out scores would pause more than this share of its history
# syncs is not that full of faults: its halves differ (growth, a level shift). It stays.
_SCREEN_MAX_SHARE = 0.1


def _modelled(features: pl.DataFrame) -> pl.DataFrame:
    """``features`` less the measures kept for rules and state only."""
    return features.filter(~pl.col("measure").is_in(UNMODELLED_MEASURES))


@dataclass
class ScoreResult:
    """What :meth:`FleetModel.score` returns.

    ``results`` has one row per input sync in input order; ``state`` / ``facts`` are what
    the next batch starts from; ``reasons`` and ``rule_hits`` are long frames keyed by
    ``sync_id``.
    """

    results: pl.DataFrame
    reasons: pl.DataFrame
    rule_hits: pl.DataFrame
    state: pl.DataFrame
    facts: pl.DataFrame

    def events(self) -> list[dict]:
        """Per-sync decision dicts (native event fields without transport metadata)."""
        joined = with_reasons(
            self.results,
            self.reasons,
            self.rule_hits,
            "metric",
            "observed",
            "expected",
            pl.concat_list("range_lo", "range_hi").alias("expected_range"),
            "distance",
            "description",
        )
        return joined.to_dicts()


class FleetModel:
    """Per-connector and pooled anomaly models for a fleet of connectors.

    Parameters
    ----------
    n_estimators : int, default=100
        Trees per isolation forest.
    max_samples : int, default=256
        Sub-sample per tree.
    min_history : int, default=30
        Syncs a connector needs in history for its own model; fewer -> cold start
        (scored by the pooled model of its kind).
    baseline_method : {"profile", "stl"}, default="profile"
        Seasonal profile estimator (see :class:`detector.baseline.SeasonalBaseline`).
    random_state : int, default=0
    n_jobs : int, default=1
        Threads a fit runs its independent parts in (history parts, cross-fitting parts,
        the forests, the two scoring modes' calibrators); the model is the same with any.
        Scoring takes its own (:meth:`score`).
    loss_weight : float, default=2.0
        Weight of the families of records lost (a count falling, removals rising)
        against 1 for every other family in a sync's smallest tail probability (see
        :func:`family_weights`); 1 weighs all alike.
    policy : Policy, optional
        Connector policy; the built-in default when omitted.
    pooled_max_connectors : int or None, default=64
        Connectors each pooled model (a kind's, and the fleet's ``"*"``) is fitted on at
        most: a larger group is represented by the connectors with the smallest stable
        hash of their id (BLAKE2b), the fleet's sample within each kind's. A kind's level,
        scale and tails are well learned from a few dozen connectors, while pooling every
        one made two thirds of a large fleet's fitting work. ``None``: every connector.
        Fleets of up to this many connectors are fitted exactly as without a limit.
    screen_history : bool, default=True
        Leave out of the fit the history syncs that its own held-out scores would pause,
        then fit again without them, as production leaves paused syncs out of training.
        History that nobody labelled holds faults: fitted on as normal, they widen the
        tails and teach the baselines that errors and lost records happen, and similar
        faults later go unpaused. A clean history loses only the few syncs it would
        have paused. Each of the (up to two) rounds that leaves syncs out costs another
        decode, cross-fit and calibration.

    Attributes
    ----------
    intervals_ : pl.DataFrame
        ``connector_id, connector_kind, interval_s, n_syncs`` from history.
    columns_ : pl.DataFrame
        ``group, measure, col``: the residual vector layout of each model group.
    baseline_, pooled_baseline_ : SeasonalBaseline
    forest_ : ArrayIsolationForest
        Groups are connectors with enough history, then kinds (pooled), then ``"*"``.
    families_ : list of str
        Measure families with a signed tail of their own (``count-``, ``api.errors+``...).
    calibrators_ : dict of str to TailCalibrator
        Per mode (``""`` and ``"_paused"``): ``forest`` (per group), ``family`` (one
        group per measure family) and ``combined`` (per group).
    expected_resources_ : pl.DataFrame
        ``connector_id, resource``: the types a connector always reported in history.
    largest_losses_ : pl.DataFrame
        ``connector_id, resource, largest_loss``: per connector with a model of its own,
        the largest share of a type's records it lost in one sync in history (the
        ``loss_beyond_history`` rule).
    screened_out_ : list of str
        ``sync_id`` of the history syncs ``screen_history`` left out (not kept in model
        files).
    history_end_ : datetime or None
        When the last sync of the history fitted on started (UTC). Calibration loosens
        as connectors drift away from it: ``syncguard score`` warns past
        :data:`detector.scoring.MODEL_MAX_AGE_DAYS`. None for model files older than the attribute.
    """

    def __init__(
        self,
        *,
        n_estimators: int = 100,
        max_samples: int = 256,
        min_history: int = 30,
        baseline_method: str = "profile",
        random_state: int = 0,
        n_jobs: int = 1,
        loss_weight: float = 2.0,
        policy: Policy | None = None,
        pooled_max_connectors: int | None = 64,
        screen_history: bool = True,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.min_history = min_history
        self.baseline_method = baseline_method
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.loss_weight = loss_weight
        self.policy = policy
        self.pooled_max_connectors = pooled_max_connectors
        self.screen_history = screen_history

    # ================================================================== fit
    def fit(
        self,
        history: Iterable[Mapping[str, Any]] | pl.DataFrame | DecodedHistory,
        progress=None,
        *,
        screened: pl.Series | None = None,
    ) -> FleetModel:
        """Fit on clean history (records, a struct frame, a store history frame or a
        :class:`DecodedHistory`).

        ``progress``, when given, is called with a short phase name as fitting goes on.
        ``screened``: ``sync_id`` of history syncs already screened out elsewhere (the
        training pipeline's backtest screened all but the latest days of this history
        and scored those): they are left out and the history is not screened again,
        whatever ``screen_history`` says (one cross-fit instead of up to three).
        """
        step = progress or (lambda _msg: None)
        if self.min_history < 2:
            raise ValueError("min_history must be >= 2")
        if not self.loss_weight >= 1.0:
            raise ValueError("loss_weight must be >= 1")
        if self.pooled_max_connectors is not None and self.pooled_max_connectors < 1:
            raise ValueError("pooled_max_connectors must be >= 1 or None")
        screen = self.screen_history and screened is None
        if (screen or screened is not None) and not isinstance(
            history, pl.DataFrame | DecodedHistory
        ):
            history = to_struct_frame(history)  # syncs are left out of it by sync_id
        step("features")
        if screen and isinstance(history, pl.DataFrame) and "record" in history.columns:
            # Each screening round reads the history again: its texts are decoded once.
            history = DecodedHistory.decode(history, self.n_jobs)
        left_out = pl.Series("sync_id", [], dtype=pl.String)
        if screened is not None:  # those of this history (screened_out_ counts them)
            ids = history.sync_ids if isinstance(history, DecodedHistory) else history["sync_id"]
            left_out = pl.Series("sync_id", screened, dtype=pl.String)
            left_out = left_out.filter(left_out.is_in(ids.implode()))
        # Handed over in a list (taken out by _fit_calibration): the decoded frames are
        # then freed as soon as it no longer needs them, not held here through the fit.
        decoded = [
            history_frames(
                history,
                self.n_jobs,
                leave_out=left_out if len(left_out) else None,
                compact=True,
                modelled=True,
            )
        ]
        if decoded[0][0].height == 0:
            raise ValueError("fit needs at least one sync in history")
        if not screen:
            history = None  # never decoded again: the record texts (if handed over) go now
        fit_data, would_pause = self._fit_calibration(decoded, step, screen=screen)
        if screen:
            step("screening history")
        for screening in range(_SCREEN_ROUNDS, 0, -1):
            if not len(would_pause):
                break
            # The syncs go before decoding, as production's paused syncs do: the syncs
            # after them are then measured against the last sync that stays.
            left_out = pl.concat([left_out, would_pause])
            del fit_data
            decoded = [
                history_frames(
                    history, self.n_jobs, leave_out=left_out, compact=True, modelled=True
                )
            ]
            fit_data, would_pause = self._fit_calibration(
                decoded, lambda _phase: None, screen=screening > 1
            )
        self.screened_out_ = left_out.to_list()
        del history  # the record texts or decoded parts, when the caller handed them over

        step("baselines")
        # Fitted a part at a time with the forest inputs, as in cross-fitting: the pooled
        # rows (every sync twice) are never one frame. Each series is fitted from its own
        # rows only, so the parts' baselines together are those of the whole frames.
        parts = xfit_parts(fit_data.per_connector, fit_data.pooled, _XFIT_CHUNK_ROWS)
        ivals, group_index = fit_data.ivals, fit_data.group_index
        del fit_data
        inputs, bases = self._forest_inputs(parts, None, ivals, group_index)
        self.baseline_ = merged_baseline(parts, bases, "connector_id")
        self.pooled_baseline_ = merged_baseline(parts, bases, "connector_kind")
        del parts, bases

        step("isolation forests")
        self.forest_ = ArrayIsolationForest(
            n_estimators=self.n_estimators,
            max_samples=self.max_samples,
            random_state=self.random_state,
            n_jobs=self.n_jobs,
        ).fit(inputs)
        return self

    def _fit_calibration(
        self, decoded: list[tuple[pl.DataFrame, pl.DataFrame]], step, *, screen: bool
    ) -> tuple[_FitData, pl.Series]:
        """Everything up to the calibrators (layout, families, cross-fitting), from a
        history's syncs and features (``decoded``: a list holding them, emptied); the
        frames the baselines and forests are fitted from; and, when ``screen``, the ids
        of the syncs whose held-out scores would pause (see :meth:`_fit_calibrators`)."""
        syncs, features = decoded.pop()
        self.intervals_ = connector_intervals(syncs)
        self.history_end_ = syncs["started_at"].max()
        self.policy_ = self.policy or load_policy()
        own = self.intervals_.filter(pl.col("n_syncs") >= self.min_history)
        self.expected_resources_ = expected_resources(syncs, features)
        self.largest_losses_ = largest_losses(features, own)

        # From here on only the columns baselines and residual vectors read: each copy
        # of the long frame (folds, pooled rows) is then about a third smaller.
        features = features.select(
            "row",
            "connector_id",
            "connector_kind",
            "measure",
            "kind",
            "value",
            "reference",
            "exposure",
            "current_size",
            "bucket",
            "gap_s",
            "paused",
            *(["started_at"] if self.baseline_method == "stl" else []),
        )  # every row's connector has an interval: both come from the syncs
        # Layout of each group's residual vector: measures present in most of its syncs.
        per_connector = (
            features  # the usual case, every connector has its own model: no copy
            if own.height == self.intervals_.height
            else features.filter(pl.col("connector_id").is_in(own["connector_id"].implode()))
        )
        # The pooled models' rows: each kind's sample of connectors, and the fleet's
        # (see pooled_max_connectors), marked by a small integer column.
        sample = pooled_sample(self.intervals_, self.pooled_max_connectors)
        pool_code = pl.col("connector_id").replace_strict(
            sample["connector_id"], sample["pool"], return_dtype=pl.UInt8
        )
        pooled = features.with_columns(pool_code.alias("_pool"))
        kinds = self.intervals_.select("connector_id", "connector_kind")
        self.columns_ = group_layouts(
            features, syncs, own, sample.rename({"pool": "_pool"}).join(kinds, on="connector_id")
        )
        groups = self.columns_.select("group").unique(maintain_order=True)["group"].to_list()
        self.groups_ = groups
        self.families_ = tail_families(features)
        group_index = {g: i for i, g in enumerate(groups)}
        ivals = self.intervals_.select("connector_id", "interval_s")

        step("cross-fitting calibration scores")
        # A screening round that leaves syncs out is followed by another round, whose
        # calibrators replace its own: it needs the held-out scores of the normal mode
        # only (screening reads its combined tail), not those of syncs judged as paused
        # (a third of the held-out work and half the calibrators'). Should it leave
        # nothing out, the fit ends with it: it then gets the paused mode as well.
        xfit_data = (per_connector, pooled, ivals, group_index)
        if screen:
            oos = self._held_out_cross_fit(*xfit_data, modes=_MODES[:1])
        else:
            oos = self._cross_fit_scores(*xfit_data)

        # The calibrators read the held-out scores only, so they are fitted now: the
        # scores (the family maxima of every sync, for each group it is judged by, the
        # largest arrays a fit keeps) are freed before the baselines and forests run.
        step("calibration")
        targets = self._screening_targets(syncs, own, group_index) if screen else None
        would_pause = syncs["sync_id"].gather(self._fit_calibrators(oos, targets))
        if screen and not len(would_pause):
            del oos
            self._fit_calibrators(self._cross_fit_scores(*xfit_data), None)
        return _FitData(per_connector, pooled, ivals, group_index), would_pause

    def _screening_targets(
        self, syncs: pl.DataFrame, own: pl.DataFrame, group_index: dict[str, int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per history row: the per-sync false-pause rate of its connector's budget (0
        where its policy makes a breach a review: reviews stay in training), the group
        that scores its connector (its own, else its kind's pooled, else ``"*"``) and
        the connector's position in ``intervals_``.

        Only that group's held-out score screens a sync. The pooled models hold out
        whole connectors: a connector unlike the rest of its kind (a directory ten
        times the size of any other) would be judged faulty from end to end.
        """
        conn = self.intervals_.select(
            "connector_id", "connector_kind", "interval_s"
        ).with_row_index("connector")
        judge = (
            pl.when(pl.col("connector_id").is_in(own["connector_id"].implode()))
            .then(pl.col("connector_id"))
            .otherwise(pooled_group(group_index))
        )
        judged_by = conn.select(
            "connector_id", judge.replace_strict(group_index, return_dtype=pl.Int64).alias("group")
        )
        per_sync = (
            syncs.select("row", "connector_id")
            .join(conn.select("connector_id", "connector"), on="connector_id", how="left")
            .join(judged_by, on="connector_id", how="left")
            .join(self._budgets(conn), on="connector_id", how="left")
        )
        rate = per_sync["alpha"].to_numpy()
        pauses = (per_sync["on_breach"] == "pause").to_numpy()
        alpha = np.zeros(syncs.height)
        group = np.full(syncs.height, -1, dtype=np.int64)
        connector = np.zeros(syncs.height, dtype=np.int64)
        rows = per_sync["row"].to_numpy()
        alpha[rows] = np.where(pauses, rate, 0.0)
        group[rows] = per_sync["group"].to_numpy()
        connector[rows] = per_sync["connector"].to_numpy()
        return alpha, group, connector

    def _fit_calibrators(
        self, oos: dict[str, Any], targets: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    ) -> np.ndarray:
        """Forest, family and combined calibrators per mode, from held-out scores (the
        modes are independent: ``n_jobs`` at a time in threads).

        With ``targets`` (see :meth:`_screening_targets`), returns the rows whose
        held-out score by the group that scores them would pause under the calibrators
        just fitted, as not paused: the syncs screening leaves out.
        """
        self.calibrators_ = {}
        # Popped: the scores and family maxima are freed once the calibrators are fitted.
        # The modes whose scores ``oos`` holds (see _held_out_cross_fit): the normal one
        # always.
        modes = [mode for mode in _MODES if "forest" + mode in oos]
        jobs = [(mode, oos.pop("forest" + mode), oos.pop("family" + mode)) for mode in modes]
        # A screening round fits the normal mode only: its threads go to that one mode.
        fit_mode = functools.partial(
            self._fit_mode_calibrators, groups=oos["group"], n_jobs=self.n_jobs // len(jobs)
        )
        combined = in_threads(fit_mode, jobs, self.n_jobs)[0]
        # In one order whichever thread finished first: the model file lists them so.
        self.calibrators_ = {
            key: self.calibrators_[key] for key in _CALIBRATORS if key in self.calibrators_
        }
        if targets is None:
            return np.zeros(0, dtype=np.int64)
        alpha, judged_by, connector = targets
        rows, groups = oos["row"], oos["group"]
        p = self.calibrators_["combined"].tail_probability(combined, groups)
        flagged = np.unique(rows[(groups == judged_by[rows]) & (p < alpha[rows])])
        n_flagged = np.bincount(connector[flagged], minlength=self.intervals_.height)
        too_many = n_flagged > _SCREEN_MAX_SHARE * self.intervals_["n_syncs"].to_numpy()
        return flagged[~too_many[connector[flagged]]]

    def _fit_mode_calibrators(
        self, job: tuple[str, np.ndarray, Families], *, groups, n_jobs: int = 1
    ) -> np.ndarray:
        """One mode's forest, family and combined calibrators (``job``: the mode, its
        held-out forest scores and family maxima), into ``calibrators_``; returns the
        combined statistic they were fitted on (its family part ``n_jobs`` blocks at a
        time, see :meth:`Families.row_min`)."""
        mode, forest_s, fam = job
        n_groups, n_fam = len(self.groups_), len(self.families_)
        self.calibrators_["forest" + mode] = TailCalibrator().fit(
            forest_s, groups, n_groups=n_groups
        )
        self.calibrators_["family" + mode] = TailCalibrator(
            pool_shape=False, min_width=_FAMILY_MIN_WIDTH, min_tail=_FAMILY_MIN_TAIL
        ).fit(fam.values, fam.cols, n_groups=n_fam)
        combined = self._combined_statistic(forest_s, fam, groups, mode, n_jobs)
        # A breach that is a review (only transport moved) is no false *pause*: the
        # cutoff is set on the syncs that would pause, as the budget counts them.
        combined[fam.review] = 0.0
        self.calibrators_["combined" + mode] = TailCalibrator(log10_tail=True).fit(
            combined, groups, n_groups=n_groups
        )
        return combined

    def _combined_statistic(
        self, forest_s: np.ndarray, fam: Families, groups: np.ndarray, mode: str, n_jobs: int = 1
    ) -> np.ndarray:
        """``-log10`` of the smallest of the forest's and the families' tail probabilities,
        from the sparse family maxima (in blocks of entries: fitting never makes a dense
        syncs x families matrix)."""
        p_forest = self.calibrators_["forest" + mode].tail_probability(forest_s, groups)
        p_family = fam.row_min(
            lambda v, c: self._family_tail_probability(v, c, mode), len(groups), n_jobs
        )
        return -np.log10(np.clip(np.minimum(p_forest, p_family), 1e-300, 1.0))

    def _family_tail_probability(
        self, values: np.ndarray, cols: np.ndarray, mode: str
    ) -> np.ndarray:
        """Tail probability of each family maximum ``values`` under its family ``cols``,
        over the family's weight (:func:`family_weights`)."""
        # Never lighter than the residual's own Gaussian tail: a family pooled over
        # series that rarely see an event (roles added, say) would otherwise call a
        # count of 2 where this connector often has 1 a one-in-a-million sync.
        p = np.maximum(
            self.calibrators_["family" + mode].tail_probability(values, cols),
            _ufuncs.ndtr(-values),
        )
        weights = family_weights(tuple(self.families_), self.loss_weight)
        return np.minimum(p / weights[cols], 1.0)

    def _cross_fit_scores(
        self,
        per_connector: pl.DataFrame,
        pooled: pl.DataFrame,
        ivals: pl.DataFrame,
        group_index: dict[str, int],
    ) -> dict[str, Any]:
        """:meth:`_held_out_cross_fit` with both scoring modes."""
        return self._held_out_cross_fit(per_connector, pooled, ivals, group_index, modes=_MODES)

    def _held_out_cross_fit(
        self,
        per_connector: pl.DataFrame,
        pooled: pl.DataFrame,
        ivals: pl.DataFrame,
        group_index: dict[str, int],
        *,
        modes: tuple[str, ...],
    ) -> dict[str, Any]:
        """Held-out scores for every history sync: fit on one half in time, score the other.

        A connector's folds are the first and second half of its syncs; the pooled models
        hold out whole connectors, the way a cold start meets them. Baselines are per
        group, so a fold is fitted and scored one part at a time (chunks of connectors,
        then each pooled group): only that part's fold rows are copied, and only its
        baseline is kept. Each fold's forest is still grown on every group at once, so
        its random streams, and with them the scores, are those of one pass.

        Returns ``forest``, ``group`` and ``forest_paused`` per held-out sync, and
        ``family`` / ``family_paused``: the family maxima as :class:`Families` (most
        syncs have a residual in few of the families); the ``_paused`` ones only when
        ``modes`` (of :data:`_MODES`) holds that mode.
        """
        parts = xfit_parts(per_connector, pooled, _XFIT_CHUNK_ROWS)
        pooled_parts = [part.pooled for part in parts]
        keys = [k for k in _OOS_KEYS if not k.endswith(_MODES[1]) or _MODES[1] in modes]
        scores: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        families: dict[str, list[Families]] = {"family" + mode: [] for mode in modes}
        n_done = 0
        for fold in (False, True):
            fit_x, bases = self._forest_inputs(parts, fold, ivals, group_index)
            if all(base is None for base in bases):
                continue
            fitted = [len(x) > 0 for x in fit_x]
            forest = ArrayIsolationForest(
                n_estimators=max(20, self.n_estimators // 2),
                max_samples=self.max_samples,
                random_state=self.random_state + 1000,
                n_jobs=self.n_jobs,
            ).fit(fit_x)
            del fit_x  # the forest keeps what it needs
            forest._walk_arrays()  # built once here, not by each thread that scores
            held_out = functools.partial(
                self._held_out_scores,
                fold=fold,
                forest=forest,
                fitted=fitted,
                ivals=ivals,
                group_index=group_index,
                paused=_MODES[1] in modes,
            )
            held: list[dict[str, Any] | None] = [None] * len(group_index)
            jobs = list(zip(parts, bases, strict=True))
            for part_scores in in_threads(held_out, jobs, self.n_jobs, pooled_parts):
                for g, group_scores in part_scores:
                    held[g] = group_scores
            # In group order, as the calibrators' inputs always were.
            for group_scores in filter(None, held):
                for k in keys:
                    scores[k].append(group_scores[k])
                for k, kept in families.items():
                    kept.append(group_scores[k].shifted(n_done))
                n_done += len(group_scores["group"])
            # Gone before the next fold is fitted: the first fold's forest (tens of
            # thousands of trees at 1,000 connectors, with its walk arrays) and
            # baselines were still held while the second fold's parts were fitted, the
            # fit's peak of memory.
            del forest, held_out, jobs, bases, held
        oos: dict[str, Any] = {
            k: np.concatenate(v) if v else np.zeros(0) for k, v in scores.items()
        }
        return oos | {k: Families.concat(v) for k, v in families.items()}

    def _held_out_scores(
        self,
        job: tuple[XfitPart, SeasonalBaseline | None],
        *,
        fold: bool,
        forest: ArrayIsolationForest,
        fitted: list[bool],
        ivals: pl.DataFrame,
        group_index: dict[str, int],
        paused: bool = True,
    ) -> list[tuple[int, dict[str, Any]]]:
        """``(group index, held-out scores)`` of each group of a part fitted on side
        ``fold`` (``job``: the part and its baseline), for groups the fold's forest was
        ``fitted`` on; without ``paused``, those of the normal scoring mode only."""
        part, base = job
        if base is None:
            return []
        normal, as_paused = self._held_out_matrices(
            part, base, part.rows(not fold), ivals, group_index, paused=paused
        )  # family maxima already sparse (Families)
        out = []
        for i, (g, (m, rows, f)) in enumerate(normal):
            if len(m) == 0 or not fitted[g]:
                continue
            gi = np.full(len(m), g)
            scores = {"forest": forest.score_samples(m, gi), "group": gi, "row": rows, "family": f}
            if paused:
                mp, _, fp = as_paused[i][1]
                # Pooled models judge the same matrices either way: scored once.
                same = mp is m
                scores["forest_paused"] = scores["forest"] if same else forest.score_samples(mp, gi)
                scores["family_paused"] = fp
            out.append((g, scores))
        return out

    def _forest_inputs(
        self,
        parts: list[XfitPart],
        fold: bool | None,
        ivals: pl.DataFrame,
        group_index: dict[str, int],
    ) -> tuple[list[np.ndarray], list[SeasonalBaseline | None]]:
        """Every group's forest inputs from its part's rows on side ``fold`` (None: all).

        Each part's baseline is fitted on those rows and returned per part too (None for
        a part without rows on that side); the inputs are its in-sample residuals, which
        fitting already made (:meth:`SeasonalBaseline.fit_residuals`).
        """
        width = int(self.columns_["col"].max()) + 1
        inputs = [np.zeros((0, width), np.float32)] * len(group_index)

        def fitted(part: XfitPart) -> tuple[SeasonalBaseline | None, list]:
            rows = part.rows(fold)
            if not rows.height:
                return None, []
            base, z, z_tail = part.fit_residuals(self.baseline_method, rows, ivals)
            resid = rows.with_columns(pl.Series("z", z), pl.Series("z_tail", z_tail))
            del rows, z, z_tail
            mats = self._part_matrices(part, base, resid, ivals, group_index, families="none")
            return base, [(g, x) for g, (x, _, _) in mats]

        bases: list[SeasonalBaseline | None] = []
        # One pooled group at a time (see _one_heavy_at_a_time): the fit's peak of memory.
        for base, mats in in_threads(fitted, parts, self.n_jobs, [p.pooled for p in parts]):
            for g, x in mats:
                inputs[g] = x
            bases.append(base)
        return inputs, bases

    def _part_matrices(
        self,
        part: XfitPart,
        base: SeasonalBaseline,
        rows: pl.DataFrame,
        ivals: pl.DataFrame,
        group_index: dict[str, int],
        *,
        whole: bool = False,
        families: str = "sparse",
    ) -> list[tuple[int, tuple[np.ndarray, np.ndarray, Families | None]]]:
        """``(group index, group matrices)`` of each group of a part, from its ``rows``
        (``whole``: in one pass); rows that carry ``z`` and ``z_tail`` are residuals.
        ``families`` as in :meth:`_group_matrices` ("sparse" or "none")."""
        row = rows["row"]
        if not whole and rows.height > _XFIT_CHUNK_ROWS and row.is_sorted():
            # A pooled group (every sync of a kind, or of the fleet): its residuals and
            # matrices a slice of whole syncs at a time, stacked in row order as one
            # pass would give them.
            r = row.to_numpy()
            cuts = np.unique(np.searchsorted(r, r[_XFIT_CHUNK_ROWS::_XFIT_CHUNK_ROWS]))
            bounds = np.r_[0, cuts, len(r)]
            pieces = [
                self._part_matrices(
                    part,
                    base,
                    rows.slice(lo, hi - lo),
                    ivals,
                    group_index,
                    whole=True,
                    families=families,
                )
                for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
                if hi > lo
            ]
            return [
                (g, stacked_matrices([p[i][1] for p in pieces]))
                for i, (g, _) in enumerate(pieces[0])
            ]
        if "z_tail" in rows.columns:  # residuals already made (by fit_residuals)
            return self._resid_matrices(part, rows, group_index, families)
        resid = base.residuals(rows, ivals, against_reference=part.against_reference)
        return self._resid_matrices(part, resid, group_index, families)

    def _held_out_matrices(
        self,
        part: XfitPart,
        base: SeasonalBaseline,
        rows: pl.DataFrame,
        ivals: pl.DataFrame,
        group_index: dict[str, int],
        *,
        paused: bool = True,
    ) -> tuple[list, list | None]:
        """:meth:`_part_matrices` of held-out ``rows``, as scored normally and as paused
        (None without ``paused``).

        Paused, the same syncs are judged as a paused connector's would be: levels against
        the sync just before (paused scoring gets calibrators of its own): both from one
        residual pass (``alternative``). Pooled models always judge against the sync
        before: the same matrices.
        """
        if part.pooled:
            mats = self._part_matrices(part, base, rows, ivals, group_index)
            return mats, mats if paused else None
        normal = base.residuals(rows, ivals, alternative=pl.lit(True))
        if not paused:
            return self._resid_matrices(part, normal, group_index, "sparse"), None
        as_paused = normal.with_columns(
            pl.col("z_alt").alias("z"), pl.col("z_tail_alt").alias("z_tail")
        )
        return (
            self._resid_matrices(part, normal, group_index, "sparse"),
            self._resid_matrices(part, as_paused, group_index, "sparse"),
        )

    def _resid_matrices(
        self,
        part: XfitPart,
        resid: pl.DataFrame,
        group_index: dict[str, int],
        families: str = "sparse",
    ) -> list[tuple[int, tuple[np.ndarray, np.ndarray, Families | None]]]:
        """``(group index, group matrices)`` of each group of a part, from its residuals."""
        empty = resid.head(0)
        own, pooled = (empty, resid) if part.pooled else (resid, empty)
        mats = self._group_matrices(own, pooled, group_index, families=families)
        return [(group_index[g], mats[group_index[g]]) for g in part.groups if g in group_index]

    def _group_matrices(
        self,
        resid: pl.DataFrame,
        pooled_resid: pl.DataFrame,
        group_index: dict[str, int],
        *,
        families: str = "dense",
    ) -> list[tuple[np.ndarray, np.ndarray, Any]]:
        """Per model group, in group order: forest inputs, row ids and family maxima
        (``families``: "dense" syncs x families, "sparse" :class:`Families`, "none")."""
        width = int(self.columns_["col"].max()) + 1
        n_fam = len(self.families_)
        no_fam = {"dense": np.zeros((0, n_fam)), "sparse": Families.concat([]), "none": None}
        out = [
            (np.zeros((0, width), np.float32), np.zeros(0, dtype=np.int64), no_fam[families])
            for _ in group_index
        ]
        for frame, key in ((resid, "connector_id"), (pooled_resid, "connector_kind")):
            if frame.height == 0:
                continue
            x, rows, group, fam = self._matrix(
                frame.select(
                    "row",
                    pl.col(key).alias("group"),
                    "measure",
                    "z",
                    "z_tail",
                    "exposure",
                    "current_size",
                ),
                width,
                families,
            )
            # _matrix returns its syncs ordered by group: each group is one slice.
            bounds = np.flatnonzero(np.diff(group)) + 1
            for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(group)], strict=True):
                g = group[lo]
                part_fam = None if fam is None else fam[lo:hi]
                out[group_index[self.groups_[g]]] = (x[lo:hi], rows[lo:hi], part_fam)
        return out

    def _family_lookup(self, measures: pl.Series) -> np.ndarray:
        """Unsigned tail family index of each (measure code, size decade); -1 for none.

        Tails depend on a residual's measure and its resource's size decade only, so
        the string work is done once per distinct pair, not once per residual row; and
        once per set of measures and families (a batch's passes and pooled models
        mostly share one), remembered on the model.
        """
        key = (tuple(self.families_), tuple(measures.to_list()))
        cache = self.__dict__.setdefault("_family_lookups", {})
        # Read once into a local: fitting's threads share the cache, and another thread's
        # clear() may come between a check and a second read.
        lookup = cache.get(key)
        if lookup is None:
            lookup = family_index(measures, self.families_)
            cache.clear()  # one entry is what a batch reuses: keep memory flat
            cache[key] = lookup
        return lookup

    def _matrix(
        self, resid: pl.DataFrame, width: int, families: str = "dense"
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
        """:func:`scatter_residuals` of long residual rows by this model's layout and families."""
        return scatter_residuals(
            resid,
            width,
            self.columns_,
            self.groups_,
            self._family_lookup,
            len(self.families_),
            families,
        )

    # ================================================================ score
    def _check_fitted(self) -> None:
        if not hasattr(self, "forest_"):
            raise RuntimeError("this FleetModel is not fitted yet: call fit first")

    def prepare_to_score(self) -> FleetModel:
        """Build the lookups scoring reads now rather than at the first :meth:`score`.

        The forest's walk layout and the baselines' profile tables are built once per
        loaded model (~0.05-0.1 s of CPU for a 300-connector model). Built here, in the
        thread that loads the champion while the input is parsed, they cost a batch no
        wall time, and a batch scored in shards does not build each of them once per shard
        (every thread found none and built its own).

        Returns
        -------
        self : FleetModel
        """
        self._check_fitted()
        self.forest_._walk_arrays()
        for base in (self.baseline_, self.pooled_baseline_):
            base._profile_lookup()
        return self

    def initial_state(
        self, history: Iterable[Mapping[str, Any]] | pl.DataFrame
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """State and facts at the end of ``history`` (every history sync taken as accepted)."""
        syncs, measures = prepare(history)
        syncs, features = build_features(syncs, measures)
        return next_state(syncs, features, None, None)

    def score(
        self,
        records: Iterable[Mapping[str, Any]] | pl.DataFrame,
        *,
        state: pl.DataFrame | None = None,
        facts: pl.DataFrame | None = None,
        n_jobs: int = 1,
    ) -> ScoreResult:
        """Score a batch in time order against the state it starts from.

        Parameters
        ----------
        records : records or frame
            Syncs to score (any order; they are judged in time order per connector).
        state, facts : pl.DataFrame, optional
            From :meth:`initial_state` or a previous :class:`ScoreResult`; without them,
            each connector's first sync has no reference (its changes are not judged).
        n_jobs : int, default=1
            Threads: a batch of at least :data:`detector.parallel._SHARD_MIN_SYNCS` syncs
            of several connectors is scored in up to ``n_jobs`` shards of whole connectors
            at once (see :meth:`_score_shards`); the result is the one-pass result.
        """
        self._check_fitted()
        wide = to_struct_frame(records)
        shards = connector_shards(wide, n_jobs)
        if shards is not None:
            return self._score_shards(wide, shards, state, facts, n_jobs)
        return self._score_batch(wide, state, facts)

    def _score_shards(
        self,
        wide: pl.DataFrame,
        shards: list[pl.Series],
        state: pl.DataFrame | None,
        facts: pl.DataFrame | None,
        n_jobs: int,
    ) -> ScoreResult:
        """Each shard of connectors scored on its own, in threads, then merged.

        Connectors are judged independently given their state (row by row the same
        whatever else is in the batch), and the passes spend their time in polars and
        numpy outside the GIL, so the shards use the machine's other cores. Results,
        reasons and rule hits are put back in input order (each shard keeps its syncs'
        relative order), state and facts in their (connector, measure) order: the
        one-pass result exactly. A state or facts row of a connector with no sync in the
        batch goes with the first shard, which passes it on as one pass does.
        """
        ids = wide["connector_id"]
        # Which shard each input row belongs to, found once: it splits the batch and puts
        # the merged rows back in input order.
        where = np.zeros(wide.height, dtype=np.int64)
        for k in range(1, len(shards)):
            where[ids.is_in(shards[k].implode()).to_numpy()] = k
        rest = pl.concat(shards[1:]).implode()

        def part(frame: pl.DataFrame | None, k: int) -> pl.DataFrame | None:
            """A state or facts frame's rows of shard ``k``'s connectors."""
            if frame is None:
                return None
            mine = pl.col("connector_id").is_in(shards[k].implode() if k else rest)
            return frame.filter(mine if k else ~mine)

        def score_one(k: int) -> ScoreResult:
            rows = wide.filter(pl.Series(where == k))
            return self._score_batch(rows, part(state, k), part(facts, k))

        parts = in_threads(score_one, list(range(len(shards))), n_jobs)
        # Input position of each shard's rows, shard after shard: the merged frames are
        # sorted on it (stable), which interleaves the shards back into input order.
        positions = pl.DataFrame(
            {
                "sync_id": pl.concat([p.results["sync_id"] for p in parts]),
                "_pos": np.concatenate([np.flatnonzero(where == k) for k in range(len(parts))]),
            }
        )

        def in_input_order(frames: list[pl.DataFrame]) -> pl.DataFrame:
            # Only the parts with rows: a part with none may have the columns of an empty
            # frame in another order (as one pass without any would).
            frames = [f for f in frames if f.height] or frames[:1]
            return (
                pl.concat([f.select(frames[0].columns) for f in frames])
                .join(positions, on="sync_id", how="left", maintain_order="left")
                .sort("_pos", maintain_order=True)
                .drop("_pos")
            )

        return ScoreResult(
            results=in_input_order([p.results for p in parts]),
            reasons=in_input_order([p.reasons for p in parts]),
            rule_hits=in_input_order([p.rule_hits for p in parts]),
            state=pl.concat([p.state for p in parts]).sort("connector_id", "measure"),
            facts=pl.concat([p.facts for p in parts]).sort("connector_id"),
        )

    def _score_batch(
        self, wide: pl.DataFrame, state: pl.DataFrame | None, facts: pl.DataFrame | None
    ) -> ScoreResult:
        """:meth:`score` of a decoded batch in one pass (two, with new pauses)."""
        syncs, measures = prepare(wide)
        facts = facts if facts is not None else pl.DataFrame(schema=FACTS_SCHEMA)
        first = self._score_pass(syncs, measures, state, facts, None)
        already = facts.filter(pl.col("state_paused")).select("connector_id")
        new_pauses = (
            first["decided"]
            .filter(pl.col("decision") == "pause")
            .join(already, on="connector_id", how="anti")
            .group_by("connector_id")
            .agg((pl.col("seq").min() + 1).alias("paused_seq"))
        )
        # Connectors are judged independently, so only those with a new pause need the
        # second pass, and of theirs only the syncs after the pause: the earlier ones are
        # judged in the same mode against the same references in both passes.
        new_pauses = new_pauses.join(
            first["syncs"].group_by("connector_id").agg(pl.col("seq").max().alias("_last")),
            on="connector_id",
        ).filter(pl.col("paused_seq") <= pl.col("_last")).drop("_last")
        final = first
        if new_pauses.height:
            mine = pl.col("connector_id").is_in(new_pauses["connector_id"].implode())
            syncs_p = syncs.filter(mine)
            second = self._score_pass(
                syncs_p,
                measures.filter(pl.col("row").is_in(syncs_p["row"].implode())),
                None if state is None else state.filter(mine),
                facts.filter(mine),
                new_pauses,
            )
            final = _merge_passes(first, second)
        return self._result(final, state, facts)

    def _score_pass(self, syncs, measures, state, facts, paused_from):
        """One vectorised pass; with ``paused_from``, only its connectors' syncs from
        ``paused_seq`` on are judged (features, times and cold-start intervals still come
        from every sync given, so the first judged sync has its references)."""
        syncs, features = build_features(
            syncs, measures, state=state, connector_facts=facts, paused_from_seq=paused_from
        )
        known = set(self.intervals_.filter(pl.col("n_syncs") >= self.min_history)["connector_id"])
        intervals = score_intervals(syncs, self.intervals_)
        if paused_from is not None:
            syncs = (
                syncs.join(paused_from, on="connector_id", how="inner")
                .filter(pl.col("seq") >= pl.col("paused_seq"))
                .drop("paused_seq")
            )
            features = features.filter(pl.col("row").is_in(syncs["row"].implode()))
        ivals = intervals.select("connector_id", "interval_s")
        is_own = pl.col("connector_id").is_in(list(known))
        modelled = _modelled(features)
        own_rows = modelled.filter(is_own)
        pooled_kinds = set(self.pooled_baseline_.series_["connector_kind"].unique())
        cold_rows = modelled.filter(~is_own).with_columns(
            pooled_group(pooled_kinds).alias("connector_kind")
        )
        resid = self.baseline_.residuals(own_rows, ivals)
        pooled_resid = self.pooled_baseline_.residuals(
            cold_rows, ivals, against_reference=pl.lit(True)
        )
        width = int(self.columns_["col"].max()) + 1
        parts = []
        for frame, key in ((resid, "connector_id"), (pooled_resid, "connector_kind")):
            if frame.height:
                # The family maxima as sparse entries: a dense syncs x families matrix is
                # mostly zeros (~35 MB for 12,000 syncs), and its scatter and copies cost
                # more than the entries' few reads.
                frame = frame.with_columns(pl.col(key).alias("group"))
                parts.append(self._matrix(frame, width, families="sparse"))
        if parts:
            x, rows, groups = (np.concatenate([p[k] for p in parts]) for k in range(3))
            offsets = np.cumsum([0] + [len(p[0]) for p in parts[:-1]])
            fam = Families.concat([p[3].shifted(n) for p, n in zip(parts, offsets, strict=True)])
        else:
            x, rows, groups = np.zeros((0, width)), np.zeros(0, np.int64), np.zeros(0, np.int64)
            fam = Families.concat([])
        p = self._tail_probability(x, fam, rows, groups, syncs)
        scored = pl.DataFrame(
            {"row": rows.astype(np.uint32), "tail_probability": p, "group_index": groups}
        )
        # Only residuals far enough out to be a reason, or to have moved, are read after
        # this: the rest is left behind here.
        outlying = pl.col("z").abs() >= min(REASON_Z, OUTLYING_Z)
        all_resid = pl.concat(
            [resid.filter(outlying), pooled_resid.filter(outlying)], how="diagonal_relaxed"
        )
        scored = scored.join(_review_only(all_resid), on="row", how="left")
        # Each connector's policy and per-sync budget, once: the rules and the decision
        # both read it.
        budgets = self._budgets(
            syncs.select("connector_id", "connector_kind")
            .unique()
            .join(ivals, on="connector_id", how="left")
        )
        hits = rule_hits(
            syncs,
            features,
            intervals=ivals,
            expected_resources=self.expected_resources_,
            largest_losses=self.largest_losses_,
            rare_event_rates=self._rare_event_rates(syncs, budgets),
        )
        decided = self._decide(syncs, scored, hits, budgets, known)
        return {
            "syncs": syncs,
            "features": features,
            "resid": all_resid,
            "hits": hits,
            "decided": decided,
        }

    def _rare_event_rates(self, syncs: pl.DataFrame, budgets: pl.DataFrame) -> pl.DataFrame:
        """Each connector's learned rates of ``partial`` syncs and of repeated data (its
        kind's when cold), and the per-sync false-pause rate its budget allows:
        ``connector_id, partial_rate, alpha`` and the columns of
        :data:`~detector.rules.REPEAT_RATES`. ``budgets``: :meth:`_budgets` of the syncs'
        connectors."""
        measures = {"partial_rate": "sync.partial"} | {
            column: measure for measure, column in REPEAT_RATES.items()
        }

        def rates(base: SeasonalBaseline) -> pl.DataFrame:
            out = base.series_.select(base.key).unique()
            for name, measure in measures.items():
                learned = base.series_.filter(pl.col("measure") == measure)
                out = out.join(
                    learned.select(base.key, pl.col("rate").alias(name)), on=base.key, how="left"
                )
            return out

        conn = syncs.select("connector_id", "connector_kind").unique()
        return (
            conn.join(rates(self.baseline_), on="connector_id", how="left")
            .join(rates(self.pooled_baseline_), on="connector_kind", how="left", suffix="_kind")
            .join(budgets.select("connector_id", "alpha"), on="connector_id", how="left")
            .select(
                "connector_id",
                *(pl.coalesce(name, f"{name}_kind").alias(name) for name in measures),
                "alpha",
            )
        )

    def _tail_probability(self, x, fam, rows, groups, syncs) -> np.ndarray:
        """Calibrated tail probability of each sync, per its connector's mode."""
        if not len(x):
            return np.zeros(0)
        paused_rows = syncs.filter(pl.col("judged_paused"))["row"].to_numpy()
        paused = np.isin(rows, paused_rows)
        p = np.empty(len(x))
        # Every number here is a sync's own (row by row the same whatever the block), so
        # syncs go through in blocks: the walk's and the calibrators' temporaries (syncs x
        # trees, entries x quantiles) then stay small enough to be reused from the heap and
        # the caches, where a whole batch's were fresh pages mapped for each step.
        for lo in range(0, len(x), _SCORE_BLOCK_ROWS):
            block = slice(lo, lo + _SCORE_BLOCK_ROWS)
            g, out = groups[block], p[block]
            forest_s = self.forest_.score_samples(x[block], g)
            # Each sync through its own mode's calibrators only.
            for mode, mine in zip(_MODES, (~paused[block], paused[block]), strict=True):
                if mine.any():
                    mine_fam = fam[block].where(mine)
                    stat = self._combined_statistic(forest_s[mine], mine_fam, g[mine], mode)
                    out[mine] = self.calibrators_["combined" + mode].tail_probability(stat, g[mine])
        return p

    def _budgets(self, connectors: pl.DataFrame) -> pl.DataFrame:
        """Each connector's policy (:meth:`Policy.table`) and ``alpha``, the per-sync
        false-pause rate of its budget at its usual interval (a day when unknown).
        ``connectors``: ``connector_id, connector_kind, interval_s``."""
        policy = self.policy_.table(connectors.select("connector_id", "connector_kind"))
        out = connectors.select("connector_id", "interval_s").join(
            policy, on="connector_id", how="left"
        )
        alpha = Policy.alpha(
            out["budget_per_day"].to_numpy(), out["interval_s"].fill_null(86400.0).to_numpy()
        )
        return out.with_columns(pl.Series("alpha", alpha))

    def _decide(self, syncs, scored, hits, budgets, known) -> pl.DataFrame:
        frame = (
            syncs.join(scored, on="row", how="left")
            .join(budgets, on="connector_id", how="left")
            .join(hits.group_by("row").agg(pl.len().alias("n_rules")), on="row", how="left")
            .with_columns(pl.col("tail_probability").fill_null(1.0))
        )
        breach = pl.col("tail_probability") < pl.col("alpha")
        rules = pl.col("n_rules").fill_null(0) > 0
        review = (pl.col("on_breach") == "review") | pl.col("review_only").fill_null(False)
        decision = (
            pl.when(rules)
            .then(pl.lit("pause"))
            .when(breach & review)
            .then(pl.lit("review"))
            .when(breach)
            .then(pl.lit("pause"))
            .otherwise(pl.lit("proceed"))
        )
        severity = (
            pl.when(decision == "pause")
            .then(pl.col("severity"))
            .when(decision == "review")
            .then(pl.lit("low"))
            .otherwise(pl.lit("info"))
        )
        return frame.with_columns(
            decision.alias("decision"),
            severity.alias("severity"),
            (-pl.col("tail_probability").clip(lower_bound=1e-300).log10())
            .clip(lower_bound=0.0)
            .alias("score"),
            (-pl.col("alpha").log10()).alias("cutoff"),
            (~pl.col("connector_id").is_in(list(known))).alias("cold_start"),
        )

    def _result(self, final, state, facts) -> ScoreResult:
        decided = final["decided"]
        paused_after = (
            (pl.col("decision") == "pause")
            .cast(pl.Int32)
            .cum_sum()
            .over("connector_id", order_by="seq")
            > 0
        ) | pl.col("paused")
        decided = decided.with_columns(paused_after.alias("connector_paused"))
        results = decided.sort("row").select(
            "sync_id",
            "connector_id",
            "connector_kind",
            "started_at",
            "decision",
            "severity",
            "criticality",
            "score",
            "cutoff",
            "tail_probability",
            "connector_paused",
            "cold_start",
            "paused",
        )
        flagged = decided.filter(pl.col("decision") != "proceed")["row"]
        resid = final["resid"].filter(pl.col("row").is_in(flagged.implode()))
        baseline_rows = []
        # A connector with a model of its own is explained by it alone; the pooled model
        # explains cold-start connectors only (else each reason would come twice).
        own_ids = self.baseline_.series_["connector_id"].unique()
        own = pl.col("connector_id").is_in(own_ids.implode())
        for base, rows in ((self.baseline_, own), (self.pooled_baseline_, ~own)):
            part = resid.filter(rows)
            if part.height:
                baseline_rows.append(base.expected_raw(part))
        explained = pl.concat(baseline_rows, how="diagonal_relaxed") if baseline_rows else None
        ids = decided.select("row", "sync_id")
        reasons = (
            reasons_frame(explained, flagged).join(ids, on="row").sort("row", "rank")
            if explained is not None and explained.height
            else pl.DataFrame(
                schema={
                    "sync_id": pl.String,
                    "rank": pl.Int64,
                    "metric": pl.String,
                    "observed": pl.Float64,
                    "expected": pl.Float64,
                    "range_lo": pl.Float64,
                    "range_hi": pl.Float64,
                    "distance": pl.Float64,
                    "description": pl.String,
                }
            )
        )
        hits = final["hits"].join(ids, on="row").sort("row", maintain_order=True)
        new_state, new_facts = next_state(
            final["syncs"], final["features"], state, facts, decided=decided
        )
        return ScoreResult(
            results=results,
            reasons=reasons.drop("row", strict=False),
            rule_hits=hits.select("sync_id", "rule", "detail"),
            state=new_state,
            facts=new_facts,
        )

    # ============================================================ persistence
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """Everything fitted as plain arrays plus a JSON-able config (no pickle)."""
        self._check_fitted()
        frames = {
            "intervals": self.intervals_,
            "columns": self.columns_,
            "expected_resources": self.expected_resources_,
            "largest_losses": self.largest_losses_,
            "baseline.series": self.baseline_.series_,
            "baseline.profile": self.baseline_.profile_,
            "pooled.series": self.pooled_baseline_.series_,
            "pooled.profile": self.pooled_baseline_.profile_,
            "baseline.hours": self.baseline_.hours_,
            "pooled.hours": self.pooled_baseline_.hours_,
        }
        arrays, schemas = frames_to_arrays(frames)
        arrays.update({f"forest/{k}": v for k, v in self.forest_.arrays_.items()})
        for key, cal in self.calibrators_.items():
            arrays.update(cal.to_arrays(f"calibration/{key}/"))
        arrays["groups"] = np.asarray(self.groups_, dtype=str)
        arrays["families"] = np.asarray(self.families_, dtype=str)
        config = {
            "n_estimators": self.n_estimators,
            "max_samples": self.max_samples,
            "min_history": self.min_history,
            "baseline_method": self.baseline_method,
            "random_state": self.random_state,
            "loss_weight": self.loss_weight,
            "pooled_max_connectors": self.pooled_max_connectors,
            "screen_history": self.screen_history,
            "min_logit_records": self.baseline_.min_logit_records,
            "history_end": None if self.history_end_ is None else self.history_end_.isoformat(),
            "frames": schemas,
            "policy": {
                "criticalities": self.policy_.criticalities,
                "rules": list(self.policy_.rules),
                "default_criticality": self.policy_.default_criticality,
            },
        }
        return arrays, config

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], config: Mapping) -> FleetModel:
        """Rebuild a fitted model from :meth:`to_arrays` output."""
        model = cls(
            n_estimators=config["n_estimators"],
            max_samples=config["max_samples"],
            min_history=config["min_history"],
            baseline_method=config["baseline_method"],
            random_state=config["random_state"],
            # Files from before the weighting were calibrated unweighted.
            loss_weight=config.get("loss_weight", 1.0),
            # Files written before pooled models were sampled pooled every connector.
            pooled_max_connectors=config.get("pooled_max_connectors"),
            # Files written before screening were fitted on all of their history.
            screen_history=config.get("screen_history", False),
        )
        frame = functools.partial(frame_from_arrays, arrays, config["frames"])
        model.intervals_ = frame("intervals")
        end = config.get("history_end")
        model.history_end_ = datetime.fromisoformat(end) if end else None
        model.columns_ = frame("columns")
        model.expected_resources_ = frame("expected_resources")
        # Files written before the loss rule lack the table: the rule then stays silent.
        model.largest_losses_ = frame(
            "largest_losses", older=pl.DataFrame(schema=LARGEST_LOSSES_SCHEMA)
        )
        if "sharp_loss_rate" not in model.largest_losses_.columns:
            # Files written before it: truncated_listing speaks for every type, as then.
            model.largest_losses_ = model.largest_losses_.with_columns(
                pl.lit(None, dtype=pl.Float64).alias("sharp_loss_rate")
            )
        # Files written before were calibrated on the logit scale above 100 records.
        logit_records = config.get("min_logit_records", 0.0)
        base = SeasonalBaseline(
            method=config["baseline_method"], min_logit_records=logit_records
        )
        pooled = SeasonalBaseline(key="connector_kind", min_logit_records=logit_records)
        for name, baseline in (("baseline", base), ("pooled", pooled)):
            baseline.series_, baseline.profile_ = frame(f"{name}.series"), frame(f"{name}.profile")
            # Files written before hour offsets: every hour at its block's level, as then.
            baseline.hours_ = frame(f"{name}.hours", older=empty_hours(baseline.key))
        model.baseline_, model.pooled_baseline_ = base, pooled
        model.forest_ = ArrayIsolationForest.from_arrays(
            {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("forest/")}
        )
        model.calibrators_ = {
            key: TailCalibrator.from_arrays(arrays, f"calibration/{key}/") for key in _CALIBRATORS
        }
        model.groups_ = [str(g) for g in arrays["groups"]]
        model.families_ = [str(f) for f in arrays["families"]]
        pol = config["policy"]
        model.policy_ = Policy(
            criticalities=pol["criticalities"],
            rules=tuple(pol["rules"]),
            default_criticality=pol["default_criticality"],
        )
        model.policy = model.policy_
        return model


# ---------------------------------------------------------------- helpers
def _review_only(resid: pl.DataFrame) -> pl.DataFrame:
    """``row, review_only`` of each sync with a residual that moved (see :mod:`review`)."""
    moved = resid.filter(pl.col("z").abs() >= OUTLYING_Z)
    rows, codes = np.unique(moved["row"].to_numpy(), return_inverse=True)
    names = pl.concat_str(pl.col("measure"), residual_sign(pl.col("z")))
    flags = review_only(
        codes, moved.select(names)[:, 0].to_numpy(), len(rows), moved["z"].to_numpy()
    )
    return pl.DataFrame({"row": rows, "review_only": flags}, schema_overrides={"row": pl.UInt32})


def _merge_passes(first: dict, second: dict) -> dict:
    """The first scoring pass with the syncs the second one judged taken from it.

    Only what :meth:`FleetModel._result` reads is merged: the residuals of flagged syncs
    (the reasons); the feature columns the next state is built from (values and times) are
    the same in both passes, so the first pass's are kept whole. Rows are not re-sorted:
    ``_result`` orders what it returns by ``row`` (rule hits keep their order within a
    row), so nothing depends on frame order.
    """
    keep = ~pl.col("row").is_in(second["syncs"]["row"].implode())

    def flagged(part: dict) -> pl.DataFrame:
        rows = part["decided"].filter(pl.col("decision") != "proceed")["row"].implode()
        return part["resid"].filter(pl.col("row").is_in(rows))

    out = {
        key: pl.concat([first[key].filter(keep), second[key]], how="diagonal_relaxed")
        for key in ("syncs", "decided", "hits")
    }
    out["resid"] = pl.concat([flagged(first).filter(keep), flagged(second)],
                             how="diagonal_relaxed")
    out["features"] = first["features"].select(NEXT_STATE_COLUMNS)
    return out


class _FitData(NamedTuple):
    """What the baselines and forests of a fit are fitted from, once calibrated."""

    per_connector: pl.DataFrame
    pooled: pl.DataFrame
    ivals: pl.DataFrame
    group_index: dict[str, int]

