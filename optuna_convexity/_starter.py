"""Starting a trial of the search: the one place that takes a trial from ``before_trial`` to
its start, calling the modules below in one order.

Each pass keeps the trial alive (:mod:`._waiting`), reads the stored state once
(:func:`._state.read`) and places the trial from it (:func:`._placement.place`); a promotion whose
round is still screening goes round again. Then its start is decided (:func:`._start.decide`)
and written in one step (:func:`._state.write_start`), and a screening trial is handed to the
screening sampler. A trial that cannot start is failed, and its promotion queued again
(:func:`._state.abandon`). On a storage without Optuna's heartbeat the trial holds a lease
from its :class:`._waiting.Waiting` until ``after_trial`` (:mod:`._lease`).
"""

from __future__ import annotations

import datetime
from typing import Any

from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial

from optuna_convexity import _placement
from optuna_convexity import _state
from optuna_convexity._lease import Leases
from optuna_convexity._start import decide
from optuna_convexity._start import Start
from optuna_convexity._state import SearchConfig
from optuna_convexity._waiting import OpenTrials
from optuna_convexity._waiting import ScreeningBarrier


class TrialStarter:
    """Starts each trial of a search (see the module)."""

    def __init__(
        self,
        config: SearchConfig,
        barrier: ScreeningBarrier,
        open_trials: OpenTrials,
        leases: Leases,
        screening_sampler: BaseSampler,
        promotion_retries: int,
    ) -> None:
        self._config = config
        self._barrier = barrier
        self._open = open_trials
        self._leases = leases
        self._screening_sampler = screening_sampler
        self._promotion_retries = promotion_retries
        self._checked_config: set[tuple[int, int]] = set()  # (id(storage), study id)
        self._foreign_seen: dict[tuple[int, int], int] = {}  # foreign trials warned about

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_checked_config"] = set()
        state["_foreign_seen"] = {}
        return state

    def start(self, study: Study, trial: FrozenTrial) -> Start:
        """Start ``trial``: decided, written, and handed to the screening sampler if it
        screens; if it cannot start, it is failed (and its promotion queued again)."""
        config = self._config
        self._open.open(trial)
        try:
            # Optuna's heartbeat thread starts only after before_trial returns, and a trial
            # without a heartbeat is never found stale: if its worker dies before then (a
            # promotion can wait here a long time), the trial would stay RUNNING forever. So
            # every pass beats first, and the trial beats once more when its start is written
            # (which tells the listeners: the dashboard's refresh can take seconds). On a
            # storage without heartbeat, the trial holds a lease from here until after_trial.
            waiting = self._barrier.enter(study, trial)
            snapshot: _state.Snapshot | None = None
            placement: _placement.Placement | None = None
            while True:
                waiting.keep_alive(snapshot, placement)
                if placement is not None and not placement.waits:
                    break
                key = (id(study._storage), study._study_id)
                snapshot = _state.read(
                    study,
                    check=snapshot is None,
                    config=None if key in self._checked_config else config,
                )
                self._checked_config.add(key)
                if len(snapshot.foreign) > self._foreign_seen.get(key, 0):  # again if more
                    self._foreign_seen[key] = len(snapshot.foreign)
                    _state.warn_foreign(study, snapshot.foreign)
                placement = _placement.place(
                    trial,
                    snapshot.trials,
                    config.n_screening,
                    config.n_promoted,
                    asynchronous=config.asynchronous,
                    frozen=snapshot.frozen,
                    retries_expected=waiting.retries_expected,
                    retry_grace=waiting.retry_grace,
                    now=datetime.datetime.now(),
                    criterion=config.criterion,
                    maximize=snapshot.maximize,
                )
            start = decide(trial, placement, config.n_promoted)
            _state.write_start(study, trial, start)
            if start.screens:
                self._screening_sampler.before_trial(study, trial)
            waiting.keep_alive(None, None)  # Optuna's heartbeat thread takes over now
        except BaseException as error:
            self._open.close(trial)
            self._leases.release(trial)
            _state.abandon(study, trial, error, config, self._promotion_retries)
            raise
        return start
