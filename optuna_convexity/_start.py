"""How a trial starts where it stands: :class:`Start`, decided by :func:`decide` from the
trial's :class:`~._placement.Placement`, with no storage access; :func:`._state.write_start`
writes it.

- A screening trial takes the attributes of its role.
- A promotion of the synchronous search, once its round is closed, takes the candidate of its
  rank; a rank beyond the round's valid candidates screens in the next round instead; and if a
  screening retry is queued, it gives its slot back to a copy of itself, so that its worker runs
  the retry instead of waiting for it.
- A retry of a synchronous promotion keeps the start its original took.
- A promotion queued by the asynchronous search runs, unless another trial queued the same
  promotion first (it is then withdrawn).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from optuna_convexity import _attrs
from optuna_convexity._placement import Placement
from optuna_convexity._roles import cleared_inheritance
from optuna_convexity._roles import Resolution
from optuna_convexity._roles import Role


_logger = optuna.logging.get_logger(__name__)


@dataclasses.dataclass(frozen=True)
class Start:
    """How a trial starts, decided by :func:`decide` and written by
    :func:`._state.write_start`."""

    #: The attributes the trial takes, the phase among them (none: it keeps those it has).
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: The screening sampler proposes the trial's parameters.
    screens: bool = False
    #: Closed rounds whose rankings are frozen before the trial takes its rank.
    resolution: Resolution | None = None
    #: A withdrawn trial gives its role to a copy of it, queued first.
    requeue: bool = False
    #: Logged once the start is written.
    message: str | None = None
    #: A promotion was decided: the listeners are told.
    announce: bool = False

    @classmethod
    def withdrawn(cls, trial: FrozenTrial, reason: str, *, requeue: bool) -> Start:
        """End the trial before it runs anything: it is pruned at its first suggestion (or
        its first ``should_prune()``), and, with ``requeue``, a copy keeps its role."""
        return cls(
            {_attrs.PHASE: _attrs.PHASE_WITHDRAWN, _attrs.EXCLUDED: reason},
            requeue=requeue,
            message=f"Trial {trial.number} is withdrawn: it {reason}.",
        )


def decide(trial: FrozenTrial, placement: Placement, n_promoted: int) -> Start:
    """How ``trial`` starts where it stands (a promotion that still waits has no start yet)."""
    assert not placement.waits
    role = placement.role
    if role.phase == "screening":
        attrs: dict[str, Any] = {_attrs.PHASE: _attrs.PHASE_SCREENING, _attrs.ROUND: role.round}
        if role.slot is not None:
            attrs[_attrs.SLOT] = role.slot
        return Start({**attrs, **cleared_inheritance(trial)}, screens=True)
    if placement.queued:
        return _queued_promotion(trial, placement.queued_first)
    if placement.resolution is None:  # a retry: it inherited its original's decision
        released = trial.user_attrs[_attrs.PHASE] == _attrs.PHASE_SCREENING
        return Start(cleared_inheritance(trial) if released else {}, screens=released)
    return _promotion(trial, role, placement.resolution, n_promoted)


def _queued_promotion(trial: FrozenTrial, queued_first: int | None) -> Start:
    """Run the queued promotion, unless another trial queued the same one first (then
    withdraw this copy)."""
    parent = trial.user_attrs.get(_attrs.PARENT)
    if queued_first is not None:
        return Start.withdrawn(
            trial,
            f"duplicates the promotion of trial {parent} queued as trial {queued_first}",
            requeue=False,
        )
    return Start(
        message=(
            f"Trial {trial.number} is promoted (asynchronous): it reruns screening trial "
            f"{parent} at the full budget."
        ),
        announce=True,
    )


def _promotion(trial: FrozenTrial, role: Role, resolution: Resolution, n_promoted: int) -> Start:
    """A trial holding a promotion slot, its round's screening closed: the candidate of its
    rank, or screening in the next round if no candidate is left, or, while a screening retry
    is queued, a copy of it to keep the rank."""
    assert role.rank is not None
    if role.round not in resolution.rankings:  # screening retries are queued
        return Start.withdrawn(
            trial,
            "gave its promotion slot back so that its worker runs the queued screening "
            f"retries of round {resolution.open_round}; a copy keeps rank {role.rank}",
            requeue=True,
        )
    ranked = resolution.rankings[role.round]
    if role.rank > len(ranked):
        if role.rank == len(ranked) + 1:
            excluded = len(resolution.candidates[role.round]) - len(ranked)
            _logger.warning(
                f"Round {role.round} has {len(ranked)} valid candidates for "
                f"{n_promoted} promotions ({excluded} screening trials were "
                "excluded; see their 'convexity:excluded' attribute). The trials holding "
                f"the other ranks screen new candidates for round {role.round + 1} instead."
            )
        return Start(
            {_attrs.PHASE: _attrs.PHASE_SCREENING, _attrs.ROUND: role.round + 1},
            screens=True,
            resolution=resolution,
            announce=True,
        )
    parent = ranked[role.rank - 1]
    return Start(
        {
            _attrs.PHASE: _attrs.PHASE_PROMOTED,
            _attrs.ROUND: role.round,
            _attrs.RANK: role.rank,
            _attrs.PARENT: parent.final.number,
            _attrs.MU: parent.mu,
            _attrs.ESTIMATOR: parent.final.user_attrs.get(_attrs.ESTIMATOR),
        },
        resolution=resolution,
        message=(
            f"Trial {trial.number} is promoted rank {role.rank} of round {role.round}: it "
            f"reruns screening trial {parent.final.number} (mu={parent.mu:.6g}) at the full "
            "budget."
        ),
        announce=True,
    )
