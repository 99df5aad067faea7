"""The stored state of a search: what the study's storage holds besides its trials, and the
writes every worker makes to it.

- The settings every worker must share (:class:`SearchConfig`, stored once per study under
  :data:`CONFIG_KEY`), and where any reader finds them (:func:`config_of`).
- The frozen ranking of each closed round (:data:`RANKING_KEY`), and resolving the rounds
  from the stored trials with them (:func:`resolve`).
- Refusing a study the search cannot run in (:func:`check_study`), and reading the stored
  state once for a trial that starts (:func:`read`).
- Writing a trial's start as decided (:class:`._start.Start`, :func:`write_start`), and
  failing and requeuing trials with one retry policy (:func:`retry_limit`, :func:`fail`,
  :func:`requeue`).

It imports nothing above the pure round logic (:mod:`._roles`, :mod:`._start`): the sampler,
the reports and the recovery read the stored state from here.
"""

from __future__ import annotations

from collections.abc import Sequence
import copy
import dataclasses
import datetime
import time
from types import FrameType
from typing import Any
import warnings

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.study import Study
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_convexity import _attrs
from optuna_convexity import _criteria
from optuna_convexity import _roles
from optuna_convexity._criteria import Criterion
from optuna_convexity._listeners import notify
from optuna_convexity._roles import foreign_trials
from optuna_convexity._roles import is_queued_promotion
from optuna_convexity._roles import Resolution
from optuna_convexity._start import Start
from optuna_convexity.hessian._arguments import count


_logger = optuna.logging.get_logger(__name__)

#: Study system attribute holding the settings every worker of the study must share.
CONFIG_KEY = "convexity:config"
#: Study system attribute holding a round's frozen ranking: ``convexity:ranking:<round>``.
RANKING_KEY = "convexity:ranking:"


class ScreeningWaitError(RuntimeError):
    """A promoted trial could not wait for the screening it depends on (see the message)."""


# -- the settings ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """The settings that decide roles and rankings; every worker of a study shares them."""

    n_screening: int
    n_promoted: int
    criterion: Criterion = _criteria.DEFAULT_CRITERION
    asynchronous: bool = False

    def __post_init__(self) -> None:
        for name in ("n_screening", "n_promoted"):  # numpy integers become ints (stored)
            object.__setattr__(self, name, count(name, getattr(self, name)))
        if self.n_promoted > self.n_screening:
            raise ValueError(
                f"n_promoted={self.n_promoted} exceeds n_screening={self.n_screening}: a round "
                "cannot promote more candidates than it screens. Lower n_promoted or raise "
                "n_screening."
            )
        _criteria.validate(self.criterion)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def stored_config(study: Study) -> dict[str, Any] | None:
    """The settings stored in the study by the first worker, if any."""
    config = study._storage.get_study_system_attrs(study._study_id).get(CONFIG_KEY)
    return dict(config) if isinstance(config, dict) else None


def stored_search_config(study: Study) -> SearchConfig | None:
    """The settings stored in the study, as a :class:`SearchConfig`, if any."""
    stored = stored_config(study)
    if stored is None:
        return None
    fields = {field.name for field in dataclasses.fields(SearchConfig)}
    return SearchConfig(**{key: value for key, value in stored.items() if key in fields})


def check_config(study: Study, config: SearchConfig) -> None:
    """Store ``config`` in the study, or refuse a worker whose settings differ from it."""
    wanted = config.as_dict()
    stored = study._storage.get_study_system_attrs(study._study_id).get(CONFIG_KEY)
    if stored is None:
        study._storage.set_study_system_attr(study._study_id, CONFIG_KEY, wanted)
    elif stored != wanted:
        different = {k: (stored.get(k), v) for k, v in wanted.items() if stored.get(k) != v}
        raise ValueError(
            f"Study {study.study_name!r} runs a convexity search with {stored}, but this "
            f"worker's ConvexitySampler differs in {different} (stored, this worker). Every "
            "worker of a study must use the same n_screening, n_promoted, criterion and "
            "asynchronous, or they would disagree about which trial does what."
        )


def check_study(
    study: Study, trials: Sequence[FrozenTrial], config: SearchConfig | None
) -> list[int]:
    """Refuse a study the search cannot run in; ``config``, this worker's settings, is stored
    in the study or compared with the stored settings (``None``: this worker did so already).
    Returns the numbers of the study's foreign trials, which the search ignores (see
    :func:`warn_foreign`)."""
    if study._is_multi_objective():
        raise ValueError(
            "ConvexitySampler supports single-objective studies only: promotion ranks the "
            "candidates on one objective and the best promoted trial is the best on it. "
            "Create the study with a single direction."
        )
    if config is not None:
        check_config(study, config)
    return foreign_trials(trials)


def warn_foreign(study: Study, foreign: Sequence[int]) -> None:
    """Say that the search ignores the study's foreign trials, and how to keep them out."""
    shown = ", ".join(map(str, foreign[:10])) + (" ..." if len(foreign) > 10 else "")
    _logger.warning(
        f"Study {study.study_name!r} holds {len(foreign)} finished trial(s) that "
        f"ConvexitySampler did not run (trial {shown}), e.g. from optuna.load_study(...) "
        "without the sampler, another sampler or study.add_trial. The search ignores them: "
        "they hold no place in its rounds and are never candidates (study.best_trial may "
        "still be one of them). Load the study with sampler=ConvexitySampler(...) in every "
        "process that runs trials."
    )


def sampler_config(study: Study) -> SearchConfig | None:
    """The settings of the study's sampler, if it runs a convexity search."""
    config = getattr(study.sampler, "search_config", None)
    return config if isinstance(config, SearchConfig) else None


def config_of(study: Study, trials: Sequence[FrozenTrial] | None = None) -> SearchConfig:
    """The settings of a study's search: its sampler's, else those stored in the study, else
    (a study from before the settings were stored) inferred from the trials' attributes."""
    config = sampler_config(study)
    if config is not None:
        return config
    if trials is None:
        trials = study.get_trials(deepcopy=False)
    stored = stored_config(study)
    if stored is not None:
        n_screening, n_promoted = int(stored["n_screening"]), int(stored["n_promoted"])
    else:
        slots = [t.user_attrs.get(_attrs.SLOT) for t in trials]
        ranks = [t.user_attrs.get(_attrs.RANK) for t in trials]
        n_screening = max((s for s in slots if isinstance(s, int)), default=-1) + 1
        n_promoted = max((r for r in ranks if isinstance(r, int)), default=0)
        if n_screening < 1 or n_promoted < 1:
            raise ValueError(
                f"Study {study.study_name!r} has no trials of a ConvexitySampler search yet."
            )
        stored = {}
    return SearchConfig(
        n_screening,
        n_promoted,
        stored.get("criterion", "mu"),
        bool(stored.get("asynchronous", any(is_queued_promotion(t) for t in trials))),
    )


# -- rankings -------------------------------------------------------------------------------


def frozen_rankings(study: Study) -> dict[int, list[int]]:
    """The rankings decided so far, by round (trial numbers, first promoted first)."""
    frozen = {}
    for key, value in study._storage.get_study_system_attrs(study._study_id).items():
        if key.startswith(RANKING_KEY):
            frozen[int(key[len(RANKING_KEY) :])] = [int(n) for n in value]
    return frozen


def freeze(study: Study, resolution: Resolution) -> None:
    """Record each closed round's ranking once: a late retry cannot change a decision."""
    frozen = frozen_rankings(study)
    for round_number, ranked in resolution.rankings.items():
        if round_number not in frozen:
            study._storage.set_study_system_attr(
                study._study_id,
                f"{RANKING_KEY}{round_number}",
                [c.final.number for c in ranked],
            )


def resolve(
    study: Study,
    trials: Sequence[FrozenTrial],
    config: SearchConfig,
    *,
    retries_expected: bool = False,
    retry_grace: datetime.timedelta = datetime.timedelta(0),
) -> Resolution:
    """The rounds as far as the stored trials and the frozen rankings decide them."""
    frozen = frozen_rankings(study)
    return _roles.resolve(
        trials,
        config.n_screening,
        config.n_promoted,
        frozen=frozen,
        retries_expected=retries_expected,
        retry_grace=retry_grace,
        now=datetime.datetime.now(),
        criterion=config.criterion,
        maximize=study.direction == StudyDirection.MAXIMIZE,
    )


# -- starting a trial: the stored state read once, the start written once -------------------


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The stored state of a search at one read: its trials and the rankings frozen so far."""

    trials: list[FrozenTrial]
    frozen: dict[int, list[int]]
    maximize: bool
    #: When the read began (``time.monotonic()``): the clock a lease's staleness is read on.
    read_at: float
    #: The numbers of the foreign trials, which the search ignores (a checked read only).
    foreign: list[int] = dataclasses.field(default_factory=list)


def read(study: Study, *, check: bool = False, config: SearchConfig | None = None) -> Snapshot:
    """Read the stored state once; with ``check``, refuse a study the search cannot run in
    (:func:`check_study`, which stores or compares ``config`` unless it is ``None``)."""
    read_at = time.monotonic()
    trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
    frozen = frozen_rankings(study)
    foreign = check_study(study, trials, config) if check else []
    return Snapshot(trials, frozen, study.direction == StudyDirection.MAXIMIZE, read_at, foreign)


def write_start(study: Study, trial: FrozenTrial, start: Start) -> None:
    """Write how the trial starts (:class:`._start.Start`): the rankings, the copy, the
    attributes."""
    if start.resolution is not None:
        freeze(study, start.resolution)
    if start.requeue:
        requeue(study, study._storage.get_trial(trial._trial_id), None)
    _attrs.set_attrs(study, trial, start.attrs)
    if start.message is not None:
        _logger.info(start.message)
    if start.announce:
        notify(study)


# -- failing and requeuing: one retry policy ------------------------------------------------

#: An unexpected error before a promotion starts is retried this many times only, so that a
#: bug cannot loop.
_UNEXPECTED_ERROR_RETRIES = 3
#: Errors that interrupt a trial rather than show a fault: retried any number of times.
_INTERRUPTIONS = (ScreeningWaitError, KeyboardInterrupt, SystemExit)


def retry_limit(
    error: BaseException | None, *, started: bool, promotion_retries: int
) -> int | None:
    """How many copies of a failed promotion Optuna's retry may queue (``None``: no limit).

    - The objective ran and failed (an exception, or Ctrl-C): ``promotion_retries``.
    - It never started because of a mistake in the set-up (``ValueError``, ``TypeError``):
      ``0``, as retrying would fail the same way.
    - It was interrupted before it ran (Ctrl-C, ``wait_timeout``, a blocked ask/tell), or its
      worker was stopped (``error`` is ``None``): no limit, as this may repeat any number of
      times.
    - Any other error before it ran: a few times only.
    """
    if started:
        return promotion_retries
    if error is None or isinstance(error, _INTERRUPTIONS):
        return None
    if isinstance(error, (ValueError, TypeError)):
        return 0
    return _UNEXPECTED_ERROR_RETRIES


def fail(study: Study, trial: FrozenTrial) -> bool:
    """Mark a trial that cannot finish failed; ``False`` if it had finished already."""
    try:
        return study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def requeue(study: Study, trial: FrozenTrial, limit: int | None) -> None:
    """Queue a copy of ``trial`` (same role, parameters and attributes), unless it was retried
    ``limit`` times already: Optuna's own retry callback does the copying and the counting, so
    the copy keeps the role of the original (see :mod:`._roles`)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        retried = copy.deepcopy(trial)
        retried.system_attrs.pop(_attrs.LEASE, None)  # the copy's lease is its own worker's
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=limit)(study, retried)


def retries(trial: FrozenTrial) -> int:
    """How many times the trial's role was retried before it (Optuna's ``retry_history``)."""
    return len(trial.system_attrs.get("retry_history", []))


def abandon(
    study: Study,
    trial: FrozenTrial,
    error: BaseException,
    config: SearchConfig,
    promotion_retries: int,
) -> None:
    """The trial cannot start: fail it, and queue a copy if it holds a promotion (as
    :func:`retry_limit` allows), so that no rank is lost and none runs twice."""
    if not fail(study, trial):
        return
    limit = retry_limit(error, started=False, promotion_retries=promotion_retries)
    if limit == 0:
        return
    storage = study._storage
    role = _roles.assign_roles(
        storage.get_all_trials(study._study_id, deepcopy=False),
        config.n_screening,
        config.n_promoted,
        config.asynchronous,
    ).get(trial.number)
    if role is None or role.phase != "promoted":
        return
    requeue(study, storage.get_trial(trial._trial_id), limit)
    _logger.warning(
        f"Trial {trial.number} (promotion rank {role.rank} of round {role.round}) did not "
        f"start ({type(error).__name__}); it is failed and queued again."
    )


#: Trial system attribute: why the trial failed in a way that a retry would repeat (written by
#: the package's own checks before they raise, e.g. a parameter outside its distribution).
NOT_RETRIED_KEY = "convexity:not_retried"


def mark_not_retried(study: Study, trial: FrozenTrial, reason: str) -> None:
    """Record that ``trial`` fails deterministically (``reason``), so it is not retried."""
    study._storage.set_trial_system_attr(trial._trial_id, NOT_RETRIED_KEY, reason)


def deterministic_failure(trial: FrozenTrial, teller: FrameType | None) -> str | None:
    """Why a failed trial would fail the same way again, or ``None`` if a retry may help.

    - A check of the package recorded the reason (:func:`mark_not_retried`).
    - The objective returned a value that is not a finite number (``nan``): Optuna fails the
      trial and passes the sampler no values, so the value is read from ``teller``, the frame
      of Optuna's ``_tell_with_warning`` that calls ``after_trial`` (its argument
      ``value_or_values``). Any other caller (or an Optuna that renamed it) retries as before.
    """
    reason = trial.system_attrs.get(NOT_RETRIED_KEY)
    if reason is not None:
        return str(reason)
    if teller is not None and teller.f_code.co_name == "_tell_with_warning":
        told = teller.f_locals.get("value_or_values")
        if told is not None:
            return f"the objective returned {told!r}, which is not a finite number"
    return None


def requeue_failed_promotion(
    study: Study, trial: FrozenTrial, promotion_retries: int, deterministic: str | None = None
) -> None:
    """Queue a copy of a promotion whose objective failed (same rank, parent and parameters),
    as many times as :func:`retry_limit` allows; never one that failed ``deterministic``ally
    (see :func:`deterministic_failure`): a retry would spend a full budget to fail again."""
    rank = trial.user_attrs.get(_attrs.RANK)
    if deterministic is not None:
        _logger.warning(
            f"Promoted trial {trial.number} (rank {rank}) failed: {deterministic}. A retry "
            "would fail the same way, so its promotion is given up."
        )
        return
    limit = retry_limit(None, started=True, promotion_retries=promotion_retries)
    if limit is not None and retries(trial) >= limit:
        _logger.warning(
            f"Promoted trial {trial.number} (rank {rank}) failed after {retries(trial)} "
            "retries; its promotion is given up."
        )
        return
    requeue(study, trial, limit)
    _logger.warning(
        f"Promoted trial {trial.number} (rank {rank}) failed; a copy with the same parameters "
        "is queued."
    )
