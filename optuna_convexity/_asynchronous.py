"""Asynchronous promotion: promote without a barrier (``ConvexitySampler(asynchronous=True)``).

Every fresh trial screens. When a screening trial finishes, every scored candidate that now
ranks within the best ``n_promoted / n_screening`` fraction of all scored candidates (once at
least ``min_screening`` are scored) and is not promoted yet is queued for promotion
(:func:`promote`); a worker that pops a queued promotion runs it, unless another worker queued
the same one first (:func:`._placement.place` tells, :func:`._start.decide` withdraws the copy).
"""

from __future__ import annotations

import copy

import optuna
from optuna.study import Study
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_convexity import _attrs
from optuna_convexity._roles import assign_roles
from optuna_convexity._roles import Candidate
from optuna_convexity._roles import candidates_of_round
from optuna_convexity._roles import ranking
from optuna_convexity._state import SearchConfig


_logger = optuna.logging.get_logger(__name__)


def promote(
    study: Study, trial: FrozenTrial, state: TrialState, config: SearchConfig, min_screening: int
) -> None:
    """Queue every scored candidate that now ranks in the best fraction and is not queued."""
    trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
    roles = assign_roles(trials, config.n_screening, config.n_promoted, asynchronous=True)
    candidates: list[Candidate] = []
    for round_number in sorted({r.round for r in roles.values() if r.phase == "screening"}):
        candidates += candidates_of_round(trials, roles, round_number)
    this = next((c for c in candidates if trial.number in (a.number for a in c.attempts)), None)
    if this is not None:  # the storage does not know this trial's final state yet
        this.attempts[-1] = copy.copy(this.final)
        this.attempts[-1].state = state
    ranked = ranking(
        [c for c in candidates if c.exclusion is None],
        config.criterion,
        study.direction == StudyDirection.MAXIMIZE,
    )
    if len(ranked) < min_screening:
        return
    quota = max(1, (len(ranked) * config.n_promoted) // config.n_screening)
    queued = {
        t.user_attrs.get(_attrs.PARENT)
        for t in trials
        if t.user_attrs.get(_attrs.PHASE) == _attrs.PHASE_PROMOTED
    }
    for rank, candidate in enumerate(ranked[:quota], start=1):
        parent = candidate.final
        if parent.number in queued:
            continue
        study.enqueue_trial(
            {},  # no fixed parameters: the sampler hands out the parent's
            user_attrs=_attrs.with_companions(
                {
                    _attrs.PHASE: _attrs.PHASE_PROMOTED,
                    _attrs.ROUND: roles[candidate.root].round,
                    _attrs.RANK: rank,
                    _attrs.PARENT: parent.number,
                    _attrs.MU: candidate.mu,
                    _attrs.ESTIMATOR: parent.user_attrs.get(_attrs.ESTIMATOR),
                }
            ),
        )
        _logger.info(
            f"Screening trial {parent.number} (mu={candidate.mu:.6g}) ranks {rank} of "
            f"{len(ranked)} scored candidates: its promotion is queued."
        )
