"""Asynchronous promotion: no barrier, the same rule for every decision, each parent once."""

from __future__ import annotations

from collections import Counter
import math
import random

import optuna
from optuna.trial import TrialState
import pytest

import optuna_convexity
from optuna_convexity import _attrs
from tests.distributed.conftest import new_study
from tests.distributed.conftest import Pool
from tests.distributed.conftest import STATS
from tests.distributed.worker import storage_of
from tests.search.helpers import objective
from tests.search.helpers import promotion_order


N_SCREENING, N_PROMOTED = 10, 3


def test_promotions_follow_the_fraction_rule() -> None:
    """Sequentially, the promoted parents are exactly those the documented rule picks."""
    sampler = optuna_convexity.ConvexitySampler(N_SCREENING, N_PROMOTED, asynchronous=True, seed=4)
    study = optuna.create_study(sampler=sampler, pruner=optuna_convexity.ConvexityPruner())
    study.optimize(objective, n_trials=30)
    assert sampler.min_screening == max(N_SCREENING // 5, math.ceil(N_SCREENING / N_PROMOTED))
    # Replay the rule: after each screening trial, the best floor(k * N2 / N1) of the k scored
    # candidates (once k >= min_screening) are promoted, each once.
    scored: list[optuna.trial.FrozenTrial] = []
    expected: list[int] = []
    for trial in study.trials:
        if not optuna_convexity.is_screening(trial):
            continue
        scored.append(trial)
        if len(scored) < sampler.min_screening:
            continue
        quota = max(1, len(scored) * N_PROMOTED // N_SCREENING)
        best = promotion_order(study, scored)[:quota]
        expected += [t.number for t in best if t.number not in expected]
    promoted = [t for t in study.trials if optuna_convexity.is_promoted(t)]
    assert [t.user_attrs[_attrs.PARENT] for t in promoted] == expected
    for trial in promoted:  # the budget may end with the last promotions still queued
        assert trial.state in (TrialState.COMPLETE, TrialState.WAITING)
        if trial.state == TrialState.COMPLETE:
            assert trial.params == study.trials[trial.user_attrs[_attrs.PARENT]].params
    # No worker waits: promotions ran while screening went on.
    first_promotion = promoted[0].number
    assert any(optuna_convexity.is_screening(t) for t in study.trials[first_promotion:])
    text = optuna_convexity.leaderboard(study)
    assert "promoted rank" in text


def test_asynchronous_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="min_screening only applies"):
        optuna_convexity.ConvexitySampler(min_screening=5)
    with pytest.raises(ValueError, match="min_screening must be a positive integer"):
        optuna_convexity.ConvexitySampler(asynchronous=True, min_screening=0)


def test_duplicate_queued_promotions_are_withdrawn_before_running() -> None:
    sampler = optuna_convexity.ConvexitySampler(4, 2, asynchronous=True, min_screening=2)
    study = optuna.create_study(sampler=sampler, pruner=optuna_convexity.ConvexityPruner())
    study.optimize(objective, n_trials=2)
    queued = study.get_trials(states=(TrialState.WAITING,))
    assert len(queued) == 1
    # A second worker queued the same promotion at the same moment.
    study.enqueue_trial({}, user_attrs=dict(queued[0].user_attrs))
    study.optimize(objective, n_trials=2)
    first, copy_ = study.trials[2], study.trials[3]
    assert first.state == TrialState.COMPLETE and optuna_convexity.is_promoted(first)
    assert copy_.user_attrs[_attrs.PHASE] == _attrs.PHASE_WITHDRAWN
    assert copy_.state == TrialState.PRUNED and copy_.params == {}
    assert "duplicates the promotion" in copy_.user_attrs[_attrs.EXCLUDED]


@pytest.mark.parametrize("n_workers", [4, 8])
def test_many_processes_promote_each_parent_once(
    pool: Pool, storage_spec: str, backend: str, n_workers: int
) -> None:
    for repetition in range(6):
        storage = storage_spec
        if backend == "journal":
            storage = storage_spec.replace(".journal", f"-{repetition}.journal")
        name = new_study(storage)
        seed = random.Random(f"async-{backend}-{n_workers}-{repetition}").randrange(1 << 30)
        specs = [
            {
                "storage": storage,
                "study": name,
                "n_screening": N_SCREENING,
                "n_promoted": N_PROMOTED,
                "asynchronous": True,
                "total": 30,
                "delay": 0.02,
                "seed": seed + index,
            }
            for index in range(n_workers)
        ]
        pool.run(specs, timeout=120)
        study = optuna.load_study(study_name=name, storage=storage_of({"storage": storage}))
        completed = [
            t
            for t in study.get_trials(states=(TrialState.COMPLETE,))
            if optuna_convexity.is_promoted(t)
        ]
        per_parent = Counter(t.user_attrs[_attrs.PARENT] for t in completed)
        duplicated = sum(count - 1 for count in per_parent.values())
        STATS["runs"] += 1
        STATS["duplicated_ranks"] += duplicated
        assert duplicated == 0 and completed
        for trial in completed:
            assert trial.params == study.trials[trial.user_attrs[_attrs.PARENT]].params
        withdrawn = [
            t for t in study.trials if t.user_attrs.get(_attrs.PHASE) == _attrs.PHASE_WITHDRAWN
        ]
        assert all(t.state == TrialState.PRUNED and not t.params for t in withdrawn)
