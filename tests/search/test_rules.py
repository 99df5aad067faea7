"""Exclusions, skipped ranks, mistakes and their messages, and the pruner."""

from __future__ import annotations

import logging
import math

import optuna
from optuna.trial import TrialState
import pytest

import optuna_convexity
from optuna_convexity import _attrs
from optuna_convexity._roles import assign_roles
from tests.search.helpers import check_round
from tests.search.helpers import objective
from tests.search.helpers import synthetic_mu


FAST = {"poll_interval": (0.02, 0.1)}


def _study(n_screening: int, n_promoted: int, **kwargs: object) -> optuna.Study:
    return optuna.create_study(
        sampler=optuna_convexity.ConvexitySampler(n_screening, n_promoted, seed=3, **FAST),  # type: ignore[arg-type]
        pruner=optuna_convexity.ConvexityPruner(**kwargs),  # type: ignore[arg-type]
    )


def _troubled_objective(trial: optuna.Trial) -> float:
    """Slot-dependent trouble: failure, pruning before scoring, NaN and negative scores."""
    x = trial.suggest_float("x", -1.0, 1.0)
    trial.suggest_int("y", 0, 9)
    if optuna_convexity.is_screening(trial):
        slot = trial.user_attrs.get(_attrs.SLOT)
        if slot == 0:
            raise RuntimeError("out of memory")
        if slot == 1:
            raise optuna.TrialPruned()
        mu = {2: math.nan, 3: -1e-30, 4: -1.0}.get(slot, synthetic_mu(trial.params))
        optuna_convexity.record_mu(trial, mu)
        trial.report(x, 0)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return x


def test_excluded_candidates_carry_the_reason_and_skipped_ranks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    study = _study(8, 5)
    optuna.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            study.optimize(_troubled_objective, n_trials=13, catch=(RuntimeError,))
    finally:
        optuna.logging.disable_propagation()
    reasons = {
        t.user_attrs[_attrs.SLOT]: t.user_attrs.get(_attrs.EXCLUDED) for t in study.trials[:8]
    }
    assert reasons[0] == "failed before scoring"
    assert reasons[1] == "pruned before scoring"
    assert reasons[2] == "mu is not finite"
    assert _attrs.MU not in study.trials[2].user_attrs  # numbers only: no None, no NaN
    assert reasons[3] == reasons[4] == "mu is negative"
    assert reasons[5] is reasons[6] is reasons[7] is None
    # Three valid candidates for five promotions: the trials holding ranks 4 and 5 screen
    # new candidates for round 1 instead of running anything at the full budget.
    promoted = [t for t in study.trials[8:] if t.user_attrs[_attrs.PHASE] == "promoted"]
    released = [t for t in study.trials[8:] if t.user_attrs[_attrs.PHASE] == "screening"]
    assert sorted(t.user_attrs[_attrs.PARENT] for t in promoted) == [5, 6, 7]
    assert [t.number for t in released] == [11, 12]
    assert all(t.user_attrs[_attrs.ROUND] == 1 for t in released)
    assert all(t.state == TrialState.PRUNED for t in released)
    assert optuna_convexity.is_promoted(study.best_trial)
    assert any("3 valid candidates for 5 promotions" in r.getMessage() for r in caplog.records)
    check_round(study, 0, 8, 5)
    summary = optuna_convexity.summarize(study)
    assert summary[0].unfilled_ranks == [4, 5]
    assert {c.number for c in summary[1].candidates} == {11, 12}
    assert "no valid candidate left" in optuna_convexity.leaderboard(study)


def test_a_zero_score_is_the_flattest_not_an_exclusion() -> None:
    """``mu == 0.0`` (a curvature below float32's range) ranks first under the paper's rule."""
    study = optuna.create_study(
        sampler=optuna_convexity.ConvexitySampler(3, 1, seed=0, criterion="mu", **FAST),  # type: ignore[arg-type]
        pruner=optuna_convexity.ConvexityPruner(),
    )
    scores = iter([0.5, 0.0, 0.2])

    def zero_in_the_middle(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if optuna_convexity.is_screening(trial):
            optuna_convexity.record_mu(trial, next(scores))
            raise optuna.TrialPruned()
        return x

    study.optimize(zero_in_the_middle, n_trials=4)
    assert _attrs.EXCLUDED not in study.trials[1].user_attrs
    assert study.trials[3].user_attrs[_attrs.PARENT] == 1


def test_screening_trial_without_a_score_is_a_clear_error() -> None:
    study = _study(3, 1)

    def forgetful(trial: optuna.Trial) -> float:
        return trial.suggest_float("x", 0, 1)

    with pytest.raises(RuntimeError, match="without a convexity score.*report_convexity"):
        study.optimize(forgetful, n_trials=1)
    assert study.trials[0].state == TrialState.COMPLETE  # what the study holds is kept
    assert study.trials[0].user_attrs[_attrs.EXCLUDED] == "no mu recorded"


def test_promoted_trial_suggesting_a_new_parameter_fails_clearly() -> None:
    study = _study(2, 1)

    def changing(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if optuna_convexity.is_screening(trial):
            optuna_convexity.record_mu(trial, x + 0.1)
            raise optuna.TrialPruned()
        return trial.suggest_float("z", 0, 1)

    with pytest.raises(ValueError, match="suggests 'z', which its parent, screening trial"):
        study.optimize(changing, n_trials=3)
    assert study.trials[2].state == TrialState.FAIL


def test_promoted_trial_with_a_narrower_range_fails_clearly() -> None:
    study = _study(1, 1)

    def narrowing(trial: optuna.Trial) -> float:
        if optuna_convexity.is_screening(trial):
            trial.suggest_float("x", 0.5, 0.5000001)
            optuna_convexity.record_mu(trial, 1.0)
            raise optuna.TrialPruned()
        return trial.suggest_float("x", 0, 0.1)

    with pytest.raises(ValueError, match="does not contain the value"):
        study.optimize(narrowing, n_trials=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_screening": 5, "n_promoted": 6}, "exceeds n_screening"),
        ({"n_screening": 0}, "n_screening must be a positive integer"),
        ({"n_promoted": -1}, "n_promoted must be a positive integer"),
        ({"n_screening": 2.5}, "n_screening must be a positive integer"),
        ({"estimator": "exact"}, "Unknown estimator 'exact'"),
        ({"seed": 1, "screening_sampler": optuna.samplers.TPESampler()}, "pass the seed"),
        ({"poll_interval": (1.0, 0.5)}, "poll_interval"),
        ({"wait_timeout": 0}, "wait_timeout"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        optuna_convexity.ConvexitySampler(**kwargs)  # type: ignore[arg-type]


def test_bad_types_fail_at_construction() -> None:
    with pytest.raises(TypeError, match="screening_sampler must be an Optuna sampler"):
        optuna_convexity.ConvexitySampler(screening_sampler="random")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pruner must be an Optuna pruner"):
        optuna_convexity.ConvexityPruner("median")  # type: ignore[arg-type]


def test_default_construction_works() -> None:
    study = optuna.create_study(sampler=optuna_convexity.ConvexitySampler())
    assert study.sampler.n_screening == 50 and study.sampler.n_promoted == 10  # type: ignore[attr-defined]


def test_multi_objective_study_is_refused_without_leaving_a_running_trial() -> None:
    study = optuna.create_study(
        directions=["minimize", "minimize"], sampler=optuna_convexity.ConvexitySampler(2, 1)
    )
    with pytest.raises(ValueError, match="single-objective"):
        study.optimize(lambda t: (0.0, 0.0), n_trials=1)
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    assert not study.get_trials(states=(TrialState.WAITING,))


def test_foreign_trials_are_ignored_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    """``optuna.load_study`` without the sampler adds trials with no phase; the search must
    go on around them (one warning), not refuse every worker from then on."""
    study = _study(3, 1)
    study.optimize(objective, n_trials=2)  # two screening trials of round 0
    plain = optuna.load_study(study_name=study.study_name, storage=study._storage)
    plain.optimize(objective, n_trials=2)  # trials 2 and 3: Optuna's default sampler
    optuna.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            study.optimize(objective, n_trials=6)
    finally:
        optuna.logging.disable_propagation()
    warnings = [r.getMessage() for r in caplog.records if "did not run" in r.getMessage()]
    assert len(warnings) == 1
    assert "(trial 2, 3)" in warnings[0] and "ignores them" in warnings[0]
    assert [t.user_attrs.get(_attrs.PHASE) for t in study.trials] == [
        *["screening"] * 2, None, None, "screening", "promoted", *["screening"] * 3, "promoted"
    ]  # fmt: skip
    assert [t.user_attrs.get(_attrs.SLOT) for t in study.trials[6:9]] == [0, 1, 2]
    check_round(study, 0, 3, 1)
    check_round(study, 1, 3, 1)


def test_pruner_never_prunes_promoted_trials_by_itself() -> None:
    study = _study(2, 2)

    def always_reporting(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1, 1)
        trial.suggest_int("y", 0, 9)
        for step in range(5):
            if optuna_convexity.is_screening(trial):
                optuna_convexity.record_mu(trial, synthetic_mu(trial.params))
            trial.report(-100.0 * (step + 1), step)  # terrible values
            if trial.should_prune():
                raise optuna.TrialPruned()
        return x

    study.optimize(always_reporting, n_trials=4)
    assert [t.state for t in study.trials[2:]] == [TrialState.COMPLETE] * 2


def test_wrapped_pruner_sees_only_promoted_trials() -> None:
    seen: list[list[str]] = []

    class Recording(optuna.pruners.BasePruner):
        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            seen.append([t.user_attrs.get(_attrs.PHASE) for t in study.get_trials()])
            return False

    study = _study(3, 2, pruner=Recording())
    study.optimize(objective, n_trials=5)
    assert seen and all(set(phases_) == {"promoted"} for phases_ in seen)


def test_wrapped_median_pruner_prunes_promoted_trials() -> None:
    study = _study(3, 3, pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))

    def decreasing(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1, 1)
        trial.suggest_int("y", 0, 9)
        for step in range(3):
            if optuna_convexity.is_screening(trial):
                optuna_convexity.record_mu(trial, synthetic_mu(trial.params))
            # Later trials report worse values. Seeing the screening trials (values 0 to 2), the
            # median pruner would stop trial 3 at once; seeing promoted trials only, it lets
            # the first one finish and stops the later, worse ones.
            trial.report(float(trial.number), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return x

    study.optimize(decreasing, n_trials=6)
    promoted = study.trials[3:]
    assert [t.state for t in promoted] == [TrialState.COMPLETE] + [TrialState.PRUNED] * 2


def test_record_mu_checks_its_arguments() -> None:
    study = _study(1, 1)
    trial = study.ask()
    with pytest.raises(ValueError, match="mu must be a real number"):
        optuna_convexity.record_mu(trial, "0.5")  # type: ignore[arg-type]
    optuna_convexity.record_mu(trial, 0.5)
    study.tell(trial, state=TrialState.PRUNED)
    promoted = study.ask()
    with pytest.raises(ValueError, match="needs a screening trial; trial 1 is promoted"):
        optuna_convexity.record_mu(promoted, 0.5)
    fixed = optuna.trial.FixedTrial({"x": 0.1})
    assert not optuna_convexity.is_screening(fixed) and not optuna_convexity.is_promoted(fixed)


def test_roles_are_a_function_of_trial_numbers_and_origins() -> None:
    create = optuna.trial.create_trial

    def fresh(number: int) -> optuna.trial.FrozenTrial:
        trial = create(state=TrialState.RUNNING)
        trial.number = number
        return trial

    def enqueued(number: int) -> optuna.trial.FrozenTrial:
        trial = create(state=TrialState.WAITING, system_attrs={"fixed_params": {"x": 1}})
        trial.number = number
        return trial

    def retry(number: int, of: int) -> optuna.trial.FrozenTrial:
        trial = create(state=TrialState.WAITING, system_attrs={"failed_trial": of})
        trial.number = number
        return trial

    trials = [fresh(0), enqueued(1), fresh(2), fresh(3), enqueued(4), retry(5, 3), fresh(6)]
    roles = assign_roles(trials, n_screening=2, n_promoted=1)
    assert (roles[0].phase, roles[0].slot) == ("screening", 0)
    assert (roles[1].phase, roles[1].round, roles[1].slot) == ("screening", 0, None)
    assert (roles[2].phase, roles[2].slot) == ("screening", 1)
    assert (roles[3].phase, roles[3].rank, roles[3].round) == ("promoted", 1, 0)
    # Enqueued during a promotion phase: an extra candidate of the next round.
    assert (roles[4].phase, roles[4].round) == ("screening", 1)
    assert roles[5] == roles[3]  # a retry holds its original's role
    assert (roles[6].phase, roles[6].round, roles[6].slot) == ("screening", 1, 0)
    # The same trials in any order give the same roles.
    assert assign_roles(list(reversed(trials)), 2, 1) == roles


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_heartbeat_retry_keeps_the_promotion(tmp_path: object) -> None:
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path}/heartbeat.db",  # type: ignore[str-bytes-safe]
        heartbeat_interval=1,
        grace_period=2,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(),
    )
    study = optuna.create_study(
        storage=storage,
        sampler=optuna_convexity.ConvexitySampler(2, 1, **FAST),  # type: ignore[arg-type]
        pruner=optuna_convexity.ConvexityPruner(),
    )
    study.optimize(objective, n_trials=2)
    with pytest.warns(UserWarning, match="Heartbeat"):
        doomed = study.ask()  # promoted rank 1; its worker "dies": no heartbeat, no tell
    doomed.suggest_float("x", -1, 1)
    parent = doomed.user_attrs[_attrs.PARENT]
    storage.record_heartbeat(doomed._trial_id)
    import time

    time.sleep(3.5)
    study.optimize(objective, n_trials=1)  # fails the stale trial, reruns its copy
    assert study.trials[2].state == TrialState.FAIL
    retried = study.trials[3]
    assert retried.system_attrs["failed_trial"] == 2
    assert retried.state == TrialState.COMPLETE
    assert retried.user_attrs[_attrs.RANK] == 1
    assert retried.user_attrs[_attrs.PARENT] == parent
    assert retried.params == study.trials[parent].params
    check_round(study, 0, 2, 1)


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_criterion_mu_in_better_half_prefers_trained_candidates(direction: str) -> None:
    """Flat but barely trained candidates (bad one-epoch values) rank after trained ones."""
    sign = 1.0 if direction == "minimize" else -1.0

    def flat_when_untrained(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        if optuna_convexity.is_screening(trial):
            optuna_convexity.record_mu(trial, 0.1 + x)  # small x: flat ...
            trial.report(sign * (1.0 - x), 0)  # ... and a bad one-epoch value
            raise optuna.TrialPruned()
        return sign * (1.0 - x)

    results = {}
    for criterion in ("mu", "mu_in_better_half"):
        sampler = optuna_convexity.ConvexitySampler(
            8,
            2,
            seed=5,
            criterion=criterion,
            **FAST,  # type: ignore[arg-type]
        )
        study = optuna.create_study(direction=direction, sampler=sampler)
        study.optimize(flat_when_untrained, n_trials=10)
        parents = [study.trials[t.user_attrs[_attrs.PARENT]] for t in study.trials[8:]]
        results[criterion] = [p.params["x"] for p in parents]
    xs = sorted(t.params["x"] for t in study.trials[:8])
    assert results["mu"] == xs[:2]  # the paper's rule: the two least trained
    assert results["mu_in_better_half"] == xs[4:6]  # the flattest of the better half


@pytest.mark.parametrize(
    ("chance", "expected"),
    [
        (5, [5, 6]),  # five tie at chance: only the three that trained form the better half
        (8, [0, 1]),  # all tie: the value tells nothing, so mu alone decides
    ],
)
def test_criterion_mu_in_better_half_leaves_out_a_tie_at_chance(
    chance: int, expected: list[int]
) -> None:
    """A tie larger than half the field does not make the whole field the better half."""

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0.0, 1.0)
        if optuna_convexity.is_screening(trial):
            i = trial.number  # the screening trials are trials 0..7; 0 is the flattest
            optuna_convexity.record_mu(trial, 1.0 + i)
            trial.report(0.1 if i < chance else 0.5 + i / 100, 0)  # accuracy after one epoch
            raise optuna.TrialPruned()
        return 0.5

    sampler = optuna_convexity.ConvexitySampler(
        8,
        2,
        seed=0,
        criterion="mu_in_better_half",
        **FAST,  # type: ignore[arg-type]
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(objective, n_trials=10)
    assert [t.user_attrs[_attrs.PARENT] for t in study.trials[8:]] == expected


def test_unknown_criterion() -> None:
    with pytest.raises(ValueError, match="Unknown criterion 'flattest'.*'mu': the paper's rule"):
        optuna_convexity.ConvexitySampler(criterion="flattest")  # type: ignore[arg-type]


def test_workers_with_other_settings_are_refused() -> None:
    storage = optuna.storages.InMemoryStorage()
    first = optuna.create_study(
        study_name="shared",
        storage=storage,
        sampler=optuna_convexity.ConvexitySampler(4, 2),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    first.optimize(objective, n_trials=1)
    other = optuna.load_study(
        study_name="shared", storage=storage, sampler=optuna_convexity.ConvexitySampler(5, 2)
    )
    with pytest.raises(ValueError, match="differs in \\{'n_screening': \\(4, 5\\)\\}"):
        other.optimize(objective, n_trials=1)
    assert other.trials[-1].state == TrialState.FAIL
    # The stored settings let a study loaded without its sampler be summarised: the refused
    # worker's trial took slot 1 and failed.
    plain = optuna.load_study(study_name="shared", storage=storage)
    candidates = optuna_convexity.summarize(plain)[0].candidates
    assert [(c.number, c.excluded) for c in candidates] == [
        (0, None),
        (1, "failed (its worker stopped without reporting)"),
    ]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_retry_of_a_released_promotion_slot_screens_afresh() -> None:
    study = _study(2, 2)

    def one_valid(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1.0, 1.0)
        if optuna_convexity.is_screening(trial):
            slot = trial.user_attrs.get(_attrs.SLOT)
            optuna_convexity.record_mu(trial, math.inf if slot == 0 else 1.0)
            raise optuna.TrialPruned()
        return x

    study.optimize(one_valid, n_trials=3)  # slot 0 excluded, slot 1 promoted (trial 2)
    released = study.ask()  # rank 2 has no candidate: it screens for round 1
    assert released.user_attrs[_attrs.PHASE] == "screening"
    assert released.user_attrs[_attrs.ROUND] == 1
    released.suggest_float("x", -1.0, 1.0)
    optuna_convexity.record_mu(released, 0.5)
    study.tell(released, state=TrialState.FAIL)  # e.g. its worker crashed after scoring
    optuna.storages.RetryHeartbeatStaleTrialCallback()(study, study.trials[released.number])
    retry = study.ask()
    assert study.trials[retry.number].system_attrs["failed_trial"] == released.number
    assert optuna_convexity.is_screening(retry) and retry.user_attrs[_attrs.ROUND] == 1
    # The attempt's score is shown until the retry records its own, but does not count.
    assert retry.user_attrs.get(_attrs.MU) == 0.5
    assert retry.user_attrs[_attrs.SCORED_BY] == released.number
    assert _attrs.recorded_mu(retry) is None
    assert retry.user_attrs.get(_attrs.EXCLUDED) is None


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_retry_that_scores_nonfinite_does_not_count_the_inherited_score() -> None:
    """A retry inherits its attempt's ``mu`` (a number cannot be cleared); if the retry's own
    score is not finite, the inherited one must not make it a valid candidate."""
    study = _study(2, 1)

    def scores(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1.0, 1.0)
        if optuna_convexity.is_screening(trial):
            optuna_convexity.record_mu(trial, 2.0)
            raise optuna.TrialPruned()
        return x

    first = study.ask()
    first.suggest_float("x", -1.0, 1.0)
    optuna_convexity.record_mu(first, 0.5)
    study.tell(first, state=TrialState.FAIL)  # its worker crashed after scoring
    optuna.storages.RetryHeartbeatStaleTrialCallback()(study, study.trials[first.number])
    retry = study.ask()
    assert retry.user_attrs[_attrs.MU] == 0.5  # inherited
    retry.suggest_float("x", -1.0, 1.0)
    optuna_convexity.record_mu(retry, math.nan)  # this time the score diverges
    assert _attrs.recorded_mu(retry) is not None and math.isnan(_attrs.recorded_mu(retry))
    study.tell(retry, state=TrialState.PRUNED)
    study.optimize(scores, n_trials=2)  # the second screening slot, then the promotion
    stored = study.trials[retry.number]
    assert stored.user_attrs[_attrs.EXCLUDED] == "mu is not finite"
    (promoted,) = [t for t in study.trials if optuna_convexity.is_promoted(t)]
    assert promoted.user_attrs[_attrs.PARENT] == 2  # not the retry, whose own score diverged
    assert promoted.user_attrs[_attrs.PROMOTED] == 1


def test_numeric_attributes_hold_numbers_only() -> None:
    """optuna-dashboard sorts and plots an attribute only if every value is a number."""
    study = _study(4, 2)

    def diverging(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1.0, 1.0)
        if optuna_convexity.is_screening(trial):
            slot = trial.user_attrs.get(_attrs.SLOT)
            optuna_convexity.record_mu(trial, {0: math.inf, 1: math.nan}.get(slot, x + 2.0))
            raise optuna.TrialPruned()
        return x

    study.optimize(diverging, n_trials=6)
    numeric = (_attrs.MU, _attrs.PROMOTED, _attrs.ROUND, _attrs.SLOT, _attrs.RANK, _attrs.PARENT)
    for trial in study.trials:
        for key in numeric:
            value = trial.user_attrs.get(key)
            assert (value is None and key not in trial.user_attrs) or (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            ), (trial.number, key, value)
        assert trial.user_attrs[_attrs.PROMOTED] == int(optuna_convexity.is_promoted(trial))
    for diverged in study.trials[:2]:
        assert _attrs.MU not in diverged.user_attrs
        assert diverged.user_attrs[_attrs.EXCLUDED] == "mu is not finite"
    assert [t.user_attrs[_attrs.PROMOTED] for t in study.trials] == [0, 0, 0, 0, 1, 1]
