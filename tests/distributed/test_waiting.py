"""Waiting for the screening: cheap, bounded, outspoken, and never a deadlock."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
import threading
import time
from typing import Any

import optuna
from optuna.trial import TrialState
import pytest

import optuna_convexity
from optuna_convexity import _attrs
from tests.search.helpers import check_round
from tests.search.helpers import objective


def _journal(tmp_path: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "waiting.journal"))
    )


def _screen(study: optuna.Study, trial: optuna.Trial) -> None:
    with pytest.raises(optuna.TrialPruned):
        objective(trial)
    study.tell(trial, state=TrialState.PRUNED)


class _CountingStorage:
    """Counts the full reads a waiting worker makes (everything else is delegated)."""

    def __init__(self, storage: Any) -> None:
        self._storage = storage
        self.reads: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def get_all_trials(self, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "waiter":
            self.reads.append(time.monotonic())
        return self._storage.get_all_trials(*args, **kwargs)


def test_waiting_reads_the_storage_a_few_times_per_second_at_most(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = _CountingStorage(_journal(tmp_path))
    sampler = optuna_convexity.ConvexitySampler(2, 1, stale_warning=1.0)  # default polling
    study = optuna.create_study(
        storage=storage,  # type: ignore[arg-type]
        sampler=sampler,
        pruner=optuna_convexity.ConvexityPruner(),
    )
    first, stuck = study.ask(), study.ask()
    _screen(study, first)
    waiter = threading.Thread(target=study.ask, name="waiter")
    optuna.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING, logger="optuna_convexity"):
            waiter.start()
            time.sleep(6.0)
            assert waiter.is_alive()
    finally:
        optuna.logging.disable_propagation()
    reads = storage.reads
    rate = len(reads) / (reads[-1] - reads[0])
    assert 1.0 < rate <= 4.0, f"{len(reads)} reads in {reads[-1] - reads[0]:.1f} s"
    gaps = [b - a for a, b in itertools.pairwise(reads)]
    assert gaps[-1] > 1.5 * gaps[0]  # the interval grows (backoff), no busy loop
    # The stuck trial's worker (this process) keeps its lease fresh, so it is not failed; the
    # waiting worker says what is going on and what to do.
    warning = next(r.getMessage() for r in caplog.records if "has been running" in r.getMessage())
    assert f"Screening trial {stuck.number}" in warning
    assert "still refreshes its lease" in warning
    assert f"study.tell({stuck.number}, state=optuna.trial.TrialState.FAIL)" in warning
    assert study.trials[stuck.number].state == TrialState.RUNNING
    # Following the advice unblocks the promotion at once.
    study.tell(stuck.number, state=TrialState.FAIL)
    waiter.join(timeout=15)
    assert not waiter.is_alive()
    promoted = study.trials[2]
    assert promoted.user_attrs[_attrs.PARENT] == first.number


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_queued_screening_retry_is_not_waited_for_but_run(tmp_path: Path) -> None:
    """If every worker waited for a queued retry, nobody would run it: hand the slot back."""
    study = optuna.create_study(
        storage=_journal(tmp_path),
        # mu alone decides, so that the retry's lower mu makes it the one promoted.
        sampler=optuna_convexity.ConvexitySampler(2, 1, criterion="mu", poll_interval=(0.05, 0.1)),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    first, dying = study.ask(), study.ask()
    with pytest.raises(optuna.TrialPruned):
        objective(first)
    optuna_convexity.record_mu(first, 1e6, estimator="synthetic")  # the retry must beat it
    study.tell(first, state=TrialState.PRUNED)
    result: dict[str, optuna.Trial] = {}
    waiter = threading.Thread(target=lambda: result.update(trial=study.ask()))
    waiter.start()
    time.sleep(0.5)
    # What Optuna's heartbeat does to a dead worker's trial: fail it, queue a retry.
    study.tell(dying, state=TrialState.FAIL)
    optuna.storages.RetryHeartbeatStaleTrialCallback()(study, study.trials[dying.number])
    waiter.join(timeout=15)
    withdrawn = result["trial"]
    assert withdrawn.user_attrs[_attrs.PHASE] == _attrs.PHASE_WITHDRAWN
    assert "queued screening" in withdrawn.user_attrs[_attrs.EXCLUDED]
    with pytest.raises(optuna.TrialPruned):  # before the objective trains anything
        withdrawn.suggest_float("x", -1.0, 1.0)
    study.tell(withdrawn, state=TrialState.PRUNED)
    retry = study.ask()  # the worker picks up the queued retry first
    assert retry.number == 3 and optuna_convexity.is_screening(retry)
    assert retry.user_attrs.get(_attrs.EXCLUDED) is None  # not its original's
    _screen(study, retry)
    promotion = study.ask()  # then the copy of the withdrawn promotion, which keeps rank 1
    assert promotion.user_attrs[_attrs.RANK] == 1
    assert promotion.user_attrs[_attrs.PARENT] == retry.number  # the retried candidate won
    study.tell(promotion, objective(promotion))
    check_round(study, 0, 2, 1)


def test_fail_running_trials_requeues_promotions(tmp_path: Path) -> None:
    study = optuna.create_study(
        storage=_journal(tmp_path),
        sampler=optuna_convexity.ConvexitySampler(2, 2, poll_interval=(0.05, 0.1)),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    for _ in range(2):
        _screen(study, study.ask())
    study.ask()  # promoted rank 1 ... and then its worker is killed
    assert optuna_convexity.fail_running_trials(study) == [2]
    queued = study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["failed_trial"] for t in queued] == [2]
    study.optimize(objective, n_trials=2)
    check_round(study, 0, 2, 2)
    with pytest.raises(ValueError, match="needs the study's ConvexitySampler"):
        optuna_convexity.fail_running_trials(optuna.create_study())


def test_a_failed_promotion_is_requeued_a_bounded_number_of_times() -> None:
    study = optuna.create_study(
        sampler=optuna_convexity.ConvexitySampler(2, 1, poll_interval=(0.05, 0.1)),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    attempts = []

    def flaky(trial: optuna.Trial) -> float:
        if optuna_convexity.is_promoted(trial):
            attempts.append(trial.number)
            if len(attempts) == 1:
                raise KeyboardInterrupt  # Ctrl-C in the middle of the full training
        return objective(trial)

    with pytest.raises(KeyboardInterrupt):
        study.optimize(flaky, n_trials=3)
    study.optimize(flaky, n_trials=1)  # "starting the script again"
    assert attempts == [2, 3]
    assert study.trials[3].system_attrs["failed_trial"] == 2
    check_round(study, 0, 2, 1)
