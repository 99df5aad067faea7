"""A short real search: a small PyTorch model, scored by ``report_convexity``, in seconds."""

from __future__ import annotations

from collections.abc import Callable

import optuna
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import TensorDataset

import optuna_convexity


N_SCREENING = 6
N_PROMOTED = 2
N_ROUNDS = 2
STUDY_NAME = "dashboard"


def _data() -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(96, 5, generator=generator)
    labels = (inputs[:, 0] + 0.5 * inputs[:, 1] > 0).long()
    return TensorDataset(inputs, labels)


def make_objective(epochs: int = 3) -> Callable[[optuna.Trial], float]:
    data = _data()
    loss_fn = nn.CrossEntropyLoss()

    def objective(trial: optuna.Trial) -> float:
        width = trial.suggest_int("width", 2, 16, log=True)
        lr = trial.suggest_float("lr", 1e-3, 0.5, log=True)
        torch.manual_seed(trial.number)
        model = nn.Sequential(nn.Linear(5, width), nn.Tanh(), nn.Linear(width, 2))
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        loader = DataLoader(data, batch_size=32, shuffle=False)
        accuracy = 0.0
        for epoch in range(epochs):
            for x, y in loader:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()
            optuna_convexity.report_convexity(trial, model, loader, loss_fn)
            with torch.no_grad():
                accuracy = float(
                    (model(data.tensors[0]).argmax(1) == data.tensors[1]).float().mean()
                )
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return accuracy

    return objective


def run_search(storage: str, *, n_jobs: int = 1, seed: int = 0) -> optuna.Study:
    """Two rounds of 6 screening and 2 promoted trials, stored in ``storage``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage,
        direction="maximize",
        sampler=optuna_convexity.ConvexitySampler(
            N_SCREENING, N_PROMOTED, seed=seed, poll_interval=(0.02, 0.1), criterion="mu"
        ),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    study.optimize(make_objective(), n_trials=N_ROUNDS * (N_SCREENING + N_PROMOTED), n_jobs=n_jobs)
    return study


def synthetic_objective(trial: optuna.Trial, epochs: int = 3) -> float:
    """No training: screening trials record a deterministic score; promoted ones 'train'."""
    x = trial.suggest_float("x", -1.0, 1.0)
    y = trial.suggest_int("y", 0, 9)
    if optuna_convexity.is_screening(trial):
        optuna_convexity.record_mu(trial, (x - 0.3) ** 2 + 0.01 * y + 1e-3)
    for epoch in range(epochs):
        trial.report(x + epoch, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return x**2 + y


def synthetic_study(
    storage: str | optuna.storages.BaseStorage | None = None,
    n_screening: int = N_SCREENING,
    n_promoted: int = N_PROMOTED,
    study_name: str = STUDY_NAME,
    seed: int | None = 0,
) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=study_name,
        storage=storage,
        load_if_exists=True,
        sampler=optuna_convexity.ConvexitySampler(
            n_screening, n_promoted, seed=seed, poll_interval=(0.02, 0.1), criterion="mu"
        ),
        pruner=optuna_convexity.ConvexityPruner(),
    )
