"""Score a few one-epoch models by the strong-convexity supremum of their loss.

The scoring half of optuna-convexity on its own: train several MLPs on scikit-learn's digits
for one epoch with different learning rates and batch sizes, then compute each model's score
``mu`` (the largest per-batch Frobenius norm of the loss's Hessian) with the three estimators.
Lower means flatter.

    python examples/score_models.py
"""

from __future__ import annotations

import time

from sklearn.datasets import load_digits
import torch
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import TensorDataset

from optuna_convexity.hessian import hessian_eigenvalue
from optuna_convexity.hessian import HutchinsonEstimator
from optuna_convexity.hessian import strong_convexity


def main() -> None:
    torch.manual_seed(0)
    features, labels = load_digits(return_X_y=True)
    inputs = torch.tensor(features / 16.0, dtype=torch.float32)
    targets = torch.tensor(labels)
    dataset = TensorDataset(inputs, targets)
    loss_fn = nn.CrossEntropyLoss()

    print(
        f"{'lr':>7s} {'batch':>5s}  {'last_layer':>10s} {'hutchinson':>10s} {'paper':>8s}"
        f" {'top eig':>8s} {'loss':>6s} {'scoring s':>9s}"
    )
    for lr, batch_size in [(1e-3, 32), (3e-2, 32), (3e-1, 32), (3e-2, 256)]:
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
        for x, y in loader:  # one epoch: the screening fidelity
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()

        scoring = DataLoader(dataset, batch_size=128)
        start = time.perf_counter()
        exact = strong_convexity(model, scoring, loss_fn)  # the default: last_layer
        elapsed = time.perf_counter() - start
        whole = strong_convexity(
            model, scoring, loss_fn, estimator=HutchinsonEstimator(n_probes=32, seed=0)
        )
        paper = strong_convexity(model, scoring, loss_fn, estimator="paper")
        top = hessian_eigenvalue(model, scoring, loss_fn, max_iter=30, seed=0)
        print(
            f"{lr:7.0e} {batch_size:5d}  {exact.mu:10.4f} {whole.mu:10.4f} {paper.mu:8.3f}"
            f" {top:8.3f} {loss.item():6.3f} {elapsed:9.3f}"
        )


if __name__ == "__main__":
    main()
