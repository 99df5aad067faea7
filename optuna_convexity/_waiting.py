"""The waiting barrier of the synchronous search, and its liveness checks.

A trial holding a promotion slot waits, polling the storage with growing intervals, until the
screening of its round is closed, then takes the candidate of its rank
(:meth:`ScreeningBarrier.start_promoted`). While it waits it keeps the search alive: it beats
its heartbeat (:func:`beat`), gives orphaned trials one heartbeat so that Optuna can find them
stale (:meth:`OpenTrials.adopt_orphans`), or, on a storage without heartbeat, fails and
requeues the trials whose lease went stale (:mod:`._lease`); it refuses to wait for trials
that its own thread asked for and has not told, and warns about screening trials that seem
stuck.
"""

from __future__ import annotations

from collections.abc import Sequence
import datetime
import math
import statistics
import threading
import time
from typing import Any
import warnings

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.study import Study
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_convexity import _attrs
from optuna_convexity import _state
from optuna_convexity._lease import heartbeat_interval
from optuna_convexity._lease import Leases
from optuna_convexity._lease import needs_lease
from optuna_convexity._roles import Candidate
from optuna_convexity._roles import cleared_inheritance
from optuna_convexity._roles import FIXED_PARAMS
from optuna_convexity._roles import Resolution
from optuna_convexity._roles import RETRY_OF
from optuna_convexity._roles import Role
from optuna_convexity._state import ScreeningWaitError
from optuna_convexity._state import SearchConfig
from optuna_convexity._state import Start


_logger = optuna.logging.get_logger(__name__)

#: After a trial dies silently (heartbeat), how long to wait for Optuna to enqueue its retry.
_RETRY_GRACE = datetime.timedelta(seconds=60)
#: How often a waiting worker logs that it is still waiting.
_LOG_EVERY_SECONDS = 30.0


def retry_callback(storage: Any) -> Any:
    """The storage's callback for stale trials (e.g. ``RetryHeartbeatStaleTrialCallback``)."""
    getter = getattr(storage, "get_heartbeat_stale_trial_callback", None)
    return getter() if callable(getter) else None


def beat(study: Study, trial: FrozenTrial) -> None:
    """Record a heartbeat for the trial through Optuna's storage API, if it has heartbeats."""
    if heartbeat_interval(study._storage) is not None:
        study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]


class OpenTrials:
    """The trials this process has started and not finished, and the thread of each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: dict[int, int] = {}  # trial id -> thread that started it
        self._adopted: set[int] = set()  # trial ids given one heartbeat, see adopt_orphans
        self._warned_sqlite = False

    def __getstate__(self) -> dict[str, Any]:
        return {"_adopted": set(self._adopted), "_warned_sqlite": self._warned_sqlite}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
        self.__dict__.update(state)

    def open(self, trial: FrozenTrial) -> None:
        with self._lock:
            self._threads[trial._trial_id] = threading.get_ident()

    def close(self, trial: FrozenTrial) -> None:
        with self._lock:
            self._threads.pop(trial._trial_id, None)

    def ids(self) -> set[int]:
        with self._lock:
            return set(self._threads)

    def of_this_thread(self, trials: Sequence[FrozenTrial]) -> list[int]:
        """The numbers of ``trials`` that this thread started."""
        thread = threading.get_ident()
        with self._lock:
            return [t.number for t in trials if self._threads.get(t._trial_id) == thread]

    def adopt_orphans(self, study: Study, trials: Sequence[FrozenTrial]) -> None:
        """Give every RUNNING trial that has no phase yet one heartbeat, once.

        A worker killed inside ``study.ask()`` before the sampler's ``before_trial`` ran
        leaves a RUNNING trial with no heartbeat, which Optuna never finds stale; a screening
        slot stuck like that would hold its round's promotions forever. One heartbeat makes it
        an ordinary stale trial after the grace period (Optuna then fails it and its retry
        callback requeues it). A live trial is unaffected: its own worker keeps beating.
        """
        if heartbeat_interval(study._storage) is None:
            return
        ours = self.ids()
        for other in trials:
            if (
                other.state == TrialState.RUNNING
                and _attrs.PHASE not in other.user_attrs
                and other._trial_id not in ours
                and other._trial_id not in self._adopted
            ):
                self._adopted.add(other._trial_id)
                study._storage.record_heartbeat(other._trial_id)  # type: ignore[attr-defined]

    def warn_if_sqlite_queue(
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
        ours = self.ids()
        if any(t.state == TrialState.RUNNING and t._trial_id not in ours for t in trials):
            self._warned_sqlite = True
            _logger.warning(
                "This study runs from several processes on SQLite, and trial "
                f"{trial.number} was popped from Optuna's queue of waiting trials. SQLite "
                "cannot lock rows, so two processes may pop the same queued trial and run it "
                "twice (optuna/optuna#4002). Use PostgreSQL or MySQL (RDBStorage) or "
                "JournalStorage for several worker processes."
            )


class ScreeningBarrier:
    """Waits, polling the storage, until the screening a promotion depends on is closed."""

    def __init__(
        self,
        poll_interval: tuple[float, float],
        wait_timeout: float | None,
        stale_warning: float,
        open_trials: OpenTrials,
        leases: Leases,
    ) -> None:
        if (
            len(poll_interval) != 2
            or not 0 < poll_interval[0] <= poll_interval[1]
            or not all(math.isfinite(v) for v in poll_interval)
        ):
            raise ValueError(
                f"poll_interval must be (first, largest) seconds with 0 < first <= largest, "
                f"got {poll_interval!r}."
            )
        if wait_timeout is not None and not wait_timeout > 0:
            raise ValueError(f"wait_timeout must be positive or None, got {wait_timeout!r}.")
        if not stale_warning > 0:
            raise ValueError(f"stale_warning must be positive, got {stale_warning!r}.")
        self._poll_interval = (float(poll_interval[0]), float(poll_interval[1]))
        self._wait_timeout = wait_timeout
        self._stale_warning = float(stale_warning)
        self._open = open_trials
        self._leases = leases

    def start_promoted(
        self, study: Study, trial: FrozenTrial, role: Role, config: SearchConfig
    ) -> Start:
        """A trial holding a promotion slot: wait for the round's screening, then take the
        candidate of its rank, or screen in the next round if no candidate is left."""
        if _attrs.PHASE in trial.user_attrs:  # a retry: it inherited its original's decision
            released = trial.user_attrs[_attrs.PHASE] == _attrs.PHASE_SCREENING
            return Start(cleared_inheritance(trial) if released else {}, screens=released)
        assert role.rank is not None
        resolution = self.wait(study, trial, role, config)
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
                    f"{config.n_promoted} promotions ({excluded} screening trials were "
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

    def wait(
        self, study: Study, trial: FrozenTrial, role: Role, config: SearchConfig
    ) -> Resolution:
        """Poll the storage, with growing intervals, until the rounds up to the trial's are
        closed, or a retry of a dead screening trial is queued (see the caller)."""
        storage = study._storage
        interval_of_storage = heartbeat_interval(storage)
        heartbeat = interval_of_storage is not None
        lease = needs_lease(storage)  # stale trials are failed and requeued by the waiters
        retries_expected = lease or (heartbeat and retry_callback(storage) is not None)
        started = time.monotonic()
        interval, largest = self._poll_interval
        if interval_of_storage is not None:  # beat at least as often as the storage expects
            largest = min(largest, float(interval_of_storage))
            interval = min(interval, largest)
        last_log = -math.inf
        warned: set[int] = set()
        while True:
            read_at = time.monotonic()
            trials = storage.get_all_trials(study._study_id, deepcopy=False)
            if lease:
                self._leases.recover_stale(study, trials, read_at)
            resolution = _state.resolve(
                study, trials, config, retries_expected=retries_expected, retry_grace=_RETRY_GRACE
            )
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
                self._warn_if_stuck(resolution.candidates[open_round], running, warned, lease)
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
                beat(study, trial)
                self._open.adopt_orphans(study, trials)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)

    def _check_not_self_blocking(
        self, trial: FrozenTrial, role: Role, running: Sequence[FrozenTrial]
    ) -> None:
        """``study.ask()`` called again before ``study.tell()`` would wait for itself."""
        mine = self._open.of_this_thread(running)
        if mine:
            raise ScreeningWaitError(
                f"Trial {trial.number} holds promotion rank {role.rank} of round {role.round}, "
                f"which needs the results of screening trials {mine}, but those were asked for "
                "in this thread and not told yet: waiting would never end. Tell each screening "
                "trial (study.tell) before asking for more trials than n_screening. The trial "
                "is marked failed and queued again, so its rank is not lost."
            )

    def _warn_if_stuck(
        self,
        candidates: Sequence[Candidate],
        running: Sequence[FrozenTrial],
        warned: set[int],
        lease: bool,
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
                if lease:
                    _logger.warning(
                        f"Screening trial {attempt.number} has been running for {seconds:.0f} "
                        "s, and its worker still refreshes its lease, so the worker is alive; "
                        "it may be stuck. Stopping that worker fails the trial and queues it "
                        "again after lease_grace_period; or mark it failed from any process "
                        f"(study.tell({attempt.number}, state=optuna.trial.TrialState.FAIL))."
                    )
                    continue
                _logger.warning(
                    f"Screening trial {attempt.number} has been running for {seconds:.0f} s. "
                    "This storage has no heartbeat, so if its worker died it stays RUNNING and "
                    "the promotions keep waiting. Mark it failed from any process "
                    f"(study.tell({attempt.number}, state=optuna.trial.TrialState.FAIL)), or use "
                    "RDBStorage(..., heartbeat_interval=60, grace_period=120) so that Optuna "
                    "fails dead trials itself."
                )
