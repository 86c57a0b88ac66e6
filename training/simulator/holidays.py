"""Regional public holidays and seasonal lulls that damp human-driven churn.

Only the handful of days that visibly move identity churn are modelled: fixed
public holidays, Easter, the nth-weekday holidays, the year-end week, Obon and
the European August slowdown. That is enough for a detector to meet holiday
lulls that a plain hour-of-week profile does not explain.
"""

from __future__ import annotations

import datetime as dt

__all__ = ["day_factors"]


def _easter(year: int) -> dt.date:
    # Anonymous Gregorian algorithm (Meeus/Jones/Butcher).
    a = year % 19
    b, c = divmod(year, 100)
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    m = (32 + 2 * e + 2 * i - h - k) % 7
    n = (a + 11 * h + 22 * m) // 451
    month, day = divmod(h + m - 7 * n + 114, 31)
    return dt.date(year, month, day + 1)


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> dt.date:
    """The n-th ``weekday`` (Mon=0) of a month; n=-1 is the last one."""
    if n > 0:
        first = dt.date(year, month, 1)
        return first + dt.timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))
    nxt = dt.date(year + (month == 12), month % 12 + 1, 1)
    last = nxt - dt.timedelta(days=1)
    return last - dt.timedelta(days=(last.weekday() - weekday) % 7)


def _holidays(region: str, year: int) -> dict[dt.date, float]:
    """Public holidays of one region and year -> relative intensity (1 = holiday level)."""
    d = dt.date
    easter = _easter(year)
    days: list[dt.date] = [d(year, 1, 1)]
    lull: dict[dt.date, float] = {}
    if region == "US":
        days += [_nth_weekday(year, 1, 0, 3), _nth_weekday(year, 5, 0, -1), d(year, 6, 19),
                 d(year, 7, 4), _nth_weekday(year, 9, 0, 1)]
        thanksgiving = _nth_weekday(year, 11, 3, 4)
        days.append(thanksgiving)
        lull[thanksgiving + dt.timedelta(days=1)] = 2.5
    elif region == "UK":
        days += [easter - dt.timedelta(days=2), easter + dt.timedelta(days=1),
                 _nth_weekday(year, 5, 0, 1), _nth_weekday(year, 5, 0, -1),
                 _nth_weekday(year, 8, 0, -1)]
    elif region == "DE":
        days += [easter - dt.timedelta(days=2), easter + dt.timedelta(days=1), d(year, 5, 1),
                 easter + dt.timedelta(days=39), easter + dt.timedelta(days=50), d(year, 10, 3)]
    elif region == "FR":
        days += [easter + dt.timedelta(days=1), d(year, 5, 1), d(year, 5, 8),
                 easter + dt.timedelta(days=39), d(year, 7, 14), d(year, 8, 15), d(year, 11, 1),
                 d(year, 11, 11)]
    elif region == "IN":
        days += [d(year, 1, 26), d(year, 8, 15), d(year, 10, 2)]
    elif region == "JP":
        days += [d(year, 1, 2), d(year, 1, 3), _nth_weekday(year, 7, 0, 3), d(year, 8, 11),
                 d(year, 4, 29), d(year, 5, 3), d(year, 5, 4), d(year, 5, 5)]
        # Obon: many offices close, churn roughly halves.
        for day in range(13, 17):
            lull[d(year, 8, day)] = 4.0
    elif region == "AU":
        days += [d(year, 1, 26), easter - dt.timedelta(days=2), easter + dt.timedelta(days=1),
                 d(year, 4, 25), d(year, 12, 26)]
    elif region == "BR":
        days += [d(year, 4, 21), d(year, 5, 1), d(year, 9, 7), d(year, 10, 12), d(year, 11, 2),
                 d(year, 11, 15)]
    days.append(d(year, 12, 25))
    if region in ("US", "UK"):
        # A holiday on a weekend is observed on the nearest (US) or next (UK) weekday.
        for day in list(days):
            if day.weekday() == 5:
                days.append(day - dt.timedelta(days=1) if region == "US"
                            else day + dt.timedelta(days=2))
            elif day.weekday() == 6:
                days.append(day + dt.timedelta(days=1))
    out = dict.fromkeys(days, 1.0)
    # Year-end week: not a holiday everywhere, but quiet almost everywhere.
    if region == "JP":
        year_end = [d(year, 12, 29), d(year, 12, 30), d(year, 12, 31)]
    elif region != "IN":
        year_end = [d(year, 12, day) for day in range(24, 32)]
    else:
        year_end = []
    for day in year_end:
        out.setdefault(day, 1.6)
    for day, level in lull.items():
        out.setdefault(day, level)
    return out


def day_factors(region: str, dates: list[dt.date], holiday_level: float) -> list[float]:
    """Churn multiplier for each local date.

    Parameters
    ----------
    region : str
        Holiday region (``US``, ``UK``, ``DE``, ``FR``, ``IN``, ``JP``, ``AU``, ``BR``).
    dates : list of datetime.date
        Local calendar dates.
    holiday_level : float
        Intensity on a full public holiday relative to an ordinary day.

    Returns
    -------
    list of float
        One multiplier per date: 1 on ordinary days, ``holiday_level`` on public
        holidays, something in between in lulls (year-end week, Obon, August in
        France and Germany).
    """
    table: dict[dt.date, float] = {}
    for year in sorted({day.year for day in dates}):
        table.update(_holidays(region, year))
    out = []
    for day in dates:
        rel = table.get(day)
        factor = 1.0 if rel is None else min(1.0, holiday_level * rel)
        if region in ("FR", "DE") and day.month == 8:
            factor *= 0.75
        out.append(factor)
    return out
