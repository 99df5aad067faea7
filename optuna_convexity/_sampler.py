"""The two-phase search as an Optuna sampler: it hands out parameters and hands each trial to
its start (:mod:`._starter`: the phase, the waiting barrier, the writes); asynchronous
promotion (:mod:`._asynchronous`) and the stored state (:mod:`._state`) live in their own
modules."""

from __future__ import annotations

from collections.abc import Sequence
import math
import sys
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.samplers import RandomSampler
from optuna.study import Study
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_convexity import _asynchronous
from optuna_convexity import _attrs
from optuna_convexity import _criteria
from optuna_convexity import _state
from optuna_convexity._budget import OptimizeBudget
from optuna_convexity._criteria import Criterion
from optuna_convexity._lease import Leases
from optuna_convexity._listeners import notify
from optuna_convexity._roles import exclusion_reason
from optuna_convexity._starter import TrialStarter
from optuna_convexity._state import ScreeningWaitError
from optuna_convexity._state import SearchConfig
from optuna_convexity._waiting import beat
from optuna_convexity._waiting import OpenTrials
from optuna_convexity._waiting import ScreeningBarrier
from optuna_convexity.hessian import BaseHessianNormEstimator
from optuna_convexity.hessian import get_estimator
from optuna_convexity.hessian._arguments import count
from optuna_convexity.hessian._arguments import seed as checked_seed


__all__ = ["ConvexitySampler", "ScreeningWaitError"]

_logger = optuna.logging.get_logger(__name__)


class ConvexitySampler(BaseSampler):
    """Strong-convexity-guided search: screen cheaply, promote the best by ``criterion``.

    The study runs in rounds of ``n_screening + n_promoted`` trials:

    1. **Screening trials** sample parameters from ``screening_sampler`` (random search by
       default). The objective trains for one epoch and calls
       :func:`~optuna_convexity.report_convexity`, which scores the loss's flatness ``mu`` and
       ends the trial at that cheap fidelity. Screening trials end PRUNED, so
       ``study.best_trial`` is never one of them.
    2. When every screening trial of the round has finished, the ``n_promoted`` valid
       candidates that come first in the order of ``criterion`` (see below: the default is
       named there) are **promoted**: the next trials run exactly their parameters at the
       full budget, in that order, each rank exactly once. A trial that starts while
       screening trials are still running waits for them, polling the storage. Failed
       candidates, candidates pruned before scoring and non-finite or non-positive scores
       are excluded (the reason is in the trial's ``convexity:excluded`` attribute);
       if fewer than ``n_promoted`` remain, the trials holding the other ranks screen new
       candidates for the next round instead, and a warning says so.
    3. After the last promoted trial, a new round starts. Run ``n_screening + n_promoted``
       trials for the paper's algorithm (one round), or more for several rounds.

    Every decision is derived from the study's storage, so any mix of threads
    (``n_jobs``), processes, machines sharing one database, ``study.ask()``/``study.tell()``,
    and restarts agree: see the README's section on distributed runs.

    Trial attributes (``user_attrs``, visible in optuna-dashboard) record each trial's phase,
    ``mu``, and, for promoted trials, the parent screening trial and the rank; candidates that
    cannot be promoted carry the reason. See :mod:`optuna_convexity` for the names.

    Example:

        .. code-block:: python

            import optuna
            from sklearn.datasets import load_digits
            import torch
            from torch.utils.data import DataLoader, TensorDataset

            import optuna_convexity

            x, y = load_digits(return_X_y=True)
            x, y = torch.tensor(x / 16, dtype=torch.float32), torch.tensor(y)
            train = DataLoader(TensorDataset(x[:1500], y[:1500]), batch_size=64, shuffle=True)
            loss_fn = torch.nn.CrossEntropyLoss()


            def objective(trial):
                lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
                model = torch.nn.Sequential(
                    torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
                )
                optimizer = torch.optim.SGD(model.parameters(), lr=lr)
                for epoch in range(5):
                    for inputs, targets in train:
                        optimizer.zero_grad()
                        loss_fn(model(inputs), targets).backward()
                        optimizer.step()
                    optuna_convexity.report_convexity(trial, model, train, loss_fn)
                    accuracy = (model(x[1500:]).argmax(1) == y[1500:]).float().mean().item()
                    trial.report(accuracy, epoch)
                    if trial.should_prune():
                        raise optuna.TrialPruned()
                return accuracy


            study = optuna.create_study(
                direction="maximize",
                sampler=optuna_convexity.ConvexitySampler(n_screening=8, n_promoted=2, seed=0),
                pruner=optuna_convexity.ConvexityPruner(),
            )
            study.optimize(objective, n_trials=10)
            print(optuna_convexity.leaderboard(study))

    Args:
        n_screening:
            Screening trials per round (the paper's ``N1``; the authors used 50 for tabular
            MLPs and 30 for CNNs).
        n_promoted:
            Promoted trials per round (``N2``; the authors used 10 and 5). At most
            ``n_screening``.
        screening_sampler:
            The sampler that proposes screening candidates; :class:`~optuna.samplers.
            RandomSampler` by default, as in the paper. Any Optuna sampler works.
        seed:
            Seed for the default random screening sampler.
        estimator:
            The default estimator of ``mu`` used by :func:`report_convexity`: ``"last_layer"``,
            ``"hutchinson"``, ``"paper"`` or an estimator instance from
            :mod:`optuna_convexity.hessian`.
        criterion:
            The order in which a round's valid candidates are promoted:

            .. criteria: filled in from _criteria.listing() at import

            The one-epoch value is the last value the screening trial reported
            (``trial.report``); criteria that use it place a candidate that reported none in
            the other half, or last. The better half holds at most half of the candidates: a
            tie at the median (e.g. many candidates still at chance accuracy) is left out when
            it would not fit. The README's "Results" compare the criteria on MNIST-1D and four
            scikit-learn datasets.
        poll_interval:
            ``(first, largest)`` seconds between storage reads of a trial waiting for the
            screening to finish; the interval grows by half each time.
        wait_timeout:
            Give up waiting after this many seconds with :class:`ScreeningWaitError` (the trial
            is marked failed and re-queued, so its rank is not lost). ``None`` waits as long as
            screening trials are running, with a warning about trials that seem stuck.
        stale_warning:
            Seconds after which a running screening trial is reported as possibly stuck to the
            waiting workers (at least five times the median screening time of the round).
        asynchronous:
            Promote without a barrier (experimental). Every fresh trial screens; when a
            screening trial finishes, every scored candidate that ranks within the best
            ``n_promoted / n_screening`` fraction of all scored candidates (once at least
            ``min_screening`` are scored) and is not promoted yet is queued for promotion, and
            workers run queued promotions before new screening trials. No worker ever waits,
            which pays off with many workers; the price is that early promotions are decided
            on fewer candidates, so a few candidates that would not make the final top
            ``n_promoted`` are promoted too (the promoted fraction is about
            ``n_promoted / n_screening`` plus the early ones). Each candidate is still
            promoted at most once: if two workers queue the same promotion, the copy with the
            higher trial number is withdrawn before it runs anything.
        min_screening:
            With ``asynchronous=True``: scored candidates needed before the first promotion;
            ``max(n_screening // 5, ceil(n_screening / n_promoted))`` by default.
        promotion_retries:
            How many times a promoted trial that fails (an exception, or Ctrl-C) is queued
            again with the same rank and parameters, so that stopping the workers and starting
            them again finishes the interrupted promotions. ``0`` leaves failed promotions
            failed. A failure that a retry would repeat is never retried: the objective
            returned ``nan`` (or another value that is not a finite number), or a parameter
            does not fit the parent's (see the error). (Trials killed without a chance to fail
            are found by Optuna's heartbeat where the storage has one,
            ``RDBStorage(heartbeat_interval=..., heartbeat_stale_trial_callback=...)``, and by
            the lease below elsewhere.)
        lease_interval:
            On a storage without Optuna's heartbeat (``JournalStorage``, ``GrpcStorageProxy``,
            ``RDBStorage`` without ``heartbeat_interval``): seconds between two refreshes of
            the lease of a running trial, a timestamp in its ``convexity:lease`` system
            attribute written by a daemon thread of the worker that runs it. Optuna has no
            heartbeat for these storages, so the sampler builds this one on the public storage
            API.
        lease_grace_period:
            Seconds after which a trial whose lease has not changed is taken as dead (its
            worker was killed): the next worker to start a trial, or one waiting for the
            screening, fails it and queues it again with the same role, as Optuna's heartbeat
            and ``RetryHeartbeatStaleTrialCallback`` would, and logs a warning. At least twice
            ``lease_interval``; each worker measures it on its own clock, so machines need not
            agree on the time.
    """

    def __init__(
        self,
        n_screening: int = 50,
        n_promoted: int = 10,
        *,
        screening_sampler: BaseSampler | None = None,
        seed: int | None = None,
        estimator: str | BaseHessianNormEstimator = "last_layer",
        criterion: Criterion = _criteria.DEFAULT_CRITERION,
        poll_interval: tuple[float, float] = (0.25, 5.0),
        wait_timeout: float | None = None,
        stale_warning: float = 600.0,
        asynchronous: bool = False,
        min_screening: int | None = None,
        promotion_retries: int = 1,
        lease_interval: float = 10.0,
        lease_grace_period: float = 60.0,
    ) -> None:
        config = SearchConfig(n_screening, n_promoted, criterion, bool(asynchronous))
        if screening_sampler is not None and not isinstance(screening_sampler, BaseSampler):
            raise TypeError(
                "screening_sampler must be an Optuna sampler (optuna.samplers.BaseSampler), got "
                f"{type(screening_sampler).__name__}."
            )
        if screening_sampler is not None and seed is not None:
            raise ValueError(
                "seed only seeds the default RandomSampler; pass the seed to your "
                "screening_sampler instead."
            )
        seed = checked_seed("seed", seed, bits=32)  # numpy's limit, which RandomSampler meets late
        self._open = OpenTrials()
        self._budget = OptimizeBudget()
        self._leases = Leases(lease_interval, lease_grace_period)
        barrier = ScreeningBarrier(
            poll_interval, wait_timeout, stale_warning, self._open, self._leases
        )
        if min_screening is not None and not asynchronous:
            raise ValueError(
                "min_screening only applies to the asynchronous search; pass asynchronous=True "
                "or drop min_screening."
            )
        if min_screening is None:
            min_screening = max(
                config.n_screening // 5, math.ceil(config.n_screening / config.n_promoted)
            )
        min_screening = count("min_screening", min_screening)
        promotion_retries = count("promotion_retries", promotion_retries, minimum=0)
        self.search_config = config
        self.n_screening = config.n_screening
        self.n_promoted = config.n_promoted
        self.estimator = get_estimator(estimator)
        self.criterion: Criterion = config.criterion
        self.asynchronous = bool(asynchronous)
        self.min_screening = min_screening
        self.promotion_retries = promotion_retries
        self._screening_sampler = screening_sampler or RandomSampler(seed=seed)
        self._starter = TrialStarter(
            config, barrier, self._open, self._leases, self._screening_sampler, promotion_retries
        )
        self._parents: dict[tuple[int, int], FrozenTrial] = {}

    @property
    def screening_sampler(self) -> BaseSampler:
        """The sampler that proposes screening candidates."""
        return self._screening_sampler

    @property
    def config(self) -> dict[str, Any]:
        """The settings that decide roles and rankings; every worker of a study must share
        them (they are stored in the study, and a worker with others is refused)."""
        return self.search_config.as_dict()

    def reseed_rng(self) -> None:
        self._screening_sampler.reseed_rng()

    # -- sampling ------------------------------------------------------------------------

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        if trial.user_attrs.get(_attrs.PHASE) in (_attrs.PHASE_PROMOTED, _attrs.PHASE_WITHDRAWN):
            return {}
        return self._screening_sampler.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if trial.user_attrs.get(_attrs.PHASE) in (_attrs.PHASE_PROMOTED, _attrs.PHASE_WITHDRAWN):
            return {}
        return self._screening_sampler.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        phase = trial.user_attrs.get(_attrs.PHASE)
        if phase == _attrs.PHASE_WITHDRAWN:
            raise optuna.TrialPruned(
                f"withdrawn before running: {trial.user_attrs.get(_attrs.EXCLUDED, '')}"
            )
        if phase != _attrs.PHASE_PROMOTED:
            return self._screening_sampler.sample_independent(
                study, trial, param_name, param_distribution
            )
        parent = self._parent(study, trial)
        if param_name not in parent.params:
            _state.mark_not_retried(study, trial, f"it suggests {param_name!r}, new to its parent")
            raise ValueError(
                f"Promoted trial {trial.number} suggests {param_name!r}, which its parent, "
                f"screening trial {parent.number}, never suggested (it has "
                f"{sorted(parent.params) or 'no parameters'}). A promoted trial reruns its "
                "parent's configuration: suggest the same parameters in both phases."
            )
        value = parent.params[param_name]
        try:
            contained = param_distribution._contains(param_distribution.to_internal_repr(value))
        except (ValueError, TypeError):
            contained = False
        if not contained:
            _state.mark_not_retried(
                study, trial, f"{param_name!r} = {value!r} is outside {param_distribution}"
            )
            raise ValueError(
                f"Promoted trial {trial.number} suggests {param_name!r} from "
                f"{param_distribution}, which does not contain the value {value!r} that its "
                f"parent, screening trial {parent.number}, used. Keep the search space "
                "unchanged between screening and promotion."
            )
        return value

    def _parent(self, study: Study, trial: FrozenTrial) -> FrozenTrial:
        number = int(trial.user_attrs[_attrs.PARENT])
        key = (study._study_id, number)
        parent = self._parents.get(key)
        if parent is None:
            trial_id = study._storage.get_trial_id_from_study_id_trial_number(
                study._study_id, number
            )
            parent = self._parents[key] = study._storage.get_trial(trial_id)
        return parent

    # -- trial life cycle ----------------------------------------------------------------

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        start = self._starter.start(study, trial)
        if not self.asynchronous:  # said once per study.optimize call, at its first trial
            slot = start.attrs.get(_attrs.SLOT) if start.screens else None
            self._budget.check(study, slot, self.n_screening, self.n_promoted)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._open.close(trial)
        # The trial is still RUNNING until Optuna writes its state after this hook, which may
        # take a while (a promotion refreshes the dashboard), but Optuna's heartbeat thread
        # stopped with the objective: one last heartbeat, or lease, gives it a grace period.
        beat(study, trial)
        self._leases.release(trial)
        if trial.user_attrs.get(_attrs.PHASE) == _attrs.PHASE_PROMOTED:
            if state == TrialState.FAIL and self.promotion_retries:
                deterministic = _state.deterministic_failure(trial, sys._getframe(1))
                _state.requeue_failed_promotion(
                    study, trial, self.promotion_retries, deterministic
                )
            notify(study, (trial, state, values))
        if trial.user_attrs.get(_attrs.PHASE) != _attrs.PHASE_SCREENING:
            return
        self._screening_sampler.after_trial(study, trial, state, values)
        reason = exclusion_reason(trial, state)
        if reason is not None:
            study._storage.set_trial_user_attr(trial._trial_id, _attrs.EXCLUDED, reason)
        elif self.asynchronous:
            _asynchronous.promote(study, trial, state, self.search_config, self.min_screening)
        if state == TrialState.COMPLETE and not _attrs.is_scored(trial):
            raise RuntimeError(
                f"Screening trial {trial.number} completed without a convexity score. Call "
                "optuna_convexity.report_convexity(trial, model, loader, loss_fn) after the "
                "first training epoch of your objective (or optuna_convexity.record_mu(trial, "
                "mu) with a score computed elsewhere)."
            )
        if state == TrialState.COMPLETE:
            _logger.warning(
                f"Screening trial {trial.number} completed instead of ending at the screening "
                "fidelity, so its value counts as a finished trial. Screening trials should end "
                "PRUNED: with ConvexityPruner, call trial.should_prune() after trial.report() "
                "in the training loop; without it, report_convexity() ends them itself; with "
                "Lightning, call ConvexityCallback.check_pruned() after trainer.fit()."
            )


# The criteria and the default are stated where they are defined; the docstring shows that text.
_CRITERIA = " " * 12 + ".. criteria: filled in from _criteria.listing() at import\n"
assert ConvexitySampler.__doc__ is not None and _CRITERIA in ConvexitySampler.__doc__
ConvexitySampler.__doc__ = ConvexitySampler.__doc__.replace(
    _CRITERIA, _criteria.listing(" " * 12) + "\n"
)
