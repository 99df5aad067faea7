"""The two-phase search as an Optuna sampler."""

from __future__ import annotations

from collections.abc import Sequence
import copy
import datetime
import math
import statistics
import threading
import time
from typing import Any
import warnings

import optuna
from optuna.distributions import BaseDistribution
from optuna.exceptions import ExperimentalWarning
from optuna.samplers import BaseSampler
from optuna.samplers import RandomSampler
from optuna.study import Study
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_convexity import _attrs
from optuna_convexity import _criteria
from optuna_convexity import _dashboard
from optuna_convexity._criteria import Criterion
from optuna_convexity._dashboard import Finishing
from optuna_convexity._roles import assign_roles
from optuna_convexity._roles import Candidate
from optuna_convexity._roles import candidates_of_round
from optuna_convexity._roles import FIXED_PARAMS
from optuna_convexity._roles import foreign_trials
from optuna_convexity._roles import is_queued_promotion
from optuna_convexity._roles import ranking
from optuna_convexity._roles import Resolution
from optuna_convexity._roles import resolve
from optuna_convexity._roles import RETRY_OF
from optuna_convexity._roles import Role
from optuna_convexity.hessian import BaseHessianNormEstimator
from optuna_convexity.hessian import get_estimator


_logger = optuna.logging.get_logger(__name__)

#: After a trial dies silently (heartbeat), how long to wait for Optuna to enqueue its retry.
_RETRY_GRACE = datetime.timedelta(seconds=60)
#: How often a waiting worker logs that it is still waiting.
_LOG_EVERY_SECONDS = 30.0
#: Study system attribute holding a round's frozen ranking: ``convexity:ranking:<round>``.
_RANKING_KEY = "convexity:ranking:"
#: Study system attribute holding the settings every worker of the study must share.
CONFIG_KEY = "convexity:config"


class ScreeningWaitError(RuntimeError):
    """A promoted trial could not wait for the screening it depends on (see the message)."""


class ConvexitySampler(BaseSampler):
    """Strong-convexity-guided search: screen cheaply, promote the flattest.

    The study runs in rounds of ``n_screening + n_promoted`` trials:

    1. **Screening trials** sample parameters from ``screening_sampler`` (random search by
       default). The objective trains for one epoch and calls
       :func:`~optuna_convexity.report_convexity`, which scores the loss's flatness ``mu`` and
       ends the trial at that cheap fidelity. Screening trials end PRUNED, so
       ``study.best_trial`` is never one of them.
    2. When every screening trial of the round has finished, the ``n_promoted`` candidates with
       the lowest finite, positive ``mu`` are **promoted**: the next trials run exactly their
       parameters at the full budget, flattest first, each rank exactly once. A trial that
       starts while screening trials are still running waits for them, polling the storage.
       Failed candidates, candidates pruned before scoring and non-finite or non-positive
       scores are excluded (the reason is in the trial's ``convexity:excluded`` attribute);
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
            import optuna_convexity


            def objective(trial):
                lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
                model, loader, loss_fn = build(trial)  # your own code
                for epoch in range(20):
                    train_one_epoch(model, loader, lr)
                    optuna_convexity.report_convexity(trial, model, loader, loss_fn)
                    trial.report(validate(model), epoch)
                    if trial.should_prune():
                        raise optuna.TrialPruned()
                return validate(model)


            study = optuna.create_study(
                direction="maximize",
                sampler=optuna_convexity.ConvexitySampler(n_screening=50, n_promoted=10),
                pruner=optuna_convexity.ConvexityPruner(),
            )
            study.optimize(objective, n_trials=60)

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
            How candidates are ranked for promotion. ``"mu_in_better_half"`` (the default)
            ranks first, by ``mu``, the candidates whose last reported value
            (``trial.report`` in the screening epoch) is in the better half, then the rest by
            ``mu``: after one epoch a barely trained configuration can look flat because it
            has not moved, and this keeps it from being promoted first. The better half never
            holds more than half of the field: a tie at the median (e.g. many candidates still
            at chance accuracy) is left out when it would not fit. Screening trials that report
            no value are ranked by ``mu`` alone. ``"mu"`` is the paper's rule: the lowest
            ``mu`` first. In ``benchmarks/hpo_quality.py`` the paper's rule promoted barely
            trained candidates on all four datasets and lost to random search on digits; the
            default did not (see the README's "Results").
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
            failed. (Trials killed without a chance to fail are Optuna's heartbeat's job: see
            ``RDBStorage(heartbeat_interval=..., heartbeat_stale_trial_callback=...)``.)
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
    ) -> None:
        for name, value in (("n_screening", n_screening), ("n_promoted", n_promoted)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if n_promoted > n_screening:
            raise ValueError(
                f"n_promoted={n_promoted} exceeds n_screening={n_screening}: a round cannot "
                "promote more candidates than it screens. Lower n_promoted or raise n_screening."
            )
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
        if (
            len(poll_interval) != 2
            or not 0 < poll_interval[0] <= poll_interval[1]
            or not all(math.isfinite(v) for v in poll_interval)
        ):
            raise ValueError(
                f"poll_interval must be (first, largest) seconds with 0 < first <= largest, "
                f"got {poll_interval!r}."
            )
        criterion = _criteria.validate(criterion)
        if wait_timeout is not None and not wait_timeout > 0:
            raise ValueError(f"wait_timeout must be positive or None, got {wait_timeout!r}.")
        if not stale_warning > 0:
            raise ValueError(f"stale_warning must be positive, got {stale_warning!r}.")
        if min_screening is not None and not asynchronous:
            raise ValueError(
                "min_screening only applies to the asynchronous search; pass asynchronous=True "
                "or drop min_screening."
            )
        if min_screening is None:
            min_screening = max(n_screening // 5, math.ceil(n_screening / n_promoted))
        if not isinstance(min_screening, int) or min_screening < 1:
            raise ValueError(f"min_screening must be a positive integer, got {min_screening!r}.")
        if not isinstance(promotion_retries, int) or promotion_retries < 0:
            raise ValueError(
                f"promotion_retries must be a non-negative integer, got {promotion_retries!r}."
            )
        self.n_screening = n_screening
        self.n_promoted = n_promoted
        self.estimator = get_estimator(estimator)
        self.criterion: Criterion = criterion
        self.asynchronous = bool(asynchronous)
        self.min_screening = min_screening
        self.promotion_retries = promotion_retries
        self._screening_sampler = screening_sampler or RandomSampler(seed=seed)
        self._poll_interval = (float(poll_interval[0]), float(poll_interval[1]))
        self._wait_timeout = wait_timeout
        self._stale_warning = float(stale_warning)
        self._lock = threading.Lock()
        self._open_trials: dict[int, int] = {}  # trial id -> thread that started it
        self._parents: dict[tuple[int, int], FrozenTrial] = {}
        self._warned_sqlite = False
        self._adopted: set[int] = set()  # trial ids given one heartbeat, see _adopt_orphans
        self._checked_config: set[tuple[int, int]] = set()  # (id(storage), study id)

    @property
    def screening_sampler(self) -> BaseSampler:
        """The sampler that proposes screening candidates."""
        return self._screening_sampler

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        state["_open_trials"] = {}
        state["_checked_config"] = set()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

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
        with self._lock:
            self._open_trials[trial._trial_id] = threading.get_ident()
        # Optuna's heartbeat thread starts only after this hook returns, and a trial without a
        # heartbeat is never found stale: if its worker dies before then (a promotion can wait
        # here a long time), the trial would stay RUNNING forever. Beat now, and while waiting.
        _record_heartbeat(study, trial)
        try:
            trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
            self._check_study(study, trials)
            self._warn_if_sqlite_queue(study, trial, trials)
            self._adopt_orphans(study, trials)
            roles = assign_roles(trials, self.n_screening, self.n_promoted, self.asynchronous)
            role = roles.get(trial.number)
            if role is None:
                raise RuntimeError(
                    f"Trial {trial.number} retries trial {trial.system_attrs.get('failed_trial')}"
                    ", which ConvexitySampler did not run; it cannot tell its role."
                )
            if role.phase == "screening":
                attrs: dict[str, Any] = {
                    _attrs.PHASE: _attrs.PHASE_SCREENING,
                    _attrs.ROUND: role.round,
                }
                if role.slot is not None:
                    attrs[_attrs.SLOT] = role.slot
                self._set_attrs(study, trial, {**attrs, **_cleared_inheritance(trial)})
                self._screening_sampler.before_trial(study, trial)
            elif self.asynchronous:
                self._start_queued_promotion(study, trial, trials)
            else:
                self._start_promoted(study, trial, role)
            _record_heartbeat(study, trial)  # Optuna's heartbeat thread takes over from here
        except BaseException as error:
            self._abandon(study, trial, error)
            raise

    @property
    def config(self) -> dict[str, Any]:
        """The settings that decide roles and rankings; every worker of a study must share
        them (they are stored in the study, and a worker with others is refused)."""
        return {
            "n_screening": self.n_screening,
            "n_promoted": self.n_promoted,
            "criterion": self.criterion,
            "asynchronous": self.asynchronous,
        }

    def _check_config(self, study: Study) -> None:
        key = (id(study._storage), study._study_id)
        if key in self._checked_config:
            return
        stored = study._storage.get_study_system_attrs(study._study_id).get(CONFIG_KEY)
        if stored is None:
            study._storage.set_study_system_attr(study._study_id, CONFIG_KEY, self.config)
        elif stored != self.config:
            different = {
                k: (stored.get(k), v) for k, v in self.config.items() if stored.get(k) != v
            }
            raise ValueError(
                f"Study {study.study_name!r} runs a convexity search with {stored}, but this "
                f"worker's ConvexitySampler differs in {different} (stored, this worker). Every "
                "worker of a study must use the same n_screening, n_promoted, criterion and "
                "asynchronous, or they would disagree about which trial does what."
            )
        self._checked_config.add(key)

    def _check_study(self, study: Study, trials: Sequence[FrozenTrial]) -> None:
        if study._is_multi_objective():
            raise ValueError(
                "ConvexitySampler supports single-objective studies only: promotion keeps the "
                "flattest candidates and the best promoted trial is the best on one objective. "
                "Create the study with a single direction."
            )
        self._check_config(study)
        foreign = foreign_trials(trials)
        if foreign:
            shown = ", ".join(map(str, foreign[:10])) + (" ..." if len(foreign) > 10 else "")
            raise ValueError(
                f"Study {study.study_name!r} holds finished trials that ConvexitySampler did not "
                f"run (trial {shown}), e.g. from another sampler or study.add_trial. Its rounds "
                "are numbered from the study's first trial: run the search in a new study."
            )

    def _start_promoted(self, study: Study, trial: FrozenTrial, role: Role) -> None:
        """A trial holding a promotion slot: wait for the round's screening, then take the
        candidate of its rank, or screen in the next round if no candidate is left."""
        if _attrs.PHASE in trial.user_attrs:  # a retry: it inherited its original's decision
            if trial.user_attrs[_attrs.PHASE] == _attrs.PHASE_SCREENING:  # a released slot
                self._set_attrs(study, trial, _cleared_inheritance(trial))
                self._screening_sampler.before_trial(study, trial)
            return
        assert role.rank is not None
        resolution = self._wait_for_screening(study, trial, role)
        if role.round not in resolution.rankings:  # screening retries are queued
            self._withdraw(
                study,
                trial,
                "gave its promotion slot back so that its worker runs the queued screening "
                f"retries of round {resolution.open_round}; a copy keeps rank {role.rank}",
                requeue=True,
            )
            return
        ranked = resolution.rankings[role.round]
        self._freeze(study, resolution)
        if role.rank > len(ranked):
            if role.rank == len(ranked) + 1:
                excluded = len(resolution.candidates[role.round]) - len(ranked)
                _logger.warning(
                    f"Round {role.round} has {len(ranked)} valid candidates for "
                    f"{self.n_promoted} promotions ({excluded} screening trials were excluded; "
                    "see their 'convexity:excluded' attribute). The trials holding the other "
                    f"ranks screen new candidates for round {role.round + 1} instead."
                )
            self._set_attrs(
                study,
                trial,
                {_attrs.PHASE: _attrs.PHASE_SCREENING, _attrs.ROUND: role.round + 1},
            )
            self._screening_sampler.before_trial(study, trial)
            self._refresh_dashboard(study)
            return
        parent = ranked[role.rank - 1]
        self._set_attrs(
            study,
            trial,
            {
                _attrs.PHASE: _attrs.PHASE_PROMOTED,
                _attrs.ROUND: role.round,
                _attrs.RANK: role.rank,
                _attrs.PARENT: parent.final.number,
                _attrs.MU: parent.mu,
                _attrs.ESTIMATOR: parent.final.user_attrs.get(_attrs.ESTIMATOR),
            },
        )
        _logger.info(
            f"Trial {trial.number} is promoted rank {role.rank} of round {role.round}: it reruns "
            f"screening trial {parent.final.number} (mu={parent.mu:.6g}) at the full budget."
        )
        self._refresh_dashboard(study)

    @staticmethod
    def _frozen_rankings(study: Study) -> dict[int, list[int]]:
        frozen = {}
        for key, value in study._storage.get_study_system_attrs(study._study_id).items():
            if key.startswith(_RANKING_KEY):
                frozen[int(key[len(_RANKING_KEY) :])] = [int(n) for n in value]
        return frozen

    def _freeze(self, study: Study, resolution: Resolution) -> None:
        """Record each closed round's ranking once: a late retry cannot change a decision."""
        frozen = self._frozen_rankings(study)
        for round_number, ranked in resolution.rankings.items():
            if round_number not in frozen:
                study._storage.set_study_system_attr(
                    study._study_id,
                    f"{_RANKING_KEY}{round_number}",
                    [c.final.number for c in ranked],
                )

    def _resolve(self, study: Study, trials: Sequence[FrozenTrial], retries: bool) -> Resolution:
        return resolve(
            trials,
            self.n_screening,
            self.n_promoted,
            frozen=self._frozen_rankings(study),
            retries_expected=retries,
            retry_grace=_RETRY_GRACE,
            now=datetime.datetime.now(),
            criterion=self.criterion,
            maximize=study.direction == StudyDirection.MAXIMIZE,
        )

    def _wait_for_screening(self, study: Study, trial: FrozenTrial, role: Role) -> Resolution:
        """Poll the storage, with growing intervals, until the rounds up to the trial's are
        closed."""
        storage = study._storage
        heartbeat_interval = _heartbeat_interval(storage)
        heartbeat = heartbeat_interval is not None
        retries_expected = heartbeat and _retry_callback(storage) is not None
        started = time.monotonic()
        interval, largest = self._poll_interval
        if heartbeat_interval is not None:  # beat at least as often as the storage expects
            largest = min(largest, float(heartbeat_interval))
            interval = min(interval, largest)
        last_log = -math.inf
        warned: set[int] = set()
        while True:
            trials = storage.get_all_trials(study._study_id, deepcopy=False)
            resolution = self._resolve(study, trials, retries_expected)
            if role.round in resolution.rankings:
                return resolution
            open_round = resolution.open_round
            assert open_round is not None  # rounds close in order; this one is still open
            pending = resolution.pending
            if any(a.state == TrialState.WAITING for c in pending for a in c.attempts):
                # A retry of a dead screening trial is queued. If every live worker waited
                # here, nobody would ever run it: hand the slot back instead (see caller).
                return resolution
            running = [a for c in pending for a in c.attempts if not a.state.is_finished()]
            self._check_not_self_blocking(trial, role, running)
            waited = time.monotonic() - started
            if waited - last_log >= _LOG_EVERY_SECONDS:
                numbers = ", ".join(str(c.final.number) for c in pending[:20])
                _logger.info(
                    f"Trial {trial.number} (promotion rank {role.rank} of round {role.round}) "
                    f"waits for {len(pending)} screening trial(s) of round {open_round} to "
                    f"finish: {numbers}."
                )
                last_log = waited
            if not heartbeat:
                self._warn_if_stuck(resolution.candidates[open_round], running, warned)
            if self._wait_timeout is not None and waited > self._wait_timeout:
                raise ScreeningWaitError(
                    f"Trial {trial.number} waited {waited:.0f} s (wait_timeout) for screening "
                    f"trials {[c.final.number for c in pending]} of round {open_round}. It is "
                    "marked failed and queued again, so rank "
                    f"{role.rank} will run when a worker picks it up."
                )
            time.sleep(interval)
            interval = min(largest, interval * 1.5)
            if heartbeat:
                _record_heartbeat(study, trial)
                self._adopt_orphans(study, trials)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)

    def _check_not_self_blocking(
        self, trial: FrozenTrial, role: Role, running: Sequence[FrozenTrial]
    ) -> None:
        """``study.ask()`` called again before ``study.tell()`` would wait for itself."""
        thread = threading.get_ident()
        with self._lock:
            mine = [t.number for t in running if self._open_trials.get(t._trial_id) == thread]
        if mine:
            raise ScreeningWaitError(
                f"Trial {trial.number} holds promotion rank {role.rank} of round {role.round}, "
                f"which needs the results of screening trials {mine}, but those were asked for "
                "in this thread and not told yet: waiting would never end. Tell each screening "
                "trial (study.tell) before asking for more trials than n_screening. The trial "
                "is marked failed and queued again, so its rank is not lost."
            )

    def _warn_if_stuck(
        self, candidates: Sequence[Candidate], running: Sequence[FrozenTrial], warned: set[int]
    ) -> None:
        durations = [
            (a.datetime_complete - a.datetime_start).total_seconds()
            for c in candidates
            for a in c.attempts
            if a.state.is_finished() and a.datetime_start and a.datetime_complete
        ]
        limit = max(self._stale_warning, 5 * statistics.median(durations) if durations else 0.0)
        now = datetime.datetime.now()
        for attempt in running:
            if attempt.number in warned or attempt.datetime_start is None:
                continue
            seconds = (now - attempt.datetime_start).total_seconds()
            if seconds > limit:
                warned.add(attempt.number)
                _logger.warning(
                    f"Screening trial {attempt.number} has been running for {seconds:.0f} s. "
                    "This storage has no heartbeat, so if its worker died it stays RUNNING and "
                    "the promotions keep waiting. Mark it failed from any process "
                    f"(study.tell({attempt.number}, state=optuna.trial.TrialState.FAIL)), or use "
                    "RDBStorage(..., heartbeat_interval=60, grace_period=120) so that Optuna "
                    "fails dead trials itself."
                )

    def _adopt_orphans(self, study: Study, trials: Sequence[FrozenTrial]) -> None:
        """Give every RUNNING trial that has no phase yet one heartbeat, once.

        A worker killed inside ``study.ask()`` before this sampler's ``before_trial`` ran
        leaves a RUNNING trial with no heartbeat, which Optuna never finds stale; a screening
        slot stuck like that would hold its round's promotions forever. One heartbeat makes it
        an ordinary stale trial after the grace period (Optuna then fails it and its retry
        callback requeues it). A live trial is unaffected: its own worker keeps beating.
        """
        if _heartbeat_interval(study._storage) is None:
            return
        with self._lock:
            ours = set(self._open_trials)
        for other in trials:
            if (
                other.state == TrialState.RUNNING
                and _attrs.PHASE not in other.user_attrs
                and other._trial_id not in ours
                and other._trial_id not in self._adopted
            ):
                self._adopted.add(other._trial_id)
                study._storage.record_heartbeat(other._trial_id)  # type: ignore[attr-defined]

    def _requeue_failed_promotion(self, study: Study, trial: FrozenTrial) -> None:
        """Queue a copy of a failed promotion (same rank, parent and parameters), a bounded
        number of times; Optuna's retry callback does the copying and the counting."""
        history = trial.system_attrs.get("retry_history", [])
        if len(history) >= self.promotion_retries:
            _logger.warning(
                f"Promoted trial {trial.number} (rank {trial.user_attrs.get(_attrs.RANK)}) "
                f"failed after {len(history)} retries; its promotion is given up."
            )
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.promotion_retries)(
                study, copy.deepcopy(trial)
            )
        _logger.warning(
            f"Promoted trial {trial.number} (rank {trial.user_attrs.get(_attrs.RANK)}) failed; "
            "a copy with the same parameters is queued."
        )

    def _withdraw(self, study: Study, trial: FrozenTrial, reason: str, requeue: bool) -> None:
        """End the trial before it runs anything: it is pruned at its first suggestion (or
        its first ``should_prune()``), and, with ``requeue``, a copy keeps its role."""
        if requeue:
            frozen = study._storage.get_trial(trial._trial_id)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                optuna.storages.RetryHeartbeatStaleTrialCallback()(study, copy.deepcopy(frozen))
        self._set_attrs(
            study, trial, {_attrs.PHASE: _attrs.PHASE_WITHDRAWN, _attrs.EXCLUDED: reason}
        )
        _logger.info(f"Trial {trial.number} is withdrawn: it {reason}.")

    def _start_queued_promotion(
        self, study: Study, trial: FrozenTrial, trials: Sequence[FrozenTrial]
    ) -> None:
        """Asynchronous search: run the queued promotion, unless another trial queued the same
        one first (then withdraw this copy)."""
        parent = trial.user_attrs.get(_attrs.PARENT)
        copies = [
            t.number
            for t in trials
            if is_queued_promotion(t) and t.user_attrs.get(_attrs.PARENT) == parent
        ]
        if copies and min(copies) != trial.number and RETRY_OF not in trial.system_attrs:
            self._withdraw(
                study,
                trial,
                f"duplicates the promotion of trial {parent} queued as trial {min(copies)}",
                requeue=False,
            )
            return
        _logger.info(
            f"Trial {trial.number} is promoted (asynchronous): it reruns screening trial "
            f"{parent} at the full budget."
        )
        self._refresh_dashboard(study)

    def _promote_asynchronously(self, study: Study, trial: FrozenTrial, state: TrialState) -> None:
        """Queue every scored candidate that now ranks in the best fraction and is not queued."""
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        roles = assign_roles(trials, self.n_screening, self.n_promoted, asynchronous=True)
        candidates: list[Candidate] = []
        for round_number in sorted({r.round for r in roles.values() if r.phase == "screening"}):
            candidates += candidates_of_round(trials, roles, round_number)
        this = next(
            (c for c in candidates if trial.number in (a.number for a in c.attempts)), None
        )
        if this is not None:  # the storage does not know this trial's final state yet
            this.attempts[-1] = copy.copy(this.final)
            this.attempts[-1].state = state
        ranked = ranking(
            [c for c in candidates if c.exclusion is None],
            self.criterion,
            study.direction == StudyDirection.MAXIMIZE,
        )
        if len(ranked) < self.min_screening:
            return
        quota = max(1, (len(ranked) * self.n_promoted) // self.n_screening)
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
                user_attrs={
                    _attrs.PHASE: _attrs.PHASE_PROMOTED,
                    _attrs.ROUND: roles[candidate.root].round,
                    _attrs.RANK: rank,
                    _attrs.PARENT: parent.number,
                    _attrs.MU: candidate.mu,
                    _attrs.ESTIMATOR: parent.user_attrs.get(_attrs.ESTIMATOR),
                },
            )
            _logger.info(
                f"Screening trial {parent.number} (mu={candidate.mu:.6g}) ranks {rank} of "
                f"{len(ranked)} scored candidates: its promotion is queued."
            )

    def _warn_if_sqlite_queue(
        self, study: Study, trial: FrozenTrial, trials: Sequence[FrozenTrial]
    ) -> None:
        """SQLite cannot pop queued trials atomically across processes: say so, once."""
        if self._warned_sqlite or not (
            RETRY_OF in trial.system_attrs or FIXED_PARAMS in trial.system_attrs
        ):
            return
        url = str(getattr(getattr(study._storage, "_backend", study._storage), "url", ""))
        if not url.startswith("sqlite"):
            return
        with self._lock:
            ours = set(self._open_trials)
        if any(t.state == TrialState.RUNNING and t._trial_id not in ours for t in trials):
            self._warned_sqlite = True
            _logger.warning(
                "This study runs from several processes on SQLite, and trial "
                f"{trial.number} was popped from Optuna's queue of waiting trials. SQLite "
                "cannot lock rows, so two processes may pop the same queued trial and run it "
                "twice (optuna/optuna#4002). Use PostgreSQL or MySQL (RDBStorage) or "
                "JournalStorage for several worker processes."
            )

    def _abandon(self, study: Study, trial: FrozenTrial, error: BaseException) -> None:
        """The trial cannot start: fail it, and queue a copy if it holds a promotion.

        The copy is made by Optuna's own retry callback, so it keeps the role of the original
        (see :mod:`optuna_convexity._roles`): no rank is lost, and none runs twice.
        """
        with self._lock:
            self._open_trials.pop(trial._trial_id, None)
        storage = study._storage
        try:
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                return
        except optuna.exceptions.UpdateFinishedTrialError:
            return
        if isinstance(error, (ValueError, TypeError)):
            return  # a mistake in the set-up: retrying would fail the same way
        frozen = storage.get_trial(trial._trial_id)
        roles = assign_roles(
            storage.get_all_trials(study._study_id, deepcopy=False),
            self.n_screening,
            self.n_promoted,
            self.asynchronous,
        )
        role = roles.get(trial.number)
        if role is None or role.phase != "promoted":
            return
        # Interruptions (Ctrl-C, wait_timeout, a blocked ask/tell) may repeat any number of
        # times; an unexpected error is retried a few times only, so that a bug cannot loop.
        interrupted = isinstance(error, (ScreeningWaitError, KeyboardInterrupt, SystemExit))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=None if interrupted else 3
            )
            retry(study, copy.deepcopy(frozen))
        _logger.warning(
            f"Trial {trial.number} (promotion rank {role.rank} of round {role.round}) did not "
            f"start ({type(error).__name__}); it is failed and queued again."
        )

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        with self._lock:
            self._open_trials.pop(trial._trial_id, None)
        if trial.user_attrs.get(_attrs.PHASE) == _attrs.PHASE_PROMOTED:
            if state == TrialState.FAIL and self.promotion_retries:
                self._requeue_failed_promotion(study, trial)
            self._refresh_dashboard(study, (trial, state, values))
        if trial.user_attrs.get(_attrs.PHASE) != _attrs.PHASE_SCREENING:
            return
        self._screening_sampler.after_trial(study, trial, state, values)
        scored = trial.user_attrs.get(_attrs.SCORED_BY) == trial.number
        reason = _exclusion_reason(trial, state, scored)
        if reason is not None:
            study._storage.set_trial_user_attr(trial._trial_id, _attrs.EXCLUDED, reason)
        elif self.asynchronous:
            self._promote_asynchronously(study, trial, state)
        if state == TrialState.COMPLETE and not scored:
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

    @staticmethod
    def _refresh_dashboard(study: Study, finishing: Finishing | None = None) -> None:
        """Update optuna-dashboard's note and figures; never let it disturb the search."""
        try:
            _dashboard.refresh(study, finishing)
        except Exception:  # the search matters more than its display
            _logger.warning("Could not update the dashboard note and figures.", exc_info=True)

    def _set_attrs(self, study: Study, trial: FrozenTrial, attrs: dict[str, Any]) -> None:
        # Each attribute is its own write, and readers in other processes key on the phase:
        # write it last, so that a trial with a phase always has the rest.
        for key, value in sorted(attrs.items(), key=lambda item: item[0] == _attrs.PHASE):
            study._storage.set_trial_user_attr(trial._trial_id, key, value)
            # The Trial object caches this FrozenTrial; keep trial.user_attrs in step.
            trial.user_attrs[key] = value


def _cleared_inheritance(trial: FrozenTrial) -> dict[str, Any]:
    """Optuna's retry copies the attempt's attributes; a screening retry must not keep the
    score and the exclusion of the attempt it repeats."""
    if RETRY_OF not in trial.system_attrs:
        return {}
    return {
        key: None for key in (_attrs.MU, _attrs.EXCLUDED) if trial.user_attrs.get(key) is not None
    }


def _heartbeat_interval(storage: Any) -> int | None:
    """The storage's heartbeat interval, or ``None`` if it has no heartbeat (Optuna's
    ``RDBStorage(heartbeat_interval=...)``, directly or behind its cache)."""
    getter = getattr(storage, "get_heartbeat_interval", None)
    return getter() if callable(getter) else None


def _record_heartbeat(study: Study, trial: FrozenTrial) -> None:
    """Record a heartbeat for the trial through Optuna's storage API, if it has heartbeats."""
    if _heartbeat_interval(study._storage) is not None:
        study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]


def _retry_callback(storage: Any) -> Any:
    """The storage's callback for stale trials (e.g. ``RetryHeartbeatStaleTrialCallback``)."""
    getter = getattr(storage, "get_heartbeat_stale_trial_callback", None)
    return getter() if callable(getter) else None


def _exclusion_reason(trial: FrozenTrial, state: TrialState, scored: bool) -> str | None:
    if state == TrialState.FAIL:
        return "failed" + (" after scoring" if scored else " before scoring")
    if not scored:
        return "pruned before scoring" if state == TrialState.PRUNED else "no mu recorded"
    mu = trial.user_attrs.get(_attrs.MU)
    if mu is None or not math.isfinite(mu):
        return "mu is not finite"
    if mu <= 0:
        return "mu is not positive"
    return None
