"""The waiting barrier of the synchronous search, and its liveness checks.

A trial holding a promotion slot waits, reading the storage with growing intervals, until the
screening of its round is closed (:class:`Waiting`; the trial's start, :mod:`._starter`, does
the reading and the deciding). While it waits it keeps the search alive: it beats its
heartbeat (:func:`beat`), gives orphaned trials one heartbeat so that Optuna can find them
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
from optuna_convexity._lease import heartbeat_interval
from optuna_convexity._lease import Leases
from optuna_convexity._lease import needs_lease
from optuna_convexity._placement import Placement
from optuna_convexity._roles import Candidate
from optuna_convexity._roles import FIXED_PARAMS
from optuna_convexity._roles import Resolution
from optuna_convexity._roles import RETRY_OF
from optuna_convexity._roles import Role
from optuna_convexity._state import ScreeningWaitError
from optuna_convexity._state import Snapshot


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
        """Give every RUNNING trial that has no phase yet one heartbeat, once (on a storage
        with heartbeat).

        A worker killed inside ``study.ask()`` before the sampler's ``before_trial`` ran
        leaves a RUNNING trial with no heartbeat, which Optuna never finds stale; a screening
        slot stuck like that would hold its round's promotions forever. One heartbeat makes it
        an ordinary stale trial after the grace period (Optuna then fails it and its retry
        callback requeues it). A live trial is unaffected: its own worker keeps beating.
        """
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
    """How long and how often a promotion waits for the screening it depends on, checked
    once; :meth:`enter` begins one trial's :class:`Waiting`."""

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

    def enter(self, study: Study, trial: FrozenTrial) -> Waiting:
        """The time before ``trial`` starts, in which it is kept alive (one per start); the
        trial holds its lease from here (a storage without heartbeat, see :mod:`._lease`)."""
        return Waiting(self, study, trial)


class Waiting:
    """The time before a trial starts: it is kept alive, and a promotion that waits is paced.

    It is bound to one trial of one study when it begins (:meth:`ScreeningBarrier.enter`): it
    reads there once how the storage finds dead trials, and the trial takes its lease. Every
    pass of the trial's start then begins with :meth:`keep_alive`: the trial's heartbeat, one
    heartbeat for orphaned trials, stale leases recovered, and, while the trial waits for the
    screening of its round, the checks, the log and the pause between two reads of the storage.
    """

    def __init__(self, barrier: ScreeningBarrier, study: Study, trial: FrozenTrial) -> None:
        storage = study._storage
        self._study = study
        self._trial = trial
        self._open = barrier._open
        self._wait_timeout = barrier._wait_timeout
        self._stale_warning = barrier._stale_warning
        self._leases = barrier._leases
        self.retry_grace = _RETRY_GRACE
        self._started = time.monotonic()
        self._interval, self._largest = barrier._poll_interval
        self._last_log = -math.inf
        self._warned: set[int] = set()
        self._queue_checked = False
        retried_by_storage = retry_callback(storage) is not None
        # How the storage finds dead trials, read once for the whole start:
        interval_of_storage = heartbeat_interval(storage)
        self._heartbeat = interval_of_storage is not None
        #: Stale trials are failed and requeued by the waiters (a storage without heartbeat).
        self._lease = needs_lease(storage)
        #: The storage retries a trial that dies without reporting (after ``retry_grace``).
        self.retries_expected = self._lease or (self._heartbeat and retried_by_storage)
        if interval_of_storage is not None:  # beat at least as often as the storage expects
            self._largest = min(self._largest, float(interval_of_storage))
            self._interval = min(self._interval, self._largest)
        # The trial holds its lease from here until after_trial (released on a failed start).
        self._leases.hold(study, trial)

    def keep_alive(self, snapshot: Snapshot | None, placement: Placement | None) -> None:
        """Beat the trial's heartbeat and give orphans among the trials of ``snapshot`` (the
        last read) one; fail and requeue those whose lease went stale (a storage without
        heartbeat); if ``placement`` waits, check, log and pause first, and fail stale trials
        after (a storage with heartbeat)."""
        study = self._study
        waits = placement is not None and placement.waits
        if waits:
            assert placement is not None and placement.resolution is not None
            self._pause(placement.role, placement.resolution)
        beat(study, self._trial)
        if snapshot is not None:
            trials = snapshot.trials
            if not self._queue_checked:
                self._queue_checked = True
                self._open.warn_if_sqlite_queue(study, self._trial, trials)
            if self._heartbeat:
                self._open.adopt_orphans(study, trials)
            if self._lease:
                self._leases.recover_stale(study, trials, snapshot.read_at)
        if waits and self._heartbeat:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)

    def _pause(self, role: Role, resolution: Resolution) -> None:
        """The trial's round is still screening: refuse to wait for this thread's own trials,
        say what it waits for, warn about trials that seem stuck, give up after
        ``wait_timeout``, and sleep, longer each time."""
        trial = self._trial
        open_round = resolution.open_round
        assert open_round is not None  # rounds close in order; this one is still open
        pending = resolution.pending
        running = [a for c in pending for a in c.attempts if not a.state.is_finished()]
        self._check_not_self_blocking(role, running)
        waited = time.monotonic() - self._started
        if waited - self._last_log >= _LOG_EVERY_SECONDS:
            numbers = ", ".join(str(c.final.number) for c in pending[:20])
            _logger.info(
                f"Trial {trial.number} (promotion rank {role.rank} of round {role.round}) "
                f"waits for {len(pending)} screening trial(s) of round {open_round} to "
                f"finish: {numbers}."
            )
            self._last_log = waited
        if not self._heartbeat:
            self._warn_if_stuck(resolution.candidates[open_round], running)
        if self._wait_timeout is not None and waited > self._wait_timeout:
            raise ScreeningWaitError(
                f"Trial {trial.number} waited {waited:.0f} s (wait_timeout) for screening "
                f"trials {[c.final.number for c in pending]} of round {open_round}. It is "
                "marked failed and queued again, so rank "
                f"{role.rank} will run when a worker picks it up."
            )
        time.sleep(self._interval)
        self._interval = min(self._largest, self._interval * 1.5)

    def _check_not_self_blocking(self, role: Role, running: Sequence[FrozenTrial]) -> None:
        """``study.ask()`` called again before ``study.tell()`` would wait for itself."""
        mine = self._open.of_this_thread(running)
        if mine:
            raise ScreeningWaitError(
                f"Trial {self._trial.number} holds promotion rank {role.rank} of round "
                f"{role.round}, which needs the results of screening trials {mine}, but those "
                "were asked for in this thread and not told yet: waiting would never end. Tell "
                "each screening trial (study.tell) before asking for more trials than "
                "n_screening. The trial is marked failed and queued again, so its rank is not "
                "lost."
            )

    def _warn_if_stuck(
        self, candidates: Sequence[Candidate], running: Sequence[FrozenTrial]
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
            if attempt.number in self._warned or attempt.datetime_start is None:
                continue
            seconds = (now - attempt.datetime_start).total_seconds()
            if seconds > limit:
                self._warned.add(attempt.number)
                if self._lease:
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
