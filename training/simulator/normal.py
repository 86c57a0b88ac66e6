"""Normal life of one connector: schedule, seasonal churn, counts, API behaviour.

The simulation runs in two layers so faults can be laid on top honestly:

1. the *true* state of the source system (``State.C``: how many records really
   exist, and the true churn ``a``/``r``/``m`` that produced them), and
2. what the connector *reports* (``State.R``, duplicates, status, API figures),
   which equals the truth on a normal sync and departs from it during a fault.

:func:`draw_connector` fixes a connector's personality, :func:`simulate_truth`
draws its true path, :func:`finalize` derives the reported churn, API figures,
null rates and metrics (vectorised per connector), and :func:`render` turns the
arrays into sync-record dicts.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import numpy as np

from .holidays import day_factors
from .kinds import ENTITLEMENT_ROLES, REGIONS, SEASONALITY, KindSpec

__all__ = ["INTERVALS_H", "Connector", "State", "draw_connector", "finalize", "render",
           "simulate_truth"]

INTERVALS_H = (1, 2, 4, 6, 12, 24)
_INTERVAL_WEIGHTS = np.array([0.08, 0.1, 0.2, 0.22, 0.18, 0.22])

# Relative human activity by local hour of day (peak = 1): ramps up from 07:00,
# dips at lunch, tails off after 18:00.
_DAY_PROFILE = np.array([
    0.05, 0.04, 0.03, 0.03, 0.03, 0.05, 0.12, 0.35, 0.75, 1.0, 1.0, 1.0,
    0.85, 0.95, 1.0, 1.0, 0.9, 0.65, 0.35, 0.2, 0.12, 0.09, 0.07, 0.06,
])
_HOUR = 3600
_DAY = 86400
_MONTH_H = 30 * 24


@dataclass
class Connector:
    """Everything fixed about one simulated connector (its personality)."""

    index: int
    connector_id: str
    spec: KindSpec
    tz: str
    region: str
    interval_h: int
    page_size: int
    sizes: dict[str, int]
    turnover: dict[str, float]
    modify: dict[str, float]
    follows: dict[str, float]
    null_fields: dict[str, tuple[str, ...]]
    null_logit: dict[str, np.ndarray]
    null_trend: dict[str, np.ndarray]
    drift: float
    dispersion: float
    monday_bump: float
    friday_bump: float
    latency_p50: float
    latency_load: float
    tail_ratio: float
    err_per_100: float
    concurrency: int
    aux_requests: int
    record_ms: float
    overhead_s: float
    burst_per_day: float
    metric_base: dict[str, float] = field(default_factory=dict)

    @property
    def types(self) -> list[str]:
        """Resource type names, primary first."""
        return [r.name for r in self.spec.resources]

    @property
    def primary(self) -> str:
        """Primary resource type name."""
        return self.spec.primary.name

    def entitlement_types(self) -> list[str]:
        """Types that hold access (memberships, grants, bindings, entitlements)."""
        return [r.name for r in self.spec.resources if r.role in ENTITLEMENT_ROLES]

    @property
    def small_app(self) -> bool:
        """A SaaS app with fewer than 200 users, where whole teams come and go at once."""
        return self.spec.family == "saas" and self.sizes[self.primary] < 200


@dataclass
class State:
    """Arrays for one connector's syncs (index i = i-th sync in time)."""

    conn: Connector
    t: np.ndarray                      # started_at, epoch seconds (int64)
    load: np.ndarray                   # business-hour load at start, 0..1
    weekday: np.ndarray                # local day of week, Mon=0
    local_hour: np.ndarray             # local hour of day
    C: dict[str, np.ndarray]           # true count after sync i
    a: dict[str, np.ndarray]           # true adds since sync i-1
    r: dict[str, np.ndarray]           # true removes since sync i-1
    m: dict[str, np.ndarray]           # true modifies since sync i-1
    R: dict[str, np.ndarray] = field(default_factory=dict)        # reported unique records
    dup: dict[str, np.ndarray] = field(default_factory=dict)      # reported duplicates
    mod_extra: dict[str, np.ndarray] = field(default_factory=dict)
    p_null: dict[str, np.ndarray] = field(default_factory=dict)   # (n, fields) null probability
    status: np.ndarray | None = None
    error_class: np.ndarray | None = None
    has_res: np.ndarray | None = None
    frozen_src: np.ndarray | None = None
    no_metrics: np.ndarray | None = None
    lat_mult: np.ndarray | None = None
    req_mult: np.ndarray | None = None
    err_add: np.ndarray | None = None
    retry_add: np.ndarray | None = None
    override: dict[str, np.ndarray] = field(default_factory=dict)  # NaN = no override
    label: np.ndarray | None = None
    cls: np.ndarray | None = None
    episode: np.ndarray | None = None
    out: dict[str, object] = field(default_factory=dict)          # finalised figures

    @property
    def n(self) -> int:
        """Number of syncs."""
        return len(self.t)


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _logit(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)


def draw_connector(kind: KindSpec, index: int, ordinal: int, rng: np.random.Generator, *,
                   big: bool = False) -> Connector:
    """Draw one connector's fixed parameters.

    Parameters
    ----------
    kind : KindSpec
        The connector kind.
    index : int
        Position in the fleet (used only for bookkeeping).
    ordinal : int
        How many connectors of this kind came before (names ``okta-acme-07``).
    rng : numpy.random.Generator
        The connector's own random stream.
    big : bool, default False
        Force a large directory (>= 50,000 users) so subtle partial faults exist.

    Returns
    -------
    Connector
    """
    tenant = kind.tenants[ordinal % len(kind.tenants)]
    connector_id = f"{kind.kind}-{tenant}-{ordinal + 1:02d}"
    tz, region = REGIONS[int(rng.integers(len(REGIONS)))]
    if big:
        primary_size = int(_loguniform(rng, 50_000, 200_000))
    else:
        primary_size = int(_loguniform(rng, *kind.size_range))
    interval = int(rng.choice(INTERVALS_H, p=_INTERVAL_WEIGHTS / _INTERVAL_WEIGHTS.sum()))
    if primary_size > 100_000 and interval == 1:
        interval = 2  # nobody full-syncs 100k users plus memberships every hour

    sizes: dict[str, int] = {}
    turnover: dict[str, float] = {}
    modify: dict[str, float] = {}
    follows: dict[str, float] = {}
    null_fields: dict[str, tuple[str, ...]] = {}
    null_logit: dict[str, np.ndarray] = {}
    null_trend: dict[str, np.ndarray] = {}
    for res in kind.resources:
        if res.role == "primary":
            sizes[res.name] = primary_size
            ratio = 1.0
        else:
            ratio = _loguniform(rng, *res.size_ratio)
            sizes[res.name] = int(res.size_floor + ratio * primary_size)
        turnover[res.name] = _loguniform(rng, *res.turnover)
        lo, hi = res.modify_per_day
        modify[res.name] = rng.uniform(lo, hi) if hi > 0 else 0.0
        # A new user brings a share of the average memberships/grants with them.
        follows[res.name] = ratio * rng.uniform(0.4, 0.9) if res.follows else 0.0
        names = tuple(res.fields)
        base = np.array([res.fields[f] for f in names], dtype=float)
        # Jitter each connector's base rate in logit space: tenants differ in how
        # well they fill attributes, but a never-null field stays never-null.
        logit = _logit(np.clip(base, 0.0, 0.999)) + rng.normal(0.0, 0.35, len(names))
        null_fields[res.name] = names
        null_logit[res.name] = logit
        # Data quality drifts slowly (clean-up projects, new onboarding flows).
        null_trend[res.name] = rng.normal(0.0, 0.08, len(names))

    metric_base = {
        "mfa_enrolled_ratio": rng.uniform(0.85, 0.99),
        "mfa_registered_ratio": rng.uniform(0.8, 0.98),
        "guest_ratio": rng.uniform(0.01, 0.15),
        "contingent_worker_ratio": rng.uniform(0.03, 0.25),
        "outside_collaborator_ratio": rng.uniform(0.0, 0.2),
        "license_headroom": rng.uniform(1.02, 1.3),
        "unused_role_ratio": rng.uniform(0.1, 0.5),
        "leases_per_token": rng.uniform(1.2, 3.0),
        "mfa_trend": rng.uniform(0.0, 0.08),
    }
    season = SEASONALITY[kind.family]
    return Connector(
        index=index, connector_id=connector_id, spec=kind, tz=tz, region=region,
        interval_h=interval, page_size=int(rng.choice(kind.page_sizes)), sizes=sizes,
        turnover=turnover, modify=modify, follows=follows, null_fields=null_fields,
        null_logit=null_logit, null_trend=null_trend,
        drift=float(np.clip(rng.normal(0.01, 0.02), -0.04, 0.06)),
        dispersion=rng.uniform(3.0, 15.0),
        monday_bump=rng.uniform(1.4, 2.2), friday_bump=rng.uniform(1.3, 2.0),
        latency_p50=rng.uniform(*kind.latency_p50_ms),
        latency_load=rng.uniform(*season.latency_load),
        tail_ratio=rng.uniform(1.8, 3.5),
        err_per_100=_loguniform(rng, 0.002, 0.05),
        concurrency=int(rng.integers(1, 5)),
        aux_requests=int(rng.integers(1, 6)),
        record_ms=rng.uniform(0.01, 0.08),
        overhead_s=rng.uniform(2.0, 15.0),
        burst_per_day=rng.uniform(1 / 21, 1 / 9),
        metric_base=metric_base,
    )


def _schedule(conn: Connector, start_s: int, days: int, rng: np.random.Generator,
              offset_at_start: int) -> np.ndarray:
    """Sync start times (epoch s): a fixed cadence plus small start jitter."""
    step = conn.interval_h * _HOUR
    if conn.interval_h >= 12:
        # Daily and twice-daily full syncs run in the local small hours.
        local_target = int(rng.uniform(1.0, 4.0) * _HOUR)
        phase = (local_target - offset_at_start) % step
    else:
        phase = int(rng.integers(0, step // 60)) * 60
    sched = start_s + phase + step * np.arange(int(days * _DAY // step) + 1, dtype=np.int64)
    sched = sched[sched < start_s + days * _DAY]
    n = len(sched)
    jitter = rng.uniform(0, 90, n) + rng.exponential(30, n)
    # Now and then the scheduler or a queue holds a sync back a few minutes.
    jitter += (rng.random(n) < 0.01) * rng.uniform(120, 900, n)
    return sched + jitter.astype(np.int64)


def _local_grid(conn: Connector, g: np.ndarray, start_s: int) -> tuple[np.ndarray, ...]:
    """Local hour, weekday and holiday factor for UTC epoch seconds ``g``."""
    zone = ZoneInfo(conn.tz)
    day0 = (int(g.min()) // _DAY) - 1
    n_days = int(g.max()) // _DAY - day0 + 2
    # One zone look-up per UTC day is enough: DST moves at night.
    offsets = np.array([
        int(dt.datetime.fromtimestamp((day0 + k) * _DAY + 12 * _HOUR, zone)
            .utcoffset().total_seconds())
        for k in range(n_days)
    ], dtype=np.int64)
    local = g + offsets[g // _DAY - day0]
    local_day = local // _DAY
    hour = (local % _DAY) // _HOUR
    weekday = (local_day + 3) % 7  # 1970-01-01 was a Thursday
    uniq = np.unique(local_day)
    dates = [dt.date(1970, 1, 1) + dt.timedelta(days=int(d)) for d in uniq]
    season = SEASONALITY[conn.spec.family]
    factors = np.array(day_factors(conn.region, dates, season.holiday))
    holiday = factors[np.searchsorted(uniq, local_day)]
    return hour, weekday, holiday


def _intensities(conn: Connector, hour: np.ndarray, weekday: np.ndarray,
                 holiday: np.ndarray) -> dict[str, np.ndarray]:
    """Hourly intensity (mean 1 over an ordinary week) for adds, removes, modifies."""
    season = SEASONALITY[conn.spec.family]
    human = season.night_floor + (1 - season.night_floor) * _DAY_PROFILE[hour]
    day = np.where(weekday < 5, 1.0, season.weekend * np.where(weekday == 6, 0.8, 1.0))
    base = human * day
    adds = base * np.where(weekday == 0, conn.monday_bump, 1.0)
    removes = base * np.where(weekday == 4, conn.friday_bump, 1.0)
    modifies = base.copy()
    if conn.spec.family == "hris":
        # HR systems apply effective-dated changes in a nightly batch.
        modifies = modifies + np.where((hour >= 1) & (hour < 3), 3.0, 0.0)

    # Normalise on an ordinary week so monthly rates mean what they say.
    wk_h = np.arange(168) % 24
    wk_d = np.arange(168) // 24
    wk_human = season.night_floor + (1 - season.night_floor) * _DAY_PROFILE[wk_h]
    wk_day = np.where(wk_d < 5, 1.0, season.weekend * np.where(wk_d == 6, 0.8, 1.0))
    wk = wk_human * wk_day
    norm_add = (wk * np.where(wk_d == 0, conn.monday_bump, 1.0)).mean()
    norm_rem = (wk * np.where(wk_d == 4, conn.friday_bump, 1.0)).mean()
    norm_mod = wk.mean()
    if conn.spec.family == "hris":
        norm_mod = (wk + np.where((wk_h >= 1) & (wk_h < 3), 3.0, 0.0)).mean()
    return {
        "add": adds * holiday / norm_add,
        "remove": removes * holiday / norm_rem,
        "modify": modifies * holiday / norm_mod,
        # Tokens and other machine churn barely notice people.
        "flat": (0.7 + 0.3 * base / wk.mean()) * np.sqrt(holiday),
    }


def _nb(rng: np.random.Generator, mean: np.ndarray, k: float) -> np.ndarray:
    """Negative-binomial counts (gamma-Poisson) with mean ``mean`` and shape ``k``."""
    mean = np.maximum(mean, 0.0)
    return rng.poisson(mean * rng.gamma(k, 1.0 / k, mean.shape)).astype(np.int64)


def simulate_truth(conn: Connector, start_s: int, days: int,
                   rng: np.random.Generator) -> State:
    """Draw the true state path of one connector over the window.

    Parameters
    ----------
    conn : Connector
        The connector.
    start_s : int
        Window start, epoch seconds (UTC).
    days : int
        Window length in days.
    rng : numpy.random.Generator
        The connector's own random stream.

    Returns
    -------
    State
        With ``t``, ``load`` and the true ``C``/``a``/``r``/``m`` filled in;
        counts are re-derived by :func:`recount` after access reviews.
    """
    zone = ZoneInfo(conn.tz)
    off0 = int(dt.datetime.fromtimestamp(start_s, zone).utcoffset().total_seconds())
    t = _schedule(conn, start_s, days, rng, off0)
    n = len(t)
    step = conn.interval_h * _HOUR

    # Hourly grid covering the interval before the first sync to the last one.
    g0 = (int(t[0]) - step) // _HOUR * _HOUR - _HOUR
    grid = np.arange(g0, int(t[-1]) + 2 * _HOUR, _HOUR, dtype=np.int64)
    hour, weekday, holiday = _local_grid(conn, grid, start_s)
    inten = _intensities(conn, hour, weekday, holiday)

    # Expected events between consecutive syncs = integral of hourly intensity.
    pos = (t - g0) / _HOUR
    prev = np.concatenate([[pos[0] - conn.interval_h], pos[:-1]])
    xs = np.arange(len(grid) + 1, dtype=float)
    exposure = {}
    for key, w in inten.items():
        cum = np.concatenate([[0.0], np.cumsum(w)])
        exposure[key] = np.interp(pos, xs, cum) - np.interp(prev, xs, cum)  # hours-equivalent

    sync_hour = hour[np.floor(pos).astype(np.int64)]
    sync_wd = weekday[np.floor(pos).astype(np.int64)]
    load = np.where(sync_wd < 5, _DAY_PROFILE[sync_hour], 0.15 * _DAY_PROFILE[sync_hour])
    months = (t - start_s) / (30 * _DAY)
    growth = np.exp(conn.drift * months)  # slow per-connector growth or shrink

    a: dict[str, np.ndarray] = {}
    r: dict[str, np.ndarray] = {}
    m: dict[str, np.ndarray] = {}
    C: dict[str, np.ndarray] = {}
    k = conn.dispersion
    primary = conn.primary
    for res in conn.spec.resources:
        name = res.name
        size = conn.sizes[name] * growth
        turn = conn.turnover[name]
        if res.mean_reverting:
            a[name], r[name] = _mean_reverting(conn, name, size, exposure["flat"], rng)
        else:
            up = turn + max(conn.drift, 0.0)
            down = turn + max(-conn.drift, 0.0)
            a[name] = _nb(rng, size * up / _MONTH_H * exposure["add"], k)
            r[name] = _nb(rng, size * down / _MONTH_H * exposure["remove"], k)
        if name != primary and conn.follows[name]:
            fk = conn.follows[name]
            a[name] += rng.poisson(fk * a[primary])
            r[name] += rng.poisson(fk * r[primary])
        m[name] = _nb(rng, size * conn.modify[name] / 24 * exposure["modify"], k)
        if name == primary and conn.small_app:
            _team_bursts(conn, a[name], r[name], exposure["add"], rng)
        C[name] = np.zeros(n, dtype=np.int64)

    state = State(conn=conn, t=t, load=load, weekday=sync_wd, local_hour=sync_hour,
                  C=C, a=a, r=r, m=m)
    recount(state)
    return state


def _mean_reverting(conn: Connector, name: str, size: np.ndarray, exposure: np.ndarray,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Adds and removes of short-lived records whose population hovers round a level."""
    turn = conn.turnover[name]
    lam = size * turn / _MONTH_H * exposure
    adds = rng.poisson(lam).astype(np.int64)
    level = size.astype(float)
    # Records expire roughly in proportion to how many exist: AR(1) around the level.
    phi = 0.85
    noise = rng.normal(0.0, 1.0, len(adds)) * np.sqrt(lam + 1.0) * 0.5
    count = float(level[0])
    target = np.empty(len(adds))
    for i in range(len(adds)):  # tiny loop (one token type, <= 2,200 syncs)
        count = level[i] + phi * (count - level[i]) + noise[i]
        target[i] = count
    target = np.maximum(np.rint(target), 1).astype(np.int64)
    delta = np.diff(np.concatenate([[int(level[0])], target]))
    removes = adds - delta
    neg = removes < 0
    adds = np.where(neg, adds - removes, adds)
    removes = np.where(neg, 0, removes)
    return adds, removes


def _team_bursts(conn: Connector, adds: np.ndarray, removes: np.ndarray,
                 exposure: np.ndarray, rng: np.random.Generator) -> None:
    """Whole teams joining or leaving a small app at once: normal, but startling.

    Joins are likelier when the app has shrunk below its usual size and leaves
    when it has grown, so a 40-seat app stays a 40-seat app over a quarter.
    """
    p = 1.0 - np.exp(-conn.burst_per_day * exposure / 24.0)
    hits = np.flatnonzero(rng.random(len(adds)) < p)
    size0 = conn.sizes[conn.primary]
    sizes = rng.integers(5, 16, len(hits))
    coin = rng.random(len(hits))
    level = float(size0)
    for i, k, u in zip(hits.tolist(), sizes.tolist(), coin.tolist(), strict=True):
        p_join = min(max(0.5 + 0.8 * (size0 - level) / size0, 0.1), 0.9)
        if u < p_join:
            adds[i] += k
            level += k
        else:
            k = min(k, max(int(0.35 * level), 1))
            removes[i] += k
            level -= k


def recount(state: State) -> None:
    """Derive true counts from churn, never letting a population go below its floor.

    Counts follow churn exactly: ``C[i] = C[i-1] + a[i] - r[i]``. Where removals
    would drive a small population below its floor, they are trimmed in place.
    """
    conn = state.conn
    for name in conn.types:
        c0 = conn.sizes[name]
        floor = 1 if name == conn.primary else 0
        c = c0 + np.cumsum(state.a[name] - state.r[name])
        if c.min() < floor:
            a, r = state.a[name], state.r[name]
            prev = c0
            for i in range(len(c)):  # rare: only tiny sets that shrink hard
                r[i] = min(r[i], max(prev + a[i] - floor, 0))
                prev = prev + a[i] - r[i]
            c = c0 + np.cumsum(a - r)
        state.C[name] = c.astype(np.int64)


def init_reported(state: State, rng: np.random.Generator) -> None:
    """Reported state of a fault-free connector: the truth, plus benign noise."""
    n = state.n
    conn = state.conn
    months = (state.t - state.t[0]) / (30 * _DAY)
    for name in conn.types:
        state.R[name] = state.C[name].copy()
        dup = np.zeros(n, dtype=np.int64)
        # Large sets now and then carry one or two records sharing a key; kinds
        # that do not report duplicates de-duplicate before counting.
        big = (state.C[name] >= 50_000) & conn.spec.reports_duplicates
        hit = big & (rng.random(n) < 0.02)
        dup[hit] = 1 + (rng.random(int(hit.sum())) < 0.3)
        state.dup[name] = dup
        state.mod_extra[name] = np.zeros(n, dtype=np.int64)
        logit = conn.null_logit[name][None, :] + conn.null_trend[name][None, :] * months[:, None]
        state.p_null[name] = 1.0 / (1.0 + np.exp(-logit))
    state.status = np.full(n, "succeeded", dtype=object)
    state.error_class = np.full(n, None, dtype=object)
    state.has_res = np.ones(n, dtype=bool)
    state.frozen_src = np.full(n, -1, dtype=np.int64)
    state.no_metrics = np.zeros(n, dtype=bool)
    state.lat_mult = np.ones(n)
    state.req_mult = np.ones(n)
    state.err_add = np.zeros(n, dtype=np.int64)
    state.retry_add = np.zeros(n, dtype=np.int64)
    for key in ("requests", "errors", "retries", "p50", "p95", "duration"):
        state.override[key] = np.full(n, np.nan)
    state.label = np.full(n, "normal", dtype=object)
    state.cls = np.full(n, "normal", dtype=object)
    state.episode = np.full(n, None, dtype=object)


def _reported_churn(state: State) -> dict[str, tuple[np.ndarray, ...]]:
    """Churn as the connector's keyed diff against its previous reported sync.

    With ``D = C - R`` (records the connector failed to return), the diff
    against the previous sync that returned data, ``p``, is the true churn since
    the state ``p`` reflected (``q``: ``p`` itself, or the snapshot a frozen
    sync replayed) plus records that vanished or came back: ``added = A +
    max(D_q - D_i, 0)``, ``removed = Rm + max(D_i - D_q, 0)``. On normal syncs
    this is exactly the true churn, and ``R[i] = R[p] + added - removed`` holds.
    """
    n = state.n
    idx = np.arange(n)
    has = state.has_res
    # p: previous index with resources (-1 = before the window).
    last = np.where(has, idx, -1)
    last = np.maximum.accumulate(last)
    p = np.concatenate([[-1], last[:-1]])
    ref = np.where(p >= 0, np.where(state.frozen_src[np.maximum(p, 0)] >= 0,
                                    state.frozen_src[np.maximum(p, 0)], p), -1)
    out = {}
    for name in state.conn.types:
        a, r, m = state.a[name], state.r[name], state.m[name]
        ca = np.concatenate([[0], np.cumsum(a)])
        cr = np.concatenate([[0], np.cumsum(r)])
        cm = np.concatenate([[0], np.cumsum(m)])
        # Sums over (ref, i]; ref = -1 means since before the first sync.
        added = ca[idx + 1] - ca[ref + 1]
        removed = cr[idx + 1] - cr[ref + 1]
        modified = cm[idx + 1] - cm[ref + 1]
        d = state.C[name] - state.R[name]
        d_ref = np.where(ref >= 0, d[np.maximum(ref, 0)], 0)
        added = added + np.maximum(d_ref - d, 0)
        removed = removed + np.maximum(d - d_ref, 0)
        # Only records the connector actually saw can show up as modified.
        seen = np.where(state.C[name] > 0, state.R[name] / np.maximum(state.C[name], 1), 0.0)
        modified = np.rint(modified * np.minimum(seen, 1.0)).astype(np.int64)
        modified = np.minimum(modified + state.mod_extra[name], state.R[name])
        frozen = state.frozen_src >= 0
        added[frozen] = 0
        removed[frozen] = 0
        modified[frozen] = 0
        out[name] = (added, removed, modified)
    return out


def finalize(state: State, rng: np.random.Generator) -> None:
    """Derive reported churn, API figures, observed null rates and metrics.

    Parameters
    ----------
    state : State
        A connector whose reported state (and fault modifiers) is set.
    rng : numpy.random.Generator
        The connector's own random stream.
    """
    conn = state.conn
    n = state.n
    churn = _reported_churn(state)
    src = state.frozen_src
    frozen = src >= 0
    take = np.where(frozen, src, np.arange(n))

    counts = {name: state.R[name] + state.dup[name] for name in conn.types}
    # A frozen snapshot replays the earlier sync byte for byte.
    for name in conn.types:
        counts[name] = counts[name][take]

    # Observed null rates: binomial noise around the rate, given the count.
    nulls = {}
    for name in conn.types:
        rc = state.R[name]
        draws = rng.binomial(rc[:, None], np.clip(state.p_null[name], 0.0, 1.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            obs = np.where(rc[:, None] > 0, draws / np.maximum(rc[:, None], 1), np.nan)
        nulls[name] = np.round(obs, 6)[take]

    # --- API figures ------------------------------------------------------------
    pages = np.zeros(n)
    for name in conn.types:
        pages += np.maximum(np.ceil(counts[name] / conn.page_size), 1)
    requests = np.rint(pages * state.req_mult) + conn.aux_requests + rng.poisson(0.3, n)
    errors = rng.poisson(conn.err_per_100 * requests / 100 * (0.5 + state.load))
    # Benign blips: one sync meets a few 5xx/429 and retries them; data intact.
    blip = rng.random(n) < 0.006
    errors = errors + blip * rng.integers(2, 7, n) + state.err_add
    retries = errors + rng.poisson(0.03, n) + state.retry_add
    requests = requests + retries
    day = (state.t - state.t[0]) // _DAY
    day_wobble = rng.normal(0.0, 0.08, int(day.max()) + 1)[day]
    p50 = (conn.latency_p50 * (1 + conn.latency_load * state.load)
           * np.exp(day_wobble + rng.normal(0.0, 0.1, n)) * state.lat_mult)
    p95 = p50 * conn.tail_ratio * (1 + 0.3 * state.load) * np.exp(rng.normal(0.0, 0.12, n))
    p95 = p95 * np.where(blip, rng.uniform(1.5, 3.0, n), 1.0)
    total = sum(counts[name] for name in conn.types)
    duration = (requests * p50 / 1000.0 / conn.concurrency + total * conn.record_ms / 1000.0
                + retries * rng.uniform(1.0, 4.0, n) + conn.overhead_s)
    duration = duration * np.exp(rng.normal(0.0, 0.05, n))
    ov = state.override
    requests = np.where(np.isnan(ov["requests"]), requests, ov["requests"])
    errors = np.where(np.isnan(ov["errors"]), errors, ov["errors"])
    retries = np.where(np.isnan(ov["retries"]), retries, ov["retries"])
    p50 = np.where(np.isnan(ov["p50"]), p50, ov["p50"])
    p95 = np.maximum(np.where(np.isnan(ov["p95"]), p95, ov["p95"]), p50)
    duration = np.where(np.isnan(ov["duration"]), duration, ov["duration"])
    finished = state.t + np.ceil(duration).astype(np.int64)

    state.out = {
        "counts": counts, "churn": churn, "nulls": nulls,
        "requests": requests.astype(np.int64), "errors": errors.astype(np.int64),
        "retries": retries.astype(np.int64), "p50": np.round(p50, 1), "p95": np.round(p95, 1),
        "finished": finished, "metrics": _metrics(state, counts, rng, take),
    }


def _metrics(state: State, counts: dict[str, np.ndarray], rng: np.random.Generator,
             take: np.ndarray) -> dict[str, np.ndarray]:
    """Kind-specific extra figures (``metrics``), computed on what was returned."""
    conn = state.conn
    base = conn.metric_base
    n = state.n
    pop = np.maximum(state.R[conn.primary], 1)
    months = (state.t - state.t[0]) / (30 * _DAY)
    out: dict[str, np.ndarray] = {}

    def ratio(p: np.ndarray | float, size: np.ndarray) -> np.ndarray:
        p = np.clip(np.broadcast_to(p, (n,)), 0.0, 1.0)
        return np.round(rng.binomial(size, p) / size, 4)

    for name in conn.spec.metrics:
        if name in ("mfa_enrolled_ratio", "mfa_registered_ratio"):
            # Enrolment campaigns push MFA coverage slowly upwards.
            logit = math.log(base[name] / (1 - base[name])) + base["mfa_trend"] * months
            out[name] = ratio(1 / (1 + np.exp(-logit)), pop)
        elif name in ("guest_ratio", "contingent_worker_ratio", "outside_collaborator_ratio",
                      "unused_role_ratio"):
            out[name] = ratio(base[name], pop)
        elif name == "license_utilization":
            # Licences are bought ahead of need and never handed back mid-quarter.
            first = math.ceil(state.C[conn.primary][0] * base["license_headroom"])
            licenses = np.maximum.accumulate(
                np.maximum(first, np.ceil(state.C[conn.primary] * 1.02)))
            out[name] = np.round(state.R[conn.primary] / licenses, 4)
        elif name == "lease_count":
            tokens = state.R.get("token", pop)
            out[name] = rng.poisson(tokens * base["leases_per_token"]).astype(float)
    return {k: v[take] for k, v in out.items()}


def _iso(ts: np.ndarray) -> list[str]:
    """Epoch seconds -> RFC 3339 UTC strings with a ``Z`` (vectorised)."""
    s = np.datetime_as_string(ts.astype("datetime64[s]"), unit="s")
    return [x + "Z" for x in s.tolist()]


def render(state: State) -> tuple[list[dict], list[dict]]:
    """Turn one finalised connector into sync-record dicts and label dicts.

    Parameters
    ----------
    state : State
        A connector after :func:`finalize`.

    Returns
    -------
    records : list of dict
        Sync records valid against ``sync-record.schema.json``, in time order.
    labels : list of dict
        One label per record, same order.
    """
    conn = state.conn
    spec = conn.spec
    o = state.out
    take = np.where(state.frozen_src >= 0, state.frozen_src, np.arange(state.n))
    started = _iso(state.t)
    finished = _iso(o["finished"])
    cid = conn.connector_id
    kind = spec.kind
    # Convert every array to Python scalars once; the per-record loop then
    # only assembles dicts.
    per_type = []
    for name in conn.types:
        added, removed, modified = o["churn"][name]
        nulls = o["nulls"][name]
        per_type.append((
            name, o["counts"][name].tolist(), added.tolist(), removed.tolist(),
            modified.tolist(), state.dup[name][take].tolist(),
            conn.null_fields[name], nulls.tolist(), (state.R[name][take] > 0).tolist(),
        ))
    requests = o["requests"].tolist()
    errors = o["errors"].tolist()
    retries = o["retries"].tolist()
    p50 = o["p50"].tolist()
    p95 = o["p95"].tolist()
    metric_items = [(k, v.tolist()) for k, v in o["metrics"].items()]
    status = state.status.tolist()
    error_class = state.error_class.tolist()
    has_res = state.has_res.tolist()
    no_metrics = state.no_metrics.tolist()
    label, cls, episode = state.label.tolist(), state.cls.tolist(), state.episode.tolist()
    rep_mod, rep_dup, rep_p95 = spec.reports_modified, spec.reports_duplicates, spec.reports_p95

    records: list[dict] = []
    labels: list[dict] = []
    for i in range(state.n):
        sync_id = f"{cid}:{started[i]}"
        rec: dict = {
            "sync_id": sync_id, "connector_id": cid, "connector_kind": kind,
            "started_at": started[i], "finished_at": finished[i],
            "status": status[i], "error_class": error_class[i],
        }
        if has_res[i]:
            resources = {}
            for name, cnt, add, rem, mod, dup, fields, nul, seen in per_type:
                stats: dict = {"count": cnt[i], "added": add[i], "removed": rem[i]}
                if rep_mod:
                    stats["modified"] = mod[i]
                if rep_dup:
                    stats["duplicates"] = dup[i]
                if seen[i]:
                    stats["null_rates"] = dict(zip(fields, nul[i], strict=True))
                resources[name] = stats
            rec["resources"] = resources
        api: dict = {"requests": requests[i], "errors": errors[i], "retries": retries[i],
                     "latency_p50_ms": p50[i]}
        if rep_p95:
            api["latency_p95_ms"] = p95[i]
        rec["api"] = api
        if has_res[i] and metric_items and not no_metrics[i]:
            rec["metrics"] = {k: v[i] for k, v in metric_items}
        records.append(rec)
        labels.append({"sync_id": sync_id, "connector_id": cid, "label": label[i],
                       "class": cls[i], "episode": episode[i]})
    return records, labels
