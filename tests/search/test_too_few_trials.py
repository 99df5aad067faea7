"""Too few trials for a round: a warning when ``study.optimize`` starts, and a clear message."""

from __future__ import annotations

import logging

import optuna
import pytest

import optuna_convexity
from tests.search.helpers import objective


BUDGET_LOGGER = "optuna_convexity._budget"


def _study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        direction="maximize",
        sampler=optuna_convexity.ConvexitySampler(n_screening=50, n_promoted=10, seed=0),
        pruner=optuna_convexity.ConvexityPruner(),
    )


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == BUDGET_LOGGER]


def test_a_call_too_short_for_a_round_warns_once_when_it_starts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    study = _study()
    with caplog.at_level(logging.WARNING, logger=BUDGET_LOGGER):
        study.optimize(objective, n_trials=20)
    (message,) = _warnings(caplog)  # once for the call, not once per trial
    assert message.startswith("study.optimize(n_trials=20) ends before this round")
    assert "50 screening trials come first (50 still to start)" in message
    assert "Run n_trials=60 or more" in message
    assert caplog.records[0].name == BUDGET_LOGGER  # before anything else was said

    with pytest.raises(ValueError, match="No trials are completed yet"):
        study.best_trial  # noqa: B018 - Optuna's own message, which the leaderboard explains
    board = optuna_convexity.leaderboard(study)
    assert "**No trial has completed yet**, so `study.best_trial` raises" in board
    assert "round 0 promotes once its 50 screening trials have finished (20 so far)" in board

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=BUDGET_LOGGER):
        study.optimize(objective, n_trials=5, n_jobs=2)  # the next call, on two threads
    (message,) = _warnings(caplog)
    assert "(30 still to start)" in message and "Run n_trials=40 or more" in message


def test_calls_that_reach_the_promotions_say_nothing(caplog: pytest.LogCaptureFixture) -> None:
    study = _study()
    with caplog.at_level(logging.WARNING, logger=BUDGET_LOGGER):
        study.optimize(objective, n_trials=30)
        caplog.clear()
        study.optimize(objective, n_trials=21)  # the 20 left to screen, then a promotion
        study.optimize(objective, n_trials=5)  # promoted trials only
        trial = study.ask()  # no optimize call: nothing to check
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert _warnings(caplog) == []
    assert "Best trial" in optuna_convexity.leaderboard(study)


def test_the_paper_sized_call_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    study = _study()
    with caplog.at_level(logging.WARNING, logger=BUDGET_LOGGER):
        study.optimize(objective, n_trials=60)
    assert _warnings(caplog) == []
    assert "No trial has completed yet" not in optuna_convexity.leaderboard(study)
