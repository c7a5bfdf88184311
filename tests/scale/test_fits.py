"""The fits recover the parameters of the laws that generated synthetic losses."""

import math

import numpy as np
import pytest

from lmforge.scale.fits import Point, fit_all, fit_frontier, fit_isoflop, fit_parametric

BUDGETS = [1e11, 3e11, 1e12, 3e12, 1e13]
E, A, B, ALPHA, BETA = 1.3, 60.0, 250.0, 0.34, 0.30


def chinchilla_points(noise: float = 0.0, seed: int = 0, budgets=BUDGETS, sizes: int = 7) -> list[Point]:
    rng = np.random.default_rng(seed)
    points = []
    for c in budgets:
        for n in np.geomspace(3e4, 3e6, sizes):
            d = c / (6 * n)
            loss = (E + A / n ** ALPHA + B / d ** BETA) * math.exp(rng.normal(0, noise))
            points.append(Point(float(n), float(d), float(loss), c))
    return points


def test_parametric_fit_recovers_the_law_exactly_without_noise():
    pts = chinchilla_points()
    fit = fit_parametric([p.parameters for p in pts], [p.tokens for p in pts], [p.loss for p in pts])
    assert fit.E == pytest.approx(E, rel=1e-4) and fit.A == pytest.approx(A, rel=1e-3)
    assert fit.B == pytest.approx(B, rel=1e-3)
    assert fit.alpha == pytest.approx(ALPHA, abs=1e-4) and fit.beta == pytest.approx(BETA, abs=1e-4)
    assert fit.a == pytest.approx(BETA / (ALPHA + BETA), abs=1e-4)


def test_parametric_fit_with_noise_brackets_the_truth_with_bootstrap_intervals():
    fits = fit_all(chinchilla_points(noise=0.002, budgets=BUDGETS[1:], sizes=6), bootstrap=15, seed=1)
    low, high = fits.intervals["parametric.alpha"]
    assert low - 0.01 <= ALPHA <= high + 0.01 and high - low < 0.2
    assert abs(fits.parametric.beta - BETA) < 0.05 and abs(fits.parametric.E - E) < 0.15
    assert fits.bootstrap_samples >= 10


def test_isoflop_parabolas_find_the_optimal_size_and_its_exponent():
    """Losses exactly parabolic in log N around N_opt = 0.05 C^0.5: minima and exponents come back."""
    points = []
    for c in BUDGETS:
        n_opt = 0.05 * c ** 0.5
        for n in n_opt * np.geomspace(0.1, 10, 6):
            points.append(Point(float(n), c / (6 * n), 2.0 + 3.0 * c ** -0.05 + 0.04 * math.log(n / n_opt) ** 2, c))
    iso = fit_isoflop(points)
    for parabola, c in zip(iso.parabolas, BUDGETS):
        assert parabola.n_opt == pytest.approx(0.05 * c ** 0.5, rel=1e-6)
    assert iso.a == pytest.approx(0.5, abs=1e-6) and iso.b == pytest.approx(0.5, abs=1e-6)
    assert iso.n_opt(1e14) == pytest.approx(0.05 * 1e7, rel=1e-5)


def test_a_minimum_outside_the_sizes_tried_is_not_reported():
    iso = fit_isoflop([Point(n, 1e12 / (6 * n), 3.0 - 0.1 * math.log(n), 1e12) for n in (1e4, 1e5, 1e6)])
    assert iso.parabolas[0].n_opt is None and iso.a is None


def test_frontier_fit_recovers_its_power_law():
    compute = np.geomspace(1e10, 1e14, 6)
    loss = 1.7 + (3e9 / compute) ** 0.12
    f = fit_frontier(compute.tolist(), loss.tolist())
    assert f.E == pytest.approx(1.7, abs=1e-3) and f.a == pytest.approx(0.12, abs=1e-3)
    assert f.C0 == pytest.approx(3e9, rel=0.02)
