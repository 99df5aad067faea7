"""Quickstart: a strong-convexity-guided search for a PyTorch MLP on scikit-learn's digits.

50 screening trials train one epoch each and are scored by the flatness of their loss (``mu``)
and their training loss; the 10 the sampler's criterion ranks first (by default the best
one-epoch validation accuracy) are promoted to a full training run in the same study, saved
to a SQLite file that optuna-dashboard can open (see the README). About 20 seconds on 2 CPU cores.

    python examples/quickstart.py
    python examples/quickstart.py --storage sqlite:///my.db --estimator hutchinson

Running it again on the same storage continues the study with a new round.
"""

from __future__ import annotations

import argparse
import time
import warnings

import optuna
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import TensorDataset

import optuna_convexity


def load_data() -> dict[str, TensorDataset]:
    features, labels = load_digits(return_X_y=True)
    features = features / 16.0
    x_train, x_rest, y_train, y_rest = train_test_split(
        features, labels, test_size=0.4, random_state=0, stratify=labels
    )
    x_valid, x_test, y_valid, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, random_state=0, stratify=y_rest
    )

    def dataset(x: object, y: object) -> TensorDataset:
        return TensorDataset(
            torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
        )

    return {
        "train": dataset(x_train, y_train),
        "valid": dataset(x_valid, y_valid),
        "test": dataset(x_test, y_test),
    }


def accuracy(model: nn.Module, data: TensorDataset) -> float:
    model.eval()
    with torch.no_grad():
        inputs, targets = data.tensors
        return float((model(inputs).argmax(dim=1) == targets).float().mean())


def make_objective(data: dict[str, TensorDataset], epochs: int) -> object:
    loss_fn = nn.CrossEntropyLoss()

    def objective(trial: optuna.Trial) -> float:
        n_layers = trial.suggest_int("n_layers", 1, 3)
        width = trial.suggest_int("width", 16, 256, log=True)
        batch_size = trial.suggest_categorical("batch_size", [16, 32, 64, 128, 256])
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        weight_decay = trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)

        layers: list[nn.Module] = []
        width_in = 64
        for _ in range(n_layers):
            layers += [nn.Linear(width_in, width), nn.ReLU()]
            width_in = width
        model = nn.Sequential(*layers, nn.Linear(width_in, 10))
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        generator = torch.Generator().manual_seed(trial.number)
        loader = DataLoader(
            data["train"], batch_size=batch_size, shuffle=True, generator=generator
        )

        for epoch in range(epochs):
            model.train()
            for inputs, targets in loader:
                optimizer.zero_grad()
                loss_fn(model(inputs), targets).backward()
                optimizer.step()
            # The one added line: scores screening trials, does nothing in promoted ones.
            optuna_convexity.report_convexity(trial, model, loader, loss_fn)
            trial.report(accuracy(model, data["valid"]), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        trial.set_user_attr("test_accuracy", accuracy(model, data["test"]))
        return accuracy(model, data["valid"])

    return objective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="sqlite:///quickstart.db")
    parser.add_argument("--study-name", default="quickstart")
    parser.add_argument("--n-screening", type=int, default=50)
    parser.add_argument("--n-promoted", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30, help="full budget of promoted trials")
    parser.add_argument("--estimator", default="last_layer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:  # a rerun continues the study: offset the seed so that it screens new candidates
        done = len(optuna.load_study(study_name=args.study_name, storage=args.storage).trials)
    except KeyError:
        done = 0
    study = optuna.create_study(
        study_name=args.study_name,
        storage=args.storage,
        load_if_exists=True,
        direction="maximize",
        sampler=optuna_convexity.ConvexitySampler(
            n_screening=args.n_screening,
            n_promoted=args.n_promoted,
            seed=args.seed + done,
            estimator=args.estimator,
        ),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    with warnings.catch_warnings():  # naming the metric is experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["validation accuracy"])  # the dashboard and reports use it
    start = time.perf_counter()
    study.optimize(
        make_objective(load_data(), args.epochs),
        n_trials=args.n_screening + args.n_promoted,
        # One live line: round, screened k/N1, promoted k/N2, best so far (quiet in a pipe).
        callbacks=[optuna_convexity.ProgressCallback()],
    )
    elapsed = time.perf_counter() - start

    print(optuna_convexity.leaderboard(study))
    best = study.best_trial
    print(
        f"Best trial {best.number}: validation accuracy {best.value:.4f}, test accuracy "
        f"{best.user_attrs['test_accuracy']:.4f}"
    )
    print(f"Best params: {best.params}")
    print(f"Searched in {elapsed:.1f} s; the study is stored in {args.storage}.")


if __name__ == "__main__":
    main()
