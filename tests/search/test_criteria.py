"""Every promotion criterion, through real studies: what it promotes, and from which signals."""

from __future__ import annotations

import logging
import math

import optuna
import pytest
import torch
from torch import nn

import optuna_convexity
from optuna_convexity import _attrs
from optuna_convexity import _criteria
from tests.search.helpers import check_round
from tests.search.helpers import promotion_order


FAST = {"poll_interval": (0.02, 0.1)}
N_SCREENING, N_PROMOTED = 10, 3


def _signals(x: float) -> tuple[float, float, float]:
    """mu, one-epoch value and training loss of a candidate, each ordering the candidates
    differently: mu rises with x, the value peaks at x = 0.6, the loss is lowest at x = 0.3."""
    return 0.1 + x, 1.0 - (x - 0.6) ** 2, (x - 0.3) ** 2 + 0.01


def _objective(record_loss: bool, sign: float):  # type: ignore[no-untyped-def]
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        mu, value, loss = _signals(x)
        if optuna_convexity.is_screening(trial):
            optuna_convexity.record_mu(trial, mu, train_loss=loss if record_loss else None)
            trial.report(sign * value, 0)
            raise optuna.TrialPruned()
        return sign * value

    return objective


def _run(criterion: str, direction: str, record_loss: bool = True) -> optuna.Study:
    sampler = optuna_convexity.ConvexitySampler(
        N_SCREENING,
        N_PROMOTED,
        seed=3,
        criterion=criterion,  # type: ignore[arg-type]
        **FAST,  # type: ignore[arg-type]
    )
    study = optuna.create_study(direction=direction, sampler=sampler)
    sign = 1.0 if direction == "maximize" else -1.0
    study.optimize(_objective(record_loss, sign), n_trials=N_SCREENING + N_PROMOTED)
    return study


def _promoted_xs(study: optuna.Study) -> list[float]:
    promoted = sorted(
        (t for t in study.trials if optuna_convexity.is_promoted(t)),
        key=lambda t: t.user_attrs[_attrs.RANK],
    )
    return [study.trials[t.user_attrs[_attrs.PARENT]].params["x"] for t in promoted]


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
@pytest.mark.parametrize("criterion", _criteria.CRITERIA)
def test_each_criterion_promotes_what_it_says(criterion: str, direction: str) -> None:
    study = _run(criterion, direction)
    xs = sorted(t.params["x"] for t in study.trials[:N_SCREENING])
    by_value = sorted(xs, key=lambda x: -_signals(x)[1])
    expected = {
        "mu": xs[:N_PROMOTED],  # flattest: the smallest x
        "value": by_value[:N_PROMOTED],
        "train_loss": sorted(xs, key=lambda x: _signals(x)[2])[:N_PROMOTED],
        # the better half by value are the five x nearest 0.6; then by mu
        "mu_in_better_half": sorted(by_value[:5])[:N_PROMOTED],
        "high_mu_in_better_half": sorted(by_value[:5], reverse=True)[:N_PROMOTED],
    }[criterion]
    assert _promoted_xs(study) == expected
    check_round(study, 0, N_SCREENING, N_PROMOTED)  # and the independent re-derivation agrees


def test_train_loss_falls_back_to_the_value_without_recorded_losses() -> None:
    """A score given with record_mu alone still ranks: by the one-epoch value."""
    without = _run("train_loss", "maximize", record_loss=False)
    by_value = _run("value", "maximize")
    assert _promoted_xs(without) == _promoted_xs(by_value)
    assert all(_attrs.TRAIN_LOSS not in t.user_attrs for t in without.trials)
    check_round(without, 0, N_SCREENING, N_PROMOTED)


def test_rank_labels_the_tiers_and_breaks_ties_by_trial() -> None:
    signals = [
        _criteria.Signals(root=0, mu=1.0, value=0.2),
        _criteria.Signals(root=1, mu=2.0, value=0.9),
        _criteria.Signals(root=2, mu=3.0, value=0.8),
        _criteria.Signals(root=3, mu=2.0, value=None),
    ]
    ranked = _criteria.rank(signals, "high_mu_in_better_half", maximize=True)
    assert [(r.root, r.tier) for r in ranked] == [
        (2, "better half"),
        (1, "better half"),
        (3, "other half"),  # no value: in the other half, ranked by mu there
        (0, "other half"),
    ]
    assert [r.root for r in _criteria.rank(signals, "mu")] == [0, 1, 3, 2]
    assert [r.root for r in _criteria.rank(signals, "value", maximize=True)] == [1, 2, 0, 3]
    assert all(r.tier is None for r in _criteria.rank(signals, "value"))


def test_every_criterion_is_described_and_unknown_names_list_them() -> None:
    for criterion in _criteria.CRITERIA:
        assert _criteria.describe(criterion)
    assert _criteria.DEFAULT_CRITERION in _criteria.CRITERIA
    with pytest.raises(ValueError, match="Unknown criterion 'lowest'.*'train_loss'"):
        _criteria.validate("lowest")


def test_report_convexity_records_the_training_loss_of_the_scored_batches() -> None:
    torch.manual_seed(0)
    inputs, targets = torch.randn(64, 5), torch.randint(0, 3, (64,))
    batches = list(zip(inputs.split(16), targets.split(16)))
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        optuna_convexity.report_convexity(trial, model, batches, nn.CrossEntropyLoss())
        trial.report(0.5, 0)
        if trial.should_prune():
            raise optuna.TrialPruned()
        return 0.5

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna_convexity.ConvexitySampler(2, 1, seed=0, criterion="train_loss", **FAST),  # type: ignore[arg-type]
        pruner=optuna_convexity.ConvexityPruner(),
    )
    study.optimize(objective, n_trials=1)
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(inputs), targets).item()
    assert study.trials[0].user_attrs[_attrs.TRAIN_LOSS] == pytest.approx(expected, rel=1e-5)


def test_promotion_order_helper_matches_the_library_on_ties() -> None:
    """The tests' own re-derivation breaks ties as the library does (by trial number)."""
    study = _run("value", "maximize")
    valid = [t for t in study.trials if optuna_convexity.is_screening(t)]
    assert [t.number for t in promotion_order(study, valid)][:N_PROMOTED] == [
        t.user_attrs[_attrs.PARENT]
        for t in sorted(
            (t for t in study.trials if optuna_convexity.is_promoted(t)),
            key=lambda t: t.user_attrs[_attrs.RANK],
        )
    ]


def test_premise_check_flags_mu_ranking_against_the_criterion() -> None:
    """Flatter candidates that end worse run against 'mu'; the same data supports the reverse."""
    signals = [_criteria.Signals(root=i, mu=0.1 * (i + 1), value=0.1 * i) for i in range(6)]
    finals = [0.50 + 0.05 * i for i in range(6)]  # the higher mu, the better the final value
    pairs = list(zip(signals, finals))
    against = _criteria.premise_check(pairs, "mu", maximize=True)
    assert (against.n, against.rho_mu, against.rho_value) == (
        6,
        pytest.approx(1.0),
        pytest.approx(1.0),
    )
    assert against.against_premise
    assert "criterion 'mu' promotes lower mu first" in against.describe()
    assert not _criteria.premise_check(
        pairs, "high_mu_in_better_half", maximize=True
    ).against_premise
    assert not _criteria.premise_check(pairs, "value", maximize=True).against_premise
    # minimizing: the same finals are now worse the higher they are, so 'mu' is supported
    assert not _criteria.premise_check(pairs, "mu", maximize=False).against_premise
    # too few promotions say too little
    assert not _criteria.premise_check(pairs[:4], "mu", maximize=True).against_premise


def test_spearman_matches_scipy_with_ties() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    x, y = [1.0, 2.0, 2.0, 3.0, 5.0, 4.0], [1.0, 3.0, 2.0, 4.0, 4.0, 6.0]
    assert _criteria.spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic)
    assert math.isnan(_criteria.spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


@pytest.mark.parametrize(
    ("criterion", "against"), [("mu", True), ("high_mu_in_better_half", False)]
)
def test_a_finished_round_reports_its_premise_in_the_log_and_the_leaderboard(
    criterion: str, against: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Here a higher mu goes with a better full-budget value: against the paper's premise."""

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        if optuna_convexity.is_screening(trial):
            optuna_convexity.record_mu(trial, 0.1 + x)
            trial.report(x, 0)
            raise optuna.TrialPruned()
        return x

    sampler = optuna_convexity.ConvexitySampler(
        12,
        6,
        seed=0,
        criterion=criterion,  # type: ignore[arg-type]
        **FAST,  # type: ignore[arg-type]
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    optuna.logging.enable_propagation()
    try:
        with caplog.at_level(logging.INFO, logger="optuna_convexity"):
            study.optimize(objective, n_trials=18)
    finally:
        optuna.logging.disable_propagation()
    messages = [r for r in caplog.records if "Round 0 of the convexity search" in r.getMessage()]
    assert len(messages) == 1  # once, when the round's last promotion completes
    assert "rho of mu with the final result is +1.00" in messages[0].getMessage()
    assert (messages[0].levelno == logging.WARNING) is against
    (summary,) = optuna_convexity.summarize(study)
    assert summary.premise is not None and summary.premise.n == 6
    assert summary.premise.against_premise is against
    board = optuna_convexity.leaderboard(study)
    assert "Premise check:" in board
    assert ("Against the criterion's premise" in board) is against


def test_value_without_reported_values_ranks_by_the_training_loss() -> None:
    """Without ConvexityPruner, report_convexity ends the trial before the objective reports:
    the default criteria still rank by what the candidates learned, never by mu alone."""
    signals = [
        _criteria.Signals(root=0, mu=0.1, value=None, train_loss=2.0),
        _criteria.Signals(root=1, mu=0.3, value=None, train_loss=0.5),
        _criteria.Signals(root=2, mu=0.2, value=None, train_loss=1.0),
    ]
    for criterion in ("value", "train_loss"):
        assert [r.root for r in _criteria.rank(signals, criterion, maximize=True)] == [1, 2, 0]


def test_the_default_criterion_is_the_one_the_benchmark_chose() -> None:
    """benchmarks/hpo_quality.py chooses the default on validation accuracy; see README."""
    assert _criteria.DEFAULT_CRITERION == "value"
    assert optuna_convexity.ConvexitySampler().criterion == "value"
