"""The trial attributes the search writes (``user_attrs``, shown by optuna-dashboard), and
their readers: the one place that says what a trial's attributes mean.

The *names* and their types are public: the package docstring and the README list them as
the contract that dashboards, notebooks and the tests of users' own tooling may rely on (a
test keeps those tables equal to this module). The module itself is private: code of the
package reads a trial through the readers below, never by re-deriving a rule, and writes one
through :func:`set_attrs`.
"""

from __future__ import annotations

import math
from typing import Any
from typing import Protocol

from optuna.study import Study
from optuna.trial import FrozenTrial


#: ``"screening"``, ``"promoted"``, or ``"withdrawn"`` (a trial that gave its promotion back
#: before running anything, see ``EXCLUDED`` for why; it ends PRUNED at its first suggestion).
PHASE = "convexity:phase"
#: The round (0, 1, ...) the trial belongs to; a round is ``n_screening`` screening trials
#: followed by ``n_promoted`` promoted ones.
ROUND = "convexity:round"
#: Screening trials: the position (0 to ``n_screening - 1``) in the round; absent for
#: trials enqueued with ``study.enqueue_trial``, which are screened in addition.
SLOT = "convexity:slot"
#: ``1`` on promoted trials, ``0`` on screening and withdrawn ones: the phase as a number, for
#: optuna-dashboard's plots and its sortable trial table (written with ``PHASE``).
PROMOTED = "convexity:promoted"
#: Screening trials: the score, a finite float. A score that was not finite leaves the key out
#: (``EXCLUDED`` says so), so that every value of this attribute is a number and
#: optuna-dashboard can sort and plot by it. Promoted trials: their parent's score. A retried
#: screening trial shows the score of the attempt it repeats (Optuna's retry copies the
#: attributes) until it records its own; ``SCORED_BY`` tells which trial computed it.
MU = "convexity:mu"
#: Screening trials: the mean training loss of the model as it was scored, from the same
#: forward passes (a float; absent when it was not finite or the score came from elsewhere).
TRAIN_LOSS = "convexity:train_loss"
#: The trial number that computed ``MU`` (a retried trial inherits the attributes of the
#: attempt it repeats, so this tells a fresh score from an inherited one).
SCORED_BY = "convexity:scored_by"
#: A description of the estimator, e.g. ``"last_layer"`` or ``"hutchinson(n_probes=16, ...)"``.
ESTIMATOR = "convexity:estimator"
#: Batches scored, and how many of them were left out as non-finite.
N_BATCHES = "convexity:n_batches"
N_NONFINITE_BATCHES = "convexity:n_nonfinite_batches"
#: Promoted trials: the number of the screening trial whose parameters they use.
PARENT = "convexity:parent"
#: Promoted trials: the rank of the parent in the round's promotion order, 1 = ranked first.
RANK = "convexity:rank"
#: Screening trials that cannot be promoted, and withdrawn trials: why, in words.
EXCLUDED = "convexity:excluded"

#: A *system* attribute (``system_attrs``) of running trials on storages without Optuna's
#: heartbeat: when the worker running the trial last refreshed its lease (an ISO 8601 time,
#: UTC). Other workers fail and requeue a trial whose lease stops changing (see ``_lease``).
LEASE = "convexity:lease"

#: ``EXCLUDED`` of a screening trial whose score was not finite (it has no ``MU`` of its own).
MU_NOT_FINITE = "mu is not finite"

PHASE_SCREENING = "screening"
PHASE_PROMOTED = "promoted"
PHASE_WITHDRAWN = "withdrawn"


def with_companions(attrs: dict[str, Any]) -> dict[str, Any]:
    """``attrs`` and the numeric companions of what they set: ``PROMOTED`` with ``PHASE``."""
    if PHASE not in attrs:
        return attrs
    return {**attrs, PROMOTED: int(attrs[PHASE] == PHASE_PROMOTED)}


class _HasAttrs(Protocol):
    """A trial, frozen or running: what the readers need of it."""

    @property
    def number(self) -> int: ...

    @property
    def user_attrs(self) -> dict[str, Any]: ...


def is_scored(trial: _HasAttrs) -> bool:
    """Whether the trial computed ``MU`` itself (a retry inherits the attempt's, see
    ``SCORED_BY``)."""
    return trial.user_attrs.get(SCORED_BY) == trial.number


def score_attrs(trial: _HasAttrs, mu: float) -> dict[str, Any]:
    """What records ``mu`` as ``trial``'s own score (``SCORED_BY`` is written after it): the
    score if it is finite; if not, the reason in ``EXCLUDED`` and no ``MU`` (an ``MU`` the
    trial inherited stays, but no longer counts: see :func:`recorded_mu`)."""
    if not math.isfinite(mu):
        return {EXCLUDED: MU_NOT_FINITE}
    return {MU: float(mu), EXCLUDED: None} if trial.user_attrs.get(EXCLUDED) else {MU: float(mu)}


def recorded_mu(trial: _HasAttrs) -> float | None:
    """The score the trial recorded itself: ``None`` if it recorded none, ``nan`` if it was
    not finite."""
    if not is_scored(trial):
        return None
    mu = trial.user_attrs.get(MU)
    if mu is None or trial.user_attrs.get(EXCLUDED) == MU_NOT_FINITE:
        return math.nan
    return float(mu)


def mu_problem(mu: float | None) -> str | None:
    """Why a recorded score cannot rank a candidate, or ``None`` if it can."""
    if mu is None:
        return "no mu recorded"
    if not math.isfinite(mu):
        return MU_NOT_FINITE
    if mu < 0:  # 0.0 is the flattest score (a Hessian norm below float32's range underflows)
        return "mu is negative"
    return None


def reported_value(trial: Any) -> float | None:
    """The last value the objective reported (a screening trial's one-epoch value: the value
    the criteria rank by); ``None`` if it reported none or it was not finite."""
    if not trial.intermediate_values:
        return None
    value = trial.intermediate_values[max(trial.intermediate_values)]
    return float(value) if math.isfinite(value) else None


def train_loss(trial: _HasAttrs) -> float | None:
    """The mean training loss recorded with the score (``None`` if none was recorded)."""
    loss = trial.user_attrs.get(TRAIN_LOSS)
    return float(loss) if loss is not None else None


def final_value(trial: Any) -> float | None:
    """A trial's result: its value if it has one, else the last value it reported."""
    if trial.value is not None:
        return float(trial.value)
    return reported_value(trial)


def set_attrs(study: Study, trial: FrozenTrial, attrs: dict[str, Any]) -> None:
    """Write a trial's attributes and their numeric companions, the phase last."""
    # Each attribute is its own write, and readers in other processes key on the phase:
    # write it last, so that a trial with a phase always has the rest.
    attrs = with_companions(attrs)
    for key, value in sorted(attrs.items(), key=lambda item: item[0] == PHASE):
        study._storage.set_trial_user_attr(trial._trial_id, key, value)
        # The Trial object caches this FrozenTrial; keep trial.user_attrs in step.
        trial.user_attrs[key] = value
