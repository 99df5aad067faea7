"""Promotion criteria: the order in which a round's valid candidates are promoted.

This module is the one home of every criterion. It is pure: it sees each candidate only as the
signals the screening recorded (:class:`Signals`) and knows nothing of trials, storages or the
sampler, so every worker that reads the same stored signals computes the same order.

A criterion may split the candidates into *tiers* (e.g. the better half of the one-epoch values
first); :func:`rank` returns each candidate with the label of its tier, so that reports can show
why a candidate with a lower ``mu`` was ranked below one with a higher ``mu``.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import math
import textwrap
from typing import get_args
from typing import Literal

import numpy as np


Criterion = Literal["mu", "mu_in_better_half", "value", "train_loss", "high_mu_in_better_half"]
#: Every criterion, in the order the documentation lists them.
CRITERIA: tuple[str, ...] = get_args(Criterion)
#: The criterion a :class:`~optuna_convexity.ConvexitySampler` uses unless told otherwise.
DEFAULT_CRITERION: Criterion = "value"

_DESCRIPTIONS: dict[str, str] = {
    "mu": "the paper's rule: the lowest mu (flattest loss after screening) first",
    "mu_in_better_half": (
        "the lowest mu first among the candidates whose one-epoch value is in the better half, "
        "then the lowest mu of the rest"
    ),
    "value": (
        "the best one-epoch reported value first (one rung of successive halving); candidates "
        "without a value last, by training loss"
    ),
    "train_loss": (
        "the lowest one-epoch training loss (recorded with mu by report_convexity) first; the "
        "whole round by the one-epoch value when a candidate has no training loss"
    ),
    "high_mu_in_better_half": (
        "the highest mu first among the candidates whose one-epoch value is in the better half, "
        "then the highest mu of the rest"
    ),
}

#: The criteria that rank by the one-epoch reported value (``"train_loss"`` only falls back
#: to it for a round where a candidate has no training loss).
READS_VALUE: frozenset[str] = frozenset({"value", "mu_in_better_half", "high_mu_in_better_half"})

BETTER_HALF = "better half"
OTHER_HALF = "other half"


@dataclasses.dataclass(frozen=True)
class Signals:
    """What the screening recorded of one valid candidate."""

    #: Identifies the candidate (the number of its first trial); breaks ties, lowest first.
    root: int
    #: The strong-convexity score: finite and non-negative for a valid candidate.
    mu: float
    #: The last value the objective reported during screening (``None`` if it reported none).
    value: float | None
    #: The mean training loss recorded with ``mu`` (``None`` if none was recorded).
    train_loss: float | None = None


@dataclasses.dataclass(frozen=True)
class Ranked:
    """A candidate's place in the promotion order."""

    root: int
    #: The criterion's tier the candidate is in (``None`` for criteria without tiers).
    tier: str | None


def validate(criterion: object) -> Criterion:
    """``criterion`` if it names a criterion, else a ``ValueError`` that lists them."""
    if criterion not in CRITERIA:
        listed = "; ".join(f"{name!r}: {_DESCRIPTIONS[name]}" for name in CRITERIA)
        raise ValueError(f"Unknown criterion {criterion!r}; use one of {listed}.")
    return criterion  # type: ignore[return-value]


def describe(criterion: str) -> str:
    """One line saying what ``criterion`` promotes first."""
    return _DESCRIPTIONS[validate(criterion)]


def listing(indent: str = "") -> str:
    """Every criterion and what it promotes first, one bullet each, the default marked.

    Docstrings that speak of the criteria include this text (see
    :class:`~optuna_convexity.ConvexitySampler`), so that they always state the rule that runs
    by default.
    """
    return "\n".join(
        textwrap.fill(
            f'``"{name}"``{" (the default)" if name == DEFAULT_CRITERION else ""}: '
            f"{_DESCRIPTIONS[name]}.",
            width=95,
            initial_indent=f"{indent}- ",
            subsequent_indent=f"{indent}  ",
        )
        for name in CRITERIA
    )


def rank(signals: Sequence[Signals], criterion: str, maximize: bool = False) -> list[Ranked]:
    """The candidates in promotion order (ties broken by ``root``, lowest first).

    - ``"mu"`` (the paper's rule): the lowest ``mu`` first.
    - ``"mu_in_better_half"``: first the candidates whose one-epoch value is in the better half
      of the candidates' values (by the study's direction), lowest ``mu`` first; then the others,
      lowest ``mu`` first. It keeps the paper's preference for flat losses but stops a barely
      trained configuration (tiny learning rate, huge batch), whose loss is flat because it has
      not moved, from ranking first.
    - ``"value"``: the best one-epoch value first (by the study's direction), ties by the lower
      training loss; candidates that reported no value last, by training loss (so a round whose
      objective reported nothing before the trial ended is still ranked by what it learned).
    - ``"train_loss"``: the lowest training loss first. If any candidate has none (its ``mu``
      came from :func:`~optuna_convexity.record_mu` without ``train_loss``), the whole round is
      ranked as by ``"value"`` instead, so that candidates are never compared across signals.
      The training loss is the mean loss of the scoring pass over the training batches, a
      by-product of computing ``mu``.
    - ``"high_mu_in_better_half"``: as ``"mu_in_better_half"``, but the *highest* ``mu`` first
      in each half: after one epoch a sharper loss marks a configuration that is learning.

    The better half holds at most half of the candidates with a value (rounded up): the values
    better than the median, and the values equal to it only if they fit. So when many candidates
    tie at a chance-level accuracy, the tie is left out rather than letting the whole field in;
    if nothing is better than the tie, the ranking is by ``mu`` alone.
    """
    validate(criterion)
    sign = -1.0 if maximize else 1.0  # sign * value: lower is better
    if criterion == "train_loss" and all(s.train_loss is not None for s in signals):
        order = sorted(signals, key=lambda s: (s.train_loss, s.root))
        return [Ranked(s.root, None) for s in order]
    if criterion in ("value", "train_loss"):
        order = sorted(
            signals,
            key=lambda s: (
                s.value is None,
                sign * (s.value or 0.0),
                s.train_loss is None,
                s.train_loss or 0.0,
                s.root,
            ),
        )
        return [Ranked(s.root, None) for s in order]
    if criterion == "mu":
        return [Ranked(s.root, None) for s in sorted(signals, key=lambda s: (s.mu, s.root))]
    better = better_half(signals, maximize)
    direction = 1.0 if criterion == "mu_in_better_half" else -1.0
    order = sorted(signals, key=lambda s: (s.root not in better, direction * s.mu, s.root))
    return [Ranked(s.root, BETTER_HALF if s.root in better else OTHER_HALF) for s in order]


def better_half(signals: Sequence[Signals], maximize: bool) -> set[int]:
    """Roots of the candidates whose value is in the better half (see :func:`rank`)."""
    sign = -1.0 if maximize else 1.0  # sign * value: lower is better
    known = sorted(sign * s.value for s in signals if s.value is not None)
    if not known:
        return set()
    half = (len(known) + 1) // 2
    cut = known[half - 1]  # the median (the better one of the two middles)
    with_ties = known.count(cut) + sum(1 for v in known if v < cut) <= half
    return {
        s.root
        for s in signals
        if s.value is not None and (sign * s.value < cut or (with_ties and sign * s.value == cut))
    }


#: How far against its premise a signal must rank the promoted candidates before it is
#: reported as such: a Spearman correlation of at least this size with the wrong sign...
AGAINST_PREMISE_RHO = 0.5
#: ... over at least this many finished promotions (fewer say too little).
PREMISE_MIN_PROMOTED = 5

#: The direction in which each criterion expects ``mu`` to predict the full-budget result:
#: -1 for "a lower mu is better", +1 for "a higher mu is better", 0 if it does not read mu.
MU_PREMISE: dict[str, int] = {
    "mu": -1,
    "mu_in_better_half": -1,
    "high_mu_in_better_half": 1,
    "value": 0,
    "train_loss": 0,
}


@dataclasses.dataclass(frozen=True)
class PremiseCheck:
    """How well the screening signals ranked the full-budget results of a round's promotions.

    Each ``rho`` is Spearman's correlation between a signal and the promoted trials' final
    quality (their value, negated when the study minimizes), over ``n`` finished promotions.
    """

    criterion: str
    n: int
    #: ``mu`` against the final quality: negative if flatter candidates ended better.
    rho_mu: float
    #: The one-epoch value's quality against the final quality.
    rho_value: float

    @property
    def against_premise(self) -> bool:
        """Whether ``mu`` ranked the results clearly opposite to the criterion's premise."""
        direction = MU_PREMISE[self.criterion]
        return (
            direction != 0
            and self.n >= PREMISE_MIN_PROMOTED
            and direction * self.rho_mu <= -AGAINST_PREMISE_RHO
        )

    def describe(self) -> str:
        """One sentence on what the round's promotions say about the criterion's premise."""
        text = (
            f"Over {self.n} finished promotions, Spearman's rho of mu with the final result is "
            f"{_signed(self.rho_mu)} and of the one-epoch value {_signed(self.rho_value)}"
        )
        if not self.against_premise:
            return text + "."
        expected = "lower" if MU_PREMISE[self.criterion] < 0 else "higher"
        return (
            f"{text}: criterion {self.criterion!r} promotes {expected} mu first, but here "
            f"{expected} mu went with worse results. Consider criterion={DEFAULT_CRITERION!r} "
            "(the default)."
        )


def premise_check(
    promoted: Sequence[tuple[Signals, float]], criterion: str, maximize: bool
) -> PremiseCheck:
    """Check a round's ranking against the results: ``promoted`` pairs each finished
    promotion's screening signals with its full-budget value."""
    validate(criterion)
    sign = 1.0 if maximize else -1.0
    quality = [sign * value for _, value in promoted]
    with_value = [
        (sign * s.value, q) for (s, _), q in zip(promoted, quality) if s.value is not None
    ]
    return PremiseCheck(
        criterion,
        len(promoted),
        spearman([s.mu for s, _ in promoted], quality),
        spearman([v for v, _ in with_value], [q for _, q in with_value]),
    )


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); ``nan`` if undefined."""
    if len(x) != len(y) or len(x) < 3:
        return math.nan
    rx, ry = _average_ranks(x), _average_ranks(y)
    if float(np.std(rx)) == 0.0 or float(np.std(ry)) == 0.0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def _average_ranks(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    order = np.argsort(array, kind="stable")
    ranks = np.empty(len(array))
    ranks[order] = np.arange(len(array), dtype=float)
    for value in np.unique(array):
        tied = array == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def _signed(rho: float) -> str:
    return "undefined" if math.isnan(rho) else f"{rho:+.2f}"
