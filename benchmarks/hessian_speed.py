"""How much does scoring cost, and how close is it? Measured side by side in one run.

**Speed.** For an MLP (784-256-256-10) and a small CNN on synthetic data (batch 128), this prints
the time of one training epoch and of each estimator's mu pass over the same batches, divided
by the time of a forward-only pass over those batches (eval mode, ``torch.no_grad()``), and the
milliseconds per batch. Every round runs all contenders once, interleaved, so that drift of the
machine affects them alike; the table shows the median and the interquartile range of the
per-round ratios. The batches are prepared on the device beforehand, so the ratios compare
computation only (a ``DataLoader`` would add the same loading cost to every contender and make
all ratios look closer to 1).

The whole-network contenders all estimate the same quantity, ``||H_B||_F`` of each batch's mean
loss, from the same number ``k`` of Rademacher Hessian-vector products per batch,
``||H||_F^2 ~ (1/k) sum_i ||H z_i||^2``:

- ``hutchinson``: ours (:class:`~optuna_convexity.hessian.HutchinsonEstimator`) with its
  default ``strategy="auto"``, which measures its product strategies on the first batch;
  ``hutchinson forward`` forces forward-over-reverse (``vmap`` of ``jvp`` of ``grad``), and
  ``hutchinson compiled`` adds ``torch.compile`` (its one-off compilation is paid in the
  warm-up run, not in the ratios, and printed apart);
- ``PyHessian``: that identity evaluated with PyHessian's own Hessian-vector product
  (``pyhessian.utils.hessian_vector_product`` on the graph its ``hessian`` object builds);
- ``curvlinops``: ``curvlinops.hutchinson_squared_fro`` on a ``HessianLinearOperator`` of the
  batch (``torch.func`` forward-over-reverse products, vectorised over the probes).

**Accuracy.** On small float64 models after one epoch of training on scikit-learn's digits (the
situation of a screening trial), each estimate is compared per batch with the Frobenius norm of
the dense Hessian (``torch.func.jacrev`` twice); stochastic estimators are repeated over seeds.

The targets, marked met or not met: ``last_layer`` at most 1.25 and ``paper`` 1.05 forward
passes; ``hutchinson`` at most half of PyHessian's time at k = 16 on both models (ratio of
their per-round times, side by side); and the exact ``last_layer`` norm of one large batch
(``--large-batch`` examples, 1,000 classes, an MLP 784-256-256-1000) at most 10 forward passes
of that batch. Which of Hutch++ and Hutchinson should be the default is read off the accuracy
table: the lower median error at the same number of products.

PyHessian and curvlinops come with the ``benchmark`` extra; a contender whose package is missing
is left out with a note.

Usage::

    python benchmarks/hessian_speed.py                  # several minutes on 2 CPU cores
    python benchmarks/hessian_speed.py --quick          # a smoke run, under a minute
    python benchmarks/hessian_speed.py --device cuda    # on a CUDA machine
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from collections.abc import Sequence
import math
import statistics
import sys
import time
import warnings

import torch
from torch import nn

from optuna_convexity.hessian import BaseHessianNormEstimator
from optuna_convexity.hessian import HutchinsonEstimator
from optuna_convexity.hessian import strong_convexity
from optuna_convexity.hessian._hvp import HessianVectorProduct
from optuna_convexity.hessian._hvp import make_generator
from optuna_convexity.hessian._hvp import random_probes


TARGETS = {"paper": 1.05, "last_layer": 1.25}
#: hutchinson's time over PyHessian's at the same k, and the large batch's forward passes.
HUTCHINSON_OVER_PYHESSIAN = 0.5
LARGE_BATCH_FORWARD_PASSES = 10.0

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]
LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# A whole-network Frobenius-norm estimator: (model, batches, loss_fn, n_probes, seed) -> norms.
PerBatchNorms = Callable[[nn.Module, Batches, LossFunction, int, int], list[float]]


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


def small_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 10),
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


# --- the whole-network contenders -------------------------------------------------------------


def ours(estimator: Callable[[int, int], BaseHessianNormEstimator]) -> PerBatchNorms:
    def norms(
        model: nn.Module, batches: Batches, loss_fn: LossFunction, n_probes: int, seed: int
    ) -> list[float]:
        chosen = estimator(n_probes, seed)
        return list(strong_convexity(model, batches, loss_fn, estimator=chosen).batch_norms)

    return norms


def pyhessian_norms(
    model: nn.Module, batches: Batches, loss_fn: LossFunction, n_probes: int, seed: int
) -> list[float]:
    """``(1/k) sum ||H z||^2`` with PyHessian's Hessian-vector product, one graph per batch."""
    from pyhessian import hessian as PyHessian
    from pyhessian.utils import hessian_vector_product

    generator: torch.Generator | None = None
    squares = []
    for x, y in batches:
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(seed)
        # PyHessian reads the gradient graph from ``.grad``, which its ``backward`` accumulates
        # into: clear it, or each batch's products run through the previous batches' graphs.
        model.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # its backward(create_graph=True) warns of the cycle
            warnings.simplefilter("ignore", UserWarning)
            computer = PyHessian(model, loss_fn, data=(x, y), cuda=x.is_cuda)  # sets eval mode
        total = torch.zeros((), dtype=x.dtype if x.is_floating_point() else None, device=x.device)
        for _ in range(n_probes):
            probes = [
                torch.randint(0, 2, p.shape, generator=generator, device=p.device).to(p.dtype) * 2
                - 1
                for p in computer.params
            ]
            products = hessian_vector_product(computer.gradsH, computer.params, probes)
            total = total + sum(product.pow(2).sum() for product in products)
        squares.append(total / n_probes)
    model.zero_grad(set_to_none=True)  # PyHessian leaves a graph in .grad
    return [math.sqrt(square) for square in torch.stack(squares).tolist()]


def curvlinops_norms(
    model: nn.Module, batches: Batches, loss_fn: LossFunction, n_probes: int, seed: int
) -> list[float]:
    """``curvlinops.hutchinson_squared_fro`` on each batch's ``HessianLinearOperator``."""
    from curvlinops import HessianLinearOperator
    from curvlinops import hutchinson_squared_fro

    model.eval()  # as the other contenders score
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(seed)  # curvlinops draws its probes from the global generator
    squares = []
    for x, y in batches:
        operator = HessianLinearOperator(
            model, loss_fn, params, [(x, y)], check_deterministic=False, num_data=len(x)
        )
        squares.append(hutchinson_squared_fro(operator, num_matvecs=n_probes))
    return [math.sqrt(square) for square in torch.stack(squares).tolist()]


def whole_network_contenders(
    strategies: bool = False, compiled: bool = False
) -> tuple[dict[str, PerBatchNorms], list[str]]:
    """The contenders whose package is installed, and notes on those left out.

    With ``strategies``, also ours with forward-over-reverse products (and, with ``compiled``,
    compiled with ``torch.compile``).
    """
    contenders: dict[str, PerBatchNorms] = {
        "hutchinson": ours(lambda k, seed: HutchinsonEstimator(n_probes=k, seed=seed)),
        "hutch++": ours(lambda k, seed: HutchinsonEstimator(n_probes=k, hutchpp=True, seed=seed)),
    }
    if strategies:
        contenders["hutchinson forward"] = ours(
            lambda k, seed: HutchinsonEstimator(n_probes=k, seed=seed, strategy="forward")
        )
    if strategies and compiled:
        contenders["hutchinson compiled"] = ours(
            lambda k, seed: HutchinsonEstimator(
                n_probes=k, seed=seed, strategy="forward", compile=True
            )
        )
    missing = []
    for name, module, norms, install in (
        ("PyHessian", "pyhessian", pyhessian_norms, "pyhessian"),
        ("curvlinops", "curvlinops", curvlinops_norms, "curvlinops-for-pytorch"),
    ):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"{name} left out: not installed (pip install {install})")
        else:
            contenders[name] = norms
    return contenders, missing


# --- speed ------------------------------------------------------------------------------------


def forward_only(model: nn.Module, batches: Batches) -> Callable[[], None]:
    """The yardstick: a forward pass over the batches, eval mode, no graph."""

    def run() -> None:
        model.eval()
        with torch.no_grad():
            for x, _ in batches:
                model(x)

    return run


def closed_form_runs(model: nn.Module, batches: Batches) -> dict[str, Callable[[], object]]:
    """Forward only, a training epoch, and the closed-form estimators' mu passes."""
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    initial = {k: v.clone() for k, v in model.state_dict().items()}

    def training_epoch() -> None:
        model.train()
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            optimizer.step()
        model.load_state_dict(initial)  # every round scores the same model

    def score(estimator: str) -> Callable[[], object]:
        return lambda: strong_convexity(model, batches, loss_fn, estimator=estimator)

    return {
        "forward only": forward_only(model, batches),
        "training epoch": training_epoch,
        "paper": score("paper"),
        "last_layer": score("last_layer"),
    }


def whole_network_runs(
    model: nn.Module, batches: Batches, n_probes: int, whole_network: dict[str, PerBatchNorms]
) -> dict[str, Callable[[], object]]:
    """Forward only and the whole-network contenders at ``n_probes`` products per batch."""
    loss_fn = nn.CrossEntropyLoss()
    runs: dict[str, Callable[[], object]] = {"forward only": forward_only(model, batches)}
    for name, norms in whole_network.items():
        runs[f"{name} (k={n_probes})"] = lambda norms=norms: norms(  # type: ignore[misc]
            model, batches, loss_fn, n_probes, 0
        )
    return runs


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    runs: dict[str, Callable[[], object]],
    rounds: int,
    n_batches: int,
    device: torch.device,
    warm_up: dict[str, float] | None = None,
    cold: Sequence[str] = (),
) -> tuple[dict[str, tuple[float, float, float, float]], dict[str, list[float]]]:
    """Each contender's time over forward-only's (median, q1, q3) and its median ms per batch,
    and the raw seconds per round. The warm-up run's seconds go to ``warm_up``; contenders
    named in ``cold`` are not warmed up (too slow to run twice)."""
    for name, run in runs.items():  # warm up caches, allocators, lazy initialisation, compilers
        if name in cold:
            continue
        start = time.perf_counter()
        run()
        synchronize(device)
        if warm_up is not None:
            warm_up[name] = time.perf_counter() - start
    ratios: dict[str, list[float]] = {name: [] for name in runs}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
        for name in runs:
            ratios[name].append(seconds[name][-1] / seconds["forward only"][-1])
    summary = {
        name: (*quartiles(values), 1000 * statistics.median(seconds[name]) / n_batches)
        for name, values in ratios.items()
    }
    return summary, seconds


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """Median, first and third quartile."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return median, q1, q3


def verdict(value: float, target: float) -> str:
    return f"<= {target:.2f}  {'met' if value <= target else 'NOT met'}"


def print_speed(
    name: str,
    summary: dict[str, tuple[float, float, float, float]],
    whole_seconds: dict[str, list[float]],
) -> None:
    print(f"\n{name}")
    print(f"  {'':28s} {'ratio':>7s}  {'[q1, q3]':>15s}  {'ms/batch':>9s}  target")
    for contender, (median, q1, q3, milliseconds) in summary.items():
        target = TARGETS.get(contender)
        mark = verdict(median, target) if target is not None else ""
        print(
            f"  {contender:28s} {median:7.3f}  [{q1:5.3f}, {q3:5.3f}]  {milliseconds:9.2f}  {mark}"
        )
    # Ratios of per-round times measured side by side: time(contender) / time(other).
    names = list(whole_seconds)
    hutchinson = next(k for k in names if k.startswith("hutchinson ("))
    pyhessian = next((k for k in names if k.startswith("PyHessian")), None)
    for contender in names:
        if contender == "forward only" or pyhessian is None or contender == pyhessian:
            continue
        ratio, q1, q3 = quartiles(
            [a / b for a, b in zip(whole_seconds[contender], whole_seconds[pyhessian])]
        )
        mark = verdict(ratio, HUTCHINSON_OVER_PYHESSIAN) if contender == hutchinson else ""
        label = f"{contender.split(' (')[0]} / PyHessian"
        print(f"  time {label:34s} {ratio:6.3f}  [{q1:5.3f}, {q3:5.3f}]  {mark}")


# --- accuracy ---------------------------------------------------------------------------------


def digits_batches(n_batches: int, batch_size: int) -> tuple[Batches, Batches]:
    """Standardised digits in float64: a one-epoch training set and the batches to score."""
    from sklearn.datasets import load_digits

    data = load_digits()
    inputs = torch.as_tensor(data.data, dtype=torch.float64)
    inputs = (inputs - inputs.mean(0)) / (inputs.std(0) + 1e-6)
    targets = torch.as_tensor(data.target)
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0))
    inputs, targets = inputs[order], targets[order]
    scored = n_batches * batch_size
    scoring = list(zip(inputs[:scored].split(batch_size), targets[:scored].split(batch_size)))
    training = list(zip(inputs[scored:].split(32), targets[scored:].split(32)))
    return training, scoring


def dense_hessian(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFunction
) -> torch.Tensor:
    """The batch's dense Hessian over all parameters (in ``named_parameters`` order)."""
    names, values = zip(*((n, p.detach()) for n, p in model.named_parameters()))
    sizes = [v.numel() for v in values]

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        tensors = {n: t.view_as(v) for n, t, v in zip(names, flat.split(sizes), values)}
        return loss_fn(torch.func.functional_call(model, tensors, (x,)), y)

    # Reverse over reverse: torch.func.hessian's forward-mode outer pass would load torch's
    # forward-AD decompositions, which call the deprecated torch.jit.script.
    hessian = torch.func.jacrev(torch.func.jacrev(loss_of))
    return hessian(torch.cat([v.reshape(-1) for v in values]))


def last_layer_slice(model: nn.Module) -> slice:
    """Where the last ``nn.Linear``'s weight and bias sit in the flat parameter vector."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    own = {id(p) for p in last.parameters()}
    offsets, offset = [], 0
    for p in model.parameters():
        if id(p) in own:
            offsets += [offset, offset + p.numel()]
        offset += p.numel()
    return slice(min(offsets), max(offsets))


def trained_one_epoch(factory: Callable[[], nn.Module], training: Batches) -> nn.Module:
    """A float64 model after one epoch of Adam, in eval mode: what a screening trial scores."""
    torch.manual_seed(0)
    model = factory().double()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for x, y in training:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
    return model.eval()


def print_errors(
    label: str, compared: str, estimates: list[float], exact: list[float], whole: list[float]
) -> float:
    """One row: relative errors against ``exact`` (none: n/a), and the share of ``||H||_F``.
    Returns the median relative error (nan without ``exact``)."""
    whole = whole * (len(estimates) // len(whole))  # a stochastic contender repeats the seeds
    share = quartiles([e / t for e, t in zip(estimates, whole)])[0]
    if not exact:
        print(f"    {label:26s} {compared:22s} {'n/a':>34s}  {'':8s}  {share:.3f}")
        return math.nan
    errors = [abs(e - t) / t for e, t in zip(estimates, exact * (len(estimates) // len(exact)))]
    median, q1, q3 = quartiles(errors)
    print(
        f"    {label:26s} {compared:22s} {median:10.2e} [{q1:8.2e}, {q3:8.2e}]  "
        f"{max(errors):8.2e}  {share:.3f}"
    )
    return median


def accuracy_table(n_batches: int, n_seeds: int, n_probes: int) -> None:
    training, scoring = digits_batches(n_batches, 128)
    loss_fn = nn.CrossEntropyLoss()
    whole_network, _ = whole_network_contenders()
    print(
        f"\nAccuracy against the dense float64 Hessian (digits, one epoch of Adam, "
        f"{n_batches} batches of 128; stochastic estimators k={n_probes} over {n_seeds} seeds)"
    )
    print(
        f"  {'':28s} {'compared with':22s} {'relative error: median [q1, q3]':>34s}  "
        f"{'max':>8s}  estimate / ||H||_F"
    )
    for name, factory in (("MLP 64-32-10, tanh", small_mlp), ("CNN conv4-BN-pool-10", small_cnn)):
        model = trained_one_epoch(factory, training)
        block = last_layer_slice(model)
        whole, last_block = [], []
        for x, y in scoring:
            hessian = dense_hessian(model, x, y, loss_fn)
            whole.append(torch.linalg.matrix_norm(hessian).item())
            last_block.append(torch.linalg.matrix_norm(hessian[block, block]).item())
        print(f"  {name} ({sum(p.numel() for p in model.parameters())} parameters)")
        for estimator, compared, exact in (
            ("last_layer", "last-layer block", last_block),
            ("paper", "(a proxy: no target)", []),
        ):
            estimates = strong_convexity(model, scoring, loss_fn, estimator=estimator).batch_norms
            print_errors(estimator, compared, list(estimates), exact, whole)
        medians = {}
        for contender, norms in whole_network.items():
            estimates = [
                value
                for seed in range(n_seeds)
                for value in norms(model, scoring, loss_fn, n_probes, seed)
            ]
            medians[contender] = print_errors(
                f"{contender} (k={n_probes})", "whole Hessian", estimates, whole, whole
            )
        better = "hutch++" if medians["hutch++"] < medians["hutchinson"] else "hutchinson"
        print(
            f"    at {n_probes} products: median error hutch++ {medians['hutch++']:.2e}, "
            f"hutchinson {medians['hutchinson']:.2e}: the lower is {better}"
        )
        if "PyHessian" in medians:
            same = "no worse" if medians["hutchinson"] <= medians["PyHessian"] else "worse"
            print(
                f"    hutchinson's median error is {same} than PyHessian's "
                f"({medians['hutchinson']:.2e} vs {medians['PyHessian']:.2e}; the same "
                "estimator on other random probes)"
            )


def auto_choice(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], k: int) -> str:
    """What ``strategy="auto"`` measures on a first batch, and what it keeps."""
    hvp = HessianVectorProduct(model.eval(), nn.CrossEntropyLoss(), "auto")
    probes = random_probes(hvp.parameters, k, "rademacher", make_generator(batch[0].device, 0))
    hvp.bind((batch[0],), {}, batch[1]).squared_norms(probes)
    projected = ", ".join(f"{name} {1000 * s:.0f} ms" for name, s in hvp.measured.items())
    return f"{hvp.strategy} (projected per batch: {projected})"


def large_batch(n: int, rounds: int, device: torch.device) -> None:
    """The exact last-layer norm of one batch of ``n`` examples and 1,000 classes."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1000)
    ).to(device)
    generator = torch.Generator().manual_seed(0)
    batch = [
        (
            torch.randn(n, 784, generator=generator).to(device),
            torch.randint(0, 1000, (n,), generator=generator).to(device),
        )
    ]
    loss_fn = nn.CrossEntropyLoss()
    runs: dict[str, Callable[[], object]] = {
        "forward only": forward_only(model, batch),
        "last_layer": lambda: strong_convexity(model, batch, loss_fn),
    }
    summary, _ = measure(runs, rounds, 1, device, cold=("last_layer",))
    print(f"\nOne batch of {n} examples, 1000 classes (MLP 784-256-256-1000), {rounds} rounds")
    print(f"  {'':28s} {'ratio':>7s}  {'[q1, q3]':>15s}  {'ms/batch':>9s}  target")
    for contender, (median, q1, q3, milliseconds) in summary.items():
        mark = verdict(median, LARGE_BATCH_FORWARD_PASSES) if contender == "last_layer" else ""
        print(
            f"  {contender:28s} {median:7.3f}  [{q1:5.3f}, {q3:5.3f}]  {milliseconds:9.1f}  {mark}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="under a minute, for CI")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--batches", type=int, default=None)
    parser.add_argument("--probes", type=int, default=None, help="k (default 16; 4 quick)")
    parser.add_argument(
        "--large-batch",
        type=int,
        default=None,
        help="examples in the one large batch (default 20000; 2304 quick)",
    )
    parser.add_argument(
        "--large-rounds", type=int, default=None, help="rounds of the large batch (default 2)"
    )
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="leave out the torch.compile contender (its compilation takes minutes on a busy CPU)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"--device {args.device}: no CUDA device is available here (torch "
            f"{torch.__version__}, torch.version.cuda={torch.version.cuda}). Run it on a "
            "machine with an NVIDIA GPU and a CUDA build of torch, or use --device cpu."
        )
    rounds = args.rounds or (1 if args.quick else 15)
    n_batches = args.batches or (2 if args.quick else 40)
    n_probes = args.probes or (4 if args.quick else 16)
    n_large = args.large_batch or (2304 if args.quick else 20000)
    # The whole-network contenders cost 20-200 forward passes: fewer batches and rounds.
    whole_rounds, n_whole_batches = max(1, rounds // 3), max(2, n_batches // 4)
    compiled = not (args.quick or args.no_compile)
    whole_network, missing = whole_network_contenders(strategies=True, compiled=compiled)
    print(
        f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads; "
        "ratios to a forward-only pass over the same batches in the same round: median [q1, q3]"
        f"\n  training epoch and closed forms: {n_batches} batches of 128, {rounds} rounds; "
        f"whole network: {n_whole_batches} batches, {whole_rounds} rounds"
    )
    for note in missing:
        print(f"  ({note})")
    if not compiled:
        print("  (hutchinson compiled left out: --quick or --no-compile)")
    batches = synthetic_batches(n_batches, 128, device)
    for name, factory in (("MLP 784-256-256-10", mlp), ("small CNN", cnn)):
        torch.manual_seed(0)
        model = factory().to(device)
        summary, _ = measure(closed_form_runs(model, batches), rounds, n_batches, device)
        few = batches[:n_whole_batches]
        warm_up: dict[str, float] = {}
        whole, seconds = measure(
            whole_network_runs(model, few, n_probes, whole_network),
            whole_rounds,
            len(few),
            device,
            warm_up,
        )
        summary.update((k, v) for k, v in whole.items() if k != "forward only")
        print_speed(name, summary, seconds)
        print(f'  hutchinson\'s strategy="auto" chose {auto_choice(model, few[0], n_probes)}')
        compiled = next((k for k in warm_up if k.startswith("hutchinson compiled")), None)
        if compiled is not None:
            print(f"  hutchinson compiled: first run (with compilation) {warm_up[compiled]:.1f} s")
        sys.stdout.flush()
    large_batch(n_large, args.large_rounds or (1 if args.quick else 2), device)
    accuracy_table(
        n_batches=2 if args.quick else 8, n_seeds=2 if args.quick else 5, n_probes=n_probes
    )


if __name__ == "__main__":
    main()
