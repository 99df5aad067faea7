"""The search with real PyTorch training and scoring, as a user runs it."""

from __future__ import annotations

import math
from pathlib import Path
import subprocess
import sys

import optuna
from optuna.trial import TrialState
import pytest
from sklearn.datasets import load_iris
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import TensorDataset

import optuna_convexity
from optuna_convexity import _attrs
from optuna_convexity._criteria import DEFAULT_CRITERION
from optuna_convexity._criteria import describe
from optuna_convexity.hessian import strong_convexity
from tests.search.helpers import check_round


ROOT = Path(__file__).resolve().parents[2]


def _iris() -> TensorDataset:
    features, labels = load_iris(return_X_y=True)
    features = (features - features.mean(0)) / features.std(0)
    return TensorDataset(torch.tensor(features, dtype=torch.float32), torch.tensor(labels))


def _objective(data: TensorDataset, epochs: int = 4, calls: list[float] | None = None):  # type: ignore[no-untyped-def]
    loss_fn = nn.CrossEntropyLoss()

    def objective(trial: optuna.Trial) -> float:
        width = trial.suggest_int("width", 4, 32, log=True)
        lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        torch.manual_seed(trial.number)
        model = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 3))
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        loader = DataLoader(data, batch_size=32, shuffle=True)
        for epoch in range(epochs):
            for x, y in loader:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()
            mu = optuna_convexity.report_convexity(trial, model, loader, loss_fn)
            if calls is not None and mu is not None:
                calls.append(mu)
            with torch.no_grad():
                accuracy = float(
                    (model(data.tensors[0]).argmax(1) == data.tensors[1]).float().mean()
                )
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return accuracy

    return objective


def test_search_with_real_training_and_scoring() -> None:
    data = _iris()
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna_convexity.ConvexitySampler(6, 2, seed=0),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    study.optimize(_objective(data), n_trials=8)
    check_round(study, 0, 6, 2)
    screening = [t for t in study.trials if optuna_convexity.is_screening(t)]
    for trial in screening:
        assert trial.state == TrialState.PRUNED
        assert trial.last_step == 0  # ended after the first epoch
        assert trial.user_attrs[_attrs.ESTIMATOR] == "last_layer"
        assert trial.user_attrs[_attrs.N_BATCHES] == 5  # 150 examples in batches of 32
        assert math.isfinite(trial.user_attrs[_attrs.MU]) and trial.user_attrs[_attrs.MU] > 0
    promoted = [t for t in study.trials if optuna_convexity.is_promoted(t)]
    assert all(t.last_step == 3 and t.state == TrialState.COMPLETE for t in promoted)
    assert optuna_convexity.is_promoted(study.best_trial)


def test_recorded_mu_is_the_scoring_modules_value() -> None:
    """Rebuild the screening model of one trial and score it independently."""
    data = _iris()
    loss_fn = nn.CrossEntropyLoss()
    captured: dict[str, object] = {}

    def objective(trial: optuna.Trial) -> float:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        trial.suggest_float("unused", 0, 1)
        scoring = [data.tensors]  # one batch, deterministic
        captured["model"] = model
        optuna_convexity.report_convexity(trial, model, scoring, loss_fn)
        return 0.0

    # No ConvexityPruner, and a criterion that needs no one-epoch value: report_convexity
    # ends the trial itself.
    study = optuna.create_study(sampler=optuna_convexity.ConvexitySampler(1, 1, criterion="mu"))
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED
    expected = strong_convexity(captured["model"], [data.tensors], loss_fn).mu  # type: ignore[arg-type]
    assert trial.user_attrs[_attrs.MU] == pytest.approx(expected, rel=1e-12)


def test_report_convexity_scores_once_and_only_in_screening() -> None:
    data = _iris()
    calls: list[float] = []
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna_convexity.ConvexitySampler(2, 1, seed=0, estimator="paper"),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    study.optimize(_objective(data, epochs=3, calls=calls), n_trials=3)
    assert len(calls) == 2  # one score per screening trial, none in the promoted one
    assert study.trials[0].user_attrs[_attrs.ESTIMATOR] == "paper"


def test_report_convexity_returns_the_recorded_value_on_later_calls() -> None:
    data = _iris()
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    study = optuna.create_study(
        sampler=optuna_convexity.ConvexitySampler(1, 1),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    trial = study.ask()
    first = optuna_convexity.report_convexity(trial, model, [data.tensors], nn.CrossEntropyLoss())
    with torch.no_grad():
        model[2].weight.mul_(3)  # later calls must not rescore
    again = optuna_convexity.report_convexity(trial, model, [data.tensors], nn.CrossEntropyLoss())
    assert first == again
    with pytest.raises(optuna.TrialPruned):
        optuna_convexity.report_convexity(
            trial, model, [data.tensors], nn.CrossEntropyLoss(), end_trial=True
        )


def test_report_convexity_outside_a_convexity_search_is_a_no_op() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    fixed = optuna.trial.FixedTrial({"x": 1.0})
    assert optuna_convexity.report_convexity(fixed, model, [], nn.CrossEntropyLoss()) is None
    study = optuna.create_study()
    trial = study.ask()
    assert optuna_convexity.report_convexity(trial, model, [], nn.CrossEntropyLoss()) is None


def test_leaderboard_lists_screening_ranks_and_promotions() -> None:
    data = _iris()
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna_convexity.ConvexitySampler(5, 2, seed=1),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    study.optimize(_objective(data), n_trials=7)
    text = optuna_convexity.leaderboard(study)
    summary = optuna_convexity.summarize(study)[0]
    assert summary.screening_done and len(summary.candidates) == 5
    assert [p.rank for p in summary.promotions] == [1, 2]
    best_parent = summary.promotions[0].parent
    gap = "\u2003"  # keeps the cells apart in optuna-dashboard's Note tab
    (first,) = [c for c in summary.candidates if c.number == best_parent]
    tier = f"{gap}{first.tier} | " if first.tier is not None else ""
    assert f"| 1 (promoted) | {gap}{best_parent} | {tier}" in text
    assert f'`criterion="{DEFAULT_CRITERION}"`: {describe(DEFAULT_CRITERION)}.' in text
    headings = ["promoted rank", "trial", "parent", "mu", "state", "value"]
    assert "| " + f" | {gap}".join(headings) + " |" in text
    assert f"**Best trial: {study.best_trial.number}**" in text
    # A study loaded without the sampler (as the dashboard does) summarises the same way.
    plain = optuna.load_study(study_name=study.study_name, storage=study._storage)
    assert optuna_convexity.leaderboard(plain) == text


@pytest.mark.timeout(300)
def test_quickstart_runs(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "quickstart.py"),
            "--storage",
            f"sqlite:///{tmp_path / 'quickstart.db'}",
            "--n-screening",
            "6",
            "--n-promoted",
            "2",
            "--epochs",
            "3",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert "### Round 0: 6 screened (screening done" in completed.stdout
    assert "Best trial" in completed.stdout and "test accuracy" in completed.stdout
