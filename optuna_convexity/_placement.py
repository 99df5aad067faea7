"""Where a trial stands when it starts (:class:`Placement`), from the stored trials alone: its
role (:func:`._roles.assign_roles`) and what its start depends on: for a promotion of the
synchronous search, the rounds resolved so far (:func:`._roles.resolve`); for a promotion
queued by the asynchronous search, whether another trial queued the same promotion first.
:func:`._start.decide` turns a placement into the trial's start.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import datetime

from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_convexity import _attrs
from optuna_convexity._criteria import Criterion
from optuna_convexity._roles import assign_roles
from optuna_convexity._roles import is_queued_promotion
from optuna_convexity._roles import Resolution
from optuna_convexity._roles import resolve
from optuna_convexity._roles import RETRY_OF
from optuna_convexity._roles import Role


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a trial stands when it starts, as the stored trials decide it (see :func:`place`)."""

    role: Role
    #: A promotion of the synchronous search: the rounds as far as they are decided.
    resolution: Resolution | None = None
    #: A promotion queued by the asynchronous search.
    queued: bool = False
    #: A queued promotion that another trial queued first: that trial's number.
    queued_first: int | None = None

    @property
    def waits(self) -> bool:
        """A promotion whose round is still screening, and no screening retry is queued that
        its worker could run instead."""
        resolution = self.resolution
        if resolution is None or self.role.round in resolution.rankings:
            return False
        queued = (a for c in resolution.pending for a in c.attempts)
        return not any(a.state == TrialState.WAITING for a in queued)


def place(
    trial: FrozenTrial,
    trials: Sequence[FrozenTrial],
    n_screening: int,
    n_promoted: int,
    *,
    asynchronous: bool,
    frozen: dict[int, list[int]],
    retries_expected: bool,
    retry_grace: datetime.timedelta,
    now: datetime.datetime,
    criterion: Criterion,
    maximize: bool,
) -> Placement:
    """Where ``trial`` stands among the stored ``trials``: its role; for a queued promotion,
    whether another trial queued it first; for a synchronous promotion that has not inherited
    its start (a retry with a phase), the rounds resolved with the ``frozen`` rankings."""
    role = assign_roles(trials, n_screening, n_promoted, asynchronous).get(trial.number)
    if role is None:
        raise RuntimeError(
            f"Trial {trial.number} retries trial {trial.system_attrs.get(RETRY_OF)}, which "
            "ConvexitySampler did not run; it cannot tell its role."
        )
    if role.phase == "screening":
        return Placement(role)
    if asynchronous:
        parent = trial.user_attrs.get(_attrs.PARENT)
        copies = [
            t.number
            for t in trials
            if is_queued_promotion(t) and t.user_attrs.get(_attrs.PARENT) == parent
        ]
        first = min(copies, default=trial.number)
        duplicate = first != trial.number and RETRY_OF not in trial.system_attrs
        return Placement(role, queued=True, queued_first=first if duplicate else None)
    if _attrs.PHASE in trial.user_attrs:
        return Placement(role)
    resolution = resolve(
        trials,
        n_screening,
        n_promoted,
        frozen=frozen,
        retries_expected=retries_expected,
        retry_grace=retry_grace,
        now=now,
        criterion=criterion,
        maximize=maximize,
    )
    return Placement(role, resolution)
