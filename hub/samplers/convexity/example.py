"""A strong-convexity-guided search for a PyTorch MLP on scikit-learn's digits, from OptunaHub.

Screening trials train one epoch and are scored by the flatness of their loss
(``report_convexity``); the sampler's criterion promotes the best of them to a full training run
in the same study. About half a minute on two CPU cores.

    pip install -r requirements.txt
    python example.py
"""

from __future__ import annotations

from types import ModuleType

import optuna
import optunahub
from sklearn.datasets import load_digits
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import TensorDataset


def run(
    convexity: ModuleType, n_screening: int = 20, n_promoted: int = 4, epochs: int = 10
) -> optuna.Study:
    """One round of ``n_screening`` screening and ``n_promoted`` promoted trials."""
    features, labels = load_digits(return_X_y=True)
    inputs = torch.tensor(features / 16.0, dtype=torch.float32)
    targets = torch.tensor(labels)
    train = TensorDataset(inputs[:1200], targets[:1200])
    valid_inputs, valid_targets = inputs[1200:], targets[1200:]
    loss_fn = nn.CrossEntropyLoss()

    def objective(trial: optuna.Trial) -> float:
        width = trial.suggest_int("width", 16, 256, log=True)
        batch_size = trial.suggest_categorical("batch_size", [16, 32, 64, 128])
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        torch.manual_seed(trial.number)
        model = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        loader = DataLoader(train, batch_size=batch_size, shuffle=True)
        accuracy = 0.0
        for epoch in range(epochs):
            for x, y in loader:
                optimizer.zero_grad()
                loss_fn(model(x), y).backward()
                optimizer.step()
            # Scores screening trials (after their first epoch); nothing in promoted ones.
            convexity.report_convexity(trial, model, loader, loss_fn)
            with torch.no_grad():
                predicted = model(valid_inputs).argmax(dim=1)
            accuracy = float((predicted == valid_targets).float().mean())
            trial.report(accuracy, epoch)
            if trial.should_prune():  # ends screening trials at one epoch
                raise optuna.TrialPruned()
        return accuracy

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=convexity.ConvexitySampler(n_screening=n_screening, n_promoted=n_promoted, seed=0),
        pruner=convexity.ConvexityPruner(),
    )
    study.optimize(
        objective,
        n_trials=n_screening + n_promoted,
        callbacks=[convexity.ProgressCallback()],
    )
    print(convexity.leaderboard(study))
    return study


if __name__ == "__main__":
    run(optunahub.load_module("samplers/convexity"))
