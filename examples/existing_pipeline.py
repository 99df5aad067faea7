"""An ordinary Optuna + PyTorch objective, before and after porting it to the convexity search.

``existing_pipeline_before.py`` is the kind of objective Optuna's own PyTorch example shows: an
MLP whose depth, widths, dropout, optimizer and learning rate are tuned on the validation
accuracy, with a pruning loop (here on scikit-learn's digits, so nothing is downloaded).
``existing_pipeline.py`` is the same file ported to the strong-convexity-guided search; the
port is one import, one line in the objective and the ``create_study`` arguments:

    diff -u examples/existing_pipeline_before.py examples/existing_pipeline.py

Each takes about a minute on 2 CPU cores:

    python examples/existing_pipeline_before.py
    python examples/existing_pipeline.py
"""

from __future__ import annotations

import optuna
from optuna.trial import TrialState
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data import TensorDataset

import optuna_convexity


DEVICE = torch.device("cpu")
BATCHSIZE = 64
CLASSES = 10
EPOCHS = 10


def define_model(trial: optuna.Trial) -> nn.Module:
    # The number of layers, their widths and their dropout ratios are tuned.
    n_layers = trial.suggest_int("n_layers", 1, 3)
    layers: list[nn.Module] = []
    in_features = 64
    for i in range(n_layers):
        out_features = trial.suggest_int(f"n_units_l{i}", 4, 128)
        layers.append(nn.Linear(in_features, out_features))
        layers.append(nn.ReLU())
        layers.append(nn.Dropout(trial.suggest_float(f"dropout_l{i}", 0.2, 0.5)))
        in_features = out_features
    layers.append(nn.Linear(in_features, CLASSES))
    layers.append(nn.LogSoftmax(dim=1))
    return nn.Sequential(*layers)


def get_digits() -> tuple[DataLoader[tuple[torch.Tensor, ...]], ...]:
    features, labels = load_digits(return_X_y=True)
    x_train, x_valid, y_train, y_valid = train_test_split(
        features / 16.0, labels, test_size=0.3, random_state=0, stratify=labels
    )
    train = TensorDataset(torch.tensor(x_train, dtype=torch.float32), torch.tensor(y_train))
    valid = TensorDataset(torch.tensor(x_valid, dtype=torch.float32), torch.tensor(y_valid))
    return DataLoader(train, batch_size=BATCHSIZE, shuffle=True), DataLoader(valid, BATCHSIZE)


def objective(trial: optuna.Trial) -> float:
    # Generate the model.
    model = define_model(trial).to(DEVICE)

    # Generate the optimizer.
    optimizer_name = trial.suggest_categorical("optimizer", ["Adam", "RMSprop", "SGD"])
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    optimizer = getattr(torch.optim, optimizer_name)(model.parameters(), lr=lr)

    train_loader, valid_loader = get_digits()

    # Training of the model.
    for epoch in range(EPOCHS):
        model.train()
        for data, target in train_loader:
            data, target = data.to(DEVICE), target.to(DEVICE)
            optimizer.zero_grad()
            loss = F.nll_loss(model(data), target)
            loss.backward()
            optimizer.step()

        # Validation of the model.
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for data, target in valid_loader:
                data, target = data.to(DEVICE), target.to(DEVICE)
                correct += int((model(data).argmax(dim=1) == target).sum())
                total += len(target)
        accuracy = correct / total

        optuna_convexity.report_convexity(trial, model, train_loader, F.nll_loss)
        trial.report(accuracy, epoch)

        # Handle pruning based on the intermediate value.
        if trial.should_prune():
            raise optuna.TrialPruned()

    return accuracy


if __name__ == "__main__":
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna_convexity.ConvexitySampler(n_screening=50, n_promoted=10),
        pruner=optuna_convexity.ConvexityPruner(),
    )
    study.optimize(objective, n_trials=60, timeout=600)

    pruned_trials = study.get_trials(deepcopy=False, states=[TrialState.PRUNED])
    complete_trials = study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
    print("Study statistics: ")
    print("  Number of finished trials: ", len(study.trials))
    print("  Number of pruned trials: ", len(pruned_trials))
    print("  Number of complete trials: ", len(complete_trials))

    trial = study.best_trial
    print("Best trial:")
    print("  Value: ", trial.value)
    print("  Params: ")
    for key, value in trial.params.items():
        print(f"    {key}: {value}")
