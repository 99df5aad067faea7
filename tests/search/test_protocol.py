"""The two-phase protocol with synthetic scores: storages, threads, ask/tell, restarts."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
import subprocess
import sys
import threading
import time

import optuna
from optuna.trial import TrialState
import pytest

import optuna_convexity
from optuna_convexity import _attrs
from tests.search.helpers import check_round
from tests.search.helpers import objective
from tests.search.helpers import phases
from tests.search.helpers import promotion_order


FAST = {"poll_interval": (0.02, 0.1)}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["memory", "sqlite", "journal"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> object:
    if request.param == "memory":
        return None
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.journal"))
    )


def _study(storage: object = None, n_screening: int = 8, n_promoted: int = 3, **kwargs: object):
    return optuna.create_study(
        storage=storage,  # type: ignore[arg-type]
        sampler=optuna_convexity.ConvexitySampler(
            n_screening, n_promoted, seed=1, **FAST, **kwargs
        ),  # type: ignore[arg-type]
        pruner=optuna_convexity.ConvexityPruner(),
    )


def test_one_round_promotes_the_flattest_once(storage: object) -> None:
    study = _study(storage)
    study.optimize(objective, n_trials=11)
    check_round(study, 0, 8, 3)
    grouped = phases(study)
    assert len(grouped["screening"]) == 8 and len(grouped["promoted"]) == 3
    assert all(t.state == TrialState.PRUNED for t in grouped["screening"])
    # Pruned screening trials keep their last reported value; the best trial is promoted.
    assert all(t.value == t.intermediate_values[0] for t in grouped["screening"])
    assert optuna_convexity.is_promoted(study.best_trial)
    # Promotion order: flattest first, in trial order.
    ranks = [
        t.user_attrs[_attrs.RANK] for t in sorted(grouped["promoted"], key=lambda t: t.number)
    ]
    assert ranks == [1, 2, 3]


def test_rounds_follow_each_other(storage: object) -> None:
    study = _study(storage, 5, 2)
    study.optimize(objective, n_trials=14)
    check_round(study, 0, 5, 2)
    check_round(study, 1, 5, 2)
    round_of = {t.number: t.user_attrs[_attrs.ROUND] for t in study.trials}
    assert [round_of[n] for n in range(14)] == [0] * 7 + [1] * 7
    # Round 1 promotes from its own candidates only.
    for t in phases(study)["promoted"]:
        assert round_of[t.user_attrs[_attrs.PARENT]] == t.user_attrs[_attrs.ROUND]


def test_threads(storage: object) -> None:
    study = _study(storage, 10, 4)
    study.optimize(functools.partial(objective, sleep=0.05), n_trials=28, n_jobs=4)
    check_round(study, 0, 10, 4)
    check_round(study, 1, 10, 4)


def test_ask_and_tell(storage: object) -> None:
    study = _study(storage, 6, 2)
    for _ in range(8):
        trial = study.ask()
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, value)
    check_round(study, 0, 6, 2)


def test_a_promotion_waits_for_running_screening_trials(caplog: pytest.LogCaptureFixture) -> None:
    study = _study(None, 3, 1)
    slow = [study.ask() for _ in range(3)]  # three screening trials, still running
    result: dict[str, optuna.Trial] = {}
    waiter = threading.Thread(target=lambda: result.update(promoted=study.ask()))
    with caplog.at_level(logging.INFO, logger="optuna_convexity"):
        optuna.logging.enable_propagation()
        try:
            waiter.start()
            time.sleep(0.3)
            assert waiter.is_alive(), "the promoted trial must wait for the screening"
            for trial in slow:
                with pytest.raises(optuna.TrialPruned):
                    objective(trial)
                study.tell(trial, state=TrialState.PRUNED)
            waiter.join(timeout=10)
        finally:
            optuna.logging.disable_propagation()
    promoted = result["promoted"]
    assert optuna_convexity.is_promoted(promoted)
    expected = promotion_order(study, [study.trials[t.number] for t in slow])[0]
    assert promoted.user_attrs[_attrs.PARENT] == expected.number
    study.tell(promoted, objective(promoted))
    assert study.trials[promoted.number].params == expected.params
    assert any("waits for 3 screening trial(s)" in r.getMessage() for r in caplog.records)


def test_asking_past_the_screening_without_telling_fails_clearly() -> None:
    study = _study(None, 3, 2)
    screening = [study.ask() for _ in range(3)]
    with pytest.raises(optuna_convexity.ScreeningWaitError, match="not told yet"):
        study.ask()
    blocked = study.trials[3]
    assert blocked.state == TrialState.FAIL
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].system_attrs["failed_trial"] == 3
    for trial in screening:
        with pytest.raises(optuna.TrialPruned):
            objective(trial)
        study.tell(trial, state=TrialState.PRUNED)
    retried = study.ask()  # pops the queued copy: the rank is not lost
    assert retried.number == waiting[0].number
    assert retried.user_attrs[_attrs.RANK] == 1
    study.tell(retried, objective(retried))
    study.optimize(objective, n_trials=1)
    check_round(study, 0, 3, 2)


def test_wait_timeout_requeues_the_promotion() -> None:
    study = _study(None, 2, 1, wait_timeout=0.2)
    first, second = study.ask(), study.ask()
    errors: list[BaseException] = []

    def ask_in_other_thread() -> None:
        try:
            study.ask()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=ask_in_other_thread)
    thread.start()
    thread.join(timeout=10)
    assert len(errors) == 1 and isinstance(errors[0], optuna_convexity.ScreeningWaitError)
    assert "wait_timeout" in str(errors[0])
    assert study.trials[2].state == TrialState.FAIL
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1
    for trial in (first, second):
        with pytest.raises(optuna.TrialPruned):
            objective(trial)
        study.tell(trial, state=TrialState.PRUNED)
    study.optimize(objective, n_trials=1)
    check_round(study, 0, 2, 1)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_restart_in_new_processes_continues(tmp_path: Path, kind: str) -> None:
    storage = (
        f"sqlite:///{tmp_path / 'restart.db'}" if kind == "sqlite" else str(tmp_path / "r.journal")
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for n_trials in (4, 3, 9):  # stops mid-screening, mid-promotion, then well into round 1
        subprocess.run(
            [sys.executable, "-m", "tests.search.worker", storage, str(n_trials)],
            check=True,
            cwd=ROOT,
            env=env,
            timeout=120,
        )
    if kind == "journal":
        storage = optuna.storages.JournalStorage(  # type: ignore[assignment]
            optuna.storages.journal.JournalFileBackend(storage)
        )
    study = optuna.load_study(study_name="restart", storage=storage)
    assert len(study.trials) == 16 and all(t.state.is_finished() for t in study.trials)
    check_round(study, 0, 6, 2)
    check_round(study, 1, 6, 2)


def test_enqueued_trials_are_extra_candidates() -> None:
    study = _study(None, 4, 2, criterion="mu")
    study.enqueue_trial({"x": 0.3, "y": 0})  # the flattest possible configuration
    study.optimize(objective, n_trials=7)
    enqueued = study.trials[0]
    assert enqueued.user_attrs[_attrs.PHASE] == "screening"
    assert _attrs.SLOT not in enqueued.user_attrs
    assert {t.user_attrs.get(_attrs.SLOT) for t in study.trials[1:5]} == {0, 1, 2, 3}
    rank_one = next(t for t in study.trials if t.user_attrs.get(_attrs.RANK) == 1)
    assert rank_one.user_attrs[_attrs.PARENT] == 0


def test_screening_sampler_is_pluggable() -> None:
    sampler = optuna_convexity.ConvexitySampler(
        6, 2, screening_sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2), **FAST
    )
    study = optuna.create_study(sampler=sampler, pruner=optuna_convexity.ConvexityPruner())
    study.optimize(objective, n_trials=8)
    check_round(study, 0, 6, 2)
    assert sampler.screening_sampler is not None
