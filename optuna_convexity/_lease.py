"""Liveness of running trials: Optuna's heartbeat where the storage has one, a lease elsewhere.

A worker that dies mid-trial (SIGKILL, a lost machine, the OOM killer) leaves its trial
RUNNING, and a RUNNING screening trial holds its round's promotions. Optuna finds such trials
with its heartbeat, but only on ``RDBStorage(heartbeat_interval=...)``: it has none for
``JournalStorage``, none through ``GrpcStorageProxy`` (which Optuna recommends for thousands
of workers), and none on an ``RDBStorage`` without ``heartbeat_interval``. For those storages
this module builds a lease on Optuna's public storage API alone:

- The process running a trial holds its lease: a daemon thread writes the time into the
  trial's ``convexity:lease`` system attribute (:data:`._attrs.LEASE`) every
  ``lease_interval`` seconds, from before the trial's role is decided (a promotion waiting at
  the barrier holds it too) until the trial is told.
- Every other worker, at each trial start and while it waits at the barrier, looks at the
  RUNNING trials it does not hold and that hold a lease (a trial run by a process without the
  sampler holds none, and is left alone). A trial whose lease value has not changed for
  ``lease_grace_period`` seconds *of the observing worker's own clock* is stale: the
  observer fails it through the storage's state transition (``set_trial_state_values``, which
  lets exactly one worker turn a RUNNING trial FAIL; the others get ``False`` or
  ``UpdateFinishedTrialError``), and the winner requeues it with the search's one retry
  policy (:func:`._state.requeue`: Optuna's ``RetryHeartbeatStaleTrialCallback`` copy with
  ``failed_trial`` and ``retry_history``), as the heartbeat path does. A screening candidate
  is screened again; a promotion keeps its rank, parent and parameters.

Comparing values rather than times needs no synchronised clocks between machines; the price is
that a worker started after every other one died waits one grace period before it recovers
their trials. An in-memory storage needs no lease: its trials die with their process.
"""

from __future__ import annotations

from collections.abc import Sequence
import datetime
import math
import threading
from typing import Any

import optuna
from optuna.storages import InMemoryStorage
from optuna.study import Study
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from optuna_convexity import _attrs
from optuna_convexity import _state


_logger = optuna.logging.get_logger(__name__)


def heartbeat_interval(storage: Any) -> int | None:
    """The storage's heartbeat interval, or ``None`` if it has no heartbeat (Optuna's
    ``RDBStorage(heartbeat_interval=...)``, directly or behind its cache)."""
    getter = getattr(storage, "get_heartbeat_interval", None)
    return getter() if callable(getter) else None


def needs_lease(storage: Any) -> bool:
    """Whether trials on ``storage`` need a lease: it has no heartbeat, and other processes
    can see it (an in-memory storage dies with its only process)."""
    return heartbeat_interval(storage) is None and not isinstance(storage, InMemoryStorage)


class _Holding:
    """The thread refreshing one trial's lease, how to stop it, and the storage it writes."""

    def __init__(self, thread: threading.Thread, stop: threading.Event, storage: Any) -> None:
        self.thread = thread
        self.stop = stop
        self.storage = storage


class Leases:
    """The leases this process holds, and what it has seen of the others' (see the module).

    Args:
        interval: Seconds between two refreshes of a held lease.
        grace_period: Seconds a lease may stay unchanged before its trial counts as dead.
    """

    def __init__(self, interval: float, grace_period: float) -> None:
        for name, value in (("lease_interval", interval), ("lease_grace_period", grace_period)):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}.")
        if grace_period < 2 * interval:
            raise ValueError(
                f"lease_grace_period={grace_period!r} is less than twice lease_interval="
                f"{interval!r}: a live worker that is a little late to refresh its lease would "
                "have its trial failed. Use a grace period of several intervals (the defaults "
                "are 10 s and 60 s)."
            )
        self.interval = float(interval)
        self.grace_period = float(grace_period)
        self._lock = threading.Lock()
        self._held: dict[int, _Holding] = {}  # trial id -> the thread refreshing its lease
        self._seen: dict[int, tuple[Any, float]] = {}  # trial id -> (lease, first seen)

    def __getstate__(self) -> dict[str, Any]:
        return {"interval": self.interval, "grace_period": self.grace_period}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["interval"], state["grace_period"])  # type: ignore[misc]

    # -- the leases this process holds --------------------------------------------------

    def hold(self, study: Study, trial: FrozenTrial) -> None:
        """Write the trial's lease now, and keep refreshing it until :meth:`release`."""
        storage = study._storage
        if not needs_lease(storage):
            return
        trial_id = trial._trial_id
        _refresh(storage, trial_id)
        stop = threading.Event()
        thread = threading.Thread(
            target=self._refresh_until_stopped,
            args=(storage, trial_id, trial.number, stop),
            name=f"convexity-lease-{trial.number}",
            daemon=True,  # a dying process must not be kept alive by its leases
        )
        with self._lock:
            self._held[trial_id] = _Holding(thread, stop, storage)
        thread.start()

    def release(self, trial: FrozenTrial) -> None:
        """Stop refreshing the trial's lease, and refresh it one last time: its final state is
        written after this (by Optuna's ``tell``), within a grace period from now."""
        with self._lock:
            holding = self._held.pop(trial._trial_id, None)
        if holding is None:
            return
        holding.stop.set()
        if holding.thread is not threading.current_thread():
            holding.thread.join(timeout=self.interval + 5.0)
        try:
            _refresh(holding.storage, trial._trial_id)
        except Exception:  # finished already, or a storage hiccup: the last refresh is a bonus
            pass

    def _refresh_until_stopped(
        self, storage: Any, trial_id: int, number: int, stop: threading.Event
    ) -> None:
        warned = False
        while not stop.wait(self.interval):
            try:
                _refresh(storage, trial_id)
            except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
                if not stop.is_set():  # not told by this process: another worker failed it
                    _logger.warning(
                        f"Trial {number} is no longer running in the storage although this "
                        "process still runs it: another worker found its lease stale (was "
                        f"this process stalled for more than {self.grace_period:.0f} s, "
                        "lease_grace_period?) and failed it; its retry runs elsewhere."
                    )
                return
            except Exception as error:  # a storage hiccup: keep trying, say so once
                if not warned:
                    warned = True
                    _logger.warning(
                        f"Could not refresh the lease of trial {number} ({error!r}); "
                        "retrying every lease_interval."
                    )

    # -- the leases of other processes ---------------------------------------------------

    def recover_stale(
        self, study: Study, trials: Sequence[FrozenTrial], read_at: float
    ) -> list[int]:
        """Fail every RUNNING trial whose lease went stale, and requeue it; returns the
        numbers of the trials this worker failed (another worker may win some).

        ``read_at`` is when (``time.monotonic()``) the read of ``trials`` began: a lease is
        stale once it is unchanged in two reads that *began* a grace period apart, however
        long the reads and what came between them took.
        """
        if not needs_lease(study._storage):
            return []
        now = read_at
        stale = []
        with self._lock:
            running = {}
            for trial in trials:
                if trial.state != TrialState.RUNNING or trial._trial_id in self._held:
                    continue
                lease = trial.system_attrs.get(_attrs.LEASE)
                if lease is None:  # never held one: run by another sampler, leave it alone
                    continue
                running[trial._trial_id] = trial
                seen = self._seen.get(trial._trial_id)
                if seen is None or seen[0] != lease:
                    self._seen[trial._trial_id] = (lease, now)
                elif now - seen[1] >= self.grace_period:
                    stale.append((trial, now - seen[1]))
            self._seen = {i: s for i, s in self._seen.items() if i in running}
        return [trial.number for trial, seconds in stale if _recover(study, trial, seconds)]


def _refresh(storage: Any, trial_id: int) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
    storage.set_trial_system_attr(trial_id, _attrs.LEASE, now)


def _recover(study: Study, trial: FrozenTrial, seconds: float) -> bool:
    """Fail a trial whose lease is stale and requeue it; ``False`` if another worker (or its
    own, finishing it) changed its state first."""
    if not _state.fail(study, trial):
        return False
    # Its worker stopped: retried without limit, as after fail_running_trials.
    limit = _state.retry_limit(None, started=False, promotion_retries=0)
    _state.requeue(study, study._storage.get_trial(trial._trial_id), limit)
    phase = trial.user_attrs.get(_attrs.PHASE, "no phase yet")
    held = (
        f"rank {trial.user_attrs.get(_attrs.RANK)} of round {trial.user_attrs.get(_attrs.ROUND)}"
        if phase == _attrs.PHASE_PROMOTED
        else f"round {trial.user_attrs.get(_attrs.ROUND, '?')}"
    )
    _logger.warning(
        f"Trial {trial.number} ({phase}, {held}) has not refreshed its lease for "
        f"{seconds:.0f} s (lease_grace_period): its worker seems to have died. It is failed "
        "and queued again with the same role."
    )
    return True
