"""Scoring computes its distribution functions without importing scipy.stats (about 0.6 s
of every cold ``syncguard score``): the same numbers as scipy.stats, bit for bit."""

from __future__ import annotations

import math
import subprocess
import sys
from decimal import Decimal, localcontext

import numpy as np
import pytest
from scipy import stats

from detector.baseline import Z_CLIP, betabinom_signed_z, nb_signed_z
from detector.calibration import genpareto_sf


def _grid(seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    n = 4000
    x = np.concatenate([rng.integers(0, 50, n // 2), rng.integers(0, 100_000, n // 4),
                        rng.uniform(-3, 40, n // 4)]).astype(float)
    x[:5] = [np.nan, -1.0, 0.0, 2.5, 1e9]
    mu = np.concatenate([rng.uniform(0, 5, n // 2), rng.uniform(0, 1e5, n // 2)])
    mu[:3] = [0.0, 1e-12, 1e12]
    phi = 10 ** rng.uniform(-9, 1, n)
    return x, mu, phi


@pytest.mark.parametrize("seed", [0, 1])
def test_nb_signed_z_equals_the_scipy_stats_formula(seed: int) -> None:
    x, mu, phi = _grid(seed)
    n, p = 1.0 / phi, 1.0 / (1.0 + mu * phi)
    upper = np.clip(stats.nbinom.sf(x, n, p) + 0.5 * stats.nbinom.pmf(x, n, p),
                    1e-300, 1.0 - 1e-16)
    expected = np.clip(stats.norm.isf(upper), -Z_CLIP, Z_CLIP)
    assert np.array_equal(nb_signed_z(x, mu, phi), expected, equal_nan=True)


def _betabinom_tail_exact(k: int, n: int, a: float, b: float, upper: bool) -> float:
    """Mid-p tail of a beta-binomial in 60-digit decimals (the Beta ratio as products)."""
    with localcontext() as ctx:
        ctx.prec = 60
        a_, b_ = Decimal(a), Decimal(b)
        den = math.prod((a_ + b_ + i for i in range(n)), start=Decimal(1))

        def pmf(j: int) -> Decimal:
            num = math.prod((a_ + i for i in range(j)), start=Decimal(1))
            num *= math.prod((b_ + i for i in range(n - j)), start=Decimal(1))
            return math.comb(n, j) * num / den

        beyond = range(k + 1, n + 1) if upper else range(k)
        return float(sum((pmf(j) for j in beyond), start=Decimal(0)) + pmf(k) / 2)


def test_betabinom_signed_z_agrees_with_exact_tails() -> None:
    """Null rates of small resources: the mid-p tail of a beta-binomial as a normal score,
    summed term by term so far tails keep their digits (scipy.stats.betabinom.sf is 1 - cdf
    and loses them beyond ~1e-9: it calls a 1e-116 tail 1e-9)."""
    rng = np.random.default_rng(4)
    size = 120
    n = rng.integers(1, 101, size).astype(float)
    p = 10 ** rng.uniform(-3, -0.05, size)
    sd = np.sqrt(p * (1 - p)) * 10 ** rng.uniform(-3, -0.3, size)
    k = np.floor(rng.uniform(0, 1, size) * (n + 1))
    ab = p * (1 - p) / sd**2 - 1
    a, b = p * ab, (1 - p) * ab
    got = betabinom_signed_z(k, n, p, sd)
    up = [_betabinom_tail_exact(int(k[i]), int(n[i]), a[i], b[i], True) for i in range(size)]
    lo = [_betabinom_tail_exact(int(k[i]), int(n[i]), a[i], b[i], False) for i in range(size)]
    up, lo = np.asarray(up), np.asarray(lo)
    exact = np.where(up < lo, stats.norm.isf(up), stats.norm.ppf(lo))
    assert (np.abs(exact) > 8).sum() > 10  # far tails are in the sample
    # Far tails to the digit; in the body, at most 40 terms past k are summed.
    far = np.abs(exact) > 4
    np.testing.assert_allclose(got[far], exact[far], rtol=1e-6)
    np.testing.assert_allclose(got, exact, atol=5e-3)
    # Within scipy's reach, scipy agrees.
    mid = 0.5 * stats.betabinom.pmf(k, n, a, b)
    near = np.abs(exact) < 3
    sf = stats.betabinom.sf(k, n, a, b) + mid
    np.testing.assert_allclose(sf[near & (up < lo)], up[near & (up < lo)], rtol=1e-6)
    # 23 of 26 API keys without a policy where none ever lacked one: far out, not 4 scales.
    assert betabinom_signed_z(np.array([23.0]), np.array([26.0]), np.array([0.02]),
                              np.array([1e-3]))[0] > 10


def test_nbinom_ppf_ufunc_equals_scipy_stats() -> None:
    from scipy.special import _ufuncs

    _x, mu, phi = _grid(2)
    n, p = 1.0 / phi, 1.0 / (1.0 + mu * phi)
    for q in (0.00135, 0.99865):
        assert np.array_equal(_ufuncs._nbinom_ppf(q, n, p), stats.nbinom.ppf(q, n, p),
                              equal_nan=True)


def test_genpareto_sf_equals_scipy_stats() -> None:
    rng = np.random.default_rng(3)
    x = np.concatenate([[0.0, 1e-12, 5.0, 1e6], rng.exponential(3.0, 5000)])
    shape = np.concatenate([[0.0, -0.4, -0.4, 0.5], rng.uniform(-0.6, 0.6, 5000)])
    shape[::7] = 0.0
    scale = np.concatenate([[1.0, 2.0, 1.0, 0.3], rng.uniform(0.1, 4.0, 5000)])
    expected = stats.genpareto.sf(x, shape, loc=0.0, scale=scale)
    assert np.array_equal(genpareto_sf(x, shape, scale), expected, equal_nan=True)


def test_the_model_does_not_import_scipy_stats() -> None:
    probe = ("import sys, detector.model, detector.scoring; "
             "print('scipy.stats' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "False"


def _probe(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip()


def test_scoring_loads_scipy_special_ufuncs_only() -> None:
    """scipy.special's package import (~0.2 s: numpy.f2py, numpy.testing) is skipped."""
    out = _probe("import sys, detector.model, detector.scoring; "
                 "print(sorted(m for m in ('scipy.special', 'numpy.f2py', 'numpy.testing') "
                 "if m in sys.modules))")
    assert out == "[]"


def test_the_ufuncs_are_scipy_specials_own() -> None:
    from scipy import special

    from detector.special import ufuncs

    assert ufuncs is special._ufuncs
    for name in ("ndtri", "expit", "inv_boxcox", "_nbinom_sf", "_nbinom_pmf", "_nbinom_ppf"):
        assert getattr(ufuncs, name) is getattr(special._ufuncs, name)


def test_ufuncs_fall_back_to_the_ordinary_import() -> None:
    out = _probe(
        "import importlib, sys\n"
        "real = importlib.import_module\n"
        "calls = []\n"
        "def failing_once(name, *args):\n"
        "    if name == 'scipy.special._ufuncs':\n"
        "        calls.append(name)\n"
        "    if calls == [name]:\n"
        "        raise ImportError('another scipy layout')\n"
        "    return real(name, *args)\n"
        "importlib.import_module = failing_once\n"
        "from detector.special import ufuncs\n"
        "import scipy.special\n"
        "print(ufuncs is scipy.special._ufuncs, len(calls), float(ufuncs.ndtri(0.5)))\n")
    assert out == "True 2 0.0"


def test_gpd_fit_equals_scipy_stats_fit() -> None:
    """Training's tail fits: scipy.stats' own fit (start and Nelder-Mead search), bit for
    bit, on its own likelihood written for this case; bounded tails become exponential."""
    from detector.calibration import _fit_gpd

    rng = np.random.default_rng(4)
    samples = [stats.genpareto.rvs(c, scale=s, size=n, random_state=rng)
               for c, s, n in [(-0.4, 1.0, 300), (0.0, 2.0, 25), (0.2, 0.5, 1000),
                               (0.7, 3.0, 6000), (1.5, 1.0, 80)]]
    # A spike of near-equal excesses and a few far ones, as family tails often are.
    samples.append(np.r_[np.full(60, 1e-3), rng.exponential(2.0, 40)])
    for y in samples:
        fit = y if len(y) <= 5000 else np.sort(y)[np.linspace(0, len(y) - 1, 5000).astype(int)]
        shape, _, scale = stats.genpareto.fit(fit, floc=0.0)
        if shape < 0.0:
            shape, scale = 0.0, float(np.mean(fit))
        assert _fit_gpd(y) == (min(shape, 0.5), scale)
