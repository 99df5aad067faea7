"""Bad input to the search, in one place: each case is a mistake a user can make with the
sampler's arguments, the pruner, ``record_mu``/``report_convexity`` and the study, and the
clear error it must give (its type, and a message naming the problem and the fix); the tests
after the cases pin inputs that are accepted, with their documented outcome.

The cases of the Hessian module (models, loaders, losses, targets, devices) are in
``tests/hessian/test_bad_input.py``.
"""

from __future__ import annotations

from collections.abc import Callable
import logging
import math
import re
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState
import pytest
import torch
from torch import nn

import optuna_convexity
from optuna_convexity import _attrs
from optuna_convexity import ScreeningWaitError
from tests.bad_input import Bad
from tests.search.helpers import objective


FAST = {"poll_interval": (0.02, 0.1)}


def _sampler(*args: Any, **kwargs: Any) -> Callable[[], object]:
    return lambda: optuna_convexity.ConvexitySampler(*args, **kwargs)


def _study(n_screening: int = 2, n_promoted: int = 1, **kwargs: Any) -> optuna.Study:
    return optuna.create_study(
        sampler=optuna_convexity.ConvexitySampler(n_screening, n_promoted, seed=0, **FAST),
        pruner=optuna_convexity.ConvexityPruner(**kwargs),
    )


def _screened(study: optuna.Study, n: int) -> optuna.Study:
    """``study`` after ``n`` screening trials (synthetic scores)."""
    study.optimize(objective, n_trials=n)
    return study


def _record_mu_in_screening(mu: Any, **kwargs: Any) -> Callable[[], object]:
    def call() -> object:
        trial = _study().ask()
        return optuna_convexity.record_mu(trial, mu, **kwargs)

    return call


def _record_mu_in_promotion() -> object:
    study = _screened(_study(), 2)
    return optuna_convexity.record_mu(study.ask(), 0.5)


def _multi_objective() -> object:
    study = optuna.create_study(
        directions=["minimize", "minimize"], sampler=optuna_convexity.ConvexitySampler(2, 1)
    )
    return study.optimize(lambda t: (0.0, 0.0), n_trials=1)


def _other_settings() -> object:
    storage = optuna.storages.InMemoryStorage()
    first = optuna.create_study(
        study_name="shared", storage=storage, sampler=optuna_convexity.ConvexitySampler(4, 2)
    )
    first.optimize(objective, n_trials=1)
    other = optuna.load_study(
        study_name="shared", storage=storage, sampler=optuna_convexity.ConvexitySampler(4, 3)
    )
    return other.optimize(objective, n_trials=1)


def _no_score(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", -1.0, 1.0)


def _new_parameter_in_promotion() -> object:
    study = _screened(_study(), 2)

    def grows(trial: optuna.Trial) -> float:
        objective(trial) if optuna_convexity.is_screening(trial) else None
        trial.suggest_float("x", -1.0, 1.0)
        trial.suggest_int("y", 0, 9)
        return trial.suggest_float("z", 0.0, 1.0)

    return study.optimize(grows, n_trials=1)


def _narrower_range_in_promotion() -> object:
    study = _screened(_study(), 2)
    return study.optimize(lambda t: t.suggest_float("x", 2.0, 3.0), n_trials=1)


def _ask_for_the_promotion_before_telling() -> object:
    study = _study(2, 1)
    study.ask()
    study.ask()
    return study.ask()  # the promotion would wait for the two trials this thread holds


def _fail_running_trials_with_other_settings() -> object:
    study = _screened(
        optuna.create_study(sampler=optuna_convexity.ConvexitySampler(6, 2, seed=0, **FAST)), 6
    )
    loaded = optuna.load_study(
        study_name=study.study_name,
        storage=study._storage,
        sampler=optuna_convexity.ConvexitySampler(),
    )
    return optuna_convexity.fail_running_trials(loaded)


def _report_convexity_with_median_pruner() -> object:
    study = optuna.create_study(sampler=optuna_convexity.ConvexitySampler(2, 1, seed=0))
    trial = study.ask()
    model = nn.Sequential(nn.Linear(4, 3))
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    return optuna_convexity.report_convexity(trial, model, data, nn.CrossEntropyLoss())


def _plain_study() -> optuna.Study:
    study = optuna.create_study()
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    return study


CASES = [
    # -- the sampler's arguments ------------------------------------------------------------
    Bad("n_screening_zero", _sampler(0), ValueError,
        r"n_screening must be a positive integer, got 0 \(int\)"),
    Bad("n_screening_float", _sampler(2.5), ValueError,
        r"n_screening must be a positive integer, got 2\.5 \(float\)"),
    Bad("n_screening_bool", _sampler(True), ValueError,
        r"n_screening must be a positive integer, got True \(bool\)"),
    Bad("n_promoted_negative", _sampler(5, -1), ValueError,
        r"n_promoted must be a positive integer, got -1"),
    Bad("n_promoted_string", _sampler(5, "2"), ValueError,
        r"n_promoted must be a positive integer, got '2' \(str\)"),
    Bad("n_promoted_exceeds_n_screening", _sampler(5, 6), ValueError,
        r"n_promoted=6 exceeds n_screening=5.*Lower n_promoted or raise n_screening"),
    Bad("unknown_criterion", _sampler(criterion="flattest"), ValueError,
        r"Unknown criterion 'flattest'; use one of 'mu': the paper's rule"),
    Bad("screening_sampler_not_a_sampler", _sampler(screening_sampler="random"), TypeError,
        r"screening_sampler must be an Optuna sampler \(optuna\.samplers\.BaseSampler\), got str"),
    Bad("seed_with_a_screening_sampler",
        _sampler(seed=1, screening_sampler=optuna.samplers.TPESampler()), ValueError,
        r"seed only seeds the default RandomSampler; pass the seed to your screening_sampler"),
    Bad("seed_negative", _sampler(seed=-1), ValueError,
        r"seed must be None or an integer from 0 to 2\*\*32 - 1, got -1 \(int\)"),
    Bad("seed_too_large", _sampler(seed=2**32), ValueError,
        r"seed must be None or an integer from 0 to 2\*\*32 - 1, got 4294967296"),
    Bad("seed_float", _sampler(seed=0.5), ValueError,
        r"seed must be None or an integer.*got 0\.5 \(float\)"),
    Bad("seed_string", _sampler(seed="42"), ValueError,
        r"seed must be None or an integer.*got '42' \(str\)"),
    Bad("min_screening_without_asynchronous", _sampler(min_screening=3), ValueError,
        r"min_screening only applies to the asynchronous search; pass asynchronous=True"),
    Bad("min_screening_zero", _sampler(asynchronous=True, min_screening=0), ValueError,
        r"min_screening must be a positive integer, got 0"),
    Bad("promotion_retries_negative", _sampler(promotion_retries=-1), ValueError,
        r"promotion_retries must be a non-negative integer, got -1"),
    Bad("promotion_retries_float", _sampler(promotion_retries=1.0), ValueError,
        r"promotion_retries must be a non-negative integer, got 1\.0 \(float\)"),
    Bad("poll_interval_reversed", _sampler(poll_interval=(1.0, 0.5)), ValueError,
        r"poll_interval must be \(first, largest\) seconds with 0 < first <= largest"),
    Bad("poll_interval_nan", _sampler(poll_interval=(0.1, math.nan)), ValueError,
        r"poll_interval must be \(first, largest\) seconds"),
    Bad("wait_timeout_zero", _sampler(wait_timeout=0), ValueError,
        r"wait_timeout must be positive or None, got 0"),
    Bad("stale_warning_negative", _sampler(stale_warning=-5.0), ValueError,
        r"stale_warning must be positive, got -5\.0"),
    Bad("unknown_estimator", _sampler(estimator="exact"), ValueError,
        r"Unknown estimator 'exact'\. Use one of 'paper', 'last_layer', 'hutchinson'"),
    # -- the pruner and the scoring calls ---------------------------------------------------
    Bad("pruner_not_a_pruner", lambda: optuna_convexity.ConvexityPruner("median"), TypeError,
        r"pruner must be an Optuna pruner \(optuna\.pruners\.BasePruner\), got str"),
    Bad("record_mu_string", _record_mu_in_screening("0.5"), ValueError,
        r"mu must be a real number, got '0\.5' \(str\)"),
    Bad("record_mu_bool", _record_mu_in_screening(True), ValueError,
        r"mu must be a real number, got True \(bool\)"),
    Bad("record_mu_train_loss_string", _record_mu_in_screening(0.5, train_loss="low"),
        ValueError, r"train_loss must be a real number or None, got 'low' \(str\)"),
    Bad("record_mu_in_a_promoted_trial", _record_mu_in_promotion, ValueError,
        r"needs a screening trial; trial 2 is promoted.*optuna_convexity\.is_screening"),
    Bad("report_convexity_would_lose_the_value", _report_convexity_with_median_pruner,
        ValueError, r"before it reported its one-epoch value, which criterion 'value' ranks.*"
        r"MedianPruner, not ConvexityPruner.*ConvexityPruner\(optuna\.pruners\.MedianPruner\(\)\)"
        r".*trial\.report\(value, epoch\) before report_convexity.*end_trial=True"),
    # -- the study --------------------------------------------------------------------------
    Bad("multi_objective_study", _multi_objective, ValueError,
        r"single-objective studies only.*Create the study with a single direction"),
    Bad("workers_with_other_settings", _other_settings, ValueError,
        r"differs in \{'n_promoted': \(2, 3\)\} \(stored, this worker\).*must use the same"),
    Bad("screening_trial_without_a_score", lambda: _study().optimize(_no_score, n_trials=1),
        RuntimeError, r"completed without a convexity score\. Call optuna_convexity\."
        r"report_convexity\(trial, model, loader, loss_fn\)"),
    Bad("promoted_trial_suggests_a_new_parameter", _new_parameter_in_promotion, ValueError,
        r"suggests 'z', which its parent.*never suggested.*suggest the same parameters"),
    Bad("promoted_trial_with_a_narrower_range", _narrower_range_in_promotion, ValueError,
        r"does not contain the value.*Keep the search space unchanged"),
    Bad("ask_again_before_tell", _ask_for_the_promotion_before_telling, ScreeningWaitError,
        r"asked for in this thread and not told yet.*Tell each screening trial"),
    Bad("fail_running_trials_without_a_search",
        lambda: optuna_convexity.fail_running_trials(optuna.create_study()), ValueError,
        r"holds no settings of a convexity search.*sampler=ConvexitySampler"),
    Bad("fail_running_trials_with_other_settings", _fail_running_trials_with_other_settings,
        ValueError, r"runs a convexity search with .*'n_screening': 6, 'n_promoted': 2.*"
        r"differs in \{'n_screening': \(6, 50\), 'n_promoted': \(2, 10\)\}.*without a sampler"),
    Bad("leaderboard_of_a_study_without_a_search",
        lambda: optuna_convexity.leaderboard(_plain_study()), ValueError,
        r"has no trials of a ConvexitySampler search yet"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gives_a_clear_error(case: Bad) -> None:
    with pytest.raises(case.error) as raised:
        case.call()
    assert type(raised.value) is case.error
    assert re.search(case.message, str(raised.value), flags=re.DOTALL), str(raised.value)


def test_the_cases_are_distinct() -> None:
    assert len({case.id for case in CASES}) == len(CASES)


# -- documented outcomes -----------------------------------------------------------------------


def test_numpy_integers_are_counts() -> None:
    """Counts from a config file or ``np.arange`` are integers too; ``bool`` is not."""
    sampler = optuna_convexity.ConvexitySampler(np.int64(3), np.int32(1), seed=np.uint32(7))
    assert (sampler.n_screening, sampler.n_promoted) == (3, 1)
    study = optuna.create_study(sampler=sampler, pruner=optuna_convexity.ConvexityPruner())
    study.optimize(objective, n_trials=4)  # the settings are stored as JSON: plain ints
    stored = study._storage.get_study_system_attrs(study._study_id)["convexity:config"]
    assert stored["n_screening"] == 3 and type(stored["n_screening"]) is int


def test_the_value_reported_before_scoring_is_kept_with_any_pruner() -> None:
    """With Optuna's default pruner, report the value, then score: the ranking sees it."""
    study = optuna.create_study(
        direction="maximize", sampler=optuna_convexity.ConvexitySampler(3, 1, seed=0, **FAST)
    )
    model = nn.Sequential(nn.Linear(4, 3))
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]

    def reports_first(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.report(x, 0)
        optuna_convexity.report_convexity(trial, model, data, nn.CrossEntropyLoss())
        return x

    study.optimize(reports_first, n_trials=4)
    screening = study.trials[:3]
    assert all(t.state == TrialState.PRUNED and t.intermediate_values for t in screening)
    best = max(screening, key=lambda t: t.params["x"])
    assert study.trials[3].user_attrs[_attrs.PARENT] == best.number


def test_fail_running_trials_reads_the_stored_settings() -> None:
    """A (6, 2) study loaded without its sampler: both running promotions are failed and
    queued again with their ranks (with the sampler's defaults, none were)."""
    study = _screened(
        optuna.create_study(sampler=optuna_convexity.ConvexitySampler(6, 2, seed=0, **FAST)), 6
    )
    study.ask()
    study.ask()  # promotions of ranks 1 and 2, whose workers are then killed
    loaded = optuna.load_study(study_name=study.study_name, storage=study._storage)
    assert optuna_convexity.fail_running_trials(loaded) == [6, 7]
    queued = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.system_attrs["failed_trial"] for t in queued) == [6, 7]
    assert sorted(t.user_attrs[_attrs.RANK] for t in queued) == [1, 2]


@pytest.mark.parametrize(
    ("told", "how"), [(math.nan, "optimize"), ("n/a", "optimize"), (math.nan, "tell")]
)
@pytest.mark.filterwarnings("ignore:The value nan is not acceptable:UserWarning")
def test_a_promotion_returning_no_number_is_not_retried(
    told: Any, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Optuna fails a trial whose objective returns ``nan`` or a value that is no number; a
    retry would train the same configuration at the full budget to fail the same way."""
    study = _screened(_study(2, 1), 2)
    optuna.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING):
            if how == "optimize":
                study.optimize(lambda t: told, n_trials=1)
            else:
                study.tell(study.ask(), told)
    finally:
        optuna.logging.disable_propagation()
    assert study.trials[2].state == TrialState.FAIL
    assert not study.get_trials(states=(TrialState.WAITING,))
    assert any("would fail the same way" in r.getMessage() for r in caplog.records)


def test_a_promotion_with_a_parameter_outside_its_range_is_not_retried() -> None:
    study = _screened(_study(2, 1), 2)
    with pytest.raises(ValueError, match="does not contain"):
        study.optimize(lambda t: t.suggest_float("x", 2.0, 3.0), n_trials=1)
    assert study.trials[2].state == TrialState.FAIL
    assert not study.get_trials(states=(TrialState.WAITING,))


def test_an_interrupted_promotion_is_still_retried() -> None:
    """Failures that may not repeat (an exception in the objective) keep their retry."""
    study = _screened(_study(2, 1), 2)

    def out_of_memory(trial: optuna.Trial) -> float:
        raise RuntimeError("CUDA out of memory")

    study.optimize(out_of_memory, n_trials=1, catch=(RuntimeError,))
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    assert queued.system_attrs["failed_trial"] == 2
