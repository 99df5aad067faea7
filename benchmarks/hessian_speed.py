"""How much does scoring cost? Ratios to a forward-only pass, measured side by side.

For an MLP (784-256-256-10) and a small CNN on synthetic data (batch 128), this prints the time
of one training epoch and of each estimator's mu pass over the same batches, divided by the
time of a forward-only pass over those batches (eval mode, ``torch.no_grad()``). Every round
runs all contenders once, interleaved, so that drift of the machine affects them alike; the
table shows the median and the interquartile range of the per-round ratios.

The batches are prepared on the device beforehand, so the ratios compare computation only (a
``DataLoader`` would add the same loading cost to every contender and make all ratios look
closer to 1).

PyHessian (``pip install pyhessian``, in the ``benchmark`` extra), if installed, is timed at the
same number of Hessian-vector products per batch as our Hutchinson estimator: its ``trace``
loop with ``tol=-1`` runs exactly ``n_probes`` products per batch, after its own forward and
``backward(create_graph=True)``.

Usage::

    python benchmarks/hessian_speed.py            # about 2 minutes on 2 CPU cores
    python benchmarks/hessian_speed.py --quick    # a smoke run, seconds
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import statistics
import time

import torch
from torch import nn

from optuna_convexity.hessian import HutchinsonEstimator
from optuna_convexity.hessian import strong_convexity


TARGETS = {"paper": 1.05, "last_layer": 1.25}


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def synthetic_batches(
    n_batches: int, batch_size: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(batch_size, 1, 28, 28, generator=generator).to(device),
            torch.randint(0, 10, (batch_size,), generator=generator).to(device),
        )
        for _ in range(n_batches)
    ]


def contenders(
    model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], n_probes: int
) -> dict[str, Callable[[], object]]:
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    def forward_only() -> None:
        model.eval()
        with torch.no_grad():
            for x, _ in batches:
                model(x)

    def training_epoch() -> None:
        model.train()
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            optimizer.step()
        model.load_state_dict(initial)  # every round scores the same model

    def score(estimator: object) -> Callable[[], object]:
        return lambda: strong_convexity(model, batches, loss_fn, estimator=estimator)  # type: ignore[arg-type]

    runs: dict[str, Callable[[], object]] = {
        "forward only": forward_only,
        "training epoch": training_epoch,
        "paper": score("paper"),
        "last_layer": score("last_layer"),
        f"hutchinson (k={n_probes})": score(HutchinsonEstimator(n_probes=n_probes, seed=0)),
    }
    try:
        from pyhessian import hessian as PyHessian
    except ImportError:
        return runs

    def pyhessian() -> None:
        for x, y in batches:
            computer = PyHessian(model, loss_fn, data=(x, y), cuda=x.is_cuda)
            computer.trace(maxIter=n_probes, tol=-1.0)
        model.zero_grad(set_to_none=True)  # PyHessian leaves a graph in .grad

    runs[f"PyHessian (k={n_probes})"] = pyhessian
    return runs


def measure(
    runs: dict[str, Callable[[], object]], rounds: int
) -> dict[str, tuple[float, float, float]]:
    """Median and quartiles of each contender's time divided by the forward-only time."""
    for run in runs.values():  # warm up caches, allocators and lazy initialisation
        run()
    ratios: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        seconds = {}
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            seconds[name] = time.perf_counter() - start
        for name in runs:
            ratios[name].append(seconds[name] / seconds["forward only"])
    summary = {}
    for name, values in ratios.items():
        if len(values) >= 2:
            q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
        else:
            q1 = median = q3 = values[0]
        summary[name] = (median, q1, q3)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--batches", type=int, default=None)
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 15)
    n_batches = args.batches or (4 if args.quick else 40)
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads; "
        f"{n_batches} batches of 128, {rounds} interleaved rounds; "
        "ratios to a forward-only pass: median [q1, q3]"
    )
    batches = synthetic_batches(n_batches, 128, device)
    for name, factory in (("MLP 784-256-256-10", mlp), ("small CNN", cnn)):
        torch.manual_seed(0)
        model = factory().to(device)
        summary = measure(contenders(model, batches, args.probes), rounds)
        print(f"\n{name}")
        print(f"  {'':28s} {'ratio':>7s}  {'[q1, q3]':>15s}  target")
        for contender, (median, q1, q3) in summary.items():
            target = TARGETS.get(contender)
            verdict = ""
            if target is not None:
                verdict = f"<= {target:.2f}  {'met' if median <= target else 'NOT met'}"
            print(f"  {contender:28s} {median:7.3f}  [{q1:5.3f}, {q3:5.3f}]  {verdict}")
        hutchinson = next(k for k in summary if k.startswith("hutchinson"))
        pyhessian = next((k for k in summary if k.startswith("PyHessian")), None)
        if pyhessian is not None:
            speedup = summary[pyhessian][0] / summary[hutchinson][0]
            print(f"  hutchinson is {speedup:.2f}x faster than PyHessian at the same k")
        else:
            print("  (PyHessian not installed: pip install pyhessian, or the benchmark extra)")


if __name__ == "__main__":
    main()
