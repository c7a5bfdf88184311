"""The scaling-law fits of a grid of runs, each with its parameters N, tokens D, compute C = 6ND and loss L.

    frontier     L(C) = E + (C0 / C)^a through the best loss of each budget (the compute-efficient frontier)
    IsoFLOP      per budget, a parabola in log N through the losses (Hoffmann et al. 2022, approach 2); its
                 minimum is that budget's compute-optimal size, and a line through the minima in log-log gives
                 N_opt ∝ C^a and D_opt ∝ C^b (b = 1 - a, since D = C / 6N)
    parametric   L(N, D) = E + A / N^α + B / D^β (approach 3), fitted like Hoffmann et al. and Besiroglu et al.
                 2024: the Huber loss (δ = 1e-3) between log L and log(e^e + e^(a - α log N) + e^(b - β log D))
                 by L-BFGS from the best points of a grid of starts; its compute-optimal size is
                 N_opt = G (C/6)^(β/(α+β)), G = (αA / βB)^(1/(α+β))
    bootstrap    every fit again on runs drawn with replacement; the 2.5 and 97.5 percentiles are the interval

scipy is imported here only, when a fit runs.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass, field

import numpy as np

from lmforge.errors import LmforgeError

HUBER_DELTA = 1e-3

# Published values, for the report to set ours beside.
PUBLISHED = {
    "kaplan": {"label": "Kaplan et al. 2020", "a": 0.73, "b": 0.27, "alpha_N": 0.076, "alpha_D": 0.095,
               "frontier_a": 0.050,
               "note": "N without embeddings, a schedule not matched to each run's length"},
    "chinchilla": {"label": "Hoffmann et al. 2022 (Chinchilla)", "a": 0.49, "b": 0.51, "E": 1.69, "A": 406.4,
                   "B": 410.7, "alpha": 0.34, "beta": 0.28, "tokens_per_parameter": 20.0,
                   "note": "IsoFLOP (approach 2) a = 0.49, b = 0.51; parametric (approach 3) E, A, B, α, β"},
    "besiroglu": {"label": "Besiroglu et al. 2024 (Chinchilla replication)", "E": 1.8172, "A": 482.01,
                  "B": 2085.43, "alpha": 0.3478, "beta": 0.3658,
                  "note": "approach 3 refitted on the data of Chinchilla's figures; a = β/(α+β) = 0.51"},
}
PUBLISHED["besiroglu"]["a"] = PUBLISHED["besiroglu"]["beta"] / (PUBLISHED["besiroglu"]["alpha"] + PUBLISHED["besiroglu"]["beta"])
PUBLISHED["besiroglu"]["b"] = 1 - PUBLISHED["besiroglu"]["a"]


@dataclass
class Point:
    parameters: float
    tokens: float
    loss: float
    budget: float  # the grid's budget this run belongs to (its IsoFLOP group)

    @property
    def compute(self) -> float:
        return 6.0 * self.parameters * self.tokens


def _scipy():
    # The fits make thousands of tiny BLAS calls, for which OpenBLAS threads only spin (4x slower on a busy
    # machine); scipy's OpenBLAS reads this when it loads.
    if "scipy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        import scipy.optimize
    except ImportError as exc:  # pragma: no cover - scipy is a dependency
        raise LmforgeError("the scaling-law fits need scipy; pip install scipy") from exc
    return scipy.optimize


# ---- frontier --------------------------------------------------------------------------------


@dataclass
class Frontier:
    E: float
    C0: float
    a: float
    points: list  # (compute, loss) it was fitted to

    def loss(self, compute):
        return self.E + (self.C0 / np.asarray(compute, dtype=float)) ** self.a


def fit_frontier(compute: list[float], loss: list[float]) -> Frontier:
    """L(C) = E + (C0/C)^a by least squares on log L, with E in [0, min L)."""
    opt = _scipy()
    c, y = np.asarray(compute, float), np.asarray(loss, float)
    if len(c) < 3:
        raise LmforgeError("the frontier fit needs at least 3 budgets")
    scale = np.exp(np.mean(np.log(c)))

    def residuals(p):
        e, log_c0, a = p
        return np.log(e + np.exp(a * (log_c0 - np.log(c / scale)))) - np.log(y)

    best = None
    for e0 in (0.0, 0.5 * y.min(), 0.9 * y.min()):
        for a0 in (0.1, 0.5):
            start = [e0, math.log(max(y.mean() - e0, 1e-3)) / a0, a0]
            try:
                r = opt.least_squares(residuals, start, bounds=([0, -np.inf, 1e-4], [y.min() * 0.999, np.inf, 5]))
            except ValueError:
                continue
            if best is None or r.cost < best.cost:
                best = r
    e, log_c0, a = best.x
    return Frontier(float(e), float(scale * math.exp(log_c0)), float(a), [list(p) for p in zip(c.tolist(), y.tolist())])


# ---- IsoFLOP -----------------------------------------------------------------------------------


@dataclass
class Parabola:
    budget: float
    coefficients: list  # loss = c0 (log N)^2 + c1 log N + c2
    n_opt: float | None  # None when the parabola opens downward or its minimum lies outside the sizes tried
    loss_opt: float | None
    sizes: list
    losses: list

    def loss(self, n):
        return np.polyval(self.coefficients, np.log(np.asarray(n, float)))


@dataclass
class IsoFlop:
    parabolas: list
    a: float | None  # N_opt ∝ C^a
    b: float | None  # D_opt ∝ C^b
    n_coefficient: float | None  # N_opt = n_coefficient · C^a
    d_coefficient: float | None
    minima: list  # (budget, N_opt, D_opt, loss at N_opt)

    def n_opt(self, compute: float) -> float:
        return self.n_coefficient * compute ** self.a

    def d_opt(self, compute: float) -> float:
        return compute / (6.0 * self.n_opt(compute))


def fit_parabola(budget: float, sizes: list[float], losses: list[float]) -> Parabola:
    x = np.log(np.asarray(sizes, float))
    center = x.mean()
    c = np.polyfit(x - center, np.asarray(losses, float), 2)
    n_opt = loss_opt = None
    if c[0] > 0:
        x_min = -c[1] / (2 * c[0])
        if x.min() <= x_min + center <= x.max():
            n_opt, loss_opt = float(math.exp(x_min + center)), float(np.polyval(c, x_min))
    c = np.polyfit(x, np.asarray(losses, float), 2) if len(x) > 2 else c  # in log N itself, for plotting
    return Parabola(budget, c.tolist(), n_opt, loss_opt, list(map(float, sizes)), list(map(float, losses)))


def fit_isoflop(points: list[Point]) -> IsoFlop:
    """A parabola per budget with at least 3 sizes, and the power laws through their minima."""
    parabolas = []
    for budget in sorted({p.budget for p in points}):
        group = sorted((p for p in points if p.budget == budget), key=lambda p: p.parameters)
        if len({p.parameters for p in group}) >= 3:
            parabolas.append(fit_parabola(budget, [p.parameters for p in group], [p.loss for p in group]))
    # compute of the minimum: the budget (each run's own C differs from it by the rounding of its steps)
    minima = [(p.budget, p.n_opt, p.budget / (6 * p.n_opt), p.loss_opt) for p in parabolas if p.n_opt]
    a = b = kn = kd = None
    if len(minima) >= 2:
        log_c = np.log([m[0] for m in minima])
        a, log_kn = np.polyfit(log_c, np.log([m[1] for m in minima]), 1)
        b, log_kd = np.polyfit(log_c, np.log([m[2] for m in minima]), 1)
        a, b, kn, kd = float(a), float(b), float(math.exp(log_kn)), float(math.exp(log_kd))
    return IsoFlop(parabolas, a, b, kn, kd, [list(m) for m in minima])


# ---- parametric L(N, D) ------------------------------------------------------------------------


@dataclass
class Parametric:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    huber: float = 0.0

    def loss(self, n, d):
        n, d = np.asarray(n, float), np.asarray(d, float)
        return self.E + self.A / n ** self.alpha + self.B / d ** self.beta

    @property
    def a(self) -> float:
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def n_opt(self, compute: float) -> float:
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        return g * (compute / 6.0) ** self.a

    def d_opt(self, compute: float) -> float:
        return compute / (6.0 * self.n_opt(compute))


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    small = np.abs(r) <= delta
    return np.where(small, 0.5 * r ** 2, delta * (np.abs(r) - 0.5 * delta))


def _huber_grad(r: np.ndarray, delta: float) -> np.ndarray:
    return np.clip(r, -delta, delta)


EXPONENT_GRID = np.linspace(0.05, 1.5, 24)


def grid_starts(log_n: np.ndarray, log_d: np.ndarray, loss: np.ndarray, keep: int = 6) -> list[tuple]:
    """Starting points for the Huber fit: for each (α, β) of a grid the law is linear in (E, A, B), so
    non-negative least squares gives the rest; the `keep` best of the grid (in relative error) are the starts."""
    nnls = _scipy().nnls

    found = []
    for alpha in EXPONENT_GRID:
        for beta in EXPONENT_GRID:
            columns = np.stack([np.ones_like(log_n), np.exp(-alpha * log_n), np.exp(-beta * log_d)], axis=1)
            scaled = columns / loss[:, None]  # relative error: close to the log-space objective
            (e, a, b), residual = nnls(scaled, np.ones_like(loss))
            found.append((residual, e, a, b, alpha, beta))
    found.sort(key=lambda f: f[0])
    return [(math.log(max(a, 1e-8)), math.log(max(b, 1e-8)), math.log(max(e, 1e-3)), alpha, beta)
            for _, e, a, b, alpha, beta in found[:keep]]


def fit_parametric(n: list[float], d: list[float], loss: list[float],
                   starts: list[tuple] | None = None) -> Parametric:
    """Minimise Σ Huber(log L̂ - log L) over (a, b, e, α, β), L̂ = e^e + e^(a - α log N) + e^(b - β log D), by
    L-BFGS with the analytic gradient from several starts (the best end wins): by default the best points of
    a grid over (α, β), each with its least-squares (E, A, B)."""
    opt = _scipy()
    log_n, log_d, log_l = np.log(np.asarray(n, float)), np.log(np.asarray(d, float)), np.log(np.asarray(loss, float))
    if len(log_l) < 5:
        raise LmforgeError("the parametric fit L(N, D) needs at least 5 runs")

    def objective(p):
        a, b, e, alpha, beta = p
        terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
        top = terms.max(axis=0)
        weights = np.exp(terms - top)
        total = weights.sum(axis=0)
        r = top + np.log(total) - log_l
        g = _huber_grad(r, HUBER_DELTA)
        w = weights / total  # d lse / d term
        grad = np.array([(g * w[0]).sum(), (g * w[1]).sum(), (g * w[2]).sum(),
                         (g * w[0] * -log_n).sum(), (g * w[1] * -log_d).sum()])
        return _huber(r, HUBER_DELTA).sum(), grad

    if starts is None:
        starts = grid_starts(log_n, log_d, np.exp(log_l))
    best = None
    bounds = [(-20, 60), (-20, 60), (-5, 5), (0, 3), (0, 3)]
    for start in starts:
        r = opt.minimize(objective, np.asarray(start, float), jac=True, method="L-BFGS-B", bounds=bounds,
                         options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12})
        if best is None or r.fun < best.fun:
            best = r
    a, b, e, alpha, beta = best.x
    return Parametric(float(math.exp(e)), float(math.exp(a)), float(math.exp(b)), float(alpha), float(beta),
                      float(best.fun))


def _starts_near(fit: Parametric) -> list[tuple]:
    base = (math.log(fit.A), math.log(fit.B), math.log(fit.E), fit.alpha, fit.beta)
    return [base, (base[0] + 1, base[1] + 1, base[2] - 0.3, base[3] * 1.2, base[4] * 1.2)]


# ---- everything, with intervals ----------------------------------------------------------------


@dataclass
class Fits:
    frontier: Frontier | None
    isoflop: IsoFlop
    parametric: Parametric | None
    intervals: dict = field(default_factory=dict)  # name -> [low, high] (bootstrap, 95 %)
    bootstrap_samples: int = 0
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"frontier": asdict(self.frontier) if self.frontier else None,
                "isoflop": asdict(self.isoflop),
                "parametric": {**asdict(self.parametric), "a": self.parametric.a, "b": self.parametric.b}
                if self.parametric else None,
                "intervals": self.intervals, "bootstrap_samples": self.bootstrap_samples, "notes": self.notes,
                "published": PUBLISHED}


def frontier_points(points: list[Point], isoflop: IsoFlop | None = None) -> tuple[list[float], list[float]]:
    """The best loss at each budget: the parabola's minimum where it has one, else the best run."""
    by_budget = {}
    minima = {m[0]: m[3] for m in isoflop.minima} if isoflop else {}
    for budget in sorted({p.budget for p in points}):
        best = min(p.loss for p in points if p.budget == budget)
        by_budget[budget] = min(best, minima.get(budget, best))
    return list(by_budget), list(by_budget.values())


def fit_all(points: list[Point], bootstrap: int = 100, seed: int = 0,
            extra: dict | None = None) -> Fits:
    """Every fit of `points`, and bootstrap intervals for the exponents and for each `extra` quantity (a function
    of a bootstrap sample's IsoFLOP, parametric and frontier fits, the last None where it has none; e.g. the
    predicted loss of a run)."""
    notes = []
    isoflop = fit_isoflop(points)
    if isoflop.a is None:
        notes.append("fewer than two budgets have a parabola with its minimum inside the sizes tried: no "
                     "IsoFLOP power law (widen the range of sizes)")
    compute, losses = frontier_points(points, isoflop)
    frontier = fit_frontier(compute, losses) if len(compute) >= 3 else None
    if frontier is None:
        notes.append("fewer than 3 budgets: no frontier fit")
    parametric = fit_parametric([p.parameters for p in points], [p.tokens for p in points],
                                [p.loss for p in points]) if len(points) >= 5 else None
    fits = Fits(frontier, isoflop, parametric, notes=notes)
    if bootstrap and parametric is not None:
        fits.intervals, fits.bootstrap_samples = _bootstrap(points, fits, bootstrap, seed, extra or {})
    return fits


def _bootstrap(points: list[Point], fits: Fits, samples: int, seed: int, extra: dict) -> tuple[dict, int]:
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}

    def add(name, value):
        if value is not None and np.isfinite(value):
            values.setdefault(name, []).append(float(value))

    done = 0
    for _ in range(samples):
        pick = [points[i] for i in rng.integers(0, len(points), len(points))]
        if len({(p.parameters, p.tokens) for p in pick}) < 0.6 * len(points):
            continue
        par = fit_parametric([p.parameters for p in pick], [p.tokens for p in pick], [p.loss for p in pick],
                             starts=_starts_near(fits.parametric))
        iso = fit_isoflop(pick)
        done += 1
        for name in ("E", "A", "B", "alpha", "beta", "a", "b"):
            add(f"parametric.{name}", getattr(par, name))
        add("isoflop.a", iso.a)
        add("isoflop.b", iso.b)
        frontier = None
        if fits.frontier is not None:
            compute, losses = frontier_points(pick, iso)
            if len(compute) >= 3:
                frontier = fit_frontier(compute, losses)
                add("frontier.a", frontier.a)
        for name, function in extra.items():
            try:
                add(name, function(iso, par, frontier))
            except (AttributeError, TypeError, ValueError, ZeroDivisionError, OverflowError):
                continue
    intervals = {name: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
                 for name, v in values.items() if len(v) >= 10}
    return intervals, done
