"""Always-valid confidence intervals for the difference in mean reward between two arms.

The mixture sequential probability ratio test (mSPRT) with a normal mixture, in the
form of Johari, Koomen, Pekelis & Walsh (2017, 2022). With ``θ̂ = x̄_arm − x̄_control``
and its variance ``V = s²_arm/n_arm + s²_control/n_control``, the mixture likelihood
ratio of H₀: θ = θ₀ against a N(θ₀, τ²) mixture of alternatives is::

    Λ(θ₀) = sqrt(V / (V + τ²)) · exp(τ² (θ̂ − θ₀)² / (2 V (V + τ²)))

Rejecting when Λ ≥ 1/α keeps the type-I error at most α *however often and whenever
one looks* (Λ is a non-negative martingale under H₀; Ville's inequality). Inverting
the test gives the confidence sequence::

    θ̂ ± sqrt( V (V + τ²) / τ² · (log((V + τ²) / V) + 2 log(1/α)) )

which covers θ at every time at once with probability ≥ 1 − α, so a dashboard read
every minute (or a guardrail checked at every publish) stays honest. The
always-valid p-value is ``min(1, 1/Λ(0))`` (its running minimum is reported).

Limits, plainly: the variances are plug-in estimates, so validity is asymptotic
(the sub-Gaussian / CLT argument of Howard et al. 2021 for asymptotic confidence
sequences); a unit is one closed impression (its mean reward over the slate), while
users are randomised — a user seen many times makes units correlated, which the
variance does not model (the A/A test over 50 seeds measures the result).
``τ`` (``experiment.mixture_sd``) should be of the order of the effects that matter:
much larger or smaller ones only cost power, never validity.

References
----------
Johari, Koomen, Pekelis, Walsh (2017). Peeking at A/B tests: why it matters, and what
to do about it. KDD. (Operations Research 70(3), 2022, "Always valid inference".)
Robbins (1970). Statistical methods related to the law of the iterated logarithm.
Howard, Ramdas, McAuliffe, Sekhon (2021). Time-uniform, nonparametric, nonasymptotic
confidence sequences. Annals of Statistics 49(2).

>>> round(half_width(var=1e-4, tau2=2.5e-3, alpha=0.05), 6)
0.031015
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Comparison", "Moments", "compare", "half_width", "mixture_ratio"]


def half_width(var: float, tau2: float, alpha: float) -> float:
    """The confidence sequence's half-width for an estimate of variance ``var``."""
    if var <= 0:
        return 0.0
    return math.sqrt(var * (var + tau2) / tau2
                     * (math.log((var + tau2) / var) + 2.0 * math.log(1.0 / alpha)))


def mixture_ratio(diff: float, var: float, tau2: float) -> float:
    """Λ(0): the normal-mixture likelihood ratio against θ = 0 (``inf`` when var = 0 and
    diff ≠ 0)."""
    if var <= 0:
        return math.inf if diff != 0 else 1.0
    exponent = tau2 * diff * diff / (2.0 * var * (var + tau2))
    if exponent > 700:
        return math.inf
    return math.sqrt(var / (var + tau2)) * math.exp(exponent)


@dataclass
class Moments:
    """Count, sum and sum of squares of per-unit rewards (float64; additive)."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        self.total += x
        self.total_sq += x * x

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        """Unbiased sample variance (nan below two units)."""
        if self.n < 2:
            return math.nan
        return max(0.0, (self.total_sq - self.total * self.total / self.n) / (self.n - 1))


@dataclass(frozen=True)
class Comparison:
    """``arm − control``: the estimate, its always-valid interval, and the p-value."""

    diff: float
    lower: float
    upper: float
    p_value: float
    n_arm: int
    n_control: int

    @property
    def decided(self) -> bool:
        """The interval excludes 0: the arm differs from control (at level α)."""
        return self.lower > 0 or self.upper < 0


def compare(arm: Moments, control: Moments, tau2: float, alpha: float,
            min_units: int = 2) -> Comparison:
    """The always-valid comparison of ``arm`` against ``control`` (nan below
    ``min_units`` units in either)."""
    nan = math.nan
    if min(arm.n, control.n) < max(2, min_units):
        return Comparison(nan, -math.inf, math.inf, 1.0, arm.n, control.n)
    diff = arm.mean - control.mean
    var = arm.variance / arm.n + control.variance / control.n
    width = half_width(var, tau2, alpha)
    ratio = mixture_ratio(diff, var, tau2)
    return Comparison(diff, diff - width, diff + width, min(1.0, 1.0 / ratio), arm.n,
                      control.n)
